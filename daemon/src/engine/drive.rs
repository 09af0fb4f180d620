//! The driver: runs the deterministic core (`uplink-engine`) with real I/O.
//!
//! ```text
//! manager --commands--> driver loop --handle(event)--> Engine --actions--> driver
//!                          ^                                                  |
//!                          '---- task results (reads, requests) <-- spawned --'
//! ```
//! The core decides everything — what to read, which chunk goes on which lane at what
//! size, when to retry, checkpoint, complete or give up — and never waits on anything.
//! The driver performs its actions (a blocking read, an HTTP request, a sled write),
//! turns the outcomes back into events, and keeps what the core does not: the job
//! records, the source files, the session keys, the chunk bytes in their buffers and the
//! Merkle ledger whose root `complete` needs. One loop owns all of it, so nothing is
//! shared between tasks but the read-only client.
//!
//! This file holds the loop, the job table and the records; `requests` starts the
//! actions' I/O tasks, `outcomes` turns their results into events, `reports` tells
//! users (progress, retries, incidents), and `growth` follows growing files and seals them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use uplink_engine::{Action, Engine, Event, Failure, JobId, ReqId, Time};
use uplink_proto::chain::FileState;
use uplink_proto::grpc::{self, job_event::Kind};
use uplink_proto::integrity::ChunkDigest;
use uplink_proto::wire::{UploadCompleted, UploadCreated};

mod growth;
mod outcomes;
mod reports;
mod requests;

use super::calls::{Resumed, WholeDone};
use super::chain::ChainTracker;
use super::compress::Lz4Pool;
use super::ledger::Checkpoint;
use super::reader::{ReadError, SourceFile};
use crate::events::Events;
use crate::jobs::{JobDb, JobRecord, JobState, now_ms};
use crate::server_api::{CallError, ChunkPayload, ErrorClass, ServerClient, SessionKeys};
use crate::transport::progress::BodyProgress;
use crate::validate::Invalid;

/// Jobs handed to the core at once; the rest wait in the job store (the core admits
/// its own share of these to the streams).
const MAX_ADMITTED: usize = 64;
/// How often available memory is sampled for the buffer pool.
const MEMORY_EVERY: Duration = Duration::from_secs(2);
/// How often growing files are looked at for new bytes (an fstat each): the delay it adds
/// to reading a finished chunk is small beside the chunk's own time on the link.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// What the manager asks of the driver.
pub enum Command {
    /// New jobs may be waiting in the store.
    Wake,
    /// Cancel this job (queued or running): answers with its cancelled record, or `None`
    /// if it had already ended or is unknown.
    Cancel(String, oneshot::Sender<Option<JobRecord>>),
    /// Seal a growing job at this final size, with the ranges rewritten behind the upload:
    /// answers with its record, or why not.
    Seal(
        String,
        u64,
        Vec<(u64, u64)>,
        oneshot::Sender<Result<JobRecord, Invalid>>,
    ),
}

/// What the driver shares with the rest of the daemon.
pub struct Shared {
    pub client: Arc<ServerClient>,
    pub db: Arc<JobDb>,
    pub events: Events,
    /// Requests out right now (Status's `chunks_in_flight`).
    pub in_flight: Arc<AtomicU32>,
    /// The engine's last snapshot (Status's `engine` and the endpoint's circuit).
    pub status: Arc<std::sync::Mutex<Option<EngineStatus>>>,
    pub engine_config: uplink_engine::Config,
    /// Finished jobs kept in the store (trimmed whenever one ends).
    pub retention: crate::jobs::Retention,
}

/// What Status shows of the engine.
#[derive(Clone, Debug)]
pub struct EngineStatus {
    pub snapshot: uplink_engine::Snapshot,
    /// While the circuit is open: when (Unix ms) a request will probe again.
    pub circuit_retry_ms: u64,
    /// Jobs held whose file is still being written.
    pub growing: u32,
}

/// One job the core holds.
struct Active {
    record: JobRecord,
    source: Arc<SourceFile>,
    keys: Option<Arc<SessionKeys>>,
    /// The file's hash states at chunk boundaries, when the server takes chunks as links.
    chain: Option<Arc<ChainTracker>>,
    checkpoint: Checkpoint,
    /// Chunks read and hashed, waiting to be sent (or re-sent): offset -> payload.
    buffers: HashMap<u64, ChunkPayload>,
    /// Reads asked for: offset -> length. A read that finishes after its chunk was
    /// released (and the offset claimed again with another length) is stale.
    pending_reads: HashMap<u64, u64>,
    /// Sends per offset in this process (a second one is a re-send).
    sends: HashMap<u64, u32>,
    /// Chunks below this end were handed to senders by an earlier process.
    prior_dispatch: u64,
    started_reported: bool,
    /// A growing file's size and bytes acknowledged as last written to the store, and when.
    size_stored: ((u64, u64), Instant),
}

/// A finished read or request, back in the loop.
enum Done {
    Opened {
        job: JobId,
        record: Box<JobRecord>,
        result: Result<SourceFile, ReadError>,
    },
    Created {
        req: ReqId,
        job: JobId,
        result: Result<UploadCreated, CallError>,
    },
    Resumed {
        req: ReqId,
        job: JobId,
        result: Result<Resumed, Failure>,
    },
    Read {
        job: JobId,
        offset: u64,
        /// The bytes, their digests, the file's hash state they were hashed from (a
        /// link), and what LZ4 saved on their samples.
        result: Result<(Bytes, ChunkDigest, Option<FileState>, f32), ReadError>,
    },
    Put {
        req: ReqId,
        job: JobId,
        offset: u64,
        /// Body bytes sent (compressed or raw).
        wire_bytes: u64,
        /// The server had this many of the chunk's first bytes from an attempt whose
        /// connection was lost; only the rest was sent.
        resumed_from: u64,
        result: Result<(), CallError>,
    },
    Whole {
        req: ReqId,
        job: JobId,
        wire_bytes: u64,
        result: Result<WholeDone, Failure>,
    },
    Completed {
        req: ReqId,
        job: JobId,
        root: [u8; 32],
        result: Result<UploadCompleted, Failure>,
    },
    /// Work with no answer for the core (connections forgotten).
    Nothing,
}

impl Done {
    fn name(&self) -> &'static str {
        match self {
            Done::Opened { .. } => "opened",
            Done::Created { .. } => "created",
            Done::Resumed { .. } => "resumed",
            Done::Read { .. } => "read",
            Done::Put { .. } => "put",
            Done::Whole { .. } => "whole",
            Done::Completed { .. } => "completed",
            Done::Nothing => "nothing",
        }
    }
}

pub struct Driver {
    shared: Arc<Shared>,
    engine: Engine,
    epoch: Instant,
    jobs: HashMap<JobId, Active>,
    /// Job ids being opened or held, to the core's id.
    ids: HashMap<String, JobId>,
    next_id: JobId,
    tasks: JoinSet<Done>,
    requests: HashMap<ReqId, AbortHandle>,
    /// How far the bodies of the requests in flight have got (for stall detection).
    bodies: HashMap<ReqId, Arc<BodyProgress>>,
    /// Set when the store may hold jobs not yet admitted.
    refill: bool,
    /// Buffers for chunks sent compressed.
    lz4: Arc<Lz4Pool>,
}

impl Driver {
    pub fn new(shared: Arc<Shared>) -> Driver {
        let seed = rand::random();
        Driver {
            engine: Engine::new(shared.engine_config.clone(), seed),
            shared,
            epoch: Instant::now(),
            jobs: HashMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            tasks: JoinSet::new(),
            requests: HashMap::new(),
            bodies: HashMap::new(),
            refill: true,
            lz4: Lz4Pool::new(),
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    fn instant(&self, t: Time) -> Instant {
        self.epoch + Duration::from_micros(t.as_micros())
    }

    /// Runs until `stop`; then checkpoints every job it holds (they resume at next start).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        let mut memory = tokio::time::interval(MEMORY_EVERY);
        memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follow = tokio::time::interval(FOLLOW_EVERY);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.refill {
                self.refill = false;
                self.admit();
            }
            self.perform_actions().await;
            let snapshot = self.engine.snapshot();
            self.shared
                .in_flight
                .store(snapshot.streams_in_flight as u32, Ordering::Relaxed);
            let circuit_retry_ms = match snapshot.circuit {
                uplink_engine::breaker::State::Open { until } => {
                    let wait = self
                        .instant(until)
                        .saturating_duration_since(Instant::now());
                    now_ms() + wait.as_millis() as u64
                }
                _ => 0,
            };
            let growing = self.jobs.values().filter(|a| a.record.growing).count() as u32;
            *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(EngineStatus {
                snapshot,
                circuit_retry_ms,
                growing,
            });
            let wake = self.engine.poll_timeout().map(|t| self.instant(t));
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(Command::Wake) => self.refill = true,
                    Some(Command::Cancel(id, reply)) => {
                        let r = self.cancel(&id).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Seal(id, size, named, reply)) => {
                        let r = self.seal(&id, size, named).await;
                        let _ = reply.send(r);
                    }
                    None => break,
                },
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    // An aborted request ends as a cancelled join: nothing to report.
                    if let Ok(done) = joined {
                        self.on_done(done).await;
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    let now = self.now();
                    self.report_bodies(now);
                    self.engine.handle_timeout(now);
                }
                _ = follow.tick(), if growing > 0 => self.follow_growth(),
                _ = memory.tick() => {
                    if let Some(bytes) = crate::memory::available() {
                        let now = self.now();
                        self.engine.handle(now, Event::MemoryAvailable { bytes });
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// Hands jobs from the store to the core, up to [`MAX_ADMITTED`].
    fn admit(&mut self) {
        let room = MAX_ADMITTED.saturating_sub(self.ids.len());
        if room == 0 {
            return;
        }
        let candidates = match self.shared.db.active_ids(MAX_ADMITTED + self.ids.len()) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job queue");
                return;
            }
        };
        let fresh: Vec<String> = candidates
            .into_iter()
            .filter(|id| !self.ids.contains_key(id))
            .take(room)
            .collect();
        for job_id in fresh {
            let record = match self.shared.db.get(&job_id) {
                Ok(Some(r)) if !r.state.is_terminal() => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(error = %e, job_id, "cannot read a queued job");
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            self.ids.insert(job_id, id);
            let path = std::path::PathBuf::from(&record.path);
            let mut identity = record.identity;
            let growing = record.growing;
            if growing {
                // It has held this much since: less now is a truncation.
                identity.size = record.size;
            }
            self.tasks.spawn(async move {
                let result = tokio::task::spawn_blocking(move || {
                    SourceFile::open(&path, &identity, growing)
                })
                .await
                .unwrap_or_else(|e| Err(ReadError::Io(e.to_string())));
                Done::Opened {
                    job: id,
                    record: Box::new(record),
                    result,
                }
            });
        }
    }

    async fn perform_actions(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            self.perform(action).await;
        }
    }

    async fn perform(&mut self, action: Action) {
        // `UPLINK_LOG=uplinkd=trace` shows the core's decisions as they are carried out.
        tracing::trace!(?action, "engine action");
        match action {
            Action::CreateSession { req, job } => self.create_session(req, job).await,
            Action::FetchState {
                req,
                job,
                verify_all,
            } => self.fetch_state(req, job, verify_all),
            Action::Read { job, offset, len } => self.read(job, offset, len),
            Action::PutChunk {
                req,
                job,
                offset,
                lane,
                compress,
                ..
            } => self.put_chunk(req, job, offset, lane, compress),
            Action::PutWhole { req, job, lane } => self.put_whole(req, job, lane),
            Action::Complete { req, job } => self.complete(req, job),
            Action::Abandon { req } => {
                if let Some(h) = self.requests.remove(&req) {
                    h.abort();
                }
                self.bodies.remove(&req);
            }
            Action::Release { job, offset } => {
                if let Some(a) = self.jobs.get_mut(&job) {
                    a.buffers.remove(&offset);
                    a.pending_reads.remove(&offset);
                }
            }
            Action::Checkpoint { job, .. } => self.save(job),
            Action::Reconnect => {
                let client = Arc::clone(&self.shared.client);
                self.tasks.spawn(async move {
                    client.reconnect().await;
                    Done::Nothing
                });
            }
            Action::Watchdog { job, layer, why } => self.watchdog_fired(job, layer, why),
            Action::Circuit { state, why } => self.circuit_changed(state, why),
            Action::Progress {
                job,
                acked_bytes,
                total_bytes,
                rate_bps,
            } => self.progress(job, acked_bytes, total_bytes, rate_bps),
            Action::Retrying {
                job,
                why,
                attempt,
                delay,
                waiting,
            } => self.retrying(job, why, attempt, delay, waiting),
            Action::JobCompleted { job } => self.finish(job, JobState::Completed, None),
            Action::JobFailed { job, code, message } => {
                self.finish(job, JobState::Failed, Some((code, message)))
            }
        }
    }

    /// Tells the core a request failed.
    fn refuse(&mut self, req: ReqId, failure: Failure) {
        let now = self.now();
        self.engine
            .handle(now, Event::RequestFailed { req, failure });
    }

    /// Tells the core how far each body in flight has got (before its timers are judged).
    fn report_bodies(&mut self, now: Time) {
        for (&req, progress) in &self.bodies {
            let r = progress.read();
            let moved_at = Time::from_micros(r.moved_us);
            let event = Event::RequestProgress {
                req,
                bytes: r.bytes,
                all: r.all,
                moved_at,
            };
            self.engine.handle(now, event);
        }
    }

    fn spawn_request(
        &mut self,
        req: ReqId,
        fut: impl std::future::Future<Output = Done> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(fut);
        self.requests.insert(req, handle);
    }

    /// Writes the job's record and checkpoint, durably.
    fn save(&mut self, job: JobId) {
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        a.checkpoint.chunks_sent = a.record.chunks_sent;
        a.checkpoint.chunks_resent = a.record.chunks_resent;
        a.checkpoint.bytes_resent = a.record.bytes_resent;
        if a.checkpoint.upload_id.is_empty() {
            return;
        }
        if let Err(e) = self.shared.db.stage(&a.record, Some(&a.checkpoint)) {
            tracing::warn!(job_id = %a.record.job_id, error = %e, "checkpoint not saved");
            return;
        }
        // Durable off the loop: a checkpoint a crash loses is an older checkpoint, and a
        // resume reconciles it with the server's state anyway.
        let db = Arc::clone(&self.shared.db);
        tokio::spawn(async move {
            if let Err(e) = db.flush().await {
                tracing::warn!(error = %e, "checkpoint not flushed");
            }
        });
    }

    /// Ends a job the core finished (completed or failed).
    fn finish(&mut self, job: JobId, state: JobState, error: Option<(String, String)>) {
        let Some(a) = self.jobs.remove(&job) else {
            return;
        };
        self.end_record(a.record, state, error);
    }

    /// Records a job's end (completed or failed), durably, then tells watchers; its place
    /// goes to the next job in the store.
    fn end_record(&mut self, mut r: JobRecord, state: JobState, error: Option<(String, String)>) {
        self.ids.remove(&r.job_id);
        self.refill = true;
        r.state = state;
        r.waiting = None;
        r.finished_at_ms = Some(now_ms());
        match &error {
            None => {
                r.bytes_acked = r.size;
                r.chunks_total = r.chunks_acked;
                tracing::info!(job_id = %r.job_id, sha256 = %r.server_sha256, resent = r.chunks_resent, "job completed");
            }
            Some((code, message)) => {
                r.error_code = code.clone();
                r.error_message = message.clone();
                tracing::error!(job_id = %r.job_id, code, message, "job failed");
                // A failed upload is never completed (its file changed, or the server
                // refused it for good): the server need not keep its chunks.
                if let Some(id) = r.upload_id.clone() {
                    tokio::spawn(delete_on_server(Arc::clone(&self.shared.client), id));
                }
            }
        }
        // Written now (the store's index no longer lists it as active, so it is not admitted
        // again), durable off the loop, announced once durable: a watcher that reacts sees
        // the same record. A finished record drops its checkpoint in the same write.
        if let Err(e) = self.shared.db.stage(&r, None) {
            tracing::error!(error = %e, "cannot record the job's end");
        }
        let record = Some(r.to_proto());
        let kind = match state {
            JobState::Completed => Kind::Completed(grpc::Completed { job: record }),
            _ => Kind::Failed(grpc::Failed { job: record }),
        };
        let (db, events) = (Arc::clone(&self.shared.db), self.shared.events.clone());
        tokio::spawn(async move {
            if let Err(e) = db.flush().await {
                tracing::error!(error = %e, "cannot make the job's end durable");
            }
            events.emit(&r.job_id, kind);
        });
        self.trim_history();
    }

    /// Cancels a job, held or still queued in the store: records it, tells watchers and
    /// deletes the server's session (freeing its space). Done here, in the one loop that
    /// admits jobs, so a job is never admitted and cancelled at once.
    async fn cancel(&mut self, job_id: &str) -> Option<JobRecord> {
        let held = match self.ids.remove(job_id) {
            Some(id) => {
                self.refill = true;
                let now = self.now();
                self.engine.handle(now, Event::JobCancelled { job: id });
                // Its requests are abandoned and its buffers released right away.
                self.perform_actions().await;
                self.jobs.remove(&id).map(|a| a.record)
            }
            None => None,
        };
        // Not held, or still being opened: the store has the record.
        let mut record = match held {
            Some(r) => r,
            None => self.shared.db.get(job_id).ok().flatten()?,
        };
        if record.state.is_terminal() {
            return None;
        }
        record.state = JobState::Cancelled;
        record.finished_at_ms = Some(now_ms());
        // A finished record drops its checkpoint in the same write.
        if let Err(e) = self.shared.db.put(&record).await {
            tracing::error!(error = %e, "cannot record the cancellation");
        }
        tracing::info!(job_id = %record.job_id, "job cancelled");
        self.shared.events.emit(
            &record.job_id,
            Kind::Cancelled(grpc::Cancelled {
                job: Some(record.to_proto()),
            }),
        );
        if let Some(id) = record.upload_id.clone() {
            let client = Arc::clone(&self.shared.client);
            tokio::spawn(delete_on_server(client, id));
        }
        self.trim_history();
        Some(record)
    }

    /// Removes finished jobs beyond the retention settings, off the loop.
    fn trim_history(&self) {
        let (db, retention) = (Arc::clone(&self.shared.db), self.shared.retention);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = db.prune(&retention, now_ms()) {
                tracing::warn!(error = %e, "cannot remove old finished jobs");
            }
        });
    }

    /// Daemon shutdown: every held job keeps its place (still running in the store) with
    /// a fresh checkpoint, and resumes at the next start.
    async fn shutdown(&mut self) {
        self.tasks.abort_all();
        let held: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in held {
            self.save(job);
            if let Some(a) = self.jobs.get(&job) {
                tracing::info!(job_id = %a.record.job_id, "job paused for shutdown; it resumes at the next start");
            }
        }
        if let Err(e) = self.shared.db.flush().await {
            tracing::error!(error = %e, "checkpoints not flushed at shutdown");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Removes a cancelled or failed upload's session from the server, trying again on network
/// trouble a few times over about 15 s (the server expires forgotten sessions anyway).
async fn delete_on_server(client: Arc<ServerClient>, upload_id: String) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=5 {
        match client.delete(&upload_id).await {
            Ok(()) => return,
            Err(e) if e.class() == ErrorClass::UnknownUpload => return,
            Err(e) if e.class() == ErrorClass::Transient && attempt < 5 => {
                tracing::debug!(%upload_id, error = %e, "deleting an ended upload: trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::warn!(%upload_id, error = %e, "cannot delete an ended upload on the server; it expires there");
                return;
            }
        }
    }
}
