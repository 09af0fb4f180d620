//! Jobs and their durable store (sled).
//!
//! Trees: `jobs` (job id -> JSON record), `checkpoints` (job id -> sealed [`Checkpoint`]).
//! Every state change is flushed before it is reported, so what a client was told
//! survives a crash.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use uplink_proto::grpc;

use crate::engine::ledger::Checkpoint;
use crate::engine::reader::FileIdentity;
use crate::seal::Sealer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn to_proto(self) -> grpc::JobState {
        match self {
            JobState::Queued => grpc::JobState::Queued,
            JobState::Running => grpc::JobState::Running,
            JobState::Completed => grpc::JobState::Completed,
            JobState::Failed => grpc::JobState::Failed,
            JobState::Cancelled => grpc::JobState::Cancelled,
        }
    }
}

/// Everything the daemon remembers about a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: JobState,
    pub path: String,
    pub size: u64,
    pub sealed: bool,
    pub target: String,
    pub metadata: BTreeMap<String, String>,
    pub identity: FileIdentity,
    pub chunk_size: u64,
    pub upload_id: Option<String>,
    pub nonce: Option<String>,
    pub bytes_acked: u64,
    pub chunks_total: u64,
    pub chunks_acked: u64,
    pub chunks_sent: u64,
    pub chunks_resent: u64,
    pub protocol: String,
    pub streams: u32,
    pub time_to_first_ack_ms: Option<u64>,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub server_sha256: String,
    pub merkle_root: String,
    pub location: String,
    pub error_code: String,
    pub error_message: String,
    pub attempts: u32,
    pub used_0rtt: bool,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl JobRecord {
    pub fn to_proto(&self) -> grpc::Job {
        let end = self.finished_at_ms.unwrap_or_else(now_ms);
        grpc::Job {
            job_id: self.job_id.clone(),
            state: self.state.to_proto() as i32,
            path: self.path.clone(),
            size: self.size,
            sealed: self.sealed,
            target: self.target.clone(),
            metadata: self.metadata.clone().into_iter().collect(),
            bytes_acked: self.bytes_acked,
            chunks_total: self.chunks_total,
            chunks_acked: self.chunks_acked,
            chunks_sent: self.chunks_sent,
            chunks_resent: self.chunks_resent,
            protocol: self.protocol.clone(),
            streams: self.streams,
            time_to_first_ack_ms: self.time_to_first_ack_ms.unwrap_or(0),
            total_seconds: end.saturating_sub(self.created_at_ms) as f64 / 1000.0,
            server_sha256: self.server_sha256.clone(),
            merkle_root: self.merkle_root.clone(),
            location: self.location.clone(),
            upload_id: self.upload_id.clone().unwrap_or_default(),
            error_code: self.error_code.clone(),
            error_message: self.error_message.clone(),
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms.unwrap_or(0),
            attempts: self.attempts,
            chunk_size: self.chunk_size,
            used_0rtt: self.used_0rtt,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("job store: {0}")]
    Sled(#[from] sled::Error),
    #[error("job store record unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The sled-backed job store.
pub struct JobDb {
    db: sled::Db,
    jobs: sled::Tree,
    checkpoints: sled::Tree,
    sealer: Sealer,
}

impl JobDb {
    pub fn open(state_dir: &Path) -> Result<JobDb, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create state dir {}: {e}", state_dir.display()))?;
        let db = sled::open(state_dir.join("jobs.sled"))
            .map_err(|e| format!("cannot open job store in {}: {e}", state_dir.display()))?;
        let jobs = db.open_tree("jobs").map_err(|e| e.to_string())?;
        let checkpoints = db.open_tree("checkpoints").map_err(|e| e.to_string())?;
        let sealer = Sealer::load_or_create(&state_dir.join("checkpoint.key"))
            .map_err(|e| format!("checkpoint key: {e}"))?;
        Ok(JobDb {
            db,
            jobs,
            checkpoints,
            sealer,
        })
    }

    /// Writes a record and makes it durable.
    pub async fn put(&self, job: &JobRecord) -> Result<(), DbError> {
        self.jobs
            .insert(job.job_id.as_bytes(), serde_json::to_vec(job)?)?;
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn get(&self, job_id: &str) -> Result<Option<JobRecord>, DbError> {
        match self.jobs.get(job_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// All jobs, oldest first (ids sort by creation time).
    pub fn list(&self) -> Result<Vec<JobRecord>, DbError> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (_, v) = item?;
            match serde_json::from_slice(&v) {
                Ok(j) => out.push(j),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable job record"),
            }
        }
        Ok(out)
    }

    /// Stores a checkpoint together with the job record, atomically and durably.
    pub async fn checkpoint(&self, job: &JobRecord, cp: &Checkpoint) -> Result<(), DbError> {
        let sealed = self
            .sealer
            .seal(&serde_json::to_vec(cp)?, job.job_id.as_bytes());
        let record = serde_json::to_vec(job)?;
        (&self.jobs, &self.checkpoints)
            .transaction(|(jobs, cps)| {
                jobs.insert(job.job_id.as_bytes(), record.as_slice())?;
                cps.insert(job.job_id.as_bytes(), sealed.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => DbError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => DbError::Sled(
                    sled::Error::Unsupported("checkpoint transaction aborted".into()),
                ),
            })?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The job's checkpoint; `None` if missing or not openable (then the server's state
    /// plus local re-hashing rebuild it).
    pub fn load_checkpoint(&self, job_id: &str) -> Result<Option<Checkpoint>, DbError> {
        let Some(sealed) = self.checkpoints.get(job_id.as_bytes())? else {
            return Ok(None);
        };
        let Some(plain) = self.sealer.open(&sealed, job_id.as_bytes()) else {
            tracing::warn!(
                job_id,
                "checkpoint does not open with this state dir's key; ignoring it"
            );
            return Ok(None);
        };
        match serde_json::from_slice(&plain) {
            Ok(cp) => Ok(Some(cp)),
            Err(e) => {
                tracing::warn!(job_id, error = %e, "checkpoint unreadable; ignoring it");
                Ok(None)
            }
        }
    }

    pub fn drop_checkpoint(&self, job_id: &str) -> Result<(), DbError> {
        self.checkpoints.remove(job_id.as_bytes())?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), DbError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
