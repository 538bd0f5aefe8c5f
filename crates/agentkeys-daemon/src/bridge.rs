//! `agentkeys-daemon mcp`: a stdio ↔ socket bridge for MCP clients that spawn a command.
//! It holds no session and no key; bytes pass through in both directions.

use std::path::Path;

use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;

use crate::error::DaemonError;

/// Copies stdin to the socket and the socket to stdout until either side ends.
pub async fn run(socket: &Path) -> Result<(), DaemonError> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        DaemonError::new(
            "UNREACHABLE",
            6,
            format!("cannot connect to the daemon at {}: {e}", socket.display()),
        )
        .hint("start it with 'agentkeys-daemon serve --server URL', or set AGENTKEYS_SOCKET")
    })?;
    let (mut from_daemon, mut to_daemon) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let upstream = async {
        let r = tokio::io::copy(&mut stdin, &mut to_daemon).await;
        let _ = to_daemon.shutdown().await;
        r
    };
    let downstream = async {
        let r = tokio::io::copy(&mut from_daemon, &mut stdout).await;
        let _ = stdout.flush().await;
        r
    };
    // The session ends when the daemon closes (after the client's stdin closed, it
    // finishes the answers in flight first).
    let (_, down) = tokio::join!(upstream, downstream);
    down.map(|_| ())
        .map_err(|e| DaemonError::new("IO", 1, e.to_string()))
}
