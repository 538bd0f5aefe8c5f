//! Three replicas on one PostgreSQL database, clients spread over them: what one server
//! kept in memory is shared (the read budget, decision wake-ups, the audit chain head,
//! single-use grants), and a revocation on one applies on every other at the next request.
//! PostgreSQL only: these run on the throwaway server scripts/test.sh starts, and fail
//! without it.

use std::time::{Duration, Instant};

use agentkeys_core::client::{Backend as _, HttpBackend};
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_secmem::SecretString;
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{ApproveRequest, AuthStatus, Policy, RevokeRequest};

use super::common::*;

/// One client per replica for the same session.
async fn spread(replicas: &[TestServer], token: &SecretString) -> Vec<HttpBackend> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(client_with(&r.url, token).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_budget_is_one_across_replicas_not_one_each() {
    let config = agentkeys_server::Config {
        read_rate: 0.5,
        read_burst: 6.0,
        ..Default::default()
    };
    let rs = TestServer::replicas(3, config).await;
    let (m, _, token) = rs[0].master("m").await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    let clients = spread(&rs, &token).await;
    let started = Instant::now();
    let mut granted = 0u32;
    let mut limited = 0;
    for i in 0..30 {
        match clients[i % 3].read_credential(None, &svc("openai")).await {
            Ok(_) => granted += 1,
            Err(e) if e.code() == ErrorCode::RateLimited => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // One bucket of 6, refilled at 0.5/s while the loop ran: three buckets would grant 18.
    let refill = started.elapsed().as_secs_f64() * 0.5;
    eprintln!("30 reads round-robin over 3 replicas: {granted} granted, {limited} rate-limited");
    assert!(
        granted >= 6 && f64::from(granted) <= 6.0 + refill.ceil(),
        "granted {granted}, refill {refill}"
    );
    assert_eq!(granted + limited, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_on_one_replica_wakes_a_long_poll_waiting_on_another() {
    let rs = TestServer::replicas(3, agentkeys_server::Config::default()).await;
    let (m, _, _) = rs[1].master("m").await;
    let mut woke = Vec::new();
    for _ in 0..5 {
        let key = HpkeKeyPair::generate().unwrap();
        let ticket = rs[0]
            .anon()
            .open_auth_request(&pair_request(&key, Some("replica test")))
            .await
            .unwrap();
        // The poll waits on replica A (0); the approval goes through replica B (1).
        let poller = rs[0].anon();
        let id = ticket.id.clone();
        let poll = tokio::spawn(async move {
            let d = poller.decision(&id, 30).await.unwrap();
            (d.status, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(200)).await; // the poll is waiting
        let view = m.auth_request_by_code(&ticket.pair_code).await.unwrap();
        // From the approval being sent to the poll's answer: the approval's own round
        // trip, the notification, the re-read on A, the answer.
        let approving = Instant::now();
        m.approve(&view.id, &ApproveRequest::default())
            .await
            .unwrap();
        let (status, at) = poll.await.unwrap();
        assert_eq!(status, AuthStatus::Approved);
        woke.push(at.saturating_duration_since(approving));
    }
    woke.sort();
    eprintln!("cross-replica wake-up, from sending the approval to B: {woke:?}");
    // The notification, not the 1 s re-read, woke it: the median within 100 ms, none
    // near the fallback.
    assert!(woke[2] < Duration::from_millis(100), "{woke:?}");
    assert!(woke[4] < Duration::from_millis(900), "{woke:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_opened_on_one_replica_wakes_an_inbox_watch_on_another() {
    let rs = TestServer::replicas(2, agentkeys_server::Config::default()).await;
    let (m, m_info, _) = rs[1].master("m").await;
    let first = m.inbox(None, 0).await.unwrap();
    let mut woke = Vec::new();
    let mut cursor = first.cursor;
    for _ in 0..3 {
        // The watch waits on replica B (1); the request is opened on replica A (0).
        let watch = {
            let (m, _, _) = rs[1].master("m").await;
            let cursor = cursor.clone();
            tokio::spawn(async move {
                let l = m.inbox(Some(&cursor), 30).await.unwrap();
                (l, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut req = pair_request(&HpkeKeyPair::generate().unwrap(), Some("replica inbox"));
        req.parent = Some(m_info.wallet.clone());
        let opening = Instant::now();
        let t = rs[0].anon().open_auth_request(&req).await.unwrap();
        let (list, at) = watch.await.unwrap();
        assert!(list.requests.iter().any(|r| r.id == t.id));
        cursor = list.cursor;
        woke.push(at.saturating_duration_since(opening));
    }
    woke.sort();
    eprintln!("cross-replica inbox wake-up, from sending the open to A: {woke:?}");
    // Woken by the notification or at worst the 1 s re-read, never the 30 s wait.
    assert!(woke[2] < Duration::from_secs(5), "{woke:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_replica_is_refused_on_the_others_at_once() {
    let rs = TestServer::replicas(3, agentkeys_server::Config::default()).await;
    let (m, _, _) = rs[0].master("m").await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    let (a, a_info, a_token) = rs[0].agent(&m, scope(&["openai"], true)).await;
    let agents = spread(&rs, &a_token).await;
    for c in &agents {
        c.read_credential(None, &svc("openai")).await.unwrap();
    }
    drop(a);
    m.revoke(&RevokeRequest {
        session_id: None,
        wallet: Some(a_info.wallet.clone()),
    })
    .await
    .unwrap();
    // The very next request on B and C (no cache anywhere): refused.
    for c in &agents[1..] {
        assert_code(
            c.read_credential(None, &svc("openai")).await,
            ErrorCode::Unauthorized,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_value_grant_approved_on_one_replica_is_spent_once_across_all() {
    let rs = TestServer::replicas(3, agentkeys_server::Config::default()).await;
    let (m, _, _) = rs[0].master("m").await;
    let (_, _, a_token) = rs[0].agent(&m, scope(&["stripe"], true)).await;
    m.store_credential(
        None,
        &svc("stripe"),
        b"sk-high",
        Some(Policy {
            high_value: true,
            ..Policy::default()
        }),
    )
    .await
    .unwrap();
    let agents = std::sync::Arc::new(spread(&rs, &a_token).await);
    for round in 0..5 {
        let e = assert_code(
            agents[round % 3]
                .read_credential(None, &svc("stripe"))
                .await,
            ErrorCode::ApprovalRequired,
        );
        let ticket = e.auth_request().unwrap().clone();
        m.approve(&ticket.id, &ApproveRequest::default())
            .await
            .unwrap();
        // Three reads at once, one per replica, several times each: one release.
        let mut tasks = Vec::new();
        for _ in 0..3 {
            for i in 0..agents.len() {
                let agents = agents.clone();
                tasks.push(tokio::spawn(async move {
                    agents[i].read_credential(None, &svc("stripe")).await
                }));
            }
        }
        let mut released = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    assert_eq!(r.page.expose_secret(), b"sk-high");
                    released += 1;
                }
                Err(e) => assert_eq!(e.code(), ErrorCode::ApprovalRequired, "{e}"),
            }
        }
        assert_eq!(released, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_is_one_chain_after_ten_thousand_mixed_requests() {
    let config = agentkeys_server::Config {
        read_rate: 0.0,
        ..Default::default()
    };
    let rs = TestServer::replicas(3, config).await;
    let (m, _, m_token) = rs[0].master("m").await;
    let (_, _, a_token) = rs[0]
        .agent(&m, scope(&["s0", "s1", "s2", "s3"], false))
        .await;
    for i in 0..4 {
        m.store_credential(None, &svc(&format!("s{i}")), b"v", None)
            .await
            .unwrap();
    }
    let masters = std::sync::Arc::new(spread(&rs, &m_token).await);
    let agents = std::sync::Arc::new(spread(&rs, &a_token).await);
    const TASKS: usize = 16;
    const EACH: usize = 625; // 16 × 625 = 10,000 requests
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (masters, agents) = (masters.clone(), agents.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let r = (t + i) % 3;
                let s = svc(&format!("s{}", i % 4));
                match i % 10 {
                    // Stores (audited), reads by master and agent (audited), listings.
                    0 => masters[r]
                        .store_credential(None, &s, b"v2", None)
                        .await
                        .map(|_| ())
                        .unwrap(),
                    1..=3 => masters[r]
                        .read_credential(None, &s)
                        .await
                        .map(|_| ())
                        .unwrap(),
                    4..=8 => agents[r]
                        .read_credential(None, &s)
                        .await
                        .map(|_| ())
                        .unwrap(),
                    _ => agents[r].list_credentials(None).await.map(|_| ()).unwrap(),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let v = masters[2].verify_audit().await.unwrap();
    eprintln!(
        "10,000 mixed requests over 3 replicas in {took:?}; the chain: {} rows checked",
        v.checked
    );
    assert!(v.ok, "{v:?}");
    // Every store and read was audited (9,000 of the 10,000), in one chain.
    let all = agentkeys_server::audit::verify(&*rs[1].state.store, |_| true)
        .await
        .unwrap();
    assert!(all.ok);
    assert!(all.checked >= 9_000, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_need_the_same_keys_and_get_them_from_one_place() {
    // Sessions minted on one replica are honoured on another only because both hold the
    // same keys: the decision a daemon pins is signed by the one signing key.
    let rs = TestServer::replicas(2, agentkeys_server::Config::default()).await;
    assert_eq!(rs[0].signing_key(), rs[1].signing_key());
    assert_eq!(
        rs[0].state.info.shielding_public_key,
        rs[1].state.info.shielding_public_key
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_answers_a_state_watch_held_on_another() {
    let rs = TestServer::replicas(2, agentkeys_server::Config::default()).await;
    let (m, _, _) = rs[0].master("m").await;
    m.store_credential(None, &svc("openai"), b"v", None)
        .await
        .unwrap();
    let (_, a_info, a_token) = rs[0].agent(&m, scope(&["openai"], true)).await;
    let on_b = client_with(&rs[1].url, &a_token).await;
    let first = on_b.session_state(None, 0).await.unwrap();
    // A change through A answers the watch held on B.
    let watch = {
        let on_b = client_with(&rs[1].url, &a_token).await;
        let cursor = first.cursor.clone();
        tokio::spawn(async move { (on_b.session_state(Some(&cursor), 30).await, Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changing = Instant::now();
    m.set_agent_scope(&a_info.wallet, &scope(&[], true))
        .await
        .unwrap();
    let (state, at) = watch.await.unwrap();
    let state = state.unwrap();
    assert!(state.credentials.is_empty(), "{state:?}");
    let scope_took = at.saturating_duration_since(changing);
    // A revocation through A answers the next watch on B with 401.
    let watch = {
        let cursor = state.cursor.clone();
        tokio::spawn(async move { (on_b.session_state(Some(&cursor), 30).await, Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let revoking = Instant::now();
    m.revoke(&RevokeRequest {
        session_id: None,
        wallet: Some(a_info.wallet.clone()),
    })
    .await
    .unwrap();
    let (answer, at) = watch.await.unwrap();
    assert_code(answer, ErrorCode::Unauthorized);
    let revoke_took = at.saturating_duration_since(revoking);
    eprintln!("cross-replica state watch: scope change {scope_took:?}, revocation {revoke_took:?}");
    // Woken by the notification, never by the 30 s wait.
    assert!(scope_took < Duration::from_secs(5) && revoke_took < Duration::from_secs(5));
}
