//! A temporary directory per test or bench step, removed on drop (std only).

use std::path::{Path, PathBuf};

/// A temporary directory removed on drop (std only).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh private directory under the system temp dir.
    pub fn new(prefix: &str) -> TempDir {
        let r: [u8; 8] = agentkeys_core::crypto::random_array();
        let name = format!("{prefix}-{}", agentkeys_core::hex(&r));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
