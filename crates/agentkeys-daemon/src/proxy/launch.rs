//! Starting a proxy: the routes of its credentials (each binding checked, each placeholder
//! shaped like its value), the run's CA, the child's environment, the upstream clients and
//! the listener; and the [`ProxyRun`] handle that stops it all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentkeys_core::Backend as _;
use agentkeys_types::ServiceName;
use agentkeys_types::binding::Binding;
use hyper_util::client::legacy::Client;
use serde_json::json;
use tokio::net::TcpListener;

use super::ca::RunCa;
use super::inspect::Route;
use super::response::Body;
use super::state::{RunProxy, Strict, forget_when_changed};
use super::tasks::Tasks;
use super::{child_env, placeholder, upstream, wire};
use crate::credential_var::default_name;
use crate::daemon::{Conn, Daemon, Refusal};
use crate::trail::Event;

/// A run's proxy while the run lives: dropping it stops the listener and removes the CA
/// bundle file.
pub struct ProxyRun {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The placeholders, in the order of the services given to [`super::start`].
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
            .map(|r| format!("{}={}", default_name(&r.service, false), r.placeholder))
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

/// Starts a proxy for `services`: fetches each (its binding comes signed with it), makes
/// its placeholder from the value's shape, drops the value, generates the CA constrained
/// to the bound hosts, and listens on a loopback port. With `hold_approvals`, an approved
/// high-value value is held for the rest of the run; else it covers one request.
pub(super) async fn start_with(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    services: &[ServiceName],
    hold_approvals: bool,
) -> Result<ProxyRun, Refusal> {
    let routes = routes(daemon, conn, request, services).await?;
    let hosts = bound_hosts(&routes);
    let internal = |e: String| Refusal::new("INTERNAL", e);
    let ca = RunCa::new(&hosts).map_err(|e| internal(e.to_string()))?;
    let token = placeholder::token();
    let run = format!("proxy-{}", &placeholder::token()[..12]);
    let bundle = child_env::write_bundle(&run, &ca.cert_pem)
        .map_err(|e| internal(format!("cannot write the run's CA bundle: {e}")))?;
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&bundle);
            return Err(internal(format!("cannot listen for the proxy: {e}")));
        }
    };
    let addr = listener.local_addr().map_err(|e| internal(e.to_string()))?;
    let env = child_env::vars(&format!("http://agentkeys:{token}@{addr}"), &bundle);
    let placeholders = routes.iter().map(|r| r.placeholder.clone()).collect();
    let tasks = Tasks::default();
    let (client, client_h1) = clients(daemon, &routes, &tasks);
    let strict = Strict::of_run(daemon.config.proxy.strict, &routes);
    let state = Arc::new(RunProxy {
        daemon: daemon.clone(),
        run: run.clone(),
        peer: conn.peer.clone(),
        token,
        routes,
        ca,
        strict,
        held: std::sync::Mutex::new(std::collections::HashMap::new()),
        approving: tokio::sync::Mutex::new(()),
        closed: AtomicBool::new(false),
        hold_approvals,
        client,
        client_h1,
        tasks,
    });
    announce(&state, services, &hosts, addr);
    state.tasks.spawn(wire::listen(state.clone(), listener));
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

/// The route of each of `services`: its placeholder and the binding in force.
///
/// High-value credentials are not read here (that would ask for an approval before the
/// run needs one): their binding comes from the listing, their placeholder is generic.
/// Injection checks the binding signed with the value, read once approved.
async fn routes(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    services: &[ServiceName],
) -> Result<Vec<Route>, Refusal> {
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
            return Err(Refusal::new(
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
            .map_err(|e| Refusal::new("DENIED", e.to_string()))?
            .into_owned();
        routes.push(Route {
            service: service.clone(),
            placeholder,
            binding,
        });
    }
    Ok(routes)
}

/// Every host a route is bound to, sorted, once each.
fn bound_hosts(routes: &[Route]) -> Vec<String> {
    let mut hosts: Vec<String> = routes
        .iter()
        .flat_map(|r| r.binding.hosts.iter().cloned())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// The upstream clients (pooled, HTTP/2 where offered; and HTTP/1.1 only, for upgrades),
/// their connections run as the proxy's `tasks`. Internal addresses are refused unless a
/// route's binding allows them.
fn clients(
    daemon: &Daemon,
    routes: &[Route],
    tasks: &Tasks,
) -> (
    Client<upstream::Connector, Body>,
    Client<upstream::Connector, Body>,
) {
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
    (client, client_h1)
}

/// The trail's `proxy` line: where it listens, for which services and hosts, whether the
/// CA key is held, and what happens to unbound hosts.
fn announce(state: &RunProxy, services: &[ServiceName], hosts: &[String], addr: SocketAddr) {
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
}
