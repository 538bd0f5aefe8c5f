//! How long a master's revocation takes to reach what an agent holds: from the start of
//! `agentkeys revoke AGENT` until the agent's `agentkeys run --proxy` child is gone *and* a
//! request through its daemon's egress proxy is refused. Each sample is a fresh agent: a
//! daemon paired with the master's approval, a run holding the proxied credential, and a
//! persistent proxy listener (`proxy-env`) with one request already served through it.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeys_testkit::{Bins, Daemon, TempDir};

use crate::proxy;
use crate::setup::{PROXIED, Stack};
use crate::stats::Samples;

/// What one run measured.
pub(crate) struct Revocation {
    /// `agentkeys revoke` started → the run child gone and a proxied request refused.
    pub(crate) total: Samples,
    /// `agentkeys revoke` started → the run child gone.
    pub(crate) child_gone: Samples,
    /// `agentkeys revoke` started → a proxied request refused.
    pub(crate) refused: Samples,
    /// `agentkeys revoke`, start to exit.
    pub(crate) command: Samples,
}

/// One paired agent: its daemon (stopped on drop) and its home.
struct Agent {
    daemon: Daemon,
    _home: TempDir,
    wallet: String,
}

/// Starts a daemon (in memory only: agents of its uid) and has the master approve its
/// pairing for the proxied credential.
fn pair(stack: &Stack, bins: &Bins, daemon_extra: &[String]) -> Agent {
    let home = TempDir::new("agentkeys-bench-revoke");
    let daemon = Daemon::command(bins, &stack.server.url, home.path())
        .args(daemon_extra)
        .spawn();
    let wallet = daemon.pair(&stack.master, &["--scope", PROXIED]);
    Agent {
        daemon,
        _home: home,
        wallet,
    }
}

/// Runs `n` revocations (after `warm` unmeasured ones), a fresh agent each.
pub(crate) fn measure(
    stack: &Stack,
    bins: &Bins,
    daemon_extra: &[String],
    rt: &tokio::runtime::Runtime,
    warm: usize,
    n: usize,
) -> Result<Revocation, String> {
    // The master's own copy, which every new agent falls back to (its scope names it).
    stack.master.store(
        PROXIED,
        &stack.value,
        &["--host", proxy::HOST, "--inject", "bearer"],
    );
    let (mut total, mut child_gone, mut refused, mut command) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..warm + n {
        let agent = pair(stack, bins, daemon_extra);
        // The run: a proxied command that would sleep five minutes.
        let mut run = Command::new(stack.cli())
            .args(["run", "--proxy", "--service", PROXIED, "--", "sh", "-c"])
            .arg("echo ready; exec sleep 300")
            .env("AGENTKEYS_SOCKET", agent.daemon.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut ready = String::new();
        BufReader::new(run.stdout.take().ok_or("no stdout")?)
            .read_line(&mut ready)
            .map_err(|e| e.to_string())?;
        if ready.trim() != "ready" {
            let _ = run.kill();
            return Err("the proxied run did not start".into());
        }
        // A persistent listener of the same daemon, with one request served through it.
        let path = proxy::Path2::Proxied(Arc::new(proxy::ProxyEnv::ask(
            stack.cli(),
            agent.daemon.socket(),
            PROXIED,
        )?));
        rt.block_on(async {
            let mut conn = path.open(false).await?;
            path.get(&mut conn, "/small").await.map(drop)
        })?;

        let started = Instant::now();
        let mut revoke = stack
            .master_cli(&["revoke", &agent.wallet])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        // Requests through the proxy, one after the other, until one is refused (a 403, or
        // the listener gone).
        let probe = {
            let path = path.clone();
            rt.spawn(async move {
                loop {
                    let answered = async {
                        let mut conn = path.open(false).await?;
                        path.get(&mut conn, "/small").await
                    }
                    .await;
                    if answered.is_err() {
                        return Instant::now();
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        return Instant::now();
                    }
                }
            })
        };
        let gone = {
            let status = run.wait().map_err(|e| e.to_string())?;
            let at = Instant::now();
            if status.success() {
                return Err("the run child exited by itself, not stopped".into());
            }
            at
        };
        let revoked = revoke.wait().map_err(|e| e.to_string())?;
        let command_done = Instant::now();
        if !revoked.success() {
            return Err(format!("agentkeys revoke {} failed", agent.wallet));
        }
        let refused_at = rt.block_on(probe).map_err(|e| e.to_string())?;
        if refused_at.duration_since(started) > Duration::from_secs(59) {
            return Err("a proxied request still succeeded a minute after the revocation".into());
        }
        if i >= warm {
            child_gone.push(gone.duration_since(started));
            refused.push(refused_at.duration_since(started));
            total.push(gone.max(refused_at).duration_since(started));
            command.push(command_done.duration_since(started));
        }
    }
    Ok(Revocation {
        total: total.into(),
        child_gone: child_gone.into(),
        refused: refused.into(),
        command: command.into(),
    })
}
