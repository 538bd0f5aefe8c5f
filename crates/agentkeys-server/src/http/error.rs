//! One error type for every handler, rendered as the `{"error": {code, message, hint}}`
//! body of the error contract. Internal details go to the log, never to the client.

use agentkeys_types::api::AuthRequestTicket;
use agentkeys_types::{ErrorBody, ErrorCode};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::audit::AuditError;
use crate::store::StoreError;

/// A handler error. Boxed: it travels through every `Result` of the hot path.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    code: ErrorCode,
    message: String,
    hint: Option<String>,
    status: Option<StatusCode>,
    auth_request: Option<AuthRequestTicket>,
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(Box::new(Inner {
            code,
            message: message.into(),
            hint: None,
            status: None,
            auth_request: None,
            retry_after: None,
        }))
    }

    /// `RATE_LIMITED`, telling the client when a retry can succeed (`retry_after_ms` in
    /// the body, `Retry-After` in whole seconds as the header).
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut e = ApiError::new(ErrorCode::RateLimited, message).hint(format!(
            "retry in {} ms (Retry-After)",
            wait.as_millis().max(1)
        ));
        e.0.retry_after = Some(wait);
        e
    }

    /// Adds the recommended fix.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.0.hint = Some(hint.into());
        self
    }

    /// Overrides the HTTP status (e.g. 413 for a body over the limit).
    pub fn status(mut self, status: StatusCode) -> Self {
        self.0.status = Some(status);
        self
    }

    /// `APPROVAL_REQUIRED` carrying the auth request to approve.
    pub fn approval_required(ticket: AuthRequestTicket, what: &str) -> Self {
        let hint = format!(
            "ask your operator to run 'agentkeys approve {}' and compare the OTP {}",
            ticket.pair_code, ticket.otp
        );
        let mut e = ApiError::new(
            ErrorCode::ApprovalRequired,
            format!("{what} is high-value: each release needs a human approval"),
        )
        .hint(hint);
        e.0.auth_request = Some(ticket);
        e
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    /// Shorthands.
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, m)
    }
    /// `DENIED`.
    pub fn denied(m: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Denied, m)
    }
    /// `NOT_FOUND`.
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, m)
    }
    /// `UNAUTHORIZED` with the standard hint.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthorized, m)
            .hint("run 'agentkeys init' for a new master session, or re-pair the daemon")
    }
    /// `INTERNAL`: the detail is logged here and not sent.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(ErrorCode::Internal, "internal server error")
            .hint("see the server log; retry later")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => {
                ApiError::new(ErrorCode::Conflict, format!("{what} already exists"))
                    .hint("choose another name")
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        ApiError::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let inner = *self.0;
        let status = inner.status.unwrap_or_else(|| {
            StatusCode::from_u16(inner.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        let hint = inner
            .hint
            .or_else(|| Some(default_hint(inner.code).to_owned()));
        let mut body = ErrorBody::new(inner.code, inner.message, hint);
        body.error.auth_request = inner.auth_request;
        body.error.retry_after_ms = inner
            .retry_after
            .map(|d| u64::try_from(d.as_millis().max(1)).unwrap_or(u64::MAX));
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = inner.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        response
    }
}

/// The hint an error gets when its site gave none (every error carries one).
fn default_hint(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "check the request against docs/api.md",
        ErrorCode::Unauthorized => "run 'agentkeys init' for a new session",
        ErrorCode::Denied => "this session may not do that; ask the master",
        ErrorCode::NotFound => "check the name; it may not be one you can see",
        ErrorCode::ApprovalRequired => "ask the master to run 'agentkeys approve CODE'",
        ErrorCode::Expired => "start again to get a fresh request",
        ErrorCode::AlreadyConsumed => "each request is single-use; open a new one",
        ErrorCode::RateLimited => "retry after the time Retry-After gives",
        ErrorCode::Conflict => "choose another name",
        ErrorCode::Internal => "see the server log; retry later",
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
