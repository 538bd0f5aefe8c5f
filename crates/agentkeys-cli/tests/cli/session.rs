//! `init`, `whoami`, `revoke`, `recover`, and the session at rest.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use agentkeys_core::Backend as _;
use agentkeys_core::session_store::keyring;
use agentkeys_types::ErrorCode;
use predicates::prelude::*;
use predicates::str::contains;

use super::common::*;

fn whoami_json(home: &Home) -> serde_json::Value {
    let out = home.cmd().args(["whoami", "--json"]).assert().success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

fn keyring_bytes(account: &str) -> Vec<u8> {
    keyring::get(account)
        .unwrap()
        .expect("the keyring entry exists")
        .expose_secret()
        .to_vec()
}

#[test]
fn init_twice_leaves_the_session_file_and_keyring_entry_unchanged() {
    let server = start_server();
    let Some(home) = keyring_home(
        &server,
        "init_twice_leaves_the_session_file_and_keyring_entry_unchanged",
    ) else {
        return;
    };
    let wallet = home.init();
    let file1 = std::fs::read(home.session_store().session_path()).unwrap();
    let who = whoami_json(&home);
    assert_eq!(who["protection"]["kind"], "keyring");
    let account = who["protection"]["account"].as_str().unwrap().to_owned();
    let key1 = keyring_bytes(&account);

    home.cmd()
        .arg("init")
        .assert()
        .success()
        .stdout(format!("Already initialized as {wallet}\n"));

    assert_eq!(
        std::fs::read(home.session_store().session_path()).unwrap(),
        file1
    );
    assert_eq!(keyring_bytes(&account), key1);
    assert_eq!(
        whoami_json(&home)["protection"]["account"],
        account.as_str()
    );
}

#[test]
fn init_force_replaces_the_session_and_the_old_token_stops_working() {
    let server = start_server();
    let Some(home) = keyring_home(
        &server,
        "init_force_replaces_the_session_and_the_old_token_stops_working",
    ) else {
        return;
    };
    let wallet = home.init();
    let old_client = home.client();
    let file1 = std::fs::read(home.session_store().session_path()).unwrap();
    let account1 = whoami_json(&home)["protection"]["account"]
        .as_str()
        .unwrap()
        .to_owned();

    home.cmd()
        .args(["init", "--force"])
        .env(
            "AGENTKEYS_AUTH_TOKEN",
            format!("enrol-{}", home.path().display()),
        )
        .assert()
        .success()
        .stdout(contains("Initialized as").and(contains("previous session was revoked")));

    assert_ne!(
        std::fs::read(home.session_store().session_path()).unwrap(),
        file1
    );
    let who = whoami_json(&home);
    assert_eq!(who["wallet"], wallet.as_str());
    assert_ne!(who["protection"]["account"], account1.as_str());
    assert!(
        keyring::get(&account1).unwrap().is_none(),
        "the old data key is deleted"
    );
    assert_eq!(
        code_of(block_on(old_client.session())),
        ErrorCode::Unauthorized
    );
}

#[test]
fn init_after_the_session_was_revoked_mints_a_new_one() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    block_on(home.client().revoke(&Default::default())).unwrap();
    home.cmd()
        .arg("whoami")
        .assert()
        .code(3)
        .stderr(contains("error: UNAUTHORIZED").and(contains("agentkeys init")));
    home.cmd()
        .arg("init")
        .env("AGENTKEYS_AUTH_TOKEN", "again")
        .assert()
        .success()
        .stdout(contains("Initialized as"))
        .stderr(contains("expired or revoked"));
    home.cmd().arg("whoami").assert().success();
}

#[test]
fn the_file_fallback_keeps_the_key_in_a_0600_file_and_whoami_says_so() {
    let server = start_server();
    let home = Home::with_store(&server, "file");
    home.init();
    let mode = std::fs::metadata(home.session_store().key_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let home_mode = std::fs::metadata(home.path()).unwrap().permissions().mode();
    assert_eq!(home_mode & 0o077, 0, "AGENTKEYS_HOME is private");
    home.cmd()
        .arg("whoami")
        .assert()
        .success()
        .stdout(contains("protection: data key in a 0600 file"));
}

#[test]
fn whoami_shows_wallet_kind_scope_lifetime_server_and_protection() {
    let server = start_server();
    let home = Home::new(&server);
    let wallet = home.init();
    let out = home.cmd().arg("whoami").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for want in [
        format!("wallet:     {wallet}"),
        "kind:       master".into(),
        "scope:      * (every service)".into(),
        "created:".into(),
        "left)".into(),
        format!("server:     {}", server.url),
        "protection: data key in".into(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let v = whoami_json(&home);
    assert!(v["expires_in_secs"].as_i64().unwrap() > 29 * 86_400);
}

#[test]
fn init_without_a_token_or_terminal_is_a_usage_error() {
    let server = start_server();
    let home = Home::new(&server);
    home.cmd()
        .arg("init")
        .assert()
        .code(2)
        .stderr(contains("no enrolment token").and(contains("AGENTKEYS_AUTH_TOKEN")));
    home.cmd()
        .args(["init", "--auth-token", "-"])
        .write_stdin("piped-enrolment\n")
        .assert()
        .success();
}

#[test]
fn revoke_without_an_argument_revokes_and_wipes_the_local_copy() {
    let server = start_server();
    let Some(home) = keyring_home(
        &server,
        "revoke_without_an_argument_revokes_and_wipes_the_local_copy",
    ) else {
        return;
    };
    home.init();
    let client = home.client();
    let account = whoami_json(&home)["protection"]["account"]
        .as_str()
        .unwrap()
        .to_owned();
    home.cmd()
        .arg("revoke")
        .assert()
        .success()
        .stdout(contains("wiped the local copy"));
    assert!(!home.session_store().session_path().exists());
    assert!(keyring::get(&account).unwrap().is_none());
    assert_eq!(code_of(block_on(client.session())), ErrorCode::Unauthorized);
    home.cmd()
        .arg("whoami")
        .assert()
        .code(3)
        .stderr(contains("error: NO_SESSION").and(contains("agentkeys init")));
}

#[test]
fn a_stored_token_is_never_sent_to_another_server() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.cmd()
        .args(["whoami", "--server", "http://127.0.0.1:9"])
        .assert()
        .code(7)
        .stderr(contains("error: CONFLICT").and(contains("never sent elsewhere")));
}

#[test]
fn a_server_that_is_down_gives_the_unreachable_error_fast() {
    let mut server = start_server();
    let home = Home::new(&server);
    home.init();
    server.stop();
    let started = Instant::now();
    home.cmd().arg("whoami").assert().code(6).stderr(
        contains("error: UNREACHABLE").and(contains("hint: check that agentkeys-server runs")),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    home.cmd()
        .args(["list", "--json"])
        .assert()
        .code(6)
        .stderr(contains("\"code\":\"UNREACHABLE\""));
}

#[test]
fn recover_gives_this_home_an_agent_session_after_approval() {
    let server = start_server();
    let master = Home::new(&server);
    let master_wallet = master.init();
    let (agent, _) = master.pair_agent(&["--scope", "openai", "--read-only"]);
    master
        .cmd()
        .args(["link", agent.as_str(), "--alias", "bot"])
        .assert()
        .success();
    let value = canary("recover");
    master.store_value("openai", &value, &["--agent", "bot"]);

    let sandbox = Home::new(&server);
    // An alias belongs to one master: without --parent it names nobody.
    sandbox
        .cmd()
        .args(["recover", "bot", "--wait", "5"])
        .assert()
        .failure()
        .stderr(contains("needs parent"));
    let mut child = sandbox
        .std_cmd()
        .args([
            "recover",
            "bot",
            "--parent",
            master_wallet.as_str(),
            "--wait",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.starts_with("Recover code "), "{line}");
    let code = line
        .split("approve with: agentkeys approve ")
        .nth(1)
        .unwrap()
        .trim();
    master
        .cmd()
        .args(["approve", code, "--yes"])
        .assert()
        .success()
        .stdout(contains(format!("agent {agent} gets a new session")));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", outputs(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Recovered a session for agent"));

    let who = whoami_json(&sandbox);
    assert_eq!(who["wallet"], agent.as_str());
    assert_eq!(who["kind"], "agent");
    assert_eq!(sandbox.read("openai", &[]), value);
    // The recovered session is read-only: storing is refused.
    sandbox
        .cmd()
        .args(["store", "openai"])
        .write_stdin("x")
        .assert()
        .code(3)
        .stderr(contains("error: DENIED"));
}
