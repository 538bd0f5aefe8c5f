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

/// A deserializer's message made safe to send back: no value the caller sent may come
/// back in an error (a secret pasted into the wrong field would otherwise be echoed, and
/// logged). Kept: the JSON path when it is made of our own field names, and the part after
/// `, expected` (our field names and types); removed: every quoted or backticked span
/// before it (the caller's unknown field names, variants and values) and any other path.
pub(crate) fn describe(msg: &str) -> String {
    let msg = msg
        .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        .trim_start_matches("Failed to deserialize query string: ");
    let (path, rest) = match msg.split_once(": ") {
        Some((p, r)) if is_field_path(p) => (Some(p), r),
        Some((p, r)) if looks_like_path(p) => (None, r),
        _ => (None, msg),
    };
    let (head, tail) = match rest
        .find(", expected ")
        .or_else(|| rest.find(", there are"))
    {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let mut kept = String::with_capacity(head.len());
    let mut inside: Option<char> = None;
    for c in head.chars() {
        match inside {
            Some(close) if c == close => inside = None,
            Some(_) => {}
            None if c == '`' || c == '"' => inside = Some(c),
            None => kept.push(c),
        }
    }
    let kept = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    let kept = kept.trim_end_matches([',', ' ']);
    match path {
        Some(p) => format!("{p}: {kept}{tail}"),
        None => format!("{kept}{tail}"),
    }
}

/// `scope.services[2]`: snake_case names and indices only, i.e. our own fields.
fn is_field_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|seg| {
            let name = seg.split('[').next().unwrap_or("");
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && seg[name.len()..].split_terminator(']').all(|i| {
                    i.strip_prefix('[')
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
        })
}

/// A path prefix that is not only our field names (dropped whole).
fn looks_like_path(p: &str) -> bool {
    !p.contains(' ') && !p.is_empty()
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
        JsonRejection::JsonDataError(e) => ApiError::bad_request(format!(
            "invalid request body: {}",
            describe(&e.body_text())
        ))
        .hint("check the field names and types against docs/api.md"),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed JSON body")
            .hint("send one JSON object (UTF-8), as docs/api.md shows for this endpoint"),
        JsonRejection::MissingJsonContentType(_) => ApiError::bad_request("expected a JSON body")
            .hint("send Content-Type: application/json"),
        JsonRejection::BytesRejection(_) => {
            ApiError::bad_request("request body too large or unreadable")
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .hint("request bodies are limited to 64 KiB; credentials to 32 KiB")
        }
        _ => ApiError::bad_request("invalid request body")
            .hint("check the request against docs/api.md"),
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
                format!("invalid query string: {}", describe(&e.body_text())),
            )
            .hint("unknown query parameters are refused; see docs/api.md for this endpoint's")),
            Err(_) => Err(ApiError::bad_request("invalid query string")
                .hint("see docs/api.md for this endpoint's query parameters")),
        }
    }
}

/// The client's IP address, as the TCP connection shows it (None when the request did not
/// come through [`crate::serve`]). Behind a reverse proxy this is the proxy's address, so
/// per-address limits then apply to the proxy as a whole.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl ClientAddr {
    /// The address as a budget sees it: IPv4 as is; IPv6 by its /64, the network one
    /// subscriber gets, inside which a host picks any of 2^64 addresses at will. An
    /// IPv4-mapped IPv6 address is its IPv4 address.
    pub fn group(&self) -> String {
        match self.canonical() {
            None => "-".to_owned(),
            Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
            Some(std::net::IpAddr::V6(v6)) => prefix(v6, 4),
        }
    }

    /// The wider network around it, which a budget between the address and the server
    /// bounds: IPv4 /24, IPv6 /48 (a site's allocation).
    pub fn network(&self) -> String {
        match self.canonical() {
            None => "-".to_owned(),
            Some(std::net::IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                format!("{a}.{b}.{c}.0/24")
            }
            Some(std::net::IpAddr::V6(v6)) => prefix(v6, 3),
        }
    }

    fn canonical(&self) -> Option<std::net::IpAddr> {
        self.0.map(|ip| ip.to_canonical())
    }
}

/// The first `segments` 16-bit groups of `v6`, as `a:b:c::/48` or `a:b:c:d::/64`.
fn prefix(v6: std::net::Ipv6Addr, segments: usize) -> String {
    let mut kept = [0u16; 8];
    kept[..segments].copy_from_slice(&v6.segments()[..segments]);
    format!("{}/{}", std::net::Ipv6Addr::from(kept), segments * 16)
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.canonical() {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("-"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
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
    /// `DENIED` unless the caller is a master or `service` is in its scope.
    pub fn require_in_scope(&self, service: &agentkeys_types::ServiceName) -> Result<(), ApiError> {
        if self.is_master() || self.scope().allows(service) {
            Ok(())
        } else {
            Err(
                ApiError::denied(format!("{service} is not in this agent's scope")).hint(format!(
                    "ask your operator to run 'agentkeys scope {} --add {service}'",
                    self.wallet()
                )),
            )
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

/// `UNAUTHORIZED` unless `session` is neither revoked nor expired at `now`: what every
/// request with its token is told, and what a long-poll that outlived it answers.
pub fn check_live(
    session: &SessionRecord,
    now: agentkeys_types::UnixSeconds,
) -> Result<(), ApiError> {
    if session.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this session was revoked"));
    }
    if session.expires_at <= now {
        return Err(
            ApiError::new(ErrorCode::Unauthorized, "this session has expired")
                .hint("run 'agentkeys init' again (agents: re-pair the daemon)"),
        );
    }
    Ok(())
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
        check_live(&session, now)?;
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
    fn no_value_the_caller_sent_comes_back() {
        let cases = [
            (
                r#"high_value: invalid type: string "sk-live-canary", expected a boolean at line 1 column 30"#,
                "high_value: invalid type: string, expected a boolean at line 1 column 30",
            ),
            (
                "unknown field `sk-canary-field`, expected one of `agent`, `service` at line 1 column 20",
                "unknown field, expected one of `agent`, `service` at line 1 column 20",
            ),
            (
                "kind: unknown variant `sk-canary-variant`, expected one of `pair`, `recover`, `high_value`",
                "kind: unknown variant, expected one of `pair`, `recover`, `high_value`",
            ),
            (
                "limit: invalid value: integer `-7777`, expected u32",
                "limit: invalid value: integer, expected u32",
            ),
            (
                "Failed to deserialize query string: unknown field `sk-canary-q`, expected one of `wait`",
                "unknown field, expected one of `wait`",
            ),
            (
                "unknown field `x`, there are no fields",
                "unknown field, there are no fields",
            ),
            (
                "Failed to deserialize the JSON body into the target type: scope.services[0]: a service name is 1 to 64 characters",
                "scope.services[0]: a service name is 1 to 64 characters",
            ),
            (
                "sk-canary-key.x: invalid type: null, expected a string",
                "invalid type: null, expected a string",
            ),
        ];
        for (raw, want) in cases {
            let got = describe(raw);
            assert_eq!(got, want, "{raw}");
            assert!(!got.contains("canary") && !got.contains("7777"), "{got}");
        }
    }
}

#[cfg(test)]
mod address_tests {
    use super::ClientAddr;

    fn addr(s: &str) -> ClientAddr {
        ClientAddr(Some(s.parse().expect("an address")))
    }

    #[test]
    fn ipv6_addresses_in_one_64_are_one_group_and_ipv4_addresses_are_their_own() {
        let a = addr("2001:db8:1:2::1");
        let b = addr("2001:db8:1:2:ffff:ffff:ffff:ffff");
        assert_eq!(a.group(), "2001:db8:1:2::/64");
        assert_eq!(a.group(), b.group());
        assert_ne!(a.group(), addr("2001:db8:1:3::1").group());
        assert_eq!(a.network(), "2001:db8:1::/48");
        assert_eq!(a.network(), addr("2001:db8:1:3::1").network());
        assert_ne!(a.network(), addr("2001:db8:2:2::1").network());
        assert_eq!(addr("192.0.2.7").group(), "192.0.2.7");
        assert_ne!(addr("192.0.2.7").group(), addr("192.0.2.8").group());
        assert_eq!(addr("192.0.2.7").network(), "192.0.2.0/24");
        assert_eq!(
            addr("::ffff:192.0.2.7").group(),
            "192.0.2.7",
            "v4-mapped is v4"
        );
        assert_eq!(addr("::ffff:192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(ClientAddr(None).group(), "-");
    }
}
