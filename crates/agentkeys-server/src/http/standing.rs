//! Standing approvals: "approve for N minutes", one agent and one credential, at most 8 h,
//! listed and revoked by the master who granted them.

use std::sync::Arc;

use agentkeys_types::api::{
    AuditAction, RevokeStandingResponse, StandingApprovalInfo, StandingApprovalList,
};
use axum::Json;
use axum::extract::{Path, State};

use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use super::{EventExt as _, event, record};
use crate::state::AppState;
use crate::store::{StandingApproval, Store};

fn info(a: StandingApproval) -> StandingApprovalInfo {
    StandingApprovalInfo {
        id: a.id,
        agent: a.agent,
        owner: a.owner,
        service: a.service,
        request_id: a.request_id,
        via: a.via,
        created_at: a.created_at,
        expires_at: a.expires_at,
    }
}

/// `GET /v1/standing-approvals`: the caller's live standing approvals.
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
) -> ApiResult<Json<StandingApprovalList>> {
    caller.require_master()?;
    let approvals = state
        .store
        .standing_approvals(caller.wallet(), state.clock.now())
        .await?;
    Ok(Json(StandingApprovalList {
        approvals: approvals.into_iter().map(info).collect(),
    }))
}

/// `POST /v1/standing-approvals/{id}/revoke`: ends one at once.
pub(super) async fn revoke<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RevokeStandingResponse>> {
    caller.require_master()?;
    let now = state.clock.now();
    if !state
        .store
        .revoke_standing_approval(caller.wallet(), &id, now)
        .await?
    {
        return Err(ApiError::not_found("no live standing approval by that id")
            .hint("list yours with 'agentkeys approvals'; ended ones need no revoking"));
    }
    state.state_changed(caller.wallet()).await;
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::ApprovalRevoke, "ok").detail(id.clone()),
    )
    .await?;
    Ok(Json(RevokeStandingResponse { id }))
}
