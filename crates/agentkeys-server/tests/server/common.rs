//! What only this suite needs around the shared fixture (`agentkeys-testkit`): an
//! in-process server on port 0 with its own data dir, its `Store` handle and `Config`, the
//! engine under test (SQLite, or PostgreSQL databases made per test), and clients.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use agentkeys_core::ClientError;
use agentkeys_core::client::{Backend as _, HttpBackend};
use agentkeys_secmem::SecretString;
use agentkeys_server::keys::ServerKeys;
use agentkeys_server::store::AnyStore;
use agentkeys_server::{AppState, Config};
use agentkeys_testkit::pairing::PairingAgent;
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{ApproveRequest, SessionInfo};
use agentkeys_types::{Scope, ServiceName, Wallet};
use base64::Engine as _;

pub struct TestServer {
    pub url: String,
    /// The database URL (`sqlite:PATH` or `postgres://…`), for tests that tamper with it.
    pub database: String,
    pub state: Arc<AppState<AnyStore>>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> Self {
        tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let (store, database) = open_store(dir.path()).await;
        let keys = ServerKeys::load_or_create(dir.path()).unwrap();
        Self::serve(store, database, keys, dir, config).await
    }

    /// A server on SQLite whatever the suite's engine (the single node tools copy from).
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("agentkeys.db").display());
        let store = AnyStore::open(&database).await.unwrap();
        let keys = ServerKeys::load_or_create(dir.path()).unwrap();
        Self::serve(store, database, keys, dir, Config::default()).await
    }

    /// A server on `database` with the keys in `keys_dir` (a copy's new home).
    pub async fn on(database: &str, keys_dir: &std::path::Path) -> Self {
        Self::on_with(database, keys_dir, Config::default()).await
    }

    /// [`TestServer::on`] with `config`.
    pub async fn on_with(database: &str, keys_dir: &std::path::Path, config: Config) -> Self {
        let store = AnyStore::open(database).await.unwrap();
        let keys = ServerKeys::load_or_create(keys_dir).unwrap();
        let dir = tempfile::tempdir().unwrap();
        Self::serve(store, database.to_owned(), keys, dir, config).await
    }

    /// `n` servers on one fresh PostgreSQL database, with the same keys: replicas, each
    /// with its own connection pool, long-poll wake-ups and audit writer.
    pub async fn replicas(n: usize, config: Config) -> Vec<Self> {
        let database = fresh_database().await;
        let keys_dir = tempfile::tempdir().unwrap();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let store = AnyStore::open(&database).await.unwrap();
            let keys = ServerKeys::load_or_create(keys_dir.path()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            out.push(Self::serve(store, database.clone(), keys, dir, config.clone()).await);
        }
        out
    }

    async fn serve(
        store: AnyStore,
        database: String,
        keys: ServerKeys,
        dir: tempfile::TempDir,
        config: Config,
    ) -> Self {
        let state = AppState::new(store, keys, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(agentkeys_server::serve(
            listener,
            state.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            url,
            database,
            state,
            dir,
            shutdown: Some(tx),
        }
    }

    pub fn anon(&self) -> HttpBackend {
        HttpBackend::new(&self.url).unwrap()
    }

    /// A new master session (each enrolment token is its own master account).
    pub async fn master(&self, enrol: &str) -> (HttpBackend, SessionInfo, SecretString) {
        let (client, grant) = enrol_master(&self.url, enrol).await;
        (client, grant.session, grant.token)
    }

    /// Pairs a new agent under `master` with `scope`, through the real pair flow.
    pub async fn agent(
        &self,
        master: &HttpBackend,
        scope: Scope,
    ) -> (HttpBackend, SessionInfo, SecretString) {
        let agent = PairingAgent::open(&self.url).await;
        let view = master.auth_request_by_code(agent.code()).await.unwrap();
        master
            .approve(
                &view.id,
                &ApproveRequest {
                    scope: Some(scope),
                    minutes: None,
                },
            )
            .await
            .unwrap();
        let grant = agent.finish().await;
        (
            client_with(&self.url, &grant.token).await,
            grant.session,
            grant.token,
        )
    }

    pub fn signing_key(&self) -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(&self.state.info.signing_public_key)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// A raw reqwest client for requests the typed client would never send.
    pub fn raw(&self) -> reqwest::Client {
        // The typed client installs the process's TLS provider, which reqwest needs.
        let _ = self.anon();
        reqwest::Client::new()
    }
}

/// The engine the server suite runs on: `AGENTKEYS_TEST_ENGINE=postgres` (scripts/test.sh
/// runs the suite a second time so), else SQLite.
pub fn postgres_engine() -> bool {
    match std::env::var("AGENTKEYS_TEST_ENGINE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("AGENTKEYS_TEST_ENGINE is sqlite or postgres, not {other}"),
    }
}

/// A store of the suite's engine (a SQLite file in `dir`, or a fresh PostgreSQL database)
/// and its URL.
pub async fn open_store(dir: &std::path::Path) -> (AnyStore, String) {
    let url = if postgres_engine() {
        fresh_database().await
    } else {
        format!("sqlite:{}", dir.join("agentkeys.db").display())
    };
    (AnyStore::open(&url).await.unwrap(), url)
}

/// Runs one statement on the database at `url` behind the server's back (tampering tests).
pub async fn execute_sql(url: &str, sql: &'static str) {
    if url.starts_with("postgres") {
        let db = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&db).await.unwrap();
        db.close().await;
    } else {
        let db = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&db).await.unwrap();
        db.close().await;
    }
}

/// The URL of a new, empty database on the throwaway PostgreSQL that scripts/test.sh
/// starts (`AGENTKEYS_TEST_DATABASE_URL`). Without it the test fails: the PostgreSQL
/// engine is tested on every run, never skipped.
pub async fn fresh_database() -> String {
    use sqlx::Connection as _;
    let base = std::env::var("AGENTKEYS_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "AGENTKEYS_TEST_DATABASE_URL is not set: run the tests through 'bash scripts/test.sh', \
             which starts a throwaway PostgreSQL, or point it at a server you may create \
             databases on (postgres://USER@HOST:PORT/postgres)"
        )
    });
    let name = format!(
        "t_{}",
        agentkeys_core::hex(&agentkeys_core::crypto::random_array::<8>())
    );
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} STRATEGY FILE_COPY"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let (server, _) = base.rsplit_once('/').expect("a database URL ends in /DB");
    format!("{server}/{name}")
}

/// A PostgreSQL cluster of one test's own (scripts/pg-throwaway.sh), for tests that
/// restart it: the shared one serves the other tests meanwhile. Stopped and deleted on drop.
pub struct OwnPostgres {
    /// A superuser URL to its `postgres` database.
    pub url: String,
    /// The cluster's directory (`data/`, `server.log`).
    pub dir: String,
    /// PostgreSQL's binaries.
    pub bin: String,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-throwaway.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} missing from {text}"))
                .to_owned()
        };
        OwnPostgres {
            url: var("AGENTKEYS_TEST_DATABASE_URL"),
            dir: var("AGENTKEYS_TEST_PG_DIR"),
            bin: var("AGENTKEYS_TEST_PG_BIN"),
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-throwaway.sh");
        let _ = std::process::Command::new("bash")
            .args([script, "stop", &self.dir])
            .status();
    }
}

/// [`fresh_database`] from synchronous code (or from inside a runtime).
pub fn fresh_database_blocking() -> String {
    std::thread::spawn(|| agentkeys_testkit::block_on(fresh_database()))
        .join()
        .unwrap()
}

pub use agentkeys_testkit::canary;
pub use agentkeys_testkit::pairing::{client_with, enrol_master, pair_request};

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn svc(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

pub fn scope(services: &[&str], read_only: bool) -> Scope {
    Scope {
        services: services.iter().map(|s| s.to_string()).collect(),
        read_only,
    }
}

pub fn random_wallet() -> Wallet {
    Wallet::from_bytes(&agentkeys_core::crypto::random_array::<20>())
}

/// Asserts an error carries `code`.
#[track_caller]
pub fn assert_code<T>(r: Result<T, ClientError>, code: ErrorCode) -> ClientError {
    match r {
        Ok(_) => panic!("expected {code}, got success"),
        Err(e) => {
            assert_eq!(e.code(), code, "{e}");
            e
        }
    }
}

/// Installs the process's TLS provider, which every reqwest client needs (the typed client
/// does it too): a test that builds a raw client first must not depend on another test in
/// the same process having made one.
pub fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
