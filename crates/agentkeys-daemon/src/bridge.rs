//! `agentkeys-daemon mcp`: a stdio ↔ socket bridge for MCP clients that spawn a command.
//! It holds no session and no key; bytes pass through in both directions.
//!
//! An answer can carry a credential (inline delivery), so the daemon → client direction
//! reads into one fixed buffer, writes it to stdout with plain `write(2)` calls (no stdio
//! buffer keeps a copy) and zeroes what it read before the next read: no copy of a
//! delivered credential outlives its write.

use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::path::Path;

use zeroize::Zeroize as _;

use crate::error::DaemonError;

/// Bytes moved per read.
const CHUNK: usize = 16 * 1024;

/// Copies stdin to the socket and the socket to stdout until either side ends.
pub async fn run(socket: &Path) -> Result<(), DaemonError> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        DaemonError::new(
            "UNREACHABLE",
            6,
            format!("cannot connect to the daemon at {}: {e}", socket.display()),
        )
        .hint("start it with 'agentkeys-daemon serve --server URL', or set AGENTKEYS_SOCKET")
    })?;
    let to_daemon = stream.try_clone()?;
    // Client → daemon: requests, no secrets. A thread of its own, so a client that keeps
    // stdin open does not hold up the end of the session.
    std::thread::spawn(move || {
        let _ = pump(io::stdin().as_fd(), &to_daemon, false);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    // Daemon → client: the session ends when the daemon closes (after the client's stdin
    // closed, it finishes the answers in flight first).
    tokio::task::spawn_blocking(move || pump(stream.as_fd(), &io::stdout(), true))
        .await
        .map_err(|e| DaemonError::new("IO", 1, e.to_string()))?
        .map_err(|e| DaemonError::new("IO", 1, e.to_string()))
}

/// Moves bytes from `from` to `to` until end of file; with `wipe`, each chunk is zeroed
/// as soon as it is written.
fn pump(
    from: std::os::fd::BorrowedFd<'_>,
    to: &impl std::os::fd::AsFd,
    wipe: bool,
) -> io::Result<()> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let n = match rustix::io::read(from, &mut buf[..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut written = 0;
        let result: io::Result<()> = loop {
            if written == n {
                break Ok(());
            }
            match rustix::io::write(to.as_fd(), &buf[written..n]) {
                Ok(k) => written += k,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => break Err(e.into()),
            }
        };
        if wipe {
            buf[..n].zeroize();
        }
        result?;
    }
}
