//! `GET /v1/session/state`: what the caller's session may hold, long-polled with a cursor,
//! so a daemon hears of a revocation, or of a change of scope, policy, binding, stored value
//! or standing approval, as it happens instead of at its next periodic check
//! (decisions 86 and 60 in docs/architecture.md).
//!
//! Every change that can affect what a session may hold calls
//! [`AppState::state_changed`] with the master of the tree it touched, after it committed;
//! that wakes the watches of that tree here and, through the store, on every server
//! sharing it. A woken watch re-reads its session (revoked or expired: 401, as any request)
//! and its state, and answers when the state's cursor moved.

use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::crypto::sha256;
use agentkeys_types::UnixSeconds;
use agentkeys_types::api::{CredentialState, SessionState, StandingState};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, Caller};
use crate::state::AppState;
use crate::store::{SessionRecord, Store};

/// Longest wait a watch may ask for, seconds.
const MAX_WAIT: u64 = 60;

/// Query of the state watch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateQuery {
    /// Seconds to wait for the state to differ from `cursor` (0–60).
    #[serde(default)]
    wait: u64,
    /// The cursor of the state the caller last saw.
    #[serde(default)]
    cursor: Option<String>,
}

/// `GET /v1/session/state?cursor=&wait=`: the caller's session state; with a cursor, the
/// answer comes once the state differs from the one the cursor names, when a standing
/// approval or the session ends, or when `wait` seconds have passed. A session revoked
/// meanwhile is answered 401 at once.
pub(super) async fn state<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> ApiResult<Json<SessionState>> {
    if q.wait > MAX_WAIT {
        return Err(ApiError::bad_request("wait is 0 to 60 seconds")
            .hint("ask again with the cursor of the answer when it comes back unchanged"));
    }
    // Beyond the server's limit a watch answers at once; the daemon then polls.
    let permit = state.state_watches.try_acquire().ok();
    let wait = match (&permit, &q.cursor) {
        (Some(_), Some(_)) => q.wait,
        _ => 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let master = caller
        .session
        .account
        .parent
        .clone()
        .unwrap_or_else(|| caller.wallet().clone());
    let mut session = caller.session;
    loop {
        // Registered before the read, so a change in between is not missed.
        let notified = state.wake.state_of(&master).notified();
        let now = state.clock.now();
        let view = view(&state, &session, now).await?;
        if q.cursor.as_deref() != Some(view.cursor.as_str())
            || tokio::time::Instant::now() >= deadline
            || state.stopping()
        {
            return Ok(Json(view));
        }
        // Time ends things too: the session, and each standing approval.
        let next_end = view
            .standing_approvals
            .iter()
            .map(|s| s.expires_at)
            .chain([view.expires_at])
            .min()
            .unwrap_or(view.expires_at);
        let secs = u64::try_from(next_end - now).unwrap_or(0) + 1;
        let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(secs));
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
        session = live(&state, &session.id).await?;
    }
}

/// The session `id`, if it still works; the error any request with it would get if not.
async fn live<S: Store>(state: &AppState<S>, id: &str) -> ApiResult<SessionRecord> {
    let session = state
        .store
        .session_by_id(id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown session token"))?;
    super::extract::check_live(&session, state.clock.now())?;
    Ok(session)
}

/// The state of `session` as of `now`, with its cursor.
async fn view<S: Store>(
    state: &AppState<S>,
    session: &SessionRecord,
    now: UnixSeconds,
) -> ApiResult<SessionState> {
    let account = &session.account;
    // What `GET /v1/credentials` lists for this session.
    let mut creds = super::credentials::listed(state, account, &account.wallet, true).await?;
    let mut standing = Vec::new();
    if !account.is_master
        && let Some(parent) = &account.parent
    {
        standing = state
            .store
            .standing_approvals(parent, now)
            .await?
            .into_iter()
            .filter(|s| s.agent == account.wallet && account.scope.allows(&s.service))
            .map(|s| StandingState {
                id: s.id,
                owner: s.owner,
                service: s.service,
                expires_at: s.expires_at,
            })
            .collect();
    }
    creds.sort_by(|a, b| a.service.cmp(&b.service).then(a.owner.cmp(&b.owner)));
    standing.sort_by(|a, b| a.id.cmp(&b.id));
    let credentials = creds
        .into_iter()
        .map(|c| CredentialState {
            // The listing's `ciphertext` is the record's nonce: new with every store.
            version: agentkeys_core::hex(&sha256(&c.ciphertext)[..16]),
            binding: c
                .binding
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
            agent: c.owner,
            service: c.service,
            policy: c.policy,
        })
        .collect();
    let mut out = SessionState {
        cursor: String::new(),
        scope: account.scope.clone(),
        expires_at: session.expires_at,
        credentials,
        standing_approvals: standing,
    };
    // The cursor names everything else in the answer.
    let text = serde_json::to_vec(&out).map_err(|e| ApiError::internal(&e))?;
    out.cursor = agentkeys_core::hex(&sha256(&text)[..16]);
    Ok(out)
}
