//! One job's state inside the engine: its phase, what is acknowledged, and the chunks it
//! holds in buffers.

use std::collections::VecDeque;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::ranges::RangeSet;
use crate::small_map::SmallMap;
use crate::{JobSpec, ReqId, Time};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A session must be created or its state fetched.
    NeedSession,
    /// That request is out.
    SessionPending(ReqId),
    /// Chunks flow.
    Transfer,
    /// The whole file goes in one request (small files).
    Whole,
    /// The one request is out.
    WholePending(ReqId),
    /// Complete is out.
    Completing(ReqId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    Reading,
    /// Read and hashed; may be sent once `not_before` has passed.
    Ready {
        not_before: Time,
    },
    InFlight(ReqId),
}

#[derive(Clone, Debug)]
pub struct Chunk {
    pub len: u64,
    pub state: ChunkState,
    pub compress: bool,
    /// Sends so far (a retry is the second).
    pub sends: u32,
    /// Lane of the last send; a retry goes elsewhere.
    pub last_lane: Option<usize>,
}

pub struct Job {
    pub spec: JobSpec,
    /// Order of arrival, for FIFO within a priority.
    pub seq: u64,
    pub phase: Phase,
    pub has_session: bool,
    /// Acknowledged by the server.
    pub acked: RangeSet,
    /// Held by a chunk (reading, ready or in flight) or acknowledged: not to be read again.
    pub claimed: RangeSet,
    /// offset -> chunk holding a buffer.
    pub chunks: SmallMap<u64, Chunk>,
    pub backoff: Backoff,
    /// No session call or whole-file send before this.
    pub not_before: Time,
    pub session_resets: u32,
    pub acks_since_checkpoint: u32,
    pub meter: Meter,
    pub last_progress: Option<(Time, u64)>,
    /// Last sign of life: a body moved or the server answered (the session watchdog).
    pub alive_at: Time,
    /// Last acknowledgement (the global watchdog).
    pub acked_at: Time,
    /// The next state fetch verifies every byte the server holds (the global watchdog).
    pub verify_all: bool,
    /// State re-reads after conflicts since the last acknowledgement: the first goes at
    /// once (a conflict is news, not trouble), later ones after the backoff.
    pub resyncs_since_ack: u32,
    /// Acknowledged chunks to read and send again at these exact boundaries (offset,
    /// length), before anything else of the job: see [`crate::Failure::Resend`].
    pub resend: VecDeque<(u64, u64)>,
}

impl Job {
    pub fn new(spec: JobSpec, seq: u64, whole: bool) -> Job {
        let has_session = spec.has_session;
        Job {
            spec,
            seq,
            phase: if whole {
                Phase::Whole
            } else {
                Phase::NeedSession
            },
            has_session,
            acked: RangeSet::new(),
            claimed: RangeSet::new(),
            chunks: SmallMap::new(),
            backoff: Backoff::default(),
            not_before: Time::ZERO,
            session_resets: 0,
            acks_since_checkpoint: 0,
            meter: Meter::default(),
            last_progress: None,
            alive_at: Time::ZERO,
            acked_at: Time::ZERO,
            verify_all: false,
            resyncs_since_ack: 0,
            resend: VecDeque::new(),
        }
    }

    /// Bytes not yet claimed by any chunk, from the start.
    pub fn next_unclaimed(&self) -> Option<(u64, u64)> {
        let (start, end) = self.claimed.first_gap(0);
        let end = end.unwrap_or(self.spec.size).min(self.spec.size);
        (start < end).then_some((start, end))
    }

    pub fn unclaimed_bytes(&self) -> u64 {
        self.spec.size - self.claimed.len().min(self.spec.size)
    }

    pub fn fully_acked(&self) -> bool {
        self.acked.len() >= self.spec.size
    }

    pub fn in_flight(&self) -> usize {
        self.chunks
            .values()
            .filter(|c| matches!(c.state, ChunkState::InFlight(_)))
            .count()
    }

    /// The lowest offset whose chunk may be sent at `now`.
    pub fn ready_chunk(&self, now: Time) -> Option<u64> {
        self.chunks
            .iter()
            .find(|(_, c)| matches!(c.state, ChunkState::Ready { not_before } if not_before <= now))
            .map(|(o, _)| *o)
    }

    /// The earliest time one of its waiting chunks or session calls may go.
    pub fn next_attempt(&self, now: Time) -> Option<Time> {
        let chunk = self
            .chunks
            .values()
            .filter_map(|c| match c.state {
                ChunkState::Ready { not_before } if not_before > now => Some(not_before),
                _ => None,
            })
            .min();
        // Session calls, whole-file sends and a retried complete wait for `not_before`.
        let retry_complete = self.phase == Phase::Transfer && self.chunks.is_empty();
        let session = (matches!(self.phase, Phase::NeedSession | Phase::Whole) || retry_complete)
            .then_some(self.not_before)
            .filter(|t| *t > now);
        chunk.into_iter().chain(session).min()
    }
}

/// Bytes acknowledged over the last few seconds, for the rate a user sees.
#[derive(Default)]
pub struct Meter {
    samples: VecDeque<(Time, u64)>,
}

const METER_WINDOW: Duration = Duration::from_secs(3);

impl Meter {
    pub fn record(&mut self, now: Time, acked: u64) {
        self.samples.push_back((now, acked));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.since(*t) > METER_WINDOW)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window.
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}
