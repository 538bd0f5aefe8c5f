//! `GET /metrics` in the Prometheus (OpenMetrics) text format, with prometheus-client:
//! requests by route and code, the read latency, audit batches and their commits,
//! rate-limit refusals, and, read at scrape time, active sessions, pending auth requests,
//! long-poll waiters and the database pool.
//!
//! Labels are route templates (`/v1/credentials/{agent}/{service}/policy`), methods and
//! status codes: never a wallet, a service name or anything a client chose.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Request, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;
use crate::store::Store;

/// One request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    code: u16,
}

/// Which limit refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// Every metric the server keeps, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    read_seconds: Histogram,
    audit_batch: Histogram,
    audit_commit_seconds: Histogram,
    refusals: Family<LimitLabels, Counter>,
    sessions: Gauge,
    pending: Gauge,
    waiters: Gauge,
    pool_size: Gauge,
    pool_idle: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agentkeys");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status code",
            requests.clone(),
        );
        // 100 µs … ~3.3 s.
        let read_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "read_duration_seconds",
            "Credential reads (POST /v1/credentials/read), from request to answer",
            read_seconds.clone(),
        );
        let audit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "audit_batch_events",
            "Events per audit group commit",
            audit_batch.clone(),
        );
        let audit_commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "audit_commit_duration_seconds",
            "Time to append and commit one audit batch",
            audit_commit_seconds.clone(),
        );
        let refusals = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit (read, enrol, pair)",
            refusals.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let sessions = gauge(
            &mut registry,
            "active_sessions",
            "Sessions neither revoked nor expired (all replicas)",
        );
        let pending = gauge(
            &mut registry,
            "pending_auth_requests",
            "Pair, recover and high-value requests awaiting a decision (all replicas)",
        );
        let waiters = gauge(
            &mut registry,
            "long_poll_waiters",
            "Decision long-polls waiting on this server",
        );
        let pool_size = gauge(
            &mut registry,
            "db_pool_connections",
            "Database connections open in this server's pools",
        );
        let pool_idle = gauge(&mut registry, "db_pool_idle_connections", "Of those, idle");
        Metrics {
            registry,
            requests,
            read_seconds,
            audit_batch,
            audit_commit_seconds,
            refusals,
            sessions,
            pending,
            waiters,
            pool_size,
            pool_idle,
        }
    }
}

impl Metrics {
    /// One audit group commit of `events` events that took `took`.
    pub fn audit_committed(&self, events: usize, took: Duration) {
        self.audit_batch.observe(events as f64);
        self.audit_commit_seconds.observe(took.as_secs_f64());
    }

    /// A request refused by the `limit` rate limit (`read`, `enrol`, `pair`).
    pub fn rate_limited(&self, limit: &'static str) {
        self.refusals.get_or_create(&LimitLabels { limit }).inc();
    }
}

/// Counts every answer by route template, method and code, and times reads.
pub(crate) async fn track<S: Store>(
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
    let m = &state.metrics;
    if route == "/v1/credentials/read" {
        m.read_seconds.observe(started.elapsed().as_secs_f64());
    }
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            code: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`.
pub(crate) async fn render<S: Store>(State(state): State<Arc<AppState<S>>>) -> Response {
    let m = &state.metrics;
    match state.store.gauges(state.clock.now()).await {
        Ok(g) => {
            m.sessions.set(g.active_sessions);
            m.pending.set(g.pending_auth_requests);
            m.pool_size.set(g.pool_size);
            m.pool_idle.set(g.pool_idle);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: the database gauges could not be read"),
    }
    let waiting = state.config.max_long_polls - state.long_polls.available_permits();
    m.waiters.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &m.registry).is_err() {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
