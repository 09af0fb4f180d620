//! Connections that carry no request are closed, so a client that connects and sends
//! nothing, or whose last request ended long ago, does not keep a connection slot.
//!
//! A new HTTP/2 connection must send its first request within the header timeout; after
//! that, it may go the idle timeout without a request in progress. A QUIC connection gets
//! the idle timeout from its handshake on (the daemon prewarms QUIC without a request). hyper's HTTP/2 server has
//! neither (its `header_read_timeout` is HTTP/1 only), and its keep-alive pings answer
//! whether the peer is alive, not whether it is using the connection. Over HTTP/3, QUIC's
//! idle timeout ends a silent connection, but not one the client keeps alive with pings.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    /// Requests in progress.
    open: usize,
    /// Requests begun, ever.
    begun: u64,
    /// When `open` last became 0 (or the connection opened).
    idle_since: Instant,
}

/// The requests in progress on one connection.
#[derive(Debug)]
pub struct Activity(Mutex<State>);

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity(Mutex::new(State {
            open: 0,
            begun: 0,
            idle_since: Instant::now(),
        })))
    }

    /// A request began; it counts as in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        let mut s = lock(&self.0);
        s.open += 1;
        s.begun += 1;
        InProgress(Arc::clone(self))
    }

    /// How much longer the connection may stay as it is: `None` once it has been idle
    /// past its limit (`first_request` before any request, `idle` after).
    pub fn time_left(&self, first_request: Duration, idle: Duration) -> Option<Duration> {
        let s = lock(&self.0);
        if s.open > 0 {
            return Some(idle);
        }
        let limit = if s.begun == 0 { first_request } else { idle };
        limit
            .checked_sub(s.idle_since.elapsed())
            .filter(|d| !d.is_zero())
    }
}

/// One request in progress.
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut s = lock(&self.0.0);
        s.open = s.open.saturating_sub(1);
        if s.open == 0 {
            s.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(40);
    const IDLE: Duration = Duration::from_secs(3600);

    #[test]
    fn a_connection_that_never_sends_a_request_runs_out_at_the_header_timeout() {
        let a = Activity::new();
        assert!(a.time_left(FIRST, IDLE).is_some_and(|d| d <= FIRST));
        std::thread::sleep(FIRST + Duration::from_millis(10));
        assert_eq!(a.time_left(FIRST, IDLE), None);
    }

    #[test]
    fn a_request_in_progress_keeps_the_connection_and_its_end_starts_the_idle_clock() {
        let a = Activity::new();
        let r = a.begin();
        std::thread::sleep(FIRST + Duration::from_millis(10));
        assert_eq!(a.time_left(FIRST, IDLE), Some(IDLE), "busy: never idle");
        drop(r);
        // After a request, the (long) idle limit applies, counted from its end.
        let left = a.time_left(FIRST, IDLE).expect("time left");
        assert!(left > IDLE - Duration::from_secs(1), "{left:?}");
        assert_eq!(a.time_left(FIRST, Duration::ZERO), None);
    }

    #[test]
    fn idle_counts_only_when_no_request_is_open() {
        let a = Activity::new();
        let (r1, r2) = (a.begin(), a.begin());
        drop(r1);
        assert_eq!(a.time_left(FIRST, Duration::ZERO), Some(Duration::ZERO));
        drop(r2);
        assert_eq!(a.time_left(FIRST, Duration::ZERO), None);
    }
}
