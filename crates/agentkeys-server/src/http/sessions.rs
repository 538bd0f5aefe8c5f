//! Sessions: enrol a master (`POST /v1/sessions`), read the caller's session, revoke.

use std::sync::Arc;

use agentkeys_core::crypto::sha256;
use agentkeys_types::api::{
    CreateSessionRequest, RevokeRequest, RevokeResponse, SessionGrant, SessionInfo, SessionKind,
};
use agentkeys_types::names::MASTER_TOKEN_PREFIX;
use agentkeys_types::{ErrorCode, Scope};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, Caller, ClientAddr};
use super::{event, new_id, new_token, new_wallet, owns, record};
use crate::state::{AppState, AuthMode};
use crate::store::{NewSession, SessionRecord, Store};
use agentkeys_types::api::AuditAction;

/// The metadata of a session record.
pub(super) fn info(s: &SessionRecord) -> SessionInfo {
    SessionInfo {
        session_id: s.id.clone(),
        wallet: s.account.wallet.clone(),
        kind: if s.account.is_master {
            SessionKind::Master
        } else {
            SessionKind::Agent
        },
        scope: s.account.scope.clone(),
        parent: s.account.parent.clone(),
        created_at: s.created_at,
        expires_at: s.expires_at,
    }
}

/// `POST /v1/sessions`: checks the enrolment credential and mints a master session.
/// Rate-limited per client address, network and server-wide, since the enrolment token is a
/// master's only credential; refusals reach the audit log at a bounded rate.
pub(super) async fn create<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    address: ClientAddr,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> ApiResult<(StatusCode, Json<SessionGrant>)> {
    super::limits::take_all(&state, super::limits::Door::Enrol, &address).await?;
    let token = req.auth_token.expose_secret();
    if token.is_empty() || token.len() > 1024 {
        return Err(
            ApiError::bad_request("auth_token must be 1 to 1024 characters")
                .hint("send the enrolment token your operator gave you"),
        );
    }
    // Domain-separated so an enrolment hash can never equal a session-token hash.
    let mut material = Vec::with_capacity(token.len() + 20);
    material.extend_from_slice(b"agentkeys-enrol-v1\0");
    material.extend_from_slice(token.as_bytes());
    let enrol_hash = sha256(&material);
    zeroize::Zeroize::zeroize(&mut material);
    let accepted = match &state.config.auth {
        AuthMode::Dev => true,
        AuthMode::Tokens(set) => set.contains(&sha256(token.as_bytes())),
    };
    if !accepted {
        if let Some(unrecorded) = state.refused_enrolments.admit(&address.group()) {
            let detail = match unrecorded {
                0 => format!("from {address}"),
                n => format!("from {address} ({n} more refusals since the last one recorded)"),
            };
            record(
                &state,
                event(
                    "-",
                    AuditAction::SessionCreate,
                    ErrorCode::Unauthorized.as_str(),
                )
                .detail(detail),
            )
            .await?;
        }
        return Err(
            ApiError::new(ErrorCode::Unauthorized, "enrolment token not accepted")
                .hint("ask the server operator for an enrolment token"),
        );
    }
    let now = state.clock.now();
    let account = state
        .store
        .ensure_master(&enrol_hash, &new_wallet(), now)
        .await?;
    let token = new_token(MASTER_TOKEN_PREFIX);
    let session = NewSession {
        id: new_id("ses_"),
        token_hash: sha256(token.expose_secret().as_bytes()),
        wallet: account.wallet.clone(),
        is_master: true,
        created_at: now,
        expires_at: now + state.config.master_ttl,
    };
    state.store.insert_session(&session).await?;
    record(
        &state,
        event(account.wallet.as_str(), AuditAction::SessionCreate, "ok").detail(session.id.clone()),
    )
    .await?;
    let info = SessionInfo {
        session_id: session.id,
        wallet: account.wallet,
        kind: SessionKind::Master,
        scope: Scope::all(),
        parent: None,
        created_at: now,
        expires_at: session.expires_at,
    };
    Ok((
        StatusCode::CREATED,
        Json(SessionGrant {
            token,
            session: info,
        }),
    ))
}

use super::EventExt as _;

/// `GET /v1/session`: the caller's own metadata, never the token.
pub(super) async fn current(caller: Caller) -> Json<SessionInfo> {
    Json(info(&caller.session))
}

/// `POST /v1/sessions/revoke`: the caller's own session, one session of a wallet it owns,
/// or every session of such a wallet. Immediate: the next request with the token fails.
pub(super) async fn revoke<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> ApiResult<Json<RevokeResponse>> {
    let now = state.clock.now();
    let actor = caller.wallet().as_str();
    let (revoked, target) = match (&req.session_id, &req.wallet) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give session_id or wallet, not both")
                .hint("send {} to revoke this session"));
        }
        (None, None) => (
            state.store.revoke_session(&caller.session.id, now).await?,
            caller.session.id.clone(),
        ),
        (Some(id), None) => {
            let target = state.store.session_by_id(id).await?;
            let allowed = match &target {
                Some(t) => owns(&state, &caller, &t.account.wallet).await?,
                None => false,
            };
            if !allowed {
                return Err(ApiError::not_found("no such session among yours")
                    .hint("session ids are in GET /v1/session (yours) and agentkeys agents"));
            }
            (state.store.revoke_session(id, now).await?, id.clone())
        }
        (None, Some(w)) => {
            if !owns(&state, &caller, w).await? {
                return Err(ApiError::denied(format!("{w} is not yours to revoke"))
                    .hint("revoke your own session or one of your agents'"));
            }
            (state.store.revoke_wallet(w, now).await?, w.to_string())
        }
    };
    // Every target is the caller's own or one of its agents': the caller's tree.
    state.state_changed(&super::tree_master(&caller)).await;
    record(
        &state,
        event(actor, AuditAction::SessionRevoke, "ok")
            .detail(format!("{target} ({revoked} revoked)")),
    )
    .await?;
    Ok(Json(RevokeResponse { revoked }))
}
