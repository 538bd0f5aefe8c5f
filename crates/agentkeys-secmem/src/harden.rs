//! Process hardening with a report: every protection the daemon and the CLI apply at start,
//! each reported `ok`, `degraded (why)` or `failed (why)` (docs/threat-model.md, "Defences in
//! each process", says what each one stops).
//!
//! What runs, in order, for the daemon: not dumpable, core limit 0, `no_new_privs`, the
//! debugger check (`TracerPid`), the Yama `ptrace_scope` check, capabilities dropped, a
//! seccomp deny-list on all threads, protection keys probed. The CLI gets the first two and
//! the debugger check as information.
//!
//! The seccomp filter binds every process the daemon starts (`run` children) as well:
//! filters survive `fork` and `execve`. It is therefore a deny-list of calls an ordinary
//! program never needs: `ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`, `kcmp`,
//! `perf_event_open`, `bpf`, `kexec_load`, `kexec_file_load`, and every x32 call (system
//! call numbers from `0x40000000` on, which would reach the same calls under other numbers);
//! each fails with `EPERM`. A call through a foreign ABI (i386 `int 0x80`) kills the process.
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
    /// Keep `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL` where the process has them (a daemon,
    /// root or a user given them, that starts `run`
    /// commands under an allowed caller's uid, and must be able to signal them: the kernel
    /// lets uid 0 signal another uid's process only with `CAP_KILL`).
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
                "filter on all threads denies {} and every x32 call",
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

/// The capabilities that let a daemon start an allowed caller's `run` command under the
/// caller's uid and signal it: `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL`.
fn run_as_others_caps() -> rustix::thread::CapabilitySet {
    use rustix::thread::CapabilitySet;
    CapabilitySet::SETUID | CapabilitySet::SETGID | CapabilitySet::KILL
}

/// Whether this process may be given, or holds, what it takes to run another uid's
/// commands: root, or the three capabilities (`run_as_others_caps`) in its permitted set
/// (a daemon user started with them as ambient capabilities, systemd
/// `AmbientCapabilities=`).
pub fn may_run_as_others() -> bool {
    rustix::process::geteuid().is_root()
        || rustix::thread::capabilities(None)
            .is_ok_and(|c| c.permitted.contains(run_as_others_caps()))
}

/// Whether this process can start a command under another uid and signal it now: the
/// three capabilities are effective (kept by [`harden_daemon`] with `keep_setid`).
pub fn can_run_as_others() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(run_as_others_caps()))
}

/// Drops every capability (bounding, ambient, inheritable, effective, permitted), except
/// `CAP_SETUID`/`CAP_SETGID`/`CAP_KILL` when `keep_setid`. `CAP_KILL` adds no power a
/// process holding `CAP_SETUID` lacks (it could become the target's uid and signal it).
fn drop_capabilities(keep_setid: bool) -> io::Result<String> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let keep = if keep_setid {
        run_as_others_caps()
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
        "all dropped but CAP_SETUID, CAP_SETGID, CAP_KILL (run and stop an allowed caller's \
         commands)"
            .to_owned()
    } else {
        "all dropped (effective, permitted, inheritable, ambient, bounding)".to_owned()
    })
}

/// The numbers of [`DENIED_SYSCALLS`], in the same order.
const DENIED_NUMBERS: [libc::c_long; 9] = [
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

/// `__X32_SYSCALL_BIT`: on x86_64 the kernel reads a number with this bit set as an x32
/// call, which reaches the same code (`ptrace`, `process_vm_readv`, …) under another
/// number. Every number at or above it is refused, x32 or not (none is a native call).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `AUDIT_ARCH_*` of the native system call ABI (`EM_*` | 64-bit | little-endian).
fn audit_arch() -> io::Result<u32> {
    const AUDIT_ARCH_64BIT_LE: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => Ok(62 | AUDIT_ARCH_64BIT_LE),
        "aarch64" => Ok(183 | AUDIT_ARCH_64BIT_LE),
        "riscv64" => Ok(243 | AUDIT_ARCH_64BIT_LE),
        other => Err(io::Error::other(format!(
            "seccomp: no filter for the {other} architecture"
        ))),
    }
}

/// The filter as a classic BPF program over `struct seccomp_data` (`nr` at offset 0,
/// `arch` at offset 4). seccompiler only matches exact numbers, so this is written by hand:
/// it must also refuse the x32 aliases of the denied calls.
fn deny_list_program(arch: u32, denied: &[libc::c_long]) -> io::Result<seccompiler::BpfProgram> {
    use seccompiler::sock_filter;
    // linux/bpf_common.h and linux/seccomp.h.
    const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K (0)
    const NR_OFFSET: u32 = 0;
    const ARCH_OFFSET: u32 = 4;
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt| sock_filter { code, jt, jf: 0, k };
    let count = u8::try_from(denied.len())
        .ok()
        .filter(|n| *n < u8::MAX - 1)
        .ok_or_else(|| io::Error::other("seccomp: too many denied calls for one jump"))?;
    let mut program = vec![
        // 0: A = arch.
        stmt(LD_W_ABS, ARCH_OFFSET),
        // 1: the native ABI skips the kill below.
        jump(JEQ_K, arch, 1),
        // 2: any other ABI (i386 through `int 0x80`) numbers its calls differently, so the
        //    list below would not hold: kill the process, as seccompiler's filter did.
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        // 3: A = nr.
        stmt(LD_W_ABS, NR_OFFSET),
        // 4: nr >= 0x40000000 (x32, or no call at all) jumps to the EPERM at the end,
        //    over the `count` comparisons and the allow.
        jump(JGE_K, X32_SYSCALL_BIT, count + 1),
    ];
    for (i, &nr) in (0u8..).zip(denied) {
        let nr = u32::try_from(nr).map_err(|_| io::Error::other("seccomp: a negative number"))?;
        // 5 + i: a denied call jumps to the EPERM, over the rest of the list and the allow.
        program.push(jump(JEQ_K, nr, count - i));
    }
    // 5 + count: everything else is allowed.
    program.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    // 6 + count: EPERM.
    program.push(stmt(
        RET_K,
        libc::SECCOMP_RET_ERRNO | libc::EPERM.unsigned_abs(),
    ));
    Ok(program)
}

/// The deny-list filter (each call, and every x32 call, fails with `EPERM`), on every
/// thread (TSYNC).
fn install_seccomp_deny_list() -> io::Result<()> {
    let program = deny_list_program(audit_arch()?, &DENIED_NUMBERS)?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| io::Error::other(format!("seccomp: {e}")))
}

/// `TracerPid` from `/proc/self/status`: 0 when nobody traces this process.
pub fn tracer_pid() -> io::Result<u32> {
    crate::process::self_status("TracerPid")
}

/// Yama's `kernel.yama.ptrace_scope`, or `None` where Yama is absent.
pub fn ptrace_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const PROBE: &str = "AGENTKEYS_SECCOMP_PROBE";

    /// `errno` of a call with all arguments zero, or `ok` when it succeeded.
    fn outcome(nr: libc::c_long) -> String {
        match crate::sys::syscall_with_zero_args(nr) {
            Ok(_) => "ok".to_owned(),
            Err(e) => match e.raw_os_error() {
                Some(libc::EPERM) => "EPERM".to_owned(),
                Some(libc::ENOSYS) => "ENOSYS".to_owned(),
                other => format!("{other:?}"),
            },
        }
    }

    #[test]
    fn the_filter_refuses_x32_aliases_and_the_list_and_allows_the_rest() {
        if std::env::var_os(PROBE).is_some() {
            // A child process of the test binary: the filter binds all its threads.
            install_seccomp_deny_list().expect("install the filter");
            let x32 = libc::c_long::from(X32_SYSCALL_BIT);
            let pid_matches = crate::sys::syscall_with_zero_args(libc::SYS_getpid)
                .is_ok_and(|p| u32::try_from(p).ok() == Some(std::process::id()));
            println!(
                "probe x32_getpid={} x32_ptrace={} process_vm_readv={} getpid={}",
                outcome(x32 | libc::SYS_getpid),
                outcome(x32 | libc::SYS_ptrace),
                outcome(libc::SYS_process_vm_readv),
                if pid_matches { "ok" } else { "wrong" },
            );
            std::process::exit(0);
        }
        let name = "harden::tests::the_filter_refuses_x32_aliases_and_the_list_and_allows_the_rest";
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(PROBE, "1")
            .output()
            .expect("run the probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split("probe ").nth(1))
            .unwrap_or_else(|| {
                panic!(
                    "no probe line: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert_eq!(
            line,
            "x32_getpid=EPERM x32_ptrace=EPERM process_vm_readv=EPERM getpid=ok"
        );
    }

    #[test]
    fn every_denied_name_has_its_number() {
        assert_eq!(DENIED_SYSCALLS.len(), DENIED_NUMBERS.len());
        let program = deny_list_program(audit_arch().unwrap(), &DENIED_NUMBERS).unwrap();
        // arch check (3), load nr, x32 check, one per call, allow, EPERM.
        assert_eq!(program.len(), 3 + 2 + DENIED_NUMBERS.len() + 2);
    }
}
