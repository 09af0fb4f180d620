//! The one retry policy: decorrelated jitter (the seed's choice, after AWS's analysis),
//! `delay = min(cap, random_between(base, previous × 3))`.
//!
//! Every failure the network can cause — a chunk PUT, a session call, a whole connection
//! — counts against the job it served; there are no nested retry loops. The first 7
//! consecutive failures (the seed's retry count) back off between 0.5 s and 15 s; after
//! that the job is *waiting*: the cap becomes 60 s, the job says so, and other jobs go on.
//! Transient trouble never fails a job; only a permanent error does.

use std::time::Duration;

use crate::Time;
use crate::rng::Rng;

pub const BASE: Duration = Duration::from_millis(500);
/// Cap while retrying (the seed's 15 s).
pub const CAP: Duration = Duration::from_secs(15);
/// Consecutive failures before the job counts as waiting (the seed's 7 retries).
pub const RETRIES_BEFORE_WAITING: u32 = 7;
/// Cap once waiting.
pub const WAITING_CAP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct Backoff {
    previous: Duration,
    failures: u32,
    /// When the last counted failure happened: requests that started before it and fail
    /// now share its cause (a dozen chunks on one dropped connection are one failure).
    last_failure: Option<Time>,
}

impl Backoff {
    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Past the retries: the job waits with long delays.
    pub fn waiting(&self) -> bool {
        self.failures > RETRIES_BEFORE_WAITING
    }

    /// Records a failure and returns the delay before the next try; `at_least` is a
    /// server's `Retry-After`.
    pub fn fail(&mut self, rng: &mut Rng, at_least: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = if self.waiting() { WAITING_CAP } else { CAP };
        let hi = (self.previous * 3).max(BASE);
        let ms = rng.between(BASE.as_millis() as u64, hi.as_millis() as u64);
        let d = Duration::from_millis(ms).min(cap);
        self.previous = d;
        d.max(at_least.unwrap_or(Duration::ZERO).min(WAITING_CAP))
    }

    /// [`Backoff::fail`] for a request that started at `started`, failing at `now`: if
    /// it started before the last counted failure it shares that failure's cause, so the
    /// backoff does not grow again; it waits as long as the last delay.
    pub fn fail_request(
        &mut self,
        rng: &mut Rng,
        at_least: Option<Duration>,
        started: Time,
        now: Time,
    ) -> Duration {
        match self.last_failure {
            Some(t) if started <= t && self.failures > 0 => self
                .previous
                .max(at_least.unwrap_or(Duration::ZERO).min(WAITING_CAP)),
            _ => {
                self.last_failure = Some(now);
                self.fail(rng, at_least)
            }
        }
    }

    /// A success: back to fast retries.
    pub fn succeed(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_failing_from_one_cause_count_once() {
        let mut rng = Rng::new(3);
        let mut b = Backoff::default();
        let t = |s: u64| Time::from_micros(s * 1_000_000);
        // Twelve requests started at 0 s all fail at 5 s (one dropped connection).
        let first = b.fail_request(&mut rng, None, t(0), t(5));
        for _ in 0..11 {
            assert_eq!(b.fail_request(&mut rng, None, t(0), t(5)), first);
        }
        assert_eq!(b.failures(), 1, "one cause, one failure");
        // A request started after that failure and failing again is a new failure.
        b.fail_request(&mut rng, None, t(6), t(7));
        assert_eq!(b.failures(), 2);
    }

    #[test]
    fn delays_grow_within_bounds_then_wait_longer() {
        let mut rng = Rng::new(7);
        let mut b = Backoff::default();
        let mut prev = BASE;
        for i in 1..=RETRIES_BEFORE_WAITING {
            let d = b.fail(&mut rng, None);
            assert!(d >= BASE && d <= CAP && d <= prev * 3, "try {i}: {d:?}");
            prev = d;
            assert!(!b.waiting());
        }
        let mut longest = Duration::ZERO;
        for _ in 0..50 {
            let d = b.fail(&mut rng, None);
            assert!(d <= WAITING_CAP);
            longest = longest.max(d);
        }
        assert!(b.waiting());
        assert!(longest > CAP, "waiting allows delays beyond 15 s");
        b.succeed();
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut b = Backoff::default();
        let d = b.fail(&mut Rng::new(1), Some(Duration::from_secs(5)));
        assert!(d >= Duration::from_secs(5));
    }
}
