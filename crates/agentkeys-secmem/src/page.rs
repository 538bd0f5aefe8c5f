//! Page-backed secret buffers ([`SecretPage`]): `memfd_secret`, sealed memfd, or locked anonymous memory.
//!
//! Credential plaintext is decrypted straight into one of these (STYLE habit 4) and, for fd
//! delivery (decision 75), the page's file descriptor is what travels over `SCM_RIGHTS`.
//! The kinds, best first:
//!
//! | kind | how | protects against |
//! |---|---|---|
//! | [`SecretPageKind::MemfdSecret`] | `memfd_secret(O_CLOEXEC)` + `ftruncate` + shared `mmap` | the kernel removes the pages from its direct map: `/proc/PID/mem` gives `EIO`, `process_vm_readv` `EFAULT`, even for root; the kernel marks the mapping locked and not dumpable itself |
//! | [`SecretPageKind::SealedMemfd`] | `memfd_create(MFD_CLOEXEC\|MFD_ALLOW_SEALING)` + `ftruncate` + seals `GROW\|SHRINK\|SEAL` + shared `mmap` + `mlock` + `MADV_DONTDUMP` | swap and core dumps; the seals stop a receiver from resizing the file under us (which would turn our accesses into `SIGBUS`) |
//! | [`SecretPageKind::LockedAnon`] | private anonymous `mmap` + `mlock` + `MADV_DONTDUMP` + `MADV_WIPEONFORK` | swap, core dumps, and copies into forked children; no fd, so no fd delivery |

#![forbid(unsafe_code)] // all of this crate's `unsafe` lives in sys.rs

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use zeroize::Zeroize;

use crate::sys::{self, Advice, Mapping};

/// Which mechanism backs a [`SecretPage`], strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretPageKind {
    /// A `memfd_secret` file: pages invisible to the kernel's direct map (Linux ≥ 5.14 with
    /// `secretmem` enabled). Its fd can only be mapped, not read.
    MemfdSecret,
    /// A sealed, locked, non-dumpable `memfd`: readable through `/proc/PID/mem` by whoever may
    /// ptrace us, but never swapped or dumped.
    SealedMemfd,
    /// Locked, non-dumpable, wipe-on-fork anonymous memory. Has no fd.
    LockedAnon,
}

impl SecretPageKind {
    /// The stable name used in reports and in the fd-delivery metadata (`kind`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MemfdSecret => "memfd_secret",
            Self::SealedMemfd => "sealed_memfd",
            Self::LockedAnon => "locked_anon",
        }
    }
}

impl fmt::Display for SecretPageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A page-backed secret buffer: a mapping of whole pages holding `len` logical bytes.
///
/// Invariants: the mapping is `capacity()` bytes (a whole number of pages, at least one), the
/// bytes beyond `len()` are always zero, and on drop the whole mapping is wiped, unlocked,
/// unmapped and its fd (if any) closed.
///
/// `SecretPage` is `Send` and `Sync`: it uniquely owns its mapping and fd (no `Clone`, no shared
/// handles), so moving it between threads moves that ownership, and shared access only yields
/// `&[u8]` while mutation needs `&mut self`. A process that *receives* the fd can write through
/// its own mapping; the contents are plain bytes, so that can garble them but cannot break
/// memory safety here, and the seals (or `memfd_secret`'s fixed size) keep the mapping valid.
pub struct SecretPage {
    // Field order matters: the mapping is unmapped before the fd is closed. `Some` until
    // `Drop`, which may move it (wiped) into the [`pool`].
    mapping: Option<Mapping>,
    len: usize,
    kind: SecretPageKind,
    fd: Option<OwnedFd>,
    /// Set by [`SecretPage::hand_off`]: another process owns the bytes, do not wipe.
    handed_off: bool,
    /// Whether the page may go back to the [`pool`] when dropped: a one-page `memfd_secret`
    /// page made by [`SecretPage::new`] whose fd was never lent out ([`SecretPage::fd`]) and
    /// whose protection was never changed (a protection key). Cleared, never set again.
    reusable: AtomicBool,
}

/// Wiped one-page `memfd_secret` pages kept for reuse.
///
/// Creating a `memfd_secret` page removes it from the kernel's direct map and destroying it
/// puts it back, each with a TLB flush on every core: measured, that was the largest single
/// cost of a cached `get_credential` in the daemon and a tenth of a sealed read on the server.
/// A spare stays what it was (mapped only here, locked, out of the direct map, never dumped)
/// and holds only zeros: [`SecretPage`]'s `Drop` wipes the whole mapping before it returns.
/// A page whose fd ever left through [`SecretPage::fd`] is never kept, since another process
/// may still map that file.
mod pool {
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    use crate::sys::Mapping;

    /// Spares kept at most (one page each: 64 KiB of `RLIMIT_MEMLOCK` with 4 KiB pages).
    pub(super) const MAX: usize = 16;

    /// A wiped page and its file.
    pub(super) type Spare = (Mapping, OwnedFd);

    /// A set of spares.
    #[derive(Default)]
    pub(super) struct Pool(Mutex<Vec<Spare>>);

    impl Pool {
        pub(super) const fn new() -> Self {
            Pool(Mutex::new(Vec::new()))
        }

        pub(super) fn take(&self) -> Option<Spare> {
            self.0.lock().ok()?.pop()
        }

        /// Keeps `spare` unless the pool is full (then it is unmapped and closed).
        pub(super) fn put(&self, spare: Spare) {
            if let Ok(mut spares) = self.0.lock()
                && spares.len() < MAX
            {
                spares.push(spare);
            }
        }

        #[cfg(test)]
        pub(super) fn len(&self) -> usize {
            self.0.lock().map_or(0, |s| s.len())
        }
    }

    /// The process's pool.
    pub(super) static GLOBAL: Pool = Pool::new();
}

impl SecretPage {
    /// The best page kind this machine offers, zero-filled, holding `len` logical bytes.
    ///
    /// Tries `memfd_secret`, then a sealed memfd, then locked anonymous memory, falling through
    /// on any failure (`ENOSYS` on kernels without `secretmem`, `mlock` hitting
    /// `RLIMIT_MEMLOCK`, …). When every kind fails, returns the last kind's error. Check
    /// [`kind`](Self::kind) to report which protection is in effect.
    ///
    /// A page of one page's capacity comes from the process's pool of wiped `memfd_secret`
    /// pages when it has one, and goes back to it when dropped (unless its fd was lent out).
    pub fn new(len: usize) -> io::Result<Self> {
        Self::new_in(&pool::GLOBAL, len)
    }

    fn new_in(pool: &pool::Pool, len: usize) -> io::Result<Self> {
        let one_page = capacity_for(len)? == rustix::param::page_size();
        if one_page && let Some((mapping, fd)) = pool.take() {
            return Ok(Self {
                mapping: Some(mapping),
                len,
                kind: SecretPageKind::MemfdSecret,
                fd: Some(fd),
                handed_off: false,
                reusable: AtomicBool::new(true),
            });
        }
        let page = Self::with_kind(len, SecretPageKind::MemfdSecret)
            .or_else(|_| Self::with_kind(len, SecretPageKind::SealedMemfd))
            .or_else(|_| Self::with_kind(len, SecretPageKind::LockedAnon))?;
        if one_page && page.kind == SecretPageKind::MemfdSecret {
            page.reusable.store(true, Ordering::Relaxed);
        }
        Ok(page)
    }

    /// What `Drop` does, with the pool given (tests use their own): wipes the whole mapping
    /// and, if the page may be reused, moves it into `pool`. A handed-off page is left alone.
    fn retire(&mut self, pool: &pool::Pool) {
        if self.handed_off || self.mapping.is_none() {
            return;
        }
        #[cfg(test)]
        let before = drop_probe::nonzero(self.map().bytes());
        self.wipe();
        #[cfg(test)]
        drop_probe::record(before, drop_probe::nonzero(self.map().bytes()));
        if self.reusable.swap(false, Ordering::Relaxed)
            && let (Some(mapping), Some(fd)) = (self.mapping.take(), self.fd.take())
        {
            pool.put((mapping, fd));
        }
    }

    /// A zero-filled page of exactly `kind`, or that kind's error (no fallback).
    pub fn with_kind(len: usize, kind: SecretPageKind) -> io::Result<Self> {
        let capacity = capacity_for(len)?;
        let size = u64::try_from(capacity).map_err(|_| too_large())?;
        let (mapping, fd) = match kind {
            SecretPageKind::MemfdSecret => {
                let fd = sys::memfd_secret()?;
                rustix::fs::ftruncate(&fd, size)?;
                // No mlock/madvise: the kernel sets VM_LOCKED | VM_DONTDUMP on secretmem
                // mappings itself (mm/secretmem.c), and charges them to RLIMIT_MEMLOCK.
                let mapping = Mapping::shared(fd.as_fd(), capacity)?;
                (mapping, Some(fd))
            }
            SecretPageKind::SealedMemfd => {
                let fd = rustix::fs::memfd_create(
                    "agentkeys-secret",
                    MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
                )?;
                rustix::fs::ftruncate(&fd, size)?;
                rustix::fs::fcntl_add_seals(
                    &fd,
                    SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
                )?;
                let mut mapping = Mapping::shared(fd.as_fd(), capacity)?;
                mapping.lock()?;
                mapping.advise(Advice::DontDump)?;
                (mapping, Some(fd))
            }
            SecretPageKind::LockedAnon => {
                let mut mapping = Mapping::anonymous_private(capacity)?;
                mapping.lock()?;
                mapping.advise(Advice::DontDump)?;
                mapping.advise(Advice::WipeOnFork)?;
                (mapping, None)
            }
        };
        Ok(Self {
            mapping: Some(mapping),
            len,
            kind,
            fd,
            handed_off: false,
            reusable: AtomicBool::new(false),
        })
    }

    /// [`new`](Self::new) followed by a copy of `src`. The caller still owns `src` and should
    /// wipe it.
    pub fn from_slice(src: &[u8]) -> io::Result<Self> {
        let mut page = Self::new(src.len())?;
        page.expose_secret_mut().copy_from_slice(src);
        Ok(page)
    }

    /// Which mechanism backs this page.
    pub fn kind(&self) -> SecretPageKind {
        self.kind
    }

    /// Logical length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the logical length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Mapped bytes: `len` rounded up to whole pages, at least one page.
    pub fn capacity(&self) -> usize {
        self.map().bytes().len()
    }

    /// The first `len()` bytes. The one greppable door out of the type.
    pub fn expose_secret(&self) -> &[u8] {
        &self.map().bytes()[..self.len]
    }

    /// The first `len()` bytes, writable.
    pub fn expose_secret_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.map_mut().bytes_mut()[..len]
    }

    /// Changes the logical length within the capacity. When shrinking, the bytes beyond the
    /// new length are wiped; when growing, the newly exposed bytes are zero (they always are).
    ///
    /// # Panics
    /// If `len > capacity()`: a page never grows, because growing would mean a copy.
    pub fn set_len(&mut self, len: usize) {
        let capacity = self.capacity();
        assert!(
            len <= capacity,
            "SecretPage::set_len({len}) exceeds the page capacity ({capacity})"
        );
        if len < self.len {
            let old = self.len;
            self.map_mut().bytes_mut()[len..old].zeroize();
        }
        self.len = len;
    }

    /// The page's file descriptor (for `SCM_RIGHTS` delivery), or `None` for
    /// [`SecretPageKind::LockedAnon`].
    ///
    /// A page whose fd was asked for is never reused after it is dropped: another process
    /// may hold the file by then.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.reusable.store(false, Ordering::Relaxed);
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Zeroizes the whole mapping (volatile writes) and keeps it mapped; `len()` is unchanged.
    pub fn wipe(&mut self) {
        self.map_mut().bytes_mut().zeroize();
    }

    fn map(&self) -> &Mapping {
        self.mapping
            .as_ref()
            .expect("invariant: a live page has its mapping")
    }

    fn map_mut(&mut self) -> &mut Mapping {
        self.mapping
            .as_mut()
            .expect("invariant: a live page has its mapping")
    }

    /// Maps a secret file received from another process (fd delivery, decision 75):
    /// a `memfd_secret` file, or a memfd sealed against shrinking and growing, holding
    /// `len` logical bytes. Anything else is refused, because a file the sender could
    /// truncate under our mapping would turn reads into `SIGBUS`.
    ///
    /// The page owns the fd from here: dropping it wipes the mapping (the sender's view of
    /// the same file too), unmaps and closes.
    pub fn adopt(fd: OwnedFd, len: usize) -> io::Result<Self> {
        let kind = received_kind(&fd)?;
        let size = usize::try_from(rustix::fs::fstat(&fd)?.st_size).map_err(|_| too_large())?;
        if size == 0 || size % rustix::param::page_size() != 0 || len > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the received secret file is not a whole number of pages holding the announced length",
            ));
        }
        let mut mapping = Mapping::shared(fd.as_fd(), size)?;
        if kind == SecretPageKind::SealedMemfd {
            mapping.lock()?;
            mapping.advise(Advice::DontDump)?;
        }
        Ok(Self {
            mapping: Some(mapping),
            len,
            kind,
            fd: Some(fd),
            handed_off: false,
            reusable: AtomicBool::new(false),
        })
    }

    /// Takes the credential `agentkeys run --fd` handed this process under the environment
    /// variable `var` (`<fd>:<length>`, e.g. `AGENTKEYS_FD_OPENAI=3:51`). `Ok(None)` when the
    /// variable is not set.
    ///
    /// Sound as a safe function because of the protocol it checks, not a caller's promise:
    /// the variable is taken out of the environment (so it can name the descriptor to this
    /// process, and to programs it starts, once only), which needs the process to run a
    /// single thread; the descriptor must have been inherited across `execve` (it is not
    /// close-on-exec, while every descriptor agentkeys opens itself is) and must be a
    /// `memfd_secret` file or a sealed memfd. Only then does the page take ownership (and
    /// make it close-on-exec); anything that fails a check is left open, never closed.
    pub fn take_inherited(var: &str) -> io::Result<Option<Self>> {
        let Some(value) = crate::process::take_secret_env(var)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(value.expose_secret()).unwrap_or("");
        let parsed = text
            .split_once(':')
            .and_then(|(fd, len)| Some((fd.parse::<i32>().ok()?, len.parse::<usize>().ok()?)));
        let Some((raw, len)) = parsed else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{var} must be '<fd>:<length>'"),
            ));
        };
        let fd = sys::claim_inherited_fd(raw, |fd| received_kind_of(fd).map(drop))?;
        Self::adopt(fd, len).map(Some)
    }

    /// Unmaps and closes *without wiping*, after the fd was handed to another process
    /// that now owns the bytes (fd delivery, `run --fd`): wiping would erase them under the
    /// receiver. The kernel frees the file when the last holder closes it (and zeroes
    /// `memfd_secret` pages as it frees them).
    ///
    /// Only call this once the receiver holds its own reference (the `sendmsg` or the
    /// child's `execve` succeeded); otherwise drop the page normally.
    pub fn hand_off(mut self) {
        self.handed_off = true;
    }

    /// The mapping, for tagging it with a protection key ([`crate::pkey`]).
    pub(crate) fn mapping_mut(&mut self) -> &mut Mapping {
        self.reusable.store(false, Ordering::Relaxed);
        self.map_mut()
    }

    /// Start address of the mapping, for tests that read it from outside.
    #[cfg(test)]
    fn addr(&self) -> usize {
        self.map().addr()
    }
}

impl Drop for SecretPage {
    fn drop(&mut self) {
        self.retire(&pool::GLOBAL);
        // Then the fields drop in order: `mapping` (munlock where locked, munmap), `fd` (close),
        // unless the page went back to the pool.
    }
}

impl fmt::Debug for SecretPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretPage")
            .field("kind", &self.kind)
            .field("len", &self.len)
            .finish()
    }
}

/// Whether this kernel gives `memfd_secret` pages, decided once by making one (never by
/// reading the kernel version or config): `Err` says why not (`ENOSYS` where `secretmem` is
/// missing or disabled, `ENOMEM` when `RLIMIT_MEMLOCK` is exhausted).
pub fn memfd_secret_available() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            SecretPage::with_kind(1, SecretPageKind::MemfdSecret)
                .map(drop)
                .map_err(|e| format!("memfd_secret: {e}"))
        })
        .clone()
}

/// What a received fd is: `memfd_secret` files link to `/secretmem`, memfds to
/// `/memfd:…`; a memfd must carry the seals [`SecretPage::with_kind`] sets.
fn received_kind(fd: &OwnedFd) -> io::Result<SecretPageKind> {
    received_kind_of(fd.as_fd())
}

fn received_kind_of(fd: BorrowedFd<'_>) -> io::Result<SecretPageKind> {
    use std::os::fd::AsRawFd as _;
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let target = target.to_string_lossy();
    if target.starts_with("/secretmem") {
        return Ok(SecretPageKind::MemfdSecret);
    }
    if target.starts_with("/memfd:") {
        let seals = rustix::fs::fcntl_get_seals(fd)?;
        if seals.contains(SealFlags::GROW | SealFlags::SHRINK) {
            return Ok(SecretPageKind::SealedMemfd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "the received fd is neither a memfd_secret file nor a sealed memfd",
    ))
}

fn capacity_for(len: usize) -> io::Result<usize> {
    len.max(1)
        .checked_next_multiple_of(rustix::param::page_size())
        .ok_or_else(too_large)
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "secret page length overflows the address space",
    )
}

/// Test-only probe of the drop path: what the mapping held just before and just after the
/// wipe in `Drop`, read from the real mapping while it is still mapped. Recorded per thread so
/// parallel tests do not see each other's pages.
#[cfg(test)]
mod drop_probe {
    use std::cell::Cell;

    thread_local! {
        static LAST: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    }

    pub(super) fn nonzero(bytes: &[u8]) -> usize {
        bytes.iter().filter(|&&b| b != 0).count()
    }

    pub(super) fn record(before: usize, after: usize) {
        LAST.with(|last| last.set(Some((before, after))));
    }

    /// `(non-zero bytes before the wipe, non-zero bytes after it)` of the last page dropped on
    /// this thread, and resets the record.
    pub(super) fn take() -> Option<(usize, usize)> {
        LAST.with(Cell::take)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use super::*;

    const CANARY: &[u8] = b"CANARY-PAGE-51c0ffee";
    const ALL_KINDS: [SecretPageKind; 3] = [
        SecretPageKind::MemfdSecret,
        SecretPageKind::SealedMemfd,
        SecretPageKind::LockedAnon,
    ];

    /// A page of exactly `kind`, failing loudly when the kernel lacks it (callers ask
    /// [`kinds_here`] first).
    fn page_of(kind: SecretPageKind, len: usize) -> SecretPage {
        SecretPage::with_kind(len, kind)
            .unwrap_or_else(|e| panic!("could not create a {kind} page: {e}"))
    }

    /// The kinds this machine gives, with a visible skip line for `memfd_secret` where the
    /// kernel lacks it (decided by calling it).
    fn kinds_here(test: &str) -> Vec<SecretPageKind> {
        match memfd_secret_available() {
            Ok(()) => ALL_KINDS.to_vec(),
            Err(why) => {
                crate::skipped(test, &format!("no memfd_secret on this kernel ({why})"));
                ALL_KINDS[1..].to_vec()
            }
        }
    }

    fn inode(page: &SecretPage) -> u64 {
        // The field, not `fd()`: asking for the fd would make the page unusable for the pool.
        rustix::fs::fstat(page.fd.as_ref().expect("fd"))
            .expect("fstat")
            .st_ino
    }

    #[test]
    fn a_dropped_one_page_secret_comes_back_wiped_from_the_pool() {
        if let Err(why) = memfd_secret_available() {
            crate::skipped(
                "a_dropped_one_page_secret_comes_back_wiped_from_the_pool",
                &format!(
                    "no memfd_secret, so nothing is pooled ({why}); checked instead that a fallback page is not kept"
                ),
            );
            let pool = pool::Pool::new();
            let mut page = SecretPage::new_in(&pool, 8).expect("page");
            page.retire(&pool);
            assert_eq!(pool.len(), 0);
            return;
        }
        let pool = pool::Pool::new();
        let mut page = SecretPage::new_in(&pool, CANARY.len()).expect("page");
        page.expose_secret_mut().copy_from_slice(CANARY);
        let first = inode(&page);
        page.retire(&pool);
        assert_eq!(pool.len(), 1, "a one-page memfd_secret page is kept");
        drop(page);
        let again = SecretPage::new_in(&pool, 100).expect("page");
        assert_eq!(inode(&again), first, "the spare is handed out again");
        assert_eq!(again.kind(), SecretPageKind::MemfdSecret);
        assert_eq!(again.len(), 100);
        assert!(
            again.map().bytes().iter().all(|&b| b == 0),
            "a spare holds only zeros"
        );
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn pages_whose_fd_was_lent_or_that_span_pages_are_never_pooled() {
        let pool = pool::Pool::new();
        let mut lent = SecretPage::new_in(&pool, 8).expect("page");
        let _ = lent.fd();
        lent.retire(&pool);
        let mut big = SecretPage::new_in(&pool, rustix::param::page_size() + 1).expect("page");
        big.retire(&pool);
        let mut chosen = SecretPage::with_kind(8, best_fd_kind()).expect("page");
        chosen.retire(&pool);
        assert_eq!(pool.len(), 0);
        for _ in 0..pool::MAX + 4 {
            let mut p = SecretPage::new_in(&pool, 8).expect("page");
            p.retire(&pool);
            let _ = SecretPage::new_in(&pool, 8);
        }
        assert!(pool.len() <= pool::MAX);
    }

    /// The strongest fd kind this machine gives (for tests of what every fd kind does).
    fn best_fd_kind() -> SecretPageKind {
        if memfd_secret_available().is_ok() {
            SecretPageKind::MemfdSecret
        } else {
            SecretPageKind::SealedMemfd
        }
    }

    /// The fd kinds this machine gives.
    fn fd_kinds_here(test: &str) -> Vec<SecretPageKind> {
        kinds_here(test)
            .into_iter()
            .filter(|k| *k != SecretPageKind::LockedAnon)
            .collect()
    }

    fn page_with_canary(kind: SecretPageKind) -> SecretPage {
        let mut page = page_of(kind, CANARY.len());
        page.expose_secret_mut().copy_from_slice(CANARY);
        page
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn debug_of_a_secret_page_shows_kind_and_len_but_not_the_canary() {
        for kind in
            kinds_here("page::tests::debug_of_a_secret_page_shows_kind_and_len_but_not_the_canary")
        {
            let page = page_with_canary(kind);
            let shown = format!("{page:?} {page:#?}");
            assert!(!contains(shown.as_bytes(), b"CANARY"), "{shown}");
            assert!(shown.contains(&format!("{kind:?}")), "{shown}");
            assert!(shown.contains(&CANARY.len().to_string()), "{shown}");
        }
    }

    #[test]
    fn new_picks_memfd_secret_where_the_kernel_has_it_else_a_sealed_memfd() {
        let page = SecretPage::new(32).expect("a secret page");
        match memfd_secret_available() {
            Ok(()) => assert_eq!(page.kind(), SecretPageKind::MemfdSecret),
            Err(why) => {
                crate::skipped(
                    "page::tests::new_picks_memfd_secret_where_the_kernel_has_it_else_a_sealed_memfd",
                    &format!("no memfd_secret on this kernel ({why})"),
                );
                assert_eq!(
                    page.kind(),
                    SecretPageKind::SealedMemfd,
                    "the first fallback"
                );
            }
        }
    }

    #[test]
    fn with_kind_gives_exactly_that_kind_zero_filled() {
        for kind in kinds_here("page::tests::with_kind_gives_exactly_that_kind_zero_filled") {
            let page = page_of(kind, 100);
            assert_eq!(page.kind(), kind);
            assert_eq!(page.len(), 100);
            assert!(!page.is_empty());
            assert_eq!(page.capacity(), rustix::param::page_size());
            assert!(page.expose_secret().iter().all(|&b| b == 0));
            assert_eq!(page.fd().is_some(), kind != SecretPageKind::LockedAnon);
        }
    }

    #[test]
    fn capacity_is_whole_pages_and_at_least_one() {
        let page_size = rustix::param::page_size();
        let empty = SecretPage::new(0).expect("page");
        assert!(empty.is_empty());
        assert_eq!(empty.capacity(), page_size);
        let two = SecretPage::new(page_size + 1).expect("page");
        assert_eq!(two.capacity(), 2 * page_size);
        let exact = SecretPage::new(page_size).expect("page");
        assert_eq!(exact.capacity(), page_size);
    }

    #[test]
    fn from_slice_copies_the_bytes() {
        let page = SecretPage::from_slice(CANARY).expect("page");
        assert_eq!(page.expose_secret(), CANARY);
        assert_eq!(page.len(), CANARY.len());
    }

    #[test]
    fn kind_names_are_stable() {
        assert_eq!(SecretPageKind::MemfdSecret.as_str(), "memfd_secret");
        assert_eq!(SecretPageKind::SealedMemfd.to_string(), "sealed_memfd");
        assert_eq!(format!("{}", SecretPageKind::LockedAnon), "locked_anon");
    }

    #[test]
    fn dropping_an_fd_page_leaves_only_zeros_in_a_second_view_of_the_same_file() {
        let test =
            "page::tests::dropping_an_fd_page_leaves_only_zeros_in_a_second_view_of_the_same_file";
        for kind in fd_kinds_here(test) {
            let mut page = page_of(kind, CANARY.len());
            let dup = page
                .fd()
                .expect("fd kinds have an fd")
                .try_clone_to_owned()
                .expect("dup");
            let view = Mapping::shared(dup.as_fd(), page.capacity()).expect("second mapping");
            page.expose_secret_mut().copy_from_slice(CANARY);
            // Control: the second view really shows the page's memory.
            assert!(
                contains(view.bytes(), CANARY),
                "{kind}: view does not see the page"
            );
            drop(page);
            assert!(
                view.bytes().iter().all(|&b| b == 0),
                "{kind}: plaintext survived the drop"
            );
        }
    }

    // LockedAnon has no fd, so no second view is possible, and after munmap the address is
    // gone. The honest observation point is inside Drop itself: a test-only probe counts the
    // non-zero bytes of the real mapping just before and just after the wipe, while it is still
    // mapped, right before munmap. The "before" count proves the probe reads the page (it sees
    // the canary); the "after" count is the claim.
    #[test]
    fn dropping_a_page_wipes_the_real_mapping_before_unmapping_it() {
        let nonzero_canary = CANARY.iter().filter(|&&b| b != 0).count();
        let test = "page::tests::dropping_a_page_wipes_the_real_mapping_before_unmapping_it";
        for kind in kinds_here(test) {
            let _ = drop_probe::take();
            let page = page_with_canary(kind);
            drop(page);
            assert_eq!(
                drop_probe::take(),
                Some((nonzero_canary, 0)),
                "{kind}: (non-zero bytes before wipe, after wipe)"
            );
        }
    }

    #[test]
    fn wipe_zeroes_the_whole_mapping_and_keeps_it_usable() {
        for kind in kinds_here("page::tests::wipe_zeroes_the_whole_mapping_and_keeps_it_usable") {
            let mut page = page_with_canary(kind);
            page.wipe();
            assert_eq!(page.len(), CANARY.len());
            assert!(page.map().bytes().iter().all(|&b| b == 0), "{kind}");
            page.expose_secret_mut()[0] = 1;
            assert_eq!(page.expose_secret()[0], 1);
        }
    }

    #[test]
    fn set_len_shrinking_wipes_the_tail_and_growing_exposes_zeros() {
        let test = "page::tests::set_len_shrinking_wipes_the_tail_and_growing_exposes_zeros";
        for kind in kinds_here(test) {
            let mut page = page_with_canary(kind);
            page.set_len(6);
            assert_eq!(page.expose_secret(), &CANARY[..6]);
            assert!(
                page.map().bytes()[6..].iter().all(|&b| b == 0),
                "{kind}: tail not wiped"
            );
            page.set_len(CANARY.len());
            assert_eq!(&page.expose_secret()[..6], &CANARY[..6]);
            assert!(page.expose_secret()[6..].iter().all(|&b| b == 0));
            let capacity = page.capacity();
            page.set_len(capacity);
            assert_eq!(page.expose_secret().len(), capacity);
        }
    }

    #[test]
    #[should_panic(expected = "exceeds the page capacity")]
    fn set_len_beyond_capacity_panics() {
        let mut page = SecretPage::new(1).expect("page");
        let capacity = page.capacity();
        page.set_len(capacity + 1);
    }

    #[test]
    fn memfd_secret_is_unreadable_through_proc_self_mem_while_locked_anon_is_readable() {
        let mem = File::open("/proc/self/mem").expect("open /proc/self/mem");
        let mut buf = vec![0u8; CANARY.len()];

        let anon = page_with_canary(SecretPageKind::LockedAnon);
        mem.read_exact_at(&mut buf, anon.addr() as u64)
            .expect("an ordinary locked page is readable through /proc/self/mem");
        assert_eq!(
            buf, CANARY,
            "control: /proc/self/mem read the wrong address"
        );

        if let Err(why) = memfd_secret_available() {
            crate::skipped(
                "page::tests::memfd_secret_is_unreadable_through_proc_self_mem_while_locked_anon_is_readable",
                &format!(
                    "no memfd_secret on this kernel ({why}); only the readable control was checked"
                ),
            );
            return;
        }
        let secret = page_with_canary(SecretPageKind::MemfdSecret);
        buf.fill(0);
        let err = mem
            .read_exact_at(&mut buf, secret.addr() as u64)
            .expect_err("memfd_secret must not be readable through /proc/self/mem");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(!contains(&buf, CANARY));
    }

    /// The `VmFlags` line of `/proc/self/smaps` for the mapping starting at `addr`.
    fn vm_flags(addr: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
        let header = format!("{addr:x}-");
        let mut in_entry = false;
        for line in smaps.lines() {
            if line.starts_with(&header) {
                in_entry = true;
            } else if in_entry && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
        panic!("no smaps entry for {addr:x}");
    }

    #[test]
    fn every_kind_is_locked_and_left_out_of_core_dumps() {
        for kind in kinds_here("page::tests::every_kind_is_locked_and_left_out_of_core_dumps") {
            let page = page_of(kind, 1);
            let flags = vm_flags(page.addr());
            assert!(
                flags.iter().any(|f| f == "lo"),
                "{kind}: not locked: {flags:?}"
            );
            assert!(
                flags.iter().any(|f| f == "dd"),
                "{kind}: dumpable: {flags:?}"
            );
            if kind == SecretPageKind::LockedAnon {
                assert!(
                    flags.iter().any(|f| f == "wf"),
                    "{kind}: no wipe-on-fork: {flags:?}"
                );
            }
        }
    }

    #[test]
    fn an_adopted_fd_shows_the_senders_bytes_and_its_drop_wipes_both_views() {
        let test =
            "page::tests::an_adopted_fd_shows_the_senders_bytes_and_its_drop_wipes_both_views";
        for kind in fd_kinds_here(test) {
            let sender = page_with_canary(kind);
            let fd = sender.fd().expect("fd").try_clone_to_owned().expect("dup");
            let received = SecretPage::adopt(fd, CANARY.len()).expect("adopt");
            assert_eq!(received.kind(), kind);
            assert_eq!(received.expose_secret(), CANARY);
            drop(received);
            assert!(
                sender.map().bytes().iter().all(|&b| b == 0),
                "{kind}: the receiver's drop did not wipe the shared file"
            );
        }
    }

    #[test]
    fn a_handed_off_page_leaves_the_bytes_to_the_receiver() {
        let sender = page_with_canary(best_fd_kind());
        let fd = sender.fd().expect("fd").try_clone_to_owned().expect("dup");
        sender.hand_off();
        let received = SecretPage::adopt(fd, CANARY.len()).expect("adopt");
        assert_eq!(received.expose_secret(), CANARY);
    }

    #[test]
    fn adopt_refuses_plain_files_unsealed_memfds_and_lengths_beyond_the_file() {
        let file = File::open("/etc/hostname").expect("file");
        assert!(SecretPage::adopt(file.into(), 1).is_err());
        let memfd = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&memfd, 4096).expect("size");
        assert!(SecretPage::adopt(memfd, 1).is_err());
        let page = page_of(best_fd_kind(), 1);
        let fd = page.fd().expect("fd").try_clone_to_owned().expect("dup");
        assert!(SecretPage::adopt(fd, page.capacity() + 1).is_err());
    }

    #[test]
    fn secret_pages_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SecretPage>();
        let page = SecretPage::from_slice(b"moved").expect("page");
        let back = std::thread::spawn(move || page.expose_secret().to_vec())
            .join()
            .expect("thread");
        assert_eq!(back, b"moved");
    }
}
