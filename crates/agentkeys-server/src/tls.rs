//! TLS in the server (`--tls-cert`, `--tls-key`): rustls with ring, HTTP/1.1, the
//! certificate and key reloaded on SIGHUP without dropping a connection.
//!
//! Each connection takes the configuration current when it is accepted, so a reload
//! changes what new connections are offered and leaves the open ones as they are. A
//! reload that fails (a half-written file, a key that does not match) keeps the previous
//! certificate and says why in the log.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::state::AppState;
use crate::store::Store;

/// The certificate chain and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("the certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads and checks the files: a server configuration offering HTTP/1.1, TLS 1.2 and 1.3.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(&files.cert, "holds no PEM certificate"));
    }
    let mode = std::fs::metadata(&files.key)
        .map_err(|e| file_error(&files.key, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(file = %files.key.display(), "the TLS key file is readable by group or others; chmod 600 it");
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API over TLS on an already-bound listener until `shutdown` resolves, then
/// stops as [`crate::serve`] does: no new connections, long-polls answered, requests in
/// flight finished. SIGHUP reloads the certificate and key.
pub async fn serve_tls<S: Store>(
    listener: tokio::net::TcpListener,
    state: Arc<AppState<S>>,
    files: TlsFiles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let initial = load(&files).map_err(std::io::Error::other)?;
    let current = Arc::new(RwLock::new(initial));
    let reloader = tokio::spawn(reload_on_sighup(files, current.clone()));
    let app = crate::http::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let config = current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        connections.spawn(connection(tcp, addr, config, app.clone(), stop_rx.clone()));
    }
    tracing::info!("stopping: answering long-polls, finishing requests in flight");
    state.stop();
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    reloader.abort();
    Ok(())
}

/// One connection: the handshake (10 s at most), then HTTP/1.1 until the client closes or
/// the server stops (after the request in flight).
async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    config: Arc<ServerConfig>,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // What axum's connect-info layer would add: the client address, for the
            // per-address limits.
            req.extensions_mut().insert(ConnectInfo(addr));
            let mut app = app.clone();
            tower_service::Service::call(&mut app, req.map(axum::body::Body::new))
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        // The guard wait_for returns is not Send: drop it before anything else awaits.
        let _ = stop.wait_for(|s| *s).await.map(drop);
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Reloads the files on every SIGHUP; keeps the previous configuration when they fail.
async fn reload_on_sighup(files: TlsFiles, current: Arc<RwLock<Arc<ServerConfig>>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match load(&files) {
            Ok(config) => {
                *current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded; new connections get it");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload failed; the previous certificate stays");
            }
        }
    }
}
