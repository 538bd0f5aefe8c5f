//! The egress proxy against direct TLS to the same local upstream, in the same run: a held
//! HTTP/1.1 connection, a new connection per request (CONNECT + TLS, leaf cached), a
//! 256 MiB download (throughput, daemon RSS growth), and 100 concurrent HTTP/2 streams.
//!
//! The upstream is in this process: hyper over tokio-rustls, `h2` and `http/1.1` by ALPN,
//! certified for `bench.example.com` by a CA of its own; the daemon reaches it through
//! `--proxy-resolve` and `--proxy-upstream-ca`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::stats::Samples;

/// The upstream's name.
pub(crate) const HOST: &str = "bench.example.com";
/// Bytes of the streamed download.
pub(crate) const BIG: u64 = 256 << 20;

/// The local upstream: where it listens and the CA its certificate chains to.
pub(crate) struct Upstream {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its CA, PEM (the daemon's `--proxy-upstream-ca`, and the direct client's root).
    pub(crate) ca: PathBuf,
    _dir: agentkeys_testkit::TempDir,
}

/// A body of `left` bytes in 64 KiB frames.
struct Zeros {
    left: u64,
    chunk: Bytes,
}

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        let frame = self.chunk.slice(..usize::try_from(n).unwrap_or(0));
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

type Boxed = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Result<Response<Boxed>, Infallible> {
    let body: Boxed = if req.uri().path() == "/big" {
        Zeros {
            left: BIG,
            chunk: Bytes::from(vec![b'z'; 64 * 1024]),
        }
        .boxed()
    } else {
        Full::new(Bytes::from_static(b"{\"ok\":true,\"id\":\"bench\"}")).boxed()
    };
    Ok(Response::new(body))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Upstream {
    /// Starts the upstream on `rt`.
    pub(crate) fn start(rt: &tokio::runtime::Runtime) -> Result<Upstream, String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let dir = agentkeys_testkit::TempDir::new("agentkeys-bench-upstream");
        let ca_key = rcgen::KeyPair::generate().map_err(|e| err(&e))?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&e))?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| err(&e))?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| err(&e))?;
        let leaf = rcgen::CertificateParams::new(vec![HOST.to_owned()])
            .map_err(|e| err(&e))?
            .signed_by(&leaf_key, &issuer)
            .map_err(|e| err(&e))?;
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).map_err(|e| err(&e))?;
        let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes())
            .map_err(|e| err(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&e))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .map_err(|e| err(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| err(&e))?;
        let port = listener.local_addr().map_err(|e| err(&e))?.port();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let svc = hyper::service::service_fn(answer);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    }
                });
            }
        });
        Ok(Upstream {
            port,
            ca: ca_path,
            _dir: dir,
        })
    }
}

/// What `agentkeys proxy-env --json` gives: the proxy's address, its credential, the
/// placeholder and the CA bundle.
pub(crate) struct ProxyEnv {
    addr: String,
    token: String,
    placeholder: String,
    bundle: PathBuf,
}

impl ProxyEnv {
    /// Asks the daemon on `socket` for its persistent listener of `service`
    /// (`agentkeys proxy-env --service SERVICE --json`, run with the `cli` binary).
    pub(crate) fn ask(cli: &Path, socket: &Path, service: &str) -> Result<ProxyEnv, String> {
        let out = std::process::Command::new(cli)
            .args(["proxy-env", "--service", service, "--json"])
            .env("AGENTKEYS_SOCKET", socket)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "proxy-env: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        ProxyEnv::parse(&v, service)
    }

    /// From the `proxy-env --json` answer for `service`.
    pub(crate) fn parse(v: &serde_json::Value, service: &str) -> Result<ProxyEnv, String> {
        let url = v["proxy"].as_str().ok_or("no proxy in proxy-env")?;
        let rest = url.strip_prefix("http://").ok_or("proxy is not http://")?;
        let (userinfo, addr) = rest
            .split_once('@')
            .ok_or("no credential in the proxy URL")?;
        let token = userinfo.split_once(':').map_or("", |(_, t)| t);
        Ok(ProxyEnv {
            addr: addr.to_owned(),
            token: token.to_owned(),
            placeholder: v["placeholders"][service]
                .as_str()
                .ok_or("no placeholder")?
                .to_owned(),
            bundle: PathBuf::from(v["ca_bundle"].as_str().ok_or("no ca_bundle")?),
        })
    }
}

/// How a client reaches the upstream.
#[derive(Clone)]
pub(crate) enum Path2 {
    /// TLS straight to the upstream, trusting its CA, with the real key.
    Direct { port: u16, ca: PathBuf, key: String },
    /// Through the proxy (CONNECT, then TLS trusting the run's bundle), with the placeholder.
    Proxied(Arc<ProxyEnv>),
}

fn roots(pem: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).map_err(|e| e.to_string())? {
        let _ = roots.add(cert.map_err(|e| e.to_string())?);
    }
    Ok(roots)
}

/// One HTTP connection along `path` (HTTP/2 when `h2`), and the Authorization to send.
pub(crate) enum Conn {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Path2 {
    fn auth(&self) -> String {
        match self {
            Path2::Direct { key, .. } => format!("Bearer {key}"),
            Path2::Proxied(env) => format!("Bearer {}", env.placeholder),
        }
    }

    /// Opens a connection (TCP, CONNECT when proxied, TLS, HTTP handshake).
    pub(crate) async fn open(&self, h2: bool) -> Result<Conn, String> {
        let (tcp, ca) = match self {
            Path2::Direct { port, ca, .. } => (
                TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .map_err(|e| e.to_string())?,
                ca.clone(),
            ),
            Path2::Proxied(env) => {
                let mut tcp = TcpStream::connect(&env.addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let auth = base64::engine::general_purpose::STANDARD
                    .encode(format!("agentkeys:{}", env.token));
                let connect = format!(
                    "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
                );
                tcp.write_all(connect.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    tcp.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
                    head.push(byte[0]);
                }
                if !head.starts_with(b"HTTP/1.1 200") {
                    return Err(format!(
                        "CONNECT refused: {}",
                        String::from_utf8_lossy(&head)
                    ));
                }
                (tcp, env.bundle.clone())
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(&ca)?)
            .with_no_client_auth();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = ServerName::try_from(HOST).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    /// One GET of `path` on `conn`, its body read to the end; returns the body's length.
    pub(crate) async fn get(&self, conn: &mut Conn, path: &str) -> Result<u64, String> {
        let req = Request::get(format!("https://{HOST}{path}"))
            .header("authorization", self.auth())
            .header("host", HOST)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = match conn {
            Conn::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                let (mut parts, body) = req.into_parts();
                parts.uri = path.parse().map_err(|_| "bad path")?;
                s.send_request(Request::from_parts(parts, body)).await
            }
            Conn::H2(s) => {
                let mut req = req;
                req.headers_mut().remove("host");
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                n += data.len() as u64;
            }
        }
        Ok(n)
    }
}

/// `n` GETs of `/small` on one held HTTP/1.1 connection (after `warm`).
pub(crate) async fn held(path: &Path2, warm: usize, n: usize) -> Result<Samples, String> {
    let mut conn = path.open(false).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..warm + n {
        let t = Instant::now();
        path.get(&mut conn, "/small").await?;
        if i >= warm {
            out.push(t.elapsed());
        }
    }
    Ok(Samples::from(out))
}

/// `n` requests each on a new connection (TCP, CONNECT, TLS, one GET).
pub(crate) async fn fresh(path: &Path2, warm: usize, n: usize) -> Result<Samples, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..warm + n {
        let t = Instant::now();
        let mut conn = path.open(false).await?;
        path.get(&mut conn, "/small").await?;
        if i >= warm {
            out.push(t.elapsed());
        }
    }
    Ok(Samples::from(out))
}

/// Downloads `/big` (256 MiB); returns MiB/s.
pub(crate) async fn stream(path: &Path2) -> Result<f64, String> {
    let mut conn = path.open(false).await?;
    let t = Instant::now();
    let n = path.get(&mut conn, "/big").await?;
    if n != BIG {
        return Err(format!("streamed {n} bytes, expected {BIG}"));
    }
    Ok(n as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

/// `rounds` × 100 concurrent GETs on one HTTP/2 connection: each request's latency.
pub(crate) async fn h2_streams(path: &Path2, rounds: usize) -> Result<Samples, String> {
    let conn = path.open(true).await?;
    let Conn::H2(send) = conn else {
        return Err("no HTTP/2".into());
    };
    let mut out = Vec::with_capacity(rounds * 100);
    for round in 0..=rounds {
        let mut tasks = Vec::with_capacity(100);
        for _ in 0..100 {
            let mut c = Conn::H2(send.clone());
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                path.get(&mut c, "/small").await.map(|_| t.elapsed())
            }));
        }
        for task in tasks {
            let d = task.await.map_err(|e| e.to_string())??;
            if round > 0 {
                out.push(d);
            }
        }
    }
    Ok(Samples::from(out))
}

/// Samples the RSS of `pid` every 20 ms while `f` runs; returns `f`'s result and the peak.
pub(crate) fn peak_rss_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(crate::setup::rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let out = f();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    (out, peak)
}
