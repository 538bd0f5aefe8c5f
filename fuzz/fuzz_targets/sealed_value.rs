//! Sealed values as they arrive from the wire or the database: HPKE open, the envelope
//! (wrapped data key + ciphertext) and XChaCha open. Garbage must fail cleanly, never panic.
#![no_main]

use std::sync::LazyLock;

use agentkeys_core::crypto::envelope::{self, Envelope, Kek};
use agentkeys_core::crypto::hpke::{self, HpkeKeyPair};
use libfuzzer_sys::fuzz_target;

static RECIPIENT: LazyLock<HpkeKeyPair> =
    LazyLock::new(|| HpkeKeyPair::from_private_bytes(&[7u8; 32]).expect("a valid key"));
static KEK: LazyLock<Kek> = LazyLock::new(|| Kek::from_bytes(&[9u8; 32]).expect("a valid key"));

fuzz_target!(|data: &[u8]| {
    let _ = hpke::open_into_page(&RECIPIENT, b"agentkeys-fuzz", b"aad", data);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (wrapped, ciphertext) = data.split_at(split);
    let env = Envelope {
        wrapped_dek: wrapped.to_vec(),
        ciphertext: ciphertext.to_vec(),
    };
    let _ = envelope::decrypt_into_page(&KEK, b"aad", &env);
    let _ = envelope::xchacha_open_into_page(&[3u8; 32], b"aad", data);
});
