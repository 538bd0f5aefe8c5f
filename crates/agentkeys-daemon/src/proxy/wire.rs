//! The proxy's wire: it moves bytes and decides nothing about credentials. The listener
//! with its per-run `Proxy-Authorization`, `CONNECT` (intercepted with the run's CA for
//! bound hosts; tunnelled untouched, or refused under strict egress, for the others), TLS
//! toward the agent, plain `http://`, the upstream hop through the run's pooled clients,
//! and the splice of a switched (WebSocket) connection. For each request it calls the
//! [`Exchange`]: `open` with the request, `answer` with the upstream's answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::exchange::{Exchange, Switched};
use super::response::{Body, bad_gateway, empty, json_response};
use super::state::RunProxy;
use super::upstream::{self, CONNECT_TIMEOUT};
use super::ws;

/// Serves the run's proxy listener until the task is aborted.
pub(super) async fn listen(proxy: Arc<RunProxy>, listener: TcpListener) {
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
    proxy.admits(pass)
}

/// Every request on the listener: refused without the run's credential, else a CONNECT
/// or a plain `http://` request.
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

/// `CONNECT host:port`: intercepted with the run's CA when a credential is bound to the
/// host, else refused (strict egress) or tunnelled untouched.
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
        return intercept(proxy, req, host, port);
    }
    if let Some(refused) = proxy.unbound_refused(&host, port) {
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

/// Answers the CONNECT and, once upgraded, terminates TLS with a leaf of the run's CA for
/// `host` and serves the agent's requests (HTTP/2 where it offered it) as [`inner`].
fn intercept(
    proxy: Arc<RunProxy>,
    req: Request<Incoming>,
    host: String,
    port: u16,
) -> Response<Body> {
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
    Response::new(empty())
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

/// A request inside an intercepted connection: the exchange decides, the run's client
/// sends.
async fn inner(
    conn: Arc<Intercepted>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let host = conn.host.clone();
    let port = conn.port;
    let opened = Exchange::open(&conn.proxy, req, &host, true).await;
    let (req, exchange) = match opened {
        Ok(p) => p,
        Err(r) => return Ok(r),
    };
    let upgrade = exchange.upgrades();
    let answer = match send_upstream(&conn.proxy, req, true, &host, port, upgrade).await {
        Ok(a) => a,
        Err(r) => return Ok(r),
    };
    Ok(answer_back(&conn.proxy, exchange, answer))
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
    if !bound && let Some(refused) = proxy.unbound_refused(&host, port) {
        return refused;
    }
    let (req, exchange) = match Exchange::open(&proxy, req, &host, false).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let upgrade = exchange.upgrades();
    match send_upstream(&proxy, req, false, &host, port, upgrade).await {
        Ok(answer) => answer_back(&proxy, exchange, answer),
        Err(r) => r,
    }
}

/// The exchange's answer phase; a switched connection is spliced as one of the run's tasks.
fn answer_back(
    proxy: &Arc<RunProxy>,
    exchange: Exchange,
    answer: Response<Incoming>,
) -> Response<Body> {
    let (response, switched) = exchange.answer(proxy, answer);
    if let Some(switched) = switched {
        proxy.tasks.spawn(splice_switched(switched));
    }
    response
}

/// Once both sides have switched, splices them; the injection's trail line gets the bytes
/// moved.
async fn splice_switched(switched: Switched) {
    let Switched {
        client,
        upstream,
        reframer,
        record,
    } = switched;
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let copied = splice(TokioIo::new(client), TokioIo::new(upstream), reframer).await;
    if let Some(mut record) = record {
        record.status = 101;
        record.bytes = copied;
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
