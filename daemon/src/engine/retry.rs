//! Decorrelated-jitter backoff (the seed's choice, after AWS's analysis):
//! `sleep = min(cap, random_between(base, previous × 3))`. Fast first retries, growing
//! delays if trouble persists. Pure: the caller supplies the random source.

use std::time::Duration;

use rand::Rng;

/// Chunk retries before the chunk's failure ends the run (the seed's 7).
pub const CHUNK_MAX_RETRIES: u32 = 7;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    previous: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            previous: base,
            attempts: 0,
        }
    }

    /// The seed's chunk retry: base 0.5 s, cap 15 s.
    pub fn chunk() -> Backoff {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(15))
    }

    /// Whole-run retries after the network went away: base 1 s, cap 60 s.
    pub fn run() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Retries handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next delay.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let hi = (self.previous * 3).max(self.base);
        let ms = rng.random_range(self.base.as_millis() as u64..=hi.as_millis() as u64);
        let d = Duration::from_millis(ms).min(self.cap);
        self.previous = d;
        self.attempts += 1;
        d
    }

    /// The next delay when the server said when to come back (`Retry-After`): that time
    /// plus up to 10 % jitter, so clients told the same time do not return at once. The
    /// backoff does not grow: the server knows better than our guess.
    pub fn next_delay_hinted(&mut self, rng: &mut impl Rng, hint: Option<Duration>) -> Duration {
        match hint {
            Some(h) => {
                self.attempts += 1;
                let spread = (h.as_millis() as u64 / 10).max(1);
                h + Duration::from_millis(rng.random_range(0..=spread))
            }
            None => self.next_delay(rng),
        }
    }

    /// Back to fast retries after a success.
    pub fn reset(&mut self) {
        self.previous = self.base;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_base_and_cap_and_grow_at_most_threefold() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut b = Backoff::chunk();
            let mut prev = Duration::from_millis(500);
            for _ in 0..CHUNK_MAX_RETRIES {
                let d = b.next_delay(&mut rng);
                assert!(
                    d >= Duration::from_millis(500) && d <= Duration::from_secs(15),
                    "{d:?}"
                );
                assert!(d <= prev * 3, "{d:?} after {prev:?}");
                prev = d;
            }
            assert_eq!(b.attempts(), CHUNK_MAX_RETRIES);
        }
    }

    #[test]
    fn first_retry_is_fast() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(Backoff::chunk().next_delay(&mut rng) <= Duration::from_millis(1500));
        }
    }

    #[test]
    fn a_server_hint_sets_the_delay_without_growing_the_backoff() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut b = Backoff::run();
        for n in 1..=20 {
            let d = b.next_delay_hinted(&mut rng, Some(Duration::from_secs(1)));
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            assert_eq!(b.attempts(), n);
        }
        // Without a hint it starts from the base again, not from 20 grown steps.
        assert!(b.next_delay_hinted(&mut rng, None) <= Duration::from_secs(3));
    }

    #[test]
    fn persistent_trouble_reaches_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::run();
        let longest = (0..40).map(|_| b.next_delay(&mut rng)).max().unwrap();
        assert!(longest > Duration::from_secs(30), "{longest:?}");
        b.reset();
        assert_eq!(b.attempts(), 0);
    }
}
