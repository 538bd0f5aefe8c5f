//! The agentkeys managed runtime for Rust agents (decision 75).
//!
//! A credential arrives as a `memfd_secret` file descriptor, never as bytes in a message:
//! the daemon sends the fd with `SCM_RIGHTS`, this crate maps it, and the bytes are only
//! reachable inside [`Credential::with_bytes`]. Dropping the [`Credential`] wipes the
//! mapping (the file's only contents), unmaps it and closes the fd. While any credential is
//! held the process is non-dumpable, so a same-uid process can neither `ptrace` it nor
//! `pidfd_getfd` the descriptor.
//!
//! ```no_run
//! let credential = agentkeys_runtime::credential("openai")?;
//! credential.with_bytes(|key| {
//!     // use `key` for the request at hand; do not copy it out
//!     # let _ = key;
//! });
//! drop(credential); // wiped, unmapped, closed
//! # Ok::<(), agentkeys_runtime::Error>(())
//! ```
//!
//! Programs started with `agentkeys run --fd --service openai` inherit the descriptor
//! instead (`AGENTKEYS_FD_OPENAI=<fd>:<length>`); [`credential`] takes that one first.
//!
//! Two modules: this one (asking for a credential, mapping and wiping it) and `wire.rs`,
//! the connection to the daemon ([`Client`]: JSON-RPC lines read with `recvmsg`, so the
//! descriptors sent with a line are kept).

#![forbid(unsafe_code)]

mod wire;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agentkeys_secmem::{SecretPage, SecretPageKind};
use serde_json::{Value, json};

pub use wire::Client;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answers on the socket.
    #[error(
        "no agentkeys daemon answers on {path}: {source}; start it with 'agentkeys-daemon serve \
         --server URL' or set AGENTKEYS_SOCKET"
    )]
    Unreachable {
        /// The socket tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon answered with an error (its message says what the human must do).
    #[error("{0}")]
    Refused(String),
    /// The daemon broke the protocol (or is too old for fd delivery).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The capability this runtime advertises.
pub const FD_CAPABILITY: &str = "agentkeys/fd-delivery";

/// A credential received as an fd and mapped in place.
///
/// Its bytes are reachable only inside [`with_bytes`](Self::with_bytes). Dropping it wipes
/// the mapping, unmaps it, closes the descriptor and (for the last credential held)
/// restores the process's dumpable flag.
pub struct Credential {
    page: SecretPage,
    service: String,
    _guard: DumpGuard,
}

impl Credential {
    fn new(page: SecretPage, service: &str) -> Result<Self, Error> {
        if page.kind() == SecretPageKind::LockedAnon {
            return Err(Error::Protocol("a credential page without an fd".into()));
        }
        Ok(Credential {
            page,
            service: service.to_owned(),
            _guard: DumpGuard::acquire()?,
        })
    }

    /// Calls `f` with the credential's bytes, in place (no copy is made).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.page.expose_secret())
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.page.len()
    }

    /// Whether the credential is empty.
    pub fn is_empty(&self) -> bool {
        self.page.is_empty()
    }

    /// `memfd_secret` or `sealed_memfd`.
    pub fn kind(&self) -> SecretPageKind {
        self.page.kind()
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("service", &self.service)
            .field("kind", &self.page.kind())
            .field("len", &self.page.len())
            .finish_non_exhaustive()
    }
}

/// Credentials held, and whether the process was dumpable before the first.
static HELD: Mutex<(usize, bool)> = Mutex::new((0, false));

/// Keeps the process non-dumpable while at least one credential lives.
struct DumpGuard;

impl DumpGuard {
    fn acquire() -> Result<Self, Error> {
        let mut held = HELD
            .lock()
            .map_err(|_| Error::Protocol("dump guard poisoned".into()))?;
        if held.0 == 0 {
            held.1 = agentkeys_secmem::process::is_dumpable()?;
            agentkeys_secmem::process::set_dumpable(false)?;
        }
        held.0 += 1;
        Ok(DumpGuard)
    }
}

impl Drop for DumpGuard {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            held.0 = held.0.saturating_sub(1);
            if held.0 == 0 && held.1 {
                let _ = agentkeys_secmem::process::set_dumpable(true);
            }
        }
    }
}

/// `AGENTKEYS_FD_OPENAI` for `openai`.
pub fn fd_env_var(service: &str) -> String {
    let upper: String = service
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("AGENTKEYS_FD_{upper}")
}

/// The credential for `service`: the descriptor inherited from `agentkeys run --fd` if the
/// environment names one (see [`inherited`]: call it before starting threads), else a fresh
/// one from the daemon on the default socket.
pub fn credential(service: &str) -> Result<Credential, Error> {
    if let Some(c) = inherited(service)? {
        return Ok(c);
    }
    Client::connect(None)?.get_credential(service)
}

/// The descriptor `agentkeys run --fd` passed for `service`
/// (`AGENTKEYS_FD_<SERVICE>=<fd>:<length>`), if any.
///
/// Single use, and sound without the caller's help: the variable is taken out of the
/// environment (programs started later neither inherit it nor the descriptor, which becomes
/// close-on-exec), and the descriptor is adopted only if it was inherited across `execve`
/// and is a secret file; anything else is refused and left open, never closed. Removing a
/// variable is only safe while no other thread reads the environment, so this fails once
/// the process runs threads: call it first thing in `main`, before any runtime starts.
pub fn inherited(service: &str) -> Result<Option<Credential>, Error> {
    let name = fd_env_var(service);
    if std::env::var_os(&name).is_none() {
        return Ok(None);
    }
    let page = SecretPage::take_inherited(&name).map_err(|e| {
        Error::Protocol(format!(
            "{name}: {e}; start the program with 'agentkeys run --fd' and take the credential \
             (agentkeys_runtime::inherited) before starting threads"
        ))
    })?;
    match page {
        Some(page) => Credential::new(page, service).map(Some),
        None => Ok(None),
    }
}

/// The daemon socket: `$AGENTKEYS_SOCKET`, else `$XDG_RUNTIME_DIR/agentkeys/daemon.sock`,
/// else `$AGENTKEYS_HOME/run/daemon.sock` (`~/.agentkeys` by default).
pub fn default_socket() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("AGENTKEYS_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("agentkeys").join("daemon.sock");
    }
    let home = var("AGENTKEYS_HOME").map(PathBuf::from).unwrap_or_else(|| {
        var("HOME")
            .map(|h| PathBuf::from(h).join(".agentkeys"))
            .unwrap_or_else(|| PathBuf::from(".agentkeys"))
    });
    home.join("run").join("daemon.sock")
}

fn initialize_params(fd_delivery: bool) -> Value {
    let capabilities = if fd_delivery {
        json!({"experimental": {FD_CAPABILITY: {"version": 1}}})
    } else {
        json!({})
    };
    json!({
        "protocolVersion": "2025-11-25",
        "capabilities": capabilities,
        "clientInfo": {"name": "agentkeys-runtime-rust", "version": env!("CARGO_PKG_VERSION")},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_service() {
        assert_eq!(fd_env_var("open-ai.v2"), "AGENTKEYS_FD_OPEN_AI_V2");
    }

    /// The dumpable flag is process-wide: tests that hold credentials take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn holding_a_credential_makes_the_process_non_dumpable_until_the_last_is_dropped() {
        let _turn = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let page = |b: &[u8]| SecretPage::from_slice(b).expect("page");
        agentkeys_secmem::process::set_dumpable(true).unwrap();
        let a = Credential::new(page(b"one"), "a").unwrap();
        let b = Credential::new(page(b"two"), "b").unwrap();
        assert!(!agentkeys_secmem::process::is_dumpable().unwrap());
        drop(a);
        assert!(!agentkeys_secmem::process::is_dumpable().unwrap());
        b.with_bytes(|bytes| assert_eq!(bytes, b"two"));
        drop(b);
        assert!(agentkeys_secmem::process::is_dumpable().unwrap());
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let _turn = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = Credential::new(SecretPage::from_slice(b"CANARY-DEBUG").unwrap(), "x").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
    }

    #[test]
    fn a_missing_daemon_is_reported_with_a_fix() {
        let e = Client::connect(Some(Path::new("/nonexistent/agentkeys.sock")))
            .err()
            .expect("must fail");
        let text = e.to_string();
        assert!(text.contains("agentkeys-daemon serve"), "{text}");
    }
}
