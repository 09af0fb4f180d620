//! Shared helpers for netsim's integration tests. These tests need root and /dev/net/tun; they
//! fail (not skip) with a clear message when either is missing.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use netsim::{Sim, SimOpts};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Start a sim or fail the test with the reason.
pub fn up(name: &str, opts: SimOpts) -> Sim {
    match Sim::up(name, opts) {
        Ok(s) => s,
        Err(e) => panic!(
            "netsim could not start {name:?}: {e:#}\n\
             (these tests must run as root on a kernel with /dev/net/tun and network namespaces)"
        ),
    }
}

pub fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Assert `x` is within ±`tol` (fraction) of `want`.
pub fn assert_near(what: &str, x: f64, want: f64, tol: f64) {
    let lo = want * (1.0 - tol);
    let hi = want * (1.0 + tol);
    assert!(
        (lo..=hi).contains(&x),
        "{what}: measured {x:.4}, want {want:.4} ± {:.0}% ([{lo:.4}, {hi:.4}])",
        tol * 100.0
    );
}

/// Poll `f` every 20 ms until it is true or `max` passes.
pub fn wait_until(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < max {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
