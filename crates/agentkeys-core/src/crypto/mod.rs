//! Cryptography for agentkeys: the one error type, hashing, randomness, and the tour of the submodules.
//!
//! - [`hpke`] — RFC 9180 sealing to an X25519 key (decision 68: `store` seals to the
//!   server's shielding key, `read` seals to the reader's ephemeral key; decision 4: the child
//!   session is sealed to the daemon). Opening decrypts straight into a [`SecretPage`].
//! - [`envelope`] — envelope encryption at rest (per-record DEK wrapped by the server's KEK),
//!   and the XChaCha20-Poly1305 helpers used for the CLI's session file (decision 12).
//! - [`pairing`] — pair codes (`ABCD-EFGH`) and the 6-digit OTP (decision 4).
//! - [`sign`] — Ed25519 signatures (the server signs sealed pair decisions; the daemon pins the
//!   key).
//!
//! Rules that hold throughout: no home-made primitives (only RustCrypto / dalek / hpke);
//! plaintext is decrypted directly into a [`SecretPage`] and encrypted directly from the
//! caller's slice into the output buffer, so no intermediate heap copy exists; keys live in
//! zeroizing types with redacting `Debug`; no error ever carries secret bytes.
//!
//! [`SecretPage`]: agentkeys_secmem::SecretPage

#![forbid(unsafe_code)]

pub mod envelope;
pub mod hpke;
pub mod pairing;
pub mod sign;

pub use envelope::{Envelope, Kek};
pub use hpke::HpkeKeyPair;
pub use sign::SigningKeyPair;

use sha2::{Digest, Sha256};

/// The largest plaintext the seal/encrypt functions accept, and the largest value the open
/// functions will decrypt: 1 MiB.
///
/// Credentials and sessions are a few KiB at most. The bound matters on the open side: the
/// plaintext lands in a locked secret page, which counts against `RLIMIT_MEMLOCK` (8 MiB by
/// default), so an oversized sealed value from the network must be refused before allocating.
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;

/// Everything that can go wrong in [`crate::crypto`]. No variant carries secret bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed while opening: wrong key, wrong `info`/`aad`, a truncated value,
    /// or any modified byte. Deliberately one variant, so callers cannot tell which.
    #[error("decryption failed: the sealed value was tampered with or sealed to another key")]
    Open,
    /// Key material of the wrong length, or a public key that cannot be used.
    #[error("invalid key: wrong length or not a usable key")]
    BadKey,
    /// A signature that is malformed or does not verify under the given public key.
    #[error("signature verification failed")]
    BadSignature,
    /// No secret memory could be allocated for the plaintext (e.g. `RLIMIT_MEMLOCK` reached).
    #[error("could not allocate secret memory: {0}")]
    Memory(#[from] std::io::Error),
    /// The value exceeds [`MAX_PLAINTEXT_LEN`].
    #[error("value too large: the limit is {MAX_PLAINTEXT_LEN} bytes")]
    TooLarge,
}

impl CryptoError {
    /// A stable, machine-readable code for logs and error reports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Open => "CRYPTO_OPEN",
            Self::BadKey => "CRYPTO_BAD_KEY",
            Self::BadSignature => "CRYPTO_BAD_SIGNATURE",
            Self::Memory(_) => "CRYPTO_MEMORY",
            Self::TooLarge => "CRYPTO_TOO_LARGE",
        }
    }

    /// A recommended fix, where there is one to give.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Open => Some(
                "the value was sealed to a different key or modified in transit; fetch it again",
            ),
            Self::BadKey => Some("keys are 32 bytes; check the key file or the published key"),
            Self::BadSignature => None,
            Self::Memory(_) => {
                Some("raise the locked-memory limit (ulimit -l) or hold fewer secrets at once")
            }
            Self::TooLarge => None,
        }
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A 32-byte public key from its standard base64; `None` when it is not base64 or not 32
/// bytes.
pub fn key_from_base64(b64: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    <[u8; 32]>::try_from(bytes).ok()
}

/// `N` bytes from the operating system's CSPRNG.
///
/// The array is an ordinary stack value and is not wiped: use it for nonces, identifiers and
/// seeds that are hashed or published, and `SecretBytes::random` for key material.
///
/// # Panics
/// If the operating system's random number generator fails (on Linux only before the entropy
/// pool is initialised at boot); there is no safe fallback.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("invariant: the OS random number generator is available");
    out
}

/// Lower-case hex: public keys in `Debug` output, digests in names and logs. The one
/// `hex` of the workspace.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Decodes lower-case hex (test vectors).
#[cfg(test)]
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The strongest page kind this machine gives, for tests that check where plaintext lands;
/// a visible skip line where the kernel has no `memfd_secret` (decided by calling it).
#[cfg(test)]
fn best_page_kind(test: &str) -> agentkeys_secmem::SecretPageKind {
    use std::io::Write as _;
    match agentkeys_secmem::memfd_secret_available() {
        Ok(()) => agentkeys_secmem::SecretPageKind::MemfdSecret,
        Err(why) => {
            let line = format!("skipped: no memfd_secret on this kernel ({why}) [{test}]\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            agentkeys_secmem::SecretPageKind::SealedMemfd
        }
    }
}

/// A secret page of `len` random bytes (a long-lived key: it never sits in the heap).
fn random_page(len: usize) -> Result<agentkeys_secmem::SecretPage, CryptoError> {
    let mut page = agentkeys_secmem::SecretPage::new(len)?;
    getrandom::fill(page.expose_secret_mut())
        .expect("invariant: the OS random number generator is available");
    Ok(page)
}

/// A secret page holding a copy of `bytes`.
fn page_of(bytes: &[u8]) -> Result<agentkeys_secmem::SecretPage, CryptoError> {
    Ok(agentkeys_secmem::SecretPage::from_slice(bytes)?)
}

/// Checks `len` against [`MAX_PLAINTEXT_LEN`].
fn check_len(len: usize) -> Result<(), CryptoError> {
    if len > MAX_PLAINTEXT_LEN {
        Err(CryptoError::TooLarge)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_fips_180_2_abc_vector() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_arrays_differ_between_calls() {
        let a: [u8; 32] = random_array();
        let b: [u8; 32] = random_array();
        assert_ne!(a, b);
    }

    #[test]
    fn error_messages_codes_and_hints_are_pinned() {
        let cases: [(CryptoError, &str, &str); 5] = [
            (
                CryptoError::Open,
                "decryption failed: the sealed value was tampered with or sealed to another key",
                "CRYPTO_OPEN",
            ),
            (
                CryptoError::BadKey,
                "invalid key: wrong length or not a usable key",
                "CRYPTO_BAD_KEY",
            ),
            (
                CryptoError::BadSignature,
                "signature verification failed",
                "CRYPTO_BAD_SIGNATURE",
            ),
            (
                CryptoError::Memory(std::io::Error::from_raw_os_error(libc_enomem())),
                "could not allocate secret memory: Cannot allocate memory (os error 12)",
                "CRYPTO_MEMORY",
            ),
            (
                CryptoError::TooLarge,
                "value too large: the limit is 1048576 bytes",
                "CRYPTO_TOO_LARGE",
            ),
        ];
        for (err, message, code) in cases {
            assert_eq!(err.to_string(), message);
            assert_eq!(err.code(), code);
        }
        assert!(CryptoError::Open.hint().is_some());
        assert!(CryptoError::BadSignature.hint().is_none());
    }

    /// ENOMEM on Linux (core does not depend on libc).
    fn libc_enomem() -> i32 {
        12
    }
}
