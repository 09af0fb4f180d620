//! What a simulated run is given (the link, changes over time, jobs) and what it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Config, JobId, JobSpec, Time};

/// The link at one moment.
#[derive(Clone, Debug)]
pub struct Link {
    /// Bytes per second.
    pub rate: f64,
    pub rtt: Duration,
    /// Probability that a request fails, per MiB it carries (and per small request).
    pub loss_per_mib: f64,
    /// No byte passes, no answer arrives.
    pub blackhole: bool,
}

impl Link {
    pub fn new(mbit: f64, rtt_ms: u64) -> Link {
        Link {
            rate: mbit * 1e6 / 8.0,
            rtt: Duration::from_millis(rtt_ms),
            loss_per_mib: 0.0,
            blackhole: false,
        }
    }
}

/// Something that happens at a given time in a scenario.
#[derive(Clone, Debug)]
pub enum Change {
    Link(Link),
    Blackhole(bool),
    MemoryAvailable(u64),
    /// The server forgets this job's session.
    ServerForgets(JobId),
    /// From now on the server answers every request at once with a 503 (true), or serves
    /// again (false).
    ServerFailing(bool),
    AddJob {
        job: JobId,
        spec: JobSpec,
        /// Bytes the server already holds (a resume): requires `spec.has_session`.
        stored: Vec<std::ops::Range<u64>>,
        /// Fraction LZ4 would save on this file's samples.
        saving: f32,
    },
    Cancel(JobId),
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub link: Link,
    pub config: Config,
    pub changes: Vec<(Time, Change)>,
    /// Disk read + hash speed, bytes per second (one reader at a time).
    pub read_rate: f64,
    /// Give up (and report unfinished jobs) at this virtual time.
    pub time_limit: Time,
    pub seed: u64,
}

/// What happened to one job.
#[derive(Clone, Debug, Default)]
pub struct JobReport {
    pub size: u64,
    pub added_at: Time,
    pub first_ack_at: Option<Time>,
    pub completed_at: Option<Time>,
    pub failed: Option<(String, String)>,
    pub cancelled: bool,
    /// Body bytes put on the wire (after compression), all attempts.
    pub wire_bytes: u64,
    pub chunk_requests: u64,
    pub retries: u64,
    pub checkpoints: u64,
    pub progress_events: u64,
    pub max_chunk: u64,
    /// Watchdogs that fired, with when.
    pub watchdogs: Vec<(Time, crate::Watchdog)>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub jobs: BTreeMap<JobId, JobReport>,
    pub end: Time,
    pub steps: u64,
    pub max_streams: usize,
    pub max_buffers_held: usize,
    /// Chunk PUTs of bytes the server already held (blind retries after lost answers).
    pub server_duplicates: u64,
    /// Chunk PUTs refused because they cut stored bytes differently (409 conflict).
    pub server_conflicts: u64,
    /// Bytes that crossed the link (all requests, all attempts).
    pub link_bytes: f64,
    /// The circuit breaker's changes of state, with when.
    pub circuit: Vec<(Time, crate::breaker::State)>,
    /// Requests sent while the breaker was open (it promises none).
    pub sent_while_open: u64,
    /// Most requests out at once while it was half-open (it promises one).
    pub most_out_half_open: usize,
}

impl Report {
    pub fn all_completed(&self) -> bool {
        self.jobs
            .values()
            .all(|j| j.completed_at.is_some() || j.cancelled)
    }
}
