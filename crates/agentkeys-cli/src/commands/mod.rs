//! One module per group of subcommands, each holding its subcommands' flags (the clap
//! structs) and the code that runs them; [`run()`] dispatches the parsed command line.

pub mod agents;
pub mod approve;
pub mod completions;
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
        Command::Run(_) | Command::ProxyEnv(_) | Command::Completions(_)
    )
}

/// Runs a command line for which [`needs_runtime`] is false (others end in `INTERNAL`).
pub fn run_without_runtime(args: Args) -> CliResult {
    match args.command {
        Command::Completions(a) => completions::completions(a, Args::command()),
        Command::Run(a) => run::run(a),
        Command::ProxyEnv(a) => run::proxy_env(a, args.json),
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
        Command::Init(a) => session::init(&ctx, a).await,
        Command::Whoami => session::whoami(&ctx).await,
        Command::Doctor => doctor::doctor(&ctx).await,
        Command::Store(a) => credentials::store(&ctx, a).await,
        Command::Bind(a) => credentials::bind(&ctx, a).await,
        Command::Read(a) => credentials::read(&ctx, a).await,
        Command::List(a) => credentials::list(&ctx, a).await,
        Command::Agents => agents::agents(&ctx).await,
        Command::Scope(a) => agents::scope(&ctx, a).await,
        Command::Policy(a) => credentials::policy(&ctx, a).await,
        Command::Revoke(a) => session::revoke(&ctx, a).await,
        Command::Teardown(a) => agents::teardown(&ctx, a).await,
        Command::Link(a) => agents::link(&ctx, a).await,
        Command::Usage(a) => usage::usage(&ctx, a).await,
        Command::Approve(a) => approve::approve(&ctx, a).await,
        Command::Watch(a) => watch::watch(&ctx, a).await,
        Command::Approvals(a) => approve::approvals(&ctx, a).await,
        Command::Passkey(a) => passkey::passkey(&ctx, a).await,
        Command::Recover(a) => session::recover(&ctx, a).await,
        Command::Completions(_) | Command::Run(_) | Command::ProxyEnv(_) => Ok(()),
    }
}
