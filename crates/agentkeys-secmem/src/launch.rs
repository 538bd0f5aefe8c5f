//! Starting a program whose environment holds credentials (decision 76).
//!
//! The environment block is built by the caller inside a [`SecretPage`]; [`spawn`] points the
//! child's `envp` straight into that page, starts the child with `clone(CLONE_VM | CLONE_VFORK)`
//! (no page tables copied; see `sys::fork_exec`), and the child only makes async-signal-safe
//! calls before `execve` copies the strings into the new program. `spawn` returns once the
//! `execve` succeeded (a close-on-exec pipe reports failure), so the caller can wipe the page
//! right away: no copy of the environment ever sits in the daemon's heap.
//!
//! The page must be `memfd_secret` or a sealed memfd (shared mappings the child sees as is),
//! never [`SecretPageKind::LockedAnon`], whose wipe-on-fork would hand the child zeros.

#![forbid(unsafe_code)] // the fork/exec itself lives in sys.rs

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys::{self, ExecPlan, Step};
use crate::{SecretPage, SecretPageKind};

/// What to start.
pub struct Launch<'a> {
    /// The program: a path when it contains a `/` (a relative one starts from `cwd`), else a
    /// name looked up in `search_path`. Both happen in the child, after it has taken `ids`
    /// and entered `cwd`, so they see what the new uid may see ([`candidates`]).
    pub program: &'a CStr,
    /// The `PATH` to look a bare name up in; `None` means `/usr/local/bin:/usr/bin:/bin`.
    pub search_path: Option<&'a [u8]>,
    /// The argument vector, `argv[0]` first.
    pub argv: &'a [CString],
    /// The whole environment: `NAME=value` entries, each followed by one NUL byte.
    pub env: &'a SecretPage,
    /// Descriptors for the child's 0, 1, 2, 3, … (stdin, stdout, stderr, then inherited
    /// secret files for `run --fd`).
    pub fds: &'a [BorrowedFd<'a>],
    /// The child's working directory, if not the caller's.
    pub cwd: Option<&'a CStr>,
    /// Run as this uid and gid instead of the caller's (needs root).
    pub ids: Option<(u32, u32)>,
}

/// A started child: its pid, and a pidfd to wait for it and signal it without pid-reuse
/// races.
pub struct Child {
    /// The process id.
    pub pid: u32,
    /// A pidfd for the child (`pidfd_open`), close-on-exec.
    pub pidfd: OwnedFd,
}

/// `PATH` when the environment has none (glibc's `execvp` default, minus the current
/// directory).
pub const DEFAULT_SEARCH_PATH: &[u8] = b"/usr/local/bin:/usr/bin:/bin";

/// The paths the child tries for `program`, in order, as `execvp` does: `program` itself
/// when it contains a `/`, else each entry of `search_path` joined with it. Empty entries
/// (which `execvp` reads as the working directory) are skipped.
pub fn candidates(program: &CStr, search_path: Option<&[u8]>) -> Vec<CString> {
    let name = program.to_bytes();
    if name.contains(&b'/') {
        return vec![program.to_owned()];
    }
    search_path
        .unwrap_or(DEFAULT_SEARCH_PATH)
        .split(|&b| b == b':')
        .filter(|dir| !dir.is_empty())
        .filter_map(|dir| {
            let mut path = dir.to_vec();
            if !dir.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            CString::new(path).ok()
        })
        .collect()
}

/// Forks and execs `launch`, returning once the program is running, or why it could not
/// start: the raw `errno` of `execve` (`ENOENT` when no candidate exists, `EACCES` when one
/// exists but may not be run, …), or a described error for the steps before it (taking the
/// uid, entering the working directory). The child runs in a new session (its pid is its
/// process group's id), with default signal dispositions and an empty signal mask.
pub fn spawn(launch: &Launch<'_>) -> io::Result<Child> {
    if launch.env.kind() == SecretPageKind::LockedAnon {
        return Err(invalid(
            "the environment page must be shareable with the child (memfd_secret or sealed memfd)",
        ));
    }
    let env = launch.env.expose_secret();
    if !env.is_empty() && env.last() != Some(&0) {
        return Err(invalid(
            "the environment page must end with the NUL of its last entry",
        ));
    }
    if launch.argv.is_empty() {
        return Err(invalid("argv must hold at least the program name"));
    }
    let mut envp: Vec<*const libc::c_char> = Vec::new();
    let mut start = 0;
    for (i, &b) in env.iter().enumerate() {
        if b == 0 {
            if i > start {
                envp.push(env[start..].as_ptr().cast());
            }
            start = i + 1;
        }
    }
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = launch.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let paths = candidates(launch.program, launch.search_path);
    let programs: Vec<&CStr> = paths.iter().map(CString::as_c_str).collect();

    // Every source descriptor, and the report pipe, is moved above the targets 0..n so that
    // the child's dup2 calls cannot clobber one another.
    let floor = i32::try_from(launch.fds.len()).map_err(|_| invalid("too many descriptors"))?;
    let sources: Vec<OwnedFd> = launch
        .fds
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, floor))
        .collect::<Result<_, _>>()?;
    let (report_read, low_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let report_write = rustix::io::fcntl_dupfd_cloexec(&low_write, floor)?;
    // Only the parent's copies may keep the pipe open, or the read below never sees EOF.
    drop(low_write);
    let raw: Vec<i32> = sources.iter().map(AsRawFd::as_raw_fd).collect();

    let plan = ExecPlan {
        programs: &programs,
        argv: &argv,
        envp: &envp,
        fds: &raw,
        cwd: launch.cwd,
        ids: launch.ids,
        report: report_write.as_raw_fd(),
    };
    let pid = sys::fork_exec(&plan)?;
    drop(report_write);
    drop(sources);
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| invalid("fork returned pid 0"))?;
    // The child is unreaped until we wait for it, so its pid cannot be reused meanwhile.
    let pidfd = open_pidfd(pid);
    match (read_report(report_read.as_fd()), pidfd) {
        (Ok(None), Ok(pidfd)) => Ok(Child {
            pid: pid.as_raw_nonzero().get().unsigned_abs(),
            pidfd,
        }),
        (Ok(Some((step, errno))), _) => {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            Err(step_error(step, errno))
        }
        // The program may be running with its credentials, but nobody could watch or
        // signal it: kill it (and whatever it started in its group) and reap it.
        (Err(e), _) | (Ok(None), Err(e)) => {
            kill_and_reap(pid);
            Err(e)
        }
    }
}

/// `pidfd_open` for the child; tests can make it fail ([`tests::FAIL_PIDFD`]).
fn open_pidfd(pid: rustix::process::Pid) -> io::Result<OwnedFd> {
    #[cfg(test)]
    if tests::FAIL_PIDFD.with(std::cell::Cell::get) {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(io::Error::from)
}

/// SIGKILLs an unreaped child of ours and its process group, then reaps it. Safe by pid:
/// an unreaped child's pid (and so its group's id) cannot be reused.
fn kill_and_reap(pid: rustix::process::Pid) {
    use rustix::process::{Signal, WaitOptions, kill_process, kill_process_group, waitpid};
    let _ = kill_process_group(pid, Signal::KILL);
    // Before `setsid` the child is not yet its group's leader; kill it by pid as well.
    let _ = kill_process(pid, Signal::KILL);
    let _ = waitpid(Some(pid), WaitOptions::empty());
}

/// `None` once the pipe reaches end of file (the `execve` closed it), or the step that
/// failed and its errno.
fn read_report(fd: BorrowedFd<'_>) -> io::Result<Option<(Option<Step>, i32)>> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    loop {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == buf.len() {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let word = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&buf[at..at + 4]);
        i32::from_ne_bytes(w)
    };
    Ok(match got {
        0 => None,
        8 => Some((Step::from_raw(word(0)), word(4))),
        _ => Some((None, libc::EIO)),
    })
}

/// The error for a failed child step: `execve`'s errno as is (callers tell "not found" from
/// "cannot execute" by it), the earlier steps described.
fn step_error(step: Option<Step>, errno: i32) -> io::Error {
    let os = io::Error::from_raw_os_error(errno);
    let what = match step {
        Some(Step::Exec) => return os,
        Some(Step::Cwd) => "cannot enter the working directory",
        Some(Step::Ids) => "cannot take the caller's uid and gid",
        Some(Step::Stdio | Step::Session) | None => "cannot prepare the child process",
    };
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The child's pidfd registered with the current tokio runtime: it turns readable when the
/// child exits, so a waiter needs no thread of its own (reap it with `waitid(P_PIDFD, …,
/// WNOHANG)` once readable). Call it inside the runtime.
#[cfg(feature = "tokio")]
pub fn watch_exit(
    pidfd: std::sync::Arc<OwnedFd>,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    sys::register_readable(pidfd)
}

/// Dies by `signal` the way the wrapped program did: the default disposition is restored and
/// the signal raised. Returns only if that signal does not end a process.
pub fn reraise(signal: i32) -> io::Result<()> {
    sys::reraise(signal)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    thread_local! {
        /// Makes [`open_pidfd`] fail on this thread (the test that sets it runs alone on it).
        pub(super) static FAIL_PIDFD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn env_page(entries: &[&str]) -> SecretPage {
        let total: usize = entries.iter().map(|e| e.len() + 1).sum();
        let mut page = SecretPage::new(total).expect("page");
        let mut at = 0;
        let bytes = page.expose_secret_mut();
        for e in entries {
            bytes[at..at + e.len()].copy_from_slice(e.as_bytes());
            at += e.len() + 1;
        }
        page
    }

    fn wait(child: &Child) -> Option<i32> {
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(child.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .expect("waitid")
        .expect("status");
        status.exit_status()
    }

    #[test]
    fn the_child_sees_the_environment_built_in_the_page_and_the_given_stdio() {
        let env = env_page(&["CANARY_KEY=spawned-canary-41", "PATH=/usr/bin:/bin"]);
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let argv = [
            CString::new("sh").unwrap(),
            CString::new("-c").unwrap(),
            CString::new("printf %s \"$CANARY_KEY\"; exit 7").unwrap(),
        ];
        let child = spawn(&Launch {
            program: c"/bin/sh",
            search_path: None,
            argv: &argv,
            env: &env,
            fds: &[devnull.as_fd(), write.as_fd(), write.as_fd()],
            cwd: Some(c"/"),
            ids: None,
        })
        .expect("spawn");
        drop(env); // wiped right after the exec, as the daemon does
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert_eq!(out, "spawned-canary-41");
        assert_eq!(wait(&child), Some(7));
    }

    #[test]
    fn a_missing_program_is_reported_as_enoent() {
        let env = env_page(&["A=b"]);
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let err = spawn(&Launch {
            program: c"/nonexistent/program",
            search_path: None,
            argv: &[CString::new("x").unwrap()],
            env: &env,
            fds: &[devnull.as_fd(), devnull.as_fd(), devnull.as_fd()],
            cwd: None,
            ids: None,
        })
        .err()
        .expect("must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    #[test]
    fn an_inherited_fd_arrives_as_descriptor_3_without_close_on_exec() {
        let env = env_page(&["PATH=/usr/bin:/bin"]);
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let extra = std::fs::File::open("/etc/hostname").unwrap();
        let argv = [
            CString::new("sh").unwrap(),
            CString::new("-c").unwrap(),
            CString::new("readlink /proc/self/fd/3").unwrap(),
        ];
        let child = spawn(&Launch {
            program: c"/bin/sh",
            search_path: None,
            argv: &argv,
            env: &env,
            fds: &[devnull.as_fd(), write.as_fd(), write.as_fd(), extra.as_fd()],
            cwd: None,
            ids: None,
        })
        .expect("spawn");
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert_eq!(out.trim(), "/etc/hostname");
        assert_eq!(wait(&child), Some(0));
    }

    #[test]
    fn a_locked_anon_page_is_refused() {
        let env = SecretPage::with_kind(4, SecretPageKind::LockedAnon).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        assert!(
            spawn(&Launch {
                program: c"/bin/true",
                search_path: None,
                argv: &[CString::new("true").unwrap()],
                env: &env,
                fds: &[devnull.as_fd(), devnull.as_fd(), devnull.as_fd()],
                cwd: None,
                ids: None,
            })
            .is_err()
        );
    }

    /// Children this thread forked and has not reaped (`/proc/self/task/<tid>/children`),
    /// or `None` where the kernel does not offer that file.
    fn my_children() -> Option<String> {
        let tid = rustix::thread::gettid().as_raw_nonzero();
        std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).ok()
    }

    #[test]
    fn a_child_whose_pidfd_cannot_be_opened_is_killed_and_reaped() {
        let Some(before) = my_children() else {
            crate::skipped(
                "launch::tests::a_child_whose_pidfd_cannot_be_opened_is_killed_and_reaped",
                "no /proc/self/task/<tid>/children on this kernel",
            );
            return;
        };
        assert_eq!(
            before.trim(),
            "",
            "this test thread starts without children"
        );
        let env = env_page(&["PATH=/usr/bin:/bin"]);
        let devnull = std::fs::File::open("/dev/null").unwrap();
        FAIL_PIDFD.with(|f| f.set(true));
        let result = spawn(&Launch {
            program: c"/bin/sh",
            search_path: None,
            argv: &[
                CString::new("sh").unwrap(),
                CString::new("-c").unwrap(),
                CString::new("sleep 300 & exec sleep 300").unwrap(),
            ],
            env: &env,
            fds: &[devnull.as_fd(), devnull.as_fd(), devnull.as_fd()],
            cwd: None,
            ids: None,
        });
        FAIL_PIDFD.with(|f| f.set(false));
        let err = result.err().expect("spawn must fail without a pidfd");
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
        assert_eq!(
            my_children().unwrap_or_default().trim(),
            "",
            "the started program was left running (or unreaped)"
        );
    }

    #[test]
    fn candidates_follow_execvp() {
        let got = |program: &CStr, path: Option<&[u8]>| -> Vec<String> {
            candidates(program, path)
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            got(c"sh", Some(b"/nonexistent::/bin/")),
            ["/nonexistent/sh", "/bin/sh"]
        );
        assert_eq!(got(c"/bin/sh", Some(b"/usr/bin")), ["/bin/sh"]);
        assert_eq!(got(c"./run.sh", None), ["./run.sh"]);
        assert_eq!(
            got(c"ls", None),
            ["/usr/local/bin/ls", "/usr/bin/ls", "/bin/ls"]
        );
    }

    /// A directory under the temp dir, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str, mode: u32) -> Scratch {
            use std::os::unix::fs::PermissionsExt as _;
            let path = std::env::temp_dir().join(format!(
                "agentkeys-launch-{tag}-{}-{}",
                std::process::id(),
                rustix::thread::gettid().as_raw_nonzero()
            ));
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Scratch(path)
        }

        /// Written by a shell, not by this process: a file this (multi-threaded) test
        /// process held open for writing could be inherited by another test's fork and make
        /// the exec fail with ETXTBSY.
        fn script(&self, name: &str, body: &str) {
            let file = self.0.join(name);
            let status = std::process::Command::new("/bin/sh")
                .args([
                    "-c",
                    "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
                    "sh",
                ])
                .arg(format!("#!/bin/sh\n{body}\n"))
                .arg(&file)
                .status()
                .unwrap();
            assert!(status.success(), "write {}", file.display());
        }

        fn c_path(&self) -> CString {
            CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const NOBODY: (u32, u32) = (65534, 65534);

    fn as_root() -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            crate::skipped("launch::tests (uid switch)", "switching uids needs root");
        }
        root
    }

    #[test]
    fn the_child_takes_the_callers_uid_before_entering_the_working_directory() {
        if !as_root() {
            return;
        }
        let private = Scratch::new("cwd", 0o700);
        let env = env_page(&["PATH=/usr/bin:/bin"]);
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let cwd = private.c_path();
        let err = spawn(&Launch {
            program: c"/bin/true",
            search_path: None,
            argv: &[CString::new("true").unwrap()],
            env: &env,
            fds: &[devnull.as_fd(), devnull.as_fd(), devnull.as_fd()],
            cwd: Some(&cwd),
            ids: Some(NOBODY),
        })
        .err()
        .expect("nobody cannot enter a root-only 0700 directory");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("working directory"), "{err}");
    }

    #[test]
    fn a_name_is_looked_up_as_the_callers_uid() {
        if !as_root() {
            return;
        }
        let private = Scratch::new("private-bin", 0o700);
        private.script("agentkeys-probe", "echo private");
        let public = Scratch::new("public-bin", 0o755);
        public.script("agentkeys-probe", "echo public");
        let path = format!("{}:{}", private.0.display(), public.0.display());
        let env = env_page(&["PATH=/usr/bin:/bin"]);
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let child = spawn(&Launch {
            program: c"agentkeys-probe",
            search_path: Some(path.as_bytes()),
            argv: &[CString::new("agentkeys-probe").unwrap()],
            env: &env,
            fds: &[devnull.as_fd(), write.as_fd(), write.as_fd()],
            cwd: Some(c"/"),
            ids: Some(NOBODY),
        })
        .expect("the public copy runs");
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert_eq!(
            out, "public\n",
            "the root-only directory is skipped, as execvp does"
        );
        assert_eq!(wait(&child), Some(0));

        // Only the root-only copy: found, but nobody may run it (EACCES, like execvp).
        let err = spawn(&Launch {
            program: c"agentkeys-probe",
            search_path: Some(private.0.as_os_str().as_encoded_bytes()),
            argv: &[CString::new("agentkeys-probe").unwrap()],
            env: &env,
            fds: &[devnull.as_fd(), devnull.as_fd(), devnull.as_fd()],
            cwd: None,
            ids: Some(NOBODY),
        })
        .err()
        .expect("must not run");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    }
}
