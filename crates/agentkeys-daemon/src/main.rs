//! The `agentkeys-daemon` binary: hardening, allocator, logging, parsing; the logic lives
//! in the library (`agentkeys_daemon::run`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use agentkeys_daemon::cli::Args;
use clap::Parser as _;

/// Freed blocks are zeroized before reuse (platform-scouting 2(d)): the String a
/// delivered credential passes through inside rmcp is scrubbed when freed.
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<mimalloc::MiMalloc> =
    zeroizing_alloc::ZeroAlloc(mimalloc::MiMalloc);

fn main() -> ExitCode {
    let hardening = agentkeys_secmem::process::disable_core_dumps();
    agentkeys_secmem::process::quiet_panics("agentkeys-daemon");
    let args = Args::parse();
    // rmcp logs whole responses at debug level; a response can carry a credential, so its
    // target is capped at warn whatever -v says.
    let level = match args.verbose {
        0 => "warn,rmcp=warn",
        1 => "info,agentkeys_daemon=debug,rmcp=warn",
        _ => "debug,rmcp=warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_target(false)
        .init();
    if let Err(e) = hardening {
        tracing::warn!(error = %e, "could not make the process non-dumpable");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: INTERNAL: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(agentkeys_daemon::run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", e.to_text());
            ExitCode::from(e.exit)
        }
    }
}
