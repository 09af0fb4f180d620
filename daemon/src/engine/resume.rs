//! Where a run starts: the local checkpoint reconciled with the server's state.
//!
//! The server's list of received chunks is the truth about what is stored; the checkpoint
//! is the truth about what the daemon itself hashed. A chunk the server holds but the
//! checkpoint does not know (acked after the last checkpoint) is re-read and re-hashed
//! locally — not re-sent — and accepted only if the hashes agree.

use std::collections::BTreeMap;

use super::ledger::{Checkpoint, Ledger};

/// A chunk as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerChunk {
    pub offset: u64,
    pub length: u64,
    pub sha256: [u8; 32],
}

/// The starting point of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// Acks the daemon can trust without reading anything.
    pub ledger: Ledger,
    /// Chunks the server holds that must be re-hashed locally before they count. What
    /// neither covers is sent (the engine cuts it into chunks).
    pub verify: Vec<ServerChunk>,
    /// Chunks below this end were handed to senders in an earlier run.
    pub dispatched_until: u64,
    /// The checkpoint disagreed with the server and was dropped.
    pub checkpoint_discarded: bool,
}

pub fn reconcile(size: u64, checkpoint: Option<&Checkpoint>, server: &[ServerChunk]) -> ResumePlan {
    let on_server: BTreeMap<u64, &ServerChunk> = server.iter().map(|c| (c.offset, c)).collect();
    let mut discarded = false;
    let ledger = match checkpoint {
        Some(cp) if server_holds(&cp.ledger, &on_server) => cp.ledger.clone(),
        Some(_) => {
            discarded = true;
            Ledger::new()
        }
        None => Ledger::new(),
    };
    let verify: Vec<ServerChunk> = server
        .iter()
        .filter(|c| !ledger.contains(c.offset) && c.offset.saturating_add(c.length) <= size)
        .copied()
        .collect();
    ResumePlan {
        ledger,
        verify,
        dispatched_until: checkpoint.map(|c| c.dispatched_until).unwrap_or(0),
        checkpoint_discarded: discarded,
    }
}

/// Does the server hold every chunk the ledger counts as acknowledged?
fn server_holds(ledger: &Ledger, on_server: &BTreeMap<u64, &ServerChunk>) -> bool {
    // The folded prefix must be covered contiguously.
    let mut at = 0u64;
    for c in on_server.range(..ledger.prefix_end()).map(|(_, c)| c) {
        if c.offset != at {
            return false;
        }
        at = c.offset + c.length;
    }
    if at != ledger.prefix_end() {
        return false;
    }
    // Acks beyond the prefix must match the server's chunks exactly.
    ledger
        .covered()
        .iter()
        .skip(usize::from(ledger.prefix_end() > 0))
        .all(
            |&(off, len)| match (on_server.get(&off), ledger.pending_leaf(off)) {
                (Some(c), Some((l, sha))) => c.length == len && *l == len && c.sha256 == *sha,
                _ => false,
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u64) -> ServerChunk {
        ServerChunk {
            offset: i * 4,
            length: 4,
            sha256: [i as u8; 32],
        }
    }

    fn checkpoint(acked: &[u64]) -> Checkpoint {
        let mut ledger = Ledger::new();
        for &i in acked {
            let c = chunk(i);
            ledger.ack(c.offset, c.length, c.sha256);
        }
        Checkpoint {
            upload_id: "u".into(),
            ledger,
            dispatched_until: 40,
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_upload_has_nothing_to_verify() {
        let p = reconcile(10, None, &[]);
        assert!(p.verify.is_empty());
        assert_eq!(p.ledger, Ledger::new());
    }

    #[test]
    fn chunks_acked_after_the_checkpoint_are_verified_not_resent() {
        // Checkpoint knows 0..=2; the server also got 3 and 5; 4, 6, 7 were lost in flight.
        let cp = checkpoint(&[0, 1, 2]);
        let server: Vec<_> = [0, 1, 2, 3, 5].map(chunk).to_vec();
        let p = reconcile(32, Some(&cp), &server);
        assert_eq!(p.verify, vec![chunk(3), chunk(5)]);
        assert_eq!(p.ledger.acked_chunks(), 3);
        assert!(!p.checkpoint_discarded);
        assert_eq!(p.dispatched_until, 40);
    }

    #[test]
    fn a_checkpoint_the_server_contradicts_is_dropped() {
        let cp = checkpoint(&[0, 1, 3]);
        // The server lost chunk 3 (say it was restored from an older backup).
        let server: Vec<_> = [0, 1].map(chunk).to_vec();
        let p = reconcile(16, Some(&cp), &server);
        assert!(p.checkpoint_discarded);
        assert_eq!(p.ledger, Ledger::new());
        assert_eq!(p.verify, server);
    }

    #[test]
    fn a_different_hash_on_the_server_drops_the_checkpoint() {
        let cp = checkpoint(&[1]);
        let mut other = chunk(1);
        other.sha256 = [99; 32];
        let p = reconcile(8, Some(&cp), &[other]);
        assert!(p.checkpoint_discarded);
        assert_eq!(p.verify, vec![other]);
    }
}
