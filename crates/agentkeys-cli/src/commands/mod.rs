//! One module per group of subcommands; [`run()`] dispatches the parsed command line.

pub mod agents;
pub mod approve;
pub mod credentials;
pub mod doctor;
pub mod passkey;
pub mod run;
pub mod session;
pub mod usage;
pub mod watch;

use clap::CommandFactory as _;

use crate::cli::{Args, Command};
use crate::context::Context;
use crate::error::CliResult;

/// Whether `command` needs an async runtime. `run`, `proxy-env` and `completions` do not:
/// they only talk to the local daemon, or to nobody, and `agentkeys run` starts for every
/// command an agent runs, so it does not pay for a runtime it would not use.
pub fn needs_runtime(command: &Command) -> bool {
    !matches!(
        command,
        Command::Run(_) | Command::ProxyEnv { .. } | Command::Completions { .. }
    )
}

/// Runs a command line for which [`needs_runtime`] is false (others end in `INTERNAL`).
pub fn run_without_runtime(args: Args) -> CliResult {
    match args.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "agentkeys",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Run(a) => run::run(a),
        Command::ProxyEnv { services, socket } => run::proxy_env(&services, socket, args.json),
        _ => Err(crate::error::CliError::new(
            "INTERNAL",
            crate::error::exit::INTERNAL,
            "this command needs the async runtime",
        )),
    }
}

/// Runs one command line to completion.
pub async fn run(args: Args) -> CliResult {
    if !needs_runtime(&args.command) {
        return run_without_runtime(args);
    }
    let ctx = Context::new(args.server, args.json)?;
    match args.command {
        Command::Init { auth_token, force } => session::init(&ctx, auth_token, force).await,
        Command::Whoami => session::whoami(&ctx).await,
        Command::Doctor => doctor::doctor(&ctx).await,
        Command::Store(a) => credentials::store(&ctx, a).await,
        Command::Bind(a) => credentials::bind(&ctx, a).await,
        Command::Read {
            agent,
            service,
            wait,
        } => credentials::read(&ctx, agent.as_deref(), &service, wait).await,
        Command::List { agent } => credentials::list(&ctx, agent.as_deref()).await,
        Command::Agents => agents::agents(&ctx).await,
        Command::Scope(a) => agents::scope(&ctx, a).await,
        Command::Policy {
            agent,
            service,
            high_value,
            require_passkey,
            normal: _,
        } => {
            let policy = agentkeys_types::api::Policy {
                high_value,
                require_passkey,
            };
            credentials::policy(&ctx, agent.as_deref(), &service, policy).await
        }
        Command::Revoke { wallet } => session::revoke(&ctx, wallet).await,
        Command::Teardown { wallet, yes } => agents::teardown(&ctx, &wallet, yes).await,
        Command::Link {
            wallet,
            alias,
            email,
        } => agents::link(&ctx, &wallet, alias, email).await,
        Command::Usage(a) => usage::usage(&ctx, a).await,
        Command::Approve(a) => approve::approve(&ctx, a).await,
        Command::Watch(a) => watch::watch(&ctx, a).await,
        Command::Approvals { action } => approve::approvals(&ctx, action).await,
        Command::Passkey { action } => passkey::passkey(&ctx, action).await,
        Command::Recover {
            identity,
            parent,
            wait,
            force,
        } => session::recover(&ctx, &identity, parent.as_deref(), wait, force).await,
        Command::Completions { .. } | Command::Run(_) | Command::ProxyEnv { .. } => Ok(()),
    }
}
