//! `GET /v1/audit` (what the caller may see, newest first) and `GET /v1/audit/verify`.

use std::sync::Arc;

use agentkeys_types::api::{
    AnchorRequest, AnchorResponse, AuditAction, AuditEvent, AuditList, AuditVerify,
};
use agentkeys_types::{ServiceName, Wallet};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::EventExt as _;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller};
use crate::state::AppState;
use crate::store::{AuditFilter, Store};
use agentkeys_core::hex;

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    agent: Option<Wallet>,
    service: Option<ServiceName>,
    action: Option<String>,
    since: Option<i64>,
    limit: Option<u32>,
}

/// The wallets whose rows the caller may see: its own, and for a master every agent it
/// ever had (torn-down agents included: their history stays the master's).
async fn visible_wallets<S: Store>(state: &AppState<S>, caller: &Caller) -> ApiResult<Vec<String>> {
    let mut visible = vec![caller.wallet().to_string()];
    if caller.is_master() {
        let agents = state.store.agent_wallets_ever(caller.wallet()).await?;
        visible.extend(agents.into_iter().map(|w| w.to_string()));
    }
    Ok(visible)
}

/// `GET /v1/audit?agent=&service=&since=&limit=`: an agent sees its own events; a master
/// its own and its agents'.
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let visible = visible_wallets(&state, &caller).await?;
    if let Some(a) = &q.agent
        && !visible.iter().any(|v| v == a.as_str())
    {
        return Err(ApiError::denied(format!("{a} is not yours to audit"))
            .hint("a master audits itself and its agents; an agent only itself"));
    }
    if let Some(action) = &q.action
        && AuditAction::parse(action).is_none()
    {
        let names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        return Err(ApiError::bad_request("unknown audit action")
            .hint(format!("one of: {}", names.join(", "))));
    }
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(_) => {
            return Err(
                ApiError::bad_request("limit is 1 to 1000").hint("page with since= for more rows")
            );
        }
    };
    let filter = AuditFilter {
        visible_to: visible,
        agent: q.agent.map(|a| a.to_string()),
        service: q.service.map(|s| s.to_string()),
        action: q.action,
        since: q.since,
        limit,
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
                prev_hash: hex(&r.prev_hash),
                hash: hex(&r.hash),
            })
            .collect(),
    }))
}

/// `GET /v1/audit/verify` (masters): recomputes the whole chain, and reports only what the
/// caller may see: how many of its rows checked out, the head among them, and a broken
/// link's position only when that row is its own (the server's total activity is other
/// masters' business).
pub(super) async fn verify<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
) -> ApiResult<Json<AuditVerify>> {
    caller.require_master()?;
    let visible = visible_wallets(&state, &caller).await?;
    let sees = |e: &crate::store::NewAuditEvent| {
        visible
            .iter()
            .any(|w| e.actor == *w || e.agent.as_deref() == Some(w.as_str()))
    };
    Ok(Json(crate::audit::verify(&*state.store, sees).await?))
}

/// `POST /v1/audit/anchor` (any session): records a daemon trail's head as a
/// `trail.anchor` event with detail `seq=<n> hash=<hex>`, visible to the session and its
/// master.
pub(super) async fn anchor<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiJson(req): ApiJson<AnchorRequest>,
) -> ApiResult<(StatusCode, Json<AnchorResponse>)> {
    let hex_ok = req.hash.len() == 64
        && req
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if req.seq == 0 || !hex_ok {
        return Err(ApiError::bad_request(
            "an anchor is a line number from 1 and a 64-digit hex hash",
        )
        .hint("send the trail's last line's seq and hash"));
    }
    let e = super::event(caller.wallet().as_str(), AuditAction::TrailAnchor, "ok")
        .agent(caller.wallet())
        .detail(req.detail());
    let audit_seq = super::record_seq(&state, e).await?;
    Ok((StatusCode::CREATED, Json(AnchorResponse { audit_seq })))
}
