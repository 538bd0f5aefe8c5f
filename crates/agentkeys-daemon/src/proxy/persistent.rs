//! The persistent listeners of `agentkeys proxy-env`: one per caller uid and set of
//! services, started on first use, kept until the daemon stops or the session is revoked
//! (the daemon calls the stop-all hook registered here), for agents the daemon does not
//! start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentkeys_types::ServiceName;

use super::launch::{ProxyRun, start_with};
use crate::daemon::{Conn, Daemon, Refusal};

/// Most persistent listeners a daemon keeps (`agentkeys proxy-env`).
pub const MAX_PERSISTENT: usize = 16;

/// The persistent listeners, by caller uid and services.
#[derive(Default)]
pub struct Persistent(Mutex<HashMap<(u32, Vec<ServiceName>), ProxyRun>>);

impl Persistent {
    /// The table for `daemon`'s listeners, stopped as soon as its session is revoked.
    pub fn serving(daemon: &Daemon) -> Arc<Persistent> {
        let table = Arc::new(Persistent::default());
        let on_revoked = table.clone();
        daemon.on_revocation(move || on_revoked.stop_all());
        table
    }

    /// Stops every listener: their held values are wiped, their listeners close.
    pub fn stop_all(&self) {
        let stopped: Vec<ProxyRun> = self
            .0
            .lock()
            .map(|mut p| p.drain().map(|(_, run)| run).collect())
            .unwrap_or_default();
        drop(stopped);
    }

    /// `agentkeys/proxy-env {services}`: the persistent listener for this caller's uid and
    /// these services, as the environment an agent the daemon does not start should use. A
    /// high-value approval covers one request there.
    pub async fn env(
        &self,
        daemon: &Arc<Daemon>,
        conn: &Conn,
        request: &str,
        services: Vec<ServiceName>,
    ) -> Result<serde_json::Value, Refusal> {
        let mut key = services;
        key.sort();
        key.dedup();
        if key.is_empty() {
            return Err(Refusal::new("BAD_REQUEST", "name at least one service"));
        }
        let uid = conn.peer.uid;
        let existing = self
            .0
            .lock()
            .ok()
            .and_then(|p| p.get(&(uid, key.clone())).map(ProxyRun::describe));
        if let Some(found) = existing {
            return Ok(found);
        }
        let run = start_with(daemon, conn, request, &key, false).await?;
        let mut proxies = self
            .0
            .lock()
            .map_err(|_| Refusal::new("INTERNAL", "the proxy table is unavailable"))?;
        if proxies.len() >= MAX_PERSISTENT && !proxies.contains_key(&(uid, key.clone())) {
            return Err(Refusal::new(
                "BUSY",
                format!("this daemon already keeps {MAX_PERSISTENT} persistent proxies"),
            ));
        }
        // Another caller may have raced this one: keep the first, answer with it.
        let kept = proxies.entry((uid, key)).or_insert(run);
        Ok(kept.describe())
    }
}
