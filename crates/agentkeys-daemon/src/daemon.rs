//! The daemon's shared state: its agent session and backend client, the audit trail, the
//! counters `status` reports, the delivery bookkeeping that drops every page right after its
//! response line is written, the opt-in cache with idle and age eviction (decision 73),
//! the `run` children, and what happens when the session turns out to be revoked.
//!
//! A fetch refuses while the session is revoked or a debugger traces the daemon, checked
//! before the cache is looked at and again once the server has answered; the cache store
//! checks both once more under the cache lock, so a revocation or a tracer arriving while a
//! read is in flight never leaves a value behind. Concurrent fetches of one service share
//! one server read (a high-value release serves only the read that spent its grant), and a
//! `RATE_LIMITED` answer is waited out within `rate_limit_wait`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_core::session_store::StoredSession;
use agentkeys_core::{Backend as _, ClientError, HttpBackend, ReadCredential};
use agentkeys_secmem::harden::HardeningReport;
use agentkeys_secmem::pkey::ProtectedPage;
use agentkeys_secmem::{SecretPage, SecretPageKind};
use agentkeys_types::api::{AuthStatus, SessionInfo};
use agentkeys_types::binding::Binding;
use agentkeys_types::{ErrorCode, Scope, ServiceName};
use rmcp::model::RequestId;
use rustix::process::Signal;
use serde_json::json;

use crate::config::Config;
use crate::process_group::{ChildEntry, Children};
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

/// The capability a client advertises to receive credentials as fds (decision 75).
pub const FD_CAPABILITY: &str = "agentkeys/fd-delivery";

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// `agentkeys/status`, `agentkeys/audit` … answered at once per connection; more are
/// refused with a "busy" error instead of queueing without bound.
pub const MAX_BUSY_PER_CONNECTION: usize = 4;

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
    /// Set once the peer sent a complete line: a connection that never does is dropped
    /// after `listener::FIRST_LINE_WITHIN`.
    pub spoke: AtomicBool,
    /// `agentkeys/…` requests of this connection being answered right now.
    pub busy: Arc<tokio::sync::Semaphore>,
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
            spoke: AtomicBool::new(false),
            busy: Arc::new(tokio::sync::Semaphore::new(MAX_BUSY_PER_CONNECTION)),
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

/// A cached credential (opt-in per service, never high-value).
struct Cached {
    page: ProtectedPage,
    /// The binding that came signed with the value.
    binding: Option<Binding>,
    kind: SecretPageKind,
    last_used: Instant,
    ttl: Duration,
    /// When the value was fetched: it is served for `cache_max_age` from here at most.
    stored: Instant,
    /// What the server said of the credential when the fetch began: the entry goes as
    /// soon as that changes.
    stamp: Stamp,
}

/// What the server last said of one credential of this session (decision 86): its
/// policy, binding, value version and the standing approvals for it, or that the session
/// may no longer use it. A value fetched under one stamp is held only while the stamp is
/// the same: any decision of the master about that credential changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// No state heard from the server yet (it answers no state watch, or is unreachable
    /// since start): values are held for their hold times only.
    Unknown,
    /// The session may not use it (out of scope, removed).
    Absent,
    /// A digest of its state.
    Is([u8; 16]),
}

/// One credential in a [`Snapshot`]: its stamp, its state, its standing approvals.
type Entry = (Stamp, agentkeys_types::api::CredentialState, Vec<String>);

/// The session's state as the server last described it, by service.
struct Snapshot {
    /// The server's name for it.
    cursor: String,
    /// Each credential's stamp and what it was made of (for the trail's reasons).
    entries: HashMap<ServiceName, Entry>,
}

impl Snapshot {
    fn of(state: &agentkeys_types::api::SessionState) -> Snapshot {
        let mut entries = HashMap::new();
        for c in &state.credentials {
            if !state.scope.allows(&c.service) {
                continue;
            }
            let mut standing: Vec<String> = state
                .standing_approvals
                .iter()
                .filter(|s| s.service == c.service && s.owner == c.agent)
                .map(|s| format!("{}@{}", s.id, s.expires_at))
                .collect();
            standing.sort();
            let text = serde_json::to_vec(&(c, &standing)).unwrap_or_default();
            let digest = agentkeys_core::crypto::sha256(&text);
            let mut stamp = [0u8; 16];
            stamp.copy_from_slice(&digest[..16]);
            entries.insert(c.service.clone(), (Stamp::Is(stamp), c.clone(), standing));
        }
        Snapshot {
            cursor: state.cursor.clone(),
            entries,
        }
    }

    fn stamp(&self, service: &ServiceName) -> Stamp {
        self.entries
            .get(service)
            .map_or(Stamp::Absent, |e| e.0.clone())
    }

    /// What changed for each service between `self` and `next`, in words for the trail.
    fn changes(&self, next: &Snapshot) -> Vec<(ServiceName, String)> {
        let mut services: Vec<&ServiceName> =
            self.entries.keys().chain(next.entries.keys()).collect();
        services.sort();
        services.dedup();
        services
            .into_iter()
            .filter_map(|s| {
                let why = match (self.entries.get(s), next.entries.get(s)) {
                    (Some(_), None) => "no longer usable by this agent (scope, or removed)".into(),
                    (None, Some(_)) => "now usable by this agent".into(),
                    (Some(a), Some(b)) if a.0 != b.0 => {
                        let mut what = Vec::new();
                        if a.1.version != b.1.version {
                            what.push("a new value was stored");
                        }
                        if a.1.policy != b.1.policy {
                            what.push("its policy changed");
                        }
                        if a.1.binding != b.1.binding {
                            what.push("its binding changed");
                        }
                        if a.1.agent != b.1.agent {
                            what.push("another owner's value now applies");
                        }
                        if a.2 != b.2 {
                            what.push("its standing approvals changed");
                        }
                        what.join(", ")
                    }
                    _ => return None,
                };
                Some((s.clone(), why))
            })
            .collect()
    }
}

/// Why a cache entry must go now, if it must.
fn expired(entry: &Cached, now: Instant, max_age: Duration) -> Option<String> {
    let idle = now.duration_since(entry.last_used);
    let age = now.duration_since(entry.stored);
    if age >= max_age {
        Some(format!(
            "age {} ms >= max age {} ms",
            age.as_millis(),
            max_age.as_millis()
        ))
    } else if idle >= entry.ttl {
        Some(format!(
            "idle {} ms >= ttl {} ms",
            idle.as_millis(),
            entry.ttl.as_millis()
        ))
    } else {
        None
    }
}

/// Tests only: what runs between the server's answer and the daemon's handling of it.
#[cfg(test)]
type TestHook = Box<dyn FnOnce(&Daemon) + Send>;

/// One server read of a service, shared by every fetch of it that starts while it runs.
type Flight = Arc<tokio::sync::OnceCell<Result<ReadCredential, ClientError>>>;

/// A failed read: this fetch's own, or the shared one it waited for.
enum FailedRead {
    Own(ClientError),
    Shared(Flight),
}

impl FailedRead {
    fn error(&self) -> &ClientError {
        match self {
            FailedRead::Own(e) => e,
            FailedRead::Shared(flight) => match flight.get() {
                Some(Err(e)) => e,
                _ => unreachable!("a shared failure is only built from a failed flight"),
            },
        }
    }
}

/// Something to stop on revocation (see [`Daemon::on_revocation`]).
type RevocationHook = Box<dyn Fn() + Send + Sync>;

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
    /// What stops on revocation besides the cache and the `run` children (the persistent
    /// egress proxies register here): the daemon knows nothing of what each hook stops.
    revocation_hooks: Mutex<Vec<RevocationHook>>,
    /// Server reads in flight, by service.
    flights: Mutex<HashMap<ServiceName, Flight>>,
    /// The scope as the server last described it (the state watch and the revocation tick
    /// refresh it).
    live_scope: Mutex<Scope>,
    /// The session's state as the server last described it; `None` until it has.
    state: Mutex<Option<Snapshot>>,
    /// Moves whenever what this session may hold changed (a state change, a revocation, a
    /// debugger): whatever holds values (a run's proxy) watches it and re-checks each held
    /// value's [`Stamp`]. The daemon knows nothing of who watches.
    changed: tokio::sync::watch::Sender<u64>,
    /// Whether the server answered the last time it was asked (the tick, or a read).
    reachable: AtomicBool,
    /// The trail line last anchored in the server's audit log.
    anchored: AtomicU64,
    /// The second (monotonic) a refused connection was last audited.
    last_refusal_audit: AtomicU64,
    /// Connections from the daemon's own uid that asked for more than `status`, and the
    /// last such peer: agents of the daemon's uid can open its session at rest.
    same_uid: Mutex<(u64, Option<Peer>)>,
    /// `run` children's process groups that still have members, by process group id.
    pub children: Children,
    /// Set once the server said the session is revoked or expired.
    revoked: AtomicBool,
    /// The process hardening applied at start.
    pub hardening: HardeningReport,
    /// Keep serving while traced (`--allow-debugger`).
    allow_debugger: bool,
    /// Set while a debugger traces the daemon: the cache is wiped and nothing is served.
    traced: AtomicBool,
    /// Tests only: runs once between the server's answer and what the daemon does with it,
    /// to force the interleavings a revocation or a tracer can produce.
    #[cfg(test)]
    after_read: Mutex<Option<TestHook>>,
}

/// The newest `trail.anchor` the server holds for `backend`'s session, as `(seq, hash)`.
pub async fn latest_anchor(backend: &HttpBackend) -> Result<Option<(u64, String)>, ClientError> {
    let list = backend
        .audit(&agentkeys_core::client::AuditQuery {
            action: Some(
                agentkeys_types::api::AuditAction::TrailAnchor
                    .as_str()
                    .into(),
            ),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    Ok(list.events.first().and_then(|e| {
        let anchor = agentkeys_types::api::AnchorRequest::from_detail(e.detail.as_deref()?)?;
        Some((anchor.seq, anchor.hash))
    }))
}

/// How long one state watch waits on the server before it is renewed.
const STATE_WATCH_SECS: u64 = 25;

/// What a model is told once the session is revoked or expired.
const REVOKED_MESSAGE: &str = "revoked: this agent's session was revoked or has expired. Ask \
    your operator to re-pair this daemon (restart agentkeys-daemon and run 'agentkeys approve' \
    on the code it prints).";

/// A copy of `page` in a page of the same kind (each waiter of a shared read owns its own).
fn copy_page(page: &SecretPage) -> std::io::Result<SecretPage> {
    let mut copy = SecretPage::with_kind(page.len(), page.kind())?;
    copy.expose_secret_mut()
        .copy_from_slice(page.expose_secret());
    Ok(copy)
}

/// Why a credential was not delivered, phrased for a model to relay.
#[derive(Debug)]
pub struct Refusal {
    /// The audit outcome code.
    pub code: &'static str,
    /// The message for the model.
    pub message: String,
    /// The pending high-value request (`APPROVAL_REQUIRED`): its id, to wait for the
    /// decision.
    pub pending: Option<String>,
    /// Its approval page, where the server serves one.
    pub approve_url: Option<String>,
}

impl Refusal {
    /// A refusal with no approval to wait for.
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            pending: None,
            approve_url: None,
        }
    }
}

/// How waiting for a high-value decision ended.
#[derive(Debug)]
pub enum Awaited {
    /// Approved: a read now succeeds.
    Approved,
    /// Still pending when the wait ran out.
    TimedOut,
    /// Denied or expired.
    Ended(AuthStatus),
    /// The server could not be asked.
    Failed(ClientError),
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
        let live_scope = Mutex::new(stored.session.scope.clone());
        Daemon {
            stored,
            backend,
            trail,
            counters: Counters::default(),
            started: Instant::now(),
            socket,
            config,
            cache: Mutex::new(HashMap::new()),
            revocation_hooks: Mutex::new(Vec::new()),
            flights: Mutex::new(HashMap::new()),
            live_scope,
            state: Mutex::new(None),
            changed: tokio::sync::watch::Sender::new(0),
            reachable: AtomicBool::new(true),
            anchored: AtomicU64::new(0),
            last_refusal_audit: AtomicU64::new(0),
            same_uid: Mutex::new((0, None)),
            children: Children::default(),
            revoked: AtomicBool::new(false),
            hardening,
            allow_debugger,
            traced: AtomicBool::new(false),
            #[cfg(test)]
            after_read: Mutex::new(None),
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
            self.changed.send_modify(|g| *g += 1);
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
        self.audit_at(event, crate::trail::mono_ns())
    }

    /// [`audit`](Self::audit) at the monotonic time `at` the event happened.
    pub fn audit_at(&self, event: Event, at: u64) -> u64 {
        match self.trail.append_at(event, at) {
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

    /// Why nothing may be served right now (a debugger traces the daemon, or the session
    /// is revoked), as the refusal and the audit detail; `None` when serving is allowed.
    pub fn stopped(&self) -> Option<(Refusal, &'static str)> {
        if self.is_traced() {
            return Some((
                Refusal {
                    code: "DENIED",
                    message: "the agentkeys daemon is being traced by a debugger and serves no \
                              credential until it detaches; tell your operator"
                        .to_owned(),
                    pending: None,
                    approve_url: None,
                },
                "a debugger traces the daemon",
            ));
        }
        if self.is_revoked() {
            return Some((
                Refusal {
                    code: "REVOKED",
                    message: REVOKED_MESSAGE.to_owned(),
                    pending: None,
                    approve_url: None,
                },
                "the session is revoked",
            ));
        }
        None
    }

    /// Fetches `service` straight into a secret page: from the cache when the service opts
    /// in and its entry is still fresh, else from the backend (then cached if opted in and
    /// not high-value). Audited as `fetch` (or `deny` with the reason). A revoked or expired
    /// session wipes the cache and stops every `run` child ([`Daemon::on_revoked`]).
    pub async fn fetch(
        self: &Arc<Self>,
        service: &ServiceName,
        peer: &Peer,
        request: &str,
    ) -> Result<SecretPage, Refusal> {
        self.fetch_bound(service, peer, request)
            .await
            .map(|(page, _)| page)
    }

    /// [`Daemon::fetch`], with the credential's binding (signed with the value by the
    /// server, or kept with the cached copy): the egress proxy checks every injection
    /// against the binding of the value it injects.
    pub async fn fetch_bound(
        self: &Arc<Self>,
        service: &ServiceName,
        peer: &Peer,
        request: &str,
    ) -> Result<(SecretPage, Option<Binding>), Refusal> {
        let deny = |detail: &str| {
            let mut e = self.event("deny", Some(service), peer, Some(request));
            e.detail = Some(detail.to_owned());
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
            self.audit(e);
        };
        if let Some((refusal, why)) = self.stopped() {
            deny(why);
            return Err(refusal);
        }
        let ttl = self.config.cache.get(service).copied();
        if ttl.is_some()
            && let Some((page, binding)) = self.cache_hit(service)
        {
            let mut e = self.event("fetch", Some(service), peer, Some(request));
            e.detail = Some(format!("cache hit, page={}", page.kind().as_str()));
            self.audit(e);
            return Ok((page, binding));
        }
        // What the server said of it before the read: the value is kept only if that still
        // holds once it arrives (a change meanwhile may have been about this very value).
        let stamp = self.stamp(service);
        let read = self.read_shared(service).await;
        #[cfg(test)]
        self.run_after_read_hook();
        match read {
            Ok(read) => {
                // Revoked or traced while the read was in flight: nothing is served or kept.
                if let Some((refusal, why)) = self.stopped() {
                    drop(read);
                    deny(&format!("{why} (while the read was in flight)"));
                    return Err(refusal);
                }
                let mut e = self.event("fetch", Some(service), peer, Some(request));
                e.detail = Some(format!("backend, page={}", read.page.kind().as_str()));
                self.audit(e);
                if let Some(ttl) = ttl {
                    if read.policy.high_value {
                        self.note(
                            "cache",
                            Some(service),
                            "not cached: high-value, each release needs an approval".into(),
                        );
                    } else {
                        self.cache_store(service, &read.page, read.binding.as_ref(), ttl, stamp);
                    }
                }
                Ok((read.page, read.binding))
            }
            Err(failed) => {
                let err = failed.error();
                if matches!(err.code(), ErrorCode::Unauthorized | ErrorCode::Expired) {
                    self.on_revoked("the server refused the session on a credential read");
                }
                let refusal = self.refusal(Some(service), err);
                deny(refusal.code);
                Err(refusal)
            }
        }
    }

    /// One server read of `service`, shared with every fetch of it already waiting: the
    /// first caller reads, the others get a copy of its page. A high-value answer serves
    /// only the caller that read it (its grant is spent), so the others read on their own.
    async fn read_shared(&self, service: &ServiceName) -> Result<ReadCredential, FailedRead> {
        let joined: Option<Flight> = self
            .flights
            .lock()
            .ok()
            .map(|mut flights| flights.entry(service.clone()).or_default().clone());
        let Some(flight) = joined else {
            return self
                .read_waiting_out_limits(service)
                .await
                .map_err(FailedRead::Own);
        };
        let led = AtomicBool::new(false);
        let shared = flight
            .get_or_init(|| async {
                led.store(true, Ordering::Relaxed);
                self.read_waiting_out_limits(service).await
            })
            .await;
        self.land(service, &flight);
        match shared {
            Ok(read) if read.policy.high_value && !led.load(Ordering::Relaxed) => {
                drop(flight);
                self.read_waiting_out_limits(service)
                    .await
                    .map_err(FailedRead::Own)
            }
            Ok(read) => {
                let copy = copy_page(&read.page).map_err(|e| {
                    FailedRead::Own(ClientError::Crypto(
                        agentkeys_core::crypto::CryptoError::Memory(e),
                    ))
                })?;
                Ok(ReadCredential {
                    page: copy,
                    policy: read.policy,
                    binding: read.binding.clone(),
                })
            }
            Err(_) => Err(FailedRead::Shared(flight)),
        }
    }

    /// Removes a finished flight, so later fetches start a fresh read.
    fn land(&self, service: &ServiceName, flight: &Flight) {
        if let Ok(mut flights) = self.flights.lock()
            && flights.get(service).is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            flights.remove(service);
        }
    }

    /// A backend read that waits out `RATE_LIMITED` answers (the server's `retry_after`,
    /// plus a little jitter) for at most `rate_limit_wait`, instead of failing every caller.
    async fn read_waiting_out_limits(
        &self,
        service: &ServiceName,
    ) -> Result<ReadCredential, ClientError> {
        let deadline = tokio::time::Instant::now() + self.config.rate_limit_wait;
        loop {
            let result = self.backend.read_credential(None, service).await;
            self.note_contact(&result);
            match result {
                Err(e) if e.code() == ErrorCode::RateLimited => {
                    let [jitter] = agentkeys_core::crypto::random_array::<1>();
                    let wait = e.retry_after().unwrap_or(Duration::from_secs(1))
                        + Duration::from_millis(u64::from(jitter) % 50);
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Records whether the server answered a call (any answer, refusals included), for
    /// the `reachable` that `status` reports.
    fn note_contact<T>(&self, answer: &Result<T, ClientError>) {
        self.reachable.store(
            !matches!(answer, Err(ClientError::Transport { .. })),
            Ordering::Relaxed,
        );
    }

    #[cfg(test)]
    fn run_after_read_hook(&self) {
        let hook = self.after_read.lock().ok().and_then(|mut h| h.take());
        if let Some(hook) = hook {
            hook(self);
        }
    }

    /// Long-polls the decision on the high-value request `id` for up to `wait`.
    pub async fn await_approval(&self, id: &str, wait: std::time::Duration) -> Awaited {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Awaited::TimedOut;
            }
            let poll = left
                .min(std::time::Duration::from_secs(25))
                .as_secs()
                .max(1);
            match self.backend.decision(id, poll).await {
                Ok(d) if d.status == AuthStatus::Approved => return Awaited::Approved,
                Ok(d) if d.status == AuthStatus::Pending => {}
                Ok(d) => return Awaited::Ended(d.status),
                Err(e) => return Awaited::Failed(e),
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
                         operator to run: agentkeys approve {} (OTP {}){}, then call \
                         get_credential again within 5 minutes.",
                        t.pair_code,
                        t.otp,
                        t.approve_url.as_ref().map_or_else(String::new, |u| format!(
                            ", or to approve it with their passkey at {u}"
                        ))
                    ),
                ),
                None => (
                    "APPROVAL_REQUIRED",
                    format!("approval required for '{service}'; ask your operator"),
                ),
            },
            ErrorCode::Unauthorized | ErrorCode::Expired => ("REVOKED", REVOKED_MESSAGE.to_owned()),
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
                "rate limited: the server still refused after the daemon waited; wait a few \
                 seconds and retry"
                    .to_owned(),
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
        Refusal {
            code,
            message,
            pending: err.auth_request().map(|t| t.id.clone()),
            approve_url: err.auth_request().and_then(|t| t.approve_url.clone()),
        }
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
        // The page goes first; the trail lines carry the times things happened, so writing
        // them is not part of the plaintext window.
        let delivered_at = crate::trail::mono_ns();
        let mut dropped = self.event("drop", Some(&service), &conn.peer, Some(&id));
        let mode = match held.delivery {
            Delivery::Inline => "inline".to_owned(),
            Delivery::Fd => format!("fd:{}", held.page.kind()),
        };
        if !written {
            dropped.detail = Some("the client went away before the response".into());
        }
        if written && held.delivery == Delivery::Fd {
            // The client holds the file now; wiping would erase its copy.
            dropped.detail = Some("daemon mapping closed; the fd belongs to the client".into());
            held.page.hand_off();
        } else {
            drop(held);
        }
        let dropped_at = crate::trail::mono_ns();
        if written {
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            let mut e = self.event("deliver", Some(&service), &conn.peer, Some(&id));
            e.mode = Some(mode);
            self.audit_at(e, delivered_at);
        }
        self.audit_at(dropped, dropped_at);
    }

    /// A peer of the daemon's own uid made a request (anything but `agentkeys/status`): said
    /// once in the log and the trail, and counted for `status` / `agentkeys doctor`.
    pub fn saw_same_uid(&self, peer: &Peer) {
        let first = match self.same_uid.lock() {
            Ok(mut seen) => {
                seen.0 += 1;
                seen.1 = Some(peer.clone());
                seen.0 == 1
            }
            Err(_) => false,
        };
        if first {
            let why = self.same_uid_risk();
            tracing::warn!(
                "a process of the daemon's own uid (pid {}) is an agent here: {why}",
                peer.pid
            );
            self.audit(Event {
                event: "same_uid".into(),
                agent: Some(self.session().wallet.to_string()),
                peer: Some(peer.clone()),
                detail: Some(why.to_owned()),
                ..Default::default()
            });
        }
    }

    /// Where the agent session is kept between restarts, for `status`.
    fn session_at_rest(&self) -> &'static str {
        if self.config.ephemeral_by_default {
            "none (agents share the daemon's uid; --store-session would keep it)"
        } else if self.config.ephemeral {
            "none (--ephemeral)"
        } else {
            "stored in the daemon's home"
        }
    }

    fn same_uid_risk(&self) -> &'static str {
        if self.config.ephemeral_by_default {
            "the session is in memory only (agents share the daemon's uid, so none is stored), \
             yet the agent runs beside the daemon: run the daemon under a uid of its own \
             (--allow-uid for the agent)"
        } else if self.config.ephemeral {
            "the session is in memory only (--ephemeral), yet the agent shares the daemon's uid: \
             run the daemon under a uid of its own"
        } else {
            "it can open the session this daemon stores in its home and act as this agent: run \
             the daemon under a uid of its own (--allow-uid for the agent), or use --ephemeral"
        }
    }

    /// The `same_uid` item of `status`.
    fn same_uid_view(&self) -> serde_json::Value {
        let (count, last) = self
            .same_uid
            .lock()
            .map(|s| (s.0, s.1.clone()))
            .unwrap_or((0, None));
        if count == 0 {
            json!({"status": "ok", "detail": "no process of the daemon's own uid made a request"})
        } else {
            json!({"status": "degraded", "connections": count, "last_peer": last,
                   "detail": self.same_uid_risk()})
        }
    }

    /// A refused connection: counted, and audited at most once a second (a flood of
    /// refusals must not fill the trail).
    pub fn refused_connection(&self, peer: &Peer, why: &str) {
        let now = crate::trail::mono_ns() / 1_000_000_000;
        if self.last_refusal_audit.swap(now, Ordering::Relaxed) != now {
            self.audit(Event {
                event: "deny".into(),
                peer: Some(peer.clone()),
                detail: Some(why.to_owned()),
                ..Default::default()
            });
        }
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

    /// A copy of a fresh cached entry, refreshing its idle clock (never past its max age).
    fn cache_hit(&self, service: &ServiceName) -> Option<(SecretPage, Option<Binding>)> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get_mut(service)?;
        let now = Instant::now();
        if expired(entry, now, self.config.cache_max_age).is_some() {
            return None; // the evictor removes it and audits that
        }
        let copy = entry.page.with_access(SecretPage::from_slice).ok()?;
        entry.last_used = now;
        Some((copy, entry.binding.clone()))
    }

    /// Caches a copy of `page`, unless the session was revoked, a debugger attached, or the
    /// server said something new of the credential (`stamp` moved) meanwhile: checked under
    /// the cache lock, which `on_revoked`, `check_debugger` and `apply_state` take after
    /// changing what they change, so no value can slip in after their wipe.
    fn cache_store(
        &self,
        service: &ServiceName,
        page: &SecretPage,
        binding: Option<&Binding>,
        ttl: Duration,
        stamp: Stamp,
    ) {
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
        let stored = match self.cache.lock() {
            Ok(mut cache)
                if !self.is_revoked()
                    && !self.is_traced()
                    && stamp != Stamp::Absent
                    && self.stamp(service) == stamp =>
            {
                cache.insert(
                    service.clone(),
                    Cached {
                        kind,
                        binding: binding.cloned(),
                        page: ProtectedPage::new(copy),
                        last_used: now,
                        ttl,
                        stored: now,
                        stamp,
                    },
                );
                true
            }
            _ => false,
        };
        if stored {
            self.note(
                "cache",
                Some(service),
                format!(
                    "idle ttl {} ms, max age {} ms, page={kind}",
                    ttl.as_millis(),
                    self.config.cache_max_age.as_millis()
                ),
            );
        }
    }

    /// Evicts (wipes) every cached credential idle for its TTL or older than the max age,
    /// audited as `evict`. Returns how long until the next entry could expire.
    pub fn evict_idle(&self) -> Option<Duration> {
        let now = Instant::now();
        let max_age = self.config.cache_max_age;
        let mut evicted = Vec::new();
        let mut next: Option<Duration> = None;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|service, entry| {
                if let Some(why) = expired(entry, now, max_age) {
                    evicted.push((service.clone(), why));
                    return false;
                }
                let idle_left = entry
                    .ttl
                    .saturating_sub(now.duration_since(entry.last_used));
                let age_left = max_age.saturating_sub(now.duration_since(entry.stored));
                let left = idle_left.min(age_left);
                next = Some(next.map_or(left, |n| n.min(left)));
                true
            });
        }
        for (service, why) in evicted {
            self.note("evict", Some(&service), why);
        }
        next
    }

    /// Evicts the cached services `why` names, each audited as `evict` with its reason.
    fn evict(&self, reasons: Vec<(ServiceName, String)>) {
        if reasons.is_empty() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            for (service, _) in &reasons {
                cache.remove(service);
            }
        }
        for (service, why) in reasons {
            self.note("evict", Some(&service), why);
        }
    }

    /// Re-checks every cached service against the agent's current scope and the
    /// credentials' current policies (the server's list, which is scope-filtered): a service
    /// no longer in scope, no longer listed, or now high-value is evicted.
    async fn revalidate_cache(&self, scope: &Scope) {
        let cached: Vec<(ServiceName, Option<Binding>)> = self
            .cache
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(s, e)| (s.clone(), e.binding.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if cached.is_empty() {
            return;
        }
        let listed = self.backend.list_credentials(None).await.ok();
        let reasons = cached
            .into_iter()
            .filter_map(|(service, binding)| {
                let why = if !scope.allows(&service) {
                    "no longer in this agent's scope"
                } else {
                    match listed
                        .as_ref()
                        .map(|l| l.credentials.iter().find(|c| c.service == service))
                    {
                        None => return None, // the list is unavailable: scope still applied
                        Some(None) => "no longer listed for this agent",
                        Some(Some(c)) if c.policy.high_value => {
                            "now high-value: each release needs an approval"
                        }
                        Some(Some(c)) if c.binding != binding => {
                            "its binding changed: the proxy must see the new one"
                        }
                        Some(Some(_)) => return None,
                    }
                };
                Some((service, why.to_owned()))
            })
            .collect();
        self.evict(reasons);
    }

    /// Registers `hook` to run once the session is revoked, after the cache is wiped and
    /// before the `run` children are signalled.
    pub fn on_revocation(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.revocation_hooks.lock() {
            hooks.push(Box::new(hook));
        }
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
        // Whatever holds values (a run's proxy) wipes them now, not at its next request.
        self.changed.send_modify(|g| *g += 1);
        // Persistent proxies stop: their held values are wiped, their listeners close.
        if let Ok(hooks) = self.revocation_hooks.lock() {
            hooks.iter().for_each(|hook| hook());
        }
        let credentialed = |c: &ChildEntry| !c.services.is_empty();
        self.signal_children(credentialed, Signal::TERM, " after revocation", None);
        let daemon = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(daemon.config.kill_grace).await;
            daemon.signal_children(credentialed, Signal::KILL, " after revocation", None);
        });
    }

    /// Sends `signal` to the process group of every `run` child `select` picks (the child
    /// and whatever it started that stayed in its group), each audited as `signal` with
    /// `why` at the end of its detail (and `peer`, when a connection is the reason).
    fn signal_children(
        &self,
        select: impl Fn(&ChildEntry) -> bool,
        signal: Signal,
        why: &str,
        peer: Option<&Peer>,
    ) {
        let name = match signal {
            Signal::KILL => "SIGKILL",
            Signal::HUP => "SIGHUP",
            _ => "SIGTERM",
        };
        for (pgid, outcome) in self.children.signal(select, signal) {
            let gone = match outcome {
                Ok(()) => String::new(),
                Err(rustix::io::Errno::SRCH) => " (already gone)".to_owned(),
                Err(e) => format!(" (failed: {e})"),
            };
            self.audit(Event {
                event: "signal".into(),
                agent: Some(self.session().wallet.to_string()),
                peer: peer.cloned(),
                detail: Some(format!(
                    "{name} to run child {pgid}'s process group{why}{gone}"
                )),
                ..Default::default()
            });
        }
    }

    /// Asks the server whether the session still holds, and what it may hold: a 401 or an
    /// expiry triggers [`Daemon::on_revoked`]; otherwise the state is applied
    /// ([`Daemon::apply_state`]). A server without the state endpoint gets the older
    /// check (the session, then the cache against the listing). An unreachable server
    /// changes nothing. The fallback of [`Daemon::watch_state`], every `revocation_check`.
    pub async fn check_session(self: &Arc<Self>) {
        if self.is_revoked() {
            return;
        }
        let answer = self.backend.session_state(None, 0).await;
        self.note_contact(&answer);
        match answer {
            Ok(state) => self.apply_state(&state),
            Err(e) if matches!(e.code(), ErrorCode::Unauthorized | ErrorCode::Expired) => {
                self.on_revoked("the periodic session check was refused");
            }
            Err(e) if e.code() == ErrorCode::NotFound => {
                let answer = self.backend.session().await;
                match answer {
                    Ok(info) => {
                        if let Ok(mut live) = self.live_scope.lock() {
                            live.clone_from(&info.scope);
                        }
                        self.revalidate_cache(&info.scope).await;
                    }
                    Err(e) if matches!(e.code(), ErrorCode::Unauthorized | ErrorCode::Expired) => {
                        self.on_revoked("the periodic session check was refused");
                    }
                    Err(_) => {}
                }
            }
            Err(_) => {}
        }
    }

    /// Holds a state watch on the server for as long as the daemon serves (decision
    /// 86): each answer is applied at once, so a master's change reaches the cache, every
    /// run's proxy and (a revocation) every `run` child within a round trip, not at the next
    /// `revocation_check`. A server without the endpoint leaves the periodic check alone;
    /// an unreachable one is retried with a growing pause (at most 5 s).
    pub async fn watch_state(self: Arc<Self>) {
        let mut cursor: Option<String> = None;
        let mut failures: u32 = 0;
        while !self.is_revoked() {
            let asked = tokio::time::Instant::now();
            let answer = self
                .backend
                .session_state(cursor.as_deref(), STATE_WATCH_SECS)
                .await;
            self.note_contact(&answer);
            match answer {
                Ok(state) => {
                    failures = 0;
                    let unchanged = cursor.as_deref() == Some(state.cursor.as_str());
                    self.apply_state(&state);
                    cursor = Some(state.cursor);
                    // A server over its watch limit answers at once: do not spin on it.
                    if unchanged && asked.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) if matches!(e.code(), ErrorCode::Unauthorized | ErrorCode::Expired) => {
                    self.on_revoked("the server's state watch refused the session");
                    return;
                }
                Err(e) if e.code() == ErrorCode::NotFound => {
                    tracing::warn!(
                        "the server has no session-state watch; changes reach this daemon at \
                         its periodic check (revocation_check)"
                    );
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let pause =
                        Duration::from_millis(250 << failures.min(4)).min(Duration::from_secs(5));
                    tracing::debug!(error = %e, "the state watch failed; asking again in {pause:?}");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Asks the server once what the session may hold, before the daemon serves: a value
    /// fetched before the first state would be kept under no stamp and dropped as soon as
    /// the state came. A server that does not answer within a few seconds (or has no state
    /// endpoint) leaves it to [`Daemon::watch_state`], which keeps asking.
    pub async fn take_first_state(&self) {
        let asked =
            tokio::time::timeout(Duration::from_secs(3), self.backend.session_state(None, 0)).await;
        if let Ok(answer) = asked {
            self.note_contact(&answer);
            if let Ok(state) = answer {
                self.apply_state(&state);
            }
        }
    }

    /// Takes in what the server says the session may hold now: the scope, and a stamp per
    /// credential. Whatever changed is gone at once: cached entries of those services are
    /// evicted, and everyone holding values hears of it ([`Daemon::subscribe`]) and wipes
    /// the ones whose stamp moved. Each change is audited (`state`), with what changed.
    pub fn apply_state(&self, state: &agentkeys_types::api::SessionState) {
        if let Ok(mut live) = self.live_scope.lock() {
            live.clone_from(&state.scope);
        }
        let next = Snapshot::of(state);
        let changes = {
            let Ok(mut held) = self.state.lock() else {
                return;
            };
            if held.as_ref().is_some_and(|s| s.cursor == next.cursor) {
                return;
            }
            let changes = match held.as_ref() {
                Some(prev) => prev.changes(&next),
                None => Vec::new(), // the first state: nothing was held under one before
            };
            *held = Some(next);
            changes
        };
        // Cached entries fetched under another stamp (or under none) go.
        let stale: Vec<(ServiceName, String)> = self
            .cache
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(s, e)| e.stamp != self.stamp(s))
                    .map(|(s, _)| {
                        let why = changes
                            .iter()
                            .find(|(c, _)| c == s)
                            .map_or("the server's state changed", |(_, w)| w.as_str());
                        (s.clone(), why.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.evict(stale);
        self.changed.send_modify(|g| *g += 1);
        for (service, why) in changes {
            self.note("state", Some(&service), why);
        }
    }

    /// What the server last said of `service` (see [`Stamp`]).
    pub fn stamp(&self, service: &ServiceName) -> Stamp {
        match self.state.lock() {
            Ok(s) => s.as_ref().map_or(Stamp::Unknown, |s| s.stamp(service)),
            Err(_) => Stamp::Absent,
        }
    }

    /// A receiver that changes whenever what this session may hold changed (state, a
    /// revocation, a debugger): holders of values re-check each one's [`Stamp`] and
    /// [`Daemon::stopped`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records the trail's head in the server's audit log (`trail.anchor`) when it moved
    /// since the last anchor, so a trail truncated or rewritten later (even with recomputed
    /// hashes) no longer matches. The anchor itself is not written to the trail, or the head
    /// would move with every anchor. Failures are logged and retried at the next tick.
    pub async fn anchor(&self) {
        let (seq, hash) = self.trail.head();
        if seq == 0 || seq <= self.anchored.load(Ordering::Relaxed) {
            return;
        }
        let req = agentkeys_types::api::AnchorRequest { seq, hash };
        match self.backend.anchor_trail(&req).await {
            Ok(_) => {
                self.anchored.fetch_max(seq, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "could not anchor the audit trail"),
        }
    }

    /// The newest anchor of this daemon's trail the server holds, as `(seq, hash)`.
    pub async fn latest_anchor(&self) -> Result<Option<(u64, String)>, ClientError> {
        latest_anchor(&self.backend).await
    }

    /// The agent's scope as the server last described it.
    pub fn scope(&self) -> Scope {
        self.live_scope
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| self.session().scope.clone())
    }

    /// The `agentkeys/status` result. Answered from memory: whether the server is reachable
    /// is what the last contact (the revocation tick, or a read) found.
    pub fn status(&self) -> serde_json::Value {
        let reachable = self.reachable.load(Ordering::Relaxed);
        let s = self.session();
        json!({
            "wallet": s.wallet,
            "kind": s.kind,
            "scope": self.scope(),
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
            "same_uid": self.same_uid_view(),
            "session_at_rest": self.session_at_rest(),
            "hardening": crate::report_json(&self.hardening),
            "run_children": self.children.len(),
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
                    "max_age_ms": u64::try_from(self.config.cache_max_age.as_millis())
                        .unwrap_or(u64::MAX),
                    "page": c.kind.as_str(),
                })
            })
            .collect();
        items.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
        json!(items)
    }
}

#[cfg(test)]
mod tests {
    //! The fetch path against a real in-process server, with the interleavings a revocation
    //! or a tracer can produce forced through the `after_read` hook (no sleeps).

    use super::*;
    use agentkeys_core::session_store::StoredSession;
    use agentkeys_secmem::SecretString;
    use agentkeys_server::keys::ServerKeys;
    use agentkeys_server::{AppState, SqliteStore};
    use agentkeys_types::api::{ApproveRequest, AuthKind, Policy};

    struct Fixture {
        daemon: Arc<Daemon>,
        master: HttpBackend,
        _dir: tempfile::TempDir,
        _shutdown: tokio::sync::oneshot::Sender<()>,
    }

    fn service() -> ServiceName {
        ServiceName::parse("openai").expect("name")
    }

    fn peer() -> Peer {
        Peer {
            pid: 1,
            uid: 0,
            exe: None,
        }
    }

    /// A server with `openai` stored (high-value or not), and a daemon on the master's own
    /// session (the fetch path does not care which kind it holds) caching `openai`.
    async fn fixture(high_value: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("agentkeys.db"))
            .await
            .expect("db");
        let keys = ServerKeys::load_or_create(dir.path()).expect("keys");
        let state = AppState::new(store, keys, agentkeys_server::Config::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(agentkeys_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        let anon = HttpBackend::new(&url).expect("client");
        let grant = anon
            .create_session(SecretString::from_str_copy("daemon-unit"))
            .await
            .expect("enrol");
        let master = HttpBackend::new(&url)
            .and_then(|b| b.with_token(&grant.token))
            .expect("client")
            .pinning_first_contact()
            .await
            .expect("pin");
        let policy = Some(Policy {
            high_value,
            ..Policy::default()
        });
        master
            .store_credential(None, &service(), b"sk-unit-canary", policy)
            .await
            .expect("store");
        let info = anon.server_info().await.expect("info");
        let key = agentkeys_core::crypto::key_from_base64(&info.signing_public_key)
            .expect("a 32-byte signing key");
        let stored = StoredSession {
            server: url.clone(),
            token: grant.token,
            session: grant.session,
            server_signing_key: key,
        };
        let backend = HttpBackend::for_session(&stored).expect("backend");
        let mut config = Config::default();
        config.cache.insert(service(), Duration::from_secs(60));
        let trail = Trail::open(&dir.path().join("trail.jsonl")).expect("trail");
        let daemon = Arc::new(Daemon::new(
            stored,
            backend,
            trail,
            "test.sock".into(),
            config,
            HardeningReport::default(),
            false,
        ));
        Fixture {
            daemon,
            master,
            _dir: dir,
            _shutdown: tx,
        }
    }

    fn cached(d: &Daemon) -> usize {
        d.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn hook(d: &Daemon, f: impl FnOnce(&Daemon) + Send + 'static) {
        *d.after_read.lock().expect("hook") = Some(Box::new(f));
    }

    #[tokio::test]
    async fn a_revocation_while_a_read_is_in_flight_leaves_nothing_cached_or_served() {
        let f = fixture(false).await;
        let d = f.daemon.clone();
        // The server answers, then the revocation lands before the daemon handles the answer.
        let revoker = d.clone();
        hook(&d, move |_| revoker.on_revoked("revoked mid-read (test)"));
        let first = d.fetch(&service(), &peer(), "1").await;
        assert_eq!(first.err().map(|r| r.code), Some("REVOKED"));
        assert_eq!(
            cached(&d),
            0,
            "the in-flight value was put back in the cache"
        );
        let again = d.fetch(&service(), &peer(), "2").await;
        assert_eq!(again.err().map(|r| r.code), Some("REVOKED"));
    }

    #[tokio::test]
    async fn a_debugger_attaching_while_a_read_is_in_flight_leaves_nothing_cached_or_served() {
        let f = fixture(false).await;
        let d = f.daemon.clone();
        hook(&d, |d| d.traced.store(true, Ordering::SeqCst));
        let first = d.fetch(&service(), &peer(), "1").await;
        assert_eq!(first.err().map(|r| r.code), Some("DENIED"));
        assert_eq!(cached(&d), 0);
        d.traced.store(false, Ordering::SeqCst); // detached
        assert!(d.fetch(&service(), &peer(), "2").await.is_ok());
        assert_eq!(cached(&d), 1, "control: served and cached once untraced");
    }

    #[tokio::test]
    async fn a_revocation_between_the_read_and_the_cache_store_keeps_nothing() {
        let f = fixture(false).await;
        let d = f.daemon.clone();
        let page = SecretPage::from_slice(b"sk-unit-canary").expect("page");
        d.revoked.store(true, Ordering::SeqCst);
        d.cache_store(
            &service(),
            &page,
            None,
            Duration::from_secs(60),
            Stamp::Unknown,
        );
        assert_eq!(cached(&d), 0);
    }

    /// The daemon's current state with `service`'s value version changed, as the server
    /// would answer once its master stored a new value.
    async fn state_with_a_new_value(d: &Daemon) -> agentkeys_types::api::SessionState {
        let mut state = d.backend.session_state(None, 0).await.expect("state");
        for c in &mut state.credentials {
            if c.service == service() {
                c.version = "0123456789abcdef0123456789abcdef".into();
            }
        }
        state.cursor.push_str("-changed");
        state
    }

    #[tokio::test]
    async fn a_state_change_between_the_read_and_the_cache_store_keeps_nothing() {
        let f = fixture(false).await;
        let d = f.daemon.clone();
        d.check_session().await;
        assert!(matches!(d.stamp(&service()), Stamp::Is(_)));
        let changed = state_with_a_new_value(&d).await;
        hook(&d, move |d| d.apply_state(&changed));
        assert!(
            d.fetch(&service(), &peer(), "1").await.is_ok(),
            "served once"
        );
        assert_eq!(
            cached(&d),
            0,
            "not kept: its credential changed while it was read"
        );
        // Control: read under the state that holds now, it is kept.
        assert!(d.fetch(&service(), &peer(), "2").await.is_ok());
        assert_eq!(cached(&d), 1);
        // And a change of state evicts it at once.
        let mut again = state_with_a_new_value(&d).await;
        for c in &mut again.credentials {
            c.version = "fedcba9876543210fedcba9876543210".into();
        }
        again.cursor.push_str("-again");
        let seen = d.subscribe();
        d.apply_state(&again);
        assert_eq!(cached(&d), 0, "evicted when its value changed");
        assert!(
            seen.has_changed().expect("sender alive"),
            "holders were told"
        );
    }

    #[tokio::test]
    async fn a_high_value_credential_is_never_cached() {
        let f = fixture(true).await;
        let d = f.daemon.clone();
        let refused = d.fetch(&service(), &peer(), "1").await;
        assert_eq!(refused.err().map(|r| r.code), Some("APPROVAL_REQUIRED"));
        let pending = f
            .master
            .open_auth_request(&agentkeys_types::api::OpenAuthRequest {
                kind: AuthKind::HighValue,
                requester_public_key: None,
                identity: None,
                parent: None,
                agent: None,
                service: Some(service()),
                description: None,
            })
            .await
            .expect("the pending request");
        f.master
            .approve(&pending.id, &ApproveRequest::default())
            .await
            .expect("approve");
        let page = d.fetch(&service(), &peer(), "2").await.expect("released");
        assert_eq!(page.expose_secret(), b"sk-unit-canary");
        assert_eq!(cached(&d), 0, "a high-value release was cached");
        let again = d.fetch(&service(), &peer(), "3").await;
        assert_eq!(
            again.err().map(|r| r.code),
            Some("APPROVAL_REQUIRED"),
            "one approval gave a second release"
        );
    }
}
