//! The HTTP API v1 (docs/api.md): the router and one module per resource.
//! Handlers are thin: extract → authorize → store → map.

mod agents;
mod audit;
mod auth_requests;
mod credentials;
pub mod error;
pub mod extract;
mod identities;
mod limits;
mod meta;
mod metrics;
pub mod openapi;
mod pages;
pub mod passkeys;
mod session_state;
mod sessions;
mod standing;

use std::sync::Arc;

use agentkeys_core::crypto::random_array;
use agentkeys_secmem::SecretString;
use agentkeys_types::api::AuditAction;
use agentkeys_types::{ServiceName, Wallet};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use base64::Engine as _;

use self::error::{ApiError, ApiResult};
use self::extract::Caller;
use crate::state::AppState;
use crate::store::{NewAuditEvent, Store};

/// The master of the caller's tree (itself, or an agent's master): whose sessions'
/// state watches a change by this caller concerns.
fn tree_master(caller: &Caller) -> Wallet {
    caller
        .session
        .account
        .parent
        .clone()
        .unwrap_or_else(|| caller.wallet().clone())
}

/// The router over a shared state; `serve` puts it on a listener, tests call it in-process.
pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    let limit = state.config.body_limit;
    let mut api = Router::new();
    if state.config.metrics_on_api {
        api = api.route("/metrics", get(metrics::render::<S>));
    }
    api.route("/v1/health", get(meta::health))
        .route("/v1/ready", get(meta::ready::<S>))
        .route("/v1/server-info", get(meta::server_info::<S>))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/sessions", post(sessions::create::<S>))
        .route("/v1/session", get(sessions::current))
        .route("/v1/session/state", get(session_state::state::<S>))
        .route("/v1/sessions/revoke", post(sessions::revoke::<S>))
        .route("/v1/agents", get(agents::list::<S>))
        .route(
            "/v1/agents/{wallet}",
            axum::routing::delete(agents::teardown::<S>),
        )
        .route(
            "/v1/agents/{wallet}/scope",
            get(agents::get_scope::<S>).put(agents::put_scope::<S>),
        )
        .route(
            "/v1/credentials",
            post(credentials::store::<S>).get(credentials::list::<S>),
        )
        .route("/v1/credentials/read", post(credentials::read::<S>))
        .route(
            "/v1/credentials/{agent}/{service}/policy",
            put(credentials::set_policy::<S>),
        )
        .route(
            "/v1/credentials/{agent}/{service}/binding",
            put(credentials::set_binding::<S>),
        )
        .route(
            "/v1/auth-requests",
            post(auth_requests::open::<S>).get(auth_requests::inbox::<S>),
        )
        .route(
            "/v1/auth-requests/by-code/{code}",
            get(auth_requests::by_code::<S>),
        )
        .route(
            "/v1/auth-requests/{id}/approve",
            post(auth_requests::approve::<S>),
        )
        .route(
            "/v1/auth-requests/{id}/deny",
            post(auth_requests::deny::<S>),
        )
        .route(
            "/v1/auth-requests/{id}/decision",
            get(auth_requests::decision::<S>),
        )
        .route("/v1/passkeys", get(passkeys::list::<S>))
        .route(
            "/v1/passkeys/{id}",
            axum::routing::delete(passkeys::remove::<S>),
        )
        .route(
            "/v1/passkeys/registrations",
            post(passkeys::start_registration::<S>),
        )
        .route(
            "/v1/passkeys/registrations/options",
            post(passkeys::registration_options::<S>),
        )
        .route(
            "/v1/passkeys/registrations/finish",
            post(passkeys::finish_registration::<S>),
        )
        .route(
            "/v1/approvals/{code}/options",
            post(passkeys::page_options::<S>),
        )
        .route(
            "/v1/approvals/{code}/approve",
            post(passkeys::page_approve::<S>),
        )
        .route("/v1/standing-approvals", get(standing::list::<S>))
        .route(
            "/v1/standing-approvals/{id}/revoke",
            post(standing::revoke::<S>),
        )
        .route("/v1/audit", get(audit::list::<S>))
        .route("/v1/audit/verify", get(audit::verify::<S>))
        .route("/v1/audit/anchor", post(audit::anchor::<S>))
        .route("/v1/identities", post(identities::link::<S>))
        .route("/v1/identities/resolve", get(identities::resolve::<S>))
        .merge(pages::routes::<S>())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track::<S>,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /metrics` alone, for its own listener (`--metrics-listen`).
pub fn metrics_router<S: Store>(state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::render::<S>))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint").hint("see docs/api.md for the v1 routes")
}

async fn method_not_allowed() -> ApiError {
    ApiError::bad_request("method not allowed on this endpoint")
        .status(axum::http::StatusCode::METHOD_NOT_ALLOWED)
        .hint("see docs/api.md for the methods each route takes")
}

/// Standard base64 decoding with a field name in the error.
fn b64(field: &str, s: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| {
            ApiError::bad_request(format!("{field} is not valid base64"))
                .hint("binary values are standard base64 with padding (RFC 4648 section 4)")
        })
}

/// Standard base64 encoding.
fn b64e(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A 32-byte X25519 public key from base64.
fn x25519_key(field: &str, s: &str) -> ApiResult<[u8; 32]> {
    b64(field, s)?.try_into().map_err(|_| {
        ApiError::bad_request(format!("{field} must be 32 bytes"))
            .hint("an X25519 public key is 32 raw bytes, then base64")
    })
}

/// A fresh random id with a readable prefix.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", agentkeys_core::hex(&random_array::<16>()))
}

/// A fresh wallet.
fn new_wallet() -> Wallet {
    Wallet::from_bytes(&random_array::<20>())
}

/// A fresh session token: prefix + 256 random bits, base64url (decision 69).
fn new_token(prefix: &str) -> SecretString {
    let mut raw = random_array::<32>();
    let mut s = String::with_capacity(prefix.len() + 43);
    s.push_str(prefix);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw, &mut s);
    zeroize::Zeroize::zeroize(&mut raw);
    SecretString::from(s)
}

/// Whether the caller may act on `wallet`: its own, or (masters) one of its agents.
async fn owns<S: Store>(state: &AppState<S>, caller: &Caller, wallet: &Wallet) -> ApiResult<bool> {
    if wallet == caller.wallet() {
        return Ok(true);
    }
    if !caller.is_master() {
        return Ok(false);
    }
    Ok(state
        .store
        .account(wallet)
        .await?
        .is_some_and(|a| a.parent.as_ref() == Some(caller.wallet())))
}

/// The owner a credential call is about: the caller's wallet by default; another wallet
/// only when the caller owns it.
async fn credential_owner<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    agent: Option<&Wallet>,
) -> ApiResult<Wallet> {
    match agent {
        None => Ok(caller.wallet().clone()),
        Some(w) if owns(state, caller, w).await? => Ok(w.clone()),
        Some(w) => Err(ApiError::denied(format!("{w} is not yours to access"))
            .hint("an agent can only reach its own credentials; a master only its own agents'")),
    }
}

/// The credential a call names: the owner's own; or, for an agent that named no owner,
/// its master's credential of the same name (docs/architecture.md decision 2).
async fn find_credential<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    owner: &Wallet,
    named_owner: bool,
    service: &ServiceName,
) -> ApiResult<Option<crate::store::StoredCredential>> {
    let found = state.store.credential(owner, service).await?;
    if found.is_some() || named_owner {
        return Ok(found);
    }
    match &caller.session.account.parent {
        Some(parent) => Ok(state.store.credential(parent, service).await?),
        None => Ok(None),
    }
}

/// An audit event with the caller as actor.
fn event(actor: &str, action: AuditAction, outcome: &str) -> NewAuditEvent {
    NewAuditEvent {
        ts: 0,
        actor: actor.to_owned(),
        agent: None,
        service: None,
        action: action.as_str().to_owned(),
        outcome: outcome.to_owned(),
        detail: None,
    }
}

/// Appends an event stamped with the state's clock, failing the request if it cannot.
async fn record<S: Store>(state: &AppState<S>, e: NewAuditEvent) -> ApiResult<()> {
    record_seq(state, e).await.map(drop)
}

/// [`record`], returning the event's position in the chain.
async fn record_seq<S: Store>(state: &AppState<S>, mut e: NewAuditEvent) -> ApiResult<i64> {
    e.ts = state.clock.now();
    Ok(state.audit.append(e).await?)
}

/// Builder helpers for events.
trait EventExt {
    fn agent(self, w: &Wallet) -> Self;
    fn service(self, s: &ServiceName) -> Self;
    fn detail(self, d: impl Into<String>) -> Self;
}

impl EventExt for NewAuditEvent {
    fn agent(mut self, w: &Wallet) -> Self {
        self.agent = Some(w.to_string());
        self
    }
    fn service(mut self, s: &ServiceName) -> Self {
        self.service = Some(s.to_string());
        self
    }
    fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}
