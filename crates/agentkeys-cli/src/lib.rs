//! `agentkeys`, the master's command line (DESIGN "Actors and binaries").
//!
//! A tour, start here:
//! - `cli.rs` — the clap definition: every flag, subcommand, example and the exit-code table.
//! - [`commands`] — one module per group of subcommands (`session`: init/whoami/revoke/
//!   recover; `credentials`: store/read/list/policy; `agents`: agents/scope/teardown/link;
//!   `approve`; `usage`), dispatched by [`commands::run()`].
//! - `context.rs` — the home directory, the session store (DESIGN decision 12) and the
//!   rule that a token is only ever sent to the server that minted it.
//! - `secret_io.rs` — values in (stdin, hidden prompt, env, file) straight into secret pages;
//!   credentials out to stdout straight from them.
//! - `error.rs` — [`error::CliError`]: code, message, hint, exit status.
//! - `output.rs` — timestamps, durations, tables, JSON.
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
