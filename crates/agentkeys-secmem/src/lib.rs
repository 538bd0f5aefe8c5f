//! Secret memory for agentkeys: self-wiping secret types and locked secret pages.
//!
//! This is the only crate in the workspace that contains `unsafe` code, and all of it sits in
//! `sys.rs` (private), one operation per block, each with a `// SAFETY:` argument; the other
//! modules are `#![forbid(unsafe_code)]`.
//!
//! A tour, start here:
//!
//! - `bytes.rs` — [`SecretBytes`] and [`SecretString`]: small heap secrets (session tokens,
//!   keys). Fixed size, never reallocated, zeroized on drop, `Debug` prints `[REDACTED]`,
//!   constant-time equality, left only through `expose_secret()`.
//! - `page.rs` — [`SecretPage`]: page-backed buffers for credential plaintext, backed by
//!   `memfd_secret` where the kernel has it, else a sealed locked memfd, else locked anonymous
//!   memory ([`SecretPageKind`]). Wiped, unlocked and unmapped on drop; the fd kinds can be
//!   handed to another process over `SCM_RIGHTS` (decision 75).
//! - `launch.rs` — starting a program whose environment (or inherited fds) carry credentials,
//!   built in a secret page and wiped as soon as `execve` has copied it (decision 76);
//!   with the `tokio` feature, a child's pidfd registered with the runtime to await its exit.
//! - `harden.rs` — the start-up hardening of the daemon and the CLI, as a report of
//!   `ok` / `degraded` / `failed` items (no dumps, no_new_privs, debugger and Yama checks,
//!   capabilities, seccomp, protection keys).
//! - `stack.rs` — scrubbing the dead stack frames below a key operation, where moved
//!   copies of a key schedule would otherwise stay.
//! - `pkey.rs` — [`pkey::ProtectedPage`]: a secret page no thread can touch outside a short
//!   window on the reading thread (memory protection keys).
//! - `process.rs` — process-wide protections every binary applies at start (no core dumps,
//!   not dumpable) and the keyring session fix-up.
//! - `sys.rs` — the raw syscalls (`memfd_secret`, `mmap`, `mlock`, `madvise`, `munmap`) behind
//!   small safe wrappers that only ever touch memory they mapped themselves.
//!
//! Why it matters: the project's first concern is where plaintext lives and for how long. Every
//! claim made here (redaction, wipe on drop, unreadable `memfd_secret` pages) has a test at the
//! bottom of the file that makes it, inspecting real memory.

mod bytes;
pub mod harden;
pub mod launch;
mod page;
pub mod pkey;
pub mod process;
pub mod stack;
mod sys;

pub use bytes::{SecretBytes, SecretString};
pub use page::{SecretPage, SecretPageKind, memfd_secret_available};

/// Test-only: says on the real stderr (which `cargo test` does not capture) that a test
/// checked the fallback instead of a feature this machine lacks, so nothing passes silently.
#[cfg(test)]
pub(crate) fn skipped(test: &str, why: &str) {
    use std::io::Write as _;
    let line = format!("skipped: {why} [{test}]\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
