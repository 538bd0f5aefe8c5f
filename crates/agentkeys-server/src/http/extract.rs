//! Extractors: JSON and query bodies whose rejections use the error contract, and the
//! authenticated [`Caller`] (bearer token → hashed → session row).

use std::sync::Arc;

use agentkeys_core::crypto::sha256;
use agentkeys_types::names::{AGENT_TOKEN_PREFIX, MASTER_TOKEN_PREFIX};
use agentkeys_types::{ErrorCode, Scope, Wallet};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::state::AppState;
use crate::store::{SessionRecord, Store};

/// Removes every double-quoted span from a deserializer message, so a value the client
/// sent (possibly a secret in the wrong field) is never echoed back or logged.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quoted = false;
    for c in msg.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// A JSON body; malformed JSON, unknown fields and oversized bodies become `BAD_REQUEST`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(&rej)),
        }
    }
}

fn json_rejection(rej: &JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(format!("invalid request body: {}", scrub(&e.body_text())))
                .hint("check the field names and types against docs/api.md")
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed JSON body"),
        JsonRejection::MissingJsonContentType(_) => ApiError::bad_request("expected a JSON body")
            .hint("send Content-Type: application/json"),
        JsonRejection::BytesRejection(_) => {
            ApiError::bad_request("request body too large or unreadable")
                .status(StatusCode::PAYLOAD_TOO_LARGE)
        }
        _ => ApiError::bad_request("invalid request body"),
    }
}

/// A query string, with the same error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::bad_request(
                format!("invalid query string: {}", scrub(&e.body_text())),
            )),
            Err(_) => Err(ApiError::bad_request("invalid query string")),
        }
    }
}

/// The client's IP address, as the TCP connection shows it (`-` when the request did not
/// come through [`crate::serve`]). Behind a reverse proxy this is the proxy's address, so
/// per-address limits then apply to the proxy as a whole.
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or_else(|| "-".to_owned(), |c| c.0.ip().to_string()),
        ))
    }
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The live session, joined with its account.
    pub session: SessionRecord,
}

impl Caller {
    /// The caller's wallet.
    pub fn wallet(&self) -> &Wallet {
        &self.session.account.wallet
    }
    /// True for a master session.
    pub fn is_master(&self) -> bool {
        self.session.account.is_master
    }
    /// The caller's scope.
    pub fn scope(&self) -> &Scope {
        &self.session.account.scope
    }
    /// `DENIED` unless the caller is a master.
    pub fn require_master(&self) -> Result<(), ApiError> {
        if self.is_master() {
            Ok(())
        } else {
            Err(ApiError::denied("only a master session may do this")
                .hint("run this from the master's workstation with 'agentkeys'"))
        }
    }
}

/// The bearer token of a request, if any; not validated beyond its shape.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let token = value.strip_prefix("Bearer ").ok_or_else(|| {
        ApiError::unauthorized("the Authorization header must be 'Bearer <token>'")
    })?;
    if !(token.starts_with(MASTER_TOKEN_PREFIX) || token.starts_with(AGENT_TOKEN_PREFIX))
        || token.len() > 128
    {
        return Err(ApiError::unauthorized("not an agentkeys session token"));
    }
    Ok(token)
}

impl<S: Store> FromRequestParts<Arc<AppState<S>>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState<S>>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers).await
    }
}

/// Resolves the bearer token of `headers` to a live session.
pub async fn authenticate<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    {
        let hash = sha256(bearer(headers)?.as_bytes());
        let session = state
            .store
            .session_by_token_hash(&hash)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown session token"))?;
        let now = state.clock.now();
        if session.revoked_at.is_some() {
            return Err(ApiError::unauthorized("this session was revoked"));
        }
        if session.expires_at <= now {
            return Err(
                ApiError::new(ErrorCode::Unauthorized, "this session has expired")
                    .hint("run 'agentkeys init' again (agents: re-pair the daemon)"),
            );
        }
        if session.last_used_at.is_none_or(|t| now - t >= 60) {
            // At most one write a minute per session keeps the hot path read-only.
            state.store.touch_session(&session.id, now).await?;
        }
        Ok(Caller { session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_quoted_value() {
        let m = r#"invalid type: string "sk-live-canary", expected a boolean at line 1"#;
        let s = scrub(m);
        assert!(!s.contains("canary"), "{s}");
        assert!(s.contains("expected a boolean"));
        assert_eq!(scrub(r#"a "b" c "d"#), r#"a "…" c "…""#);
    }
}
