//! The session file at rest (`session.enc`): after a valid header naming a valid key file,
//! arbitrary bytes (nonce, ciphertext, tag) must be rejected cleanly by `load`, never panic.
#![no_main]

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::LazyLock;

use agentkeys_core::session_store::SessionStore;
use libfuzzer_sys::fuzz_target;

const KEY_ID: [u8; 16] = [5u8; 16];

/// A private directory holding a valid key file for `KEY_ID`.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("agentkeys-fuzz-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("session.key");
    let mut bytes = b"AKSKEY01".to_vec();
    bytes.extend_from_slice(&KEY_ID);
    bytes.extend_from_slice(&[11u8; 32]);
    std::fs::write(&key, bytes).expect("key file");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("0600");
    dir
});

fuzz_target!(|body: &[u8]| {
    let mut file = b"AKSESS01".to_vec();
    file.push(2); // protection: key file
    file.extend_from_slice(&KEY_ID);
    file.extend_from_slice(body);
    if std::fs::write(DIR.join("session.enc"), file).is_ok() {
        let _ = SessionStore::new(DIR.as_path(), "session", "fuzz").load();
    }
});
