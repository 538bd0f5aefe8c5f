//! `agentkeys-daemon`: lives in the agent's sandbox, holds the agent's session, and serves
//! credentials over MCP on a Unix socket (DESIGN decisions 4, 6, 7, 10).
//!
//! A tour, start here:
//! - `run.rs` — the subcommands wired: `serve` binds the socket, gets a session, serves
//!   until SIGTERM and wipes; `status`, `audit`, `mcp`.
//! - `pairing.rs` — a stored session, or pair / recover with a code and OTP the master
//!   approves; the session arrives sealed to a fresh key and signed by the pinned server.
//! - `listener.rs` — the socket: private directory, stale-socket handling, `SO_PEERCRED`.
//! - `transport.rs` — newline-delimited JSON-RPC as an rmcp transport: line limits, bad
//!   input, rate limits, our `agentkeys/…` methods, zeroized write buffers.
//! - `service.rs` — the MCP tools; `daemon.rs` — shared state, fetch (cache, idle
//!   eviction), drop or hand-off after delivery, revocation.
//! - `runner.rs` — daemon-mediated `run`: environment built in a secret page, fork/exec,
//!   exit and signal forwarding, captured and redacted output for the MCP tool.
//! - `config.rs` — the TOML configuration file.
//! - `trail.rs` — the hash-chained JSONL audit trail; `bridge.rs` — stdio ↔ socket.

#![forbid(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod listener;
pub mod pairing;
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
