//! One module per group of subcommands; [`run`] dispatches the parsed command line.

pub mod agents;
pub mod approve;
pub mod credentials;
pub mod session;
pub mod usage;

use clap::CommandFactory as _;

use crate::cli::{Args, Command};
use crate::context::Context;
use crate::error::CliResult;

/// Runs one command line to completion.
pub async fn run(args: Args) -> CliResult {
    if let Command::Completions { shell } = args.command {
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "agentkeys",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let ctx = Context::new(args.server, args.json)?;
    match args.command {
        Command::Init { auth_token, force } => session::init(&ctx, auth_token, force).await,
        Command::Whoami => session::whoami(&ctx).await,
        Command::Store {
            agent,
            service,
            high_value,
            from_env,
            from_file,
            stray,
        } => {
            credentials::store(
                &ctx,
                credentials::StoreArgs {
                    agent,
                    service,
                    high_value,
                    from_env,
                    from_file,
                    stray,
                },
            )
            .await
        }
        Command::Read {
            agent,
            service,
            wait,
        } => credentials::read(&ctx, agent.as_deref(), &service, wait).await,
        Command::List { agent } => credentials::list(&ctx, agent.as_deref()).await,
        Command::Agents => agents::agents(&ctx).await,
        Command::Scope {
            agent,
            add,
            remove,
            set,
            read_only,
            read_write,
        } => {
            let change = agents::ScopeChange {
                add,
                remove,
                set,
                read_only,
                read_write,
            };
            agents::scope(&ctx, &agent, change).await
        }
        Command::Policy {
            agent,
            service,
            high_value,
            normal: _,
        } => credentials::policy(&ctx, agent.as_deref(), &service, high_value).await,
        Command::Revoke { wallet } => session::revoke(&ctx, wallet).await,
        Command::Teardown { wallet, yes } => agents::teardown(&ctx, &wallet, yes).await,
        Command::Link {
            wallet,
            alias,
            email,
        } => agents::link(&ctx, &wallet, alias, email).await,
        Command::Usage {
            agent,
            service,
            since,
            limit,
            verify,
        } => {
            let args = usage::UsageArgs {
                agent,
                service,
                since,
                limit,
                verify,
            };
            usage::usage(&ctx, args).await
        }
        Command::Approve {
            code,
            scope,
            read_only,
            yes,
            deny,
        } => {
            let args = approve::ApproveArgs {
                code,
                scope,
                read_only,
                yes,
                deny,
            };
            approve::approve(&ctx, args).await
        }
        Command::Recover {
            identity,
            wait,
            force,
        } => session::recover(&ctx, &identity, wait, force).await,
        Command::Completions { .. } => Ok(()),
    }
}
