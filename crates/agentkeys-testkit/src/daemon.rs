//! The daemon: `agentkeys-daemon serve` in its own home with its own socket (under a wrapper
//! such as `setpriv` when a test needs another uid), its stderr read on a thread until it
//! exits, and pairing through the real flow: its code read, approved by the master's
//! `agentkeys approve`, then waited for until it serves.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bins::Bins;
use crate::master::{Master, text};
use crate::mcp::Client;
use crate::server::Server;

/// How `agentkeys-daemon serve` is to be started: [`Daemon::command`], then
/// [`DaemonCommand::spawn`].
pub struct DaemonCommand {
    daemon: PathBuf,
    server: String,
    home: PathBuf,
    socket: PathBuf,
    wrapper: Vec<String>,
    args: Vec<String>,
}

impl DaemonCommand {
    /// Runs it through `wrapper` (`setpriv …`, `strace -f …`).
    pub fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Extra `serve` flags.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// The socket, when not `HOME/sock/daemon.sock` (a socket the test passes itself with
    /// `--socket` is named here too, so [`Daemon::client`] finds it).
    pub fn socket(mut self, socket: &Path) -> Self {
        self.socket = socket.to_owned();
        self
    }

    /// Starts it; its stderr is read on a thread until it exits.
    pub fn spawn(self) -> Daemon {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                // A group of its own, so the drop stops the daemon too: killing a tracer
                // (strace) leaves its tracee running.
                c.args(args).arg(&self.daemon).process_group(0);
                c
            }
            None => Command::new(&self.daemon),
        };
        let mut child = cmd
            .arg("serve")
            .args(["--server", &self.server])
            .args(&self.args)
            .env("AGENTKEYS_HOME", &self.home)
            .env("AGENTKEYS_SOCKET", &self.socket)
            .env("AGENTKEYS_SESSION_STORE", "file")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agentkeys-daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        Daemon {
            child,
            socket: self.socket,
            home: self.home,
            lines: rx,
            log,
        }
    }
}

/// A running `agentkeys-daemon serve`; SIGKILLed on drop (its process group too, when a
/// wrapper started it) unless stopped.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    home: PathBuf,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// `serve` against the server at `server_url`, with `home` as its `AGENTKEYS_HOME` and
    /// a socket inside it.
    pub fn command(bins: &Bins, server_url: &str, home: &Path) -> DaemonCommand {
        DaemonCommand {
            daemon: bins.path("agentkeys-daemon"),
            server: server_url.to_owned(),
            home: home.to_owned(),
            socket: home.join("sock").join("daemon.sock"),
            wrapper: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts `serve` against `server` in `home` with `extra` flags.
    pub fn spawn(server: &Server, home: &Path, extra: &[&str]) -> Daemon {
        Self::command(server.bins(), &server.url, home)
            .args(extra)
            .spawn()
    }

    /// Waits for a stderr line containing `needle` (a minute at most).
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "the daemon never printed {needle:?}; its log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Everything it printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The next pair (or recover) code and its OTP.
    pub fn code(&self) -> (String, String) {
        let line = self.wait_for(" code ");
        let code = after(&line, " code ", 9);
        let otp = after(&line, ", OTP ", 6);
        (code, otp)
    }

    /// Waits until it serves; returns the agent wallet.
    pub fn serving(&self) -> String {
        after(&self.wait_for("serving agent"), "serving agent ", 42)
    }

    /// Has `master` approve the code it shows with `approve_args` (e.g. `--scope openai`);
    /// returns the wallet it then serves.
    pub fn pair(&self, master: &Master, approve_args: &[&str]) -> String {
        let (code, _) = self.code();
        let out = master.approve(&code, approve_args);
        assert!(out.status.success(), "{}", text(&out));
        self.serving()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process, for a test that waits on it or reads its exit status.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().expect("wait for the daemon")
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// A line client on its socket.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Its audit trail.
    pub fn trail(&self) -> PathBuf {
        self.home.join("daemon-audit.jsonl")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32)
            && rustix::process::getpgid(Some(group)).ok() == Some(group)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `len` characters after `marker` in `line`.
fn after(line: &str, marker: &str, len: usize) -> String {
    let rest = line
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"));
    rest.chars().take(len).collect()
}

/// A daemon paired under `master` with `approve_args` (e.g. `--scope openai`).
pub fn paired(master: &Master, home: &Path, approve_args: &[&str]) -> (Daemon, String) {
    paired_with(master, home, approve_args, &[])
}

/// [`paired`], with extra `serve` flags (e.g. `--cache openai=2s`).
pub fn paired_with(
    master: &Master,
    home: &Path,
    approve_args: &[&str],
    serve_args: &[&str],
) -> (Daemon, String) {
    let d = Daemon::command(master.bins(), master.server(), home)
        .args(serve_args)
        .spawn();
    let wallet = d.pair(master, approve_args);
    (d, wallet)
}

/// Writes `toml` to `daemon.toml` in `home` and returns the path, for `--config`.
pub fn write_config(home: &Path, toml: &str) -> PathBuf {
    let file = home.join("daemon.toml");
    std::fs::write(&file, toml).expect("write daemon.toml");
    file
}

/// [`paired_with`], with `toml` as the daemon's configuration file.
pub fn paired_configured(
    master: &Master,
    home: &Path,
    approve_args: &[&str],
    toml: &str,
    serve_args: &[&str],
) -> (Daemon, String) {
    let config = write_config(home, toml);
    let config = config.display().to_string();
    let mut args = vec!["--config", &config];
    args.extend_from_slice(serve_args);
    paired_with(master, home, approve_args, &args)
}

#[cfg(test)]
mod tests {
    use super::after;

    #[test]
    fn the_code_and_otp_are_read_from_the_daemon_line() {
        let line = "pairing code ABCD-EFGH, OTP 123456 — approve with: agentkeys approve ABCD-EFGH";
        assert_eq!(after(line, " code ", 9), "ABCD-EFGH");
        assert_eq!(after(line, ", OTP ", 6), "123456");
    }
}
