//! The command line as clap sees it: flags, subcommands, help text with an example on every
//! subcommand, and the exit-code table. No I/O here; `commands` turns these into calls.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  internal error or unexpected server answer
  2  usage error (bad flag, bad value, missing input)
  3  not authorized: no session, revoked or expired session, denied, out of scope
  4  not found
  5  approval required (a high-value credential; see 'agentkeys approve')
  6  server unreachable
  7  rejected for now: rate limited, conflict, already used
  8  audit chain broken ('agentkeys usage --verify')

Environment:
  AGENTKEYS_SERVER         server URL (same as --server)
  AGENTKEYS_HOME           local state directory (default ~/.agentkeys, created 0700)
  AGENTKEYS_SESSION_STORE  where the session's data key lives: auto (default), keyring, file
  AGENTKEYS_AUTH_TOKEN     enrolment token for 'agentkeys init' (same as --auth-token)
  AGENTKEYS_SOCKET         the daemon socket, for 'agentkeys run'

Examples:
  agentkeys init --server http://127.0.0.1:8090
  printf %s \"$OPENAI_API_KEY\" | agentkeys store openai
  agentkeys read openai
  agentkeys approve ABCD-EFGH --scope openai,github";

/// agentkeys: scoped, revocable, audited credentials for AI agents.
///
/// You (the master) keep API keys on an agentkeys server; agents get them through a daemon
/// in their sandbox, within the scope you approve. Errors print 'error: CODE: message' and a
/// 'hint:' line on stderr (JSON with --json).
// No `Debug` on the command line types: `init --auth-token` and a stray `store` value
// would print through it.
#[derive(Parser)]
#[command(name = "agentkeys", version, after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct Args {
    /// Server URL, e.g. http://127.0.0.1:8090.
    #[arg(long, global = true, env = "AGENTKEYS_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// server, besides the system's
    /// (a server with a private CA).
    #[arg(long, global = true, env = "AGENTKEYS_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// Print results (and errors, on stderr) as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v, -vv). Never prints secrets.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Args {
    /// Parses this process's command line.
    ///
    /// A plain `agentkeys run [RUN OPTIONS] -- COMMAND` is read by `plain_run`, a few lines
    /// that know only `run`'s own flags: building clap's command tree was a fifth of the
    /// CLI's start-up, and `run` pays its start-up in front of every command an agent starts.
    /// Any other line, and any `run` line `plain_run` does not take as it is (help, a
    /// global flag, a mistake), goes to clap, so help and errors read the same.
    pub fn parse_process() -> Args {
        Self::parse_argv(std::env::args_os().collect())
    }

    /// [`Args::parse_process`] on `argv` (the program name first); exits on a usage error.
    pub fn parse_argv(argv: Vec<OsString>) -> Args {
        if let Some(run) = plain_run(&argv) {
            return Args {
                server: None,
                ca: None,
                json: false,
                verbose: 0,
                command: Command::Run(run),
            };
        }
        Args::parse_from(argv)
    }
}

/// `agentkeys run` with only `run`'s own flags, in the forms `--flag VALUE`, `--flag=VALUE`
/// and `-s VALUE`/`-e VALUE`, then `--` and the command; `None` for anything else.
fn plain_run(argv: &[OsString]) -> Option<RunArgs> {
    if argv.get(1)? != "run" {
        return None;
    }
    let mut run = RunArgs {
        services: Vec::new(),
        env: Vec::new(),
        fd: false,
        proxy: false,
        socket: None,
        command: Vec::new(),
    };
    let mut rest = argv[2..].iter();
    loop {
        let arg = rest.next()?.to_str()?;
        if arg == "--" {
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        // A value that is empty or looks like a flag is left to clap, which refuses some.
        let mut value = || -> Option<String> {
            let v = match inline {
                Some(v) => v,
                None => rest.next()?.to_str()?,
            };
            (!v.is_empty() && !v.starts_with('-')).then(|| v.to_owned())
        };
        match flag {
            "--service" | "-s" => run.services.push(value()?),
            "--env" | "-e" => run.env.push(value()?),
            "--socket" if run.socket.is_none() => run.socket = Some(PathBuf::from(value()?)),
            "--fd" if inline.is_none() && !run.fd => run.fd = true,
            "--proxy" if inline.is_none() && !run.proxy => run.proxy = true,
            _ => return None,
        }
    }
    run.command = rest.cloned().collect();
    if run.command.is_empty() || (run.fd && run.proxy) {
        return None;
    }
    if run.socket.is_none() {
        match std::env::var_os("AGENTKEYS_SOCKET") {
            Some(s) if s.is_empty() => return None,
            Some(s) => run.socket = Some(PathBuf::from(s)),
            None => {}
        }
    }
    Some(run)
}

/// The subcommands.
#[derive(Subcommand)]
// Each subcommand's flags are built only when it is the one used: building them all was
// most of the parse, paid by every command line.
#[command(defer = true)]
pub enum Command {
    /// Create (or check) this machine's master session.
    ///
    /// Idempotent: with a valid stored session it says so and changes nothing. A missing,
    /// expired or revoked session is replaced; --force always mints a new one and revokes
    /// the old one. The session is stored encrypted in $AGENTKEYS_HOME/session.enc, its key
    /// in the kernel keyring (or a 0600 key file where there is none).
    #[command(after_help = "Examples:\n  \
        agentkeys init --server http://127.0.0.1:8090          # prompts for the enrolment token\n  \
        AGENTKEYS_AUTH_TOKEN=... agentkeys init --server URL\n  \
        printf %s \"$TOKEN\" | agentkeys init --auth-token - --server URL\n  \
        agentkeys init --force                                  # new session, old one revoked")]
    Init {
        /// Enrolment token ('-' reads it from stdin). Prefer the environment variable or a
        /// pipe: command-line arguments are visible to every local user.
        #[arg(
            long,
            env = "AGENTKEYS_AUTH_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        auth_token: Option<String>,
        /// Mint a new session even if the stored one is valid (and revoke the old one).
        #[arg(long)]
        force: bool,
    },

    /// Show the current session: wallet, kind, scope, lifetime, server, protection at rest.
    ///
    /// Never prints the token.
    #[command(after_help = "Examples:\n  agentkeys whoami\n  agentkeys whoami --json")]
    Whoami,

    /// Store a credential. The value comes from stdin, a hidden prompt, --from-env or
    /// --from-file; never from the command line.
    ///
    /// The value is sealed to the server's shielding key before it leaves this process. From
    /// stdin or the prompt, one trailing newline is dropped; --from-file keeps the bytes exactly.
    #[command(after_help = "Examples:\n  \
        printf %s \"$OPENAI_API_KEY\" | agentkeys store openai\n  \
        agentkeys store github                       # prompts, input hidden\n  \
        agentkeys store stripe --from-env STRIPE_KEY --high-value\n  \
        agentkeys store openai --agent research-bot --from-file ./key.txt\n  \
        agentkeys store internal-api --host api.internal.example.com --inject header:x-api-key\n\n\
        A master storing a well-known service (openai, anthropic, github, stripe, slack,\n\
        huggingface, google-ai) for the first time binds it to that service's hosts, so\n\
        'agentkeys run --proxy' can use it without handing the value to the agent; --host\n\
        binds it elsewhere, --no-bind not at all ('agentkeys bind' changes it later).")]
    Store(StoreArgs),

    /// Show, set or remove where the egress proxy may send a credential (masters).
    ///
    /// A bound credential can be used through 'agentkeys run --proxy': the agent gets a
    /// placeholder, and the daemon's proxy puts the real value into requests to the bound
    /// hosts only. With no change flags, prints the current binding.
    #[command(after_help = "Examples:\n  \
        agentkeys bind openai                                   # show\n  \
        agentkeys bind openai --well-known                      # the built-in hosts\n  \
        agentkeys bind internal --host api.example.com --host '*.example.net' \\\n      \
        --inject header:authorization:'token ' --method GET --path /v2/\n  \
        agentkeys bind anthropic --host api.anthropic.com --inject substitute:x-api-key,authorization\n  \
        agentkeys bind gemini --host generativelanguage.googleapis.com \\\n      \
        --inject substitute:x-goog-api-key --substitute-query\n  \
        agentkeys bind search --host api.search.example --inject substitute \\\n      \
        --body-field /auth/api_key --method POST --path /v1/search\n  \
        agentkeys bind legacy --host api.example.com --inject substitute --body-field form:api_key\n  \
        agentkeys bind openai --agent research-bot --remove\n\n\
        Injection (--inject):\n  \
        bearer                  Authorization: Bearer <value>\n  \
        header:NAME[:PREFIX]    the header NAME, set to PREFIX<value>\n  \
        basic-user              the user part of Authorization: Basic\n  \
        basic-password          the password part of Authorization: Basic\n  \
        substitute[:H1,H2…]     the placeholder replaced where the agent's client put it, only\n                          \
        in the headers named (authorization covers basic auth too), in the\n                          \
        query string with --substitute-query, and as the whole value of each\n                          \
        --body-field: a JSON pointer (/auth/api_key) into a JSON body, or\n                          \
        form:NAME in a form body\n\n\
        A placeholder sent anywhere the binding does not allow (another host, method, path,\n\
        header, body field, inside a longer string, the query, plain http) is refused with 403\n\
        and audited as an exfiltration attempt; so is a method or path override header\n\
        (X-HTTP-Method-Override, X-Original-URL, …) on a binding with --method or --path.\n\
        A request body is read whole (up to 1 MiB) when a binding with --body-field allows the\n\
        request. A run using such a credential refuses hosts none of its credentials is bound\n\
        to (a value stored through a body field could else be read back through another name\n\
        of the same server), unless the binding says --tunnel-unbound.")]
    Bind(BindArgs),

    /// Print a credential on stdout (nothing else goes to stdout).
    ///
    /// A high-value credential needs an approval first: read prints the 'agentkeys approve'
    /// command and exits 5; with --wait it waits for the decision, then prints the value.
    /// A trailing newline is added only when stdout is a terminal.
    #[command(after_help = "Examples:\n  \
        agentkeys read openai\n  \
        OPENAI_API_KEY=$(agentkeys read openai) python app.py\n  \
        agentkeys read stripe --wait          # waits up to 300 s for 'agentkeys approve'\n  \
        agentkeys read openai --agent research-bot --json")]
    Read {
        /// Read this agent's credential (wallet, alias or e-mail).
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        /// The credential's name.
        service: String,
        /// Wait for a pending approval, up to SECS seconds (default 300).
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
        wait: Option<u64>,
    },

    /// List credential names (never values), with their policy.
    #[command(
        after_help = "Examples:\n  agentkeys list\n  agentkeys list --agent research-bot --json"
    )]
    List {
        /// This agent's credentials (wallet, alias or e-mail).
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },

    /// List your agents with their scope, names and last use.
    #[command(after_help = "Examples:\n  agentkeys agents\n  agentkeys agents --json")]
    Agents,

    /// Show or change what an agent may touch.
    ///
    /// Takes effect on the agent's next call. With no change flags, prints the scope.
    #[command(after_help = "Examples:\n  \
        agentkeys scope research-bot\n  \
        agentkeys scope research-bot --add github --remove stripe\n  \
        agentkeys scope 0x1234...abcd --set openai,github --read-only\n  \
        agentkeys scope research-bot --set ''      # nothing at all")]
    Scope(ScopeArgs),

    /// Mark a credential high-value (every release needs approval) or normal.
    ///
    /// With --require-passkey, a release of it can only be approved with your passkey on
    /// the approval page ('agentkeys passkey add' registers one first); 'agentkeys approve'
    /// refuses it and names the page. Once set, 'policy' cannot lift it (a stolen session
    /// could): storing the value again with 'agentkeys store SERVICE --high-value' can.
    #[command(
        group(ArgGroup::new("level").required(true).args(["high_value", "normal"])),
        after_help = "Examples:\n  \
        agentkeys policy stripe --high-value\n  \
        agentkeys policy stripe --high-value --require-passkey\n  \
        agentkeys policy openai --agent research-bot --normal"
    )]
    Policy {
        /// The credential's owner (wallet, alias or e-mail); default: yourself.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        /// The credential's name.
        service: String,
        /// Every release needs 'agentkeys approve'.
        #[arg(long)]
        high_value: bool,
        /// With --high-value: releases are approved only with a passkey, on the page.
        #[arg(long, requires = "high_value")]
        require_passkey: bool,
        /// Releases need no approval.
        #[arg(long)]
        normal: bool,
    },

    /// Revoke sessions. Without an argument: your own session, and the local copy is wiped.
    #[command(after_help = "Examples:\n  \
        agentkeys revoke research-bot      # every session of that agent\n  \
        agentkeys revoke                   # log this machine out")]
    Revoke {
        /// The agent whose sessions to revoke (wallet, alias or e-mail).
        wallet: Option<String>,
    },

    /// Remove an agent: revoke its sessions and delete its credentials.
    #[command(after_help = "Examples:\n  agentkeys teardown research-bot --yes")]
    Teardown {
        /// The agent (wallet, alias or e-mail).
        wallet: String,
        /// Do not ask for confirmation (required when there is no terminal).
        #[arg(short, long)]
        yes: bool,
    },

    /// Give an agent (or yourself) an alias or an e-mail address.
    #[command(
        group(ArgGroup::new("name").required(true).args(["alias", "email"])),
        after_help = "Examples:\n  \
        agentkeys link 0x1234...abcd --alias research-bot\n  \
        agentkeys link 0x1234...abcd --email bot@example.com"
    )]
    Link {
        /// The wallet.
        wallet: String,
        /// An alias: lower-case letters, digits, ".", "_" and "-", at most 64.
        #[arg(long)]
        alias: Option<String>,
        /// An e-mail address.
        #[arg(long)]
        email: Option<String>,
    },

    /// Show the audit trail (newest first), or verify its hash chain.
    #[command(after_help = "Examples:\n  \
        agentkeys usage --since 1h\n  \
        agentkeys usage --agent research-bot --service openai --json\n  \
        agentkeys usage --verify")]
    Usage(UsageArgs),

    /// Decide on a pairing, recovery or high-value release; without a code, list the inbox.
    ///
    /// Shows what is asked and the OTP to compare with the one the requester shows, then
    /// asks y/N (unless --yes). Without CODE it lists the pending requests you may decide
    /// (pairings addressed to you, recoveries and high-value releases of your agents) and,
    /// on a terminal, lets you pick one; with --json it prints them for scripts.
    #[command(after_help = "Examples:\n  \
        agentkeys approve\n  \
        agentkeys approve --json\n  \
        agentkeys approve ABCD-EFGH --scope openai,github\n  \
        agentkeys approve ABCD-EFGH --scope openai --read-only --yes\n  \
        agentkeys approve ABCD-EFGH --deny\n  \
        agentkeys approve ABCD-EFGH --for 2h")]
    Approve(ApproveArgs),

    /// Register, list and remove the passkeys that approve requests on the approval page.
    ///
    /// 'passkey add' prints a one-time link (10 minutes) bound to your master session: open
    /// it in the browser or phone that holds the passkey (or will make it). Approval pages
    /// ('agentkeys watch' and the inbox link to them) then approve with that passkey, which
    /// signs exactly the request shown. Once you have a passkey, the link asks for it
    /// before it makes another, so a stolen session cannot add its own.
    #[command(after_help = "Examples:\n  \
        agentkeys passkey add --name phone\n  \
        agentkeys passkey list --json\n  \
        agentkeys passkey remove pk_0123456789abcdef0123456789abcdef")]
    Passkey {
        /// What to do.
        #[command(subcommand)]
        action: PasskeyAction,
    },

    /// List your standing approvals ('approve --for'), or end one now.
    #[command(after_help = "Examples:\n  \
        agentkeys approvals\n  \
        agentkeys approvals --json\n  \
        agentkeys approvals revoke sta_0123456789abcdef0123456789abcdef")]
    Approvals {
        /// What to do; without it, list them.
        #[command(subcommand)]
        action: Option<ApprovalsAction>,
    },

    /// Follow the requests you may decide and tell a person about each new one.
    ///
    /// Prints each new request (one JSON object per line with --json) as it is opened:
    /// pairings addressed to you, recoveries and high-value releases of your agents. It
    /// keeps one long-poll open on the server, so it notices a request within a moment
    /// without polling. Each request can also go to a command (--exec, the request as JSON
    /// on stdin), to ntfy, Slack or Discord webhooks, and to the desktop's notifications
    /// (the freedesktop Notifications interface) where a session bus runs. Every notice carries the code, the OTP and a link to the
    /// approval page; none carries a way to approve: deciding happens where you
    /// authenticate ('agentkeys approve CODE', or the page with your passkey).
    #[command(after_help = "Examples:\n  \
        agentkeys watch\n  \
        agentkeys watch --ntfy https://ntfy.sh/my-private-topic\n  \
        agentkeys watch --slack https://hooks.slack.com/services/T000/B000/XXXX\n  \
        agentkeys watch --exec 'jq -r .pair_code >> ~/requests.log' --no-desktop\n  \
        agentkeys watch --json --once")]
    Watch(WatchArgs),

    /// Get a session for an existing agent on this machine (a recovery your master approves).
    ///
    /// Prints a pair code and the OTP it computed itself for 'agentkeys approve' (a server
    /// OTP that differs is refused: the request was altered), waits for the decision,
    /// verifies the server's signature against the pinned key, and stores the agent session
    /// here. Aliases and e-mails belong to one master: name it with --parent.
    #[command(after_help = "Examples:\n  \
        AGENTKEYS_HOME=~/.agentkeys-bot agentkeys recover 0x1234…abcd --server URL\n  \
        AGENTKEYS_HOME=~/.agentkeys-bot agentkeys recover research-bot --parent 0x9876…dcba")]
    Recover {
        /// The agent: its wallet, or an alias or e-mail its master linked (with --parent).
        identity: String,
        /// The master's wallet: whose aliases and e-mails IDENTITY is looked up among.
        #[arg(long, value_name = "MASTER_WALLET")]
        parent: Option<String>,
        /// Give up after this many seconds (codes expire after 60 s and are renewed).
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        wait: u64,
        /// Replace a valid stored session.
        #[arg(long)]
        force: bool,
    },

    /// Run a command with credentials, started by the agentkeys daemon in this sandbox.
    ///
    /// The daemon fetches each credential, builds the command's environment in a secret page,
    /// starts the command with this terminal's stdin, stdout and stderr, and wipes the page
    /// once the command has started: this process never holds the plaintext. Each service
    /// becomes SERVICE_API_KEY (upper case, '-' and '.' become '_': openai → OPENAI_API_KEY);
    /// --env picks the name. With --fd the command gets AGENTKEYS_FD_OPENAI=3:51 (a
    /// memfd_secret file descriptor and the length) for a managed runtime, instead of the
    /// value. The exit status is the
    /// command's (killed by a signal: this process dies by the same signal); Ctrl-C and
    /// other signals are forwarded. Exit 126: cannot execute; 127: command not found.
    ///
    /// With --proxy the command never holds the value at all: OPENAI_API_KEY is a
    /// placeholder shaped like the key, HTTPS_PROXY points at the daemon's egress proxy for
    /// this run, and SSL_CERT_FILE (and REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
    /// NODE_EXTRA_CA_CERTS, GIT_SSL_CAINFO) at a bundle with the run's CA. The proxy swaps
    /// the placeholder for the value only in requests to the hosts the credential is bound to
    /// ('agentkeys bind'), and refuses it anywhere else.
    #[command(after_help = "Examples:\n  \
        agentkeys run --proxy --service openai -- python agent.py   # the agent never holds the key\n  \
        agentkeys run --service openai -- python agent.py\n  \
        agentkeys run --env GH_TOKEN=github -- gh repo list\n  \
        agentkeys run --fd --service openai -- python -m my_agent   # AGENTKEYS_FD_OPENAI\n  \
        agentkeys run --service openai -- sh -c 'curl -H \"Authorization: Bearer $OPENAI_API_KEY\" ...'")]
    Run(RunArgs),

    /// Print the environment that routes an agent the daemon does not start (a long-lived
    /// Claude Code, an IDE) through the daemon's egress proxy: a placeholder per service,
    /// HTTPS_PROXY and the CA bundle. The daemon keeps this listener until it stops or the
    /// session is revoked; a high-value approval there covers one request.
    #[command(after_help = "Examples:\n  \
        eval \"$(agentkeys proxy-env --service openai)\"   # then start the agent in this shell\n  \
        agentkeys proxy-env --service openai --service github --json   # for an MCP client's env block")]
    ProxyEnv {
        /// A bound credential to put behind the proxy. Repeatable.
        #[arg(long = "service", value_name = "SERVICE", required = true)]
        services: Vec<String>,
        /// The daemon socket.
        #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
    },

    /// Check this machine: the CLI's process hardening (not dumpable, no core dumps,
    /// debugger, Yama, protection keys), where the session is kept, whether the server
    /// answers, and whether a daemon answers on the socket.
    #[command(after_help = "Examples:\n  agentkeys doctor\n  agentkeys doctor --json")]
    Doctor,

    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        agentkeys completions bash > ~/.local/share/bash-completion/completions/agentkeys\n  \
        agentkeys completions zsh > \"${fpath[1]}/_agentkeys\"")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

// The flags of `agentkeys run`. No doc comment: clap would take it for the subcommand's
// about, over the variant's (subcommands are deferred, so the struct's methods run last).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct RunArgs {
    /// Put this credential in the environment as SERVICE_API_KEY (repeatable).
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Put a credential in the environment under this name (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=SERVICE")]
    pub env: Vec<String>,
    /// Pass memfd_secret file descriptors (AGENTKEYS_FD_SERVICE=FD:LENGTH) instead of
    /// values, for programs using an agentkeys managed runtime.
    #[arg(long, conflicts_with = "proxy")]
    pub fd: bool,
    /// Give the command placeholders and the daemon's egress proxy instead of values: the
    /// value goes only into requests to the credential's bound hosts.
    #[arg(long)]
    pub proxy: bool,
    /// The daemon socket.
    #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

// The flags of `agentkeys store`. No doc comment: clap would take it for the subcommand's
// about, over the variant's (subcommands are deferred, so the struct's methods run last).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Store it for this agent (wallet, alias or e-mail) instead of yourself.
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// The credential's name, e.g. openai.
    pub service: String,
    /// Every read needs your approval ('agentkeys approve').
    #[arg(long)]
    pub high_value: bool,
    /// Read the value from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "from_file")]
    pub from_env: Option<String>,
    /// Read the value from this file ('-' for stdin), byte for byte.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Do not bind a well-known service to its hosts.
    #[arg(long, conflicts_with = "host")]
    pub no_bind: bool,
    /// Where the egress proxy may send it (see 'agentkeys bind --help').
    #[command(flatten)]
    pub binding: BindingFlags,
    /// Catches a value typed on the command line, so it can be refused without echoing it.
    #[arg(hide = true, num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub stray: Vec<OsString>,
}

// Where a credential may be sent and how it is injected (`store` and `bind`). No doc comment: clap would take it for the
// subcommand's about (see RunArgs).
#[allow(missing_docs)]
#[derive(clap::Args, Default)]
pub struct BindingFlags {
    /// A host it may be sent to: a name, or '*.domain' for any name under domain.
    /// Repeat for more.
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// How it is injected: bearer, header:NAME (or header:NAME:PREFIX), basic-user,
    /// basic-password, substitute:HEADER[,HEADER…] (default: substitute, naming no header).
    #[arg(long, value_name = "HOW", requires = "host")]
    pub inject: Option<String>,
    /// Only with this HTTP method. Repeat for more; default: any.
    #[arg(long, value_name = "METHOD", requires = "host")]
    pub method: Vec<String>,
    /// Only under this path prefix. Repeat for more; default: any path.
    #[arg(long, value_name = "PREFIX", requires = "host")]
    pub path: Vec<String>,
    /// With --inject substitute: also replace the placeholder in the query string.
    #[arg(long, requires = "host")]
    pub substitute_query: bool,
    /// With --inject substitute: the placeholder may be the whole value of this request body
    /// field: a JSON pointer (/auth/api_key) or form:NAME. Repeat for more.
    #[arg(long, value_name = "FIELD", requires = "host")]
    pub body_field: Vec<String>,
    /// With --body-field: runs using the credential still tunnel hosts none of their
    /// credentials is bound to (default: refused).
    #[arg(long, requires = "body_field")]
    pub tunnel_unbound: bool,
    /// Retired (the placeholder anywhere in the body); refused with what replaces it.
    #[arg(long, hide = true)]
    pub substitute_body: bool,
    /// Also inject over plain http:// (default: TLS only).
    #[arg(long, requires = "host")]
    pub allow_http: bool,
    /// The hosts may resolve to loopback or private addresses (default: refused).
    #[arg(long, requires = "host")]
    pub allow_private: bool,
}

// The flags of `agentkeys bind`. No doc comment: clap would take it for the subcommand's
// about, over the variant's (subcommands are deferred, so the struct's methods run last).
#[allow(missing_docs)]
#[derive(clap::Args)]
#[command(group(ArgGroup::new("change").args(["host", "remove", "well_known"])))]
pub struct BindArgs {
    /// The credential's owner (wallet, alias or e-mail); default: yourself.
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// The credential's name.
    pub service: String,
    /// Remove the binding: the proxy will not inject it anywhere.
    #[arg(long)]
    pub remove: bool,
    /// Bind it to the built-in hosts of a well-known service of the same name.
    #[arg(long)]
    pub well_known: bool,
    /// The binding to set.
    #[command(flatten)]
    pub binding: BindingFlags,
}

// The flags of `agentkeys scope`. No doc comment: clap would take it for the subcommand's
// about, over the variant's (subcommands are deferred, so the struct's methods run last).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ScopeArgs {
    /// The agent (wallet, alias or e-mail).
    pub agent: String,
    /// What to change.
    #[command(flatten)]
    pub change: ScopeChange,
}

// The change flags of `agentkeys scope` (none: just show the scope). No doc comment: clap would take it for the
// subcommand's about (see RunArgs).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ScopeChange {
    /// Allow this service too (repeatable, or comma-separated).
    #[arg(long, value_name = "SERVICE", value_delimiter = ',')]
    pub add: Vec<String>,
    /// Stop allowing this service (repeatable, or comma-separated).
    #[arg(long, value_name = "SERVICE", value_delimiter = ',')]
    pub remove: Vec<String>,
    /// Replace the list ('*' = every service, '' = none).
    #[arg(long, value_name = "A,B", conflicts_with_all = ["add", "remove"])]
    pub set: Option<String>,
    /// The agent may read but not store.
    #[arg(long, conflicts_with = "read_write")]
    pub read_only: bool,
    /// The agent may store within its scope.
    #[arg(long)]
    pub read_write: bool,
}

// The flags of `agentkeys usage`. No doc comment: clap would take it for the subcommand's
// about, over the variant's (subcommands are deferred, so the struct's methods run last).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct UsageArgs {
    /// Only this agent (wallet, alias or e-mail).
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// Only this service.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// Only this action: session.create, session.revoke, credential.store, credential.read,
    /// policy.set, scope.set, agent.teardown, auth.open, auth.approve, auth.deny,
    /// identity.link or trail.anchor.
    #[arg(long, value_name = "ACTION", value_parser = parse_action)]
    pub action: Option<String>,
    /// Only events newer than this (e.g. 90s, 15m, 2h, 7d, 2w).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Recompute the whole hash chain on the server and report the first broken link.
    #[arg(long)]
    pub verify: bool,
}

// The flags of `agentkeys approve`. No doc comment: clap would take it for the subcommand's
// about, over the variant's (subcommands are deferred, so the struct's methods run last).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ApproveArgs {
    /// The pair code (ABCD-EFGH; case and dash do not matter). Without it: list the
    /// pending requests you may decide and, on a terminal, pick one.
    pub code: Option<String>,
    /// For a pairing: the services the agent may use ('*' = all).
    #[arg(long, value_name = "A,B")]
    pub scope: Option<String>,
    /// For a pairing: the agent may not store.
    #[arg(long)]
    pub read_only: bool,
    /// Do not ask for confirmation (required when there is no terminal).
    #[arg(short, long)]
    pub yes: bool,
    /// Deny the request instead.
    #[arg(long)]
    pub deny: bool,
    /// For a high-value release: also let that agent read that credential without asking
    /// for this long (e.g. 30m, 2h; at most 8h), a standing approval.
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "deny")]
    pub standing: Option<String>,
}

/// What `agentkeys passkey` does.
#[derive(Subcommand)]
pub enum PasskeyAction {
    /// Print a one-time link that registers a passkey for you where it is opened.
    Add {
        /// A name to tell it apart (phone, laptop, yubikey).
        #[arg(long, default_value = "passkey")]
        name: String,
    },
    /// List your passkeys.
    List,
    /// Remove a passkey: it approves nothing any more. The last one stays while a
    /// credential requires a passkey.
    Remove {
        /// Its id (pk_…), as 'agentkeys passkey list' shows it.
        id: String,
    },
}

/// What `agentkeys approvals` does besides listing.
#[derive(Subcommand)]
pub enum ApprovalsAction {
    /// End a standing approval now: the agent must ask again for the next release.
    Revoke {
        /// The approval's id (sta_…), as 'agentkeys approvals' lists it.
        id: String,
    },
}

// The flags of `agentkeys watch` (no doc comment, as for `ApproveArgs`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct WatchArgs {
    /// Run CMD (with sh -c) for each new request, the request as JSON on its stdin.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Post each new request to this ntfy topic URL (repeatable).
    #[arg(long, value_name = "URL")]
    pub ntfy: Vec<String>,
    /// Post each new request to this Slack incoming-webhook URL (repeatable).
    #[arg(long, value_name = "URL")]
    pub slack: Vec<String>,
    /// Post each new request to this Discord webhook URL (repeatable).
    #[arg(long, value_name = "URL")]
    pub discord: Vec<String>,
    /// Do not show desktop notifications (shown where a session bus runs).
    #[arg(long)]
    pub no_desktop: bool,
    /// Exit after the first new request(s) have been announced.
    #[arg(long)]
    pub once: bool,
}

/// `--action`: one of the server's audit action names.
fn parse_action(s: &str) -> Result<String, String> {
    agentkeys_types::api::AuditAction::parse(s)
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| {
            let names: Vec<&str> = agentkeys_types::api::AuditAction::ALL
                .iter()
                .map(|a| a.as_str())
                .collect();
            format!("not an audit action; one of: {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_an_example() {
        for sub in Args::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:\n  ") && help.contains("agentkeys "),
                "{} has no example",
                sub.get_name()
            );
        }
    }
}

#[cfg(test)]
mod run_line {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    /// Every field of two parses of `line` agrees.
    fn assert_same(a: &RunArgs, b: &RunArgs, line: &str) {
        assert_eq!(a.services, b.services, "{line}");
        assert_eq!(a.env, b.env, "{line}");
        assert_eq!((a.fd, a.proxy), (b.fd, b.proxy), "{line}");
        assert_eq!(a.socket, b.socket, "{line}");
        assert_eq!(a.command, b.command, "{line}");
    }

    #[test]
    fn the_run_only_parser_reads_run_lines_as_the_full_one_does() {
        for line in [
            "agentkeys run -- true",
            "agentkeys run --service openai -s github --env GH=github -- sh -c x",
            "agentkeys run --fd --service openai --socket /tmp/s -- python -m agent --help",
            "agentkeys run --proxy -s openai -- curl -v",
            "agentkeys run --service=openai --env=GH=github --socket=/tmp/s -- env",
            "agentkeys run -- agentkeys run -s x -- true",
        ] {
            assert!(plain_run(&argv(line)).is_some(), "{line}");
            let full = Args::parse_from(argv(line));
            let fast = Args::parse_argv(argv(line));
            let (Command::Run(a), Command::Run(b)) = (full.command, fast.command) else {
                panic!("not a run: {line}");
            };
            assert_same(&a, &b, line);
        }
    }

    #[test]
    fn whatever_the_plain_parser_takes_clap_reads_the_same_way() {
        // Random lines over run's flags, values and mistakes (a fixed xorshift sequence):
        // where the plain parser answers, clap must accept the line and agree field by
        // field.
        const TOKENS: [&str; 22] = [
            "--service",
            "-s",
            "--env",
            "-e",
            "--fd",
            "--proxy",
            "--socket",
            "--",
            "openai",
            "GH=github",
            "/tmp/s",
            "--service=openai",
            "--env=GH=github",
            "--socket=/tmp/s",
            "-x",
            "--json",
            "true",
            "-sopenai",
            "--help",
            "-v",
            "",
            "--fd=1",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut taken = 0;
        for _ in 0..20_000 {
            let mut line: Vec<OsString> = vec!["agentkeys".into(), "run".into()];
            for _ in 0..(next() % 9) {
                let i = usize::try_from(next() % TOKENS.len() as u64).unwrap_or(0);
                line.push(TOKENS[i].into());
            }
            let Some(fast) = plain_run(&line) else {
                continue;
            };
            taken += 1;
            let full = Args::try_parse_from(&line)
                .unwrap_or_else(|e| panic!("clap refuses {line:?}, which was taken: {e}"));
            let Command::Run(full) = full.command else {
                panic!("not a run: {line:?}");
            };
            assert_same(&fast, &full, &format!("{line:?}"));
        }
        assert!(taken > 500, "only {taken} lines were plain enough");
    }

    #[test]
    fn a_run_line_the_plain_parser_does_not_take_is_left_to_clap() {
        for line in [
            "agentkeys run --help",
            "agentkeys run -h -- true",
            "agentkeys run --fd --proxy -s openai -- true",
            "agentkeys run -s openai true",
            "agentkeys run -s -- true",
            "agentkeys run --service --fd -- true",
            "agentkeys run --fd --fd -- true",
            "agentkeys run --socket /a --socket /b -- true",
            "agentkeys run --fd=yes -- true",
            "agentkeys run -sopenai -- true",
            "agentkeys run --",
            "agentkeys run --json -- true",
            "agentkeys --json run -- true",
            "agentkeys read openai",
        ] {
            assert!(plain_run(&argv(line)).is_none(), "{line}");
        }
    }

    #[test]
    fn a_run_line_with_a_global_flag_goes_to_the_full_parser() {
        let args = Args::parse_argv(argv("agentkeys run --json -v -s openai -- true"));
        assert!(args.json);
        assert_eq!(args.verbose, 1);
        assert!(matches!(args.command, Command::Run(_)));
        let args = Args::parse_argv(argv("agentkeys --json run -- true"));
        assert!(args.json);
    }
}
