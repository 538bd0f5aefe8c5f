//! `store`, `read`, `list`, `policy`, and scope enforcement as seen from an agent.

use predicates::prelude::*;
use predicates::str::contains;

use super::common::*;

#[test]
fn a_value_stored_from_stdin_reads_back_exactly() {
    let server = start_server();
    let home = Home::new(&server);
    let wallet = home.init();
    let value = canary("stdin");
    home.cmd()
        .args(["store", "openai"])
        .write_stdin(format!("{value}\n"))
        .assert()
        .success()
        .stdout(format!("Stored openai for {wallet}\n"));
    // Not a terminal: the value exactly, no newline, nothing else on stdout.
    home.cmd()
        .args(["read", "openai"])
        .assert()
        .success()
        .stdout(value.clone())
        .stderr("");
    let out = home
        .cmd()
        .args(["read", "openai", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["value"], value.as_str());
    assert_eq!(v["service"], "openai");
    assert_eq!(v["agent"], wallet.as_str());
}

#[test]
fn values_come_from_env_and_files_byte_for_byte() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("env");
    home.cmd()
        .args(["store", "github", "--from-env", "GH_TOKEN_FOR_TEST"])
        .env("GH_TOKEN_FOR_TEST", &value)
        .assert()
        .success();
    assert_eq!(home.read("github", &[]), value);

    let file = home.path().join("pem.txt");
    let pem = format!(
        "-----BEGIN KEY-----\n{}\n-----END KEY-----\n",
        canary("file")
    );
    std::fs::write(&file, &pem).unwrap();
    home.cmd()
        .args(["store", "deploy-key", "--from-file"])
        .arg(&file)
        .assert()
        .success();
    assert_eq!(
        home.read("deploy-key", &[]),
        pem,
        "the trailing newline is kept"
    );

    home.cmd()
        .args(["store", "x", "--from-env", "NOT_SET_ANYWHERE_42"])
        .assert()
        .code(2)
        .stderr(contains("NOT_SET_ANYWHERE_42 is not set"));
}

#[test]
fn a_value_on_the_command_line_is_refused_without_being_echoed() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("argv");
    let out = home
        .cmd()
        .args(["store", "openai", &value])
        .assert()
        .code(2)
        .stderr(contains("command line is refused").and(contains("hint: pipe it")));
    assert!(!outputs(out.get_output()).contains(&value));
    let out = home
        .cmd()
        .args(["store", "openai", "--json", "--", &value])
        .assert()
        .code(2);
    assert!(!outputs(out.get_output()).contains(&value));
    home.cmd()
        .args(["read", "openai"])
        .assert()
        .code(4)
        .stderr(contains("error: NOT_FOUND"));
}

#[test]
fn with_nothing_on_stdin_and_no_terminal_store_refuses_to_prompt() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.cmd()
        .args(["store", "openai"])
        .assert()
        .code(2)
        .stderr(contains("no value on stdin, and no terminal to prompt on"));
}

#[test]
fn list_shows_names_and_policies_never_values() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("list");
    home.store_value("openai", &value, &[]);
    home.store_value("stripe", &value, &["--high-value"]);
    let out = home.cmd().arg("list").assert().success();
    let text = outputs(out.get_output());
    assert!(text.contains("SERVICE") && text.contains("high-value") && text.contains("normal"));
    assert!(!text.contains(&value));
    let out = home.cmd().args(["list", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["credentials"].as_array().unwrap().len(), 2);
    home.cmd()
        .args(["policy", "stripe", "--normal"])
        .assert()
        .success()
        .stdout(contains("is now normal"));
    assert_eq!(home.read("stripe", &[]), value);
}

#[test]
fn scope_changes_take_effect_on_the_agents_next_read() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let (agent, client) = home.pair_agent(&["--scope", "openai"]);
    let (openai, github) = (canary("openai"), canary("github"));
    home.store_value("openai", &openai, &["--agent", agent.as_str()]);
    home.store_value("github", &github, &["--agent", agent.as_str()]);

    assert_eq!(agent_read(&client, "openai").unwrap(), openai);
    assert!(agent_read(&client, "github").is_err());

    home.cmd()
        .args(["scope", agent.as_str(), "--add", "github"])
        .assert()
        .success()
        .stdout(format!("Scope of {agent}: github, openai\n"));
    assert_eq!(agent_read(&client, "github").unwrap(), github);

    home.cmd()
        .args(["scope", agent.as_str(), "--remove", "openai", "--read-only"])
        .assert()
        .success()
        .stdout(contains("github, read-only"));
    assert!(agent_read(&client, "openai").is_err());

    home.cmd()
        .args(["scope", agent.as_str(), "--set", ""])
        .assert()
        .success()
        .stdout(contains(": none"));
    assert!(agent_read(&client, "github").is_err());
    home.cmd()
        .args(["scope", agent.as_str(), "--add", "Not A Name"])
        .assert()
        .code(2);
}

#[test]
fn a_read_only_agent_cannot_store() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let (_, client) = home.pair_agent(&["--scope", "openai", "--read-only"]);
    let r = block_on(agentkeys_core::Backend::store_credential(
        &client,
        None,
        &svc("openai"),
        b"value",
        None,
    ));
    assert_eq!(code_of(r), agentkeys_types::ErrorCode::Denied);
}

#[test]
fn a_missing_credential_is_not_found_in_text_and_json() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.cmd()
        .args(["read", "nothing-here"])
        .assert()
        .code(4)
        .stderr(contains("error: NOT_FOUND").and(contains("hint:")));
    let out = home
        .cmd()
        .args(["read", "nothing-here", "--json"])
        .assert()
        .code(4);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stderr).unwrap();
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    assert_eq!(v["error"]["exit_code"], 4);
    assert!(v["error"]["hint"].is_string());
    home.cmd()
        .args(["read", "Bad Name"])
        .assert()
        .code(2)
        .stderr(contains("not a service name"));
}

/// Runs `agentkeys ARGS` on a pseudo-terminal (util-linux `script`), answers `input` once
/// `prompt` appears, and returns everything the terminal showed.
pub(super) fn on_a_terminal(home: &Home, args: &str, prompt: &str, input: &str) -> (bool, String) {
    use std::io::{Read as _, Write as _};
    let mut child = std::process::Command::new("script")
        .args(["-qec", &format!("{CLI} {args}"), "/dev/null"])
        .envs(home.cmd_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(prompt) {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "no prompt; terminal showed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    let ok = child.wait().unwrap().success();
    (ok, String::from_utf8_lossy(&seen).into_owned())
}

#[test]
fn on_a_terminal_the_prompt_hides_what_is_typed() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("typed");
    let (ok, screen) = on_a_terminal(
        &home,
        "store typed",
        "Value for typed (input hidden): ",
        &format!("{value}\n"),
    );
    assert!(ok, "{screen}");
    assert!(screen.contains("Stored typed for"), "{screen}");
    assert!(!screen.contains(&value), "the value was echoed: {screen}");
    assert_eq!(home.read("typed", &[]), value);
}

/// `bind SERVICE --json` → the binding (or null).
fn binding_of(home: &Home, service: &str) -> serde_json::Value {
    let out = home
        .cmd()
        .args(["bind", service, "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    v["binding"].clone()
}

#[test]
fn a_well_known_service_binds_itself_and_bind_changes_it() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("bind");
    home.cmd()
        .args(["store", "openai"])
        .write_stdin(value.clone())
        .assert()
        .success()
        .stderr(contains("bound to api.openai.com"));
    let b = binding_of(&home, "openai");
    assert_eq!(b["hosts"], serde_json::json!(["api.openai.com"]));
    assert_eq!(b["inject"]["kind"], "bearer");

    // A custom binding survives a new value; --no-bind leaves a new one unbound.
    home.cmd()
        .args([
            "bind", "openai", "--host", "API.example.com", "--host", "*.example.net",
            "--inject", "header:X-Api-Key:key ", "--method", "post", "--path", "/v1/",
        ])
        .assert()
        .success()
        .stdout(contains(
            "api.example.com, *.example.net; methods POST; paths /v1/; header x-api-key (\"key \" + value)",
        ));
    home.store_value("openai", &canary("bind2"), &[]);
    assert_eq!(binding_of(&home, "openai")["hosts"][1], "*.example.net");
    home.store_value("anthropic", &value, &["--no-bind"]);
    assert!(binding_of(&home, "anthropic").is_null());
    home.cmd()
        .args(["bind", "anthropic", "--well-known"])
        .assert()
        .success()
        .stdout(contains(
            "api.anthropic.com; placeholder replaced in headers x-api-key, authorization",
        ));
    let out = home.cmd().arg("list").assert().success();
    let text = outputs(out.get_output());
    assert!(
        text.contains("BOUND TO") && text.contains("api.anthropic.com"),
        "{text}"
    );
    assert!(!text.contains(&value));

    // Body fields: named, shown, and the strict egress they bring (or not).
    home.cmd()
        .args([
            "bind",
            "anthropic",
            "--host",
            "api.example.com",
            "--inject",
            "substitute:X-Api-Key",
            "--body-field",
            "/auth/api_key",
            "--body-field",
            "form:key",
        ])
        .assert()
        .success()
        .stdout(contains(
            "api.example.com; placeholder replaced in headers x-api-key; body fields \
             /auth/api_key, form:key; runs using it refuse unbound hosts",
        ));
    let b = binding_of(&home, "anthropic");
    assert_eq!(
        b["inject"],
        serde_json::json!({"kind": "substitute", "headers": ["x-api-key"],
            "body_fields": [{"json": "/auth/api_key"}, {"form": "key"}]})
    );
    home.cmd()
        .args([
            "bind",
            "anthropic",
            "--host",
            "api.example.com",
            "--body-field",
            "/k",
            "--tunnel-unbound",
        ])
        .assert()
        .success()
        .stdout(contains(
            "placeholder replaced in body fields /k; runs using it still tunnel unbound hosts",
        ));
    assert_eq!(binding_of(&home, "anthropic")["tunnel_unbound"], true);

    home.cmd()
        .args(["bind", "openai", "--remove"])
        .assert()
        .success()
        .stdout(contains("is not bound"));
    assert!(binding_of(&home, "openai").is_null());
}

#[test]
fn a_bad_binding_is_a_usage_error_with_a_hint() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.store_value("api", &canary("bad-bind"), &[]);
    for (args, says) in [
        (&["--host", "*"][..], "not a host name"),
        (&["--host", "*.com"][..], "too wide"),
        (
            &["--host", "a.example.com", "--inject", "cookie"][..],
            "not an injection",
        ),
        (
            &["--host", "a.example.com", "--inject", "header:host"][..],
            "cannot inject into 'host'",
        ),
        (
            &["--host", "a.example.com", "--path", "v1"][..],
            "not a path prefix",
        ),
        (
            &[
                "--host",
                "a.example.com",
                "--inject",
                "bearer",
                "--substitute-query",
            ][..],
            "go with --inject substitute",
        ),
        (&["--well-known"][..], "not a well-known service"),
        (
            &["--host", "a.example.com", "--inject", "substitute"][..],
            "names where the placeholder may be",
        ),
        (
            &["--host", "a.example.com"][..],
            "--inject substitute:authorization",
        ),
        (
            &["--host", "a.example.com", "--inject", "substitute:X Y"][..],
            "not a header name",
        ),
        (
            &["--host", "a.example.com", "--inject", "substitutes"][..],
            "not an injection",
        ),
        (
            &["--host", "a.example.com", "--body-field", "api_key"][..],
            "not a body field",
        ),
        (
            &[
                "--host",
                "a.example.com",
                "--inject",
                "bearer",
                "--body-field",
                "/api_key",
            ][..],
            "go with --inject substitute",
        ),
        (
            &[
                "--host",
                "a.example.com",
                "--inject",
                "substitute",
                "--substitute-body",
            ][..],
            "--substitute-body is retired",
        ),
        (
            &[
                "--host",
                "a.example.com",
                "--inject",
                "substitute:x-api-key",
                "--tunnel-unbound",
            ][..],
            "--body-field",
        ),
    ] {
        home.cmd()
            .args(["bind", "api"])
            .args(args)
            .assert()
            .code(2)
            .stderr(contains(says));
    }
    home.cmd()
        .args(["bind", "missing"])
        .assert()
        .code(4)
        .stderr(contains("store it first"));
}
