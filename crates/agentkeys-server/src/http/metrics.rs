//! `GET /metrics` and the middleware that counts every answer for it. Labels are route
//! templates, methods and status codes: never a wallet, a service name or anything a
//! client chose.

use std::sync::Arc;

use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Request, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;
use crate::store::Store;

/// Counts every answer by route template, method and code, and times reads.
pub(super) async fn track<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let read_took = (route == "/v1/credentials/read").then(|| started.elapsed());
    state
        .metrics
        .answered(route, method, response.status().as_u16(), read_took);
    response
}

/// `GET /metrics`.
pub(super) async fn render<S: Store>(State(state): State<Arc<AppState<S>>>) -> Response {
    let m = &state.metrics;
    match state.store.gauges(state.clock.now()).await {
        Ok(g) => m.set_gauges(&g),
        Err(e) => tracing::warn!(error = %e, "metrics: the database gauges could not be read"),
    }
    m.set_waiters(state.config.max_long_polls - state.long_polls.available_permits());
    let Ok(body) = m.encode() else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
