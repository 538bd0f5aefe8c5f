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
        Some(Policy {
            high_value: true,
            ..Policy::default()
        }),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kek_rotates_online_without_a_single_failed_read() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // A single node's records, under its first KEK.
    let single = TestServer::sqlite().await;
    let (m, _, m_token) = single.master("m").await;
    for i in 0..60 {
        m.store_credential(
            None,
            &svc(&format!("s{i}")),
            format!("v{i}").as_bytes(),
            None,
        )
        .await
        .unwrap();
    }
    // Step 1: a key set with a new current KEK (the old one kept).
    let keys = tempfile::tempdir().unwrap();
    let next = keys.path().join("server.key.next");
    let out = tool(&[
        "rotate-kek",
        "new-key",
        "--keys",
        single.dir.path().join("server.key").to_str().unwrap(),
        "--out",
        next.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("KEKs [2, 1]"),
        "{}",
        text(&out.stdout)
    );
    // Two servers restarted with it, on the same database, under load: readers of every
    // record and a writer of new ones.
    let rotated = tempfile::tempdir().unwrap();
    std::fs::copy(&next, rotated.path().join("server.key")).unwrap();
    let unlimited = || agentkeys_server::Config {
        read_rate: 0.0,
        ..Default::default()
    };
    let a = TestServer::on_with(&single.database, rotated.path(), unlimited()).await;
    let b = TestServer::on_with(&single.database, rotated.path(), unlimited()).await;
    let clients = Arc::new([
        client_with(&a.url, &m_token).await,
        client_with(&b.url, &m_token).await,
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for t in 0..4usize {
        let (clients, stop, reads, failed) =
            (clients.clone(), stop.clone(), reads.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let c = &clients[i % 2];
                let n = i % 60;
                match c.read_credential(None, &svc(&format!("s{n}"))).await {
                    Ok(r) if r.page.expose_secret() == format!("v{n}").as_bytes() => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed read: {:?}", other.map(|_| "wrong value"));
                        }
                    }
                }
                if t == 0 && i % 7 == 0 {
                    c.store_credential(None, &svc(&format!("new{i}")), b"fresh", None)
                        .await
                        .unwrap();
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Step 2: re-wrap while they serve.
    let before = reads.load(Ordering::Relaxed);
    let database = single.database.clone();
    let next_s = next.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        tool(&[
            "rotate-kek",
            "rewrap",
            "--database",
            &database,
            "--keys",
            &next_s,
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let during = reads.load(Ordering::Relaxed) - before;
    eprintln!(
        "KEK rotation under load: {} reads in all, {during} during the re-wrap, {} failed; {}",
        reads.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        text(&out.stdout).trim()
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a read failed during the rotation"
    );
    assert!(during > 0, "no read ran during the re-wrap");
    assert!(
        text(&out.stdout).contains("re-wrapped 60 records under KEK 2"),
        "{}",
        text(&out.stdout)
    );
    // Every record is under the new KEK now.
    let usage = agentkeys_server::store::Store::kek_usage(&*a.state.store)
        .await
        .unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].0, 2);

    // Step 3: retire the old KEK; a server with only the new one reads everything.
    let last = keys.path().join("server.key.final");
    let out = tool(&[
        "rotate-kek",
        "retire",
        "--database",
        &single.database,
        "--keys",
        next.to_str().unwrap(),
        "--out",
        last.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("KEKs [2] (retired [1])"),
        "{}",
        text(&out.stdout)
    );
    let final_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&last, final_dir.path().join("server.key")).unwrap();
    let c = TestServer::on(&single.database, final_dir.path()).await;
    let reader = client_with(&c.url, &m_token).await;
    for n in [0, 33, 59] {
        let r = reader
            .read_credential(None, &svc(&format!("s{n}")))
            .await
            .unwrap();
        assert_eq!(r.page.expose_secret(), format!("v{n}").as_bytes());
    }
    // Retiring before re-wrapping is refused; a key set without the records' KEK too.
    let early = tool(&[
        "rotate-kek",
        "rewrap",
        "--database",
        &single.database,
        "--keys",
        single.dir.path().join("server.key").to_str().unwrap(),
    ]);
    assert!(!early.status.success());
    assert!(
        text(&early.stderr).contains("KEK 2"),
        "{}",
        text(&early.stderr)
    );
}
