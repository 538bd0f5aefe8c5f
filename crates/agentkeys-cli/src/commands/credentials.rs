//! Credential commands: `store`, `read`, `list`, `policy`.

use agentkeys_core::{Backend as _, ClientError, HttpBackend};
use agentkeys_types::api::{AuthRequestTicket, AuthStatus, Policy};
use agentkeys_types::{ErrorCode, ServiceName};
use serde_json::json;

use crate::cli::StoreArgs;
use crate::context::Context;
use crate::error::{CliError, CliResult, exit};
use crate::output::{self, duration, note, timestamp};
use crate::secret_io::{self, Source};

/// Parses a service name, with the rule in the hint.
pub fn service_name(s: &str) -> CliResult<ServiceName> {
    ServiceName::parse(s).map_err(|_| {
        CliError::usage(format!("'{s}' is not a service name"))
            .hint("lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64")
    })
}

/// `agentkeys store`.
pub async fn store(ctx: &Context, args: StoreArgs) -> CliResult {
    if !args.stray.is_empty() {
        return Err(secret_io::refuse_argv_value(args.stray, &args.service));
    }
    let service = service_name(&args.service)?;
    let session = ctx.session()?;
    let agent = session.resolve_optional(args.agent.as_deref()).await?;
    let source = match (&args.from_env, &args.from_file) {
        (Some(var), _) => Source::Env(var),
        (None, Some(path)) => Source::File(path),
        (None, None) => Source::StdinOrPrompt {
            label: service.as_str(),
        },
    };
    let value = secret_io::read_value(source)?;
    let policy = args.high_value.then_some(Policy { high_value: true });
    let result = session
        .backend
        .store_credential(agent.as_ref(), &service, value.expose_secret(), policy)
        .await;
    drop(value);
    let info = result?;
    if ctx.json {
        return output::json(&json!({
            "agent": info.agent, "service": info.service, "policy": info.policy,
            "created_at": info.created_at, "updated_at": info.updated_at,
        }));
    }
    let hv = if info.policy.high_value {
        " (high-value: every read needs 'agentkeys approve')"
    } else {
        ""
    };
    output::line(&format!("Stored {} for {}{hv}", info.service, info.agent))
}

/// `agentkeys read`.
pub async fn read(
    ctx: &Context,
    agent: Option<&str>,
    service: &str,
    wait: Option<u64>,
) -> CliResult {
    let service = service_name(service)?;
    let session = ctx.session()?;
    let agent = session.resolve_optional(agent).await?;
    let deadline = wait.map(|w| output::now() + i64::try_from(w).unwrap_or(i64::MAX / 2));
    loop {
        match session
            .backend
            .read_credential(agent.as_ref(), &service)
            .await
        {
            Ok(read) => {
                let page = read.page;
                let owner = agent.as_ref().unwrap_or(session.wallet());
                if ctx.json {
                    let doc = secret_io::json_credential(
                        owner.as_str(),
                        service.as_str(),
                        page.expose_secret(),
                    )?;
                    drop(page);
                    secret_io::write_secret_to_stdout(doc.expose_secret())?;
                    return secret_io::write_secret_to_stdout(b"\n");
                }
                secret_io::write_secret_to_stdout(page.expose_secret())?;
                drop(page);
                if secret_io::stdout_is_tty() {
                    secret_io::write_secret_to_stdout(b"\n")?;
                }
                return Ok(());
            }
            Err(e) if e.code() == ErrorCode::ApprovalRequired => {
                let (Some(deadline), Some(ticket)) = (deadline, e.auth_request().cloned()) else {
                    return Err(CliError::from(e).hint(format!(
                        "once approved, 'agentkeys read {service} --wait' prints it (one release per approval)"
                    )));
                };
                wait_for_approval(&session.backend, &ticket, &service, deadline).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Long-polls a high-value request until it is decided or `deadline` passes. `Ok` means
/// "read again": approved (the grant is waiting) or consumed (the read will ask anew).
async fn wait_for_approval(
    backend: &HttpBackend,
    ticket: &AuthRequestTicket,
    service: &ServiceName,
    deadline: i64,
) -> CliResult {
    note(&format!(
        "approval required: run 'agentkeys approve {}' (OTP {}); waiting up to {}…",
        ticket.pair_code,
        ticket.otp,
        duration(deadline - output::now())
    ));
    loop {
        let Some(poll) = output::poll_window(deadline) else {
            return Err(CliError::new(
                "EXPIRED",
                exit::AUTH,
                format!("no decision on the release of {service} in time"),
            )
            .hint(format!(
                "approve it with 'agentkeys approve {}', then run 'agentkeys read {service}'",
                ticket.pair_code
            )));
        };
        match backend.decision(&ticket.id, poll).await {
            Ok(d) => match d.status {
                AuthStatus::Pending => {}
                AuthStatus::Approved | AuthStatus::Consumed => return Ok(()),
                AuthStatus::Denied => {
                    return Err(CliError::new(
                        "DENIED",
                        exit::AUTH,
                        format!("the release of {service} was denied"),
                    ));
                }
                AuthStatus::Expired => {
                    return Err(CliError::new(
                        "EXPIRED",
                        exit::AUTH,
                        format!("the approval request for {service} expired"),
                    )
                    .hint(format!(
                        "run 'agentkeys read {service} --wait' for a new code"
                    )));
                }
            },
            Err(ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }) => {
                return Err(CliError::new(
                    "EXPIRED",
                    exit::AUTH,
                    "the approval request is gone",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `agentkeys list`.
pub async fn list(ctx: &Context, agent: Option<&str>) -> CliResult {
    let session = ctx.session()?;
    let agent = session.resolve_optional(agent).await?;
    let list = session.backend.list_credentials(agent.as_ref()).await?;
    if ctx.json {
        return output::json(&json!({ "credentials": list.credentials }));
    }
    if list.credentials.is_empty() {
        note("No credentials. Add one with: printf %s \"$KEY\" | agentkeys store SERVICE");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .credentials
        .iter()
        .map(|c| {
            vec![
                c.service.to_string(),
                output::short_wallet(c.agent.as_str()),
                if c.policy.high_value {
                    "high-value".into()
                } else {
                    "normal".into()
                },
                timestamp(c.updated_at),
            ]
        })
        .collect();
    output::table(&["SERVICE", "OWNER", "POLICY", "UPDATED"], &rows)
}

/// `agentkeys policy`.
pub async fn policy(
    ctx: &Context,
    agent: Option<&str>,
    service: &str,
    high_value: bool,
) -> CliResult {
    let service = service_name(service)?;
    let session = ctx.session()?;
    let owner = match session.resolve_optional(agent).await? {
        Some(w) => w,
        None => session.wallet().clone(),
    };
    let info = session
        .backend
        .set_policy(&owner, &service, Policy { high_value })
        .await?;
    if ctx.json {
        return output::json(&json!({
            "agent": info.agent, "service": info.service, "policy": info.policy,
        }));
    }
    output::line(&if info.policy.high_value {
        format!(
            "{} of {} is now high-value: every release needs 'agentkeys approve'",
            info.service, info.agent
        )
    } else {
        format!(
            "{} of {} is now normal: releases need no approval",
            info.service, info.agent
        )
    })
}
