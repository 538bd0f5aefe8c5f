//! Pairing, renewal of expired codes, recovery, stored sessions.

use agentkeys_core::Backend as _;
use agentkeys_core::HttpBackend;
use agentkeys_testkit::{TempDir, canary};
use serde_json::json;

use super::common::*;

#[test]
fn a_daemon_pairs_in_two_processes_and_then_serves_its_scope() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let value = canary("pair");
    master.store("openai", &value, &[]);
    let home = TempDir::new("agentkeys-test-daemon");
    let d = Daemon::spawn(&server, home.path(), &["--store-session"]);
    let (code, otp) = d.code();
    // While it waits, status shows the code and tools say what the human must do.
    let status = d.client().request("agentkeys/status", json!({}));
    assert_eq!(status["result"]["waiting"]["pair_code"], code.as_str());
    let early = d.client().request("tools/list", json!({}));
    assert!(
        early["error"]["message"].as_str().unwrap().contains(&code),
        "{early}"
    );

    let out = master.approve(&code, &["--scope", "openai"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("OTP: {otp}")));
    let wallet = d.serving();

    let mut c = d.client();
    let init = c.initialize();
    assert_eq!(init["result"]["serverInfo"]["name"], "agentkeys");
    assert!(
        init["result"]["instructions"]
            .as_str()
            .unwrap()
            .contains("get_credential")
    );
    assert_eq!(
        c.tool("get_credential", json!({"service": "openai"})),
        (false, value)
    );
    let (_, who) = c.tool("whoami", json!({}));
    assert!(who.contains(&wallet) && who.contains("openai"), "{who}");
    let status = c.request("agentkeys/status", json!({}));
    assert_eq!(status["result"]["wallet"], wallet.as_str());
    assert_eq!(status["result"]["counters"]["delivered"], 1);
    // The session is stored like the CLI's, under account daemon-<wallet>.
    assert!(home.path().join(format!("daemon-{wallet}.enc")).exists());
}

#[test]
fn an_expired_code_is_replaced_and_only_the_fresh_one_can_be_approved() {
    let server = start_server(&["--pair-ttl", "2s"]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let d = Daemon::spawn(&server, home.path(), &[]);
    let (first, _) = d.code();
    d.wait_for("expired without a decision");
    let (second, _) = d.code();
    assert_ne!(first, second);
    let out = master.approve(&first, &["--scope", "openai"]);
    assert!(
        !out.status.success(),
        "an expired code was approved: {}",
        text(&out)
    );
    // A scope that is not valid is refused, and the daemon keeps waiting.
    let out = master.approve(&second, &["--scope", "Not A Service"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = master.approve(&second, &["--scope", "openai"]);
    if out.status.success() {
        d.serving();
    } else {
        // The 2 s code may lapse between the two approvals on a slow machine; the daemon
        // then shows a third code, which is approved instead.
        let (third, _) = d.code();
        assert!(
            master
                .approve(&third, &["--scope", "openai"])
                .status
                .success()
        );
        d.serving();
    }
}

#[test]
fn recover_keeps_the_wallet_and_credentials_and_ends_the_old_session() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let old_home = TempDir::new("agentkeys-test-daemon");
    let (mut old, wallet) = paired_with(
        &master,
        old_home.path(),
        &["--scope", "openai"],
        &["--store-session"],
    );
    let value = canary("recover");
    master.store("openai", &value, &["--agent", &wallet]);
    assert!(
        master
            .cli(&["link", &wallet, "--alias", "builder"])
            .status
            .success()
    );
    assert_eq!(old.terminate().code(), Some(0));

    let new_home = TempDir::new("agentkeys-test-daemon");
    let parent = master.wallet();
    let d = Daemon::spawn(
        &server,
        new_home.path(),
        &["--recover", "builder", "--parent", &parent],
    );
    let (code, _) = d.code();
    assert!(master.approve(&code, &[]).status.success());
    assert_eq!(d.serving(), wallet, "recovery keeps the agent's wallet");
    let mut c = d.client();
    c.initialize();
    assert_eq!(
        c.tool("get_credential", json!({"service": "openai"})),
        (false, value)
    );

    // The old daemon's stored session no longer works.
    let slot = agentkeys_daemon::pairing::slot(old_home.path(), &wallet);
    let (stored, _) = slot.load().unwrap();
    let client = HttpBackend::new(&stored.server)
        .unwrap()
        .with_token(&stored.token)
        .unwrap();
    let err = block_on(client.session()).unwrap_err();
    assert_eq!(err.code(), agentkeys_types::ErrorCode::Unauthorized);
}

#[test]
fn a_restarted_daemon_reuses_its_session_and_several_need_session_id() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let stored = ["--store-session"];
    let (mut d, first) = paired_with(&master, home.path(), &["--scope", "openai"], &stored);
    assert_eq!(d.terminate().code(), Some(0));
    let again = Daemon::spawn(&server, home.path(), &stored);
    assert_eq!(again.serving(), first, "no new pairing on restart");
    drop(again);

    // A second agent's session lands in the same home.
    let other_home = TempDir::new("agentkeys-test-daemon");
    let (mut other, second) =
        paired_with(&master, other_home.path(), &["--scope", "openai"], &stored);
    assert_eq!(other.terminate().code(), Some(0));
    for ext in ["enc", "key"] {
        let name = format!("daemon-{second}.{ext}");
        std::fs::copy(other_home.path().join(&name), home.path().join(&name)).unwrap();
    }
    let out = std::process::Command::new(DAEMON)
        .args(["serve", "--store-session", "--server", &server.url])
        .env("AGENTKEYS_HOME", home.path())
        .env(
            "AGENTKEYS_SOCKET",
            home.path().join("sock").join("daemon.sock"),
        )
        .env("AGENTKEYS_SESSION_STORE", "file")
        .output()
        .unwrap();
    let err = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&first) && err.contains(&second) && err.contains("--session-id"),
        "{err}"
    );
    let chosen = Daemon::spawn(
        &server,
        home.path(),
        &["--store-session", "--session-id", &second],
    );
    assert_eq!(chosen.serving(), second);
}

#[test]
fn a_pair_request_addressed_with_parent_is_only_that_masters_to_approve() {
    let server = start_server(&[]);
    let alice = Master::enrolled(&server, "alice-enrol");
    let mallory = Master::enrolled(&server, "mallory-enrol");
    // Names are per master: mallory linking "alice" changes nothing, and --parent takes
    // only a wallet.
    let out = mallory.cli(&["link", &mallory.wallet(), "--alias", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    let home = TempDir::new("agentkeys-test-daemon");
    let by_name = std::process::Command::new(DAEMON)
        .args(["serve", "--server", &server.url, "--parent", "alice"])
        .env("AGENTKEYS_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(by_name.status.code(), Some(2), "{}", text(&by_name));
    assert!(text(&by_name).contains("wallet"), "{}", text(&by_name));
    let d = Daemon::spawn(&server, home.path(), &["--parent", &alice.wallet()]);
    let (code, _) = d.code();
    let out = mallory.approve(&code, &["--scope", "openai"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "another master must not see it: {}",
        text(&out)
    );
    let out = alice.approve(&code, &["--scope", "openai"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Addressed to"));
    let wallet = d.serving();
    let agents = alice.cli(&["agents", "--json"]);
    assert!(String::from_utf8_lossy(&agents.stdout).contains(&wallet));
}

#[test]
fn a_daemon_waits_out_a_server_that_limits_pair_requests() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    // Another client of this address spends the pair-request budget.
    let anon = HttpBackend::new(&server.url).unwrap();
    let limited = (0..500).any(|_| {
        let key = agentkeys_core::crypto::hpke::HpkeKeyPair::generate().unwrap();
        let req = agentkeys_types::api::OpenAuthRequest {
            kind: agentkeys_types::api::AuthKind::Pair,
            requester_public_key: Some(base64_of(&key.public_key())),
            identity: None,
            parent: None,
            agent: None,
            service: None,
            description: None,
        };
        block_on(anon.open_auth_request(&req))
            .is_err_and(|e| e.code() == agentkeys_types::ErrorCode::RateLimited)
    });
    assert!(limited, "the budget was never spent");
    // The daemon asks while the budget is spent: it waits as told, then shows a code.
    let home = TempDir::new("agentkeys-test-daemon");
    let d = Daemon::spawn(&server, home.path(), &[]);
    let wallet = d.pair(&master, &["--scope", "openai"]);
    assert!(wallet.starts_with("0x"), "{wallet}");
    let log = d.log();
    assert!(!log.contains("RATE_LIMITED"), "{log}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
