//! Where a run starts: the local checkpoint reconciled with the server's state.
//!
//! The server's state is the truth about what is stored; the checkpoint is the truth about
//! what the daemon itself hashed. The server answers in byte ranges, so the first question
//! costs a few numbers however many chunks there are (a 100 GB file in 1 MiB chunks is
//! 100,000 of them). Chunk records (boundaries and hashes) are fetched in pages, and only
//! from where the checkpoint's folded prefix ends: normally just the chunks that were in
//! flight at the crash. A chunk the server holds but the checkpoint does not know is
//! re-read and re-hashed locally — not re-sent — and accepted only if the hashes agree.

use std::collections::BTreeMap;

use uplink_proto::chain::FileState;

use super::ledger::{Checkpoint, Ledger};

/// A chunk as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerChunk {
    pub offset: u64,
    pub length: u64,
    pub sha256: [u8; 32],
    /// It came as a link of the file's hash from this state: `sha256` is the link's.
    pub from: Option<FileState>,
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

/// Where the chunk records a resume needs begin: the end of the checkpoint's folded
/// prefix when the server's ranges hold all of it, else 0 (the checkpoint is no use).
pub fn chunks_needed_from(checkpoint: Option<&Checkpoint>, ranges: &[[u64; 2]]) -> u64 {
    checkpoint.map_or(0, |c| prefix_held(&c.ledger, ranges))
}

/// Reconciles the checkpoint with the server: `ranges` is what the server holds, `chunks`
/// its records at offsets `>= chunks_from` (see [`chunks_needed_from`]). A discarded
/// checkpoint's plan lists only the chunks it was given: with `chunks_from > 0` the caller
/// fetches from 0 and reconciles again without the checkpoint.
pub fn reconcile(
    size: u64,
    checkpoint: Option<&Checkpoint>,
    ranges: &[[u64; 2]],
    chunks_from: u64,
    chunks: &[ServerChunk],
) -> ResumePlan {
    let on_server: BTreeMap<u64, &ServerChunk> = chunks.iter().map(|c| (c.offset, c)).collect();
    let mut discarded = false;
    let ledger = match checkpoint {
        Some(cp) if server_holds(&cp.ledger, ranges, chunks_from, &on_server) => cp.ledger.clone(),
        Some(_) => {
            discarded = true;
            Ledger::new()
        }
        None => Ledger::new(),
    };
    let verify: Vec<ServerChunk> = chunks
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
fn server_holds(
    ledger: &Ledger,
    ranges: &[[u64; 2]],
    chunks_from: u64,
    on_server: &BTreeMap<u64, &ServerChunk>,
) -> bool {
    // The folded prefix must lie inside the server's first range, and the records we were
    // given must reach back to it.
    if prefix_held(ledger, ranges) != ledger.prefix_end() || chunks_from > ledger.prefix_end() {
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

/// The ledger's prefix end if the server's first range holds the whole prefix, else 0.
fn prefix_held(ledger: &Ledger, ranges: &[[u64; 2]]) -> u64 {
    let end = ledger.prefix_end();
    if end == 0 || ranges.first().is_some_and(|r| r[0] == 0 && r[1] >= end) {
        end
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u64) -> ServerChunk {
        ServerChunk {
            offset: i * 4,
            length: 4,
            sha256: [i as u8; 32],
            from: None,
        }
    }

    fn ranges(server: &[ServerChunk]) -> Vec<[u64; 2]> {
        let mut out: Vec<[u64; 2]> = Vec::new();
        for c in server {
            match out.last_mut() {
                Some(r) if r[1] == c.offset => r[1] += c.length,
                _ => out.push([c.offset, c.offset + c.length]),
            }
        }
        out
    }

    /// What the driver does: records from where the checkpoint needs them, and all of them
    /// again if the checkpoint turns out wrong.
    fn plan(size: u64, cp: Option<&Checkpoint>, server: &[ServerChunk]) -> ResumePlan {
        let r = ranges(server);
        let from = chunks_needed_from(cp, &r);
        let tail: Vec<_> = server
            .iter()
            .filter(|c| c.offset >= from)
            .copied()
            .collect();
        let p = reconcile(size, cp, &r, from, &tail);
        if p.checkpoint_discarded && from > 0 {
            let again = reconcile(size, None, &r, 0, server);
            return ResumePlan {
                checkpoint_discarded: true,
                ..again
            };
        }
        p
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
        let p = plan(10, None, &[]);
        assert!(p.verify.is_empty());
        assert_eq!(p.ledger, Ledger::new());
    }

    #[test]
    fn chunks_acked_after_the_checkpoint_are_verified_not_resent() {
        // Checkpoint knows 0..=2; the server also got 3 and 5; 4, 6, 7 were lost in flight.
        let cp = checkpoint(&[0, 1, 2]);
        let server: Vec<_> = [0, 1, 2, 3, 5].map(chunk).to_vec();
        let p = plan(32, Some(&cp), &server);
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
        let p = plan(16, Some(&cp), &server);
        assert!(p.checkpoint_discarded);
        assert_eq!(p.ledger, Ledger::new());
        assert_eq!(p.verify, server);
    }

    #[test]
    fn a_different_hash_on_the_server_drops_the_checkpoint() {
        let cp = checkpoint(&[1]);
        let mut other = chunk(1);
        other.sha256 = [99; 32];
        let p = plan(8, Some(&cp), &[other]);
        assert!(p.checkpoint_discarded);
        assert_eq!(p.verify, vec![other]);
    }

    #[test]
    fn a_resume_asks_only_for_the_records_past_the_checkpoint_prefix() {
        // 99,997 chunks on the server; the checkpoint folded the first 99,992; 5 landed
        // after it was written.
        let server: Vec<_> = (0..99_997).map(chunk).collect();
        let cp = checkpoint(&(0..99_992).collect::<Vec<_>>());
        let r = ranges(&server);
        assert_eq!(r, vec![[0, 99_997 * 4]]);
        let from = chunks_needed_from(Some(&cp), &r);
        assert_eq!(from, 99_992 * 4);
        let tail: Vec<_> = server
            .iter()
            .filter(|c| c.offset >= from)
            .copied()
            .collect();
        let p = reconcile(400_000, Some(&cp), &r, from, &tail);
        assert!(!p.checkpoint_discarded);
        assert_eq!(p.verify.len(), 5);
        assert_eq!(p.ledger.acked_chunks(), 99_992);
    }

    #[test]
    fn a_prefix_the_server_ranges_do_not_hold_asks_for_everything() {
        let cp = checkpoint(&[0, 1, 2]);
        // The server lost chunk 1.
        let server: Vec<_> = [0, 2].map(chunk).to_vec();
        assert_eq!(chunks_needed_from(Some(&cp), &ranges(&server)), 0);
        let p = plan(12, Some(&cp), &server);
        assert!(p.checkpoint_discarded);
        assert_eq!(p.verify, server);
    }

    #[test]
    fn records_that_start_past_the_prefix_cannot_confirm_it() {
        let cp = checkpoint(&[0, 1]);
        let server: Vec<_> = [0, 1, 2].map(chunk).to_vec();
        let p = reconcile(12, Some(&cp), &ranges(&server), 12, &[]);
        assert!(p.checkpoint_discarded);
    }
}
