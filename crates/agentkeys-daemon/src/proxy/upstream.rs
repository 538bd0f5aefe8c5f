//! Reaching the upstream: the name resolved once (or taken from `--proxy-resolve`), that
//! address dialed, addresses in loopback, private, link-local, shared or metadata ranges
//! refused unless the binding (or the operator's `--proxy-resolve`) allows them, and TLS
//! verified against the system roots (plus `--proxy-upstream-ca`).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::ProxyConfig;

/// Why an upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The name did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// It resolved to an address the binding does not allow.
    #[error("{host} resolves to {addr}, a loopback, private, link-local or metadata address")]
    Private {
        /// The name.
        host: String,
        /// What it resolved to.
        addr: IpAddr,
    },
    /// Connecting or the TLS handshake failed.
    #[error("cannot reach {0}")]
    Connect(String),
}

/// Whether `ip` is somewhere an agent's credential must not be sent by default: loopback,
/// private (RFC 1918, ULA), link-local (and so the 169.254.169.254 metadata service),
/// shared (100.64/10), unspecified, multicast, broadcast, documentation and benchmarking
/// ranges; an IPv4-mapped IPv6 address is judged as its IPv4 address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64, maps IPv4 inside
}

/// Where to dial `host:port`: the `--proxy-resolve` entry, else the first address DNS
/// gives, refused if internal and `allow_internal` is false. The answer is the address
/// dialed: nothing resolves the name again.
pub async fn resolve(
    config: &ProxyConfig,
    host: &str,
    port: u16,
    allow_internal: bool,
) -> Result<SocketAddr, UpstreamError> {
    if let Some(addr) = config.resolve_override(host, port) {
        return Ok(addr);
    }
    let addr = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| UpstreamError::Resolve(host.to_owned()))?;
    if !allow_internal && is_internal(addr.ip()) {
        return Err(UpstreamError::Private {
            host: host.to_owned(),
            addr: addr.ip(),
        });
    }
    Ok(addr)
}

/// TCP to `addr`.
pub async fn dial(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TLS to `host` over `tcp`, verified against the upstream roots; offering HTTP/2 (ALPN
/// `h2`, then `http/1.1`) unless `h1_only`.
pub async fn tls(
    config: &ProxyConfig,
    host: &str,
    tcp: TcpStream,
    h1_only: bool,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| UpstreamError::Connect(format!("{host}: not a TLS server name")))?;
    TlsConnector::from(client_config(config, h1_only))
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Connect(format!("{host}: TLS: {e}")))
}

static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
static CLIENT_H1: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// The upstream TLS configuration: the system roots plus `--proxy-upstream-ca`, built once
/// per ALPN offer.
fn client_config(config: &ProxyConfig, h1_only: bool) -> Arc<ClientConfig> {
    let cell = if h1_only { &CLIENT_H1 } else { &CLIENT };
    cell.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
        let extra: Vec<CertificateDer<'static>> = config.upstream_ca.clone();
        let _ = roots.add_parsable_certificates(extra);
        let mut c = ClientConfig::builder_with_provider(super::tls::tls_provider())
            .with_safe_default_protocol_versions()
            .expect("invariant: ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = if h1_only {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Arc::new(c)
    })
    .clone()
}

/// A connection to an upstream: TLS, or plain TCP for `http://`.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

/// How long connecting to an upstream (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The pooled client's connector: `--proxy-resolve` or one DNS answer, internal addresses
/// refused unless `allow_internal` says the host may have them, then TLS (`https`).
#[derive(Clone)]
pub struct Connector {
    /// The proxy settings.
    pub config: Arc<ProxyConfig>,
    /// Whether a host may resolve to an internal address (a binding's `allow_private`).
    pub allow_internal: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Offer only HTTP/1.1 (connections for upgrades).
    pub h1_only: bool,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| UpstreamError::Connect("no host in the URI".into()))?
                .to_ascii_lowercase();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let connect = async {
                let addr = resolve(&this.config, &host, port, (this.allow_internal)(&host)).await?;
                let tcp = dial(addr).await?;
                if https {
                    let tls = tls(&this.config, &host, tcp, this.h1_only).await?;
                    Ok(Stream::Tls(Box::new(tls)))
                } else {
                    Ok(Stream::Plain(tcp))
                }
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| UpstreamError::Connect(format!("{host}:{port}: timed out")))??;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "104.18.6.192", "2606:4700::6812:6c0"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
