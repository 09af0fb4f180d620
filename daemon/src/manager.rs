//! The job queue: accepts jobs, runs them one after another (each with all its streams),
//! retries runs after network trouble, and resumes unfinished jobs after a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uplink_proto::grpc::{self, job_event::Kind};

use crate::config::Config;
use crate::engine::retry::Backoff;
use crate::engine::upload::{self, Ctx, Outcome, RunError};
use crate::events::Events;
use crate::jobs::{DbError, JobDb, JobRecord, JobState, now_ms};
use crate::server_api::ServerClient;
use crate::validate::{self, Invalid};

/// A new session after the server forgot one, at most this often per run sequence.
const MAX_SESSION_RESETS: u32 = 3;

pub struct Manager {
    pub cfg: Config,
    pub db: Arc<JobDb>,
    pub client: Arc<ServerClient>,
    pub events: Events,
    wake: Notify,
    /// Daemon shutdown.
    stop: CancellationToken,
    /// Serialises picking a job with cancelling one.
    pick: Mutex<()>,
    /// The running job and the token that cancels it.
    running: std::sync::Mutex<Option<(String, CancellationToken)>>,
    pub started: Instant,
    /// Chunks handed to senders and not yet acknowledged or given up (sending, awaiting
    /// the answer, or waiting to retry).
    pub in_flight: Arc<AtomicU32>,
    /// Bumped by every Prewarm; a keep-warm timer only acts if it is still the latest.
    warm_generation: AtomicU64,
}

#[derive(Debug)]
pub enum ManagerError {
    Invalid(Invalid),
    NotFound(String),
    Store(DbError),
}

impl From<DbError> for ManagerError {
    fn from(e: DbError) -> Self {
        ManagerError::Store(e)
    }
}

fn new_job_id() -> String {
    let mut r = [0u8; 6];
    rand::rng().fill_bytes(&mut r);
    // Time first, so ids (and sled's key order) follow creation order.
    format!("{:012x}{}", now_ms(), hex::encode(r))
}

impl Manager {
    pub fn new(
        cfg: Config,
        db: Arc<JobDb>,
        client: Arc<ServerClient>,
        stop: CancellationToken,
    ) -> Manager {
        Manager {
            cfg,
            db,
            client,
            events: Events::default(),
            wake: Notify::new(),
            stop,
            pick: Mutex::new(()),
            running: std::sync::Mutex::new(None),
            started: Instant::now(),
            in_flight: Arc::new(AtomicU32::new(0)),
            warm_generation: AtomicU64::new(0),
        }
    }

    pub async fn enqueue(
        &self,
        path: String,
        target: String,
        metadata: HashMap<String, String>,
    ) -> Result<JobRecord, ManagerError> {
        let (p, t, m) = (path.clone(), target.clone(), metadata.clone());
        let accepted = tokio::task::spawn_blocking(move || validate::check(&p, &t, &m))
            .await
            .map_err(|e| {
                ManagerError::Invalid(Invalid {
                    code: "internal",
                    message: e.to_string(),
                })
            })?
            .map_err(ManagerError::Invalid)?;
        let job = JobRecord {
            job_id: new_job_id(),
            state: JobState::Queued,
            path,
            size: accepted.identity.size,
            target: accepted.target,
            metadata: metadata.into_iter().collect(),
            identity: accepted.identity,
            chunk_size: self.cfg.chunk_size,
            upload_id: None,
            nonce: None,
            bytes_acked: 0,
            chunks_total: accepted.identity.size.div_ceil(self.cfg.chunk_size),
            chunks_acked: 0,
            chunks_sent: 0,
            chunks_resent: 0,
            protocol: String::new(),
            streams: 0,
            time_to_first_ack_ms: None,
            created_at_ms: now_ms(),
            finished_at_ms: None,
            server_sha256: String::new(),
            merkle_root: String::new(),
            location: String::new(),
            error_code: String::new(),
            error_message: String::new(),
            attempts: 0,
            used_0rtt: false,
        };
        self.db.put(&job).await?;
        tracing::info!(job_id = %job.job_id, path = %job.path, size = job.size, "job queued");
        self.events.emit(&job.job_id, Kind::Queued(grpc::Queued {}));
        self.wake.notify_one();
        Ok(job)
    }

    /// Prewarm: connect now, and keep the connections warm for `keep_warm` unless a job
    /// comes. If none has by then, close them (the TLS ticket stays, so the next
    /// connection is 0-RTT).
    pub async fn prewarm(
        self: &Arc<Self>,
        keep_warm: Duration,
    ) -> Result<(), crate::server_api::CallError> {
        let generation = self.warm_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.client.warm().await?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(keep_warm) => {}
                _ = me.stop.cancelled() => return,
            }
            if me.warm_generation.load(Ordering::SeqCst) == generation && !me.busy() {
                tracing::info!(
                    ?keep_warm,
                    "no job came within the keep-warm window; closing connections"
                );
                me.client.close().await;
            }
        });
        Ok(())
    }

    /// A job is queued or running (one index key read).
    pub fn busy(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self.db.has_active().unwrap_or(true)
    }

    /// Removes finished jobs beyond the retention settings (at startup and whenever a
    /// job ends). Touches only finished jobs' index entries, never the active ones.
    async fn trim_history(&self) {
        let db = Arc::clone(&self.db);
        let retention = self.cfg.retention();
        // Off the async workers: after an upgrade the first trim may remove many.
        match tokio::task::spawn_blocking(move || db.prune(&retention, now_ms())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(removed = n, "old finished jobs removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove old finished jobs"),
            Err(e) => tracing::warn!(error = %e, "removing old finished jobs stopped"),
        }
    }

    pub fn get(&self, job_id: &str) -> Result<JobRecord, ManagerError> {
        self.db
            .get(job_id)?
            .ok_or_else(|| ManagerError::NotFound(job_id.to_string()))
    }

    /// Cancels a job: a queued one at once, a running one as soon as its run stops.
    /// The server's session is deleted to free its space.
    pub async fn cancel(&self, job_id: &str) -> Result<JobRecord, ManagerError> {
        let guard = self.pick.lock().await;
        let mut job = self.get(job_id)?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let running_token = {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running
                .as_ref()
                .filter(|(id, _)| id == job_id)
                .map(|(_, t)| t.clone())
        };
        if let Some(token) = running_token {
            token.cancel();
            drop(guard);
            // The run loop records the cancellation; wait (bounded) to answer with it.
            for _ in 0..200 {
                let j = self.get(job_id)?;
                if j.state.is_terminal() {
                    return Ok(j);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return self.get(job_id);
        }
        self.finish_cancelled(&mut job).await?;
        Ok(job)
    }

    async fn finish_cancelled(&self, job: &mut JobRecord) -> Result<(), DbError> {
        job.state = JobState::Cancelled;
        job.finished_at_ms = Some(now_ms());
        // A finished record drops its checkpoint in the same write.
        self.db.put(job).await?;
        tracing::info!(job_id = %job.job_id, "job cancelled");
        self.events.emit(
            &job.job_id,
            Kind::Cancelled(grpc::Cancelled {
                job: Some(job.to_proto()),
            }),
        );
        if let Some(id) = job.upload_id.clone() {
            let client = Arc::clone(&self.client);
            tokio::spawn(async move {
                if let Err(e) = client.delete(&id).await {
                    tracing::debug!(error = %e, "deleting a cancelled upload on the server failed");
                }
            });
        }
        self.trim_history().await;
        Ok(())
    }

    /// Runs queued jobs until shutdown. Jobs left running by a previous process resume.
    pub async fn run_queue(self: Arc<Self>) {
        self.trim_history().await;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let next = {
                let _g = self.pick.lock().await;
                // The first job in run order: one index key, one record.
                match self.db.next_active() {
                    Ok(job) => job,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the job queue");
                        None
                    }
                }
                .map(|j| {
                    let token = self.stop.child_token();
                    *self.running.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((j.job_id.clone(), token.clone()));
                    (j, token)
                })
            };
            match next {
                Some((job, token)) => {
                    self.run_job(job, token).await;
                    *self.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn run_job(&self, mut job: JobRecord, token: CancellationToken) {
        job.state = JobState::Running;
        if let Err(e) = self.db.put(&job).await {
            tracing::error!(error = %e, "cannot record the job as running");
        }
        let mut backoff = Backoff::run();
        let mut resets = 0u32;
        loop {
            job.attempts += 1;
            let ctx = Ctx {
                client: Arc::clone(&self.client),
                db: Arc::clone(&self.db),
                events: self.events.clone(),
                streams: self.cfg.streams as usize,
                stop: token.clone(),
                in_flight: Arc::clone(&self.in_flight),
            };
            let outcome = upload::run(&ctx, &mut job).await;
            let end = match outcome {
                Ok(Outcome::Completed) => {
                    job.state = JobState::Completed;
                    job.bytes_acked = job.size;
                    job.chunks_acked = job.chunks_total;
                    job.finished_at_ms = Some(now_ms());
                    tracing::info!(job_id = %job.job_id, sha256 = %job.server_sha256, resent = job.chunks_resent, "job completed");
                    true
                }
                Ok(Outcome::Stopped) if self.stop.is_cancelled() => {
                    tracing::info!(job_id = %job.job_id, "job paused for shutdown; it resumes at the next start");
                    true
                }
                Ok(Outcome::Stopped) => {
                    if let Err(e) = self.finish_cancelled(&mut job).await {
                        tracing::error!(error = %e, "cannot record the cancellation");
                    }
                    return;
                }
                Err(RunError::UnknownUpload) if resets < MAX_SESSION_RESETS => {
                    resets += 1;
                    tracing::warn!(job_id = %job.job_id, "the server no longer knows the upload; starting a new session");
                    job.upload_id = None;
                    job.nonce = None;
                    let _ = self.db.drop_checkpoint(&job.job_id);
                    continue;
                }
                Err(RunError::UnknownUpload) => self.fail(
                    &mut job,
                    "session_lost",
                    "the server keeps forgetting the upload session",
                ),
                Err(RunError::Permanent { code, message }) => self.fail(&mut job, &code, &message),
                Err(RunError::Transient {
                    code,
                    message,
                    retry_after,
                }) => {
                    let delay = backoff.next_delay_hinted(&mut rand::rng(), retry_after);
                    tracing::warn!(job_id = %job.job_id, %code, %message, ?delay, "run interrupted; retrying");
                    self.events.emit(
                        &job.job_id,
                        Kind::Retrying(grpc::Retrying {
                            why: format!("{code}: {message}"),
                            attempt: backoff.attempts(),
                            delay_seconds: delay.as_secs_f64(),
                        }),
                    );
                    let _ = self.db.put(&job).await;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = token.cancelled() => {
                            if !self.stop.is_cancelled()
                                && let Err(e) = self.finish_cancelled(&mut job).await
                            {
                                tracing::error!(error = %e, "cannot record the cancellation");
                            }
                            return;
                        }
                    }
                }
            };
            if end {
                // Durable first, then announced: a watcher that reacts sees the same record.
                // A finished record drops its checkpoint in the same write.
                if let Err(e) = self.db.put(&job).await {
                    tracing::error!(error = %e, "cannot record the job's end");
                }
                let record = Some(job.to_proto());
                match job.state {
                    JobState::Completed => self.events.emit(
                        &job.job_id,
                        Kind::Completed(grpc::Completed { job: record }),
                    ),
                    JobState::Failed => self
                        .events
                        .emit(&job.job_id, Kind::Failed(grpc::Failed { job: record })),
                    _ => {}
                }
                if job.state.is_terminal() {
                    self.trim_history().await;
                }
                return;
            }
        }
    }

    /// Marks the job failed; returns true (the run loop ends).
    fn fail(&self, job: &mut JobRecord, code: &str, message: &str) -> bool {
        job.state = JobState::Failed;
        job.error_code = code.to_string();
        job.error_message = message.to_string();
        job.finished_at_ms = Some(now_ms());
        tracing::error!(job_id = %job.job_id, code, message, "job failed");
        true
    }
}
