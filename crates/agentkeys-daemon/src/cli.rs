//! The command line of `agentkeys-daemon`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// agentkeys-daemon: holds one agent's session inside its sandbox and serves credentials to
/// the agent over MCP, on a Unix socket (and stdio through `mcp`).
#[derive(Parser)]
#[command(
    name = "agentkeys-daemon",
    version,
    after_help = "Examples:\n  \
    agentkeys-daemon serve --server http://127.0.0.1:8090     # pairs on first start\n  \
    agentkeys-daemon mcp                                       # stdio bridge for MCP clients\n  \
    agentkeys-daemon status\n  \
    agentkeys-daemon audit --verify\n  \
    agentkeys-daemon --check --json                            # the hardening report\n\n\
    Environment: AGENTKEYS_SERVER, AGENTKEYS_HOME (state, default ~/.agentkeys),\n\
    AGENTKEYS_SOCKET (default $XDG_RUNTIME_DIR/agentkeys/daemon.sock, else\n\
    $AGENTKEYS_HOME/run/daemon.sock), AGENTKEYS_SESSION_STORE (auto, keyring, file)."
)]
pub struct Args {
    /// More logging on stderr (-v, -vv). Never prints secrets.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Apply the daemon's process hardening to this process and print the report (each
    /// item ok, degraded or failed); exit 1 if one failed. Runs instead of any command.
    #[arg(long)]
    pub check: bool,
    /// With --check: the report as JSON.
    #[arg(long, requires = "check")]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Pair (first start) or load the stored session, then serve MCP on the socket.
    #[command(after_help = "Examples:\n  \
        agentkeys-daemon serve --server http://127.0.0.1:8090\n  \
        agentkeys-daemon serve --server URL --recover research-bot   # new session, same agent\n  \
        agentkeys-daemon serve --server URL --allow-uid 1001          # an agent under another uid\n  \
        agentkeys-daemon serve --server URL --cache openai=60s        # keep openai 60 s after last use\n  \
        agentkeys-daemon serve --config /etc/agentkeys/daemon.toml")]
    Serve(Box<ServeArgs>),
    /// Bridge stdin/stdout to the daemon socket (for MCP clients that spawn a command).
    #[command(after_help = "Examples:\n  \
        agentkeys-daemon mcp\n  \
        claude mcp add agentkeys -- agentkeys-daemon mcp")]
    Mcp {
        /// The daemon socket.
        #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Ask the running daemon for its state: wallet, scope, server, uptime, counters.
    #[command(
        after_help = "Examples:\n  agentkeys-daemon status\n  agentkeys-daemon status --json"
    )]
    Status {
        /// The daemon socket.
        #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's audit trail, or verify its hash chain.
    #[command(
        after_help = "Examples:\n  agentkeys-daemon audit\n  agentkeys-daemon audit --verify --json"
    )]
    Audit {
        /// Recompute the chain, report the first line that does not hold, and compare the
        /// trail with the head the daemon anchored in the server's audit log (a truncated or
        /// rewritten trail fails even when its own chain holds).
        #[arg(long)]
        verify: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// The running daemon's socket, asked for the newest anchor (default: as `serve`).
        #[arg(long, env = "AGENTKEYS_SOCKET")]
        socket: Option<PathBuf>,
    },
}

/// The flags of `serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The agentkeys server.
    #[arg(long, env = "AGENTKEYS_SERVER", value_name = "URL")]
    pub server: String,
    /// The socket to serve on.
    #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Which stored daemon session to use, by agent wallet, when several are stored.
    #[arg(long, value_name = "WALLET")]
    pub session_id: Option<String>,
    /// The master's wallet: the pair request is addressed to it (no other master can see
    /// or approve it); with --recover, the master whose aliases and e-mails name the agent.
    #[arg(long, value_name = "MASTER_WALLET", value_parser = parse_wallet)]
    pub parent: Option<agentkeys_types::Wallet>,
    /// Get a new session for an existing agent instead of pairing: its wallet, or an alias
    /// or e-mail its master linked (then also --parent).
    #[arg(long, value_name = "AGENT")]
    pub recover: Option<String>,
    /// The server's Ed25519 signing key (base64) to pin, instead of trusting first contact.
    #[arg(long, value_name = "BASE64")]
    pub server_key: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// server, besides the system's.
    #[arg(long, env = "AGENTKEYS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Also accept connections from this uid (repeatable). Default: only the daemon's uid.
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Give the socket and its directory to this group (name or gid), mode 0660 / 0710:
    /// only its members reach the socket (each connection's uid is still checked)
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// The configuration file (TOML; see docs/daemon.md). Flags override it.
    #[arg(long, env = "AGENTKEYS_DAEMON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cache this service's credential, evicted after TTL idle (default --idle-ttl).
    /// Repeatable. Nothing is cached unless asked.
    #[arg(long, value_name = "SERVICE[=TTL]")]
    pub cache: Vec<String>,
    /// Default idle TTL of cached credentials (e.g. 60s, 5m).
    #[arg(long, value_name = "TTL")]
    pub idle_ttl: Option<String>,
    /// Refetch a cached credential this long after its fetch, however often it is used
    /// [default: 5m].
    #[arg(long, value_name = "AGE")]
    pub cache_max_age: Option<String>,
    /// Keep cached credentials in this page kind instead of the best available
    /// (memfd_secret, sealed_memfd, locked_anon). For measuring the difference only:
    /// anything but memfd_secret is readable through /proc/PID/mem by root.
    #[arg(long, value_name = "KIND", value_parser = ["memfd_secret", "sealed_memfd", "locked_anon"])]
    pub cache_page: Option<String>,
    /// Keep the agent session in this process's memory only: no session file, no keyring
    /// entry, so no process of the daemon's uid can take it from the disk. A restart needs
    /// a new approval. For deployments that cannot give the daemon a uid of its own.
    #[arg(long, conflicts_with = "store_session")]
    pub ephemeral: bool,
    /// Keep the agent session at rest in the daemon's home even though agents share the
    /// daemon's uid (no --allow-uid). Without it such a daemon holds the session in memory
    /// only, since any process of its uid could open a stored one and act as this agent.
    #[arg(long)]
    pub store_session: bool,
    /// Start (and keep serving) even while a debugger traces the daemon.
    #[arg(long)]
    pub allow_debugger: bool,
    /// Refuse to start unless Yama's ptrace_scope is at least 1.
    #[arg(long)]
    pub require_ptrace_scope: bool,
    /// Egress proxy: send connections for HOST to ADDR:PORT instead of what DNS says (like
    /// curl's --resolve), e.g. a local test upstream or a private gateway. Repeatable.
    #[arg(long, value_name = "HOST=ADDR:PORT")]
    pub proxy_resolve: Vec<String>,
    /// Egress proxy: also trust this CA (PEM) for upstream TLS, besides the system roots.
    #[arg(long, value_name = "FILE")]
    pub proxy_upstream_ca: Option<PathBuf>,
    /// Egress proxy: hosts no credential is bound to are tunnelled untouched (open, the
    /// default) or refused (strict).
    #[arg(long, value_name = "MODE", value_parser = ["open", "strict"])]
    pub egress: Option<String>,
}

/// `--parent`: a wallet, said plainly when it is not one (names belong to one master, so
/// only a wallet can say which master is meant).
fn parse_wallet(s: &str) -> Result<agentkeys_types::Wallet, String> {
    agentkeys_types::Wallet::parse(s.trim()).map_err(|_| {
        "the master's wallet (0x and 40 hex digits), as its 'agentkeys whoami' shows".to_owned()
    })
}
