//! The system under test, built from the shared fixture with the release binaries: a real
//! server (SQLite in a temp dir, no read rate limit), a master enrolled through the CLI,
//! the credentials, and a daemon paired with the master's approval.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentkeys_testkit::{Bins, Daemon, Master, Server, TempDir};

/// The shipped binaries next to this one (same profile: `target/release`), built first
/// with cargo unless `no_build`.
pub(crate) fn locate_bins(no_build: bool) -> Result<Bins, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory")?.to_owned();
    if !no_build {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args([
            "build",
            "--quiet",
            "-p",
            "agentkeys-server",
            "-p",
            "agentkeys-cli",
        ]);
        cargo.args(["-p", "agentkeys-daemon"]);
        if release {
            cargo.arg("--release");
        }
        eprintln!(
            "bench: building the server, CLI and daemon ({})...",
            if release { "release" } else { "debug" }
        );
        let status = cargo
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("cargo build failed".into());
        }
    }
    for name in ["agentkeys-server", "agentkeys", "agentkeys-daemon"] {
        if !dir.join(name).exists() {
            return Err(format!(
                "{} is missing: run 'cargo build --release --workspace' or drop --no-build",
                dir.join(name).display()
            ));
        }
    }
    Ok(Bins::in_dir(&dir))
}

/// Everything started; the daemon stopped first on drop, then the server.
pub(crate) struct Stack {
    /// The paired daemon.
    pub(crate) daemon: Daemon,
    /// The server.
    pub(crate) server: Server,
    /// The enrolled master (its CLI home).
    pub(crate) master: Master,
    /// The daemon's home.
    _daemon_home: TempDir,
    /// The credential value (a random canary, same for every service).
    pub(crate) value: String,
    /// The CLI binary (looked up once: timed loops start it).
    cli: PathBuf,
}

/// `openai` is never cached; `cached` is cached with a long idle TTL.
pub(crate) const UNCACHED: &str = "openai";
/// The cached service.
pub(crate) const CACHED: &str = "cached";
/// The service bound to the proxy benchmark's upstream.
pub(crate) const PROXIED: &str = "proxied";

impl Stack {
    /// Starts and pairs everything (the fixture panics, naming the step, when one fails).
    /// `daemon_extra` goes to `agentkeys-daemon serve`; `proxied_host` is the host the
    /// `proxied` credential is bound to.
    pub(crate) fn start(bins: &Bins, daemon_extra: &[String], proxied_host: &str) -> Stack {
        let server = bins.server(&["--read-rate", "0", "--pair-ttl", "60s"]);
        let master = Master::enrolled(&server, "bench-master");
        let daemon_home = TempDir::new("agentkeys-bench-daemon");
        let value = agentkeys_testkit::canary("bench");
        let daemon = Daemon::command(bins, &server.url, daemon_home.path())
            .args(&["--cache".to_owned(), format!("{CACHED}=3600s")])
            .args(daemon_extra)
            .spawn();
        let wallet = daemon.pair(
            &master,
            &["--scope", &format!("{UNCACHED},{CACHED},{PROXIED}")],
        );
        for service in [UNCACHED, CACHED] {
            master.store(service, &value, &["--agent", &wallet]);
        }
        // The master's own copy, for `agentkeys read` in a new process per fetch.
        master.store(UNCACHED, &value, &[]);
        master.store(
            PROXIED,
            &value,
            &[
                "--agent",
                &wallet,
                "--host",
                proxied_host,
                "--inject",
                "bearer",
            ],
        );
        Stack {
            daemon,
            server,
            master,
            _daemon_home: daemon_home,
            value,
            cli: bins.path("agentkeys"),
        }
    }

    /// The CLI binary.
    pub(crate) fn cli(&self) -> &Path {
        &self.cli
    }

    /// `agentkeys ARGS` as the enrolled master (its home, the server, the file session store).
    pub(crate) fn master_cli(&self, args: &[&str]) -> Command {
        let mut c = self.master.command();
        c.args(args);
        c
    }

    /// The daemon socket.
    pub(crate) fn socket(&self) -> &Path {
        self.daemon.socket()
    }
}

/// `VmRSS` of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
