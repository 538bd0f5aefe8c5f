//! The egress proxy (decision 82): the agent never holds the key.
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
//! Each layer uses only those below it:
//! - `wire`: moves bytes and decides nothing: the listener, `Proxy-Authorization`,
//!   `CONNECT`, TLS toward the agent, tunnels, the upstream hop, the WebSocket splice.
//! - `exchange`: one request and its answer, the only thing the wire asks: which
//!   placeholders go where, the values put in, the answer scrubbed, the injection audited.
//! - `streamed`: an answer's body scrubbed as it streams, and the injection's trail line.
//! - `launch`: starting a proxy (routes, CA, clients, listener) and the [`ProxyRun`]
//!   handle that stops it; [`persistent`]: the listeners `agentkeys proxy-env` keeps, for
//!   agents the daemon does not start, stopped when the session is revoked.
//! - `state`: one proxy's state: its routes, the values it holds with their stamps, the
//!   approval waits, its trail lines.
//! - `child_env`: the variables and the CA bundle a child gets to use the proxy.
//! - `response`: the body type and the JSON error answers; `tasks`: the proxy's tasks,
//!   stopped together; `tls`: the TLS provider of both hops.
//! - [`placeholder`]: format-preserving random placeholders.
//! - [`ca`]: the run's name-constrained CA and its leaves.
//! - [`inspect`]: where a request head carries a placeholder, the binding check, the rewrite.
//! - [`body`]: the named fields of a JSON or form body, and their rewrite.
//! - [`scrub`]: streaming replacement across chunk boundaries, every form of an echo.
//! - [`decode`]: an answer's content codings, opened as it streams.
//! - [`upstream`]: resolve once, refuse internal addresses, verified TLS.
//! - [`ws`]: an upstream's WebSocket frames, scrubbed message by message and framed again.

pub mod body;
pub mod ca;
mod child_env;
pub mod decode;
mod exchange;
pub mod inspect;
mod launch;
pub mod persistent;
pub mod placeholder;
mod response;
pub mod scrub;
mod state;
mod streamed;
mod tasks;
mod tls;
pub mod upstream;
mod wire;
pub mod ws;

use std::sync::Arc;

use agentkeys_types::ServiceName;

use crate::daemon::{Conn, Daemon, Refusal};

pub use launch::ProxyRun;

/// Starts the proxy for a run of `services`: fetches each (its binding comes signed with
/// it), makes its placeholder from the value's shape, drops the value, generates the run's
/// CA constrained to the bound hosts, and listens on a loopback port.
pub async fn start(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    services: &[ServiceName],
) -> Result<ProxyRun, Refusal> {
    launch::start_with(daemon, conn, request, services, true).await
}
