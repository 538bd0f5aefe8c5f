//! Envelope encryption at rest (XChaCha20-Poly1305): a fresh data key per record, wrapped by a key-encryption key.
//!
//! Decision 68: the server keeps credentials under envelope encryption, the KEK loaded
//! from a 0600 key file (or the environment). Decision 12: the CLI's session file is sealed with
//! [`xchacha_seal`] under a 32-byte key kept in the OS keyring.
//!
//! Formats: `wrapped_dek = nonce (24) || encrypted DEK (32) || tag (16)` and
//! `ciphertext = nonce (24) || encrypted plaintext || tag (16)`. Both use the same `aad`, so a
//! record's ciphertext and its wrapped key are each bound to the record's identity. Nonces are
//! random: XChaCha's 192-bit nonce makes collisions negligible without any counter state.
//!
//! Plaintext handling is the same as in [`super::hpke`]: encryption reads the caller's slice
//! and writes ciphertext straight into the exact-size output; decryption verifies the tag, then
//! writes plaintext straight into a [`SecretPage`] (the DEK into a [`SecretBytes`]).

use std::fmt;

use agentkeys_secmem::{SecretBytes, SecretPage};
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, Tag, XChaCha20Poly1305, XNonce};

use super::{CryptoError, check_len};

/// XChaCha20-Poly1305 key length.
const KEY_LEN: usize = 32;
/// XChaCha20-Poly1305 nonce length.
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// Length of [`Envelope::wrapped_dek`].
const WRAPPED_DEK_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// A key-encryption key: 32 bytes in a [`SecretPage`] (`memfd_secret` where the kernel has
/// it: the server holds it for its whole life, unreadable through `/proc/<pid>/mem`);
/// `Debug` is redacted.
pub struct Kek {
    key: SecretPage,
}

impl Kek {
    /// A fresh random KEK (first server start).
    ///
    /// Errors: [`CryptoError::Memory`] if no secret page could be allocated.
    ///
    /// # Panics
    /// If the operating system's random number generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self {
            key: super::random_page(KEY_LEN)?,
        })
    }

    /// Loads a KEK from its 32 raw bytes (the key file). The caller wipes its copy.
    pub fn from_bytes(key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        Ok(Self {
            key: super::page_of(key)?,
        })
    }

    /// The raw key, for writing the 0600 key file.
    pub fn expose_secret(&self) -> &[u8] {
        self.key.expose_secret()
    }

    fn key(&self) -> &[u8; KEY_LEN] {
        self.key
            .expose_secret()
            .try_into()
            .expect("invariant: a Kek is always 32 bytes")
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek([REDACTED])")
    }
}

/// A record encrypted under its own data key, with that key wrapped by the [`Kek`].
/// Holds only ciphertext, so deriving `Debug` is fine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `nonce (24) || encrypted DEK (32) || tag (16)`, under the KEK.
    pub wrapped_dek: Vec<u8>,
    /// `nonce (24) || encrypted plaintext || tag (16)`, under the DEK.
    pub ciphertext: Vec<u8>,
}

/// Encrypts `plaintext` under a fresh random data key and wraps that key under `kek`; both
/// layers authenticate `aad` (e.g. the record's owner and service name).
///
/// Errors: [`CryptoError::TooLarge`] above [`super::MAX_PLAINTEXT_LEN`].
pub fn encrypt(kek: &Kek, aad: &[u8], plaintext: &[u8]) -> Result<Envelope, CryptoError> {
    agentkeys_secmem::stack::scrubbed(|| encrypt_unscrubbed(kek, aad, plaintext))
}

/// The body of [`encrypt`], whose stack the caller scrubs.
fn encrypt_unscrubbed(kek: &Kek, aad: &[u8], plaintext: &[u8]) -> Result<Envelope, CryptoError> {
    check_len(plaintext.len())?;
    let dek = SecretBytes::random(KEY_LEN);
    let dek_key: &[u8; KEY_LEN] = dek
        .expose_secret()
        .try_into()
        .expect("invariant: the DEK was generated with 32 bytes");
    let ciphertext = xchacha_seal(dek_key, aad, plaintext)?;
    let wrapped_dek = xchacha_seal(kek.key(), aad, dek.expose_secret())?;
    Ok(Envelope {
        wrapped_dek,
        ciphertext,
    })
}

/// Unwraps the data key with `kek` and decrypts the record straight into a [`SecretPage`].
///
/// Errors: [`CryptoError::Open`] for a wrong KEK or `aad`, or any modified byte in either
/// part; [`CryptoError::Memory`] if no secret page could be allocated.
pub fn decrypt_into_page(kek: &Kek, aad: &[u8], env: &Envelope) -> Result<SecretPage, CryptoError> {
    agentkeys_secmem::stack::scrubbed(|| decrypt_into_page_unscrubbed(kek, aad, env))
}

/// The body of [`decrypt_into_page`], whose stack the caller scrubs.
fn decrypt_into_page_unscrubbed(
    kek: &Kek,
    aad: &[u8],
    env: &Envelope,
) -> Result<SecretPage, CryptoError> {
    if env.wrapped_dek.len() != WRAPPED_DEK_LEN {
        return Err(CryptoError::Open);
    }
    let mut dek = SecretBytes::new(KEY_LEN);
    xchacha_open_into(kek.key(), aad, &env.wrapped_dek, dek.expose_secret_mut())?;
    let dek_key: &[u8; KEY_LEN] = dek
        .expose_secret()
        .try_into()
        .expect("invariant: the DEK buffer is 32 bytes");
    xchacha_open_into_page(dek_key, aad, &env.ciphertext)
}

/// Re-wraps a record's data key from `old` to `new` (KEK rotation): the value itself is
/// never decrypted, and the data key exists only in a zeroizing buffer for the call.
///
/// Errors: [`CryptoError::Open`] when `old` (or `aad`) does not open `wrapped_dek`.
pub fn rewrap(
    old: &Kek,
    new: &Kek,
    aad: &[u8],
    wrapped_dek: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    agentkeys_secmem::stack::scrubbed(|| {
        if wrapped_dek.len() != WRAPPED_DEK_LEN {
            return Err(CryptoError::Open);
        }
        let mut dek = SecretBytes::new(KEY_LEN);
        xchacha_open_into(old.key(), aad, wrapped_dek, dek.expose_secret_mut())?;
        xchacha_seal(new.key(), aad, dek.expose_secret())
    })
}

/// XChaCha20-Poly1305 with a random nonce: returns `nonce (24) || ciphertext || tag (16)`.
///
/// The output is allocated once with its exact size and the ciphertext written into it
/// directly from `plaintext`.
///
/// Errors: [`CryptoError::TooLarge`] above [`super::MAX_PLAINTEXT_LEN`].
pub fn xchacha_seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    check_len(plaintext.len())?;
    let mut sealed = vec![0u8; NONCE_LEN + plaintext.len() + TAG_LEN];
    let (nonce_out, rest) = sealed.split_at_mut(NONCE_LEN);
    let (ct_out, tag_out) = rest.split_at_mut(plaintext.len());
    getrandom::fill(nonce_out).expect("invariant: the OS random number generator is available");
    let nonce = XNonce::try_from(&*nonce_out).expect("invariant: the nonce slot is 24 bytes");
    let buffer = InOutBuf::new(plaintext, ct_out)
        .expect("invariant: the ciphertext slot is exactly as long as the plaintext");
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(&nonce, aad, buffer)
        .map_err(|_| CryptoError::TooLarge)?;
    tag_out.copy_from_slice(&tag);
    Ok(sealed)
}

/// Opens a value sealed by [`xchacha_seal`] straight into a [`SecretPage`].
///
/// Errors: [`CryptoError::Open`] for a wrong key or `aad`, truncation or any modified byte;
/// [`CryptoError::TooLarge`] above [`super::MAX_PLAINTEXT_LEN`]; [`CryptoError::Memory`] if no
/// secret page could be allocated.
pub fn xchacha_open_into_page(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretPage, CryptoError> {
    let pt_len = sealed
        .len()
        .checked_sub(NONCE_LEN + TAG_LEN)
        .ok_or(CryptoError::Open)?;
    check_len(pt_len)?;
    let mut page = SecretPage::new(pt_len)?;
    match xchacha_open_into(key, aad, sealed, page.expose_secret_mut()) {
        Ok(()) => Ok(page),
        Err(e) => {
            page.wipe();
            Err(e)
        }
    }
}

/// Verifies and decrypts `sealed` into `out`, which must be exactly the plaintext length.
/// Nothing is written to `out` unless the tag verifies.
fn xchacha_open_into(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if sealed.len() != NONCE_LEN + out.len() + TAG_LEN {
        return Err(CryptoError::Open);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(out.len());
    let nonce = XNonce::try_from(nonce).map_err(|_| CryptoError::Open)?;
    let tag = Tag::try_from(tag).map_err(|_| CryptoError::Open)?;
    let buffer = InOutBuf::new(ciphertext, out).map_err(|_| CryptoError::Open)?;
    XChaCha20Poly1305::new(key.into())
        .decrypt_inout_detached(&nonce, aad, buffer, &tag)
        .map_err(|_| CryptoError::Open)
}

#[cfg(test)]
mod rewrap_tests {
    use super::*;

    #[test]
    fn a_rewrapped_record_opens_under_the_new_kek_only() {
        let (old, new) = (Kek::generate().expect("kek"), Kek::generate().expect("kek"));
        let env = encrypt(&old, b"aad", b"the value").expect("encrypt");
        let wrapped = rewrap(&old, &new, b"aad", &env.wrapped_dek).expect("rewrap");
        let moved = Envelope {
            wrapped_dek: wrapped,
            ciphertext: env.ciphertext.clone(),
        };
        let page = decrypt_into_page(&new, b"aad", &moved).expect("opens under the new KEK");
        assert_eq!(page.expose_secret(), b"the value");
        assert!(decrypt_into_page(&old, b"aad", &moved).is_err());
        assert!(
            rewrap(&new, &old, b"aad", &env.wrapped_dek).is_err(),
            "wrong old KEK"
        );
        assert!(
            rewrap(&old, &new, b"other", &env.wrapped_dek).is_err(),
            "wrong record"
        );
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const AAD: &[u8] = b"credential:0xabc/openai";
    const SECRET: &[u8] = b"sk-live-CANARY-envelope";

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn envelopes_round_trip_into_the_strongest_secret_page() {
        let kek = Kek::generate().unwrap();
        let env = encrypt(&kek, AAD, SECRET).expect("encrypt");
        assert_eq!(env.wrapped_dek.len(), 72);
        assert_eq!(env.ciphertext.len(), 24 + SECRET.len() + 16);
        assert!(!contains(&env.ciphertext, SECRET));
        let page = decrypt_into_page(&kek, AAD, &env).expect("decrypt");
        assert_eq!(page.expose_secret(), SECRET);
        let test = "envelope::tests::envelopes_round_trip_into_the_strongest_secret_page";
        assert_eq!(page.kind(), super::super::best_page_kind(test));
    }

    #[test]
    fn each_record_gets_its_own_data_key_and_nonce() {
        let kek = Kek::generate().unwrap();
        let a = encrypt(&kek, AAD, SECRET).expect("encrypt");
        let b = encrypt(&kek, AAD, SECRET).expect("encrypt");
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn flipping_any_bit_of_the_wrapped_key_or_the_ciphertext_fails() {
        let kek = Kek::generate().unwrap();
        let env = encrypt(&kek, AAD, SECRET).expect("encrypt");
        for i in 0..env.wrapped_dek.len() {
            for bit in 0..8 {
                let mut bad = env.clone();
                bad.wrapped_dek[i] ^= 1 << bit;
                assert!(
                    matches!(decrypt_into_page(&kek, AAD, &bad), Err(CryptoError::Open)),
                    "wrapped_dek byte {i} bit {bit}"
                );
            }
        }
        for i in 0..env.ciphertext.len() {
            for bit in 0..8 {
                let mut bad = env.clone();
                bad.ciphertext[i] ^= 1 << bit;
                assert!(
                    matches!(decrypt_into_page(&kek, AAD, &bad), Err(CryptoError::Open)),
                    "ciphertext byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_aad_or_kek_fails_and_so_do_swapped_records() {
        let kek = Kek::generate().unwrap();
        let env = encrypt(&kek, AAD, SECRET).expect("encrypt");
        assert!(matches!(
            decrypt_into_page(&kek, b"credential:0xabc/github", &env),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            decrypt_into_page(&Kek::generate().unwrap(), AAD, &env),
            Err(CryptoError::Open)
        ));
        // A wrapped key from another record does not open this record's ciphertext.
        let other = encrypt(&kek, AAD, SECRET).expect("encrypt");
        let mixed = Envelope {
            wrapped_dek: other.wrapped_dek,
            ciphertext: env.ciphertext.clone(),
        };
        assert!(matches!(
            decrypt_into_page(&kek, AAD, &mixed),
            Err(CryptoError::Open)
        ));
        let short = Envelope {
            wrapped_dek: env.wrapped_dek[..71].to_vec(),
            ciphertext: env.ciphertext.clone(),
        };
        assert!(matches!(
            decrypt_into_page(&kek, AAD, &short),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn xchacha_helpers_round_trip_and_reject_tampering() {
        let key = [9u8; 32];
        let sealed = xchacha_seal(&key, b"session-v1", SECRET).expect("seal");
        assert_eq!(sealed.capacity(), sealed.len(), "allocated once, exactly");
        let page = xchacha_open_into_page(&key, b"session-v1", &sealed).expect("open");
        assert_eq!(page.expose_secret(), SECRET);

        let mut bad = sealed.clone();
        bad[30] ^= 0x01;
        assert!(matches!(
            xchacha_open_into_page(&key, b"session-v1", &bad),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            xchacha_open_into_page(&key, b"session-v2", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            xchacha_open_into_page(&[8u8; 32], b"session-v1", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            xchacha_open_into_page(&key, b"session-v1", &sealed[..39]),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn keks_of_the_wrong_length_are_rejected_and_the_right_one_round_trips() {
        assert!(matches!(
            Kek::from_bytes(&[1u8; 31]),
            Err(CryptoError::BadKey)
        ));
        assert!(matches!(
            Kek::from_bytes(&[1u8; 33]),
            Err(CryptoError::BadKey)
        ));
        let kek = Kek::generate().unwrap();
        let env = encrypt(&kek, AAD, SECRET).expect("encrypt");
        let loaded = Kek::from_bytes(kek.expose_secret()).expect("load");
        let page = decrypt_into_page(&loaded, AAD, &env).expect("decrypt");
        assert_eq!(page.expose_secret(), SECRET);
    }

    #[test]
    fn debug_of_a_kek_does_not_show_the_key() {
        let kek = Kek::from_bytes(b"CANARY-KEK-0123456789abcdef-0123").expect("kek");
        let shown = format!("{kek:?} {kek:#?}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert_eq!(format!("{kek:?}"), "Kek([REDACTED])");
    }
}
