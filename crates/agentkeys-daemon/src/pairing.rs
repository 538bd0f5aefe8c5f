//! Getting the daemon its agent session (decision 71): reuse a stored one, or pair
//! (a fresh X25519 key, a pair code and OTP for the master, a long-poll, a new code when
//! one expires), or recover an existing agent. The session arrives sealed to the fresh key
//! and signed by the server, whose key is pinned at first contact (or given).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentkeys_core::client::open_decision;
use agentkeys_core::crypto::HpkeKeyPair;
use agentkeys_core::session_store::{SessionStore, SessionStoreError, StoreChoice, StoredSession};
use agentkeys_core::{Backend as _, ClientError, HttpBackend};
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{AuthKind, AuthRequestTicket, AuthStatus, OpenAuthRequest};

use crate::error::DaemonError;

/// What the daemon shows while it waits for its approval (`status` reads it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Waiting {
    /// `pair` or `recover`.
    pub kind: String,
    /// The code to approve.
    pub pair_code: String,
    /// The OTP to compare.
    pub otp: String,
    /// When the code expires (Unix seconds).
    pub expires_at: i64,
}

/// Shared with the socket while pairing.
pub type WaitingState = Arc<Mutex<Option<Waiting>>>;

/// Options of `serve` that decide where the session comes from.
pub struct SessionPlan {
    /// Local state.
    pub home: PathBuf,
    /// `--server`, normalized.
    pub server: String,
    /// `--session-id` (a wallet).
    pub session_id: Option<String>,
    /// `--recover`.
    pub recover: Option<String>,
    /// `--parent`: the master (wallet) a pair request is addressed to, or in whose names a
    /// recover identity is looked up.
    pub parent: Option<agentkeys_types::Wallet>,
    /// `--server-key` (base64 Ed25519), else pinned at first contact.
    pub server_key: Option<String>,
    /// `AGENTKEYS_SESSION_STORE`.
    pub choice: StoreChoice,
    /// A description for the master (host name).
    pub description: String,
    /// `--ephemeral`: never read or write a stored session.
    pub ephemeral: bool,
}

/// The slot of the daemon session of `wallet`.
pub fn slot(home: &Path, wallet: &str) -> SessionStore {
    let name = format!("daemon-{wallet}");
    SessionStore::new(home, &name, &name)
}

/// Wallets with a stored daemon session in `home`.
pub fn stored_wallets(home: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(home)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("daemon-")?
                        .strip_suffix(".enc")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The session to serve with: stored, paired or recovered.
pub async fn obtain(
    plan: &SessionPlan,
    waiting: &WaitingState,
) -> Result<StoredSession, DaemonError> {
    if let Some(identity) = &plan.recover {
        return approve_flow(plan, waiting, AuthKind::Recover, Some(identity)).await;
    }
    if plan.ephemeral {
        // Memory only: a stored session is neither used nor written.
        return approve_flow(plan, waiting, AuthKind::Pair, None).await;
    }
    let wallets = stored_wallets(&plan.home);
    let chosen = match (&plan.session_id, wallets.as_slice()) {
        (Some(id), _) => match wallets.iter().find(|w| *w == id) {
            Some(w) => Some(w.clone()),
            None => {
                return Err(DaemonError::usage(format!(
                    "no stored daemon session {id} in {}",
                    plan.home.display()
                ))
                .hint(format!("stored: {}", list_or_none(&wallets))));
            }
        },
        (None, []) => None,
        (None, [one]) => Some(one.clone()),
        (None, several) => {
            return Err(DaemonError::usage(format!(
                "{} daemon sessions are stored in {}: {}",
                several.len(),
                plan.home.display(),
                several.join(", ")
            ))
            .hint("choose one with --session-id WALLET"));
        }
    };
    if let Some(wallet) = chosen {
        let store = slot(&plan.home, &wallet);
        match store.load() {
            Ok((stored, _)) => {
                if crate::normalize(&stored.server) != plan.server {
                    return Err(DaemonError::usage(format!(
                        "the stored session {wallet} belongs to {}, not {}",
                        stored.server, plan.server
                    ))
                    .hint("pass the same --server, or use another AGENTKEYS_HOME"));
                }
                let backend = HttpBackend::for_session(&stored)?;
                match backend.session().await {
                    Ok(_) => return Ok(stored),
                    Err(e) if over(&e) => {
                        tracing::warn!(%wallet, "the stored session was revoked or expired; pairing anew");
                        let _ = store.wipe();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(SessionStoreError::KeyLost(why)) => {
                tracing::warn!(%wallet, %why, "the stored session's key is gone; pairing anew");
                let _ = store.wipe();
            }
            Err(e) => return Err(e.into()),
        }
    }
    approve_flow(plan, waiting, AuthKind::Pair, None).await
}

fn list_or_none(w: &[String]) -> String {
    if w.is_empty() {
        "none".into()
    } else {
        w.join(", ")
    }
}

fn over(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            code: ErrorCode::Unauthorized | ErrorCode::Expired,
            ..
        }
    )
}

async fn pinned_key(plan: &SessionPlan, backend: &HttpBackend) -> Result<[u8; 32], DaemonError> {
    let key = match &plan.server_key {
        Some(k) => k.clone(),
        // First contact: pin what the server presents now.
        None => backend.server_info().await?.signing_public_key,
    };
    agentkeys_core::crypto::key_from_base64(key.trim())
        .ok_or_else(|| DaemonError::usage("the server signing key is not 32 bytes of base64"))
}

/// Pair or recover: open a request, show the code, long-poll, renew expired codes, open
/// and verify the sealed session, store it.
async fn approve_flow(
    plan: &SessionPlan,
    waiting: &WaitingState,
    kind: AuthKind,
    identity: Option<&String>,
) -> Result<StoredSession, DaemonError> {
    let backend = HttpBackend::new(&plan.server)?;
    let pinned = pinned_key(plan, &backend).await?;
    let word = if kind == AuthKind::Pair {
        "Pair"
    } else {
        "Recover"
    };
    let mut renewed = false;
    loop {
        let key = HpkeKeyPair::generate().map_err(agentkeys_core::ClientError::from)?;
        // The OTP announced is the one computed here from our own key; a server OTP that
        // differs means the request was altered on the way, and nothing is announced. A
        // server that says "too many pairing requests" is waited out (it says how long), for
        // a minute at most, rather than failing the daemon's start.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let ticket = loop {
            let opened = backend
                .open_requester_request(
                    OpenAuthRequest {
                        kind,
                        requester_public_key: None,
                        identity: identity.cloned(),
                        parent: plan.parent.clone(),
                        agent: None,
                        service: None,
                        description: Some(plan.description.clone()),
                    },
                    &key,
                )
                .await;
            match opened {
                Err(e) if e.code() == agentkeys_types::ErrorCode::RateLimited => {
                    let wait = e
                        .retry_after()
                        .unwrap_or(std::time::Duration::from_secs(1))
                        .max(std::time::Duration::from_millis(50));
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(e.into());
                    }
                    tokio::time::sleep(wait).await;
                }
                other => break other?,
            }
        };
        if renewed {
            eprintln!("The code expired without a decision; here is a new one.");
        }
        announce(word, &ticket, waiting, kind);
        loop {
            let decision = match backend.decision(&ticket.id, 25).await {
                Ok(d) => d,
                Err(ClientError::Transport { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match decision.status {
                AuthStatus::Pending => {}
                AuthStatus::Approved => {
                    let grant = open_decision(&decision, &key, &pinned)?;
                    let stored = StoredSession {
                        server: plan.server.clone(),
                        token: grant.token,
                        session: grant.session,
                        server_signing_key: pinned,
                    };
                    if !plan.ephemeral {
                        let store = slot(&plan.home, stored.session.wallet.as_str());
                        store.save(&stored, plan.choice, true)?;
                    }
                    if let Ok(mut w) = waiting.lock() {
                        *w = None;
                    }
                    eprintln!(
                        "Approved: serving as agent {} (scope {}).",
                        stored.session.wallet,
                        stored.session.scope.describe()
                    );
                    return Ok(stored);
                }
                AuthStatus::Denied => {
                    return Err(DaemonError::denied(format!(
                        "the {} request was denied",
                        word.to_lowercase()
                    )));
                }
                AuthStatus::Expired | AuthStatus::Consumed => {
                    renewed = true;
                    break;
                }
            }
        }
    }
}

fn announce(word: &str, t: &AuthRequestTicket, waiting: &WaitingState, kind: AuthKind) {
    eprintln!(
        "{word} code {}, OTP {} — approve with: agentkeys approve {}",
        t.pair_code, t.otp, t.pair_code
    );
    if let Ok(mut w) = waiting.lock() {
        *w = Some(Waiting {
            kind: kind.as_str().into(),
            pair_code: t.pair_code.clone(),
            otp: t.otp.clone(),
            expires_at: t.expires_at,
        });
    }
}
