//! Quickstart: drives a running agentkeys server through its main job, printing each
//! step. Start a server first (`agentkeys-server --dev`), then:
//!
//! ```text
//! AGENTKEYS_SERVER=http://127.0.0.1:8090 cargo run -p agentkeys-core --example quickstart
//! ```
//!
//! It never prints a credential: values are compared in memory and shown by length only.

#![forbid(unsafe_code)]

use agentkeys_core::client::{AuditQuery, Backend as _, open_decision};
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_core::crypto::{pairing, random_array};
use agentkeys_core::{ClientError, HttpBackend};
use agentkeys_secmem::{SecretBytes, SecretString};
use agentkeys_types::api::{
    ApproveRequest, AuthKind, OpenAuthRequest, Policy, auth_request_canonical_bytes,
};
use agentkeys_types::{Scope, ServiceName};
use base64::Engine as _;

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn service(s: &str) -> Result<ServiceName, Box<dyn std::error::Error>> {
    Ok(ServiceName::parse(s)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AGENTKEYS_SERVER").map_err(
        |_| "AGENTKEYS_SERVER is not set; start 'agentkeys-server --dev' and paste its export line",
    )?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let anon = HttpBackend::new(&url)?;

    step(1, "server");
    let health = anon.health().await?;
    let info = anon.server_info().await?;
    println!(
        "    {url} is {} (version {})",
        health.status, health.version
    );
    println!("    HPKE suite: {}", info.hpke_suite);
    let signing_key: [u8; 32] = b64
        .decode(&info.signing_public_key)?
        .try_into()
        .map_err(|_| "bad signing key")?;

    step(2, "master session (POST /v1/sessions)");
    let grant = anon
        .create_session(SecretString::from_str_copy("quickstart-enrolment"))
        .await?;
    let master = HttpBackend::new(&url)?
        .with_token(&grant.token)?
        .with_server_key(signing_key);
    println!(
        "    wallet {} ; token akm_… (never printed) ; expires at {}",
        grant.session.wallet, grant.session.expires_at
    );

    step(
        3,
        "store a credential, sealed to the server's shielding key",
    );
    let value = SecretBytes::random(32);
    let hex_value = SecretString::from(
        value
            .expose_secret()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let stored = master
        .store_credential(
            None,
            &service("openai")?,
            hex_value.expose_secret().as_bytes(),
            None,
        )
        .await?;
    println!(
        "    stored {} for {} ({} bytes, value not shown)",
        stored.service,
        stored.agent,
        hex_value.len()
    );

    step(
        4,
        "read it back: sealed to a fresh key, opened straight into a secret page",
    );
    let page = master
        .read_credential(None, &service("openai")?)
        .await?
        .page;
    let same = page.expose_secret() == hex_value.expose_secret().as_bytes();
    println!(
        "    {} bytes in a {} page; matches what was stored: {same}",
        page.len(),
        page.kind()
    );
    drop(page);
    if !same {
        return Err("the value read back differs from the one stored".into());
    }

    step(
        5,
        "pair an agent: the daemon's key, a pair code and OTP, the master approves",
    );
    let daemon_key = HpkeKeyPair::generate()?;
    let ticket = anon
        .open_auth_request(&OpenAuthRequest {
            kind: AuthKind::Pair,
            requester_public_key: Some(b64.encode(daemon_key.public_key())),
            identity: None,
            parent: None,
            agent: None,
            service: None,
            description: Some("quickstart daemon".into()),
        })
        .await?;
    let nonce = b64.decode(&ticket.nonce)?;
    let own_otp = pairing::otp(
        &nonce,
        &auth_request_canonical_bytes(AuthKind::Pair, &daemon_key.public_key(), ""),
    );
    println!(
        "    daemon shows: Pair code {}, OTP {own_otp}",
        ticket.pair_code
    );
    let view = master.auth_request_by_code(&ticket.pair_code).await?;
    println!(
        "    master sees OTP {} -> {}",
        view.otp,
        if view.otp == own_otp {
            "match"
        } else {
            "MISMATCH"
        }
    );
    let scope = Scope {
        services: vec!["openai".into()],
        read_only: true,
    };
    master
        .approve(
            &view.id,
            &ApproveRequest {
                scope: Some(scope),
                minutes: None,
            },
        )
        .await?;
    let decision = anon.decision(&ticket.id, 10).await?;
    let agent_grant = open_decision(&decision, &daemon_key, &signing_key)?;
    let agent = HttpBackend::new(&url)?
        .with_token(&agent_grant.token)?
        .with_server_key(signing_key);
    println!(
        "    agent {} paired, scope {:?} read-only",
        agent_grant.session.wallet, agent_grant.session.scope.services
    );

    step(6, "the agent reads in scope, and is refused out of scope");
    let page = agent.read_credential(None, &service("openai")?).await?.page;
    println!(
        "    openai: {} bytes, matches: {}",
        page.len(),
        page.expose_secret() == hex_value.expose_secret().as_bytes()
    );
    drop(page);
    master
        .store_credential(None, &service("stripe")?, &random_array::<16>(), None)
        .await?;
    match agent.read_credential(None, &service("stripe")?).await {
        Err(e) => println!("    stripe: refused: {e}"),
        Ok(_) => return Err("an out-of-scope read succeeded".into()),
    }

    step(7, "a high-value credential needs one approval per release");
    master
        .set_policy(
            &grant.session.wallet,
            &service("stripe")?,
            Policy {
                high_value: true,
                ..Policy::default()
            },
        )
        .await?;
    master
        .set_agent_scope(
            &agent_grant.session.wallet,
            &Scope {
                services: vec!["openai".into(), "stripe".into()],
                read_only: true,
            },
        )
        .await?;
    let err = agent.read_credential(None, &service("stripe")?).await.err();
    let ticket = match err.as_ref().and_then(ClientError::auth_request) {
        Some(t) => t.clone(),
        None => return Err("expected APPROVAL_REQUIRED".into()),
    };
    println!(
        "    agent told: approval required: run 'agentkeys approve {}' (OTP {})",
        ticket.pair_code, ticket.otp
    );
    master
        .approve(&ticket.id, &ApproveRequest::default())
        .await?;
    let page = agent.read_credential(None, &service("stripe")?).await?.page;
    println!("    after approval: {} bytes released once", page.len());
    drop(page);
    let again = agent.read_credential(None, &service("stripe")?).await;
    println!(
        "    next read: {}",
        again
            .err()
            .map_or("released again (unexpected)".into(), |e| e
                .code()
                .to_string())
    );

    step(8, "audit: the hash chain holds");
    let events = master
        .audit(&AuditQuery {
            action: None,
            limit: Some(5),
            ..Default::default()
        })
        .await?;
    for e in &events.events {
        println!(
            "    #{} {} {} {} -> {}",
            e.seq,
            e.action,
            e.service.as_deref().unwrap_or("-"),
            &e.actor[..10],
            e.outcome
        );
    }
    let v = master.verify_audit().await?;
    println!(
        "    verify: ok={} checked={} head={}",
        v.ok,
        v.checked,
        v.head_hash.as_deref().unwrap_or("-")
    );

    step(9, "revoke the agent: its next call fails at once");
    master
        .revoke(&agentkeys_types::api::RevokeRequest {
            session_id: None,
            wallet: Some(agent_grant.session.wallet.clone()),
        })
        .await?;
    match agent.session().await {
        Err(e) => println!("    agent: {e}"),
        Ok(_) => return Err("a revoked session still works".into()),
    }
    println!("\nquickstart finished: every step passed");
    Ok(())
}
