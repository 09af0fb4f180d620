//! Pacing: how fast the link is thought to be and what follows from it — the bandwidth
//! estimate's samples and the speed tier, the stream limit and a cold link's ramp-up,
//! each request's deadline, and which lane it goes on.

use std::time::Duration;

use super::{Engine, Req};
use crate::tier::Tier;
use crate::{JobId, Time, pool};

impl Engine {
    pub(super) fn sample(&mut self, r: &Req) {
        let dt = self.now.since(r.started).as_secs_f64();
        if dt > 0.0 {
            let rate = (self.delivered - r.delivered_at_start) as f64 / dt;
            self.estimator.sample(self.now, rate);
        }
        self.retune();
    }

    pub(super) fn retune(&mut self) {
        if self.cfg.streams.is_some() && self.cfg.chunk_size.is_some() {
            return;
        }
        let Some(est) = self.estimator.usable() else {
            return;
        };
        let due = match self.last_retune {
            None => true,
            Some(t) => self.now.since(t) >= self.cfg.retune_every,
        };
        if due {
            self.tier = Some(Tier::for_rate(est));
            self.last_retune = Some(self.now);
        }
    }

    pub(super) fn stream_limit(&self) -> usize {
        if self.cfg.streams.is_none() && self.delivered == 0 {
            // Until the link delivers its first bytes, the first request goes alone:
            // streams sharing a fresh congestion window all finish together, so with a
            // dozen in flight the first ACK waited for all of them (7 RTT instead of 2-3).
            return 1;
        }
        let by_tier = self
            .cfg
            .streams
            .unwrap_or_else(|| self.tier.map_or(12, Tier::streams));
        by_tier.min(pool::in_flight_for(self.buffers)).max(1)
    }

    pub(super) fn ramp_next(&self) -> Option<Time> {
        self.ramp_last.map(|t| t + self.cfg.ramp_step)
    }

    /// A cold link's streams start `ramp_step` apart until the limit is reached.
    pub(super) fn ramp_blocked(&self) -> bool {
        self.streams > 0
            && self.ramp_started < self.stream_limit()
            && self.ramp_next().is_some_and(|t| t > self.now)
    }

    /// How long a request of `bytes` for `job` may take before it is given up.
    ///
    /// Twice what the request's share of the link needs; and doubled for each failure
    /// the job has in a row, so a deadline that was too short for this link (no estimate
    /// yet, or a link slower than it was) cannot expire again and again: every request
    /// eventually gets the time it needs.
    pub(super) fn timeout_for(&self, job: JobId, bytes: u64) -> Duration {
        let base = match self.estimator.usable() {
            // No estimate yet: assume 1 Mbit/s, shared by every request in flight.
            None => self
                .cfg
                .request_timeout_default
                .max(Duration::from_secs_f64(
                    2.0 * bytes as f64 * (self.streams + 1) as f64 / 125_000.0,
                )),
            Some(est) => {
                let share = (est / self.stream_limit() as f64).max(self.cfg.min_stream_rate);
                self.cfg
                    .request_timeout_floor
                    .max(Duration::from_secs_f64(2.0 * bytes as f64 / share))
            }
        };
        let failures = self.jobs.get(&job).map_or(0, |j| j.backoff.failures());
        let timeout = base.saturating_mul(1 << failures.min(6));
        if self.probing && bytes == 0 {
            // The link looks cut: a session call is a probe like any other, and one sent
            // into the dead link must not hold the job long after the link returns.
            return timeout.min(self.cfg.stall_window);
        }
        timeout
    }

    pub(super) fn lane(&mut self, avoid: Option<usize>) -> usize {
        let lanes = self.cfg.lanes.max(1);
        let mut l = self.next_lane % lanes;
        if lanes > 1 && Some(l) == avoid {
            l = (l + 1) % lanes;
        }
        self.next_lane = l + 1;
        l
    }
}
