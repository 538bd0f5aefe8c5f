//! Daemon-mediated `run` (decision 76): the daemon fetches the credentials, builds the
//! child's environment inside a secret page, forks and execs (agentkeys-secmem `launch`), and
//! wipes the page as soon as `execve` has copied it. The caller never holds the plaintext.
//!
//! Two doors lead here: `agentkeys/run` from the CLI (the caller's stdin, stdout and stderr
//! arrive as fds; the answer is `{pid}`, then an `agentkeys/exit` notification, and
//! `agentkeys/signal` forwards Ctrl-C and friends), and the MCP `run` tool (output captured,
//! size-capped, and every delivered secret redacted from it, also in base64 and hex).

use std::ffi::CString;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_secmem::SecretPage;
use agentkeys_secmem::launch::{self, Launch};
use agentkeys_types::ServiceName;
use base64::Engine as _;
use rustix::process::Signal;
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;

use crate::credential_var::{CredentialVar, default_name, valid_env_name};
use crate::daemon::{Conn, Daemon, Refusal};
use crate::line_writer::{Writer, error_body, write_line};
use crate::process_group::{ChildEntry, group_alive, signal_group, wait_group_empty};
use crate::trail::Event;

/// What to run. No `Debug`: `environ` is the caller's whole environment, which may hold
/// other secrets.
pub struct RunSpec {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Credentials to put in the child's environment.
    pub credentials: Vec<CredentialVar>,
    /// Hand the child fds (`AGENTKEYS_FD_<SERVICE>=<fd>:<length>`) instead of values.
    pub fd_mode: bool,
    /// Hand the child placeholders and the run's egress proxy instead of values.
    pub proxy: bool,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// The child's base environment (`NAME=value`), before the credentials are added.
    pub environ: Vec<String>,
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exit status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    fn to_json(self) -> Value {
        match self {
            Exit::Code(c) => json!({"code": c}),
            Exit::Signal(s) => json!({"signal": s}),
        }
    }
}

/// A started child.
pub struct Running {
    /// Its pid.
    pub pid: u32,
    pidfd: Arc<OwnedFd>,
    /// The pidfd registered with the runtime: it turns readable when the child exits.
    /// `None` if the registration failed; [`wait`] then polls.
    exited: Option<AsyncFd<Arc<OwnedFd>>>,
    /// The run's egress proxy (`proxy` runs): [`wait`] shuts it down once the child has
    /// exited (and dropping the run stops it too).
    proxy: Option<crate::proxy::ProxyRun>,
}

/// Parses `agentkeys/run` (and MCP `run`) parameters.
pub fn parse_spec(params: &Value) -> Result<RunSpec, Refusal> {
    let bad = |m: &str| Refusal::new("BAD_REQUEST", m.to_owned());
    let argv: Vec<String> = serde_json::from_value(params["argv"].clone())
        .map_err(|_| bad("argv must be a list of strings"))?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(bad("argv must name a command"));
    }
    let fd_mode = params["fd_mode"].as_bool().unwrap_or(false);
    let proxy = params["proxy"].as_bool().unwrap_or(false);
    if fd_mode && proxy {
        return Err(bad(
            "fd_mode and proxy exclude each other: with the proxy the child holds no value at all",
        ));
    }
    let mut credentials = Vec::new();
    let services: Vec<String> = match &params["services"] {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v.clone())
            .map_err(|_| bad("services must be a list of service names"))?,
    };
    for s in services {
        let service =
            ServiceName::parse(&s).map_err(|_| bad(&format!("'{s}' is not a service name")))?;
        credentials.push(CredentialVar {
            name: default_name(&service, fd_mode),
            service,
        });
    }
    if let Some(env) = params["env"].as_object() {
        for (name, service) in env {
            let service = service
                .as_str()
                .and_then(|s| ServiceName::parse(s).ok())
                .ok_or_else(|| bad(&format!("env {name}: the value must be a service name")))?;
            if !valid_env_name(name) {
                return Err(bad(&format!(
                    "'{name}' is not an environment variable name"
                )));
            }
            credentials.push(CredentialVar {
                name: name.clone(),
                service,
            });
        }
    }
    let mut names: Vec<&str> = credentials.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("two credentials bound to the same variable name"));
    }
    let environ: Vec<String> = match &params["environ"] {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v.clone())
            .map_err(|_| bad("environ must be a list of NAME=value strings"))?,
    };
    let cwd = params["cwd"].as_str().map(PathBuf::from);
    if proxy && credentials.is_empty() {
        return Err(bad("proxy needs at least one service to inject"));
    }
    Ok(RunSpec {
        argv,
        credentials,
        fd_mode,
        proxy,
        cwd,
        environ,
    })
}

/// Secret byte strings to scrub from captured output, kept in a secret page. Best effort: a
/// program can always transform a value into something not recognised here. Covered, for
/// each delivered secret:
///
/// - the secret raw, in hex (lower and upper case), and in base64 (standard and URL-safe,
///   padded or not);
/// - base64 of a longer string holding the secret (`user:KEY` in an HTTP Basic header,
///   `KEY\n` from `echo | base64`): the secret sits at one of three byte alignments, and for
///   each the characters fully determined by the secret's bits are a needle (up to two
///   boundary characters on each side, which mix in neighbouring bytes, may remain);
/// - all of these wrapped over lines (`base64` wraps at 76 columns, `openssl base64` at
///   64): needles are matched with `\r` and `\n` left out of the output, and the whole
///   original span, line breaks included, is replaced.
pub struct Redactor {
    page: SecretPage,
    spans: Vec<(usize, usize, ServiceName)>,
}

impl Redactor {
    /// The redactor for the values `pages` holds, one per credential of `spec`.
    fn for_run(spec: &RunSpec, pages: &[SecretPage]) -> std::io::Result<Self> {
        let secrets: Vec<(ServiceName, &[u8])> = spec
            .credentials
            .iter()
            .zip(pages)
            .map(|(b, p)| (b.service.clone(), p.expose_secret()))
            .collect();
        Redactor::new(&secrets)
    }

    fn new(secrets: &[(ServiceName, &[u8])]) -> std::io::Result<Self> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        type Form = zeroize::Zeroizing<Vec<u8>>;
        let mut forms: Vec<(ServiceName, Form)> = Vec::new();
        for (service, s) in secrets {
            if s.is_empty() {
                continue;
            }
            let mut all: Vec<Form> = vec![zeroize::Zeroizing::new(s.to_vec())];
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                all.push(zeroize::Zeroizing::new(engine.encode(s).into_bytes()));
            }
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                for offset in 0..3 {
                    all.push(shifted_base64(engine, s, offset));
                }
            }
            let hex: zeroize::Zeroizing<String> =
                zeroize::Zeroizing::new(s.iter().map(|b| format!("{b:02x}")).collect());
            all.push(zeroize::Zeroizing::new(hex.as_bytes().to_vec()));
            all.push(zeroize::Zeroizing::new(
                hex.to_ascii_uppercase().into_bytes(),
            ));
            for mut f in all {
                // Matched against the output with line breaks left out, so left out here too.
                f.retain(|b| *b != b'\r' && *b != b'\n');
                if !f.is_empty() {
                    forms.push((service.clone(), f));
                }
            }
        }
        // Longest first: a match overlapping an earlier (longer) one is skipped, so a raw
        // secret is not half-replaced inside its own encoding.
        forms.sort_by_key(|(_, f)| std::cmp::Reverse(f.len()));
        forms.dedup_by(|a, b| a.1 == b.1);
        let total = forms.iter().map(|(_, f)| f.len()).sum();
        let mut page = SecretPage::new(total)?;
        let mut spans = Vec::new();
        let mut at = 0;
        for (service, f) in forms {
            page.expose_secret_mut()[at..at + f.len()].copy_from_slice(&f);
            spans.push((at, f.len(), service));
            at += f.len();
        }
        Ok(Redactor { page, spans })
    }

    /// How many bytes past the output cap to keep, so that a needle starting before the cap
    /// is matched whole: three times the longest needle (room for a line break of `\r\n`
    /// after each of its characters).
    fn slack(&self) -> usize {
        3 * self.spans.first().map_or(0, |(_, len, _)| *len)
    }

    /// Replaces every occurrence in `out` with `[REDACTED:<service>]`, then keeps only what
    /// came from the first `cap` bytes of `out` (a match starting before the cap is replaced
    /// whole). Returns how many were replaced.
    fn redact(&self, out: &mut zeroize::Zeroizing<Vec<u8>>, cap: usize) -> usize {
        // The output without line breaks, and where each of its bytes came from.
        let mut view = zeroize::Zeroizing::new(Vec::with_capacity(out.len()));
        let mut origin = Vec::with_capacity(out.len());
        for (i, &b) in out.iter().enumerate() {
            if b != b'\r' && b != b'\n' {
                view.push(b);
                origin.push(i);
            }
        }
        // Matched spans of `out`, by start: [start, end) and the service.
        let mut found: std::collections::BTreeMap<usize, (usize, &ServiceName)> =
            std::collections::BTreeMap::new();
        for (at, len, service) in &self.spans {
            let needle = &self.page.expose_secret()[*at..*at + *len];
            for i in memchr::memmem::find_iter(&view, needle) {
                let (start, end) = (origin[i], origin[i + len - 1] + 1);
                // Found spans never overlap, so only the last one starting before `end`
                // can overlap this one.
                let overlaps = found
                    .range(..end)
                    .next_back()
                    .is_some_and(|(_, (e, _))| *e > start);
                if !overlaps {
                    found.insert(start, (end, service));
                }
            }
        }
        let keep = cap.min(out.len());
        let mut result = zeroize::Zeroizing::new(Vec::with_capacity(keep + 64));
        let mut pos = 0;
        let mut count = 0;
        for (&start, &(end, service)) in found.range(..keep) {
            result.extend_from_slice(&out[pos..start]);
            result.extend_from_slice(format!("[REDACTED:{service}]").as_bytes());
            pos = end;
            count += 1;
        }
        if pos < keep {
            result.extend_from_slice(&out[pos..keep]);
        }
        *out = result;
        count
    }
}

/// The characters of base64(`[0; offset] ++ secret`) that depend on the secret's bits only:
/// character `i` covers input bits `[6i, 6i + 6)`, kept iff `6i >= 8 * offset` and
/// `6i + 6 <= 8 * (offset + len)`. This is what any base64 of a string holding the secret at
/// that alignment (mod 3) contains.
fn shifted_base64(
    engine: &base64::engine::GeneralPurpose,
    secret: &[u8],
    offset: usize,
) -> zeroize::Zeroizing<Vec<u8>> {
    let mut input = zeroize::Zeroizing::new(vec![0u8; offset]);
    input.extend_from_slice(secret);
    let encoded = zeroize::Zeroizing::new(engine.encode(&*input).into_bytes());
    let first = (8 * offset).div_ceil(6);
    let last = 8 * (offset + secret.len()) / 6;
    zeroize::Zeroizing::new(encoded.get(first..last).unwrap_or_default().to_vec())
}

/// Starts `spec` with `stdio` as the child's 0, 1, 2. With `redact`, returns a
/// [`Redactor`] for the delivered secrets (the MCP tool); the pages are wiped either way
/// once the child has exec'd (or handed to it in fd mode).
pub async fn start(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    spec: RunSpec,
    stdio: [OwnedFd; 3],
    redact: bool,
) -> Result<(Running, Option<Redactor>), Refusal> {
    if daemon.is_revoked() {
        return Err(Refusal::new(
            "REVOKED",
            "revoked: this agent's session was revoked; ask your operator to re-pair the daemon",
        ));
    }
    let ids = run_as(conn)?;
    // The program is looked up in the child, as the caller's uid and from its working
    // directory (`launch::candidates`), on the `PATH` the child will have.
    let search_path: Option<String> = spec
        .environ
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .map(str::to_owned);

    let mut spec = spec;
    let mut pages = Vec::new();
    let proxy = if spec.proxy {
        let (proxy, placeholders) = start_proxy(daemon, conn, request, &mut spec).await?;
        pages = placeholders;
        Some(proxy)
    } else {
        None
    };
    fetch_values(daemon, conn, request, &spec, &mut pages).await?;
    let redactor = if redact && proxy.is_none() {
        Some(
            Redactor::for_run(&spec, &pages)
                .map_err(|e| Refusal::new("INTERNAL", e.to_string()))?,
        )
    } else {
        None
    };

    let env = build_env(&spec, &pages).map_err(|e| Refusal::new("INTERNAL", e.to_string()))?;
    let (program, argv, cwd) = exec_args(&spec)?;
    let fd_mode = spec.fd_mode;
    let spawned = tokio::task::spawn_blocking(move || {
        let mut fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
        if fd_mode {
            fds.extend(pages.iter().filter_map(SecretPage::fd));
        }
        let child = launch::spawn(&Launch {
            program: &program,
            search_path: search_path.as_deref().map(str::as_bytes),
            argv: &argv,
            env: &env,
            fds: &fds,
            cwd: cwd.as_deref(),
            ids,
        });
        drop(fds);
        drop(env); // wiped: execve has copied it into the child
        match (&child, fd_mode) {
            (Ok(_), true) => pages.into_iter().for_each(SecretPage::hand_off),
            _ => drop(pages),
        }
        child
    })
    .await
    .map_err(|e| Refusal::new("INTERNAL", e.to_string()))?
    .map_err(|e| {
        // The CLI exits 127 on "command not found", 126 on "cannot start".
        if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) {
            Refusal::new("NOT_FOUND", format!("command not found: {}", spec.argv[0]))
        } else {
            Refusal::new("NOT_FOUND", format!("cannot start {}: {e}", spec.argv[0]))
        }
    })?;

    let pidfd = Arc::new(spawned.pidfd);
    let mode = match (fd_mode, proxy.is_some()) {
        (true, _) => "run-fd",
        (_, true) => "run-proxy",
        _ => "run-env",
    };
    register(daemon, conn, request, spawned.pid, &spec, mode);
    let exited = launch::watch_exit(pidfd.clone()).ok();
    Ok((
        Running {
            pid: spawned.pid,
            pidfd,
            exited,
            proxy,
        },
        redactor,
    ))
}

/// The uid and gid the child runs as: `None` (the daemon's own) for a caller of the
/// daemon's uid, the caller's when the daemon may start commands as others, else refused.
fn run_as(conn: &Conn) -> Result<Option<(u32, u32)>, Refusal> {
    let own_uid = rustix::process::geteuid().as_raw();
    if conn.peer.uid == own_uid {
        Ok(None)
    } else if agentkeys_secmem::harden::can_run_as_others() {
        Ok(Some((conn.peer.uid, conn.gid)))
    } else {
        Err(Refusal::new(
            "DENIED",
            "run is only offered to the daemon's own uid, unless the daemon holds CAP_SETUID, \
             CAP_SETGID and CAP_KILL (root, or its own user given them as ambient \
             capabilities): then it starts the command as the caller's uid",
        ))
    }
}

/// Starts the run's egress proxy: the child gets a placeholder (in a secret page, in
/// place of each value) and the proxy's variables, which replace any of the caller's of
/// the same name.
async fn start_proxy(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    spec: &mut RunSpec,
) -> Result<(crate::proxy::ProxyRun, Vec<SecretPage>), Refusal> {
    let services: Vec<ServiceName> = spec.credentials.iter().map(|b| b.service.clone()).collect();
    let proxy = crate::proxy::start(daemon, conn, request, &services).await?;
    let mut pages = Vec::with_capacity(proxy.placeholders.len());
    for placeholder in &proxy.placeholders {
        pages.push(
            SecretPage::from_slice(placeholder.as_bytes())
                .map_err(|e| Refusal::new("INTERNAL", e.to_string()))?,
        );
    }
    // The proxy's variables replace any of the caller's of the same name.
    let names: Vec<&str> = proxy
        .env
        .iter()
        .filter_map(|e| e.split('=').next())
        .collect();
    spec.environ
        .retain(|e| !names.contains(&e.split('=').next().unwrap_or("")));
    spec.environ.extend(proxy.env.iter().cloned());
    Ok((proxy, pages))
}

/// Fetches the value of each credential the proxy does not stand in for, into `pages`:
/// refused when fd mode has no fd-capable page, or a value for the environment holds a
/// NUL byte.
async fn fetch_values(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    spec: &RunSpec,
    pages: &mut Vec<SecretPage>,
) -> Result<(), Refusal> {
    for b in spec.credentials.iter().skip(pages.len()) {
        let page = daemon.fetch(&b.service, &conn.peer, request).await?;
        if spec.fd_mode && page.fd().is_none() {
            return Err(Refusal::new(
                "INTERNAL",
                "no fd-capable secret page on this machine; run without --fd",
            ));
        }
        if !spec.fd_mode && page.expose_secret().contains(&0) {
            return Err(Refusal::new(
                "BAD_REQUEST",
                format!(
                    "'{}' holds binary data, which cannot travel in an environment variable; \
                     use --fd",
                    b.service
                ),
            ));
        }
        pages.push(page);
    }
    Ok(())
}

/// The program, its arguments and the working directory as C strings.
fn exec_args(spec: &RunSpec) -> Result<(CString, Vec<CString>, Option<CString>), Refusal> {
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| Refusal::new("BAD_REQUEST", "an argument contains a NUL byte"))?;
    let program = argv[0].clone();
    let cwd = spec
        .cwd
        .as_ref()
        .map(|c| CString::new(c.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| Refusal::new("BAD_REQUEST", "cwd contains a NUL byte"))?;
    Ok((program, argv, cwd))
}

/// Registers the child's process group (revocation and the caller's going away reach it)
/// and audits a `deliver` per credential, in `mode`, or a `run` without any.
fn register(daemon: &Daemon, conn: &Conn, request: &str, pid: u32, spec: &RunSpec, mode: &str) {
    let services: Vec<ServiceName> = spec.credentials.iter().map(|b| b.service.clone()).collect();
    daemon.children.insert(
        pid,
        ChildEntry {
            services: services.clone(),
            conn: conn.id,
        },
    );
    for service in &services {
        daemon.audit(Event {
            event: "deliver".into(),
            agent: Some(daemon.session().wallet.to_string()),
            service: Some(service.to_string()),
            mode: Some(mode.into()),
            peer: Some(conn.peer.clone()),
            request: Some(request.to_owned()),
            detail: Some(format!("child pid {pid}")),
        });
    }
    if services.is_empty() {
        daemon.audit(Event {
            event: "run".into(),
            agent: Some(daemon.session().wallet.to_string()),
            peer: Some(conn.peer.clone()),
            request: Some(request.to_owned()),
            detail: Some(format!("child pid {pid} without credentials")),
            ..Default::default()
        });
    }
}

/// The environment block in a secret page: the base entries whose names are not bound,
/// then one entry per binding (the value, or `<fd>:<length>` in fd mode).
fn build_env(spec: &RunSpec, pages: &[SecretPage]) -> std::io::Result<SecretPage> {
    let bound = |entry: &str| {
        let name = entry.split('=').next().unwrap_or("");
        spec.credentials.iter().any(|b| b.name == name)
    };
    let base: Vec<&str> = spec
        .environ
        .iter()
        .map(String::as_str)
        .filter(|e| e.contains('=') && !e.contains('\0') && !bound(e))
        .collect();
    let fd_values: Vec<String> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}:{}", i + 3, p.len()))
        .collect();
    let mut total: usize = base.iter().map(|e| e.len() + 1).sum();
    for (i, b) in spec.credentials.iter().enumerate() {
        let value_len = if spec.fd_mode {
            fd_values[i].len()
        } else {
            pages[i].len()
        };
        total += b.name.len() + 1 + value_len + 1;
    }
    // `memfd_secret`, else a sealed memfd (`launch::spawn` refuses the last fallback,
    // locked anonymous memory). A one-page block comes from the pool of wiped
    // `memfd_secret` pages instead of costing a new one, and the TLB shootdown of its
    // unmapping, per run.
    let mut page = SecretPage::new(total)?;
    let out = page.expose_secret_mut();
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    for e in base {
        put(e.as_bytes());
        put(b"\0");
    }
    for (i, b) in spec.credentials.iter().enumerate() {
        put(b.name.as_bytes());
        put(b"=");
        if spec.fd_mode {
            put(fd_values[i].as_bytes());
        } else {
            put(pages[i].expose_secret());
        }
        put(b"\0");
    }
    Ok(page)
}

/// Waits for the child to end, reaps it and audits `exit`. Its process group is
/// unregistered unless something the child started is still in it: revocation must still
/// reach that (the housekeeping tick drops the entry once the group is empty).
pub async fn wait(daemon: &Daemon, running: &Running) -> Exit {
    let exit = wait_pidfd(running).await;
    // The proxy's connections end before `exit` is audited: once the trail says the run is
    // over, no buffer of it holds a key any more.
    if let Some(proxy) = &running.proxy {
        proxy.shutdown().await;
    }
    daemon.children.remove_if_empty(running.pid);
    daemon.note(
        "exit",
        None,
        match exit {
            Exit::Code(c) => format!("child pid {} exited with {c}", running.pid),
            Exit::Signal(s) => format!("child pid {} killed by signal {s}", running.pid),
        },
    );
    exit
}

/// Waits on the pidfd's readiness in the runtime (no thread parked per child), then reaps
/// with `waitid(P_PIDFD, WEXITED | WNOHANG)`. Cancel-safe: dropping the future before the
/// child exits reaps nothing, and the next wait still finds the child.
async fn wait_pidfd(running: &Running) -> Exit {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    loop {
        let guard = match &running.exited {
            Some(exited) => match exited.readable().await {
                Ok(guard) => Some(guard),
                Err(_) => return Exit::Code(255),
            },
            None => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        };
        match waitid(
            WaitId::PidFd(running.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => {
                if let Some(sig) = status.terminating_signal() {
                    return Exit::Signal(sig);
                }
                return Exit::Code(status.exit_status().unwrap_or(0));
            }
            // Not exited yet: forget this readiness and wait for the next.
            Ok(None) | Err(rustix::io::Errno::INTR) => {
                if let Some(mut guard) = guard {
                    guard.clear_ready();
                }
            }
            Err(_) => return Exit::Code(255),
        }
    }
}

/// `agentkeys/run`: start, answer `{pid}`, and notify `agentkeys/exit` when the child ends.
pub async fn serve_run(
    daemon: Arc<Daemon>,
    conn: Arc<Conn>,
    writer: Writer,
    id: Option<Value>,
    params: Value,
    fds: Vec<OwnedFd>,
) {
    let request = id.as_ref().map(ToString::to_string).unwrap_or_default();
    let fail = |msg: &str, code: &str| {
        let mut body = error_body(id.clone(), -32000, msg);
        body["error"]["data"] = json!({"code": code});
        body
    };
    let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
        let _ = write_line(
            &writer,
            &fail(
                "agentkeys/run needs exactly three descriptors (stdin, stdout, stderr)",
                "BAD_REQUEST",
            ),
        )
        .await;
        return;
    };
    let started = match parse_spec(&params) {
        Ok(spec) => start(&daemon, &conn, &request, spec, stdio, false).await,
        Err(r) => Err(r),
    };
    let running = match started {
        Ok((running, _)) => running,
        Err(r) => {
            let _ = write_line(&writer, &fail(&r.message, r.code)).await;
            return;
        }
    };
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"pid": running.pid}});
    let _ = write_line(&writer, &answer).await;
    let exit = wait(&daemon, &running).await;
    let mut params = exit.to_json();
    params["pid"] = json!(running.pid);
    let note = json!({"jsonrpc": "2.0", "method": "agentkeys/exit", "params": params});
    let _ = write_line(&writer, &note).await;
}

/// How long the output of a finished command is still read while something it started
/// holds its stdout or stderr open.
const DRAIN: Duration = Duration::from_secs(1);

/// Runs `spec` for the MCP `run` tool: stdin from `/dev/null`, stdout and stderr captured
/// (each capped), the child's process group stopped at the timeout, every delivered secret
/// redacted.
///
/// Output capture is bounded too: once the child is gone (exited, or stopped at the
/// timeout), the pipes are read for at most one second (`DRAIN`) more, then capture stops whoever
/// still holds them; and whatever is left in the child's process group (it holds the
/// credentials) gets SIGTERM, then SIGKILL after `kill_grace`. The result says so
/// (`capture_stopped`, `leftovers_stopped`).
pub async fn run_captured(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    request: &str,
    spec: RunSpec,
    timeout: Duration,
) -> Result<Value, Refusal> {
    let io_err = |e: std::io::Error| Refusal::new("INTERNAL", e.to_string());
    let devnull: OwnedFd = std::fs::File::open("/dev/null").map_err(io_err)?.into();
    let (out_r, out_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| io_err(e.into()))?;
    let (err_r, err_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| io_err(e.into()))?;
    let (running, redactor) =
        start(daemon, conn, request, spec, [devnull, out_w, err_w], true).await?;
    let cap = daemon.config.run_max_output;
    // Redaction comes before truncation: keep enough past the cap to see a secret that
    // straddles it whole.
    let keep = cap + redactor.as_ref().map_or(0, Redactor::slack);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stdout = tokio::spawn(capture(out_r, keep, stopped.clone()));
    let stderr = tokio::spawn(capture(err_r, keep, stopped));
    let mut timed_out = false;
    let exit = match tokio::time::timeout(timeout, wait(daemon, &running)).await {
        Ok(exit) => exit,
        Err(_) => {
            timed_out = true;
            stop_group(daemon, &running).await
        }
    };
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(DRAIN).await;
        let _ = stop.send(true);
    });
    let out = stdout.await.unwrap_or_default();
    let err = stderr.await.unwrap_or_default();
    stopper.abort();
    let leftovers_stopped = stop_leftovers(daemon, running.pid).await;
    let (mut out_kept, mut err_kept) = (out.kept, err.kept);
    let redacted = match &redactor {
        Some(r) => r.redact(&mut out_kept, cap) + r.redact(&mut err_kept, cap),
        None => {
            out_kept.truncate(cap);
            err_kept.truncate(cap);
            0
        }
    };
    let mut result = exit.to_json();
    result["stdout"] = json!(String::from_utf8_lossy(&out_kept));
    result["stderr"] = json!(String::from_utf8_lossy(&err_kept));
    result["truncated"] = json!(out.total > cap || err.total > cap);
    result["redacted"] = json!(redacted);
    result["timed_out"] = json!(timed_out);
    result["capture_stopped"] = json!(out.stopped || err.stopped);
    result["leftovers_stopped"] = json!(leftovers_stopped);
    Ok(result)
}

/// SIGTERM to the child's whole process group, SIGKILL to what is left of it after
/// `kill_grace`; returns once the child is reaped and the group empty (or killed).
async fn stop_group(daemon: &Daemon, running: &Running) -> Exit {
    let _ = signal_group(running.pid, Signal::TERM);
    let grace_end = tokio::time::Instant::now() + daemon.config.kill_grace;
    let exit = match tokio::time::timeout_at(grace_end, wait(daemon, running)).await {
        Ok(exit) => exit,
        Err(_) => {
            let _ = signal_group(running.pid, Signal::KILL);
            wait(daemon, running).await
        }
    };
    // What the child left in its group gets the rest of the grace period, then SIGKILL.
    if !wait_group_empty(running.pid, grace_end).await {
        let _ = signal_group(running.pid, Signal::KILL);
    }
    exit
}

/// SIGTERM to what is left in a reaped child's process group, SIGKILL after `kill_grace`
/// to what survives it. Whether anything was left.
async fn stop_leftovers(daemon: &Daemon, pgid: u32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    let _ = signal_group(pgid, Signal::TERM);
    let grace_end = tokio::time::Instant::now() + daemon.config.kill_grace;
    if !wait_group_empty(pgid, grace_end).await {
        let _ = signal_group(pgid, Signal::KILL);
    }
    true
}

/// What [`capture`] read from one pipe.
#[derive(Default)]
struct Captured {
    /// The first bytes, up to the limit.
    kept: zeroize::Zeroizing<Vec<u8>>,
    /// How many bytes arrived in all.
    total: usize,
    /// Capture was stopped while the pipe was still open.
    stopped: bool,
}

/// Reads a pipe until its end or until `stop` turns true, keeping at most `keep` bytes
/// (the rest is read and discarded, so the child never blocks on a full pipe). The pipe is
/// read through the runtime's reactor: no thread waits on it.
async fn capture(
    fd: OwnedFd,
    keep: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Captured {
    use tokio::io::AsyncReadExt as _;
    let mut got = Captured {
        kept: zeroize::Zeroizing::new(Vec::with_capacity(keep.min(64 * 1024))),
        ..Captured::default()
    };
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return got;
    };
    let mut chunk = zeroize::Zeroizing::new(vec![0u8; 8192]);
    loop {
        tokio::select! {
            read = pipe.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = keep.saturating_sub(got.kept.len());
                    got.kept.extend_from_slice(&chunk[..n.min(room)]);
                    got.total += n;
                }
            },
            _ = stop.wait_for(|s| *s) => {
                got.stopped = true;
                break;
            }
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_validated() {
        assert!(parse_spec(&json!({"argv": []})).is_err());
        assert!(parse_spec(&json!({"argv": ["x"], "services": ["Bad Name"]})).is_err());
        assert!(parse_spec(&json!({"argv": ["x"], "env": {"1X": "openai"}})).is_err());
        assert!(
            parse_spec(&json!({"argv": ["x"], "services": ["openai"],
                "env": {"OPENAI_API_KEY": "openai"}}))
            .is_err()
        );
        let spec = parse_spec(&json!({"argv": ["x"], "services": ["openai"],
            "env": {"GH": "github"}, "fd_mode": false}))
        .unwrap();
        let names: Vec<_> = spec.credentials.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["OPENAI_API_KEY", "GH"]);
    }

    fn openai() -> ServiceName {
        ServiceName::parse("openai").unwrap()
    }

    fn bytes(s: &str) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(s.as_bytes().to_vec())
    }

    #[test]
    fn every_encoding_of_a_secret_is_redacted() {
        let secret = b"sk-redact-me-123";
        let r = Redactor::new(&[(openai(), secret.as_slice())]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let hex: String = secret.iter().map(|b| format!("{b:02X}")).collect();
        let mut out = bytes(&format!(
            "a {} b {b64} c {hex} d",
            String::from_utf8_lossy(secret)
        ));
        assert_eq!(r.redact(&mut out, 1000), 3);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "a [REDACTED:openai] b [REDACTED:openai] c [REDACTED:openai] d"
        );
    }

    #[test]
    fn a_secret_straddling_the_cap_is_redacted_before_the_output_is_cut() {
        let secret = "sk-straddle-0123456789";
        let r = Redactor::new(&[(openai(), secret.as_bytes())]).unwrap();
        let cap = 20;
        let whole = format!("{}{secret} and more", "x".repeat(15));
        // What capture keeps: the cap plus the redactor's slack.
        let mut out = bytes(&whole[..whole.len().min(cap + r.slack())]);
        assert_eq!(r.redact(&mut out, cap), 1);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{}[REDACTED:openai]", "x".repeat(15))
        );
        // Past the cap nothing is kept, secret or not.
        let mut out = bytes(&format!("{}{secret}", "x".repeat(25)));
        assert_eq!(r.redact(&mut out, cap), 0);
        assert_eq!(String::from_utf8_lossy(&out), "x".repeat(20));
    }

    /// `text` broken into lines of `width` characters, each ended by `eol`.
    fn wrapped(text: &str, width: usize, eol: &str) -> String {
        text.as_bytes()
            .chunks(width)
            .map(|line| format!("{}{eol}", String::from_utf8_lossy(line)))
            .collect()
    }

    #[test]
    fn line_wrapped_base64_is_redacted_whole() {
        let secret = "sk-wrapped-".repeat(8); // 88 bytes: 120 base64 characters
        let r = Redactor::new(&[(openai(), secret.as_bytes())]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&secret);
        for (width, eol) in [(76, "\n"), (64, "\n"), (64, "\r\n")] {
            let mut out = bytes(&format!("before\n{}after\n", wrapped(&b64, width, eol)));
            assert_eq!(r.redact(&mut out, 1000), 1, "wrapped at {width}");
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("before\n[REDACTED:openai]{eol}after\n"),
                "wrapped at {width}"
            );
        }
    }

    /// Checks that base64 of `prefix ++ secret` (one engine) loses everything the secret
    /// determines: what is left is the prefix's own characters, the mark, and at most the
    /// one partial character and the padding.
    fn assert_redacted_after_prefix(
        r: &Redactor,
        engine: &base64::engine::GeneralPurpose,
        prefix: &str,
        secret: &str,
    ) {
        let encoded = engine.encode(format!("{prefix}{secret}"));
        let mut out = bytes(&format!("Authorization: Basic {encoded}\n"));
        assert_eq!(r.redact(&mut out, 1000), 1, "prefix {prefix:?}: {encoded}");
        let text = String::from_utf8_lossy(&out).into_owned();
        let rest = text
            .strip_prefix("Authorization: Basic ")
            .and_then(|t| t.strip_suffix('\n'))
            .unwrap();
        let (head, tail) = rest.split_once("[REDACTED:openai]").unwrap();
        let prefix_chars = (8 * prefix.len()).div_ceil(6);
        assert_eq!(head, &encoded[..prefix_chars], "prefix {prefix:?}: {text}");
        assert!(tail.len() <= 3, "prefix {prefix:?}: {text}");
    }

    #[test]
    fn base64_of_a_longer_string_holding_the_secret_is_redacted_at_every_alignment() {
        let secret = "sk-basic-auth-0123456789abcdef";
        let r = Redactor::new(&[(openai(), secret.as_bytes())]).unwrap();
        let standard = base64::engine::general_purpose::STANDARD;
        for n in 0..=5 {
            // `curl -u user:KEY` sends base64("user:KEY"): the prefix is "user:" (5).
            assert_redacted_after_prefix(&r, &standard, &"user:"[..n], secret);
        }
        // `echo "$KEY" | base64`: the secret (30 bytes, 40 characters) and a newline.
        let encoded = standard.encode(format!("{secret}\n"));
        let mut out = bytes(&encoded);
        assert_eq!(r.redact(&mut out, 1000), 1);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("[REDACTED:openai]{}", &encoded[40..])
        );
    }

    #[test]
    fn url_safe_base64_is_redacted_at_every_alignment() {
        // '>' and '?' encode to '+' and '/' in the standard alphabet, '-' and '_' here.
        let secret = "sk-url-safe->>>???~~~-0123";
        let r = Redactor::new(&[(openai(), secret.as_bytes())]).unwrap();
        let url = base64::engine::general_purpose::URL_SAFE;
        for n in 0..=5 {
            let prefix = &"user:"[..n];
            let encoded = url.encode(format!("{prefix}{secret}"));
            assert!(encoded.contains(['-', '_']), "{encoded}");
            assert_redacted_after_prefix(&r, &url, prefix, secret);
        }
    }

    #[test]
    fn shifted_forms_keep_only_the_characters_the_secret_determines() {
        let standard = base64::engine::general_purpose::STANDARD_NO_PAD;
        // "abc" at offset 0 is the whole "YWJj". At offset 1 it holds bits 8..32 of
        // base64("\0abc") = "AGFiYw": characters 2, 3 and 4 lie inside them. At offset 2,
        // bits 16..40 of "AABhYmM": characters 3, 4 and 5.
        assert_eq!(&*shifted_base64(&standard, b"abc", 0), b"YWJj");
        assert_eq!(&*shifted_base64(&standard, b"abc", 1), b"FiY");
        assert_eq!(&*shifted_base64(&standard, b"abc", 2), b"hYm");
    }
}
