//! Helpers the simulator tests share: virtual times and jobs added to a scenario.

use uplink_engine::sim::Change;
use uplink_engine::{JobSpec, Time};

pub const MIB: u64 = 1 << 20;

/// `s` seconds of virtual time.
pub fn secs(s: f64) -> Time {
    Time::from_micros((s * 1e6) as u64)
}

/// A fresh job of `size` bytes, priority 0, nothing on the server, incompressible.
pub fn add(job: u64, size: u64) -> Change {
    Change::AddJob {
        job,
        spec: JobSpec {
            size,
            priority: 0,
            has_session: false,
            growing: false,
        },
        stored: vec![],
        saving: 0.0,
    }
}
