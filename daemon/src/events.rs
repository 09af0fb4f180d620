//! Job events fan-out to every `Watch` stream.

use tokio::sync::broadcast;
use uplink_proto::grpc::{self, job_event::Kind};

use crate::jobs::{JobRecord, now_ms};

/// Events buffered per subscriber; a slow watcher skips ahead rather than slowing uploads.
const CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<grpc::JobEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<grpc::JobEvent> {
        self.tx.subscribe()
    }

    pub fn emit(&self, job_id: &str, kind: Kind) {
        // No watcher is not an error.
        let _ = self.tx.send(grpc::JobEvent {
            job_id: job_id.to_string(),
            at_ms: now_ms(),
            kind: Some(kind),
        });
    }

    pub fn snapshot(job: &JobRecord) -> grpc::JobEvent {
        grpc::JobEvent {
            job_id: job.job_id.clone(),
            at_ms: now_ms(),
            kind: Some(Kind::Snapshot(job.to_proto())),
        }
    }
}
