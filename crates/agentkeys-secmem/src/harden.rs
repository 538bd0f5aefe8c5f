//! Process hardening with a report (DESIGN "Hardening checklist"): every protection the
//! daemon and the CLI apply at start, each reported `ok`, `degraded (why)` or `failed (why)`.
//!
//! What runs, in order, for the daemon: not dumpable, core limit 0, `no_new_privs`, the
//! debugger check (`TracerPid`), the Yama `ptrace_scope` check, capabilities dropped, a
//! seccomp deny-list on all threads, protection keys probed. The CLI gets the first two and
//! the debugger check as information.
//!
//! The seccomp filter binds every process the daemon starts (`run` children) as well:
//! filters survive `fork` and `execve`. It is therefore a deny-list of calls an ordinary
//! program never needs: `ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`, `kcmp`,
//! `perf_event_open`, `bpf`, `kexec_load`, `kexec_file_load` (each fails with `EPERM`).
//! Debuggers and profilers cannot run under `agentkeys run`; shells, interpreters and
//! network clients are unaffected.

#![forbid(unsafe_code)] // the raw calls live in sys.rs

use std::fmt;
use std::io;

/// The outcome of one protection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// In effect.
    Ok,
    /// Not in effect or weaker than intended, for a reason outside our control.
    Degraded(String),
    /// Not in effect where it must be; the process should not serve.
    Failed(String),
}

impl Status {
    /// `ok`, `degraded` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded(_) => "degraded",
            Status::Failed(_) => "failed",
        }
    }

    /// The reason, for degraded and failed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Ok => None,
            Status::Degraded(r) | Status::Failed(r) => Some(r),
        }
    }
}

/// One protection and its outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// Stable name, e.g. `seccomp`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What is in effect, in a few words.
    pub detail: String,
}

/// Every protection applied, in order.
#[derive(Clone, Debug, Default)]
pub struct HardeningReport {
    /// The checks.
    pub checks: Vec<Check>,
}

impl HardeningReport {
    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }

    fn record(&mut self, name: &'static str, result: io::Result<String>) {
        match result {
            Ok(detail) => self.push(name, Status::Ok, detail),
            Err(e) => self.push(name, Status::Failed(e.to_string()), ""),
        }
    }

    /// The first failed check, if any.
    pub fn failure(&self) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| matches!(c.status, Status::Failed(_)))
    }

    /// The check named `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for HardeningReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let state = match &c.status {
                Status::Ok => "ok".to_owned(),
                s => format!("{} ({})", s.name(), s.reason().unwrap_or_default()),
            };
            writeln!(f, "{:<17} {:<10} {}", c.name, state, c.detail)?;
        }
        Ok(())
    }
}

/// What the daemon may relax.
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonPolicy {
    /// Start even when traced (`--allow-debugger`).
    pub allow_debugger: bool,
    /// Refuse to start unless Yama's `ptrace_scope` is at least 1 (`--require-ptrace-scope`).
    pub require_ptrace_scope: bool,
    /// Keep `CAP_SETUID` and `CAP_SETGID` (a root daemon that starts `run` commands under
    /// an allowed caller's uid).
    pub keep_setid: bool,
}

/// The syscalls the daemon's seccomp filter denies, by name.
pub const DENIED_SYSCALLS: [&str; 9] = [
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "perf_event_open",
    "bpf",
    "kexec_load",
    "kexec_file_load",
];

/// Hardens the daemon process and reports each step. Call it before starting threads
/// (the seccomp filter is applied to all threads anyway).
pub fn harden_daemon(policy: &DaemonPolicy) -> HardeningReport {
    let mut r = HardeningReport::default();
    basic(&mut r);
    r.record("no_new_privs", no_new_privs());
    debugger(&mut r, policy.allow_debugger);
    ptrace_scope_check(&mut r, policy.require_ptrace_scope);
    r.record("capabilities", drop_capabilities(policy.keep_setid));
    match install_seccomp_deny_list() {
        Ok(()) => r.push(
            "seccomp",
            Status::Ok,
            format!(
                "filter on all threads denies {}",
                DENIED_SYSCALLS.join(", ")
            ),
        ),
        Err(e) => r.push("seccomp", Status::Failed(e.to_string()), ""),
    }
    pkeys(
        &mut r,
        "cached secret pages are no-access outside the reading thread's window",
    );
    r
}

/// Hardens the CLI process: not dumpable, no core dumps; the debugger check is reported.
pub fn harden_cli() -> HardeningReport {
    let mut r = HardeningReport::default();
    basic(&mut r);
    debugger(&mut r, true);
    ptrace_scope_check(&mut r, false);
    pkeys(&mut r, "available (x86 PKU)");
    r
}

fn basic(r: &mut HardeningReport) {
    r.record(
        "dumpable",
        crate::process::set_dumpable(false).map(|()| "PR_SET_DUMPABLE=0".to_owned()),
    );
    r.record(
        "core_dumps",
        rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        )
        .map(|()| "RLIMIT_CORE=0".to_owned())
        .map_err(io::Error::from),
    );
}

fn no_new_privs() -> io::Result<String> {
    rustix::thread::set_no_new_privs(true)?;
    Ok("PR_SET_NO_NEW_PRIVS=1".to_owned())
}

fn debugger(r: &mut HardeningReport, allowed: bool) {
    match tracer_pid() {
        Ok(0) => r.push("debugger", Status::Ok, "not traced (TracerPid 0)"),
        Ok(pid) if allowed => r.push(
            "debugger",
            Status::Degraded(format!("traced by pid {pid}, allowed by --allow-debugger")),
            "",
        ),
        Ok(pid) => r.push(
            "debugger",
            Status::Failed(format!(
                "traced by pid {pid}; refusing to hold credentials under a debugger \
                 (--allow-debugger overrides)"
            )),
            "",
        ),
        Err(e) => r.push("debugger", Status::Degraded(e.to_string()), ""),
    }
}

fn ptrace_scope_check(r: &mut HardeningReport, required: bool) {
    let fail_or_degrade = |why: String| {
        if required {
            Status::Failed(format!("{why}; --require-ptrace-scope wants >= 1"))
        } else {
            Status::Degraded(why)
        }
    };
    match ptrace_scope() {
        Some(n) if n >= 1 => r.push("ptrace_scope", Status::Ok, format!("Yama ptrace_scope {n}")),
        Some(n) => r.push(
            "ptrace_scope",
            fail_or_degrade(format!(
                "Yama ptrace_scope is {n}: any same-uid process may ptrace"
            )),
            "",
        ),
        None => r.push(
            "ptrace_scope",
            fail_or_degrade(
                "no Yama on this kernel; classic ptrace rules, non-dumpable still blocks same-uid"
                    .to_owned(),
            ),
            "",
        ),
    }
}

fn pkeys(r: &mut HardeningReport, detail: &str) {
    match crate::pkey::available() {
        Ok(()) => r.push("protection_keys", Status::Ok, detail),
        Err(why) => r.push("protection_keys", Status::Degraded(why), ""),
    }
}

/// Drops every capability (bounding, ambient, inheritable, effective, permitted), except
/// `CAP_SETUID`/`CAP_SETGID` when `keep_setid`.
fn drop_capabilities(keep_setid: bool) -> io::Result<String> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let keep = if keep_setid {
        CapabilitySet::SETUID | CapabilitySet::SETGID
    } else {
        CapabilitySet::empty()
    };
    for cap in CapabilitySet::all().difference(keep).iter() {
        // EINVAL: a capability this kernel does not know. EPERM: no CAP_SETPCAP, so the
        // bounding set cannot shrink (an unprivileged daemon has nothing in it to use).
        let _ = rustix::thread::remove_capability_from_bounding_set(cap);
    }
    let _ = rustix::thread::clear_ambient_capability_set();
    let current = rustix::thread::capabilities(None)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: current.effective & keep,
            permitted: current.permitted & keep,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(if keep_setid {
        "all dropped but CAP_SETUID, CAP_SETGID (run as an allowed caller)".to_owned()
    } else {
        "all dropped (effective, permitted, inheritable, ambient, bounding)".to_owned()
    })
}

/// The deny-list filter (each call fails with `EPERM`), on every thread (TSYNC).
fn install_seccomp_deny_list() -> io::Result<()> {
    use seccompiler::{SeccompAction, SeccompFilter};
    let numbers = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_perf_event_open,
        libc::SYS_bpf,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
    ];
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| io::Error::other(format!("seccomp: {e:?}")))?;
    let filter = SeccompFilter::new(
        numbers.iter().map(|n| (*n, vec![])).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch,
    )
    .map_err(|e| io::Error::other(format!("seccomp: {e}")))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| io::Error::other(format!("seccomp: {e}")))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| io::Error::other(format!("seccomp: {e}")))
}

/// `TracerPid` from `/proc/self/status`: 0 when nobody traces this process.
pub fn tracer_pid() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no TracerPid line in /proc/self/status"))
}

/// Yama's `kernel.yama.ptrace_scope`, or `None` where Yama is absent.
pub fn ptrace_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}
