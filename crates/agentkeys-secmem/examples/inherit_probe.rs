//! A single-threaded probe for `SecretPage::take_inherited`, which refuses to run while
//! other threads exist (the test harness has several): the page tests start it with a
//! scenario and read one line of JSON.
//!
//! - `foreign <fd>`: the variable names a descriptor that is no secret file (the test's
//!   shell opened it); it must be refused and left open.
//! - `own`: the variable names this process's own `memfd_secret` page (close-on-exec); it
//!   must be refused, and the page must keep working.
//! - `take`: the variable names a secret file this process was started with.

use std::os::fd::AsRawFd as _;

use agentkeys_secmem::SecretPage;

const VAR: &str = "AGENTKEYS_FD_PROBE";

fn fd_open(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let outcome = match args.get(1).map(String::as_str) {
        Some("foreign") => {
            let fd: i32 = args[2].parse().expect("fd");
            let taken = SecretPage::take_inherited(VAR);
            serde_like(&[
                ("refused", taken.is_err().to_string()),
                ("still_open", fd_open(fd).to_string()),
                ("variable_left", std::env::var_os(VAR).is_some().to_string()),
            ])
        }
        Some("own") => {
            let mut page = SecretPage::new(16).expect("page");
            page.expose_secret_mut()[0] = 42;
            let fd = page.fd().expect("an fd page").as_raw_fd();
            // SAFETY: this probe has one thread (asserted by take_inherited itself below).
            unsafe { std::env::set_var(VAR, format!("{fd}:16")) };
            let taken = SecretPage::take_inherited(VAR);
            serde_like(&[
                ("refused", taken.is_err().to_string()),
                ("still_open", fd_open(fd).to_string()),
                ("page_works", (page.expose_secret()[0] == 42).to_string()),
            ])
        }
        Some("take") => {
            let taken = SecretPage::take_inherited(VAR)
                .expect("taken")
                .expect("set");
            let again = SecretPage::take_inherited(VAR).expect("no error");
            serde_like(&[
                (
                    "bytes",
                    String::from_utf8_lossy(taken.expose_secret()).into_owned(),
                ),
                ("variable_left", std::env::var_os(VAR).is_some().to_string()),
                ("second_take", again.is_some().to_string()),
            ])
        }
        _ => "usage: inherit_probe foreign FD | own | take".to_owned(),
    };
    println!("{outcome}");
}

/// `{"key": "value", …}` without a JSON dependency.
fn serde_like(pairs: &[(&str, String)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!("{{{}}}", body.join(", "))
}
