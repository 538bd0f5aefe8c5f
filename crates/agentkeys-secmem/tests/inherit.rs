//! `SecretPage::take_inherited` across a real `execve`, in a single-threaded process: the
//! function refuses to run while other threads exist, so this test has no harness (no
//! libtest threads). Run without arguments it is the driver: it starts itself through
//! `sh -c SCRIPT` (the shell sets up the inherited descriptors) with one scenario each and
//! checks the one line of JSON the probe prints. `cargo test -p agentkeys-secmem` runs it;
//! it needs no other binary.
//!
//! Scenarios (the probe's first argument):
//! - `foreign FD`: the variable names a descriptor that is no secret file (the shell opened
//!   it); refused and left open.
//! - `own`: the variable names this process's own `memfd_secret` page (close-on-exec),
//!   set after start; refused, and the page keeps working.
//! - `own-inheritable`: the variable names a descriptor this process opened *without*
//!   close-on-exec (a `dup` of its own page, set after start); refused and left open, since
//!   code of this process owns it (review finding F6).
//! - `take`: the variable names a secret file this process was started with; taken once.

use std::os::fd::{AsRawFd as _, IntoRawFd as _};
use std::process::Command;

use agentkeys_secmem::{SecretPage, SecretPageKind};

const VAR: &str = "AGENTKEYS_FD_PROBE";

fn fd_open(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok()
}

/// `{"key": "value", …}` without a JSON dependency.
fn json_like(pairs: &[(&str, String)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// The probe side: one scenario, one line.
fn probe(args: &[String]) -> String {
    match args.first().map(String::as_str) {
        Some("foreign") => {
            let fd: i32 = args[1].parse().expect("fd");
            let taken = SecretPage::take_inherited(VAR);
            json_like(&[
                ("refused", taken.is_err().to_string()),
                ("still_open", fd_open(fd).to_string()),
                ("variable_left", std::env::var_os(VAR).is_some().to_string()),
            ])
        }
        Some("own") => {
            let mut page = SecretPage::new(16).expect("page");
            page.expose_secret_mut()[0] = 42;
            let fd = page.fd().expect("an fd page").as_raw_fd();
            // SAFETY: the probe runs one thread (this test has no harness).
            unsafe { std::env::set_var(VAR, format!("{fd}:16")) };
            let taken = SecretPage::take_inherited(VAR);
            json_like(&[
                ("refused", taken.is_err().to_string()),
                ("still_open", fd_open(fd).to_string()),
                ("page_works", (page.expose_secret()[0] == 42).to_string()),
            ])
        }
        Some("own-inheritable") => {
            let mut page = SecretPage::with_kind(16, SecretPageKind::SealedMemfd).expect("page");
            page.expose_secret_mut()[0] = 42;
            // `dup` gives a descriptor without close-on-exec: it looks inherited, but this
            // process made it and owns it.
            let dup = rustix::io::dup(page.fd().expect("an fd page"))
                .expect("dup")
                .into_raw_fd();
            // SAFETY: the probe runs one thread (this test has no harness).
            unsafe { std::env::set_var(VAR, format!("{dup}:16")) };
            let taken = SecretPage::take_inherited(VAR);
            json_like(&[
                ("refused", taken.is_err().to_string()),
                ("still_open", fd_open(dup).to_string()),
                ("page_works", (page.expose_secret()[0] == 42).to_string()),
            ])
        }
        Some("take") => {
            let taken = SecretPage::take_inherited(VAR)
                .expect("taken")
                .expect("set");
            let again = SecretPage::take_inherited(VAR).expect("no error");
            json_like(&[
                (
                    "bytes",
                    String::from_utf8_lossy(taken.expose_secret()).into_owned(),
                ),
                ("variable_left", std::env::var_os(VAR).is_some().to_string()),
                ("second_take", again.is_some().to_string()),
            ])
        }
        _ => "usage: inherit foreign FD | own | own-inheritable | take".to_owned(),
    }
}

/// Runs this binary as the probe through `sh -c script` and returns its line.
fn run_probe(script: &str, var: Option<&str>) -> String {
    let exe = std::env::current_exe().expect("this test binary");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).env("PROBE", &exe);
    match var {
        Some(v) => cmd.env(VAR, v),
        None => cmd.env_remove(VAR),
    };
    let out = cmd.output().expect("run the probe");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn check(name: &str, got: &str, want: &str) {
    assert_eq!(got, want, "{name}");
    println!("test inherit::{name} ... ok");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--probe") {
        println!("{}", probe(&args[1..]));
        return;
    }
    // libtest-style filters and flags (`cargo test NAME`, `--nocapture`) are accepted and
    // ignored: the scenarios are one test.
    check(
        "a_descriptor_that_is_no_secret_file_is_refused_and_left_open",
        &run_probe(
            "exec 7</etc/hostname; exec \"$PROBE\" --probe foreign 7",
            Some("7:1"),
        ),
        r#"{"refused": "true", "still_open": "true", "variable_left": "false"}"#,
    );
    check(
        "the_processs_own_close_on_exec_page_is_refused",
        &run_probe("exec \"$PROBE\" --probe own", None),
        r#"{"refused": "true", "still_open": "true", "page_works": "true"}"#,
    );
    check(
        "a_descriptor_this_process_opened_without_close_on_exec_is_never_adopted",
        &run_probe("exec \"$PROBE\" --probe own-inheritable", None),
        r#"{"refused": "true", "still_open": "true", "page_works": "true"}"#,
    );
    // A sealed memfd handed over across exec: taken once, and the variable is gone.
    let mut page = SecretPage::with_kind(5, SecretPageKind::SealedMemfd).expect("page");
    page.expose_secret_mut().copy_from_slice(b"hello");
    let fd = page.fd().expect("fd").as_raw_fd();
    check(
        "a_secret_file_inherited_at_start_is_taken_once",
        &run_probe(
            &format!("exec 8<>/proc/$PPID/fd/{fd}; exec \"$PROBE\" --probe take"),
            Some("8:5"),
        ),
        r#"{"bytes": "hello", "variable_left": "false", "second_take": "false"}"#,
    );
}
