//! What a read costs on the server's read path, reported as medians (`cargo test -p
//! agentkeys-server --test server read_cost -- --nocapture`): a plain read, a high-value
//! read under a standing approval, and one that spends a grant, through the real HTTP
//! client on the suite's engine. Every release must have its audit row.

use std::time::{Duration, Instant};

use agentkeys_core::client::{AuditQuery, Backend as _};
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{ApproveRequest, Policy};

use super::common::*;

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort_unstable();
    d[d.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_path_reports_what_plain_standing_and_grant_reads_cost() {
    // No read budget: the reads follow one another as fast as they go.
    let ts = TestServer::with_config(agentkeys_server::Config {
        read_rate: 0.0,
        ..agentkeys_server::Config::default()
    })
    .await;
    let (m, _, _) = ts.master("m").await;
    let high_value = Policy {
        high_value: true,
        require_passkey: false,
    };
    m.store_credential(None, &svc("plain"), b"v1", None)
        .await
        .unwrap();
    m.store_credential(None, &svc("standing"), b"v2", Some(high_value))
        .await
        .unwrap();
    m.store_credential(None, &svc("grant"), b"v3", Some(high_value))
        .await
        .unwrap();
    let (agent, _, _) = ts
        .agent(&m, scope(&["plain", "standing", "grant"], true))
        .await;
    let asked = assert_code(
        agent.read_credential(None, &svc("standing")).await,
        ErrorCode::ApprovalRequired,
    );
    let t = asked.auth_request().unwrap().clone();
    m.approve(
        &t.id,
        &ApproveRequest {
            scope: None,
            minutes: Some(60),
        },
    )
    .await
    .unwrap();
    let (n, grants) = (150, 40);
    let (mut plain, mut standing, mut spent) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let at = Instant::now();
        agent.read_credential(None, &svc("plain")).await.unwrap();
        plain.push(at.elapsed());
        let at = Instant::now();
        agent.read_credential(None, &svc("standing")).await.unwrap();
        standing.push(at.elapsed());
    }
    for _ in 0..grants {
        let asked = assert_code(
            agent.read_credential(None, &svc("grant")).await,
            ErrorCode::ApprovalRequired,
        );
        let t = asked.auth_request().unwrap().clone();
        m.approve(&t.id, &ApproveRequest::default()).await.unwrap();
        let at = Instant::now();
        agent.read_credential(None, &svc("grant")).await.unwrap();
        spent.push(at.elapsed());
    }
    eprintln!(
        "read medians on {}: plain {:?}, standing approval {:?}, grant spent {:?} ({n}, {n}, {grants} reads)",
        agentkeys_server::store::Store::engine(&*ts.state.store),
        median(plain),
        median(standing),
        median(spent),
    );
    let released = m
        .audit(&AuditQuery {
            action: Some("credential.read".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.outcome == "ok" && e.service.as_deref().is_some_and(|s| s != "plain"))
        .count();
    assert_eq!(released, n + grants, "every release has its audit row");
}
