//! Memory protection keys for long-lived secret pages (docs/threat-model.md, "Defences in
//! each process").
//!
//! One key per process, allocated with "no access" for the allocating thread; every other
//! thread already denies it (Linux starts threads with access disabled for every key but 0,
//! and new threads inherit their creator's rights). A [`ProtectedPage`] is tagged with the
//! key, so any access faults (`SIGSEGV`) except inside [`ProtectedPage::with_access`], which
//! opens the key on the calling thread only, for the length of a closure.
//!
//! This guards against stray reads and memory-disclosure bugs inside the process, not
//! against code execution (`wrpkru` is unprivileged) nor the kernel (`/proc/<pid>/mem`
//! ignores keys; `memfd_secret` is what stops that).

#![forbid(unsafe_code)] // the raw calls live in sys.rs

use std::sync::OnceLock;

use crate::SecretPage;
use crate::sys::{self, PKEY_DISABLE_ACCESS};

static KEY: OnceLock<Result<i32, String>> = OnceLock::new();

fn key() -> Result<i32, String> {
    KEY.get_or_init(|| {
        sys::pkey_alloc(PKEY_DISABLE_ACCESS).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::ENOSPC) => format!(
                "no memory protection keys here ({e}): needs x86 with PKU (cpu flags pku, ospke)"
            ),
            _ => e.to_string(),
        })
    })
    .clone()
}

/// Whether this process can protect pages with a key (allocating it on first use).
pub fn available() -> Result<(), String> {
    key().map(|_| ())
}

/// A secret page no thread can touch except inside [`with_access`](Self::with_access).
/// Where protection keys are unavailable it is a plain [`SecretPage`] (check
/// [`is_protected`](Self::is_protected)).
pub struct ProtectedPage {
    // `None` only while being dropped.
    page: Option<SecretPage>,
    key: Option<i32>,
}

impl ProtectedPage {
    /// Tags `page` with the process key.
    pub fn new(mut page: SecretPage) -> Self {
        let key = key()
            .ok()
            .filter(|&k| page.mapping_mut().protect_with_key(k).is_ok());
        ProtectedPage {
            page: Some(page),
            key,
        }
    }

    fn bytes(&self) -> &[u8] {
        self.page
            .as_ref()
            .map_or(&[][..], SecretPage::expose_secret)
    }

    /// Whether accesses outside `with_access` fault.
    pub fn is_protected(&self) -> bool {
        self.key.is_some()
    }

    /// Logical length.
    pub fn len(&self) -> usize {
        self.page.as_ref().map_or(0, SecretPage::len)
    }

    /// Whether the page is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` with the bytes, access opened for the calling thread only and closed again
    /// before returning. `f` must not hand the slice to another thread (the borrow keeps it
    /// from escaping the closure).
    pub fn with_access<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let _open = Window::open(self.key);
        f(self.bytes())
    }
}

impl Drop for ProtectedPage {
    fn drop(&mut self) {
        // The wipe in SecretPage's drop writes to the page: open the window around it.
        let _open = Window::open(self.key);
        drop(self.page.take());
    }
}

/// This thread's access to the key, opened on creation and closed on drop (also when the
/// closure panics).
struct Window(Option<i32>);

impl Window {
    fn open(key: Option<i32>) -> Self {
        if let Some(k) = key {
            let _ = sys::pkey_set_rights(k, 0);
        }
        Window(key)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(k) = self.0 {
            let _ = sys::pkey_set_rights(k, PKEY_DISABLE_ACCESS);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const PROBE: &str = "AGENTKEYS_PKEY_PROBE";

    /// A protected page, or `None` (after a visible skip line) where this machine has no
    /// protection keys; the fallback is then asserted: the page still works, unprotected.
    fn protected(test: &str) -> Option<ProtectedPage> {
        let p = ProtectedPage::new(SecretPage::from_slice(b"pkey-canary").expect("page"));
        match available() {
            Ok(()) => {
                assert!(
                    p.is_protected(),
                    "pkey_alloc works here: the page must be tagged"
                );
                Some(p)
            }
            Err(why) => {
                crate::skipped(test, &format!("no protection keys on this machine ({why})"));
                assert!(!p.is_protected(), "no key, yet the page claims protection");
                assert_eq!(p.with_access(<[u8]>::to_vec), b"pkey-canary");
                assert_eq!(
                    p.bytes(),
                    b"pkey-canary",
                    "the fallback page reads anywhere"
                );
                None
            }
        }
    }

    /// Re-runs this test binary on one test with the probe variable set and returns how
    /// the child ended.
    fn probe(test: &str, mode: &str) -> std::process::ExitStatus {
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(PROBE, mode)
            .output()
            .expect("run the probe")
            .status
    }

    fn sum(bytes: &[u8]) -> u64 {
        bytes.iter().map(|&b| u64::from(b)).sum()
    }

    #[test]
    fn the_window_gives_the_bytes_and_closes_again() {
        let Some(p) = protected("pkey::tests::the_window_gives_the_bytes_and_closes_again") else {
            return;
        };
        assert_eq!(p.with_access(<[u8]>::to_vec), b"pkey-canary");
        assert_eq!(p.with_access(<[u8]>::len), 11);
    }

    #[test]
    fn access_outside_the_window_or_from_another_thread_faults() {
        match std::env::var(PROBE).as_deref() {
            Ok("outside") => {
                let p = ProtectedPage::new(SecretPage::from_slice(b"pkey-canary").expect("page"));
                // Leaks the slice out of the window on purpose: this read must fault.
                let addr = p.with_access(|b| b.as_ptr() as usize);
                let _ = addr;
                let total = sum(p.bytes());
                println!("read {total} outside the window");
                std::process::exit(0);
            }
            Ok("thread") => {
                let p = std::sync::Arc::new(ProtectedPage::new(
                    SecretPage::from_slice(b"pkey-canary").expect("page"),
                ));
                let q = p.clone();
                // The other thread starts before any window opens, so it inherits "no
                // access"; it reads while the main thread holds its own window open.
                let (go, wait) = std::sync::mpsc::channel::<()>();
                let reader = std::thread::spawn(move || {
                    let _ = wait.recv();
                    sum(q.bytes())
                });
                p.with_access(|_| {
                    let _ = go.send(());
                    let total = reader.join().ok();
                    println!("another thread read {total:?}");
                });
                std::process::exit(0);
            }
            _ => {}
        }
        use std::os::unix::process::ExitStatusExt as _;
        let name = "pkey::tests::access_outside_the_window_or_from_another_thread_faults";
        // Decided by calling pkey_alloc, never by reading CPU flags.
        let keys = protected(name).is_some();
        for mode in ["outside", "thread"] {
            let status = probe(name, mode);
            if keys {
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGSEGV),
                    "{mode}: the access must fault, got {status:?}"
                );
            } else {
                // The fallback: an unprotected page, readable from anywhere.
                assert!(
                    status.success(),
                    "{mode}: the fallback page must read, got {status:?}"
                );
            }
        }
    }
}
