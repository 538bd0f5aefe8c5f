//! One proxy's state, for the run (or the persistent listener) it serves: its routes,
//! CA and upstream clients, the values it holds for later requests with the stamp each was
//! fetched under, the approval waits, and its trail lines. What the wire and the exchange
//! decide with; it moves no bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use agentkeys_secmem::SecretPage;
use agentkeys_types::ServiceName;
use agentkeys_types::binding::Binding;
use http::{Response, StatusCode};
use hyper_util::client::legacy::Client;

use super::ca::RunCa;
use super::inspect::Route;
use super::response::{Body, forbidden, json_response};
use super::scrub;
use super::tasks::Tasks;
use super::upstream;
use crate::daemon::{Awaited, Daemon, Refusal, Stamp};
use crate::trail::{Event, Peer};

/// The state the run's proxy listener serves from.
pub(super) struct RunProxy {
    /// The daemon (fetches, trail, config).
    pub(super) daemon: Arc<Daemon>,
    /// This run's id in the trail.
    pub(super) run: String,
    /// Who started the run.
    pub(super) peer: Peer,
    /// The `Proxy-Authorization` password.
    pub(super) token: String,
    /// The run's credentials.
    pub(super) routes: Vec<Route>,
    /// The run's CA.
    pub(super) ca: RunCa,
    /// Why hosts no credential of the run is bound to are refused; `None`: tunnelled.
    pub(super) strict: Option<Strict>,
    /// Values this run's requests reuse, each with the binding that came with it, when it
    /// stops being reused (`proxy_hold`, or `approval_hold` for a high-value value one
    /// approval released) and the [`Stamp`] the server gave its credential when it was
    /// fetched. Wiped when the run ends, as soon as the session is revoked or a debugger
    /// attaches, and as soon as the master changes anything about its credential (scope,
    /// policy, binding, value, standing approvals: the stamp moves).
    pub(super) held: std::sync::Mutex<HashMap<ServiceName, Held>>,
    /// One approval wait at a time, so concurrent requests share one approval.
    pub(super) approving: tokio::sync::Mutex<()>,
    /// Set when the run ends: nothing more is injected.
    pub(super) closed: AtomicBool,
    /// Whether an approved high-value value is held for the rest of the run (`run`), or
    /// covers one request only (a persistent listener, which has no end to wait for).
    pub(super) hold_approvals: bool,
    /// The upstream client: pooled connections, HTTP/2 where the upstream offers it.
    pub(super) client: Client<upstream::Connector, Body>,
    /// The same over HTTP/1.1-only connections, for upgrades (WebSocket).
    pub(super) client_h1: Client<upstream::Connector, Body>,
    /// Every task the proxy runs, its listener's and its upstream pool's included.
    pub(super) tasks: Tasks,
}

/// Why a run refuses hosts none of its credentials is bound to, and what changes that.
pub(super) struct Strict {
    /// The reason, for the 403 and the trail.
    pub(super) why: String,
    /// The fix.
    pub(super) hint: String,
}

impl Strict {
    /// The daemon's `--egress strict`, else the first binding with body fields that does not
    /// say `tunnel_unbound`: a value sent into a body field could otherwise be read back,
    /// unscrubbed, through another name of the same server (issue 23, N2).
    pub(super) fn of_run(strict_daemon: bool, routes: &[Route]) -> Option<Strict> {
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

/// A value to inject: the value, the binding signed with it, and the table that turns
/// its echoes back into the placeholder. Shared (not copied) by the requests that reuse it.
#[derive(Clone)]
pub(super) struct Fetched {
    /// The value, in a secret page.
    pub(super) page: Arc<SecretPage>,
    /// The binding that came with it.
    pub(super) binding: Option<Binding>,
    /// Its echoes (raw, base64, hex) → the placeholder's.
    pub(super) echoes: Arc<scrub::Table>,
}

/// A value held for a run's later requests.
pub(super) struct Held {
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

fn no_page(e: std::io::Error) -> Response<Body> {
    forbidden(&format!("no secret page for the scrubber: {e}"), "")
}

/// Constant-time equality, for the proxy credential.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RunProxy {
    /// The value (and the binding that came with it) to inject for `route`: a value held for
    /// this run, else a fetch; a fetch refused for want of an approval waits for it (up to
    /// `approval_wait`), and the approved value is held for `approval_hold` at most.
    pub(super) async fn value_for(&self, route: &Route) -> Result<Fetched, Response<Body>> {
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

    pub(super) fn wipe_held(&self) {
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
    async fn await_approval(&self, route: &Route) -> Result<Fetched, Response<Body>> {
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
    pub(super) fn audit(&self, mut e: Event) {
        e.agent = Some(self.daemon.session().wallet.to_string());
        e.peer = Some(self.peer.clone());
        e.request = Some(self.run.clone());
        self.daemon.audit(e);
    }

    /// A refused connection or request (not an exfiltration attempt).
    pub(super) fn refused(&self, service: Option<&ServiceName>, why: &str) {
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
    pub(super) fn exfiltration(&self, route: &Route, why: &str) -> Response<Body> {
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
    pub(super) fn fetch_refused(&self, route: &Route, refusal: &Refusal) -> Response<Body> {
        self.refused(Some(&route.service), refusal.message.as_str());
        forbidden(&refusal.message, "")
    }

    /// A CONNECT to a host no credential is bound to, tunnelled untouched.
    pub(super) fn note_tunnel(&self, host: &str, port: u16) {
        self.audit(Event {
            event: "tunnel".into(),
            mode: Some("proxy".into()),
            detail: Some(format!("{host}:{port}: not bound, tunnelled untouched")),
            ..Default::default()
        });
    }

    /// Whether `pass` is this run's proxy credential (compared in constant time).
    pub(super) fn admits(&self, pass: &[u8]) -> bool {
        ct_eq(pass, self.token.as_bytes())
    }

    /// The refusal (audited `proxy-deny`) of a host no credential of the run is bound to, when
    /// the run's egress is strict; `None` when it is tunnelled.
    pub(super) fn unbound_refused(&self, host: &str, port: u16) -> Option<Response<Body>> {
        let strict = self.strict.as_ref()?;
        let why = format!(
            "{host}:{port} is not bound to any credential of this run ({})",
            strict.why
        );
        self.refused(None, &why);
        Some(json_response(
            StatusCode::FORBIDDEN,
            "DENIED",
            &why,
            &strict.hint,
        ))
    }
}

/// Wipes the run's held values that no longer hold as soon as the daemon hears of a change
/// (a state change, a revocation, a debugger), not at the run's next request.
pub(super) async fn forget_when_changed(proxy: std::sync::Weak<RunProxy>) {
    let Some(mut changed) = proxy.upgrade().map(|p| p.daemon.subscribe()) else {
        return;
    };
    while changed.changed().await.is_ok() {
        let Some(proxy) = proxy.upgrade() else { return };
        proxy.forget_stale();
    }
}
