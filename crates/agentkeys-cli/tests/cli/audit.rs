//! `usage` and `usage --verify`.

use predicates::prelude::*;
use predicates::str::contains;

use super::common::*;

#[test]
fn usage_lists_events_newest_first_with_filters() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("usage");
    home.store_value("openai", &value, &[]);
    home.store_value("github", &value, &[]);
    home.read("openai", &[]);
    let out = home
        .cmd()
        .args(["usage", "--service", "openai", "--since", "1h", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let events = v["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // openai is well known: its first store also binds it to its hosts.
    assert_eq!(
        actions,
        ["credential.read", "binding.set", "credential.store"],
        "{v}"
    );
    assert!(events.iter().all(|e| e["service"] == "openai"));
    let out = home.cmd().arg("usage").assert().success();
    let text = outputs(out.get_output());
    assert!(
        text.starts_with("SEQ") && text.contains("credential.store"),
        "{text}"
    );
    assert!(!text.contains(&value));
    home.cmd()
        .args(["usage", "--since", "3 days"])
        .assert()
        .code(2)
        .stderr(contains("not a duration"));
}

#[test]
fn usage_verify_catches_a_tampered_audit_row() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.store_value("openai", &canary("v"), &[]);
    home.read("openai", &[]);
    home.cmd()
        .args(["usage", "--verify"])
        .assert()
        .success()
        .stdout(contains("Audit chain intact"));

    // Someone with write access to the database rewrites history.
    block_on(async {
        use sqlx::ConnectOptions as _;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(server.db_path())
            .connect()
            .await
            .unwrap();
        sqlx::query("UPDATE audit SET outcome = 'DENIED' WHERE seq = 2")
            .execute(&mut conn)
            .await
            .unwrap();
    });

    home.cmd()
        .args(["usage", "--verify"])
        .assert()
        .code(8)
        .stderr(
            contains("error: AUDIT_BROKEN: the audit chain is broken at event #2")
                .and(contains("hint:")),
        );
    let out = home
        .cmd()
        .args(["usage", "--verify", "--json"])
        .assert()
        .code(8);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_broken_seq"], 2);
}
