//! What the daemon knows is acknowledged, and the checkpoint that makes it durable.
//!
//! Acks arrive out of order; the Merkle tree needs leaves in offset order. The ledger keeps
//! the contiguous prefix folded into a [`MerkleBuilder`] (a carry stack, not a list) and
//! only the acks beyond it in a map — so a checkpoint stays small even for 100 GB files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uplink_proto::merkle::MerkleBuilder;

/// One acknowledged chunk: length and SHA-256 as hashed by the daemon.
pub type Leaf = (u64, [u8; 32]);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    merkle: MerkleBuilder,
    /// offset -> leaf, for acks beyond the contiguous prefix.
    pending: BTreeMap<u64, Leaf>,
    acked_bytes: u64,
    acked_chunks: u64,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records an ack; a repeat of a known ack is ignored.
    pub fn ack(&mut self, offset: u64, length: u64, sha256: [u8; 32]) {
        if self.contains(offset) {
            return;
        }
        self.pending.insert(offset, (length, sha256));
        self.acked_bytes += length;
        self.acked_chunks += 1;
        while let Some((len, sha)) = self.pending.remove(&self.merkle.next_offset()) {
            let off = self.merkle.next_offset();
            // Cannot fail: `off` is exactly the builder's next offset.
            let _ = self.merkle.push(off, len, &sha);
        }
    }

    /// Is a chunk starting at `offset` acknowledged?
    pub fn contains(&self, offset: u64) -> bool {
        offset < self.merkle.next_offset() || self.pending.contains_key(&offset)
    }

    /// The leaf of an ack beyond the prefix (prefix leaves are folded away).
    pub fn pending_leaf(&self, offset: u64) -> Option<&Leaf> {
        self.pending.get(&offset)
    }

    /// Bytes `[0, prefix_end)` are acknowledged and folded into the tree.
    pub fn prefix_end(&self) -> u64 {
        self.merkle.next_offset()
    }

    /// Acknowledged ranges, in offset order.
    pub fn covered(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::with_capacity(self.pending.len() + 1);
        if self.prefix_end() > 0 {
            v.push((0, self.prefix_end()));
        }
        v.extend(self.pending.iter().map(|(o, (l, _))| (*o, *l)));
        v
    }

    pub fn acked_bytes(&self) -> u64 {
        self.acked_bytes
    }

    pub fn acked_chunks(&self) -> u64 {
        self.acked_chunks
    }

    /// The Merkle root once every byte of a `size`-byte file is acknowledged.
    pub fn root_if_complete(&self, size: u64) -> Option<[u8; 32]> {
        (self.pending.is_empty() && self.merkle.next_offset() == size).then(|| self.merkle.root())
    }
}

/// The durable state of one upload (stored sealed with AES-GCM).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub upload_id: String,
    pub ledger: Ledger,
    /// End of the highest chunk handed to a sender so far: after a crash, a chunk below
    /// this that the server lacks was (probably) sent before and counts as re-sent.
    pub dispatched_until: u64,
    pub chunks_sent: u64,
    pub chunks_resent: u64,
    #[serde(default)]
    pub bytes_resent: u64,
    /// A live job's acknowledged chunks with their CRC32C, for the re-scan before it
    /// completes (empty for a job enqueued finished).
    #[serde(default)]
    pub crcs: super::rescan::ChunkCrcs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[test]
    fn out_of_order_acks_give_the_in_order_root() {
        let mut inorder = Ledger::new();
        let mut shuffled = Ledger::new();
        for i in 0..10u64 {
            inorder.ack(i * 4, 4, sha(i as u8));
        }
        for i in [3u64, 0, 9, 1, 2, 8, 4, 7, 5, 6] {
            assert_eq!(shuffled.root_if_complete(40), None);
            shuffled.ack(i * 4, 4, sha(i as u8));
        }
        assert_eq!(shuffled.root_if_complete(40), inorder.root_if_complete(40));
        assert!(shuffled.root_if_complete(40).is_some());
        assert_eq!(shuffled.acked_bytes(), 40);
    }

    #[test]
    fn covered_lists_the_prefix_then_the_islands() {
        let mut l = Ledger::new();
        l.ack(0, 4, sha(0));
        l.ack(4, 4, sha(1));
        l.ack(12, 4, sha(3));
        assert_eq!(l.covered(), vec![(0, 8), (12, 4)]);
        assert!(l.contains(4) && l.contains(12) && !l.contains(8));
        l.ack(12, 4, sha(3));
        assert_eq!(l.acked_chunks(), 3, "a repeated ack is not counted twice");
    }
}
