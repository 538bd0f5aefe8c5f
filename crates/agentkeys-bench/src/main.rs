//! `agentkeys-bench`: measures agentkeys against its targets and its peers, in one run on
//! this machine, and prints a markdown table (JSON with `--out`).
//!
//! ```text
//! cargo run --release -p agentkeys-bench -- all
//! cargo run --release -p agentkeys-bench -- all --quick --out bench.json
//! ```
//!
//! It starts a real `agentkeys-server` (SQLite in a temp dir), enrols a master with the CLI,
//! pairs a real `agentkeys-daemon`, and then times: `get_credential` over a held socket
//! connection (inline uncached, inline cached, fd delivery through the Rust runtime), the
//! daemon's plaintext window from its own trail, `agentkeys run -- true` against a bare
//! exec, the approval round trip a person waits through, how long a revocation takes to
//! stop a run and its proxy, sealed reads and stores per second
//! on the server, memory and binary sizes, and the
//! floors and peers installed here (a Unix-socket ping-pong, ssh-agent; fnox, teller and
//! pass when present). Figures are medians and percentiles of one run: compare the ratios.
//!
//! `main.rs` drives the groups of figures in order; beside it: `setup.rs` (the system under
//! test, from the shared test fixture, release binaries), `stats.rs` (samples, order
//! statistics, the report), `approvals.rs` (the approval round trip), `revocation.rs`
//! (revocation reaching a run and its proxy), `engines.rs` (reads/s on SQLite and
//! PostgreSQL replicas), `proxy.rs` (the egress proxy against direct TLS), `peers.rs`
//! (fnox side by side).

#![forbid(unsafe_code)]

mod approvals;
mod engines;
mod peers;
mod proxy;
mod revocation;
mod setup;
mod stats;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentkeys_core::Backend as _;
use agentkeys_core::HttpBackend;
use agentkeys_types::ServiceName;
use clap::Parser;
use serde_json::{Value, json};

use crate::setup::{CACHED, PROXIED, Stack, UNCACHED, locate_bins, rss_kib};
use crate::stats::{Report, Samples, human, ratio};
use agentkeys_testkit::{Bins, Client};

/// agentkeys-bench: latency, throughput and memory of agentkeys, with peers, in one run.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
    cargo run --release -p agentkeys-bench -- all\n  \
    cargo run --release -p agentkeys-bench -- all --quick --out target/bench.json\n  \
    perf record -a -g -o perf.data -- target/release/agentkeys-bench profile-reads --no-build"
)]
struct Args {
    /// What to run: `all` (everything, in order), `revocation` (that row alone, on a stack of
    /// its own), or one load for a profiler to watch
    /// (`profile-reads`: sealed reads at concurrency 32 on the server; `profile-gets`: cached
    /// `get_credential` on a held connection; `profile-run`: `agentkeys run --service openai
    /// -- /bin/true` in a loop; `profile-read-cli`: `agentkeys read openai` in a loop;
    /// `profile-idle`: the stack alone, with the environment to try commands on it by hand). A profile load prints the pids, waits a second, and runs
    /// for `--secs`.
    #[arg(value_parser = ["all", "revocation", "profile-reads", "profile-gets", "profile-run", "profile-read-cli", "profile-idle"])]
    what: String,
    /// How long a profile load runs, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Fewer iterations (about 10× fewer), for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
    /// Do not build the server, CLI and daemon first (they must exist next to this binary).
    #[arg(long)]
    no_build: bool,
    /// A fnox binary to run side by side (default: `$AGENTKEYS_BENCH_FNOX`, else `fnox` on
    /// the PATH). A prebuilt one: `xz -dc fnox-1.46.0-x86_64-linux.xz > target/fnox`.
    #[arg(long, value_name = "PATH")]
    fnox: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(_) if !matches!(args.what.as_str(), "all" | "revocation") => ExitCode::SUCCESS,
        Ok(report) => {
            print!("{}", report.markdown());
            if let Some(path) = &args.out {
                let body = serde_json::to_string_pretty(&report.json()).unwrap_or_default();
                if let Err(e) = std::fs::write(path, body) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy)]
struct Sizes {
    warm: usize,
    n: usize,
    runs: usize,
    secs: Duration,
}

impl Sizes {
    /// The iteration counts of a full run, or about 10× fewer for `--quick`.
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                warm: 50,
                n: 300,
                runs: 10,
                secs: Duration::from_millis(700),
            }
        } else {
            Sizes {
                warm: 300,
                n: 3000,
                runs: 40,
                secs: Duration::from_secs(3),
            }
        }
    }
}

fn run(args: &Args) -> Result<Report, String> {
    let sizes = Sizes::new(args.quick);
    let bins = locate_bins(args.no_build)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if !matches!(args.what.as_str(), "all" | "revocation") {
        profile(&args.what, &bins, &rt, Duration::from_secs(args.secs))?;
        return Ok(Report::default());
    }
    let upstream = proxy::Upstream::start(&rt)?;
    eprintln!("bench: starting a server and pairing a daemon...");
    let daemon_extra = [
        "--proxy-resolve".to_owned(),
        format!("{}=127.0.0.1:{}", proxy::HOST, upstream.port),
        "--proxy-upstream-ca".to_owned(),
        upstream.ca.display().to_string(),
    ];
    let stack = Stack::start(&bins, &daemon_extra, proxy::HOST);
    let mut report = Report::default();
    if args.what == "revocation" {
        revocation_row(&stack, &bins, &daemon_extra, &rt, &sizes, &mut report)?;
        return Ok(report);
    }
    let idle = (rss_kib(stack.daemon.pid()), rss_kib(stack.server.pid()));
    let fetched = fetch_rows(&stack, &sizes, &mut report)?;
    let launched = launch_rows(&stack, &sizes, &mut report);
    approval_row(&stack, &rt, &sizes, &mut report)?;
    eprintln!("bench: revocation reaching a run and its proxy (a fresh agent each)...");
    revocation_row(&stack, &bins, &daemon_extra, &rt, &sizes, &mut report)?;
    throughput_rows(&stack, &rt, &sizes, &mut report)?;
    engines::run(&bins, &rt, sizes.secs, &mut report)?;
    footprint_rows(&stack, &bins, idle, &mut report);
    floor_rows(&fetched, &mut report);
    eprintln!("bench: the egress proxy against direct TLS...");
    egress_proxy(&stack, &upstream, &rt, &sizes, &mut report)?;
    peer_rows(
        args.fnox.as_deref(),
        &sizes,
        &launched,
        &fetched,
        &mut report,
    )?;
    Ok(report)
}

/// What the fetch figures measured that later rows compare against.
struct Fetched {
    floor: Samples,
    ssh: Option<Samples>,
    cached: Samples,
}

/// `get_credential` over a held connection (inline and fd, cached and not, against the
/// socket floor and ssh-agent), and the daemon's plaintext window from its trail.
fn fetch_rows(stack: &Stack, sizes: &Sizes, report: &mut Report) -> Result<Fetched, String> {
    let floor = socket_floor(sizes);
    eprintln!("bench: get_credential over a held connection...");
    let uncached = fetch_inline(stack, UNCACHED, sizes, Duration::ZERO)?;
    let cached = fetch_inline(stack, CACHED, sizes, Duration::ZERO)?;
    let quiet = Sizes {
        n: sizes.n / 4,
        warm: sizes.warm / 4,
        ..*sizes
    };
    let cached_idle = fetch_inline(stack, CACHED, &quiet, Duration::from_millis(5))?;
    let fd = fetch_fd(stack, UNCACHED, sizes)?;
    let fd_cached = fetch_fd(stack, CACHED, sizes)?;
    let ssh = ssh_agent(sizes);
    let vs = |s: &Samples| match &ssh {
        Some(a) => format!(
            "{} ssh-agent ({}); {} socket floor",
            ratio(s.p50(), a.p50()),
            human(a.p50()),
            ratio(s.p50(), floor.p50())
        ),
        None => format!(
            "{} socket floor ({})",
            ratio(s.p50(), floor.p50()),
            human(floor.p50())
        ),
    };
    report.latency(
        "fetch_inline_cached",
        "get_credential, held MCP connection, cached (inline)",
        &cached,
        "≤ 80 µs p50, ≤ 250 µs p99",
        vs(&cached),
    );
    report.latency(
        "fetch_inline_cached_idle",
        "the same, one call every 5 ms (the daemon's threads park in between)",
        &cached_idle,
        "≤ 120 µs p50",
        vs(&cached_idle),
    );
    report.latency(
        "fetch_inline_uncached",
        "get_credential, held connection, uncached (server round trip, HPKE)",
        &uncached,
        "≤ 700 µs p50, ≤ 2 ms p99",
        vs(&uncached),
    );
    report.latency(
        "fetch_fd_uncached",
        "get_credential as a memfd_secret fd (Rust runtime: map, use, wipe), uncached",
        &fd,
        "≤ 1.5× inline",
        format!("{} inline uncached", ratio(fd.p50(), uncached.p50())),
    );
    report.latency(
        "fetch_fd_cached",
        "get_credential as an fd, cached",
        &fd_cached,
        "≤ 1.5× inline",
        format!("{} inline cached", ratio(fd_cached.p50(), cached.p50())),
    );

    let window = plaintext_window(stack)?;
    report.latency(
        "plaintext_window",
        "daemon plaintext window (fetch → drop, from its trail)",
        &window,
        "p99 ≤ 150 µs",
        "design estimate: ~50 ms".to_owned(),
    );

    Ok(Fetched { floor, ssh, cached })
}

/// What the launch figures measured that the peers' rows compare against.
struct Launched {
    bare: Samples,
    mediated: Samples,
    per_process: Samples,
}

/// `agentkeys run` against a bare exec, and `agentkeys read` in a new process per fetch.
fn launch_rows(stack: &Stack, sizes: &Sizes, report: &mut Report) -> Launched {
    eprintln!("bench: agentkeys run...");
    let bare = Samples::measure(3, sizes.runs, || {
        let _ = Command::new("/usr/bin/env")
            .args(["X=1", "/bin/true"])
            .status();
    });
    let mediated = Samples::measure(3, sizes.runs, || {
        let _ = Command::new(stack.cli())
            .args(["run", "--service", UNCACHED, "--", "/bin/true"])
            .env("AGENTKEYS_SOCKET", stack.socket())
            .status();
    });
    let mediated_none = Samples::measure(3, sizes.runs, || {
        let _ = Command::new(stack.cli())
            .args(["run", "--", "/bin/true"])
            .env("AGENTKEYS_SOCKET", stack.socket())
            .status();
    });
    report.latency(
        "exec_bare",
        "`/usr/bin/env X=1 /bin/true` (baseline)",
        &bare,
        "",
        "peers: fnox exec / teller run 10–12 ms (peer-baselines.md)".to_owned(),
    );
    report.latency(
        "run_with_credential",
        "`agentkeys run --service openai -- /bin/true`",
        &mediated,
        "≤ 2.0× baseline",
        format!(
            "{} baseline (+{})",
            ratio(mediated.p50(), bare.p50()),
            human(mediated.p50().saturating_sub(bare.p50()))
        ),
    );
    report.latency(
        "run_without_credential",
        "`agentkeys run -- /bin/true`",
        &mediated_none,
        "≤ 1.7× baseline",
        format!("{} baseline", ratio(mediated_none.p50(), bare.p50())),
    );

    let per_process = Samples::measure(3, sizes.runs, || {
        let _ = stack
            .master_cli(&["read", UNCACHED])
            .stdout(Stdio::null())
            .status();
    });
    report.latency(
        "read_per_process",
        "`agentkeys read openai`, a new process per fetch (server round trip)",
        &per_process,
        "≤ 4 ms p50",
        format!(
            "{} baseline; peers: ssh-add 7 ms, fnox get 10 ms, pass 31 ms (peer-baselines.md)",
            ratio(per_process.p50(), bare.p50())
        ),
    );

    Launched {
        bare,
        mediated,
        per_process,
    }
}

/// The approval round trip a person waits through.
fn approval_row(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), String> {
    eprintln!("bench: the approval round trip (watch, approve, release)...");
    let approvals = approvals::round_trip(stack, rt, 3, sizes.runs)?;
    report.latency(
        "approval_round_trip",
        "approval round trip: high-value read opens a request → `watch` notices → \
         `agentkeys approve CODE --yes` → the waiting read releases the value",
        &approvals.total,
        "",
        format!(
            "watch noticed it after {} (p50), p99 {}; the approve command took {}",
            human(approvals.noticed.p50()),
            human(approvals.noticed.p99()),
            human(approvals.approve.p50())
        ),
    );

    Ok(())
}

/// Sealed reads (at three concurrencies) and stores per second on the server.
fn throughput_rows(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), String> {
    eprintln!("bench: server throughput...");
    let backend = rt.block_on(master_backend(&stack.server.url))?;
    for c in [1usize, 8, 32] {
        let rate = rt.block_on(reads_per_second(&backend, c, sizes.secs))?;
        let target = if c == 32 { "≥ 6,000/s" } else { "" };
        report.other(
            &format!("reads_c{c}"),
            &format!("sealed credential reads/s, concurrency {c}"),
            format!("{rate:.0}/s"),
            target,
            String::new(),
            json!(rate),
        );
    }
    let stores = rt.block_on(stores_per_second(&backend, 8, sizes.secs))?;
    report.other(
        "stores_c8",
        "credential stores/s, concurrency 8",
        format!("{stores:.0}/s"),
        "",
        String::new(),
        json!(stores),
    );

    Ok(())
}

/// The daemon's and the server's RSS (idle, then after the load) and the binaries' sizes.
fn footprint_rows(stack: &Stack, bins: &Bins, idle: (u64, u64), report: &mut Report) {
    let (idle_daemon, idle_server) = idle;
    let loaded_daemon = rss_kib(stack.daemon.pid());
    let loaded_server = rss_kib(stack.server.pid());
    report.other(
        "rss_daemon",
        "daemon RSS, idle → after the load",
        format!("{} → {}", mib(idle_daemon), mib(loaded_daemon)),
        "idle < 16 MiB, loaded < 24 MiB",
        String::new(),
        json!({"idle_kib": idle_daemon, "loaded_kib": loaded_daemon}),
    );
    report.other(
        "rss_server",
        "server RSS, idle → after the load",
        format!("{} → {}", mib(idle_server), mib(loaded_server)),
        "",
        String::new(),
        json!({"idle_kib": idle_server, "loaded_kib": loaded_server}),
    );
    for name in ["agentkeys-server", "agentkeys", "agentkeys-daemon"] {
        let size = std::fs::metadata(bins.path(name))
            .map(|m| m.len())
            .unwrap_or(0);
        report.other(
            &format!("size_{name}"),
            &format!("binary size: {name}"),
            mib(size / 1024),
            "",
            String::new(),
            json!(size),
        );
    }
}

/// The floors measured with the fetches: the socket ping-pong and ssh-agent.
fn floor_rows(fetched: &Fetched, report: &mut Report) {
    let Fetched { floor, ssh, .. } = fetched;
    report.latency(
        "floor_socket",
        "floor: Unix-socket ping-pong, 64 bytes",
        floor,
        "",
        "peer-baselines: 15–25 µs".to_owned(),
    );
    match ssh {
        Some(s) => report.latency(
            "peer_ssh_agent",
            "peer: ssh-agent request, held connection",
            s,
            "",
            "peer-baselines: 40–80 µs".to_owned(),
        ),
        None => report.other(
            "peer_ssh_agent",
            "peer: ssh-agent",
            "not installed".into(),
            "",
            String::new(),
            Value::Null,
        ),
    }
}

/// The peers installed here: fnox side by side, teller and pass when present.
fn peer_rows(
    fnox: Option<&std::path::Path>,
    sizes: &Sizes,
    launched: &Launched,
    fetched: &Fetched,
    report: &mut Report,
) -> Result<(), String> {
    let Launched {
        bare,
        mediated,
        per_process,
    } = launched;
    let cached = &fetched.cached;
    match peers::locate(fnox) {
        Some(bin) => {
            eprintln!("bench: fnox, side by side...");
            let fnox = peers::Fnox::new(&bin, &agentkeys_testkit::canary("bench"))?;
            let exec = fnox.exec(3, sizes.runs);
            let get = fnox.get(3, sizes.runs);
            let mcp = fnox.mcp(sizes.warm, sizes.n)?;
            report.latency(
                "peer_fnox_exec",
                &format!(
                    "peer: `fnox exec -- /bin/true` ({}, plain provider)",
                    fnox.version
                ),
                &exec,
                "",
                format!(
                    "{} baseline; agentkeys run --service openai: {} baseline",
                    ratio(exec.p50(), bare.p50()),
                    ratio(mediated.p50(), bare.p50())
                ),
            );
            report.latency(
                "peer_fnox_get",
                "peer: `fnox get OPENAI_API_KEY`, a new process per fetch",
                &get,
                "",
                format!(
                    "agentkeys read openai: {} of it",
                    ratio(per_process.p50(), get.p50())
                ),
            );
            report.latency(
                "peer_fnox_mcp",
                "peer: `fnox mcp` get_secret, held stdio session",
                &mcp,
                "",
                format!(
                    "agentkeys cached get_credential: {} of it",
                    ratio(cached.p50(), mcp.p50())
                ),
            );
        }
        None => report.other(
            "peer_fnox",
            "peer: fnox",
            "not found: pass --fnox PATH (see docs/performance.md)".into(),
            "",
            String::new(),
            Value::Null,
        ),
    }
    for peer in ["teller", "pass"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {peer}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            report.other(
                &format!("peer_{peer}"),
                &format!("peer: {peer}"),
                "not installed here (see peer-baselines.md)".into(),
                "",
                String::new(),
                Value::Null,
            );
        }
    }
    Ok(())
}

/// One load, for `perf record -a` to watch: the stack's pids go to stderr first.
fn profile(
    what: &str,
    bins: &Bins,
    rt: &tokio::runtime::Runtime,
    secs: Duration,
) -> Result<(), String> {
    let stack = Stack::start(bins, &[], proxy::HOST);
    eprintln!(
        "bench: server pid {}, daemon pid {}; {what} for {}s in 1s",
        stack.server.pid(),
        stack.daemon.pid(),
        secs.as_secs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let deadline = Instant::now() + secs;
    match what {
        "profile-reads" => {
            let backend = rt.block_on(master_backend(&stack.server.url))?;
            let rate = rt.block_on(reads_per_second(&backend, 32, secs))?;
            eprintln!("bench: {rate:.0} reads/s");
        }
        "profile-gets" => {
            let mut calls = 0u64;
            while Instant::now() < deadline {
                let mut c = mcp(&stack)?;
                let args = json!({"name": "get_credential", "arguments": {"service": CACHED}});
                for _ in 0..PER_CONNECTION {
                    c.call("tools/call", args.clone())?;
                    calls += 1;
                }
            }
            eprintln!("bench: {calls} gets");
        }
        "profile-idle" => {
            println!(
                "AGENTKEYS_SOCKET={} AGENTKEYS_HOME={} AGENTKEYS_SERVER={} AGENTKEYS_SESSION_STORE=file",
                stack.socket().display(),
                stack.master.home().display(),
                stack.server.url
            );
            std::thread::sleep(secs);
        }
        "profile-read-cli" => {
            let mut reads = 0u64;
            while Instant::now() < deadline {
                let _ = stack
                    .master_cli(&["read", UNCACHED])
                    .stdout(Stdio::null())
                    .status();
                reads += 1;
            }
            eprintln!("bench: {reads} reads");
        }
        _ => {
            let mut runs = 0u64;
            while Instant::now() < deadline {
                let _ = Command::new(stack.cli())
                    .args(["run", "--service", UNCACHED, "--", "/bin/true"])
                    .env("AGENTKEYS_SOCKET", stack.socket())
                    .status();
                runs += 1;
            }
            eprintln!("bench: {runs} runs");
        }
    }
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A connection on the daemon socket, initialized (what an inline MCP agent does).
fn mcp(stack: &Stack) -> Result<Client, String> {
    let mut c = Client::try_connect(stack.socket()).map_err(|e| e.to_string())?;
    c.initialize_as("bench");
    Ok(c)
}

/// Calls per connection before a fresh one: the daemon allows a burst of 400 messages per
/// connection (then 200 a second) and disconnects a client that keeps going faster, so the
/// back-to-back loop reconnects (untimed) before it runs out.
const PER_CONNECTION: usize = 300;

/// `n` timed calls after `warm` untimed ones, `pause` apart (zero: back to back), a fresh
/// connection every [`PER_CONNECTION`] calls.
fn in_chunks<C>(
    sizes: &Sizes,
    pause: Duration,
    mut connect: impl FnMut() -> Result<C, String>,
    mut call: impl FnMut(&mut C) -> Result<(), String>,
) -> Result<Samples, String> {
    let mut all = Vec::with_capacity(sizes.n);
    let mut warm = sizes.warm;
    while all.len() < sizes.n {
        let mut c = connect()?;
        for _ in 0..PER_CONNECTION {
            if warm > 0 {
                warm -= 1;
                call(&mut c)?;
                continue;
            }
            if all.len() == sizes.n {
                break;
            }
            std::thread::sleep(pause);
            let t = Instant::now();
            call(&mut c)?;
            all.push(t.elapsed());
        }
    }
    Ok(Samples::from(all))
}

fn fetch_inline(
    stack: &Stack,
    service: &str,
    sizes: &Sizes,
    pause: Duration,
) -> Result<Samples, String> {
    let args = json!({"name": "get_credential", "arguments": {"service": service}});
    in_chunks(
        sizes,
        pause,
        || mcp(stack),
        |c| c.call("tools/call", args.clone()).map(|_| ()),
    )
}

fn fetch_fd(stack: &Stack, service: &str, sizes: &Sizes) -> Result<Samples, String> {
    in_chunks(
        sizes,
        Duration::ZERO,
        || agentkeys_runtime::Client::connect(Some(stack.socket())).map_err(|e| e.to_string()),
        |c| {
            let cred = c.get_credential(service).map_err(|e| e.to_string())?;
            if cred.with_bytes(<[u8]>::len) != stack.value.len() {
                return Err("wrong length".into());
            }
            Ok(())
        },
    )
}

/// fetch → drop per request id, from the daemon's monotonic timestamps.
fn plaintext_window(stack: &Stack) -> Result<Samples, String> {
    let mut fetched = std::collections::HashMap::new();
    let mut windows = Vec::new();
    for v in agentkeys_testkit::trail_lines(&stack.daemon.trail()) {
        let (Some(req), Some(t)) = (v["request"].as_str(), v["mono_ns"].as_u64()) else {
            continue;
        };
        match v["event"].as_str() {
            Some("fetch") => {
                fetched.insert(req.to_owned(), t);
            }
            Some("drop") => {
                if let Some(start) = fetched.remove(req) {
                    windows.push(Duration::from_nanos(t.saturating_sub(start)));
                }
            }
            _ => {}
        }
    }
    if windows.is_empty() {
        return Err("no fetch/drop pairs in the daemon trail".into());
    }
    Ok(Samples::from(windows))
}

fn socket_floor(sizes: &Sizes) -> Samples {
    let Ok((mut a, mut b)) = UnixStream::pair() else {
        return Samples::from(Vec::new());
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [7u8; 64];
    Samples::measure(sizes.warm, sizes.n, || {
        let _ = a.write_all(&buf);
        let _ = a.read_exact(&mut buf);
    })
}

/// SSH_AGENTC_REQUEST_IDENTITIES round trips on a held connection to a fresh ssh-agent.
fn ssh_agent(sizes: &Sizes) -> Option<Samples> {
    let dir = agentkeys_testkit::TempDir::new("agentkeys-bench-ssh");
    let sock = dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut ok = true;
    let samples = Samples::measure(sizes.warm, sizes.n, || {
        let mut reply = [0u8; 9];
        ok &= s.write_all(&[0, 0, 0, 1, 11]).is_ok() && s.read_exact(&mut reply).is_ok();
    });
    let _ = agent.kill();
    let _ = agent.wait();
    ok.then_some(samples)
}

/// A master session of its own, with one credential to read.
async fn master_backend(url: &str) -> Result<Arc<HttpBackend>, String> {
    let (backend, _) = agentkeys_testkit::pairing::enrol_master(url, "bench-throughput").await;
    let service = ServiceName::parse("throughput").map_err(|e| e.to_string())?;
    backend
        .store_credential(
            None,
            &service,
            b"sk-bench-throughput-value-0123456789",
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(backend))
}

async fn reads_per_second(
    backend: &Arc<HttpBackend>,
    concurrency: usize,
    secs: Duration,
) -> Result<f64, String> {
    let service = ServiceName::parse("throughput").map_err(|e| e.to_string())?;
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (b, s, count, errors) = (
            backend.clone(),
            service.clone(),
            count.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match b.read_credential(None, &s).await {
                    Ok(page) => {
                        drop(page);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failed = errors.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!(
            "{failed} reads failed at concurrency {concurrency}"
        ));
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn stores_per_second(
    backend: &Arc<HttpBackend>,
    concurrency: usize,
    secs: Duration,
) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let (b, count) = (backend.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let Ok(service) = ServiceName::parse(&format!("store-{task}-{}", i % 64)) else {
                    break;
                };
                if b.store_credential(None, &service, b"sk-bench-store", None)
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The revocation row: a fresh agent per sample, 2.5× `runs` samples (100 in a full run,
/// enough for a p99).
fn revocation_row(
    stack: &Stack,
    bins: &Bins,
    daemon_extra: &[String],
    rt: &tokio::runtime::Runtime,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), String> {
    let revoked = revocation::measure(stack, bins, daemon_extra, rt, 2, sizes.runs * 5 / 2)?;
    report.latency(
        "revocation_reaches_run",
        "revocation: `agentkeys revoke AGENT` → its `run --proxy` child gone and the next \
         proxied request refused",
        &revoked.total,
        "p50 ≤ 200 ms, p99 ≤ 1 s",
        format!(
            "child gone {} (p50), proxy refusing {} (p50); the revoke command took {}; \
             before: up to revocation_check (30 s); Agent Vault: within 60 s",
            human(revoked.child_gone.p50()),
            human(revoked.refused.p50()),
            human(revoked.command.p50())
        ),
    );
    Ok(())
}

/// The egress proxy (`proxy-env`'s persistent listener) against direct TLS to the same
/// upstream, in this run.
fn egress_proxy(
    stack: &Stack,
    upstream: &proxy::Upstream,
    rt: &tokio::runtime::Runtime,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), String> {
    let env = Arc::new(proxy::ProxyEnv::ask(stack.cli(), stack.socket(), PROXIED)?);
    let direct = proxy::Path2::Direct {
        port: upstream.port,
        ca: upstream.ca.clone(),
        key: stack.value.clone(),
    };
    let proxied = proxy::Path2::Proxied(env);
    let (n, warm) = (sizes.n, sizes.warm);
    let fresh_n = (sizes.n / 20).max(50);

    let held_direct = rt.block_on(proxy::held(&direct, warm, n))?;
    let held_proxy = rt.block_on(proxy::held(&proxied, warm, n))?;
    let added = |a: &Samples, b: &Samples| {
        format!(
            "+{} p50 over direct ({}); peers: fnox proxy +1.3 ms, ficta +1.9–2.9 ms",
            human(a.p50().saturating_sub(b.p50())),
            human(b.p50())
        )
    };
    report.latency(
        "proxy_direct_held",
        "HTTPS GET, held HTTP/1.1 connection, direct to a local upstream (baseline)",
        &held_direct,
        "",
        String::new(),
    );
    report.latency(
        "proxy_held",
        "the same through the egress proxy (placeholder swapped for the key)",
        &held_proxy,
        "≤ +250 µs p50",
        added(&held_proxy, &held_direct),
    );
    let fresh_direct = rt.block_on(proxy::fresh(&direct, 5, fresh_n))?;
    let fresh_proxy = rt.block_on(proxy::fresh(&proxied, 5, fresh_n))?;
    report.latency(
        "proxy_direct_new",
        "HTTPS GET on a new connection (TCP + TLS), direct (baseline)",
        &fresh_direct,
        "",
        String::new(),
    );
    report.latency(
        "proxy_new",
        "the same through the proxy (TCP + CONNECT + TLS, leaf cached)",
        &fresh_proxy,
        "≤ +2 ms p50",
        format!(
            "+{} p50 over direct",
            human(fresh_proxy.p50().saturating_sub(fresh_direct.p50()))
        ),
    );
    let h2_direct = rt.block_on(proxy::h2_streams(&direct, 20))?;
    let h2_proxy = rt.block_on(proxy::h2_streams(&proxied, 20))?;
    report.latency(
        "proxy_direct_h2",
        "HTTP/2, 100 concurrent streams on one connection, direct (baseline)",
        &h2_direct,
        "",
        String::new(),
    );
    report.latency(
        "proxy_h2",
        "the same through the proxy (HTTP/2 on both sides)",
        &h2_proxy,
        "",
        format!("{} direct p99", ratio(h2_proxy.p99(), h2_direct.p99())),
    );
    let direct_rate = rt.block_on(proxy::stream(&direct))?;
    let before = rss_kib(stack.daemon.pid());
    let (proxy_rate, peak) =
        proxy::peak_rss_during(stack.daemon.pid(), || rt.block_on(proxy::stream(&proxied)));
    let proxy_rate = proxy_rate?;
    let growth = peak.saturating_sub(before);
    report.other(
        "proxy_stream",
        "256 MiB streamed through the proxy: throughput, daemon RSS growth",
        format!(
            "{proxy_rate:.0} MiB/s ({:.0}% of direct {direct_rate:.0} MiB/s); +{} RSS",
            proxy_rate / direct_rate * 100.0,
            mib(growth)
        ),
        "≥ 50% of direct; ≤ +8 MiB",
        "fnox proxy: refused (10 MiB cap, peer-baselines.md)".to_owned(),
        json!({"direct_mib_s": direct_rate, "proxy_mib_s": proxy_rate, "rss_growth_kib": growth}),
    );
    Ok(())
}
