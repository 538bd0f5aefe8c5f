//! Shared server state: configuration, keys, the store, the audit writer, the per-session
//! read limiter and the clock. Built once at start, shared by every handler.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use agentkeys_types::UnixSeconds;
use agentkeys_types::api::ServerInfo;
use base64::Engine as _;

use crate::audit::AuditLog;
use crate::buckets::RateLimiter;
use crate::keys::ServerKeys;
use crate::store::{Store, Wakeups};

/// How `POST /v1/sessions` checks the enrolment credential.
#[derive(Clone)]
pub enum AuthMode {
    /// Any non-empty token enrols (development only; the start-up log says so).
    Dev,
    /// Only tokens whose SHA-256 is in the set (loaded from `--auth tokens FILE`).
    Tokens(HashSet<[u8; 32]>),
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::Dev => f.write_str("Dev"),
            AuthMode::Tokens(t) => write!(f, "Tokens({} hashed)", t.len()),
        }
    }
}

/// Why an enrolment token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A `sha256:` line does not hold 64 hex digits.
    #[error("{path} line {line}: a sha256: line must hold 64 hex digits")]
    BadHash {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// No token at all.
    #[error("{0} holds no enrolment token")]
    Empty(String),
}

impl AuthMode {
    /// Reads `--auth tokens FILE`: one token per line (kept only as its SHA-256), or
    /// `sha256:<64 hex>`; blank lines and `#` comments are skipped. Warns when the file is
    /// readable by group or others.
    pub fn from_tokens_file(path: &std::path::Path) -> Result<Self, TokensFileError> {
        use std::os::unix::fs::PermissionsExt as _;
        let shown = path.display().to_string();
        let io = |source| TokensFileError::Io {
            path: shown.clone(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %shown, "the enrolment token file is readable by group or others; chmod 600 it");
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let mut set = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hash = match line.strip_prefix("sha256:") {
                Some(hex) => parse_hex32(hex).ok_or(TokensFileError::BadHash {
                    path: shown.clone(),
                    line: n + 1,
                })?,
                None => agentkeys_core::crypto::sha256(line.as_bytes()),
            };
            set.insert(hash);
        }
        if set.is_empty() {
            return Err(TokensFileError::Empty(shown));
        }
        Ok(AuthMode::Tokens(set))
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Tunables, with the defaults the binary uses.
#[derive(Clone, Debug)]
pub struct Config {
    /// Enrolment check.
    pub auth: AuthMode,
    /// Master session lifetime, seconds.
    pub master_ttl: i64,
    /// Agent session lifetime, seconds.
    pub agent_ttl: i64,
    /// Pair/recover request lifetime, seconds (decision 71: 60).
    pub pair_ttl: i64,
    /// High-value request and grant lifetime, seconds (decision 72: 300).
    pub high_value_ttl: i64,
    /// Credential reads per second per session (0 = unlimited).
    pub read_rate: f64,
    /// Burst size of the read limiter.
    pub read_burst: f64,
    /// Request body limit, bytes.
    pub body_limit: usize,
    /// Enrolments per second per client address (the server as a whole: ten times this).
    pub enrol_rate: f64,
    /// Anonymous pair/recover opens per second per client address (server-wide: ten times).
    pub anon_open_rate: f64,
    /// Decision long-polls waiting at once, server-wide; beyond it a poll answers at once.
    pub max_long_polls: usize,
    /// Session-state watches (`GET /v1/session/state`, one held by each daemon) waiting at
    /// once, server-wide; beyond it a watch answers at once and the daemon polls.
    pub max_state_watches: usize,
    /// Whether `GET /metrics` is served on the API listener (not when it has its own).
    pub metrics_on_api: bool,
    /// The origin browsers reach this server at (`https://keys.example.com`, no trailing
    /// slash): the approval and passkey pages are served, and passkeys bound, for it. None:
    /// no pages, no passkeys.
    pub public_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auth: AuthMode::Dev,
            master_ttl: 30 * 86_400,
            agent_ttl: 30 * 86_400,
            pair_ttl: 60,
            high_value_ttl: 300,
            read_rate: 50.0,
            read_burst: 100.0,
            body_limit: 64 * 1024,
            enrol_rate: 1.0,
            anon_open_rate: 5.0,
            max_long_polls: 512,
            max_state_watches: 8192,
            metrics_on_api: true,
            public_url: None,
        }
    }
}

/// Wall-clock seconds, with an offset tests can move forward to cross deadlines.
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
}

impl Clock {
    /// Now, in Unix seconds.
    pub fn now(&self) -> UnixSeconds {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        real + self.offset.load(Ordering::Relaxed)
    }

    /// Moves the clock forward (tests of expiry).
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::Relaxed);
    }
}

/// Decides which refusals reach the audit log so that a flood of them cannot grow it
/// without bound: one row per client address a minute and one a second server-wide; the
/// refusals not written are counted and the count goes into the next row's detail.
#[derive(Debug, Default)]
pub struct RefusalTally {
    limiter: RateLimiter,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RefusalTally {
    /// `Some(n)` when this refusal is to be audited (`n` refusals were not, since the last
    /// row); `None` when it is only counted.
    pub fn admit(&self, address: &str) -> Option<u64> {
        let per_address = self.limiter.allow(address, 1.0 / 60.0, 1.0);
        if per_address && self.limiter.allow("*", 1.0, 1.0) {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Everything a handler needs.
pub struct AppState<S: Store> {
    /// Storage.
    pub store: Arc<S>,
    /// Key material.
    pub keys: ServerKeys,
    /// Tunables.
    pub config: Config,
    /// The audit writer.
    pub audit: AuditLog,
    /// Wakes long-polls when an auth request is opened or decided (here, or on another
    /// server sharing the store).
    pub wake: Arc<Wakeups>,
    /// How often a long-poll re-reads anyway, when other servers share the store and a
    /// wake-up from them can be lost.
    pub decision_poll: Option<std::time::Duration>,
    /// Long-polls allowed to wait at once (`max_long_polls`).
    pub long_polls: tokio::sync::Semaphore,
    /// Session-state watches allowed to wait at once (`max_state_watches`).
    pub state_watches: tokio::sync::Semaphore,
    /// Refused enrolments: at most one audit row per address a minute (and one a second
    /// server-wide); the rest are counted here and reported on the next row written.
    pub refused_enrolments: RefusalTally,
    /// The clock.
    pub clock: Clock,
    /// Precomputed `GET /v1/server-info`.
    pub info: ServerInfo,
    /// What `GET /metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The WebAuthn relying party for `config.public_url`; None without one (no pages).
    pub passkeys: Option<webauthn_rs::prelude::Webauthn>,
    /// Set when shutdown begins: long-polls answer at once, `/v1/ready` says 503.
    stopping: std::sync::atomic::AtomicBool,
}

impl<S: Store> AppState<S> {
    /// Builds the state and starts the audit writer (needs a Tokio runtime).
    pub fn new(store: S, keys: ServerKeys, config: Config) -> Arc<Self> {
        let store = Arc::new(store);
        let b64 = base64::engine::general_purpose::STANDARD;
        let shielding = keys.shielding.public_key();
        let vouch = keys
            .signing
            .sign(&agentkeys_types::api::shielding_key_signing_bytes(
                &shielding,
            ));
        let info = ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            shielding_public_key: b64.encode(shielding),
            signing_public_key: b64.encode(keys.signing.public_key()),
            shielding_key_signature: b64.encode(vouch),
            hpke_suite: "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305".to_owned(),
        };
        tokio::spawn(purge_loop(Arc::downgrade(&store)));
        let long_polls = tokio::sync::Semaphore::new(config.max_long_polls);
        let state_watches = tokio::sync::Semaphore::new(config.max_state_watches);
        let wake = Arc::new(Wakeups::default());
        let decision_poll = store.watch_decisions(&wake);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let passkeys = config.public_url.as_deref().and_then(|url| {
            relying_party(url)
                .inspect_err(|e| tracing::warn!(error = %e, "no passkey approvals"))
                .ok()
        });
        Arc::new(AppState {
            passkeys,
            audit: AuditLog::start(store.clone(), metrics.clone()),
            metrics,
            store,
            keys,
            config,
            wake,
            decision_poll,
            long_polls,
            state_watches,
            refused_enrolments: RefusalTally::default(),
            clock: Clock::default(),
            info,
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Begins shutdown: waiting long-polls answer with what they find, new ones do not
    /// wait, and `/v1/ready` answers 503 so load balancers move traffic away.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.decided();
        self.wake.all_state_changed();
    }

    /// What the sessions of `master`'s tree may hold changed (a revocation, a scope, a
    /// policy, a binding, a stored value, a standing approval): their session-state watches
    /// answer now, here and on every server sharing the store (decision 86). Called
    /// after the change committed. A failed announcement is logged: other servers' watches
    /// then learn of it at their next re-read.
    pub async fn state_changed(&self, master: &agentkeys_types::Wallet) {
        self.wake.state_changed(master);
        if let Err(e) = self.store.announce_state(master).await {
            tracing::warn!(error = %e, "could not announce a state change to other servers");
        }
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// The WebAuthn relying party for the server's public URL: its host is the RP id.
fn relying_party(public_url: &str) -> Result<webauthn_rs::prelude::Webauthn, String> {
    let origin =
        webauthn_rs::prelude::Url::parse(public_url).map_err(|e| format!("--public-url: {e}"))?;
    let host = origin
        .host_str()
        .ok_or("--public-url has no host")?
        .to_owned();
    webauthn_rs::prelude::WebauthnBuilder::new(&host, &origin)
        .and_then(|b| b.rp_name("agentkeys").build())
        .map_err(|e| format!("--public-url cannot be a passkey origin: {e}"))
}

/// How long decided or expired auth requests are kept (for `by-code` lookups and audits of
/// what was asked), and how often the purge runs.
const AUTH_REQUEST_RETENTION: i64 = 86_400;
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Hourly, deletes auth requests that ended more than a day ago; stops with the store.
async fn purge_loop<S: Store>(store: std::sync::Weak<S>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let before = Clock::default().now() - AUTH_REQUEST_RETENTION;
        match store.purge_auth_requests(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "old auth requests deleted"),
            Err(e) => tracing::warn!(error = %e, "purging old auth requests failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_keeps_hashes_and_rejects_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let hash = "ab".repeat(32);
        std::fs::write(&p, format!("# c\n\n tok-1 \nsha256:{hash}\n")).unwrap();
        let AuthMode::Tokens(set) = AuthMode::from_tokens_file(&p).unwrap() else {
            panic!()
        };
        assert!(set.contains(&agentkeys_core::crypto::sha256(b"tok-1")));
        assert!(set.contains(&[0xab; 32]));
        assert_eq!(set.len(), 2);
        std::fs::write(&p, "sha256:abc\n").unwrap();
        assert!(matches!(
            AuthMode::from_tokens_file(&p),
            Err(TokensFileError::BadHash { line: 1, .. })
        ));
        std::fs::write(&p, "# only a comment\n").unwrap();
        assert!(matches!(
            AuthMode::from_tokens_file(&p),
            Err(TokensFileError::Empty(_))
        ));
        assert!(matches!(
            AuthMode::from_tokens_file(&dir.path().join("missing")),
            Err(TokensFileError::Io { .. })
        ));
    }

    #[test]
    fn the_clock_moves_forward_when_told() {
        let c = Clock::default();
        let a = c.now();
        c.advance(100);
        assert!(c.now() >= a + 100);
    }
}
