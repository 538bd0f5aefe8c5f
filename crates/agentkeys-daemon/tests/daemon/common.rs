//! What only this suite needs around the shared fixture (`agentkeys-testkit`): the daemon
//! binary under test, the Python and Rust runtimes' clients, the server's count of reads,
//! memory and process probes.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use agentkeys_testkit::{
    Bins, Client, Daemon, Master, Server, block_on, first_child_pid, paired, paired_configured,
    paired_with, text, trail_lines, wait_for_events, write_config,
};
use serde_json::{Value, json};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_agentkeys-daemon");

/// The binaries built with this suite's daemon.
pub fn bins() -> Bins {
    Bins::next_to(DAEMON)
}

pub fn cli_bin() -> PathBuf {
    bins().path("agentkeys")
}

/// A server, with extra flags (e.g. `--pair-ttl 2s`).
pub fn start_server(extra: &[&str]) -> Server {
    bins().server(extra)
}

/// A configuration that notices a revocation within half a second and kills a child that
/// ignores SIGTERM one second later.
pub const QUICK_REVOCATION: &str = "revocation_check = \"500ms\"\nkill_grace = \"1s\"\n";

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
    bins().path("examples/check")
}

/// SHA-256 of `s`, hex.
pub fn sha256_hex(s: &str) -> String {
    agentkeys_core::hex(&agentkeys_core::crypto::sha256(s.as_bytes()))
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
