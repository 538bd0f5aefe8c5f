//! `agentkeys-daemon`: lives in the agent's sandbox, holds the agent's session, and serves
//! credentials over MCP on a Unix socket (decisions 71, 73, 74, 77).
//!
//! A tour, start here. Each layer uses only those below it:
//! - `run.rs` — the subcommands wired: `serve` binds the socket, gets a session, serves
//!   until SIGTERM and wipes; `status`, `audit`, `mcp`.
//! - `listener.rs` — the socket: private directory, stale-socket handling, `SO_PEERCRED`;
//!   each connection gets a transport and an MCP handler.
//! - `transport.rs` — newline-delimited JSON-RPC as an rmcp transport: line limits, bad
//!   input, rate limits, our `agentkeys/…` methods dispatched, fds passed.
//! - `service.rs` — the MCP tools.
//! - `runner.rs` — daemon-mediated `run`: environment built in a secret page, fork/exec,
//!   exit and signal forwarding, captured and redacted output for the MCP tool.
//! - `proxy/` — the egress proxy of `run --proxy` and `agentkeys proxy-env`: the agent
//!   holds a placeholder, the proxy injects the value toward bound hosts only (its
//!   `mod.rs` has its own tour).
//! - `daemon.rs` — the session and shared state: fetch (cache, idle eviction), drop or
//!   hand-off after delivery, revocation (what else must stop registers a hook, and
//!   `subscribe` tells value holders that something changed).
//! - `pairing.rs` — a stored session, or pair / recover with a code and OTP the master
//!   approves; the session arrives sealed to a fresh key and signed by the pinned server.
//! - Leaves, using nothing above: `process_group.rs` — the `run` children's process groups
//!   and signalling them; `line_writer.rs` — JSON-RPC lines written from zeroized buffers;
//!   `credential_var.rs` — the variable a credential takes in a child; `config.rs` — the
//!   TOML configuration file; `trail.rs` — the hash-chained JSONL audit trail;
//!   `error.rs` — the crate's error; `cli.rs` — the command line; `bridge.rs` — stdio ↔
//!   socket.

#![forbid(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod config;
pub mod credential_var;
pub mod daemon;
pub mod error;
pub mod line_writer;
pub mod listener;
pub mod pairing;
pub mod process_group;
pub mod proxy;
pub mod run;
pub mod runner;
pub mod service;
pub mod trail;
pub mod transport;

/// A hardening report as JSON: `[{name, status, reason?, detail}]`.
pub fn report_json(report: &agentkeys_secmem::harden::HardeningReport) -> serde_json::Value {
    report
        .checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "status": c.status.name(),
                "reason": c.status.reason(),
                "detail": c.detail,
            })
        })
        .collect()
}

/// Trailing slashes off a server URL.
pub fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}
