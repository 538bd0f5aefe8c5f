//! `agents`, `link`, `revoke WALLET`, `teardown`.

use agentkeys_core::Backend as _;
use agentkeys_types::ErrorCode;
use predicates::str::contains;

use super::common::*;

#[test]
fn agents_lists_children_with_scope_names_and_last_use() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.cmd()
        .arg("agents")
        .assert()
        .success()
        .stderr(contains("No agents yet"));
    let (agent, client) = home.pair_agent(&["--scope", "openai", "--read-only"]);
    home.store_value("openai", &canary("a"), &["--agent", agent.as_str()]);
    agent_read(&client, "openai").unwrap();
    home.cmd()
        .args(["link", agent.as_str(), "--alias", "research-bot"])
        .assert()
        .success()
        .stdout(format!("Linked alias 'research-bot' to {agent}\n"));
    let out = home.cmd().arg("agents").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains(agent.as_str()) && text.contains("research-bot"),
        "{text}"
    );
    assert!(text.contains("openai, read-only"), "{text}");
    let out = home.cmd().args(["agents", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let a = &v["agents"][0];
    assert_eq!(a["wallet"], agent.as_str());
    assert!(a["last_used_at"].is_i64(), "{a}");
    assert_eq!(a["scope"]["read_only"], true);
}

#[test]
fn an_alias_or_email_names_the_agent_in_every_command() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let (agent, _) = home.pair_agent(&["--scope", "openai"]);
    home.cmd()
        .args(["link", agent.as_str(), "--email", "bot@example.com"])
        .assert()
        .success();
    let value = canary("alias");
    home.store_value("openai", &value, &["--agent", "bot@example.com"]);
    assert_eq!(home.read("openai", &["--agent", "bot@example.com"]), value);
    home.cmd()
        .args(["scope", "bot@example.com"])
        .assert()
        .success()
        .stdout(format!("Scope of {agent}: openai\n"));
    home.cmd()
        .args(["read", "openai", "--agent", "nobody-by-that-name"])
        .assert()
        .code(4)
        .stderr(contains("no agent named 'nobody-by-that-name'"));
    home.cmd()
        .args(["link", "0x12", "--alias", "x"])
        .assert()
        .code(2);
}

#[test]
fn revoking_an_agent_ends_its_sessions_at_once() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let (agent, client) = home.pair_agent(&["--scope", "openai"]);
    home.store_value("openai", &canary("r"), &["--agent", agent.as_str()]);
    agent_read(&client, "openai").unwrap();
    home.cmd()
        .args(["revoke", agent.as_str()])
        .assert()
        .success()
        .stdout(contains(format!("Revoked 1 session(s) of {agent}")));
    assert_eq!(agent_read(&client, "openai"), Err(ErrorCode::Unauthorized));
    // The master's own session is untouched.
    home.cmd().arg("whoami").assert().success();
}

#[test]
fn teardown_revokes_the_agent_and_deletes_its_credentials() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let (agent, client) = home.pair_agent(&["--scope", "*"]);
    home.store_value("openai", &canary("t"), &["--agent", agent.as_str()]);
    home.store_value("github", &canary("t"), &["--agent", agent.as_str()]);
    // No terminal to confirm on (setsid detaches it even when the tests run in one).
    let out = std::process::Command::new("setsid")
        .args(["-w", CLI, "teardown", agent.as_str()])
        .envs(home.cmd_env())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", outputs(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no terminal to ask on"));
    assert!(
        agent_read(&client, "openai").is_ok(),
        "nothing was torn down"
    );
    home.cmd()
        .args(["teardown", agent.as_str(), "--yes"])
        .assert()
        .success()
        .stdout(format!(
            "Tore down {agent}: 1 session(s) revoked, 2 credential(s) deleted\n"
        ));
    assert_eq!(code_of(block_on(client.session())), ErrorCode::Unauthorized);
    let out = home.cmd().args(["agents", "--json"]).assert().success();
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains(agent.as_str()));
}
