//! Growing files (a capture still being written): following the writer's edge, and the
//! seal that fixes the final size.
//!
//! Following is an fstat of each growing file every [`super::FOLLOW_EVERY`]: the core
//! hears the new edge ([`Event::JobGrew`]) and reads whole chunks behind it. Polling, not
//! inotify or kqueue: those report every `write` (hundreds a second from a capture writer,
//! each one a wake-up) and none made through a shared mapping, while 20 fstat calls a
//! second cost nothing, miss nothing, and delay a chunk by at most 50 ms. A seal goes
//! through this loop (like a cancel), which owns the records of the jobs it holds, so the
//! record on disk and the one in memory never disagree about it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uplink_engine::Event;

use super::Driver;
use crate::engine::reader::FileIdentity;
use crate::jobs::JobRecord;
use crate::validate::Invalid;

/// How often a growing file's size is written to the job store.
const STORE_SIZE_EVERY: Duration = Duration::from_millis(500);

fn invalid(code: &'static str, message: String) -> Invalid {
    Invalid { code, message }
}

impl Driver {
    /// Tells the core how far each growing file has been written, and the store (for
    /// GetJob and ListJobs: size and bytes acknowledged) at most every [`STORE_SIZE_EVERY`].
    pub(super) fn follow_growth(&mut self) {
        let now = self.now();
        let mut grew = Vec::new();
        for (&job, a) in self.jobs.iter_mut().filter(|(_, a)| a.record.growing) {
            let Ok(meta) = a.source.metadata() else {
                continue;
            };
            if meta.len() != a.record.size {
                // A shrink is the core's to judge (it fails the job as truncated).
                a.record.size = a.record.size.max(meta.len());
                grew.push((job, meta.len()));
            }
            // Size and acknowledged bytes: a job waiting on its writer makes no
            // checkpoints, yet what it reports must not stand still.
            let (stored, at) = a.size_stored;
            let now_stored = (a.record.size, a.record.bytes_acked);
            if stored != now_stored && at.elapsed() >= STORE_SIZE_EVERY {
                a.size_stored = (now_stored, Instant::now());
                if let Err(e) = self.shared.db.stage(&a.record, None) {
                    tracing::warn!(error = %e, "cannot record a growing file's size");
                }
            }
        }
        for (job, size) in grew {
            self.engine.handle(now, Event::JobGrew { job, size });
        }
    }

    /// Seals a growing job at `size`: held, the core sends the tail and completes; still
    /// queued, its record says so and it runs sealed. Durable before it answers.
    pub(super) async fn seal(
        &mut self,
        job_id: &str,
        size: u64,
        named: Vec<(u64, u64)>,
    ) -> Result<JobRecord, Invalid> {
        let held = self.ids.get(job_id).copied();
        let now = self.now();
        let store = |e: crate::jobs::DbError| invalid("state_store", e.to_string());
        if let Some(id) = held
            && let Some(a) = self.jobs.get_mut(&id)
        {
            let meta = a
                .source
                .metadata()
                .map_err(|e| invalid("unreadable", e.to_string()))?;
            if seal_record(&mut a.record, size, &named, &meta)? {
                a.source = Arc::new(a.source.sealed(a.record.identity));
                self.engine.handle(now, Event::JobSealed { job: id, size });
            }
            let record = a.record.clone();
            self.shared.db.put(&record).await.map_err(store)?;
            tracing::info!(job_id, size, "growing job sealed");
            return Ok(record);
        }
        // Queued, or being opened (its open reads the sealed record again).
        let mut record = match self.shared.db.get(job_id).map_err(store)? {
            Some(r) if !r.state.is_terminal() => r,
            Some(r) => {
                let message = format!("job {job_id} already ended ({:?})", r.state);
                return Err(invalid("job_ended", message));
            }
            None => return Err(invalid("job_not_found", format!("no job {job_id}"))),
        };
        let meta = std::fs::metadata(&record.path)
            .map_err(|e| invalid("file_changed", format!("{}: {e}", record.path)))?;
        seal_record(&mut record, size, &named, &meta)?;
        self.shared.db.put(&record).await.map_err(store)?;
        tracing::info!(job_id, size, "growing job sealed before it ran");
        Ok(record)
    }
}

/// Marks `r` sealed at `size`, with the ranges `named` rewritten, if the file (`meta`)
/// agrees; false if it already was (a repeated seal with the same size).
pub(super) fn seal_record(
    r: &mut JobRecord,
    size: u64,
    named: &[(u64, u64)],
    meta: &std::fs::Metadata,
) -> Result<bool, Invalid> {
    if let Some((o, l)) = named
        .iter()
        .find(|(o, l)| *l == 0 || o.checked_add(*l).is_none_or(|end| end > size))
    {
        let message = format!("rewritten range {o}+{l} is empty or lies past the {size} bytes");
        return Err(invalid("bad_range", message));
    }
    if !r.live {
        let message = format!("job {} was not enqueued as growing", r.job_id);
        return Err(invalid("not_growing", message));
    }
    if !r.growing {
        if r.size == size {
            return Ok(false);
        }
        let message = format!("job {} was already sealed at {} bytes", r.job_id, r.size);
        return Err(invalid("size_mismatch", message));
    }
    let now = FileIdentity::of(meta);
    if (now.dev, now.ino) != (r.identity.dev, r.identity.ino) {
        let message = format!("{} was replaced by another file", r.path);
        return Err(invalid("file_changed", message));
    }
    if now.size != size {
        let message = format!("{} holds {} bytes, not the {size} sealed", r.path, now.size);
        return Err(invalid("size_mismatch", message));
    }
    if size == 0 {
        return Err(invalid("file_empty", format!("{} is empty", r.path)));
    }
    r.growing = false;
    r.size = size;
    r.identity = now;
    r.rewritten = named.to_vec();
    Ok(true)
}
