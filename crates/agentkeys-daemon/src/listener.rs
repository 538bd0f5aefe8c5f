//! The daemon socket (DESIGN decision 7): the path, a private directory, stale sockets
//! handled safely, and every connection's `SO_PEERCRED` uid checked before a byte is read
//! (fail closed, audited with pid/uid/exe).

use std::io;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rmcp::ServiceExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::daemon::{Conn, Daemon};
use crate::service::Mcp;
use crate::trail::{Event, Peer};
use crate::transport::LineTransport;

/// Connections served at once; more are refused until one ends.
pub const MAX_CONNECTIONS: usize = 64;

pub use agentkeys_core::paths::default_socket;

/// Binds the socket: parent directory 0700 (created if missing), a stale socket file from
/// a dead daemon removed, a live one refused, the socket itself 0600.
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() == rustix::process::geteuid().as_raw() && meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another daemon answers on {}; stop it or pass --socket",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The peer of a connection.
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().unwrap_or(0);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    Ok(Peer {
        pid,
        uid: cred.uid(),
        exe,
    })
}

/// Accepts connections until `shutdown` resolves; each allowed one gets its own MCP
/// handler over a [`LineTransport`].
pub async fn serve(
    listener: &UnixListener,
    daemon: Arc<Daemon>,
    allowed_uids: Vec<u32>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let own_uid = rustix::process::geteuid().as_raw();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials; connection dropped");
                continue;
            }
        };
        if peer.uid != own_uid && !allowed_uids.contains(&peer.uid) {
            daemon.counters.refused.fetch_add(1, Ordering::Relaxed);
            daemon.audit(Event {
                event: "deny".into(),
                peer: Some(peer),
                detail: Some("connection from a uid that is not allowed".into()),
                ..Default::default()
            });
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            daemon.counters.refused.fetch_add(1, Ordering::Relaxed);
            daemon.audit(Event {
                event: "deny".into(),
                peer: Some(peer),
                detail: Some(format!("more than {MAX_CONNECTIONS} connections")),
                ..Default::default()
            });
            continue;
        };
        daemon.counters.connections.fetch_add(1, Ordering::Relaxed);
        daemon.audit(Event {
            event: "connect".into(),
            agent: Some(daemon.session().wallet.to_string()),
            peer: Some(peer.clone()),
            ..Default::default()
        });
        let gid = stream.peer_cred().map(|c| c.gid()).unwrap_or(u32::MAX);
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let conn = Arc::new(Conn::new(peer, gid));
            let (read, write) = stream.into_split();
            let transport = LineTransport::new(read, write, daemon.clone(), conn.clone());
            match Mcp::new(daemon.clone(), conn.clone())
                .serve(transport)
                .await
            {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => tracing::debug!(error = %e, "MCP session ended before it began"),
            }
            daemon.forget(&conn);
            drop(permit);
        });
    }
}
