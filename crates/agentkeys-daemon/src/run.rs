//! The subcommands, wired: `serve` (bind, pair or load, serve until SIGTERM, wipe), `status`,
//! `audit`, `mcp`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::HttpBackend;
use agentkeys_core::session_store::StoreChoice;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cli::{Args, Command, ServeArgs};
use agentkeys_secmem::harden::HardeningReport;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::pairing::{self, SessionPlan, WaitingState};
use crate::trail::{self, Event, Trail};
use crate::{bridge, listener, normalize};

/// `$AGENTKEYS_HOME`, else `~/.agentkeys`.
pub fn home() -> Result<PathBuf, DaemonError> {
    agentkeys_core::paths::home()
        .ok_or_else(|| DaemonError::usage("neither AGENTKEYS_HOME nor HOME is set"))
}

/// The daemon's audit trail file.
pub fn trail_path(home: &Path) -> PathBuf {
    home.join("daemon-audit.jsonl")
}

/// Runs one command line; `report` is the hardening applied to this process, and `config`
/// the [`serve_config`] `main` already read for `serve` (read here when `None`).
pub async fn run(
    args: Args,
    report: HardeningReport,
    config: Option<Config>,
) -> Result<(), DaemonError> {
    let home = home()?;
    let Some(command) = args.command else {
        return Err(DaemonError::usage("no command given")
            .hint("run 'agentkeys-daemon serve --server URL', or see 'agentkeys-daemon --help'"));
    };
    match command {
        Command::Serve(a) => {
            let config = match config {
                Some(c) => c,
                None => serve_config(&a)?,
            };
            serve(&home, *a, config, report).await
        }
        Command::Mcp { socket } => {
            bridge::run(&socket.unwrap_or_else(|| listener::default_socket(&home))).await
        }
        Command::Status { socket, json } => {
            status(
                &socket.unwrap_or_else(|| listener::default_socket(&home)),
                json,
            )
            .await
        }
        Command::Audit {
            verify,
            json,
            socket,
        } => {
            let socket = socket.unwrap_or_else(|| listener::default_socket(&home));
            audit(&home, &socket, verify, json).await
        }
    }
}

/// SIGTERM and SIGINT, registered once at start: a signal that arrives between two
/// phases is kept by the stream until the next phase polls it, never lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// `serve`'s effective configuration: the file, then the flags on top (`--cache`,
/// `--idle-ttl`, `--cache-page`, `--allow-uid` added to the file's `allow_uids`).
pub fn serve_config(args: &ServeArgs) -> Result<Config, DaemonError> {
    let mut config = Config::load(
        args.config.as_deref(),
        crate::config::CacheFlags {
            cache: &args.cache,
            idle_ttl: args.idle_ttl.as_deref(),
            max_age: args.cache_max_age.as_deref(),
        },
    )?;
    config.cache_page = match args.cache_page.as_deref() {
        Some("memfd_secret") => Some(agentkeys_secmem::SecretPageKind::MemfdSecret),
        Some("sealed_memfd") => Some(agentkeys_secmem::SecretPageKind::SealedMemfd),
        Some("locked_anon") => Some(agentkeys_secmem::SecretPageKind::LockedAnon),
        _ => None,
    };
    config.allow_uids.extend(args.allow_uid.iter().copied());
    if args.socket_group.is_some() {
        config.socket_group.clone_from(&args.socket_group);
    }
    // Agents of the daemon's own uid could open a stored session and act as this agent
    // without any approval (review F1): such a daemon keeps it in memory unless told to
    // store it.
    config.ephemeral_by_default =
        !args.ephemeral && !args.store_session && config.allow_uids.is_empty();
    config.ephemeral = args.ephemeral || config.ephemeral_by_default;
    config.proxy = crate::config::ProxyConfig::from_flags(
        &args.proxy_resolve,
        args.proxy_upstream_ca.as_deref(),
        args.egress.as_deref(),
    )?;
    Ok(config)
}

async fn serve(
    home: &Path,
    args: ServeArgs,
    config: Config,
    report: HardeningReport,
) -> Result<(), DaemonError> {
    agentkeys_core::session_store::create_private_dir(home)?;
    if let Some(ca) = &args.ca {
        agentkeys_core::client::trust_ca(ca);
    }
    let choice_raw = std::env::var("AGENTKEYS_SESSION_STORE").unwrap_or_default();
    let choice = StoreChoice::parse(&choice_raw).ok_or_else(|| {
        DaemonError::usage(format!(
            "AGENTKEYS_SESSION_STORE={choice_raw} is not one of auto, keyring, file"
        ))
    })?;
    let allow_uid = config.allow_uids.clone();
    let mut signals = Signals::new()?;
    let socket = args
        .socket
        .or_else(|| config.socket.clone())
        .unwrap_or_else(|| listener::default_socket(home));
    let server = normalize(&args.server);
    let shared = !allow_uid.is_empty();
    let group = match &config.socket_group {
        Some(g) => Some(
            listener::group_id(g)
                .map_err(|e| DaemonError::usage(format!("--socket-group {g}: {e}")))?,
        ),
        None => None,
    };
    let listener = listener::bind(&socket, shared, group).await.map_err(|e| {
        DaemonError::new(
            "SOCKET",
            1,
            format!("cannot serve on {}: {e}", socket.display()),
        )
    })?;
    let trail = Trail::open(&trail_path(home))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let plan = SessionPlan {
        home: home.to_owned(),
        server,
        session_id: args.session_id,
        recover: args.recover,
        parent: args.parent,
        server_key: args.server_key,
        choice,
        description: format!("agentkeys-daemon on {}", host.trim()),
        ephemeral: config.ephemeral,
    };
    warn_of_the_uid_and_the_session_at_rest(&config, &allow_uid, home);
    let waiting = WaitingState::default();
    let stored = {
        let responder = answer_while_waiting(&listener, waiting.clone(), &allow_uid);
        tokio::select! {
            r = pairing::obtain(&plan, &waiting) => r?,
            () = responder => unreachable!("the pairing responder loops until it is dropped"),
            () = signals.recv() => {
                let _ = std::fs::remove_file(&socket);
                return Ok(());
            }
        }
    };
    let backend = HttpBackend::for_session(&stored)?;
    let daemon = Arc::new(Daemon::new(
        stored,
        backend,
        trail,
        socket.display().to_string(),
        config,
        report,
        args.allow_debugger,
    ));
    // Persistent egress proxies (`agentkeys proxy-env`) stop when the session is revoked,
    // registered before anything can revoke it.
    let proxies = crate::proxy::persistent::Persistent::serving(&daemon);
    daemon.take_first_state().await;
    daemon.audit(Event {
        event: "start".into(),
        agent: Some(daemon.session().wallet.to_string()),
        detail: Some(format!("pid {}", std::process::id())),
        ..Default::default()
    });
    eprintln!(
        "agentkeys-daemon: serving agent {} (scope {}) on {}",
        daemon.session().wallet,
        daemon.session().scope.describe(),
        socket.display()
    );
    let housekeeping = tokio::spawn(housekeeping(daemon.clone()));
    // Changes the master makes reach the daemon as they happen (the periodic check in
    // `housekeeping` is the fallback).
    let state_watch = tokio::spawn(daemon.clone().watch_state());
    listener::serve(
        &listener,
        daemon.clone(),
        proxies,
        allow_uid,
        signals.recv(),
    )
    .await;
    housekeeping.abort();
    state_watch.abort();
    daemon.audit(Event {
        event: "stop".into(),
        agent: Some(daemon.session().wallet.to_string()),
        ..Default::default()
    });
    let _ = daemon.trail.sync();
    // The last anchor: the trail's final head goes to the server too (bounded, so an
    // unreachable server cannot hold the stop).
    let _ = tokio::time::timeout(Duration::from_secs(5), daemon.anchor()).await;
    let _ = std::fs::remove_file(&socket);
    // Dropping the daemon wipes the token (SecretString); pages were dropped on delivery.
    drop(daemon);
    eprintln!("agentkeys-daemon: stopped");
    Ok(())
}

/// What start-up warns of: agents sharing the daemon's uid, and a stored session this daemon
/// does not use but any process of its uid could open.
fn warn_of_the_uid_and_the_session_at_rest(config: &Config, allow_uid: &[u32], home: &Path) {
    if allow_uid.is_empty() {
        let uid = rustix::process::geteuid().as_raw();
        let at_rest = if config.ephemeral_by_default {
            "so it holds the session in memory only (a restart needs a new approval; \
             --store-session keeps it at rest, where any process of that uid could open it), but \
             an agent of that uid still runs beside the daemon's own processes"
        } else if config.ephemeral {
            "it holds the session in memory only (--ephemeral), but an agent of that uid still \
             runs beside the daemon's own processes"
        } else {
            "and any process of that uid can open the session this daemon stores in its home and \
             act as this agent"
        };
        eprintln!(
            "warning: only uid {uid} (the daemon's own) may connect, so agents run as the \
             daemon's uid, {at_rest}. Run the daemon under a uid of its own and let the agent's \
             uid in with --allow-uid (docs/daemon.md, \"Deployment\")."
        );
    }
    if config.ephemeral {
        let left = pairing::stored_wallets(home);
        if !left.is_empty() {
            eprintln!(
                "warning: {} holds a stored daemon session ({}) that this daemon does not use; \
                 any process of this uid can open it. Remove daemon-<wallet>.* from it, or serve \
                 with --store-session to use it.",
                home.display(),
                left.join(", ")
            );
        }
    }
}

/// Evicts idle cache entries on time, drops the entries of `run` process groups that
/// emptied, checks the session every `revocation_check` and anchors the trail's head every
/// `anchor_every`.
async fn housekeeping(daemon: Arc<Daemon>) {
    let mut next_check = tokio::time::Instant::now() + daemon.config.revocation_check;
    let mut next_anchor = tokio::time::Instant::now() + daemon.config.anchor_every;
    loop {
        let until_evict = daemon
            .evict_idle()
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_secs(1));
        let wake = (tokio::time::Instant::now() + until_evict)
            .min(next_check)
            .min(next_anchor);
        tokio::time::sleep_until(wake).await;
        daemon.check_debugger();
        daemon.children.prune();
        if tokio::time::Instant::now() >= next_check {
            daemon.check_session().await;
            next_check = tokio::time::Instant::now() + daemon.config.revocation_check;
        }
        if tokio::time::Instant::now() >= next_anchor {
            daemon.anchor().await;
            next_anchor = tokio::time::Instant::now() + daemon.config.anchor_every;
        }
    }
}

/// While waiting for an approval, answers `agentkeys/status` with the code to approve and
/// every other request with an error telling the agent what its human must do.
async fn answer_while_waiting(listener: &UnixListener, waiting: WaitingState, allowed: &[u32]) {
    let own = rustix::process::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        match listener::peer_of(&stream) {
            Ok(p) if p.uid == own || allowed.contains(&p.uid) => {}
            _ => continue,
        }
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(id) = v.get("id").cloned() else {
                    continue;
                };
                let w = waiting.lock().ok().and_then(|w| w.clone());
                let reply = match v.get("method").and_then(Value::as_str) {
                    Some("agentkeys/status") => json!({"jsonrpc": "2.0", "id": id,
                        "result": {"state": "waiting_for_approval", "waiting": w}}),
                    _ => {
                        let msg = match &w {
                            Some(w) => format!(
                                "this agentkeys daemon is not paired yet: ask your operator to run \
                                 'agentkeys approve {}' (OTP {})",
                                w.pair_code, w.otp
                            ),
                            None => "this agentkeys daemon is not paired yet".to_owned(),
                        };
                        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32002, "message": msg}})
                    }
                };
                let mut bytes = reply.to_string().into_bytes();
                bytes.push(b'\n');
                if write.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn status(socket: &Path, as_json: bool) -> Result<(), DaemonError> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        DaemonError::new(
            "UNREACHABLE",
            6,
            format!("no daemon answers on {}: {e}", socket.display()),
        )
        .hint("start it with 'agentkeys-daemon serve --server URL', or set AGENTKEYS_SOCKET")
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"agentkeys/status\"}\n")
        .await?;
    let mut lines = BufReader::new(read).lines();
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| DaemonError::new("PROTOCOL", 1, "the daemon closed the connection"))?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| DaemonError::new("PROTOCOL", 1, e.to_string()))?;
    let result = v
        .get("result")
        .cloned()
        .ok_or_else(|| DaemonError::new("PROTOCOL", 1, format!("unexpected answer: {v}")))?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
        return Ok(());
    }
    if let Some(w) = result.get("waiting").filter(|w| !w.is_null()) {
        println!("state:      waiting for approval");
        println!(
            "approve:    agentkeys approve {} (OTP {})",
            w["pair_code"].as_str().unwrap_or("?"),
            w["otp"].as_str().unwrap_or("?")
        );
        return Ok(());
    }
    let c = &result["counters"];
    let scope: agentkeys_types::Scope = serde_json::from_value(result["scope"].clone())
        .unwrap_or_else(|_| agentkeys_types::Scope::none());
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let reachable = if result["server_reachable"] == json!(true) {
        "reachable"
    } else {
        "UNREACHABLE"
    };
    for (k, val) in [
        ("wallet", s(&result["wallet"])),
        ("scope", scope.describe()),
        ("server", format!("{} ({reachable})", s(&result["server"]))),
        ("socket", s(&result["socket"])),
        ("pid", s(&result["pid"])),
        ("uptime", format!("{} s", result["uptime_secs"])),
        (
            "counters",
            format!(
                "{} connections, {} refused, {} delivered, {} denied",
                c["connections"], c["refused_connections"], c["delivered"], c["denied"]
            ),
        ),
        ("cache", cache_line(&result["cache"])),
        ("hardening", hardening_line(&result["hardening"])),
        (
            "same_uid",
            match result["same_uid"]["status"].as_str() {
                Some("degraded") => format!(
                    "DEGRADED: {} connection(s) of the daemon's own uid; {}",
                    result["same_uid"]["connections"],
                    s(&result["same_uid"]["detail"])
                ),
                _ => "ok (no agent runs as the daemon's uid)".to_owned(),
            },
        ),
        ("at rest", s(&result["session_at_rest"])),
        (
            "session",
            if result["revoked"] == json!(true) {
                "REVOKED (re-pair this daemon)".to_owned()
            } else {
                format!("valid, {} run children", result["run_children"])
            },
        ),
        ("trail", s(&result["audit_trail"])),
    ] {
        println!("{:<11} {val}", format!("{k}:"));
    }
    Ok(())
}

/// `8 ok; degraded: ptrace_scope` (details: `agentkeys-daemon --check`).
fn hardening_line(items: &Value) -> String {
    let items = items.as_array().map(Vec::as_slice).unwrap_or_default();
    let ok = items.iter().filter(|i| i["status"] == "ok").count();
    let others: Vec<String> = items
        .iter()
        .filter(|i| i["status"] != "ok")
        .map(|i| {
            format!(
                "{} {}",
                i["status"].as_str().unwrap_or("?"),
                i["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if others.is_empty() {
        format!("{ok} ok")
    } else {
        format!("{ok} ok; {}", others.join(", "))
    }
}

/// `openai (idle 3 s of 60 s)`, or `none (nothing is cached unless configured)`.
fn cache_line(cache: &Value) -> String {
    let items: Vec<String> = cache
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} (idle {} s of {} s)",
                c["service"].as_str().unwrap_or("?"),
                c["idle_ms"].as_u64().unwrap_or(0) / 1000,
                c["ttl_ms"].as_u64().unwrap_or(0) / 1000
            )
        })
        .collect();
    if items.is_empty() {
        "none (nothing is cached unless configured)".to_owned()
    } else {
        items.join(", ")
    }
}

/// The newest anchor of this home's trail on the server: asked of the running daemon if
/// one answers on `socket`, else through each session stored in `home`. `None` when
/// neither can ask.
async fn find_anchor(home: &Path, socket: &Path) -> Option<(u64, String)> {
    if let Ok(stream) = UnixStream::connect(socket).await {
        let (read, mut write) = stream.into_split();
        let ask = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"agentkeys/audit\",\"params\":{\"anchor\":true,\"limit\":0}}\n";
        if write.write_all(ask).await.is_ok()
            && let Ok(Some(line)) = BufReader::new(read).lines().next_line().await
            && let Ok(v) = serde_json::from_str::<Value>(&line)
            && let Some(anchor) = v["result"].get("anchor")
        {
            return Some((anchor["seq"].as_u64()?, anchor["hash"].as_str()?.to_owned()));
        }
    }
    let mut newest: Option<(u64, String)> = None;
    for wallet in pairing::stored_wallets(home) {
        let Ok((stored, _)) = pairing::slot(home, &wallet).load() else {
            continue;
        };
        let Ok(backend) = HttpBackend::for_session(&stored) else {
            continue;
        };
        if let Ok(Some(found)) = crate::daemon::latest_anchor(&backend).await
            && newest.as_ref().is_none_or(|(seq, _)| found.0 > *seq)
        {
            newest = Some(found);
        }
    }
    newest
}

async fn audit(home: &Path, socket: &Path, verify: bool, as_json: bool) -> Result<(), DaemonError> {
    let path = &trail_path(home);
    if verify {
        // The anchor first: asking the running daemon appends to the trail, and the chain
        // checked below then covers the anchored line.
        let anchor = find_anchor(home, socket).await;
        let v = trail::verify(path).map_err(|e| {
            DaemonError::new("IO", 1, format!("cannot read {}: {e}", path.display()))
        })?;
        let broken = |why: String| {
            DaemonError::new("AUDIT_BROKEN", 8, why)
                .hint("the trail was edited, truncated or spliced outside the daemon")
        };
        if !v.ok {
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            return Err(broken(format!(
                "the daemon audit trail is broken at line {} ({}); {} lines check out",
                v.first_broken_line.unwrap_or(0),
                v.reason.as_deref().unwrap_or("?"),
                v.checked
            )));
        }
        // A chain that holds can still be a truncated or recomputed one: compare it with
        // the head the daemon anchored in the server's audit log.
        let verdict = match &anchor {
            Some((seq, hash)) => trail::check_anchor(path, *seq, hash).map_err(|e| {
                DaemonError::new("IO", 1, format!("cannot read {}: {e}", path.display()))
            })?,
            None => Ok(()),
        };
        if as_json {
            let mut out = serde_json::to_value(&v).unwrap_or_default();
            out["anchor"] = anchor
                .as_ref()
                .map_or(Value::Null, |(seq, hash)| json!({"seq": seq, "hash": hash}));
            out["anchor_ok"] = json!(anchor.as_ref().map(|_| verdict.is_ok()));
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        verdict.map_err(broken)?;
        if !as_json {
            println!("Audit trail intact: {} events, head {}", v.checked, v.head);
            match &anchor {
                Some((seq, _)) => println!(
                    "It matches the anchor the server holds at line {seq} (the head the daemon \
                     last recorded there)."
                ),
                None => eprintln!(
                    "warning: not compared with an anchor: no daemon answers on {} and no \
                     stored session can ask the server",
                    socket.display()
                ),
            }
        }
        return Ok(());
    }
    let lines = trail::read(path)
        .map_err(|e| DaemonError::new("IO", 1, format!("cannot read {}: {e}", path.display())))?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "events": lines })).unwrap_or_default()
        );
        return Ok(());
    }
    for l in lines {
        let e = &l.event;
        let peer = e
            .peer
            .as_ref()
            .map(|p| {
                format!(
                    "pid {} uid {} {}",
                    p.pid,
                    p.uid,
                    p.exe.as_deref().unwrap_or("")
                )
            })
            .unwrap_or_default();
        println!(
            "{:>5} {:>14} {:<8} {:<12} {:<7} {} {}",
            l.seq,
            l.mono_ns,
            e.event,
            e.service.as_deref().unwrap_or("-"),
            e.mode.as_deref().unwrap_or("-"),
            peer.trim(),
            e.detail.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
