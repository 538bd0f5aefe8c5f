//! Daemon-mediated run (decision 76): `agentkeys run` with the real CLI, and the MCP
//! `run` tool.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentkeys_testkit::{TempDir, assert_no_readable_copy, canary};
use serde_json::{Value, json};

use super::common::*;

struct Agent {
    _server: agentkeys_testkit::Server,
    master: Master,
    _home: TempDir,
    d: Daemon,
    value: String,
}

fn agent(tag: &str) -> Agent {
    agent_configured(tag, "")
}

/// [`agent`] with a daemon configuration file holding `config`.
fn agent_configured(tag: &str, config: &str) -> Agent {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired_configured(&master, home.path(), &["--scope", "openai"], config, &[]);
    let value = canary(tag);
    master.store("openai", &value, &["--agent", &wallet]);
    Agent {
        _server: server,
        master,
        _home: home,
        d,
        value,
    }
}

fn run_cmd(d: &Daemon, args: &[&str]) -> Command {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("run")
        .args(args)
        .env("AGENTKEYS_SOCKET", d.socket())
        .env("PYTHONPATH", python_runtime_dir());
    cmd
}

#[test]
fn run_puts_the_value_in_the_environment_and_passes_the_exit_status_through() {
    let a = agent("runenv");
    let out = run_cmd(
        &a.d,
        &[
            "--service",
            "openai",
            "--",
            "sh",
            "-c",
            "echo \"$OPENAI_API_KEY\"; exit 3",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a.value);

    let out = run_cmd(
        &a.d,
        &[
            "--env",
            "MY_KEY=openai",
            "--",
            "sh",
            "-c",
            "printf %s \"$MY_KEY\"",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), a.value);

    let out = run_cmd(&a.d, &["--", "no-such-command-xyz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(text(&out).contains("command not found"), "{}", text(&out));

    let out = run_cmd(&a.d, &["--service", "github", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "out of scope: {}", text(&out));
    assert!(text(&out).contains("agentkeys scope"), "{}", text(&out));

    wait_for_events(&a.d.trail(), "exit", 2);
    let modes: Vec<Value> = trail_lines(&a.d.trail())
        .into_iter()
        .filter(|l| l["event"] == "deliver")
        .map(|l| l["mode"].clone())
        .collect();
    assert_eq!(modes, [json!("run-env"), json!("run-env")]);
}

#[test]
fn signals_pass_through_both_ways() {
    let a = agent("runsig");
    // The command dies by a signal: so does the CLI.
    let out = run_cmd(&a.d, &["--", "sh", "-c", "kill -TERM $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(15), "{:?}", out.status);

    // A signal to the CLI reaches the command (Ctrl-C is SIGINT to the foreground CLI).
    let mut cli = run_cmd(
        &a.d,
        &[
            "--",
            "sh",
            "-c",
            "trap 'echo got-int; exit 42' INT; echo ready; while :; do sleep 0.05; done",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    Command::new("kill")
        .args(["-INT", &cli.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-int");
    assert_eq!(cli.wait().unwrap().code(), Some(42));
}

/// Whether `signal` is still pending (not yet delivered) for process `pid`.
fn signal_pending(pid: u32, signal: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & (1 << (signal - 1)) != 0)
}

#[test]
fn a_signal_caught_before_the_daemon_answers_is_forwarded_once_it_does() {
    // A stand-in daemon, so the test decides when the answer comes.
    let dir = TempDir::new("agentkeys-test-fake-daemon");
    let socket = dir.path().join("daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut cli = Command::new(cli_bin())
        .args(["run", "--", "true"])
        .env("AGENTKEYS_SOCKET", &socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // its descriptors are dropped with the message
    assert!(line.contains("agentkeys/run"), "{line}");

    // Ctrl-C while the daemon is still starting the command.
    Command::new("kill")
        .args(["-INT", &cli.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while signal_pending(cli.id(), 2) {
        assert!(Instant::now() < deadline, "SIGINT never delivered");
        std::thread::sleep(Duration::from_millis(5));
    }
    writeln!(
        stream,
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"pid":4242}}}}"#
    )
    .unwrap();
    line.clear();
    let read = reader.read_line(&mut line);
    let forwarded: Option<Value> = read.ok().and_then(|_| serde_json::from_str(&line).ok());
    writeln!(
        stream,
        r#"{{"jsonrpc":"2.0","method":"agentkeys/exit","params":{{"pid":4242,"code":0}}}}"#
    )
    .unwrap();
    let status = cli.wait().unwrap();
    let forwarded = forwarded.unwrap_or_else(|| panic!("nothing forwarded: {line:?}"));
    assert_eq!(forwarded["method"], "agentkeys/signal", "{forwarded}");
    assert_eq!(forwarded["params"], json!({"pid": 4242, "signal": 2}));
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn the_cli_never_holds_the_credential_while_the_command_runs() {
    let a = agent("runmem");
    let mut cli = run_cmd(
        &a.d,
        &[
            "--service",
            "openai",
            "--",
            "sh",
            "-c",
            "echo started; read line; echo done",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    let report = assert_no_readable_copy(cli.id(), &[a.value.as_bytes()]);
    wait_for_events(&a.d.trail(), "deliver", 1);
    let daemon = assert_no_readable_copy(a.d.pid(), &[a.value.as_bytes()]);
    eprintln!(
        "scan: agentkeys CLI during run: 0 copies in {} bytes; daemon after starting the \
         command: 0 copies in {} bytes",
        report.scanned_bytes, daemon.scanned_bytes
    );
    // The command itself holds what it was given: env mode puts the value in its
    // environment (the README says so, and --fd avoids it).
    let child = first_child_pid(&a.d.trail());
    let in_child = copies_in(child, &a.value);
    eprintln!("scan: the command started by run (env mode): {in_child} copies");
    assert!(in_child > 0, "the child's environment holds the value");
    cli.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    assert!(cli.wait().unwrap().success());
}

#[test]
fn run_fd_hands_a_memfd_secret_to_the_python_runtime_in_the_child() {
    let a = agent("runfd");
    let out = run_cmd(
        &a.d,
        &[
            "--fd",
            "--service",
            "openai",
            "--",
            "sh",
            "-c",
            "echo \"$AGENTKEYS_FD_OPENAI\"; python3 -m agentkeys_runtime check openai",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next().unwrap(), format!("3:{}", a.value.len()));
    let check: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(check["mode"], "inherited");
    let test = "run_fd_hands_a_memfd_secret_to_the_python_runtime_in_the_child";
    assert_eq!(
        check["kind"],
        agentkeys_testkit::machine::best_page_kind(test)
    );
    assert_eq!(check["sha256"], sha256_hex(&a.value));
    assert!(
        !stdout.contains(&a.value),
        "--fd never puts the value in the environment"
    );
}

#[test]
fn the_mcp_run_tool_redacts_every_form_of_the_secret() {
    let a = agent("runmcp");
    let mut c = a.d.client();
    c.initialize();
    let script = "echo \"raw $OPENAI_API_KEY\"; \
                  printf %s \"$OPENAI_API_KEY\" | base64 -w0; echo; \
                  printf %s \"$OPENAI_API_KEY\" | od -An -tx1 | tr -d ' \\n'; echo; \
                  echo to-stderr >&2; exit 5";
    let (is_error, body) = c.tool(
        "run",
        json!({"argv": ["sh", "-c", script], "services": ["openai"], "timeout_s": 30}),
    );
    assert!(!is_error, "{body}");
    assert!(!body.contains(&a.value), "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(result["code"], 5);
    assert_eq!(result["redacted"], 3, "{result}");
    let stdout = result["stdout"].as_str().unwrap();
    assert_eq!(stdout.matches("[REDACTED:openai]").count(), 3, "{stdout}");
    assert_eq!(result["stderr"], "to-stderr\n");

    let (_, body) = c.tool("run", json!({"argv": ["sleep", "30"], "timeout_s": 1}));
    let result: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(result["timed_out"], true, "{result}");
    assert_eq!(result["signal"], 15);
}

/// Calls the MCP `run` tool with `args`; the call itself must succeed. Returns its result.
fn run_tool(c: &mut Client, args: Value) -> Value {
    let (is_error, body) = c.tool("run", args);
    assert!(!is_error, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The base64 characters (both alphabets) that `value`'s bits alone determine when it sits
/// at byte alignment `offset` (mod 3) inside a longer string, less one at each end.
fn inner_base64(value: &str, offset: usize) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut input = vec![0u8; offset];
    input.extend_from_slice(value.as_bytes());
    let first = (8 * offset).div_ceil(6) + 1;
    let last = 8 * (offset + value.len()) / 6 - 1;
    [
        STANDARD_NO_PAD.encode(&input),
        URL_SAFE_NO_PAD.encode(&input),
    ]
    .into_iter()
    .map(|e| e[first..last].to_owned())
    .collect()
}

#[test]
fn the_mcp_run_tool_redacts_wrapped_embedded_and_cut_off_forms() {
    let a = agent_configured("runwrap", "[run]\nmax_output = 1000\n");
    let mut c = a.d.client();
    c.initialize();
    let script = "K=\"$OPENAI_API_KEY\"; \
                  printf %s \"$K$K$K\" | base64 -w 16; \
                  printf %s \"$K$K$K\" | openssl base64; \
                  printf 'user:%s' \"$K\" | base64 -w0; echo; \
                  printf '%0990d' 0 >&2; printf %s \"$K\" >&2";
    let result = run_tool(
        &mut c,
        json!({"argv": ["sh", "-c", script], "services": ["openai"], "timeout_s": 30}),
    );
    // The secret straddled the 1000-byte cap of stderr: none of it is left.
    assert_eq!(
        result["stderr"],
        format!("{}[REDACTED:openai]", "0".repeat(990)),
        "{result}"
    );
    assert_eq!(result["truncated"], true, "{result}");
    // Three copies wrapped at 16 columns, three at 64 (openssl), one after "user:".
    assert_eq!(result["redacted"], 8, "{result}");
    let stdout: String = result["stdout"]
        .as_str()
        .unwrap()
        .chars()
        .filter(|c| *c != '\n')
        .collect();
    for offset in 0..3 {
        for inner in inner_base64(&a.value, offset) {
            for window in inner.as_bytes().windows(8) {
                let window = std::str::from_utf8(window).unwrap();
                assert!(!stdout.contains(window), "{window} left in {stdout}");
            }
        }
    }
}

#[test]
fn run_fd_hands_the_rust_runtime_its_credential_once() {
    let a = agent("runfdrust");
    let check = rust_runtime_check();
    let out = run_cmd(
        &a.d,
        &[
            "--fd",
            "--service",
            "openai",
            "--",
            check.to_str().unwrap(),
            "openai",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["sha256"], sha256_hex(&a.value));
    let test = "run_fd_hands_the_rust_runtime_its_credential_once";
    assert_eq!(
        line["kind"],
        agentkeys_testkit::machine::best_page_kind(test)
    );
}

#[test]
fn the_mcp_run_timeout_stops_the_whole_process_group() {
    let a = agent_configured("runtimeoutgroup", "kill_grace = \"1s\"\n");
    let mut c = a.d.client();
    c.initialize();
    let started = Instant::now();
    let result = run_tool(
        &mut c,
        json!({"argv": ["sh", "-c", "(trap '' TERM HUP; exec sleep 300) & echo $!; wait"],
               "timeout_s": 1}),
    );
    let took = started.elapsed();
    let grandchild: u32 = result["stdout"].as_str().unwrap().trim().parse().unwrap();
    let dead = dies_within(grandchild, Duration::from_secs(5));
    kill_pid(grandchild);
    assert_eq!(result["timed_out"], true, "{result}");
    assert!(dead, "the grandchild {grandchild} outlived the timeout");
    // timeout (1 s) + grace (1 s) + slack for a loaded machine
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn the_mcp_run_tool_returns_although_a_leftover_holds_its_output() {
    let a = agent_configured("rundrain", "kill_grace = \"1s\"\n");
    let mut c = a.d.client();
    c.initialize();
    let started = Instant::now();
    // `sleep` inherits stdout and outlives `sh`: the pipe never closes on its own.
    let result = run_tool(
        &mut c,
        json!({"argv": ["sh", "-c", "sleep 300 & echo $!; echo hi"], "timeout_s": 2}),
    );
    let took = started.elapsed();
    let stdout = result["stdout"].as_str().unwrap();
    let mut lines = stdout.lines();
    let leftover: u32 = lines.next().unwrap().parse().unwrap();
    let dead = dies_within(leftover, Duration::from_secs(5));
    kill_pid(leftover);
    assert_eq!(lines.next(), Some("hi"), "{result}");
    assert_eq!(result["code"], 0, "{result}");
    assert_eq!(result["timed_out"], false, "{result}");
    assert_eq!(result["capture_stopped"], true, "{result}");
    assert_eq!(result["leftovers_stopped"], true, "{result}");
    assert!(dead, "the leftover sleep {leftover} still runs");
    // timeout (2 s) + grace (1 s) + slack for a loaded machine
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[test]
fn waiting_for_run_children_holds_no_daemon_thread_per_child() {
    let a = agent("runthreads");
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", a.d.pid()))
            .unwrap()
            .count()
    };
    let before = threads();
    let mut running = Vec::new();
    for _ in 0..12 {
        let mut cli = run_cmd(&a.d, &["--", "sh", "-c", "echo ready; read line; true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        running.push(cli);
    }
    let during = threads();
    assert!(
        during <= before + 3,
        "{before} daemon threads before, {during} while 12 run children wait"
    );
    for mut cli in running {
        drop(cli.stdin.take());
        assert!(cli.wait().unwrap().success());
    }
}

const NOBODY: &str = "65534";

/// A root daemon that lets `nobody` in, with its socket reachable by `nobody`; `None` (and
/// a `skipped:` line) where the tests do not run as root.
fn agent_serving_nobody(tag: &str) -> Option<Agent> {
    if !rustix::process::geteuid().is_root() {
        agentkeys_testkit::machine::skipped(
            "run (a daemon serving another uid)",
            "a daemon serving another uid must run as root",
        );
        return None;
    }
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired_configured(
        &master,
        home.path(),
        &["--scope", "openai"],
        QUICK_REVOCATION,
        &["--allow-uid", NOBODY],
    );
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(home.path(), 0o755).unwrap();
    open(d.socket().parent().unwrap(), 0o755).unwrap();
    open(d.socket(), 0o777).unwrap();
    let value = canary(tag);
    master.store("openai", &value, &["--agent", &wallet]);
    Some(Agent {
        _server: server,
        master,
        _home: home,
        d,
        value,
    })
}

/// `agentkeys run ARGS…` as `nobody`.
fn run_as_nobody(d: &Daemon, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ])
    .arg(cli_bin())
    .arg("run")
    .args(args)
    .env("AGENTKEYS_SOCKET", d.socket());
    cmd
}

/// A directory with `mode` holding an executable `agentkeys-probe` that prints `says`.
fn probe_dir(mode: u32, says: &str) -> TempDir {
    let dir = TempDir::new("agentkeys-test-bin");
    let probe = dir.path().join("agentkeys-probe");
    // Written by a shell: a write fd of this multi-threaded test process could be inherited
    // by another test's fork and make the exec fail with ETXTBSY.
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
        ])
        .arg(format!("#!/bin/sh\necho {says}\n"))
        .arg(&probe)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

#[test]
fn a_root_daemon_enters_the_working_directory_as_the_caller() {
    let Some(a) = agent_serving_nobody("runcwd") else {
        return;
    };
    // The caller's cwd is a root-only directory (it got there before dropping to nobody):
    // its command must not start there with the daemon's rights.
    let private = TempDir::new("agentkeys-test-private");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run_as_nobody(&a.d, &["--service", "openai", "--", "sh", "-c", "pwd; ls"])
        .current_dir(private.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("working directory"), "{}", text(&out));

    // Control: the same caller from a directory it may enter.
    let out = run_as_nobody(&a.d, &["--service", "openai", "--", "sh", "-c", "pwd"])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/\n");
}

#[test]
fn a_root_daemon_looks_the_program_up_as_the_caller() {
    let Some(a) = agent_serving_nobody("runpath") else {
        return;
    };
    let private = probe_dir(0o700, "private");
    let public = probe_dir(0o755, "public");
    // As execvp does for the caller: the root-only directory is skipped.
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        private.path().display(),
        public.path().display()
    );
    let out = run_as_nobody(&a.d, &["--", "agentkeys-probe"])
        .env("PATH", &path)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "public\n");

    // Reachable only through the root-only directory: never executed.
    let path = format!("{}:/usr/bin:/bin", private.path().display());
    let out = run_as_nobody(&a.d, &["--", "agentkeys-probe"])
        .env("PATH", &path)
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(!text(&out).contains("private"), "{}", text(&out));
}

#[test]
fn a_root_daemon_can_stop_a_child_running_as_the_caller() {
    let Some(a) = agent_serving_nobody("runkillnobody") else {
        return;
    };
    let mut cli = run_as_nobody(
        &a.d,
        &[
            "--service",
            "openai",
            "--",
            "sh",
            "-c",
            "echo ready; while :; do sleep 0.05; done",
        ],
    )
    .current_dir("/")
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // The command can print before the daemon has written its `deliver` line.
    wait_for_events(&a.d.trail(), "deliver", 1);
    let wallet = trail_lines(&a.d.trail())
        .iter()
        .find_map(|l| l["agent"].as_str().map(str::to_owned))
        .unwrap();
    let child = first_child_pid(&a.d.trail());
    let out = a.master.cli(&["revoke", &wallet]);
    assert!(out.status.success(), "{}", text(&out));
    // check period (0.5 s) + grace (1 s) + slack for a loaded machine
    let dead = dies_within(child, Duration::from_secs(10));
    kill_pid(child);
    assert!(dead, "the daemon could not signal its caller's command");
    assert_eq!(cli.wait().unwrap().signal(), Some(15));
}
