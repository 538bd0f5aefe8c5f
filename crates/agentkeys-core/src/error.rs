//! The client's error type: the server's error contract, plus transport and crypto
//! failures mapped onto the same codes so the CLI renders every error one way.

use agentkeys_types::ErrorCode;
use agentkeys_types::api::AuthRequestTicket;

use crate::crypto::CryptoError;

/// A failed backend call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{code}: {message}")]
    Api {
        /// The stable code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// The server's hint.
        hint: Option<String>,
        /// For `APPROVAL_REQUIRED`: what to approve.
        auth_request: Option<Box<AuthRequestTicket>>,
        /// For `RATE_LIMITED`: how long until a retry can succeed, as the server said.
        retry_after: Option<std::time::Duration>,
        /// HTTP status.
        status: u16,
    },
    /// The server could not be reached or the connection failed.
    #[error("cannot reach the server at {url}: {reason}")]
    Transport {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered something that is not the API.
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// Sealing or opening failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The call needs a session and the client has none.
    #[error("no session: this call needs a bearer token")]
    NoSession,
    /// Something the server signed (a decision, its shielding key, a read answer) did not
    /// verify against the pinned server key.
    #[error("the server's signature does not match the pinned server key")]
    BadSignature,
    /// The OTP the server sent is not the one this requester computes from its own key:
    /// the request was altered in transit.
    #[error(
        "the server's OTP does not match the one computed from this request's own key: the \
         request may have been altered in transit, so no code is shown"
    )]
    OtpMismatch,
    /// The call needs the server's pinned signing key and the client was given none.
    #[error("no pinned server key: sealing to or reading from the server needs it")]
    NotPinned,
}

impl ClientError {
    /// The stable code this error renders with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Api { code, .. } => *code,
            ClientError::Transport { .. } | ClientError::Protocol(_) => ErrorCode::Internal,
            ClientError::Crypto(_) | ClientError::BadSignature => ErrorCode::Denied,
            ClientError::NoSession => ErrorCode::Unauthorized,
            ClientError::NotPinned => ErrorCode::Internal,
            ClientError::OtpMismatch => ErrorCode::Denied,
        }
    }

    /// The recommended fix.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Api { hint, .. } => hint.clone(),
            ClientError::Transport { .. } => {
                Some("check that agentkeys-server runs and AGENTKEYS_SERVER points at it".to_owned())
            }
            ClientError::Protocol(_) => Some("is AGENTKEYS_SERVER an agentkeys server of a compatible version?".to_owned()),
            ClientError::Crypto(e) => e.hint().map(str::to_owned),
            ClientError::NoSession => Some("run 'agentkeys init' first".to_owned()),
            ClientError::BadSignature => {
                Some("the server key changed or someone is in the middle; verify the server before re-pinning".to_owned())
            }
            ClientError::OtpMismatch => Some(
                "check the network path to the server (use https); approve no code from this attempt"
                    .to_owned(),
            ),
            ClientError::NotPinned => Some(
                "build the client from a stored session (HttpBackend::for_session) or pin the key from 'agentkeys init'".to_owned(),
            ),
        }
    }

    /// For `RATE_LIMITED`: how long the server asked to wait before retrying.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The auth request of an `APPROVAL_REQUIRED` error.
    pub fn auth_request(&self) -> Option<&AuthRequestTicket> {
        match self {
            ClientError::Api { auth_request, .. } => auth_request.as_deref(),
            _ => None,
        }
    }
}
