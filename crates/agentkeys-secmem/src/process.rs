//! Process-wide protections every agentkeys binary applies at start: no core dumps, not
//! dumpable (docs/threat-model.md, "Defences in each process"), and a possessed session
//! keyring for the kernel keyring store (decision 79).

#![forbid(unsafe_code)] // all of this crate's `unsafe` lives in sys.rs

use std::io;

use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// Sets `RLIMIT_CORE` to 0 (soft and hard) and `PR_SET_DUMPABLE` to 0.
///
/// Non-dumpable also turns the process's `/proc/<pid>` files root-owned and refuses
/// same-uid `ptrace` and `/proc/<pid>/mem` reads. Both survive `fork` but `execve` resets the
/// dumpable flag, so every binary calls this itself.
pub fn disable_core_dumps() -> io::Result<()> {
    rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Replaces the default panic message with the place of the panic only: a payload could
/// quote data (an `expect` message formatting a value, a third-party assertion).
pub fn quiet_panics(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: INTERNAL: {program} crashed at {at}");
        eprintln!("hint: please report this; no secret is included in this message");
    }));
}

/// Sets `PR_SET_DUMPABLE`: a managed runtime turns it off while it holds a credential fd
/// (so same-uid processes cannot `pidfd_getfd` it) and back on afterwards.
pub fn set_dumpable(dumpable: bool) -> io::Result<()> {
    rustix::process::set_dumpable_behavior(if dumpable {
        DumpableBehavior::Dumpable
    } else {
        DumpableBehavior::NotDumpable
    })?;
    Ok(())
}

/// Whether this process is currently dumpable (`PR_GET_DUMPABLE`).
pub fn is_dumpable() -> io::Result<bool> {
    Ok(rustix::process::dumpable_behavior()? != DumpableBehavior::NotDumpable)
}

/// Takes a secret out of the environment (the server's `AGENTKEYS_SERVER_KEYS`, an
/// inherited credential fd's variable): returns the value, overwrites it with zeros where
/// it lived (so `/proc/<pid>/environ` no longer shows it) and removes the variable, so
/// programs started later do not inherit it. `Ok(None)` when it is not set.
///
/// Refuses (`Err`) unless the process runs one thread: changing the environment while
/// another thread may read it is undefined behaviour in C. Call it first thing in `main`.
pub fn take_secret_env(name: &str) -> io::Result<Option<crate::SecretBytes>> {
    if self_status::<usize>("Threads")? != 1 {
        return Err(io::Error::other(format!(
            "{name} can only be taken from the environment while the process runs one \
             thread; take it before starting threads (or a runtime)"
        )));
    }
    // SAFETY (contract of take_env_var): this process has one thread, the caller's, so
    // nothing else reads or writes the environment while it runs.
    Ok(crate::sys::take_env_secret_single_threaded(name))
}

/// Gives this process a fresh anonymous session keyring, so keys it adds are possessed and
/// can be linked into the per-user persistent keyring. Call it only when the current session
/// keyring is the user-session fallback (`_uid_ses.<uid>`); inside a real login session the
/// session keyring is already the right one.
pub fn join_anonymous_session_keyring() -> io::Result<()> {
    crate::sys::join_anonymous_session_keyring()
}

/// Signals read from a descriptor (a `signalfd`) instead of delivered: for a process that
/// forwards what it receives (`agentkeys run`) without installing handlers or starting a
/// runtime.
///
/// The signals are blocked in the calling thread only. Create it in a process that runs one
/// thread, before starting any other: a thread started earlier would still take them with
/// their default action. [`crate::launch::reraise`] unblocks the signal it raises.
#[derive(Debug)]
pub struct SignalQueue {
    fd: std::os::fd::OwnedFd,
}

impl SignalQueue {
    /// Blocks `signals` and queues them on a new non-blocking descriptor.
    pub fn block(signals: &[i32]) -> io::Result<Self> {
        Ok(SignalQueue {
            fd: crate::sys::signalfd_for(signals)?,
        })
    }

    /// The next queued signal, or `None` when none is pending.
    pub fn next(&self) -> io::Result<Option<i32>> {
        use std::os::fd::AsFd as _;
        crate::sys::read_signalfd(self.fd.as_fd())
    }
}

impl std::os::fd::AsFd for SignalQueue {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The numeric field `name` of `/proc/self/status` (`Threads`, `TracerPid` …).
///
/// Read into a stack buffer: every agentkeys process starts by asking this, and a growing
/// heap buffer would touch (and fault in) a page of the allocator per size class it passes.
pub(crate) fn self_status<T: std::str::FromStr>(name: &str) -> io::Result<T> {
    use std::io::Read as _;
    let mut file = std::fs::File::open("/proc/self/status")?;
    let mut buf = [0u8; 8192];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if len == buf.len() {
            return Err(io::Error::other("/proc/self/status is longer than 8 KiB"));
        }
    }
    std::str::from_utf8(&buf[..len])
        .map_err(|_| io::Error::other("/proc/self/status is not UTF-8"))?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {name} line in /proc/self/status")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_queue_not_delivered() {
        // On a thread of its own: the mask is per thread, and the signal is sent to this
        // thread only (tgkill), so the rest of the test binary never sees it.
        std::thread::spawn(|| {
            let queue = SignalQueue::block(&[libc_sigusr2()]).unwrap();
            assert_eq!(queue.next().unwrap(), None, "nothing pending yet");
            crate::sys::raise_in_this_thread(libc_sigusr2()).unwrap();
            // Its default action would have ended the process; it waits in the queue instead.
            assert_eq!(queue.next().unwrap(), Some(libc_sigusr2()));
            assert_eq!(queue.next().unwrap(), None, "read once");
        })
        .join()
        .unwrap();
    }

    fn libc_sigusr2() -> i32 {
        rustix::process::Signal::USR2.as_raw()
    }

    #[test]
    fn a_secret_is_taken_out_of_the_environment_only_by_a_single_threaded_process() {
        // The test harness runs threads, so the refusal is what this process shows; the
        // single-threaded path is the server's (tests/server/e2e.rs reads its environ).
        let err = take_secret_env("AGENTKEYS_NOT_SET_IN_TESTS").unwrap_err();
        assert!(err.to_string().contains("one thread"), "{err}");
    }

    #[test]
    fn disabling_core_dumps_makes_the_process_non_dumpable_with_core_limit_zero() {
        // Process-wide, but harmless to the other tests here: a process may always read its
        // own /proc/self/mem, dumpable or not.
        disable_core_dumps().unwrap();
        assert!(!is_dumpable().unwrap());
        let core = rustix::process::getrlimit(Resource::Core);
        assert_eq!(core.current, Some(0));
        assert_eq!(core.maximum, Some(0));
    }
}
