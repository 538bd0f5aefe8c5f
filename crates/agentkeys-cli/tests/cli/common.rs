//! Fixtures: a real `agentkeys-server` process on a free port, a temp `AGENTKEYS_HOME` per
//! test, the `agentkeys` binary run with assert_cmd, and agents paired through the real pair
//! flow (the daemon side played by the library, the master side by `agentkeys approve`).

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use agentkeys_core::client::{Backend as _, open_decision};
use agentkeys_core::crypto::HpkeKeyPair;
use agentkeys_core::session_store::{SessionStore, StoredSession};
use agentkeys_core::{ClientError, HttpBackend};
use agentkeys_secmem::SecretString;
use agentkeys_types::api::{AuthKind, OpenAuthRequest};
use agentkeys_types::{ErrorCode, ServiceName, Wallet};
use assert_cmd::Command;
use base64::Engine as _;

pub const CLI: &str = env!("CARGO_BIN_EXE_agentkeys");

pub use agentkeys_testkit::block_on;

/// A real `agentkeys-server` process (from the testkit).
pub type Server = agentkeys_testkit::Server;

/// Starts the server binary built next to ours.
pub fn start_server() -> Server {
    Server::start(
        &agentkeys_testkit::workspace_bin(CLI, "agentkeys-server"),
        &[],
    )
}

/// A home on the kernel keyring, or `None` where the keyring does not work here (decided
/// by writing a probe entry): then a visible skip line, and the fallback is asserted —
/// `AGENTKEYS_SESSION_STORE=keyring` refuses with a hint, `auto` keeps the key in a file.
pub fn keyring_home(server: &Server, test: &str) -> Option<Home> {
    use agentkeys_core::session_store::keyring;
    let probe = format!("probe.{}", agentkeys_testkit::canary("keyring"));
    let works = keyring::set(&probe, b"probe").is_ok();
    let _ = keyring::delete(&probe);
    if works {
        return Some(Home::with_store(server, "keyring"));
    }
    agentkeys_testkit::machine::skipped(test, "no usable kernel keyring here (keyutils)");
    let home = Home::with_store(server, "keyring");
    home.cmd()
        .args(["init"])
        .env("AGENTKEYS_AUTH_TOKEN", "probe-keyring")
        .assert()
        .failure()
        .stderr(predicates::str::contains("AGENTKEYS_SESSION_STORE=file"));
    let auto = Home::new(server);
    auto.init();
    let who = auto.cmd().args(["whoami", "--json"]).assert().success();
    let who: serde_json::Value = serde_json::from_slice(&who.get_output().stdout).unwrap();
    assert_eq!(
        who["protection"]["kind"], "file",
        "auto falls back to the key file"
    );
    None
}

/// One machine's `AGENTKEYS_HOME`, bound to a server. Its keyring entry is removed on drop.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub server: String,
    pub store_choice: &'static str,
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.store().wipe();
    }
}

impl Home {
    pub fn new(server: &Server) -> Home {
        Self::with_store(server, "auto")
    }

    pub fn with_store(server: &Server, store_choice: &'static str) -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
            server: server.url.clone(),
            store_choice,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `agentkeys` with this home and server and nothing inherited from the developer's shell.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(CLI);
        for var in [
            "AGENTKEYS_SERVER",
            "AGENTKEYS_HOME",
            "AGENTKEYS_SESSION_STORE",
            "AGENTKEYS_AUTH_TOKEN",
            "AGENTKEYS_CA",
        ] {
            c.env_remove(var);
        }
        c.env("AGENTKEYS_HOME", self.path())
            .env("AGENTKEYS_SERVER", &self.server)
            .env("AGENTKEYS_SESSION_STORE", self.store_choice)
            .env("HOME", self.path())
            .timeout(Duration::from_secs(60));
        c
    }

    /// The environment [`Home::cmd`] sets, for commands started another way.
    pub fn cmd_env(&self) -> Vec<(String, String)> {
        vec![
            ("AGENTKEYS_HOME".into(), self.path().display().to_string()),
            ("AGENTKEYS_SERVER".into(), self.server.clone()),
            ("AGENTKEYS_SESSION_STORE".into(), self.store_choice.into()),
            ("HOME".into(), self.path().display().to_string()),
        ]
    }

    /// The same command as a std `Command`, for processes the test watches while they run.
    pub fn std_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(CLI);
        c.env_remove("AGENTKEYS_AUTH_TOKEN")
            .env("AGENTKEYS_HOME", self.path())
            .env("AGENTKEYS_SERVER", &self.server)
            .env("AGENTKEYS_SESSION_STORE", self.store_choice)
            .env("HOME", self.path());
        c
    }

    /// `agentkeys init` with enrolment token `enrol`; returns the master wallet.
    pub fn init_as(&self, enrol: &str) -> Wallet {
        let out = self
            .cmd()
            .args(["init", "--json"])
            .env("AGENTKEYS_AUTH_TOKEN", enrol)
            .assert()
            .success();
        let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        Wallet::parse(v["wallet"].as_str().unwrap()).unwrap()
    }

    /// `agentkeys init` with a token unique to this home.
    pub fn init(&self) -> Wallet {
        let enrol = format!("enrol-{}", self.path().display());
        self.init_as(&enrol)
    }

    /// The session slot the CLI uses (same name and account as `context.rs`).
    pub fn store(&self) -> SessionStore {
        SessionStore::new(self.path(), "session", "master-key")
    }

    /// The stored session, opened the way the CLI opens it.
    pub fn stored(&self) -> StoredSession {
        self.store().load().unwrap().0
    }

    /// A client holding this home's token.
    pub fn client(&self) -> HttpBackend {
        HttpBackend::for_session(&self.stored()).unwrap()
    }

    /// Stores `value` for `service` through the CLI (stdin).
    pub fn store_value(&self, service: &str, value: &str, extra: &[&str]) {
        self.cmd()
            .arg("store")
            .arg(service)
            .args(extra)
            .write_stdin(value)
            .assert()
            .success();
    }

    /// `agentkeys read SERVICE` → stdout.
    pub fn read(&self, service: &str, extra: &[&str]) -> String {
        let out = self
            .cmd()
            .arg("read")
            .arg(service)
            .args(extra)
            .assert()
            .success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    }

    /// Pairs a new agent through the real flow: the daemon's side here, `agentkeys approve
    /// CODE --yes` (plus `approve_args`) on the master's side. Returns the agent's wallet and
    /// a client holding its session.
    pub fn pair_agent(&self, approve_args: &[&str]) -> (Wallet, HttpBackend) {
        let anon = HttpBackend::new(&self.server).unwrap();
        let daemon_key = HpkeKeyPair::generate().unwrap();
        let ticket = block_on(anon.open_auth_request(&OpenAuthRequest {
            kind: AuthKind::Pair,
            requester_public_key: Some(
                base64::engine::general_purpose::STANDARD.encode(daemon_key.public_key()),
            ),
            identity: None,
            parent: None,
            agent: None,
            service: None,
            description: Some("test daemon".into()),
        }))
        .unwrap();
        self.cmd()
            .args(["approve", &ticket.pair_code, "--yes"])
            .args(approve_args)
            .assert()
            .success();
        let info = block_on(anon.server_info()).unwrap();
        let signing: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(info.signing_public_key)
            .unwrap()
            .try_into()
            .unwrap();
        let decision = block_on(anon.decision(&ticket.id, 5)).unwrap();
        let grant = open_decision(&decision, &daemon_key, &signing).unwrap();
        let client = HttpBackend::new(&self.server)
            .unwrap()
            .with_token(&grant.token)
            .unwrap()
            .with_server_key(signing);
        (grant.session.wallet, client)
    }
}

pub use agentkeys_testkit::canary;

pub fn svc(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

/// The code of a client call's error.
pub fn code_of<T>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code(),
    }
}

/// An agent reads through the library: Ok(value) or the error code.
pub fn agent_read(client: &HttpBackend, service: &str) -> Result<String, ErrorCode> {
    block_on(client.read_credential(None, &svc(service)))
        .map(|read| String::from_utf8(read.page.expose_secret().to_vec()).unwrap())
        .map_err(|e| e.code())
}

/// The approval instructions `read` prints: (code, otp).
pub fn approval_from_stderr(stderr: &str) -> (String, String) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("approval required: run 'agentkeys approve "))
        .unwrap_or_else(|| panic!("no approval line in: {stderr}"));
    let code = line.split("approve ").nth(1).unwrap()[..9].to_owned();
    let otp = line.split("(OTP ").nth(1).unwrap()[..6].to_owned();
    (code, otp)
}

/// Both output streams of a finished command, as text.
pub fn outputs(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn token_of(home: &Home) -> SecretString {
    home.stored().token
}
