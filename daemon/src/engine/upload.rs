//! One run of one job: reconcile with the server, read and hash ahead, keep `streams`
//! chunks in flight, checkpoint every 10 acks, complete with the Merkle root.
//!
//! ```text
//! reader (blocking thread) --(prefetch: 3 chunks)--> coordinator --spawn--> PUT tasks (≤ streams)
//!                                                        ^---------- acks ------------'
//! ```
//! The coordinator alone owns the ledger and the job record, so there is no shared
//! mutable state between tasks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uplink_proto::grpc::{self, job_event::Kind};
use uplink_proto::integrity::ChunkDigest;
use uplink_proto::wire::CreateUpload;

use super::ledger::Checkpoint;
use super::meter::{RateMeter, Throttle};
use super::reader::{ReadError, SourceFile};
use super::resume::{self, ServerChunk};
use super::retry::{Backoff, CHUNK_MAX_RETRIES};
use crate::events::Events;
use crate::jobs::{DbError, JobDb, JobRecord, now_ms};
use crate::server_api::{CallError, ChunkPayload, ErrorClass, ServerClient, SessionKeys};

/// Chunks read and hashed ahead of the senders (the seed's prefetch depth).
pub const PREFETCH: usize = 3;
/// Acks between checkpoints (the seed's 10).
pub const CHECKPOINT_EVERY: u64 = 10;

/// What a run needs from the daemon.
pub struct Ctx {
    pub client: Arc<ServerClient>,
    pub db: Arc<JobDb>,
    pub events: Events,
    pub streams: usize,
    /// Daemon shutdown: checkpoint and return [`Outcome::Stopped`].
    pub stop: CancellationToken,
    /// Chunks handed to senders and not yet acknowledged or given up (Status's
    /// `chunks_in_flight`).
    pub in_flight: Arc<AtomicU32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Stopped,
}

#[derive(Debug, Clone)]
pub enum RunError {
    /// Worth another run after a pause (network gone, server restarting); the server may
    /// have said how long (`Retry-After`).
    Transient {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The server forgot the session: start a new one.
    UnknownUpload,
    /// Retrying cannot help.
    Permanent { code: String, message: String },
}

impl RunError {
    fn permanent(code: &str, message: impl Into<String>) -> RunError {
        RunError::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<CallError> for RunError {
    fn from(e: CallError) -> RunError {
        match e.class() {
            ErrorClass::Transient => RunError::Transient {
                code: e.code(),
                message: e.to_string(),
                retry_after: e.retry_after(),
            },
            ErrorClass::UnknownUpload => RunError::UnknownUpload,
            ErrorClass::Permanent => RunError::Permanent {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}

impl From<DbError> for RunError {
    fn from(e: DbError) -> RunError {
        RunError::Transient {
            code: "state_store".into(),
            message: e.to_string(),
            retry_after: None,
        }
    }
}

impl From<ReadError> for RunError {
    fn from(e: ReadError) -> RunError {
        match e {
            ReadError::Changed(_) => RunError::permanent("file_changed", e.to_string()),
            ReadError::Io(_) => RunError::permanent("read_failed", e.to_string()),
        }
    }
}

struct ReadTask {
    offset: u64,
    length: u64,
    /// Set for chunks the server already holds: re-hash and compare, do not send.
    verify: Option<[u8; 32]>,
}

type ReadResult = (ReadTask, Result<(Bytes, ChunkDigest), ReadError>);

struct PutDone {
    offset: u64,
    length: u64,
    sha256: [u8; 32],
    attempts: u64,
    result: Result<(), CallError>,
}

pub async fn run(ctx: &Ctx, job: &mut JobRecord) -> Result<Outcome, RunError> {
    let (path, identity) = (PathBuf::from(&job.path), job.identity);
    let source = tokio::task::spawn_blocking(move || SourceFile::open(&path, &identity))
        .await
        .map_err(|e| RunError::permanent("internal", e.to_string()))??;
    let source = Arc::new(source);

    let mut fresh_session = false;
    let upload_id = match &job.upload_id {
        Some(id) => id.clone(),
        None => {
            fresh_session = true;
            let req = CreateUpload {
                size: job.size,
                name: job.target.clone(),
                metadata: job.metadata.clone(),
            };
            let created = ctx.client.create(&job.job_id, &req).await?;
            job.upload_id = Some(created.upload_id.clone());
            job.nonce = Some(created.nonce);
            ctx.db.put(job).await?;
            created.upload_id
        }
    };
    // A session created just now holds nothing (chunks are only sent once its id is
    // recorded), so skip the round trip that would ask.
    let state = if fresh_session {
        uplink_proto::wire::UploadState::empty(&upload_id, job.size)
    } else {
        ctx.client.state(&upload_id).await?
    };
    let checkpoint = ctx
        .db
        .load_checkpoint(&job.job_id)?
        .filter(|c| c.upload_id == upload_id);
    if let Some(done) = state.completed {
        // Completed in an earlier run whose answer was lost (crash right after complete).
        if let Some(root) = checkpoint
            .as_ref()
            .and_then(|c| c.ledger.root_if_complete(job.size))
        {
            job.merkle_root = hex::encode(root);
        }
        job.server_sha256 = done.sha256;
        job.location = done.location;
        job.bytes_acked = job.size;
        return Ok(Outcome::Completed);
    }
    let nonce = job.nonce.clone().unwrap_or_default();
    let keys = Arc::new(ctx.client.session_keys(&upload_id, &nonce)?);
    let server_chunks: Vec<ServerChunk> = state
        .chunks
        .iter()
        .filter_map(|c| {
            Some(ServerChunk {
                offset: c.offset,
                length: c.length,
                sha256: uplink_proto::parse_hex32(&c.sha256)?,
            })
        })
        .collect();
    let plan = resume::reconcile(
        job.size,
        job.chunk_size,
        checkpoint.as_ref(),
        &server_chunks,
    );
    if plan.checkpoint_discarded {
        tracing::warn!(job_id = %job.job_id, "checkpoint disagreed with the server; re-verifying");
    }
    let prior_dispatch = plan.dispatched_until;
    let mut cp = Checkpoint {
        upload_id: upload_id.clone(),
        ledger: plan.ledger,
        dispatched_until: plan.dispatched_until,
        chunks_sent: job.chunks_sent,
        chunks_resent: job.chunks_resent,
    };
    job.chunks_total = cp.ledger.acked_chunks() + plan.verify.len() as u64 + plan.send.len() as u64;
    let streams = ctx.streams.clamp(1, plan.send.len().max(1));
    job.streams = streams as u32;
    job.protocol = ctx.client.link().protocol.to_string();
    ctx.events.emit(
        &job.job_id,
        Kind::Started(grpc::Started {
            protocol: job.protocol.clone(),
            streams: job.streams,
            resumed_bytes: cp.ledger.acked_bytes(),
        }),
    );

    let mut tasks: Vec<ReadTask> = plan
        .verify
        .iter()
        .map(|c| ReadTask {
            offset: c.offset,
            length: c.length,
            verify: Some(c.sha256),
        })
        .chain(plan.send.iter().map(|&(offset, length)| ReadTask {
            offset,
            length,
            verify: None,
        }))
        .collect();
    tasks.sort_unstable_by_key(|t| t.offset);
    let (tx, mut rx) = mpsc::channel::<ReadResult>(PREFETCH);
    let reader_source = Arc::clone(&source);
    let reader = tokio::task::spawn_blocking(move || {
        for t in tasks {
            let r = reader_source.read_chunk(t.offset, t.length);
            let failed = r.is_err();
            if tx.blocking_send((t, r)).is_err() || failed {
                return;
            }
        }
    });

    let mut inflight: JoinSet<PutDone> = JoinSet::new();
    let mut reader_done = false;
    let mut acks_since_checkpoint = 0u64;
    let mut lane = 0usize;
    let mut meter = RateMeter::new(Duration::from_secs(3));
    let mut throttle = Throttle::progress();
    meter.record(Instant::now(), cp.ledger.acked_bytes());

    let result: Result<bool, RunError> = loop {
        if reader_done && inflight.is_empty() {
            break Ok(true);
        }
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break Ok(false),
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                ctx.in_flight.fetch_sub(1, Ordering::Relaxed);
                let done = match joined {
                    Ok(d) => d,
                    Err(e) => break Err(RunError::Transient { code: "internal".into(), message: e.to_string(), retry_after: None }),
                };
                job.chunks_sent += done.attempts;
                job.chunks_resent += done.attempts.saturating_sub(1);
                if let Err(e) = done.result {
                    break Err(e.into());
                }
                // The answer came over the connection requests use now: if that is HTTP/3
                // whose early data the server accepted, this job used 0-RTT.
                job.used_0rtt |= ctx.client.zero_rtt();
                cp.ledger.ack(done.offset, done.length, done.sha256);
                acks_since_checkpoint += 1;
                on_ack(ctx, job, &cp, &mut meter, &mut throttle);
                if acks_since_checkpoint >= CHECKPOINT_EVERY {
                    acks_since_checkpoint = 0;
                    save(ctx, job, &mut cp).await?;
                }
            }
            msg = rx.recv(), if !reader_done && inflight.len() < streams => {
                let Some((task, read)) = msg else {
                    reader_done = true;
                    continue;
                };
                let (data, digest) = match read {
                    Ok(r) => r,
                    Err(e) => break Err(e.into()),
                };
                if let Some(expect) = task.verify {
                    if digest.sha256 != expect {
                        break Err(RunError::permanent(
                            "server_conflict",
                            format!("the server holds other bytes at offset {} than the file has", task.offset),
                        ));
                    }
                    cp.ledger.ack(task.offset, task.length, digest.sha256);
                    on_ack(ctx, job, &cp, &mut meter, &mut throttle);
                    continue;
                }
                if task.offset < prior_dispatch {
                    // Sent in an earlier run but never acknowledged (in flight at a crash).
                    job.chunks_resent += 1;
                }
                cp.dispatched_until = cp.dispatched_until.max(task.offset + task.length);
                let payload = ChunkPayload { offset: task.offset, sha256: digest.sha256, crc32c: digest.crc32c, data };
                ctx.in_flight.fetch_add(1, Ordering::Relaxed);
                inflight.spawn(put_with_retries(
                    Arc::clone(&ctx.client),
                    Arc::clone(&keys),
                    payload,
                    lane,
                    streams,
                    ctx.events.clone(),
                    job.job_id.clone(),
                ));
                lane = lane.wrapping_add(1);
            }
        }
    };
    ctx.in_flight
        .fetch_sub(inflight.len() as u32, Ordering::Relaxed);
    inflight.abort_all();
    drop(rx);
    let _ = reader.await;

    let finished = match result {
        Ok(f) => f,
        Err(e) => {
            if let Err(save_err) = save(ctx, job, &mut cp).await {
                tracing::warn!(error = ?save_err, "checkpoint after a failed run not saved");
            }
            return Err(e);
        }
    };
    save(ctx, job, &mut cp).await?;
    if !finished {
        return Ok(Outcome::Stopped);
    }
    let root = cp.ledger.root_if_complete(job.size).ok_or_else(|| {
        RunError::permanent("internal", "all chunks done but the ledger is not complete")
    })?;
    source.check()?;
    let done = ctx.client.complete(&upload_id, &root).await?;
    job.merkle_root = hex::encode(root);
    job.server_sha256 = done.sha256;
    job.location = done.location;
    Ok(Outcome::Completed)
}

fn on_ack(
    ctx: &Ctx,
    job: &mut JobRecord,
    cp: &Checkpoint,
    meter: &mut RateMeter,
    throttle: &mut Throttle,
) {
    let now = Instant::now();
    job.bytes_acked = cp.ledger.acked_bytes();
    job.chunks_acked = cp.ledger.acked_chunks();
    if job.time_to_first_ack_ms.is_none() {
        job.time_to_first_ack_ms = Some(now_ms().saturating_sub(job.created_at_ms));
    }
    // The carrier can change mid-upload (HTTP/3 coming up, or falling back to HTTP/2).
    job.protocol = ctx.client.link().protocol.to_string();
    meter.record(now, job.bytes_acked);
    if throttle.allow(now, job.bytes_acked) || job.bytes_acked == job.size {
        let rate = meter.rate();
        let left = job.size.saturating_sub(job.bytes_acked) as f64;
        ctx.events.emit(
            &job.job_id,
            Kind::Progress(grpc::Progress {
                acked_bytes: job.bytes_acked,
                total_bytes: job.size,
                rate_bps: rate,
                eta_seconds: if rate > 0.0 { left / rate } else { 0.0 },
                protocol: job.protocol.clone(),
                streams: job.streams,
            }),
        );
    }
}

async fn save(ctx: &Ctx, job: &JobRecord, cp: &mut Checkpoint) -> Result<(), RunError> {
    cp.chunks_sent = job.chunks_sent;
    cp.chunks_resent = job.chunks_resent;
    ctx.db.checkpoint(job, cp).await?;
    Ok(())
}

async fn put_with_retries(
    client: Arc<ServerClient>,
    keys: Arc<SessionKeys>,
    payload: ChunkPayload,
    lane: usize,
    sharing: usize,
    events: Events,
    job_id: String,
) -> PutDone {
    let mut backoff = Backoff::chunk();
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        // A retry moves to another connection: the failed one may be the problem.
        let result = client
            .put_chunk_shared(&keys, &payload, lane + attempts as usize - 1, sharing)
            .await;
        let done = |result| PutDone {
            offset: payload.offset,
            length: payload.data.len() as u64,
            sha256: payload.sha256,
            attempts,
            result,
        };
        match result {
            Ok(_) => return done(Ok(())),
            Err(e)
                if e.class() == ErrorClass::Transient && backoff.attempts() < CHUNK_MAX_RETRIES =>
            {
                let delay = backoff.next_delay_hinted(&mut rand::rng(), e.retry_after());
                events.emit(
                    &job_id,
                    Kind::Retrying(grpc::Retrying {
                        why: format!("chunk at {}: {e}", payload.offset),
                        attempt: backoff.attempts(),
                        delay_seconds: delay.as_secs_f64(),
                    }),
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return done(Err(e)),
        }
    }
}
