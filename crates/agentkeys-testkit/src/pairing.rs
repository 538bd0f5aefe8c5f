//! Enrolment and pairing through the library, for suites that play a side themselves: a
//! master session from an enrolment token, and the daemon's side of the pair flow (a fresh
//! HPKE key, the pair request, the sealed decision opened against the server's key).

use agentkeys_core::client::{Backend as _, HttpBackend, open_decision};
use agentkeys_core::crypto::HpkeKeyPair;
use agentkeys_secmem::SecretString;
use agentkeys_types::api::{AuthKind, AuthRequestTicket, OpenAuthRequest, SessionGrant};
use base64::Engine as _;

/// Enrols a master on the server at `url`; returns a client holding the session.
pub async fn enrol_master(url: &str, enrol: &str) -> (HttpBackend, SessionGrant) {
    let anon = HttpBackend::new(url).expect("a client");
    let grant = anon
        .create_session(SecretString::from_str_copy(enrol))
        .await
        .expect("enrol the master");
    (client_with(url, &grant.token).await, grant)
}

/// A client for `url` holding `token`, pinned to the key the server presents.
pub async fn client_with(url: &str, token: &SecretString) -> HttpBackend {
    HttpBackend::new(url)
        .expect("a client")
        .with_token(token)
        .expect("a token the client accepts")
        .pinning_first_contact()
        .await
        .expect("the server's key")
}

/// A request to pair the requester holding `key`, addressed to no master in particular.
pub fn pair_request(key: &HpkeKeyPair, description: Option<&str>) -> OpenAuthRequest {
    OpenAuthRequest {
        kind: AuthKind::Pair,
        requester_public_key: Some(
            base64::engine::general_purpose::STANDARD.encode(key.public_key()),
        ),
        identity: None,
        parent: None,
        agent: None,
        service: None,
        description: description.map(str::to_owned),
    }
}

/// The daemon's side of one pairing: the request is open, its code waits for a master.
pub struct PairingAgent {
    url: String,
    key: HpkeKeyPair,
    ticket: AuthRequestTicket,
}

impl PairingAgent {
    /// Opens a pair request (`test daemon`) on the server at `url`.
    pub async fn open(url: &str) -> PairingAgent {
        let key = HpkeKeyPair::generate().expect("an HPKE key");
        let ticket = HttpBackend::new(url)
            .expect("a client")
            .open_auth_request(&pair_request(&key, Some("test daemon")))
            .await
            .expect("open the pair request");
        PairingAgent {
            url: url.to_owned(),
            key,
            ticket,
        }
    }

    /// The code the master approves.
    pub fn code(&self) -> &str {
        &self.ticket.pair_code
    }

    /// Once the master approved: the decision, verified against the server's signing key
    /// and opened. The agent's session.
    pub async fn finish(self) -> SessionGrant {
        let anon = HttpBackend::new(&self.url).expect("a client");
        let info = anon.server_info().await.expect("the server's info");
        let signing: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(info.signing_public_key)
            .expect("a base64 signing key")
            .try_into()
            .expect("a 32-byte signing key");
        let decision = anon
            .decision(&self.ticket.id, 5)
            .await
            .expect("the decision");
        open_decision(&decision, &self.key, &signing).expect("open the decision")
    }
}
