//! The file an upload is assembled in, and what makes writing to it fast and durable.
//!
//! - **Group commit.** Every acknowledged chunk must be on disk, but one `fdatasync` per
//!   chunk, with a dozen chunks arriving at once, makes the disk the bottleneck and
//!   stalls writers behind each other. [`GroupSync`] lets one sync cover every write that
//!   finished before it started: writers that arrive while a sync runs usually find their
//!   write already covered when it ends.
//! - **Running file hash.** `complete` answers the whole file's SHA-256. Hashing 100 GB
//!   at the end would be a long serial tail, so a running hash follows the contiguous
//!   prefix of stored chunks as they arrive (from the request's bytes while they are in
//!   memory, else from the page cache); `complete` only hashes what is left. A chunk that
//!   came as a link of the file's hash is not hashed a second time: the hash jumps over it.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use uplink_proto::chain::FileState;

use crate::store::Link;

/// Pieces of a body below this size (QUIC packets' data) are written together.
const SMALL_PIECE: usize = 12 * 1024;
/// The most pieces one vectored write takes (`IOV_MAX` on Linux and macOS).
const MAX_IOVECS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Many writers, few syncs.
#[derive(Default)]
pub struct GroupSync {
    /// Writes completed so far.
    written: AtomicU64,
    /// Writes known durable; the mutex also serialises the syncs themselves.
    synced: Mutex<u64>,
}

impl GroupSync {
    /// Call after a write to `file` completed; returns once that write is durable.
    pub fn sync(&self, file: &File) -> std::io::Result<()> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = lock(&self.synced);
        if *synced >= mine {
            return Ok(());
        }
        // Every write counted up to here finished before this sync starts.
        let covered = self.written.load(Ordering::SeqCst);
        file.sync_data()?;
        *synced = covered;
        Ok(())
    }
}

struct RunningHash {
    sha: FileState,
    tally: HashTally,
    /// Bytes [0, frontier) are hashed.
    frontier: u64,
    /// A read failed mid-way; `finish` starts over from the file.
    broken: bool,
}

/// How the running hash came by its bytes: what it costs beyond verifying each chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashTally {
    /// Bytes it jumped over on their chunks' links: no second pass.
    pub linked: u64,
    /// Bytes it hashed a second time (from a request's bytes or the file).
    pub hashed: u64,
}

/// The part file of one upload, with its chunk log.
pub struct PartFile {
    file: File,
    /// Held while a chunk's bytes are written (see [`PartFile::write_durable`]).
    writing: Mutex<()>,
    data_sync: GroupSync,
    log: Mutex<File>,
    /// A second handle on the log, so syncing never waits for the append lock.
    log_for_sync: File,
    log_sync: GroupSync,
    hash: Mutex<RunningHash>,
}

impl PartFile {
    pub fn new(file: File, log: File) -> std::io::Result<PartFile> {
        Ok(PartFile {
            file,
            writing: Mutex::new(()),
            data_sync: GroupSync::default(),
            log_for_sync: log.try_clone()?,
            log: Mutex::new(log),
            log_sync: GroupSync::default(),
            hash: Mutex::new(RunningHash {
                sha: FileState::start(),
                tally: HashTally::default(),
                frontier: 0,
                broken: false,
            }),
        })
    }

    /// Writes a chunk's bytes at `offset` and makes them durable.
    ///
    /// One `pwrite` per piece of the body over HTTP/2 (~16 KiB each): measured against one
    /// `pwritev` of 16 or 512 pieces, the vectored write cost the server 50 % more CPU
    /// (the kernel's copy into the page cache grew from 21 % to 39 % of the profile).
    /// Over HTTP/3 a piece is one QUIC packet's data, a few KiB at most: one `pwrite`
    /// each, the calls' own cost (not the copy) was a quarter of the server's CPU, so
    /// runs of such pieces go in one `pwritev`.
    ///
    /// Writers take turns in userspace: concurrent `pwrite`s to one file queue on the
    /// inode's lock in the kernel, which spins while the holder copies. Over HTTP/3 (a
    /// dozen chunks written at once) that spinning was 9 % of the server's CPU; behind a
    /// mutex that parks, it is gone.
    pub fn write_durable(&self, offset: u64, parts: &[Bytes]) -> std::io::Result<()> {
        {
            let _one = lock(&self.writing);
            let mut at = offset;
            let mut rest = parts;
            while let Some(first) = rest.first() {
                let run = rest
                    .iter()
                    .take(MAX_IOVECS)
                    .take_while(|p| p.len() < SMALL_PIECE)
                    .count();
                let (written, len) = match run {
                    0 | 1 => {
                        self.file.write_all_at(first, at)?;
                        (1, first.len())
                    }
                    n => (n, self.write_run_at(&rest[..n], at)?),
                };
                at += len as u64;
                rest = &rest[written..];
            }
        }
        self.data_sync.sync(&self.file)
    }

    /// Writes `pieces` end to end at `at` with vectored writes; returns their length.
    fn write_run_at(&self, pieces: &[Bytes], at: u64) -> std::io::Result<usize> {
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let total = pieces.iter().map(|p| p.len()).sum();
        let (mut left, mut done) = (&mut slices[..], 0usize);
        while done < total {
            let n = rustix::io::pwritev(&self.file, left, at + done as u64)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n;
            IoSlice::advance_slices(&mut left, n);
        }
        Ok(total)
    }

    /// Appends a line to the chunk log and makes it durable.
    pub fn log_durable(&self, line: &str) -> std::io::Result<()> {
        lock(&self.log).write_all(format!("{line}\n").as_bytes())?;
        self.log_sync.sync(&self.log_for_sync)
    }

    /// Advances the running hash over stored chunks. `stored(offset)` is the length of the
    /// stored chunk starting at `offset`, if any, and its link if it came as one; `fresh`
    /// is a just-stored chunk's bytes. A link that starts from the very state the hash
    /// holds moves it to the link's end without touching the bytes (its end state was
    /// computed from them when the chunk was verified).
    /// Never blocks on another advancer: if one is running, it will pick up our chunk.
    pub fn advance_hash(
        &self,
        stored: impl Fn(u64) -> Option<(u64, Option<Link>)>,
        fresh: Option<(u64, &[Bytes])>,
    ) {
        loop {
            let Ok(mut h) = self.hash.try_lock() else {
                return;
            };
            while !h.broken {
                let Some((len, link)) = stored(h.frontier) else {
                    break;
                };
                match (link, fresh) {
                    (Some(link), _) if link.from == h.sha => {
                        h.sha = link.to;
                        h.tally.linked += len;
                    }
                    (_, Some((off, parts))) if off == h.frontier => {
                        parts.iter().for_each(|p| h.sha.update(p));
                        h.tally.hashed += len;
                    }
                    _ => {
                        let from = h.frontier;
                        if self.hash_range(&mut h.sha, from, len).is_err() {
                            h.broken = true;
                            break;
                        }
                        h.tally.hashed += len;
                    }
                }
                h.frontier += len;
            }
            let (frontier, broken) = (h.frontier, h.broken);
            drop(h);
            // A chunk stored while we held the lock found it taken and left it to us.
            if broken || stored(frontier).is_none() {
                return;
            }
        }
    }

    /// Bytes at `offset` were replaced: a running hash past them starts over (the next
    /// [`Self::advance_hash`] catches up again from the page cache). Taking the lock waits
    /// out an advancer that may be reading those very bytes.
    pub fn rewind_hash(&self, offset: u64) {
        let mut h = lock(&self.hash);
        if offset < h.frontier || h.broken {
            h.sha = FileState::start();
            h.frontier = 0;
            h.broken = false;
        }
    }

    /// SHA-256 of the whole file of `size` bytes, using the running hash; and how the
    /// running hash came by its bytes, these included.
    pub fn finish_hash(&self, size: u64) -> std::io::Result<([u8; 32], HashTally)> {
        let mut h = lock(&self.hash);
        if h.broken || h.frontier > size {
            h.sha = FileState::start();
            h.frontier = 0;
            h.broken = false;
        }
        let (from, mut sha) = (h.frontier, h.sha);
        self.hash_range(&mut sha, from, size - from)?;
        let tally = HashTally {
            hashed: h.tally.hashed + (size - from),
            ..h.tally
        };
        Ok((sha.finish(), tally))
    }

    fn hash_range(&self, sha: &mut FileState, from: u64, len: u64) -> std::io::Result<()> {
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        let mut at = from;
        let end = from + len;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], at)?;
            sha.update(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn part(dir: &std::path::Path, size: u64) -> PartFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("p"))
            .unwrap();
        f.set_len(size).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("l"))
            .unwrap();
        PartFile::new(f, log).unwrap()
    }

    #[test]
    fn a_body_in_many_pieces_is_written_whole_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = part(dir.path(), 0);
        // Many pieces of uneven sizes, some empty, runs of small ones (written together,
        // more than one vectored write holds) broken by large ones (written alone).
        let size = |i: u32| match i % 1300 {
            0 => 20_000,
            _ => (i % 7) as usize * 5,
        };
        let pieces: Vec<Bytes> = (0..2500u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; size(i)]))
            .collect();
        let want: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
        p.write_durable(100, &pieces).unwrap();
        let got = std::fs::read(dir.path().join("p")).unwrap();
        assert_eq!(got.len(), 100 + want.len());
        assert!(got[..100].iter().all(|b| *b == 0));
        assert_eq!(&got[100..], &want[..]);
    }

    #[test]
    fn running_hash_equals_the_file_hash_for_any_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let p = part(dir.path(), data.len() as u64);
        let stored = Mutex::new(std::collections::BTreeMap::new());
        for i in [2u64, 0, 3, 1, 4] {
            let off = i * 8000;
            let bytes = vec![Bytes::copy_from_slice(
                &data[off as usize..off as usize + 8000],
            )];
            p.write_durable(off, &bytes).unwrap();
            lock(&stored).insert(off, 8000u64);
            let stored = |o| lock(&stored).get(&o).map(|l| (*l, None));
            p.advance_hash(stored, Some((off, &bytes)));
        }
        assert_eq!(
            lock(&p.hash).frontier,
            40_000,
            "the hash caught up with the prefix"
        );
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(p.finish_hash(40_000).unwrap().0, want);
    }

    /// The first chunk's bytes are never written to the file: the hash can only be right
    /// if it jumped over them on their link. The second chunk's link starts from a state
    /// the hash does not hold, so its bytes are hashed from the file instead.
    #[test]
    fn the_running_hash_jumps_a_link_from_its_own_state_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..24_001u32).map(|i| (i * 7 % 253) as u8).collect();
        let p = part(dir.path(), data.len() as u64);
        p.write_durable(8000, &[Bytes::copy_from_slice(&data[8000..])])
            .unwrap();
        let mut first = FileState::start();
        first.update(&data[..8000]);
        let mut elsewhere = FileState::start();
        elsewhere.update(&[0u8; 8000]);
        let mut lie = elsewhere;
        lie.update(&[1u8; 8000]);
        let links = [
            (
                0,
                8000,
                Some(Link {
                    from: FileState::start(),
                    to: first,
                }),
            ),
            (
                8000,
                8000,
                Some(Link {
                    from: elsewhere,
                    to: lie,
                }),
            ),
            (16_000, 8001, None),
        ];
        let stored = |o| {
            let (_, l, link) = links.iter().find(|(at, _, _)| *at == o)?;
            Some((*l as u64, *link))
        };
        p.advance_hash(stored, None);
        assert_eq!(lock(&p.hash).frontier, 24_001);
        let want: [u8; 32] = Sha256::digest(&data).into();
        let (sha, tally) = p.finish_hash(24_001).unwrap();
        assert_eq!(sha, want);
        assert_eq!(
            tally,
            HashTally {
                linked: 8000,
                hashed: 16_001
            }
        );
    }

    #[test]
    fn group_sync_covers_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = part(dir.path(), 1 << 20);
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let p = &p;
                s.spawn(move || {
                    p.write_durable(i * 4096, &[Bytes::from(vec![i as u8; 4096])])
                        .unwrap()
                });
            }
        });
        assert_eq!(
            *lock(&p.data_sync.synced),
            8,
            "every write is covered by some sync"
        );
    }
}
