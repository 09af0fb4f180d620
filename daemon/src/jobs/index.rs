//! The job index by state: its key layout, and how a write moves a job's entry inside the
//! same sled transaction as the record (so a crash never leaves the two disagreeing).
//!
//! Trees (all keys compare bytewise):
//! - `active`: `[rank: u8][job id]` -> `[state]`, for queued and running jobs. Key order is
//!   run order: rank first, then creation (ids begin with the creation time in hex). The
//!   next job is the first key; several jobs to run at once are a range scan's first keys.
//!   Every job has [`NORMAL_RANK`] until jobs carry a priority, which maps onto the rank.
//! - `finished`: `[finished_at_ms: u64 big-endian][job id]` -> `[state]`, for completed,
//!   failed and cancelled jobs: oldest finish first, so retention trims from the front.
//! - `placements`: `job id` -> `[state][its key in active or finished]`: where the job is
//!   indexed now, so a write moves the entry without reading the old record.
//! - `index_meta`: `[state]` -> number of jobs in that state (u64 big-endian), and
//!   [`VERSION_KEY`] -> [`INDEX_VERSION`] once the index describes every record.

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::{JobRecord, JobState};

/// Layout version of the index; a store without it (older daemons) is indexed at open.
pub const INDEX_VERSION: &[u8] = b"1";
pub const VERSION_KEY: &[u8] = b"version";
/// The rank of every job today: mid-range, so priorities can sort both before and after.
pub const NORMAL_RANK: u8 = 0x80;
const FINISHED_TIME_LEN: usize = 8;

pub fn state_byte(s: JobState) -> u8 {
    // The proto's numbers, so a dump of the index reads like the API.
    match s {
        JobState::Queued => 1,
        JobState::Running => 2,
        JobState::Completed => 3,
        JobState::Failed => 4,
        JobState::Cancelled => 5,
    }
}

pub fn state_of(b: u8) -> Option<JobState> {
    Some(match b {
        1 => JobState::Queued,
        2 => JobState::Running,
        3 => JobState::Completed,
        4 => JobState::Failed,
        5 => JobState::Cancelled,
        _ => return None,
    })
}

pub const ALL_STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

pub fn active_key(rank: u8, job_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + job_id.len());
    k.push(rank);
    k.extend_from_slice(job_id);
    k
}

pub fn finished_key(finished_at_ms: u64, job_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(FINISHED_TIME_LEN + job_id.len());
    k.extend_from_slice(&finished_at_ms.to_be_bytes());
    k.extend_from_slice(job_id);
    k
}

/// The job id inside a key of the tree that holds jobs in `state`.
pub fn job_id_in(state: JobState, key: &[u8]) -> &[u8] {
    let skip = if state.is_terminal() {
        FINISHED_TIME_LEN
    } else {
        1
    };
    key.get(skip..).unwrap_or_default()
}

/// When a job in the `finished` tree finished.
pub fn finished_at(key: &[u8]) -> u64 {
    key.get(..FINISHED_TIME_LEN)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Where a job is indexed: its state and its key in `active` or `finished`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub state: JobState,
    pub key: Vec<u8>,
}

impl Placement {
    pub fn of(job: &JobRecord) -> Placement {
        let id = job.job_id.as_bytes();
        let key = if job.state.is_terminal() {
            // A terminal record always has its end time; the creation time stands in for a
            // record that somehow lacks it, so retention still reaches it.
            finished_key(job.finished_at_ms.unwrap_or(job.created_at_ms), id)
        } else {
            active_key(NORMAL_RANK, id)
        };
        Placement {
            state: job.state,
            key,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.key.len());
        v.push(state_byte(self.state));
        v.extend_from_slice(&self.key);
        v
    }

    pub fn decode(v: &[u8]) -> Option<Placement> {
        let (&s, key) = v.split_first()?;
        Some(Placement {
            state: state_of(s)?,
            key: key.to_vec(),
        })
    }
}

pub fn read_count(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The index trees inside one transaction.
pub struct IndexTx<'a> {
    pub active: &'a TransactionalTree,
    pub finished: &'a TransactionalTree,
    pub placements: &'a TransactionalTree,
    pub meta: &'a TransactionalTree,
}

impl IndexTx<'_> {
    fn tree(&self, state: JobState) -> &TransactionalTree {
        if state.is_terminal() {
            self.finished
        } else {
            self.active
        }
    }

    fn add(&self, state: JobState, delta: i64) -> Result<(), UnabortableTransactionError> {
        let key = [state_byte(state)];
        let now = read_count(self.meta.get(key)?.as_deref());
        let next = now.saturating_add_signed(delta);
        self.meta.insert(&key, &next.to_be_bytes())?;
        Ok(())
    }

    /// Where the job is indexed now, if anywhere.
    pub fn placement(
        &self,
        job_id: &[u8],
    ) -> Result<Option<Placement>, UnabortableTransactionError> {
        Ok(self
            .placements
            .get(job_id)?
            .and_then(|v| Placement::decode(&v)))
    }

    /// Moves the job's entry to `new` (`None`: the job leaves the index) and keeps the
    /// counts. Reads one key; writes only when the placement changes.
    pub fn place(
        &self,
        job_id: &[u8],
        new: Option<&Placement>,
    ) -> Result<(), UnabortableTransactionError> {
        let old = self.placement(job_id)?;
        if old.as_ref() == new {
            return Ok(());
        }
        if let Some(old) = &old {
            self.tree(old.state).remove(old.key.as_slice())?;
            self.add(old.state, -1)?;
        }
        match new {
            Some(p) => {
                self.tree(p.state)
                    .insert(p.key.as_slice(), &[state_byte(p.state)])?;
                self.placements.insert(job_id, p.encode())?;
                self.add(p.state, 1)?;
            }
            None => {
                self.placements.remove(job_id)?;
            }
        }
        Ok(())
    }
}
