//! Heap secrets that cannot be printed and wipe themselves: [`SecretBytes`] and [`SecretString`].
//!
//! Both hold a fixed-capacity `Box<[u8]>` that never reallocates (a reallocation would leave an
//! unwiped copy behind), is zeroized on drop, and is reached only through `expose_secret()`.
//! They are for short secrets (session tokens, keys); credential plaintext goes into a
//! [`crate::SecretPage`] instead (STYLE habit 4).

#![forbid(unsafe_code)] // all of this crate's `unsafe` lives in sys.rs

use std::fmt;

use zeroize::Zeroize;

/// A fixed-size secret byte buffer on the heap.
///
/// - never reallocates: the length is fixed at construction;
/// - zeroized (volatile writes) on drop;
/// - no `Clone`, `Display` or `Serialize`; `Debug` prints `[REDACTED]`;
/// - equality is constant-time in the contents (lengths are not secret).
pub struct SecretBytes {
    buf: Box<[u8]>,
}

impl SecretBytes {
    /// A zero-filled secret of `len` bytes, to be filled through
    /// [`expose_secret_mut`](Self::expose_secret_mut).
    pub fn new(len: usize) -> Self {
        Self {
            buf: vec![0u8; len].into_boxed_slice(),
        }
    }

    /// Copies `src` into a new secret. The caller still owns `src` and should wipe it.
    pub fn from_slice(src: &[u8]) -> Self {
        Self {
            buf: Box::from(src),
        }
    }

    /// `len` bytes from the operating system's CSPRNG (`getrandom`).
    ///
    /// # Panics
    /// If the operating system's random number generator fails, which on Linux only happens
    /// before the entropy pool is initialised at boot; there is no safe fallback for key material.
    pub fn random(len: usize) -> Self {
        let mut secret = Self::new(len);
        getrandom::fill(secret.expose_secret_mut())
            .expect("invariant: the OS random number generator is available");
        secret
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The secret bytes. The one greppable door out of the type: callers say why they need it.
    pub fn expose_secret(&self) -> &[u8] {
        &self.buf
    }

    /// The secret bytes, writable (the length stays fixed).
    pub fn expose_secret_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl From<Vec<u8>> for SecretBytes {
    /// Takes ownership of `vec`. When its length equals its capacity the buffer is adopted as
    /// is (no copy); otherwise the bytes are copied into an exact-size buffer and the whole
    /// vector, spare capacity included, is zeroized before it is freed.
    fn from(mut vec: Vec<u8>) -> Self {
        if vec.len() == vec.capacity() {
            // `into_boxed_slice` only reallocates when capacity > len, which is excluded here.
            return Self {
                buf: vec.into_boxed_slice(),
            };
        }
        let secret = Self::from_slice(&vec);
        vec.zeroize();
        secret
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.expose_secret(), other.expose_secret())
    }
}

impl Eq for SecretBytes {}

/// A secret that is guaranteed to be UTF-8 (session tokens, passphrases).
///
/// Same rules as [`SecretBytes`], which it wraps: fixed size, zeroized on drop, `Debug` prints
/// `[REDACTED]`, constant-time equality, no `Clone`/`Display`/`Serialize`, and no mutable access
/// (which keeps the UTF-8 guarantee trivially true).
pub struct SecretString {
    bytes: SecretBytes,
}

impl SecretString {
    /// Copies `s` into a new secret. The caller still owns `s` and should wipe it.
    pub fn from_str_copy(s: &str) -> Self {
        Self {
            bytes: SecretBytes::from_slice(s.as_bytes()),
        }
    }

    /// Adopts `b` without copying if it is valid UTF-8; otherwise hands it back unchanged.
    pub fn try_from_bytes(b: SecretBytes) -> Result<Self, SecretBytes> {
        if std::str::from_utf8(b.expose_secret()).is_ok() {
            Ok(Self { bytes: b })
        } else {
            Err(b)
        }
    }

    /// The secret text. The one greppable door out of the type.
    pub fn expose_secret(&self) -> &str {
        // Re-validating costs a pass over a few dozen bytes and keeps this crate's `unsafe`
        // confined to the page code; the check cannot fail (validated at construction, and the
        // type offers no mutable access).
        std::str::from_utf8(self.bytes.expose_secret())
            .expect("invariant: SecretString holds UTF-8 validated at construction")
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl From<String> for SecretString {
    /// Takes ownership of `s` through `into_bytes` (no copy when the string has no spare
    /// capacity; otherwise the copy is made and the original buffer zeroized).
    fn from(s: String) -> Self {
        Self {
            bytes: SecretBytes::from(s.into_bytes()),
        }
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SecretString {}

/// Compares two byte strings in time that depends only on their lengths.
///
/// The lengths themselves are not treated as secret. `black_box` keeps the optimiser from
/// turning the accumulate loop into an early-exit comparison.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff = std::hint::black_box(diff | (x ^ y));
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-7f3a9c-do-not-print";

    #[test]
    fn debug_of_secret_bytes_does_not_contain_the_canary() {
        let s = SecretBytes::from_slice(CANARY.as_bytes());
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
    }

    #[test]
    fn debug_of_secret_string_does_not_contain_the_canary() {
        let s = SecretString::from_str_copy(CANARY);
        let shown = format!("{s:?} {s:#?} {:?}", Some(&s));
        assert!(!shown.contains("CANARY"), "{shown}");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
    }

    #[test]
    fn new_secret_bytes_are_zero_filled_with_the_requested_length() {
        let s = SecretBytes::new(17);
        assert_eq!(s.len(), 17);
        assert!(!s.is_empty());
        assert!(s.expose_secret().iter().all(|&b| b == 0));
        assert!(SecretBytes::new(0).is_empty());
    }

    #[test]
    fn random_secret_bytes_differ_between_calls() {
        let a = SecretBytes::random(32);
        let b = SecretBytes::random(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.expose_secret().iter().any(|&x| x != 0));
    }

    #[test]
    fn from_vec_with_exact_capacity_adopts_the_buffer_without_copying() {
        let v = b"exact".to_vec().into_boxed_slice().into_vec();
        assert_eq!(v.len(), v.capacity());
        let ptr = v.as_ptr();
        let s = SecretBytes::from(v);
        assert_eq!(s.expose_secret().as_ptr(), ptr);
        assert_eq!(s.expose_secret(), b"exact");
    }

    #[test]
    fn from_vec_with_spare_capacity_copies_into_an_exact_buffer() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"spare");
        let ptr = v.as_ptr();
        let s = SecretBytes::from(v);
        assert_ne!(s.expose_secret().as_ptr(), ptr);
        assert_eq!(s.expose_secret(), b"spare");
    }

    #[test]
    fn from_string_keeps_the_text() {
        let s = SecretString::from(String::from("tok_123"));
        assert_eq!(s.expose_secret(), "tok_123");
        assert_eq!(s.len(), 7);
        assert!(!s.is_empty());
    }

    #[test]
    fn try_from_bytes_accepts_utf8_without_copying_and_returns_invalid_bytes() {
        let b = SecretBytes::from_slice("héllo".as_bytes());
        let ptr = b.expose_secret().as_ptr();
        let s = SecretString::try_from_bytes(b).expect("valid UTF-8");
        assert_eq!(s.expose_secret().as_ptr(), ptr);
        assert_eq!(s.expose_secret(), "héllo");

        let bad = SecretBytes::from_slice(&[0x66, 0xff, 0x66]);
        let back = SecretString::try_from_bytes(bad).expect_err("invalid UTF-8");
        assert_eq!(back.expose_secret(), &[0x66, 0xff, 0x66]);
    }

    #[test]
    fn equality_compares_contents_and_lengths() {
        assert_eq!(
            SecretBytes::from_slice(b"abc"),
            SecretBytes::from_slice(b"abc")
        );
        assert_ne!(
            SecretBytes::from_slice(b"abc"),
            SecretBytes::from_slice(b"abd")
        );
        assert_ne!(
            SecretBytes::from_slice(b"abc"),
            SecretBytes::from_slice(b"abcd")
        );
        assert_eq!(
            SecretString::from_str_copy("x"),
            SecretString::from_str_copy("x")
        );
        assert_ne!(
            SecretString::from_str_copy("x"),
            SecretString::from_str_copy("y")
        );
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"\x00", b"\x80"));
    }
}
