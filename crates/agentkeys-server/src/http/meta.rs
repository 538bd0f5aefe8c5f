//! `GET /v1/health`, `GET /v1/ready` and `GET /v1/server-info`.

use std::sync::Arc;

use agentkeys_types::ErrorCode;
use agentkeys_types::api::{Health, Readiness, ServerInfo};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::Store;

/// Liveness.
pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Readiness, for load balancers: the database answers and is migrated, and the server is
/// not stopping. 503 otherwise, so traffic moves to the other replicas.
pub(super) async fn ready<S: Store>(
    State(state): State<Arc<AppState<S>>>,
) -> ApiResult<Json<Readiness>> {
    let unavailable = |message: &str, hint: &str| {
        ApiError::new(ErrorCode::Internal, message)
            .hint(hint)
            .status(StatusCode::SERVICE_UNAVAILABLE)
    };
    if state.stopping() {
        return Err(unavailable(
            "this server is stopping",
            "send requests to another replica",
        ));
    }
    match state.store.ready().await {
        Ok(migrations) => Ok(Json(Readiness {
            status: "ready".to_owned(),
            database: state.store.engine().to_owned(),
            migrations,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(unavailable(
                "the database does not answer, or is not migrated",
                "see the server log; the server retries on every request",
            ))
        }
    }
}

/// The public keys clients seal to and verify with.
pub(super) async fn server_info<S: Store>(
    State(state): State<Arc<AppState<S>>>,
) -> Json<ServerInfo> {
    Json(state.info.clone())
}
