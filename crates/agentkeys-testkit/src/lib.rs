//! Fixtures shared by every end-to-end test and the bench: the real binaries, started the
//! way a person starts them, each test in its own directories. Start here:
//!
//! - [`bins`]: where the binaries are ([`Bins`]: next to a test's binary, or a bench's
//!   `target/release`).
//! - [`server`]: an `agentkeys-server` process on a free port ([`Server`]).
//! - [`master`]: a CLI home bound to a server, enrolled or not ([`Master`]: `cli`, `store`,
//!   `approve`, `read`).
//! - [`daemon`]: `agentkeys-daemon serve`, spawned (under a wrapper if asked) and paired by a
//!   master's approval ([`Daemon`], [`paired`], [`paired_configured`]).
//! - [`mcp`]: the line client on the daemon's socket ([`Client`]).
//! - [`trail`]: the daemon's audit trail, read whole lines at a time.
//! - [`pairing`]: enrolment and the daemon's side of pairing through the library, for suites
//!   that play a side themselves.
//! - [`temp`]: a directory per test, removed on drop ([`TempDir`]).
//! - [`machine`]: the visible skips where this machine lacks a feature.
//! - [`memory`]: the "no readable copy" assertions.
//!
//! A test reads like this:
//!
//! ```no_run
//! use agentkeys_testkit::{Bins, Master, paired};
//! let server = Bins::next_to("target/debug/agentkeys-daemon").server(&[]);
//! let master = Master::new(&server);
//! let home = agentkeys_testkit::TempDir::new("agentkeys-test-daemon");
//! let (daemon, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
//! master.store("openai", "sk-…", &["--agent", &wallet]);
//! let (is_error, value) = daemon.client().tool("get_credential", serde_json::json!({"service": "openai"}));
//! ```

#![forbid(unsafe_code)]

pub mod bins;
pub mod daemon;
pub mod machine;
pub mod master;
pub mod mcp;
pub mod memory;
pub mod pairing;
pub mod server;
pub mod temp;
pub mod trail;

pub use bins::Bins;
pub use daemon::{Daemon, DaemonCommand, paired, paired_configured, paired_with, write_config};
pub use master::{Master, text};
pub use mcp::Client;
pub use memory::{
    assert_freed_heap_is_scrubbed, assert_no_readable_copy, assert_no_readable_copy_but,
};
pub use server::{Server, ServerCommand};
pub use temp::TempDir;
pub use trail::{first_child_pid, trail_lines, wait_for_events};

/// A random credential value, unique per call, for leak checks.
pub fn canary(tag: &str) -> String {
    let r: [u8; 8] = agentkeys_core::crypto::random_array();
    format!("sk-{tag}-canary-{}", agentkeys_core::hex(&r))
}

/// Runs a future on a fresh single-thread runtime (library calls from synchronous tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}
