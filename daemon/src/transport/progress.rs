//! How far a request's body has got: the transport counts the bytes it hands on and
//! notes when the last ones went; the driver reads that for the engine's stall detection.
//!
//! "Handed on" is paced by the server: HTTP/2 takes a body piece only when the stream has
//! window for it, and quinn accepts bytes only within the flow-control credit the server
//! grants as it reads. So when the path dies, the count stops within a round trip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Shared between a request's transport and the driver.
#[derive(Debug)]
pub struct BodyProgress {
    epoch: Instant,
    bytes: AtomicU64,
    /// Microseconds after `epoch` when bytes last went (0: none yet).
    moved_us: AtomicU64,
    all: AtomicBool,
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
        }
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

    pub fn read(&self) -> Reading {
        Reading {
            bytes: self.bytes.load(Ordering::Relaxed),
            all: self.all.load(Ordering::Relaxed),
            moved_us: self.moved_us.load(Ordering::Relaxed),
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
    }
}
