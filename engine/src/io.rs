//! What goes into the engine ([`Event`]) and what comes out ([`Action`]).
//!
//! Every network operation is a request with an id: the driver performs it and answers
//! with [`Event::RequestDone`] or [`Event::RequestFailed`] (or nothing, after an
//! [`Action::Abandon`]). Every file read is an [`Action::Read`] answered by
//! [`Event::ReadDone`] or [`Event::ReadFailed`].

use std::ops::Range;
use std::time::Duration;

use crate::Time;

/// The driver's handle for a job (the daemon maps its job ids to these).
pub type JobId = u64;
/// One network request the engine asked for.
pub type ReqId = u64;

/// A job as the driver hands it over.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub size: u64,
    /// Higher goes first; equal priorities share the streams round-robin.
    pub priority: u8,
    /// The driver holds a server session for this job from an earlier run: ask the server
    /// what it has instead of creating one.
    pub has_session: bool,
    /// The file is still being written (a capture in progress): `size` is the writer's
    /// edge so far. Only whole chunks behind the edge are read; the job completes only
    /// after [`Event::JobSealed`]. Never sent as one request.
    pub growing: bool,
}

/// Why a request failed, as the driver classified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again (network trouble, 5xx, timeouts). `retry_after` is the server's.
    /// `endpoint`: the endpoint itself answered with trouble (a 5xx, a 429, a refused
    /// connection), which counts toward its circuit breaker; silence and broken paths do not.
    Transient {
        code: String,
        message: String,
        retry_after: Option<Duration>,
        endpoint: bool,
    },
    /// Another request holds these bytes on the server right now (409 `chunk_in_progress`:
    /// typically a crashed run's chunk still being written). Not network trouble: try the
    /// range again after `retry_after` (or a second) without counting a failure.
    Busy { retry_after: Option<Duration> },
    /// The request's body stopped moving (the engine's own verdict, see `stall_window`):
    /// network trouble, retried soon and on another lane.
    Stalled { message: String },
    /// The request's connection left with its path (the host moved to another network):
    /// its bytes go again at once on another connection. Not a failure: no backoff, nothing
    /// for the breaker, and the job's failure count does not change.
    Moved,
    /// The server no longer knows the session (404/410): start a new one.
    SessionLost,
    /// The server holds other chunk boundaries than the engine assumed (409 conflict: a
    /// request from before a restart landed after the state was fetched). Fetch the state
    /// again and go on from there; bytes that really differ are caught when the driver
    /// verifies what the server holds.
    StateChanged,
    /// Retrying cannot help (auth, conflict, bad request): the job fails.
    Permanent { code: String, message: String },
    /// Only for a complete: the server holds chunks whose bytes the file no longer has,
    /// rewritten where the job's seal said they would be (a capture's header patched at
    /// the end). These chunks (offset, length: the boundaries the server holds) go again,
    /// replacing the old ones, then the complete. Not a failure of the link or the server.
    Resend { chunks: Vec<(u64, u64)> },
}

impl Failure {
    /// Network trouble that is not the endpoint's answer (a reset, a timeout).
    pub fn transient(code: &str, message: impl Into<String>) -> Failure {
        Failure::Transient {
            code: code.into(),
            message: message.into(),
            retry_after: None,
            endpoint: false,
        }
    }

    /// The endpoint answered with trouble worth retrying (a 5xx, a refused connection).
    pub fn endpoint(code: &str, message: impl Into<String>) -> Failure {
        Failure::Transient {
            code: code.into(),
            message: message.into(),
            retry_after: None,
            endpoint: true,
        }
    }

    /// Did the endpoint answer this failure (the server is there, whatever it said)?
    pub fn answered(&self) -> bool {
        match self {
            Failure::Transient { endpoint, .. } => *endpoint,
            Failure::Stalled { .. } | Failure::Moved | Failure::Resend { .. } => false,
            Failure::Busy { .. }
            | Failure::SessionLost
            | Failure::StateChanged
            | Failure::Permanent { .. } => true,
        }
    }

    pub fn permanent(code: &str, message: impl Into<String>) -> Failure {
        Failure::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Which watchdog fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watchdog {
    /// Nothing of the job moved for the session window: new connections, the server's
    /// state read again, resume from what it holds.
    Session,
    /// Nothing of the job was acknowledged for the global window: the same, and every
    /// byte the server holds verified again.
    Global,
}

impl Watchdog {
    pub fn name(self) -> &'static str {
        match self {
            Watchdog::Session => "session_watchdog",
            Watchdog::Global => "global_watchdog",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Event {
    JobAdded {
        job: JobId,
        spec: JobSpec,
    },
    JobCancelled {
        job: JobId,
    },
    /// A growing job's file now holds `size` bytes. Smaller than before: it was truncated,
    /// and the job fails (`file_truncated`).
    JobGrew {
        job: JobId,
        size: u64,
    },
    /// A growing job's file is finished at `size` bytes: the tail goes, then the complete.
    /// Smaller than what was already read: truncated, the job fails (`file_truncated`).
    JobSealed {
        job: JobId,
        size: u64,
    },
    /// Answer to [`Action::CreateSession`] (nothing acknowledged yet) or
    /// [`Action::FetchState`]: the byte ranges the server holds and the driver verified.
    SessionReady {
        req: ReqId,
        acked: Vec<Range<u64>>,
    },
    /// A chunk was read and hashed and sits in its buffer; `saving` is the fraction
    /// compression would save on the sampled bytes (none if not sampled).
    ReadDone {
        job: JobId,
        offset: u64,
        saving: Option<f32>,
    },
    /// Reading failed for good (file changed or unreadable): the job fails.
    ReadFailed {
        job: JobId,
        offset: u64,
        code: String,
        message: String,
    },
    /// Bytes of a request's body (as sent: compressed or not) the transport has handed
    /// on so far, and whether that is all of it (then only `moved_at` is judged: a driver
    /// that cannot tell whether the handed-on bytes still move reports the current time). For stall detection: report at any time,
    /// and for every body request when the engine's timer fires, before
    /// [`crate::Engine::handle_timeout`]. Optional: without reports only deadlines watch.
    RequestProgress {
        req: ReqId,
        bytes: u64,
        all: bool,
        /// When the body last moved (bytes handed on), as the transport saw it.
        moved_at: Time,
    },
    RequestDone {
        req: ReqId,
    },
    RequestFailed {
        req: ReqId,
        failure: Failure,
    },
    /// Memory the system has left for us (MemAvailable or the cgroup's headroom).
    MemoryAvailable {
        bytes: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create a server session for the job, then answer [`Event::SessionReady`].
    CreateSession { req: ReqId, job: JobId },
    /// Ask the server what it holds and verify it, then answer [`Event::SessionReady`]:
    /// what the checkpoint does not vouch for is re-hashed; with `verify_all` (after the
    /// global watchdog fired) everything the server holds is.
    FetchState {
        req: ReqId,
        job: JobId,
        verify_all: bool,
    },
    /// Read and hash `len` bytes at `offset` into a buffer.
    Read { job: JobId, offset: u64, len: u64 },
    /// Send a chunk already read; `compress` chooses LZ4 on the wire.
    PutChunk {
        req: ReqId,
        job: JobId,
        offset: u64,
        len: u64,
        lane: usize,
        compress: bool,
    },
    /// Send a small file in one request (read, hash and send).
    PutWhole { req: ReqId, job: JobId, lane: usize },
    /// Ask the server to verify and assemble the file.
    Complete { req: ReqId, job: JobId },
    /// Stop a request; no answer for it is expected any more.
    Abandon { req: ReqId },
    /// Open fresh connections for the requests that follow (those out may finish on the
    /// old ones): a watchdog found a job hung.
    Reconnect,
    /// A watchdog fired for `job` (see [`crate::engine::watchdog`]); what it does follows
    /// as other actions.
    Watchdog {
        job: JobId,
        layer: Watchdog,
        why: String,
    },
    /// The endpoint's circuit breaker changed state.
    Circuit {
        state: crate::breaker::State,
        why: String,
    },
    /// Drop a chunk's buffer without sending it.
    Release { job: JobId, offset: u64 },
    /// Make the acknowledged state durable now.
    Checkpoint { job: JobId, acked_bytes: u64 },
    Progress {
        job: JobId,
        acked_bytes: u64,
        total_bytes: u64,
        rate_bps: f64,
    },
    /// A failure is being retried after `delay`; `waiting` once past the quick retries.
    Retrying {
        job: JobId,
        why: String,
        attempt: u32,
        delay: Duration,
        waiting: bool,
    },
    /// The server verified and assembled the file.
    JobCompleted { job: JobId },
    JobFailed {
        job: JobId,
        code: String,
        message: String,
    },
}
