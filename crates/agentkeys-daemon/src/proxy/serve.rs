//! The proxy's listener: HTTP/1.1 forward proxy with per-run `Proxy-Authorization`,
//! `CONNECT` intercepted with the run's CA for bound hosts (tunnelled untouched, or refused
//! under `--egress strict`, for the others), plain `http://` forwarded, WebSocket upgrades
//! spliced, every body streamed.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use super::RunProxy;
use super::body;
use super::decode::Decoder;
use super::inspect::{self, Route, Target, Where};
use super::scrub::{Replacer, Table};
use super::upstream;
use super::ws;
use crate::trail::Event;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy hands hyper.
pub type Body = BoxBody<Bytes, BoxError>;

use upstream::CONNECT_TIMEOUT;

fn empty() -> Body {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

fn json_response(status: StatusCode, code: &str, message: &str, hint: &str) -> Response<Body> {
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

/// Serves the run's proxy listener until the task is aborted.
pub async fn listen(proxy: Arc<RunProxy>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        proxy.tasks.clone().spawn(async move {
            let svc = service_fn(move |req| outer(proxy.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Whether the request carries this run's proxy credential (basic auth, any user).
fn authorized(proxy: &RunProxy, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(v) = headers.get(header::PROXY_AUTHORIZATION) else {
        return false;
    };
    let v = v.as_bytes();
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(v[6..].trim_ascii()) else {
        return false;
    };
    let decoded = zeroize::Zeroizing::new(decoded);
    let pass = decoded
        .iter()
        .position(|&b| b == b':')
        .map_or(&[][..], |c| &decoded[c + 1..]);
    super::ct_eq(pass, proxy.token.as_bytes())
}

async fn outer(proxy: Arc<RunProxy>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if !authorized(&proxy, req.headers()) {
        let mut r = json_response(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "UNAUTHORIZED",
            "this proxy serves one agentkeys run and needs its credential",
            "use the HTTPS_PROXY the run was started with (it carries the credential)",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"agentkeys\""),
        );
        return Ok(r);
    }
    if req.method() == Method::CONNECT {
        return Ok(connect(proxy, req).await);
    }
    Ok(plain(proxy, req).await)
}

/// `host` and `port` of an authority, lower-cased, without a trailing dot.
fn host_port(authority: &http::uri::Authority, default_port: u16) -> (String, u16) {
    (
        authority.host().trim_end_matches('.').to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default_port),
    )
}

async fn connect(proxy: Arc<RunProxy>, req: Request<Incoming>) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "CONNECT needs host:port",
            "",
        );
    };
    let (host, port) = host_port(&authority, 443);
    if proxy.routes.iter().any(|r| r.binding.allows_host(&host)) {
        let tls = match proxy.ca.server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                return json_response(StatusCode::BAD_GATEWAY, "INTERNAL", &e.to_string(), "");
            }
        };
        proxy.tasks.clone().spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls)
                .accept(TokioIo::new(upgraded))
                .await
            else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let tasks = proxy.tasks.clone();
            let conn = Arc::new(Intercepted { proxy, host, port });
            let svc = service_fn(move |req| inner(conn.clone(), req));
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(tasks)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            }
        });
        return Response::new(empty());
    }
    if let Some(refused) = unbound_refused(&proxy, &host, port) {
        return refused;
    }
    // Not ours: a blind tunnel. The placeholder is worthless there, and the run's CA cannot
    // certify this host, so nothing is decrypted.
    let upstream = match reach(&proxy, &host, port, false).await {
        Ok(tcp) => tcp,
        Err(r) => return r,
    };
    proxy.note_tunnel(&host, port);
    proxy.tasks.spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut client = TokioIo::new(upgraded);
        let mut upstream = upstream;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    Response::new(empty())
}

/// The refusal (audited `proxy-deny`) of a host no credential of the run is bound to, when
/// the run's egress is strict; `None` when it is tunnelled.
fn unbound_refused(proxy: &RunProxy, host: &str, port: u16) -> Option<Response<Body>> {
    let strict = proxy.strict.as_ref()?;
    let why = format!(
        "{host}:{port} is not bound to any credential of this run ({})",
        strict.why
    );
    proxy.refused(None, &why);
    Some(json_response(
        StatusCode::FORBIDDEN,
        "DENIED",
        &why,
        &strict.hint,
    ))
}

/// A TCP connection to `host:port` (resolved once, internal addresses refused unless
/// allowed), or the error response.
async fn reach(
    proxy: &RunProxy,
    host: &str,
    port: u16,
    allow_internal: bool,
) -> Result<TcpStream, Response<Body>> {
    let config = &proxy.daemon.config.proxy;
    let dialed = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let addr = upstream::resolve(config, host, port, allow_internal).await?;
        upstream::dial(addr).await
    })
    .await;
    match dialed {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(upstream_failed(proxy, &e)),
        Err(_) => Err(json_response(
            StatusCode::GATEWAY_TIMEOUT,
            "UNAVAILABLE",
            &format!("{host}:{port} did not answer within {CONNECT_TIMEOUT:?}"),
            "",
        )),
    }
}

/// The answer when an upstream cannot be reached: 403 (audited) for an internal address
/// the binding does not allow, 502 otherwise.
fn upstream_failed(proxy: &RunProxy, e: &upstream::UpstreamError) -> Response<Body> {
    if matches!(e, upstream::UpstreamError::Private { .. }) {
        proxy.refused(None, &e.to_string());
        return json_response(
            StatusCode::FORBIDDEN,
            "DENIED",
            &e.to_string(),
            "a binding with allow_private (agentkeys bind --allow-private) permits it",
        );
    }
    bad_gateway(&e.to_string())
}

/// One intercepted client connection (one CONNECT): its target. Upstream connections
/// come from the run's pooled client (HTTP/2 multiplexed where the upstream offers it).
struct Intercepted {
    proxy: Arc<RunProxy>,
    host: String,
    port: u16,
}

/// Sends `req` (origin-form) to `scheme://host:port` through the run's pooled client:
/// `Host` (or `:authority`) is the target, whatever the request said. Upgrades go over a
/// connection that speaks HTTP/1.1 only.
async fn send_upstream(
    proxy: &RunProxy,
    mut req: Request<Body>,
    https: bool,
    host: &str,
    port: u16,
    upgrade: bool,
) -> Result<Response<Incoming>, Response<Body>> {
    let default_port = if https { 443 } else { 80 };
    let authority = if port == default_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    let scheme = if https { "https" } else { "http" };
    *req.uri_mut() = format!("{scheme}://{authority}{pq}")
        .parse()
        .map_err(|_| bad_gateway("the request's path cannot be forwarded"))?;
    req.headers_mut().remove(header::HOST);
    // The upstream hop mirrors the agent's: HTTP/2 where the agent multiplexes (and the
    // upstream offers it); HTTP/1.1 for an HTTP/1.1 agent, whose one request at a time
    // gains nothing from HTTP/2's framing and flow control (measured: +300 µs per request
    // and a third less download throughput through an HTTP/2 hop). Upgrades need HTTP/1.1.
    let h2_agent = req.version() == http::Version::HTTP_2;
    *req.version_mut() = http::Version::HTTP_11;
    let client = if upgrade || !h2_agent {
        &proxy.client_h1
    } else {
        &proxy.client
    };
    client.request(req).await.map_err(|e| {
        // The connector's own refusal (an internal address) is the agent's to know.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(up) = err.downcast_ref::<upstream::UpstreamError>() {
                return upstream_failed(proxy, up);
            }
            source = err.source();
        }
        bad_gateway(&format!("{authority}: {e}"))
    })
}

fn bad_gateway(message: &str) -> Response<Body> {
    json_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message, "")
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), dropped before forwarding; `upgrade`
/// and `connection: upgrade` are kept for WebSocket.
fn strip_hop_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    for h in [
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"upgrade")
        })
}

async fn inner(
    conn: Arc<Intercepted>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let host = conn.host.clone();
    let port = conn.port;
    let prepared = prepare(&conn.proxy, req, &host, true).await;
    let (req, plan) = match prepared {
        Ok(p) => p,
        Err(r) => return Ok(r),
    };
    let upgrade = plan.client_upgrade.is_some();
    let answer = match send_upstream(&conn.proxy, req, true, &host, port, upgrade).await {
        Ok(a) => a,
        Err(r) => return Ok(r),
    };
    Ok(answer_back(&conn.proxy, answer, plan))
}

/// Plain `http://` through the proxy (absolute-form requests).
async fn plain(proxy: Arc<RunProxy>, req: Request<Incoming>) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "a proxy request needs an absolute http:// URI",
            "",
        );
    };
    if req.uri().scheme_str() != Some("http") {
        return json_response(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "only http:// is proxied without CONNECT",
            "https goes through CONNECT",
        );
    }
    let (host, port) = host_port(&authority, 80);
    let bound = proxy.routes.iter().any(|r| r.binding.allows_host(&host));
    if !bound && let Some(refused) = unbound_refused(&proxy, &host, port) {
        return refused;
    }
    let (req, plan) = match prepare(&proxy, req, &host, false).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let upgrade = plan.client_upgrade.is_some();
    match send_upstream(&proxy, req, false, &host, port, upgrade).await {
        Ok(answer) => answer_back(&proxy, answer, plan),
        Err(r) => r,
    }
}

/// One credential injected into a request.
struct Injected {
    service: agentkeys_types::ServiceName,
    placeholder: String,
    value: super::Fetched,
    /// Not put into the request, only scrubbed out of its answer (a body-field value the
    /// upstream may have kept, [`prepare`]).
    scrub_only: bool,
}

/// The table scrubbing an answer of the injected credentials: the held one for a single
/// credential, else one made for the set.
fn echo_table(injected: &[Injected]) -> std::io::Result<Arc<Table>> {
    match injected {
        [one] => Ok(one.value.echoes.clone()),
        many => {
            let secrets: Vec<(&[u8], &[u8])> = many
                .iter()
                .map(|i| (i.value.page.expose_secret(), i.placeholder.as_bytes()))
                .collect();
            Table::echoes(&secrets)
        }
    }
}

/// What was injected into a request, for scrubbing its answer and auditing it.
struct Plan {
    /// Every injected credential.
    injected: Vec<Injected>,
    method: String,
    /// `host` + path, without the query.
    target: String,
    started: Instant,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// A request body the proxy has read whole, to look for placeholders in it.
struct ReadBody {
    bytes: Bytes,
    kind: body::Kind,
}

/// The body of a request on its way: read whole (a binding with body fields allows the
/// request), or streamed through untouched.
enum RequestBody {
    Read(ReadBody),
    Streamed(Incoming),
}

/// How much of a refused body's rest is read and dropped so the client, still sending,
/// gets the refusal rather than a reset connection; and for how long.
const DRAIN: (usize, Duration) = (32 << 20, Duration::from_secs(10));

/// Reads the body of a request that a binding with body fields may substitute into, up to
/// [`body::MAX_BODY`]; refuses a larger or encoded one (413/415, audited `proxy-deny`).
async fn read_body(
    proxy: &RunProxy,
    parts: &http::request::Parts,
    mut incoming: Incoming,
) -> Result<ReadBody, Response<Body>> {
    use http_body::Body as _;
    let limit = body::MAX_BODY;
    let refuse = |status: StatusCode, why: String, hint: &str| {
        proxy.refused(None, &why);
        json_response(status, "BAD_REQUEST", &why, hint)
    };
    if let Some(encoding) = body::encoding(&parts.headers) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the request body is sent with Content-Encoding: {encoding}, which the proxy \
                 cannot look into for a credential bound to body fields"
            ),
            "send the body uncompressed",
        ));
    }
    let declared = usize::try_from(incoming.size_hint().lower()).unwrap_or(usize::MAX);
    let mut over = declared > limit;
    let mut bytes = Vec::with_capacity(if over { 0 } else { declared });
    let mut whole = false;
    while !over {
        match incoming.frame().await {
            None => {
                whole = true;
                break;
            }
            Some(Err(_)) => break,
            Some(Ok(frame)) => {
                // Trailers are dropped: a body read whole is sent with a Content-Length.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if bytes.len() + data.len() > limit {
                    over = true;
                } else {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
    if over {
        let _ = tokio::time::timeout(DRAIN.1, async {
            let mut drained = 0usize;
            while let Some(Ok(frame)) = incoming.frame().await {
                drained += frame.data_ref().map_or(0, Bytes::len);
                if drained > DRAIN.0 {
                    break;
                }
            }
        })
        .await;
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over {} KiB: the proxy reads a body whole, up to that size, \
                 before a credential bound to body fields goes into a request",
                limit / 1024
            ),
            "send a larger body without the placeholder to a path or method the binding does not \
             name, or have the master narrow the binding (--path, --method)",
        ));
    }
    if !whole {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the request body could not be read whole",
            "",
        ));
    }
    Ok(ReadBody {
        bytes: Bytes::from(bytes),
        kind: body::Kind::of(&parts.headers),
    })
}

/// Inspects, checks and rewrites a request: refuses it (403) when a placeholder goes where
/// its binding does not allow, fetches the values to inject (checking the binding that came
/// with each), puts them in, and fixes the head for the upstream (origin-form, `Host` set to
/// the target, hop headers gone). A body is read whole first (bounded) when a binding with
/// body fields allows the request, and searched before anything is fetched.
async fn prepare(
    proxy: &Arc<RunProxy>,
    mut req: Request<Incoming>,
    host: &str,
    tls: bool,
) -> Result<(Request<Body>, Plan), Response<Body>> {
    let started = Instant::now();
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let overrides = inspect::overrides(&parts);
    let target = Target {
        host,
        method: &method,
        path: &path,
        tls,
        overrides: overrides.as_deref(),
    };
    let found = inspect::find(&proxy.routes, &parts);
    let at_of = |i: usize| -> Vec<Where> {
        found
            .iter()
            .filter(|f| f.0 == i)
            .map(|f| f.1.clone())
            .collect()
    };

    // Bindings with body fields that allow this host, method and path: the body is read and
    // searched for their placeholders (an override header is refused below, once a
    // placeholder makes the binding matter).
    let plain_target = Target {
        overrides: None,
        ..target
    };
    let body_routes: Vec<usize> = proxy
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            !r.binding.body_fields().is_empty()
                && inspect::check(&r.service, &r.binding, &plain_target, &[]).is_ok()
        })
        .map(|(i, _)| i)
        .collect();
    let request_body = if body_routes.is_empty() || http_body::Body::is_end_stream(&incoming) {
        RequestBody::Streamed(incoming)
    } else {
        RequestBody::Read(read_body(proxy, &parts, incoming).await?)
    };
    let read = match &request_body {
        RequestBody::Read(read) => Some(read),
        RequestBody::Streamed(_) => None,
    };
    let mut in_body: Vec<usize> = Vec::new();
    if let Some(read) = read {
        for &i in &body_routes {
            let r = &proxy.routes[i];
            match body::sites(
                &read.bytes,
                &read.kind,
                r.binding.body_fields(),
                r.placeholder.as_bytes(),
            ) {
                Ok(sites) if sites.is_empty() => {}
                Ok(_) => in_body.push(i),
                Err(place) => return Err(proxy.exfiltration(r, &not_injected(r, &place))),
            }
        }
    }

    let mut chosen: Vec<usize> = found
        .iter()
        .map(|f| f.0)
        .chain(in_body.iter().copied())
        .collect();
    chosen.sort_unstable();
    chosen.dedup();
    for &i in &chosen {
        let r = &proxy.routes[i];
        if let Err(why) = inspect::check(&r.service, &r.binding, &target, &at_of(i)) {
            return Err(proxy.exfiltration(r, &why));
        }
    }
    let mut injected = Vec::new();
    // Each body site with the index (in `injected`) of the value that goes there.
    let mut body_sites: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
    for &i in &chosen {
        let r = &proxy.routes[i];
        let fetched = proxy.value_for(r).await?;
        let (page, binding) = (fetched.page.clone(), fetched.binding.clone());
        // The binding that came with this very value decides.
        let Some(binding) = binding else {
            return Err(
                proxy.exfiltration(r, &format!("{} is no longer bound to any host", r.service))
            );
        };
        let binding = match binding.in_force(r.service.as_str()) {
            Ok(b) => b.into_owned(),
            Err(e) => {
                proxy.refused(Some(&r.service), &e.to_string());
                return Err(json_response(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    &e.to_string(),
                    "the credential's master rebinds it ('agentkeys bind --help')",
                ));
            }
        };
        if let Err(why) = inspect::check(&r.service, &binding, &target, &at_of(i)) {
            return Err(proxy.exfiltration(r, &why));
        }
        if let Some(read) = read
            && (in_body.contains(&i) || !binding.body_fields().is_empty())
        {
            let sites = body::sites(
                &read.bytes,
                &read.kind,
                binding.body_fields(),
                r.placeholder.as_bytes(),
            )
            .map_err(|place| proxy.exfiltration(r, &not_injected(r, &place)))?;
            body_sites.extend(sites.into_iter().map(|s| (s, injected.len())));
        }
        let current = Route {
            binding,
            ..r.clone()
        };
        if !at_of(i).is_empty() {
            inspect::inject(&mut parts, &current, page.expose_secret())
                .map_err(|why| json_response(StatusCode::BAD_GATEWAY, "INTERNAL", &why, ""))?;
        }
        injected.push(Injected {
            service: r.service.clone(),
            placeholder: r.placeholder.clone(),
            value: fetched,
            scrub_only: false,
        });
    }
    // A value that went into a body field may be kept upstream and sent back later, in the
    // answer to a request without any placeholder, on any path or name of that server: so
    // every answer of a run with body-field credentials is scrubbed of their values (held
    // for `proxy_hold`, so this is rarely a fetch). Hosts none of the run's credentials is
    // bound to are refused in such a run, unless its master said `tunnel_unbound`.
    for (i, r) in proxy.routes.iter().enumerate() {
        if chosen.contains(&i) || r.binding.body_fields().is_empty() {
            continue;
        }
        injected.push(Injected {
            service: r.service.clone(),
            placeholder: r.placeholder.clone(),
            value: proxy.value_for(r).await?,
            scrub_only: true,
        });
    }

    // No hop headers; the target and `Host` are set when it is sent.
    strip_hop_headers(&mut parts.headers, upgrade);
    if upgrade && !injected.is_empty() {
        // No permessage-deflate: the upstream's frames stay readable for the scrubber.
        parts.headers.remove("sec-websocket-extensions");
    }
    if !injected.is_empty() {
        // An answer is scrubbed of the value: ask for it uncompressed.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let body: Body = match request_body {
        RequestBody::Read(read) => {
            let bytes = if body_sites.is_empty() {
                read.bytes
            } else {
                let mut sites: Vec<(std::ops::Range<usize>, &[u8])> = body_sites
                    .iter()
                    .map(|(range, k)| (range.clone(), injected[*k].value.page.expose_secret()))
                    .collect();
                let rewritten = body::rewrite(&read.bytes, &read.kind, &mut sites)
                    .map_err(|why| json_response(StatusCode::BAD_GATEWAY, "INTERNAL", &why, ""))?;
                // The buffer is wiped when hyper drops the last reference to it.
                Bytes::from_owner(rewritten)
            };
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            http_body_util::Full::new(bytes)
                .map_err(|e| match e {})
                .boxed()
        }
        RequestBody::Streamed(incoming) => incoming.map_err(BoxError::from).boxed(),
    };
    let plan = Plan {
        injected,
        method,
        target: format!("{host}{path}"),
        started,
        client_upgrade,
    };
    Ok((Request::from_parts(parts, body), plan))
}

/// The refusal reason for a placeholder found in a body at `place`.
fn not_injected(r: &Route, place: &str) -> String {
    format!(
        "the placeholder of {} was found in {place}, where its binding does not inject it \
         (only as the whole value of a field it names)",
        r.service
    )
}

/// The upstream's answer on its way back: WebSocket spliced, or the body streamed with any
/// echo of an injected value replaced by its placeholder; the injection audited once the
/// body is done.
fn answer_back(
    proxy: &Arc<RunProxy>,
    mut answer: Response<Incoming>,
    plan: Plan,
) -> Response<Body> {
    let status = answer.status();
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = plan.client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut answer);
        let mut record = Record::new(
            proxy,
            &plan.injected,
            &plan.method,
            &plan.target,
            plan.started,
        );
        // The upstream's frames are parsed, scrubbed message by message and framed again
        // (extensions were refused, so none is compressed), and the 101's headers are
        // scrubbed like any answer's. Anything else it could switch to cannot be looked into.
        let table = if plan.injected.is_empty() {
            None
        } else {
            let headers = answer.headers();
            let websocket = headers
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
            let refused = if !websocket {
                Some(
                    "the upstream switched to a protocol the proxy cannot check for the credential",
                )
            } else if headers.contains_key("sec-websocket-extensions") {
                Some(
                    "the upstream turned on a WebSocket extension the proxy refused (its frames could not be checked for the credential)",
                )
            } else {
                None
            };
            let table = match refused {
                Some(why) => Err(why.to_owned()),
                None => echo_table(&plan.injected)
                    .map_err(|e| format!("no secret page for the scrubber: {e}")),
            };
            match table {
                Ok(t) => Some(t),
                Err(why) => {
                    if let Some(r) = record.as_mut() {
                        r.status = 502;
                    }
                    return json_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &why, "");
                }
            }
        };
        let (mut parts, _) = answer.into_parts();
        if let Some(t) = &table {
            scrub_headers(t, &mut parts.headers);
        }
        let reframer = table.map(ws::Reframer::new);
        proxy.tasks.spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                return;
            };
            let copied = splice(TokioIo::new(client), TokioIo::new(upstream), reframer).await;
            if let Some(mut record) = record {
                record.status = 101;
                record.bytes = copied;
            }
        });
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = answer.into_parts();
    // `Trailer` names the trailers to come; an HTTP/1.1 agent gets them only if it is kept.
    let declared: Vec<HeaderValue> = parts
        .headers
        .get_all(header::TRAILER)
        .iter()
        .cloned()
        .collect();
    strip_hop_headers(&mut parts.headers, false);
    for v in declared {
        parts.headers.append(header::TRAILER, v);
    }
    let mut record = Record::new(
        proxy,
        &plan.injected,
        &plan.method,
        &plan.target,
        plan.started,
    );
    if let Some(r) = record.as_mut() {
        r.status = status.as_u16();
    }
    if plan.injected.is_empty() {
        return Response::from_parts(parts, Streamed::new(body, None, record).boxed());
    }
    let table = match echo_table(&plan.injected) {
        Ok(t) => t,
        Err(e) => {
            return json_response(
                StatusCode::BAD_GATEWAY,
                "INTERNAL",
                &format!("no secret page for the scrubber: {e}"),
                "",
            );
        }
    };
    // Asked for identity, an upstream may still compress: every gzip and deflate layer is
    // opened (and the answer passed on uncompressed) so an echo inside is found; any other
    // coding the proxy cannot look into, so the agent gets nothing rather than a body that
    // might hold the value.
    let decoder = match Decoder::for_encodings(
        parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    ) {
        Ok(d) => d,
        Err(coding) => {
            if let Some(r) = record.as_mut() {
                r.status = 502;
            }
            return json_response(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!(
                    "the upstream answered in a content coding the proxy cannot check for the \
                     credential ({coding})"
                ),
                "the proxy asks for identity and opens gzip and deflate; an upstream that \
                 compresses anyway must use one of those",
            );
        }
    };
    if decoder.is_some() {
        parts.headers.remove(header::CONTENT_ENCODING);
    }
    scrub_headers(&table, &mut parts.headers);
    // An echo may be replaced by a placeholder of another length, or be found escaped: the
    // body's length is only known once it has streamed.
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut streamed = Streamed::new(body, Some(Replacer::new(table.clone())), record);
    streamed.decoder = decoder;
    streamed.trailers = Some(table);
    Response::from_parts(parts, streamed.boxed())
}

/// Replaces every echo of a value in each header value (an answer's headers, a `101`'s,
/// trailers).
fn scrub_headers(table: &Arc<Table>, headers: &mut HeaderMap) {
    let names: Vec<header::HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let scrubbed: Vec<Option<Vec<u8>>> = values
            .iter()
            .map(|v| table.scrub_whole(v.as_bytes()))
            .collect();
        if scrubbed.iter().all(Option::is_none) {
            continue;
        }
        headers.remove(&name);
        for (v, new) in values.into_iter().zip(scrubbed) {
            let v = match new {
                // A replacement is made of the value's own bytes and a placeholder's
                // (letters, digits, `-`, `_`), so it is a valid value; if not, nothing.
                Some(new) => HeaderValue::from_bytes(&new).unwrap_or(HeaderValue::from_static("")),
                None => v,
            };
            headers.append(name.clone(), v);
        }
    }
}

/// Copies both ways until either side closes, the upstream's WebSocket frames through
/// `reframer` (scrubbed, framed again); returns the bytes moved.
async fn splice<C, U>(client: C, upstream: U, mut reframer: Option<ws::Reframer>) -> u64
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let up = async {
        let n = tokio::io::copy(&mut client_r, &mut upstream_w)
            .await
            .unwrap_or(0);
        let _ = upstream_w.shutdown().await;
        n
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut framed = Vec::new();
        let mut n = 0u64;
        loop {
            let read = match upstream_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(r) => r,
            };
            let out: &[u8] = match reframer.as_mut() {
                Some(r) => {
                    framed.clear();
                    // Frames that cannot be checked end the connection: nothing unchecked
                    // reaches the agent.
                    if r.push(&buf[..read], &mut framed).is_err() {
                        break;
                    }
                    &framed
                }
                None => &buf[..read],
            };
            n += out.len() as u64;
            if client_w.write_all(out).await.is_err() {
                break;
            }
        }
        zeroize::Zeroize::zeroize(&mut buf[..]);
        let _ = client_w.shutdown().await;
        n
    };
    let (a, b) = tokio::join!(up, down);
    a + b
}

/// An injection's trail line, written when its answer is done (or dropped).
struct Record {
    proxy: Arc<RunProxy>,
    services: Vec<agentkeys_types::ServiceName>,
    method: String,
    target: String,
    started: Instant,
    status: u16,
    bytes: u64,
}

impl Record {
    fn new(
        proxy: &Arc<RunProxy>,
        injected: &[Injected],
        method: &str,
        target: &str,
        started: Instant,
    ) -> Option<Record> {
        let services: Vec<_> = injected
            .iter()
            .filter(|i| !i.scrub_only)
            .map(|i| i.service.clone())
            .collect();
        (!services.is_empty()).then(|| Record {
            proxy: proxy.clone(),
            services,
            method: method.to_owned(),
            target: target.to_owned(),
            started,
            status: 0,
            bytes: 0,
        })
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        for service in &self.services {
            self.proxy.audit(Event {
                event: "inject".into(),
                service: Some(service.to_string()),
                mode: Some("proxy".into()),
                detail: Some(format!(
                    "{} {} -> {}, {} bytes, {} ms",
                    self.method,
                    self.target,
                    self.status,
                    self.bytes,
                    self.started.elapsed().as_millis()
                )),
                ..Default::default()
            });
        }
    }
}

/// A body passed through, optionally decompressed and with replacements, counting its
/// bytes for the trail; an answer's trailers scrubbed too.
struct Streamed<B> {
    inner: B,
    decoder: Option<Decoder>,
    replacer: Option<Replacer>,
    /// The table an answer's trailers are scrubbed with (none for a request's body, whose
    /// trailers get no substitution).
    trailers: Option<Arc<Table>>,
    record: Option<Record>,
    /// Trailers waiting for the data the decoder and replacer still held to go first.
    pending: Option<Frame<Bytes>>,
    /// The decoder and replacer have given up what they held.
    drained: bool,
    done: bool,
}

impl<B> Streamed<B> {
    fn new(inner: B, replacer: Option<Replacer>, record: Option<Record>) -> Self {
        Streamed {
            inner,
            decoder: None,
            replacer,
            trailers: None,
            record,
            pending: None,
            drained: false,
            done: false,
        }
    }

    /// The end of the body's data: what the decoder and the replacer still hold (once).
    fn drain(&mut self) -> Result<Bytes, BoxError> {
        if std::mem::replace(&mut self.drained, true) {
            return Ok(Bytes::new());
        }
        let tail = match self.decoder.as_mut().map(Decoder::finish) {
            None => Bytes::new(),
            Some(plain) => Bytes::from(plain?),
        };
        let rest = match self.replacer.as_mut() {
            Some(r) => {
                let mut all = r.push(&tail).to_vec();
                all.extend_from_slice(&r.finish());
                Bytes::from(all)
            }
            None => tail,
        };
        if let Some(r) = self.record.as_mut() {
            r.bytes += rest.len() as u64;
        }
        Ok(rest)
    }
}

impl<B> http_body::Body for Streamed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(trailers) = this.pending.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let data = match this.decoder.as_mut().map(|d| d.push(&data)) {
                                None => data,
                                Some(Ok(plain)) => Bytes::from(plain),
                                Some(Err(e)) => {
                                    this.done = true;
                                    return Poll::Ready(Some(Err(e.into())));
                                }
                            };
                            let out = match this.replacer.as_mut() {
                                Some(r) => r.push(&data),
                                None => data,
                            };
                            if let Some(r) = this.record.as_mut() {
                                r.bytes += out.len() as u64;
                            }
                            if out.is_empty() {
                                continue;
                            }
                            Frame::data(out)
                        }
                        Err(frame) => match frame.into_trailers() {
                            // Trailers end the data: what was held goes out before them,
                            // and their values are scrubbed like headers.
                            Ok(mut trailers) => {
                                if let Some(table) = &this.trailers {
                                    scrub_headers(table, &mut trailers);
                                }
                                let rest = match this.drain() {
                                    Ok(rest) => rest,
                                    Err(e) => {
                                        this.done = true;
                                        return Poll::Ready(Some(Err(e)));
                                    }
                                };
                                if rest.is_empty() {
                                    Frame::trailers(trailers)
                                } else {
                                    this.pending = Some(Frame::trailers(trailers));
                                    Frame::data(rest)
                                }
                            }
                            Err(frame) => frame,
                        },
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.drain() {
                        Err(e) => Poll::Ready(Some(Err(e))),
                        Ok(rest) if rest.is_empty() => Poll::Ready(None),
                        Ok(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.replacer.is_none() && self.decoder.is_none() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}
