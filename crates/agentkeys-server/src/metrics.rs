//! What `GET /metrics` reports, kept with prometheus-client and rendered in the
//! Prometheus (OpenMetrics) text format: requests by route and code, the read latency,
//! audit batches and their commits, rate-limit refusals, and, set at scrape time, active
//! sessions, pending auth requests, long-poll waiters and the database pool. The endpoint
//! and the middleware that counts requests are in `http/metrics.rs`.
//!
//! Labels are route templates (`/v1/credentials/{agent}/{service}/policy`), methods and
//! status codes: never a wallet, a service name or anything a client chose.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Gauges;

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

    /// One answer, by route template, method and code; a read's time from request to
    /// answer is `read_took`.
    pub(crate) fn answered(
        &self,
        route: String,
        method: String,
        code: u16,
        read_took: Option<Duration>,
    ) {
        if let Some(took) = read_took {
            self.read_seconds.observe(took.as_secs_f64());
        }
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                code,
            })
            .inc();
    }

    /// The database's counts, read at scrape time.
    pub(crate) fn set_gauges(&self, g: &Gauges) {
        self.sessions.set(g.active_sessions);
        self.pending.set(g.pending_auth_requests);
        self.pool_size.set(g.pool_size);
        self.pool_idle.set(g.pool_idle);
    }

    /// How many long-polls wait on this server now.
    pub(crate) fn set_waiters(&self, waiting: usize) {
        self.waiters.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Every metric in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry)?;
        Ok(body)
    }
}
