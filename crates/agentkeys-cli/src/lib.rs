//! `agentkeys`, the master's command line (its user guide: docs/cli.md).
//!
//! A tour, start here:
//! - `cli.rs` — the top of the command line: the global flags, the list of subcommands with
//!   their help text and examples, the exit-code table, and the clap-free reader of a plain
//!   `agentkeys run` line.
//! - [`commands`] — one module per group of subcommands, each holding its flags (clap
//!   structs) next to the code that runs them, dispatched by [`commands::run()`]:
//!   - `session` — init, whoami, revoke, recover;
//!   - `credentials` — store, read, list, policy, bind (their flags in `credentials/args.rs`);
//!   - `agents` — agents, scope, teardown, link;
//!   - `approve` — approve, approvals;
//!   - `passkey` — passkey add/list/remove;
//!   - `watch` — following the inbox and notifying a person;
//!   - `usage` — the audit trail and its verification;
//!   - `run` — run and proxy-env, through the local daemon;
//!   - `doctor` — the machine check;
//!   - `completions` — shell completion scripts.
//! - `context.rs` — the home directory, the session store (decision 79 in
//!   docs/architecture.md) and the rule that a token is only ever sent to the server that minted it.
//! - `secret_io.rs` — values in (stdin, hidden prompt, env, file) straight into secret pages;
//!   credentials out to stdout straight from them.
//! - `error.rs` — [`error::CliError`]: code, message, hint, exit status.
//! - `output.rs` — timestamps, durations, tables, JSON.
//!
//! The binary (`main.rs`) only hardens the process, parses, runs and renders errors.
//!
//! Hygiene (issue "master CLI"): `main` makes the process non-dumpable with a core limit of
//! 0 before anything else, and the global allocator zeroizes every freed block.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod context;
pub mod error;
pub mod output;
pub mod secret_io;
