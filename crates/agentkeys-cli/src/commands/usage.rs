//! `agentkeys usage`: the server's audit trail, and `--verify` of its hash chain.

use agentkeys_core::Backend as _;
use agentkeys_core::client::AuditQuery;
use serde_json::json;

use crate::commands::credentials::service_name;
use crate::context::Context;
use crate::error::{CliError, CliResult, exit};
use crate::output::{self, timestamp};

// The flags of `agentkeys usage` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct UsageArgs {
    /// Only this agent (wallet, alias or e-mail).
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Only this service.
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// Only this action: session.create, session.revoke, credential.store, credential.read,
    /// policy.set, scope.set, agent.teardown, auth.open, auth.approve, auth.deny,
    /// identity.link or trail.anchor.
    #[arg(long, value_name = "ACTION", value_parser = parse_action)]
    action: Option<String>,
    /// Only events newer than this (e.g. 90s, 15m, 2h, 7d, 2w).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Recompute the whole hash chain on the server and report the first broken link.
    #[arg(long)]
    verify: bool,
}

/// `--action`: one of the server's audit action names.
fn parse_action(s: &str) -> Result<String, String> {
    agentkeys_types::api::AuditAction::parse(s)
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| {
            let names: Vec<&str> = agentkeys_types::api::AuditAction::ALL
                .iter()
                .map(|a| a.as_str())
                .collect();
            format!("not an audit action; one of: {}", names.join(", "))
        })
}

/// `agentkeys usage`.
pub async fn usage(ctx: &Context, args: UsageArgs) -> CliResult {
    let since = match &args.since {
        Some(d) => Some(output::now() - output::parse_duration(d)?),
        None => None,
    };
    let service = args.service.as_deref().map(service_name).transpose()?;
    let session = ctx.session()?;
    if args.verify {
        let v = session.backend.verify_audit().await?;
        if ctx.json {
            output::json(&json!({
                "ok": v.ok, "checked": v.checked, "first_broken_seq": v.first_broken_seq,
                "reason": v.reason, "head_hash": v.head_hash,
            }))?;
        }
        if !v.ok {
            return Err(CliError::new(
                "AUDIT_BROKEN",
                exit::AUDIT_BROKEN,
                format!(
                    "the audit chain is broken at event #{} ({}); {} events checked",
                    v.first_broken_seq.unwrap_or(0),
                    v.reason.as_deref().unwrap_or("hash mismatch"),
                    v.checked
                ),
            )
            .hint(
                "events at and after that one were altered or removed outside agentkeys; \
                   restore the database from a backup and investigate",
            ));
        }
        if !ctx.json {
            output::line(&format!(
                "Audit chain intact: {} events, head {}",
                v.checked,
                v.head_hash.as_deref().unwrap_or("-")
            ))?;
        }
        return Ok(());
    }
    let agent = session.resolve_optional(args.agent.as_deref()).await?;
    let list = session
        .backend
        .audit(&AuditQuery {
            agent,
            service,
            action: args.action.clone(),
            since,
            limit: Some(args.limit),
        })
        .await?;
    if ctx.json {
        return output::json(&json!({ "events": list.events }));
    }
    if list.events.is_empty() {
        output::note("No events match.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                timestamp(e.ts),
                output::short_wallet(&e.actor),
                e.action.clone(),
                e.agent
                    .as_deref()
                    .map_or_else(|| "-".into(), output::short_wallet),
                e.service.clone().unwrap_or_else(|| "-".into()),
                e.outcome.clone(),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "SEQ", "TIME", "ACTOR", "ACTION", "AGENT", "SERVICE", "OUTCOME", "DETAIL",
        ],
        &rows,
    )
}
