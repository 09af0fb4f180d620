//! Stall detection: a request whose body stops moving is given up long before its
//! deadline, and its bytes go again on another lane.
//!
//! The driver reports how far each body has got and when it last moved
//! ([`crate::Event::RequestProgress`]) — at any time, and at the latest when the engine's
//! timer fires, before [`Engine::handle_timeout`]. Two rules, the seed's:
//! - nothing moved for `stall_window`: stalled, exactly one window after the last byte
//!   (the timer is set from the last movement the driver told of);
//! - over each window, less than `stall_min_rate` moved (capped at a quarter of the
//!   request's fair share, so a slow link shared by many streams is not a stall). A body
//!   that moved less while the link as a whole carried more than that for every body in
//!   flight is queued behind its siblings (QUIC's shared send buffer), not slow.
//!
//! A body that did not move at all may mean a cut link: until something is acknowledged
//! again the engine sends small probes (stalled big chunks are cut again), so the upload
//! shows progress within a round trip or two of the link's return.
//!
//! Progress also restarts the request's deadline, so a slow but moving chunk is never cut
//! off by a watchdog sized for a faster link. Once a body is all handed on only the idle
//! rule applies (the driver keeps saying when it last moved: over a watched connection,
//! until its peer acknowledged it; where it cannot tell, "now"); a request whose driver
//! reports nothing is watched by its deadline alone.

use std::time::Duration;

use super::{Engine, Req, ReqKind};
use crate::Time;
use crate::io::{Action, Failure, ReqId};

/// A request with a body: it is judged for stalls.
fn has_body(r: &Req) -> bool {
    matches!(r.kind, ReqKind::Chunk { .. } | ReqKind::Whole)
}

/// A request's verdict at one moment.
enum Verdict {
    Fine,
    Idle(Duration),
    Slow { moved: u64, over: Duration },
}

impl Engine {
    pub(super) fn request_progress(&mut self, req: ReqId, bytes: u64, all: bool, moved_at: Time) {
        let Some(r) = self.reqs.get_mut(&req) else {
            return;
        };
        let before = r.sent.unwrap_or(0);
        self.body_moved += bytes.saturating_sub(before);
        r.moved_at = r.moved_at.max(moved_at);
        if bytes > before {
            r.deadline = r.deadline.max(r.moved_at + r.timeout);
        }
        r.sent = Some(before.max(bytes));
        r.handed_on |= all;
        let (job, moved) = (r.job, r.moved_at);
        if bytes > before
            && let Some(j) = self.jobs.get_mut(&job)
        {
            // A body that moves is not hung, only perhaps slow: the request's own deadline
            // and stall detection judge that, not the job's watchdogs.
            j.alive_at = j.alive_at.max(moved);
            j.acked_at = j.acked_at.max(moved);
        }
    }

    /// When `r` is next judged, if it is judged at all.
    pub(super) fn stall_check_at(&self, r: &Req) -> Option<Time> {
        let w = self.cfg.stall_window;
        let idle = r.moved_at + w;
        let slow = (!r.handed_on).then_some(r.window.0 + w);
        has_body(r).then(|| slow.map_or(idle, |s| s.min(idle)))
    }

    /// A body that moved at `rate` (bytes/s) says the link carries at most `rate` per
    /// stream. If that is below the estimate, the estimate learns it (as from a timeout),
    /// so the next requests are sized, and judged, for the link as it is. A body that did
    /// not move at all says nothing about the rate (a cut link is not a slow one).
    fn slower_than_thought(&mut self, rate: f64) {
        let bound = rate * self.streams.max(1) as f64;
        if rate > 0.0 && self.estimator.usable().is_some_and(|est| bound < est) {
            self.estimator.sample(self.now, bound);
            self.last_retune = None;
            self.retune();
        }
    }

    /// Fewest bytes a body must move in a window not to count as stalled.
    ///
    /// `stall_min_rate`, but never more than a quarter of the request's fair share of the
    /// link: on a slow link shared by many streams every request is slow, and abandoning
    /// them all would only start them all again. Without an estimate, only a body that
    /// did not move at all is stalled.
    fn least_progress(&self) -> f64 {
        let window = self.cfg.stall_window.as_secs_f64();
        match self.estimator.usable() {
            Some(est) => {
                let share = est / self.streams.max(1) as f64;
                self.cfg.stall_min_rate.min(share / 4.0) * window
            }
            None => 1.0,
        }
    }

    /// Judges `r` at `now`, rolling its window when it passes. `link` is the engine's
    /// `body_moved` now, and `link_least` what the link as a whole must have moved over a
    /// window for a body that moved less than `least` to be waiting its turn rather than
    /// slow.
    fn judge(r: &mut Req, now: Time, window: Duration, least: f64, link: (u64, f64)) -> Verdict {
        let Some(sent) = r.sent else {
            // The driver reports nothing for it: the deadline alone watches it.
            r.window = (now, 0, link.0);
            r.moved_at = now;
            return Verdict::Fine;
        };
        if r.moved_at + window <= now {
            return Verdict::Idle(now.since(r.moved_at));
        }
        // Once the body is all handed on, its bytes say nothing more: only the idle rule.
        if !r.handed_on && r.window.0 + window <= now {
            let moved = sent - r.window.1;
            // The connection still moves (the idle rule passed) and so does the link as a
            // whole, only not this body: it waits behind its siblings in the transport's
            // send buffer (QUIC shares one across streams), it is not slow. Its deadline
            // and the job's watchdogs still watch it.
            let link_moved = link.0 - r.window.2;
            if (moved as f64) < least && (link_moved as f64) < link.1 {
                let over = now.since(r.window.0);
                return Verdict::Slow { moved, over };
            }
            r.window = (now, sent, link.0);
        }
        Verdict::Fine
    }

    /// Judges every request that is due; abandons the stalled ones.
    pub(super) fn check_stalls(&mut self) {
        let now = self.now;
        let window = self.cfg.stall_window;
        let least = self.least_progress();
        // Every body in flight moving `least` is what a link that is merely shared carries.
        let bodies = self.reqs.values().filter(|r| has_body(r)).count().max(1);
        let link = (self.body_moved, least * bodies as f64);
        loop {
            let mut stalled = None;
            for (id, r) in self.reqs.iter_mut() {
                if !has_body(r) {
                    continue;
                }
                match Self::judge(r, now, window, least, link) {
                    Verdict::Fine => {}
                    v => {
                        stalled = Some((*id, v));
                        break;
                    }
                }
            }
            let Some((id, verdict)) = stalled else {
                return;
            };
            let message = match verdict {
                Verdict::Slow { moved, over } => {
                    self.slower_than_thought(moved as f64 / over.as_secs_f64());
                    format!("{moved} bytes moved in {:.1} s", over.as_secs_f64())
                }
                Verdict::Idle(for_) => {
                    self.probing = true;
                    format!("nothing moved for {:.1} s", for_.as_secs_f64())
                }
                Verdict::Fine => String::new(),
            };
            if let Some(r) = self.reqs.remove(&id) {
                self.actions.push_back(Action::Abandon { req: id });
                self.recut_if_oversized(&r);
                self.request_failed(r, Failure::Stalled { message });
            }
        }
    }
}
