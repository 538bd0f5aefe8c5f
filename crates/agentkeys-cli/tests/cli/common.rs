//! What only this suite needs around the shared fixture (`agentkeys-testkit`): the CLI's
//! home run through assert_cmd, the session the CLI keeps there, the keyring's probe and
//! fallback, and agents paired with the daemon's side played by the library.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use agentkeys_core::client::Backend as _;
use agentkeys_core::session_store::{SessionStore, StoredSession};
use agentkeys_core::{ClientError, HttpBackend};
use agentkeys_secmem::SecretString;
use agentkeys_testkit::Master;
use agentkeys_testkit::pairing::{PairingAgent, client_with};
use agentkeys_types::{ErrorCode, ServiceName, Wallet};
use assert_cmd::Command;

pub const CLI: &str = env!("CARGO_BIN_EXE_agentkeys");

pub use agentkeys_testkit::block_on;

/// A real `agentkeys-server` process (from the testkit).
pub type Server = agentkeys_testkit::Server;

/// The binaries built with this suite's CLI.
pub fn bins() -> agentkeys_testkit::Bins {
    agentkeys_testkit::Bins::next_to(CLI)
}

/// Starts the server binary built next to ours.
pub fn start_server() -> Server {
    bins().server(&[])
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

/// One machine's `AGENTKEYS_HOME`, bound to a server: the shared fixture's [`Master`] (not
/// yet enrolled), run through assert_cmd, with the session the CLI keeps there. Its keyring
/// entry is removed on drop.
pub struct Home {
    master: Master,
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.session_store().wipe();
    }
}

impl std::ops::Deref for Home {
    type Target = Master;

    fn deref(&self) -> &Master {
        &self.master
    }
}

impl Home {
    pub fn new(server: &Server) -> Home {
        Self::with_store(server, "auto")
    }

    pub fn with_store(server: &Server, store_choice: &'static str) -> Home {
        Home {
            master: Master::unenrolled(server, store_choice),
        }
    }

    /// A home for the server at `url` (its `https://` address, say).
    pub fn at(server: &Server, url: &str) -> Home {
        Home {
            master: Master::at(server.bins(), url, "auto"),
        }
    }

    pub fn path(&self) -> &Path {
        self.home()
    }

    /// `agentkeys` with this home and server and nothing inherited from the developer's shell.
    pub fn cmd(&self) -> Command {
        let mut c = Command::from_std(self.command());
        c.timeout(Duration::from_secs(60));
        c
    }

    /// The environment [`Home::cmd`] sets, for commands started another way.
    pub fn cmd_env(&self) -> Vec<(String, String)> {
        self.env()
    }

    /// The same command as a std `Command`, for processes the test watches while they run.
    pub fn std_cmd(&self) -> StdCommand {
        self.command()
    }

    /// `agentkeys init` with enrolment token `enrol`; returns the master wallet.
    pub fn init_as(&self, enrol: &str) -> Wallet {
        Wallet::parse(&self.enrol(enrol)).unwrap()
    }

    /// `agentkeys init` with a token unique to this home.
    pub fn init(&self) -> Wallet {
        let enrol = format!("enrol-{}", self.path().display());
        self.init_as(&enrol)
    }

    /// The session slot the CLI uses (same name and account as `context.rs`).
    pub fn session_store(&self) -> SessionStore {
        SessionStore::new(self.path(), "session", "master-key")
    }

    /// The stored session, opened the way the CLI opens it.
    pub fn stored(&self) -> StoredSession {
        self.session_store().load().unwrap().0
    }

    /// A client holding this home's token.
    pub fn client(&self) -> HttpBackend {
        HttpBackend::for_session(&self.stored()).unwrap()
    }

    /// Stores `value` for `service` through the CLI (stdin).
    pub fn store_value(&self, service: &str, value: &str, extra: &[&str]) {
        self.store(service, value, extra);
    }

    /// Pairs a new agent through the real flow: the daemon's side played by the library,
    /// `agentkeys approve CODE --yes` (plus `approve_args`) on the master's side. Returns
    /// the agent's wallet and a client holding its session.
    pub fn pair_agent(&self, approve_args: &[&str]) -> (Wallet, HttpBackend) {
        let agent = block_on(PairingAgent::open(self.server()));
        self.cmd()
            .args(["approve", agent.code(), "--yes"])
            .args(approve_args)
            .assert()
            .success();
        let grant = block_on(agent.finish());
        let client = block_on(client_with(self.server(), &grant.token));
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
pub use agentkeys_testkit::text as outputs;

pub fn token_of(home: &Home) -> SecretString {
    home.stored().token
}
