//! The gRPC API (`uplink.v1.Uplink`) on top of the [`Manager`].

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use uplink_proto::grpc::{self, uplink_server::Uplink};

use crate::events::Events;
use crate::jobs::{JobState, Listing, now_ms};
use crate::manager::{Manager, ManagerError};

/// ListJobs page size when the request names none, and the most it gets.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// After a watcher fell behind, jobs that finished this long before its last delivered
/// event are replayed too: a job's end is recorded (and flushed) before it is announced.
const LAG_REPLAY_MARGIN_MS: u64 = 60_000;

/// Metadata key carrying the stable error code of a refused call.
pub const ERROR_CODE_KEY: &str = "uplink-error-code";

/// A status whose message starts with the stable code (`code: sentence`), which is also
/// in the `uplink-error-code` metadata for programs.
pub fn status(code: Code, stable: &str, message: &str) -> Status {
    let mut s = Status::new(code, format!("{stable}: {}", bounded(message)));
    if let Ok(v) = stable.parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    s
}

/// Longest message a status carries. It travels in the `grpc-message` trailer, and a
/// message echoing a caller's megabyte-long job id would pass any client's header limit:
/// the caller would see a broken stream instead of its error.
const MAX_MESSAGE: usize = 1024;

fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE {
        return message.into();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &message[..end], message.len()).into()
}

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Status {
        match e {
            ManagerError::Invalid(i) => {
                let code = match i.code {
                    "file_not_found" | "job_not_found" => Code::NotFound,
                    "bad_range" => Code::InvalidArgument,
                    "not_growing" | "job_ended" | "size_mismatch" | "file_changed" => {
                        Code::FailedPrecondition
                    }
                    "state_store" | "shutting_down" => Code::Unavailable,
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
        let job = self
            .mgr
            .enqueue(r.path, r.target, r.metadata, r.growing, r.overwrite)
            .await?;
        Ok(Response::new(grpc::EnqueueResponse {
            job_id: job.job_id.clone(),
            job: Some(job.to_proto()),
        }))
    }

    async fn seal(&self, req: Request<grpc::SealRequest>) -> Result<Response<grpc::Job>, Status> {
        let r = req.into_inner();
        let named = r.rewritten.iter().map(|b| (b.offset, b.length)).collect();
        let job = self.mgr.seal(&r.job_id, r.final_size, named).await?;
        Ok(Response::new(job.to_proto()))
    }

    type WatchStream = ReceiverStream<Result<grpc::JobEvent, Status>>;

    async fn watch(
        &self,
        req: Request<grpc::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let filter = req.into_inner().job_id;
        // Subscribe before reading the snapshots, so no event falls between the two.
        let mut live = self.mgr.events.subscribe();
        let mut delivered_at_ms = now_ms();
        let first = snapshots(&self.mgr, &filter, None)?;
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
                        let at_ms = ev.at_ms;
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                        delivered_at_ms = at_ms;
                    }
                    Ok(_) => {}
                    // Too slow to keep up: skip to fresh snapshots so no end is missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let since = delivered_at_ms.saturating_sub(LAG_REPLAY_MARGIN_MS);
                        delivered_at_ms = now_ms();
                        let Ok(again) = snapshots(&mgr, &filter, Some(since)) else {
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
        req: Request<grpc::ListJobsRequest>,
    ) -> Result<Response<grpc::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let size = match r.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let listing = match grpc::JobState::try_from(r.state) {
            Ok(grpc::JobState::Unspecified) => Listing::All,
            Ok(grpc::JobState::Queued) => Listing::State(JobState::Queued),
            // A waiting job is a running one on hold: listed with them.
            Ok(grpc::JobState::Running | grpc::JobState::Waiting) => {
                Listing::State(JobState::Running)
            }
            Ok(grpc::JobState::Completed) => Listing::State(JobState::Completed),
            Ok(grpc::JobState::Failed) => Listing::State(JobState::Failed),
            Ok(grpc::JobState::Cancelled) => Listing::State(JobState::Cancelled),
            Err(_) => {
                return Err(status(
                    Code::InvalidArgument,
                    "bad_state",
                    &format!("{} is not a job state", r.state),
                ));
            }
        };
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(hex::decode(token).map_err(|_| {
                status(
                    Code::InvalidArgument,
                    "bad_page_token",
                    "page_token is not one this daemon handed out",
                )
            })?),
        };
        let mgr = Arc::clone(&self.mgr);
        let page =
            tokio::task::spawn_blocking(move || mgr.db.page(listing, after.as_deref(), size))
                .await
                .map_err(|e| status(Code::Internal, "internal", &e.to_string()))?
                .map_err(ManagerError::from)?;
        Ok(Response::new(grpc::ListJobsResponse {
            jobs: page.jobs.iter().map(|j| j.to_proto()).collect(),
            next_page_token: page.next.map(hex::encode).unwrap_or_default(),
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
        let db = &self.mgr.db;
        let count = |s: JobState| {
            db.count(s)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .map_err(ManagerError::from)
        };
        let link = self.mgr.client.link();
        let cfg = &self.mgr.cfg;
        let snapshot = self
            .mgr
            .engine_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let circuit_retry_ms = snapshot.as_ref().map_or(0, |s| s.circuit_retry_ms);
        let jobs_growing = snapshot.as_ref().map_or(0, |s| s.growing);
        let snapshot = snapshot.map(|s| s.snapshot);
        let circuit = snapshot.as_ref().map(|s| s.circuit);
        Ok(Response::new(grpc::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            endpoints: vec![grpc::EndpointStatus {
                url: cfg.endpoint.clone(),
                protocol: link.protocol.to_string(),
                connected: link.connected > 0,
                connections: link.connected,
                last_connect_ms: link.last_connect_ms,
                circuit: circuit
                    .unwrap_or(uplink_engine::breaker::State::Closed)
                    .name()
                    .into(),
                health: snapshot.as_ref().map_or(100.0, |s| s.health),
                circuit_retry_ms,
                rtt_ms: link.rtt_ms.unwrap_or(0.0),
                handshake: link.handshake.unwrap_or("").to_string(),
                warm: link.connected > 0,
                tcp_congestion: link.tcp_congestion.algorithm,
                tcp_congestion_note: link.tcp_congestion.note,
                quic_congestion: link.quic_congestion.unwrap_or("").to_string(),
            }],
            jobs_queued: count(JobState::Queued)?,
            jobs_running: count(JobState::Running)?,
            chunks_in_flight: self
                .mgr
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            state_dir: cfg.state_dir.display().to_string(),
            uptime_seconds: self.mgr.started.elapsed().as_secs(),
            heap_allocations: crate::heap::allocations(),
            jobs_growing,
            telemetry: Some(telemetry_proto(crate::telemetry::read_from(
                &cfg.sysfs_root,
            ))),
            engine: snapshot.as_ref().map(|s| grpc::EngineStatus {
                tier: s.tier.map(|t| t.name().to_string()).unwrap_or_default(),
                estimate_bps: s.estimate.unwrap_or(0.0),
                stream_limit: s.stream_limit as u32,
                buffers: s.buffers as u32,
                buffers_in_use: s.buffers_in_use as u32,
                jobs_active: s.jobs_active as u32,
                jobs_pending: s.jobs_queued as u32,
                locked_bytes: crate::engine::buffer::locked_bytes() as u64,
            }),
        }))
    }
}

/// The snapshots a Watch starts with: the one job it names, or every active job (plus,
/// with `finished_since`, the jobs that finished since then: after a watcher lagged).
fn snapshots(
    mgr: &Manager,
    filter: &str,
    finished_since: Option<u64>,
) -> Result<Vec<grpc::JobEvent>, Status> {
    if !filter.is_empty() {
        return Ok(vec![Events::snapshot(&mgr.get(filter)?)]);
    }
    let mut jobs = match finished_since {
        Some(ms) => mgr.db.finished_since(ms).map_err(ManagerError::from)?,
        None => Vec::new(),
    };
    jobs.extend(mgr.db.active_jobs().map_err(ManagerError::from)?);
    Ok(jobs.iter().map(Events::snapshot).collect())
}

fn telemetry_proto(t: crate::telemetry::Telemetry) -> grpc::Telemetry {
    grpc::Telemetry {
        thermal: t
            .thermal
            .into_iter()
            .map(|z| grpc::ThermalZone {
                name: z.name,
                temp_c: z.temp_c,
                critical_c: z.critical_c.unwrap_or(0.0),
                state: z.state.into(),
            })
            .collect(),
        power_source: t.power_source,
        battery: t.battery.map(|b| grpc::BatteryStatus {
            percent: b.percent,
            status: b.status,
            level: b.level,
        }),
    }
}
