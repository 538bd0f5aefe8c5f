//! The opt-in cache with idle eviction (decision 73), revocation reaching `run`
//! children, and the configuration file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentkeys_testkit::{TempDir, canary};
use serde_json::json;

use super::common::*;

fn get(c: &mut Client) {
    let (is_error, text) = c.tool("get_credential", json!({"service": "openai"}));
    assert!(!is_error, "{text}");
}

#[test]
fn a_cached_credential_is_evicted_after_its_idle_ttl() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired_with(
        &master,
        home.path(),
        &["--scope", "openai"],
        &["--cache", "openai=2s"],
    );
    master.store("openai", &canary("cache"), &["--agent", &wallet]);
    // The daemon hears of the new value first: one fetched before that would be dropped
    // when it does (its stamp moved), and read again.
    wait_for_events(&d.trail(), "state", 1);
    let mut c = d.client();
    c.initialize();

    get(&mut c);
    std::thread::sleep(Duration::from_millis(500));
    get(&mut c);
    assert_eq!(
        server_reads(&master, &wallet),
        1,
        "0.5 s apart: one backend read"
    );
    let status = c.request("agentkeys/status", json!({}));
    assert_eq!(
        status["result"]["cache"][0]["service"], "openai",
        "{status}"
    );

    std::thread::sleep(Duration::from_secs(3));
    wait_for_events(&d.trail(), "evict", 1);
    get(&mut c);
    assert_eq!(server_reads(&master, &wallet), 2, "3 s apart: read again");
    let evict = trail_lines(&d.trail())
        .into_iter()
        .find(|l| l["event"] == "evict")
        .unwrap();
    assert_eq!(evict["service"], "openai");
    assert!(
        evict["detail"].as_str().unwrap().contains("ttl 2000 ms"),
        "{evict}"
    );
}

#[test]
fn nothing_is_cached_by_default() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    master.store("openai", &canary("nocache"), &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    get(&mut c);
    get(&mut c);
    assert_eq!(server_reads(&master, &wallet), 2);
}

/// `agentkeys run --service openai -- sh -c SCRIPT` on `d`, once its first line of output
/// says `ready`.
fn run_until_ready(d: &Daemon, script: &str) -> std::process::Child {
    let mut cli = Command::new(cli_bin())
        .args(["run", "--service", "openai", "--", "sh", "-c", script])
        .env("AGENTKEYS_SOCKET", d.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
    assert_eq!(ready, "ready\n");
    cli
}

#[test]
fn revocation_stops_a_running_child_within_the_grace_period() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired_configured(
        &master,
        home.path(),
        &["--scope", "openai"],
        &format!("{QUICK_REVOCATION}[cache]\nopenai = \"60s\"\n"),
        &[],
    );
    master.store("openai", &canary("revoke"), &["--agent", &wallet]);
    // A child that ignores SIGTERM: only the SIGKILL after the grace period ends it.
    let mut cli = run_until_ready(&d, "trap '' TERM; echo ready; while :; do sleep 0.05; done");

    let revoked_at = Instant::now();
    let out = master.cli(&["revoke", &wallet]);
    assert!(out.status.success(), "{}", text(&out));
    let status = cli.wait().unwrap();
    let took = revoked_at.elapsed();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    // check period (0.5 s) + grace (1 s) + slack for a loaded machine
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The daemon writes its trail line just after the signal, so the child can be reaped
    // before the line is there: read the trail until it is (or give up after 5 s).
    let events = || -> Vec<String> {
        trail_lines(&d.trail())
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l["event"].as_str().unwrap(),
                    l["detail"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let needles = [
        "revoked ",
        "evict session revoked",
        "signal SIGTERM",
        "signal SIGKILL",
    ];
    let all_there = |events: &[String]| {
        needles
            .iter()
            .all(|n| events.iter().any(|e| e.starts_with(n)))
    };
    eventually(5, || all_there(&events()));
    let events = events();
    for needle in needles {
        assert!(
            events.iter().any(|e| e.starts_with(needle)),
            "no {needle:?} in {events:#?}"
        );
    }
    let status = d.client().request("agentkeys/status", json!({}));
    assert_eq!(status["result"]["revoked"], true);
    assert_eq!(status["result"]["cache"], json!([]));
}

#[test]
fn a_revocation_reaches_the_daemon_through_its_state_watch_not_its_periodic_check() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    // The periodic check is five minutes away: only the state watch can tell the daemon.
    let (d, wallet) = paired_configured(
        &master,
        home.path(),
        &["--scope", "openai"],
        "revocation_check = \"300s\"\nkill_grace = \"5s\"\n",
        &[],
    );
    master.store("openai", &canary("watched"), &["--agent", &wallet]);
    let mut cli = run_until_ready(&d, "echo ready; exec sleep 300");
    let revoked_at = Instant::now();
    let out = master.cli(&["revoke", &wallet]);
    assert!(out.status.success(), "{}", text(&out));
    let status = cli.wait().unwrap();
    let took = revoked_at.elapsed();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15),
        "SIGTERM, well before the grace period: {status:?}"
    );
    eprintln!("from 'agentkeys revoke' to the run child's exit: {took:?}");
    // Not the 300 s check: woken by the server (the bench measures how fast).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let revoked = trail_lines(&d.trail())
        .into_iter()
        .find(|l| l["event"] == "revoked")
        .expect("a revoked event");
    assert!(
        revoked["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("state watch"),
        "{revoked}"
    );
}

#[test]
fn revocation_also_stops_what_a_run_child_left_in_its_process_group() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired_configured(
        &master,
        home.path(),
        &["--scope", "openai"],
        QUICK_REVOCATION,
        &[],
    );
    master.store("openai", &canary("revokegroup"), &["--agent", &wallet]);
    // The child starts a grandchild that ignores SIGTERM and SIGHUP, prints its pid and
    // waits; only a SIGKILL to the whole group ends the grandchild.
    let mut cli = Command::new(cli_bin())
        .args(["run", "--service", "openai", "--", "sh", "-c"])
        .arg("(trap '' TERM HUP; exec sleep 300) & echo $!; wait")
        .env("AGENTKEYS_SOCKET", d.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();

    let out = master.cli(&["revoke", &wallet]);
    assert!(out.status.success(), "{}", text(&out));
    let status = cli.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15),
        "the child dies of the SIGTERM: {status:?}"
    );
    // grace (1 s) + slack for a loaded machine
    let dead = dies_within(grandchild, Duration::from_secs(10));
    kill_pid(grandchild);
    assert!(dead, "the grandchild {grandchild} outlived the revocation");
}

#[test]
fn a_bad_config_file_is_refused_with_the_key_named() {
    let home = TempDir::new("agentkeys-test-daemon");
    let config = home.path().join("daemon.toml");
    std::fs::write(&config, "idle_tll = \"5s\"\n").unwrap();
    let out = Command::new(DAEMON)
        .args(["serve", "--server", "http://127.0.0.1:9", "--config"])
        .arg(&config)
        .env("AGENTKEYS_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("idle_tll"), "{}", text(&out));
}

/// A daemon with `openai` cached for 60 s idle and the revocation tick at 500 ms.
fn cached_agent(master: &Master, home: &TempDir, scope: &str, extra: &[&str]) -> (Daemon, String) {
    paired_configured(
        master,
        home.path(),
        &["--scope", scope],
        // The periodic check is out of the way: changes come through the state watch.
        "revocation_check = \"300s\"\n[cache]\nopenai = \"60s\"\n",
        extra,
    )
}

fn evictions(d: &Daemon) -> Vec<String> {
    trail_lines(&d.trail())
        .iter()
        .filter(|l| l["event"] == "evict")
        .map(|l| l["detail"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Polls `cond` every 100 ms until it holds, for at most `secs`.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

#[test]
fn a_cached_credential_is_fetched_again_after_its_max_age_however_often_it_is_used() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = cached_agent(&master, &home, "openai", &["--cache-max-age", "2s"]);
    master.store("openai", &canary("maxage"), &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    let started = Instant::now();
    let mut gets = 0;
    // Used every 200 ms: the idle clock never runs out, the age does.
    while started.elapsed() < Duration::from_secs(5) {
        get(&mut c);
        gets += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let reads = server_reads(&master, &wallet);
    assert!(
        reads >= 2,
        "{gets} gets in 5 s at max age 2 s: {reads} server read(s)"
    );
    assert!(
        reads < gets,
        "the cache served some: {reads} reads for {gets} gets"
    );
    let stored = trail_lines(&d.trail())
        .iter()
        .filter(|l| l["event"] == "cache")
        .count();
    assert!(stored >= 2, "refetched and cached again: {stored}");
}

#[test]
fn a_narrowed_scope_evicts_a_cached_credential_at_once() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = cached_agent(&master, &home, "openai,github", &[]);
    master.store("openai", &canary("narrow"), &["--agent", &wallet]);
    wait_for_events(&d.trail(), "state", 1); // cached only once the daemon has heard of it
    let mut c = d.client();
    c.initialize();
    get(&mut c);
    let out = master.cli(&["scope", &wallet, "--remove", "openai"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        eventually(10, || evictions(&d)
            .iter()
            .any(|e| e.contains("no longer usable by this agent"))),
        "no eviction: {:?}",
        evictions(&d)
    );
    let (is_error, text) = c.tool("get_credential", json!({"service": "openai"}));
    assert!(is_error && text.contains("not in scope"), "{text}");
    let status = c.request("agentkeys/status", json!({}));
    assert_eq!(status["result"]["scope"]["services"], json!(["github"]));
}

#[test]
fn a_credential_made_high_value_is_evicted_at_once() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = cached_agent(&master, &home, "openai", &[]);
    master.store("openai", &canary("tohigh"), &["--agent", &wallet]);
    wait_for_events(&d.trail(), "state", 1); // cached only once the daemon has heard of it
    let mut c = d.client();
    c.initialize();
    get(&mut c);
    let out = master.cli(&["policy", "openai", "--agent", &wallet, "--high-value"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        eventually(10, || evictions(&d)
            .iter()
            .any(|e| e.contains("its policy changed"))),
        "no eviction: {:?}",
        evictions(&d)
    );
    let (is_error, text) = c.tool("get_credential", json!({"service": "openai"}));
    assert!(is_error && text.contains("approval required"), "{text}");
}

#[test]
fn the_trail_is_anchored_on_the_server_and_a_truncated_or_rewritten_one_fails_verify() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (mut d, wallet) = paired_configured(
        &master,
        home.path(),
        &["--scope", "openai"],
        "anchor_every = \"500ms\"\n",
        // Stored, so that 'audit --verify' can ask the server once the daemon is gone.
        &["--store-session"],
    );
    master.store("openai", &canary("anchor"), &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    get(&mut c);
    drop(c);
    let anchors = || {
        let out = master.cli(&[
            "usage",
            "--agent",
            &wallet,
            "--action",
            "trail.anchor",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["events"].as_array().map_or(0, Vec::len)
    };
    assert!(
        eventually(10, || anchors() > 0),
        "no anchor reached the server"
    );
    assert_eq!(d.terminate().code(), Some(0)); // anchors the final head too
    let verify = || {
        Command::new(DAEMON)
            .args(["audit", "--verify"])
            .env("AGENTKEYS_HOME", home.path())
            .env("AGENTKEYS_SOCKET", home.path().join("no-daemon.sock"))
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("matches the anchor"), "{}", text(&out));

    let trail = d.trail();
    let original = std::fs::read_to_string(&trail).unwrap();
    let count = original.lines().count();
    // Truncated: what is left still chains, but falls short of the anchor.
    let kept: Vec<&str> = original.lines().take(count - 2).collect();
    std::fs::write(&trail, kept.join("\n") + "\n").unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains("truncated"), "{}", text(&out));
    // Rewritten with recomputed hashes: a fresh chain of the same length.
    std::fs::remove_file(&trail).unwrap();
    let forged = agentkeys_daemon::trail::Trail::open(&trail).unwrap();
    for _ in 0..count {
        forged
            .append(agentkeys_daemon::trail::Event {
                event: "start".into(),
                ..Default::default()
            })
            .unwrap();
    }
    drop(forged);
    let out = verify();
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains("rewritten"), "{}", text(&out));
}
