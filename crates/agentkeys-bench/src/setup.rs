//! The system under test: a real server (SQLite in a temp dir, no read rate limit), a master
//! enrolled through the CLI, two credentials, and a daemon paired with the master's approval.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use agentkeys_testkit::{Server, TempDir};

/// The binaries next to this one (same profile), built first unless `no_build`.
pub(crate) struct Bins {
    /// Their directory (`target/release`).
    pub(crate) dir: PathBuf,
}

impl Bins {
    /// Finds (and builds, with cargo, unless told not to) the shipped binaries.
    pub(crate) fn locate(no_build: bool) -> Result<Bins, String> {
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
        Ok(Bins { dir })
    }

    /// A binary's path.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Starts `agentkeys-daemon serve` against `server` (in `home`, on `socket`, with `extra`),
/// has `approve` decide the pair code it shows, and waits until it serves: the daemon and
/// the agent's wallet. Its stderr is read on a thread of its own until it exits.
pub(crate) fn pair_daemon(
    bins: &Bins,
    server: &str,
    socket: &Path,
    home: &Path,
    extra: &[String],
    approve: impl FnOnce(&str) -> Result<(), String>,
) -> Result<(Child, String), String> {
    let mut daemon = Command::new(bins.path("agentkeys-daemon"))
        .args(["serve", "--server", server])
        .args(extra)
        .env("AGENTKEYS_HOME", home)
        .env("AGENTKEYS_SOCKET", socket)
        .env("AGENTKEYS_SESSION_STORE", "file")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = daemon.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> Result<String, String> {
        let mut seen = Vec::new();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
                format!(
                    "the daemon never printed {needle:?}; it said: {}",
                    seen.join(" | ")
                )
            })?;
            if line.contains(needle) {
                return Ok(line);
            }
            seen.push(line);
        }
    };
    let line = wait_for(" code ")?;
    let code: String = line
        .split(" code ")
        .nth(1)
        .ok_or("no pair code")?
        .chars()
        .take(9)
        .collect();
    approve(&code)?;
    let serving = wait_for("serving agent")?;
    let wallet: String = serving
        .split("serving agent ")
        .nth(1)
        .ok_or("no wallet")?
        .chars()
        .take(42)
        .collect();
    Ok((daemon, wallet))
}

/// Everything started; stopped on drop.
pub(crate) struct Stack {
    /// The server.
    pub(crate) server: Server,
    /// The master's CLI home.
    pub(crate) master_home: TempDir,
    /// The daemon's home.
    pub(crate) daemon_home: TempDir,
    /// The daemon socket.
    pub(crate) socket: PathBuf,
    /// The daemon process.
    pub(crate) daemon: Child,
    /// The credential value (a random canary, same for both services).
    pub(crate) value: String,
    cli: PathBuf,
}

/// `openai` is never cached; `cached` is cached with a long idle TTL.
pub(crate) const UNCACHED: &str = "openai";
/// The cached service.
pub(crate) const CACHED: &str = "cached";
/// The service bound to the proxy benchmark's upstream.
pub(crate) const PROXIED: &str = "proxied";

impl Stack {
    /// Starts and pairs everything.
    /// `daemon_extra` goes to `agentkeys-daemon serve`; `proxied_host` is the host the
    /// `proxied` credential is bound to.
    pub(crate) fn start(
        bins: &Bins,
        daemon_extra: &[String],
        proxied_host: &str,
    ) -> Result<Stack, String> {
        let server = Server::start(
            &bins.path("agentkeys-server"),
            &["--read-rate", "0", "--pair-ttl", "60s"],
        );
        let master_home = TempDir::new("agentkeys-bench-master");
        let daemon_home = TempDir::new("agentkeys-bench-daemon");
        let socket = daemon_home.path().join("daemon.sock");
        let cli = bins.path("agentkeys");
        let value = agentkeys_testkit::canary("bench");
        let stack_cli = |args: &[&str], stdin: Option<&str>| -> Result<String, String> {
            let mut child = Command::new(&cli)
                .args(args)
                .env("AGENTKEYS_HOME", master_home.path())
                .env("AGENTKEYS_SERVER", &server.url)
                .env("AGENTKEYS_SESSION_STORE", "file")
                .env("AGENTKEYS_AUTH_TOKEN", "bench-master")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            if let Some(input) = stdin {
                let _ = child
                    .stdin
                    .take()
                    .map(|mut s| s.write_all(input.as_bytes()));
            }
            drop(child.stdin.take());
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "agentkeys {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        stack_cli(&["init"], None)?;

        let mut serve = vec!["--cache".to_owned(), format!("{CACHED}=3600s")];
        serve.extend_from_slice(daemon_extra);
        let (daemon, wallet) = pair_daemon(
            bins,
            &server.url,
            &socket,
            daemon_home.path(),
            &serve,
            |code| {
                stack_cli(
                    &[
                        "approve",
                        code,
                        "--scope",
                        &format!("{UNCACHED},{CACHED},{PROXIED}"),
                        "--yes",
                    ],
                    None,
                )
                .map(drop)
            },
        )?;
        for service in [UNCACHED, CACHED] {
            stack_cli(&["store", service, "--agent", &wallet], Some(&value))?;
        }
        // The master's own copy, for `agentkeys read` in a new process per fetch.
        stack_cli(&["store", UNCACHED], Some(&value))?;
        stack_cli(
            &[
                "store",
                PROXIED,
                "--agent",
                &wallet,
                "--host",
                proxied_host,
                "--inject",
                "bearer",
            ],
            Some(&value),
        )?;
        Ok(Stack {
            server,
            master_home,
            daemon_home,
            socket,
            daemon,
            value,
            cli,
        })
    }

    /// The CLI binary.
    pub(crate) fn cli(&self) -> &Path {
        &self.cli
    }

    /// `agentkeys ARGS` as the enrolled master (its home, the server, the file session store).
    pub(crate) fn master_cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.cli);
        c.args(args)
            .env("AGENTKEYS_HOME", self.master_home.path())
            .env("AGENTKEYS_SERVER", &self.server.url)
            .env("AGENTKEYS_SESSION_STORE", "file");
        c
    }

    /// `agentkeys store ARGS` as the master, the value on stdin.
    pub(crate) fn master_store(&self, args: &[&str], value: &str) -> Result<(), String> {
        let mut store = self
            .master_cli(&[&["store"], args].concat())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let _ = store
            .stdin
            .take()
            .map(|mut s| s.write_all(value.as_bytes()));
        if !store.wait().map_err(|e| e.to_string())?.success() {
            return Err(format!("agentkeys store {} failed", args.join(" ")));
        }
        Ok(())
    }

    /// The daemon's audit trail.
    pub(crate) fn trail(&self) -> PathBuf {
        self.daemon_home.path().join("daemon-audit.jsonl")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
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
