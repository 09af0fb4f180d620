//! The engine: every upload decision, as a state machine the driver feeds.
//!
//! ```text
//! driver: handle(now, event) / handle_timeout(now)  ->  engine  ->  poll_action() until None
//!         sleep until poll_timeout()
//! ```
//! Jobs wait in a priority queue and are admitted up to a bound, so 10,000 queued photos
//! cost nothing per decision. Admitted jobs share one stream budget (the speed tier's
//! parallelism, capped by the buffer pool): higher priority first, equal priorities
//! round-robin. Small files go in one request each; big ones in chunks whose size follows
//! the bandwidth estimate, starting small so the first acknowledgement comes early.
//!
//! This file holds the state and the events' bookkeeping; `schedule` decides who goes
//! next, `pacing` sizes streams, deadlines and lanes from the estimate, `failures`
//! applies the retry policy (and the endpoint's breaker) to each kind of failure,
//! `stall` judges bodies that stopped moving and `watchdog` jobs that hang.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::breaker::Breaker;
use crate::estimator::Estimator;
use crate::io::{Action, Event, Failure, JobId, JobSpec, ReqId};
use crate::job::{ChunkState, Job, Phase};
use crate::rng::Rng;
use crate::small_map::SmallMap;
use crate::tier::Tier;
use crate::{Time, pool};

mod failures;
mod pacing;
mod schedule;
mod stall;
pub mod watchdog;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Bytes per second the server is assumed to hash at, at worst, when completing.
const COMPLETE_HASH_RATE: u64 = 150_000_000;
/// How long a chunk waits when the server says another request holds its bytes.
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Knobs; the defaults are the seed's numbers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Connections (lanes) the driver spreads requests over.
    pub lanes: usize,
    /// Fixed parallelism instead of the speed tier's.
    pub streams: Option<usize>,
    /// Fixed chunk size instead of the speed tier's.
    pub chunk_size: Option<u64>,
    /// First chunk of a cold link; later ones double until the estimate is usable. It fits
    /// a fresh QUIC window (128 KiB) with its headers, so it arrives in one round trip.
    pub first_chunk: u64,
    /// No chunk smaller than this except a file's tail and a cold link's first chunks.
    pub min_chunk: u64,
    /// Files up to this size go in one request.
    pub single_request_max: u64,
    /// Jobs admitted at once (the rest wait in the queue).
    pub max_active_jobs: usize,
    /// Session calls (create, state) out at once.
    pub max_session_calls: usize,
    /// Reads out at once.
    pub max_reads: usize,
    /// Acks between checkpoints.
    pub checkpoint_every: u32,
    pub progress_every: Duration,
    pub progress_min_bytes: u64,
    /// How often the tier may change.
    pub retune_every: Duration,
    /// New streams of a cold link start this far apart.
    pub ramp_step: Duration,
    /// Compress when the sample says it saves more than this fraction.
    pub compress_threshold: f32,
    /// A request never times out sooner than this.
    pub request_timeout_floor: Duration,
    /// Timeout while there is no usable estimate.
    pub request_timeout_default: Duration,
    /// Lowest per-stream rate assumed when sizing a timeout (bytes/s).
    pub min_stream_rate: f64,
    pub max_session_resets: u32,
    /// A request whose body moved less than `stall_min_rate` over this window is stalled:
    /// abandoned and its bytes sent again on another lane (needs the driver's
    /// [`Event::RequestProgress`]).
    pub stall_window: Duration,
    /// Bytes per second below which a body counts as stalled.
    pub stall_min_rate: f64,
    /// Longest wait before a stalled request's bytes go again. A stall cost the server
    /// nothing, and a link that is back should be used at once: while the link is dead the
    /// retries are cheap probes, each stalling in its turn.
    pub stall_retry: Duration,
    /// A job with requests out and nothing moving or answered this long gets fresh
    /// connections and the server's state read again (the seed's 60 s session watchdog).
    pub session_watchdog: Duration,
    /// A job with requests out and nothing acknowledged this long is restarted from the
    /// server's state, every byte it holds verified again (the seed's 300 s global watchdog).
    pub global_watchdog: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            lanes: 4,
            streams: None,
            chunk_size: None,
            first_chunk: 96 * KIB,
            min_chunk: 256 * KIB,
            single_request_max: 4 * MIB,
            max_active_jobs: 32,
            max_session_calls: 8,
            max_reads: 2,
            checkpoint_every: 10,
            progress_every: Duration::from_millis(33),
            progress_min_bytes: 16 * KIB,
            retune_every: Duration::from_millis(1500),
            ramp_step: Duration::from_millis(10),
            compress_threshold: 0.10,
            request_timeout_floor: Duration::from_secs(10),
            request_timeout_default: Duration::from_secs(30),
            min_stream_rate: 8.0 * KIB as f64,
            max_session_resets: 3,
            stall_window: Duration::from_secs(5),
            stall_min_rate: 8.0 * KIB as f64,
            stall_retry: Duration::from_secs(1),
            session_watchdog: Duration::from_secs(60),
            global_watchdog: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqKind {
    Session,
    Chunk { offset: u64, len: u64 },
    Whole,
    Complete,
}

#[derive(Clone, Debug)]
struct Req {
    job: JobId,
    kind: ReqKind,
    started: Time,
    deadline: Time,
    /// What the deadline allows after the last sign of progress (the per-request watchdog
    /// restarts whenever the body moves).
    timeout: Duration,
    /// Link-wide delivered bytes when it started (for the delivery-rate sample).
    delivered_at_start: u64,
    /// Body bytes the transport has handed on, as the driver last reported (None: no report).
    sent: Option<u64>,
    /// The driver reported the whole body handed on: only the answer is awaited.
    handed_on: bool,
    /// Start of the current stall window, and `sent` and the engine's `body_moved` at
    /// that moment.
    window: (Time, u64, u64),
    /// When the body last moved, as far as the driver said (its start until then).
    moved_at: Time,
    /// Sent while the circuit breaker was half-open: its outcome decides.
    probe: bool,
}

/// What the engine is doing, for Status.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub tier: Option<Tier>,
    /// Bytes per second, once usable.
    pub estimate: Option<f64>,
    pub stream_limit: usize,
    pub streams_in_flight: usize,
    pub buffers: usize,
    pub buffers_in_use: usize,
    pub jobs_active: usize,
    pub jobs_queued: usize,
    /// The endpoint's circuit breaker and health score (0-100).
    pub circuit: crate::breaker::State,
    pub health: f64,
}

/// A job's standing, for its record and Status.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub acked_bytes: u64,
    pub in_flight: usize,
    /// Past the quick retries: waiting on a transient error.
    pub waiting: bool,
    pub next_attempt: Option<Time>,
    pub failures: u32,
}

pub struct Engine {
    cfg: Config,
    rng: Rng,
    now: Time,
    jobs: BTreeMap<JobId, Job>,
    /// Not yet admitted, in the order they will be.
    queue: BTreeSet<(Reverse<u8>, u64, JobId)>,
    /// Admitted, in priority order.
    active: BTreeSet<(Reverse<u8>, u64, JobId)>,
    /// The job served last, so the next dispatch starts after it.
    cursor: Option<(Reverse<u8>, u64, JobId)>,
    reqs: SmallMap<ReqId, Req>,
    next_req: ReqId,
    next_seq: u64,
    estimator: Estimator,
    breaker: Breaker,
    tier: Option<Tier>,
    last_retune: Option<Time>,
    /// Chunks acknowledged on this link: a cold link's chunk size doubles with each, so a
    /// slow link is not handed big chunks before its estimate exists.
    cold_acks: u32,
    /// A body stopped moving altogether: the link may be cut. Until something is
    /// acknowledged again, chunks are small probes, so a returning link shows at once.
    probing: bool,
    delivered: u64,
    /// Body bytes handed on over all requests, ever: whether the link as a whole moves
    /// while one body does not (that one is queued behind its siblings, not slow).
    body_moved: u64,
    buffers: usize,
    /// Buffers held: chunks reading, ready or in flight, and whole-file sends.
    slots: usize,
    reads: usize,
    streams: usize,
    session_calls: usize,
    ramp_last: Option<Time>,
    ramp_started: usize,
    next_lane: usize,
    actions: VecDeque<Action>,
    /// Reused for [`Engine::take_service_order`], so scheduling does not allocate.
    order: Vec<JobId>,
}

impl Engine {
    pub fn new(cfg: Config, seed: u64) -> Engine {
        Engine {
            cfg,
            rng: Rng::new(seed),
            now: Time::ZERO,
            jobs: BTreeMap::new(),
            queue: BTreeSet::new(),
            active: BTreeSet::new(),
            cursor: None,
            reqs: SmallMap::new(),
            next_req: 1,
            next_seq: 0,
            estimator: Estimator::new(),
            breaker: Breaker::default(),
            tier: None,
            last_retune: None,
            cold_acks: 0,
            probing: false,
            delivered: 0,
            body_moved: 0,
            buffers: pool::buffers_for(u64::MAX),
            slots: 0,
            reads: 0,
            streams: 0,
            session_calls: 0,
            ramp_last: None,
            ramp_started: 0,
            next_lane: 0,
            actions: VecDeque::new(),
            order: Vec::new(),
        }
    }

    /// Feeds one event at `now`; then poll actions.
    pub fn handle(&mut self, now: Time, event: Event) {
        self.now = self.now.max(now);
        match event {
            Event::JobAdded { job, spec } => self.add_job(job, spec),
            Event::JobCancelled { job } => self.drop_job(job),
            Event::JobGrew { job, size } => self.grew(job, size, false),
            Event::JobSealed { job, size } => self.grew(job, size, true),
            Event::SessionReady { req, acked } => self.session_ready(req, acked),
            Event::ReadDone {
                job,
                offset,
                saving,
            } => self.read_done(job, offset, saving),
            Event::ReadFailed {
                job,
                offset,
                code,
                message,
            } => {
                let _ = offset;
                self.fail_job(job, code, message);
            }
            Event::RequestProgress {
                req,
                bytes,
                all,
                moved_at,
            } => self.request_progress(req, bytes, all, moved_at),
            Event::RequestDone { req } => self.request_done(req),
            Event::RequestFailed { req, failure } => {
                if let Some(r) = self.reqs.remove(&req) {
                    self.request_failed(r, failure);
                }
            }
            Event::MemoryAvailable { bytes } => self.buffers = pool::buffers_for(bytes),
        }
        self.schedule();
    }

    /// Timers: call at (or after) [`Engine::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.check_stalls();
        self.check_watchdogs();
        while let Some(id) = self.first_expired() {
            if let Some(r) = self.reqs.remove(&id) {
                self.actions.push_back(Action::Abandon { req: id });
                let secs = self.now.since(r.started).as_secs_f64();
                self.timed_out(&r);
                self.request_failed(
                    r,
                    Failure::transient("timeout", format!("no answer after {secs:.1} s")),
                );
            }
        }
        self.schedule();
    }

    fn first_expired(&self) -> Option<ReqId> {
        let now = self.now;
        let mut expired = self.reqs.iter().filter(|(_, r)| r.deadline <= now);
        expired.next().map(|(id, _)| *id)
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the engine wants [`Engine::handle_timeout`] called (None: only on events).
    pub fn poll_timeout(&self) -> Option<Time> {
        let deadlines = self.reqs.values().map(|r| r.deadline);
        let retries = self
            .active
            .iter()
            .filter_map(|(_, _, id)| self.jobs.get(id)?.next_attempt(self.now));
        let ramp = self.ramp_blocked().then(|| self.ramp_next()).flatten();
        let stalls = self.reqs.values().filter_map(|r| self.stall_check_at(r));
        let circuit = self.breaker.open_until();
        let watchdogs = self.next_watchdog();
        deadlines
            .chain(retries)
            .chain(ramp)
            .chain(stalls)
            .chain(circuit)
            .chain(watchdogs)
            .min()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            tier: self.tier,
            estimate: self.estimator.usable(),
            stream_limit: self.stream_limit(),
            streams_in_flight: self.streams,
            buffers: self.buffers,
            buffers_in_use: self.slots,
            jobs_active: self.active.len(),
            jobs_queued: self.queue.len(),
            circuit: self.breaker.state(self.now),
            health: self.breaker.score(),
        }
    }

    pub fn job(&self, job: JobId) -> Option<JobView> {
        let j = self.jobs.get(&job)?;
        Some(JobView {
            acked_bytes: j.acked.len(),
            in_flight: j.in_flight(),
            waiting: j.backoff.waiting(),
            next_attempt: j.next_attempt(self.now),
            failures: j.backoff.failures(),
        })
    }

    /// Byte ranges the server acknowledged for `job` (what a checkpoint records).
    pub fn acked(&self, job: JobId) -> Option<&crate::RangeSet> {
        self.jobs.get(&job).map(|j| &j.acked)
    }

    // ---- events ----

    fn add_job(&mut self, id: JobId, spec: JobSpec) {
        if self.jobs.contains_key(&id) {
            return;
        }
        if spec.size == 0 && !spec.growing {
            self.actions.push_back(Action::JobFailed {
                job: id,
                code: "file_empty".into(),
                message: "nothing to upload".into(),
            });
            return;
        }
        let whole = !spec.has_session && !spec.growing && spec.size <= self.cfg.single_request_max;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((Reverse(spec.priority), seq, id));
        self.jobs.insert(id, Job::new(spec, seq, whole));
    }

    /// A growing job's file reached `size` bytes; `sealed`: and ends there.
    fn grew(&mut self, id: JobId, size: u64, sealed: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if !job.spec.growing {
            return;
        }
        // Bytes already read (or being read) lie below the old edge: a file shorter than
        // that lost bytes the upload holds.
        let read_up_to = job
            .claimed
            .iter()
            .last()
            .map_or(0, |r| r.end)
            .max(job.spec.size);
        if size < read_up_to {
            let message = format!(
                "the file shrank to {size} bytes while {read_up_to} bytes of it were being uploaded"
            );
            self.fail_job(id, "file_truncated".into(), message);
            return;
        }
        if sealed && size == 0 {
            self.fail_job(
                id,
                "file_empty".into(),
                "sealed with nothing written".into(),
            );
            return;
        }
        job.spec.size = size;
        job.spec.growing = !sealed;
    }

    fn key(&self, id: JobId) -> Option<(Reverse<u8>, u64, JobId)> {
        self.jobs
            .get(&id)
            .map(|j| (Reverse(j.spec.priority), j.seq, id))
    }

    /// Removes a job: its requests are abandoned and its buffers released.
    fn drop_job(&mut self, id: JobId) {
        let Some(key) = self.key(id) else { return };
        self.abandon_job_requests(id);
        if let Some(mut job) = self.jobs.remove(&id) {
            self.release_chunks(id, &mut job);
        }
        self.queue.remove(&key);
        self.active.remove(&key);
    }

    /// Counters a request held, released when it ends in any way. (A chunk's buffer is
    /// the chunk's, not its request's: it stays held for a retry.)
    fn end_request_accounting(&mut self, kind: ReqKind) {
        match kind {
            ReqKind::Session => self.session_calls -= 1,
            ReqKind::Chunk { .. } => self.streams -= 1,
            ReqKind::Whole => {
                self.streams -= 1;
                self.slots -= 1;
            }
            ReqKind::Complete => {}
        }
    }

    /// Drops every chunk a job holds, with its buffer.
    fn release_chunks(&mut self, id: JobId, job: &mut Job) {
        for (offset, c) in std::mem::take(&mut job.chunks) {
            if c.state == ChunkState::Reading {
                self.reads -= 1;
            }
            self.slots -= 1;
            self.actions.push_back(Action::Release { job: id, offset });
        }
    }

    fn fail_job(&mut self, id: JobId, code: String, message: String) {
        if !self.jobs.contains_key(&id) {
            return;
        }
        self.drop_job(id);
        self.actions.push_back(Action::JobFailed {
            job: id,
            code,
            message,
        });
    }

    fn session_ready(&mut self, req: ReqId, acked: Vec<std::ops::Range<u64>>) {
        let Some(r) = self.reqs.remove(&req) else {
            return;
        };
        self.end_request_accounting(r.kind);
        let Some(job) = self.jobs.get_mut(&r.job) else {
            return;
        };
        let size = job.spec.size;
        job.acked = crate::RangeSet::from_ranges(
            acked
                .into_iter()
                .map(|a| a.start.min(size)..a.end.min(size)),
        );
        job.claimed = job.acked.clone();
        job.has_session = true;
        job.phase = Phase::Transfer;
        job.backoff.succeed();
        job.meter.record(self.now, job.acked.len());
        job.alive_at = self.now;
        job.acked_at = self.now;
        self.endpoint_succeeded();
    }

    fn read_done(&mut self, id: JobId, offset: u64, saving: Option<f32>) {
        let threshold = self.cfg.compress_threshold;
        let now = self.now;
        let Some(c) = self
            .jobs
            .get_mut(&id)
            .and_then(|j| j.chunks.get_mut(&offset))
        else {
            return;
        };
        if c.state != ChunkState::Reading {
            return;
        }
        c.state = ChunkState::Ready { not_before: now };
        c.compress = saving.is_some_and(|s| s > threshold);
        self.reads -= 1;
    }

    fn request_done(&mut self, rid: ReqId) {
        let Some(r) = self.reqs.remove(&rid) else {
            return;
        };
        self.end_request_accounting(r.kind);
        if matches!(r.kind, ReqKind::Chunk { .. } | ReqKind::Whole) {
            self.probing = false;
        }
        self.endpoint_succeeded();
        if let Some(job) = self.jobs.get_mut(&r.job) {
            job.alive_at = self.now;
            job.acked_at = self.now;
        }
        match r.kind {
            ReqKind::Session => self.session_ready_inner(r),
            ReqKind::Chunk { offset, len } => {
                self.delivered += len;
                self.cold_acks = self.cold_acks.saturating_add(1);
                self.sample(&r);
                let every = self.cfg.checkpoint_every;
                let Some(job) = self.jobs.get_mut(&r.job) else {
                    return;
                };
                if job.chunks.remove(&offset).is_some() {
                    self.slots -= 1;
                }
                job.acked.insert(offset..offset + len);
                job.backoff.succeed();
                job.resyncs_since_ack = 0;
                job.acks_since_checkpoint += 1;
                let acked_bytes = job.acked.len();
                if job.acks_since_checkpoint >= every {
                    job.acks_since_checkpoint = 0;
                    self.actions.push_back(Action::Checkpoint {
                        job: r.job,
                        acked_bytes,
                    });
                }
                self.progress(r.job, false);
            }
            ReqKind::Whole => {
                let Some(job) = self.jobs.get_mut(&r.job) else {
                    return;
                };
                let size = job.spec.size;
                job.acked.insert(0..size);
                self.delivered += size;
                self.sample(&r);
                self.progress(r.job, true);
                self.finish(r.job);
            }
            ReqKind::Complete => {
                self.progress(r.job, true);
                self.finish(r.job);
            }
        }
    }

    /// A session call answered with RequestDone: a create, nothing acknowledged yet.
    fn session_ready_inner(&mut self, r: Req) {
        if let Some(job) = self.jobs.get_mut(&r.job) {
            job.acked = crate::RangeSet::new();
            job.claimed = crate::RangeSet::new();
            job.has_session = true;
            job.phase = Phase::Transfer;
            job.backoff.succeed();
        }
    }

    fn finish(&mut self, id: JobId) {
        if let Some(key) = self.key(id) {
            self.active.remove(&key);
            self.queue.remove(&key);
        }
        self.jobs.remove(&id);
        self.actions.push_back(Action::JobCompleted { job: id });
    }

    fn progress(&mut self, id: JobId, last: bool) {
        let (every, min_bytes, now) = (
            self.cfg.progress_every,
            self.cfg.progress_min_bytes,
            self.now,
        );
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let acked = job.acked.len();
        job.meter.record(now, acked);
        let due = match job.last_progress {
            None => true,
            Some((t, b)) => now.since(t) >= every && acked.saturating_sub(b) >= min_bytes,
        };
        if due || last || acked == job.spec.size {
            job.last_progress = Some((now, acked));
            self.actions.push_back(Action::Progress {
                job: id,
                acked_bytes: acked,
                total_bytes: job.spec.size,
                rate_bps: job.meter.rate(),
            });
        }
    }

    // ---- requests ----

    fn new_req(&mut self, job: JobId, kind: ReqKind, timeout: Duration) -> ReqId {
        let id = self.next_req;
        self.next_req += 1;
        self.start_watchdogs(job);
        self.reqs.insert(
            id,
            Req {
                job,
                kind,
                started: self.now,
                deadline: self.now + timeout,
                timeout,
                delivered_at_start: self.delivered,
                sent: None,
                handed_on: false,
                window: (self.now, 0, self.body_moved),
                moved_at: self.now,
                probe: matches!(
                    self.breaker.state(self.now),
                    crate::breaker::State::HalfOpen { .. }
                ),
            },
        );
        id
    }
}
