//! Passkey approvals without a browser: the policy that requires them, the page API's
//! refusals, registration links, and the pages' headers. The browser itself (registering,
//! approving, replays, expiry, the audit's evidence) is tests/browser/passkey-approval.mjs.

use agentkeys_core::client::Backend as _;
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_server::Config;
use agentkeys_server::store::{PasskeyRecord, PasskeyRegistration, Store as _};
use agentkeys_types::ErrorCode;
use agentkeys_types::Wallet;
use agentkeys_types::api::{ApproveRequest, Policy, StartPasskeyRegistration};

use super::common::*;

const PUBLIC: &str = "https://keys.example.test";

/// `POST path` with a JSON body, without a session.
async fn post(ts: &TestServer, path: &str, body: serde_json::Value) -> reqwest::Response {
    ts.raw()
        .post(format!("{}{path}", ts.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// [`post`], answering the status and the error code.
async fn refused(ts: &TestServer, path: &str, body: serde_json::Value) -> (u16, String) {
    let r = post(ts, path, body).await;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Gives `master` a passkey row straight in the store (no authenticator here: the browser
/// test registers real ones). Enough for the rules that count passkeys; not for the page.
async fn seed_passkey(ts: &TestServer, master: &Wallet, id: &str) {
    let now = ts.state.clock.now();
    let token_hash = agentkeys_core::crypto::sha256(id.as_bytes()).to_vec();
    let store = &ts.state.store;
    store
        .insert_passkey_registration(&PasskeyRegistration {
            token_hash: token_hash.clone(),
            master: master.clone(),
            name: id.into(),
            state_json: None,
            created_at: now,
            expires_at: now + 60,
            used_at: None,
        })
        .await
        .unwrap();
    let row = PasskeyRecord {
        id: id.into(),
        master: master.clone(),
        name: id.into(),
        credential_id: id.as_bytes().to_vec(),
        passkey_json: "{}".into(),
        created_at: now,
        last_used_at: None,
    };
    assert!(
        store
            .finish_passkey_registration(&token_hash, now, &row)
            .await
            .unwrap()
    );
}

const GUARDED: Policy = Policy {
    high_value: true,
    require_passkey: true,
};

/// [`post`], answering the status and the error message.
async fn refusal(ts: &TestServer, path: &str, body: serde_json::Value) -> (u16, String) {
    let r = post(ts, path, body).await;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    (
        status,
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

async fn with_pages() -> TestServer {
    TestServer::with_config(Config {
        public_url: Some(PUBLIC.into()),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn a_credential_that_requires_a_passkey_refuses_a_session_approval_and_names_the_page() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    let me = m.session().await.unwrap().wallet;
    seed_passkey(&ts, &me, "pk_phone").await;
    let policy = GUARDED;
    m.store_credential(None, &svc("stripe"), b"sk-pk", Some(policy))
        .await
        .unwrap();
    // require_passkey alone makes no sense: only releases are approved.
    assert_code(
        m.set_policy(
            &me,
            &svc("stripe"),
            Policy {
                high_value: false,
                require_passkey: true,
            },
        )
        .await,
        ErrorCode::BadRequest,
    );
    let e = assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    let t = e.auth_request().unwrap().clone();
    let view = m.auth_request_by_code(&t.pair_code).await.unwrap();
    let page = format!("{PUBLIC}/approve/{}", t.pair_code);
    assert_eq!(view.approve_url.as_deref(), Some(page.as_str()));
    let refused = assert_code(
        m.approve(&t.id, &ApproveRequest::default()).await,
        ErrorCode::Denied,
    );
    assert!(refused.hint().unwrap().contains(&page), "{refused:?}");
    // A release keeps the agent's scope: the page cannot choose one for it.
    let (status, message) = refusal(
        &ts,
        &format!("/v1/approvals/{}/options", t.pair_code),
        serde_json::json!({"scope": {"services": ["stripe"], "read_only": true}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("pairings only"), "{message}");
    // Still pending: nothing was decided.
    assert_eq!(m.inbox(None, 0).await.unwrap().requests.len(), 1);
    // The read answer's signature covers the policy, passkey bit included.
    let listed = m.list_credentials(None).await.unwrap();
    assert_eq!(listed.credentials[0].policy, policy);
}

/// An agent's read of `stripe` that needs an approval: the master approves it with its
/// session (`minutes` makes it standing).
async fn approved_by_session(
    m: &agentkeys_core::HttpBackend,
    agent: &agentkeys_core::HttpBackend,
    minutes: Option<u32>,
) {
    let e = assert_code(
        agent.read_credential(None, &svc("stripe")).await,
        ErrorCode::ApprovalRequired,
    );
    let t = e.auth_request().unwrap().clone();
    m.approve(
        &t.id,
        &ApproveRequest {
            scope: None,
            minutes,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn raising_a_passkey_guard_ends_the_standing_approvals_and_grants_a_session_made() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let me = m.session().await.unwrap().wallet;
    let stripe = svc("stripe");
    store_high(&m).await;
    seed_passkey(&ts, &me, "pk_phone").await;
    // Agent a reads under a standing approval for two hours; agent b holds an unspent grant.
    let (a, _, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    let (b, _, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    approved_by_session(&m, &a, Some(120)).await;
    a.read_credential(None, &stripe).await.unwrap();
    a.read_credential(None, &stripe).await.unwrap();
    approved_by_session(&m, &b, None).await;
    m.set_policy(&me, &stripe, GUARDED).await.unwrap();
    // Neither releases any more: each read asks for a (passkey) approval.
    for agent in [&a, &b] {
        assert_code(
            agent.read_credential(None, &stripe).await,
            ErrorCode::ApprovalRequired,
        );
    }
    assert!(m.standing_approvals().await.unwrap().approvals.is_empty());
    let rows = m
        .audit(&agentkeys_core::client::AuditQuery {
            action: Some("policy.set".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .events;
    let detail = rows[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("ended 1 standing approval(s) and 1 unspent grant(s) a session made"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_session_can_raise_a_passkey_guard_but_not_lower_it() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let me = m.session().await.unwrap().wallet;
    let stripe = svc("stripe");
    // Without a passkey, nothing could approve it: refused when stored and when set.
    let e = assert_code(
        m.store_credential(None, &stripe, b"sk-1", Some(GUARDED))
            .await,
        ErrorCode::BadRequest,
    );
    assert!(e.hint().unwrap().contains("agentkeys passkey add"), "{e:?}");
    store_high(&m).await;
    assert_code(
        m.set_policy(&me, &stripe, GUARDED).await,
        ErrorCode::BadRequest,
    );
    seed_passkey(&ts, &me, "pk_phone").await;
    m.set_policy(&me, &stripe, GUARDED).await.unwrap();
    // Lowering it (to plain high-value, or to nothing) would let a stolen session release
    // the value: refused, and the policy stays.
    for lower in [
        Policy {
            high_value: true,
            require_passkey: false,
        },
        Policy::default(),
    ] {
        let e = assert_code(m.set_policy(&me, &stripe, lower).await, ErrorCode::Denied);
        assert!(
            e.hint().unwrap().contains("agentkeys store stripe"),
            "{e:?}"
        );
    }
    assert_eq!(
        m.list_credentials(None).await.unwrap().credentials[0].policy,
        GUARDED
    );
    // Storing a value again replaces the guarded one, so its new policy may be lower.
    store_high(&m).await;
    assert!(
        !m.list_credentials(None).await.unwrap().credentials[0]
            .policy
            .require_passkey
    );
    let refusals = m
        .audit(&agentkeys_core::client::AuditQuery {
            action: Some("policy.set".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        refusals.events.len(),
        1,
        "only the raise was applied: {refusals:?}"
    );
}

#[tokio::test]
async fn the_last_passkey_stays_while_a_credential_requires_one() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let me = m.session().await.unwrap().wallet;
    let (_, agent, _) = ts.agent(&m, scope(&["stripe"], true)).await;
    seed_passkey(&ts, &me, "pk_phone").await;
    seed_passkey(&ts, &me, "pk_laptop").await;
    // An agent's credential guards its master's passkeys as the master's own does.
    m.store_credential(Some(&agent.wallet), &svc("stripe"), b"sk-a", Some(GUARDED))
        .await
        .unwrap();
    m.remove_passkey("pk_phone").await.unwrap();
    let e = assert_code(m.remove_passkey("pk_laptop").await, ErrorCode::Denied);
    assert!(e.hint().unwrap().contains("agentkeys passkey add"), "{e:?}");
    assert_eq!(m.passkeys().await.unwrap().passkeys.len(), 1);
    // Without a guarded credential the last one goes.
    m.store_credential(
        Some(&agent.wallet),
        &svc("stripe"),
        b"sk-b",
        Some(Policy {
            high_value: true,
            require_passkey: false,
        }),
    )
    .await
    .unwrap();
    m.remove_passkey("pk_laptop").await.unwrap();
    assert!(m.passkeys().await.unwrap().passkeys.is_empty());
    // Another master's guard does not hold this one's passkeys.
    let (other, _, _) = ts.master("other").await;
    let other_wallet = other.session().await.unwrap().wallet;
    seed_passkey(&ts, &me, "pk_again").await;
    seed_passkey(&ts, &other_wallet, "pk_other").await;
    other
        .store_credential(None, &svc("stripe"), b"sk-o", Some(GUARDED))
        .await
        .unwrap();
    m.remove_passkey("pk_again").await.unwrap();
}

#[tokio::test]
async fn a_second_passkey_needs_an_assertion_by_one_the_master_has() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let me = m.session().await.unwrap().wallet;
    seed_passkey(&ts, &me, "pk_phone").await;
    let ticket = m
        .start_passkey_registration(&StartPasskeyRegistration::default())
        .await
        .unwrap();
    let token = ticket.url.rsplit('#').next().unwrap().to_owned();
    // Refused before any credential is looked at; the link stays usable.
    let (status, message) = refusal(
        &ts,
        "/v1/passkeys/registrations/finish",
        serde_json::json!({"token": token, "credential": {}}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        message.contains("an assertion by one you already have"),
        "{message}"
    );
    // An assertion that is not one is refused too.
    let (status, message) = refusal(
        &ts,
        "/v1/passkeys/registrations/finish",
        serde_json::json!({"token": token, "credential": {}, "vouch": {"id": "x"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("does not verify"), "{message}");
    assert_eq!(m.passkeys().await.unwrap().passkeys.len(), 1);
}

#[tokio::test]
async fn a_master_without_a_passkey_sees_the_request_and_the_command_that_decides_it() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let service = svc("openai");
    let high_value = Policy {
        high_value: true,
        require_passkey: false,
    };
    m.store_credential(None, &service, b"v", Some(high_value))
        .await
        .unwrap();
    let (agent, agent_info, _) = ts.agent(&m, scope(&["openai"], true)).await;
    let e = assert_code(
        agent.read_credential(None, &service).await,
        ErrorCode::ApprovalRequired,
    );
    let ticket = e.auth_request().unwrap().clone();
    let options = post(
        &ts,
        &format!("/v1/approvals/{}/options", ticket.pair_code),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(options.status(), 200);
    let options: serde_json::Value = options.json().await.unwrap();
    let r = &options["request"];
    assert_eq!(r["kind"], "high_value");
    assert_eq!(r["agent"], agent_info.parent.as_ref().unwrap().as_str());
    assert_eq!(r["requested_by"], agent_info.wallet.as_str());
    assert_eq!(r["service"], "openai");
    assert_eq!(r["otp"], ticket.otp.as_str());
    assert_eq!(r["expires_at"], ticket.expires_at);
    assert_eq!(r["status"], "pending");
    assert!(options["publicKey"].is_null(), "{options}");
    assert_eq!(
        options["command"],
        format!("agentkeys approve {}", ticket.pair_code)
    );
    // The page still approves nothing without a passkey; the command does.
    let (status, message) = refusal(
        &ts,
        &format!("/v1/approvals/{}/approve", ticket.pair_code),
        serde_json::json!({"credential": {}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("has no passkey"), "{message}");
    let view = m.auth_request_by_code(&ticket.pair_code).await.unwrap();
    m.approve(&view.id, &ApproveRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_page_api_refuses_what_it_cannot_decide() {
    let ts = with_pages().await;
    let (m, m_info, _) = ts.master("m").await;
    // No such code.
    assert_eq!(
        refused(
            &ts,
            "/v1/approvals/ABCD-EFGH/options",
            serde_json::json!({})
        )
        .await,
        (404, "NOT_FOUND".into())
    );
    // A pairing addressed to nobody is decided at a terminal only.
    let anon = ts
        .anon()
        .open_auth_request(&pair_request(&HpkeKeyPair::generate().unwrap(), None))
        .await
        .unwrap();
    assert_eq!(
        refused(
            &ts,
            &format!("/v1/approvals/{}/options", anon.pair_code),
            serde_json::json!({})
        )
        .await,
        (404, "NOT_FOUND".into())
    );
    // Addressed to a master without a passkey: the page cannot approve it.
    let mut addressed = pair_request(&HpkeKeyPair::generate().unwrap(), None);
    addressed.parent = Some(m_info.wallet.clone());
    let t = ts.anon().open_auth_request(&addressed).await.unwrap();
    // A pairing's scope is checked like 'agentkeys approve --scope' checks it.
    let (status, message) = refusal(
        &ts,
        &format!("/v1/approvals/{}/options", t.pair_code),
        serde_json::json!({"scope": {"services": ["not a name"], "read_only": true}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.starts_with("scope: "), "{message}");
    // A standing approval is for high-value releases only; an assertion that is not one
    // is refused.
    assert_eq!(
        refused(
            &ts,
            &format!("/v1/approvals/{}/approve", t.pair_code),
            serde_json::json!({"minutes": 30, "credential": {}})
        )
        .await,
        (400, "BAD_REQUEST".into())
    );
    assert_eq!(
        refused(
            &ts,
            &format!("/v1/approvals/{}/approve", t.pair_code),
            serde_json::json!({"credential": {"id": "x"}})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        m.inbox(None, 0).await.unwrap().requests.len(),
        1,
        "still pending"
    );
}

#[tokio::test]
async fn a_registration_link_is_one_masters_and_works_once_within_its_time() {
    let ts = with_pages().await;
    let (m, _, _) = ts.master("m").await;
    let ticket = m
        .start_passkey_registration(&StartPasskeyRegistration {
            name: Some("phone".into()),
        })
        .await
        .unwrap();
    assert!(
        ticket.url.starts_with(&format!("{PUBLIC}/passkey/add#")),
        "{}",
        ticket.url
    );
    let token = ticket.url.rsplit('#').next().unwrap().to_owned();
    let options = post(
        &ts,
        "/v1/passkeys/registrations/options",
        serde_json::json!({ "token": token }),
    )
    .await;
    assert_eq!(options.status(), 200);
    let options: serde_json::Value = options.json().await.unwrap();
    let pk = &options["publicKey"];
    assert_eq!(pk["rp"]["id"], "keys.example.test");
    assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
    // A made-up credential does not verify, and the link is still there after.
    let bad = post(
        &ts,
        "/v1/passkeys/registrations/finish",
        serde_json::json!({"token": token, "credential": {"id": "x", "rawId": "eA",
            "type": "public-key",
            "response": {"attestationObject": "AA", "clientDataJSON": "AA"}}}),
    )
    .await;
    assert_eq!(bad.status(), 400);
    // Unknown tokens and expired links read as absent.
    let unknown = post(
        &ts,
        "/v1/passkeys/registrations/options",
        serde_json::json!({ "token": "nope" }),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    ts.state.clock.advance(601);
    let expired = post(
        &ts,
        "/v1/passkeys/registrations/options",
        serde_json::json!({ "token": token }),
    )
    .await;
    assert_eq!(expired.status(), 404);
    assert!(m.passkeys().await.unwrap().passkeys.is_empty());
    assert_code(m.remove_passkey("pk_nope").await, ErrorCode::NotFound);
    // Agents register none.
    let (a, _, _) = ts.agent(&m, scope(&[], true)).await;
    assert_code(
        a.start_passkey_registration(&StartPasskeyRegistration::default())
            .await,
        ErrorCode::Denied,
    );
}

#[tokio::test]
async fn without_a_public_url_there_are_no_pages_and_no_links() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    assert_code(
        m.start_passkey_registration(&StartPasskeyRegistration::default())
            .await,
        ErrorCode::NotFound,
    );
    store_high(&m).await;
    let t = m
        .open_auth_request(&agentkeys_types::api::OpenAuthRequest {
            kind: agentkeys_types::api::AuthKind::HighValue,
            requester_public_key: None,
            identity: None,
            parent: None,
            agent: None,
            service: Some(svc("stripe")),
            description: None,
        })
        .await
        .unwrap();
    let view = m.auth_request_by_code(&t.pair_code).await.unwrap();
    assert_eq!(view.approve_url, None);
}

#[tokio::test]
async fn the_pages_are_served_with_a_strict_policy_and_no_referrer() {
    let ts = with_pages().await;
    for path in [
        "/approve/ABCD-EFGH",
        "/passkey/add",
        "/static/approve.js",
        "/static/passkey-add.js",
        "/static/common.js",
        "/static/page.css",
    ] {
        let r = ts
            .raw()
            .get(format!("{}{path}", ts.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    // The HTML holds no inline script.
    let html = ts
        .raw()
        .get(format!("{}/approve/ABCD-EFGH", ts.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>"), "{html}");
}

async fn store_high(m: &agentkeys_core::client::HttpBackend) {
    m.store_credential(
        None,
        &svc("stripe"),
        b"v",
        Some(Policy {
            high_value: true,
            ..Policy::default()
        }),
    )
    .await
    .unwrap();
}
