//! In the object store, the whole-file SHA-256 kept up on the node that takes the chunks,
//! so that `complete` need not read the file back from the store to hash it.
//!
//! A chunk stored at the hash's frontier is hashed from the request's bytes, still in
//! memory. One stored ahead of it (a dozen are in flight at once) keeps its bytes here until
//! the frontier reaches it, within a budget for the whole process (a quarter of
//! `--max-buffered-bytes`, [`set_budget`]); past that it is not kept, the frontier stops
//! there, and `complete` reads the rest back from the store. The
//! chunks hashed are recorded with their CRC32C, so `complete` can check they are the very
//! chunks it assembles (another node may have taken a newer chunk for some range) and can
//! give the store the checksums of the parts it copies without reading them. A chunk that
//! came as a link of the file's hash from the very state the hash holds is not hashed
//! again: the hash jumps to the link's end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use uplink_proto::chain::FileState;
use uplink_proto::integrity::ChunkDigest;

use super::Link;

/// Bytes of chunks ahead of their session's frontier kept in memory, all sessions together.
static BUDGET: AtomicU64 = AtomicU64::new(64 << 20);
static AHEAD: AtomicU64 = AtomicU64::new(0);

/// Sets how many bytes of chunks all sessions may keep ahead of their frontiers.
pub fn set_budget(bytes: u64) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

/// One chunk the hash went over: where, its length and digests, and its link if it came
/// as one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hashed {
    pub offset: u64,
    pub length: u64,
    pub digest: ChunkDigest,
    pub link: Option<Link>,
}

/// The hash of a file's first bytes, as the chunks came.
#[derive(Default)]
pub struct FileHash {
    sha: FileState,
    /// Bytes [0, frontier) are hashed.
    frontier: u64,
    /// Of those, bytes jumped over on links, and bytes hashed (a second pass).
    linked: u64,
    hashed: u64,
    /// The chunks hashed, in file order.
    covered: Vec<Hashed>,
    /// offset -> a chunk stored past the frontier, with its bytes.
    ahead: BTreeMap<u64, (Hashed, Vec<Bytes>)>,
}

/// Where `complete` starts: the hash over the first `covered.len()` chunks it assembles.
pub struct Resumed {
    pub sha: FileState,
    pub frontier: u64,
    /// Of the bytes before `frontier`, those jumped over on links and those hashed.
    pub linked: u64,
    pub hashed: u64,
    pub covered: Vec<Hashed>,
}

impl FileHash {
    /// A chunk was stored (its bytes `parts`).
    pub fn offer(&mut self, chunk: Hashed, parts: &[Bytes]) {
        let offset = chunk.offset;
        if offset < self.frontier {
            if self.covered.contains(&chunk) {
                // The same chunk again (a retry, or two requests at once): hashed already.
                return;
            }
            // Bytes already hashed were replaced: start over (what is ahead stays good).
            self.sha = FileState::start();
            self.frontier = 0;
            (self.linked, self.hashed) = (0, 0);
            self.covered.clear();
        }
        if offset != self.frontier {
            self.keep_ahead(offset, chunk, parts);
            return;
        }
        self.hash(chunk, parts);
        while let Some((chunk, parts)) = self.take_ahead(self.frontier) {
            self.hash(chunk, &parts);
        }
    }

    fn hash(&mut self, chunk: Hashed, parts: &[Bytes]) {
        match chunk.link {
            Some(link) if link.from == self.sha => {
                self.sha = link.to;
                self.linked += chunk.length;
            }
            _ => {
                parts.iter().for_each(|p| self.sha.update(p));
                self.hashed += chunk.length;
            }
        }
        self.frontier += chunk.length;
        self.covered.push(chunk);
    }

    fn keep_ahead(&mut self, offset: u64, chunk: Hashed, parts: &[Bytes]) {
        // A chunk kept for this offset before is replaced by the newer one.
        drop(self.take_ahead(offset));
        let claimed = AHEAD.fetch_add(chunk.length, Ordering::SeqCst) + chunk.length;
        if claimed > BUDGET.load(Ordering::Relaxed) {
            AHEAD.fetch_sub(chunk.length, Ordering::SeqCst);
            return;
        }
        self.ahead.insert(offset, (chunk, parts.to_vec()));
    }

    fn take_ahead(&mut self, offset: u64) -> Option<(Hashed, Vec<Bytes>)> {
        let taken = self.ahead.remove(&offset)?;
        AHEAD.fetch_sub(taken.0.length, Ordering::SeqCst);
        Some(taken)
    }

    /// The hash over the longest run of `chunks` (file order: offset, length, SHA-256) that
    /// it went over; from the start if it went over anything else there.
    pub fn resume<'a>(&self, chunks: impl Iterator<Item = (u64, u64, &'a [u8; 32])>) -> Resumed {
        let matches = chunks
            .zip(&self.covered)
            .take_while(|((o, l, sha), h)| {
                *o == h.offset && *l == h.length && **sha == h.digest.sha256
            })
            .count();
        match matches == self.covered.len() {
            true => Resumed {
                sha: self.sha,
                frontier: self.frontier,
                linked: self.linked,
                hashed: self.hashed,
                covered: self.covered.clone(),
            },
            false => Resumed {
                sha: FileState::start(),
                frontier: 0,
                linked: 0,
                hashed: 0,
                covered: Vec::new(),
            },
        }
    }

    /// Bytes kept ahead of the frontier (for tests).
    #[cfg(test)]
    pub fn ahead_bytes(&self) -> u64 {
        self.ahead.values().map(|(h, _)| h.length).sum()
    }
}

impl Drop for FileHash {
    fn drop(&mut self) {
        let kept: u64 = self.ahead.values().map(|(h, _)| h.length).sum();
        AHEAD.fetch_sub(kept, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: usize, data: &[u8]) -> (Hashed, Vec<Bytes>) {
        let digest = ChunkDigest {
            sha256: uplink_proto::integrity::sha256(data),
            crc32c: crc32c::crc32c(data),
        };
        let h = Hashed {
            offset: offset as u64,
            length: data.len() as u64,
            digest,
            link: None,
        };
        // Two pieces, as a body arrives.
        let mid = data.len() / 2;
        let parts = vec![
            Bytes::copy_from_slice(&data[..mid]),
            Bytes::copy_from_slice(&data[mid..]),
        ];
        (h, parts)
    }

    fn records(data: &[u8], cuts: &[usize]) -> Vec<(u64, u64, [u8; 32])> {
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let sha = uplink_proto::integrity::sha256(&data[at..c]);
            out.push((at as u64, (c - at) as u64, sha));
            at = c;
        }
        out
    }

    #[test]
    fn chunks_in_any_order_give_the_file_hash_and_keep_nothing_after() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let cuts = [1000, 4000, 4500, 9000, 10_000];
        let pieces: Vec<(u64, &[u8])> = {
            let mut at = 0;
            cuts.iter()
                .map(|&c| {
                    let p = (at as u64, &data[at..c]);
                    at = c;
                    p
                })
                .collect()
        };
        for order in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]] {
            let mut h = FileHash::default();
            for i in order {
                let (c, parts) = chunk(pieces[i].0 as usize, pieces[i].1);
                h.offer(c, &parts);
            }
            assert_eq!(h.ahead_bytes(), 0);
            let recs = records(&data, &cuts);
            let r = h.resume(recs.iter().map(|(o, l, s)| (*o, *l, s)));
            assert_eq!(r.frontier, 10_000);
            assert_eq!(r.covered.len(), 5);
            let got: [u8; 32] = r.sha.finish();
            assert_eq!(got, uplink_proto::integrity::sha256(&data), "{order:?}");
        }
    }

    /// The first chunk's bytes given are not its own: the hash is right only if it jumped
    /// over them on the link. The second's link starts from a state the hash does not
    /// hold: its bytes are hashed.
    #[test]
    fn a_link_from_the_hash_state_is_jumped_and_one_from_elsewhere_hashed() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 3 % 251) as u8).collect();
        let mut h = FileHash::default();
        let mut to = FileState::start();
        to.update(&data[..2000]);
        let (mut first, _) = chunk(0, &data[..2000]);
        first.link = Some(Link {
            from: FileState::start(),
            to,
        });
        h.offer(first, &[Bytes::from(vec![0u8; 2000])]);
        let (mut second, parts) = chunk(2000, &data[2000..]);
        let mut elsewhere = FileState::start();
        elsewhere.update(&[9u8; 2000]);
        second.link = Some(Link {
            from: elsewhere,
            to: elsewhere,
        });
        h.offer(second, &parts);
        let recs = records(&data, &[2000, 5000]);
        let r = h.resume(recs.iter().map(|(o, l, s)| (*o, *l, s)));
        assert_eq!(r.sha.finish(), uplink_proto::integrity::sha256(&data));
        assert_eq!((r.linked, r.hashed), (2000, 3000));
    }

    #[test]
    fn a_replaced_chunk_or_another_tiling_starts_the_hash_over() {
        let data = vec![5u8; 3000];
        let mut h = FileHash::default();
        for (at, end) in [(0, 1000), (1000, 2000)] {
            let (c, parts) = chunk(at, &data[at..end]);
            h.offer(c, &parts);
        }
        // The first again (a retry): nothing changes.
        let (c, parts) = chunk(0, &data[0..1000]);
        h.offer(c, &parts);
        assert_eq!(h.frontier, 2000);
        // Complete assembles other chunks for [1000, 2000) (another node took a newer one).
        let other = records(&data, &[1000, 1500, 2000, 3000]);
        let r = h.resume(other.iter().map(|(o, l, s)| (*o, *l, s)));
        assert_eq!((r.frontier, r.covered.len()), (0, 0));
        // The same chunks, and more: resumes after the two it hashed.
        let same = records(&data, &[1000, 2000, 3000]);
        let r = h.resume(same.iter().map(|(o, l, s)| (*o, *l, s)));
        assert_eq!((r.frontier, r.covered.len()), (2000, 2));
        // Other bytes behind the frontier: nothing hashed counts any more.
        let (c, parts) = chunk(0, &[6u8; 1000]);
        h.offer(c, &parts);
        assert_eq!((h.frontier, h.covered.len()), (1000, 1));
    }
}
