//! Throughput over a sliding window, and the progress-event throttle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes per second over the last `window`.
#[derive(Debug)]
pub struct RateMeter {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub fn new(window: Duration) -> RateMeter {
        RateMeter {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records the running total of acknowledged bytes at `now`.
    pub fn record(&mut self, now: Instant, total: u64) {
        self.samples.push_back((now, total));
        while let Some(&(t, _)) = self.samples.front() {
            if now.duration_since(t) > self.window && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Lets a progress event through at most every `interval` and only after `min_bytes`
/// more progress — the seed's ≤ 30 events/s and ≥ 16 KiB.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    min_bytes: u64,
    last: Option<(Instant, u64)>,
}

impl Throttle {
    pub fn new(interval: Duration, min_bytes: u64) -> Throttle {
        Throttle {
            interval,
            min_bytes,
            last: None,
        }
    }

    /// The seed's values: 33 ms and 16 KiB.
    pub fn progress() -> Throttle {
        Throttle::new(Duration::from_millis(33), 16 * 1024)
    }

    pub fn allow(&mut self, now: Instant, bytes: u64) -> bool {
        let ok = match self.last {
            None => true,
            Some((t, b)) => now.duration_since(t) >= self.interval && bytes >= b + self.min_bytes,
        };
        if ok {
            self.last = Some((now, bytes));
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_bytes_over_time_in_the_window() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(3));
        for i in 0..=10u64 {
            m.record(t0 + Duration::from_secs(i), i * 1000);
        }
        assert!((m.rate() - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn throttle_allows_at_most_thirty_per_second() {
        let t0 = Instant::now();
        let mut th = Throttle::progress();
        let allowed = (0..1000u64)
            .filter(|i| th.allow(t0 + Duration::from_millis(*i), i * 1_000_000))
            .count();
        assert!((29..=31).contains(&allowed), "{allowed}");
    }

    #[test]
    fn throttle_waits_for_enough_bytes() {
        let t0 = Instant::now();
        let mut th = Throttle::progress();
        assert!(th.allow(t0, 0));
        assert!(!th.allow(t0 + Duration::from_secs(1), 100));
        assert!(th.allow(t0 + Duration::from_secs(1), 20_000));
    }
}
