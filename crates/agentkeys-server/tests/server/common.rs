//! Shared fixtures: an in-process server on port 0 with its own data dir, and clients.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use agentkeys_core::ClientError;
use agentkeys_core::client::{Backend as _, HttpBackend};
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_secmem::SecretString;
use agentkeys_server::keys::ServerKeys;
use agentkeys_server::{AppState, Config, SqliteStore};
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{ApproveRequest, AuthKind, OpenAuthRequest, SessionGrant, SessionInfo};
use agentkeys_types::{Scope, ServiceName, Wallet};
use base64::Engine as _;

pub struct TestServer {
    pub url: String,
    pub state: Arc<AppState<SqliteStore>>,
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
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("agentkeys.db"))
            .await
            .unwrap();
        let keys = ServerKeys::load_or_create(dir.path()).unwrap();
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
        let daemon_key = HpkeKeyPair::generate().unwrap();
        let ticket = self
            .anon()
            .open_auth_request(&pair_request(&daemon_key, Some("test daemon")))
            .await
            .unwrap();
        let view = master
            .auth_request_by_code(&ticket.pair_code)
            .await
            .unwrap();
        master
            .approve(&view.id, &ApproveRequest { scope: Some(scope) })
            .await
            .unwrap();
        let decision = self.anon().decision(&ticket.id, 5).await.unwrap();
        let grant =
            agentkeys_core::client::open_decision(&decision, &daemon_key, &self.signing_key())
                .unwrap();
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
        reqwest::Client::new()
    }
}

/// Enrols a master on the server at `url`; returns a client holding the session.
pub async fn enrol_master(url: &str, enrol: &str) -> (HttpBackend, SessionGrant) {
    let anon = HttpBackend::new(url).unwrap();
    let grant = anon
        .create_session(SecretString::from_str_copy(enrol))
        .await
        .unwrap();
    (client_with(url, &grant.token).await, grant)
}

/// A client for `url` holding `token`, pinned to the key the server presents.
pub async fn client_with(url: &str, token: &SecretString) -> HttpBackend {
    HttpBackend::new(url)
        .unwrap()
        .with_token(token)
        .unwrap()
        .pinning_first_contact()
        .await
        .unwrap()
}

/// A request to pair the requester holding `key`, addressed to no master in particular.
pub fn pair_request(key: &HpkeKeyPair, description: Option<&str>) -> OpenAuthRequest {
    OpenAuthRequest {
        kind: AuthKind::Pair,
        requester_public_key: Some(b64(&key.public_key())),
        identity: None,
        parent: None,
        agent: None,
        service: None,
        description: description.map(str::to_owned),
    }
}

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

/// A random canary credential value.
pub fn canary() -> String {
    format!(
        "sk-canary-{}",
        agentkeys_server::audit::hex(&agentkeys_core::crypto::random_array::<16>())
    )
}
