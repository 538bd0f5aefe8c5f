//! Child agents: list, read/replace scope, teardown (masters only).

use std::sync::Arc;

use agentkeys_types::api::{AgentInfo, AgentList, TeardownResponse};
use agentkeys_types::{Scope, Wallet};
use axum::Json;
use axum::extract::{Path, State};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, Caller};
use super::{EventExt as _, event, record};
use crate::state::AppState;
use crate::store::Store;
use agentkeys_types::api::AuditAction;

fn parse_wallet(s: &str) -> ApiResult<Wallet> {
    Wallet::parse(s).map_err(|e| {
        ApiError::bad_request(e.to_string())
            .hint("name the agent by its wallet, as 'agentkeys agents' lists it")
    })
}

/// `GET /v1/agents`.
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
) -> ApiResult<Json<AgentList>> {
    caller.require_master()?;
    let agents = state
        .store
        .list_agents(caller.wallet(), state.clock.now())
        .await?;
    Ok(Json(AgentList {
        agents: agents
            .into_iter()
            .map(|a| AgentInfo {
                wallet: a.account.wallet,
                scope: a.account.scope,
                created_at: a.account.created_at,
                last_used_at: a.last_used_at,
                active_sessions: a.active_sessions,
                identities: a.identities,
            })
            .collect(),
    }))
}

async fn own_agent<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    wallet: &str,
) -> ApiResult<Wallet> {
    caller.require_master()?;
    let wallet = parse_wallet(wallet)?;
    match state.store.account(&wallet).await? {
        Some(a) if a.parent.as_ref() == Some(caller.wallet()) => Ok(wallet),
        _ => Err(
            ApiError::not_found(format!("no agent {wallet} among yours"))
                .hint("list them with 'agentkeys agents'"),
        ),
    }
}

/// `GET /v1/agents/{wallet}/scope`.
pub(super) async fn get_scope<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(wallet): Path<String>,
) -> ApiResult<Json<Scope>> {
    let wallet = own_agent(&state, &caller, &wallet).await?;
    let account = state.store.account(&wallet).await?.ok_or_else(|| {
        ApiError::not_found("no such agent among yours")
            .hint("list your agents with 'agentkeys agents'")
    })?;
    Ok(Json(account.scope))
}

/// `PUT /v1/agents/{wallet}/scope`: takes effect on the agent's next request.
pub(super) async fn put_scope<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(wallet): Path<String>,
    ApiJson(scope): ApiJson<Scope>,
) -> ApiResult<Json<Scope>> {
    let wallet = own_agent(&state, &caller, &wallet).await?;
    let scope = scope.validated().map_err(|e| {
        ApiError::bad_request(e.to_string())
            .hint("services are service names, or \"*\" for every service")
    })?;
    if !state
        .store
        .set_agent_scope(caller.wallet(), &wallet, &scope)
        .await?
    {
        return Err(ApiError::not_found("no such agent among yours")
            .hint("list your agents with 'agentkeys agents'"));
    }
    state.state_changed(caller.wallet()).await;
    let detail = format!(
        "services={} read_only={}",
        scope.services.join(","),
        scope.read_only
    );
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::ScopeSet, "ok")
            .agent(&wallet)
            .detail(detail),
    )
    .await?;
    Ok(Json(scope))
}

/// `DELETE /v1/agents/{wallet}`: revoke every session and delete the agent's credentials.
pub(super) async fn teardown<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(wallet): Path<String>,
) -> ApiResult<Json<TeardownResponse>> {
    let wallet = own_agent(&state, &caller, &wallet).await?;
    let (revoked_sessions, deleted_credentials) = state
        .store
        .teardown_agent(caller.wallet(), &wallet, state.clock.now())
        .await?
        .ok_or_else(|| {
            ApiError::not_found("no such agent among yours")
                .hint("list your agents with 'agentkeys agents'")
        })?;
    state.state_changed(caller.wallet()).await;
    let detail =
        format!("{revoked_sessions} sessions revoked, {deleted_credentials} credentials deleted");
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::AgentTeardown, "ok")
            .agent(&wallet)
            .detail(detail),
    )
    .await?;
    Ok(Json(TeardownResponse {
        revoked_sessions,
        deleted_credentials,
    }))
}
