//! The seed's triple watchdog (STAB-1), so an upload never hangs:
//!
//! 1. **Per request:** its deadline — twice what its share of the link needs, at least
//!    10 s — restarts whenever its body moves (`timeout_for`, `request_progress`); stall
//!    detection (`stall`) judges sooner when the body stops.
//! 2. **Session** (`session_watchdog`, 60 s): a job with requests out and nothing of it
//!    moving or answered for that long: its requests are abandoned and go again at once
//!    on fresh connections, from what is acknowledged.
//! 3. **Global** (`global_watchdog`, 300 s): nothing of the job acknowledged (nor any
//!    body moving) for that long: fresh connections, the server's state read again and
//!    every byte it holds verified again, trusting no checkpoint, before the rest goes.
//!
//! A job's clocks run only while it is trying: one waiting for its turn (no request out,
//! no failure) is not hung, so its clocks restart when it next sends. A body that moves,
//! however slowly, is not hung either (on a link that dropped to 1 Mbit/s a 32 MiB chunk
//! takes minutes): its deadline and stall detection judge it. Nor is a complete, whose
//! deadline allows the server to hash the whole file. Each firing is an
//! [`Action::Watchdog`] the driver logs and shows as a job event, and restarts that clock.
//! The breaker (`crate::breaker`) is the endpoint's, these are the job's.

use super::Engine;
use crate::Time;
use crate::io::{Action, JobId, Watchdog};
use crate::job::{ChunkState, Phase};

impl Engine {
    /// A request for `job` is about to go: a job that was idle without trouble starts its
    /// clocks now.
    pub(super) fn start_watchdogs(&mut self, job: JobId) {
        let idle = !self.reqs.values().any(|r| r.job == job);
        let now = self.now;
        if let Some(j) = self.jobs.get_mut(&job)
            && idle
            && j.backoff.failures() == 0
        {
            j.alive_at = now;
            j.acked_at = now;
        }
    }

    /// When the next watchdog would fire.
    pub(super) fn next_watchdog(&self) -> Option<Time> {
        self.active
            .iter()
            .filter_map(|(_, _, id)| self.jobs.get(id))
            .filter(|j| !matches!(j.phase, Phase::Completing(_)))
            .map(|j| {
                (j.alive_at + self.cfg.session_watchdog).min(j.acked_at + self.cfg.global_watchdog)
            })
            .min()
    }

    pub(super) fn check_watchdogs(&mut self) {
        let now = self.now;
        let order = self.take_service_order();
        for &id in &order {
            let busy = self.reqs.values().any(|r| r.job == id);
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            // Waiting its turn (nothing out, nothing failed) or completing: not hung.
            if (!busy && j.backoff.failures() == 0) || matches!(j.phase, Phase::Completing(_)) {
                j.alive_at = now;
                j.acked_at = now;
                continue;
            }
            let layer = if now >= j.acked_at + self.cfg.global_watchdog {
                Watchdog::Global
            } else if now >= j.alive_at + self.cfg.session_watchdog {
                Watchdog::Session
            } else {
                continue;
            };
            self.fire(id, layer);
        }
        self.order = order;
    }

    /// Session: the job's requests are abandoned and its chunks go again at once on fresh
    /// connections, from what is acknowledged. Global: its buffers are dropped too and the
    /// server's state is read and verified again before anything else goes.
    fn fire(&mut self, id: JobId, layer: Watchdog) {
        let now = self.now;
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let why = match layer {
            Watchdog::Session => format!(
                "nothing moved or answered for {:.0} s: its requests go again on new connections",
                now.since(job.alive_at).as_secs_f64()
            ),
            Watchdog::Global => format!(
                "nothing acknowledged for {:.0} s: new connections, every byte the server holds verified again",
                now.since(job.acked_at).as_secs_f64()
            ),
        };
        self.abandon_job_requests(id);
        let Some(mut job) = self.jobs.remove(&id) else {
            return;
        };
        job.alive_at = now;
        job.not_before = now;
        match layer {
            Watchdog::Session => {
                for (_, c) in job.chunks.iter_mut() {
                    if matches!(c.state, ChunkState::InFlight(_)) {
                        c.state = ChunkState::Ready { not_before: now };
                    }
                }
                job.phase = match job.phase {
                    Phase::SessionPending(_) => Phase::NeedSession,
                    Phase::WholePending(_) => Phase::Whole,
                    Phase::Completing(_) => Phase::Transfer,
                    p => p,
                };
            }
            Watchdog::Global => {
                self.release_chunks(id, &mut job);
                job.claimed = job.acked.clone();
                job.acked_at = now;
                job.phase = match job.phase {
                    Phase::Whole | Phase::WholePending(_) => Phase::Whole,
                    _ => Phase::NeedSession,
                };
                job.verify_all = job.has_session;
            }
        }
        self.jobs.insert(id, job);
        self.actions.push_back(Action::Watchdog {
            job: id,
            layer,
            why,
        });
        self.actions.push_back(Action::Reconnect);
    }
}
