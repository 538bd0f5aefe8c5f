//! The agentkeys backend server.
//!
//! A tour, from the outside in (each layer uses only the ones below it):
//! - [`serve`] puts the [`http::router`] on a bound listener; `main.rs` only wires, with
//!   `cli.rs` (flags → a validated plan) and `tools.rs` (`migrate`, `backup`, `verify`,
//!   `rotate-kek`) beside it in the binary.
//! - [`tls`]: serving HTTPS itself, the certificate reloaded on SIGHUP.
//! - [`http`]: one module per resource, thin handlers (extract → authorize → store → map):
//!   `sessions`, `session_state`, `credentials`, `auth_requests`, `passkeys`, `standing`,
//!   `agents`, `identities`, `audit`, `meta`, `metrics` (`GET /metrics` and the request
//!   counter), `pages` (the approval pages), [`http::openapi`]; beside them
//!   [`http::extract`] (the caller, the JSON body), `limits` (rate limits) and one
//!   [`http::error::ApiError`] rendering the error contract.
//! - [`state`]: configuration, keys, the store, the audit writer, the metrics, the
//!   passkey relying party, the clock: what every handler shares.
//! - [`audit`]: the group-commit writer of the hash chain, and its verifier.
//! - [`metrics`]: the counters and gauges `GET /metrics` renders.
//! - [`store`]: the [`store::Store`] trait, every SQL statement, and its two engines,
//!   SQLite ([`store::sqlite`]) and PostgreSQL ([`store::postgres`]), each operation's
//!   body written once for both; [`store::copy`] moves a deployment between them.
//! - `buckets`: the in-memory token buckets (the per-session read limiter, SQLite's
//!   budgets).
//! - [`keys`]: the key file (KEK, shielding key, signing key).
//!
//! Start with `http/credentials.rs`: it is the hot path and shows every layer.

#![forbid(unsafe_code)]

pub mod audit;
mod buckets;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod state;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

pub use state::{AppState, AuthMode, Config};
pub use store::sqlite::SqliteStore;

/// Serves the API on an already-bound listener until `shutdown` resolves, then stops
/// gracefully. Binding first lets callers (tests, `--dev`) know the address before the
/// first request.
pub async fn serve<S: store::Store>(
    listener: tokio::net::TcpListener,
    state: Arc<AppState<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Connect info gives handlers the client address (per-address rate limits).
    let app =
        http::router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Graceful: stop accepting, answer the long-polls at once, let requests in flight
    // finish (each waits for its audit batch to commit), then return.
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("stopping: answering long-polls, finishing requests in flight");
            state.stop();
        })
        .await
}
