//! `agentkeys run` (DESIGN decision 9): asks the daemon to start a command with credentials.
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

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::error::{CliError, CliResult};

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

fn utf8(what: &str, s: &std::ffi::OsStr) -> CliResult<String> {
    s.to_str().map(str::to_owned).ok_or_else(|| {
        CliError::usage(format!(
            "{what} is not valid UTF-8: {}",
            String::from_utf8_lossy(s.as_bytes())
        ))
    })
}

/// The `agentkeys/run` parameters.
fn params(args: &RunArgs) -> CliResult<Value> {
    let argv: Vec<String> = args
        .command
        .iter()
        .map(|a| utf8("an argument", a))
        .collect::<CliResult<_>>()?;
    let mut env = Map::new();
    for pair in &args.env {
        let (name, service) = pair.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--env {pair}: write NAME=SERVICE, e.g. GH_TOKEN=github"
            ))
        })?;
        env.insert(name.to_owned(), json!(service));
    }
    // Variables that are not UTF-8 are left out rather than mangled.
    let environ: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v.to_str()?)))
        .collect();
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| d.to_str().map(str::to_owned));
    Ok(json!({
        "argv": argv,
        "services": args.services,
        "env": env,
        "fd_mode": args.fd,
        "proxy": args.proxy,
        "cwd": cwd,
        "environ": environ,
    }))
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

/// Runs the command through the daemon and exits as it exited.
pub async fn run(args: RunArgs) -> CliResult {
    let path = socket_path(args.socket.clone())?;
    let stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| unreachable(&path, &e))?;
    let mut line = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 1, "method": "agentkeys/run",
        "params": params(&args)?, "fds": 3,
    }))
    .map_err(|e| CliError::new("INTERNAL", 1, e.to_string()))?;
    line.push(b'\n');
    // The signals to forward are caught from before the request leaves: a Ctrl-C that
    // arrives while the daemon is still starting the command must not kill this process
    // and leave the command running.
    let mut forwarded = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
        SignalKind::window_change(),
    ] {
        let s = signal(kind).map_err(|e| CliError::new("INTERNAL", 1, e.to_string()))?;
        forwarded.push((kind.as_raw_value(), s));
    }
    send_request(&stream, &line).map_err(|e| unreachable(&path, &e))?;
    stream
        .set_nonblocking(true)
        .map_err(|e| unreachable(&path, &e))?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| unreachable(&path, &e))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();

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
    loop {
        let received = {
            let signals = first_signal(&mut forwarded);
            tokio::select! {
                l = lines.next_line() => Event::Line(l),
                n = signals => Event::Signal(n),
            }
        };
        match received {
            Event::Line(Ok(Some(l))) => {
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    continue;
                };
                if v["id"] == json!(1) {
                    if v.get("error").is_some() {
                        return Err(refused(&v["error"]));
                    }
                    pid = v["result"]["pid"].as_u64();
                    if let Some(pid) = pid {
                        for number in std::mem::take(&mut early) {
                            forward(&mut write, &mut next_id, pid, number)
                                .await
                                .map_err(|_| gone())?;
                        }
                    }
                } else if v["method"] == "agentkeys/exit" {
                    finish(&v["params"]);
                }
            }
            Event::Line(_) => return Err(gone()),
            Event::Signal(number) => match pid {
                Some(pid) => forward(&mut write, &mut next_id, pid, number)
                    .await
                    .map_err(|_| gone())?,
                None => early.push(number),
            },
        }
    }
}

/// Sends `agentkeys/signal {pid, signal}` with the next request id.
async fn forward(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    next_id: &mut u64,
    pid: u64,
    number: i32,
) -> std::io::Result<()> {
    let body = json!({"jsonrpc": "2.0", "id": *next_id, "method": "agentkeys/signal",
        "params": {"pid": pid, "signal": number}});
    *next_id += 1;
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

enum Event {
    Line(std::io::Result<Option<String>>),
    Signal(i32),
}

/// The first of the registered signals to arrive, as its number.
async fn first_signal(signals: &mut [(i32, tokio::signal::unix::Signal)]) -> i32 {
    std::future::poll_fn(|cx| {
        for (number, s) in signals.iter_mut() {
            if s.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*number);
            }
        }
        std::task::Poll::Pending
    })
    .await
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
pub fn proxy_env(services: &[String], socket: Option<PathBuf>, as_json: bool) -> CliResult {
    use std::io::{BufRead as _, Write as _};
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
