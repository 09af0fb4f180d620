//! The driver's other half: a finished read or request, turned back into the core's
//! events and into the job's record (session on record before any chunk, acks into the
//! Merkle ledger, the server's answer to complete).

use std::collections::HashMap;
use std::sync::Arc;

use uplink_engine::{Event, JobId, JobSpec, ReqId};
use uplink_proto::grpc::{self, job_event::Kind};
use uplink_proto::wire::UploadCompleted;

use super::{Active, Done, Driver};
use crate::engine::calls::{Resumed, failure, read_error_code};
use crate::engine::chain::ChainTracker;
use crate::engine::ledger::Checkpoint;
use crate::engine::rescan::Sent;
use crate::jobs::{JobRecord, JobState, now_ms};
use crate::server_api::ChunkPayload;

impl Driver {
    /// A request that carried a body ended (either way): it is no longer out, and its
    /// body bytes count as sent.
    fn body_sent(&mut self, req: ReqId, job: JobId, wire_bytes: u64) {
        self.requests.remove(&req);
        self.bodies.remove(&req);
        if let Some(a) = self.jobs.get_mut(&job) {
            a.record.bytes_on_wire += wire_bytes;
        }
    }

    pub(super) async fn on_done(&mut self, done: Done) {
        let now = self.now();
        tracing::trace!(done = done.name(), "I/O done");
        match done {
            Done::Nothing => {}
            Done::Opened {
                job,
                mut record,
                result,
            } => {
                if !self.ids.values().any(|v| *v == job) {
                    return; // cancelled while opening
                }
                let mut source = match result {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        let (code, message) = read_error_code(&e);
                        let error = Some((code.to_string(), message));
                        self.end_record(*record, JobState::Failed, error);
                        return;
                    }
                };
                if record.growing {
                    // A seal that came while the file was being opened is in the store.
                    if let Ok(Some(stored)) = self.shared.db.get(&record.job_id)
                        && !stored.growing
                    {
                        *record = stored;
                        source = Arc::new(source.sealed(record.identity));
                    } else if let Ok(meta) = source.metadata() {
                        record.size = record.size.max(meta.len());
                    }
                }
                record.state = JobState::Running;
                // A wait from the run before (the daemon stopped while the job waited) is over.
                record.waiting = None;
                if let Err(e) = self.shared.db.put(&record).await {
                    tracing::error!(error = %e, "cannot record the job as running");
                }
                let spec = JobSpec {
                    size: record.size,
                    priority: 0,
                    has_session: record.upload_id.is_some(),
                    growing: record.growing,
                };
                let record_size = (record.size, record.bytes_acked);
                self.jobs.insert(
                    job,
                    Active {
                        record: *record,
                        source,
                        keys: None,
                        chain: None,
                        checkpoint: Checkpoint::default(),
                        buffers: HashMap::new(),
                        pending_reads: HashMap::new(),
                        sends: HashMap::new(),
                        prior_dispatch: 0,
                        started_reported: false,
                        size_stored: (record_size, std::time::Instant::now()),
                    },
                );
                self.engine.handle(now, Event::JobAdded { job, spec });
            }
            Done::Created { req, job, result } => {
                self.requests.remove(&req);
                let created = match result {
                    Ok(c) => c,
                    Err(e) => {
                        let failure = failure(&e);
                        self.refuse(req, failure);
                        return;
                    }
                };
                let Some(a) = self.jobs.get_mut(&job) else {
                    return;
                };
                let keys = match self
                    .shared
                    .client
                    .session_keys(&created.upload_id, &created.nonce)
                {
                    Ok(k) => k,
                    Err(e) => {
                        let failure = failure(&e);
                        self.refuse(req, failure);
                        return;
                    }
                };
                a.record.upload_id = Some(created.upload_id.clone());
                a.record.nonce = Some(created.nonce);
                a.keys = Some(Arc::new(keys));
                a.chain = created.sha256_chain.then(ChainTracker::from_start);
                a.checkpoint = Checkpoint {
                    upload_id: created.upload_id,
                    ..Default::default()
                };
                // Chunks go only once the session is on record, so a crash never leaves
                // bytes on the server the daemon does not know to resume.
                if let Err(e) = self.shared.db.put(&a.record).await {
                    tracing::error!(error = %e, "cannot record the new session");
                }
                self.report_started(job);
                self.engine.handle(now, Event::RequestDone { req });
            }
            Done::Resumed { req, job, result } => {
                self.requests.remove(&req);
                let resumed = match result {
                    Ok(r) => r,
                    Err(failure) => {
                        self.refuse(req, failure);
                        return;
                    }
                };
                match resumed {
                    Resumed::AlreadyComplete(done) => {
                        if let Some(a) = self.jobs.get_mut(&job) {
                            apply_completed(&mut a.record, &done, None);
                        }
                        // The core still thinks the session is being fetched: drop the
                        // job there, and finish it here.
                        self.engine.handle(now, Event::JobCancelled { job });
                        self.perform_actions().await;
                        self.finish(job, JobState::Completed, None);
                    }
                    Resumed::Ledger {
                        ledger,
                        dispatched_until,
                        crcs,
                        chain,
                    } => {
                        let Some(a) = self.jobs.get_mut(&job) else {
                            return;
                        };
                        let (Some(upload_id), Some(nonce)) =
                            (a.record.upload_id.clone(), a.record.nonce.clone())
                        else {
                            return;
                        };
                        match self.shared.client.session_keys(&upload_id, &nonce) {
                            Ok(k) => a.keys = Some(Arc::new(k)),
                            Err(e) => {
                                let failure = failure(&e);
                                self.refuse(req, failure);
                                return;
                            }
                        }
                        // Resumed within the run: what the tracker knows stays good.
                        a.chain = match (a.chain.take(), chain) {
                            (Some(known), Some(states)) => {
                                known.learn(states);
                                Some(known)
                            }
                            (_, states) => states.map(ChainTracker::knowing),
                        };
                        let acked = ledger
                            .covered()
                            .into_iter()
                            .map(|(o, l)| o..o + l)
                            .collect();
                        a.record.bytes_acked = ledger.acked_bytes();
                        a.record.chunks_acked = ledger.acked_chunks();
                        a.prior_dispatch = dispatched_until;
                        a.checkpoint = Checkpoint {
                            upload_id,
                            ledger,
                            dispatched_until,
                            chunks_sent: a.record.chunks_sent,
                            chunks_resent: a.record.chunks_resent,
                            bytes_resent: a.record.bytes_resent,
                            crcs: if a.record.live {
                                crcs
                            } else {
                                Default::default()
                            },
                        };
                        self.report_started(job);
                        self.engine.handle(now, Event::SessionReady { req, acked });
                    }
                }
            }
            Done::Read {
                job,
                offset,
                result,
            } => match result {
                Ok((data, digest, from, saving)) => {
                    let Some(a) = self.jobs.get_mut(&job) else {
                        return;
                    };
                    if a.pending_reads.get(&offset) != Some(&(data.len() as u64)) {
                        return; // stale: its chunk was released meanwhile
                    }
                    a.pending_reads.remove(&offset);
                    // Acknowledged before: a rewritten chunk going again (see `rescan`).
                    let replace = a.checkpoint.crcs.contains_key(&offset);
                    a.buffers.insert(
                        offset,
                        ChunkPayload {
                            replace,
                            offset,
                            sha256: digest.sha256,
                            crc32c: digest.crc32c,
                            data,
                            from,
                        },
                    );
                    self.engine.handle(
                        now,
                        Event::ReadDone {
                            job,
                            offset,
                            saving: Some(saving),
                        },
                    );
                }
                Err(e) => {
                    let (code, message) = read_error_code(&e);
                    self.engine.handle(
                        now,
                        Event::ReadFailed {
                            job,
                            offset,
                            code: code.into(),
                            message,
                        },
                    );
                }
            },
            Done::Put {
                req,
                job,
                offset,
                wire_bytes,
                resumed_from,
                result,
            } => {
                self.body_sent(req, job, wire_bytes);
                if resumed_from > 0
                    && let Some(a) = self.jobs.get_mut(&job)
                {
                    // Only what went again counts as re-sent.
                    a.record.bytes_resent = a.record.bytes_resent.saturating_sub(resumed_from);
                    tracing::info!(
                        job_id = %a.record.job_id,
                        offset,
                        resumed_from,
                        "chunk resumed: the server had its first bytes from the lost attempt"
                    );
                }
                match result {
                    Ok(()) => {
                        let zero_rtt = self.shared.client.zero_rtt();
                        if let Some(a) = self.jobs.get_mut(&job)
                            && let Some(p) = a.buffers.remove(&offset)
                        {
                            let len = p.data.len() as u64;
                            a.checkpoint.ledger.ack(offset, len, p.sha256);
                            if a.record.live {
                                let sent = Sent {
                                    len,
                                    crc32c: p.crc32c,
                                    sha256: p.sha256,
                                };
                                a.checkpoint.crcs.insert(offset, sent);
                            }
                            a.record.chunks_acked = a.checkpoint.ledger.acked_chunks();
                            a.record.bytes_acked = a.checkpoint.ledger.acked_bytes();
                            // The answer came over the connection requests use now: if that
                            // is HTTP/3 whose early data the server accepted, this job used
                            // 0-RTT.
                            a.record.used_0rtt |= zero_rtt;
                            if a.record.time_to_first_ack_ms.is_none() {
                                a.record.time_to_first_ack_ms =
                                    Some(now_ms().saturating_sub(a.record.created_at_ms));
                            }
                        }
                        self.engine.handle(now, Event::RequestDone { req });
                    }
                    Err(e) => {
                        let failure = failure(&e);
                        self.refuse(req, failure);
                    }
                }
            }
            Done::Whole {
                req,
                job,
                wire_bytes,
                result,
            } => {
                self.body_sent(req, job, wire_bytes);
                match result {
                    Ok(w) => {
                        let zero_rtt = self.shared.client.zero_rtt();
                        let protocol = self.shared.client.link().protocol.to_string();
                        if let Some(a) = self.jobs.get_mut(&job) {
                            let r = &mut a.record;
                            r.upload_id = Some(w.created.upload_id);
                            r.nonce = Some(w.created.nonce);
                            r.chunks_acked = 1;
                            r.chunk_size = r.size;
                            r.streams = 1;
                            r.protocol = protocol;
                            r.used_0rtt |= zero_rtt;
                            if r.time_to_first_ack_ms.is_none() {
                                r.time_to_first_ack_ms =
                                    Some(now_ms().saturating_sub(r.created_at_ms));
                            }
                            apply_completed(r, &w.completed, Some(w.root));
                        }
                        self.engine.handle(now, Event::RequestDone { req });
                    }
                    Err(failure) => {
                        self.refuse(req, failure);
                    }
                }
            }
            Done::Completed {
                req,
                job,
                root,
                result,
            } => {
                self.requests.remove(&req);
                match result {
                    Ok(done) => {
                        if let Some(a) = self.jobs.get_mut(&job) {
                            apply_completed(&mut a.record, &done, Some(root));
                        }
                        self.engine.handle(now, Event::RequestDone { req });
                    }
                    Err(failure) => {
                        self.refuse(req, failure);
                    }
                }
            }
        }
    }

    /// The first time a run of this job has its session: tell watchers.
    fn report_started(&mut self, job: JobId) {
        let protocol = self.shared.client.link().protocol.to_string();
        let streams = self.engine.snapshot().stream_limit as u32;
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        if a.started_reported {
            return;
        }
        a.started_reported = true;
        a.record.protocol = protocol.clone();
        self.shared.events.emit(
            &a.record.job_id,
            Kind::Started(grpc::Started {
                protocol,
                streams,
                resumed_bytes: a.checkpoint.ledger.acked_bytes(),
            }),
        );
    }
}

fn apply_completed(r: &mut JobRecord, done: &UploadCompleted, root: Option<[u8; 32]>) {
    if let Some(root) = root {
        r.merkle_root = hex::encode(root);
    }
    r.server_sha256 = done.sha256.clone();
    r.location = done.location.clone();
    r.bytes_acked = r.size;
}
