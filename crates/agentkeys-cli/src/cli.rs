//! The command line's top level: the global flags, the list of subcommands with each one's
//! help text and examples, and the exit-code table. Each subcommand's own flags live next to
//! the code that runs it, in `commands`. No I/O here.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::agents::{LinkArgs, ScopeArgs, TeardownArgs};
use crate::commands::approve::{ApprovalsArgs, ApproveArgs};
use crate::commands::completions::CompletionsArgs;
use crate::commands::credentials::{BindArgs, ListArgs, PolicyArgs, ReadArgs, StoreArgs};
use crate::commands::passkey::PasskeyArgs;
use crate::commands::run::{ProxyEnvArgs, RunArgs};
use crate::commands::session::{InitArgs, RecoverArgs, RevokeArgs};
use crate::commands::usage::UsageArgs;
use crate::commands::watch::WatchArgs;

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
// most of the parse, paid by every command line. So a subcommand's help text (its doc
// comment and examples) stays here on its variant, which the top-level help reads unbuilt,
// and its flags struct has no doc comment: clap would take one for the subcommand's about
// and, running last, put it over the variant's.
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
    Init(InitArgs),

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
    Read(ReadArgs),

    /// List credential names (never values), with their policy.
    #[command(
        after_help = "Examples:\n  agentkeys list\n  agentkeys list --agent research-bot --json"
    )]
    List(ListArgs),

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
    #[command(after_help = "Examples:\n  \
        agentkeys policy stripe --high-value\n  \
        agentkeys policy stripe --high-value --require-passkey\n  \
        agentkeys policy openai --agent research-bot --normal")]
    Policy(PolicyArgs),

    /// Revoke sessions. Without an argument: your own session, and the local copy is wiped.
    #[command(after_help = "Examples:\n  \
        agentkeys revoke research-bot      # every session of that agent\n  \
        agentkeys revoke                   # log this machine out")]
    Revoke(RevokeArgs),

    /// Remove an agent: revoke its sessions and delete its credentials.
    #[command(after_help = "Examples:\n  agentkeys teardown research-bot --yes")]
    Teardown(TeardownArgs),

    /// Give an agent (or yourself) an alias or an e-mail address.
    #[command(after_help = "Examples:\n  \
        agentkeys link 0x1234...abcd --alias research-bot\n  \
        agentkeys link 0x1234...abcd --email bot@example.com")]
    Link(LinkArgs),

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
    Passkey(PasskeyArgs),

    /// List your standing approvals ('approve --for'), or end one now.
    #[command(after_help = "Examples:\n  \
        agentkeys approvals\n  \
        agentkeys approvals --json\n  \
        agentkeys approvals revoke sta_0123456789abcdef0123456789abcdef")]
    Approvals(ApprovalsArgs),

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
    Recover(RecoverArgs),

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
    ProxyEnv(ProxyEnvArgs),

    /// Check this machine: the CLI's process hardening (not dumpable, no core dumps,
    /// debugger, Yama, protection keys), where the session is kept, whether the server
    /// answers, and whether a daemon answers on the socket.
    #[command(after_help = "Examples:\n  agentkeys doctor\n  agentkeys doctor --json")]
    Doctor,

    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        agentkeys completions bash > ~/.local/share/bash-completion/completions/agentkeys\n  \
        agentkeys completions zsh > \"${fpath[1]}/_agentkeys\"")]
    Completions(CompletionsArgs),
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
