//! uplink's upload engine: every decision of an upload, as a deterministic state machine.
//!
//! Events go in (a chunk read and hashed, a request done or failed, memory available, a
//! job added or cancelled), time is passed in, actions come out (read this range, send that
//! chunk on this lane, abandon a request, checkpoint, report progress, complete, fail).
//! The crate has no dependencies at all — no async runtime, no sockets, no clock — so the
//! same code runs under the daemon's real I/O and under [`sim`], a simulated link in
//! virtual time where a 100 GB upload over a flaky link takes a second of CPU.
//!
//! ```
//! use uplink_engine::{Action, Config, Engine, Event, JobSpec, Time};
//! let mut e = Engine::new(Config::default(), 1);
//! e.handle(Time::ZERO, Event::JobAdded { job: 7, spec: JobSpec { size: 100 << 20, priority: 0, has_session: false, growing: false } });
//! assert!(matches!(e.poll_action(), Some(Action::CreateSession { job: 7, .. })));
//! ```
//!
//! Modules, each one job: [`engine`] (scheduling), [`job`] (one job's state), [`io`] (the
//! events and actions), [`estimator`] (Kalman bandwidth estimate), [`tier`] (speed tiers),
//! [`backoff`] (the one retry policy), [`breaker`] (the endpoint's circuit breaker), [`pool`] (buffers under memory pressure),
//! [`ranges`] (byte-range sets), [`sim`] (the simulated link); `small_map` keeps the
//! per-chunk bookkeeping off the heap in the steady state.

pub mod backoff;
pub mod breaker;
pub mod engine;
pub mod estimator;
pub mod io;
pub mod job;
pub mod pool;
pub mod ranges;
pub mod rng;
pub mod sim;
mod small_map;
pub mod tier;
mod time;

pub use engine::{Config, Engine, JobView, Snapshot};
pub use io::{Action, Event, Failure, JobId, JobSpec, ReqId, Watchdog};
pub use ranges::RangeSet;
pub use tier::Tier;
pub use time::Time;
