//! The storage suite, written once against the `Store` trait and instantiated per engine
//! (STYLE habit 12): SQLite, and PostgreSQL on the throwaway server scripts/test.sh starts.

use std::sync::Arc;

use agentkeys_server::store::{
    Account, Approval, AuthRequestRecord, DecideOutcome, NewAuditEvent, NewSession, Release,
    StandingApproval, Store, StoreError, StoredCredential,
};
use agentkeys_types::api::{AuthKind, AuthStatus, Policy};
use agentkeys_types::{Scope, Wallet};

use super::common::{random_wallet, svc};

const NOW: i64 = 1_800_000_000;

async fn master<S: Store>(s: &S) -> Account {
    let hash = agentkeys_core::crypto::random_array::<32>();
    s.ensure_master(&hash, &random_wallet(), NOW).await.unwrap()
}

fn session(wallet: &Wallet, is_master: bool) -> NewSession {
    NewSession {
        id: format!(
            "ses_{}",
            agentkeys_core::hex(&agentkeys_core::crypto::random_array::<8>())
        ),
        token_hash: agentkeys_core::crypto::random_array::<32>(),
        wallet: wallet.clone(),
        is_master,
        created_at: NOW,
        expires_at: NOW + 100,
    }
}

fn request(kind: AuthKind, code: &str) -> AuthRequestRecord {
    AuthRequestRecord {
        id: format!("req_{code}"),
        kind,
        pair_code: code.to_owned(),
        nonce: vec![1; 16],
        otp: "123456".into(),
        requester_key: Some(vec![9; 32]),
        agent: None,
        service: None,
        requested_by: None,
        requested_session: None,
        description: None,
        status: AuthStatus::Pending,
        created_at: NOW,
        expires_at: NOW + 60,
        decided_by: None,
        grant_expires_at: None,
        sealed_session: None,
        signature: None,
    }
}

/// Inserts a high-value request of `session` for the owner's `stripe` and approves it
/// with a grant lasting until `grant_expires_at`; returns what `approve` answered.
async fn approved_grant<S: Store>(
    s: &S,
    owner: &Wallet,
    code: &str,
    session: &str,
    grant_expires_at: i64,
) -> DecideOutcome {
    let mut r = request(AuthKind::HighValue, code);
    r.agent = Some(owner.clone());
    r.service = Some(svc("stripe"));
    r.requested_session = Some(session.to_owned());
    s.insert_auth_request(&r).await.unwrap();
    let approval = Approval::HighValue {
        via: "session".into(),
        grant_expires_at,
        signature: vec![0; 64],
        standing: None,
    };
    s.approve(&r.id, owner, NOW, &approval).await.unwrap()
}

/// A read of the owner's `stripe` through `session`, released by a grant or a standing
/// approval with its audit row; whether one released it.
async fn spend<S: Store>(s: &S, session: &str, owner: &Wallet, now: i64) -> bool {
    released(s, session, &random_wallet(), owner, now)
        .await
        .is_some()
}

/// [`spend`] by the agent `agent`, answering what released it.
async fn released<S: Store>(
    s: &S,
    session: &str,
    agent: &Wallet,
    owner: &Wallet,
    now: i64,
) -> Option<Release> {
    let row = NewAuditEvent {
        ts: now,
        actor: agent.as_str().to_owned(),
        agent: Some(owner.as_str().to_owned()),
        service: Some("stripe".into()),
        action: "credential.read".into(),
        outcome: "ok".into(),
        detail: None,
    };
    s.release_high_value(session, agent, owner, &svc("stripe"), now, &row)
        .await
        .unwrap()
        .map(|(release, _)| release)
}

fn pair_approval(parent: &Wallet) -> Approval {
    let agent = Account {
        wallet: random_wallet(),
        is_master: false,
        parent: Some(parent.clone()),
        scope: Scope::none(),
        created_at: NOW,
    };
    let session = session(&agent.wallet, false);
    Approval::Pair {
        agent,
        session,
        sealed_session: vec![1, 2, 3],
        signature: vec![4; 64],
    }
}

/// A credential under KEK 1 with the default policy and no binding.
fn credential(
    owner: &Wallet,
    service: &str,
    wrapped_dek: Vec<u8>,
    ciphertext: Vec<u8>,
) -> StoredCredential {
    StoredCredential {
        owner: owner.clone(),
        service: svc(service),
        wrapped_dek,
        ciphertext,
        kek_id: 1,
        policy: Policy::default(),
        binding: None,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn event(n: u32) -> NewAuditEvent {
    NewAuditEvent {
        ts: NOW,
        actor: "a".into(),
        agent: None,
        service: None,
        action: format!("act{n}"),
        outcome: "ok".into(),
        detail: None,
    }
}

async fn concurrent_approvals_decide_exactly_once<S: Store>(s: S) {
    let s = Arc::new(s);
    let m = master(&*s).await;
    s.insert_auth_request(&request(AuthKind::Pair, "AAAA-AAAA"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, w) = (s.clone(), m.wallet.clone());
        tasks.push(tokio::spawn(async move {
            s.approve("req_AAAA-AAAA", &w, NOW + 1, &pair_approval(&w))
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == DecideOutcome::Decided)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, DecideOutcome::Decided | DecideOutcome::AlreadyDecided))
    );
    assert_eq!(s.list_agents(&m.wallet, NOW).await.unwrap().len(), 1);
}

async fn decisions_respect_expiry_and_existence<S: Store>(s: S) {
    let m = master(&s).await;
    s.insert_auth_request(&request(AuthKind::Pair, "BBBB-BBBB"))
        .await
        .unwrap();
    assert_eq!(
        s.deny("req_BBBB-BBBB", &m.wallet, NOW + 60, &[0; 64])
            .await
            .unwrap(),
        DecideOutcome::Expired
    );
    assert_eq!(
        s.deny("req_nope", &m.wallet, NOW, &[0; 64]).await.unwrap(),
        DecideOutcome::NotFound
    );
    let r = s.auth_request("req_BBBB-BBBB").await.unwrap().unwrap();
    assert_eq!(r.status_at(NOW + 60), AuthStatus::Expired);
    assert!(matches!(
        s.insert_auth_request(&AuthRequestRecord {
            id: "req_other".into(),
            ..request(AuthKind::Pair, "BBBB-BBBB")
        })
        .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_grant_is_spent_once_under_concurrency<S: Store>(s: S) {
    let s = Arc::new(s);
    let m = master(&*s).await;
    let outcome = approved_grant(&*s, &m.wallet, "CCCC-CCCC", "ses_x", NOW + 300).await;
    assert_eq!(outcome, DecideOutcome::Decided);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, w) = (s.clone(), m.wallet.clone());
        tasks.push(tokio::spawn(async move {
            spend(&*s, "ses_x", &w, NOW + 1).await
        }));
    }
    let mut spent = 0;
    for t in tasks {
        spent += usize::from(t.await.unwrap());
    }
    assert_eq!(spent, 1);
    assert!(!spend(&*s, "ses_x", &m.wallet, NOW + 2).await);
}

async fn an_expired_grant_is_not_spent<S: Store>(s: S) {
    let m = master(&s).await;
    approved_grant(&s, &m.wallet, "DDDD-DDDD", "ses_y", NOW + 300).await;
    assert!(!spend(&s, "ses_y", &m.wallet, NOW + 300).await);
    assert!(!spend(&s, "ses_other", &m.wallet, NOW + 1).await);
}

/// Every audit row in order.
async fn all_rows<S: Store>(s: &S) -> Vec<agentkeys_server::store::AuditRow> {
    s.audit_page(0, 10_000).await.unwrap()
}

async fn a_spent_grant_and_its_audit_row_commit_together<S: Store>(s: S) {
    let m = master(&s).await;
    approved_grant(&s, &m.wallet, "HHHH-HHHH", "ses_h", NOW + 300).await;
    let before = all_rows(&s).await.len();
    let agent = random_wallet();
    assert_eq!(
        released(&s, "ses_h", &agent, &m.wallet, NOW + 1).await,
        Some(Release::Grant("req_HHHH-HHHH".into()))
    );
    let rows = all_rows(&s).await;
    assert_eq!(rows.len(), before + 1);
    let row = rows.last().unwrap();
    assert_eq!(row.event.action, "credential.read");
    assert_eq!(row.event.actor, agent.as_str());
    assert_eq!(
        row.event.detail.as_deref(),
        Some("high-value grant spent (req_HHHH-HHHH)")
    );
    assert_eq!(
        s.auth_request("req_HHHH-HHHH")
            .await
            .unwrap()
            .unwrap()
            .status,
        AuthStatus::Consumed
    );
    assert!(
        agentkeys_server::audit::verify(&s, |_| true)
            .await
            .unwrap()
            .ok
    );
}

/// Makes every insert into the audit table fail, behind the store's back.
async fn break_audit_appends(url: &str) {
    if url.starts_with("postgres") {
        super::common::execute_sql(
            url,
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit appends are broken for this test'; END $$",
        )
        .await;
        super::common::execute_sql(
            url,
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit \
             FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        )
        .await;
    } else {
        super::common::execute_sql(
            url,
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit \
             BEGIN SELECT RAISE(ABORT, 'audit appends are broken for this test'); END",
        )
        .await;
    }
}

async fn a_spend_whose_audit_append_fails_leaves_the_grant_unspent<S: Store>(s: S, url: String) {
    let m = master(&s).await;
    approved_grant(&s, &m.wallet, "JJJJ-JJJJ", "ses_j", NOW + 300).await;
    let standing_owner = master(&s).await;
    let agent = random_wallet();
    s.insert_auth_request(&AuthRequestRecord {
        agent: Some(standing_owner.wallet.clone()),
        service: Some(svc("stripe")),
        requested_by: Some(agent.clone()),
        requested_session: Some("ses_k".into()),
        ..request(AuthKind::HighValue, "KKKK-KKKK")
    })
    .await
    .unwrap();
    let standing = StandingApproval {
        id: "sta_k".into(),
        master: standing_owner.wallet.clone(),
        agent: agent.clone(),
        owner: standing_owner.wallet.clone(),
        service: svc("stripe"),
        request_id: "req_KKKK-KKKK".into(),
        via: "session".into(),
        created_at: NOW,
        expires_at: NOW + 600,
    };
    let approval = Approval::HighValue {
        via: "session".into(),
        grant_expires_at: NOW,
        signature: vec![0; 64],
        standing: Some(standing),
    };
    assert_eq!(
        s.approve("req_KKKK-KKKK", &standing_owner.wallet, NOW, &approval)
            .await
            .unwrap(),
        DecideOutcome::Decided
    );
    let rows = all_rows(&s).await.len();
    break_audit_appends(&url).await;
    let row = NewAuditEvent {
        ts: NOW + 1,
        actor: "agent".into(),
        agent: None,
        service: Some("stripe".into()),
        action: "credential.read".into(),
        outcome: "ok".into(),
        detail: None,
    };
    assert!(
        s.release_high_value(
            "ses_j",
            &random_wallet(),
            &m.wallet,
            &svc("stripe"),
            NOW + 1,
            &row
        )
        .await
        .is_err(),
        "the release fails with its audit row"
    );
    assert!(
        s.release_high_value(
            "ses_k",
            &agent,
            &standing_owner.wallet,
            &svc("stripe"),
            NOW + 1,
            &row
        )
        .await
        .is_err(),
        "a standing release fails with its audit row too"
    );
    assert_eq!(
        s.auth_request("req_JJJJ-JJJJ")
            .await
            .unwrap()
            .unwrap()
            .status,
        AuthStatus::Approved,
        "the grant is still there to spend"
    );
    assert_eq!(all_rows(&s).await.len(), rows, "nothing was written");
}

async fn raising_the_passkey_guard_ends_what_a_session_approved<S: Store>(s: S) {
    let m = master(&s).await;
    s.put_credential(
        &StoredCredential {
            policy: Policy {
                high_value: true,
                require_passkey: false,
            },
            ..credential(&m.wallet, "stripe", vec![1], vec![2])
        },
        false,
        false,
    )
    .await
    .unwrap();
    // Two unspent grants, one approved with a session, one with a passkey.
    approved_grant(&s, &m.wallet, "LLLL-LLLL", "ses_l", NOW + 300).await;
    let mut r = request(AuthKind::HighValue, "MMMM-MMMM");
    r.agent = Some(m.wallet.clone());
    r.service = Some(svc("stripe"));
    r.requested_session = Some("ses_m".into());
    s.insert_auth_request(&r).await.unwrap();
    let by_passkey = Approval::HighValue {
        via: "passkey".into(),
        grant_expires_at: NOW + 300,
        signature: vec![0; 64],
        standing: None,
    };
    s.approve(&r.id, &m.wallet, NOW, &by_passkey).await.unwrap();
    // Two standing approvals of two agents, likewise.
    let (a_session, a_passkey) = (random_wallet(), random_wallet());
    for (code, agent, via) in [
        ("NNNN-NNNN", &a_session, "session"),
        ("PPPP-PPPP", &a_passkey, "passkey"),
    ] {
        let mut r = request(AuthKind::HighValue, code);
        r.agent = Some(m.wallet.clone());
        r.service = Some(svc("stripe"));
        r.requested_by = Some(agent.clone());
        s.insert_auth_request(&r).await.unwrap();
        let approval = Approval::HighValue {
            via: via.into(),
            grant_expires_at: NOW,
            signature: vec![0; 64],
            standing: Some(StandingApproval {
                id: format!("sta_{via}"),
                master: m.wallet.clone(),
                agent: agent.clone(),
                owner: m.wallet.clone(),
                service: svc("stripe"),
                request_id: r.id.clone(),
                via: via.into(),
                created_at: NOW,
                expires_at: NOW + 600,
            }),
        };
        s.approve(&r.id, &m.wallet, NOW, &approval).await.unwrap();
    }
    let guarded = Policy {
        high_value: true,
        require_passkey: true,
    };
    let change = s
        .set_policy(&m.wallet, &svc("stripe"), guarded, NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((change.ended_standing, change.ended_grants), (1, 1));
    // What a session approved is gone; what a passkey approved still releases.
    assert!(!spend(&s, "ses_l", &m.wallet, NOW + 2).await);
    assert_eq!(
        released(&s, "ses_x", &a_session, &m.wallet, NOW + 2).await,
        None
    );
    assert!(spend(&s, "ses_m", &m.wallet, NOW + 2).await);
    assert_eq!(
        released(&s, "ses_x", &a_passkey, &m.wallet, NOW + 2).await,
        Some(Release::Standing("sta_passkey".into()))
    );
    // A session's approval decided after the guard went up is refused in its transaction.
    let mut late = request(AuthKind::HighValue, "QQQQ-QQQQ");
    late.agent = Some(m.wallet.clone());
    late.service = Some(svc("stripe"));
    late.requested_session = Some("ses_q".into());
    s.insert_auth_request(&late).await.unwrap();
    let by_session = Approval::HighValue {
        via: "session".into(),
        grant_expires_at: NOW + 300,
        signature: vec![0; 64],
        standing: None,
    };
    assert_eq!(
        s.approve(&late.id, &m.wallet, NOW + 2, &by_session)
            .await
            .unwrap(),
        DecideOutcome::PasskeyRequired
    );
    assert_eq!(
        s.auth_request(&late.id).await.unwrap().unwrap().status,
        AuthStatus::Pending
    );
}

async fn credentials_upsert_and_keep_policy_and_binding_on_request<S: Store>(s: S) {
    let m = master(&s).await;
    let mut c = StoredCredential {
        owner: m.wallet.clone(),
        service: svc("openai"),
        wrapped_dek: vec![1],
        ciphertext: vec![2],
        kek_id: 1,
        policy: Policy {
            high_value: true,
            ..Policy::default()
        },
        binding: Some(r#"{"hosts":["api.openai.com"]}"#.into()),
        created_at: NOW,
        updated_at: NOW,
    };
    assert!(s.put_credential(&c, false, false).await.unwrap());
    c.ciphertext = vec![3];
    c.policy = Policy::default();
    c.binding = None;
    c.updated_at = NOW + 5;
    assert!(!s.put_credential(&c, true, true).await.unwrap());
    let got = s
        .credential(&m.wallet, &svc("openai"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            got.ciphertext,
            got.policy.high_value,
            got.created_at,
            got.updated_at
        ),
        (vec![3], true, NOW, NOW + 5)
    );
    assert_eq!(
        got.binding.as_deref(),
        Some(r#"{"hosts":["api.openai.com"]}"#),
        "a binding is kept when asked"
    );
    s.put_credential(&c, false, false).await.unwrap();
    let replaced = s
        .credential(&m.wallet, &svc("openai"))
        .await
        .unwrap()
        .unwrap();
    assert!(!replaced.policy.high_value);
    assert_eq!(replaced.binding, None, "and replaced when not");
    assert!(
        s.set_binding(&m.wallet, &svc("openai"), Some("{}"))
            .await
            .unwrap()
    );
    assert!(
        !s.set_binding(&m.wallet, &svc("nothing"), Some("{}"))
            .await
            .unwrap()
    );
    let listed = s.list_credentials(&m.wallet).await.unwrap();
    assert_eq!(listed.len(), 1);
    // No value: at most the record's 24-byte nonce, which names the stored value.
    assert!(
        listed[0].wrapped_dek.is_empty() && listed[0].ciphertext.len() <= 24,
        "listing must not carry values"
    );
}

async fn sessions_revoke_and_teardown_only_what_they_own<S: Store>(s: S) {
    let m = master(&s).await;
    let other = master(&s).await;
    let pa = pair_approval(&m.wallet);
    let Approval::Pair { agent, .. } = &pa else {
        unreachable!()
    };
    let agent = agent.clone();
    s.insert_auth_request(&request(AuthKind::Pair, "EEEE-EEEE"))
        .await
        .unwrap();
    s.approve("req_EEEE-EEEE", &m.wallet, NOW, &pa)
        .await
        .unwrap();
    let extra = session(&agent.wallet, false);
    s.insert_session(&extra).await.unwrap();
    assert_eq!(s.revoke_session(&extra.id, NOW).await.unwrap(), 1);
    assert_eq!(
        s.revoke_session(&extra.id, NOW).await.unwrap(),
        0,
        "already revoked"
    );
    assert!(
        s.teardown_agent(&other.wallet, &agent.wallet, NOW)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !s.set_agent_scope(&other.wallet, &agent.wallet, &Scope::all())
            .await
            .unwrap()
    );
    assert_eq!(
        s.teardown_agent(&m.wallet, &agent.wallet, NOW)
            .await
            .unwrap(),
        Some((1, 0))
    );
    assert!(s.account(&agent.wallet).await.unwrap().is_none());
    assert_eq!(s.revoke_wallet(&agent.wallet, NOW).await.unwrap(), 0);
}

async fn old_auth_requests_are_purged_but_live_grants_kept<S: Store>(s: S) {
    let m = master(&s).await;
    s.insert_auth_request(&request(AuthKind::Pair, "FFFF-FFFF"))
        .await
        .unwrap();
    approved_grant(&s, &m.wallet, "GGGG-GGGG", "ses_z", NOW + 10_000).await;
    assert_eq!(
        s.purge_auth_requests(NOW + 61).await.unwrap(),
        1,
        "only the expired pair request"
    );
    assert!(s.auth_request("req_FFFF-FFFF").await.unwrap().is_none());
    assert!(spend(&s, "ses_z", &m.wallet, NOW + 100).await);
    assert_eq!(s.purge_auth_requests(NOW + 10_001).await.unwrap(), 1);
}

async fn identities_are_one_namespace_per_master<S: Store>(s: S) {
    let a = master(&s).await;
    let b = master(&s).await;
    s.link_identity(&a.wallet, "alias", "x", &a.wallet, NOW)
        .await
        .unwrap();
    s.link_identity(&a.wallet, "alias", "x", &a.wallet, NOW)
        .await
        .unwrap();
    // The same name in another master's namespace neither conflicts nor shows.
    s.link_identity(&b.wallet, "alias", "x", &b.wallet, NOW)
        .await
        .unwrap();
    assert_eq!(
        s.resolve_identity(&a.wallet, "alias", "x").await.unwrap(),
        Some(a.wallet.clone())
    );
    assert_eq!(
        s.resolve_identity(&b.wallet, "alias", "x").await.unwrap(),
        Some(b.wallet.clone())
    );
    // Within one namespace a name still names one wallet.
    let other = master(&s).await;
    assert!(matches!(
        s.link_identity(&a.wallet, "alias", "x", &other.wallet, NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.resolve_identity(&a.wallet, "email", "x").await.unwrap(),
        None
    );
}

async fn audit_appends_chain_across_batches<S: Store>(s: S) {
    let first = s.append_audit(&[event(1), event(2)]).await.unwrap();
    let second = s.append_audit(&[event(3)]).await.unwrap();
    assert_eq!((first, second), (vec![1, 2], vec![3]));
    let rows = s.audit_page(0, 10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].prev_hash, vec![0; 32]);
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    assert_eq!(rows[2].prev_hash, rows[1].hash);
    assert_eq!(s.audit_page(1, 1).await.unwrap()[0].seq, 2);
    assert!(
        agentkeys_server::audit::verify(&s, |_| true)
            .await
            .unwrap()
            .ok
    );
}

/// Appends from many tasks at once, while other writes go on, make one gapless chain.
async fn concurrent_audit_appends_stay_one_chain<S: Store + 'static>(s: S) {
    let s = Arc::new(s);
    let m = master(&*s).await;
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.extend(s.append_audit(&[event(t * 100 + i)]).await.unwrap());
            }
            seqs
        }));
    }
    let writes = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..20u8 {
                let c = credential(&m.wallet, &format!("w{i}"), vec![i], vec![i]);
                s.put_credential(&c, false, false).await.unwrap();
            }
        })
    };
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    writes.await.unwrap();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<i64>>(),
        "one position each, no gap"
    );
    let verified = agentkeys_server::audit::verify(&*s, |_| true)
        .await
        .unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.checked, 200);
}

async fn rewrapping_pages_through_old_keks_and_never_clobbers_a_newer_store<S: Store>(s: S) {
    let m = master(&s).await;
    for i in 0..5 {
        let c = credential(&m.wallet, &format!("s{i}"), vec![i, 1], vec![9]);
        s.put_credential(&c, false, false).await.unwrap();
    }
    assert_eq!(s.kek_usage().await.unwrap(), vec![(1, 5)]);
    // Two pages of two, then one: every row under KEK 1, in order.
    let first = s.credentials_to_rewrap(2, None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|c| c.kek_id == 1 && !c.wrapped_dek.is_empty())
    );
    let last = first.last().unwrap();
    let next = s
        .credentials_to_rewrap(2, Some((last.owner.clone(), last.service.clone())), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 3);
    // A store under the new KEK lands between the read and the re-wrap: it wins.
    let raced = &next[0];
    let newer = StoredCredential {
        wrapped_dek: vec![7, 7],
        kek_id: 2,
        ..raced.clone()
    };
    s.put_credential(&newer, true, true).await.unwrap();
    assert!(
        !s.rewrap(&raced.owner, &raced.service, &raced.wrapped_dek, &[8, 8], 2)
            .await
            .unwrap()
    );
    assert_eq!(
        s.credential(&raced.owner, &raced.service)
            .await
            .unwrap()
            .unwrap()
            .wrapped_dek,
        vec![7, 7]
    );
    for c in first.iter().chain(&next[1..]) {
        assert!(
            s.rewrap(&c.owner, &c.service, &c.wrapped_dek, &[8, 8], 2)
                .await
                .unwrap()
        );
    }
    assert_eq!(s.kek_usage().await.unwrap(), vec![(2, 5)]);
    assert!(
        s.credentials_to_rewrap(2, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Instantiates every suite function for one engine.
macro_rules! engine {
    ($name:ident, $open:expr) => {
        engine!($name, $open, [
            concurrent_approvals_decide_exactly_once,
            decisions_respect_expiry_and_existence,
            a_grant_is_spent_once_under_concurrency,
            an_expired_grant_is_not_spent,
            a_spent_grant_and_its_audit_row_commit_together,
            raising_the_passkey_guard_ends_what_a_session_approved,
            credentials_upsert_and_keep_policy_and_binding_on_request,
            sessions_revoke_and_teardown_only_what_they_own,
            identities_are_one_namespace_per_master,
            old_auth_requests_are_purged_but_live_grants_kept,
            audit_appends_chain_across_batches,
            concurrent_audit_appends_stay_one_chain,
            rewrapping_pages_through_old_keks_and_never_clobbers_a_newer_store,
        ], [
            a_spend_whose_audit_append_fails_leaves_the_grant_unspent,
        ]);
    };
    ($name:ident, $open:expr, [$($case:ident),* $(,)?], [$($with_url:ident),* $(,)?]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let open = $open;
                    super::$case(open(dir.path()).await.0).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $with_url() {
                    let dir = tempfile::tempdir().unwrap();
                    let open = $open;
                    let (store, url) = open(dir.path()).await;
                    super::$with_url(store, url).await;
                }
            )*
        }
    };
}

// Each engine opens a store and says its URL (for tests that tamper behind its back).
engine!(sqlite, |dir: &std::path::Path| {
    let path = dir.join("agentkeys.db");
    async move {
        let url = format!("sqlite:{}", path.display());
        (
            agentkeys_server::SqliteStore::open(&path).await.unwrap(),
            url,
        )
    }
});

// A fresh database per case on the throwaway PostgreSQL scripts/test.sh starts; without
// one these fail (the engine is tested on every run, never skipped).
engine!(postgres, |_: &std::path::Path| async {
    let url = crate::server::common::fresh_database().await;
    (
        agentkeys_server::store::postgres::PgStore::connect(&url)
            .await
            .unwrap(),
        url,
    )
});

/// SQLite appends audit batches on a connection of its own: a second server process on the
/// same file, and a third connection holding the write lock, make it wait, not fail, and
/// the chain stays one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_appends_wait_out_other_writers_and_stay_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentkeys.db");
    let a = Arc::new(agentkeys_server::SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(agentkeys_server::SqliteStore::open(&path).await.unwrap());
    // Another writer takes the lock and keeps it a while.
    let (locked, wait_locked) = std::sync::mpsc::channel();
    let holder = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            tx.commit().unwrap();
        })
    };
    wait_locked.recv().unwrap();
    let mut tasks = Vec::new();
    for (n, store) in [(0u32, a.clone()), (1, b.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20u32 {
                let batch = [event(n * 100 + i), event(n * 100 + 50 + i)];
                seqs.extend(store.append_audit(&batch).await.unwrap());
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    holder.join().unwrap();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=80).collect::<Vec<i64>>());
    let verified = agentkeys_server::audit::verify(&*a, |_| true)
        .await
        .unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.checked, 80);
}
