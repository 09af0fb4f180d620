//! How far a request's body has got: the transport counts the bytes it hands on and
//! notes when the last ones went; the driver reads that for the engine's stall detection.
//!
//! "Handed on" is paced by the server: HTTP/2 takes a body piece only when the stream has
//! window for it, and quinn accepts bytes only within the flow-control credit the server
//! grants as it reads. So when the path dies, the count stops within a round trip.
//!
//! Over QUIC that is not enough: quinn takes a whole body into its send window (64 MiB)
//! at once, long before the bytes cross. There the connection's [`LinkWatch`] says more:
//! whether the connection has been waiting on its peer (sent, heard nothing back) and
//! since when. A body on a connection that hears from its peer is moving; one on a
//! connection that has waited since T last moved at T.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Whether a connection is waiting on its peer, kept up to date by a watcher of its own.
#[derive(Debug, Default)]
pub struct LinkWatch {
    waiting_since: Mutex<Option<Instant>>,
}

impl LinkWatch {
    /// `since`: the connection has sent since it last heard from the peer, at `since`;
    /// None: it hears from the peer, or has nothing out.
    pub fn set_waiting(&self, since: Option<Instant>) {
        *self.waiting_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }

    pub fn waiting_since(&self) -> Option<Instant> {
        *self.waiting_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection has waited on its peer for [`STALE_AFTER`] or more: new requests
    /// should not queue behind it (its retransmission timers have backed off, so even a
    /// returning path would be noticed late) but go on a fresh connection.
    pub fn stale(&self) -> bool {
        self.waiting_since()
            .is_some_and(|since| since.elapsed() >= STALE_AFTER)
    }
}

/// How long a connection may wait on its peer before new requests avoid it: the engine's
/// stall window, so a stalled request's retry never goes back to the connection it
/// stalled on.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared between a request's transport and the driver.
#[derive(Debug)]
pub struct BodyProgress {
    epoch: Instant,
    bytes: AtomicU64,
    /// Microseconds after `epoch` when bytes last went (0: none yet).
    moved_us: AtomicU64,
    all: AtomicBool,
    /// The connection carrying the body, when its transport watches it.
    link: OnceLock<Arc<LinkWatch>>,
}

/// One reading of a [`BodyProgress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub bytes: u64,
    /// The whole body is handed on.
    pub all: bool,
    /// Microseconds after the epoch when bytes last went (0: none yet).
    pub moved_us: u64,
}

impl BodyProgress {
    /// Times are counted from `epoch` (the driver's clock).
    pub fn new(epoch: Instant) -> BodyProgress {
        BodyProgress {
            epoch,
            bytes: AtomicU64::new(0),
            moved_us: AtomicU64::new(0),
            all: AtomicBool::new(false),
            link: OnceLock::new(),
        }
    }

    /// The body goes over a watched connection: judge its movement by that connection.
    pub fn watch_link(&self, link: Arc<LinkWatch>) {
        let _ = self.link.set(link);
    }

    /// `total` bytes of the body are handed on by now; `all`: that is the whole body.
    pub fn handed_on(&self, total: u64, all: bool) {
        let before = self.bytes.fetch_max(total, Ordering::Relaxed);
        if total > before {
            let us = self.epoch.elapsed().as_micros() as u64;
            self.moved_us.fetch_max(us.max(1), Ordering::Relaxed);
        }
        if all {
            self.all.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a connection watch says when the body moves.
    pub fn watched(&self) -> bool {
        self.link.get().is_some()
    }

    pub fn read(&self) -> Reading {
        let mut moved_us = self.moved_us.load(Ordering::Relaxed);
        let all = self.all.load(Ordering::Relaxed);
        let as_us = |t: Instant| t.saturating_duration_since(self.epoch).as_micros() as u64;
        match self.link.get() {
            // Handed on is not across: the connection says whether bytes still move.
            Some(link) => {
                let moved = link.waiting_since().unwrap_or_else(Instant::now);
                moved_us = moved_us.max(as_us(moved));
            }
            // All handed on and nothing watches the connection: no way to tell, so it
            // counts as moving (the request's deadline still watches it).
            None if all => moved_us = as_us(Instant::now()),
            None => {}
        }
        Reading {
            bytes: self.bytes.load(Ordering::Relaxed),
            all,
            moved_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_forward_and_notes_when_bytes_last_went() {
        let p = BodyProgress::new(Instant::now());
        assert_eq!(p.read().moved_us, 0, "nothing went yet");
        p.handed_on(100, false);
        let first = p.read();
        assert_eq!((first.bytes, first.all), (100, false));
        assert!(first.moved_us > 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // The same count again is no movement.
        p.handed_on(100, false);
        assert_eq!(p.read().moved_us, first.moved_us);
        p.handed_on(250, true);
        let last = p.read();
        assert_eq!((last.bytes, last.all), (250, true));
        assert!(last.moved_us > first.moved_us);
        // All handed on, no watch: it counts as moving from then on.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(p.read().moved_us > last.moved_us);
    }

    #[test]
    fn over_a_watched_link_the_link_says_when_the_body_last_moved() {
        let epoch = Instant::now();
        let p = BodyProgress::new(epoch);
        let link = Arc::new(LinkWatch::default());
        p.watch_link(Arc::clone(&link));
        // quinn took the whole body at once: its bytes say no more, the link does.
        p.handed_on(100, true);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let hearing = p.read();
        assert!(hearing.all);
        assert!(
            hearing.moved_us >= 5_000,
            "a connection that hears its peer is moving"
        );
        // The connection has waited on its peer since 1 ms after the epoch.
        link.set_waiting(Some(epoch + std::time::Duration::from_millis(1)));
        let handed = p.read();
        assert!(
            handed.moved_us < 5_000,
            "moved at the later of handing on and the link's last word: {handed:?}"
        );
    }
}
