//! An active attacker between client and server on plain HTTP (decision 81): a
//! tampering proxy in front of the real server swaps the shielding key in
//! `GET /v1/server-info` for its own (to open every store, then re-seal it onward), answers
//! reads with a value of its choosing sealed to the reader's fresh key, and swaps the
//! requester's key in pair requests. A client pinned to the server's Ed25519 key must refuse
//! the first two, and a requester that recomputes its own OTP the third; controls show the
//! proxy's tampering is real.

use std::sync::{Arc, Mutex};

use agentkeys_core::ClientError;
use agentkeys_core::client::{Backend as _, HttpBackend};
use agentkeys_core::crypto::hpke::{self, HpkeKeyPair};
use agentkeys_core::crypto::pairing::otp;
use agentkeys_types::api::{
    AuthKind, HPKE_INFO_READ, HPKE_INFO_STORE, OpenAuthRequest, auth_request_canonical_bytes,
    credential_aad,
};
use agentkeys_types::{ServiceName, Wallet};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use serde_json::Value;

use super::common::*;

const FORGED: &[u8] = b"sk-chosen-by-the-attacker";

/// The attacker: its own X25519 key, the victim's wallet (to rebuild the aad), the real
/// shielding key (to re-seal what it opened), and every plaintext it learned.
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    key: HpkeKeyPair,
    victim: Wallet,
    real_shielding: [u8; 32],
    learned: Mutex<Vec<Vec<u8>>>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Proxy {
    /// Starts the proxy on a free port; returns its URL and its state.
    async fn start(ts: &TestServer, victim: Wallet) -> (String, Arc<Proxy>) {
        let real_shielding: [u8; 32] = b64()
            .decode(&ts.state.info.shielding_public_key)
            .unwrap()
            .try_into()
            .unwrap();
        let proxy = Arc::new(Proxy {
            upstream: ts.url.clone(),
            http: reqwest::Client::new(),
            key: HpkeKeyPair::generate().unwrap(),
            victim,
            real_shielding,
            learned: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, proxy)
    }

    /// A store: open it with the attacker's key (learning the value), re-seal it to the
    /// server's real key so the store still succeeds.
    fn tamper_store(&self, body: &Bytes) -> Bytes {
        let mut v: Value = serde_json::from_slice(body).unwrap();
        let service = ServiceName::parse(v["service"].as_str().unwrap()).unwrap();
        let aad = credential_aad(&self.victim, &service);
        let sealed = b64().decode(v["sealed_value"].as_str().unwrap()).unwrap();
        if let Ok(page) = hpke::open_into_page(&self.key, HPKE_INFO_STORE, &aad, &sealed) {
            self.learned
                .lock()
                .unwrap()
                .push(page.expose_secret().to_vec());
            let onward = hpke::seal(
                &self.real_shielding,
                HPKE_INFO_STORE,
                &aad,
                page.expose_secret(),
            )
            .unwrap();
            v["sealed_value"] = b64().encode(onward).into();
        }
        Bytes::from(serde_json::to_vec(&v).unwrap())
    }

    /// A response: the attacker's shielding key in server-info; a forged value in reads.
    fn tamper_response(&self, path: &str, request: &Bytes, body: Bytes) -> Bytes {
        let mut v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return body,
        };
        if path == "/v1/server-info" {
            v["shielding_public_key"] = b64().encode(self.key.public_key()).into();
        } else if path == "/v1/credentials/read" && v.get("sealed_value").is_some() {
            let req: Value = serde_json::from_slice(request).unwrap();
            let recipient: [u8; 32] = b64()
                .decode(req["recipient_public_key"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let owner = Wallet::parse(v["agent"].as_str().unwrap()).unwrap();
            let service = ServiceName::parse(v["service"].as_str().unwrap()).unwrap();
            let aad = credential_aad(&owner, &service);
            let forged = hpke::seal(&recipient, HPKE_INFO_READ, &aad, FORGED).unwrap();
            v["sealed_value"] = b64().encode(forged).into();
        }
        Bytes::from(serde_json::to_vec(&v).unwrap())
    }
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let path = parts.uri.path().to_owned();
    if path == "/v1/credentials" && parts.method == axum::http::Method::POST {
        body = p.tamper_store(&body);
    }
    if path == "/v1/auth-requests" && parts.method == axum::http::Method::POST {
        // Pairing: put the attacker's key in place of the daemon's, so the session the
        // master approves would be sealed to the attacker.
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        if v.get("requester_public_key").is_some() {
            v["requester_public_key"] = b64().encode(p.key.public_key()).into();
        }
        body = Bytes::from(serde_json::to_vec(&v).unwrap());
    }
    let target = format!(
        "{}{}",
        p.upstream,
        parts.uri.path_and_query().map_or("/", |x| x.as_str())
    );
    let mut onward = p.http.request(parts.method.clone(), target);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            onward = onward.header(name, value);
        }
    }
    let answer = onward.body(body.clone()).send().await.unwrap();
    let status = answer.status();
    let answered = answer.bytes().await.unwrap();
    let tampered = p.tamper_response(&path, &body, answered);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        tampered,
    )
        .into_response()
}

#[tokio::test]
async fn an_active_attacker_can_neither_read_a_store_nor_forge_a_read() {
    let ts = TestServer::start().await;
    let (master, me, token) = ts.master("mitm").await;
    let openai = ServiceName::parse("openai").unwrap();
    master
        .store_credential(None, &openai, b"sk-the-real-value", None)
        .await
        .unwrap();
    let (url, proxy) = Proxy::start(&ts, me.wallet.clone()).await;

    // Control: the proxy's tampering is real. A client that trusted server-info unchecked
    // would seal to the attacker's key, and a raw read through the proxy opens to the
    // attacker's value.
    let info = HttpBackend::new(&url).unwrap().server_info().await.unwrap();
    assert_eq!(
        info.shielding_public_key,
        b64().encode(proxy.key.public_key())
    );
    let reader = HpkeKeyPair::generate().unwrap();
    let raw: Value = ts
        .raw()
        .post(format!("{url}/v1/credentials/read"))
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({
            "service": "openai",
            "recipient_public_key": b64().encode(reader.public_key()),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sealed = b64().decode(raw["sealed_value"].as_str().unwrap()).unwrap();
    let aad = credential_aad(&me.wallet, &openai);
    let opened = hpke::open_into_page(&reader, HPKE_INFO_READ, &aad, &sealed).unwrap();
    assert_eq!(opened.expose_secret(), FORGED, "the proxy forges reads");

    // The pinned client refuses both.
    let client = HttpBackend::new(&url)
        .unwrap()
        .with_token(&token)
        .unwrap()
        .with_server_key(ts.signing_key());
    let stripe = ServiceName::parse("stripe").unwrap();
    let stored = client
        .store_credential(None, &stripe, b"sk-stored-through-the-attacker", None)
        .await;
    assert!(
        matches!(stored, Err(ClientError::BadSignature)),
        "a store must not seal to an unsigned shielding key"
    );
    assert!(
        proxy.learned.lock().unwrap().is_empty(),
        "the attacker learned a stored value"
    );
    let read = client.read_credential(None, &openai).await;
    assert!(
        matches!(read, Err(ClientError::BadSignature)),
        "a forged read answer must not open"
    );

    // And a client without a pinned key seals nothing at all.
    let unpinned = HttpBackend::new(&url).unwrap().with_token(&token).unwrap();
    assert!(matches!(
        unpinned.store_credential(None, &stripe, b"x", None).await,
        Err(ClientError::NotPinned)
    ));
}

#[tokio::test]
async fn a_requester_key_swapped_in_transit_is_caught_by_the_requesters_own_otp() {
    let ts = TestServer::start().await;
    let (_, me, _) = ts.master("pairing").await;
    let (url, proxy) = Proxy::start(&ts, me.wallet.clone()).await;
    let request = || OpenAuthRequest {
        kind: AuthKind::Pair,
        requester_public_key: None,
        identity: None,
        parent: None,
        agent: None,
        service: None,
        description: None,
    };
    let daemon_key = HpkeKeyPair::generate().unwrap();
    let via = HttpBackend::new(&url).unwrap();
    assert!(matches!(
        via.open_requester_request(request(), &daemon_key).await,
        Err(ClientError::OtpMismatch)
    ));
    // Control: the server's OTP is computed over the attacker's key, so a requester that
    // showed it as received would have matched what the master is shown.
    let mut raw = request();
    raw.requester_public_key = Some(b64().encode(daemon_key.public_key()));
    let t = via.open_auth_request(&raw).await.unwrap();
    let nonce = b64().decode(&t.nonce).unwrap();
    let over = |key: &[u8]| {
        otp(
            &nonce,
            &auth_request_canonical_bytes(AuthKind::Pair, key, ""),
        )
    };
    assert_eq!(t.otp, over(&proxy.key.public_key()));
    assert_ne!(t.otp, over(&daemon_key.public_key()));
    // Without the attacker, the requester's own OTP is the server's.
    let direct = HttpBackend::new(&ts.url).unwrap();
    assert!(
        direct
            .open_requester_request(request(), &daemon_key)
            .await
            .is_ok()
    );
}
