//! Reads per second and their latency at concurrency 32 on each storage engine: SQLite,
//! and PostgreSQL behind 1, 2 and 3 replicas (clients spread round-robin), with the CPU
//! each read costs in the servers and in the database, and a model of reads/s per added
//! core built from those costs. A 2-core machine cannot show replicas scaling: the model
//! is a model, and the table says so.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_core::Backend as _;
use agentkeys_core::HttpBackend;
use agentkeys_secmem::SecretString;
use agentkeys_testkit::Server;
use agentkeys_types::ServiceName;
use base64::Engine as _;
use serde_json::json;

use crate::stats::{Report, Samples, human};
use agentkeys_testkit::Bins;

/// Concurrent clients.
const CONCURRENCY: usize = 32;

/// A throwaway PostgreSQL cluster (scripts/pg-throwaway.sh), stopped on drop.
struct Cluster {
    url: String,
    dir: String,
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let out = Command::new("bash")
            .arg(script())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("{name} missing from pg-throwaway.sh's output"))
        };
        Ok(Cluster {
            url: var("AGENTKEYS_TEST_DATABASE_URL")?,
            dir: var("AGENTKEYS_TEST_PG_DIR")?,
        })
    }

    /// A new database's URL.
    fn database(&self, name: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([&self.url, "-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let (server, _) = self.url.rsplit_once('/').ok_or("a URL ends in /DB")?;
        Ok(format!("{server}/{name}"))
    }

    /// The postmaster's pid.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(format!("{}/data/postmaster.pid", self.dir))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([script(), "stop".to_owned(), self.dir.clone()])
            .status();
    }
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-throwaway.sh").to_owned()
}

/// CPU time (user + system) of `pid`, from `/proc/<pid>/stat`.
fn cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is parenthesised and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// `pid` and every process whose parent it is (PostgreSQL's backends).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| cpu(p)).sum()
}

/// One engine's figures.
struct Load {
    rate: f64,
    latency: Samples,
    server_cpu_per_read: Duration,
    db_cpu_per_read: Option<Duration>,
}

/// Reads for `secs` from `CONCURRENCY` clients spread round-robin over `urls`.
async fn load(
    urls: &[String],
    token: &SecretString,
    secs: Duration,
    server_pids: &[u32],
    db_pid: Option<u32>,
) -> Result<Load, String> {
    let service = ServiceName::parse("throughput").map_err(|e| e.to_string())?;
    let mut clients = Vec::new();
    for url in urls {
        let c = HttpBackend::new(url)
            .and_then(|b| b.with_token(token))
            .map_err(|e| e.to_string())?
            .pinning_first_contact()
            .await
            .map_err(|e| e.to_string())?;
        clients.push(Arc::new(c));
    }
    // Warm every connection pool first.
    for c in &clients {
        c.read_credential(None, &service)
            .await
            .map_err(|e| e.to_string())?;
    }
    let db_pids = db_pid.map(with_children).unwrap_or_default();
    let (server_before, db_before) = (cpu_of(server_pids), cpu_of(&db_pids));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY {
        let (c, s, lat) = (
            clients[i % clients.len()].clone(),
            service.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match c.read_credential(None, &s).await {
                    Ok(page) => {
                        drop(page);
                        mine.push(t.elapsed());
                    }
                    Err(_) => failed += 1,
                }
            }
            if let Ok(mut l) = lat.lock() {
                l.extend(mine);
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(1);
    }
    let elapsed = start.elapsed();
    // Backends started during the load count too.
    let db_after = db_pid.map(|p| cpu_of(&with_children(p)));
    let server_after = cpu_of(server_pids);
    if failed > 0 {
        return Err(format!("{failed} reads failed"));
    }
    let samples: Vec<Duration> = std::mem::take(&mut *latencies.lock().map_err(|e| e.to_string())?);
    let n = u32::try_from(samples.len().max(1)).unwrap_or(u32::MAX);
    Ok(Load {
        rate: f64::from(n) / elapsed.as_secs_f64(),
        latency: Samples::from(samples),
        server_cpu_per_read: server_after.saturating_sub(server_before) / n,
        db_cpu_per_read: db_after.map(|a| a.saturating_sub(db_before) / n),
    })
}

/// A master session on `url` with the `throughput` credential stored.
async fn master(url: &str) -> Result<SecretString, String> {
    let (backend, grant) = agentkeys_testkit::pairing::enrol_master(url, "bench-engines").await;
    let service = ServiceName::parse("throughput").map_err(|e| e.to_string())?;
    backend
        .store_credential(None, &service, b"sk-bench-engines-value-0123456789", None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(grant.token)
}

fn row(report: &mut Report, key: &str, what: &str, l: &Load) {
    let db = l.db_cpu_per_read.map_or(String::new(), |d| {
        let share = d.as_secs_f64() / (d + l.server_cpu_per_read).as_secs_f64().max(1e-9);
        format!(
            "; CPU per read: servers {}, database {} ({:.0}% of the read's CPU)",
            human(l.server_cpu_per_read),
            human(d),
            share * 100.0
        )
    });
    let server_only = if l.db_cpu_per_read.is_none() {
        format!(
            "; CPU per read: {} (database in-process)",
            human(l.server_cpu_per_read)
        )
    } else {
        String::new()
    };
    report.other(
        key,
        what,
        format!(
            "{:.0}/s · p50 {} · p99 {}{db}{server_only}",
            l.rate,
            human(l.latency.p50()),
            human(l.latency.p99())
        ),
        "",
        String::new(),
        json!({
            "reads_per_s": l.rate,
            "p50_us": l.latency.p50().as_micros(),
            "p99_us": l.latency.p99().as_micros(),
            "server_cpu_us_per_read": l.server_cpu_per_read.as_micros(),
            "db_cpu_us_per_read": l.db_cpu_per_read.map(|d| d.as_micros()),
        }),
    );
}

/// Runs the engine comparison and adds its rows to `report`.
pub(crate) fn run(
    bins: &Bins,
    rt: &tokio::runtime::Runtime,
    secs: Duration,
    report: &mut Report,
) -> Result<(), String> {
    let server_bin = bins.path("agentkeys-server");
    eprintln!("bench: engines: SQLite...");
    let sqlite = bins.server(&["--read-rate", "0"]);
    let token = rt.block_on(master(&sqlite.url))?;
    let l = rt.block_on(load(
        std::slice::from_ref(&sqlite.url),
        &token,
        secs,
        &[sqlite.pid()],
        None,
    ))?;
    row(
        report,
        "engine_sqlite_c32",
        "reads at concurrency 32, SQLite (one server)",
        &l,
    );
    drop(sqlite);

    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: engines: PostgreSQL skipped: {e}");
            report.other(
                "engine_postgres",
                "reads on PostgreSQL",
                "skipped: no PostgreSQL here (apt-get install postgresql)".to_owned(),
                "",
                String::new(),
                json!(null),
            );
            return Ok(());
        }
    };
    let mut last: Option<Load> = None;
    for n in 1..=3usize {
        eprintln!("bench: engines: PostgreSQL, {n} replica(s)...");
        let url = cluster.database(&format!("bench_{n}"))?;
        let db_flag = ["--read-rate", "0", "--database", url.as_str()];
        let first = bins.server(&db_flag);
        let keys = std::fs::read(first.data_dir.join("server.key")).map_err(|e| e.to_string())?;
        let keys = base64::engine::general_purpose::STANDARD.encode(keys);
        let mut replicas = vec![first];
        for _ in 1..n {
            replicas.push(
                Server::command(&server_bin)
                    .args(&db_flag)
                    .env("AGENTKEYS_SERVER_KEYS", &keys)
                    .spawn(),
            );
        }
        let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
        let pids: Vec<u32> = replicas.iter().map(Server::pid).collect();
        let token = rt.block_on(master(&urls[0]))?;
        let l = rt.block_on(load(&urls, &token, secs, &pids, cluster.pid()))?;
        row(
            report,
            &format!("engine_postgres_{n}_c32"),
            &format!("reads at concurrency 32, PostgreSQL, {n} replica(s) round-robin"),
            &l,
        );
        last = Some(l);
    }
    if let Some(l) = last
        && let Some(db) = l.db_cpu_per_read
    {
        let server = l.server_cpu_per_read.as_secs_f64().max(1e-9);
        let db = db.as_secs_f64().max(1e-9);
        report.other(
            "engine_model",
            "model (not a measurement): reads/s per core added",
            format!(
                "≈ {:.0}/s per core given to replicas, while the database has room; the \
                 database's ceiling ≈ {:.0}/s per core it has (from the CPU per read above)",
                1.0 / server,
                1.0 / db
            ),
            "",
            String::new(),
            json!({"per_replica_core": 1.0 / server, "per_db_core": 1.0 / db}),
        );
    }
    Ok(())
}
