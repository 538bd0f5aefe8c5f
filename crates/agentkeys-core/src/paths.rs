//! Where local state lives, shared by the CLI and the daemon so both find the same files
//! and the same socket (docs/cli.md, "Environment").

use std::path::{Path, PathBuf};

/// `$AGENTKEYS_HOME`, else `~/.agentkeys`; `None` when neither variable is set.
pub fn home() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    var("AGENTKEYS_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".agentkeys")))
}

/// The daemon socket: `$AGENTKEYS_SOCKET`, else `$XDG_RUNTIME_DIR/agentkeys/daemon.sock`,
/// else `<home>/run/daemon.sock`.
pub fn default_socket(home: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTKEYS_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("agentkeys").join("daemon.sock"),
        None => home.join("run").join("daemon.sock"),
    }
}
