//! Pair, recover and high-value requests: single use, expiry, signatures, OTPs.

use agentkeys_core::client::{Backend as _, HttpBackend, open_decision};
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_core::crypto::pairing;
use agentkeys_types::api::{
    ApproveRequest, AuthKind, AuthRequestTicket, AuthStatus, LinkIdentityRequest,
    MAX_STANDING_MINUTES, OpenAuthRequest, Policy, auth_request_canonical_bytes,
};
use agentkeys_types::{ErrorCode, Scope};
use base64::Engine as _;

use super::common::*;

/// Opens a pair request for a fresh daemon key.
async fn open_pair(ts: &TestServer) -> (HpkeKeyPair, AuthRequestTicket) {
    let key = HpkeKeyPair::generate().unwrap();
    let t = ts
        .anon()
        .open_auth_request(&pair_request(&key, Some("laptop")))
        .await
        .unwrap();
    (key, t)
}

#[tokio::test]
async fn the_pair_otp_is_what_the_requester_computes_itself() {
    let ts = TestServer::start().await;
    let (key, t) = open_pair(&ts).await;
    let nonce = base64::engine::general_purpose::STANDARD
        .decode(&t.nonce)
        .unwrap();
    let own = pairing::otp(
        &nonce,
        &auth_request_canonical_bytes(AuthKind::Pair, &key.public_key(), ""),
    );
    assert_eq!(own, t.otp);
    assert_eq!(t.otp.len(), 6);
    assert_eq!(
        pairing::normalize_pair_code(&t.pair_code).as_deref(),
        Some(t.pair_code.as_str())
    );
    let (m, _, _) = ts.master("m").await;
    let view = m
        .auth_request_by_code(&t.pair_code.to_lowercase().replace('-', ""))
        .await
        .unwrap();
    assert_eq!(
        (view.otp, view.kind, view.status),
        (t.otp, AuthKind::Pair, AuthStatus::Pending)
    );
    assert_eq!(view.description.as_deref(), Some("laptop"));
}

#[tokio::test]
async fn a_pair_decision_is_sealed_to_the_requester_and_signed() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (key, t) = open_pair(&ts).await;
    // A long-poll started before the approval wakes up with it.
    let poller = {
        let anon = ts.anon();
        let id = t.id.clone();
        tokio::spawn(async move { anon.decision(&id, 30).await })
    };
    let decided = m
        .approve(
            &t.id,
            &ApproveRequest {
                scope: Some(scope(&["openai"], true)),
                ..ApproveRequest::default()
            },
        )
        .await
        .unwrap();
    let d = poller.await.unwrap().unwrap();
    assert_eq!(d.status, AuthStatus::Approved);
    let grant = open_decision(&d, &key, &ts.signing_key()).unwrap();
    assert_eq!(Some(grant.session.wallet.clone()), decided.agent);
    assert_eq!(grant.session.parent.as_ref(), Some(&m_info.wallet));
    assert_eq!(grant.session.scope, scope(&["openai"], true));
    // Another key cannot open it; another server key does not verify it.
    assert!(open_decision(&d, &HpkeKeyPair::generate().unwrap(), &ts.signing_key()).is_err());
    let other = TestServer::start().await;
    assert!(matches!(
        open_decision(&d, &key, &other.signing_key()),
        Err(agentkeys_core::ClientError::BadSignature)
    ));
    // A tampered sealed session fails the signature check.
    let mut bad = d.clone();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(bad.sealed_session.unwrap())
        .unwrap();
    raw[40] ^= 1;
    bad.sealed_session = Some(b64(&raw));
    assert!(matches!(
        open_decision(&bad, &key, &ts.signing_key()),
        Err(agentkeys_core::ClientError::BadSignature)
    ));
}

#[tokio::test]
async fn a_second_approval_of_the_same_request_is_already_consumed() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (_, t) = open_pair(&ts).await;
    m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    assert_code(
        m.approve(&t.id, &ApproveRequest::default()).await,
        ErrorCode::AlreadyConsumed,
    );
    assert_code(m.deny(&t.id).await, ErrorCode::AlreadyConsumed);
    assert_eq!(
        m.agents().await.unwrap().agents.len(),
        1,
        "the second approval must not mint a second agent"
    );
}

#[tokio::test]
async fn an_approval_after_expiry_is_expired() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (_, t) = open_pair(&ts).await;
    ts.state.clock.advance(61);
    assert_code(
        m.approve(&t.id, &ApproveRequest::default()).await,
        ErrorCode::Expired,
    );
    assert_eq!(
        ts.anon().decision(&t.id, 0).await.unwrap().status,
        AuthStatus::Expired
    );
    assert!(m.agents().await.unwrap().agents.is_empty());
}

#[tokio::test]
async fn a_pair_code_that_does_not_exist_is_not_found() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    assert_code(
        m.auth_request_by_code("ABCD-EFGH").await,
        ErrorCode::NotFound,
    );
    assert_code(
        m.auth_request_by_code("not a code!").await,
        ErrorCode::BadRequest,
    );
    assert_code(
        m.approve("req_missing", &ApproveRequest::default()).await,
        ErrorCode::NotFound,
    );
    assert_code(
        ts.anon().decision("req_missing", 0).await,
        ErrorCode::NotFound,
    );
}

#[tokio::test]
async fn a_denied_pair_request_carries_a_signed_denial_and_no_session() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (_, t) = open_pair(&ts).await;
    assert_eq!(m.deny(&t.id).await.unwrap().status, AuthStatus::Denied);
    let d = ts.anon().decision(&t.id, 0).await.unwrap();
    assert_eq!(d.status, AuthStatus::Denied);
    assert!(d.sealed_session.is_none());
    let sig = base64::engine::general_purpose::STANDARD
        .decode(d.signature.unwrap())
        .unwrap();
    let msg = agentkeys_types::api::decision_signing_bytes(&t.id, AuthStatus::Denied, &[]);
    agentkeys_core::crypto::sign::verify(&ts.signing_key(), &msg, &sig).unwrap();
}

#[tokio::test]
async fn pair_requests_need_a_key_and_agents_cannot_approve() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, Scope::all()).await;
    let mut req = pair_request(&HpkeKeyPair::generate().unwrap(), Some("laptop"));
    req.requester_public_key = None;
    assert_code(
        ts.anon().open_auth_request(&req).await,
        ErrorCode::BadRequest,
    );
    req.requester_public_key = Some(b64(b"short"));
    assert_code(
        ts.anon().open_auth_request(&req).await,
        ErrorCode::BadRequest,
    );
    let (_, t) = open_pair(&ts).await;
    assert_code(
        a.approve(
            &t.id,
            &ApproveRequest {
                scope: Some(Scope::all()),
                minutes: None,
            },
        )
        .await,
        ErrorCode::Denied,
    );
    assert_code(
        a.auth_request_by_code(&t.pair_code).await,
        ErrorCode::Denied,
    );
}

#[tokio::test]
async fn recover_mints_a_new_session_for_an_existing_agent() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (m2, _, _) = ts.master("m2").await;
    let (old_daemon, a_info, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(
        Some(&a_info.wallet),
        &svc("openai"),
        b"recovered-value",
        None,
    )
    .await
    .unwrap();
    link_alias(&m, &a_info.wallet, "builder").await;
    let (key, mut req) = naming(AuthKind::Recover, "builder");
    req.parent = Some(m.session().await.unwrap().wallet);
    let t = ts.anon().open_auth_request(&req).await.unwrap();
    assert_hidden_from(&m2, &t).await;
    let view = m.auth_request_by_code(&t.pair_code).await.unwrap();
    assert_eq!(view.agent.as_ref(), Some(&a_info.wallet));
    m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    let grant = open_decision(
        &ts.anon().decision(&t.id, 5).await.unwrap(),
        &key,
        &ts.signing_key(),
    )
    .unwrap();
    assert_eq!(grant.session.wallet, a_info.wallet);
    let a2 = agentkeys_core::HttpBackend::new(&ts.url)
        .unwrap()
        .with_token(&grant.token)
        .unwrap()
        .with_server_key(ts.signing_key());
    assert_eq!(
        a2.read_credential(None, &svc("openai"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"recovered-value"
    );
    // The lost daemon's session ended with the recovery.
    assert_code(old_daemon.session().await, ErrorCode::Unauthorized);
    // A name nobody linked is answered like one that exists, and shows to no master.
    let mut unknown = req.clone();
    unknown.identity = Some("nobody".into());
    let t = ts.anon().open_auth_request(&unknown).await.unwrap();
    assert_hidden_from(&m, &t).await;
    assert_hidden_from(&m2, &t).await;
    // By alias without the master that linked it, the request is refused (names are
    // per master), whether or not the name exists.
    let mut bare = req.clone();
    bare.parent = None;
    assert_code(
        ts.anon().open_auth_request(&bare).await,
        ErrorCode::BadRequest,
    );
}

#[tokio::test]
async fn a_high_value_credential_needs_one_approval_per_release() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    store_high_value(&m, "stripe", b"sk-high").await;
    let e = assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    let ticket = e.auth_request().unwrap().clone();
    assert!(
        e.hint()
            .unwrap()
            .contains(&format!("agentkeys approve {}", ticket.pair_code))
    );
    // Asking again while pending returns the same request, not a new one.
    let again = assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    assert_eq!(again.auth_request().unwrap().id, ticket.id);
    // The agent cannot approve its own release.
    assert_code(
        a.approve(&ticket.id, &ApproveRequest::default()).await,
        ErrorCode::Denied,
    );
    let view = m.auth_request_by_code(&ticket.pair_code).await.unwrap();
    assert_eq!(
        (view.kind, view.requested_by.as_ref()),
        (AuthKind::HighValue, Some(&a_info.wallet))
    );
    assert_eq!(view.agent.as_ref(), Some(&m_info.wallet));
    m.approve(&ticket.id, &ApproveRequest::default())
        .await
        .unwrap();
    assert_eq!(
        a.read_credential(None, &svc("stripe"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"sk-high"
    );
    // The grant was single-use.
    assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
}

#[tokio::test]
async fn a_read_the_server_cannot_seal_does_not_spend_the_grant() {
    let ts = TestServer::start().await;
    let (m, _, token) = ts.master("m").await;
    store_high_value(&m, "stripe", b"sk-high").await;
    let t = m
        .open_auth_request(&high_value_request("stripe", None))
        .await
        .unwrap();
    m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    // The all-zero X25519 key is 32 bytes of base64 but no usable key: the seal fails.
    let bad = ts
        .raw()
        .post(format!("{}/v1/credentials/read", ts.url))
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({"service": "stripe", "recipient_public_key": b64(&[0; 32])}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert!(body["error"]["hint"].is_string(), "{body}");
    // The grant is still there for a read that can be sealed.
    assert_eq!(
        m.read_credential(None, &svc("stripe"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"sk-high"
    );
    assert_code(
        m.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
}

#[tokio::test]
async fn a_high_value_grant_expires_unused() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    store_high_value(&m, "stripe", b"v").await;
    let t = m
        .open_auth_request(&high_value_request("stripe", None))
        .await
        .unwrap();
    m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    ts.state.clock.advance(301);
    assert_code(
        m.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    // Opening a high-value request needs a session.
    let anon_client = ts.anon();
    assert_code(
        anon_client
            .open_auth_request(&high_value_request("stripe", None))
            .await,
        ErrorCode::Unauthorized,
    );
}

#[tokio::test]
async fn an_agent_may_ask_ahead_for_its_masters_high_value_credential() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts
        .agent(&m, scope(&["stripe", "openai", "missing"], true))
        .await;
    store_high_value(&m, "stripe", b"sk-ahead").await;
    m.store_credential(None, &svc("openai"), b"plain", None)
        .await
        .unwrap();
    let ask = |service: &str| high_value_request(service, Some("nightly billing run"));
    let t = a.open_auth_request(&ask("stripe")).await.unwrap();
    m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    assert_eq!(
        a.read_credential(None, &svc("stripe"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"sk-ahead"
    );
    assert_code(
        a.open_auth_request(&ask("openai")).await,
        ErrorCode::BadRequest,
    );
    assert_code(
        a.open_auth_request(&ask("missing")).await,
        ErrorCode::NotFound,
    );
}

#[tokio::test]
async fn a_pair_request_addressed_to_a_master_is_only_that_masters() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (m2, _, _) = ts.master("m2").await;
    let key = HpkeKeyPair::generate().unwrap();
    let req = OpenAuthRequest {
        parent: Some(m_info.wallet.clone()),
        ..pair_request(&key, None)
    };
    let t = ts.anon().open_auth_request(&req).await.unwrap();
    assert_hidden_from(&m2, &t).await;
    let decided = m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    let agent = decided.agent.unwrap();
    let agents = m.agents().await.unwrap();
    assert!(agents.agents.iter().any(|a| a.wallet == agent));
    // A wallet that is no master is answered alike: the answer says nothing about which
    // wallets exist, and the request shows to nobody.
    let mut unknown = req.clone();
    unknown.parent = Some(agentkeys_types::Wallet::from_bytes(&[7; 20]));
    let t = ts.anon().open_auth_request(&unknown).await.unwrap();
    assert_eq!((t.pair_code.len(), t.otp.len()), (9, 6));
    assert_hidden_from(&m, &t).await;
    // Pair requests name their master by wallet only: a name could be anyone's.
    let mut named = req.clone();
    named.identity = Some("alice".into());
    assert_code(
        ts.anon().open_auth_request(&named).await,
        ErrorCode::BadRequest,
    );
}

#[tokio::test]
async fn another_master_squatting_a_name_captures_nothing() {
    let ts = TestServer::start().await;
    let (victim, victim_info, _) = ts.master("victim").await;
    let (squatter, squatter_info, _) = ts.master("squatter").await;
    let (_, bot, _) = ts.agent(&victim, scope(&["openai"], true)).await;
    let (_, decoy, _) = ts.agent(&squatter, scope(&["openai"], true)).await;
    // Both link "bot" and the same e-mail: two namespaces, no conflict, nothing revealed.
    link_alias(&squatter, &decoy.wallet, "bot").await;
    link_alias(&victim, &bot.wallet, "bot").await;
    for (m, w) in [(&squatter, &decoy.wallet), (&victim, &bot.wallet)] {
        m.link_identity(&LinkIdentityRequest {
            wallet: w.clone(),
            alias: None,
            email: Some("ops@example.org".into()),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        victim.resolve_identity("bot").await.unwrap().wallet,
        bot.wallet
    );
    assert_eq!(
        squatter
            .resolve_identity("ops@example.org")
            .await
            .unwrap()
            .wallet,
        decoy.wallet
    );
    // The victim's daemon recovers "bot" in the victim's namespace: the squatter's "bot"
    // plays no part, and the squatter cannot see the request.
    let (_key, mut req) = naming(AuthKind::Recover, "bot");
    req.parent = Some(victim_info.wallet.clone());
    let t = ts.anon().open_auth_request(&req).await.unwrap();
    assert_hidden_from(&squatter, &t).await;
    let view = victim.auth_request_by_code(&t.pair_code).await.unwrap();
    assert_eq!(view.agent.as_ref(), Some(&bot.wallet));
    // Naming the squatter's namespace reaches only the squatter's own agent.
    let (_key, mut req) = naming(AuthKind::Recover, "bot");
    req.parent = Some(squatter_info.wallet.clone());
    let t = ts.anon().open_auth_request(&req).await.unwrap();
    assert_hidden_from(&victim, &t).await;
    // Resolving is per master too: the squatter cannot look up the victim's names.
    let err = assert_code(
        squatter.resolve_identity("nothing-here").await,
        ErrorCode::NotFound,
    );
    assert!(!err.to_string().contains("nothing-here"), "{err}");
}

/// `m` links `alias` to `wallet`.
async fn link_alias(
    m: &agentkeys_core::HttpBackend,
    wallet: &agentkeys_types::Wallet,
    alias: &str,
) {
    m.link_identity(&LinkIdentityRequest {
        wallet: wallet.clone(),
        alias: Some(alias.into()),
        email: None,
    })
    .await
    .unwrap();
}

/// An anonymous `kind` request naming `identity`, and the requester's key.
fn naming(kind: AuthKind, identity: &str) -> (HpkeKeyPair, OpenAuthRequest) {
    let key = HpkeKeyPair::generate().unwrap();
    let req = OpenAuthRequest {
        kind,
        requester_public_key: Some(b64(&key.public_key())),
        identity: Some(identity.into()),
        parent: None,
        agent: None,
        service: None,
        description: None,
    };
    (key, req)
}

/// `other` can neither see nor approve the request.
async fn assert_hidden_from(other: &agentkeys_core::HttpBackend, t: &AuthRequestTicket) {
    assert_code(
        other.auth_request_by_code(&t.pair_code).await,
        ErrorCode::NotFound,
    );
    assert_code(
        other.approve(&t.id, &ApproveRequest::default()).await,
        ErrorCode::NotFound,
    );
}

/// Stores `value` for `service` under `m`, marked high-value.
async fn store_high_value(m: &HttpBackend, service: &str, value: &[u8]) {
    m.store_credential(
        None,
        &svc(service),
        value,
        Some(Policy {
            high_value: true,
            ..Policy::default()
        }),
    )
    .await
    .unwrap();
}

/// A request for one release of `service`.
fn high_value_request(service: &str, description: Option<&str>) -> OpenAuthRequest {
    OpenAuthRequest {
        kind: AuthKind::HighValue,
        requester_public_key: None,
        identity: None,
        parent: None,
        agent: None,
        service: Some(svc(service)),
        description: description.map(str::to_owned),
    }
}

#[tokio::test]
async fn each_master_lists_only_the_requests_it_may_decide() {
    let ts = TestServer::start().await;
    let (m1, m1_info, _) = ts.master("m1").await;
    let (m2, m2_info, _) = ts.master("m2").await;
    let (a1, a1_info, _) = ts.agent(&m1, scope(&["stripe"], true)).await;
    m1.link_identity(&LinkIdentityRequest {
        wallet: a1_info.wallet.clone(),
        alias: Some("billing-bot".into()),
        email: None,
    })
    .await
    .unwrap();
    store_high_value(&m1, "stripe", b"sk-one").await;
    let hv = a1
        .open_auth_request(&high_value_request("stripe", Some("month end")))
        .await
        .unwrap();
    // A pairing addressed to m2, and one addressed to nobody (its code is the capability:
    // it shows in no inbox).
    let mut to_m2 = pair_request(&HpkeKeyPair::generate().unwrap(), Some("m2's laptop"));
    to_m2.parent = Some(m2_info.wallet.clone());
    let p2 = ts.anon().open_auth_request(&to_m2).await.unwrap();
    ts.anon()
        .open_auth_request(&pair_request(&HpkeKeyPair::generate().unwrap(), None))
        .await
        .unwrap();

    let l1 = m1.inbox(None, 0).await.unwrap();
    let ids: Vec<&str> = l1.requests.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [hv.id.as_str()]);
    let r = &l1.requests[0];
    assert_eq!(
        (
            r.kind,
            r.agent.as_ref(),
            r.service.as_ref(),
            r.requested_by.as_ref()
        ),
        (
            AuthKind::HighValue,
            Some(&m1_info.wallet),
            Some(&svc("stripe")),
            Some(&a1_info.wallet)
        )
    );
    assert_eq!(
        (r.otp.as_str(), r.description.as_deref(), r.status),
        (hv.otp.as_str(), Some("month end"), AuthStatus::Pending)
    );
    let l2 = m2.inbox(None, 0).await.unwrap();
    let ids: Vec<&str> = l2.requests.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [p2.id.as_str()]);
    // Agents have no inbox.
    assert_code(a1.inbox(None, 0).await, ErrorCode::Denied);

    // Deciding from the inbox consumes the request once; it leaves the inbox.
    m1.approve(&hv.id, &ApproveRequest::default())
        .await
        .unwrap();
    assert_code(
        m1.approve(&hv.id, &ApproveRequest::default()).await,
        ErrorCode::AlreadyConsumed,
    );
    assert!(m1.inbox(None, 0).await.unwrap().requests.is_empty());
    // A recovery of m1's agent, by alias, shows to m1 with the alias.
    let recover = OpenAuthRequest {
        kind: AuthKind::Recover,
        requester_public_key: Some(b64(&HpkeKeyPair::generate().unwrap().public_key())),
        identity: Some("billing-bot".into()),
        parent: Some(m1_info.wallet.clone()),
        agent: None,
        service: None,
        description: None,
    };
    let rc = ts.anon().open_auth_request(&recover).await.unwrap();
    let l1 = m1.inbox(None, 0).await.unwrap();
    assert_eq!(l1.requests.len(), 1);
    assert_eq!(l1.requests[0].id, rc.id);
    assert_eq!(l1.requests[0].agent.as_ref(), Some(&a1_info.wallet));
    assert_eq!(l1.requests[0].agent_names, ["billing-bot"]);
    assert!(m2.inbox(None, 0).await.unwrap().requests.len() == 1);
}

#[tokio::test]
async fn the_inbox_long_poll_answers_when_a_request_arrives() {
    let ts = TestServer::start().await;
    let m = std::sync::Arc::new(ts.master("m").await.0);
    store_high_value(&m, "stripe", b"v").await;
    let first = m.inbox(None, 0).await.unwrap();
    assert!(first.requests.is_empty());
    // Unchanged: the long-poll waits out its time and answers the same cursor.
    let started = std::time::Instant::now();
    let same = m.inbox(Some(&first.cursor), 1).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(same.cursor, first.cursor);
    // A request opened while it waits wakes it at once.
    let waiter = {
        let m = m.clone();
        let cursor = first.cursor.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (m.inbox(Some(&cursor), 30).await, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let t = m
        .open_auth_request(&high_value_request("stripe", None))
        .await
        .unwrap();
    let (got, took) = waiter.await.unwrap();
    let got = got.unwrap();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_eq!(got.requests.len(), 1);
    assert_eq!(got.requests[0].id, t.id);
    assert_ne!(got.cursor, first.cursor);
    // A wait over 60 s is refused.
    assert_code(m.inbox(Some(&got.cursor), 61).await, ErrorCode::BadRequest);
}

#[tokio::test]
async fn opening_a_request_wakes_the_inboxes_and_leaves_decision_waiters_asleep() {
    use std::time::Duration;
    use tokio::time::timeout;
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    store_high_value(&m, "stripe", b"v").await;
    let wake = &ts.state.wake;
    let decisions = wake.decisions.notified();
    let inbox = wake.inbox.notified();
    tokio::pin!(decisions, inbox);
    decisions.as_mut().enable();
    inbox.as_mut().enable();
    let t = m
        .open_auth_request(&high_value_request("stripe", None))
        .await
        .unwrap();
    timeout(Duration::from_secs(5), inbox.as_mut())
        .await
        .expect("an open wakes the inbox long-polls");
    assert!(
        timeout(Duration::from_millis(200), decisions.as_mut())
            .await
            .is_err(),
        "an open woke the decision long-polls"
    );
    // A decision wakes both: the request left the inboxes, and its requester waits.
    let inbox = wake.inbox.notified();
    tokio::pin!(inbox);
    inbox.as_mut().enable();
    m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
    timeout(Duration::from_secs(5), decisions.as_mut())
        .await
        .expect("a decision wakes its waiters");
    timeout(Duration::from_secs(5), inbox.as_mut())
        .await
        .expect("a decision wakes the inbox long-polls");
}

#[tokio::test]
async fn a_standing_approval_lets_one_agent_read_one_credential_until_it_ends() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["stripe", "github"], true)).await;
    let (b, _, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    store_high_value(&m, "stripe", b"sk-standing").await;
    store_high_value(&m, "github", b"gh-standing").await;
    let e = assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    let t = e.auth_request().unwrap().clone();
    // Out of bounds, and on a request kind without releases: refused.
    for minutes in [0, MAX_STANDING_MINUTES + 1] {
        assert_code(
            m.approve(&t.id, &standing(minutes)).await,
            ErrorCode::BadRequest,
        );
    }
    m.approve(&t.id, &standing(30)).await.unwrap();
    let listed = m.standing_approvals().await.unwrap().approvals;
    assert_eq!(listed.len(), 1);
    let st = &listed[0];
    assert_eq!(
        (
            &st.agent,
            &st.owner,
            st.service.as_str(),
            st.request_id.as_str(),
            st.via.as_str()
        ),
        (
            &a_info.wallet,
            &m_info.wallet,
            "stripe",
            t.id.as_str(),
            "session"
        )
    );
    assert!(st.id.starts_with("sta_"));
    // Three reads, no new request; each audited with the approval's id.
    for _ in 0..3 {
        assert_eq!(
            a.read_credential(None, &svc("stripe"))
                .await
                .unwrap()
                .page
                .expose_secret(),
            b"sk-standing"
        );
    }
    let audit = m
        .audit(&agentkeys_core::client::AuditQuery {
            action: Some("credential.read".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let under = audit
        .events
        .iter()
        .filter(|e| {
            e.outcome == "ok"
                && e.detail
                    .as_deref()
                    .is_some_and(|d| d.contains(&format!("standing approval {}", st.id)))
        })
        .count();
    assert_eq!(under, 3);
    // Only that agent, only that credential.
    assert_code(
        b.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    assert_code(
        a.read_credential(None, &svc("github")).await,
        ErrorCode::ApprovalRequired,
    );
    // Another master cannot see or revoke it; its master revokes it, and reads ask again.
    let (other, _, _) = ts.master("other").await;
    assert!(
        other
            .standing_approvals()
            .await
            .unwrap()
            .approvals
            .is_empty()
    );
    assert_code(
        other.revoke_standing_approval(&st.id).await,
        ErrorCode::NotFound,
    );
    m.revoke_standing_approval(&st.id).await.unwrap();
    assert_code(
        m.revoke_standing_approval(&st.id).await,
        ErrorCode::NotFound,
    );
    assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    assert!(m.standing_approvals().await.unwrap().approvals.is_empty());
}

#[tokio::test]
async fn a_standing_approval_ends_at_its_time() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    store_high_value(&m, "stripe", b"v").await;
    let t = a
        .open_auth_request(&high_value_request("stripe", None))
        .await
        .unwrap();
    m.approve(&t.id, &standing(1)).await.unwrap();
    a.read_credential(None, &svc("stripe")).await.unwrap();
    a.read_credential(None, &svc("stripe")).await.unwrap();
    ts.state.clock.advance(61);
    assert!(m.standing_approvals().await.unwrap().approvals.is_empty());
    // The one-time grant has lapsed too (300 s): a release needs a new approval.
    ts.state.clock.advance(300);
    assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
}

/// An approval that also grants a standing approval of `minutes`.
fn standing(minutes: u32) -> ApproveRequest {
    ApproveRequest {
        minutes: Some(minutes),
        ..ApproveRequest::default()
    }
}
