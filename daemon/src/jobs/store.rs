//! The sled-backed job store.
//!
//! Trees: `jobs` (job id -> JSON record), `checkpoints` (job id -> sealed [`Checkpoint`]),
//! and the index by state ([`super::index`]), written in the same transaction as the
//! record. Picking the next job, counting jobs per state and trimming old finished jobs
//! read the index, not the records. Every state change is flushed before it is reported,
//! so what a client was told survives a crash.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::index::{self, IndexTx, Placement};
use super::{JobRecord, JobState};
use crate::engine::ledger::Checkpoint;
use crate::seal::Sealer;

/// Finished jobs removed per transaction when trimming.
const PRUNE_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("job store: {0}")]
    Sled(#[from] sled::Error),
    #[error("job store record unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

fn tx_error(e: TransactionError<()>) -> DbError {
    match e {
        TransactionError::Storage(e) => DbError::Sled(e),
        TransactionError::Abort(()) => DbError::Sled(sled::Error::Unsupported(
            "job store transaction aborted".into(),
        )),
    }
}

type TxResult = Result<(), ConflictableTransactionError<()>>;

/// How long finished (completed, failed, cancelled) jobs are kept: at most `keep` of them,
/// none older than `max_age` (by finish time). Queued and running jobs are never trimmed.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: u64,
    pub max_age: Duration,
}

/// Which jobs a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Every job, oldest first (creation order).
    All,
    /// Jobs in one state: queued and running ones in run order, finished ones in the
    /// order they finished.
    State(JobState),
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts (the last key of this one); `None` when nothing follows.
    pub next: Option<Vec<u8>>,
}

/// The sled-backed job store.
pub struct JobDb {
    db: sled::Db,
    jobs: sled::Tree,
    checkpoints: sled::Tree,
    active: sled::Tree,
    finished: sled::Tree,
    placements: sled::Tree,
    meta: sled::Tree,
    sealer: Sealer,
    /// Job records decoded since open (the costly part of reading the store).
    decodes: AtomicU64,
    /// Writes so far, and (under the lock) how many of them the last flush covered.
    written: AtomicU64,
    flushed: tokio::sync::Mutex<u64>,
}

/// Opens the sled database, waiting up to 2 s for its file lock: the process that held it
/// last (a daemon restarting, or a store just dropped in this one) lets go only when
/// sled's background flusher has finished, a moment after it closed. (sled 0.34 reports a
/// held lock only in its message, as an `Other` I/O error.)
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let mut waited = std::time::Duration::ZERO;
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && waited < std::time::Duration::from_secs(2) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
                waited += std::time::Duration::from_millis(20);
            }
            other => return other,
        }
    }
}

impl JobDb {
    pub fn open(state_dir: &Path) -> Result<JobDb, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create state dir {}: {e}", state_dir.display()))?;
        let db = open_sled(&state_dir.join("jobs.sled"))
            .map_err(|e| format!("cannot open job store in {}: {e}", state_dir.display()))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| e.to_string());
        let sealer = Sealer::load_or_create(&state_dir.join("checkpoint.key"))
            .map_err(|e| format!("checkpoint key: {e}"))?;
        let store = JobDb {
            jobs: tree("jobs")?,
            checkpoints: tree("checkpoints")?,
            active: tree("active")?,
            finished: tree("finished")?,
            placements: tree("placements")?,
            meta: tree("index_meta")?,
            db,
            sealer,
            decodes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
        };
        let indexed = store
            .meta
            .get(index::VERSION_KEY)
            .map_err(|e| e.to_string())?;
        if indexed.as_deref() != Some(index::INDEX_VERSION) {
            store
                .reindex()
                .map_err(|e| format!("cannot index the job store: {e}"))?;
        }
        Ok(store)
    }

    /// Job records decoded since this store was opened.
    pub fn decodes(&self) -> u64 {
        self.decodes.load(Ordering::Relaxed)
    }

    fn decode(&self, bytes: &[u8]) -> Result<JobRecord, serde_json::Error> {
        self.decodes.fetch_add(1, Ordering::Relaxed);
        serde_json::from_slice(bytes)
    }

    /// Writes a record, its index entry and (if given) its checkpoint in one transaction,
    /// not yet flushed. A finished job's checkpoint is dropped: nothing resumes it.
    fn write(&self, job: &JobRecord, checkpoint: Option<&[u8]>) -> Result<(), DbError> {
        self.written.fetch_add(1, Ordering::SeqCst);
        let record = serde_json::to_vec(job)?;
        let id = job.job_id.as_bytes();
        let placement = Placement::of(job);
        let finished = job.state.is_terminal();
        (
            &self.jobs,
            &self.checkpoints,
            &self.active,
            &self.finished,
            &self.placements,
            &self.meta,
        )
            .transaction(|(jobs, cps, active, done, placements, meta)| -> TxResult {
                jobs.insert(id, record.as_slice())?;
                match checkpoint {
                    _ if finished => {
                        cps.remove(id)?;
                    }
                    Some(cp) => {
                        cps.insert(id, cp)?;
                    }
                    None => {}
                }
                let index = IndexTx {
                    active,
                    finished: done,
                    placements,
                    meta,
                };
                index.place(id, Some(&placement))?;
                Ok(())
            })
            .map_err(tx_error)
    }

    /// Writes a record and makes it durable.
    pub async fn put(&self, job: &JobRecord) -> Result<(), DbError> {
        self.write(job, None)?;
        self.flush().await
    }

    /// Stores a checkpoint together with the job record, atomically and durably.
    pub async fn checkpoint(&self, job: &JobRecord, cp: &Checkpoint) -> Result<(), DbError> {
        self.stage(job, Some(cp))?;
        self.flush().await
    }

    /// Writes a record (with its checkpoint, if given) atomically, durable at the next
    /// [`Self::flush`]. The upload loop writes this way and flushes off the loop, so a disk
    /// sync never holds up the requests (300 small files ending meant 300 syncs in a row).
    pub fn stage(&self, job: &JobRecord, cp: Option<&Checkpoint>) -> Result<(), DbError> {
        let sealed = match cp {
            Some(cp) => Some(
                self.sealer
                    .seal(&serde_json::to_vec(cp)?, job.job_id.as_bytes()),
            ),
            None => None,
        };
        self.write(job, sealed.as_deref())
    }

    pub fn get(&self, job_id: &str) -> Result<Option<JobRecord>, DbError> {
        match self.jobs.get(job_id.as_bytes())? {
            Some(v) => Ok(Some(self.decode(&v)?)),
            None => Ok(None),
        }
    }

    /// How many jobs are in `state` (from the index's counts: no walk).
    pub fn count(&self, state: JobState) -> Result<u64, DbError> {
        let v = self.meta.get([index::state_byte(state)])?;
        Ok(index::read_count(v.as_deref()))
    }

    /// Whether any job is queued or running.
    pub fn has_active(&self) -> Result<bool, DbError> {
        Ok(self.active.first()?.is_some())
    }

    /// The job to run next (queued, or running when the last process stopped), first in
    /// run order. Reads one index key and decodes one record.
    pub fn next_active(&self) -> Result<Option<JobRecord>, DbError> {
        // Each pass returns or takes a broken entry out of the index, so this ends.
        loop {
            let Some((key, _)) = self.active.first()? else {
                return Ok(None);
            };
            let id = index::job_id_in(JobState::Queued, &key);
            if let Some(job) = self.read_indexed(JobState::Queued, &key, id)? {
                return Ok(Some(job));
            }
        }
    }

    /// The ids of the first `limit` queued and running jobs, in run order (index keys
    /// only: nothing is decoded).
    pub fn active_ids(&self, limit: usize) -> Result<Vec<String>, DbError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for key in self.active.iter().keys().take(limit) {
            let key = key?;
            out.push(
                String::from_utf8_lossy(index::job_id_in(JobState::Queued, &key)).into_owned(),
            );
        }
        Ok(out)
    }

    /// Every queued and running job, in run order.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        let keys: Vec<sled::IVec> = self
            .active
            .iter()
            .keys()
            .collect::<Result<_, sled::Error>>()?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let id = index::job_id_in(JobState::Queued, &key);
            if let Some(job) = self.read_indexed(JobState::Queued, &key, id)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Jobs that finished at or after `since_ms` (Unix ms), in the order they finished.
    pub fn finished_since(&self, since_ms: u64) -> Result<Vec<JobRecord>, DbError> {
        let from = since_ms.to_be_bytes().to_vec();
        let keys: Vec<sled::IVec> = self
            .finished
            .range(from..)
            .keys()
            .collect::<Result<_, sled::Error>>()?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let id = index::job_id_in(JobState::Completed, &key);
            if let Some(job) = self.read_indexed(JobState::Completed, &key, id)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// The record an index entry points at. An entry whose record is missing or
    /// unreadable is taken out of the index (and logged), so it cannot block the queue.
    fn read_indexed(
        &self,
        state: JobState,
        key: &[u8],
        job_id: &[u8],
    ) -> Result<Option<JobRecord>, DbError> {
        match self.jobs.get(job_id)? {
            Some(v) => match self.decode(&v) {
                Ok(job) => return Ok(Some(job)),
                Err(e) => tracing::warn!(
                    job_id = %String::from_utf8_lossy(job_id),
                    error = %e,
                    "job record unreadable; taking it out of the index"
                ),
            },
            None => tracing::warn!(
                job_id = %String::from_utf8_lossy(job_id),
                "index names a job that has no record; dropping the entry"
            ),
        }
        (&self.active, &self.finished, &self.placements, &self.meta)
            .transaction(|(active, finished, placements, meta)| -> TxResult {
                let index = IndexTx {
                    active,
                    finished,
                    placements,
                    meta,
                };
                index.place(job_id, None)?;
                // Also when the placement pointed elsewhere: this entry must go.
                if state.is_terminal() {
                    finished.remove(key)?;
                } else {
                    active.remove(key)?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        Ok(None)
    }

    /// Up to `limit` jobs of `listing` after the key `after` (from a previous page's
    /// `next`). Decodes only the records it returns.
    pub fn page(
        &self,
        listing: Listing,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, DbError> {
        let limit = limit.max(1);
        let (tree, wanted) = match listing {
            Listing::All => (&self.jobs, None),
            Listing::State(s) if s.is_terminal() => (&self.finished, Some(s)),
            Listing::State(s) => (&self.active, Some(s)),
        };
        let entries = match after {
            Some(k) => tree.range::<&[u8], _>((Bound::Excluded(k), Bound::Unbounded)),
            None => tree.iter(),
        };
        let mut jobs = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        for entry in entries {
            let (key, value) = entry?;
            if let Some(s) = wanted
                && value.first() != Some(&index::state_byte(s))
            {
                continue;
            }
            if jobs.len() == limit {
                // Another job follows this page.
                return Ok(Page { jobs, next: last });
            }
            last = Some(key.to_vec());
            let record = match wanted {
                None => Some(value),
                Some(s) => self.jobs.get(index::job_id_in(s, &key))?,
            };
            let Some(record) = record else { continue };
            match self.decode(&record) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    error = %e,
                    "skipping an unreadable job record"
                ),
            }
        }
        Ok(Page { jobs, next: None })
    }

    /// Removes finished jobs beyond `retention` (oldest finish first), with their
    /// checkpoints. Reads only the `finished` index, never a record or an active job.
    /// Returns how many were removed.
    pub fn prune(&self, retention: &Retention, now_ms: u64) -> Result<u64, DbError> {
        let max_age_ms = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let mut finished = 0u64;
        for s in [JobState::Completed, JobState::Failed, JobState::Cancelled] {
            finished += self.count(s)?;
        }
        let mut excess = finished.saturating_sub(retention.keep);
        let mut removed = 0u64;
        loop {
            let mut batch: Vec<(sled::IVec, JobState)> = Vec::new();
            for entry in self.finished.iter() {
                let (key, value) = entry?;
                let too_old = index::finished_at(&key) < cutoff;
                if !too_old && batch.len() as u64 >= excess {
                    break;
                }
                let state = value
                    .first()
                    .and_then(|&b| index::state_of(b))
                    .unwrap_or(JobState::Completed);
                batch.push((key, state));
                if batch.len() == PRUNE_BATCH {
                    break;
                }
            }
            if batch.is_empty() {
                return Ok(removed);
            }
            self.remove_finished(&batch)?;
            removed += batch.len() as u64;
            excess = excess.saturating_sub(batch.len() as u64);
        }
    }

    fn remove_finished(&self, batch: &[(sled::IVec, JobState)]) -> Result<(), DbError> {
        self.written.fetch_add(1, Ordering::SeqCst);
        (
            &self.jobs,
            &self.checkpoints,
            &self.active,
            &self.finished,
            &self.placements,
            &self.meta,
        )
            .transaction(|(jobs, cps, active, done, placements, meta)| -> TxResult {
                let index = IndexTx {
                    active,
                    finished: done,
                    placements,
                    meta,
                };
                for (key, state) in batch {
                    let id = index::job_id_in(*state, key);
                    let indexed_here = index
                        .placement(id)?
                        .is_some_and(|p| p.state.is_terminal() && p.key == key.as_ref());
                    if indexed_here {
                        jobs.remove(id)?;
                        cps.remove(id)?;
                        index.place(id, None)?;
                    } else {
                        // A stale entry (the job is indexed elsewhere): only the entry goes.
                        done.remove(key)?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    /// Builds the index from the records: once, for a store written before the index
    /// existed (or left half-indexed). Decodes every record.
    fn reindex(&self) -> Result<(), DbError> {
        for t in [&self.active, &self.finished, &self.placements, &self.meta] {
            t.clear()?;
        }
        let mut counts = [0u64; 5];
        let mut indexed = 0u64;
        for entry in self.jobs.iter() {
            let (key, value) = entry?;
            let job = match self.decode(&value) {
                Ok(j) if j.job_id.as_bytes() == key.as_ref() => j,
                Ok(_) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), "job record under another id; not indexed");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "job record unreadable; not indexed");
                    continue;
                }
            };
            let p = Placement::of(&job);
            let tree = if p.state.is_terminal() {
                &self.finished
            } else {
                &self.active
            };
            tree.insert(p.key.as_slice(), &[index::state_byte(p.state)])?;
            self.placements.insert(&key, p.encode())?;
            counts[usize::from(index::state_byte(p.state) - 1)] += 1;
            indexed += 1;
        }
        for (s, n) in index::ALL_STATES.iter().zip(counts) {
            self.meta
                .insert([index::state_byte(*s)], &n.to_be_bytes())?;
        }
        // Last: a crash before this line means the next open indexes again.
        self.meta.insert(index::VERSION_KEY, index::INDEX_VERSION)?;
        self.db.flush()?;
        tracing::info!(jobs = indexed, "job store indexed by state");
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
        match Checkpoint::decode(&plain) {
            Ok(cp) => Ok(Some(cp)),
            Err(e) => {
                tracing::warn!(job_id, error = %e, "checkpoint unreadable; ignoring it");
                Ok(None)
            }
        }
    }

    pub fn drop_checkpoint(&self, job_id: &str) -> Result<(), DbError> {
        self.written.fetch_add(1, Ordering::SeqCst);
        self.checkpoints.remove(job_id.as_bytes())?;
        Ok(())
    }

    /// Makes every write made before this call durable. One flush at a time, on the
    /// blocking pool: sled 0.34's own `flush_async` deadlocks when many run at once (its
    /// small I/O pool fills with flushes that wait on each other; 32 concurrent enqueues
    /// hung the daemon). Callers that arrive during a flush share the next one (group
    /// commit), so a burst of writes costs a few syncs, not one each.
    pub async fn flush(&self) -> Result<(), DbError> {
        let mine = self.written.load(Ordering::SeqCst);
        let mut flushed = self.flushed.lock().await;
        if *flushed >= mine {
            return Ok(());
        }
        let upto = self.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| DbError::Sled(sled::Error::Unsupported(format!("flush task: {e}"))))??;
        *flushed = upto;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
