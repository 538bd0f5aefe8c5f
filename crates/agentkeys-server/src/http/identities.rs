//! Identities: link an alias or e-mail to a wallet the caller owns; resolve one.

use std::sync::Arc;

use agentkeys_types::api::{Identity, LinkIdentityRequest};
use agentkeys_types::{ErrorCode, ServiceName};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{EventExt as _, event, owns, record};
use crate::state::AppState;
use crate::store::{Store, StoreError};
use agentkeys_types::api::AuditAction;

/// Validates and normalizes (kind, value).
fn normalize(alias: Option<&str>, email: Option<&str>) -> ApiResult<(&'static str, String)> {
    match (alias, email) {
        (Some(a), None) => {
            // Aliases follow the service-name pattern: short, lower case, shell-safe.
            let a = a.trim().to_lowercase();
            ServiceName::parse(&a).map_err(|_| {
                ApiError::bad_request("an alias is 1 to 64 characters of a-z, 0-9, '.', '_' or '-'")
                    .hint("start it with a letter or digit, e.g. research-bot")
            })?;
            Ok(("alias", a))
        }
        (None, Some(e)) => {
            let e = e.trim().to_lowercase();
            let ok = e.len() <= 254
                && e.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'))
                && !e.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ApiError::bad_request("not an e-mail address")
                    .hint("an e-mail is local@domain.tld, at most 254 characters"));
            }
            Ok(("email", e))
        }
        _ => Err(ApiError::bad_request("give exactly one of alias or email")
            .hint("link an alias and an e-mail with two requests")),
    }
}

/// `POST /v1/identities` (masters).
pub(super) async fn link<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiJson(req): ApiJson<LinkIdentityRequest>,
) -> ApiResult<(StatusCode, Json<Identity>)> {
    caller.require_master()?;
    let (kind, value) = normalize(req.alias.as_deref(), req.email.as_deref())?;
    if !owns(&state, &caller, &req.wallet).await? {
        return Err(
            ApiError::denied(format!("{} is not yours to link", req.wallet))
                .hint("link your own wallet or one of your agents ('agentkeys agents')"),
        );
    }
    match state
        .store
        .link_identity(
            caller.wallet(),
            kind,
            &value,
            &req.wallet,
            state.clock.now(),
        )
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("that {kind} already names another of your wallets"),
            )
            .hint("choose another name, or look it up with 'agentkeys agents'"));
        }
        Err(e) => return Err(e.into()),
    }
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::IdentityLink, "ok")
            .agent(&req.wallet)
            .detail(format!("{kind}={value}")),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Identity {
            kind: kind.to_owned(),
            value,
            wallet: req.wallet,
        }),
    ))
}

/// Query of `GET /v1/identities/resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveQuery {
    alias: Option<String>,
    email: Option<String>,
}

/// `GET /v1/identities/resolve?alias=|email=` (masters; only their own wallets resolve).
pub(super) async fn resolve<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ResolveQuery>,
) -> ApiResult<Json<Identity>> {
    caller.require_master()?;
    let (kind, value) = normalize(q.alias.as_deref(), q.email.as_deref())?;
    match state
        .store
        .resolve_identity(caller.wallet(), kind, &value)
        .await?
    {
        Some(wallet) if owns(&state, &caller, &wallet).await? => Ok(Json(Identity {
            kind: kind.to_owned(),
            value,
            wallet,
        })),
        _ => Err(
            ApiError::not_found(format!("no such {kind} among your wallets"))
                .hint("list your agents and their names with 'agentkeys agents'"),
        ),
    }
}
