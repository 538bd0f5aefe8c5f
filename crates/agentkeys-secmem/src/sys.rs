//! Raw syscalls (`memfd_secret`, `mmap`, `mlock`, `madvise`, `keyctl`) behind small safe wrappers.
//!
//! Every `unsafe` operation of the crate's page code lives here, one operation per block, each
//! with its `// SAFETY:` argument. The wrappers are safe because they never take a caller's raw
//! pointer: [`Mapping`] owns the region it mapped, so locking, advising, reading and unmapping
//! it cannot touch memory anyone else owns.

use std::ffi::{CStr, c_void};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use rustix::mm::{self, MapFlags, ProtFlags};

/// `memfd_secret(O_CLOEXEC)`: a file whose pages are removed from the kernel's direct map.
///
/// There is no wrapper in libc, rustix or nix, so this is the raw syscall (447 on x86_64).
/// Fails with `ENOSYS` on kernels without `secretmem` (or booted with `secretmem.enable=0`).
pub(crate) fn memfd_secret() -> io::Result<OwnedFd> {
    // The kernel reads `flags` as an unsigned int; only O_CLOEXEC is meaningful here.
    let flags = libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: memfd_secret takes one integer argument and touches no user memory; on success it
    // returns a new file descriptor that nothing else owns yet.
    let ret = unsafe { libc::syscall(libc::SYS_memfd_secret, flags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `raw` was just returned by a successful memfd_secret call, is open, and is owned
    // by no other object: the OwnedFd becomes its only owner and closes it on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: gives this process a fresh anonymous session
/// keyring. Needed where no login session keyring exists (headless hosts, CI, containers):
/// without it, keys added through the user-session keyring are not "possessed" and linking
/// them into the persistent keyring fails with `EACCES` (platform-scouting note 2(f)).
pub(crate) fn join_anonymous_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: with a NULL name the kernel reads no user memory; the call only replaces this
    // process's session keyring and returns its serial number.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `madvise` hints this crate uses. A closed set on purpose: hints such as
/// `MADV_DONTNEED` would change the contents under live references, so they are not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Advice {
    /// `MADV_DONTDUMP`: leave the region out of core dumps.
    DontDump,
    /// `MADV_WIPEONFORK`: a forked child sees zeros instead of a copy (private anonymous only).
    WipeOnFork,
}

/// A read-write memory mapping owned by this value: unmapped (and unlocked) on drop.
///
/// The contents are not wiped here; [`crate::SecretPage`] wipes before dropping its mapping.
pub(crate) struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
    locked: bool,
}

// SAFETY: a Mapping is the unique owner of its region (it is never cloned and hands out
// references only through `&self`/`&mut self`), so moving it to another thread moves that
// ownership; the region is process-wide memory, valid from any thread.
unsafe impl Send for Mapping {}
// SAFETY: shared access only yields `&[u8]` through `&self`; mutation needs `&mut self`, so the
// usual borrow rules prevent data races between threads inside this process.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A private anonymous read-write mapping of `len` bytes (zero-filled by the kernel).
    ///
    /// `len` must be a non-zero multiple of the page size.
    pub(crate) fn anonymous_private(len: usize) -> io::Result<Self> {
        // SAFETY: a null hint lets the kernel choose a fresh address, so no existing memory is
        // replaced or aliased; the new region is owned by the Mapping built below.
        let ptr = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }?;
        Self::owned(ptr, len)
    }

    /// A shared read-write mapping of the first `len` bytes of `fd`.
    ///
    /// The file must already be at least `len` bytes long and must not shrink while mapped
    /// (callers seal it or use `memfd_secret`, whose size cannot change once set).
    pub(crate) fn shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // SAFETY: a null hint lets the kernel choose a fresh address, so no existing memory is
        // replaced or aliased; the new region is owned by the Mapping built below.
        let ptr = unsafe {
            mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Self::owned(ptr, len)
    }

    fn owned(ptr: *mut c_void, len: usize) -> io::Result<Self> {
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self {
            ptr,
            len,
            locked: false,
        })
    }

    /// `mlock` the whole mapping so it is never written to swap.
    ///
    /// Counts against `RLIMIT_MEMLOCK`; fails with `ENOMEM`/`EAGAIN` when the limit is reached.
    pub(crate) fn lock(&mut self) -> io::Result<()> {
        // SAFETY: the range is exactly the region this Mapping mapped and still owns; mlock only
        // changes residency, never contents.
        unsafe { mm::mlock(self.ptr.as_ptr(), self.len) }?;
        self.locked = true;
        Ok(())
    }

    /// Apply an `madvise` hint to the whole mapping.
    pub(crate) fn advise(&mut self, advice: Advice) -> io::Result<()> {
        let advice = match advice {
            Advice::DontDump => mm::Advice::LinuxDontDump,
            Advice::WipeOnFork => mm::Advice::LinuxWipeOnFork,
        };
        // SAFETY: the range is exactly the region this Mapping owns, and both offered hints only
        // affect core dumps and fork, never the contents seen by this process.
        unsafe { mm::madvise(self.ptr.as_ptr(), self.len, advice) }?;
        Ok(())
    }

    /// The whole mapping, read-only.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid for reads of `len` bytes for as long as `self` lives (the region
        // is mapped read-write until Drop), u8 has no invalid bit patterns, and no `&mut` to it
        // can coexist with this `&self` borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }

    /// The whole mapping, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for reads and writes of `len` bytes while `self` lives, and the
        // `&mut self` borrow guarantees this is the only reference into the region.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }

    /// The start address, for tests that inspect the region from outside (e.g. `/proc/self/mem`).
    #[cfg(test)]
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.locked {
            // SAFETY: the range is the region this Mapping locked and still owns. A failure
            // changes nothing that matters: munmap below drops the lock anyway.
            let _ = unsafe { mm::munlock(self.ptr.as_ptr(), self.len) };
        }
        // SAFETY: the region was mapped by this Mapping, which is its only owner; `&mut self`
        // in drop means no reference into it survives, so nothing can touch it after unmapping.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// Everything a child needs between `fork` and `execve`, prepared by the parent so the child
/// only makes async-signal-safe system calls: it never allocates, locks or formats.
pub(crate) struct ExecPlan<'a> {
    /// The paths to try, in order, as `execvp` would (the program as given, or each `PATH`
    /// entry joined with its name).
    pub(crate) programs: &'a [&'a CStr],
    /// `argv`, NULL-terminated, pointing into strings the caller keeps alive.
    pub(crate) argv: &'a [*const libc::c_char],
    /// `envp`, NULL-terminated, pointing into the caller's environment page.
    pub(crate) envp: &'a [*const libc::c_char],
    /// Descriptors that become 0, 1, 2, 3, … in the child. Every one is numbered at least
    /// `fds.len()`, so no `dup2` in the child can overwrite a source it still needs.
    pub(crate) fds: &'a [RawFd],
    /// Working directory, if not the parent's.
    pub(crate) cwd: Option<&'a CStr>,
    /// Run as this uid and gid (root parents only), else as the parent's.
    pub(crate) ids: Option<(libc::uid_t, libc::gid_t)>,
    /// The close-on-exec write end of the report pipe, numbered at least `fds.len()`.
    pub(crate) report: RawFd,
}

/// The step of the child that failed, reported with its `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// `dup2` of the inherited descriptors.
    Stdio = 1,
    /// `setsid`.
    Session = 2,
    /// `setgroups`, `setgid`, `setuid`.
    Ids = 3,
    /// `chdir`, as the new uid.
    Cwd = 4,
    /// `execve` of every candidate.
    Exec = 5,
}

impl Step {
    /// The step a report names.
    pub(crate) fn from_raw(raw: i32) -> Option<Step> {
        [Step::Stdio, Step::Session, Step::Ids, Step::Cwd, Step::Exec]
            .into_iter()
            .find(|s| *s as i32 == raw)
    }
}

/// Starts a child that prepares itself from `plan` and `execve`s, writing the failed step
/// and its `errno` to `plan.report` and exiting 127 if it cannot. Returns the child's pid.
///
/// The child is made with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: it runs on
/// a stack of its own inside this address space, so none of the daemon's page tables are
/// copied, and this thread sleeps until the child has called `execve` (or exited). Measured,
/// copying a multi-threaded daemon's mappings with `fork` and tearing them down again at
/// `execve` was a fifth of the daemon's CPU time per `agentkeys run`. Every signal is
/// blocked around the call, so no handler of this process can run on the child's side
/// before it resets them all to their defaults.
pub(crate) fn fork_exec(plan: &ExecPlan<'_>) -> io::Result<libc::pid_t> {
    let page = rustix::param::page_size();
    let stack = Mapping::anonymous_private(CHILD_STACK + page)?;
    // SAFETY: the lowest page of the region this Mapping owns becomes a guard: a child that
    // overran its stack faults instead of writing into other memory of this process.
    if unsafe { libc::mprotect(stack.ptr.as_ptr(), page, libc::PROT_NONE) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the set it is given, which lives on this stack.
    unsafe { libc::sigfillset(all.as_mut_ptr()) };
    // SAFETY: `all` was initialised just above; `old` is written by the call.
    let blocked =
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr()) } == 0;
    let top = stack
        .ptr
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(CHILD_STACK + page)
        .cast::<c_void>();
    // SAFETY: `top` is the end of a mapping this function owns, which outlives the
    // child's use of it (CLONE_VFORK suspends this thread until the child has exec'd or
    // exited). `plan` is borrowed for the same span. The child runs `child_entry` only, which
    // makes async-signal-safe system calls (raw ones for the ids, so no libc lock or thread
    // list of this process is touched) and never returns.
    let pid = unsafe {
        libc::clone(
            child_entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(plan).cast_mut().cast(),
        )
    };
    let err = io::Error::last_os_error();
    if blocked {
        // SAFETY: `old` was filled by the successful pthread_sigmask above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    }
    drop(stack);
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

/// The child's stack: `child_exec` needs little (no allocation, no formatting), and 64 KiB
/// leaves room for libc's `execve` path.
const CHILD_STACK: usize = 64 * 1024;

/// The entry `clone` calls in the child.
extern "C" fn child_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&ExecPlan` fork_exec passed, still borrowed there: CLONE_VFORK keeps
    // that frame alive until this child execs or exits.
    let plan = unsafe { &*arg.cast_const().cast::<ExecPlan<'_>>() };
    child_exec(plan)
}

/// The child side of [`fork_exec`]: async-signal-safe calls only, never returns.
///
/// The order matters: the new uid is taken before `chdir` and before the program is looked
/// up, so a root daemon's child can enter and run only what its caller could.
fn child_exec(plan: &ExecPlan<'_>) -> ! {
    for (target, &src) in plan.fds.iter().enumerate() {
        let target = libc::c_int::try_from(target).unwrap_or(libc::c_int::MAX);
        // SAFETY: dup2 on two integers; it touches no user memory, and the new descriptor
        // (without close-on-exec) is meant to be inherited by the program.
        if unsafe { libc::dup2(src, target) } < 0 {
            child_fail(plan.report, Step::Stdio);
        }
    }
    let first = libc::c_uint::try_from(plan.fds.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks this process's descriptors
    // above the inherited ones close-on-exec; it reads no user memory. Failure (an old
    // kernel) leaves them as they were: every agentkeys descriptor is close-on-exec anyway.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // SAFETY: setsid takes no arguments; the child leaves the daemon's session and process
    // group, so signals meant for the daemon do not reach it and vice versa. Its pid is
    // then its process group's id, which the daemon signals as a whole.
    if unsafe { libc::setsid() } < 0 {
        child_fail(plan.report, Step::Session);
    }
    if let Some((uid, gid)) = plan.ids {
        // Raw system calls, not libc's wrappers: those make every thread of a
        // multi-threaded process change ids together, walking a thread list that, in a
        // CLONE_VM child, is the parent's.
        // SAFETY: setgroups with a count of 0 reads no memory.
        if unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) } < 0 {
            child_fail(plan.report, Step::Ids);
        }
        // SAFETY: setgid on an integer.
        if unsafe { libc::syscall(libc::SYS_setgid, gid) } < 0 {
            child_fail(plan.report, Step::Ids);
        }
        // SAFETY: setuid on an integer; after it the child cannot regain the parent's ids.
        if unsafe { libc::syscall(libc::SYS_setuid, uid) } < 0 {
            child_fail(plan.report, Step::Ids);
        }
    }
    if let Some(cwd) = plan.cwd {
        // SAFETY: `cwd` is a NUL-terminated string owned by the parent's plan, still mapped
        // in this copy of its address space.
        if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
            child_fail(plan.report, Step::Cwd);
        }
    }
    // Default dispositions (Rust ignores SIGPIPE; a program expects the default) and an
    // empty signal mask, as a shell would give.
    for signal in 1..libc::SIGRTMIN() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: installing SIG_DFL through signal(2) is async-signal-safe and reads
            // no memory.
            let _ = unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given, which lives on this stack.
    let _ = unsafe { libc::sigemptyset(empty.as_mut_ptr()) };
    // SAFETY: the set was initialised just above; the old mask is not requested.
    let _ = unsafe { libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) };
    // As execvp: a candidate that is missing, under a non-directory or not accessible is
    // skipped; "permission denied" is reported if no later candidate runs.
    let mut denied = false;
    for program in plan.programs {
        // SAFETY: program, argv and envp are NUL-terminated strings and NULL-terminated
        // pointer arrays prepared by the parent and still mapped here; execve only reads
        // them.
        let _ = unsafe { libc::execve(program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            _ => child_fail(plan.report, Step::Exec),
        }
    }
    let errno = if denied { libc::EACCES } else { libc::ENOENT };
    child_report(plan.report, Step::Exec, errno)
}

/// This thread's `errno` (a thread-local read, async-signal-safe).
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Reports `step` and `errno` on the pipe, then exits.
fn child_fail(report: RawFd, step: Step) -> ! {
    child_report(report, step, errno())
}

/// Writes `step` and `errno` (8 bytes, native order) to the report pipe and exits without
/// running any destructor or atexit hook.
fn child_report(report: RawFd, step: Step, errno: i32) -> ! {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&(step as i32).to_ne_bytes());
    bytes[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes from a stack array to a pipe descriptor; a short or failed write
    // only loses the reason, the parent then reports a generic failure.
    let _ = unsafe { libc::write(report, bytes.as_ptr().cast::<c_void>(), bytes.len()) };
    // SAFETY: _exit ends this process at once, which is what a failed child must do.
    unsafe { libc::_exit(127) }
}

/// `syscall(nr, 0, 0, 0, 0, 0, 0)`, for the tests that probe the seccomp filter.
#[cfg(test)]
pub(crate) fn syscall_with_zero_args(nr: libc::c_long) -> io::Result<libc::c_long> {
    let zero: libc::c_long = 0;
    // SAFETY: test-only, called with getpid, process_vm_readv and x32 numbers the filter
    // refuses; with every argument zero (NULL pointers, zero counts) none of them reads or
    // writes memory of this process.
    let ret = unsafe { libc::syscall(nr, zero, zero, zero, zero, zero, zero) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Sets `signal`'s disposition back to the default and sends it to this process, so a
/// wrapper dies the way the program it wrapped died. Returns only if the signal does not
/// end the process (for example `SIGCHLD`).
pub(crate) fn reraise(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: installing SIG_DFL reads no memory; handlers registered earlier (tokio's) simply
    // stop receiving this signal, which is the point. SIGKILL and SIGSTOP refuse a new
    // disposition (EINVAL) and need none: raising them below does what is asked.
    let _ = unsafe { libc::signal(signal, libc::SIG_DFL) };
    // A signal this thread blocked (to read it from a signalfd) would only pend: unblock it
    // first. Unblocking a signal that is not blocked changes nothing.
    let _ = set_mask(libc::SIG_UNBLOCK, &[signal]);
    // SAFETY: raise sends a signal to the calling thread and touches no memory.
    if unsafe { libc::raise(signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to the calling thread only (`raise`), for the signal queue's test.
#[cfg(test)]
pub(crate) fn raise_in_this_thread(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: raise sends a signal to the calling thread and touches no memory.
    if unsafe { libc::raise(signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pthread_sigmask(how, {signals})` for the calling thread.
fn set_mask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t on this stack frame.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; an invalid signal number is refused with EINVAL, not UB.
        if unsafe { libc::sigaddset(&mut set, s) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `set` is initialised; a NULL old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Blocks `signals` in the calling thread and returns a non-blocking signalfd that reads
/// them.
pub(crate) fn signalfd_for(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = set_mask(libc::SIG_BLOCK, signals)?;
    // SAFETY: `set` is an initialised sigset_t; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let _ = set_mask(libc::SIG_UNBLOCK, signals);
        return Err(err);
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The next signal queued on a signalfd, or `None` when none is pending.
pub(crate) fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data (integers and padding).
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which is exactly that large.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut info).cast::<c_void>(), size) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        };
    }
    if usize::try_from(n).ok() != Some(size) {
        return Err(io::Error::other("short read from a signalfd"));
    }
    Ok(libc::c_int::try_from(info.ssi_signo).ok())
}

/// Registers `fd` with the current tokio runtime for readability (a pidfd turns readable
/// when its process exits). Must be called inside the runtime.
#[cfg(feature = "tokio")]
pub(crate) fn register_readable(
    fd: std::sync::Arc<OwnedFd>,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    // SAFETY: the AsyncFd owns an Arc of the OwnedFd, and an OwnedFd behind an Arc can be
    // neither closed nor replaced while any Arc lives: the descriptor stays open, refers to
    // the same file and `as_raw_fd` returns the same number until the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// Descriptors already taken by [`claim_inherited_fd`]: each may be owned once only.
static CLAIMED: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// The variables `agentkeys run --fd` names inherited descriptors in (`NAME=<fd>:<len>`).
const INHERITED_VAR_PREFIX: &[u8] = b"AGENTKEYS_FD_";
/// Descriptors below this number are recorded at start; higher ones are never claimed.
const RECORDED_FDS: usize = 1024;

/// The descriptors this process was *started with* that an `AGENTKEYS_FD_*` variable of its
/// initial environment named, open and not close-on-exec at that moment: one bit per number
/// below [`RECORDED_FDS`]. Only these can be claimed. A descriptor opened later by code of
/// this process, with or without close-on-exec (a `dup`, a memfd made without
/// `MFD_CLOEXEC`), is owned by that code and is never adopted, whatever a variable set
/// later says (review finding F6: such a descriptor used to pass the close-on-exec check).
static INHERITED_AT_START: [std::sync::atomic::AtomicU64; RECORDED_FDS / 64] =
    [const { std::sync::atomic::AtomicU64::new(0) }; RECORDED_FDS / 64];

/// The descriptor number an `AGENTKEYS_FD_*=<fd>:<len>` entry names, if it is one.
fn named_fd(entry: &[u8]) -> Option<usize> {
    let value = entry.strip_prefix(INHERITED_VAR_PREFIX)?;
    let eq = value.iter().position(|&b| b == b'=')?;
    let digits = &value[eq + 1..];
    let end = digits.iter().position(|&b| b == b':')?;
    if end == 0 || end > 4 || !digits[..end].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let fd = digits[..end]
        .iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
    (3..RECORDED_FDS).contains(&fd).then_some(fd)
}

/// Runs before `main` (glibc calls `.init_array` entries with `argc, argv, envp`): records
/// the descriptors the initial environment names, while no code of this process can have
/// opened any. Reads the environment block the kernel built; allocates nothing.
extern "C" fn record_inherited_fds(
    _argc: libc::c_int,
    _argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) {
    use std::sync::atomic::Ordering;
    if envp.is_null() {
        return;
    }
    let mut at = envp;
    loop {
        // SAFETY: `at` points into the NULL-terminated environment array the loader passes
        // to `.init_array` entries, at or before its terminating NULL (the loop stops there).
        let entry = unsafe { at.read() };
        if entry.is_null() {
            break;
        }
        // SAFETY: `entry` was not the terminating NULL, so the next element (an entry or the
        // NULL) is still inside the array.
        at = unsafe { at.add(1) };
        // SAFETY: each non-NULL entry of the initial environment is a NUL-terminated string
        // that lives, unchanged, for as long as this function runs (nothing else runs yet).
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        let Some(fd) = named_fd(bytes) else { continue };
        let raw = RawFd::try_from(fd).unwrap_or(-1);
        // SAFETY: F_GETFD only queries a descriptor's flags; it touches no memory and fails
        // with EBADF when the number is not open.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            INHERITED_AT_START[fd / 64].fetch_or(1 << (fd % 64), Ordering::Relaxed);
        }
    }
}

/// The `.init_array` entry that runs [`record_inherited_fds`] before `main`.
#[used]
// SAFETY: `.init_array` holds pointers to functions the loader calls once, before `main`,
// with `(argc, argv, envp)`; this entry has exactly that signature and only reads the
// environment block and queries descriptor flags.
#[unsafe(link_section = ".init_array")]
static RECORD_INHERITED_FDS: extern "C" fn(
    libc::c_int,
    *const *const libc::c_char,
    *const *const libc::c_char,
) = record_inherited_fds;

/// Whether `raw` was inherited at start under an `AGENTKEYS_FD_*` variable.
fn inherited_at_start(raw: RawFd) -> bool {
    usize::try_from(raw)
        .ok()
        .filter(|&fd| fd < RECORDED_FDS)
        .is_some_and(|fd| {
            INHERITED_AT_START[fd / 64].load(std::sync::atomic::Ordering::Relaxed)
                & (1 << (fd % 64))
                != 0
        })
}

/// Takes ownership of a descriptor this process inherited across `execve` (`agentkeys run
/// --fd` names it in the environment), once `check` accepts it. Refuses, *leaving the
/// descriptor as it is*: a number that is not open, one already claimed, one marked
/// close-on-exec (it was opened by this process, so some object here owns it), one that
/// no variable of the initial environment named at start (opened later by this process,
/// even without close-on-exec), or one `check` rejects. The claimed descriptor is made
/// close-on-exec.
pub(crate) fn claim_inherited_fd(
    raw: RawFd,
    check: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    let mut claimed = CLAIMED
        .lock()
        .map_err(|_| io::Error::other("claimed-fd registry poisoned"))?;
    if raw < 3 || claimed.contains(&raw) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only queries the descriptor's flags; it touches no memory and fails
    // with EBADF when the number is not open.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the descriptor is close-on-exec: it was opened in this process, not inherited",
        ));
    }
    if !inherited_at_start(raw) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the descriptor was not inherited at start under an AGENTKEYS_FD_ variable: it was \
             opened by this process, which owns it",
        ));
    }
    // SAFETY: the descriptor is open (checked above) and stays open for the borrow: only
    // this process could close it, and this function holds the claim registry's lock.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    check(borrowed)?;
    claimed.push(raw);
    // SAFETY: the descriptor is open, was inherited across execve (not close-on-exec, while
    // every descriptor this process's agentkeys code opens is), the environment protocol
    // named it once (the variable is gone), and the registry guarantees this is the only
    // OwnedFd ever made from it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// `PKEY_DISABLE_ACCESS` (missing from the libc crate).
pub(crate) const PKEY_DISABLE_ACCESS: libc::c_uint = 0x1;

unsafe extern "C" {
    /// glibc ≥ 2.27: writes this thread's PKRU bits for `key` (`wrpkru`).
    fn pkey_set(key: libc::c_int, rights: libc::c_uint) -> libc::c_int;
}

/// `pkey_alloc(0, init_rights)`: a protection key, with the calling thread's rights for it
/// set to `init_rights`. Fails with `ENOSPC`/`EINVAL`/`ENOSYS` without PKU support.
pub(crate) fn pkey_alloc(init_rights: libc::c_uint) -> io::Result<libc::c_int> {
    // SAFETY: pkey_alloc takes two integers and touches no user memory.
    let ret = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0usize, init_rights as usize) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    libc::c_int::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Sets the calling thread's rights for `key` (0 = read and write, or
/// [`PKEY_DISABLE_ACCESS`]). Other threads keep their own rights.
pub(crate) fn pkey_set_rights(key: libc::c_int, rights: libc::c_uint) -> io::Result<()> {
    // SAFETY: pkey_set only writes this thread's PKRU register; it touches no memory. A
    // stricter right can only make later accesses fault, which is the purpose.
    if unsafe { pkey_set(key, rights) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Mapping {
    /// Tags the whole mapping with protection key `key` (keeping read and write): accesses
    /// then follow each thread's rights for that key.
    pub(crate) fn protect_with_key(&mut self, key: libc::c_int) -> io::Result<()> {
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as usize;
        // SAFETY: the range is exactly the region this Mapping owns; pkey_mprotect only
        // changes which threads may access it, never its contents or its extent.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pkey_mprotect,
                self.ptr.as_ptr() as usize,
                self.len,
                prot,
                key as usize,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

unsafe extern "C" {
    /// The C library's environment: a NULL-terminated array of `NAME=value` strings.
    static environ: *const *mut libc::c_char;
}

/// Copies the value of environment variable `name` out, overwrites the value's bytes with
/// zeros where they live (for a variable the process was started with, the environment
/// block that `/proc/<pid>/environ` shows), and removes the variable.
///
/// # Safety
///
/// No other thread may read or write the environment meanwhile (in practice: the process
/// is single-threaded), as for `std::env::remove_var`.
pub(crate) unsafe fn take_env_var(name: &str) -> Option<crate::SecretBytes> {
    let prefix = format!("{name}=");
    let mut i = 0;
    let mut found: Option<(crate::SecretBytes, *mut libc::c_char, usize)> = None;
    loop {
        // SAFETY: `environ` is the C library's environment array; reading the pointer value
        // is sound while no thread changes it (this function's contract).
        let array = unsafe { environ };
        if array.is_null() {
            break;
        }
        // SAFETY: the array is NULL-terminated and `i` never passes the NULL entry (the loop
        // stops there), so the offset stays inside it.
        let slot = unsafe { array.add(i) };
        // SAFETY: `slot` points at an entry of the live array (see above).
        let entry = unsafe { *slot };
        if entry.is_null() {
            break;
        }
        // SAFETY: every entry is a NUL-terminated string owned by the environment, alive
        // while no thread changes the environment (this function's contract).
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        if bytes.starts_with(prefix.as_bytes()) {
            let value_len = bytes.len() - prefix.len();
            let value = crate::SecretBytes::from_slice(&bytes[prefix.len()..]);
            // SAFETY: the value starts right after the prefix inside this entry's string.
            let start = unsafe { entry.add(prefix.len()) };
            // SAFETY: the value's bytes lie inside this entry's string, which the environment
            // owns and nothing else reads meanwhile; writing zeros over them (not over the
            // terminating NUL) keeps it a valid C string.
            let tail = unsafe { std::slice::from_raw_parts_mut(start.cast::<u8>(), value_len) };
            zeroize::Zeroize::zeroize(tail);
            found = Some((value, entry, prefix.len()));
            break;
        }
        i += 1;
    }
    let (value, entry, name_len) = found?;
    // SAFETY: no other thread reads or writes the environment (this function's contract).
    unsafe { std::env::remove_var(name) };
    // The name goes too, so /proc/<pid>/environ (the initial block) no longer shows it.
    // SAFETY: glibc never frees environment strings on unsetenv (the initial block lives in
    // the process's stack; strings setenv made are kept because code may still hold
    // pointers into them), so `entry` is still valid memory, and no longer reachable from
    // `environ`: overwriting the name (not the terminating NUL) touches nothing in use.
    let name_bytes = unsafe { std::slice::from_raw_parts_mut(entry.cast::<u8>(), name_len) };
    zeroize::Zeroize::zeroize(name_bytes);
    Some(value)
}

/// [`take_env_var`] for a caller that checked this process runs a single thread.
pub(crate) fn take_env_secret_single_threaded(name: &str) -> Option<crate::SecretBytes> {
    // SAFETY: the only caller (`process::take_secret_env`) checked that this process runs
    // one thread, so no other thread can read or write the environment meanwhile.
    unsafe { take_env_var(name) }
}
