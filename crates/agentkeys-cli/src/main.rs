//! The `agentkeys` binary: hardening, allocator, parsing, and rendering of errors. The logic
//! lives in the library (`agentkeys_cli::commands`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use agentkeys_cli::cli::Args;
use agentkeys_cli::error::{CliError, exit};

/// Every freed block is zeroized before mimalloc (built `secure`) reuses it: tokens and
/// credentials that passed through a heap buffer do not linger (platform-scouting 2(d)).
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<mimalloc::MiMalloc> =
    zeroizing_alloc::ZeroAlloc(mimalloc::MiMalloc);

fn main() -> ExitCode {
    // Before anything holds a secret: no core dumps, no same-uid ptrace or /proc/<pid>/mem.
    let hardening = agentkeys_secmem::harden::harden_cli();
    agentkeys_secmem::process::quiet_panics("agentkeys");
    let args = Args::parse_process();
    init_logging(args.verbose);
    if let Some(ca) = &args.ca {
        agentkeys_core::client::trust_ca(ca);
    }
    for c in &hardening.checks {
        if let agentkeys_secmem::harden::Status::Failed(why) = &c.status {
            tracing::warn!("hardening: {} failed: {why}", c.name);
        }
    }
    let json = args.json;
    if !agentkeys_cli::commands::needs_runtime(&args.command) {
        return match agentkeys_cli::commands::run_without_runtime(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => render(&e, json),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return render(
                &CliError::new("INTERNAL", exit::INTERNAL, e.to_string()),
                json,
            );
        }
    };
    match runtime.block_on(agentkeys_cli::commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => render(&e, json),
    }
}

fn render(e: &CliError, json: bool) -> ExitCode {
    if json {
        eprintln!("{}", e.to_json());
    } else {
        eprint!("{}", e.to_text());
    }
    ExitCode::from(e.exit)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "agentkeys=debug,agentkeys_core=debug,info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_heap_memory_is_zeroized() {
        agentkeys_testkit::assert_freed_heap_is_scrubbed();
    }
}
