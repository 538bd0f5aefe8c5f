//! `agentkeys approve`: show what is asked and the OTP to compare, confirm, decide.

use agentkeys_core::Backend as _;
use agentkeys_core::crypto::pairing::normalize_pair_code;
use agentkeys_types::Scope;
use agentkeys_types::api::{
    ApproveRequest, AuthKind, AuthRequestView, AuthStatus, MAX_STANDING_MINUTES,
};
use serde_json::json;

use crate::commands::agents::split_list;
use crate::context::Context;
use crate::error::{CliError, CliResult, exit};
use crate::output::{self, duration, note};
use crate::secret_io;

// The flags of `agentkeys approve` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ApproveArgs {
    /// The pair code (ABCD-EFGH; case and dash do not matter). Without it: list the
    /// pending requests you may decide and, on a terminal, pick one.
    code: Option<String>,
    /// For a pairing: the services the agent may use ('*' = all).
    #[arg(long, value_name = "A,B")]
    scope: Option<String>,
    /// For a pairing: the agent may not store.
    #[arg(long)]
    read_only: bool,
    /// Do not ask for confirmation (required when there is no terminal).
    #[arg(short, long)]
    yes: bool,
    /// Deny the request instead.
    #[arg(long)]
    deny: bool,
    /// For a high-value release: also let that agent read that credential without asking
    /// for this long (e.g. 30m, 2h; at most 8h), a standing approval.
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "deny")]
    standing: Option<String>,
}

// The flags of `agentkeys approvals` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ApprovalsArgs {
    /// What to do; without it, list them.
    #[command(subcommand)]
    action: Option<ApprovalsAction>,
}

/// What `agentkeys approvals` does besides listing.
#[derive(clap::Subcommand)]
pub enum ApprovalsAction {
    /// End a standing approval now: the agent must ask again for the next release.
    Revoke {
        /// The approval's id (sta_…), as 'agentkeys approvals' lists it.
        id: String,
    },
}

fn describe(view: &AuthRequestView, scope: Option<&Scope>) -> Vec<String> {
    let mut lines = match view.kind {
        AuthKind::Pair => vec![
            format!(
                "Pairing request {}: a new agent asks for a session.",
                view.pair_code
            ),
            format!(
                "Scope to grant: {}",
                scope.map_or_else(
                    || "none, read-only (change later with 'agentkeys scope')".to_owned(),
                    output::scope
                )
            ),
        ],
        AuthKind::Recover => vec![format!(
            "Recovery request {}: a new session for agent {}.",
            view.pair_code,
            view.agent.as_ref().map_or("?".into(), ToString::to_string)
        )],
        AuthKind::HighValue => vec![format!(
            "High-value release {}: agent {}, service {}.",
            view.pair_code,
            view.agent.as_ref().map_or("?".into(), ToString::to_string),
            view.service
                .as_ref()
                .map_or("?".into(), ToString::to_string)
        )],
    };
    if let Some(by) = &view.requested_by {
        lines.push(match view.kind {
            AuthKind::Pair => format!("Addressed to: {by} (you)"),
            _ => format!("Requested by: {by}"),
        });
    }
    if let Some(d) = &view.description {
        lines.push(format!("Description: {d}"));
    }
    lines.push(format!(
        "Expires in: {}",
        duration(view.expires_at - output::now())
    ));
    lines.push(format!(
        "OTP: {}  (it must match the OTP the requester shows)",
        view.otp
    ));
    lines
}

/// A request kind in words.
pub fn kind_word(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Pair => "pairing",
        AuthKind::Recover => "recovery",
        AuthKind::HighValue => "high-value release",
    }
}

/// `agentkeys approve`: the request named by its code, or one picked from the inbox.
pub async fn approve(ctx: &Context, args: ApproveArgs) -> CliResult {
    let session = ctx.session()?;
    let view = match &args.code {
        Some(code) => {
            let code = normalize_pair_code(code).ok_or_else(|| {
                CliError::usage(format!("'{code}' is not a pair code"))
                    .hint("a pair code is 8 letters and digits, shown as ABCD-EFGH")
            })?;
            session.backend.auth_request_by_code(&code).await?
        }
        None => match pick(ctx, &session, &args).await? {
            Some(view) => view,
            None => return Ok(()),
        },
    };
    decide(ctx, &session, view, &args).await
}

/// One row of the inbox table: what a master needs to tell requests apart.
pub fn inbox_row(view: &AuthRequestView) -> Vec<String> {
    let agent = view.agent.as_ref().map_or_else(
        || "(new agent)".to_owned(),
        |w| {
            let short = output::short_wallet(w.as_str());
            match view.agent_names.first() {
                Some(name) => format!("{short} ({name})"),
                None => short,
            }
        },
    );
    let what = match view.kind {
        AuthKind::Pair => "a session; you pick the scope".to_owned(),
        AuthKind::Recover => "a new session".to_owned(),
        AuthKind::HighValue => view
            .service
            .as_ref()
            .map_or_else(|| "?".to_owned(), |s| format!("one read of {s}")),
    };
    vec![
        kind_word(view.kind).to_owned(),
        view.pair_code.clone(),
        agent,
        what,
        view.requested_by
            .as_ref()
            .map_or_else(|| "-".to_owned(), |w| output::short_wallet(w.as_str())),
        view.otp.clone(),
        duration(view.expires_at - output::now()),
        view.description.clone().unwrap_or_default(),
    ]
}

/// The inbox table's header, matching [`inbox_row`].
pub const INBOX_HEADER: [&str; 8] = [
    "KIND",
    "CODE",
    "AGENT",
    "ASKS FOR",
    "ASKED BY",
    "OTP",
    "EXPIRES IN",
    "DESCRIPTION",
];

/// Lists the inbox; on a terminal, lets the master pick the request to decide.
async fn pick(
    ctx: &Context,
    session: &crate::context::Session,
    args: &ApproveArgs,
) -> CliResult<Option<AuthRequestView>> {
    if args.yes {
        return Err(
            CliError::usage("--yes needs the CODE of the request it answers").hint(
                "run 'agentkeys approve' to list the requests, then 'agentkeys approve CODE --yes'",
            ),
        );
    }
    let list = session.backend.inbox(None, 0).await?;
    if ctx.json {
        output::json(&json!({ "requests": list.requests }))?;
        return Ok(None);
    }
    if list.requests.is_empty() {
        output::line("No pending requests.")?;
        return Ok(None);
    }
    let rows: Vec<Vec<String>> = list
        .requests
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut row = vec![(i + 1).to_string()];
            row.extend(inbox_row(v));
            row
        })
        .collect();
    let mut header = vec!["#"];
    header.extend(INBOX_HEADER);
    output::table(&header, &rows)?;
    if !secret_io::stdin_is_tty() {
        note("Decide one with 'agentkeys approve CODE' (--deny to refuse it).");
        return Ok(None);
    }
    let n = list.requests.len();
    let answer = secret_io::ask(&format!("Decide which one? [1-{n}, Enter for none] "))?;
    if answer.is_empty() {
        return Ok(None);
    }
    let index = answer
        .parse::<usize>()
        .ok()
        .filter(|i| (1..=n).contains(i))
        .ok_or_else(|| {
            CliError::usage(format!("'{answer}' is not one of 1 to {n}"))
                .hint("run it again and type the number in the # column")
        })?;
    Ok(list.requests.into_iter().nth(index - 1))
}

/// Shows the request, confirms and decides.
async fn decide(
    ctx: &Context,
    session: &crate::context::Session,
    view: AuthRequestView,
    args: &ApproveArgs,
) -> CliResult {
    if view.status != AuthStatus::Pending {
        let (code_str, exit_code) = match view.status {
            AuthStatus::Expired => ("EXPIRED", exit::AUTH),
            _ => ("ALREADY_CONSUMED", exit::REJECTED),
        };
        return Err(CliError::new(
            code_str,
            exit_code,
            format!(
                "request {} is already {}",
                view.pair_code,
                view.status.as_str()
            ),
        )
        .hint("ask the requester for a fresh code"));
    }
    let scope = match (&args.scope, args.read_only) {
        (None, false) => None,
        (list, read_only) => {
            if view.kind != AuthKind::Pair {
                return Err(
                    CliError::usage("--scope and --read-only apply to pairings only")
                        .hint("change an existing agent's scope with 'agentkeys scope AGENT'"),
                );
            }
            let scope = Scope {
                services: list.as_deref().map(split_list).unwrap_or_default(),
                read_only,
            }
            .validated()
            .map_err(|e| CliError::usage(format!("invalid --scope: {e}")))?;
            Some(scope)
        }
    };
    let minutes = match &args.standing {
        None => None,
        Some(_) if view.kind != AuthKind::HighValue => {
            return Err(CliError::usage("--for applies to high-value releases only")
                .hint("approve a pairing or recovery without --for"));
        }
        Some(text) => {
            let secs = output::parse_duration(text)?;
            let minutes = u32::try_from((secs + 59) / 60)
                .ok()
                .filter(|m| (1..=MAX_STANDING_MINUTES).contains(m))
                .ok_or_else(|| {
                    CliError::usage(format!("--for {text} is not between 1 minute and 8 hours"))
                        .hint("a standing approval lasts at most 8h; approve again after")
                })?;
            Some(minutes)
        }
    };
    let mut text = describe(&view, scope.as_ref());
    if let Some(m) = minutes {
        text.push(format!(
            "Standing approval: the agent may read it without asking for {}.",
            duration(i64::from(m) * 60)
        ));
    }
    if !ctx.json || !args.yes {
        for l in &text {
            note(l);
        }
    }
    let decided = if args.deny {
        session.backend.deny(&view.id).await?
    } else {
        if !args.yes && !secret_io::confirm(&format!("Approve this {}?", kind_word(view.kind)))? {
            return Err(CliError::new(
                "CANCELLED",
                exit::INTERNAL,
                "not approved; nothing changed",
            )
            .hint("run it again and answer y, or pass --yes after checking the OTP"));
        }
        session
            .backend
            .approve(
                &view.id,
                &ApproveRequest {
                    scope: scope.clone(),
                    minutes,
                },
            )
            .await?
    };
    if ctx.json {
        return output::json(&json!({
            "id": decided.id, "pair_code": view.pair_code, "kind": view.kind,
            "status": decided.status, "agent": decided.agent, "service": view.service,
            "scope": scope, "minutes": minutes,
        }));
    }
    let agent = decided
        .agent
        .as_ref()
        .or(view.agent.as_ref())
        .map_or_else(|| "?".into(), ToString::to_string);
    output::line(&match (args.deny, view.kind) {
        (true, kind) => format!("Denied the {} {}.", kind_word(kind), view.pair_code),
        (false, AuthKind::Pair) => format!("Approved: agent {agent} is paired."),
        (false, AuthKind::Recover) => format!("Approved: agent {agent} gets a new session."),
        (false, AuthKind::HighValue) if minutes.is_some() => format!(
            "Approved: {agent}'s sessions may read {} without asking for {} \
             (end it with 'agentkeys approvals revoke').",
            view.service
                .as_ref()
                .map_or("?".into(), ToString::to_string),
            duration(i64::from(minutes.unwrap_or(0)) * 60)
        ),
        (false, AuthKind::HighValue) => format!(
            "Approved: one release of {} to {agent} within 5 minutes.",
            view.service
                .as_ref()
                .map_or("?".into(), ToString::to_string)
        ),
    })
}

/// `agentkeys approvals [revoke ID]`.
pub async fn approvals(ctx: &Context, args: ApprovalsArgs) -> CliResult {
    let session = ctx.session()?;
    if let Some(ApprovalsAction::Revoke { id }) = args.action {
        let done = session.backend.revoke_standing_approval(&id).await?;
        if ctx.json {
            return output::json(&json!({ "revoked": done.id }));
        }
        return output::line(&format!(
            "Ended {}: the next release needs a new approval.",
            done.id
        ));
    }
    let list = session.backend.standing_approvals().await?;
    if ctx.json {
        return output::json(&json!({ "approvals": list.approvals }));
    }
    if list.approvals.is_empty() {
        return output::line("No standing approvals.");
    }
    let rows: Vec<Vec<String>> = list
        .approvals
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                output::short_wallet(a.agent.as_str()),
                a.service.to_string(),
                output::short_wallet(a.owner.as_str()),
                a.via.clone(),
                duration(a.expires_at - output::now()),
            ]
        })
        .collect();
    output::table(
        &["ID", "AGENT", "SERVICE", "OWNER", "VIA", "ENDS IN"],
        &rows,
    )
}
