//! The server calls the driver runs as one request of the engine's: resuming a session
//! (state, checkpoint, re-hashing what the checkpoint does not know), sending a small file
//! whole, and how a failed call is classified for the engine's one retry policy.

use std::sync::Arc;

use uplink_engine::Failure;
use uplink_proto::chain::FileState;
use uplink_proto::wire::{self, CreateUpload, UploadCompleted, UploadCreated, UploadState};

use super::chain::ChainTracker;
use super::compress::{self, Lz4Pool};
use super::ledger::Ledger;
use super::reader::{ReadError, SourceFile};
use super::resume::{self, ServerChunk};
use crate::jobs::JobDb;
use crate::server_api::{CallError, ChunkPayload, ErrorClass, ServerClient};

/// Where a resumed session stands.
pub(super) enum Resumed {
    /// The server completed it in an earlier run whose answer was lost.
    AlreadyComplete(UploadCompleted),
    /// The acks to start from (checkpoint + chunks re-hashed and matched).
    Ledger {
        ledger: Ledger,
        dispatched_until: u64,
        /// CRC32C of acknowledged chunks (see `rescan`).
        crcs: super::rescan::ChunkCrcs,
        /// When the server takes chunks as links of the file's hash: the file's hash
        /// states this resume came to know (see `chain`).
        chain: Option<Vec<FileState>>,
    },
}

pub(super) struct WholeDone {
    pub created: UploadCreated,
    pub completed: UploadCompleted,
    pub root: [u8; 32],
}

/// Where a job with a server session resumes: the server's chunk list is the truth about
/// what is stored, the checkpoint about what this daemon hashed. Chunks the server holds
/// that the checkpoint does not know (acked after it) are re-read and re-hashed here —
/// not re-sent — and count only if the hashes agree. With `verify_all` (the global
/// watchdog fired) the checkpoint is not trusted: every chunk the server holds is re-hashed.
/// `chain`: the job's file-hash states from earlier in this run, if any.
#[allow(clippy::too_many_arguments)]
pub(super) async fn resume(
    client: &ServerClient,
    db: &JobDb,
    source: Arc<SourceFile>,
    job_id: &str,
    upload_id: &str,
    size: u64,
    verify_all: bool,
    chain: Option<Arc<ChainTracker>>,
) -> Result<Resumed, Failure> {
    let state: UploadState = client.state(upload_id).await.map_err(|e| failure(&e))?;
    if let Some(done) = state.completed {
        return Ok(Resumed::AlreadyComplete(done));
    }
    let checkpoint = db
        .load_checkpoint(job_id)
        .map_err(|e| Failure::transient("state_store", e.to_string()))?
        .filter(|c| c.upload_id == upload_id && !verify_all);
    let from = resume::chunks_needed_from(checkpoint.as_ref(), &state.ranges);
    // Linked chunks go on from the state where the acknowledged prefix ends: the record
    // that ends there says where its link started, and re-hashing it gives that state. It
    // starts at most a chunk before `from`, so it comes in the same request.
    let fetch_from = match state.sha256_chain {
        true => from.saturating_sub(wire::MAX_CHUNK_SIZE),
        false => from,
    };
    let mut tail = server_chunks(client, upload_id, fetch_from, state.chunk_count).await?;
    let before_from = {
        let rest = tail.split_off(tail.partition_point(|c| c.offset < from));
        std::mem::replace(&mut tail, rest)
    };
    let mut plan = resume::reconcile(size, checkpoint.as_ref(), &state.ranges, from, &tail);
    if plan.checkpoint_discarded && from > 0 {
        let all = server_chunks(client, upload_id, 0, state.chunk_count).await?;
        plan = resume::reconcile(size, None, &state.ranges, 0, &all);
        plan.checkpoint_discarded = true;
    }
    if plan.checkpoint_discarded {
        tracing::warn!(job_id, "checkpoint disagreed with the server; re-verifying");
    }
    let verify = plan.verify;
    let mut ledger = plan.ledger;
    // CRC32C of the chunks vouched for (a live job's checkpoint keeps them) and of those
    // verified now, for the re-scan before a live job completes.
    let mut crcs = checkpoint.map(|c| c.crcs).unwrap_or_default();
    crcs.retain(|offset, _| ledger.contains(*offset));
    let prefix_end = ledger.prefix_end();
    let known = chain.is_some_and(|t| t.knows(prefix_end));
    let before_prefix = before_from
        .into_iter()
        .filter(|_| !known)
        .find(|c| c.offset + c.length == prefix_end && c.from.is_some());
    let chaining = state.sha256_chain;
    let (ledger, crcs, states) = tokio::task::spawn_blocking(move || {
        let mut states = vec![FileState::start()];
        if let Some(c) = before_prefix
            && let Ok((_, digest, Some(to))) = source.read_chunk_from(c.offset, c.length, c.from)
            && digest.sha256 == c.sha256
        {
            states.push(to);
        }
        for c in verify {
            let (_, digest, to) = source
                .read_chunk_from(c.offset, c.length, c.from)
                .map_err(read_failure)?;
            states.extend(c.from.into_iter().chain(to));
            if digest.sha256 != c.sha256 {
                return Err(Failure::permanent(
                    "server_conflict",
                    format!(
                        "the server holds other bytes at offset {} than the file has",
                        c.offset
                    ),
                ));
            }
            ledger.ack(c.offset, c.length, digest.sha256);
            let sent = super::rescan::Sent {
                len: c.length,
                crc32c: digest.crc32c,
                sha256: digest.sha256,
            };
            crcs.insert(c.offset, sent);
        }
        Ok((ledger, crcs, states))
    })
    .await
    .map_err(|e| Failure::permanent("internal", e.to_string()))??;
    Ok(Resumed::Ledger {
        ledger,
        dispatched_until: plan.dispatched_until,
        crcs,
        chain: chaining.then_some(states),
    })
}

/// The server's chunk records at and after `from`, page by page. The state's chunk count
/// bounds the walk, so a server that kept answering pages could not keep us here.
async fn server_chunks(
    client: &ServerClient,
    upload_id: &str,
    from: u64,
    chunk_count: u64,
) -> Result<Vec<ServerChunk>, Failure> {
    let mut out = Vec::new();
    let mut next = Some(from);
    let max_pages = chunk_count / wire::MAX_CHUNK_PAGE as u64 + 2;
    for _ in 0..max_pages {
        let Some(at) = next else { break };
        let page = client
            .chunk_page(upload_id, at)
            .await
            .map_err(|e| failure(&e))?;
        for c in &page.chunks {
            let sha256 = uplink_proto::parse_hex32(&c.sha256).ok_or_else(|| {
                Failure::permanent("server_protocol", "a chunk record has a malformed sha256")
            })?;
            let from = match &c.sha256_from {
                None => None,
                Some(text) => Some(FileState::parse(text, c.offset).ok_or_else(|| {
                    Failure::permanent(
                        "server_protocol",
                        "a chunk record has a malformed sha256_from",
                    )
                })?),
            };
            if c.offset < at
                || out
                    .last()
                    .is_some_and(|l: &ServerChunk| c.offset <= l.offset)
            {
                return Err(Failure::permanent(
                    "server_protocol",
                    "chunk records came out of order",
                ));
            }
            out.push(ServerChunk {
                offset: c.offset,
                length: c.length,
                sha256,
                from,
            });
        }
        next = page.next_from.filter(|&n| n > at);
    }
    Ok(out)
}

/// How a small file is sent: through which client, and when to compress it.
pub(super) struct WholeSend {
    pub client: Arc<ServerClient>,
    pub lz4: Arc<Lz4Pool>,
    /// Compress when the sample saves more than this fraction (the core's threshold).
    pub compress_above: f32,
    pub lane: usize,
    /// Counts the PUT's body as it goes, for stall detection.
    pub progress: Arc<crate::transport::progress::BodyProgress>,
}

/// A small file in one go: session, one chunk, complete. The idempotency key makes a
/// repeat after a crash or a lost answer find the same session, where the chunk is a
/// no-op and complete answers again. `wire_bytes` counts the body bytes the PUT sent.
pub(super) async fn whole(
    how: &WholeSend,
    source: Arc<SourceFile>,
    key: &str,
    body: &CreateUpload,
    wire_bytes: &mut u64,
) -> Result<WholeDone, Failure> {
    let (client, lane) = (&how.client, how.lane);
    let size = body.size;
    let read = Arc::clone(&source);
    let (lz4, above) = (Arc::clone(&how.lz4), how.compress_above);
    // Hashed as a link from the file's start, which a server that offers links (all of
    // ours) takes without a second pass; another gets the plain digest.
    let (data, digest, packed) = tokio::task::spawn_blocking(move || {
        let (data, digest, _) = read.read_chunk_from(0, size, Some(FileState::start()))?;
        let packed = (compress::sample_saving(&data) > above)
            .then(|| lz4.compress(&data))
            .flatten();
        Ok((data, digest, packed))
    })
    .await
    .map_err(|e| Failure::permanent("internal", e.to_string()))?
    .map_err(read_failure)?;
    let created = client.create(key, body).await.map_err(|e| failure(&e))?;
    let (digest, from) = match created.sha256_chain {
        true => (digest, Some(FileState::start())),
        // A server that takes no links: hash again, off the reactor like the first time.
        false => {
            let bytes = data.clone();
            let plain =
                tokio::task::spawn_blocking(move || uplink_proto::integrity::digest(&bytes))
                    .await
                    .map_err(|e| Failure::permanent("internal", e.to_string()))?;
            (plain, None)
        }
    };
    let keys = client
        .session_keys(&created.upload_id, &created.nonce)
        .map_err(|e| failure(&e))?;
    let payload = ChunkPayload {
        replace: false,
        offset: 0,
        sha256: digest.sha256,
        crc32c: digest.crc32c,
        data,
        from,
    };
    *wire_bytes += packed.as_ref().map_or(size, |p| p.len() as u64);
    match client
        .put_chunk_watched(
            &keys,
            &payload,
            packed,
            lane,
            1,
            Some(Arc::clone(&how.progress)),
        )
        .await
    {
        Ok(_) => {}
        // Stored and completed by an earlier attempt whose answer was lost.
        Err(CallError::Server {
            status: 409, code, ..
        }) if code == uplink_proto::wire::code::ALREADY_COMPLETED => {}
        Err(e) => return Err(failure(&e)),
    }
    let root = uplink_proto::merkle::root_of([(0, size, &digest.sha256)])
        .map_err(|e| Failure::permanent("internal", e.to_string()))?;
    tokio::task::spawn_blocking(move || source.check())
        .await
        .map_err(|e| Failure::permanent("internal", e.to_string()))?
        .map_err(read_failure)?;
    let completed = client
        .complete(&created.upload_id, &root, None)
        .await
        .map_err(|e| failure(&e))?;
    Ok(WholeDone {
        created,
        completed,
        root,
    })
}

/// A failed call as the core's policy sees it.
pub(super) fn failure(e: &CallError) -> Failure {
    if let CallError::Transport(crate::transport::TransportError::PathGone) = e {
        return Failure::Moved;
    }
    if let CallError::Server {
        status: 409, code, ..
    } = e
        && code == uplink_proto::wire::code::CHUNK_CONFLICT
    {
        return Failure::StateChanged;
    }
    if let CallError::Server {
        status: 409,
        code,
        retry_after,
        ..
    } = e
        && code == uplink_proto::wire::code::CHUNK_IN_PROGRESS
    {
        return Failure::Busy {
            retry_after: *retry_after,
        };
    }
    match e.class() {
        ErrorClass::Transient => Failure::Transient {
            endpoint: e.endpoint_failure(),
            code: e.code(),
            message: e.to_string(),
            retry_after: e.retry_after(),
        },
        ErrorClass::UnknownUpload => Failure::SessionLost,
        ErrorClass::Permanent => Failure::Permanent {
            code: e.code(),
            message: e.to_string(),
        },
    }
}

pub(super) fn read_error_code(e: &ReadError) -> (&'static str, String) {
    match e {
        ReadError::Changed(_) => ("file_changed", e.to_string()),
        ReadError::Truncated(_) => ("file_truncated", e.to_string()),
        ReadError::Rewritten(_) => ("file_rewritten", e.to_string()),
        ReadError::Io(_) => ("read_failed", e.to_string()),
    }
}

pub(super) fn read_failure(e: ReadError) -> Failure {
    let (code, message) = read_error_code(&e);
    Failure::permanent(code, message)
}
