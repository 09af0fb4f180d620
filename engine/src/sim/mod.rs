//! A simulated link and server, in virtual time, that drive the [`Engine`] the way the
//! daemon does — so an upload's whole life (hours of a slow, lossy, changing link) runs in
//! milliseconds, reproducibly from a seed.
//!
//! The link is a fluid model: request bodies in flight share the bandwidth equally; a
//! request's answer arrives one round trip after its last byte left (the server stored the
//! bytes half a round trip earlier). Loss shows as requests that fail part-way (a reset
//! connection); a blackhole stops every byte and drops every answer. The server keeps what
//! it stored per job, can forget a session, and refuses a `complete` that lacks bytes.
//! The simulator checks the engine's promises as it runs: it never acknowledges a byte
//! twice, never sends bytes it did not read, never completes early, never holds more
//! buffers or streams than allowed.

mod scenario;
mod server;

pub use scenario::{Change, JobReport, Link, Report, Scenario};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::rng::Rng;
use crate::{Action, Engine, Event, Failure, JobId, RangeSet, ReqId, Time};

enum Flow {
    /// Body bytes still to send; `fail_at`: fails when this many remain.
    Sending {
        job: JobId,
        /// Body bytes on the wire, and those still to go.
        total: f64,
        remaining: f64,
        /// When bytes last went.
        moved_at: Time,
        fail_at: Option<f64>,
        what: Body,
        session: u64,
    },
}

#[derive(Clone, Copy, Debug)]
enum Body {
    Chunk { offset: u64, len: u64 },
    Whole,
}

#[derive(Clone, Debug)]
enum Pending {
    Engine(Event),
    /// A request's body reached the server (sent in session generation `session`).
    Arrived {
        req: ReqId,
        job: JobId,
        body: Body,
        session: u64,
    },
    ReadDone {
        job: JobId,
        offset: u64,
    },
    Change(Change),
}

struct ServerJob {
    size: u64,
    stored: RangeSet,
    forgotten: bool,
    /// Bumped by every create: requests of an older session find it gone.
    session: u64,
}

struct SimJob {
    saving: f32,
    /// Chunks read and not yet released/acked: offset -> len.
    buffered: BTreeMap<u64, u64>,
    /// Acknowledged by the engine (its view).
    engine_acked: RangeSet,
    /// Chunk acknowledgements delivered to the engine in the current session: each byte
    /// at most once.
    delivered: RangeSet,
}

/// Sees each action with the virtual time it was emitted at.
type Observer = Box<dyn FnMut(Time, &Action)>;

/// A run of one scenario.
pub struct Sim {
    engine: Engine,
    sc: Scenario,
    now: Time,
    link: Link,
    rng: Rng,
    flows: BTreeMap<ReqId, Flow>,
    /// (time, sequence) -> what happens then.
    pending: BTreeMap<(Time, u64), Pending>,
    seq: u64,
    /// Requests whose answers must not be delivered any more.
    abandoned: BTreeSet<ReqId>,
    /// Requests the engine has out: job, and the chunk for chunk PUTs.
    open: BTreeMap<ReqId, (JobId, Option<(u64, u64)>)>,
    reader_free_at: Time,
    server: BTreeMap<JobId, ServerJob>,
    jobs: BTreeMap<JobId, SimJob>,
    report: Report,
    /// Sees every action as the engine emits it, with the virtual time.
    observer: Option<Observer>,
    /// The server answers every request with a 503.
    server_failing: bool,
    /// Requests sent while the breaker was half-open (to count those out at once).
    probes: BTreeSet<ReqId>,
}

/// Hard bound on simulation steps, so a broken engine cannot loop forever.
const MAX_STEPS: u64 = 50_000_000;

impl Sim {
    pub fn new(sc: Scenario) -> Sim {
        let mut sim = Sim {
            engine: Engine::new(sc.config.clone(), sc.seed),
            now: Time::ZERO,
            link: sc.link.clone(),
            rng: Rng::new(sc.seed ^ 0x5151),
            flows: BTreeMap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            abandoned: BTreeSet::new(),
            open: BTreeMap::new(),
            reader_free_at: Time::ZERO,
            server: BTreeMap::new(),
            jobs: BTreeMap::new(),
            report: Report::default(),
            observer: None,
            server_failing: false,
            probes: BTreeSet::new(),
            sc,
        };
        for (t, c) in sim.sc.changes.clone() {
            sim.at(t, Pending::Change(c));
        }
        sim
    }

    /// Lets a test watch every action with its virtual time (for timings the report does
    /// not keep, such as when a stall was noticed).
    pub fn observe(mut self, f: impl FnMut(Time, &Action) + 'static) -> Sim {
        self.observer = Some(Box::new(f));
        self
    }

    fn at(&mut self, t: Time, p: Pending) {
        self.seq += 1;
        self.pending.insert((t, self.seq), p);
    }

    /// Runs until every job ended or the time limit; panics when the engine breaks a
    /// promise.
    pub fn run(mut self) -> Report {
        while self.report.steps < MAX_STEPS {
            self.report.steps += 1;
            let ended = !self.report.jobs.is_empty()
                && self
                    .report
                    .jobs
                    .values()
                    .all(|j| j.completed_at.is_some() || j.failed.is_some() || j.cancelled);
            let more_jobs = self
                .pending
                .values()
                .any(|p| matches!(p, Pending::Change(Change::AddJob { .. })));
            if ended && !more_jobs {
                break;
            }
            let Some(next) = self.next_time() else { break };
            if next > self.sc.time_limit {
                self.advance(self.sc.time_limit);
                break;
            }
            self.advance(next);
            self.fire_due();
        }
        self.report.end = self.now;
        self.report
    }

    fn next_time(&self) -> Option<Time> {
        let pending = self.pending.keys().next().map(|(t, _)| *t);
        let flow = self.next_flow_event();
        let timer = self.engine.poll_timeout();
        [pending, flow, timer].into_iter().flatten().min()
    }

    fn share(&self) -> f64 {
        if self.link.blackhole || self.flows.is_empty() {
            0.0
        } else {
            self.link.rate / self.flows.len() as f64
        }
    }

    /// When the first flow finishes or fails at the current sharing.
    fn next_flow_event(&self) -> Option<Time> {
        let share = self.share();
        if share <= 0.0 {
            return None;
        }
        self.flows
            .values()
            .map(
                |Flow::Sending {
                     remaining, fail_at, ..
                 }| {
                    let to_go = (remaining - fail_at.unwrap_or(0.0)).max(0.0);
                    // Rounded up to the next microsecond, so the flow is done when we get there.
                    self.now + Duration::from_micros((to_go / share * 1e6).ceil() as u64)
                },
            )
            .min()
    }

    fn advance(&mut self, to: Time) {
        let dt = to.since(self.now).as_secs_f64();
        let share = self.share();
        if dt > 0.0 && share > 0.0 {
            for Flow::Sending {
                remaining,
                moved_at,
                ..
            } in self.flows.values_mut()
            {
                let sent = (share * dt).min(*remaining);
                if sent > 0.0 {
                    *moved_at = to;
                }
                *remaining -= sent;
                self.report.link_bytes += sent;
            }
        }
        self.now = self.now.max(to);
    }

    fn fire_due(&mut self) {
        // Flows that finished or failed (within what the link carries in a microsecond).
        let slack = 0.5 + self.share() * 1e-6;
        let done: Vec<ReqId> = self
            .flows
            .iter()
            .filter(
                |(
                    _,
                    Flow::Sending {
                        remaining, fail_at, ..
                    },
                )| { *remaining <= fail_at.unwrap_or(0.0) + slack },
            )
            .map(|(r, _)| *r)
            .collect();
        for req in done {
            let Some(Flow::Sending {
                job,
                fail_at,
                what,
                session,
                ..
            }) = self.flows.remove(&req)
            else {
                continue;
            };
            // The driver tells the engine the body is all on its way (stall detection).
            self.handle(Event::RequestProgress {
                req,
                bytes: 0,
                all: fail_at.is_none(),
                moved_at: self.now,
            });
            if fail_at.is_some() {
                let ev = Event::RequestFailed {
                    req,
                    failure: Failure::transient("reset", "connection reset (simulated loss)"),
                };
                self.at(self.now + self.link.rtt / 2, Pending::Engine(ev));
            } else {
                self.at(
                    self.now + self.link.rtt / 2,
                    Pending::Arrived {
                        req,
                        job,
                        body: what,
                        session,
                    },
                );
            }
        }
        // Scheduled things that are due.
        while let Some((&(t, s), _)) = self.pending.iter().next() {
            if t > self.now {
                break;
            }
            let Some(p) = self.pending.remove(&(t, s)) else {
                break;
            };
            match p {
                Pending::Engine(ev) => self.deliver(ev),
                Pending::Arrived {
                    req,
                    job,
                    body,
                    session,
                } => self.arrived(req, job, body, session),
                Pending::ReadDone { job, offset } => {
                    let saving = self.jobs.get(&job).map(|j| j.saving);
                    self.handle(Event::ReadDone {
                        job,
                        offset,
                        saving,
                    });
                }
                Pending::Change(c) => self.change(c),
            }
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            // As a driver does: how far each body has got, then the timers.
            for (
                req,
                Flow::Sending {
                    total,
                    remaining,
                    moved_at,
                    ..
                },
            ) in &self.flows
            {
                let progress = Event::RequestProgress {
                    req: *req,
                    bytes: (total - remaining) as u64,
                    all: false,
                    moved_at: *moved_at,
                };
                self.engine.handle(self.now, progress);
            }
            self.engine.handle_timeout(self.now);
            self.drain();
        }
    }

    /// An answer from the network reaches the engine, unless lost or abandoned.
    fn deliver(&mut self, ev: Event) {
        let req = match &ev {
            Event::RequestDone { req }
            | Event::RequestFailed { req, .. }
            | Event::SessionReady { req, .. } => Some(*req),
            _ => None,
        };
        if let Some(req) = req {
            if self.abandoned.contains(&req) || !self.open.contains_key(&req) {
                return;
            }
            if self.link.blackhole {
                // The answer is lost; the engine's timeout must notice.
                return;
            }
            if let (Event::SessionReady { acked, .. }, Some((job, _))) =
                (&ev, self.open.get(&req).copied())
                && let Some(sj) = self.jobs.get_mut(&job)
            {
                sj.delivered = RangeSet::from_ranges(acked.iter().cloned());
            }
            if let (Event::RequestDone { .. }, Some((job, Some((offset, len))))) =
                (&ev, self.open.get(&req).copied())
                && let Some(sj) = self.jobs.get_mut(&job)
            {
                assert!(
                    !sj.delivered.overlaps(offset..offset + len),
                    "job {job}: bytes {offset}+{len} acknowledged twice"
                );
                sj.delivered.insert(offset..offset + len);
            }
            self.open.remove(&req);
        }
        self.handle(ev);
    }

    fn arrived(&mut self, req: ReqId, job: JobId, body: Body, session: u64) {
        if self.link.blackhole {
            return;
        }
        let answer_at = self.now + self.link.rtt / 2;
        let Some(server) = self.server.get_mut(&job) else {
            return;
        };
        if matches!(body, Body::Whole) && server.forgotten {
            // A whole-file send makes its own session (create, chunk, complete in one
            // go, as the daemon does): a forgotten one is simply made anew, empty.
            server.forgotten = false;
            server.stored = RangeSet::new();
        }
        if server.forgotten || (server.session != session && !matches!(body, Body::Whole)) {
            let ev = Event::RequestFailed {
                req,
                failure: Failure::SessionLost,
            };
            self.at(answer_at, Pending::Engine(ev));
            return;
        }
        let (offset, len) = match body {
            Body::Chunk { offset, len } => (offset, len),
            Body::Whole => (0, server.size),
        };
        assert!(offset + len <= server.size, "chunk beyond the file");
        if server.stored.contains(offset..offset + len) {
            self.report.server_duplicates += 1;
        } else if server.stored.overlaps(offset..offset + len) {
            // Other chunk boundaries than the server holds (a request abandoned before a
            // resync landed after it): the real server answers 409 chunk_conflict.
            self.report.server_conflicts += 1;
            let ev = Event::RequestFailed {
                req,
                failure: Failure::StateChanged,
            };
            self.at(answer_at, Pending::Engine(ev));
            return;
        }
        server.stored.insert(offset..offset + len);
        // The engine learns of it one half round trip later (if the answer gets through).
        // A body the engine abandoned may still land (it was on the wire): its buffer
        // is gone by then, rightly.
        if let Body::Chunk { offset, len } = body
            && !self.abandoned.contains(&req)
            && let Some(sj) = self.jobs.get(&job)
        {
            assert!(
                sj.buffered.get(&offset) == Some(&len),
                "job {job}: sent {offset}+{len} that was not read into a buffer"
            );
        }
        self.at(answer_at, Pending::Engine(Event::RequestDone { req }));
    }

    fn change(&mut self, c: Change) {
        match c {
            Change::Link(l) => {
                let hole = self.link.blackhole;
                self.link = l;
                self.link.blackhole = hole;
            }
            Change::Blackhole(on) => self.link.blackhole = on,
            Change::MemoryAvailable(bytes) => self.handle(Event::MemoryAvailable { bytes }),
            Change::ServerForgets(job) => {
                if let Some(s) = self.server.get_mut(&job) {
                    s.forgotten = true;
                }
            }
            Change::ServerFailing(failing) => self.server_failing = failing,
            Change::AddJob {
                job,
                spec,
                stored,
                saving,
            } => {
                self.server.insert(
                    job,
                    ServerJob {
                        size: spec.size,
                        stored: RangeSet::from_ranges(stored),
                        forgotten: false,
                        session: 0,
                    },
                );
                self.jobs.insert(
                    job,
                    SimJob {
                        saving,
                        buffered: BTreeMap::new(),
                        engine_acked: RangeSet::new(),
                        delivered: RangeSet::new(),
                    },
                );
                self.report.jobs.insert(
                    job,
                    JobReport {
                        size: spec.size,
                        added_at: self.now,
                        ..JobReport::default()
                    },
                );
                self.handle(Event::JobAdded { job, spec });
            }
            Change::Cancel(job) => {
                if let Some(r) = self.report.jobs.get_mut(&job)
                    && r.completed_at.is_none()
                    && r.failed.is_none()
                {
                    r.cancelled = true;
                    self.handle(Event::JobCancelled { job });
                }
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        self.engine.handle(self.now, ev);
        self.drain();
    }

    fn roll_failure(&mut self, bytes: u64) -> Option<f64> {
        let mib = (bytes as f64 / (1 << 20) as f64).max(0.05);
        let p = 1.0 - (1.0 - self.link.loss_per_mib).powf(mib);
        (self.rng.unit() < p).then(|| bytes as f64 * self.rng.unit())
    }

    /// Carries out what the engine asked for.
    fn drain(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            let snap = self.engine.snapshot();
            self.report.max_streams = self.report.max_streams.max(snap.streams_in_flight);
            self.report.max_buffers_held = self.report.max_buffers_held.max(snap.buffers_in_use);
            // Whole-file sends may run up to twice the stream limit (two of their three
            // round trips carry no payload). The snapshot is taken as the action is
            // carried out, after the whole batch was decided, so every send is held to that.
            let whole = matches!(a, Action::PutWhole { .. });
            let extra = snap.stream_limit;
            if matches!(a, Action::PutChunk { .. }) || whole {
                assert!(
                    snap.streams_in_flight <= snap.stream_limit + extra,
                    "a send beyond the stream limit: {snap:?}"
                );
            }
            if matches!(a, Action::Read { .. }) || whole {
                assert!(
                    snap.buffers_in_use <= snap.buffers + extra,
                    "a buffer taken beyond the pool: {snap:?}"
                );
            }
            if let Some(f) = self.observer.as_mut() {
                f(self.now, &a);
            }
            self.act(a);
        }
    }
}
