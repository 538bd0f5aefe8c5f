//! High-value releases and `approve`.

use std::process::Stdio;

use agentkeys_core::Backend as _;
use predicates::prelude::*;
use predicates::str::contains;

use super::common::*;

/// Stores a high-value credential and returns its value.
fn high_value(home: &Home) -> String {
    let value = canary("hv");
    home.store_value("stripe", &value, &["--high-value"]);
    value
}

/// `read` without a grant: exit 5 and the approval line; returns (code, otp).
fn read_needs_approval(home: &Home) -> (String, String) {
    let out = home
        .cmd()
        .args(["read", "stripe"])
        .assert()
        .code(5)
        .stdout("");
    approval_from_stderr(&String::from_utf8_lossy(&out.get_output().stderr))
}

#[test]
fn a_high_value_read_needs_an_approval_for_each_release() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = high_value(&home);

    let (code, otp) = read_needs_approval(&home);
    home.cmd()
        .args(["approve", &code, "--yes"])
        .assert()
        .success()
        .stdout(contains("Approved: one release of stripe"))
        .stderr(contains(format!("OTP: {otp}")).and(contains("High-value release")));
    // The pending request is the same one: --wait sees it approved and prints the value.
    home.cmd()
        .args(["read", "stripe", "--wait", "30"])
        .assert()
        .success()
        .stdout(value);
    // The grant was single-use.
    let (code2, _) = read_needs_approval(&home);
    assert_ne!(code2, code);
}

#[test]
fn a_denied_release_makes_read_wait_fail() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    high_value(&home);
    let (code, _) = read_needs_approval(&home);
    let mut waiting = home
        .std_cmd()
        .args(["read", "stripe", "--wait", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Deny only once it waits on this very request (denying first would make its read
    // open a fresh request, which it would then wait on).
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(
        first.contains(&format!("agentkeys approve {code}")),
        "{first}"
    );
    home.cmd()
        .args(["approve", &code, "--deny"])
        .assert()
        .success()
        .stdout(contains("Denied the high-value release"));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{rest}");
    assert!(out.stdout.is_empty());
    assert!(
        rest.contains("error: DENIED: the release of stripe was denied"),
        "{rest}"
    );
}

#[test]
fn approve_shows_the_request_and_will_not_decide_without_a_terminal_or_yes() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let anon = agentkeys_core::HttpBackend::new(&server.url).unwrap();
    let key = agentkeys_core::crypto::HpkeKeyPair::generate().unwrap();
    let ticket = block_on(
        anon.open_auth_request(&agentkeys_testkit::pairing::pair_request(
            &key,
            Some("ci runner 7"),
        )),
    )
    .unwrap();
    // setsid: no controlling terminal even when the tests run in one.
    let out = std::process::Command::new("setsid")
        .args([
            "-w",
            CLI,
            "approve",
            &ticket.pair_code.to_lowercase().replace('-', ""),
        ])
        .args(["--scope", "openai,github"])
        .envs(home.cmd_env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        format!("Pairing request {}", ticket.pair_code),
        "Scope to grant: github, openai".into(),
        "Description: ci runner 7".into(),
        format!("OTP: {}", ticket.otp),
        "no terminal to ask on".into(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in {err}");
    }
    let status = block_on(anon.decision(&ticket.id, 0)).unwrap().status;
    assert_eq!(
        status,
        agentkeys_types::api::AuthStatus::Pending,
        "nothing was decided"
    );
    home.cmd()
        .args(["approve", "NOPE"])
        .assert()
        .code(2)
        .stderr(contains("not a pair code"));
    home.cmd()
        .args(["approve", "ZZZZ-ZZZZ", "--yes"])
        .assert()
        .code(4);
}

#[test]
fn scope_flags_are_refused_on_a_high_value_approval() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    high_value(&home);
    let (code, _) = read_needs_approval(&home);
    home.cmd()
        .args(["approve", &code, "--yes", "--scope", "x"])
        .assert()
        .code(2)
        .stderr(contains("apply to pairings only"));
}

#[test]
fn on_a_terminal_approve_asks_and_only_y_approves() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = high_value(&home);
    let (code, otp) = read_needs_approval(&home);
    let (ok, screen) = super::credentials::on_a_terminal(
        &home,
        &format!("approve {code}"),
        "Approve this high-value release? [y/N] ",
        "n\n",
    );
    assert!(!ok && screen.contains(&format!("OTP: {otp}")), "{screen}");
    assert!(screen.contains("not approved; nothing changed"), "{screen}");
    let (ok, screen) =
        super::credentials::on_a_terminal(&home, &format!("approve {code}"), "[y/N] ", "y\n");
    assert!(ok, "{screen}");
    assert_eq!(home.read("stripe", &["--wait", "5"]), value);
}

#[test]
fn approve_without_a_code_lists_only_this_masters_requests_and_decides_one_picked() {
    let server = start_server();
    let one = Home::new(&server);
    one.init();
    let two = Home::new(&server);
    two.init();
    let value = high_value(&one);
    let (code, otp) = read_needs_approval(&one);

    let out = one.cmd().args(["approve", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let listed = v["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{v}");
    assert_eq!(listed[0]["pair_code"], code.as_str());
    assert_eq!(listed[0]["otp"], otp.as_str());
    assert_eq!(listed[0]["kind"], "high_value");
    assert_eq!(listed[0]["service"], "stripe");
    // The other master sees none of it.
    two.cmd()
        .args(["approve"])
        .assert()
        .success()
        .stdout("No pending requests.\n");
    two.cmd()
        .args(["approve", "--json"])
        .assert()
        .success()
        .stdout(contains("\"requests\": []"));
    // Without a terminal: the table and how to decide, and nothing decided.
    let out = std::process::Command::new("setsid")
        .args(["-w", CLI, "approve"])
        .envs(one.cmd_env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = outputs(&out);
    assert!(out.status.success(), "{text}");
    for want in [
        "KIND",
        "high-value release",
        code.as_str(),
        otp.as_str(),
        "one read of stripe",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
    assert!(text.contains("agentkeys approve CODE"), "{text}");
    // --yes with no code would decide blindly: refused.
    one.cmd()
        .args(["approve", "--yes"])
        .assert()
        .code(2)
        .stderr(contains("--yes needs the CODE"));

    // On a terminal (script(1) gives it one): pick 1, confirm y.
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &format!("{CLI} approve"), "/dev/null"])
        .envs(one.cmd_env())
        .stdin({
            let (r, mut w) = std::io::pipe().unwrap();
            std::io::Write::write_all(&mut w, b"1\ny\n").unwrap();
            r
        })
        .output()
        .unwrap();
    let text = outputs(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Decide which one?"), "{text}");
    assert!(text.contains("Approved: one release of stripe"), "{text}");
    one.cmd()
        .args(["read", "stripe", "--wait", "30"])
        .assert()
        .success()
        .stdout(value);
    // Decided once: it left the inbox, and the same code is consumed.
    one.cmd()
        .args(["approve"])
        .assert()
        .success()
        .stdout("No pending requests.\n");
    one.cmd().args(["approve", &code, "--yes"]).assert().code(7);
}
