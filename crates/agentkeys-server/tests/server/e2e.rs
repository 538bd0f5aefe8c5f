//! End-to-end: the real `agentkeys-server` binary, killed with SIGKILL mid-write and
//! scanned for plaintext.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_core::HttpBackend;
use agentkeys_core::client::Backend as _;
use agentkeys_secmem::SecretString;

use agentkeys_testkit::Server;

use super::common::{canary, svc};

const BIN: &str = env!("CARGO_BIN_EXE_agentkeys-server");

/// Starts the binary on `data_dir` and waits for its ready line (no sleeps: the line is
/// printed after bind); its stderr is kept whole for later scanning.
fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
    start_with(data_dir, extra_env, &[])
}

/// [`start`] with extra flags.
fn start_with(data_dir: &Path, extra_env: &[(&str, &str)], extra_args: &[&str]) -> Server {
    super::common::tls_provider();
    let mut cmd = Server::command(Path::new(BIN))
        .data_dir(data_dir)
        .args(&["--read-rate", "0"])
        .args(extra_args);
    // One database per data dir, so a restart on the same dir finds its data (and
    // replicas are data dirs given the same database).
    let marker = data_dir.join("test-database-url");
    if super::common::postgres_engine() || marker.exists() {
        std::fs::create_dir_all(data_dir).unwrap();
        let url = std::fs::read_to_string(&marker).unwrap_or_else(|_| {
            let url = super::common::fresh_database_blocking();
            std::fs::write(&marker, &url).unwrap();
            url
        });
        cmd = cmd.args(&["--database", &url]);
    }
    for (k, v) in extra_env {
        cmd = cmd.env(k, v);
    }
    cmd.spawn()
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_stores_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let grant = HttpBackend::new(&server.url)
        .unwrap()
        .create_session(SecretString::from_str_copy("e2e"))
        .await
        .unwrap();
    let client = Arc::new(
        HttpBackend::new(&server.url)
            .unwrap()
            .with_token(&grant.token)
            .unwrap()
            .pinning_first_contact()
            .await
            .unwrap(),
    );
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let service = format!("w{w}-s{}", i % 50);
                let value = format!("value-{w}-{i}");
                match client
                    .store_credential(None, &svc(&service), value.as_bytes(), None)
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push((service, value)),
                    Err(_) => break, // the server died under us: unacknowledged, allowed to be lost
                }
            }
        }));
    }
    // Let the writers get well under way, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} stores were acknowledged before the kill",
        acked.len()
    );
    // The last acknowledged value of each service must read back after a restart, and
    // every acknowledged store must have its audit row (committed before the answer).
    let mut latest = std::collections::BTreeMap::new();
    let mut stores_acked = std::collections::BTreeMap::<String, usize>::new();
    for (s, v) in acked {
        *stores_acked.entry(s.clone()).or_default() += 1;
        latest.insert(s, v);
    }
    let server = start(dir.path(), &[]);
    let client = HttpBackend::new(&server.url)
        .unwrap()
        .with_token(&grant.token)
        .unwrap()
        .pinning_first_contact()
        .await
        .unwrap();
    for (service, value) in &latest {
        let page = client
            .read_credential(None, &svc(service))
            .await
            .unwrap()
            .page;
        // A later, unacknowledged write may have landed too; it must be one of ours.
        let got = std::str::from_utf8(page.expose_secret()).unwrap();
        let (w_got, i_got) = parse(got);
        let (w_ack, i_ack) = parse(value);
        assert_eq!(w_got, w_ack, "{service}");
        assert!(
            i_got >= i_ack,
            "{service}: acknowledged {value} but read back {got}"
        );
    }
    for (service, acked) in &stores_acked {
        let rows = client
            .audit(&agentkeys_core::client::AuditQuery {
                service: Some(svc(service)),
                action: Some("credential.store".into()),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap()
            .events;
        assert!(
            rows.len() >= *acked,
            "{service}: {acked} stores acknowledged, {} audited",
            rows.len()
        );
    }
    assert!(client.verify_audit().await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spent_grant_has_its_audit_row_after_kill_9() {
    use agentkeys_server::store::Store as _;
    use agentkeys_types::api::{ApproveRequest, AuthStatus, Policy};
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_with(dir.path(), &[], &["--enrol-rate", "1000"]);
    let (owner, _) = super::common::enrol_master(&server.url, "hv").await;
    let stripe = svc("stripe");
    let high_value = Policy {
        high_value: true,
        require_passkey: false,
    };
    owner
        .store_credential(None, &stripe, b"sk-hv", Some(high_value))
        .await
        .unwrap();
    // Many sessions of the master, each holding an approved, unspent one-time grant.
    let mut readers = Vec::new();
    let mut grants = Vec::new();
    for _ in 0..160 {
        let (reader, _) = super::common::enrol_master(&server.url, "hv").await;
        let asked = reader.read_credential(None, &stripe).await.err().unwrap();
        let ticket = asked.auth_request().unwrap().clone();
        owner
            .approve(&ticket.id, &ApproveRequest::default())
            .await
            .unwrap();
        grants.push(ticket.id);
        readers.push(reader);
    }
    // They all read at once; the read that brings the answers to ten kills the server
    // there and then, with most of the others in flight.
    let pid = i32::try_from(server.pid()).unwrap();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for reader in readers {
        let (answered, stripe) = (answered.clone(), stripe.clone());
        tasks.push(tokio::spawn(async move {
            if reader.read_credential(None, &stripe).await.is_ok()
                && answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 10
            {
                // SAFETY: kill has no memory preconditions; the pid is our child's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop();
    let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
    let marker = dir.path().join("test-database-url");
    let database = std::fs::read_to_string(&marker)
        .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("agentkeys.db").display()));
    let store = agentkeys_server::store::AnyStore::open(&database)
        .await
        .unwrap();
    let details: Vec<String> = store
        .audit_page(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.action == "credential.read" && r.event.outcome == "ok")
        .filter_map(|r| r.event.detail)
        .collect();
    let mut spent = 0;
    for id in &grants {
        let r = store.auth_request(id).await.unwrap().unwrap();
        if r.status == AuthStatus::Consumed {
            spent += 1;
            let row = format!("high-value grant spent ({id})");
            assert!(
                details.contains(&row),
                "{id} was spent, and no audit row says so ({spent} spent, {answered} answered)"
            );
        }
    }
    assert!(
        spent >= answered && answered >= 10,
        "{spent} grants spent, {answered} reads answered"
    );
    assert!(
        agentkeys_server::audit::verify(&store, |_| true)
            .await
            .unwrap()
            .ok
    );
}

fn parse(v: &str) -> (u32, u32) {
    let mut it = v
        .trim_start_matches("value-")
        .split('-')
        .map(|n| n.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_or_token_reaches_the_data_dir_or_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[("RUST_LOG", "debug")]);
    let (client, grant) = super::common::enrol_master(&server.url, "e2e").await;
    let secret = canary("server");
    client
        .store_credential(None, &svc("openai"), secret.as_bytes(), None)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            client
                .read_credential(None, &svc("openai"))
                .await
                .unwrap()
                .page
                .expose_secret(),
            secret.as_bytes()
        );
    }
    server.stop();
    let token = grant.token.expose_secret().as_bytes().to_vec();
    let mut scanned = 0;
    // The data dir, and on PostgreSQL the database's own files, the WAL and the server log.
    let mut files = Vec::new();
    walk(dir.path(), &mut files);
    if super::common::postgres_engine() {
        let url = std::fs::read_to_string(dir.path().join("test-database-url")).unwrap();
        let db = sqlx::PgPool::connect(&url).await.unwrap();
        let oid: i64 = sqlx::query_scalar(
            "SELECT oid::bigint FROM pg_database WHERE datname = current_database()",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let cluster = std::path::PathBuf::from(std::env::var("AGENTKEYS_TEST_PG_DIR").unwrap());
        walk(&cluster.join(format!("data/base/{oid}")), &mut files);
        walk(&cluster.join("data/pg_wal"), &mut files);
        files.push(cluster.join("server.log"));
    }
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // a file PostgreSQL removed meanwhile
        };
        scanned += bytes.len();
        assert_eq!(
            count(&bytes, secret.as_bytes()),
            0,
            "canary found in {}",
            path.display()
        );
        assert_eq!(
            count(&bytes, &token),
            0,
            "session token found in {}",
            path.display()
        );
    }
    assert!(scanned > 4096, "the data dir was not written");
    let log = server.log();
    assert!(
        log.contains("credentials/read"),
        "debug log did not capture requests:\n{log}"
    );
    assert_eq!(
        count(log.as_bytes(), secret.as_bytes()),
        0,
        "canary found in the log"
    );
    assert_eq!(count(log.as_bytes(), &token), 0, "token found in the log");
}

/// Every regular file under `dir`.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

#[test]
fn dev_mode_prints_the_export_line_to_paste() {
    let mut child = Command::new(BIN)
        .args(["--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("export AGENTKEYS_SERVER=http://127.0.0.1:"),
        "{line}"
    );
}

#[test]
fn bad_flags_fail_before_any_io_with_a_hint() {
    let out = Command::new(BIN)
        .args(["--auth", "tokens"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: BAD_REQUEST: --auth tokens needs a FILE"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_environment_when_set_and_no_key_file_is_written() {
    use base64::Engine as _;
    let a = tempfile::tempdir().unwrap();
    let first = start(a.path(), &[]);
    let info = HttpBackend::new(&first.url)
        .unwrap()
        .server_info()
        .await
        .unwrap();
    let raw = std::fs::read(a.path().join("server.key")).unwrap();
    let env = base64::engine::general_purpose::STANDARD.encode(&raw);
    let b = tempfile::tempdir().unwrap();
    let second = start(b.path(), &[("AGENTKEYS_SERVER_KEYS", &env)]);
    let info2 = HttpBackend::new(&second.url)
        .unwrap()
        .server_info()
        .await
        .unwrap();
    assert_eq!(info.shielding_public_key, info2.shielding_public_key);
    assert_eq!(info.signing_public_key, info2.signing_public_key);
    assert!(!b.path().join("server.key").exists());
    assert!(second.log().contains("keys=AGENTKEYS_SERVER_KEYS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_keys_variable_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("AGENTKEYS_SERVER_KEYS", "")]);
    HttpBackend::new(&server.url)
        .unwrap()
        .server_info()
        .await
        .unwrap();
    assert!(
        dir.path().join("server.key").exists(),
        "the keys come from the data dir's key file"
    );
    assert!(!server.log().contains("keys=AGENTKEYS_SERVER_KEYS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_file_admits_only_its_tokens_plain_or_hashed() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("enrol.txt");
    let hashed = agentkeys_core::hex(&agentkeys_core::crypto::sha256(b"hashed-token"));
    std::fs::write(
        &tokens,
        format!("# enrolment tokens\nplain-token\n\nsha256:{hashed}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    let server = start_with(&data, &[], &["--auth", "tokens", tokens.to_str().unwrap()]);
    let anon = HttpBackend::new(&server.url).unwrap();
    anon.create_session(SecretString::from_str_copy("plain-token"))
        .await
        .unwrap();
    anon.create_session(SecretString::from_str_copy("hashed-token"))
        .await
        .unwrap();
    let refused = anon
        .create_session(SecretString::from_str_copy("other-token"))
        .await;
    assert_eq!(
        refused.err().map(|e| e.code()),
        Some(agentkeys_types::ErrorCode::Unauthorized)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_holds_no_readable_plaintext_after_stores_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let (client, _grant) = super::common::enrol_master(&server.url, "mem").await;
    let secret = canary("server");
    client
        .store_credential(None, &svc("openai"), secret.as_bytes(), None)
        .await
        .unwrap();
    for _ in 0..5 {
        let page = client
            .read_credential(None, &svc("openai"))
            .await
            .unwrap()
            .page;
        assert_eq!(page.expose_secret(), secret.as_bytes());
    }
    let pid = server.pid();
    let report = agentkeys_memscan::scan(pid, secret.as_bytes()).unwrap();
    assert!(
        report.scanned_bytes > 1 << 20,
        "scanned only {} bytes of the server",
        report.scanned_bytes
    );
    assert!(
        report.hits.is_empty(),
        "the credential canary is readable in the server's memory: {:?}",
        report.hits
    );
    // The scanner itself can find a canary: this test process holds one in its heap.
    let own = agentkeys_memscan::scan(std::process::id(), secret.as_bytes()).unwrap();
    assert!(
        !own.hits.is_empty(),
        "the scanner failed to find a canary it should see"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_is_hardened_and_its_keys_are_nowhere_readable() {
    use base64::Engine as _;
    // Keys of our own, handed over the environment the way a secret manager would.
    let a = tempfile::tempdir().unwrap();
    drop(start(a.path(), &[]));
    let raw = std::fs::read(a.path().join("server.key")).unwrap();
    let env = base64::engine::general_purpose::STANDARD.encode(&raw);
    let b = tempfile::tempdir().unwrap();
    let server = start(b.path(), &[("AGENTKEYS_SERVER_KEYS", &env)]);
    let (client, _) = super::common::enrol_master(&server.url, "hardened").await;
    client
        .store_credential(None, &svc("openai"), b"sk-exercise-the-keys", None)
        .await
        .unwrap();
    client.read_credential(None, &svc("openai")).await.unwrap();
    let pid = server.pid();

    // The environment no longer carries the keys (wiped in place, then removed).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(
        count(&environ, env.as_bytes()),
        0,
        "the keys are in /proc/{pid}/environ"
    );
    assert_eq!(count(&environ, b"AGENTKEYS_SERVER_KEYS"), 0);
    // No core dumps.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(core[4..6], ["0", "0"], "{limits}");

    // The keys (KEK, shielding private key, signing seed), raw or as the base64 the server
    // was given, are in no readable mapping of the server: they live in secret pages.
    let kek = &raw[4..36];
    let shielding = &raw[36..68];
    let seed = &raw[68..100];
    let needles: [&[u8]; 4] = [kek, shielding, seed, env.as_bytes()];
    // Where the machine has no memfd_secret, the fallback is a sealed memfd page, readable
    // by root: hits there are expected, anywhere else they are not.
    let secret_memory = agentkeys_testkit::machine::memfd_secret(
        "e2e::the_server_is_hardened_and_its_keys_are_nowhere_readable",
    );
    agentkeys_testkit::assert_no_readable_copy_but(pid, &needles, |h| {
        !secret_memory && h.mapping.name.contains("memfd:agentkeys-secret")
    });
}

#[test]
fn the_server_is_not_dumpable_so_its_own_uid_cannot_read_it() {
    use std::io::BufRead as _;
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--auth", "dev"])
        .env_remove("AGENTKEYS_SERVER_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("listen=")));
    let pid = child.id();
    let environ = std::fs::metadata(format!("/proc/{pid}/environ"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the server did not start as nobody");
    // A non-dumpable process's /proc files belong to root, whatever uid it runs as: a
    // process of the server's own uid cannot read its memory or environment.
    assert_eq!(environ.unwrap().uid(), 0, "the server is dumpable");
}

/// Runs `pg_ctl` on `pg`'s cluster, as its owner.
fn pg_ctl(pg: &super::common::OwnPostgres, args: &[&str]) {
    let ctl = format!("{}/pg_ctl", pg.bin);
    let data = format!("{}/data", pg.dir);
    let log = format!("{}/server.log", pg.dir);
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            &ctl,
        ]);
        c
    } else {
        Command::new(&ctl)
    };
    // The log file keeps the restarted server off this pipe (which it would hold open).
    let out = cmd
        .args(["-D", &data, "-l", &log, "-w", "-t", "60"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the load saw: acknowledged writes and reads, and every error with when and where.
#[derive(Default)]
struct Ledger {
    written: Vec<(String, String)>,
    read: Vec<String>,
    errors: Vec<(usize, Instant, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_lose_nothing_acknowledged_through_kill_9_and_a_database_restart() {
    use base64::Engine as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    // A cluster of its own: the restart below must not hit the other tests' databases.
    let pg = Arc::new(
        tokio::task::spawn_blocking(super::common::OwnPostgres::start)
            .await
            .unwrap(),
    );
    let url = pg.url.clone();
    // Three replicas: one database, the same keys (from the environment), each its own dir.
    let first = tempfile::tempdir().unwrap();
    std::fs::write(first.path().join("test-database-url"), &url).unwrap();
    drop(start(first.path(), &[]));
    let keys = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(first.path().join("server.key")).unwrap());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs: Vec<Server> = dirs
        .iter()
        .map(|d| {
            std::fs::write(d.path().join("test-database-url"), &url).unwrap();
            start(d.path(), &[("AGENTKEYS_SERVER_KEYS", &keys)])
        })
        .collect();
    let (_, grant) = super::common::enrol_master(&procs[0].url, "replicas").await;
    let mut clients = Vec::new();
    for p in &procs {
        clients.push(Arc::new(
            super::common::client_with(&p.url, &grant.token).await,
        ));
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    // Two clients per replica, each writing new names and reading each back.
    for t in 0..6 {
        let (client, ledger, stop) = (clients[t % 3].clone(), ledger.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (name, value) = (format!("w-{t}-{i}"), format!("v-{t}-{i}"));
                let err = match client
                    .store_credential(None, &svc(&name), value.as_bytes(), None)
                    .await
                {
                    Ok(_) => {
                        ledger.lock().unwrap().written.push((name.clone(), value));
                        match client.read_credential(None, &svc(&name)).await {
                            Ok(_) => {
                                ledger.lock().unwrap().read.push(name);
                                continue;
                            }
                            Err(e) => e.to_string(),
                        }
                    }
                    Err(e) => e.to_string(),
                };
                ledger
                    .lock()
                    .unwrap()
                    .errors
                    .push((t % 3, Instant::now(), err));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_2 = Instant::now();
    procs[2].stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_1 = Instant::now();
    procs[1].stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart = Instant::now();
    let restarting = pg.clone();
    tokio::task::spawn_blocking(move || pg_ctl(&restarting, &["-m", "immediate", "restart"]))
        .await
        .unwrap();
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let errors_on = |r: usize| ledger.errors.iter().filter(|e| e.0 == r).count();
    eprintln!(
        "load over 3 replicas: {} writes and {} reads acknowledged; errors on the survivor {}, \
         on the killed ones {} and {}; the database restart took {:?}",
        ledger.written.len(),
        ledger.read.len(),
        errors_on(0),
        errors_on(1),
        errors_on(2),
        restarted - restart
    );
    // The survivor served before and after the restart.
    let before = ledger
        .written
        .iter()
        .filter(|(n, _)| n.starts_with("w-0-") || n.starts_with("w-3-"))
        .count();
    assert!(before > 10, "the survivor served only {before} writes");
    // Errors: on a killed replica only from its kill on; on the survivor only while the
    // database restarted (and its pool reconnected).
    for (replica, at, e) in &ledger.errors {
        let allowed_from = match replica {
            2 => killed_2,
            1 => killed_1,
            _ => restart,
        };
        let in_window =
            *at >= allowed_from && (*replica != 0 || *at <= restarted + Duration::from_secs(2));
        assert!(in_window, "replica {replica}: unexpected error {e}");
    }
    // Every acknowledged write reads back, through the survivor.
    let check = &clients[0];
    for (name, value) in &ledger.written {
        let got = check.read_credential(None, &svc(name)).await.unwrap();
        assert_eq!(got.page.expose_secret(), value.as_bytes(), "{name}");
    }
    // Every acknowledged read is in the audit, and the chain verifies.
    let store = agentkeys_server::store::postgres::PgStore::connect(&url)
        .await
        .unwrap();
    let mut audited = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let page = agentkeys_server::store::Store::audit_page(&store, after, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in page {
            if row.event.action == "credential.read" {
                audited.insert(row.event.service.unwrap_or_default());
            }
        }
    }
    for name in &ledger.read {
        assert!(
            audited.contains(name),
            "read of {name} acknowledged, not audited"
        );
    }
    let v = check.verify_audit().await.unwrap();
    assert!(v.ok, "{v:?}");
    drop(procs);
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_postgres_over_verified_tls_or_not_at_all() {
    let ca = std::env::var("AGENTKEYS_TEST_PG_CA").expect("AGENTKEYS_TEST_PG_CA (scripts/test.sh)");
    let plain = super::common::fresh_database().await;
    // The cluster's own CA, the name checked: the server comes up, and its connections
    // are TLS.
    let dir = tempfile::tempdir().unwrap();
    let tls = format!("{plain}?sslmode=verify-full&sslrootcert={ca}");
    std::fs::write(dir.path().join("test-database-url"), &tls).unwrap();
    let server = start(dir.path(), &[]);
    let (client, _) = super::common::enrol_master(&server.url, "tls").await;
    client
        .store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    let db = sqlx::PgPool::connect(&plain).await.unwrap();
    let (all, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s ON s.pid = a.pid \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        all > 0 && encrypted == all,
        "{encrypted} of {all} connections use TLS"
    );
    drop(server);
    // A CA that did not sign the server's certificate: no connection, a clear error.
    let wrong = tempfile::tempdir().unwrap();
    let url = format!("{plain}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt");
    let out = Command::new(BIN)
        .args([
            "--auth",
            "dev",
            "--data-dir",
            wrong.path().to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--database", &url])
        .env_remove("AGENTKEYS_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the database"), "{err}");
    assert!(!err.contains("sslrootcert"), "the URL is not echoed: {err}");
}

/// Starts the binary on `database`, which must fail; its stderr and how long it took.
fn start_fails_on(database: &str) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--auth", "dev", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .env_remove("AGENTKEYS_DATABASE_URL")
        .env_remove("AGENTKEYS_SERVER_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_stops_the_start_within_seconds_naming_where_and_why() {
    // A closed port: refused at once, host and port named, the password nowhere.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (err, took) = start_fails_on(&format!(
        "postgres://agentkeys:hunter2-pw@127.0.0.1:{closed}/keys"
    ));
    assert!(took < Duration::from_secs(8), "took {took:?}: {err}");
    assert!(
        err.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{closed} as agentkeys (database keys): \
             connection refused"
        )),
        "{err}"
    );
    assert!(err.contains("\nhint: nothing listens there"), "{err}");
    assert!(
        !err.contains("hunter2-pw"),
        "the password is never shown: {err}"
    );

    // A real server that wants a password, given the wrong one.
    let pg = super::common::OwnPostgres::start();
    let hba = format!("{}/data/pg_hba.conf", pg.dir);
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pwuser 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    let admin = sqlx::PgPool::connect(&pg.url).await.unwrap();
    sqlx::query("CREATE ROLE pwuser LOGIN PASSWORD 'right-pw'")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let host_port = pg
        .url
        .trim_start_matches("postgres://agentkeys@")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (err, took) = start_fails_on(&format!("postgres://pwuser:wrong-pw@{host_port}/postgres"));
    assert!(took < Duration::from_secs(8), "took {took:?}: {err}");
    assert!(
        err.contains(&format!(
            "cannot connect to PostgreSQL at {host_port} as pwuser (database postgres): \
             authentication failed"
        )),
        "{err}"
    );
    assert!(err.contains("\nhint: check the user and password"), "{err}");
    assert!(
        !err.contains("wrong-pw"),
        "the password is never shown: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_long_polls_at_once_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let key = agentkeys_core::crypto::hpke::HpkeKeyPair::generate().unwrap();
    let anon = HttpBackend::new(&server.url).unwrap();
    let ticket = anon
        .open_auth_request(&super::common::pair_request(&key, Some("shutdown")))
        .await
        .unwrap();
    let id = ticket.id.clone();
    let poller = HttpBackend::new(&server.url).unwrap();
    let poll = tokio::spawn(async move { poller.decision(&id, 60).await });
    tokio::time::sleep(Duration::from_millis(300)).await; // the poll is waiting
    let sent = Instant::now();
    let pid = i32::try_from(server.pid()).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let answered = poll.await.unwrap().unwrap();
    let took = sent.elapsed();
    assert_eq!(
        answered.status,
        agentkeys_types::api::AuthStatus::Pending,
        "the poll answers with what it finds"
    );
    assert!(
        took < Duration::from_secs(10),
        "a 60 s poll held the shutdown for {took:?}"
    );
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    let log = server.log();
    assert!(log.contains("stopping"), "{log}");
    eprintln!("SIGTERM to the answer of a waiting long-poll: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--auth",
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "debug")
        .env_remove("AGENTKEYS_DATABASE_URL")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(line);
        if let Some(a) = v["listen"].as_str() {
            break a.to_owned();
        }
    };
    let url = format!("http://{addr}");
    let (client, grant) = super::common::enrol_master(&url, "json-logs").await;
    let secret = canary("server");
    client
        .store_credential(None, &svc("openai"), secret.as_bytes(), None)
        .await
        .unwrap();
    client.read_credential(None, &svc("openai")).await.unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for line in lines {
        let line = line.unwrap();
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(line);
    }
    child.wait().unwrap();
    let all = seen.join("\n");
    assert!(
        all.contains("credentials/read"),
        "requests are logged:\n{all}"
    );
    assert_eq!(count(all.as_bytes(), secret.as_bytes()), 0);
    assert_eq!(
        count(all.as_bytes(), grant.token.expose_secret().as_bytes()),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_the_database_is_down_and_back_after() {
    let pg = Arc::new(
        tokio::task::spawn_blocking(super::common::OwnPostgres::start)
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test-database-url"), &pg.url).unwrap();
    let server = start(dir.path(), &[]);
    let ready = |url: String| async move { reqwest::get(format!("{url}/v1/ready")).await.unwrap() };
    assert_eq!(ready(server.url.clone()).await.status(), 200);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || pg_ctl(&p, &["-m", "fast", "stop"]))
        .await
        .unwrap();
    let down = ready(server.url.clone()).await;
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert!(
        body["error"]["hint"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{body}"
    );
    let p = pg.clone();
    tokio::task::spawn_blocking(move || pg_ctl(&p, &["start"]))
        .await
        .unwrap();
    assert_eq!(ready(server.url.clone()).await.status(), 200);
}

/// A CA and leaves for 127.0.0.1 it signs, as PEM files.
struct TestPki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca: std::path::PathBuf,
}

impl TestPki {
    fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        TestPki {
            dir,
            issuer: rcgen::Issuer::new(params, key),
            ca,
        }
    }

    /// A new leaf written over `name.crt` / `name.key` (0600); returns its DER.
    fn leaf(&self, name: &str) -> Vec<u8> {
        use std::os::unix::fs::PermissionsExt as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(self.dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
        cert.der().to_vec()
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// A TLS connection to `addr` trusting this CA only.
    async fn connect(&self, addr: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap()
    }
}

fn presented(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One keep-alive `GET /v1/health` on an open connection; the answer's status line.
async fn health_on(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tls.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"status\":\"ok\"") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection was closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_a_certificate_reloaded_on_sighup() {
    let pki = TestPki::new();
    let first = pki.leaf("tls");
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(
        dir.path(),
        &[],
        &[
            "--tls-cert",
            &pki.path("tls.crt"),
            "--tls-key",
            &pki.path("tls.key"),
        ],
    );
    let addr = server.url.trim_start_matches("http://").to_owned();
    let https = format!("https://{addr}");
    // The typed client, trusting the private CA as `--ca` / AGENTKEYS_CA make it.
    let grant = HttpBackend::new_with_ca(&https, &pki.ca)
        .unwrap()
        .create_session(SecretString::from_str_copy("tls"))
        .await
        .unwrap();
    let client = HttpBackend::new_with_ca(&https, &pki.ca)
        .unwrap()
        .with_token(&grant.token)
        .unwrap()
        .pinning_first_contact()
        .await
        .unwrap();
    // Without the CA, the certificate is refused.
    let refused = HttpBackend::new(&https)
        .unwrap()
        .health()
        .await
        .unwrap_err();
    assert!(
        agentkeys_core::client::is_certificate_error(&refused.to_string()),
        "{refused}"
    );
    client
        .store_credential(None, &svc("openai"), b"sk-over-tls", None)
        .await
        .unwrap();
    let read = client.read_credential(None, &svc("openai")).await.unwrap();
    assert_eq!(read.page.expose_secret(), b"sk-over-tls");
    // Plain HTTP on the TLS port gets nothing.
    assert!(
        reqwest::get(format!("http://{addr}/v1/health"))
            .await
            .is_err()
    );

    // A connection opened before the reload.
    let mut before = pki.connect(&addr).await;
    assert_eq!(presented(&before), first);
    assert!(health_on(&mut before).await.contains("200"));
    let second = pki.leaf("tls"); // a new certificate and key over the same files
    let pid = i32::try_from(server.pid()).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = pki.connect(&addr).await;
        if presented(&fresh) == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old connection was not dropped: it still answers, with the old certificate.
    assert!(health_on(&mut before).await.contains("200"));
    assert_eq!(presented(&before), first);

    // A broken file on the next reload: the last good certificate stays.
    std::fs::write(pki.path("tls.crt"), "not a certificate").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("TLS reload failed") {
        assert!(Instant::now() < deadline, "no reload failure logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(presented(&pki.connect(&addr).await), second);
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_with_the_file_named() {
    let pki = TestPki::new();
    pki.leaf("a");
    pki.leaf("b");
    let dir = tempfile::tempdir().unwrap();
    // The key of another certificate.
    let out = Command::new(BIN)
        .args(["--auth", "dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args([
            "--tls-cert",
            &pki.path("a.crt"),
            "--tls-key",
            &pki.path("b.key"),
        ])
        .env_remove("AGENTKEYS_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert / --tls-key"), "{err}");
    // A missing file, named.
    let out = Command::new(BIN)
        .args(["--auth", "dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args([
            "--tls-cert",
            "/nonexistent.crt",
            "--tls-key",
            &pki.path("a.key"),
        ])
        .env_remove("AGENTKEYS_DATABASE_URL")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.crt"));
    // One without the other: refused by the flags.
    let out = Command::new(BIN)
        .args(["--auth", "dev", "--tls-cert", &pki.path("a.crt")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_listener_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = start_with(
        dir.path(),
        &[],
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    let (_, _) = super::common::enrol_master(&server.url, "metrics").await;
    let own = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert!(
        own.text()
            .await
            .unwrap()
            .contains("agentkeys_http_requests_total")
    );
    // Not on the API listener then.
    let api = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
}
