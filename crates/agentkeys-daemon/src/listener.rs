//! The daemon socket (decision 74): the path, a private directory, stale sockets
//! handled safely, and every connection's `SO_PEERCRED` uid checked before a byte is read
//! (fail closed, audited with pid/uid/exe).
//!
//! Connections are shared fairly: at most [`MAX_CONNECTIONS`] at once and
//! [`MAX_PER_PEER`] per peer process; when the daemon is full, a peer holding fewer
//! connections than the greediest one takes one of that peer's (one that never spoke first),
//! and a connection that sends no complete line within [`FIRST_LINE_WITHIN`] is dropped. One
//! local process opening thousands of half-open connections therefore cannot lock the
//! other agents out.

use std::io;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rmcp::ServiceExt as _;
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::{Conn, Daemon};
use crate::proxy::persistent::Persistent;
use crate::service::Mcp;
use crate::trail::{Event, Peer};
use crate::transport::LineTransport;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one peer process may hold at once.
pub const MAX_PER_PEER: usize = 64;
/// A connection that sends no complete line within this is dropped.
pub const FIRST_LINE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

pub use agentkeys_core::paths::default_socket;

/// Binds the socket: a stale socket file from a dead daemon removed, a live one refused.
/// Served to the daemon's uid only, the directory is 0700 and the socket 0600. `shared`
/// (other uids allowed, the recommended deployment): the directory is 0711 (others may
/// reach the socket but not list the directory) and the socket 0666, so an agent of another
/// uid can connect; every connection's uid is then checked before a byte is read. With a
/// `group`, both belong to it and are 0710 / 0660: only its members reach the socket.
pub async fn bind(path: &Path, shared: bool, group: Option<u32>) -> io::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (dir_mode, socket_mode) = match (group, shared) {
        (Some(_), _) => (0o710, 0o660),
        (None, true) => (0o711, 0o666),
        (None, false) => (0o700, 0o600),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(dir_mode)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let own_dir = meta.uid() == rustix::process::geteuid().as_raw();
    if own_dir && let Some(gid) = group {
        rustix::fs::chown(dir, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    if own_dir && meta.permissions().mode() & 0o777 != dir_mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
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
    if let Some(gid) = group {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))?;
    Ok(listener)
}

/// A group's id: a number as is, a name looked up in `/etc/group` (give the number for a
/// group only NSS knows, LDAP say).
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let table = std::fs::read_to_string("/etc/group")?;
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no such group in /etc/group (create it, or give its gid)",
            )
        })
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

/// The connections being served, for the fair-share rules.
#[derive(Default)]
struct Table {
    live: std::collections::HashMap<u64, Slot>,
}

/// One served connection.
struct Slot {
    pid: i32,
    accepted: std::time::Instant,
    conn: Arc<Conn>,
    drop_it: Arc<tokio::sync::Notify>,
}

impl Table {
    fn held_by(&self, pid: i32) -> usize {
        self.live.values().filter(|s| s.pid == pid).count()
    }

    /// Whether `pid` may have one more connection, evicting another peer's if the daemon is
    /// full and that peer holds more than `pid` does. `Err` says why not.
    fn admit(&mut self, pid: i32) -> Result<(), String> {
        let mine = self.held_by(pid);
        if mine >= MAX_PER_PEER {
            return Err(format!(
                "more than {MAX_PER_PEER} connections from one process"
            ));
        }
        if self.live.len() < MAX_CONNECTIONS {
            return Ok(());
        }
        let mut counts: std::collections::HashMap<i32, usize> = std::collections::HashMap::new();
        for s in self.live.values() {
            *counts.entry(s.pid).or_default() += 1;
        }
        let Some((&greedy, &most)) = counts.iter().max_by_key(|(_, n)| **n) else {
            return Err("no connection to share".into());
        };
        if most <= mine + 1 {
            return Err(format!("more than {MAX_CONNECTIONS} connections"));
        }
        // The greediest peer's connection that never spoke (else its oldest) makes room.
        let victim = self
            .live
            .iter()
            .filter(|(_, s)| s.pid == greedy)
            .min_by_key(|(_, s)| (s.conn.spoke.load(Ordering::Relaxed), s.accepted))
            .map(|(id, _)| *id);
        if let Some(slot) = victim.and_then(|id| self.live.remove(&id)) {
            slot.drop_it.notify_one();
        }
        Ok(())
    }
}

/// Accepts connections until `shutdown` resolves; each allowed one gets its own MCP
/// handler over a [`LineTransport`].
pub async fn serve(
    listener: &UnixListener,
    daemon: Arc<Daemon>,
    proxies: Arc<Persistent>,
    allowed_uids: Vec<u32>,
    shutdown: impl Future<Output = ()>,
) {
    let table = Arc::new(std::sync::Mutex::new(Table::default()));
    let own_uid = rustix::process::geteuid().as_raw();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // EMFILE and friends: let a connection end before trying again.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
        let admitted = table
            .lock()
            .map_err(|_| "connection table poisoned".to_owned())
            .and_then(|mut t| t.admit(peer.pid));
        if let Err(why) = admitted {
            daemon.counters.refused.fetch_add(1, Ordering::Relaxed);
            daemon.refused_connection(&peer, &why);
            continue;
        }
        daemon.counters.connections.fetch_add(1, Ordering::Relaxed);
        daemon.audit(Event {
            event: "connect".into(),
            agent: Some(daemon.session().wallet.to_string()),
            peer: Some(peer.clone()),
            ..Default::default()
        });
        let gid = stream.peer_cred().map(|c| c.gid()).unwrap_or(u32::MAX);
        let conn = Arc::new(Conn::new(peer, gid));
        let drop_it = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut t) = table.lock() {
            t.live.insert(
                conn.id,
                Slot {
                    pid: conn.peer.pid,
                    accepted: std::time::Instant::now(),
                    conn: conn.clone(),
                    drop_it: drop_it.clone(),
                },
            );
        }
        let daemon = daemon.clone();
        let proxies = proxies.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let transport =
                LineTransport::new(read, write, daemon.clone(), conn.clone(), proxies.clone());
            let session = async {
                match Mcp::new(daemon.clone(), conn.clone(), proxies)
                    .serve(transport)
                    .await
                {
                    Ok(running) => {
                        let _ = running.waiting().await;
                    }
                    Err(e) => tracing::debug!(error = %e, "MCP session ended before it began"),
                }
            };
            let silent = async {
                tokio::time::sleep(FIRST_LINE_WITHIN).await;
                if conn.spoke.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = session => {}
                () = drop_it.notified() => {}
                () = silent => {}
            }
            daemon.forget(&conn);
            if let Ok(mut t) = table.lock() {
                t.live.remove(&conn.id);
            }
        });
    }
}
