//! The audit trail, memory after delivery, shutdown and the socket file.

use agentkeys_testkit::{TempDir, canary};
use serde_json::json;

use super::common::*;

#[test]
fn each_read_is_fetch_deliver_drop_in_order_and_verify_catches_an_edit() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    master.store("openai", &canary("trail"), &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    for _ in 0..3 {
        assert!(!c.tool("get_credential", json!({"service": "openai"})).0);
    }
    wait_for_events(&d.trail(), "drop", 3);
    let lines = trail_lines(&d.trail());
    let reads: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["service"] == "openai" && l["event"] != "state")
        .collect();
    assert_eq!(reads.len(), 9, "{reads:?}");
    // Requests may interleave in the file; each request's own events are in order.
    let mut ids: Vec<&str> = reads
        .iter()
        .map(|l| l["request"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for id in ids {
        let triple: Vec<&&serde_json::Value> =
            reads.iter().filter(|l| l["request"] == id).collect();
        let names: Vec<&str> = triple
            .iter()
            .map(|l| l["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["fetch", "deliver", "drop"]);
        assert_eq!(triple[1]["mode"], "inline");
        assert_eq!(triple[0]["agent"], wallet.as_str());
        assert!(triple[0]["peer"]["pid"].as_i64().unwrap() > 0);
        let window_ns =
            triple[2]["mono_ns"].as_u64().unwrap() - triple[0]["mono_ns"].as_u64().unwrap();
        assert!(window_ns < 50_000_000, "fetch → drop took {window_ns} ns");
    }
    let text_all = std::fs::read_to_string(d.trail()).unwrap();
    assert!(
        !text_all.contains("sk-trail"),
        "no secret bytes in the trail"
    );

    let verify = std::process::Command::new(DAEMON)
        .args(["audit", "--verify"])
        .env("AGENTKEYS_HOME", home.path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    let edited = text_all.replacen("\"event\":\"deliver\"", "\"event\":\"deny\"", 1);
    std::fs::write(d.trail(), edited).unwrap();
    let verify = std::process::Command::new(DAEMON)
        .args(["audit", "--verify"])
        .env("AGENTKEYS_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(8), "{}", text(&verify));
    assert!(text(&verify).contains("AUDIT_BROKEN"));
}

#[test]
fn after_delivery_the_daemon_holds_no_readable_copy_of_the_credential() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("memory");
    master.store("openai", &value, &["--agent", &wallet]);
    // The connection stays open: a held MCP session must not keep a copy either.
    let mut c = d.client();
    c.initialize();
    for _ in 0..5 {
        assert_eq!(
            c.tool("get_credential", json!({"service": "openai"})).1,
            value
        );
    }
    wait_for_events(&d.trail(), "drop", 5);
    agentkeys_testkit::assert_no_readable_copy(d.pid(), &[value.as_bytes()]);
}

#[test]
fn sigterm_stops_cleanly_removes_the_socket_and_is_audited() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (mut d, _) = paired(&master, home.path(), &["--scope", "openai"]);
    assert!(d.socket().exists());
    assert_eq!(d.terminate().code(), Some(0));
    assert!(!d.socket().exists(), "the socket file is removed");
    let last = trail_lines(&d.trail()).pop().unwrap();
    assert_eq!(last["event"], "stop");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_refused() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let socket = home.path().join("sock").join("daemon.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap()); // a dead daemon's file
    let (d, _) = paired(&master, home.path(), &["--scope", "openai"]);
    let second = std::process::Command::new(DAEMON)
        .args(["serve", "--server", &server.url])
        .env("AGENTKEYS_HOME", home.path())
        .env("AGENTKEYS_SOCKET", &socket)
        .env("AGENTKEYS_SESSION_STORE", "file")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        text(&second).contains("another daemon answers"),
        "{}",
        text(&second)
    );
    let status = d.client().request("agentkeys/status", json!({}));
    assert!(
        status["result"]["wallet"].is_string(),
        "the first daemon still serves"
    );
}

#[test]
fn help_has_examples_and_a_missing_daemon_is_a_clear_error() {
    for sub in ["serve", "mcp", "status", "audit"] {
        let out = std::process::Command::new(DAEMON)
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Examples:\n  agentkeys-daemon"),
            "{sub} --help has no example"
        );
    }
    let home = TempDir::new("agentkeys-test-daemon");
    for sub in ["status", "mcp"] {
        let out = std::process::Command::new(DAEMON)
            .arg(sub)
            .env("AGENTKEYS_HOME", home.path())
            .env("AGENTKEYS_SOCKET", home.path().join("none.sock"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = text(&out);
        assert_eq!(out.status.code(), Some(6), "{err}");
        assert!(
            err.contains("error: UNREACHABLE") && err.contains("hint: start it"),
            "{err}"
        );
    }
}
