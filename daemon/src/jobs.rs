//! Jobs: what the daemon remembers about each one, and the durable store they live in
//! ([`JobDb`], sled, with an index by state in [`index`]).

mod index;
mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uplink_proto::grpc;

use crate::engine::reader::FileIdentity;

pub use store::{DbError, JobDb, Listing, Page, Retention};

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

/// Everything the daemon remembers about a job. Stored as JSON; fields that older
/// versions wrote and this one no longer has (`sealed`) are ignored when read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: JobState,
    pub path: String,
    pub size: u64,
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
    /// Raw bytes of the re-sent chunks (older records lack it).
    #[serde(default)]
    pub bytes_resent: u64,
    /// Body bytes of chunk and whole-file PUTs, all attempts, after compression (older
    /// records lack it).
    #[serde(default)]
    pub bytes_on_wire: u64,
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
    /// Running, but waiting out a transient error: nothing moves until then.
    #[serde(default)]
    pub waiting: Option<Waiting>,
    /// Enqueued while its file was still being written: chunks may have been read before
    /// the writer finished, so the file is re-scanned against them before completing.
    #[serde(default)]
    pub live: bool,
    /// Not sealed yet: `size` is the writer's edge so far.
    #[serde(default)]
    pub growing: bool,
    /// Byte ranges (offset, length) the seal said were rewritten behind the upload: chunks
    /// there that changed are sent again instead of failing the job.
    #[serde(default)]
    pub rewritten: Vec<(u64, u64)>,
    /// Replace an object of this name on the server (else one there fails the job).
    #[serde(default)]
    pub overwrite: bool,
}

/// Why a running job is on hold, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub until_ms: u64,
    pub why: String,
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
        let waiting = self
            .waiting
            .as_ref()
            .filter(|_| self.state == JobState::Running);
        let state = match waiting {
            Some(_) => grpc::JobState::Waiting,
            None => self.state.to_proto(),
        };
        grpc::Job {
            job_id: self.job_id.clone(),
            state: state as i32,
            path: self.path.clone(),
            size: self.size,
            target: self.target.clone(),
            metadata: self.metadata.clone().into_iter().collect(),
            bytes_acked: self.bytes_acked,
            chunks_total: self.chunks_total,
            chunks_acked: self.chunks_acked,
            chunks_sent: self.chunks_sent,
            chunks_resent: self.chunks_resent,
            bytes_resent: self.bytes_resent,
            bytes_on_wire: self.bytes_on_wire,
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
            next_attempt_ms: waiting.map_or(0, |w| w.until_ms),
            waiting_why: waiting.map(|w| w.why.clone()).unwrap_or_default(),
            growing: self.growing,
        }
    }
}
