//! What must never happen: a token in any output; a dumpable CLI. And the help surface.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::process::Stdio;

use predicates::prelude::*;
use predicates::str::contains;

use super::common::*;

#[test]
fn no_command_ever_prints_the_token_in_any_mode() {
    let server = start_server();
    let home = Home::new(&server);
    let enrol = "enrol-token-hygiene";
    let init = home
        .cmd()
        .args(["init"])
        .env("AGENTKEYS_AUTH_TOKEN", enrol)
        .output()
        .unwrap();
    let token = token_of(&home);
    let token = token.expose_secret().to_owned();
    assert!(token.starts_with("akm_"));
    let mut seen = outputs(&init);
    let (agent, _) = home.pair_agent(&["--scope", "openai"]);
    home.store_value("openai", "v", &["--agent", agent.as_str()]);
    let runs: &[&[&str]] = &[
        &["init"],
        &["whoami"],
        &["list"],
        &["agents"],
        &["scope", agent.as_str()],
        &["usage"],
        &["usage", "--verify"],
        &["read", "missing"],
        &["revoke", "0x0000000000000000000000000000000000000000"],
        &["whoami", "--server", "http://127.0.0.1:9"],
        &["approve", "ABCD-EFGH", "--yes"],
    ];
    for args in runs {
        for mode in [&[][..], &["--json"][..], &["-vv"][..]] {
            let out = home.cmd().args(*args).args(mode).output().unwrap();
            seen.push_str(&outputs(&out));
        }
    }
    assert!(
        seen.contains("Already initialized"),
        "the runs happened: {seen}"
    );
    assert!(!seen.contains("akm_"), "a token prefix was printed");
    assert!(!seen.contains(&token));
    assert!(!seen.contains(enrol), "the enrolment token was printed");
}

#[test]
fn a_running_cli_is_not_dumpable_and_has_no_core_limit() {
    let server = start_server();
    let home = Home::with_store(&server, "file");
    home.init();
    home.store_value("stripe", &canary("dump"), &["--high-value"]);
    // Run as an unprivileged user: for a non-dumpable process the kernel makes
    // /proc/<pid>/* root-owned, which is only observable when the process is not root
    // (this kernel's /proc/<pid>/status has no "Dumpable:" line).
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(home.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", CLI])
        .args(["read", "stripe", "--wait", "30"])
        .envs(home.cmd_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("approval required:"), "{line}");

    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains("65534"), "{uid_line}");
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/<pid> of a non-dumpable process is root-owned"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    assert_eq!(core.split_whitespace().nth(5), Some("0"), "{core}");
    // Same uid, yet its environment cannot be read.
    let peek = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(format!("/proc/{pid}/environ"))
        .output()
        .unwrap();
    assert!(!peek.status.success());

    let (code, _) = approval_from_stderr(&line);
    home.cmd()
        .args(["approve", &code, "--yes"])
        .assert()
        .success();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
}

#[test]
fn help_documents_exit_codes_and_every_subcommand_has_an_example() {
    let home_dir = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = assert_cmd::Command::new(CLI);
        c.env("HOME", home_dir.path())
            .env_remove("AGENTKEYS_SERVER");
        c
    };
    cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(contains("Exit codes:").and(contains("5  approval required")));
    for sub in [
        "init",
        "whoami",
        "store",
        "read",
        "list",
        "agents",
        "scope",
        "policy",
        "revoke",
        "teardown",
        "link",
        "usage",
        "approve",
        "recover",
        "completions",
    ] {
        cmd()
            .args([sub, "--help"])
            .assert()
            .success()
            .stdout(contains("Examples:\n  "));
    }
    cmd()
        .arg("--version")
        .assert()
        .success()
        .stdout(contains("agentkeys "));
    cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(contains("_agentkeys()"));
    cmd().arg("frobnicate").assert().code(2);
}
