//! The endpoint's circuit breaker (the seed's STAB-4): five failures in a row open it, no
//! request goes for 30 s, then one request at a time probes (half-open), and two
//! successes close it again. A failure while half-open opens it for another 30 s.
//!
//! Only failures the *endpoint* answered count — a 5xx, a 429, a refused connection: the
//! server is there and failing, and a fleet of clients retrying at once would keep it
//! down. Silence (a timeout, a stalled body, a path that died) is the path's trouble: stall
//! detection and fresh connections deal with it, and probing a dead path stays cheap and
//! quick so the upload resumes as soon as the link does. Failures of requests that started
//! before the last counted one share its cause and count once (a dozen requests on one
//! connection refused together are one failure).
//!
//! The health score (0-100) is a moving average over request outcomes — every success and
//! every counted failure — for Status.

use std::time::Duration;

use crate::Time;

/// Failures in a row that open the breaker (the seed's 5).
pub const OPEN_AFTER: u32 = 5;
/// How long it stays open before probing (the seed's 30 s).
pub const OPEN_FOR: Duration = Duration::from_secs(30);
/// Successful probes that close it (the seed's 2).
pub const CLOSE_AFTER: u32 = 2;
/// Weight of the newest outcome in the health score.
const SCORE_WEIGHT: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Nothing goes until `until`.
    Open {
        until: Time,
    },
    /// One request at a time; `successes` so far.
    HalfOpen {
        successes: u32,
    },
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// A change of state, for the driver to log and show.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub to: State,
    pub why: String,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    state: State,
    /// Counted failures in a row.
    failures: u32,
    /// When the last counted failure happened (for the shared-cause rule).
    last_failure: Option<Time>,
    score: f64,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            state: State::Closed,
            failures: 0,
            last_failure: None,
            score: 100.0,
        }
    }
}

impl Breaker {
    /// The state at `now` (an open breaker whose time is up is half-open).
    pub fn state(&self, now: Time) -> State {
        match self.state {
            State::Open { until } if now >= until => State::HalfOpen { successes: 0 },
            s => s,
        }
    }

    /// Health, 0 (every recent request failed) to 100.
    pub fn score(&self) -> f64 {
        self.score
    }

    /// Failures in a row, as counted.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// May a request go at `now`, with `probe_out` telling whether a half-open probe is
    /// still out? Also moves an open breaker whose time is up to half-open.
    pub fn admits(&mut self, now: Time, probe_out: bool) -> bool {
        self.state = self.state(now);
        match self.state {
            State::Closed => true,
            State::Open { .. } => false,
            State::HalfOpen { .. } => !probe_out,
        }
    }

    /// Moves an open breaker whose time is up to half-open, and says so.
    pub fn half_open_due(&mut self, now: Time) -> Option<Transition> {
        match self.state {
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { successes: 0 };
                Some(Transition {
                    to: self.state,
                    why: format!(
                        "{} s passed: one request at a time probes",
                        OPEN_FOR.as_secs()
                    ),
                })
            }
            _ => None,
        }
    }

    /// When an open breaker lets a probe through.
    pub fn open_until(&self) -> Option<Time> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// A request succeeded.
    pub fn success(&mut self, now: Time) -> Option<Transition> {
        self.score += (100.0 - self.score) * SCORE_WEIGHT;
        self.failures = 0;
        self.state = self.state(now);
        match self.state {
            State::HalfOpen { successes } if successes + 1 >= CLOSE_AFTER => {
                self.state = State::Closed;
                Some(Transition {
                    to: State::Closed,
                    why: format!("{CLOSE_AFTER} requests in a row succeeded"),
                })
            }
            State::HalfOpen { successes } => {
                self.state = State::HalfOpen {
                    successes: successes + 1,
                };
                None
            }
            _ => None,
        }
    }

    /// A request that started at `started` failed at `now`; `endpoint` says the endpoint
    /// answered the failure (see the module doc). `probe` says it was the half-open probe:
    /// a probe that fails in any way opens the breaker again.
    pub fn failure(
        &mut self,
        now: Time,
        started: Time,
        endpoint: bool,
        probe: bool,
        why: &str,
    ) -> Option<Transition> {
        self.state = self.state(now);
        if probe && matches!(self.state, State::HalfOpen { .. }) {
            self.score -= self.score * SCORE_WEIGHT;
            self.last_failure = Some(now);
            return Some(self.open(now, format!("the probe failed: {why}")));
        }
        if !endpoint {
            return None;
        }
        if self.last_failure.is_some_and(|t| started <= t) && self.failures > 0 {
            return None;
        }
        self.last_failure = Some(now);
        self.failures += 1;
        self.score -= self.score * SCORE_WEIGHT;
        match self.state {
            State::Closed if self.failures >= OPEN_AFTER => Some(self.open(
                now,
                format!("{} failures in a row, the last: {why}", self.failures),
            )),
            _ => None,
        }
    }

    fn open(&mut self, now: Time, why: String) -> Transition {
        let to = State::Open {
            until: now + OPEN_FOR,
        };
        self.state = to;
        Transition { to, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Time {
        Time::from_micros(s * 1_000_000)
    }

    fn fail(b: &mut Breaker, at: u64) -> Option<Transition> {
        b.failure(t(at), t(at), true, false, "503")
    }

    #[test]
    fn five_failures_in_a_row_open_it_for_thirty_seconds() {
        let mut b = Breaker::default();
        for s in 0..4 {
            assert_eq!(fail(&mut b, s), None);
            assert!(b.admits(t(s), false));
        }
        let opened = fail(&mut b, 4).expect("the fifth failure opens it");
        assert_eq!(opened.to, State::Open { until: t(34) });
        assert!(!b.admits(t(33), false));
        assert!(b.admits(t(34), false), "half-open after 30 s");
        assert!(!b.admits(t(34), true), "one probe at a time");
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::default();
        for s in 0..4 {
            fail(&mut b, s);
        }
        b.success(t(5));
        for s in 6..10 {
            assert_eq!(fail(&mut b, s), None);
        }
        assert_eq!(b.state(t(10)), State::Closed);
    }

    #[test]
    fn two_successful_probes_close_it_and_a_failed_one_opens_it_again() {
        let mut b = Breaker::default();
        for s in 0..5 {
            fail(&mut b, s);
        }
        assert!(b.admits(t(34), false));
        let reopened = b
            .failure(t(35), t(34), false, true, "timeout")
            .expect("reopens");
        assert_eq!(reopened.to, State::Open { until: t(65) });
        assert!(b.admits(t(65), false));
        assert_eq!(b.success(t(66)), None);
        assert_eq!(b.state(t(66)), State::HalfOpen { successes: 1 });
        let closed = b.success(t(67)).expect("closes");
        assert_eq!(closed.to, State::Closed);
    }

    #[test]
    fn silence_and_shared_causes_do_not_count() {
        let mut b = Breaker::default();
        for s in 0..10 {
            assert_eq!(b.failure(t(s), t(s), false, false, "timeout"), None);
        }
        // Twelve requests started at 0 s, refused together at 20 s: one failure.
        for _ in 0..12 {
            b.failure(t(20), t(0), true, false, "refused");
        }
        assert_eq!(b.failures(), 1);
        assert_eq!(b.state(t(20)), State::Closed);
        assert!(b.score() < 100.0 && b.score() > 80.0);
    }
}
