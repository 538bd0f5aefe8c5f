//! Machine features the tests depend on, each decided by calling it (never by reading CPU
//! flags or kernel versions): where one is missing, the test prints a visible `skipped:`
//! line on the real stderr (which `cargo test` does not capture) and asserts the fallback.

use std::io::Write as _;

/// Prints `skipped: <why> [<test>]` where `cargo test` cannot hide it.
pub fn skipped(test: &str, why: &str) {
    let line = format!("skipped: {why} [{test}]\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Whether the kernel gives `memfd_secret` pages; prints the skip line for `test` when not.
pub fn memfd_secret(test: &str) -> bool {
    match agentkeys_secmem::memfd_secret_available() {
        Ok(()) => true,
        Err(why) => {
            skipped(test, &format!("no memfd_secret on this kernel ({why})"));
            false
        }
    }
}

/// The kind name (`memfd_secret`, else `sealed_memfd`) of the strongest fd-capable secret
/// page here: what delivery, `run --fd` and the cache report.
pub fn best_page_kind(test: &str) -> &'static str {
    if memfd_secret(test) {
        "memfd_secret"
    } else {
        "sealed_memfd"
    }
}

/// Whether memory protection keys work here (`pkey_alloc`); prints the skip line when not.
pub fn protection_keys(test: &str) -> bool {
    match agentkeys_secmem::pkey::available() {
        Ok(()) => true,
        Err(why) => {
            skipped(test, &format!("no protection keys on this machine ({why})"));
            false
        }
    }
}
