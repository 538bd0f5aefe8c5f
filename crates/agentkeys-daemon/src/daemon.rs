//! The daemon's shared state: its agent session and backend client, the audit trail, the
//! counters `status` reports, the delivery bookkeeping that drops every page right after its
//! response line is written, the opt-in cache with idle eviction (DESIGN decision 6), the
//! `run` children, and what happens when the session turns out to be revoked.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_core::session_store::StoredSession;
use agentkeys_core::{Backend as _, ClientError, HttpBackend};
use agentkeys_secmem::harden::HardeningReport;
use agentkeys_secmem::pkey::ProtectedPage;
use agentkeys_secmem::{SecretPage, SecretPageKind};
use agentkeys_types::api::SessionInfo;
use agentkeys_types::{ErrorCode, ServiceName};
use rmcp::model::RequestId;
use rustix::process::Signal;
use serde_json::json;

use crate::config::Config;
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

/// How a credential leaves the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// As text in the JSON-RPC response.
    Inline,
    /// As the page's fd, over `SCM_RIGHTS` with the response line.
    Fd,
}

/// A credential between its fetch and the write of its response line.
pub struct InFlight {
    /// The plaintext, in a secret page.
    pub page: SecretPage,
    /// Which credential.
    pub service: ServiceName,
    /// How the response carries it.
    pub delivery: Delivery,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// One socket connection's context.
pub struct Conn {
    /// A number for this connection, unique in this daemon.
    pub id: u64,
    /// Who is on the other end.
    pub peer: Peer,
    /// The peer's group id (for `run` children of a root daemon).
    pub gid: u32,
    /// Pages waiting for their response line, by request id.
    pub in_flight: Mutex<HashMap<RequestId, InFlight>>,
    /// The client advertised `agentkeys/fd-delivery` at `initialize`.
    pub fd_delivery: AtomicBool,
    /// Requests whose `_meta` advertised `agentkeys/fd-delivery` (2026-07-28 clients).
    pub fd_requests: Mutex<HashSet<RequestId>>,
}

impl Conn {
    /// A connection from `peer`.
    pub fn new(peer: Peer, gid: u32) -> Self {
        Conn {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            peer,
            gid,
            in_flight: Mutex::new(HashMap::new()),
            fd_delivery: AtomicBool::new(false),
            fd_requests: Mutex::new(HashSet::new()),
        }
    }

    /// Whether request `id` gets its credential as an fd.
    pub fn wants_fd(&self, id: &RequestId) -> bool {
        let per_request = self
            .fd_requests
            .lock()
            .map(|mut set| set.remove(id))
            .unwrap_or(false);
        per_request || self.fd_delivery.load(Ordering::Relaxed)
    }
}

/// A cached credential (opt-in per service).
struct Cached {
    page: ProtectedPage,
    kind: SecretPageKind,
    last_used: Instant,
    ttl: Duration,
    stored: Instant,
}

/// A process started by `run`.
pub struct ChildEntry {
    /// Its pidfd, to signal it without pid-reuse races.
    pub pidfd: Arc<OwnedFd>,
    /// The credentials it was given.
    pub services: Vec<ServiceName>,
    /// The connection that started it.
    pub conn: u64,
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
    /// Cache, run and revocation policy.
    pub config: Config,
    /// Cached credentials, by service (only services the config opts in).
    cache: Mutex<HashMap<ServiceName, Cached>>,
    /// `run` children still running, by pid.
    pub children: Mutex<HashMap<u32, ChildEntry>>,
    /// Set once the server said the session is revoked or expired.
    revoked: AtomicBool,
    /// The process hardening applied at start.
    pub hardening: HardeningReport,
    /// Keep serving while traced (`--allow-debugger`).
    allow_debugger: bool,
    /// Set while a debugger traces the daemon: the cache is wiped and nothing is served.
    traced: AtomicBool,
}

/// Why a credential was not delivered, phrased for a model to relay.
#[derive(Debug)]
pub struct Refusal {
    /// The audit outcome code.
    pub code: &'static str,
    /// The message for the model.
    pub message: String,
}

impl Daemon {
    /// The daemon state for a loaded session.
    pub fn new(
        stored: StoredSession,
        backend: HttpBackend,
        trail: Trail,
        socket: String,
        config: Config,
        hardening: HardeningReport,
        allow_debugger: bool,
    ) -> Self {
        Daemon {
            stored,
            backend,
            trail,
            counters: Counters::default(),
            started: Instant::now(),
            socket,
            config,
            cache: Mutex::new(HashMap::new()),
            children: Mutex::new(HashMap::new()),
            revoked: AtomicBool::new(false),
            hardening,
            allow_debugger,
            traced: AtomicBool::new(false),
        }
    }

    /// Re-checks `TracerPid`: a debugger that attached after start makes the daemon wipe
    /// its cache and refuse to serve until it detaches (unless `--allow-debugger`).
    pub fn check_debugger(&self) {
        if self.allow_debugger {
            return;
        }
        let tracer = agentkeys_secmem::harden::tracer_pid().unwrap_or(0);
        let was = self.traced.swap(tracer != 0, Ordering::SeqCst);
        if tracer != 0 && !was {
            let wiped = self
                .cache
                .lock()
                .map(|mut c| c.drain().count())
                .unwrap_or(0);
            self.note(
                "debugger",
                None,
                format!("traced by pid {tracer}: cache wiped ({wiped} entries), serving nothing"),
            );
            tracing::warn!("a debugger (pid {tracer}) attached: serving nothing until it detaches");
        } else if tracer == 0 && was {
            self.note(
                "debugger",
                None,
                "the debugger detached: serving again".into(),
            );
        }
    }

    /// Whether a debugger traces the daemon right now (checked every second).
    pub fn is_traced(&self) -> bool {
        self.traced.load(Ordering::SeqCst)
    }

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

    /// Audits an event of the daemon's own (no peer, no request) about its agent.
    pub fn note(&self, name: &str, service: Option<&ServiceName>, detail: String) {
        self.audit(Event {
            event: name.into(),
            agent: Some(self.session().wallet.to_string()),
            service: service.map(ToString::to_string),
            detail: Some(detail),
            ..Default::default()
        });
    }

    fn event(
        &self,
        name: &str,
        service: Option<&ServiceName>,
        peer: &Peer,
        request: Option<&str>,
    ) -> Event {
        Event {
            event: name.into(),
            agent: Some(self.session().wallet.to_string()),
            service: service.map(ToString::to_string),
            mode: None,
            peer: Some(peer.clone()),
            request: request.map(str::to_owned),
            detail: None,
        }
    }

    /// Fetches `service` straight into a secret page: from the cache when the service opts
    /// in and its entry is still fresh, else from the backend (then cached if opted in).
    /// Audited as `fetch` (or `deny` with the reason). A revoked or expired session wipes
    /// the cache and stops every `run` child ([`Daemon::on_revoked`]).
    pub async fn fetch(
        self: &Arc<Self>,
        service: &ServiceName,
        peer: &Peer,
        request: &str,
    ) -> Result<SecretPage, Refusal> {
        if self.is_traced() {
            let mut e = self.event("deny", Some(service), peer, Some(request));
            e.detail = Some("a debugger traces the daemon".into());
            self.audit(e);
            return Err(Refusal {
                code: "DENIED",
                message: "the agentkeys daemon is being traced by a debugger and serves no \
                          credential until it detaches; tell your operator"
                    .to_owned(),
            });
        }
        let ttl = self.config.cache.get(service).copied();
        if ttl.is_some()
            && let Some(page) = self.cache_hit(service)
        {
            let mut e = self.event("fetch", Some(service), peer, Some(request));
            e.detail = Some(format!("cache hit, page={}", page.kind().as_str()));
            self.audit(e);
            return Ok(page);
        }
        match self.backend.read_credential(None, service).await {
            Ok(page) => {
                let mut e = self.event("fetch", Some(service), peer, Some(request));
                e.detail = Some(format!("backend, page={}", page.kind().as_str()));
                self.audit(e);
                if let Some(ttl) = ttl {
                    self.cache_store(service, &page, ttl);
                }
                Ok(page)
            }
            Err(err) => {
                if matches!(err.code(), ErrorCode::Unauthorized | ErrorCode::Expired) {
                    self.on_revoked("the server refused the session on a credential read");
                }
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
        if let Ok(mut wanted) = conn.fd_requests.lock() {
            wanted.remove(id); // a request that was not get_credential
        }
        let held = conn
            .in_flight
            .lock()
            .map(|mut m| m.remove(id))
            .unwrap_or(None);
        let Some(held) = held else { return };
        let service = held.service.clone();
        let id = id.to_string();
        let mut dropped = self.event("drop", Some(&service), &conn.peer, Some(&id));
        if written {
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            let mut e = self.event("deliver", Some(&service), &conn.peer, Some(&id));
            e.mode = Some(match held.delivery {
                Delivery::Inline => "inline".into(),
                Delivery::Fd => format!("fd:{}", held.page.kind()),
            });
            self.audit(e);
        } else {
            dropped.detail = Some("the client went away before the response".into());
        }
        if written && held.delivery == Delivery::Fd {
            // The client holds the file now; wiping would erase its copy.
            dropped.detail = Some("daemon mapping closed; the fd belongs to the client".into());
            held.page.hand_off();
        } else {
            drop(held);
        }
        self.audit(dropped);
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
            let mut e = self.event("drop", Some(&service), &conn.peer, Some(&id.to_string()));
            e.detail = Some("connection closed".into());
            self.audit(e);
        }
        // A `run` child whose caller went away is hung up on, as a terminal would.
        self.signal_children(
            |c| c.conn == conn.id,
            Signal::HUP,
            ": its caller disconnected",
            Some(&conn.peer),
        );
    }

    /// A copy of a fresh cached entry, refreshing its idle clock.
    fn cache_hit(&self, service: &ServiceName) -> Option<SecretPage> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get_mut(service)?;
        if entry.last_used.elapsed() >= entry.ttl {
            return None; // the evictor removes it and audits that
        }
        let copy = entry.page.with_access(SecretPage::from_slice).ok()?;
        entry.last_used = Instant::now();
        Some(copy)
    }

    fn cache_store(&self, service: &ServiceName, page: &SecretPage, ttl: Duration) {
        let copy = match self.config.cache_page {
            Some(kind) => SecretPage::with_kind(page.len(), kind).map(|mut p| {
                p.expose_secret_mut().copy_from_slice(page.expose_secret());
                p
            }),
            None => SecretPage::from_slice(page.expose_secret()),
        };
        let Ok(copy) = copy else {
            return; // no page for the cache: serve uncached
        };
        let kind = copy.kind();
        let now = Instant::now();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                service.clone(),
                Cached {
                    kind,
                    page: ProtectedPage::new(copy),
                    last_used: now,
                    ttl,
                    stored: now,
                },
            );
        }
        self.note(
            "cache",
            Some(service),
            format!("idle ttl {} ms, page={kind}", ttl.as_millis()),
        );
    }

    /// Evicts (wipes) every cached credential idle for its TTL, audited as `evict`.
    /// Returns how long until the next entry could expire.
    pub fn evict_idle(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut evicted = Vec::new();
        let mut next: Option<Duration> = None;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|service, entry| {
                let idle = now.duration_since(entry.last_used);
                if idle >= entry.ttl {
                    evicted.push((service.clone(), idle, entry.ttl));
                    false
                } else {
                    let left = entry.ttl - idle;
                    next = Some(next.map_or(left, |n| n.min(left)));
                    true
                }
            });
        }
        for (service, idle, ttl) in evicted {
            self.note(
                "evict",
                Some(&service),
                format!("idle {} ms >= ttl {} ms", idle.as_millis(), ttl.as_millis()),
            );
        }
        next
    }

    /// Whether the server has refused this session.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// The session was revoked (or expired): wipe the cache, then SIGTERM every `run`
    /// child holding a credential and SIGKILL those still alive after the grace period.
    /// Runs once; audited as `revoked`, `evict` and `signal`.
    pub fn on_revoked(self: &Arc<Self>, why: &str) {
        if self.revoked.swap(true, Ordering::SeqCst) {
            return;
        }
        self.note("revoked", None, why.to_owned());
        let wiped: Vec<ServiceName> = self
            .cache
            .lock()
            .map(|mut c| c.drain().map(|(s, _)| s).collect())
            .unwrap_or_default();
        for service in wiped {
            self.note("evict", Some(&service), "session revoked".into());
        }
        let credentialed = |c: &ChildEntry| !c.services.is_empty();
        self.signal_children(credentialed, Signal::TERM, " after revocation", None);
        let daemon = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(daemon.config.kill_grace).await;
            daemon.signal_children(credentialed, Signal::KILL, " after revocation", None);
        });
    }

    /// Sends `signal` to every `run` child `select` picks, each audited as `signal` with
    /// `why` at the end of its detail (and `peer`, when a connection is the reason).
    fn signal_children(
        &self,
        select: impl Fn(&ChildEntry) -> bool,
        signal: Signal,
        why: &str,
        peer: Option<&Peer>,
    ) {
        let targets: Vec<(u32, Arc<OwnedFd>)> = self
            .children
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, c)| select(c))
                    .map(|(pid, c)| (*pid, c.pidfd.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let name = match signal {
            Signal::KILL => "SIGKILL",
            Signal::HUP => "SIGHUP",
            _ => "SIGTERM",
        };
        for (pid, pidfd) in targets {
            let sent = rustix::process::pidfd_send_signal(&*pidfd, signal).is_ok();
            let gone = if sent { "" } else { " (already gone)" };
            self.audit(Event {
                event: "signal".into(),
                agent: Some(self.session().wallet.to_string()),
                peer: peer.cloned(),
                detail: Some(format!("{name} to run child {pid}{why}{gone}")),
                ..Default::default()
            });
        }
    }

    /// Asks the server whether the session still holds; a 401 or an expiry triggers
    /// [`Daemon::on_revoked`]. An unreachable server changes nothing.
    pub async fn check_session(self: &Arc<Self>) {
        if self.is_revoked() {
            return;
        }
        if let Err(e) = self.backend.session().await
            && matches!(e.code(), ErrorCode::Unauthorized | ErrorCode::Expired)
        {
            self.on_revoked("the periodic session check was refused");
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
            "revoked": self.is_revoked(),
            "traced": self.is_traced(),
            "hardening": crate::report_json(&self.hardening),
            "run_children": self.children.lock().map(|c| c.len()).unwrap_or(0),
            "cache": self.cache_view(),
        })
    }

    /// Cached service names with their ages (never contents).
    fn cache_view(&self) -> serde_json::Value {
        let Ok(cache) = self.cache.lock() else {
            return json!([]);
        };
        let mut items: Vec<_> = cache
            .iter()
            .map(|(s, c)| {
                json!({
                    "service": s,
                    "age_ms": u64::try_from(c.stored.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "idle_ms": u64::try_from(c.last_used.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "ttl_ms": u64::try_from(c.ttl.as_millis()).unwrap_or(u64::MAX),
                    "page": c.kind.as_str(),
                })
            })
            .collect();
        items.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
        json!(items)
    }
}
