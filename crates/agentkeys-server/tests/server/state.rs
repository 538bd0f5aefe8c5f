//! `GET /v1/session/state`: an agent's state watch answers as soon as its master changes
//! what the agent may hold (scope, policy, binding, a stored value, a standing approval),
//! and with 401 as soon as the agent is revoked; an unchanged state keeps it waiting.

use std::time::{Duration, Instant};

use agentkeys_core::ClientError;
use agentkeys_core::client::{Backend as _, HttpBackend};
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{ApproveRequest, Policy, RevokeRequest, SessionState};
use agentkeys_types::binding::{Binding, Inject};

use super::common::*;

/// Holds the agent's watch on `cursor` while `change` runs a moment later; returns what
/// the watch answered and how long it held.
async fn watch_while<F: Future<Output = ()>>(
    agent: &HttpBackend,
    cursor: &str,
    change: F,
) -> (Result<SessionState, ClientError>, Duration) {
    let started = Instant::now();
    let watch = async {
        let answer = agent.session_state(Some(cursor), 30).await;
        (answer, started.elapsed())
    };
    let (out, ()) = tokio::join!(watch, async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        change.await;
    });
    out
}

/// The state's entry for `service`.
fn entry<'a>(s: &'a SessionState, service: &str) -> &'a agentkeys_types::api::CredentialState {
    s.credentials
        .iter()
        .find(|c| c.service.as_str() == service)
        .unwrap_or_else(|| panic!("{service} not in {s:?}"))
}

#[tokio::test]
async fn a_state_watch_answers_each_change_of_what_the_agent_may_hold_at_once() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (a, a_info, _) = ts.agent(&m, scope(&["openai", "stripe"], true)).await;
    m.store_credential(None, &svc("openai"), b"sk-one", None)
        .await
        .unwrap();
    m.store_credential(None, &svc("stripe"), b"sk-stripe", None)
        .await
        .unwrap();
    let first = a.session_state(None, 0).await.unwrap();
    assert_eq!(first.credentials.len(), 2, "{first:?}");
    assert_eq!(first.scope, scope(&["openai", "stripe"], true));
    assert!(first.standing_approvals.is_empty());
    let held = |s: &SessionState| s.cursor.clone();

    // Unchanged: the watch holds until its wait ends, and says the same.
    let same = a.session_state(Some(&first.cursor), 1).await.unwrap();
    assert_eq!(same.cursor, first.cursor);

    // Each change answers the held watch with the changed state.
    let mut took = Vec::new();
    let mut cursor = held(&first);
    let (s, t) = watch_while(&a, &cursor, async {
        m.store_credential(None, &svc("openai"), b"sk-two", None)
            .await
            .unwrap();
    })
    .await;
    let s = s.unwrap();
    assert_ne!(entry(&s, "openai").version, entry(&first, "openai").version);
    assert_eq!(entry(&s, "stripe").version, entry(&first, "stripe").version);
    took.push(t);
    cursor = held(&s);

    let (s, t) = watch_while(&a, &cursor, async {
        m.set_policy(
            &m.session().await.unwrap().wallet,
            &svc("openai"),
            Policy {
                high_value: true,
                require_passkey: false,
            },
        )
        .await
        .unwrap();
    })
    .await;
    let s = s.unwrap();
    assert!(entry(&s, "openai").policy.high_value);
    took.push(t);
    cursor = held(&s);

    let binding = Binding::new(vec!["api.example.com".into()], Inject::Bearer);
    let (s, t) = watch_while(&a, &cursor, async {
        let me = m.session().await.unwrap().wallet;
        m.set_binding(&me, &svc("openai"), Some(&binding))
            .await
            .unwrap();
    })
    .await;
    let s = s.unwrap();
    assert_eq!(entry(&s, "openai").binding.as_ref(), Some(&binding));
    took.push(t);
    cursor = held(&s);

    // A standing approval granted, then revoked.
    let e = assert_code(
        a.read_credential(None, &svc("openai")).await,
        ErrorCode::ApprovalRequired,
    );
    let request = e.auth_request().unwrap().id.clone();
    let (s, t) = watch_while(&a, &cursor, async {
        m.approve(
            &request,
            &ApproveRequest {
                scope: None,
                minutes: Some(30),
            },
        )
        .await
        .unwrap();
    })
    .await;
    let s = s.unwrap();
    assert_eq!(s.standing_approvals.len(), 1, "{s:?}");
    let standing = s.standing_approvals[0].id.clone();
    took.push(t);
    cursor = held(&s);
    let (s, t) = watch_while(&a, &cursor, async {
        m.revoke_standing_approval(&standing).await.unwrap();
    })
    .await;
    let s = s.unwrap();
    assert!(s.standing_approvals.is_empty(), "{s:?}");
    took.push(t);
    cursor = held(&s);

    // The scope narrowed: the credential leaves the state.
    let (s, t) = watch_while(&a, &cursor, async {
        m.set_agent_scope(&a_info.wallet, &scope(&["stripe"], true))
            .await
            .unwrap();
    })
    .await;
    let s = s.unwrap();
    assert_eq!(s.scope, scope(&["stripe"], true));
    assert!(s.credentials.iter().all(|c| c.service.as_str() != "openai"));
    took.push(t);
    cursor = held(&s);

    // Revoked: the held watch is refused like any request of the session.
    let (s, t) = watch_while(&a, &cursor, async {
        m.revoke(&RevokeRequest {
            session_id: None,
            wallet: Some(a_info.wallet.clone()),
        })
        .await
        .unwrap();
    })
    .await;
    assert_code(s, ErrorCode::Unauthorized);
    took.push(t);
    eprintln!("state watch answered after (including the 150 ms before each change): {took:?}");
    // Woken by the change, never by the 30 s wait running out.
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(10)),
        "{took:?}"
    );
}

#[tokio::test]
async fn another_masters_change_does_not_move_an_agents_state() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let (other, _, _) = ts.master("other").await;
    let (a, _, _) = ts.agent(&m, scope(&["openai"], true)).await;
    m.store_credential(None, &svc("openai"), b"sk-mine", None)
        .await
        .unwrap();
    let first = a.session_state(None, 0).await.unwrap();
    let watch = a.session_state(Some(&first.cursor), 2);
    let (s, ()) = tokio::join!(watch, async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        other
            .store_credential(None, &svc("openai"), b"sk-theirs", None)
            .await
            .unwrap();
    });
    // Woken or not (two masters can share a wake-up), the state did not move: the watch
    // held until its wait ended and names the same state.
    assert_eq!(s.unwrap().cursor, first.cursor);
}

#[tokio::test]
async fn a_watch_asks_for_at_most_sixty_seconds() {
    let ts = TestServer::start().await;
    let (m, _, _) = ts.master("m").await;
    let first = m.session_state(None, 0).await.unwrap();
    assert_code(
        m.session_state(Some(&first.cursor), 61).await,
        ErrorCode::BadRequest,
    );
}
