//! The error contract: stable codes and the `{"error": {code, message, hint}}` body.

use serde::{Deserialize, Serialize};

use crate::api::AuthRequestTicket;

/// A stable, machine-readable error code. The set is closed: clients switch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request was malformed: bad JSON, unknown field, invalid name, body too large.
    BadRequest,
    /// No credential, or a garbage, expired or revoked session token.
    Unauthorized,
    /// The caller is known but not allowed: out of scope, read-only, not the owner.
    Denied,
    /// The thing asked for does not exist (or the caller may not know it exists).
    NotFound,
    /// A high-value credential needs a human approval first; the body carries the request.
    ApprovalRequired,
    /// An auth request or grant outlived its deadline.
    Expired,
    /// A single-use request or grant was already decided or used.
    AlreadyConsumed,
    /// Too many requests for this session; retry later.
    RateLimited,
    /// The request conflicts with the current state (e.g. an alias owned by another wallet).
    Conflict,
    /// The server failed; details are in its log, never in the response.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::NotFound,
        ErrorCode::ApprovalRequired,
        ErrorCode::Expired,
        ErrorCode::AlreadyConsumed,
        ErrorCode::RateLimited,
        ErrorCode::Conflict,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire (`"BAD_REQUEST"` …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ApprovalRequired => "APPROVAL_REQUIRED",
            ErrorCode::Expired => "EXPIRED",
            ErrorCode::AlreadyConsumed => "ALREADY_CONSUMED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status the server answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied | ErrorCode::ApprovalRequired => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::AlreadyConsumed => 409,
            ErrorCode::Expired => 410,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every HTTP error response. Responses accept unknown fields, so a newer
/// server can add some without breaking older clients; only requests are strict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// One error: a stable code, a human message and, where there is one, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorDetail {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for a human. Never contains a secret.
    pub message: String,
    /// What to do about it, when we know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For `APPROVAL_REQUIRED`: the auth request a master must approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_request: Option<AuthRequestTicket>,
    /// For `RATE_LIMITED`: milliseconds until a retry can succeed (also sent, rounded up
    /// to whole seconds, as the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// An error body with a code, message and optional hint.
    pub fn new(code: ErrorCode, message: impl Into<String>, hint: Option<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                hint,
                auth_request: None,
                retry_after_ms: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_name() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn error_body_has_the_documented_shape() {
        let body = ErrorBody::new(ErrorCode::Denied, "not in scope", Some("ask".into()));
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["error"]["code"], "DENIED");
        assert_eq!(v["error"]["message"], "not in scope");
        assert_eq!(v["error"]["hint"], "ask");
        assert!(v["error"].get("auth_request").is_none());
    }

    #[test]
    fn statuses_are_client_or_server_errors() {
        for code in ErrorCode::ALL {
            let s = code.http_status();
            assert!((400..600).contains(&s), "{code}: {s}");
        }
        assert_eq!(ErrorCode::Internal.http_status(), 500);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
    }
}
