//! The job queue: accepts jobs, runs them one after another (each with all its streams),
//! retries runs after network trouble, and resumes unfinished jobs after a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uplink_proto::grpc::{self, job_event::Kind};

use crate::config::Config;
use crate::engine::drive::{self, Command};
use crate::events::Events;
use crate::jobs::{DbError, JobDb, JobRecord, JobState, now_ms};
use crate::server_api::ServerClient;
use crate::validate::{self, Invalid};

pub struct Manager {
    pub cfg: Config,
    pub db: Arc<JobDb>,
    pub client: Arc<ServerClient>,
    pub events: Events,
    /// To the upload driver (new jobs, cancels).
    commands: mpsc::Sender<Command>,
    /// Its end, taken when the driver starts.
    driver_commands: Mutex<Option<mpsc::Receiver<Command>>>,
    /// Daemon shutdown.
    stop: CancellationToken,
    pub started: Instant,
    /// The upload engine's last snapshot, for Status.
    pub engine_status: Arc<std::sync::Mutex<Option<crate::engine::drive::EngineStatus>>>,
    /// Requests out right now (chunks, or whole small files).
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
        let (commands, driver_commands) = mpsc::channel(64);
        Manager {
            cfg,
            db,
            client,
            events: Events::default(),
            commands,
            driver_commands: Mutex::new(Some(driver_commands)),
            stop,
            started: Instant::now(),
            in_flight: Arc::new(AtomicU32::new(0)),
            engine_status: Arc::new(std::sync::Mutex::new(None)),
            warm_generation: AtomicU64::new(0),
        }
    }

    pub async fn enqueue(
        &self,
        path: String,
        target: String,
        metadata: HashMap<String, String>,
        growing: bool,
        overwrite: bool,
    ) -> Result<JobRecord, ManagerError> {
        let (p, t, m) = (path.clone(), target.clone(), metadata.clone());
        let accepted = tokio::task::spawn_blocking(move || validate::check(&p, &t, &m, growing))
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
            // The largest chunk sent so far (chunk sizes follow the link).
            chunk_size: 0,
            upload_id: None,
            nonce: None,
            bytes_acked: 0,
            // An estimate until the job ends (chunk sizes follow the link).
            chunks_total: accepted.identity.size.div_ceil(
                self.cfg
                    .chunk_size
                    .unwrap_or(uplink_proto::wire::DEFAULT_CHUNK_SIZE),
            ),
            chunks_acked: 0,
            chunks_sent: 0,
            chunks_resent: 0,
            bytes_resent: 0,
            bytes_on_wire: 0,
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
            waiting: None,
            live: growing,
            growing,
            rewritten: Vec::new(),
            overwrite,
        };
        self.db.put(&job).await?;
        tracing::info!(job_id = %job.job_id, path = %job.path, size = job.size, "job queued");
        self.events.emit(&job.job_id, Kind::Queued(grpc::Queued {}));
        let _ = self.commands.try_send(Command::Wake);
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
        self.db.has_active().unwrap_or(true)
    }

    /// Removes finished jobs beyond the retention settings (at startup and whenever a
    /// job ends). Touches only finished jobs' index entries, never the active ones.
    pub async fn trim_history(&self) {
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

    /// Cancels a job, queued or running. The server's session is deleted to free its
    /// space. The driver does it, so a job is never admitted and cancelled at once.
    pub async fn cancel(&self, job_id: &str) -> Result<JobRecord, ManagerError> {
        let job = self.get(job_id)?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Cancel(job_id.to_string(), tx))
            .await
            .is_err()
        {
            // Shutting down: the job stays as it is and resumes at the next start.
            return self.get(job_id);
        }
        match rx.await {
            Ok(Some(record)) => {
                self.trim_history().await;
                Ok(record)
            }
            _ => self.get(job_id),
        }
    }

    /// Seals a growing job at its final size (the driver holds running jobs' records).
    /// `rewritten`: ranges (offset, length) rewritten behind the upload.
    pub async fn seal(
        &self,
        job_id: &str,
        size: u64,
        rewritten: Vec<(u64, u64)>,
    ) -> Result<JobRecord, ManagerError> {
        let job = self.get(job_id)?;
        if job.state.is_terminal() {
            return Err(ManagerError::Invalid(Invalid {
                code: "job_ended",
                message: format!("job {job_id} already ended"),
            }));
        }
        let (tx, rx) = oneshot::channel();
        let unavailable = || {
            ManagerError::Invalid(Invalid {
                code: "shutting_down",
                message: "the daemon is stopping; seal again after it restarts".into(),
            })
        };
        let command = Command::Seal(job_id.to_string(), size, rewritten, tx);
        self.commands
            .send(command)
            .await
            .map_err(|_| unavailable())?;
        match rx.await {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(invalid)) => Err(ManagerError::Invalid(invalid)),
            Err(_) => Err(unavailable()),
        }
    }

    /// Runs the upload driver until shutdown. Jobs left running by a previous process
    /// resume.
    pub async fn run_queue(self: Arc<Self>) {
        self.trim_history().await;
        let Some(commands) = self.driver_commands.lock().await.take() else {
            return;
        };
        let shared = Arc::new(drive::Shared {
            client: Arc::clone(&self.client),
            db: Arc::clone(&self.db),
            events: self.events.clone(),
            in_flight: Arc::clone(&self.in_flight),
            status: Arc::clone(&self.engine_status),
            engine_config: self.engine_config(),
            retention: self.cfg.retention(),
        });
        drive::Driver::new(shared)
            .run(commands, self.stop.clone())
            .await;
    }

    /// The core's knobs: the seed's adaptive defaults, unless the user fixed streams or
    /// chunk size.
    fn engine_config(&self) -> uplink_engine::Config {
        uplink_engine::Config {
            lanes: self.client.lanes().max(1),
            streams: self.cfg.streams.map(|s| s as usize),
            chunk_size: self.cfg.chunk_size,
            ..uplink_engine::Config::default()
        }
    }
}
