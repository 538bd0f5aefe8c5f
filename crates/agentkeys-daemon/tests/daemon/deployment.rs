//! The deployment the docs recommend — the daemon under a uid of its own, the agent's uid
//! let in with `--allow-uid` — against the one the first release showed (one uid for both),
//! and what a process of the daemon's own uid can take in each: the stored session by
//! default, nothing with `--ephemeral`.

use std::os::unix::fs::chown;
use std::process::Command;

use agentkeys_testkit::{TempDir, canary};
use serde_json::{Value, json};

use super::common::*;

/// The daemon's uid (nobody) and an agent's uid of its own (no passwd entry needed).
const DAEMON_UID: u32 = 65534;
const AGENT_UID: u32 = 65533;

fn as_uid(uid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
    ]
}

/// A command that runs `program` as `uid` (through `setpriv`).
fn command_as(uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let wrapper = as_uid(uid);
    let mut cmd = Command::new(&wrapper[0]);
    cmd.args(&wrapper[1..]).arg(program);
    cmd
}

/// A directory owned by `uid`.
fn dir_of(uid: u32) -> TempDir {
    let d = TempDir::new("agentkeys-test-deploy");
    chown(d.path(), Some(uid), Some(uid)).unwrap();
    d
}

/// Starts the daemon as `DAEMON_UID` on `home` with a socket under `sock_dir`.
fn daemon_as_its_own_uid(
    server: &str,
    home: &TempDir,
    sock_dir: &TempDir,
    extra: &[&str],
) -> Daemon {
    let socket = sock_dir.path().join("daemon.sock");
    let mut wrapper = as_uid(DAEMON_UID);
    // The capabilities to start an allowed caller's `run` commands under its own uid and
    // to stop them (docs/daemon.md, "Deployment").
    wrapper.extend([
        "--inh-caps=+setuid,+setgid,+kill".into(),
        "--ambient-caps=+setuid,+setgid,+kill".into(),
    ]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut args = vec!["--socket", socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::command(&bins(), server, home.path())
        .under(&wrapper)
        .args(&args)
        .socket(&socket)
        .spawn()
}

#[test]
fn a_daemon_under_its_own_uid_serves_another_uids_agent_that_cannot_reach_its_session() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = dir_of(DAEMON_UID);
    let sock_dir = dir_of(DAEMON_UID);
    let agent_uid = AGENT_UID.to_string();
    let d = daemon_as_its_own_uid(&server.url, &home, &sock_dir, &["--allow-uid", &agent_uid]);
    let wallet = d.pair(&master, &["--scope", "openai"]);
    let value = canary("deploy");
    master.store("openai", &value, &["--agent", &wallet]);
    // Serving other uids, the daemon said nothing about agents sharing its uid.
    assert!(!d.log().contains("only uid"), "{}", d.log());

    // The agent, under its own uid, gets its credential through the socket.
    let out = command_as(AGENT_UID, "/usr/bin/python3")
        .args(["-m", "agentkeys_runtime", "check", "openai"])
        .env("PYTHONPATH", python_runtime_dir())
        .env("AGENTKEYS_SOCKET", d.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["sha256"], sha256_hex(&value));

    // It cannot reach the daemon's home (0700, the daemon's uid): no session to take.
    let peek = command_as(AGENT_UID, "ls")
        .arg(home.path())
        .output()
        .unwrap();
    assert!(!peek.status.success(), "the agent listed the daemon's home");
    assert!(text(&peek).contains("Permission denied"), "{}", text(&peek));
    // And the daemon reports no agent of its own uid (asked by its operator, as its uid).
    let out = command_as(DAEMON_UID, DAEMON)
        .args(["status", "--json"])
        .env("AGENTKEYS_SOCKET", d.socket())
        .env("AGENTKEYS_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["same_uid"]["status"], "ok", "{status}");
}

#[test]
fn an_agent_of_the_daemons_own_uid_is_reported_by_serve_status_and_doctor() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, _) = paired(&master, home.path(), &["--scope", "openai"]);
    assert!(
        d.log().contains("warning: only uid"),
        "serve warns at start"
    );
    let mut c = d.client();
    // Asking for the status alone is no agent's work.
    let before = c.request("agentkeys/status", json!({}));
    assert_eq!(before["result"]["same_uid"]["status"], "ok", "{before}");
    c.initialize();
    let after = c.request("agentkeys/status", json!({}));
    assert_eq!(after["result"]["same_uid"]["status"], "degraded", "{after}");
    assert!(
        after["result"]["same_uid"]["detail"]
            .as_str()
            .unwrap()
            .contains("the session is in memory only (agents share the daemon's uid")
    );
    let doctor = Command::new(cli_bin())
        .args(["doctor", "--json"])
        .env("AGENTKEYS_SOCKET", d.socket())
        .env("AGENTKEYS_HOME", home.path().join("cli"))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(
        report["daemon"]["same_uid"]["status"], "degraded",
        "{report}"
    );
    assert!(
        trail_lines(&d.trail())
            .iter()
            .any(|l| l["event"] == "same_uid"),
        "the trail says it once"
    );
}

#[test]
fn a_same_uid_process_takes_a_stored_session_which_only_store_session_keeps() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    // Agents share the daemon's uid here (no --allow-uid): in memory unless told otherwise.
    for (extra, ephemeral) in [
        (&[][..], true),
        (&["--ephemeral"][..], true),
        (&["--store-session"][..], false),
    ] {
        let home = dir_of(DAEMON_UID);
        let sock_dir = dir_of(DAEMON_UID);
        let d = daemon_as_its_own_uid(&server.url, &home, &sock_dir, extra);
        let wallet = d.pair(&master, &["--scope", "openai"]);
        let out = command_as(DAEMON_UID, DAEMON)
            .args(["status", "--json"])
            .env("AGENTKEYS_SOCKET", d.socket())
            .env("AGENTKEYS_HOME", home.path())
            .output()
            .unwrap();
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        let at_rest = status["session_at_rest"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match extra {
            [] => assert!(
                at_rest.contains("agents share the daemon's uid"),
                "{at_rest}"
            ),
            ["--ephemeral"] => assert_eq!(at_rest, "none (--ephemeral)"),
            _ => assert_eq!(at_rest, "stored in the daemon's home"),
        }

        // Another process of the daemon's uid, on the same home.
        let other_sock = dir_of(DAEMON_UID);
        let thief = daemon_as_its_own_uid(&server.url, &home, &other_sock, &["--store-session"]);
        if ephemeral {
            // Nothing at rest: it has to ask for an approval like any stranger.
            let (code, _) = thief.code();
            assert_eq!(code.len(), 9);
            let files: Vec<String> = std::fs::read_dir(home.path())
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("daemon-") && !n.ends_with(".jsonl"))
                .collect();
            assert!(files.is_empty(), "--ephemeral left {files:?}");
            let log = d.log();
            assert!(log.contains("memory only"), "{log}");
        } else {
            // The session at rest is the thief's: it serves as the same agent, unapproved.
            assert_eq!(thief.serving(), wallet, "the stored session was taken");
        }
    }
}

#[test]
fn a_daemon_user_with_three_capabilities_runs_the_agents_command_as_the_agent() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = dir_of(DAEMON_UID);
    let sock_dir = dir_of(DAEMON_UID);
    let agent_uid = AGENT_UID.to_string();
    let config = write_config(home.path(), QUICK_REVOCATION);
    let d = daemon_as_its_own_uid(
        &server.url,
        &home,
        &sock_dir,
        &[
            "--allow-uid",
            &agent_uid,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let wallet = d.pair(&master, &["--scope", "openai"]);
    let value = canary("deployrun");
    master.store("openai", &value, &["--agent", &wallet]);
    // The daemon kept exactly the three it needs.
    let caps = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let eff = caps.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert_eq!(
        eff, "CapEff:\t00000000000000e0",
        "CAP_KILL, CAP_SETGID, CAP_SETUID only"
    );

    // The agent's command runs as the agent, with its credential, and no capability.
    let out = command_as(AGENT_UID, cli_bin())
        .args(["run", "--service", "openai", "--", "sh", "-c"])
        .arg("id -u; echo ${#OPENAI_API_KEY}; grep CapEff /proc/self/status")
        .env("AGENTKEYS_SOCKET", d.socket())
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], agent_uid, "the command runs as the caller");
    assert_eq!(lines[1], value.len().to_string());
    assert_eq!(lines[2], "CapEff:\t0000000000000000");

    // Revocation reaches the agent's command although it runs under another uid (CAP_KILL).
    let mut long = command_as(AGENT_UID, cli_bin())
        .args(["run", "--service", "openai", "--", "sh", "-c"])
        .arg("trap '' TERM; echo $$; while :; do sleep 0.1; done")
        .env("AGENTKEYS_SOCKET", d.socket())
        .current_dir("/")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(long.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let pid: u32 = first.trim().parse().unwrap();
    assert!(master.cli(&["revoke", &wallet]).status.success());
    assert!(
        dies_within(pid, std::time::Duration::from_secs(10)),
        "the agent's command survived the revocation"
    );
    let _ = long.wait();
}

#[test]
fn a_socket_group_lets_its_members_reach_the_socket_and_no_one_else() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    const AGENTS_GID: u32 = 65530;
    const OUTSIDER_UID: u32 = 65532;
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = dir_of(DAEMON_UID);
    let sock_dir = dir_of(DAEMON_UID);
    let socket = sock_dir.path().join("daemon.sock");
    // The daemon's uid, a member of the agents' group (as systemd's SupplementaryGroups=).
    let wrapper = [
        "setpriv".to_owned(),
        format!("--reuid={DAEMON_UID}"),
        format!("--regid={DAEMON_UID}"),
        format!("--groups={AGENTS_GID}"),
    ];
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let allowed = format!("{AGENT_UID}");
    let outsider = format!("{OUTSIDER_UID}");
    let gid = AGENTS_GID.to_string();
    let d = Daemon::command(server.bins(), &server.url, home.path())
        .under(&wrapper)
        .args(&[
            "--socket",
            socket.to_str().unwrap(),
            "--socket-group",
            &gid,
            "--allow-uid",
            &allowed,
            "--allow-uid",
            &outsider,
        ])
        .socket(&socket)
        .spawn();
    let wallet = d.pair(&master, &["--scope", "openai"]);
    master.store("openai", &canary("group"), &["--agent", &wallet]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.gid(), meta.permissions().mode() & 0o777),
        (AGENTS_GID, 0o660)
    );
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(
        (dir.gid(), dir.permissions().mode() & 0o777),
        (AGENTS_GID, 0o710)
    );
    let check = |uid: u32, groups: &str| {
        Command::new("setpriv")
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                groups.to_owned(),
            ])
            .args([
                "/usr/bin/python3",
                "-m",
                "agentkeys_runtime",
                "check",
                "openai",
            ])
            .env("PYTHONPATH", python_runtime_dir())
            .env("AGENTKEYS_SOCKET", &socket)
            .output()
            .unwrap()
    };
    // A member: served. A uid the daemon would serve, outside the group: cannot connect.
    let member = check(AGENT_UID, &format!("--groups={AGENTS_GID}"));
    assert!(member.status.success(), "{}", text(&member));
    let outside = Command::new("setpriv")
        .args([
            format!("--reuid={OUTSIDER_UID}"),
            format!("--regid={OUTSIDER_UID}"),
            "--clear-groups".to_owned(),
        ])
        .args(["/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
            socket.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(!outside.status.success(), "a non-member reached the socket");
    assert!(
        text(&outside).contains("PermissionError"),
        "{}",
        text(&outside)
    );
}
