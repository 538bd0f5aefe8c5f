//! Every endpoint's success path, and the scope and ownership rules.

use agentkeys_core::client::{AuditQuery, Backend as _};
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_types::api::{LinkIdentityRequest, Policy, RevokeRequest, SessionKind};
use agentkeys_types::{ErrorCode, Scope};

use super::common::*;

#[tokio::test]
async fn health_and_server_info_answer_anonymously() {
    let ts = TestServer::start().await;
    let h = ts.anon().health().await.unwrap();
    assert_eq!(h.status, "ok");
    let info = ts.anon().server_info().await.unwrap();
    assert_eq!(info.signing_public_key, ts.state.info.signing_public_key);
    assert!(info.hpke_suite.contains("X25519"));
}

#[tokio::test]
async fn ready_names_the_engine_and_its_migrations() {
    let ts = TestServer::start().await;
    let r: serde_json::Value = ts
        .raw()
        .get(format!("{}/v1/ready", ts.url))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready");
    let engine = if postgres_engine() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(r["database"], engine);
    assert!(r["migrations"].as_u64().unwrap() >= 3, "{r}");
}

#[tokio::test]
async fn metrics_count_requests_reads_audits_and_refusals_without_naming_anyone() {
    let config = agentkeys_server::Config {
        read_rate: 1.0,
        read_burst: 2.0,
        ..Default::default()
    };
    let ts = TestServer::with_config(config).await;
    let (m, info, _) = ts.master("metrics").await;
    m.store_credential(None, &svc("openai"), b"sk-metrics-value", None)
        .await
        .unwrap();
    for _ in 0..2 {
        m.read_credential(None, &svc("openai")).await.unwrap();
    }
    assert_code(
        m.read_credential(None, &svc("openai")).await,
        ErrorCode::RateLimited,
    );
    let resp = ts
        .raw()
        .get(format!("{}/metrics", ts.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    let has = |needle: &str| assert!(text.contains(needle), "{needle} missing from:\n{text}");
    has(
        r#"agentkeys_http_requests_total{route="/v1/credentials/read",method="POST",code="200"} 2"#,
    );
    has(
        r#"agentkeys_http_requests_total{route="/v1/credentials/read",method="POST",code="429"} 1"#,
    );
    has("agentkeys_read_duration_seconds_count 3");
    has(r#"agentkeys_rate_limited_total{limit="read"} 1"#);
    has("agentkeys_active_sessions 1");
    has("agentkeys_pending_auth_requests 0");
    has("agentkeys_long_poll_waiters 0");
    has("agentkeys_audit_batch_events_count");
    has("agentkeys_audit_commit_duration_seconds_bucket");
    has("agentkeys_db_pool_connections");
    assert!(text.ends_with("# EOF\n"));
    // Labels are route templates: no wallet, no service name, no value.
    assert!(!text.contains(info.wallet.as_str()));
    assert!(!text.contains("openai"));
    assert!(!text.contains("sk-metrics-value"));
}

/// `(METHOD, /path)` pairs of the router's source (`.route("PATH", get(..).put(..))`).
fn routed() -> std::collections::BTreeSet<(String, String)> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    let mut out = std::collections::BTreeSet::new();
    for call in src.split(".route(").skip(1) {
        let path = call.split('"').nth(1).unwrap().to_owned();
        // The handler expression: up to the end of this .route(...) call.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(call.len(), |(i, _)| i);
        let handlers = &call[..end];
        for method in ["get", "post", "put", "delete"] {
            if handlers.contains(&format!("{method}(")) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out.remove(&("GET".to_owned(), "/metrics".to_owned())); // Prometheus text, not the API
    out
}

/// `(METHOD, /path)` pairs docs/api.md's endpoint table names.
fn documented() -> std::collections::BTreeSet<(String, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (method, rest) = l.split_once(' ')?;
            if !["GET", "POST", "PUT", "DELETE"].contains(&method) {
                return None;
            }
            let path = rest.split(['`', '?', ' ']).next()?;
            Some((method.to_owned(), path.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_the_docs_name_the_same() {
    let ts = TestServer::start().await;
    let doc: serde_json::Value = ts
        .raw()
        .get(format!("{}/v1/openapi.json", ts.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut in_doc = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            in_doc.insert((method.to_uppercase(), path.clone()));
            // Every schema it refers to is in the document.
            for r in op.to_string().split("#/components/schemas/").skip(1) {
                let name = r.split('"').next().unwrap();
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "{name} missing"
                );
            }
        }
    }
    let routes = routed();
    assert_eq!(in_doc, routes, "the OpenAPI paths are the routed ones");
    assert_eq!(
        documented(),
        routes,
        "docs/api.md names the routed endpoints"
    );
    // And each answers as a route (never the fallback's "no such endpoint").
    let client = ts.raw();
    for (method, path) in &routes {
        let url = format!("{}{}", ts.url, path.replace(['{', '}'], "x"));
        let req = client.request(method.parse().unwrap(), url);
        let req = if method == "GET" || method == "DELETE" {
            req
        } else {
            req.json(&serde_json::json!({}))
        };
        let text = req.send().await.unwrap().text().await.unwrap();
        assert!(
            !text.contains("no such endpoint"),
            "{method} {path}: {text}"
        );
    }
    // The wire types' schemas come from their serde shape: a sample.
    let read = &doc["components"]["schemas"]["ReadCredentialRequest"];
    assert!(
        read["required"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("recipient_public_key")),
        "{read}"
    );
}

#[tokio::test]
async fn a_master_session_is_created_and_describes_itself_without_its_token() {
    let ts = TestServer::start().await;
    let (m, info, token) = ts.master("enrol-1").await;
    assert!(token.expose_secret().starts_with("akm_"));
    assert!(token.len() > 40);
    let me = m.session().await.unwrap();
    assert_eq!(me, info);
    assert_eq!(me.kind, SessionKind::Master);
    assert_eq!(me.scope, Scope::all());
    let raw = ts
        .raw()
        .get(format!("{}/v1/session", ts.url))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !raw.contains(token.expose_secret()),
        "GET /v1/session leaked the token"
    );
    // The same enrolment token names the same master account.
    let (_, again, _) = ts.master("enrol-1").await;
    assert_eq!(again.wallet, info.wallet);
    assert_ne!(again.session_id, info.session_id);
}

#[tokio::test]
async fn tokens_mode_accepts_only_listed_enrolment_tokens() {
    let mut cfg = agentkeys_server::Config::default();
    let ok = agentkeys_core::crypto::sha256(b"good-token");
    cfg.auth = agentkeys_server::AuthMode::Tokens([ok].into_iter().collect());
    let ts = TestServer::with_config(cfg).await;
    let bad = ts
        .anon()
        .create_session(agentkeys_secmem::SecretString::from_str_copy("wrong"))
        .await;
    assert_code(bad, ErrorCode::Unauthorized);
    ts.master("good-token").await;
}

#[tokio::test]
async fn an_enrolment_flood_is_rate_limited_and_does_not_grow_the_audit_log() {
    let mut cfg = agentkeys_server::Config::default();
    let ok = agentkeys_core::crypto::sha256(b"good-token");
    cfg.auth = agentkeys_server::AuthMode::Tokens([ok].into_iter().collect());
    let ts = TestServer::with_config(cfg).await;
    let (mut refused, mut limited) = (0, 0);
    for i in 0..60 {
        let guess = agentkeys_secmem::SecretString::from(format!("guess-{i}"));
        match ts.anon().create_session(guess).await {
            Err(e) if e.code() == ErrorCode::Unauthorized => refused += 1,
            Err(e) if e.code() == ErrorCode::RateLimited => {
                assert!(e.retry_after().is_some(), "{e}");
                limited += 1;
            }
            other => panic!("unexpected answer: {}", other.is_ok()),
        }
    }
    assert!(
        refused <= 12,
        "{refused} guesses were checked: the per-address burst is 10"
    );
    assert!(limited >= 40, "{limited} rate-limited");
    let rows = agentkeys_server::store::Store::list_audit(
        &*ts.state.store,
        &agentkeys_server::store::AuditFilter {
            visible_to: vec!["-".into()],
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let refusals = rows
        .iter()
        .filter(|r| r.event.action == "session.create" && r.event.outcome == "UNAUTHORIZED")
        .count();
    assert!(
        refusals <= 2,
        "{refusals} audit rows for {refused} refusals"
    );
}

/// A raw client whose connections come from `source` (any 127.0.0.0/8 address reaches the
/// loopback server), to play several client addresses.
fn from(source: [u8; 4]) -> reqwest::Client {
    super::common::tls_provider();
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .build()
        .unwrap()
}

#[tokio::test]
async fn one_flooding_address_cannot_lock_others_out_of_pairing() {
    let ts = TestServer::start().await;
    let open = |client: reqwest::Client| {
        let url = format!("{}/v1/auth-requests", ts.url);
        async move {
            let key = HpkeKeyPair::generate().unwrap();
            client
                .post(url)
                .json(&serde_json::json!({"kind": "pair",
                    "requester_public_key": b64(&key.public_key())}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let flooder = from([127, 0, 0, 1]);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(open(flooder.clone()).await);
    }
    assert!(
        statuses.contains(&429),
        "the flood was not limited: {statuses:?}"
    );
    assert_eq!(
        open(from([127, 0, 0, 2])).await,
        201,
        "another address still pairs"
    );
}

/// One call through the server's router in-process, as if its connection came from `from`:
/// any address, IPv6 networks included, which the loopback listener cannot play.
async fn call_from(ts: &TestServer, from: &str, path: &str, body: serde_json::Value) -> u16 {
    use tower_service::Service as _;
    let peer = std::net::SocketAddr::new(from.parse().unwrap(), 40_000);
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .extension(axum::extract::ConnectInfo(peer))
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let mut router = agentkeys_server::http::router(ts.state.clone());
    router.call(request).await.unwrap().status().as_u16()
}

fn pair_body() -> serde_json::Value {
    let key = HpkeKeyPair::generate().unwrap();
    serde_json::json!({"kind": "pair", "requester_public_key": b64(&key.public_key())})
}

/// Sends `n` pair opens from `from`; how many were rate-limited.
async fn opens_limited(ts: &TestServer, from: &str, n: usize) -> usize {
    let mut limited = 0;
    for _ in 0..n {
        match call_from(ts, from, "/v1/auth-requests", pair_body()).await {
            429 => limited += 1,
            201 => {}
            other => panic!("unexpected {other}"),
        }
    }
    limited
}

/// Budgets that refill too slowly to matter within a test: one call per address group,
/// eight per network, a hundred server-wide.
fn slow_budgets() -> agentkeys_server::Config {
    agentkeys_server::Config {
        enrol_rate: 0.001,
        anon_open_rate: 0.001,
        public_url: Some("https://keys.example.test".into()),
        ..agentkeys_server::Config::default()
    }
}

#[tokio::test]
async fn addresses_in_one_ipv6_64_share_a_budget_and_ipv4_addresses_do_not() {
    let ts = TestServer::with_config(slow_budgets()).await;
    assert_eq!(opens_limited(&ts, "2001:db8:1:2::1", 2).await, 1);
    // Another address of the same /64 finds the budget spent ...
    assert_eq!(opens_limited(&ts, "2001:db8:1:2:ffff::7", 1).await, 1);
    // ... another /64 of the same /48 has its own.
    assert_eq!(opens_limited(&ts, "2001:db8:1:3::1", 1).await, 0);
    // IPv4: each address is its own group.
    assert_eq!(opens_limited(&ts, "192.0.2.1", 2).await, 1);
    assert_eq!(opens_limited(&ts, "192.0.2.2", 1).await, 0);
}

#[tokio::test]
async fn a_flood_from_several_64s_leaves_a_master_able_to_open_and_decide() {
    let ts = TestServer::with_config(slow_budgets()).await;
    let (m, m_info, _) = ts.master("m").await;
    // Five /48s, eight /64s in each, two addresses in each /64, every one flooding
    // enrolment, pair opens and the approval page (with codes that name nothing).
    for net in 1..=5 {
        for sub in 0..8 {
            for host in 1..=2 {
                let from = format!("2001:db8:{net}:{sub}::{host}");
                for i in 0..3 {
                    let enrol = serde_json::json!({"auth_token": format!("flood-{from}-{i}")});
                    call_from(&ts, &from, "/v1/sessions", enrol).await;
                    call_from(&ts, &from, "/v1/auth-requests", pair_body()).await;
                    let page = format!("/v1/approvals/ZZZZ-ZZZ{i}/options");
                    call_from(&ts, &from, &page, serde_json::json!({})).await;
                }
                assert_eq!(
                    call_from(&ts, &from, "/v1/auth-requests", pair_body()).await,
                    429,
                    "the flood from {from} is limited"
                );
            }
        }
    }
    // A daemon elsewhere still opens a pairing addressed to the master ...
    let mut body = pair_body();
    body["parent"] = m_info.wallet.as_str().into();
    assert_eq!(
        call_from(&ts, "2001:db8:99:1::1", "/v1/auth-requests", body).await,
        201
    );
    let code = m.inbox(None, 0).await.unwrap().requests[0]
        .pair_code
        .clone();
    // ... the master opens its approval page from its phone (the answer is the request
    // and, without a passkey, the command that decides it), the page's approve reaches
    // the passkey check rather than a rate limit ...
    let phone = "2001:db8:77:1::1";
    let options = format!("/v1/approvals/{code}/options");
    assert_eq!(
        call_from(&ts, phone, &options, serde_json::json!({})).await,
        200
    );
    // (Its next call comes from another /64: these budgets allow one call per group.)
    let approve = format!("/v1/approvals/{code}/approve");
    let assertion = serde_json::json!({"credential": {}});
    assert_eq!(
        call_from(&ts, "2001:db8:77:2::1", &approve, assertion).await,
        400
    );
    // ... it decides at its terminal, and a new master still enrols.
    let view = m.auth_request_by_code(&code).await.unwrap();
    m.approve(&view.id, &agentkeys_types::api::ApproveRequest::default())
        .await
        .unwrap();
    let enrol = serde_json::json!({"auth_token": "a-new-master"});
    assert_eq!(
        call_from(&ts, "2001:db8:78:1::1", "/v1/sessions", enrol).await,
        201
    );
}

#[tokio::test]
async fn decision_long_polls_beyond_the_cap_answer_at_once() {
    let cfg = agentkeys_server::Config {
        max_long_polls: 2,
        ..Default::default()
    };
    let ts = TestServer::with_config(cfg).await;
    let key = HpkeKeyPair::generate().unwrap();
    let t = ts
        .anon()
        .open_auth_request(&pair_request(&key, None))
        .await
        .unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let anon = ts.anon();
            let id = t.id.clone();
            tokio::spawn(async move { anon.decision(&id, 30).await })
        })
        .collect();
    // Let both waiters take their slots (they hold them until the request expires).
    while ts.state.long_polls.available_permits() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let third = ts.anon().decision(&t.id, 30).await.unwrap();
    assert_eq!(third.status, agentkeys_types::api::AuthStatus::Pending);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "a poll beyond the cap waited"
    );
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn a_stored_credential_reads_back_into_a_secret_page() {
    let ts = TestServer::start().await;
    let (m, me, _) = ts.master("m").await;
    let value = canary("server");
    let info = m
        .store_credential(None, &svc("openai"), value.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(info.agent, me.wallet);
    assert!(!info.policy.high_value);
    let page = m.read_credential(None, &svc("openai")).await.unwrap().page;
    assert_eq!(page.expose_secret(), value.as_bytes());
    let best = agentkeys_testkit::machine::best_page_kind("server::api::store_and_read");
    assert_eq!(
        page.kind().as_str(),
        best,
        "the strongest page this machine gives"
    );
    // Replacing keeps one record and the new value.
    m.store_credential(None, &svc("openai"), b"second", None)
        .await
        .unwrap();
    assert_eq!(
        m.read_credential(None, &svc("openai"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"second"
    );
    let list = m.list_credentials(None).await.unwrap();
    assert_eq!(list.credentials.len(), 1);
}

#[tokio::test]
async fn reading_a_missing_credential_is_not_found() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    assert_code(
        m.read_credential(None, &svc("nope")).await,
        ErrorCode::NotFound,
    );
}

#[tokio::test]
async fn an_agent_reads_in_scope_credentials_of_its_own_and_its_masters() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, ainfo, token) = ts.agent(&m, scope(&["openai", "github"], true)).await;
    assert!(token.expose_secret().starts_with("aka_"));
    assert_eq!(ainfo.kind, SessionKind::Agent);
    m.store_credential(None, &svc("openai"), b"master-openai", None)
        .await
        .unwrap();
    m.store_credential(Some(&ainfo.wallet), &svc("github"), b"agent-github", None)
        .await
        .unwrap();
    m.store_credential(None, &svc("stripe"), b"master-stripe", None)
        .await
        .unwrap();
    assert_eq!(
        a.read_credential(None, &svc("openai"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"master-openai"
    );
    assert_eq!(
        a.read_credential(None, &svc("github"))
            .await
            .unwrap()
            .page
            .expose_secret(),
        b"agent-github"
    );
    let names: Vec<String> = a
        .list_credentials(None)
        .await
        .unwrap()
        .credentials
        .into_iter()
        .map(|c| c.service.to_string())
        .collect();
    assert_eq!(
        names,
        ["github", "openai"],
        "stripe is out of scope and must not be listed"
    );
}

#[tokio::test]
async fn an_agent_cannot_read_outside_its_scope() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(None, &svc("stripe"), b"x", None)
        .await
        .unwrap();
    let e = assert_code(
        a.read_credential(None, &svc("stripe")).await,
        ErrorCode::Denied,
    );
    assert!(e.hint().unwrap().contains("agentkeys scope"));
}

#[tokio::test]
async fn an_agent_cannot_read_another_agents_credential() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, Scope::all()).await;
    let (_, b_info, _) = ts.agent(&m, Scope::all()).await;
    m.store_credential(Some(&b_info.wallet), &svc("openai"), b"b-secret", None)
        .await
        .unwrap();
    assert_code(
        a.read_credential(Some(&b_info.wallet), &svc("openai"))
            .await,
        ErrorCode::Denied,
    );
    assert_code(
        a.list_credentials(Some(&b_info.wallet)).await,
        ErrorCode::Denied,
    );
}

#[tokio::test]
async fn a_master_cannot_touch_another_masters_agents() {
    let ts = TestServer::start().await;
    let (m1, _, _) = ts.master("m1").await;
    let (m2, _, _) = ts.master("m2").await;
    let (_, a_info, _) = ts.agent(&m1, Scope::all()).await;
    assert_code(
        m2.store_credential(Some(&a_info.wallet), &svc("x"), b"v", None)
            .await,
        ErrorCode::Denied,
    );
    assert_code(m2.agent_scope(&a_info.wallet).await, ErrorCode::NotFound);
    assert_code(m2.teardown(&a_info.wallet).await, ErrorCode::NotFound);
    assert_code(
        m2.revoke(&RevokeRequest {
            session_id: None,
            wallet: Some(a_info.wallet.clone()),
        })
        .await,
        ErrorCode::Denied,
    );
}

#[tokio::test]
async fn a_read_only_session_cannot_store() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, scope(&["openai"], true)).await;
    assert_code(
        a.store_credential(None, &svc("openai"), b"v", None).await,
        ErrorCode::Denied,
    );
    assert!(
        m.list_credentials(None)
            .await
            .unwrap()
            .credentials
            .is_empty(),
        "the refused store left data behind"
    );
}

#[tokio::test]
async fn a_writable_agent_stores_only_in_scope_and_without_policy() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["openai"], false)).await;
    let info = a
        .store_credential(None, &svc("openai"), b"agent-own", None)
        .await
        .unwrap();
    assert_eq!(info.agent, a_info.wallet);
    assert_code(
        a.store_credential(None, &svc("github"), b"v", None).await,
        ErrorCode::Denied,
    );
    assert_code(
        a.store_credential(
            None,
            &svc("openai"),
            b"v",
            Some(Policy {
                high_value: false,
                ..Policy::default()
            }),
        )
        .await,
        ErrorCode::Denied,
    );
}

#[tokio::test]
async fn agents_are_listed_rescoped_and_torn_down() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(Some(&a_info.wallet), &svc("openai"), b"v", None)
        .await
        .unwrap();
    assert!(
        m.agents().await.unwrap().agents[0].last_used_at.is_none(),
        "not used yet"
    );
    a.session().await.unwrap();
    let list = m.agents().await.unwrap();
    assert_eq!(list.agents.len(), 1);
    assert_eq!(list.agents[0].wallet, a_info.wallet);
    assert_eq!(list.agents[0].active_sessions, 1);
    assert!(list.agents[0].last_used_at.is_some());
    assert_eq!(
        m.agent_scope(&a_info.wallet).await.unwrap(),
        scope(&["openai"], true)
    );
    let new = m
        .set_agent_scope(&a_info.wallet, &scope(&["github"], true))
        .await
        .unwrap();
    assert_eq!(new, scope(&["github"], true));
    // The new scope applies to the live session at once.
    assert_code(
        a.read_credential(None, &svc("openai")).await,
        ErrorCode::Denied,
    );
    let bad = m
        .set_agent_scope(&a_info.wallet, &scope(&["Not Valid"], true))
        .await;
    assert_code(bad, ErrorCode::BadRequest);
    // An agent cannot widen its own scope.
    assert_code(
        a.set_agent_scope(&a_info.wallet, &Scope::all()).await,
        ErrorCode::Denied,
    );
    let t = m.teardown(&a_info.wallet).await.unwrap();
    assert_eq!((t.revoked_sessions, t.deleted_credentials), (1, 1));
    assert_code(a.session().await, ErrorCode::Unauthorized);
    assert!(m.agents().await.unwrap().agents.is_empty());
}

#[tokio::test]
async fn revocation_is_immediate_for_own_session_one_session_and_a_wallet() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (m_other, m_other_info, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, Scope::all()).await;
    // One session by id.
    let r = m
        .revoke(&RevokeRequest {
            session_id: Some(m_other_info.session_id.clone()),
            wallet: None,
        })
        .await
        .unwrap();
    assert_eq!(r.revoked, 1);
    assert_code(m_other.session().await, ErrorCode::Unauthorized);
    // Every session of an agent wallet.
    let r = m
        .revoke(&RevokeRequest {
            session_id: None,
            wallet: Some(a_info.wallet.clone()),
        })
        .await
        .unwrap();
    assert_eq!(r.revoked, 1);
    let e = assert_code(
        a.read_credential(None, &svc("x")).await,
        ErrorCode::Unauthorized,
    );
    assert!(e.to_string().contains("revoked"));
    // A session id that is not ours reads as absent.
    let (_, stranger, _) = ts.master("other").await;
    assert_code(
        m.revoke(&RevokeRequest {
            session_id: Some(stranger.session_id),
            wallet: None,
        })
        .await,
        ErrorCode::NotFound,
    );
    // The caller's own session.
    assert_eq!(
        m.revoke(&RevokeRequest::default()).await.unwrap().revoked,
        1
    );
    assert_code(m.session().await, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn identities_link_owned_wallets_and_resolve_for_their_owner_only() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (m2, _, _) = ts.master("m2").await;
    let (_, a_info, _) = ts.agent(&m, Scope::all()).await;
    let link = |alias: Option<&str>, email: Option<&str>| LinkIdentityRequest {
        wallet: a_info.wallet.clone(),
        alias: alias.map(str::to_owned),
        email: email.map(str::to_owned),
    };
    let id = m.link_identity(&link(Some("Builder"), None)).await.unwrap();
    assert_eq!((id.kind.as_str(), id.value.as_str()), ("alias", "builder"));
    m.link_identity(&link(Some("builder"), None)).await.unwrap(); // idempotent
    m.link_identity(&link(None, Some("Bot@Example.com")))
        .await
        .unwrap();
    assert_eq!(
        m.resolve_identity("builder").await.unwrap().wallet,
        a_info.wallet
    );
    assert_eq!(
        m.resolve_identity("bot@example.com").await.unwrap().wallet,
        a_info.wallet
    );
    assert_code(m2.resolve_identity("builder").await, ErrorCode::NotFound);
    assert_code(
        m2.link_identity(&link(Some("x"), None)).await,
        ErrorCode::Denied,
    );
    // Another master's "builder" is its own name: no conflict, and no hint of the first.
    let (_, m2_info, _) = ts.master("m2").await;
    let own = LinkIdentityRequest {
        wallet: m2_info.wallet.clone(),
        alias: Some("builder".into()),
        email: None,
    };
    m2.link_identity(&own).await.unwrap();
    assert_eq!(
        m2.resolve_identity("builder").await.unwrap().wallet,
        m2_info.wallet
    );
    // Within one namespace a name names one wallet.
    let (_, other, _) = ts.agent(&m, Scope::all()).await;
    let taken = LinkIdentityRequest {
        wallet: other.wallet,
        alias: Some("builder".into()),
        email: None,
    };
    assert_code(m.link_identity(&taken).await, ErrorCode::Conflict);
    assert_code(
        m.link_identity(&link(Some("a"), Some("b@c.d"))).await,
        ErrorCode::BadRequest,
    );
    assert_code(
        m.link_identity(&link(None, Some("not-an-address"))).await,
        ErrorCode::BadRequest,
    );
    assert_code(m.resolve_identity("nobody").await, ErrorCode::NotFound);
    let listed = m.agents().await.unwrap();
    let agent = listed
        .agents
        .iter()
        .find(|a| a.wallet == a_info.wallet)
        .unwrap();
    assert_eq!(agent.identities, ["bot@example.com", "builder"]);
}

#[tokio::test]
async fn the_audit_log_records_reads_and_denials_and_verifies() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    a.read_credential(None, &svc("openai")).await.unwrap();
    let _ = a.read_credential(None, &svc("stripe")).await;
    let all = m.audit(&AuditQuery::default()).await.unwrap();
    assert!(
        all.events.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    let reads: Vec<_> = all
        .events
        .iter()
        .filter(|e| e.action == "credential.read")
        .collect();
    assert_eq!(reads.len(), 2);
    assert!(
        reads
            .iter()
            .any(|e| e.outcome == "ok" && e.actor == a_info.wallet.as_str())
    );
    assert!(
        reads
            .iter()
            .any(|e| e.outcome == "DENIED" && e.service.as_deref() == Some("stripe"))
    );
    let only = m
        .audit(&AuditQuery {
            action: None,
            service: Some(svc("stripe")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        only.events
            .iter()
            .all(|e| e.service.as_deref() == Some("stripe"))
    );
    // An agent sees only its own events.
    let mine = a.audit(&AuditQuery::default()).await.unwrap();
    assert!(
        mine.events.iter().all(|e| e.actor == a_info.wallet.as_str()
            || e.agent.as_deref() == Some(a_info.wallet.as_str()))
    );
    assert_code(
        a.audit(&AuditQuery {
            action: None,
            agent: Some(m_info.wallet.clone()),
            ..Default::default()
        })
        .await,
        ErrorCode::Denied,
    );
    let v = m.verify_audit().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert!(v.checked >= u64::try_from(all.events.len()).unwrap());
    assert!(v.head_hash.is_some());
    assert_code(a.verify_audit().await, ErrorCode::Denied);
}

#[tokio::test]
async fn audit_views_keep_torn_down_agents_and_refuse_planted_rows() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (intruder, intruder_info, _) = ts.master("intruder").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    a.read_credential(None, &svc("openai")).await.unwrap();
    // Another master names m's agent in a read: refused, and the row is the intruder's
    // only (the wallet it named goes into the detail, not into m's view).
    assert_code(
        intruder
            .read_credential(Some(&a_info.wallet), &svc("openai"))
            .await,
        ErrorCode::Denied,
    );
    let mr = &m;
    let m_view = |q: AuditQuery| async move { mr.audit(&q).await.unwrap().events };
    let planted = m_view(AuditQuery::default())
        .await
        .into_iter()
        .any(|e| e.actor == intruder_info.wallet.as_str());
    assert!(!planted, "the intruder's refusal landed in m's view");
    let own = intruder.audit(&AuditQuery::default()).await.unwrap().events;
    let refusal = own
        .iter()
        .find(|e| e.action == "credential.read")
        .expect("the intruder sees its own refusal");
    assert_eq!(refusal.agent, None);
    assert!(
        refusal
            .detail
            .as_deref()
            .unwrap_or("")
            .contains(a_info.wallet.as_str())
    );

    // Torn down, the agent's history stays in its master's view.
    let before = m_view(AuditQuery::default())
        .await
        .iter()
        .filter(|e| e.actor == a_info.wallet.as_str())
        .count();
    assert!(before > 0);
    m.teardown(&a_info.wallet).await.unwrap();
    let after = m_view(AuditQuery::default())
        .await
        .iter()
        .filter(|e| e.actor == a_info.wallet.as_str())
        .count();
    assert_eq!(after, before, "a torn-down agent's rows vanished");

    // Verify reports the caller's own rows, not the server's whole activity.
    let v = m.verify_audit().await.unwrap();
    let all = agentkeys_server::audit::verify(&*ts.state.store, |_| true)
        .await
        .unwrap();
    assert!(v.ok && v.checked < all.checked, "{v:?} vs {all:?}");
    let newest = m_view(AuditQuery::default()).await[0].hash.clone();
    assert_eq!(v.head_hash.as_deref(), Some(newest.as_str()));
}

/// docs/api.md's audit chain formula, written out here from the document (not from the
/// server's code): SHA-256 over the domain, the previous hash, seq and ts (u64 big-endian),
/// then per field 0x00 when null, else 0x01, its length (u64 big-endian) and its bytes.
fn documented_hash(e: &agentkeys_types::api::AuditEvent) -> String {
    use sha2::{Digest as _, Sha256};
    let unhex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut h = Sha256::new();
    h.update(b"agentkeys-audit-v1\0");
    h.update(unhex(&e.prev_hash));
    h.update(e.seq.to_be_bytes());
    h.update(e.ts.to_be_bytes());
    for field in [
        Some(&e.actor),
        e.agent.as_ref(),
        e.service.as_ref(),
        Some(&e.action),
        Some(&e.outcome),
        e.detail.as_ref(),
    ] {
        match field {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_client_recomputes_each_of_its_rows_from_the_documented_formula() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, _, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    a.read_credential(None, &svc("openai")).await.unwrap();
    let _ = a.read_credential(None, &svc("stripe")).await;
    let events = m.audit(&AuditQuery::default()).await.unwrap().events;
    assert!(events.len() >= 4);
    for e in &events {
        assert_eq!(documented_hash(e), e.hash, "row {}", e.seq);
    }
    assert_eq!(
        events.last().unwrap().prev_hash,
        "0".repeat(64),
        "the first row"
    );
}

#[tokio::test]
async fn the_read_rate_limit_answers_rate_limited() {
    let cfg = agentkeys_server::Config {
        read_rate: 1.0,
        read_burst: 2.0,
        ..Default::default()
    };
    let ts = TestServer::with_config(cfg).await;
    let (m, _, _) = ts.master("m").await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    m.read_credential(None, &svc("openai")).await.unwrap();
    m.read_credential(None, &svc("openai")).await.unwrap();
    let e = assert_code(
        m.read_credential(None, &svc("openai")).await,
        ErrorCode::RateLimited,
    );
    assert!(matches!(
        e,
        agentkeys_core::ClientError::Api { status: 429, .. }
    ));
    // Another session has its own bucket.
    let (m2, _, _) = ts.master("m").await;
    m2.read_credential(None, &svc("openai")).await.unwrap();
}

#[tokio::test]
async fn policy_is_set_by_masters_only() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, Scope::all()).await;
    m.store_credential(None, &svc("stripe"), b"v", None)
        .await
        .unwrap();
    let p = m
        .set_policy(
            &m_info.wallet,
            &svc("stripe"),
            Policy {
                high_value: true,
                ..Policy::default()
            },
        )
        .await
        .unwrap();
    assert!(p.policy.high_value);
    // Storing a new value without a policy keeps the high-value flag.
    let kept = m
        .store_credential(None, &svc("stripe"), b"v2", None)
        .await
        .unwrap();
    assert!(kept.policy.high_value);
    assert_code(
        m.set_policy(&m_info.wallet, &svc("missing"), Policy::default())
            .await,
        ErrorCode::NotFound,
    );
    assert_code(
        a.set_policy(&a_info.wallet, &svc("stripe"), Policy::default())
            .await,
        ErrorCode::Denied,
    );
}
