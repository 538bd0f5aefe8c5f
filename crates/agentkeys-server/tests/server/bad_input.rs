//! Bad input and faults: each gets its documented code and leaves the data as it was.

use agentkeys_core::client::Backend as _;
use agentkeys_core::crypto::hpke;
use agentkeys_types::api::{HPKE_INFO_STORE, credential_aad};
use agentkeys_types::{ErrorBody, ErrorCode};
use base64::Engine as _;
use serde_json::json;

use super::common::*;

async fn error_of(resp: reqwest::Response) -> (u16, ErrorBody) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body: ErrorBody =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
    (status, body)
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let ts = TestServer::start().await;
    let (_, _, token) = ts.master("m").await;
    let resp = ts
        .raw()
        .post(format!("{}/v1/credentials", ts.url))
        .bearer_auth(token.expose_secret())
        .header("content-type", "application/json")
        .body("{\"service\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!((status, body.error.code), (400, ErrorCode::BadRequest));
    assert_eq!(body.error.message, "malformed JSON body");
}

#[tokio::test]
async fn unknown_fields_are_rejected_without_echoing_values() {
    let ts = TestServer::start().await;
    let (_, _, token) = ts.master("m").await;
    let secret = canary("server");
    let resp = ts
        .raw()
        .post(format!("{}/v1/credentials", ts.url))
        .bearer_auth(token.expose_secret())
        .json(&json!({"service": "openai", "sealed_value": "AAAA", "value": secret}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!((status, body.error.code), (400, ErrorCode::BadRequest));
    assert!(
        body.error.message.contains("unknown field"),
        "{}",
        body.error.message
    );
    // A secret put in a field of the wrong type is not echoed either.
    let resp = ts
        .raw()
        .post(format!("{}/v1/credentials", ts.url))
        .bearer_auth(token.expose_secret())
        .json(
            &json!({"service": "openai", "sealed_value": "AAAA", "policy": {"high_value": secret}}),
        )
        .send()
        .await
        .unwrap();
    let (_, body) = error_of(resp).await;
    assert!(
        !body.error.message.contains(&secret),
        "{}",
        body.error.message
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let ts = TestServer::start().await;
    let (_, _, token) = ts.master("m").await;
    let big = "A".repeat(200 * 1024);
    let resp = ts
        .raw()
        .post(format!("{}/v1/credentials", ts.url))
        .bearer_auth(token.expose_secret())
        .json(&json!({"service": "openai", "sealed_value": big}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!((status, body.error.code), (413, ErrorCode::BadRequest));
}

#[tokio::test]
async fn missing_garbage_expired_and_foreign_tokens_are_unauthorized() {
    let ts = TestServer::start().await;
    let (m, _, token) = ts.master("m").await;
    let get = |auth: Option<String>| {
        let mut r = ts.raw().get(format!("{}/v1/session", ts.url));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for auth in [
        None,
        Some("Bearer".to_owned()),
        Some("Basic abc".to_owned()),
        Some("Bearer akm_garbage".to_owned()),
        Some("Bearer ghp_notours".to_owned()),
        Some(format!("Bearer {}x", token.expose_secret())),
        Some(format!("Bearer akm_{}", "A".repeat(500))),
    ] {
        let (status, body) = error_of(get(auth.clone()).await.unwrap()).await;
        assert_eq!(
            (status, body.error.code),
            (401, ErrorCode::Unauthorized),
            "{auth:?}"
        );
        assert!(body.error.hint.is_some());
    }
    m.session().await.unwrap();
    ts.state.clock.advance(ts.state.config.master_ttl + 1);
    let e = assert_code(m.session().await, ErrorCode::Unauthorized);
    assert!(e.to_string().contains("expired"), "{e}");
}

#[tokio::test]
async fn a_tampered_sealed_value_is_refused_and_the_old_value_kept() {
    let ts = TestServer::start().await;
    let (m, me, token) = ts.master("m").await;
    m.store_credential(None, &svc("openai"), b"original", None)
        .await
        .unwrap();
    let info = ts.anon().server_info().await.unwrap();
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(info.shielding_public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let post = |sealed: Vec<u8>, service: &str| {
        ts.raw()
            .post(format!("{}/v1/credentials", ts.url))
            .bearer_auth(token.expose_secret())
            .json(&json!({"service": service, "sealed_value": b64(&sealed)}))
            .send()
    };
    let mut sealed = hpke::seal(
        &key,
        HPKE_INFO_STORE,
        &credential_aad(&me.wallet, &svc("openai")),
        b"evil",
    )
    .unwrap();
    sealed[35] ^= 0x80;
    let (status, body) = error_of(post(sealed, "openai").await.unwrap()).await;
    assert_eq!((status, body.error.code), (400, ErrorCode::BadRequest));
    // Sealed for another service: the AAD binds it, so it cannot be replayed elsewhere.
    let other = hpke::seal(
        &key,
        HPKE_INFO_STORE,
        &credential_aad(&me.wallet, &svc("github")),
        b"evil",
    )
    .unwrap();
    let (_, body) = error_of(post(other, "openai").await.unwrap()).await;
    assert_eq!(body.error.code, ErrorCode::BadRequest);
    let (_, body) = error_of(post(b"not-base64!".to_vec(), "openai").await.unwrap()).await;
    assert_eq!(body.error.code, ErrorCode::BadRequest);
    assert_eq!(
        m.read_credential(None, &svc("openai"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"original"
    );
}

#[tokio::test]
async fn invalid_names_keys_and_routes_get_json_errors() {
    let ts = TestServer::start().await;
    let (_, _, token) = ts.master("m").await;
    let t = token.expose_secret();
    let read = |body: serde_json::Value| {
        ts.raw()
            .post(format!("{}/v1/credentials/read", ts.url))
            .bearer_auth(t)
            .json(&body)
            .send()
    };
    let (_, b) = error_of(
        read(json!({"service": "Bad Name", "recipient_public_key": b64(&[1; 32])}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b.error.code, ErrorCode::BadRequest);
    let (_, b) = error_of(
        read(json!({"service": "openai", "recipient_public_key": b64(&[1; 7])}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b.error.code, ErrorCode::BadRequest);
    let resp = ts
        .raw()
        .get(format!("{}/v1/agents/0xnot-a-wallet/scope", ts.url))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.1.error.code, ErrorCode::BadRequest);
    let resp = ts
        .raw()
        .get(format!("{}/v1/nope", ts.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (
            404,
            agentkeys_types::ErrorBody::new(
                ErrorCode::NotFound,
                "no such endpoint",
                Some("see docs/api.md for the v1 routes".into())
            )
        )
    );
    let resp = ts
        .raw()
        .delete(format!("{}/v1/health", ts.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 405);
    let resp = ts
        .raw()
        .get(format!("{}/v1/audit?limit=abc", ts.url))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.1.error.code, ErrorCode::BadRequest);
}

#[tokio::test]
async fn a_tampered_audit_row_is_named_by_verify() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    for i in 0..5 {
        m.store_credential(None, &svc(&format!("s{i}")), b"v", None)
            .await
            .unwrap();
    }
    assert!(m.verify_audit().await.unwrap().ok);
    execute_sql(
        &ts.database,
        "UPDATE audit SET detail = 'forged' WHERE seq = 3",
    )
    .await;
    let v = m.verify_audit().await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_broken_seq, Some(3));
    assert!(v.reason.unwrap().contains("content"));
    // Deleting a row is caught as a gap.
    execute_sql(&ts.database, "UPDATE audit SET detail = NULL WHERE seq = 3").await;
    assert!(
        m.verify_audit().await.unwrap().ok,
        "restoring the row restores the chain"
    );
    execute_sql(&ts.database, "DELETE FROM audit WHERE seq = 4").await;
    let v = m.verify_audit().await.unwrap();
    assert_eq!(v.first_broken_seq, Some(5));
}

/// Every way the independent client found to get an error, each carrying a canary the
/// answer must not echo: each answer has the error shape, a non-empty hint, and no canary.
#[tokio::test]
async fn every_error_carries_a_hint_and_echoes_nothing_the_caller_sent() {
    let ts = TestServer::start().await;
    let (_, _, token) = ts.master("m").await;
    let c = "sk-echo-canary";
    let url = |p: &str| format!("{}{p}", ts.url);
    let http = ts.raw();
    let bearer = format!("Bearer {}", token.expose_secret());
    let json_post = |path: &str, body: serde_json::Value| {
        http.post(url(path))
            .header("authorization", &bearer)
            .json(&body)
    };
    let requests = vec![
        // unknown field names, unknown enum variants, wrong-typed values
        json_post(
            "/v1/credentials",
            json!({"service": "openai", "sealed_value": "AAAA", c: 1}),
        ),
        json_post("/v1/auth-requests", json!({"kind": c})),
        json_post(
            "/v1/credentials/read",
            json!({"service": "openai", "recipient_public_key": 12345678}),
        ),
        json_post(
            "/v1/credentials",
            json!({"service": "openai", "sealed_value": "AAAA", "policy": {"high_value": c}}),
        ),
        json_post("/v1/sessions/revoke", json!({"session_id": [c]})),
        json_post(
            "/v1/agents/0x0000000000000000000000000000000000000000/scope",
            json!({}),
        ),
        // bad base64, bad names, bad keys
        json_post(
            "/v1/credentials",
            json!({"service": "openai", "sealed_value": format!("!!{c}!!")}),
        ),
        json_post(
            "/v1/credentials",
            json!({"service": format!("Bad {c}"), "sealed_value": "AAAA"}),
        ),
        json_post(
            "/v1/credentials/read",
            json!({"service": "openai", "recipient_public_key": "AAAA"}),
        ),
        json_post("/v1/identities", json!({"wallet": c, "alias": "x"})),
        json_post(
            "/v1/identities",
            json!({"wallet": "0x0000000000000000000000000000000000000000", "alias": format!("BAD {c}")}),
        ),
        json_post("/v1/audit/anchor", json!({"seq": 0, "hash": c})),
        // malformed JSON, wrong content type, wrong method, oversized, unknown query
        http.post(url("/v1/credentials"))
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(format!("{{\"{c}\": ")),
        http.post(url("/v1/credentials"))
            .header("authorization", &bearer)
            .body(c),
        http.delete(url("/v1/credentials"))
            .header("authorization", &bearer),
        http.post(url("/v1/credentials"))
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(vec![b' '; 70 * 1024]),
        http.get(url(&format!("/v1/audit?{c}=1")))
            .header("authorization", &bearer),
        http.get(url(&format!("/v1/audit?limit={c}")))
            .header("authorization", &bearer),
        http.get(url(&format!("/v1/audit?action={c}")))
            .header("authorization", &bearer),
        http.get(url(&format!("/v1/identities/resolve?alias={c}")))
            .header("authorization", &bearer),
        http.get(url(&format!("/v1/auth-requests/by-code/{c}")))
            .header("authorization", &bearer),
        http.get(url("/v1/auth-requests/req_x/decision?wait=1&x=2")),
        http.get(url("/v1/auth-requests/req_x/decision?wait=61")),
        http.get(url("/v1/audit?limit=1001"))
            .header("authorization", &bearer),
        http.get(url(&format!("/v1/{c}"))),
        // tokens
        http.get(url("/v1/session")),
        http.get(url("/v1/session"))
            .header("authorization", format!("Bearer akm_{c}")),
        http.get(url("/v1/session")).header("authorization", c),
    ];
    for (i, request) in requests.into_iter().enumerate() {
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(status >= 400, "request {i}: {status} {text}");
        let body: ErrorBody =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("request {i}: {text}: {e}"));
        assert!(
            body.error.hint.as_deref().is_some_and(|h| !h.is_empty()),
            "request {i} has no hint: {text}"
        );
        assert!(
            !text.contains("canary"),
            "request {i} echoes the caller: {text}"
        );
    }
}
