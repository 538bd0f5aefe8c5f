//! Ed25519 signatures: the server's signing key and verification against a pinned public key.
//!
//! Decision 71: the server signs the sealed child session it returns to the daemon's
//! long-poll, and the daemon verifies it against the server key it pinned. Verification is
//! `verify_strict` (rejects non-canonical signatures and small-order keys).

use std::fmt;

use agentkeys_secmem::{SecretBytes, SecretPage};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{CryptoError, hex};

/// Length of an Ed25519 seed (the private key as stored).
const SEED_LEN: usize = 32;

/// An Ed25519 key pair. The seed lives in a [`SecretPage`] (`memfd_secret` where the kernel
/// has it: the server holds it for its whole life); each signature expands it into a
/// `SigningKey` that is zeroized as soon as it is dropped (ed25519-dalek `zeroize`).
/// `Debug` shows only the public key; no `Clone`.
pub struct SigningKeyPair {
    seed: SecretPage,
    public: [u8; 32],
}

impl SigningKeyPair {
    /// A fresh key pair from the operating system's CSPRNG.
    ///
    /// Errors: [`CryptoError::Memory`] if no secret page could be allocated.
    ///
    /// # Panics
    /// If the operating system's random number generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let seed = super::random_page(SEED_LEN)?;
        Self::from_page(seed)
    }

    /// Loads a key pair from its 32-byte seed (as written by [`seed`](Self::seed)).
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        if seed.len() != SEED_LEN {
            return Err(CryptoError::BadKey);
        }
        Self::from_page(super::page_of(seed)?)
    }

    fn from_page(seed: SecretPage) -> Result<Self, CryptoError> {
        // The expanded key's copies on the stack are overwritten before this returns
        // (agentkeys_secmem::stack).
        let public = agentkeys_secmem::stack::scrubbed(|| {
            Self::key(&seed).map(|k| k.verifying_key().to_bytes())
        })?;
        Ok(Self { seed, public })
    }

    fn key(seed: &SecretPage) -> Result<SigningKey, CryptoError> {
        let bytes: &[u8; SEED_LEN] = seed
            .expose_secret()
            .try_into()
            .map_err(|_| CryptoError::BadKey)?;
        Ok(SigningKey::from_bytes(bytes))
    }

    /// The 32-byte seed, for writing the server's key file.
    pub fn seed(&self) -> SecretBytes {
        SecretBytes::from_slice(self.seed.expose_secret())
    }

    /// The public key, to publish (`/v1/server-info`) and pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Signs `msg` (PureEd25519, deterministic).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        agentkeys_secmem::stack::scrubbed(|| {
            let key = Self::key(&self.seed)
                .expect("invariant: the seed page holds the 32 bytes from_page checked");
            key.sign(msg).to_bytes()
        })
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("public", &hex(&self.public_key()))
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Verifies `sig` over `msg` under `public` (strict: canonical signatures, no small-order keys).
///
/// Errors: [`CryptoError::BadKey`] if `public` is not a valid point;
/// [`CryptoError::BadSignature`] if `sig` is not 64 bytes or does not verify.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| CryptoError::BadKey)?;
    let sig = Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?;
    key.verify_strict(msg, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::super::unhex;
    use super::*;

    const MSG: &[u8] = b"pair decision: request 42 approved, scope openai";

    #[test]
    fn signatures_verify_under_the_signers_public_key() {
        let kp = SigningKeyPair::generate().unwrap();
        let sig = kp.sign(MSG);
        verify(&kp.public_key(), MSG, &sig).expect("valid signature");
    }

    #[test]
    fn a_tampered_message_or_signature_does_not_verify() {
        let kp = SigningKeyPair::generate().unwrap();
        let sig = kp.sign(MSG);
        let mut msg = MSG.to_vec();
        msg[0] ^= 1;
        assert!(matches!(
            verify(&kp.public_key(), &msg, &sig),
            Err(CryptoError::BadSignature)
        ));
        for i in 0..sig.len() {
            let mut bad = sig;
            bad[i] ^= 0x04;
            assert!(
                verify(&kp.public_key(), MSG, &bad).is_err(),
                "signature byte {i}"
            );
        }
        assert!(matches!(
            verify(&kp.public_key(), MSG, &sig[..63]),
            Err(CryptoError::BadSignature)
        ));
    }

    #[test]
    fn another_key_does_not_verify_the_signature() {
        let kp = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        assert!(matches!(
            verify(&other.public_key(), MSG, &kp.sign(MSG)),
            Err(CryptoError::BadSignature)
        ));
    }

    #[test]
    fn a_key_pair_survives_its_seed_and_matches_rfc_8032_test_1() {
        // RFC 8032 §7.1 TEST 1: the empty message.
        let seed = unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let kp = SigningKeyPair::from_seed(&seed).expect("seed");
        assert_eq!(
            hex(&kp.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex(&kp.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        let again = SigningKeyPair::from_seed(kp.seed().expose_secret()).expect("seed");
        assert_eq!(again.public_key(), kp.public_key());
    }

    #[test]
    fn seeds_of_the_wrong_length_are_rejected() {
        assert!(matches!(
            SigningKeyPair::from_seed(&[1u8; 31]),
            Err(CryptoError::BadKey)
        ));
        assert!(matches!(
            SigningKeyPair::from_seed(&[1u8; 64]),
            Err(CryptoError::BadKey)
        ));
    }

    #[test]
    fn debug_of_a_key_pair_does_not_show_the_seed() {
        let kp = SigningKeyPair::generate().unwrap();
        let shown = format!("{kp:?} {kp:#?}");
        assert!(!shown.contains(&hex(kp.seed().expose_secret())), "{shown}");
        assert!(shown.contains(&hex(&kp.public_key())), "{shown}");
    }
}
