//! The backend client: one [`Backend`] trait covering the HTTP API v1, implemented over
//! HTTP by [`HttpBackend`]. Credentials are sealed before they leave the process and
//! opened straight into a `SecretPage` when they come back (decision 68).

use std::future::Future;

use agentkeys_secmem::{SecretPage, SecretString};
use agentkeys_types::api::{
    AgentList, AnchorRequest, AnchorResponse, ApproveRequest, AuditList, AuditVerify,
    AuthRequestList, AuthRequestTicket, AuthRequestView, CreateSessionRequest, CredentialInfo,
    CredentialList, DecideResponse, Decision, HPKE_INFO_READ, HPKE_INFO_SESSION, HPKE_INFO_STORE,
    Health, Identity, LinkIdentityRequest, OpenAuthRequest, PasskeyList, PasskeyRegistrationTicket,
    Policy, ReadCredentialRequest, ReadCredentialResponse, RemovedPasskey, RevokeRequest,
    RevokeResponse, RevokeStandingResponse, ServerInfo, SessionGrant, SessionInfo, SessionState,
    SetBindingRequest, StandingApprovalList, StartPasskeyRegistration, StoreCredentialRequest,
    TeardownResponse, auth_request_canonical_bytes, credential_aad, decision_signing_bytes,
    read_signing_bytes, shielding_key_signing_bytes,
};
use agentkeys_types::binding::Binding;
use agentkeys_types::{ErrorBody, Scope, ServiceName, Wallet};
use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::crypto::hpke::{self, HpkeKeyPair};
use crate::crypto::sign;
use crate::error::ClientError;

/// Filters for [`Backend::audit`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AuditQuery {
    /// Only this agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Wallet>,
    /// Only this service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    /// Only this action (`trail.anchor`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Only events at or after this Unix time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// At most this many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Every call of the HTTP API v1. Implemented over HTTP by [`HttpBackend`]; the daemon and
/// the CLI are written against this trait.
pub trait Backend: Send + Sync {
    /// `GET /v1/health`.
    fn health(&self) -> impl Future<Output = Result<Health, ClientError>> + Send;
    /// `GET /v1/server-info`.
    fn server_info(&self) -> impl Future<Output = Result<ServerInfo, ClientError>> + Send;
    /// `POST /v1/sessions`: enrol and get a master session.
    fn create_session(
        &self,
        auth_token: SecretString,
    ) -> impl Future<Output = Result<SessionGrant, ClientError>> + Send;
    /// `GET /v1/session`.
    fn session(&self) -> impl Future<Output = Result<SessionInfo, ClientError>> + Send;
    /// `GET /v1/session/state?cursor=&wait=`: what the session may hold; with a cursor, it
    /// answers once the state differs from that one or `wait_secs` have passed, and with
    /// `UNAUTHORIZED` as soon as the session is revoked.
    fn session_state(
        &self,
        cursor: Option<&str>,
        wait_secs: u64,
    ) -> impl Future<Output = Result<SessionState, ClientError>> + Send;
    /// `POST /v1/sessions/revoke`.
    fn revoke(
        &self,
        req: &RevokeRequest,
    ) -> impl Future<Output = Result<RevokeResponse, ClientError>> + Send;
    /// `GET /v1/agents`.
    fn agents(&self) -> impl Future<Output = Result<AgentList, ClientError>> + Send;
    /// `GET /v1/agents/{wallet}/scope`.
    fn agent_scope(
        &self,
        agent: &Wallet,
    ) -> impl Future<Output = Result<Scope, ClientError>> + Send;
    /// `PUT /v1/agents/{wallet}/scope`.
    fn set_agent_scope(
        &self,
        agent: &Wallet,
        scope: &Scope,
    ) -> impl Future<Output = Result<Scope, ClientError>> + Send;
    /// `DELETE /v1/agents/{wallet}`.
    fn teardown(
        &self,
        agent: &Wallet,
    ) -> impl Future<Output = Result<TeardownResponse, ClientError>> + Send;
    /// `POST /v1/credentials`: seals `value` to the server's shielding key and stores it.
    fn store_credential(
        &self,
        agent: Option<&Wallet>,
        service: &ServiceName,
        value: &[u8],
        policy: Option<Policy>,
    ) -> impl Future<Output = Result<CredentialInfo, ClientError>> + Send {
        self.store_bound_credential(agent, service, value, policy, None)
    }
    /// `POST /v1/credentials` with a binding (masters): stores the value and sets where
    /// the egress proxy may send it in one call. `binding: None` keeps an existing binding.
    fn store_bound_credential(
        &self,
        agent: Option<&Wallet>,
        service: &ServiceName,
        value: &[u8],
        policy: Option<Policy>,
        binding: Option<&Binding>,
    ) -> impl Future<Output = Result<CredentialInfo, ClientError>> + Send;
    /// `PUT /v1/credentials/{agent}/{service}/binding`: sets (`Some`) or removes (`None`)
    /// a binding (masters).
    fn set_binding(
        &self,
        agent: &Wallet,
        service: &ServiceName,
        binding: Option<&Binding>,
    ) -> impl Future<Output = Result<CredentialInfo, ClientError>> + Send;
    /// `GET /v1/credentials`.
    fn list_credentials(
        &self,
        agent: Option<&Wallet>,
    ) -> impl Future<Output = Result<CredentialList, ClientError>> + Send;
    /// `POST /v1/credentials/read`: the value, opened straight into secret memory, with the
    /// policy the server vouched for in the same signature.
    fn read_credential(
        &self,
        agent: Option<&Wallet>,
        service: &ServiceName,
    ) -> impl Future<Output = Result<ReadCredential, ClientError>> + Send;
    /// `PUT /v1/credentials/{agent}/{service}/policy`.
    fn set_policy(
        &self,
        agent: &Wallet,
        service: &ServiceName,
        policy: Policy,
    ) -> impl Future<Output = Result<CredentialInfo, ClientError>> + Send;
    /// `POST /v1/auth-requests`.
    fn open_auth_request(
        &self,
        req: &OpenAuthRequest,
    ) -> impl Future<Output = Result<AuthRequestTicket, ClientError>> + Send;
    /// `GET /v1/auth-requests?cursor=&wait=`: the master's inbox; with a cursor, it answers
    /// once the list differs from that one or `wait_secs` have passed.
    fn inbox(
        &self,
        cursor: Option<&str>,
        wait_secs: u64,
    ) -> impl Future<Output = Result<AuthRequestList, ClientError>> + Send;
    /// `POST /v1/passkeys/registrations`: a one-time link registering a passkey.
    fn start_passkey_registration(
        &self,
        req: &StartPasskeyRegistration,
    ) -> impl Future<Output = Result<PasskeyRegistrationTicket, ClientError>> + Send;
    /// `GET /v1/passkeys`.
    fn passkeys(&self) -> impl Future<Output = Result<PasskeyList, ClientError>> + Send;
    /// `DELETE /v1/passkeys/{id}`.
    fn remove_passkey(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<RemovedPasskey, ClientError>> + Send;
    /// `GET /v1/standing-approvals`.
    fn standing_approvals(
        &self,
    ) -> impl Future<Output = Result<StandingApprovalList, ClientError>> + Send;
    /// `POST /v1/standing-approvals/{id}/revoke`.
    fn revoke_standing_approval(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<RevokeStandingResponse, ClientError>> + Send;
    /// `GET /v1/auth-requests/by-code/{code}`.
    fn auth_request_by_code(
        &self,
        code: &str,
    ) -> impl Future<Output = Result<AuthRequestView, ClientError>> + Send;
    /// `POST /v1/auth-requests/{id}/approve`.
    fn approve(
        &self,
        id: &str,
        req: &ApproveRequest,
    ) -> impl Future<Output = Result<DecideResponse, ClientError>> + Send;
    /// `POST /v1/auth-requests/{id}/deny`.
    fn deny(&self, id: &str) -> impl Future<Output = Result<DecideResponse, ClientError>> + Send;
    /// `GET /v1/auth-requests/{id}/decision?wait=`.
    fn decision(
        &self,
        id: &str,
        wait_secs: u64,
    ) -> impl Future<Output = Result<Decision, ClientError>> + Send;
    /// `GET /v1/audit`.
    fn audit(&self, q: &AuditQuery) -> impl Future<Output = Result<AuditList, ClientError>> + Send;
    /// `GET /v1/audit/verify`.
    fn verify_audit(&self) -> impl Future<Output = Result<AuditVerify, ClientError>> + Send;
    /// `POST /v1/audit/anchor`: records a daemon trail's head in the server's log.
    fn anchor_trail(
        &self,
        req: &AnchorRequest,
    ) -> impl Future<Output = Result<AnchorResponse, ClientError>> + Send;
    /// `POST /v1/identities`.
    fn link_identity(
        &self,
        req: &LinkIdentityRequest,
    ) -> impl Future<Output = Result<Identity, ClientError>> + Send;
    /// `GET /v1/identities/resolve`: `name` containing `@` is an e-mail, else an alias.
    fn resolve_identity(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Identity, ClientError>> + Send;
}

/// A credential as a read released it: the plaintext in a secret page, and the policy the
/// server signed together with it. No `Debug`: it holds the value.
pub struct ReadCredential {
    /// The value.
    pub page: SecretPage,
    /// The credential's policy at the time of the read.
    pub policy: Policy,
    /// Where the egress proxy may send it (signed with the value), if bound.
    pub binding: Option<Binding>,
}

/// Verifies a pair/recover decision against the pinned server key and opens the session
/// sealed to `requester`. The JSON is parsed from the secret page; the token moves into a
/// `SecretString` without further copies.
pub fn open_decision(
    decision: &Decision,
    requester: &HpkeKeyPair,
    server_signing_key: &[u8; 32],
) -> Result<SessionGrant, ClientError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed = decision
        .sealed_session
        .as_deref()
        .ok_or_else(|| ClientError::Protocol("the decision carries no session".into()))?;
    let sealed = b64
        .decode(sealed)
        .map_err(|_| ClientError::Protocol("sealed_session is not base64".into()))?;
    let sig = decision
        .signature
        .as_deref()
        .ok_or(ClientError::BadSignature)?;
    let sig = b64.decode(sig).map_err(|_| ClientError::BadSignature)?;
    sign::verify(
        server_signing_key,
        &decision_signing_bytes(&decision.id, decision.status, &sealed),
        &sig,
    )
    .map_err(|_| ClientError::BadSignature)?;
    let page = hpke::open_into_page(
        requester,
        HPKE_INFO_SESSION,
        decision.id.as_bytes(),
        &sealed,
    )?;
    serde_json::from_slice(page.expose_secret())
        .map_err(|_| ClientError::Protocol("the sealed session is not a grant".into()))
}

/// The reqwest implementation of [`Backend`].
///
/// Decision 81: the server's Ed25519 key, pinned at `init` or pairing
/// ([`with_server_key`](Self::with_server_key)), is the one root of trust. Storing seals
/// only to a shielding key that key signed, and reading opens only answers it signed, so an
/// active attacker on plain HTTP can neither read a store nor forge a read.
pub struct HttpBackend {
    base: String,
    http: reqwest::Client,
    auth: Option<HeaderValue>,
    server_key: Option<[u8; 32]>,
    shielding_key: OnceCell<[u8; 32]>,
    wallet: OnceCell<Wallet>,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("base", &self.base)
            .field("has_session", &self.auth.is_some())
            .finish()
    }
}

/// A private CA the clients of this process trust besides the system's roots
/// ([`trust_ca`], else `AGENTKEYS_CA`).
static EXTRA_CA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes every client this process creates trust the CA certificates in `pem_file` (a
/// PEM bundle) besides the system's roots: the CLI's and the daemon's `--ca`. The first
/// call wins.
pub fn trust_ca(pem_file: &std::path::Path) {
    let _ = EXTRA_CA.set(pem_file.to_owned());
}

fn extra_ca() -> Option<std::path::PathBuf> {
    EXTRA_CA
        .get()
        .cloned()
        .or_else(|| std::env::var_os("AGENTKEYS_CA").map(std::path::PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

/// A client for calls beyond the agentkeys server (webhooks): the system's roots plus the
/// CA of [`trust_ca`] or `AGENTKEYS_CA`, short timeouts, and no redirects (a notification
/// goes where it was configured to, not where an answer points).
pub fn outbound_client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("agentkeys/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(certs) = extra_ca().as_deref().map(read_ca).transpose()? {
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Whether a transport failure's reason is the server's certificate being refused (an
/// unknown issuer, a name mismatch, an expired certificate), for a hint about `--ca`.
pub fn is_certificate_error(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("certificate") || r.contains("unknownissuer")
}

/// The certificates of a PEM bundle, or why there are none.
fn read_ca(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the CA file {} (--ca, AGENTKEYS_CA): {e}",
            path.display()
        )
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

impl HttpBackend {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8090`), without a session.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::trusting(base_url, extra_ca().as_deref())
    }

    /// [`HttpBackend::new`], trusting the CA certificates in `ca` (a PEM bundle) besides
    /// the system's roots, whatever [`trust_ca`] or `AGENTKEYS_CA` say.
    pub fn new_with_ca(base_url: &str, ca: &std::path::Path) -> Result<Self, ClientError> {
        Self::trusting(base_url, Some(ca))
    }

    fn trusting(base_url: &str, ca: Option<&std::path::Path>) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Transport {
                url: base,
                reason: "the server URL must start with http:// or https://".into(),
            });
        }
        // reqwest is built without a default TLS provider; ring is the one we ship.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = |reason: String| ClientError::Transport {
            url: base.clone(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("agentkeys/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(90));
        let extra = ca.map(read_ca).transpose().map_err(transport)?;
        if base.starts_with("http://") {
            // A plain-HTTP server (loopback, a test) never needs a root: without this, the
            // builder parses the whole system CA bundle, which was a third of the CPU time
            // of 'agentkeys read' in a new process. An https:// URL this client is asked for
            // then fails verification (no roots) rather than going out unverified.
            builder = builder.tls_certs_only(Vec::new());
        } else if let Some(certs) = extra {
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| transport(e.to_string()))?;
        Ok(HttpBackend {
            base,
            http,
            auth: None,
            server_key: None,
            shielding_key: OnceCell::new(),
            wallet: OnceCell::new(),
        })
    }

    /// A client for a stored session: its server, its token, and the server key it pinned.
    pub fn for_session(stored: &crate::session_store::StoredSession) -> Result<Self, ClientError> {
        Ok(Self::new(&stored.server)?
            .with_token(&stored.token)?
            .with_server_key(stored.server_signing_key))
    }

    /// Trusts the server's Ed25519 key `key` (pinned at `init` or pairing): the shielding
    /// key and read answers must carry its signature.
    pub fn with_server_key(mut self, key: [u8; 32]) -> Self {
        self.server_key = Some(key);
        self
    }

    /// Trust on first use: pins the signing key the server presents now, as `init` and
    /// pairing do when no key is given. Anything signed later must match it.
    pub async fn pinning_first_contact(self) -> Result<Self, ClientError> {
        let info = self.server_info().await?;
        let key = crate::crypto::key_from_base64(&info.signing_public_key).ok_or_else(|| {
            ClientError::Protocol("the server's signing key is not 32 bytes".into())
        })?;
        Ok(self.with_server_key(key))
    }

    /// Opens a pair or recover request for `requester` (its public key goes into `req`) and
    /// recomputes the OTP here from that key, the nonce and the request's subject
    /// (decision 71). The master compares the OTP the server computed with the one the
    /// requester shows; showing the server's value as received would let an attacker who
    /// swapped the key in transit pass that comparison, so a mismatch is refused.
    pub async fn open_requester_request(
        &self,
        mut req: OpenAuthRequest,
        requester: &HpkeKeyPair,
    ) -> Result<AuthRequestTicket, ClientError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let own_key = requester.public_key();
        req.requester_public_key = Some(b64.encode(own_key));
        let subject = agentkeys_types::api::requester_subject(&req).ok_or_else(|| {
            ClientError::Protocol("only pair and recover requests carry a requester key".into())
        })?;
        let ticket = self.open_auth_request(&req).await?;
        let nonce = b64
            .decode(&ticket.nonce)
            .map_err(|_| ClientError::Protocol("the ticket's nonce is not base64".into()))?;
        let canonical = auth_request_canonical_bytes(req.kind, &own_key, &subject);
        if crate::crypto::pairing::otp(&nonce, &canonical) != ticket.otp {
            return Err(ClientError::OtpMismatch);
        }
        Ok(ticket)
    }

    fn pinned(&self) -> Result<&[u8; 32], ClientError> {
        self.server_key.as_ref().ok_or(ClientError::NotPinned)
    }

    /// Uses `token` as the bearer for every call. The header value is built once and marked
    /// sensitive so HTTP tooling never prints it.
    pub fn with_token(mut self, token: &SecretString) -> Result<Self, ClientError> {
        let mut header = zeroize::Zeroizing::new(String::with_capacity(token.len() + 7));
        header.push_str("Bearer ");
        header.push_str(token.expose_secret());
        let mut value = HeaderValue::from_str(&header).map_err(|_| ClientError::NoSession)?;
        value.set_sensitive(true);
        self.auth = Some(value);
        Ok(self)
    }

    /// The server URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn transport(&self, e: &reqwest::Error) -> ClientError {
        // reqwest's Display names the URL only; the token travels in a header. The causes
        // say why (a refused certificate, a refused connection).
        let mut reason = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !reason.contains(&text) {
                reason.push_str(": ");
                reason.push_str(&text);
            }
            cause = c.source();
        }
        ClientError::Transport {
            url: self.base.clone(),
            reason,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        authed: bool,
    ) -> Result<T, ClientError> {
        let req = if authed {
            let auth = self.auth.clone().ok_or(ClientError::NoSession)?;
            req.header(AUTHORIZATION, auth)
        } else {
            req
        };
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        if status.is_success() {
            let parsed = serde_json::from_slice(&body)
                .map_err(|e| ClientError::Protocol(format!("{status}: {e}")));
            // Best effort: wipe the body buffer (it may hold a session token).
            if let Ok(mut owned) = body.try_into_mut() {
                zeroize::Zeroize::zeroize(&mut owned[..]);
            }
            return parsed;
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Err(ClientError::Api {
                code: error.code,
                message: error.message,
                hint: error.hint,
                auth_request: error.auth_request.map(Box::new),
                retry_after: error.retry_after_ms.map(std::time::Duration::from_millis),
                status: status.as_u16(),
            }),
            Err(_) => Err(ClientError::Protocol(format!(
                "HTTP {status} without an error body"
            ))),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, authed: bool) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path)), authed).await
    }

    async fn post<B: serde::Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        authed: bool,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body), authed)
            .await
    }

    /// The shielding key, once its signature verified against the pinned server key.
    async fn shielding_key(&self) -> Result<[u8; 32], ClientError> {
        let pinned = *self.pinned()?;
        self.shielding_key
            .get_or_try_init(|| async {
                let info = self.server_info().await?;
                let key = crate::crypto::key_from_base64(&info.shielding_public_key).ok_or_else(
                    || ClientError::Protocol("the server's shielding key is not 32 bytes".into()),
                )?;
                let sig = base64::engine::general_purpose::STANDARD
                    .decode(&info.shielding_key_signature)
                    .map_err(|_| ClientError::BadSignature)?;
                sign::verify(&pinned, &shielding_key_signing_bytes(&key), &sig)
                    .map_err(|_| ClientError::BadSignature)?;
                Ok(key)
            })
            .await
            .copied()
    }

    async fn own_wallet(&self) -> Result<Wallet, ClientError> {
        self.wallet
            .get_or_try_init(|| async { Ok(self.session().await?.wallet) })
            .await
            .cloned()
    }
}

/// Percent-encodes one path segment (wallets, services and ids are already URL-safe; this
/// keeps user-typed codes from escaping their segment).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Backend for HttpBackend {
    async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health", false).await
    }

    async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        self.get("/v1/server-info", false).await
    }

    async fn create_session(&self, auth_token: SecretString) -> Result<SessionGrant, ClientError> {
        let body = CreateSessionRequest { auth_token };
        // Serialized into a buffer we wipe; reqwest's `json` would leave an unwiped copy.
        let mut json = zeroize::Zeroizing::new(Vec::with_capacity(body.auth_token.len() + 32));
        serde_json::to_writer(&mut *json, &body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let req = self
            .http
            .post(self.url("/v1/sessions"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json.to_vec());
        self.send(req, false).await
    }

    async fn session(&self) -> Result<SessionInfo, ClientError> {
        self.get("/v1/session", true).await
    }

    async fn session_state(
        &self,
        cursor: Option<&str>,
        wait_secs: u64,
    ) -> Result<SessionState, ClientError> {
        let mut req = self.http.get(self.url("/v1/session/state"));
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]).query(&[("wait", wait_secs)]);
        }
        self.send(req, true).await
    }

    async fn revoke(&self, req: &RevokeRequest) -> Result<RevokeResponse, ClientError> {
        self.post("/v1/sessions/revoke", req, true).await
    }

    async fn agents(&self) -> Result<AgentList, ClientError> {
        self.get("/v1/agents", true).await
    }

    async fn agent_scope(&self, agent: &Wallet) -> Result<Scope, ClientError> {
        self.get(&format!("/v1/agents/{}/scope", seg(agent.as_str())), true)
            .await
    }

    async fn set_agent_scope(&self, agent: &Wallet, scope: &Scope) -> Result<Scope, ClientError> {
        let req = self
            .http
            .put(self.url(&format!("/v1/agents/{}/scope", seg(agent.as_str()))))
            .json(scope);
        self.send(req, true).await
    }

    async fn teardown(&self, agent: &Wallet) -> Result<TeardownResponse, ClientError> {
        let req = self
            .http
            .delete(self.url(&format!("/v1/agents/{}", seg(agent.as_str()))));
        self.send(req, true).await
    }

    async fn store_bound_credential(
        &self,
        agent: Option<&Wallet>,
        service: &ServiceName,
        value: &[u8],
        policy: Option<Policy>,
        binding: Option<&Binding>,
    ) -> Result<CredentialInfo, ClientError> {
        let key = self.shielding_key().await?;
        let owner = match agent {
            Some(a) => a.clone(),
            None => self.own_wallet().await?,
        };
        let sealed = hpke::seal(
            &key,
            HPKE_INFO_STORE,
            &credential_aad(&owner, service),
            value,
        )?;
        let body = StoreCredentialRequest {
            agent: agent.cloned(),
            service: service.clone(),
            sealed_value: base64::engine::general_purpose::STANDARD.encode(sealed),
            policy,
            binding: binding.cloned(),
        };
        self.post("/v1/credentials", &body, true).await
    }

    async fn list_credentials(
        &self,
        agent: Option<&Wallet>,
    ) -> Result<CredentialList, ClientError> {
        let mut req = self.http.get(self.url("/v1/credentials"));
        if let Some(a) = agent {
            req = req.query(&[("agent", a.as_str())]);
        }
        self.send(req, true).await
    }

    async fn read_credential(
        &self,
        agent: Option<&Wallet>,
        service: &ServiceName,
    ) -> Result<ReadCredential, ClientError> {
        let pinned = *self.pinned()?;
        let ephemeral = HpkeKeyPair::generate()?;
        let body = ReadCredentialRequest {
            agent: agent.cloned(),
            service: service.clone(),
            recipient_public_key: base64::engine::general_purpose::STANDARD
                .encode(ephemeral.public_key()),
        };
        let resp: ReadCredentialResponse = self.post("/v1/credentials/read", &body, true).await?;
        if &resp.service != service || agent.is_some_and(|a| a != &resp.agent) {
            return Err(ClientError::Protocol(
                "the server answered for another credential".into(),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let sealed = b64
            .decode(&resp.sealed_value)
            .map_err(|_| ClientError::Protocol("sealed_value is not base64".into()))?;
        let aad = credential_aad(&resp.agent, service);
        let signature = b64
            .decode(&resp.signature)
            .map_err(|_| ClientError::BadSignature)?;
        let signed = read_signing_bytes(
            &ephemeral.public_key(),
            &aad,
            &sealed,
            resp.policy,
            resp.binding.as_deref(),
        );
        sign::verify(&pinned, &signed, &signature).map_err(|_| ClientError::BadSignature)?;
        // Signed, so the server's: still checked, since the daemon's proxy trusts it. A
        // retired form stays readable here (the value is the reader's either way); the
        // proxy refuses to inject through it (`Binding::in_force`).
        let binding = resp
            .binding
            .as_deref()
            .map(|text| {
                serde_json::from_str::<Binding>(text)
                    .ok()
                    .filter(|b| b.validate_stored().is_ok())
                    .ok_or_else(|| {
                        ClientError::Protocol("the credential's binding is malformed".into())
                    })
            })
            .transpose()?;
        Ok(ReadCredential {
            page: hpke::open_into_page(&ephemeral, HPKE_INFO_READ, &aad, &sealed)?,
            policy: resp.policy,
            binding,
        })
    }

    async fn set_binding(
        &self,
        agent: &Wallet,
        service: &ServiceName,
        binding: Option<&Binding>,
    ) -> Result<CredentialInfo, ClientError> {
        let path = format!(
            "/v1/credentials/{}/{}/binding",
            seg(agent.as_str()),
            seg(service.as_str())
        );
        let body = SetBindingRequest {
            binding: binding.cloned(),
        };
        self.send(self.http.put(self.url(&path)).json(&body), true)
            .await
    }

    async fn set_policy(
        &self,
        agent: &Wallet,
        service: &ServiceName,
        policy: Policy,
    ) -> Result<CredentialInfo, ClientError> {
        let path = format!(
            "/v1/credentials/{}/{}/policy",
            seg(agent.as_str()),
            seg(service.as_str())
        );
        self.send(self.http.put(self.url(&path)).json(&policy), true)
            .await
    }

    async fn open_auth_request(
        &self,
        req: &OpenAuthRequest,
    ) -> Result<AuthRequestTicket, ClientError> {
        let authed = self.auth.is_some();
        self.post("/v1/auth-requests", req, authed).await
    }

    async fn inbox(
        &self,
        cursor: Option<&str>,
        wait_secs: u64,
    ) -> Result<AuthRequestList, ClientError> {
        let mut req = self.http.get(self.url("/v1/auth-requests"));
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]).query(&[("wait", wait_secs)]);
        }
        self.send(req, true).await
    }

    async fn start_passkey_registration(
        &self,
        req: &StartPasskeyRegistration,
    ) -> Result<PasskeyRegistrationTicket, ClientError> {
        self.post("/v1/passkeys/registrations", req, true).await
    }

    async fn passkeys(&self) -> Result<PasskeyList, ClientError> {
        self.get("/v1/passkeys", true).await
    }

    async fn remove_passkey(&self, id: &str) -> Result<RemovedPasskey, ClientError> {
        let req = self
            .http
            .delete(self.url(&format!("/v1/passkeys/{}", seg(id))));
        self.send(req, true).await
    }

    async fn standing_approvals(&self) -> Result<StandingApprovalList, ClientError> {
        self.get("/v1/standing-approvals", true).await
    }

    async fn revoke_standing_approval(
        &self,
        id: &str,
    ) -> Result<RevokeStandingResponse, ClientError> {
        let req = self
            .http
            .post(self.url(&format!("/v1/standing-approvals/{}/revoke", seg(id))));
        self.send(req, true).await
    }

    async fn auth_request_by_code(&self, code: &str) -> Result<AuthRequestView, ClientError> {
        self.get(&format!("/v1/auth-requests/by-code/{}", seg(code)), true)
            .await
    }

    async fn approve(&self, id: &str, req: &ApproveRequest) -> Result<DecideResponse, ClientError> {
        self.post(&format!("/v1/auth-requests/{}/approve", seg(id)), req, true)
            .await
    }

    async fn deny(&self, id: &str) -> Result<DecideResponse, ClientError> {
        let req = self
            .http
            .post(self.url(&format!("/v1/auth-requests/{}/deny", seg(id))));
        self.send(req, true).await
    }

    async fn decision(&self, id: &str, wait_secs: u64) -> Result<Decision, ClientError> {
        let req = self
            .http
            .get(self.url(&format!("/v1/auth-requests/{}/decision", seg(id))))
            .query(&[("wait", wait_secs)]);
        self.send(req, false).await
    }

    async fn audit(&self, q: &AuditQuery) -> Result<AuditList, ClientError> {
        self.send(self.http.get(self.url("/v1/audit")).query(q), true)
            .await
    }

    async fn verify_audit(&self) -> Result<AuditVerify, ClientError> {
        self.get("/v1/audit/verify", true).await
    }

    async fn anchor_trail(&self, req: &AnchorRequest) -> Result<AnchorResponse, ClientError> {
        self.post("/v1/audit/anchor", req, true).await
    }

    async fn link_identity(&self, req: &LinkIdentityRequest) -> Result<Identity, ClientError> {
        self.post("/v1/identities", req, true).await
    }

    async fn resolve_identity(&self, name: &str) -> Result<Identity, ClientError> {
        let key = if name.contains('@') { "email" } else { "alias" };
        self.send(
            self.http
                .get(self.url("/v1/identities/resolve"))
                .query(&[(key, name)]),
            true,
        )
        .await
    }
}
