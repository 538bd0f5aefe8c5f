//! Credential commands: `store`, `read`, `list`, `policy`, `bind`; their flags are in
//! `args.rs`.

mod args;

use std::borrow::Cow;

use agentkeys_core::{Backend as _, ClientError, HttpBackend};
use agentkeys_types::api::{AuthRequestTicket, AuthStatus, Policy, SessionKind};
use agentkeys_types::binding::{BasicPart, Binding, BodyField, Inject, WELL_KNOWN, well_known};
use agentkeys_types::{ErrorCode, ServiceName};
use serde_json::json;

pub use self::args::{BindArgs, BindingFlags, ListArgs, PolicyArgs, ReadArgs, StoreArgs};
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
    let mut binding = binding_from_flags(&args.binding)?;
    let is_master = session.stored.session.kind == SessionKind::Master;
    if binding.is_some() && !is_master {
        return Err(
            CliError::usage("only a master may bind a credential to hosts")
                .hint("store without --host; your master binds it with 'agentkeys bind'"),
        );
    }
    if binding.is_none() && is_master && !args.no_bind {
        binding = first_store_binding(&session, agent.as_ref(), &service).await?;
    }
    let value = secret_io::read_value(source)?;
    let policy = args.high_value.then_some(Policy {
        high_value: true,
        ..Policy::default()
    });
    let result = session
        .backend
        .store_bound_credential(
            agent.as_ref(),
            &service,
            value.expose_secret(),
            policy,
            binding.as_ref(),
        )
        .await;
    drop(value);
    let info = result?;
    if ctx.json {
        return output::json(&json!({
            "agent": info.agent, "service": info.service, "policy": info.policy,
            "binding": info.binding,
            "created_at": info.created_at, "updated_at": info.updated_at,
        }));
    }
    let hv = if info.policy.high_value {
        " (high-value: every read needs 'agentkeys approve')"
    } else {
        ""
    };
    output::line(&format!("Stored {} for {}{hv}", info.service, info.agent))?;
    if let Some(b) = &info.binding {
        note(&format!(
            "bound to {}: 'agentkeys run --proxy --service {}' keeps the value from the agent",
            b.hosts.join(", "),
            info.service
        ));
    }
    Ok(())
}

/// The built-in binding of a well-known service, for a credential stored for the first
/// time; an existing credential keeps whatever binding it has.
async fn first_store_binding(
    session: &crate::context::Session,
    agent: Option<&agentkeys_types::Wallet>,
    service: &ServiceName,
) -> CliResult<Option<Binding>> {
    let Some(known) = well_known(service.as_str()) else {
        return Ok(None);
    };
    let existing = session.backend.list_credentials(agent).await?;
    let owner = agent.unwrap_or(session.wallet());
    let exists = existing
        .credentials
        .iter()
        .any(|c| &c.service == service && &c.agent == owner);
    Ok((!exists).then_some(known))
}

/// The binding the flags describe; `None` without `--host`.
pub fn binding_from_flags(f: &BindingFlags) -> CliResult<Option<Binding>> {
    if f.substitute_body {
        // Retired (issue 23): free-text body substitution let an agent read the key back.
        return Err(CliError::usage(
            "--substitute-body is retired: a placeholder replaced anywhere in the body let an \
             agent read the value back (through an endpoint that reverses or stores text)",
        )
        .hint("name the fields the value may be: --body-field /json/pointer or --body-field form:NAME"));
    }
    if f.host.is_empty() {
        return Ok(None);
    }
    let bad_inject = |how: &str| {
        CliError::usage(format!("'{how}' is not an injection")).hint(
            "use bearer, header:NAME[:PREFIX], basic-user, basic-password or \
             substitute[:HEADER,…]",
        )
    };
    let usage = |e: agentkeys_types::binding::BindingError| {
        CliError::usage(format!("binding: {e}")).hint("see 'agentkeys bind --help'")
    };
    let body_fields = f
        .body_field
        .iter()
        .map(|field| BodyField::parse(field))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let how = f.inject.as_deref().unwrap_or("substitute");
    let inject = match how {
        "bearer" => Inject::Bearer,
        "basic-user" => Inject::Basic {
            part: BasicPart::User,
        },
        "basic-password" => Inject::Basic {
            part: BasicPart::Password,
        },
        other => {
            if let Some(rest) = other.strip_prefix("header:") {
                let (name, prefix) = rest.split_once(':').unwrap_or((rest, ""));
                Inject::Header {
                    name: name.to_ascii_lowercase(),
                    prefix: prefix.to_owned(),
                }
            } else if let Some(names) = other
                .strip_prefix("substitute")
                .filter(|rest| rest.is_empty() || rest.starts_with(':'))
            {
                let headers = names
                    .trim_start_matches(':')
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect();
                Inject::Substitute {
                    headers: Some(headers),
                    query: f.substitute_query,
                    body_fields,
                    body: false,
                }
            } else {
                return Err(bad_inject(other));
            }
        }
    };
    if (f.substitute_query || !f.body_field.is_empty())
        && !matches!(inject, Inject::Substitute { .. })
    {
        return Err(CliError::usage(
            "--substitute-query and --body-field go with --inject substitute",
        )
        .hint("drop them, or use --inject substitute"));
    }
    let binding = Binding {
        hosts: f.host.iter().map(|h| h.to_ascii_lowercase()).collect(),
        methods: f.method.iter().map(|m| m.to_ascii_uppercase()).collect(),
        paths: f.path.clone(),
        inject,
        allow_http: f.allow_http,
        allow_private: f.allow_private,
        tunnel_unbound: f.tunnel_unbound,
    };
    binding.validate().map_err(|e| {
        let hint = if e.0.contains("names where") {
            "name them: --inject substitute:authorization (headers), --substitute-query, \
             --body-field /json/pointer or form:NAME; or use --inject bearer or header:NAME"
        } else {
            "see 'agentkeys bind --help'"
        };
        CliError::usage(format!("binding: {e}")).hint(hint)
    })?;
    Ok(Some(binding))
}

/// One line describing a binding: hosts, then the restrictions and the injection.
pub fn describe_binding(b: &Binding) -> String {
    let mut out = b.hosts.join(", ");
    if !b.methods.is_empty() {
        out.push_str(&format!("; methods {}", b.methods.join(", ")));
    }
    if !b.paths.is_empty() {
        out.push_str(&format!("; paths {}", b.paths.join(", ")));
    }
    let how = match &b.inject {
        Inject::Bearer => "Authorization: Bearer".to_owned(),
        Inject::Header { name, prefix } if prefix.is_empty() => format!("header {name}"),
        Inject::Header { name, prefix } => format!("header {name} ({prefix:?} + value)"),
        Inject::Basic { part } => format!(
            "basic auth {}",
            if *part == BasicPart::User {
                "user"
            } else {
                "password"
            }
        ),
        Inject::Substitute {
            headers,
            query,
            body_fields,
            body,
        } => {
            let mut at = Vec::new();
            match headers {
                None => at.push("any header".to_owned()),
                Some(h) if h.is_empty() => {}
                Some(h) => at.push(format!("headers {}", h.join(", "))),
            }
            if *query {
                at.push("the query".into());
            }
            if !body_fields.is_empty() {
                let fields: Vec<String> = body_fields.iter().map(ToString::to_string).collect();
                at.push(format!("body fields {}", fields.join(", ")));
            }
            if *body {
                at.push("anywhere in the body".into());
            }
            format!("placeholder replaced in {}", at.join("; "))
        }
    };
    out.push_str(&format!("; {how}"));
    if b.allow_http {
        out.push_str("; also over plain http");
    }
    if b.allow_private {
        out.push_str("; private addresses allowed");
    }
    if b.makes_egress_strict() {
        out.push_str("; runs using it refuse unbound hosts");
    } else if b.tunnel_unbound {
        out.push_str("; runs using it still tunnel unbound hosts");
    }
    out
}

/// `agentkeys bind`.
pub async fn bind(ctx: &Context, args: BindArgs) -> CliResult {
    let service = service_name(&args.service)?;
    let session = ctx.session()?;
    let owner = match session.resolve_optional(args.agent.as_deref()).await? {
        Some(w) => w,
        None => session.wallet().clone(),
    };
    let change = if args.remove {
        Some(None)
    } else if args.well_known {
        let known = well_known(service.as_str()).ok_or_else(|| {
            CliError::usage(format!("{service} is not a well-known service")).hint(format!(
                "the built-in ones: {}; or give --host",
                WELL_KNOWN.join(", ")
            ))
        })?;
        Some(Some(known))
    } else {
        binding_from_flags(&args.binding)?.map(Some)
    };
    let info = match change {
        Some(binding) => {
            session
                .backend
                .set_binding(&owner, &service, binding.as_ref())
                .await?
        }
        None => {
            let list = session.backend.list_credentials(Some(&owner)).await?;
            list.credentials
                .into_iter()
                .find(|c| c.service == service)
                .ok_or_else(|| {
                    CliError::new(
                        "NOT_FOUND",
                        exit::NOT_FOUND,
                        format!("no credential named {service} for {owner}"),
                    )
                    .hint("store it first with 'agentkeys store'")
                })?
        }
    };
    if ctx.json {
        return output::json(&json!({
            "agent": info.agent, "service": info.service, "binding": info.binding,
        }));
    }
    // A retired binding: what the proxy makes of it.
    match info
        .binding
        .as_ref()
        .map(|b| b.in_force(info.service.as_str()))
    {
        Some(Err(e)) => note(&format!("warning: {e}")),
        Some(Ok(Cow::Owned(today))) => note(&format!(
            "note: this binding was stored before bindings named their headers; the proxy \
             applies today's built-in in its place ({}); 'agentkeys bind {} --well-known' \
             stores it",
            describe_binding(&today),
            info.service
        )),
        _ => {}
    }
    output::line(&match &info.binding {
        Some(b) => format!(
            "{} of {}: {}",
            info.service,
            info.agent,
            describe_binding(b)
        ),
        None => format!(
            "{} of {} is not bound: the proxy injects it nowhere",
            info.service, info.agent
        ),
    })
}

/// `agentkeys read`.
pub async fn read(ctx: &Context, args: ReadArgs) -> CliResult {
    let ReadArgs {
        agent,
        service,
        wait,
    } = args;
    let service = service_name(&service)?;
    let session = ctx.session()?;
    let agent = session.resolve_optional(agent.as_deref()).await?;
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
pub async fn list(ctx: &Context, args: ListArgs) -> CliResult {
    let session = ctx.session()?;
    let agent = session.resolve_optional(args.agent.as_deref()).await?;
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
                c.binding
                    .as_ref()
                    .map_or_else(|| "-".into(), |b| b.hosts.join(",")),
                timestamp(c.updated_at),
            ]
        })
        .collect();
    output::table(
        &["SERVICE", "OWNER", "POLICY", "BOUND TO", "UPDATED"],
        &rows,
    )
}

/// `agentkeys policy`.
pub async fn policy(ctx: &Context, args: PolicyArgs) -> CliResult {
    // `--normal` is the absence of `--high-value`; the flag group makes one of them required.
    let PolicyArgs {
        agent,
        service,
        high_value,
        require_passkey,
        normal: _,
    } = args;
    let policy = Policy {
        high_value,
        require_passkey,
    };
    let service = service_name(&service)?;
    let session = ctx.session()?;
    let owner = match session.resolve_optional(agent.as_deref()).await? {
        Some(w) => w,
        None => session.wallet().clone(),
    };
    let info = session.backend.set_policy(&owner, &service, policy).await?;
    if ctx.json {
        return output::json(&json!({
            "agent": info.agent, "service": info.service, "policy": info.policy,
        }));
    }
    output::line(
        &match (info.policy.high_value, info.policy.require_passkey) {
            (true, true) => format!(
                "{} of {} is now high-value: every release needs your passkey on the approval page",
                info.service, info.agent
            ),
            (true, false) => format!(
                "{} of {} is now high-value: every release needs 'agentkeys approve'",
                info.service, info.agent
            ),
            _ => format!(
                "{} of {} is now normal: releases need no approval",
                info.service, info.agent
            ),
        },
    )
}
