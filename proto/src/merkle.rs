//! RFC 6962 Merkle tree hash over an upload's chunks, in offset order.
//!
//! A leaf is `offset (u64 LE) || length (u64 LE) || sha256` of one chunk, hashed as
//! `SHA-256(0x00 || leaf)`; an inner node is `SHA-256(0x01 || left || right)`.
//! [`MerkleBuilder`] adds leaves one at a time and keeps only a carry stack of perfect
//! subtrees (at most 64 entries), so the daemon can checkpoint it cheaply at any point.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Leaf hash of one chunk.
pub fn leaf_hash(offset: u64, length: u64, sha256: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(offset.to_le_bytes());
    h.update(length.to_le_bytes());
    h.update(sha256);
    h.finalize().into()
}

/// Inner node hash.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A chunk was added out of order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfOrder {
    pub expected_offset: u64,
    pub got_offset: u64,
}

impl std::fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chunk at offset {} added to the Merkle tree, expected offset {}",
            self.got_offset, self.expected_offset
        )
    }
}

impl std::error::Error for OutOfOrder {}

/// Incremental RFC 6962 tree over contiguous chunks starting at offset 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleBuilder {
    /// Perfect subtrees, oldest (largest) first: (height, hash).
    stack: Vec<(u8, [u8; 32])>,
    leaves: u64,
    next_offset: u64,
}

impl MerkleBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves added.
    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    /// The byte offset the next chunk must start at.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Adds the chunk that starts where the previous one ended.
    pub fn push(&mut self, offset: u64, length: u64, sha256: &[u8; 32]) -> Result<(), OutOfOrder> {
        if offset != self.next_offset {
            return Err(OutOfOrder {
                expected_offset: self.next_offset,
                got_offset: offset,
            });
        }
        let mut node = (0u8, leaf_hash(offset, length, sha256));
        while let Some(&(height, left)) = self.stack.last() {
            if height != node.0 {
                break;
            }
            self.stack.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.leaves += 1;
        self.next_offset = offset + length;
        Ok(())
    }

    /// Whether a builder read back from storage is one `push` could have made: subtree
    /// heights strictly falling, their sizes summing to the leaf count, and an end
    /// offset inside the largest file. (Code that continues a builder relies on it.)
    pub fn is_consistent(&self) -> bool {
        let falling = self.stack.windows(2).all(|w| w[0].0 > w[1].0);
        let sizes = self.stack.iter().try_fold(0u64, |n, &(h, _)| {
            (h < 64).then(|| n.checked_add(1u64 << h)).flatten()
        });
        falling && sizes == Some(self.leaves) && self.next_offset <= crate::wire::MAX_FILE_SIZE
    }

    /// The tree hash of the leaves so far (SHA-256 of nothing for no leaves).
    pub fn root(&self) -> [u8; 32] {
        let mut iter = self.stack.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return Sha256::digest([]).into();
        };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Root over a complete list of `(offset, length, sha256)` in offset order.
pub fn root_of<'a>(
    chunks: impl IntoIterator<Item = (u64, u64, &'a [u8; 32])>,
) -> Result<[u8; 32], OutOfOrder> {
    let mut b = MerkleBuilder::new();
    for (offset, length, sha) in chunks {
        b.push(offset, length, sha)?;
    }
    Ok(b.root())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 section 2.1, written recursively as the RFC states it.
    fn reference_root(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                // k is the largest power of two strictly less than n.
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn incremental_root_equals_the_rfc_definition_for_every_size() {
        for n in 0..70u64 {
            let chunks: Vec<(u64, u64, [u8; 32])> = (0..n)
                .map(|i| (i * 10, 10, Sha256::digest(i.to_le_bytes()).into()))
                .collect();
            let leaves: Vec<[u8; 32]> = chunks
                .iter()
                .map(|(o, l, s)| leaf_hash(*o, *l, s))
                .collect();
            let root = root_of(chunks.iter().map(|(o, l, s)| (*o, *l, s))).unwrap();
            assert_eq!(root, reference_root(&leaves), "n = {n}");
        }
    }

    #[test]
    fn split_point_is_the_largest_power_of_two_below_n() {
        let l: Vec<[u8; 32]> = (0..7u8).map(|i| [i; 32]).collect();
        let expect = node_hash(
            &node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3])),
            &node_hash(&node_hash(&l[4], &l[5]), &l[6]),
        );
        assert_eq!(reference_root(&l), expect);
    }

    #[test]
    fn out_of_order_is_refused() {
        let mut b = MerkleBuilder::new();
        b.push(0, 4, &[1; 32]).unwrap();
        assert_eq!(
            b.push(8, 4, &[2; 32]),
            Err(OutOfOrder {
                expected_offset: 4,
                got_offset: 8
            })
        );
    }

    #[test]
    fn a_checkpointed_builder_continues_identically() {
        let mut a = MerkleBuilder::new();
        for i in 0..13u64 {
            a.push(i * 3, 3, &[i as u8; 32]).unwrap();
        }
        let saved = serde_json::to_string(&a).unwrap();
        let mut b: MerkleBuilder = serde_json::from_str(&saved).unwrap();
        for i in 13..29u64 {
            a.push(i * 3, 3, &[i as u8; 32]).unwrap();
            b.push(i * 3, 3, &[i as u8; 32]).unwrap();
        }
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn leaf_binds_offset_and_length() {
        let s = [9u8; 32];
        assert_ne!(leaf_hash(0, 4, &s), leaf_hash(4, 4, &s));
        assert_ne!(leaf_hash(0, 4, &s), leaf_hash(0, 5, &s));
    }
}
