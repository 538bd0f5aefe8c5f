//! The egress proxy (DESIGN decision 35): the agent never holds the key.
//!
//! `run --proxy` gives the child a placeholder per credential instead of its value, an
//! `HTTPS_PROXY` with a per-run credential, and a CA bundle holding the run's own CA. The
//! proxy, inside the daemon (its hardening applies), intercepts TLS to the hosts the
//! credentials are bound to, puts the real value where the binding says in place of the
//! placeholder, refuses (403, audited) a placeholder on its way anywhere else, and replaces
//! an echoed value in the answer by the placeholder. Hosts no credential is bound to are
//! tunnelled untouched (or refused under `--egress strict`, and in a run with a credential
//! bound to body fields).
//!
//! - [`placeholder`]: format-preserving random placeholders.
//! - [`ca`]: the run's name-constrained CA and its leaves.
//! - [`inspect`]: where a request head carries a placeholder, the binding check, the rewrite.
//! - [`body`]: the named fields of a JSON or form body, and their rewrite.
//! - [`scrub`]: streaming replacement across chunk boundaries, every form of an echo.
//! - [`decode`]: an answer's content codings, opened as it streams.
//! - [`upstream`]: resolve once, refuse internal addresses, verified TLS.
//! - [`ws`]: an upstream's WebSocket frames, scrubbed message by message and framed again.
//! - [`serve`]: the listener and the HTTP plumbing.
//! - [`persistent`]: the listeners `agentkeys proxy-env` keeps for agents the daemon does
//!   not start.

pub mod body;
pub mod ca;
pub mod decode;
pub mod inspect;
pub mod persistent;
pub mod placeholder;
pub mod scrub;
pub mod serve;
pub mod upstream;
pub mod ws;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use agentkeys_core::Backend as _;
use agentkeys_secmem::SecretPage;
use agentkeys_types::ServiceName;
use agentkeys_types::binding::Binding;
use hyper_util::client::legacy::Client;
use serde_json::json;
use tokio::net::TcpListener;

use crate::daemon::{Awaited, Conn, Daemon, Refusal, Stamp};
use crate::trail::{Event, Peer};
use ca::RunCa;
use inspect::Route;

/// The state the run's proxy listener serves from.
pub struct RunProxy {
    /// The daemon (fetches, trail, config).
    pub daemon: Arc<Daemon>,
    /// This run's id in the trail.
    pub run: String,
    /// Who started the run.
    pub peer: Peer,
    /// The `Proxy-Authorization` password.
    token: String,
    /// The run's credentials.
    pub routes: Vec<Route>,
    /// The run's CA.
    pub ca: RunCa,
    /// Why hosts no credential of the run is bound to are refused; `None`: tunnelled.
    pub strict: Option<Strict>,
    /// Values this run's requests reuse, each with the binding that came with it, when it
    /// stops being reused (`proxy_hold`, or `approval_hold` for a high-value value one
    /// approval released) and the [`Stamp`] the server gave its credential when it was
    /// fetched. Wiped when the run ends, as soon as the session is revoked or a debugger
    /// attaches, and as soon as the master changes anything about its credential (scope,
    /// policy, binding, value, standing approvals: the stamp moves).
    held: std::sync::Mutex<HashMap<ServiceName, Held>>,
    /// One approval wait at a time, so concurrent requests share one approval.
    approving: tokio::sync::Mutex<()>,
    /// Set when the run ends: nothing more is injected.
    closed: AtomicBool,
    /// Whether an approved high-value value is held for the rest of the run (`run`), or
    /// covers one request only (a persistent listener, which has no end to wait for).
    hold_approvals: bool,
    /// The upstream client: pooled connections, HTTP/2 where the upstream offers it.
    pub client: Client<upstream::Connector, serve::Body>,
    /// The same over HTTP/1.1-only connections, for upgrades (WebSocket).
    pub client_h1: Client<upstream::Connector, serve::Body>,
    /// Every task the proxy runs, its listener's and its upstream pool's included.
    pub tasks: Tasks,
}

/// Why a run refuses hosts none of its credentials is bound to, and what changes that.
pub struct Strict {
    /// The reason, for the 403 and the trail.
    pub why: String,
    /// The fix.
    pub hint: String,
}

impl Strict {
    /// The daemon's `--egress strict`, else the first binding with body fields that does not
    /// say `tunnel_unbound`: a value sent into a body field could otherwise be read back,
    /// unscrubbed, through another name of the same server (issue 23, N2).
    fn of_run(strict_daemon: bool, routes: &[Route]) -> Option<Strict> {
        if strict_daemon {
            return Some(Strict {
                why: "--egress strict".into(),
                hint: "bind a credential to it with 'agentkeys bind', or run the daemon with \
                       --egress open"
                    .into(),
            });
        }
        let r = routes.iter().find(|r| r.binding.makes_egress_strict())?;
        Some(Strict {
            why: format!(
                "the binding of {} puts it into request bodies, which makes the run's egress strict",
                r.service
            ),
            hint: format!(
                "bind a credential of the run to it, or the master of {0} lets runs tunnel other \
                 hosts with 'agentkeys bind {0} … --tunnel-unbound'",
                r.service
            ),
        })
    }
}

/// The tasks of one proxy: its listener, the agent's connections, tunnels, HTTP/2 streams
/// and the upstream pool's connections. Their buffers hold injected keys (hyper reuses a
/// connection's header buffer without clearing it), so the run's end stops them all and
/// waits until each is dropped: the allocator then scrubs what they held.
#[derive(Clone, Default)]
pub struct Tasks(Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>);

impl Tasks {
    /// Runs `task` on the runtime, as one of these tasks.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while set.try_join_next().is_some() {} // forget the finished ones
        set.spawn(task);
    }

    /// Aborts every task and returns once each has been dropped. A task can spawn another
    /// while it is being stopped (a pooled connection, say): those are stopped in turn.
    async fn stop(&self) {
        loop {
            let mut set = std::mem::take(
                &mut *self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if set.is_empty() {
                return;
            }
            set.shutdown().await;
        }
    }

    /// Aborts every task without waiting (a drop that could not wait).
    fn abort(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .abort_all();
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Tasks {
    fn execute(&self, task: F) {
        self.spawn(task);
    }
}

/// A value to inject: the value, the binding signed with it, and the table that turns
/// its echoes back into the placeholder. Shared (not copied) by the requests that reuse it.
#[derive(Clone)]
pub struct Fetched {
    /// The value, in a secret page.
    pub page: Arc<SecretPage>,
    /// The binding that came with it.
    pub binding: Option<Binding>,
    /// Its echoes (raw, base64, hex) → the placeholder's.
    pub echoes: Arc<scrub::Table>,
}

/// A value held for a run's later requests.
struct Held {
    fetched: Fetched,
    until: Instant,
    /// What the server said of the credential before the value was fetched.
    stamp: Stamp,
}

/// A fetched value with its echo table.
fn fetched(route: &Route, page: SecretPage, binding: Option<Binding>) -> std::io::Result<Fetched> {
    let echoes = scrub::Table::echoes(&[(page.expose_secret(), route.placeholder.as_bytes())])?;
    Ok(Fetched {
        page: Arc::new(page),
        binding,
        echoes,
    })
}

fn no_page(e: std::io::Error) -> http::Response<serve::Body> {
    forbidden(&format!("no secret page for the scrubber: {e}"), "")
}

/// The TLS provider of both of the proxy's hops: ring, with AES-128-GCM preferred (a TLS 1.3
/// mandatory suite, and the fastest with AES instructions: the proxy encrypts every byte
/// twice).
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Constant-time equality, for the proxy credential.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RunProxy {
    /// The value (and the binding that came with it) to inject for `route`: a value held for
    /// this run, else a fetch; a fetch refused for want of an approval waits for it (up to
    /// `approval_wait`), and the approved value is held for `approval_hold` at most.
    pub async fn value_for(&self, route: &Route) -> Result<Fetched, http::Response<serve::Body>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(forbidden("this run has ended", ""));
        }
        if let Some((refusal, why)) = self.daemon.stopped() {
            self.wipe_held();
            self.refused(Some(&route.service), why);
            return Err(forbidden(&refusal.message, ""));
        }
        if let Some(held) = self.held_copy(&route.service) {
            return Ok(held);
        }
        let stamp = self.daemon.stamp(&route.service);
        match self
            .daemon
            .fetch_bound(&route.service, &self.peer, &self.run)
            .await
        {
            Ok((page, binding)) => {
                let fetched = fetched(route, page, binding).map_err(no_page)?;
                let hold = self.daemon.config.proxy_hold;
                if !hold.is_zero() {
                    self.hold(&route.service, &fetched, Instant::now() + hold, stamp);
                }
                Ok(fetched)
            }
            Err(refusal) if refusal.pending.is_some() => self.await_approval(route).await,
            Err(refusal) => Err(self.fetch_refused(route, &refusal)),
        }
    }

    /// The value held for `service`, if it is still to be reused: not past its time, and
    /// fetched under the stamp the server gives its credential now.
    fn held_copy(&self, service: &ServiceName) -> Option<Fetched> {
        let mut held = self.held.lock().ok()?;
        let entry = held.get(service)?;
        if Instant::now() >= entry.until || entry.stamp != self.daemon.stamp(service) {
            held.remove(service);
            return None;
        }
        Some(entry.fetched.clone())
    }

    /// Keeps `fetched` for this run's later requests until `until`, unless the run ended,
    /// serving stopped, or the server said something new of the credential since `stamp`
    /// (checked under the held lock, which [`RunProxy::forget_stale`] takes after the
    /// daemon's state moved, so a change during the fetch never leaves a value held).
    fn hold(&self, service: &ServiceName, fetched: &Fetched, until: Instant, stamp: Stamp) {
        if fetched.binding.is_none()
            || self.closed.load(Ordering::Relaxed)
            || self.daemon.stopped().is_some()
        {
            return;
        }
        if let Ok(mut held) = self.held.lock()
            && stamp != Stamp::Absent
            && self.daemon.stamp(service) == stamp
        {
            held.insert(
                service.clone(),
                Held {
                    fetched: fetched.clone(),
                    until,
                    stamp,
                },
            );
        }
    }

    fn wipe_held(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.clear();
        }
    }

    /// Wipes every held value that no longer holds: all of them once serving stopped,
    /// else those whose credential's stamp moved, each audited (`proxy-drop`) with why.
    fn forget_stale(&self) {
        let stopped = self.daemon.stopped().map(|(_, why)| why);
        let gone: Vec<ServiceName> = match self.held.lock() {
            Ok(mut held) => {
                let gone = held
                    .iter()
                    .filter(|(s, h)| stopped.is_some() || h.stamp != self.daemon.stamp(s))
                    .map(|(s, _)| s.clone())
                    .collect::<Vec<_>>();
                for s in &gone {
                    held.remove(s);
                }
                gone
            }
            Err(_) => Vec::new(),
        };
        for service in gone {
            self.audit(Event {
                event: "proxy-drop".into(),
                service: Some(service.to_string()),
                mode: Some("proxy".into()),
                detail: Some(match stopped {
                    Some(why) => format!("held value wiped: {why}"),
                    None => "held value wiped: its master changed what it allows (the next \
                             request asks the server again)"
                        .to_owned(),
                }),
                ..Default::default()
            });
        }
    }

    /// Waits (one waiter at a time) for the high-value request the server opened to be
    /// decided, then reads the value once and holds it for the run.
    async fn await_approval(&self, route: &Route) -> Result<Fetched, http::Response<serve::Body>> {
        let _turn = self.approving.lock().await;
        if let Some(held) = self.held_copy(&route.service) {
            return Ok(held); // approved while this request waited for its turn
        }
        // Ask again under the turn: the request an earlier waiter saw may be spent.
        let refusal = match self
            .daemon
            .fetch_bound(&route.service, &self.peer, &self.run)
            .await
        {
            Ok((page, binding)) => return fetched(route, page, binding).map_err(no_page),
            Err(r) => r,
        };
        let Some(id) = refusal.pending.clone() else {
            return Err(self.fetch_refused(route, &refusal));
        };
        let wait = self.daemon.config.approval_wait;
        self.audit(Event {
            event: "approval-wait".into(),
            service: Some(route.service.to_string()),
            mode: Some("proxy".into()),
            detail: Some(format!(
                "holding the request up to {} s: {}",
                wait.as_secs(),
                refusal.message
            )),
            ..Default::default()
        });
        match self.daemon.await_approval(&id, wait).await {
            Awaited::Approved => {}
            Awaited::TimedOut => {
                self.refused(Some(&route.service), "no approval in time");
                return Err(forbidden(
                    &format!(
                        "{} (the proxy waited {} s for it)",
                        refusal.message,
                        wait.as_secs()
                    ),
                    "once approved, send the request again: one approval covers the run's later \
                     requests for up to approval_hold (15 min), until the master changes anything \
                     about the credential",
                ));
            }
            Awaited::Ended(status) => {
                let why = format!("the approval request was {}", status.as_str());
                self.refused(Some(&route.service), &why);
                return Err(forbidden(&why, ""));
            }
            Awaited::Failed(e) => {
                let refusal = self.daemon.refusal(Some(&route.service), &e);
                return Err(self.fetch_refused(route, &refusal));
            }
        }
        let stamp = self.daemon.stamp(&route.service);
        let (page, binding) = self
            .daemon
            .fetch_bound(&route.service, &self.peer, &self.run)
            .await
            .map_err(|r| self.fetch_refused(route, &r))?;
        let fetched = fetched(route, page, binding).map_err(no_page)?;
        if self.hold_approvals {
            // Bounded even within a run: one approval is not a standing one.
            let until = Instant::now() + self.daemon.config.approval_hold;
            self.hold(&route.service, &fetched, until, stamp);
        }
        Ok(fetched)
    }

    /// Writes a trail event of this run.
    pub fn audit(&self, mut e: Event) {
        e.agent = Some(self.daemon.session().wallet.to_string());
        e.peer = Some(self.peer.clone());
        e.request = Some(self.run.clone());
        self.daemon.audit(e);
    }

    /// A refused connection or request (not an exfiltration attempt).
    pub fn refused(&self, service: Option<&ServiceName>, why: &str) {
        self.audit(Event {
            event: "proxy-deny".into(),
            service: service.map(ToString::to_string),
            mode: Some("proxy".into()),
            detail: Some(why.to_owned()),
            ..Default::default()
        });
    }

    /// A placeholder on its way where its binding does not allow: audited as an
    /// exfiltration attempt, answered 403 with the reason.
    pub fn exfiltration(&self, route: &Route, why: &str) -> http::Response<serve::Body> {
        self.audit(Event {
            event: "exfiltration".into(),
            service: Some(route.service.to_string()),
            mode: Some("proxy".into()),
            detail: Some(why.to_owned()),
            ..Default::default()
        });
        forbidden(
            &format!("refused: {why}; nothing was replaced or forwarded"),
            "the credential may only go where its master bound it ('agentkeys bind SERVICE' shows where)",
        )
    }

    /// The value could not be fetched (revoked, out of scope, approval needed…).
    pub fn fetch_refused(&self, route: &Route, refusal: &Refusal) -> http::Response<serve::Body> {
        self.refused(Some(&route.service), refusal.message.as_str());
        forbidden(&refusal.message, "")
    }

    /// A CONNECT to a host no credential is bound to, tunnelled untouched.
    pub fn note_tunnel(&self, host: &str, port: u16) {
        self.audit(Event {
            event: "tunnel".into(),
            mode: Some("proxy".into()),
            detail: Some(format!("{host}:{port}: not bound, tunnelled untouched")),
            ..Default::default()
        });
    }
}

fn forbidden(message: &str, hint: &str) -> http::Response<serve::Body> {
    use http_body_util::BodyExt as _;
    let body = json!({"error": {"code": "DENIED", "message": message, "hint": hint}}).to_string();
    let mut r = http::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(body))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = http::StatusCode::FORBIDDEN;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A run's proxy while the run lives: dropping it stops the listener and removes the CA
/// bundle file.
pub struct ProxyRun {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The placeholders, in the order of the services given to [`start`].
    pub placeholders: Vec<String>,
    /// The environment the child gets besides the placeholders.
    pub env: Vec<String>,
    bundle: PathBuf,
    state: Arc<RunProxy>,
}

impl ProxyRun {
    /// What an agent needs to use it: the proxy URL, the CA bundle, the placeholder of each
    /// service, and the whole environment as `NAME=value` lines.
    pub fn describe(&self) -> serde_json::Value {
        let placeholders: serde_json::Map<String, serde_json::Value> = self
            .state
            .routes
            .iter()
            .map(|r| (r.service.to_string(), json!(r.placeholder)))
            .collect();
        let mut env: Vec<String> = self
            .state
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{}={}",
                    crate::credential_var::default_name(&r.service, false),
                    r.placeholder
                )
            })
            .collect();
        env.extend(self.env.iter().cloned());
        json!({
            "proxy": self.env.first().and_then(|e| e.split_once('=')).map(|(_, v)| v),
            "ca_bundle": self.bundle.display().to_string(),
            "placeholders": placeholders,
            "env": env,
        })
    }

    /// Ends the proxy: nothing more is injected, the held values are wiped, and every
    /// connection is closed and dropped before this returns, so no buffer of the run is
    /// left holding a key (the run's end calls it before it audits `exit`).
    pub async fn shutdown(&self) {
        self.state.closed.store(true, Ordering::Relaxed);
        self.state.wipe_held();
        self.state.tasks.stop().await;
        let _ = std::fs::remove_file(&self.bundle);
    }
}

impl Drop for ProxyRun {
    fn drop(&mut self) {
        // Connections still open (a leftover of the run) get nothing more.
        self.state.closed.store(true, Ordering::Relaxed);
        self.state.wipe_held();
        self.state.tasks.abort();
        let _ = std::fs::remove_file(&self.bundle);
    }
}

/// Wipes the run's held values that no longer hold as soon as the daemon hears of a change
/// (a state change, a revocation, a debugger), not at the run's next request.
async fn forget_when_changed(proxy: std::sync::Weak<RunProxy>) {
    let Some(mut changed) = proxy.upgrade().map(|p| p.daemon.subscribe()) else {
        return;
    };
    while changed.changed().await.is_ok() {
        let Some(proxy) = proxy.upgrade() else { return };
        proxy.forget_stale();
    }
}

pub(super) fn refusal(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
        pending: None,
        approve_url: None,
    }
}

/// The system's CA bundle, for the child's bundle next to the run's CA.
fn system_roots_pem() -> String {
    let candidates = [
        std::env::var("SSL_CERT_FILE").ok(),
        Some("/etc/ssl/certs/ca-certificates.crt".into()),
        Some("/etc/pki/tls/certs/ca-bundle.crt".into()),
        Some("/etc/ssl/cert.pem".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// The child's CA bundle: the system roots and the run's CA, in a new file readable by
/// the child whatever its uid (the certificates are public; the file is removed when the
/// run ends).
fn write_bundle(run: &str, ca_pem: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("agentkeys-proxy-{run}.pem"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)?;
    // The mode given at creation passes through the umask (the shipped unit's 0077 made it
    // 0600, unreadable by an agent of another uid); set it on the open file.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let mut text = system_roots_pem();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(ca_pem);
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// Starts the proxy for a run of `services`: fetches each (its binding comes signed with
/// it), makes its placeholder from the value's shape, drops the value, generates the run's
/// CA constrained to the bound hosts, and listens on a loopback port.
pub async fn start(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    services: &[ServiceName],
) -> Result<ProxyRun, Refusal> {
    start_with(daemon, conn, request, services, true).await
}

pub(super) async fn start_with(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    services: &[ServiceName],
    hold_approvals: bool,
) -> Result<ProxyRun, Refusal> {
    // High-value credentials are not read here (that would ask for an approval before the
    // run needs one): their binding comes from the listing, their placeholder is generic.
    // Injection checks the binding signed with the value, read once approved.
    let listed = daemon
        .backend
        .list_credentials(None)
        .await
        .map_err(|e| daemon.refusal(None, &e))?;
    let mut routes = Vec::with_capacity(services.len());
    for service in services {
        let meta = listed.credentials.iter().find(|c| &c.service == service);
        let (placeholder, binding) = match meta {
            Some(c) if c.policy.high_value => (placeholder::for_key(b""), c.binding.clone()),
            _ => {
                let (page, binding) = daemon.fetch_bound(service, &conn.peer, request).await?;
                (placeholder::for_key(page.expose_secret()), binding)
            }
        };
        let Some(binding) = binding else {
            return Err(refusal(
                "DENIED",
                format!(
                    "{service} is not bound to any host, so the proxy cannot inject it; its master \
                     binds it with 'agentkeys bind {service} --host HOST' (or --well-known)"
                ),
            ));
        };
        // A retired binding: today's built-in in place of an old built-in, else refused.
        let binding = binding
            .in_force(service.as_str())
            .map_err(|e| refusal("DENIED", e.to_string()))?
            .into_owned();
        routes.push(Route {
            service: service.clone(),
            placeholder,
            binding,
        });
    }
    let mut hosts: Vec<String> = routes
        .iter()
        .flat_map(|r| r.binding.hosts.iter().cloned())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let internal = |e: String| refusal("INTERNAL", e);
    let ca = RunCa::new(&hosts).map_err(|e| internal(e.to_string()))?;
    let token = placeholder::token();
    let run = format!("proxy-{}", &placeholder::token()[..12]);
    let bundle = write_bundle(&run, &ca.cert_pem)
        .map_err(|e| internal(format!("cannot write the run's CA bundle: {e}")))?;
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&bundle);
            return Err(internal(format!("cannot listen for the proxy: {e}")));
        }
    };
    let addr = listener.local_addr().map_err(|e| internal(e.to_string()))?;
    let proxy_url = format!("http://agentkeys:{token}@{addr}");
    let ca_path = bundle.display().to_string();
    let mut env = Vec::new();
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        env.push(format!("{name}={proxy_url}"));
    }
    // Node ≥ 22.21 and 24 honour HTTPS_PROXY in their global fetch only when told to (Node
    // 20 ignores both).
    env.push("NODE_USE_ENV_PROXY=1".to_owned());
    for name in ["NO_PROXY", "no_proxy"] {
        env.push(format!("{name}=localhost,127.0.0.1,::1"));
    }
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
    ] {
        env.push(format!("{name}={ca_path}"));
    }
    let placeholders = routes.iter().map(|r| r.placeholder.clone()).collect();
    let private: Vec<Binding> = routes
        .iter()
        .filter(|r| r.binding.allow_private)
        .map(|r| r.binding.clone())
        .collect();
    let connector = upstream::Connector {
        config: Arc::new(daemon.config.proxy.clone()),
        allow_internal: Arc::new(move |host: &str| private.iter().any(|b| b.allows_host(host))),
        h1_only: false,
    };
    let tasks = Tasks::default();
    let pooled = |connector: upstream::Connector| {
        Client::builder(tasks.clone())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            // Bulk downloads over HTTP/2: windows that grow with the measured bandwidth,
            // instead of a fixed 64 KiB stream window waiting on round trips.
            .http2_adaptive_window(true)
            // HTTP/1.1 bodies in reads of one size: the allocator reuses the same blocks
            // instead of growing a buffer per download (measured: +16 MiB of RSS during a
            // 256 MiB download with the growing default).
            .http1_read_buf_exact_size(64 * 1024)
            .build(connector)
    };
    let client_h1 = pooled(upstream::Connector {
        h1_only: true,
        ..connector.clone()
    });
    let client = pooled(connector);
    let strict = Strict::of_run(daemon.config.proxy.strict, &routes);
    let state = Arc::new(RunProxy {
        daemon: daemon.clone(),
        run: run.clone(),
        peer: conn.peer.clone(),
        token,
        routes,
        ca,
        strict,
        held: std::sync::Mutex::new(HashMap::new()),
        approving: tokio::sync::Mutex::new(()),
        closed: AtomicBool::new(false),
        hold_approvals,
        client,
        client_h1,
        tasks,
    });
    state.audit(Event {
        event: "proxy".into(),
        mode: Some("proxy".into()),
        detail: Some(format!(
            "listening on {addr} for {} (hosts {}){}{}",
            services
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            hosts.join(", "),
            if state.ca.holds_key() {
                "; CA key held for wildcard leaves"
            } else {
                "; CA key already dropped"
            },
            match &state.strict {
                Some(s) => format!("; unbound hosts refused: {}", s.why),
                None => "; unbound hosts tunnelled".into(),
            }
        )),
        ..Default::default()
    });
    state.tasks.spawn(serve::listen(state.clone(), listener));
    state
        .tasks
        .spawn(forget_when_changed(Arc::downgrade(&state)));
    Ok(ProxyRun {
        addr,
        placeholders,
        env,
        bundle,
        state,
    })
}
