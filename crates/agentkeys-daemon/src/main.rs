//! The `agentkeys-daemon` binary: hardening, allocator, logging, parsing; the logic lives
//! in the library (`agentkeys_daemon::run`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use agentkeys_daemon::cli::{Args, Command, ServeArgs};
use agentkeys_daemon::config::Config;
use agentkeys_secmem::harden::{DaemonPolicy, HardeningReport, Status, harden_daemon};
use clap::Parser as _;

/// Freed blocks are zeroized before reuse (platform-scouting 2(d)): the String a
/// delivered credential passes through inside rmcp is scrubbed when freed.
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<mimalloc::MiMalloc> =
    zeroizing_alloc::ZeroAlloc(mimalloc::MiMalloc);

fn main() -> ExitCode {
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
    // Before any thread exists: the seccomp filter and the dropped capabilities then bind
    // every thread the runtime starts (the filter is applied with TSYNC anyway).
    // `serve`'s configuration decides which capabilities stay, so it is read first (once).
    let config = match &args.command {
        Some(Command::Serve(serve)) if !args.check => {
            match agentkeys_daemon::run::serve_config(serve) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprint!("{}", e.to_text());
                    return ExitCode::from(e.exit);
                }
            }
        }
        _ => None,
    };
    let report = match (&args.command, &config) {
        _ if args.check => Some(harden_daemon(&DaemonPolicy::default())),
        (Some(Command::Serve(serve)), Some(config)) => Some(harden_daemon(&policy(serve, config))),
        _ => {
            if let Err(e) = agentkeys_secmem::process::disable_core_dumps() {
                tracing::warn!(error = %e, "could not make the process non-dumpable");
            }
            None
        }
    };
    if args.check {
        return check(report.unwrap_or_default(), args.json);
    }
    if let Some(report) = &report {
        for c in &report.checks {
            match &c.status {
                Status::Ok => tracing::info!("hardening: {} ok: {}", c.name, c.detail),
                Status::Degraded(why) => tracing::warn!("hardening: {} degraded: {why}", c.name),
                Status::Failed(why) => {
                    eprintln!("error: HARDENING: {}: {why}", c.name);
                    eprintln!("hint: 'agentkeys-daemon --check' shows every item");
                    return ExitCode::from(1);
                }
            }
        }
    }
    // One worker: a request, its rmcp task and its response then never cross threads, and
    // each crossing was a futex wake-up (a tenth of the daemon's CPU per cached get).
    // Interleaved against two workers, held gets were 5–13% faster. Blocking work (a
    // `run` child's clone) goes to the blocking pool as before.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: INTERNAL: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(agentkeys_daemon::run::run(
        args,
        report.unwrap_or_default(),
        config,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", e.to_text());
            ExitCode::from(e.exit)
        }
    }
}

/// What `serve`'s flags relax. A daemon that lets other uids connect, and is root or was
/// given `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL`, keeps those three to start their `run`
/// commands under their own uid and to stop them.
fn policy(serve: &ServeArgs, config: &Config) -> DaemonPolicy {
    DaemonPolicy {
        allow_debugger: serve.allow_debugger,
        require_ptrace_scope: serve.require_ptrace_scope,
        keep_setid: !config.allow_uids.is_empty() && agentkeys_secmem::harden::may_run_as_others(),
    }
}

/// `--check`: the report, and exit 1 if an item failed.
fn check(report: HardeningReport, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&agentkeys_daemon::report_json(&report))
                .unwrap_or_default()
        );
    } else {
        print!("{report}");
    }
    if report.failure().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    /// This binary's global allocator (above) scrubs what it frees.
    #[test]
    fn freed_heap_memory_is_zeroized() {
        agentkeys_testkit::assert_freed_heap_is_scrubbed();
    }
}
