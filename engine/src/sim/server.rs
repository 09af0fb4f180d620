//! The simulated server's side: how each action the engine emits is carried out —
//! sessions, reads, chunk bodies put on the link, completes checked against what the
//! server stores — and the check that acknowledgements only ever grow by new bytes.

use std::time::Duration;

use super::{Body, Flow, Pending, Sim};
use crate::{Action, Event, Failure, JobId, RangeSet, ReqId};

impl Sim {
    pub(super) fn small_request(&mut self, req: ReqId, job: JobId, answer: Event) {
        self.open.insert(req, (job, None));
        if self.roll_failure(0).is_some() {
            let ev = Event::RequestFailed {
                req,
                failure: Failure::transient("reset", "connection reset (simulated loss)"),
            };
            self.at(self.now + self.link.rtt, Pending::Engine(ev));
            return;
        }
        if self.server.get(&job).is_some_and(|s| s.forgotten) {
            let ev = Event::RequestFailed {
                req,
                failure: Failure::SessionLost,
            };
            self.at(self.now + self.link.rtt, Pending::Engine(ev));
            return;
        }
        self.at(self.now + self.link.rtt, Pending::Engine(answer));
    }

    /// Checks the breaker's promises for a request about to go, and answers it with a 503
    /// while the server is failing (true: answered, nothing more to do).
    fn refused_by_failing_server(
        &mut self,
        req: ReqId,
        job: JobId,
        chunk: Option<(u64, u64)>,
    ) -> bool {
        use crate::breaker::State;
        match self.engine.snapshot().circuit {
            State::Open { .. } => self.report.sent_while_open += 1,
            State::HalfOpen { .. } => {
                let open = &self.open;
                self.probes.retain(|r| open.contains_key(r));
                self.probes.insert(req);
                self.report.most_out_half_open =
                    self.report.most_out_half_open.max(self.probes.len());
            }
            State::Closed => {}
        }
        if !self.server_failing || self.link.blackhole {
            return false;
        }
        self.open.insert(req, (job, chunk));
        let ev = Event::RequestFailed {
            req,
            failure: Failure::endpoint("server_unavailable", "server answered 503 (simulated)"),
        };
        self.at(self.now + self.link.rtt, Pending::Engine(ev));
        true
    }

    pub(super) fn act(&mut self, a: Action) {
        let now = self.now;
        let refused = match &a {
            Action::CreateSession { req, job }
            | Action::FetchState { req, job, .. }
            | Action::PutWhole { req, job, .. }
            | Action::Complete { req, job } => self.refused_by_failing_server(*req, *job, None),
            Action::PutChunk {
                req,
                job,
                offset,
                len,
                ..
            } => self.refused_by_failing_server(*req, *job, Some((*offset, *len))),
            _ => false,
        };
        if refused {
            self.track_acks();
            return;
        }
        match a {
            Action::CreateSession { req, job } => {
                self.open.insert(req, (job, None));
                if let Some(s) = self.server.get_mut(&job) {
                    // A new session holds nothing.
                    s.forgotten = false;
                    s.stored = RangeSet::new();
                    s.session += 1;
                }
                if let Some(sj) = self.jobs.get_mut(&job) {
                    sj.engine_acked = RangeSet::new();
                    sj.delivered = RangeSet::new();
                }
                if self.roll_failure(0).is_some() {
                    let ev = Event::RequestFailed {
                        req,
                        failure: Failure::transient("reset", "connection reset (simulated loss)"),
                    };
                    self.at(now + self.link.rtt, Pending::Engine(ev));
                } else {
                    let ev = Event::SessionReady { req, acked: vec![] };
                    self.at(now + self.link.rtt, Pending::Engine(ev));
                }
            }
            Action::FetchState { req, job, .. } => {
                let acked: Vec<_> = self
                    .server
                    .get(&job)
                    .map(|s| s.stored.iter().collect())
                    .unwrap_or_default();
                self.small_request(req, job, Event::SessionReady { req, acked });
            }
            Action::Read { job, offset, len } => {
                let sj = self.jobs.get_mut(&job).expect("read for a known job");
                assert!(
                    !sj.engine_acked.overlaps(offset..offset + len),
                    "job {job}: read {offset}+{len} overlaps acknowledged bytes"
                );
                sj.buffered.insert(offset, len);
                let start = self.reader_free_at.max(now);
                let done = start + Duration::from_secs_f64(len as f64 / self.sc.read_rate);
                self.reader_free_at = done;
                self.at(done, Pending::ReadDone { job, offset });
            }
            Action::PutChunk {
                req,
                job,
                offset,
                len,
                compress,
                ..
            } => {
                self.open.insert(req, (job, Some((offset, len))));
                let saving = self.jobs.get(&job).map_or(0.0, |j| j.saving);
                let wire = if compress {
                    (len as f64 * (1.0 - saving as f64)).max(1.0)
                } else {
                    len as f64
                };
                let r = self.report.jobs.entry(job).or_default();
                r.wire_bytes += wire as u64;
                r.chunk_requests += 1;
                r.max_chunk = r.max_chunk.max(len);
                let fail_at = self.roll_failure(len);
                let session = self.server.get(&job).map_or(0, |s| s.session);
                self.flows.insert(
                    req,
                    Flow::Sending {
                        job,
                        total: wire,
                        remaining: wire,
                        moved_at: now,
                        fail_at,
                        what: Body::Chunk { offset, len },
                        session,
                    },
                );
            }
            Action::PutWhole { req, job, .. } => {
                self.open.insert(req, (job, None));
                let size = self.server.get(&job).map_or(0, |s| s.size);
                let r = self.report.jobs.entry(job).or_default();
                r.wire_bytes += size;
                let fail_at = self.roll_failure(size);
                let session = self.server.get(&job).map_or(0, |s| s.session);
                self.flows.insert(
                    req,
                    Flow::Sending {
                        job,
                        total: size as f64,
                        remaining: size as f64,
                        moved_at: now,
                        fail_at,
                        what: Body::Whole,
                        session,
                    },
                );
            }
            Action::Complete { req, job } => {
                let s = self.server.get(&job).expect("complete for a known job");
                let sj = self.jobs.get(&job).expect("known job");
                assert_eq!(
                    sj.engine_acked.len(),
                    s.size,
                    "job {job}: complete before every byte was acknowledged"
                );
                let answer = if s.stored.len() == s.size {
                    Event::RequestDone { req }
                } else {
                    panic!("job {job}: complete while the server lacks bytes");
                };
                self.small_request(req, job, answer);
            }
            Action::Abandon { req } => {
                self.abandoned.insert(req);
                self.open.remove(&req);
                self.flows.remove(&req);
            }
            Action::Release { job, offset } => {
                if let Some(sj) = self.jobs.get_mut(&job) {
                    sj.buffered.remove(&offset);
                }
            }
            Action::Checkpoint { job, .. } => {
                self.report.jobs.entry(job).or_default().checkpoints += 1;
            }
            Action::Progress {
                job,
                acked_bytes,
                total_bytes,
                ..
            } => {
                let r = self.report.jobs.entry(job).or_default();
                r.progress_events += 1;
                assert!(acked_bytes <= total_bytes);
            }
            Action::Retrying { job, .. } => {
                self.report.jobs.entry(job).or_default().retries += 1;
            }
            Action::JobCompleted { job } => {
                let r = self.report.jobs.entry(job).or_default();
                assert!(r.completed_at.is_none(), "job {job} completed twice");
                r.completed_at = Some(now);
                if r.first_ack_at.is_none() {
                    r.first_ack_at = Some(now);
                }
            }
            Action::Watchdog { job, layer, .. } => {
                self.report
                    .jobs
                    .entry(job)
                    .or_default()
                    .watchdogs
                    .push((now, layer));
            }
            Action::Circuit { state, .. } => self.report.circuit.push((now, state)),
            // The fluid model has no connections to replace.
            Action::Reconnect => {}
            Action::JobFailed { job, code, message } => {
                self.report.jobs.entry(job).or_default().failed = Some((code, message));
            }
        }
        self.track_acks();
    }

    /// Mirrors the engine's acknowledged ranges and checks they only grow by new bytes.
    pub(super) fn track_acks(&mut self) {
        let now = self.now;
        for (id, sj) in self.jobs.iter_mut() {
            let Some(acked) = self.engine.acked(*id) else {
                continue;
            };
            if acked.len() == sj.engine_acked.len() {
                continue;
            }
            if acked.len() < sj.engine_acked.len() {
                let lost = self.server.get(id).is_some_and(|s| s.forgotten);
                assert!(
                    lost,
                    "job {id}: acknowledged bytes went backwards without a lost session"
                );
                sj.engine_acked = acked.clone();
                continue;
            }
            for r in acked.iter() {
                sj.engine_acked.insert(r);
            }
            // Buffers of acknowledged chunks are gone.
            sj.buffered.retain(|o, l| !acked.contains(*o..*o + *l));
            let rep = self.report.jobs.entry(*id).or_default();
            if rep.first_ack_at.is_none() && !acked.is_empty() {
                rep.first_ack_at = Some(now);
            }
        }
    }
}
