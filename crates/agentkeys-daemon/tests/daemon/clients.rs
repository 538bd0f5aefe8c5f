//! Real MCP clients against the daemon: the official Python SDK in both negotiation modes
//! (`legacy`: `initialize`, 2025-11-25; `auto`: `server/discover`, 2026-07-28) and the MCP
//! Inspector CLI, each through the stdio bridge `agentkeys-daemon mcp`.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentkeys_testkit::{TempDir, canary};
use serde_json::Value;

use super::common::*;

fn agent() -> (agentkeys_testkit::Server, Master, TempDir, Daemon, String) {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("client");
    master.store("openai", &value, &["--agent", &wallet]);
    master.store("github", &canary("other"), &[]);
    (server, master, home, d, value)
}

#[test]
fn the_official_python_sdk_works_in_legacy_and_auto_modes() {
    let (_server, _master, _home, d, value) = agent();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/daemon/mcp_sdk_conformance.py");
    for (mode, protocol) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let out = Command::new(sdk_python())
            .arg(&script)
            .args([mode, DAEMON])
            .env("AGENTKEYS_SOCKET", d.socket())
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["protocol"], protocol, "{mode}: {v}");
        assert_eq!(
            v["tools"],
            serde_json::json!(["get_credential", "list_credentials", "run", "whoami"])
        );
        assert_eq!(v["sha256"], sha256_hex(&value), "{mode}");
        assert_eq!(v["ok_is_error"], false);
        assert_eq!(v["denied_is_error"], true);
        assert!(
            v["denied_text"].as_str().unwrap().contains("not in scope"),
            "{v}"
        );
        assert_eq!(v["run"]["code"], 0, "{v}");
        assert_eq!(
            v["run"]["stdout"].as_str().unwrap().trim(),
            value.len().to_string()
        );
    }
}

/// The MCP Inspector CLI that `scripts/test.sh` installs in `target/npm`.
fn inspector() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/npm/node_modules/.bin/mcp-inspector");
    assert!(
        bin.exists(),
        "the MCP Inspector is missing: run 'bash scripts/test.sh' (it installs \
         @modelcontextprotocol/inspector into target/npm)"
    );
    bin
}

#[test]
fn the_mcp_inspector_cli_lists_the_tools_and_calls_one() {
    let (_server, _master, _home, d, value) = agent();
    let socket = format!("AGENTKEYS_SOCKET={}", d.socket().display());
    let inspect = |extra: &[&str]| -> Value {
        let out = Command::new(inspector())
            .args(["--cli", "-e", &socket, DAEMON, "mcp"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    };
    let tools = inspect(&["--method", "tools/list"]);
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{tools}");
    assert!(names.contains(&"get_credential"));
    let call = inspect(&[
        "--method",
        "tools/call",
        "--tool-name",
        "get_credential",
        "--tool-arg",
        "service=openai",
    ]);
    assert_eq!(call["content"][0]["text"], value.as_str(), "{call}");
}

#[test]
fn a_client_with_url_elicitation_gets_the_approval_link_and_then_the_value() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, _wallet) = paired(&master, home.path(), &["--scope", "stripe"]);
    let value = canary("elicit");
    master.store("stripe", &value, &["--high-value"]);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/daemon/mcp_sdk_elicitation.py");
    let out = Command::new(sdk_python())
        .arg(&script)
        .args([DAEMON, "stripe"])
        .arg(cli_bin())
        .args(["approve", "--yes"])
        .env("AGENTKEYS_SOCKET", d.socket())
        .env("AGENTKEYS_HOME", master.home())
        .env("AGENTKEYS_SERVER", master.server())
        .env("AGENTKEYS_SESSION_STORE", "file")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let elicited = v["elicited"].as_array().unwrap();
    assert_eq!(elicited.len(), 1, "{v}");
    let e = &elicited[0];
    assert_eq!(e["mode"], "url", "{v}");
    let url = e["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://localhost:{port}/approve/")),
        "{url}"
    );
    assert!(
        e["elicitation_id"].as_str().unwrap().starts_with("req_"),
        "{v}"
    );
    assert!(e["message"].as_str().unwrap().contains("stripe"), "{v}");
    assert!(
        !e.to_string().contains(&value),
        "the elicitation carries no secret"
    );
    assert_eq!(e["approver_exit"], 0, "{v}");
    // Approving it released the credential to the call that waited.
    assert_eq!(v["is_error"], false, "{v}");
    assert_eq!(v["sha256"], sha256_hex(&value), "{v}");
    // And the daemon told the client the elicitation is complete, naming it.
    assert_eq!(
        v["completed"],
        serde_json::json!([e["elicitation_id"]]),
        "{v}"
    );
    let trail = std::fs::read_to_string(d.trail()).unwrap();
    assert!(trail.contains("approval-elicit"), "{trail}");

    // A client without elicitation gets today's error, with the link added.
    let mut c = d.client();
    c.initialize();
    let (is_error, text) = c.tool("get_credential", serde_json::json!({"service": "stripe"}));
    assert!(is_error, "{text}");
    assert!(text.contains("agentkeys approve "), "{text}");
    assert!(
        text.contains(&format!("http://localhost:{port}/approve/")),
        "{text}"
    );
}
