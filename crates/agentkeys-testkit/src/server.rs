//! The `agentkeys-server` process: on a free port with its own data dir (or one the test
//! keeps), ready when it says so (no sleeps), its stderr kept whole for the test to read,
//! restartable on the same address, killed on drop.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::bins::Bins;
use crate::temp::TempDir;

/// How `agentkeys-server` is to be started: [`Server::command`], then
/// [`ServerCommand::spawn`].
pub struct ServerCommand {
    bin: PathBuf,
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ServerCommand {
    /// Its data directory, which outlives the server (a restart on the same data, replicas
    /// sharing keys); a fresh temp dir otherwise.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Extra flags. `--auth dev` is given unless they name `--auth`.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// An environment variable (`AGENTKEYS_SERVER_KEYS` for a replica that must hold
    /// another's keys, `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts it on a free port and waits for its ready line.
    pub fn spawn(self) -> Server {
        let (dir, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let dir = TempDir::new("agentkeys-test-server");
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        let log = Arc::new(Mutex::new(String::new()));
        let mut server = Server {
            child: None,
            url: String::new(),
            bins: Bins::in_dir(self.bin.parent().unwrap_or(Path::new("."))),
            data_dir,
            bin: self.bin,
            args: self.args,
            env: self.env,
            log,
            _dir: dir,
        };
        let addr = server.spawn_on("127.0.0.1:0");
        server.url = format!("http://{addr}");
        server
    }
}

/// A running `agentkeys-server` process; killed on drop.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory (SQLite file `agentkeys.db`, `server.key`).
    pub data_dir: PathBuf,
    bins: Bins,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Arc<Mutex<String>>,
    _dir: Option<TempDir>,
}

impl Server {
    /// `server_bin`, to be configured and spawned.
    pub fn command(server_bin: &Path) -> ServerCommand {
        ServerCommand {
            bin: server_bin.to_owned(),
            data_dir: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts `server_bin` with `--auth dev` on a free port plus `extra` flags, and waits
    /// for its ready line.
    pub fn start(server_bin: &Path, extra: &[&str]) -> Server {
        Self::command(server_bin).args(extra).spawn()
    }

    /// Starts the process on `listen` and waits for its ready line; returns the address
    /// it listens on. Its stderr is appended to the log until it exits.
    fn spawn_on(&mut self, listen: &str) -> String {
        let mut cmd = Command::new(&self.bin);
        if !self.args.iter().any(|a| a == "--auth") {
            cmd.args(["--auth", "dev"]);
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", listen])
            .args(&self.args)
            .env_remove("AGENTKEYS_SERVER_KEYS")
            .env_remove("AGENTKEYS_DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agentkeys-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let sink = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.to_owned());
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        self.child = Some(child);
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not report readiness; its log:\n{}",
                    self.log()
                )
            })
    }

    /// Kills the server and starts it again on the same address and data dir (a crash and
    /// a restart, as far as its clients can tell).
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.url.trim_start_matches("http://").to_owned();
        self.spawn_on(&addr);
    }

    /// The binaries next to the server's (the CLI and daemon that talk to it).
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// Everything it printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for it to exit (after a signal the test sent) and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        self.child
            .as_mut()
            .expect("a started server")
            .wait()
            .expect("wait for the server")
    }

    /// SIGKILL and reap.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("agentkeys.db")
    }
}

impl Bins {
    /// `agentkeys-server` from these binaries on a free port with `extra` flags
    /// ([`Server::start`]).
    pub fn server(&self, extra: &[&str]) -> Server {
        Server::start(&self.path("agentkeys-server"), extra)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
