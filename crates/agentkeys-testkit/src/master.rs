//! The master: a CLI home (`AGENTKEYS_HOME`) bound to a server, and the real `agentkeys`
//! binary run in it with nothing inherited from the developer's shell. Every helper asserts
//! the command succeeded and shows its output when it did not.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::bins::Bins;
use crate::server::Server;
use crate::temp::TempDir;

/// The variables a developer's shell may hold that would point the CLI elsewhere.
const INHERITED: [&str; 5] = [
    "AGENTKEYS_SERVER",
    "AGENTKEYS_HOME",
    "AGENTKEYS_SESSION_STORE",
    "AGENTKEYS_AUTH_TOKEN",
    "AGENTKEYS_CA",
];

/// One machine's CLI home, bound to a server; removed on drop.
pub struct Master {
    home: TempDir,
    server: String,
    session_store: &'static str,
    bins: Bins,
}

impl Master {
    /// A master enrolled with the token `master-enrol`, its session in a file.
    pub fn new(server: &Server) -> Master {
        Self::enrolled(server, "master-enrol")
    }

    /// A master enrolled with `token` (each token is its own master account), its session
    /// in a file.
    pub fn enrolled(server: &Server, token: &str) -> Master {
        let m = Self::unenrolled(server, "file");
        m.enrol(token);
        m
    }

    /// A home bound to `server` that has not run `init`, with `session_store` as
    /// `AGENTKEYS_SESSION_STORE` (`file`, `keyring`, `auto`).
    pub fn unenrolled(server: &Server, session_store: &'static str) -> Master {
        Self::at(server.bins(), &server.url, session_store)
    }

    /// [`Master::unenrolled`] for the server at `url` (an `https://` address, say), running
    /// the CLI from `bins`.
    pub fn at(bins: &Bins, url: &str, session_store: &'static str) -> Master {
        Master {
            home: TempDir::new("agentkeys-test-master"),
            server: url.to_owned(),
            session_store,
            bins: bins.clone(),
        }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The binaries this master runs (and pairs daemons with).
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// The environment [`Master::command`] sets, for commands started another way.
    pub fn env(&self) -> Vec<(String, String)> {
        let home = self.home().display().to_string();
        vec![
            ("AGENTKEYS_HOME".into(), home.clone()),
            ("AGENTKEYS_SERVER".into(), self.server.clone()),
            ("AGENTKEYS_SESSION_STORE".into(), self.session_store.into()),
            ("HOME".into(), home),
        ]
    }

    /// `agentkeys` in this home, for the caller to give arguments, input and run.
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.bins.path("agentkeys"));
        for var in INHERITED {
            c.env_remove(var);
        }
        c.envs(self.env());
        c
    }

    /// `agentkeys ARGS`, with no input; its output whatever the outcome.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    /// [`Master::cli`] with extra environment variables.
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command()
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run agentkeys")
    }

    /// `agentkeys ARGS`, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "agentkeys {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `agentkeys init --json` with the enrolment token `token`; returns the wallet.
    pub fn enrol(&self, token: &str) -> String {
        let out = self.cli_with_env(&["init", "--json"], &[("AGENTKEYS_AUTH_TOKEN", token)]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init's JSON");
        v["wallet"].as_str().expect("a wallet").to_owned()
    }

    /// This master's wallet.
    pub fn wallet(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli_ok(&["whoami", "--json"])).expect("whoami's JSON");
        v["wallet"].as_str().expect("a wallet").to_owned()
    }

    /// `agentkeys approve CODE --yes ARGS…`.
    pub fn approve(&self, code: &str, args: &[&str]) -> Output {
        let mut all = vec!["approve", code, "--yes"];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// `agentkeys store SERVICE EXTRA…` with `value` on stdin; it must succeed.
    pub fn store(&self, service: &str, value: &str, extra: &[&str]) {
        let mut child = self
            .command()
            .arg("store")
            .arg(service)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run agentkeys store");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(value.as_bytes())
            .expect("write the value");
        let out = child.wait_with_output().expect("wait for agentkeys store");
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `agentkeys read SERVICE EXTRA…`, which must succeed; its stdout.
    pub fn read(&self, service: &str, extra: &[&str]) -> String {
        let mut args = vec!["read", service];
        args.extend_from_slice(extra);
        self.cli_ok(&args)
    }
}

/// Both output streams of a finished command, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
