//! The `agentkeys` binary: hardening, allocator, parsing, and rendering of errors. The logic
//! lives in the library (`agentkeys_cli::commands`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use agentkeys_cli::cli::Args;
use agentkeys_cli::error::{CliError, exit};
use clap::Parser as _;

/// Every freed block is zeroized before mimalloc (built `secure`) reuses it: tokens and
/// credentials that passed through a heap buffer do not linger (platform-scouting 2(d)).
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<mimalloc::MiMalloc> =
    zeroizing_alloc::ZeroAlloc(mimalloc::MiMalloc);

fn main() -> ExitCode {
    // Before anything holds a secret: no core dumps, no same-uid ptrace or /proc/<pid>/mem.
    let hardening = agentkeys_secmem::harden::harden_cli();
    agentkeys_secmem::process::quiet_panics("agentkeys");
    let args = Args::parse();
    init_logging(args.verbose);
    for c in &hardening.checks {
        if let agentkeys_secmem::harden::Status::Failed(why) = &c.status {
            tracing::warn!("hardening: {} failed: {why}", c.name);
        }
    }
    let json = args.json;
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
    use std::os::unix::fs::FileExt as _;

    /// The global allocator above is this test binary's allocator too: a freed block that
    /// held a canary reads back as zeros through /proc/self/mem, except the first 8 bytes,
    /// where mimalloc writes its (encoded) free-list link after the wipe.
    #[test]
    fn freed_heap_memory_is_zeroized() {
        // The probe buffer is allocated before the free, so it cannot be the freed block.
        let mut probe = vec![0u8; 256];
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let canary: Vec<u8> = (0..256u32).map(|i| b'A' + (i % 26) as u8).collect();
        let addr = canary.as_ptr() as u64;
        mem.read_exact_at(&mut probe, addr).unwrap();
        assert_eq!(probe, canary, "the probe reads the live block");
        drop(canary);
        mem.read_exact_at(&mut probe, addr).unwrap();
        let left = probe[8..].iter().filter(|&&b| b != 0).count();
        assert_eq!(
            left, 0,
            "{left} of the 248 freed bytes after the link still hold data"
        );
        let expected: Vec<u8> = (0..8u32).map(|i| b'A' + (i % 26) as u8).collect();
        assert_ne!(
            &probe[..8],
            &expected[..],
            "the first 8 bytes were not overwritten"
        );
    }
}
