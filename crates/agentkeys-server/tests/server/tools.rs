//! The maintenance commands of the real binary: `migrate` (SQLite → PostgreSQL, the chain
//! intact), `backup` (online SQLite copy) and `verify`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use agentkeys_core::client::Backend as _;
use agentkeys_types::api::Policy;

use super::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_agentkeys-server");

fn tool(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("AGENTKEYS_DATABASE_URL")
        .env_remove("AGENTKEYS_DATA_DIR")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_a_single_node_to_postgres_and_its_users_carry_on() {
    let single = TestServer::sqlite().await;
    let (m, _, m_token) = single.master("m").await;
    let (_, _, a_token) = single.agent(&m, scope(&["openai", "stripe"], true)).await;
    m.store_credential(None, &svc("openai"), b"sk-openai-value", None)
        .await
        .unwrap();
    m.store_credential(
        None,
        &svc("stripe"),
        b"sk-stripe-value",
        Some(Policy { high_value: true }),
    )
    .await
    .unwrap();
    let agent = client_with(&single.url, &a_token).await;
    agent.read_credential(None, &svc("openai")).await.unwrap();
    let before = m.verify_audit().await.unwrap();

    let target = fresh_database().await;
    let out = tool(&["migrate", "--from", &single.database, "--to", &target]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("audit chain verified on the copy"), "{said}");
    assert!(said.contains("credentials: 2 rows"), "{said}");
    assert!(
        said.contains(before.head_hash.as_deref().unwrap()),
        "the copy's head is the source's: {said}"
    );

    // The copy serves with the same keys: the sessions, values, policies and chain moved.
    let moved = TestServer::on(&target, single.dir.path()).await;
    let m2 = client_with(&moved.url, &m_token).await;
    let a2 = client_with(&moved.url, &a_token).await;
    assert_eq!(
        a2.read_credential(None, &svc("openai"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"sk-openai-value"
    );
    assert_code(
        a2.read_credential(None, &svc("stripe")).await,
        agentkeys_types::ErrorCode::ApprovalRequired,
    );
    let after = m2.verify_audit().await.unwrap();
    assert!(after.ok, "{after:?}");
    assert!(after.checked > before.checked, "the copy goes on chaining");

    // Once more into the same database: refused, nothing touched.
    let again = tool(&["migrate", "--from", &single.database, "--to", &target]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("CONFLICT"),
        "{}",
        text(&again.stderr)
    );
    assert!(
        text(&again.stderr).contains("hint:"),
        "{}",
        text(&again.stderr)
    );

    // verify, on the copy, as JSON.
    let v = tool(&["verify", "--database", &target, "--json"]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_a_serving_database_consistently_and_privately() {
    let single = TestServer::sqlite().await;
    let (m, _, _) = single.master("m").await;
    for i in 0..20 {
        m.store_credential(None, &svc(&format!("s{i}")), b"v", None)
            .await
            .unwrap();
    }
    // Writes go on while the backup runs.
    let url = single.url.clone();
    let (_, grant) = enrol_master(&url, "writer").await;
    let writer = tokio::spawn(async move {
        let c = client_with(&url, &grant.token).await;
        for i in 0..200 {
            c.store_credential(None, &svc(&format!("w{i}")), b"v", None)
                .await
                .unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let file_s = file.to_str().unwrap().to_owned();
    let db = single.database.clone();
    let out =
        tokio::task::spawn_blocking(move || tool(&["backup", "--database", &db, "--to", &file_s]))
            .await
            .unwrap();
    writer.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("audit chain verified"),
        "{}",
        text(&out.stdout)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v = tool(&[
        "verify",
        "--database",
        &format!("sqlite:{}", file.display()),
    ]);
    assert!(v.status.success(), "{}", text(&v.stdout));
    assert!(text(&v.stdout).starts_with("ok: "), "{}", text(&v.stdout));

    // Never over an existing file; PostgreSQL has its own tools; a missing source is named.
    let again = tool(&[
        "backup",
        "--database",
        &single.database,
        "--to",
        file.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("hint:"),
        "{}",
        text(&again.stderr)
    );
    let pg = tool(&[
        "backup",
        "--database",
        "postgres://x@127.0.0.1:1/x",
        "--to",
        "/tmp/x",
    ]);
    assert!(text(&pg.stderr).contains("pg_dump"), "{}", text(&pg.stderr));
    let missing = tool(&["verify", "--database", "sqlite:/nonexistent/agentkeys.db"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("NOT_FOUND"),
        "{}",
        text(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_tampered_row() {
    let single = TestServer::sqlite().await;
    let (m, _, _) = single.master("m").await;
    for i in 0..5 {
        m.store_credential(None, &svc(&format!("s{i}")), b"v", None)
            .await
            .unwrap();
    }
    execute_sql(
        &single.database,
        "UPDATE audit SET detail = 'forged' WHERE seq = 3",
    )
    .await;
    let v = tool(&["verify", "--database", &single.database]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v.stdout).starts_with("broken at seq 3"),
        "{}",
        text(&v.stdout)
    );
}
