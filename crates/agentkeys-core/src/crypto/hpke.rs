//! HPKE sealing (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305).
//!
//! Decision 68: `store` seals a credential to the server's shielding key, and the server
//! answers every `read` sealed to the reader's fresh ephemeral key, so the HTTP bodies hold only
//! ciphertext. Decision 4: the child session is sealed to the daemon's key.
//!
//! Sealed format: `enc (32 bytes) || ciphertext || tag (16 bytes)`, with `info` the HPKE info
//! string (binds the context, e.g. which protocol message) and `aad` the AEAD associated data.
//!
//! Plaintext handling: [`seal`] encrypts from the caller's slice straight into the output
//! buffer (an in/out buffer pair), so no copy of the plaintext is ever made; [`open_into_page`]
//! decrypts from the sealed bytes straight into a [`SecretPage`], after the tag has verified
//! (ChaCha20-Poly1305 checks the tag before it writes any plaintext).

use std::fmt;

use ::hpke::aead::AeadTag;
use ::hpke::inout::InOutBuf;
use ::hpke::kem::X25519HkdfSha256;
use ::hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use agentkeys_secmem::{SecretBytes, SecretPage};

use super::{CryptoError, check_len, hex};

type Kem = X25519HkdfSha256;
type Kdf = ::hpke::kdf::HkdfSha256;
type Aead = ::hpke::aead::ChaCha20Poly1305;
type PrivateKey = <Kem as ::hpke::Kem>::PrivateKey;
type PublicKey = <Kem as ::hpke::Kem>::PublicKey;
type EncappedKey = <Kem as ::hpke::Kem>::EncappedKey;

/// Length of an X25519 public key, and of the `enc` prefix of a sealed value.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of the private key.
const PRIVATE_KEY_LEN: usize = 32;
/// Length of the ChaCha20-Poly1305 tag at the end of a sealed value.
const TAG_LEN: usize = 16;

/// An X25519 key pair for receiving sealed values (the server's shielding key, the daemon's
/// pairing key, a reader's ephemeral key).
///
/// The private key's bytes live in a [`SecretPage`] (`memfd_secret` where the kernel has it:
/// the server's shielding key stays there for its whole life, unreadable through
/// `/proc/<pid>/mem`); each open expands them into a key object that x25519-dalek zeroizes
/// when it is dropped. `Debug` shows only the public key; no `Clone`.
pub struct HpkeKeyPair {
    private: SecretPage,
    public: PublicKey,
}

impl HpkeKeyPair {
    /// A fresh key pair from the operating system's CSPRNG.
    ///
    /// Errors: [`CryptoError::Memory`] if no secret page could be allocated.
    ///
    /// # Panics
    /// If the operating system's random number generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_page(super::random_page(PRIVATE_KEY_LEN)?)
    }

    /// Loads a 32-byte private key (as written by [`private_bytes`](Self::private_bytes)).
    /// The scalar is clamped as RFC 9180 requires, so any 32 bytes are accepted.
    pub fn from_private_bytes(sk: &[u8]) -> Result<Self, CryptoError> {
        if sk.len() != PRIVATE_KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        Self::from_page(super::page_of(sk)?)
    }

    fn from_page(private: SecretPage) -> Result<Self, CryptoError> {
        let public =
            agentkeys_secmem::stack::scrubbed(|| Self::key(&private).map(|k| Kem::sk_to_pk(&k)))?;
        Ok(Self { private, public })
    }

    /// The private key as the HPKE library takes it, for the length of one operation.
    fn key(private: &SecretPage) -> Result<PrivateKey, CryptoError> {
        PrivateKey::from_bytes(private.expose_secret()).map_err(|_| CryptoError::BadKey)
    }

    /// The private key, for writing the server's 0600 key file.
    pub fn private_bytes(&self) -> SecretBytes {
        SecretBytes::from_slice(self.private.expose_secret())
    }

    /// The public key, to publish (`/v1/server-info`) or send with a read request.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        self.public.write_exact(&mut out);
        out
    }
}

impl fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpkeKeyPair")
            .field("public", &hex(&self.public_key()))
            .field("private", &"[REDACTED]")
            .finish()
    }
}

/// Length of the sealed value for a plaintext of `plaintext_len` bytes:
/// `32 (enc) + plaintext_len + 16 (tag)`.
pub fn sealed_len(plaintext_len: usize) -> usize {
    PUBLIC_KEY_LEN + plaintext_len + TAG_LEN
}

/// Seals `plaintext` to `recipient_public`: `enc || ciphertext || tag`.
///
/// The output is allocated once with its exact final size and the ciphertext is written into
/// it directly from `plaintext` (no copy of the plaintext is made, so none is left on the heap).
///
/// Errors: [`CryptoError::TooLarge`] above [`super::MAX_PLAINTEXT_LEN`];
/// [`CryptoError::BadKey`] if the public key is unusable (e.g. a low-order point).
pub fn seal(
    recipient_public: &[u8; PUBLIC_KEY_LEN],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    agentkeys_secmem::stack::scrubbed(|| seal_unscrubbed(recipient_public, info, aad, plaintext))
}

/// The body of [`seal`], whose stack the caller scrubs.
fn seal_unscrubbed(
    recipient_public: &[u8; PUBLIC_KEY_LEN],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    check_len(plaintext.len())?;
    let public = PublicKey::from_bytes(recipient_public).map_err(|_| CryptoError::BadKey)?;

    let mut sealed = vec![0u8; sealed_len(plaintext.len())];
    let (enc_out, rest) = sealed.split_at_mut(PUBLIC_KEY_LEN);
    let (ct_out, tag_out) = rest.split_at_mut(plaintext.len());
    let buffer = InOutBuf::new(plaintext, ct_out)
        .expect("invariant: the ciphertext slot is exactly as long as the plaintext");
    let (enc, tag) = ::hpke::single_shot_seal_inout_detached::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &public,
        info,
        buffer,
        aad,
    )
    .map_err(|e| match e {
        // Encapsulation fails only for a public key whose DH result is all zeros.
        ::hpke::HpkeError::EncapError => CryptoError::BadKey,
        _ => CryptoError::TooLarge,
    })?;
    enc.write_exact(enc_out);
    tag.write_exact(tag_out);
    Ok(sealed)
}

/// Opens a value sealed by [`seal`] to `recipient`, decrypting straight into a [`SecretPage`].
///
/// The tag is verified before any plaintext is written, and on failure the page is wiped and
/// dropped, so no plaintext exists anywhere but the returned page.
///
/// Errors: [`CryptoError::Open`] for any authentication failure (wrong key, `info` or `aad`,
/// truncation, tampering); [`CryptoError::TooLarge`] above [`super::MAX_PLAINTEXT_LEN`];
/// [`CryptoError::Memory`] if no secret page could be allocated.
pub fn open_into_page(
    recipient: &HpkeKeyPair,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretPage, CryptoError> {
    agentkeys_secmem::stack::scrubbed(|| open_into_page_unscrubbed(recipient, info, aad, sealed))
}

/// The body of [`open_into_page`], whose stack the caller scrubs.
fn open_into_page_unscrubbed(
    recipient: &HpkeKeyPair,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretPage, CryptoError> {
    let ct_len = sealed
        .len()
        .checked_sub(PUBLIC_KEY_LEN + TAG_LEN)
        .ok_or(CryptoError::Open)?;
    check_len(ct_len)?;
    let (enc, rest) = sealed.split_at(PUBLIC_KEY_LEN);
    let (ciphertext, tag) = rest.split_at(ct_len);
    let enc = EncappedKey::from_bytes(enc).map_err(|_| CryptoError::Open)?;
    let tag = AeadTag::<Aead>::from_bytes(tag).map_err(|_| CryptoError::Open)?;

    let private = HpkeKeyPair::key(&recipient.private)?;
    let mut page = SecretPage::new(ct_len)?;
    let buffer = InOutBuf::new(ciphertext, page.expose_secret_mut())
        .expect("invariant: the page is exactly as long as the ciphertext");
    let opened = ::hpke::single_shot_open_inout_detached::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &private,
        &enc,
        info,
        buffer,
        aad,
        &tag,
    );
    match opened {
        Ok(()) => Ok(page),
        Err(_) => {
            page.wipe();
            Err(CryptoError::Open)
        }
    }
}

#[cfg(test)]
mod tests {

    use super::super::unhex;
    use super::*;

    const INFO: &[u8] = b"agentkeys test v1";
    const AAD: &[u8] = b"agent=0xabc;service=openai";
    const SECRET: &[u8] = b"sk-live-CANARY-0123456789";

    #[test]
    fn sealed_values_open_to_the_same_plaintext() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&kp.public_key(), INFO, AAD, SECRET).expect("seal");
        assert_eq!(sealed.len(), sealed_len(SECRET.len()));
        assert_eq!(sealed.capacity(), sealed.len(), "allocated once, exactly");
        assert!(!sealed.windows(SECRET.len()).any(|w| w == SECRET));
        let page = open_into_page(&kp, INFO, AAD, &sealed).expect("open");
        assert_eq!(page.expose_secret(), SECRET);
    }

    #[test]
    fn open_matches_rfc_9180_appendix_a_2_1() {
        // RFC 9180 A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, Base
        // mode, the encryption with sequence number 0. Proves the wire format (enc || ct || tag)
        // and the suite are standard HPKE, not merely self-consistent.
        let kp = HpkeKeyPair::from_private_bytes(&unhex(
            "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
        ))
        .expect("skRm");
        assert_eq!(
            hex(&kp.public_key()),
            "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a"
        );
        let sealed = unhex(concat!(
            "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a", // enc
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b",       // ct
            "60b4db21993c62ce81883d2dd1b51a28",                                 // tag
        ));
        let info = unhex("4f6465206f6e2061204772656369616e2055726e"); // "Ode on a Grecian Urn"
        let aad = unhex("436f756e742d30"); // "Count-0"
        let page = open_into_page(&kp, &info, &aad, &sealed).expect("RFC vector opens");
        assert_eq!(page.expose_secret(), b"Beauty is truth, truth beauty");
    }

    #[test]
    fn an_empty_plaintext_round_trips() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&kp.public_key(), INFO, AAD, b"").expect("seal");
        assert_eq!(sealed.len(), 48);
        let page = open_into_page(&kp, INFO, AAD, &sealed).expect("open");
        assert!(page.is_empty());
    }

    #[test]
    fn flipping_any_bit_of_a_sealed_value_makes_open_fail() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&kp.public_key(), INFO, AAD, SECRET).expect("seal");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[i] ^= 1 << bit;
                let err = open_into_page(&kp, INFO, AAD, &tampered)
                    .expect_err("a tampered value must not open");
                assert!(
                    matches!(err, CryptoError::Open),
                    "byte {i} bit {bit}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn truncated_or_extended_values_fail_to_open() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&kp.public_key(), INFO, AAD, SECRET).expect("seal");
        for len in [0, 1, 31, 32, 47, sealed.len() - 1] {
            assert!(matches!(
                open_into_page(&kp, INFO, AAD, &sealed[..len]),
                Err(CryptoError::Open)
            ));
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(
            open_into_page(&kp, INFO, AAD, &longer),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn a_wrong_aad_or_info_fails_to_open() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&kp.public_key(), INFO, AAD, SECRET).expect("seal");
        assert!(matches!(
            open_into_page(&kp, INFO, b"agent=0xabc;service=github", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            open_into_page(&kp, b"agentkeys other v1", AAD, &sealed),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn a_value_sealed_to_another_key_fails_to_open() {
        let kp = HpkeKeyPair::generate().unwrap();
        let other = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&other.public_key(), INFO, AAD, SECRET).expect("seal");
        assert!(matches!(
            open_into_page(&kp, INFO, AAD, &sealed),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn opened_plaintext_lives_in_the_strongest_secret_page_this_machine_gives() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sealed = seal(&kp.public_key(), INFO, AAD, SECRET).expect("seal");
        let page = open_into_page(&kp, INFO, AAD, &sealed).expect("open");
        let test =
            "hpke::tests::opened_plaintext_lives_in_the_strongest_secret_page_this_machine_gives";
        assert_eq!(page.kind(), super::super::best_page_kind(test));
    }

    #[test]
    fn a_key_pair_survives_its_private_bytes() {
        let kp = HpkeKeyPair::generate().unwrap();
        let sk = kp.private_bytes();
        assert_eq!(sk.len(), 32);
        let again = HpkeKeyPair::from_private_bytes(sk.expose_secret()).expect("load");
        assert_eq!(again.public_key(), kp.public_key());
        let sealed = seal(&kp.public_key(), INFO, AAD, SECRET).expect("seal");
        let page = open_into_page(&again, INFO, AAD, &sealed).expect("open");
        assert_eq!(page.expose_secret(), SECRET);
    }

    #[test]
    fn private_keys_of_the_wrong_length_are_rejected() {
        for len in [0, 31, 33, 64] {
            assert!(matches!(
                HpkeKeyPair::from_private_bytes(&vec![7u8; len]),
                Err(CryptoError::BadKey)
            ));
        }
    }

    #[test]
    fn sealing_to_a_low_order_public_key_is_rejected() {
        // The all-zero point has order 1: its DH result is all zeros, which RFC 9180 forbids.
        assert!(matches!(
            seal(&[0u8; 32], INFO, AAD, SECRET),
            Err(CryptoError::BadKey)
        ));
    }

    #[test]
    fn oversized_values_are_refused_before_any_work() {
        let kp = HpkeKeyPair::generate().unwrap();
        let big = vec![0u8; super::super::MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&kp.public_key(), INFO, AAD, &big),
            Err(CryptoError::TooLarge)
        ));
        let fake_sealed = vec![0u8; sealed_len(big.len())];
        assert!(matches!(
            open_into_page(&kp, INFO, AAD, &fake_sealed),
            Err(CryptoError::TooLarge)
        ));
    }

    #[test]
    fn debug_of_a_key_pair_shows_the_public_key_only() {
        let kp = HpkeKeyPair::generate().unwrap();
        let shown = format!("{kp:?} {kp:#?}");
        let sk = kp.private_bytes();
        assert!(!shown.contains(&hex(sk.expose_secret())), "{shown}");
        assert!(shown.contains(&hex(&kp.public_key())), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }
}
