//! The core's network and disk actions carried out as tasks: creating a session,
//! fetching (and verifying) the server's state, reading and hashing a chunk, sending a
//! chunk or a small file, and completing. Each task ends in a [`Done`] the loop feeds
//! back to the core (see `outcomes`).

use std::sync::Arc;

use uplink_engine::{Failure, JobId, ReqId};
use uplink_proto::chain::FileState;
use uplink_proto::wire::CreateUpload;

use super::{Done, Driver};

/// A chunk sent again asks the server what it has of it first (one round trip) when it
/// is at least this large; a smaller one is cheaper to send whole.
const RESUME_AT_LEAST: u64 = 512 * 1024;
use crate::engine::calls::{WholeSend, failure, read_failure, resume, whole};
use crate::engine::compress;
use crate::engine::ledger::Checkpoint;
use crate::engine::reader::ReadError;
use crate::engine::rescan;
use crate::transport::progress::BodyProgress;

impl Driver {
    pub(super) async fn create_session(&mut self, req: ReqId, job: JobId) {
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        if a.record.upload_id.is_some() {
            // The core asks for a new session after the server forgot the old one.
            tracing::warn!(job_id = %a.record.job_id, "the server no longer knows the upload; starting a new session");
            a.record.upload_id = None;
            a.record.nonce = None;
            a.keys = None;
            a.buffers.clear();
            a.checkpoint = Checkpoint::default();
            let _ = self.shared.db.drop_checkpoint(&a.record.job_id);
        }
        a.record.attempts += 1;
        // A growing file's length is named at completion.
        let body = CreateUpload {
            deferred_length: a.record.growing,
            size: if a.record.growing { 0 } else { a.record.size },
            name: a.record.target.clone(),
            metadata: a.record.metadata.clone(),
            overwrite: a.record.overwrite,
        };
        let (client, key) = (Arc::clone(&self.shared.client), a.record.job_id.clone());
        self.spawn_request(req, async move {
            Done::Created {
                req,
                job,
                result: client.create(&key, &body).await,
            }
        });
    }

    pub(super) fn fetch_state(&mut self, req: ReqId, job: JobId, verify_all: bool) {
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        a.record.attempts += 1;
        let Some(upload_id) = a.record.upload_id.clone() else {
            return;
        };
        let (client, db) = (Arc::clone(&self.shared.client), Arc::clone(&self.shared.db));
        let (source, job_id, size, chain) = (
            Arc::clone(&a.source),
            a.record.job_id.clone(),
            a.record.size,
            a.chain.clone(),
        );
        self.spawn_request(req, async move {
            let result = resume(
                &client, &db, source, &job_id, &upload_id, size, verify_all, chain,
            )
            .await;
            Done::Resumed { req, job, result }
        });
    }

    pub(super) fn read(&mut self, job: JobId, offset: u64, len: u64) {
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        a.pending_reads.insert(offset, len);
        let source = Arc::clone(&a.source);
        // A chunk acknowledged before and read again (rewritten, see `rescan`) goes plain:
        // the states after it are no longer the file's.
        let replacing = a.checkpoint.crcs.contains_key(&offset);
        let link = a
            .chain
            .as_ref()
            .filter(|_| !replacing)
            .map(|chain| chain.expect(offset, len));
        self.tasks.spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                // A start state nothing brings is hashed up to from a known one nearby.
                let fill = |known: FileState, to: u64| {
                    let gap = to.checked_sub(known.len())?;
                    let (_, _, state) =
                        source.read_chunk_from(known.len(), gap, Some(known)).ok()?;
                    state
                };
                let from = link.as_ref().and_then(|l| l.start(fill));
                // The sample rides the hashing pass, while the pages are hot.
                let (data, digest, to) = source.read_chunk_from(offset, len, from)?;
                if let (Some(link), Some(to)) = (link, to) {
                    link.publish(to);
                }
                let saving = compress::sample_saving(&data);
                Ok((data, digest, from, saving))
            })
            .await
            .unwrap_or_else(|e| Err(ReadError::Io(e.to_string())));
            Done::Read {
                job,
                offset,
                result,
            }
        });
    }

    pub(super) fn put_chunk(
        &mut self,
        req: ReqId,
        job: JobId,
        offset: u64,
        lane: usize,
        compress: bool,
    ) {
        let sharing = self.engine.snapshot().stream_limit;
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        // Keys from before a rotated secret are made again from the new one.
        if let Some(fresh) = a
            .keys
            .as_ref()
            .and_then(|k| self.shared.client.refresh_keys(k))
        {
            a.keys = Some(Arc::new(fresh));
        }
        let (Some(payload), Some(keys)) = (a.buffers.get(&offset).cloned(), a.keys.clone()) else {
            // The core sends only what was read, within a session: a broken promise.
            self.refuse(
                req,
                Failure::permanent("internal", "chunk to send is not in memory"),
            );
            return;
        };
        let sends = a.sends.entry(offset).or_insert(0);
        *sends += 1;
        a.record.chunks_sent += 1;
        // Sent before (this run, or by the run a crash ended): the server may hold its
        // first bytes from the attempt whose connection was lost, so ask before sending.
        let again = *sends > 1 || offset < a.prior_dispatch;
        if again {
            a.record.chunks_resent += 1;
            a.record.bytes_resent += payload.data.len() as u64;
        }
        let end = offset + payload.data.len() as u64;
        a.checkpoint.dispatched_until = a.checkpoint.dispatched_until.max(end);
        a.record.chunk_size = a.record.chunk_size.max(payload.data.len() as u64);
        let client = Arc::clone(&self.shared.client);
        let pool = Arc::clone(&self.lz4);
        let progress = Arc::new(BodyProgress::new(self.epoch));
        self.bodies.insert(req, Arc::clone(&progress));
        self.spawn_request(req, async move {
            let lz4 = match compress {
                true => {
                    let raw = payload.data.clone();
                    tokio::task::spawn_blocking(move || pool.compress(&raw))
                        .await
                        .ok()
                        .flatten()
                }
                false => None,
            };
            let length = payload.data.len() as u64;
            // (answer, bytes the server already had, body bytes sent)
            // A replacement asks nothing: the server's parked bytes are of the old chunk.
            let resume = again && length >= RESUME_AT_LEAST && !payload.replace;
            let (result, resumed_from, wire_bytes) = match (lz4, resume) {
                (None, true) => match client
                    .put_chunk_resumed(&keys, &payload, lane, sharing, Some(progress))
                    .await
                {
                    Ok((_, from)) => (Ok(()), from, length - from.min(length)),
                    Err(e) => (Err(e), 0, length),
                },
                (lz4, _) => {
                    let wire = lz4.as_ref().map_or(length, |l| l.len() as u64);
                    let result = client
                        .put_chunk_watched(&keys, &payload, lz4, lane, sharing, Some(progress))
                        .await
                        .map(|_| ());
                    (result, 0, wire)
                }
            };
            Done::Put {
                req,
                job,
                offset,
                wire_bytes,
                resumed_from,
                result,
            }
        });
    }

    pub(super) fn put_whole(&mut self, req: ReqId, job: JobId, lane: usize) {
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        a.record.attempts += 1;
        a.record.chunks_sent += 1;
        // Watched like a chunk's body: a small file on a dead path is noticed as stalled,
        // not only when its deadline ends.
        let progress = Arc::new(BodyProgress::new(self.epoch));
        self.bodies.insert(req, Arc::clone(&progress));
        let how = WholeSend {
            client: Arc::clone(&self.shared.client),
            lz4: Arc::clone(&self.lz4),
            compress_above: self.shared.engine_config.compress_threshold,
            lane,
            progress,
        };
        let source = Arc::clone(&a.source);
        let (key, size) = (a.record.job_id.clone(), a.record.size);
        let body = CreateUpload {
            deferred_length: false,
            size,
            name: a.record.target.clone(),
            metadata: a.record.metadata.clone(),
            overwrite: a.record.overwrite,
        };
        self.spawn_request(req, async move {
            let mut wire_bytes = 0;
            let result = whole(&how, source, &key, &body, &mut wire_bytes).await;
            Done::Whole {
                req,
                job,
                wire_bytes,
                result,
            }
        });
    }

    pub(super) fn complete(&mut self, req: ReqId, job: JobId) {
        let Some(a) = self.jobs.get(&job) else {
            return;
        };
        let (Some(root), Some(upload_id)) = (
            a.checkpoint.ledger.root_if_complete(a.record.size),
            a.record.upload_id.clone(),
        ) else {
            self.refuse(
                req,
                Failure::permanent(
                    "internal",
                    "every byte is acknowledged but the ledger is not complete",
                ),
            );
            return;
        };
        let client = Arc::clone(&self.shared.client);
        let source = Arc::clone(&a.source);
        // A live job names its length (its session may have been created deferred) and
        // has its chunks re-scanned: they were read while the file was being written. Its
        // root is over the chunks as last sent (a rewritten one replaced its first send).
        let live = a.record.live.then(|| {
            let crcs = a.checkpoint.crcs.clone();
            (a.record.size, crcs, a.record.rewritten.clone())
        });
        let root = match &live {
            Some((size, crcs, _)) => rescan::root(crcs, *size).unwrap_or(root),
            None => root,
        };
        self.spawn_request(req, async move {
            let result = async {
                let size = live.as_ref().map(|(size, _, _)| *size);
                // The bytes acknowledged must still be the file's: it must not have
                // changed since (the server checks the root against what it holds).
                let found = tokio::task::spawn_blocking(move || {
                    source.check()?;
                    match live {
                        Some((_, crcs, named)) => rescan::rescan(&source, &crcs, &named),
                        None => Ok(rescan::Rescan::Same),
                    }
                })
                .await
                .map_err(|e| Failure::permanent("internal", e.to_string()))?
                .map_err(read_failure)?;
                if let rescan::Rescan::Resend(chunks) = found {
                    return Err(Failure::Resend { chunks });
                }
                client
                    .complete(&upload_id, &root, size)
                    .await
                    .map_err(|e| failure(&e))
            }
            .await;
            Done::Completed {
                req,
                job,
                root,
                result,
            }
        });
    }
}
