//! The audit chain's link hash: what every append writes and the verifier checks
//! (decision 77). It sits in the store, below the audit writer, because both
//! engines' appenders compute it inside their transactions.

use sha2::{Digest as _, Sha256};

use super::NewAuditEvent;

/// The hash of one chain link: SHA-256 over the previous hash, the position and every
/// field, each length-prefixed so no two events share an encoding.
pub(crate) fn chain_hash(prev: &[u8], seq: i64, e: &NewAuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"agentkeys-audit-v1\0");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.ts.to_be_bytes());
    for part in [
        Some(e.actor.as_bytes()),
        e.agent.as_deref().map(str::as_bytes),
        e.service.as_deref().map(str::as_bytes),
        Some(e.action.as_bytes()),
        Some(e.outcome.as_bytes()),
        e.detail.as_deref().map(str::as_bytes),
    ] {
        match part {
            None => h.update([0u8]),
            Some(b) => {
                h.update([1u8]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str) -> NewAuditEvent {
        NewAuditEvent {
            ts: 1,
            actor: "a".into(),
            agent: None,
            service: Some("s".into()),
            action: action.into(),
            outcome: "ok".into(),
            detail: None,
        }
    }

    #[test]
    fn the_hash_covers_every_field_and_the_link() {
        let base = chain_hash(&[0; 32], 1, &ev("read"));
        assert_ne!(base, chain_hash(&[1; 32], 1, &ev("read")));
        assert_ne!(base, chain_hash(&[0; 32], 2, &ev("read")));
        assert_ne!(base, chain_hash(&[0; 32], 1, &ev("store")));
        let mut moved = ev("read");
        moved.agent = Some("s".into());
        moved.service = None;
        assert_ne!(base, chain_hash(&[0; 32], 1, &moved));
    }
}
