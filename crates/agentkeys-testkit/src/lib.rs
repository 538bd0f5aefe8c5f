//! Fixtures for end-to-end tests that start the real binaries: the workspace's binaries
//! found next to the test's own, an `agentkeys-server` on a free port with its own data
//! dir (ready when it says so: no sleeps), random canary credentials, and the memory
//! assertion every "no copy left" test makes.

#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A workspace binary, built by the same `cargo test --workspace` into the directory of
/// `sibling` (pass `env!("CARGO_BIN_EXE_<a bin of the test's crate>")`).
pub fn workspace_bin(sibling: &str, name: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run 'cargo test --workspace' (or 'cargo build --workspace') first",
        path.display()
    );
    path
}

/// A running `agentkeys-server` process; killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory (SQLite file `agentkeys.db`, `server.key`).
    pub data_dir: PathBuf,
    bin: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    _dir: TempDir,
}

/// A temporary directory removed on drop (std only, to keep this crate dependency-free).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh private directory under the system temp dir.
    pub fn new(prefix: &str) -> TempDir {
        let r: [u8; 8] = agentkeys_core::crypto::random_array();
        let name = format!("{prefix}-{}", agentkeys_core::hex(&r));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `agentkeys-server` on `listen` with `--auth dev` and waits for its ready line;
/// returns the child and the address it listens on.
fn spawn_server(
    bin: &Path,
    data_dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> (Child, String) {
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", listen, "--auth", "dev"])
        .args(extra)
        .env_remove("AGENTKEYS_SERVER_KEYS")
        .env_remove("AGENTKEYS_DATABASE_URL")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agentkeys-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listen=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server did not report readiness");
    (child, addr)
}

impl Server {
    /// Starts `server_bin` with `--auth dev` on a free port plus `extra` flags, and waits
    /// for its ready line.
    pub fn start(server_bin: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(server_bin, extra, &[])
    }

    /// [`Server::start`] with environment variables (`AGENTKEYS_SERVER_KEYS` for a replica
    /// that must hold another's keys).
    pub fn start_with_env(server_bin: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = TempDir::new("agentkeys-test-server");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, addr) = spawn_server(server_bin, dir.path(), "127.0.0.1:0", extra, &env);
        Server {
            child,
            url: format!("http://{addr}"),
            data_dir: dir.path().to_owned(),
            bin: server_bin.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env,
            _dir: dir,
        }
    }

    /// Kills the server and starts it again on the same address and data dir (a crash and
    /// a restart, as far as its clients can tell).
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.url.trim_start_matches("http://").to_owned();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, _) = spawn_server(&self.bin, &self.data_dir, &addr, &extra, &self.env);
        self.child = child;
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("agentkeys.db")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Machine features the tests depend on, each decided by calling it (never by reading CPU
/// flags or kernel versions): where one is missing, the test prints a visible `skipped:`
/// line on the real stderr (which `cargo test` does not capture) and asserts the fallback.
pub mod machine {
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
}

/// A random credential value, unique per call, for leak checks.
pub fn canary(tag: &str) -> String {
    let r: [u8; 8] = agentkeys_core::crypto::random_array();
    format!("sk-{tag}-canary-{}", agentkeys_core::hex(&r))
}

/// Runs a future on a fresh single-thread runtime (library calls from synchronous tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// Asserts that no readable mapping of `pid` holds any of `needles` (after a scan of more
/// than 1 MiB), and that the same scan of this test process, which holds them, finds each:
/// a scan that cannot find what is there proves nothing. Returns the target's report.
pub fn assert_no_readable_copy(pid: u32, needles: &[&[u8]]) -> agentkeys_memscan::Report {
    assert_no_readable_copy_but(pid, needles, |_| false)
}

/// [`assert_no_readable_copy`], letting through the hits `allowed` accepts (a fallback
/// secret page where the machine has no `memfd_secret`, say).
pub fn assert_no_readable_copy_but(
    pid: u32,
    needles: &[&[u8]],
    allowed: impl Fn(&agentkeys_memscan::Hit) -> bool,
) -> agentkeys_memscan::Report {
    let report = agentkeys_memscan::scan_all(pid, needles).expect("scan the target");
    assert!(
        report.scanned_bytes > 1 << 20,
        "scanned only {} bytes",
        report.scanned_bytes
    );
    let hits: Vec<String> = report
        .hits
        .iter()
        .filter(|h| !allowed(h))
        .map(|h| {
            format!(
                "needle {} at {:#x} {} {}",
                h.pattern, h.addr, h.mapping.perms, h.mapping.name
            )
        })
        .collect();
    assert!(hits.is_empty(), "readable copies of the secret: {hits:?}");
    let control = agentkeys_memscan::scan_all(std::process::id(), needles).expect("scan self");
    for i in 0..needles.len() {
        assert!(
            control.hits.iter().any(|h| h.pattern == i),
            "the scanner must find the test's own copy of needle {i}"
        );
    }
    report
}

/// Proves the calling binary's global allocator scrubs freed memory: a 256-byte block holding
/// a canary reads back as zeros through `/proc/self/mem` after it is freed, except its first
/// 8 bytes, where mimalloc writes its (encoded) free-list link after the wipe. Call it from a
/// unit test inside the binary crate (`src/main.rs`), where the binary's allocator is active.
pub fn assert_freed_heap_is_scrubbed() {
    use std::os::unix::fs::FileExt as _;
    // The probe buffer is allocated before the free, so it cannot be the freed block
    // (platform-scouting 2(d): a later allocation would get the same block back).
    let mut probe = vec![0u8; 256];
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let canary: Vec<u8> = (0..=255u8).map(|i| b'A' + i % 26).collect();
    let addr = canary.as_ptr() as u64;
    mem.read_exact_at(&mut probe, addr)
        .expect("read the live block");
    assert_eq!(probe, canary, "the probe reads the live block");
    drop(canary);
    mem.read_exact_at(&mut probe, addr)
        .expect("read the freed block");
    let left = probe[8..].iter().filter(|&&b| b != 0).count();
    assert_eq!(
        left, 0,
        "{left} of the 248 freed bytes after the link still hold data"
    );
    let expected: Vec<u8> = (0..8u8).map(|i| b'A' + i % 26).collect();
    assert_ne!(
        &probe[..8],
        &expected[..],
        "the first 8 bytes were not overwritten"
    );
}
