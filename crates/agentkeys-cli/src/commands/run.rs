//! `agentkeys run` (decision 76 in docs/architecture.md): asks the daemon to start a command
//! with credentials.
//!
//! This process passes its stdin, stdout and stderr to the daemon (`SCM_RIGHTS` on the
//! `agentkeys/run` line), forwards the signals it receives (`agentkeys/signal`), and ends the
//! way the command ended (`agentkeys/exit`): same exit status, or death by the same signal.
//! It never sees a credential byte.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use agentkeys_secmem::process::SignalQueue;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::process::Signal;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};

// The flags of `agentkeys run` (no doc comment: see `crate::cli::Command`). `crate::cli`
// reads a plain run line without clap, into the same fields.
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct RunArgs {
    /// Put this credential in the environment as SERVICE_API_KEY (repeatable).
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub(crate) services: Vec<String>,
    /// Put a credential in the environment under this name (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=SERVICE")]
    pub(crate) env: Vec<String>,
    /// Pass memfd_secret file descriptors (AGENTKEYS_FD_SERVICE=FD:LENGTH) instead of
    /// values, for programs using an agentkeys managed runtime.
    #[arg(long, conflicts_with = "proxy")]
    pub(crate) fd: bool,
    /// Give the command placeholders and the daemon's egress proxy instead of values: the
    /// value goes only into requests to the credential's bound hosts.
    #[arg(long)]
    pub(crate) proxy: bool,
    /// The daemon socket.
    #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

// The flags of `agentkeys proxy-env` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ProxyEnvArgs {
    /// A bound credential to put behind the proxy. Repeatable.
    #[arg(long = "service", value_name = "SERVICE", required = true)]
    services: Vec<String>,
    /// The daemon socket.
    #[arg(long, env = "AGENTKEYS_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// The daemon socket: `--socket`/`$AGENTKEYS_SOCKET`, else the daemon's own default
/// ([`agentkeys_core::paths::default_socket`]).
pub(crate) fn socket_path(flag: Option<PathBuf>) -> CliResult<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let home = agentkeys_core::paths::home();
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| !d.is_empty());
    if home.is_none() && !runtime_dir {
        return Err(CliError::usage(
            "cannot find the daemon socket: set AGENTKEYS_SOCKET",
        ));
    }
    // Without a home, the runtime directory decides and the home is never used.
    Ok(agentkeys_core::paths::default_socket(
        &home.unwrap_or_default(),
    ))
}

/// The `agentkeys/run` request line (newline included).
///
/// Serialized straight from borrowed strings: `run` is on the path of every command an
/// agent starts, and a JSON tree of copies of the whole environment cost a visible share of
/// its start-up.
fn request_line(args: &RunArgs) -> CliResult<Vec<u8>> {
    let argv: Vec<&str> = args
        .command
        .iter()
        .map(|a| {
            a.to_str().ok_or_else(|| {
                CliError::usage(format!(
                    "an argument is not valid UTF-8: {}",
                    String::from_utf8_lossy(a.as_bytes())
                ))
            })
        })
        .collect::<CliResult<_>>()?;
    let mut env = std::collections::BTreeMap::new();
    for pair in &args.env {
        let (name, service) = pair.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--env {pair}: write NAME=SERVICE, e.g. GH_TOKEN=github"
            ))
        })?;
        env.insert(name, service);
    }
    let cwd = std::env::current_dir().ok();
    let request = RunRequest {
        jsonrpc: "2.0",
        id: 1,
        method: "agentkeys/run",
        params: RunParams {
            argv,
            services: &args.services,
            env,
            fd_mode: args.fd,
            proxy: args.proxy,
            cwd: cwd.as_deref().and_then(std::path::Path::to_str),
            environ: Environ,
        },
        fds: 3,
    };
    let mut line = Vec::with_capacity(4096);
    serde_json::to_writer(&mut line, &request)
        .map_err(|e| CliError::new("INTERNAL", 1, e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

#[derive(serde::Serialize)]
struct RunRequest<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'static str,
    params: RunParams<'a>,
    fds: u32,
}

#[derive(serde::Serialize)]
struct RunParams<'a> {
    argv: Vec<&'a str>,
    services: &'a [String],
    env: std::collections::BTreeMap<&'a str, &'a str>,
    fd_mode: bool,
    proxy: bool,
    cwd: Option<&'a str>,
    environ: Environ,
}

/// This process's environment as `NAME=value` strings, written as it is read. Variables
/// that are not UTF-8 are left out rather than mangled.
struct Environ;

impl serde::Serialize for Environ {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = serializer.serialize_seq(None)?;
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
                seq.serialize_element(&format_args!("{k}={v}"))?;
            }
        }
        seq.end()
    }
}

fn unreachable(path: &std::path::Path, e: &std::io::Error) -> CliError {
    CliError::new(
        "UNREACHABLE",
        6,
        format!("no agentkeys daemon answers on {}: {e}", path.display()),
    )
    .hint("start it with 'agentkeys-daemon serve --server URL', or point AGENTKEYS_SOCKET at its socket")
}

/// Sends the request line with this process's stdin, stdout and stderr attached.
fn send_request(stream: &std::os::unix::net::UnixStream, line: &[u8]) -> std::io::Result<()> {
    let stdio: [BorrowedFd<'_>; 3] = [
        rustix::stdio::stdin(),
        rustix::stdio::stdout(),
        rustix::stdio::stderr(),
    ];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&stdio)) {
        return Err(std::io::Error::other("no room for three descriptors"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(line)],
        &mut cmsg,
        SendFlags::NOSIGNAL,
    )?;
    std::io::Write::write_all(&mut &*stream, &line[sent..])
}

/// Maps the daemon's refusal to an exit status a shell user expects.
fn refused(error: &Value) -> CliError {
    let message = error["message"].as_str().unwrap_or("the daemon refused");
    let code = error["data"]["code"].as_str().unwrap_or("INTERNAL");
    let (code, exit): (&'static str, u8) = match code {
        "APPROVAL_REQUIRED" => ("APPROVAL_REQUIRED", 5),
        "REVOKED" | "DENIED" | "NOT_IN_SCOPE" => ("DENIED", 3),
        "NOT_FOUND" if message.starts_with("command not found") => ("COMMAND_NOT_FOUND", 127),
        "NOT_FOUND" if message.starts_with("cannot start") => ("CANNOT_EXECUTE", 126),
        "NOT_FOUND" => ("NOT_FOUND", 4),
        "BAD_REQUEST" => ("USAGE", 2),
        "UNREACHABLE" => ("UNREACHABLE", 6),
        "RATE_LIMITED" => ("RATE_LIMITED", 7),
        _ => ("INTERNAL", 1),
    };
    CliError::new(code, exit, message)
}

/// The signals `run` forwards to the command rather than acting on.
const FORWARDED: [Signal; 7] = [
    Signal::INT,
    Signal::TERM,
    Signal::HUP,
    Signal::QUIT,
    Signal::USR1,
    Signal::USR2,
    Signal::WINCH,
];

/// Runs the command through the daemon and exits as it exited.
///
/// Synchronous on purpose: this process waits on two descriptors (the daemon's socket and a
/// signalfd), and an async runtime cost more to start than the whole exchange.
pub fn run(args: RunArgs) -> CliResult {
    let path = socket_path(args.socket.clone())?;
    let stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| unreachable(&path, &e))?;
    let line = request_line(&args)?;
    // The signals to forward are caught from before the request leaves: a Ctrl-C that
    // arrives while the daemon is still starting the command must not kill this process
    // and leave the command running. This process runs one thread, so blocking them here
    // blocks them for good.
    let numbers = FORWARDED.map(Signal::as_raw);
    let signals = SignalQueue::block(&numbers)
        .map_err(|e| CliError::new("INTERNAL", 1, format!("cannot catch signals: {e}")))?;
    send_request(&stream, &line).map_err(|e| unreachable(&path, &e))?;

    let gone = || {
        CliError::new(
            "UNREACHABLE",
            6,
            "the agentkeys daemon closed the connection before the command ended",
        )
        .hint("see 'agentkeys-daemon status' and the daemon's log; the command may still run")
    };
    let mut pid: Option<u64> = None;
    // Signals caught before the daemon named the command's pid, forwarded once it does.
    let mut early: Vec<i32> = Vec::new();
    let mut next_id = 2u64;
    let mut lines = Lines::default();
    loop {
        let mut fds = [
            PollFd::new(&stream, PollFlags::IN),
            PollFd::new(&signals, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(CliError::new("INTERNAL", 1, e.to_string())),
        }
        while let Some(number) = signals
            .next()
            .map_err(|e| CliError::new("INTERNAL", 1, e.to_string()))?
        {
            match pid {
                Some(pid) => forward(&stream, &mut next_id, pid, number).map_err(|_| gone())?,
                None => early.push(number),
            }
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        if !lines.fill(&stream).map_err(|_| gone())? {
            return Err(gone());
        }
        while let Some(l) = lines.next_line() {
            let Ok(v) = serde_json::from_slice::<Value>(&l) else {
                continue;
            };
            if v["id"] == json!(1) {
                if v.get("error").is_some() {
                    return Err(refused(&v["error"]));
                }
                pid = v["result"]["pid"].as_u64();
                if let Some(pid) = pid {
                    for number in std::mem::take(&mut early) {
                        forward(&stream, &mut next_id, pid, number).map_err(|_| gone())?;
                    }
                }
            } else if v["method"] == "agentkeys/exit" {
                finish(&v["params"]);
            }
        }
    }
}

/// Newline-delimited lines read from the daemon, as they arrive.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Reads what is there (one read). `Ok(false)` at end of stream.
    fn fill(&mut self, stream: &std::os::unix::net::UnixStream) -> std::io::Result<bool> {
        let mut chunk = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut &*stream, &mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete line, without its newline.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        line.pop();
        Some(line)
    }
}

/// Sends `agentkeys/signal {pid, signal}` with the next request id.
fn forward(
    mut stream: &std::os::unix::net::UnixStream,
    next_id: &mut u64,
    pid: u64,
    number: i32,
) -> std::io::Result<()> {
    let body = json!({"jsonrpc": "2.0", "id": *next_id, "method": "agentkeys/signal",
        "params": {"pid": pid, "signal": number}});
    *next_id += 1;
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    std::io::Write::write_all(&mut stream, &bytes)
}

/// Ends this process the way the command ended.
fn finish(params: &Value) -> ! {
    if let Some(sig) = params["signal"]
        .as_i64()
        .and_then(|s| i32::try_from(s).ok())
    {
        let _ = agentkeys_secmem::launch::reraise(sig);
        std::process::exit(128 + sig);
    }
    let code = params["code"]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(1);
    std::process::exit(code)
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `agentkeys proxy-env`: asks the daemon for its persistent egress proxy for `services`
/// and prints the environment to use it (`export NAME='value'` lines, or JSON).
pub fn proxy_env(args: ProxyEnvArgs, as_json: bool) -> CliResult {
    use std::io::{BufRead as _, Write as _};
    let ProxyEnvArgs { services, socket } = args;
    let path = socket_path(socket)?;
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| unreachable(&path, &e))?;
    let request = json!({
        "jsonrpc": "2.0", "id": 1, "method": "agentkeys/proxy-env",
        "params": {"services": services},
    });
    let mut line = request.to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| unreachable(&path, &e))?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| unreachable(&path, &e))?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|_| CliError::new("INTERNAL", 1, "the daemon's answer is not JSON"))?;
    if let Some(err) = v.get("error") {
        let message = err["message"].as_str().unwrap_or("the daemon refused");
        let exit = if message.starts_with("DENIED") || message.starts_with("NOT_IN_SCOPE") {
            3
        } else if message.starts_with("NOT_FOUND") {
            4
        } else {
            1
        };
        return Err(CliError::new("REFUSED", exit, message.to_owned()).hint(
            "the service must be in the agent's scope and bound to hosts ('agentkeys bind')",
        ));
    }
    let result = &v["result"];
    if as_json {
        println!("{result}");
        return Ok(());
    }
    let mut out = String::new();
    for entry in result["env"].as_array().into_iter().flatten() {
        if let Some((name, value)) = entry.as_str().and_then(|e| e.split_once('=')) {
            out.push_str(&format!("export {name}={}\n", shell_quote(value)));
        }
    }
    print!("{out}");
    Ok(())
}
