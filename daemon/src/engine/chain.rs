//! The file's SHA-256 state at chunk boundaries, so that each chunk can go as a link of
//! the file's hash (`X-Chunk-SHA256-From`, see [`uplink_proto::chain`]) and the server
//! need not hash the file a second time.
//!
//! A chunk's link starts where the chunk before it ended, so hashing is sequential within
//! a job: a read waits for the read before it to publish its end state. Reads are asked
//! for in file order and each is hashed at a gigabyte a second or more, so the wait is
//! short and the link stays far ahead of the network. A chunk whose start state is
//! unknown and not coming (a hole after a restart, a read that failed) goes with a plain
//! digest, and the server hashes that stretch itself: what this gets wrong costs the
//! server CPU, never a wrong byte or hash. A start state that is not known but lies a
//! little past one that is (a chunk the server held, between two holes after a restart)
//! is worked out by hashing the stretch between them from the file: otherwise one plain
//! chunk would leave every chunk after it plain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uplink_proto::chain::FileState;

/// How long a read waits for the read before it. Far longer than hashing a chunk takes;
/// it bounds the wait should that read be stuck on the disk.
const WAIT_FOR_PREDECESSOR: Duration = Duration::from_secs(10);
/// States kept, the highest offsets: a re-read of a chunk far behind goes plain.
const KEEP_STATES: usize = 4096;
/// The most bytes hashed to reach an unknown start state from a known one: a few chunks.
pub const FILL_AT_MOST: u64 = 4 * uplink_proto::wire::MAX_CHUNK_SIZE;

/// The states known and coming for one job's file.
#[derive(Default)]
pub struct ChainTracker {
    inner: Mutex<Inner>,
    published: Condvar,
}

#[derive(Default)]
struct Inner {
    /// offset -> the file's state there.
    known: BTreeMap<u64, FileState>,
    /// Ends of reads under way, which will publish the state there.
    coming: BTreeSet<u64>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChainTracker {
    /// For a file read from its first byte.
    pub fn from_start() -> Arc<ChainTracker> {
        Self::knowing([FileState::start()])
    }

    /// Knowing these states (a resumed session's, re-hashed from the server's records).
    pub fn knowing(states: impl IntoIterator<Item = FileState>) -> Arc<ChainTracker> {
        let tracker = Arc::new(ChainTracker::default());
        tracker.learn(states);
        tracker
    }

    /// Whether the state at `offset` is known.
    pub fn knows(&self, offset: u64) -> bool {
        lock(&self.inner).known.contains_key(&offset)
    }

    /// Learns these states too (a session resumed within the same run).
    pub fn learn(&self, states: impl IntoIterator<Item = FileState>) {
        let mut inner = lock(&self.inner);
        for s in states {
            inner.learn(s);
        }
    }

    /// A read of `[offset, offset + len)` is asked for: the state at its end will come.
    /// Call in file order, before the read starts, so a read after it knows to wait.
    pub fn expect(self: &Arc<Self>, offset: u64, len: u64) -> Link {
        let end = offset + len;
        lock(&self.inner).coming.insert(end);
        Link {
            tracker: Arc::clone(self),
            offset,
            end,
        }
    }

    /// The state at `offset`: known, published (within the wait) by the read that ends
    /// there, or else worked out with `fill(known, offset)` from a known state at most
    /// [`FILL_AT_MOST`] bytes before it.
    fn state_at(
        &self,
        offset: u64,
        fill: impl FnOnce(FileState, u64) -> Option<FileState>,
    ) -> Option<FileState> {
        let deadline = Instant::now() + WAIT_FOR_PREDECESSOR;
        let mut inner = lock(&self.inner);
        loop {
            if let Some(s) = inner.known.get(&offset) {
                return Some(*s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !inner.coming.contains(&offset) || left.is_zero() {
                break;
            }
            inner = match self.published.wait_timeout(inner, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        let below = *inner.known.range(..offset).next_back()?.1;
        drop(inner);
        if offset - below.len() > FILL_AT_MOST {
            return None;
        }
        let filled = fill(below, offset).filter(|s| s.len() == offset)?;
        lock(&self.inner).learn(filled);
        Some(filled)
    }
}

impl Inner {
    fn learn(&mut self, state: FileState) {
        self.known.insert(state.len(), state);
        while self.known.len() > KEEP_STATES {
            self.known.pop_first();
        }
    }
}

/// One read's place in the chain: where it starts, and the end state it owes the reads
/// after it (withdrawn when dropped unpublished, so they stop waiting).
pub struct Link {
    tracker: Arc<ChainTracker>,
    offset: u64,
    end: u64,
}

impl Link {
    /// The file's state at this chunk's first byte, waiting for the read before it;
    /// `fill(known, offset)` hashes the file from a known state up to `offset`, should
    /// nothing bring the state there. Blocking: call from the read's thread.
    pub fn start(
        &self,
        fill: impl FnOnce(FileState, u64) -> Option<FileState>,
    ) -> Option<FileState> {
        self.tracker.state_at(self.offset, fill)
    }

    /// The state after the chunk, for the read that starts there.
    pub fn publish(self, to: FileState) {
        if to.len() == self.end {
            lock(&self.tracker.inner).learn(to);
        }
        // Dropping withdraws the promise and wakes the waiters.
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        lock(&self.tracker.inner).coming.remove(&self.end);
        self.tracker.published.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bytes: &[u8]) -> FileState {
        let mut s = FileState::start();
        s.update(bytes);
        s
    }

    fn no_fill(_: FileState, _: u64) -> Option<FileState> {
        None
    }

    #[test]
    fn a_read_waits_for_the_state_its_predecessor_publishes() {
        let t = ChainTracker::from_start();
        let first = t.expect(0, 100);
        let second = t.expect(100, 50);
        let waiter = std::thread::spawn(move || second.start(no_fill));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(first.start(no_fill), Some(FileState::start()));
        first.publish(state(&[7; 100]));
        assert_eq!(waiter.join().unwrap(), Some(state(&[7; 100])));
    }

    #[test]
    fn a_predecessor_that_fails_lets_the_next_read_go_on_at_once() {
        let t = ChainTracker::from_start();
        let first = t.expect(0, 100);
        let second = t.expect(100, 50);
        let waiter = std::thread::spawn(move || {
            let at = Instant::now();
            (second.start(no_fill), at.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(first);
        let (got, waited) = waiter.join().unwrap();
        assert_eq!(
            got, None,
            "nothing to fill from but the start, which fill refuses"
        );
        assert!(waited < WAIT_FOR_PREDECESSOR);
    }

    #[test]
    fn an_unknown_start_near_a_known_state_is_filled_from_it_and_one_far_goes_plain() {
        let bytes = [3u8; 300];
        let t = ChainTracker::from_start();
        let asked = std::cell::Cell::new(None);
        let fill = |from: FileState, to: u64| {
            asked.set(Some((from.len(), to)));
            let mut s = from;
            s.update(&bytes[from.len() as usize..to as usize]);
            Some(s)
        };
        assert_eq!(t.expect(300, 5).start(fill), Some(state(&bytes)));
        assert_eq!(asked.get(), Some((0, 300)));
        // Learned: the next read there needs no filling.
        assert_eq!(t.expect(300, 5).start(no_fill), Some(state(&bytes)));
        // A fill that lands elsewhere is not taken.
        let wrong = |_: FileState, _: u64| Some(state(&bytes[..10]));
        assert_eq!(t.expect(400, 5).start(wrong), None);
        let far = 300 + FILL_AT_MOST + 1;
        let called = std::cell::Cell::new(false);
        let fill = |_: FileState, _: u64| {
            called.set(true);
            None
        };
        assert_eq!(t.expect(far, 5).start(fill), None);
        assert!(!called.get(), "more than FILL_AT_MOST bytes are not hashed");
    }

    #[test]
    fn known_states_are_kept_and_an_end_state_elsewhere_is_not_taken() {
        let t = ChainTracker::knowing([state(&[1; 64])]);
        assert_eq!(t.expect(64, 5).start(no_fill), Some(state(&[1; 64])));
        t.expect(64, 10).publish(state(&[1; 73]));
        assert_eq!(t.expect(73, 1).start(no_fill), None);
        assert_eq!(t.expect(74, 1).start(no_fill), None);
    }
}
