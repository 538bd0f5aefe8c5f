//! The proxy's own answers: the body type of everything it hands hyper, and the JSON error
//! (`{"error": {code, message, hint}}`) an agent gets when the proxy refuses or cannot
//! forward.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use serde_json::json;

/// The error of a body the proxy passes on.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy hands hyper.
pub(super) type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub(super) fn empty() -> Body {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

/// A JSON error answer.
pub(super) fn json_response(
    status: StatusCode,
    code: &str,
    message: &str,
    hint: &str,
) -> Response<Body> {
    let body = json!({"error": {"code": code, "message": message, "hint": hint}}).to_string();
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A 502: the upstream could not be reached or answered nothing usable.
pub(super) fn bad_gateway(message: &str) -> Response<Body> {
    json_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message, "")
}

/// A 403 `DENIED` with the reason and the fix.
pub(super) fn forbidden(message: &str, hint: &str) -> Response<Body> {
    json_response(StatusCode::FORBIDDEN, "DENIED", message, hint)
}
