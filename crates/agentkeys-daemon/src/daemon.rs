//! The daemon's shared state: its agent session and backend client, the audit trail, the
//! counters `status` reports, and the delivery bookkeeping that drops every page right
//! after its response line is written (DESIGN decision 6: no cache by default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use agentkeys_core::session_store::StoredSession;
use agentkeys_core::{Backend as _, ClientError, HttpBackend};
use agentkeys_secmem::SecretPage;
use agentkeys_types::api::SessionInfo;
use agentkeys_types::{ErrorCode, ServiceName};
use rmcp::model::RequestId;
use serde_json::json;

use crate::trail::{Event, Peer, Trail};

/// Counters for `status`.
#[derive(Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused (wrong uid, too many).
    pub refused: AtomicU64,
    /// Credentials delivered.
    pub delivered: AtomicU64,
    /// Requests denied (scope, approval, revoked …).
    pub denied: AtomicU64,
}

/// A credential between its fetch and the write of its response line.
pub struct InFlight {
    /// The plaintext, in a secret page.
    pub page: SecretPage,
    /// Which credential.
    pub service: ServiceName,
}

/// One socket connection's context.
pub struct Conn {
    /// Who is on the other end.
    pub peer: Peer,
    /// Pages waiting for their response line, by request id.
    pub in_flight: Mutex<HashMap<RequestId, InFlight>>,
}

impl Conn {
    /// A connection from `peer`.
    pub fn new(peer: Peer) -> Self {
        Conn {
            peer,
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

/// Everything the daemon holds.
pub struct Daemon {
    /// The agent session (token in a `SecretString`).
    pub stored: StoredSession,
    /// A client bound to the session's server, carrying its token.
    pub backend: HttpBackend,
    /// The audit trail.
    pub trail: Trail,
    /// Counters.
    pub counters: Counters,
    /// When the daemon started serving.
    pub started: Instant,
    /// The socket path.
    pub socket: String,
}

/// Why a credential was not delivered, phrased for a model to relay.
pub struct Refusal {
    /// The audit outcome code.
    pub code: &'static str,
    /// The message for the model.
    pub message: String,
}

impl Daemon {
    /// The session's metadata.
    pub fn session(&self) -> &SessionInfo {
        &self.stored.session
    }

    /// Appends to the trail; a failed append is logged (the trail is best kept, but a
    /// full disk must not stop credentials from being dropped).
    pub fn audit(&self, event: Event) -> u64 {
        match self.trail.append(event) {
            Ok(mono) => mono,
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the daemon audit trail");
                crate::trail::mono_ns()
            }
        }
    }

    fn event(
        &self,
        name: &str,
        service: Option<&ServiceName>,
        peer: &Peer,
        request: Option<&RequestId>,
    ) -> Event {
        Event {
            event: name.into(),
            agent: Some(self.session().wallet.to_string()),
            service: service.map(ToString::to_string),
            mode: None,
            peer: Some(peer.clone()),
            request: request.map(ToString::to_string),
            detail: None,
        }
    }

    /// Fetches `service` from the backend straight into a secret page, audited as `fetch`
    /// (or `deny` with the reason).
    pub async fn fetch(
        &self,
        service: &ServiceName,
        peer: &Peer,
        request: &RequestId,
    ) -> Result<SecretPage, Refusal> {
        match self.backend.read_credential(None, service).await {
            Ok(page) => {
                let mut e = self.event("fetch", Some(service), peer, Some(request));
                e.detail = Some(format!("page={}", page.kind().as_str()));
                self.audit(e);
                Ok(page)
            }
            Err(err) => {
                let refusal = self.refusal(Some(service), &err);
                self.counters.denied.fetch_add(1, Ordering::Relaxed);
                let mut e = self.event("deny", Some(service), peer, Some(request));
                e.detail = Some(refusal.code.to_owned());
                self.audit(e);
                Err(refusal)
            }
        }
    }

    /// A message a model can act on, for each way a read fails.
    pub fn refusal(&self, service: Option<&ServiceName>, err: &ClientError) -> Refusal {
        let wallet = &self.session().wallet;
        let service = service.map_or_else(|| "SERVICE".to_owned(), ToString::to_string);
        let (code, message) = match err.code() {
            ErrorCode::ApprovalRequired => match err.auth_request() {
                Some(t) => (
                    "APPROVAL_REQUIRED",
                    format!(
                        "approval required: '{service}' is a high-value credential. Ask your \
                         operator to run: agentkeys approve {} (OTP {}), then call \
                         get_credential again within 5 minutes.",
                        t.pair_code, t.otp
                    ),
                ),
                None => (
                    "APPROVAL_REQUIRED",
                    format!("approval required for '{service}'; ask your operator"),
                ),
            },
            ErrorCode::Unauthorized | ErrorCode::Expired => (
                "REVOKED",
                "revoked: this agent's session was revoked or has expired. Ask your operator \
                 to re-pair this daemon (restart agentkeys-daemon and run 'agentkeys approve' \
                 on the code it prints)."
                    .to_owned(),
            ),
            ErrorCode::Denied => (
                "NOT_IN_SCOPE",
                format!(
                    "not in scope: this agent may not use '{service}'. Ask your operator to \
                     run: agentkeys scope {wallet} --add {service}"
                ),
            ),
            ErrorCode::NotFound => (
                "NOT_FOUND",
                format!(
                    "no credential named '{service}'. Call list_credentials to see the ones \
                     available, or ask your operator to store it."
                ),
            ),
            ErrorCode::RateLimited => (
                "RATE_LIMITED",
                "rate limited: too many credential reads; wait a few seconds and retry".to_owned(),
            ),
            _ => match err {
                ClientError::Transport { .. } => (
                    "UNREACHABLE",
                    "the agentkeys server is unreachable right now; retry in a moment".to_owned(),
                ),
                _ => (
                    "INTERNAL",
                    "the credential could not be fetched (internal error); see the daemon log"
                        .to_owned(),
                ),
            },
        };
        Refusal { code, message }
    }

    /// Called by the transport once the response line for `id` is written (or failed):
    /// the page is dropped (wiped and unmapped) and `deliver` + `drop` are audited.
    pub fn after_response(&self, conn: &Conn, id: &RequestId, written: bool) {
        let held = conn
            .in_flight
            .lock()
            .map(|mut m| m.remove(id))
            .unwrap_or(None);
        let Some(held) = held else { return };
        let service = held.service.clone();
        if written {
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            let mut e = self.event("deliver", Some(&service), &conn.peer, Some(id));
            e.mode = Some("inline".into());
            self.audit(e);
        }
        drop(held);
        let mut e = self.event("drop", Some(&service), &conn.peer, Some(id));
        if !written {
            e.detail = Some("the client went away before the response".into());
        }
        self.audit(e);
    }

    /// Drops every page a connection still holds (it closed mid-request).
    pub fn forget(&self, conn: &Conn) {
        let pending: Vec<(RequestId, InFlight)> = conn
            .in_flight
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default();
        for (id, held) in pending {
            let service = held.service.clone();
            drop(held);
            let mut e = self.event("drop", Some(&service), &conn.peer, Some(&id));
            e.detail = Some("connection closed".into());
            self.audit(e);
        }
    }

    /// The `agentkeys/status` result.
    pub async fn status(&self) -> serde_json::Value {
        let reachable = self.backend.health().await.is_ok();
        let s = self.session();
        json!({
            "wallet": s.wallet,
            "kind": s.kind,
            "scope": s.scope,
            "parent": s.parent,
            "expires_at": s.expires_at,
            "server": self.stored.server,
            "server_reachable": reachable,
            "socket": self.socket,
            "uptime_secs": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
            "audit_trail": self.trail.path(),
            "counters": {
                "connections": self.counters.connections.load(Ordering::Relaxed),
                "refused_connections": self.counters.refused.load(Ordering::Relaxed),
                "delivered": self.counters.delivered.load(Ordering::Relaxed),
                "denied": self.counters.denied.load(Ordering::Relaxed),
            },
            "cache": [],
        })
    }
}
