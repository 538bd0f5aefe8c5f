//! What every command starts from: the home directory, the session store, the server URL,
//! and (for commands that need one) the stored session with a client bound to its server.

use std::path::PathBuf;

use agentkeys_core::session_store::{
    Protection, SessionStore, SessionStoreError, StoreChoice, StoredSession,
};
use agentkeys_core::{Backend as _, HttpBackend};
use agentkeys_types::Wallet;

use crate::error::{CliError, CliResult, exit};

/// The keyring account of the master session's data key (decision 79 in docs/architecture.md).
const KEYRING_ACCOUNT: &str = "master-key";

/// Global options, resolved.
pub struct Context {
    /// `$AGENTKEYS_HOME` or `~/.agentkeys`.
    pub home: PathBuf,
    /// `--json`.
    pub json: bool,
    /// `--server` / `AGENTKEYS_SERVER`, normalized.
    pub server: Option<String>,
    /// `AGENTKEYS_SESSION_STORE`.
    pub choice: StoreChoice,
    /// The session slot.
    pub store: SessionStore,
}

/// A loaded session and a client that carries its token.
pub struct Session {
    /// What is stored.
    pub stored: StoredSession,
    /// How it is protected at rest.
    pub protection: Protection,
    /// A client for the session's own server, with its bearer token.
    pub backend: HttpBackend,
}

/// Trailing slashes off, so `http://h:1/` and `http://h:1` compare equal.
pub fn normalize_server(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

impl Context {
    /// Resolves the environment: `AGENTKEYS_HOME`, `HOME`, `AGENTKEYS_SESSION_STORE`.
    pub fn new(server: Option<String>, json: bool) -> CliResult<Self> {
        let home = agentkeys_core::paths::home().ok_or_else(|| {
            CliError::usage("neither AGENTKEYS_HOME nor HOME is set")
                .hint("set AGENTKEYS_HOME to a directory for agentkeys' local state")
        })?;
        let choice_raw = std::env::var("AGENTKEYS_SESSION_STORE").unwrap_or_default();
        let choice = StoreChoice::parse(&choice_raw).ok_or_else(|| {
            CliError::usage(format!(
                "AGENTKEYS_SESSION_STORE={choice_raw} is not one of auto, keyring, file"
            ))
        })?;
        let store = SessionStore::new(&home, "session", KEYRING_ACCOUNT);
        Ok(Context {
            home,
            json,
            server: server
                .map(|s| normalize_server(&s))
                .filter(|s| !s.is_empty()),
            choice,
            store,
        })
    }

    /// The server URL for commands that start without a session (init, recover).
    pub fn server_or_error(&self, stored: Option<&StoredSession>) -> CliResult<String> {
        self.server
            .clone()
            .or_else(|| stored.map(|s| s.server.clone()))
            .ok_or_else(|| {
                CliError::usage("no server given")
                    .hint("pass --server URL or set AGENTKEYS_SERVER (e.g. http://127.0.0.1:8090)")
            })
    }

    /// Refuses to send a stored token to a server other than the one that minted it.
    pub fn check_server(&self, stored: &StoredSession) -> CliResult {
        match &self.server {
            Some(s) if *s != normalize_server(&stored.server) => Err(CliError::new(
                "CONFLICT",
                exit::REJECTED,
                format!(
                    "the stored session belongs to {}, not {s}; its token is never sent elsewhere",
                    stored.server
                ),
            )
            .hint(
                "unset AGENTKEYS_SERVER, use another AGENTKEYS_HOME for the second server, or \
                 'agentkeys init --force --server URL' to switch",
            )),
            _ => Ok(()),
        }
    }

    /// Loads the stored session and binds a client to its server.
    pub fn session(&self) -> CliResult<Session> {
        let (stored, protection) = self.store.load().map_err(|e| match e {
            SessionStoreError::NotFound(_) => CliError::new(
                "NO_SESSION",
                exit::AUTH,
                format!("no session in {}", self.home.display()),
            )
            .hint("run 'agentkeys init --server URL' first"),
            other => other.into(),
        })?;
        self.check_server(&stored)?;
        let backend = HttpBackend::for_session(&stored)?;
        Ok(Session {
            stored,
            protection,
            backend,
        })
    }
}

impl Session {
    /// The session's own wallet.
    pub fn wallet(&self) -> &Wallet {
        &self.stored.session.wallet
    }

    /// A wallet, or an alias / e-mail resolved through the server.
    pub async fn resolve_agent(&self, name: &str) -> CliResult<Wallet> {
        if let Ok(w) = Wallet::parse(name) {
            return Ok(w);
        }
        if name.starts_with("0x") {
            return Err(CliError::usage(format!("'{name}' is not a wallet"))
                .hint("a wallet is 0x followed by 40 lower-case hex digits"));
        }
        match self.backend.resolve_identity(name).await {
            Ok(identity) => Ok(identity.wallet),
            Err(e) => {
                let mut err = CliError::from(e);
                if err.code == "NOT_FOUND" {
                    err.message = format!("no agent named '{name}'");
                    err.hint = Some(
                        "see 'agentkeys agents'; name one with 'agentkeys link WALLET --alias NAME'"
                            .into(),
                    );
                }
                Err(err)
            }
        }
    }

    /// [`resolve_agent`](Self::resolve_agent) for an optional flag.
    pub async fn resolve_optional(&self, name: Option<&str>) -> CliResult<Option<Wallet>> {
        match name {
            Some(n) => Ok(Some(self.resolve_agent(n).await?)),
            None => Ok(None),
        }
    }
}
