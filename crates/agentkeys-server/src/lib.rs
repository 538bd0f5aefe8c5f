//! The agentkeys backend server.
//!
//! A tour, from the outside in:
//! - [`serve`] puts the [`http::router`] on a bound listener; `main.rs` only parses flags.
//! - [`http`]: one module per resource, thin handlers (extract → authorize → store → map),
//!   one [`http::error::ApiError`] rendering the error contract.
//! - [`state`]: configuration, keys, the per-session read limiter, the clock.
//! - [`store`]: the [`store::Store`] trait and the SQLite engine; every SQL statement.
//! - [`audit`]: the hash chain, its group-commit writer, and the verifier.
//! - [`keys`]: the key file (KEK, shielding key, signing key).
//! - [`tls`]: serving HTTPS itself, the certificate reloaded on SIGHUP.
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
