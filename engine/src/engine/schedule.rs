//! Who goes next: admitting queued jobs, the service order (priority, then round-robin),
//! session calls and completes, sending ready chunks and small files within the stream
//! budget, and reading ahead into free buffers with chunk sizes from the estimate.

use std::ops::Bound::{Excluded, Included, Unbounded};
use std::time::Duration;

use super::{COMPLETE_HASH_RATE, Engine, MIB, ReqKind};

/// Largest chunk of a file still being written (see `growing_chunk_len`).
const GROWING_CHUNK_MAX: u64 = 4 * MIB;
use crate::io::{Action, JobId};
use crate::job::{Chunk, ChunkState, Job, Phase};
use crate::pool;

impl Engine {
    fn admit(&mut self) {
        while self.active.len() < self.cfg.max_active_jobs {
            let Some(key) = self.queue.pop_first() else {
                break;
            };
            self.active.insert(key);
        }
    }

    /// Active jobs in service order: by priority, and within a priority starting after the
    /// cursor (round-robin). The list lives in a reused buffer: give it back with
    /// `self.order = order` when done.
    pub(super) fn take_service_order(&mut self) -> Vec<JobId> {
        let mut out = std::mem::take(&mut self.order);
        out.clear();
        let mut class = self.active.first().map(|k| k.0);
        while let Some(prio) = class {
            let (lo, hi) = ((prio, 0, 0), (prio, u64::MAX, JobId::MAX));
            match self.cursor.filter(|c| c.0 == prio) {
                Some(c) => {
                    let after = self.active.range((Excluded(c), Included(hi)));
                    let up_to = self.active.range((Included(lo), Included(c)));
                    out.extend(after.chain(up_to).map(|k| k.2));
                }
                None => out.extend(self.active.range(lo..=hi).map(|k| k.2)),
            }
            class = self
                .active
                .range((Excluded(hi), Unbounded))
                .next()
                .map(|k| k.0);
        }
        out
    }

    pub(super) fn schedule(&mut self) {
        self.admit();
        self.session_calls_and_completes();
        self.dispatch();
        self.read_ahead();
    }

    fn session_calls_and_completes(&mut self) {
        let now = self.now;
        let order = self.take_service_order();
        for &id in &order {
            let sends = self
                .jobs
                .get(&id)
                .is_some_and(|j| matches!(j.phase, Phase::NeedSession | Phase::Transfer));
            if sends && !self.circuit_admits() {
                break;
            }
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            match job.phase {
                Phase::NeedSession
                    if job.not_before <= now && self.session_calls < self.cfg.max_session_calls =>
                {
                    let has = job.has_session;
                    let timeout = self.timeout_for(id, 0);
                    let req = self.new_req(id, ReqKind::Session, timeout);
                    self.session_calls += 1;
                    let mut verify_all = false;
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.phase = Phase::SessionPending(req);
                        verify_all = std::mem::take(&mut job.verify_all);
                    }
                    self.actions.push_back(if has {
                        Action::FetchState {
                            req,
                            job: id,
                            verify_all,
                        }
                    } else {
                        Action::CreateSession { req, job: id }
                    });
                }
                Phase::Transfer
                    if !job.spec.growing
                        && job.fully_acked()
                        && job.chunks.is_empty()
                        && job.not_before <= now =>
                {
                    // The server may hash the whole file (after a restart it has no running
                    // hash): allow for that at a modest disk speed.
                    let hashing = Duration::from_secs(job.spec.size / COMPLETE_HASH_RATE);
                    let timeout = self
                        .timeout_for(id, 0)
                        .max(self.cfg.request_timeout_default)
                        .max(hashing);
                    let req = self.new_req(id, ReqKind::Complete, timeout);
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.phase = Phase::Completing(req);
                    }
                    self.actions.push_back(Action::Complete { req, job: id });
                }
                _ => {}
            }
        }
        self.order = order;
    }

    /// Whole-file sends may run up to twice the stream limit: two of each one's three
    /// round trips (create, complete) carry a few hundred bytes, so at the stream limit
    /// alone the link idled a quarter of the time between a capture's photos (300 × 512 KiB
    /// at 100 Mbit/s, 50 ms: 72-75 % of line; 82 % at twice). Memory stays bounded: they
    /// are at most 4 MiB each and the limit shrinks with the pool.
    fn whole_limit(&self) -> usize {
        let limit = self.stream_limit();
        match self.delivered {
            0 => limit,
            _ => 2 * limit,
        }
    }

    fn dispatch(&mut self) {
        loop {
            let chunk_room = self.streams < self.stream_limit();
            let whole_extra = self.whole_limit() - self.stream_limit();
            let whole_room =
                self.streams < self.whole_limit() && self.slots < self.buffers + whole_extra;
            if !(chunk_room || whole_room) || self.ramp_blocked() || !self.circuit_admits() {
                break;
            }
            let now = self.now;
            let order = self.take_service_order();
            let pick = order.iter().find_map(|&id| {
                let job = self.jobs.get(&id)?;
                match job.phase {
                    Phase::Transfer if chunk_room => job.ready_chunk(now).map(|o| (id, Some(o))),
                    Phase::Whole if whole_room && job.not_before <= now => Some((id, None)),
                    _ => None,
                }
            });
            self.order = order;
            let Some((id, chunk)) = pick else { break };
            if self.streams == 0 {
                self.ramp_started = 0;
            }
            self.ramp_started += 1;
            self.ramp_last = Some(now);
            self.cursor = self.key(id);
            match chunk {
                Some(offset) => self.send_chunk(id, offset),
                None => self.send_whole(id),
            }
        }
    }

    fn send_chunk(&mut self, id: JobId, offset: u64) {
        let Some((len, avoid)) = self
            .jobs
            .get(&id)
            .and_then(|j| j.chunks.get(&offset))
            .map(|c| (c.len, c.last_lane.filter(|_| c.sends > 0)))
        else {
            return;
        };
        let lane = self.lane(avoid);
        let timeout = self.timeout_for(id, len);
        let req = self.new_req(id, ReqKind::Chunk { offset, len }, timeout);
        self.streams += 1;
        let Some(c) = self
            .jobs
            .get_mut(&id)
            .and_then(|j| j.chunks.get_mut(&offset))
        else {
            return;
        };
        c.state = ChunkState::InFlight(req);
        c.sends += 1;
        c.last_lane = Some(lane);
        let compress = c.compress;
        self.actions.push_back(Action::PutChunk {
            req,
            job: id,
            offset,
            len,
            lane,
            compress,
        });
    }

    fn send_whole(&mut self, id: JobId) {
        let Some(size) = self.jobs.get(&id).map(|j| j.spec.size) else {
            return;
        };
        let lane = self.lane(None);
        let timeout = self.timeout_for(id, size);
        let req = self.new_req(id, ReqKind::Whole, timeout);
        self.streams += 1;
        self.slots += 1;
        if let Some(job) = self.jobs.get_mut(&id) {
            job.phase = Phase::WholePending(req);
        }
        self.actions
            .push_back(Action::PutWhole { req, job: id, lane });
    }

    /// The chunk size the link calls for now, within what memory allows.
    pub(super) fn chunk_target(&self) -> u64 {
        if self.probing {
            return self.cfg.first_chunk;
        }
        let link = match self.tier {
            Some(t) if self.estimator.usable().is_some() => t.chunk_size(),
            // A cold link: small first chunks, so the first acknowledgement is quick,
            // doubling until the estimate takes over.
            _ => (self.cfg.first_chunk << self.cold_acks.min(4)).min(4 * MIB),
        };
        link.min(pool::chunk_cap(self.buffers))
            .max(self.cfg.first_chunk)
    }

    /// The size of the next chunk of `job` starting at `start` with `gap` bytes free.
    fn chunk_len(&self, job: &Job, gap: u64) -> u64 {
        if let Some(fixed) = self.cfg.chunk_size {
            return fixed.min(gap).max(1);
        }
        let target = self.chunk_target();
        // Spread a job's remaining bytes over the streams so the tail uses them all.
        let spread = job
            .unclaimed_bytes()
            .div_ceil(self.stream_limit() as u64)
            .max(self.cfg.min_chunk);
        let len = target.min(spread).max(1);
        if gap <= len {
            gap
        } else if gap - len < self.cfg.min_chunk {
            // Never leave a sliver behind: the next chunk gets at least min_chunk, unless
            // that would make this one smaller than a first chunk; then it takes the rest.
            match gap.checked_sub(self.cfg.min_chunk) {
                Some(cut) if cut >= self.cfg.first_chunk => cut,
                _ => gap,
            }
        } else {
            len
        }
    }

    /// A growing file's next chunk: only a whole one behind the writer's edge, never the
    /// region still being written; the tail waits for the seal. At most
    /// [`GROWING_CHUNK_MAX`]: what is written but not yet sent when the capture ends is
    /// what the user waits for, and a writer (30 MB/s) is slower than the link anyway.
    fn growing_chunk_len(&self, gap: u64) -> Option<u64> {
        let full = match self.cfg.chunk_size {
            Some(fixed) => fixed,
            None => self.chunk_target().min(GROWING_CHUNK_MAX),
        };
        (gap >= full).then_some(full)
    }

    fn read_ahead(&mut self) {
        while self.reads < self.cfg.max_reads && self.slots < self.buffers {
            let order = self.take_service_order();
            let pick = order.iter().find_map(|&id| {
                let job = self.jobs.get(&id)?;
                if job.phase != Phase::Transfer {
                    return None;
                }
                if let Some(&(start, len)) = job.resend.front() {
                    return Some((id, start, len));
                }
                let (start, end) = job.next_unclaimed()?;
                let len = match job.spec.growing {
                    true => self.growing_chunk_len(end - start)?,
                    false => self.chunk_len(job, end - start),
                };
                Some((id, start, len))
            });
            self.order = order;
            let Some((id, offset, len)) = pick else { break };
            let Some(job) = self.jobs.get_mut(&id) else {
                break;
            };
            if job.resend.front() == Some(&(offset, len)) {
                job.resend.pop_front();
            }
            job.claimed.insert(offset..offset + len);
            job.chunks.insert(
                offset,
                Chunk {
                    len,
                    state: ChunkState::Reading,
                    compress: false,
                    sends: 0,
                    last_lane: None,
                },
            );
            self.reads += 1;
            self.slots += 1;
            self.actions.push_back(Action::Read {
                job: id,
                offset,
                len,
            });
        }
    }
}
