//! The server's hash-chained audit log (decision 77): the single writer task that
//! appends events in group commits, and the verifier.
//!
//! Every event waits for its batch to be committed before the request that caused it
//! answers, so an acknowledged read is always audited; batching many events into one
//! transaction keeps the fsync cost per read small under load.

use agentkeys_types::api::AuditVerify;
use tokio::sync::{mpsc, oneshot};

use crate::store::chain::chain_hash;
use crate::store::{NewAuditEvent, Store, StoreError};

/// How many events one commit takes at most.
const MAX_BATCH: usize = 256;

type Job = (NewAuditEvent, oneshot::Sender<Result<i64, ()>>);

/// A handle to the audit writer task.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn start<S: Store>(
        store: std::sync::Arc<S>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(writer(store, rx, metrics));
        AuditLog { tx }
    }

    /// Appends one event and waits until it is committed; returns its position.
    pub async fn append(&self, event: NewAuditEvent) -> Result<i64, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx.send((event, done)).await.map_err(|_| AuditError)?;
        match wait.await {
            Ok(Ok(seq)) => Ok(seq),
            _ => Err(AuditError),
        }
    }
}

/// The audit log could not record an event; the request must fail closed.
#[derive(Debug, thiserror::Error)]
#[error("the audit log could not record the event")]
pub struct AuditError;

async fn writer<S: Store>(
    store: std::sync::Arc<S>,
    mut rx: mpsc::Receiver<Job>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Vec<NewAuditEvent> = batch.iter().map(|(e, _)| e.clone()).collect();
        let started = std::time::Instant::now();
        let result = store.append_audit(&events).await;
        if result.is_ok() {
            metrics.audit_committed(events.len(), started.elapsed());
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, events = events.len(), "audit append failed");
        }
        for (i, (_, done)) in batch.drain(..).enumerate() {
            let seq = match &result {
                Ok(seqs) => seqs.get(i).copied().ok_or(()),
                Err(_) => Err(()),
            };
            let _ = done.send(seq);
        }
    }
}

/// Walks the whole chain and reports the first broken link, as far as `visible` lets the
/// caller see: `checked` counts the visible rows that checked out, `head_hash` is the
/// newest visible row's hash, and a broken link's position is given only when that row is
/// visible (otherwise only that a link outside the caller's view is broken).
pub async fn verify<S: Store>(
    store: &S,
    visible: impl Fn(&NewAuditEvent) -> bool,
) -> Result<AuditVerify, StoreError> {
    const PAGE: u32 = 1000;
    let mut prev = vec![0u8; 32];
    let mut expected_seq = 1i64;
    let mut checked = 0u64;
    let mut head: Option<Vec<u8>> = None;
    loop {
        let rows = store.audit_page(expected_seq - 1, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let seen = visible(&row.event);
            let broken = |reason: &str| AuditVerify {
                ok: false,
                checked,
                first_broken_seq: seen.then_some(row.seq),
                reason: Some(if seen {
                    reason.to_owned()
                } else {
                    "a link outside your view is broken; tell the server's operator".to_owned()
                }),
                head_hash: None,
            };
            if row.seq != expected_seq {
                return Ok(broken("a row is missing before this one"));
            }
            if row.prev_hash != prev {
                return Ok(broken("prev_hash does not match the previous row's hash"));
            }
            if row.hash != chain_hash(&prev, row.seq, &row.event) {
                return Ok(broken("the row's content does not match its hash"));
            }
            prev.clone_from(&row.hash);
            expected_seq += 1;
            if seen {
                checked += 1;
                head = Some(row.hash.clone());
            }
        }
    }
    Ok(AuditVerify {
        ok: true,
        checked,
        first_broken_seq: None,
        reason: None,
        head_hash: head.map(|h| agentkeys_core::hex(&h)),
    })
}
