//! What the daemon knows is acknowledged, and the checkpoint that makes it durable.
//!
//! Acks arrive out of order; the Merkle tree needs leaves in offset order. The ledger keeps
//! the contiguous prefix folded into a [`MerkleBuilder`] (a carry stack, not a list) and
//! only the acks beyond it in a map — so a checkpoint stays small even for 100 GB files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uplink_proto::merkle::MerkleBuilder;
use uplink_proto::wire::MAX_FILE_SIZE;

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

    /// Whether a ledger read back from storage is one `ack` could have made (see
    /// [`Checkpoint::decode`]).
    pub fn is_consistent(&self) -> bool {
        let mut end = self.prefix_end();
        let mut bytes = self.prefix_end();
        for (&off, &(len, _)) in &self.pending {
            match off.checked_add(len) {
                Some(e) if off >= end && e <= MAX_FILE_SIZE => {
                    end = e;
                    bytes += len;
                }
                _ => return false,
            }
        }
        self.merkle.is_consistent()
            && self.acked_bytes == bytes
            && self.merkle.leaves().checked_add(self.pending.len() as u64)
                == Some(self.acked_chunks)
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

impl Checkpoint {
    /// Reads a checkpoint back (JSON, once unsealed) and checks it is one the engine could
    /// have written: a ledger that folds, chunks inside the largest file and not
    /// overlapping. Code that resumes from it does arithmetic on these numbers.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !cp.ledger.is_consistent() {
            return Err("its ledger is not one acknowledgements could make".into());
        }
        if cp.dispatched_until > MAX_FILE_SIZE {
            return Err(format!(
                "it dispatched up to {}, past the largest file",
                cp.dispatched_until
            ));
        }
        let mut end = 0u64;
        for (&off, sent) in &cp.crcs {
            match off.checked_add(sent.len) {
                Some(e) if off >= end && e <= MAX_FILE_SIZE => end = e,
                _ => return Err(format!("its chunk at {off} overlaps or lies past the end")),
            }
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_decodes_only_if_acknowledgements_could_have_made_it() {
        let mut ledger = Ledger::new();
        ledger.ack(0, 10, [1; 32]);
        ledger.ack(10, 10, [2; 32]);
        ledger.ack(40, 10, [3; 32]);
        let good = Checkpoint {
            upload_id: "u".into(),
            ledger,
            dispatched_until: 50,
            ..Checkpoint::default()
        };
        let json = serde_json::to_value(&good).unwrap();
        assert_eq!(Checkpoint::decode(json.to_string().as_bytes()), Ok(good));
        let altered = |path: &[&str], v: serde_json::Value| {
            let mut j = json.clone();
            let mut at = &mut j;
            for key in path {
                at = &mut at[*key];
            }
            *at = v;
            Checkpoint::decode(j.to_string().as_bytes())
        };
        let max = serde_json::json!(u64::MAX);
        assert!(altered(&["ledger", "acked_bytes"], max.clone()).is_err());
        assert!(altered(&["ledger", "acked_chunks"], serde_json::json!(2)).is_err());
        assert!(altered(&["ledger", "merkle", "next_offset"], max.clone()).is_err());
        assert!(altered(&["ledger", "merkle", "leaves"], serde_json::json!(3)).is_err());
        assert!(altered(&["dispatched_until"], max).is_err());
        let overlapping = serde_json::json!({"15": [10, vec![3u8; 32]]});
        assert!(altered(&["ledger", "pending"], overlapping).is_err());
    }

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
