//! The gRPC API (`uplink.v1.Uplink`) on top of the [`Manager`].

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use uplink_proto::grpc::{self, uplink_server::Uplink};

use crate::events::Events;
use crate::jobs::JobState;
use crate::manager::{Manager, ManagerError};

/// Metadata key carrying the stable error code of a refused call.
pub const ERROR_CODE_KEY: &str = "uplink-error-code";

/// A status whose message starts with the stable code (`code: sentence`), which is also
/// in the `uplink-error-code` metadata for programs.
pub fn status(code: Code, stable: &str, message: &str) -> Status {
    let mut s = Status::new(code, format!("{stable}: {message}"));
    if let Ok(v) = stable.parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    s
}

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Status {
        match e {
            ManagerError::Invalid(i) => {
                let code = match i.code {
                    "file_not_found" => Code::NotFound,
                    "permission_denied" => Code::PermissionDenied,
                    "internal" => Code::Internal,
                    _ => Code::InvalidArgument,
                };
                status(code, i.code, &i.message)
            }
            ManagerError::NotFound(id) => {
                status(Code::NotFound, "job_not_found", &format!("no job {id}"))
            }
            ManagerError::Store(e) => status(Code::Unavailable, "state_store", &e.to_string()),
        }
    }
}

pub struct Api {
    pub mgr: Arc<Manager>,
}

#[tonic::async_trait]
impl Uplink for Api {
    async fn prewarm(
        &self,
        req: Request<grpc::PrewarmRequest>,
    ) -> Result<Response<grpc::PrewarmResponse>, Status> {
        let secs = match req.into_inner().keep_warm_seconds {
            0 => self.mgr.cfg.keep_warm_seconds,
            s => s,
        };
        let before = self.mgr.client.link();
        let started = std::time::Instant::now();
        self.mgr
            .prewarm(std::time::Duration::from_secs(secs.into()))
            .await
            .map_err(|e| status(Code::Unavailable, &e.code(), &e.to_string()))?;
        let link = self.mgr.client.link();
        Ok(Response::new(grpc::PrewarmResponse {
            endpoint: self.mgr.cfg.endpoint.clone(),
            protocol: link.protocol.to_string(),
            connect_ms: started.elapsed().as_millis() as u64,
            already_warm: before.connected as usize >= self.mgr.client.lanes(),
        }))
    }

    async fn enqueue(
        &self,
        req: Request<grpc::EnqueueRequest>,
    ) -> Result<Response<grpc::EnqueueResponse>, Status> {
        let r = req.into_inner();
        let job = self.mgr.enqueue(r.path, r.target, r.metadata).await?;
        Ok(Response::new(grpc::EnqueueResponse {
            job_id: job.job_id.clone(),
            job: Some(job.to_proto()),
        }))
    }

    type WatchStream = ReceiverStream<Result<grpc::JobEvent, Status>>;

    async fn watch(
        &self,
        req: Request<grpc::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let filter = req.into_inner().job_id;
        // Subscribe before reading the snapshots, so no event falls between the two.
        let mut live = self.mgr.events.subscribe();
        let first = snapshots(&self.mgr, &filter)?;
        let (tx, rx) = mpsc::channel(256);
        let mgr = Arc::clone(&self.mgr);
        tokio::spawn(async move {
            for s in first {
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
            }
            loop {
                let ev = tokio::select! {
                    ev = live.recv() => ev,
                    _ = tx.closed() => return,
                };
                match ev {
                    Ok(ev) if filter.is_empty() || ev.job_id == filter => {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow to keep up: skip to fresh snapshots so no end is missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let Ok(again) = snapshots(&mgr, &filter) else {
                            return;
                        };
                        for s in again {
                            if tx.send(Ok(s)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_job(
        &self,
        req: Request<grpc::GetJobRequest>,
    ) -> Result<Response<grpc::Job>, Status> {
        Ok(Response::new(
            self.mgr.get(&req.into_inner().job_id)?.to_proto(),
        ))
    }

    async fn list_jobs(
        &self,
        _req: Request<grpc::ListJobsRequest>,
    ) -> Result<Response<grpc::ListJobsResponse>, Status> {
        let jobs = self.mgr.db.list().map_err(ManagerError::from)?;
        Ok(Response::new(grpc::ListJobsResponse {
            jobs: jobs.iter().map(|j| j.to_proto()).collect(),
        }))
    }

    async fn cancel(
        &self,
        req: Request<grpc::CancelRequest>,
    ) -> Result<Response<grpc::Job>, Status> {
        Ok(Response::new(
            self.mgr.cancel(&req.into_inner().job_id).await?.to_proto(),
        ))
    }

    async fn status(
        &self,
        _req: Request<grpc::StatusRequest>,
    ) -> Result<Response<grpc::StatusResponse>, Status> {
        let jobs = self.mgr.db.list().map_err(ManagerError::from)?;
        let count = |s: JobState| jobs.iter().filter(|j| j.state == s).count() as u32;
        let link = self.mgr.client.link();
        let cfg = &self.mgr.cfg;
        Ok(Response::new(grpc::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            endpoints: vec![grpc::EndpointStatus {
                url: cfg.endpoint.clone(),
                protocol: link.protocol.to_string(),
                connected: link.connected > 0,
                connections: link.connected,
                last_connect_ms: link.last_connect_ms,
                // No circuit breaker yet: report that plainly rather than a state.
                circuit: "none".into(),
                rtt_ms: link.rtt_ms.unwrap_or(0.0),
                handshake: link.handshake.unwrap_or("").to_string(),
                warm: link.connected > 0,
            }],
            jobs_queued: count(JobState::Queued),
            jobs_running: count(JobState::Running),
            buffer_pool_capacity: cfg.streams + crate::engine::upload::PREFETCH as u32,
            buffer_pool_in_use: self
                .mgr
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            state_dir: cfg.state_dir.display().to_string(),
            uptime_seconds: self.mgr.started.elapsed().as_secs(),
        }))
    }
}

fn snapshots(mgr: &Manager, filter: &str) -> Result<Vec<grpc::JobEvent>, Status> {
    if filter.is_empty() {
        let jobs = mgr.db.list().map_err(ManagerError::from)?;
        Ok(jobs.iter().map(Events::snapshot).collect())
    } else {
        Ok(vec![Events::snapshot(&mgr.get(filter)?)])
    }
}
