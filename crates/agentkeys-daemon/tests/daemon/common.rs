//! Fixtures: the real server, the real `agentkeys` CLI as the master, the real daemon in
//! its own home with its own socket, and a line-based JSON-RPC client for the socket.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_testkit::{Server, TempDir, workspace_bin};
use serde_json::{Value, json};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_agentkeys-daemon");

pub fn cli_bin() -> PathBuf {
    workspace_bin(DAEMON, "agentkeys")
}

/// A server, with extra flags (e.g. `--pair-ttl 2s`).
pub fn start_server(extra: &[&str]) -> Server {
    Server::start(&workspace_bin(DAEMON, "agentkeys-server"), extra)
}

/// The master: an `agentkeys` CLI home bound to the server.
pub struct Master {
    pub home: TempDir,
    pub server: String,
}

impl Master {
    pub fn new(server: &Server) -> Master {
        Self::enrolled(server, "master-enrol")
    }

    /// A master enrolled with `token` (each token is its own master account).
    pub fn enrolled(server: &Server, token: &str) -> Master {
        let m = Master {
            home: TempDir::new("agentkeys-test-master"),
            server: server.url.clone(),
        };
        let out = m.cli_with_env(&["init"], &[("AGENTKEYS_AUTH_TOKEN", token)]);
        assert!(out.status.success(), "{}", text(&out));
        m
    }

    /// This master's wallet.
    pub fn wallet(&self) -> String {
        let out = self.cli(&["whoami", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["wallet"].as_str().unwrap().to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(cli_bin());
        c.args(args)
            .env("AGENTKEYS_HOME", self.home.path())
            .env("AGENTKEYS_SERVER", &self.server)
            .env("AGENTKEYS_SESSION_STORE", "file")
            .env_remove("AGENTKEYS_AUTH_TOKEN")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// `agentkeys approve CODE --yes ARGS…`.
    pub fn approve(&self, code: &str, args: &[&str]) -> Output {
        let mut all = vec!["approve", code, "--yes"];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// Stores `value` (from stdin) under `service` with extra flags.
    pub fn store(&self, service: &str, value: &str, extra: &[&str]) {
        let mut c = Command::new(cli_bin());
        let mut child = c
            .arg("store")
            .arg(service)
            .args(extra)
            .env("AGENTKEYS_HOME", self.home.path())
            .env("AGENTKEYS_SERVER", &self.server)
            .env("AGENTKEYS_SESSION_STORE", "file")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `agentkeys-daemon serve`; SIGKILLed on drop unless stopped.
pub struct DaemonProc {
    pub child: Child,
    pub socket: PathBuf,
    pub home: PathBuf,
    lines: Receiver<String>,
    pub log: Arc<Mutex<String>>,
}

impl DaemonProc {
    /// Starts `serve` with `home` and a socket inside it.
    pub fn spawn(server: &str, home: &Path, extra: &[&str]) -> DaemonProc {
        Self::spawn_under(&[], server, home, extra)
    }

    /// [`spawn`](Self::spawn) through a wrapper command (`setpriv …`, `strace -f …`).
    pub fn spawn_under(wrapper: &[&str], server: &str, home: &Path, extra: &[&str]) -> DaemonProc {
        let socket = home.join("sock").join("daemon.sock");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                // A group of its own, so the drop stops the daemon too: killing a tracer
                // (strace) leaves its tracee running.
                c.args(args).arg(DAEMON).process_group(0);
                c
            }
            None => Command::new(DAEMON),
        };
        let mut child = cmd
            .arg("serve")
            .args(["--server", server])
            .args(extra)
            .env("AGENTKEYS_HOME", home)
            .env("AGENTKEYS_SOCKET", &socket)
            .env("AGENTKEYS_SESSION_STORE", "file")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        DaemonProc {
            child,
            socket,
            home: home.to_owned(),
            lines: rx,
            log,
        }
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "the daemon never printed {needle:?}; its log:\n{}",
                    self.log.lock().unwrap()
                ),
            }
        }
    }

    /// The next pair (or recover) code and its OTP.
    pub fn code(&self) -> (String, String) {
        let line = self.wait_for(" code ");
        let code = line.split(" code ").nth(1).unwrap()[..9].to_owned();
        let otp = line.split(", OTP ").nth(1).unwrap()[..6].to_owned();
        (code, otp)
    }

    /// Waits until it serves; returns the agent wallet.
    pub fn serving(&self) -> String {
        let line = self.wait_for("serving agent");
        line.split("serving agent ").nth(1).unwrap()[..42].to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().unwrap()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn trail(&self) -> PathBuf {
        self.home.join("daemon-audit.jsonl")
    }
}

impl Drop for DaemonProc {
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

/// A daemon paired under `master` with `approve_args` (e.g. `--scope openai`).
pub fn paired(master: &Master, home: &Path, approve_args: &[&str]) -> (DaemonProc, String) {
    paired_with(master, home, approve_args, &[])
}

/// [`paired`], with extra `serve` flags (e.g. `--cache openai=2s`).
pub fn paired_with(
    master: &Master,
    home: &Path,
    approve_args: &[&str],
    serve_args: &[&str],
) -> (DaemonProc, String) {
    let d = DaemonProc::spawn(&master.server, home, serve_args);
    let wallet = approve_pairing(master, &d, approve_args);
    (d, wallet)
}

/// Approves the pair code `d` shows with `approve_args`; returns the wallet it then serves.
pub fn approve_pairing(master: &Master, d: &DaemonProc, approve_args: &[&str]) -> String {
    let (code, _) = d.code();
    let out = master.approve(&code, approve_args);
    assert!(out.status.success(), "{}", text(&out));
    d.serving()
}

/// A configuration that notices a revocation within half a second and kills a child that
/// ignores SIGTERM one second later.
pub const QUICK_REVOCATION: &str = "revocation_check = \"500ms\"\nkill_grace = \"1s\"\n";

/// Writes `toml` to `daemon.toml` in `home` and returns the path, for `--config`.
pub fn write_config(home: &Path, toml: &str) -> PathBuf {
    let file = home.join("daemon.toml");
    std::fs::write(&file, toml).unwrap();
    file
}

/// [`paired_with`], with `toml` as the daemon's configuration file.
pub fn paired_configured(
    master: &Master,
    home: &Path,
    approve_args: &[&str],
    toml: &str,
    serve_args: &[&str],
) -> (DaemonProc, String) {
    let config = write_config(home, toml);
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(serve_args);
    paired_with(master, home, approve_args, &args)
}

/// Newline-delimited JSON-RPC over the daemon socket, answers matched by id.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: i64,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            next: 100,
        }
    }

    pub fn send_raw(&mut self, line: &[u8]) {
        self.writer.write_all(line).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    /// The next line as JSON; `None` when the daemon closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
        }
    }

    /// Sends a request and returns its answer (skipping notifications and other ids).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(msg.to_string().as_bytes());
        loop {
            let v = self.recv().unwrap_or_else(|| {
                panic!("no answer to {method} (the daemon closed the connection or timed out)")
            });
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
        }
    }

    /// `initialize` (protocol 2025-11-25) and `notifications/initialized`.
    pub fn initialize(&mut self) -> Value {
        let r = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "0"}}),
        );
        self.send_raw(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        r
    }

    /// Calls a tool: (is_error, text).
    pub fn tool(&mut self, name: &str, args: Value) -> (bool, String) {
        let r = self.request("tools/call", json!({"name": name, "arguments": args}));
        let result = &r["result"];
        assert!(result.is_object(), "not a tool result: {r}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (result["isError"] == json!(true), text)
    }
}

/// The pid of the first command a `run` started, from its `deliver` line (waited for: the
/// command can print before the daemon writes it).
pub fn first_child_pid(trail: &Path) -> u32 {
    wait_for_events(trail, "deliver", 1);
    trail_lines(trail)
        .iter()
        .find(|l| l["event"] == "deliver")
        .and_then(|l| {
            l["detail"]
                .as_str()?
                .strip_prefix("child pid ")?
                .parse()
                .ok()
        })
        .expect("a deliver line naming the child pid")
}

/// The daemon trail, parsed.
///
/// Only whole lines: the daemon writes each line with one `write(2)`, but a read racing
/// that write may see part of it, so a last line without its newline is left out.
pub fn trail_lines(path: &Path) -> Vec<Value> {
    complete_lines(&std::fs::read_to_string(path).unwrap())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The newline-terminated lines of `text`, without their newlines.
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

pub use agentkeys_testkit::block_on;

impl Client {
    /// Writes without waiting for answers; errors (a closed connection) are returned.
    pub fn try_send_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }
}

/// Waits until the trail holds `count` `event` lines (the daemon audits a delivery right
/// after the response line is written, so the client can see the answer first).
pub fn wait_for_events(path: &Path, event: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let n = complete_lines(&text)
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .count();
        if n >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} {event} events after 10 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The stdlib Python runtime's directory (for `PYTHONPATH`).
pub fn python_runtime_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python")
}

/// A Python with the official `mcp` SDK: `$AGENTKEYS_TEST_PYTHON`, else the venv
/// `scripts/test.sh` creates in `target/pyenv`.
pub fn sdk_python() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTKEYS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the mcp SDK: run 'bash scripts/test.sh' (it creates target/pyenv), or \
         set AGENTKEYS_TEST_PYTHON"
    );
    venv
}

/// The Rust managed runtime's example program (`check SERVICE [--hold]`).
pub fn rust_runtime_check() -> PathBuf {
    workspace_bin(DAEMON, "examples/check")
}

/// SHA-256 of `s`, hex.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A process that prints one JSON line on stdout and then waits for a line on stdin
/// (the runtimes' `check --hold`, the MCP SDK client): killed on drop.
pub struct Holder {
    pub child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Holder {
    pub fn spawn(mut cmd: Command) -> Holder {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Holder { child, stdout }
    }

    /// The JSON line it printed.
    pub fn line(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it exit and returns its status.
    pub fn release(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().unwrap()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Successful `credential.read` events the server audited for `agent`.
pub fn server_reads(master: &Master, agent: &str) -> usize {
    let out = master.cli(&["usage", "--agent", agent, "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    fn count(v: &Value) -> usize {
        match v {
            Value::Array(items) => items.iter().map(count).sum(),
            Value::Object(o) => {
                if o.get("action") == Some(&json!("credential.read"))
                    && o.get("outcome") == Some(&json!("ok"))
                {
                    1
                } else {
                    o.values().map(count).sum()
                }
            }
            _ => 0,
        }
    }
    count(&v)
}

/// Readable copies of `needle` in `pid`'s memory (the scan itself is checked to have read
/// more than 1 MiB).
pub fn copies_in(pid: u32, needle: &str) -> usize {
    let report = agentkeys_memscan::scan(pid, needle.as_bytes()).unwrap();
    assert!(
        report.scanned_bytes > 1 << 20,
        "scanned only {}",
        report.scanned_bytes
    );
    report.hits.len()
}

/// Whether process `pid` is gone (or a zombie), polled until `within` has passed.
pub fn dies_within(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) STATE …`: the state follows the last ')'.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if matches!(state, None | Some("Z" | "X")) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `pid` (cleanup for a test that failed to stop it).
pub fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}
