//! `GET /v1/health` and `GET /v1/server-info`.

use std::sync::Arc;

use agentkeys_types::api::{Health, ServerInfo};
use axum::Json;
use axum::extract::State;

use crate::state::AppState;
use crate::store::Store;

/// Liveness.
pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// The public keys clients seal to and verify with.
pub(super) async fn server_info<S: Store>(
    State(state): State<Arc<AppState<S>>>,
) -> Json<ServerInfo> {
    Json(state.info.clone())
}
