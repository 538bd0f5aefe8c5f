//! The `agentkeys-server` process: on a free port with its own data dir, ready when it says
//! so (no sleeps), restartable on the same address, killed on drop.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{Bins, TempDir};

/// A running `agentkeys-server` process; killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory (SQLite file `agentkeys.db`, `server.key`).
    pub data_dir: PathBuf,
    bins: Bins,
    bin: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    _dir: TempDir,
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
            bins: Bins::in_dir(server_bin.parent().unwrap_or(Path::new("."))),
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

    /// The binaries next to the server's (the CLI and daemon that talk to it).
    pub fn bins(&self) -> &Bins {
        &self.bins
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
