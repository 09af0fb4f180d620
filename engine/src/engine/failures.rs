//! What the engine does when a request fails: the one retry policy applied per cause —
//! a permanent refusal fails the job, a lost session starts a new one, a changed server
//! state is fetched again, bytes another request holds wait a moment, and network trouble
//! backs off (the job's [`crate::backoff::Backoff`]) without ever failing the job — a
//! stalled request for at most `stall_retry`, so the upload resumes soon after the link does.

use std::time::Duration;

use super::{BUSY_WAIT, Engine, Req, ReqKind};
use crate::Time;
use crate::io::{Action, Failure, JobId, ReqId};
use crate::job::{ChunkState, Job, Phase};

impl Engine {
    pub(super) fn request_failed(&mut self, r: Req, failure: Failure) {
        self.end_request_accounting(r.kind);
        let id = r.job;
        if let Failure::Resend { chunks } = failure {
            match r.kind {
                ReqKind::Complete => self.resend(id, chunks),
                _ => {
                    let message = "a resend answered a request other than complete".into();
                    self.fail_job(id, "internal".into(), message);
                }
            }
            return;
        }
        let stalled = matches!(failure, Failure::Stalled { .. });
        self.endpoint_failed(&r, &failure);
        let (code, message, retry_after) = match failure {
            Failure::Moved => {
                self.moved(r);
                return;
            }
            Failure::Permanent { code, message } => {
                self.fail_job(id, code, message);
                return;
            }
            Failure::SessionLost if r.kind != ReqKind::Whole => {
                self.reset_session(id);
                return;
            }
            Failure::StateChanged if matches!(r.kind, ReqKind::Chunk { .. }) => {
                self.resync(id);
                return;
            }
            Failure::Busy { retry_after } => {
                if let ReqKind::Chunk { offset, .. } = r.kind {
                    self.chunk_busy(id, offset, retry_after.unwrap_or(BUSY_WAIT).max(BUSY_WAIT));
                    return;
                }
                (
                    "busy".to_string(),
                    "another request holds these bytes".to_string(),
                    retry_after,
                )
            }
            Failure::StateChanged => (
                "state_changed".to_string(),
                "the server's state changed under the request".to_string(),
                None,
            ),
            Failure::SessionLost => (
                "session_lost".to_string(),
                "the server lost the upload".to_string(),
                None,
            ),
            Failure::Transient {
                code,
                message,
                retry_after,
                ..
            } => (code, message, retry_after),
            Failure::Stalled { message } => ("stalled".to_string(), message, None),
            Failure::Resend { .. } => return,
        };
        let cap = self.retry_cap(stalled);
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let circuit = self.breaker.open_until().map(|t| t.since(now));
        let delay = job
            .backoff
            .fail_request(&mut self.rng, retry_after, r.started, now)
            .min(cap)
            .max(circuit.unwrap_or(Duration::ZERO));
        let when = now + delay;
        let why = format!("{}{code}: {message}", requeue(job, r.kind, when));
        self.actions.push_back(Action::Retrying {
            job: id,
            why,
            attempt: job.backoff.failures(),
            delay,
            waiting: job.backoff.waiting(),
        });
    }

    /// Chunks the server holds go again at their boundaries (see [`Failure::Resend`]):
    /// no longer acknowledged, still claimed (nothing else cuts them), read first.
    fn resend(&mut self, id: JobId, chunks: Vec<(u64, u64)>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.phase = Phase::Transfer;
        for (offset, len) in chunks {
            job.acked.remove(offset..offset + len);
            job.resend.push_back((offset, len));
        }
    }

    /// Tells the breaker (and the job's session watchdog) how a request ended badly.
    fn endpoint_failed(&mut self, r: &Req, failure: &Failure) {
        let answered = failure.answered();
        if answered && let Some(job) = self.jobs.get_mut(&r.job) {
            job.alive_at = self.now;
        }
        let why = match failure {
            Failure::Transient { code, message, .. } => format!("{code}: {message}"),
            Failure::Stalled { message } => format!("stalled: {message}"),
            other => format!("{other:?}"),
        };
        let endpoint = matches!(failure, Failure::Transient { endpoint: true, .. });
        if let Some(t) = self
            .breaker
            .failure(self.now, r.started, endpoint, r.probe, &why)
        {
            self.actions.push_back(Action::Circuit {
                state: t.to,
                why: t.why,
            });
        }
    }

    /// A request succeeded: the breaker hears it.
    pub(super) fn endpoint_succeeded(&mut self) {
        if let Some(t) = self.breaker.success(self.now) {
            self.actions.push_back(Action::Circuit {
                state: t.to,
                why: t.why,
            });
        }
    }

    /// May a request go now? No while the breaker is open; one at a time while half-open.
    pub(super) fn circuit_admits(&mut self) -> bool {
        if let Some(t) = self.breaker.half_open_due(self.now) {
            self.actions.push_back(Action::Circuit {
                state: t.to,
                why: t.why,
            });
        }
        let probe_out = self.reqs.values().any(|r| r.probe);
        self.breaker.admits(self.now, probe_out)
    }

    /// The longest a retry waits. While the link looks cut, every retry is a cheap probe
    /// (a failed connect, a re-read of the server's state too), so the upload goes on
    /// within a second or so of the link's return.
    fn retry_cap(&self, stalled: bool) -> Duration {
        match stalled || self.probing {
            true => self.cfg.stall_retry,
            false => Duration::MAX,
        }
    }

    /// The request's connection left with its path: it goes again at once, on another
    /// lane, and the job's backoff does not grow (nothing failed: the host moved).
    fn moved(&mut self, r: Req) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&r.job) else {
            return;
        };
        let why = format!(
            "{}its connection's path is gone; sent again at once on the new path",
            requeue(job, r.kind, now)
        );
        self.actions.push_back(Action::Retrying {
            job: r.job,
            why,
            attempt: job.backoff.failures(),
            delay: Duration::ZERO,
            waiting: job.backoff.waiting(),
        });
    }

    /// Another request holds a chunk's bytes on the server: this chunk waits `delay`; the
    /// job's backoff does not grow (nothing is wrong with the network), and other chunks go on.
    fn chunk_busy(&mut self, id: JobId, offset: u64, delay: Duration) {
        let when = self.now + delay;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(c) = job.chunks.get_mut(&offset) {
            c.state = ChunkState::Ready { not_before: when };
        }
        self.actions.push_back(Action::Retrying {
            job: id,
            why: format!("chunk at {offset}: another request holds these bytes on the server"),
            attempt: job.backoff.failures(),
            delay,
            waiting: job.backoff.waiting(),
        });
    }

    /// The server holds chunks the engine does not know: drop what the job holds and fetch
    /// the state again, after the job's backoff (so a conflict that persists cannot spin).
    fn resync(&mut self, id: JobId) {
        self.abandon_job_requests(id);
        let now = self.now;
        let Some(mut job) = self.jobs.remove(&id) else {
            return;
        };
        self.release_chunks(id, &mut job);
        // The first re-read since the last acknowledgement goes at once: after a cut link
        // returns, chunks that reached the server while their answers were lost conflict
        // with the probes, and the upload should not wait a backoff for that news.
        let delay = match job.resyncs_since_ack {
            0 => Duration::ZERO,
            _ => job
                .backoff
                .fail(&mut self.rng, None)
                .min(self.retry_cap(false)),
        };
        job.resyncs_since_ack += 1;
        job.claimed = job.acked.clone();
        job.phase = Phase::NeedSession;
        job.not_before = now + delay;
        self.actions.push_back(Action::Retrying {
            job: id,
            why: "the server holds chunks this run did not send; fetching its state again".into(),
            attempt: job.backoff.failures(),
            delay,
            waiting: job.backoff.waiting(),
        });
        self.jobs.insert(id, job);
    }

    /// Abandons every request of a job.
    pub(super) fn abandon_job_requests(&mut self, id: JobId) {
        let others: Vec<(ReqId, ReqKind)> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.job == id)
            .map(|(rid, r)| (*rid, r.kind))
            .collect();
        for (rid, kind) in others {
            self.reqs.remove(&rid);
            self.actions.push_back(Action::Abandon { req: rid });
            self.end_request_accounting(kind);
        }
    }

    /// A request that ran out of time says the link is slower than the engine assumed
    /// (the link changed, or the estimate is stale and no request completes to correct
    /// it): its share moved at most `len / elapsed`. That bound goes into the estimate, and
    /// a chunk bigger than the (perhaps lower) tier now wants is cut again rather than
    /// retried whole and doomed the same way.
    pub(super) fn timed_out(&mut self, r: &Req) {
        let ReqKind::Chunk { len, .. } = r.kind else {
            return;
        };
        let elapsed = self.now.since(r.started).as_secs_f64();
        if elapsed > 0.0 {
            // `streams` still counts this request: the link was shared that many ways.
            let bound = len as f64 * self.streams.max(1) as f64 / elapsed;
            if self.estimator.usable().is_some_and(|est| bound < est) {
                self.estimator.sample(self.now, bound);
                self.last_retune = None;
                self.retune();
            }
        }
        self.recut_if_oversized(r);
    }

    /// A failed chunk bigger than the engine now wants is dropped and its bytes claimed
    /// again at the current size, rather than retried whole and doomed the same way.
    pub(super) fn recut_if_oversized(&mut self, r: &Req) {
        let ReqKind::Chunk { offset, len } = r.kind else {
            return;
        };
        if self.cfg.chunk_size.is_some() || len <= self.chunk_target() {
            return;
        }
        if let Some(job) = self.jobs.get_mut(&r.job)
            && let Some(c) = job.chunks.remove(&offset)
        {
            job.claimed.remove(offset..offset + c.len);
            self.slots -= 1;
            self.actions
                .push_back(Action::Release { job: r.job, offset });
        }
    }

    /// The server forgot the session: start over with a new one (a bounded number of times).
    fn reset_session(&mut self, id: JobId) {
        let resets = match self.jobs.get_mut(&id) {
            Some(job) => {
                job.session_resets += 1;
                job.session_resets
            }
            None => return,
        };
        if resets > self.cfg.max_session_resets {
            self.fail_job(
                id,
                "session_lost".into(),
                "the server keeps forgetting the upload session".into(),
            );
            return;
        }
        // Everything the job holds belongs to the lost session.
        self.abandon_job_requests(id);
        let Some(mut job) = self.jobs.remove(&id) else {
            return;
        };
        self.release_chunks(id, &mut job);
        job.acked = crate::RangeSet::new();
        job.claimed = crate::RangeSet::new();
        job.has_session = false;
        job.phase = Phase::NeedSession;
        job.not_before = self.now;
        self.jobs.insert(id, job);
    }
}

/// Puts what a request carried back to go again at `when` (its chunk, session call,
/// whole-file send or complete); returns what it was, as the start of a reason.
fn requeue(job: &mut Job, kind: ReqKind, when: Time) -> String {
    match kind {
        ReqKind::Chunk { offset, .. } => {
            if let Some(c) = job.chunks.get_mut(&offset) {
                c.state = ChunkState::Ready { not_before: when };
            }
            return format!("chunk at {offset}: ");
        }
        ReqKind::Session => job.phase = Phase::NeedSession,
        ReqKind::Whole => job.phase = Phase::Whole,
        ReqKind::Complete => job.phase = Phase::Transfer,
    }
    job.not_before = when;
    match kind {
        ReqKind::Session => "session: ".into(),
        ReqKind::Complete => "complete: ".into(),
        _ => String::new(),
    }
}
