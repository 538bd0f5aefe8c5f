//! Credential bindings (where the egress proxy may send a credential): set by masters only,
//! validated, kept across value changes, audited, and delivered signed with the value so
//! nobody between the server and the daemon can widen, swap or strip one.

use std::sync::Arc;

use agentkeys_core::ClientError;
use agentkeys_core::client::{AuditQuery, Backend as _};
use agentkeys_types::binding::{Binding, Inject, well_known};
use agentkeys_types::{ErrorCode, Scope};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use serde_json::Value;

use super::common::*;

fn bound(hosts: &[&str]) -> Binding {
    Binding::new(
        hosts.iter().map(|h| (*h).to_owned()).collect(),
        Inject::Bearer,
    )
}

#[tokio::test]
async fn a_binding_is_set_by_masters_and_reaches_the_reader_signed() {
    let ts = TestServer::start().await;
    let (m, m_info, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, Scope::all()).await;
    let openai = svc("openai");
    let binding = well_known("openai").unwrap();
    let info = m
        .store_bound_credential(None, &openai, b"sk-bound", None, Some(&binding))
        .await
        .unwrap();
    assert_eq!(info.binding.as_ref(), Some(&binding));
    let read = a.read_credential(None, &openai).await.unwrap();
    assert_eq!(read.binding.as_ref(), Some(&binding));
    assert_eq!(read.page.expose_secret(), b"sk-bound");

    // A new value without a binding keeps the binding; listing shows it.
    m.store_credential(None, &openai, b"sk-bound-2", None)
        .await
        .unwrap();
    let listed = a.list_credentials(None).await.unwrap();
    assert_eq!(listed.credentials[0].binding.as_ref(), Some(&binding));

    // Rebinding and unbinding take effect on the next read.
    let wider = bound(&["api.openai.com", "*.openai.azure.com"]);
    m.set_binding(&m_info.wallet, &openai, Some(&wider))
        .await
        .unwrap();
    let read = a.read_credential(None, &openai).await.unwrap();
    assert_eq!(read.binding.as_ref(), Some(&wider));
    let unbound = m.set_binding(&m_info.wallet, &openai, None).await.unwrap();
    assert_eq!(unbound.binding, None);
    assert_eq!(
        a.read_credential(None, &openai).await.unwrap().binding,
        None
    );

    // An agent can neither bind its master's credential nor its own.
    assert_code(
        a.set_binding(&m_info.wallet, &openai, Some(&wider)).await,
        ErrorCode::Denied,
    );
    assert_code(
        a.store_bound_credential(None, &svc("own"), b"v", None, Some(&wider))
            .await,
        ErrorCode::Denied,
    );
    a.store_credential(None, &svc("own"), b"v", None)
        .await
        .unwrap();
    assert_code(
        a.set_binding(&a_info.wallet, &svc("own"), Some(&wider))
            .await,
        ErrorCode::Denied,
    );

    // Every change is audited.
    let audit = m
        .audit(&AuditQuery {
            action: Some("binding.set".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let sets: Vec<&str> = audit
        .events
        .iter()
        .filter_map(|e| e.detail.as_deref())
        .collect();
    assert_eq!(sets.len(), 3, "{sets:?}");
    assert!(sets.iter().any(|d| d.contains("*.openai.azure.com")));
    assert!(sets.contains(&"unbound"));
}

#[tokio::test]
async fn a_malformed_binding_is_refused_with_a_hint() {
    let ts = TestServer::start().await;
    let (m, m_info, m_token) = ts.master("m").await;
    m.store_credential(None, &svc("api"), b"v", None)
        .await
        .unwrap();
    for hosts in [&[][..], &["*"][..], &["*.com"][..], &["Evil.COM"][..]] {
        let err = assert_code(
            m.set_binding(&m_info.wallet, &svc("api"), Some(&bound(hosts)))
                .await,
            ErrorCode::BadRequest,
        );
        assert!(err.to_string().contains("binding"), "{err}");
    }
    assert_code(
        m.set_binding(
            &m_info.wallet,
            &svc("missing"),
            Some(&bound(&["a.example.com"])),
        )
        .await,
        ErrorCode::NotFound,
    );
    // Unknown fields (an attempt to smuggle in wider rules) are refused, not ignored.
    let raw = ts
        .raw()
        .put(format!(
            "{}/v1/credentials/{}/api/binding",
            ts.url, m_info.wallet
        ))
        .bearer_auth(m_token.expose_secret())
        .json(&serde_json::json!({
            "binding": {"hosts": ["a.example.com"], "inject": {"kind": "bearer"}, "any_host": true}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
}

/// How the attacker rewrites the `binding` of read answers.
type Rewrite = fn(&mut Value);

struct Tamper {
    upstream: String,
    http: reqwest::Client,
    rewrite: Rewrite,
}

async fn tamper(State(t): State<Arc<Tamper>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |x| x.as_str());
    let mut onward = t
        .http
        .request(parts.method.clone(), format!("{}{path}", t.upstream));
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            onward = onward.header(name, value);
        }
    }
    let answer = onward.body(body).send().await.unwrap();
    let status = answer.status();
    let mut answered = answer.bytes().await.unwrap();
    if parts.uri.path() == "/v1/credentials/read" && status.is_success() {
        let mut v: Value = serde_json::from_slice(&answered).unwrap();
        (t.rewrite)(&mut v);
        answered = Bytes::from(serde_json::to_vec(&v).unwrap());
    }
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answered,
    )
        .into_response()
}

async fn read_through(
    ts: &TestServer,
    token: &agentkeys_secmem::SecretString,
    rewrite: Rewrite,
) -> Result<agentkeys_core::client::ReadCredential, ClientError> {
    let t = Arc::new(Tamper {
        upstream: ts.url.clone(),
        http: reqwest::Client::new(),
        rewrite,
    });
    let app = axum::Router::new().fallback(tamper).with_state(t);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = client_with(&url, token).await;
    client.read_credential(None, &svc("openai")).await
}

#[tokio::test]
async fn a_binding_widened_swapped_or_stripped_in_transit_fails_the_signature() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (_, _, token) = ts.agent(&m, Scope::all()).await;
    m.store_bound_credential(
        None,
        &svc("openai"),
        b"sk-bound",
        None,
        Some(&bound(&["api.openai.com"])),
    )
    .await
    .unwrap();
    // Control: the forwarder itself changes nothing.
    let clean = read_through(&ts, &token, |_| {}).await.unwrap();
    assert_eq!(clean.binding, Some(bound(&["api.openai.com"])));
    let widen: Rewrite = |v| {
        v["binding"] = bound(&["api.openai.com", "evil.example.com"])
            .to_json()
            .into();
    };
    let strip: Rewrite = |v| {
        v.as_object_mut().unwrap().remove("binding");
    };
    let reorder: Rewrite = |v| {
        v["binding"] = r#"{"inject":{"kind":"bearer"},"hosts":["api.openai.com"]}"#.into();
    };
    for (what, rewrite) in [
        ("widened", widen),
        ("stripped", strip),
        ("re-encoded", reorder),
    ] {
        let r = read_through(&ts, &token, rewrite).await;
        assert!(
            matches!(r, Err(ClientError::BadSignature)),
            "a {what} binding must fail the signature"
        );
    }
}
