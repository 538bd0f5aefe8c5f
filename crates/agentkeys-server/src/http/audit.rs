//! `GET /v1/audit` (what the caller may see, newest first) and `GET /v1/audit/verify`.

use std::sync::Arc;

use agentkeys_types::api::{AuditEvent, AuditList, AuditVerify};
use agentkeys_types::{ServiceName, Wallet};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, Caller};
use crate::audit::hex;
use crate::state::AppState;
use crate::store::{AuditFilter, Store};

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    agent: Option<Wallet>,
    service: Option<ServiceName>,
    since: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/audit?agent=&service=&since=&limit=`: an agent sees its own events; a master
/// its own and its agents'.
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let mut visible = vec![caller.wallet().to_string()];
    if caller.is_master() {
        let agents = state
            .store
            .list_agents(caller.wallet(), state.clock.now())
            .await?;
        visible.extend(agents.into_iter().map(|a| a.account.wallet.to_string()));
    }
    if let Some(a) = &q.agent
        && !visible.iter().any(|v| v == a.as_str())
    {
        return Err(ApiError::denied(format!("{a} is not yours to audit")));
    }
    let filter = AuditFilter {
        visible_to: visible,
        agent: q.agent.map(|a| a.to_string()),
        service: q.service.map(|s| s.to_string()),
        since: q.since,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let rows = state.store.list_audit(&filter).await?;
    Ok(Json(AuditList {
        events: rows
            .into_iter()
            .map(|r| AuditEvent {
                seq: r.seq,
                ts: r.event.ts,
                actor: r.event.actor,
                agent: r.event.agent,
                service: r.event.service,
                action: r.event.action,
                outcome: r.event.outcome,
                detail: r.event.detail,
                hash: hex(&r.hash),
            })
            .collect(),
    }))
}

/// `GET /v1/audit/verify` (masters): recomputes the whole chain.
pub(super) async fn verify<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
) -> ApiResult<Json<AuditVerify>> {
    caller.require_master()?;
    Ok(Json(crate::audit::verify(&*state.store).await?))
}
