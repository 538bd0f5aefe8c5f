//! The approval round trip a person waits through: a high-value read opens a request,
//! `agentkeys watch` (one held long-poll) notices it, a script approves it with
//! `agentkeys approve CODE --yes` (a new process, as a person's script would run), and the
//! waiting reader's decision long-poll wakes and the read releases the value.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentkeys_core::Backend as _;
use agentkeys_types::ServiceName;
use agentkeys_types::api::AuthStatus;

use crate::setup::Stack;
use crate::stats::Samples;

/// The high-value credential the round trip releases.
const HIGH: &str = "highvalue";

/// What one run measured.
pub(crate) struct RoundTrip {
    /// Request opened → value released.
    pub(crate) total: Samples,
    /// Request opened → `watch` printed it.
    pub(crate) noticed: Samples,
    /// `agentkeys approve CODE --yes`, start to exit.
    pub(crate) approve: Samples,
}

/// Runs `n` round trips (after `warm` unmeasured ones).
pub(crate) fn round_trip(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
    warm: usize,
    n: usize,
) -> Result<RoundTrip, String> {
    stack.master.store(HIGH, &stack.value, &["--high-value"]);
    let mut watch = stack
        .master_cli(&["watch", "--json", "--no-desktop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = watch.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    // The reader: a session of the same master (its inbox is the one watched).
    let (reader, _) = rt.block_on(agentkeys_testkit::pairing::enrol_master(
        &stack.server.url,
        "bench-master",
    ));
    let service = ServiceName::parse(HIGH).map_err(|e| e.to_string())?;
    // Give watch its first (empty) answer before timing.
    std::thread::sleep(Duration::from_millis(300));
    let (mut total, mut noticed, mut approve) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warm + n {
        let opened = Instant::now();
        let ticket = match rt.block_on(reader.read_credential(None, &service)) {
            Err(e) => e
                .auth_request()
                .cloned()
                .ok_or_else(|| format!("the read was refused otherwise: {e}"))?,
            Ok(_) => return Err("the high-value read needed no approval".into()),
        };
        let seen = loop {
            let (line, at) = rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| "watch printed nothing within 30 s")?;
            if line.contains(&ticket.pair_code) {
                break at;
            }
        };
        let approving = Instant::now();
        let ok = stack
            .master_cli(&["approve", &ticket.pair_code, "--yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?
            .success();
        let approved = Instant::now();
        if !ok {
            return Err(format!("agentkeys approve {} failed", ticket.pair_code));
        }
        let released = rt.block_on(async {
            let d = reader
                .decision(&ticket.id, 30)
                .await
                .map_err(|e| e.to_string())?;
            if d.status != AuthStatus::Approved {
                return Err(format!("the decision is {}", d.status.as_str()));
            }
            reader
                .read_credential(None, &service)
                .await
                .map_err(|e| e.to_string())
        })?;
        let done = Instant::now();
        if released.page.expose_secret() != stack.value.as_bytes() {
            return Err("the released value is not the stored one".into());
        }
        if i >= warm {
            total.push(done - opened);
            noticed.push(seen.saturating_duration_since(opened));
            approve.push(approved - approving);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    Ok(RoundTrip {
        total: total.into(),
        noticed: noticed.into(),
        approve: approve.into(),
    })
}
