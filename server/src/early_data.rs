//! TLS early data (0-RTT) over HTTP/3: how the server knows a request may be a replay, and
//! which requests it refuses then (`425 Too Early`, RFC 8470).
//!
//! ## How 0-RTT is detected
//! The QUIC endpoint turns every incoming connection into a 0.5-RTT connection at once
//! (`quinn::Connecting::into_0rtt`, which always succeeds on a server), so requests that a
//! resuming client sent in 0-RTT packets are accepted before the handshake has finished.
//! `into_0rtt` also hands back `ZeroRttAccepted`, a one-shot that quinn's connection driver
//! fires on its `Connected` event, i.e. when the client's TLS Finished has been verified.
//! [`Handshake::is_complete`] polls that one-shot (without waiting) at the moment a request's
//! headers have been decoded, just before the request would run:
//! - not fired yet: the handshake is still going on, so everything on this connection came
//!   in 0-RTT packets (a server may not process 1-RTT packets before the handshake is
//!   complete, RFC 9001 §5.7), and it may be a replay: an attacker can resend a captured
//!   ClientHello with its early data, but can never finish that handshake.
//! - fired and the connection not closed: the client proved it holds the session keys.
//!   A request that arrived in 0-RTT packets but is decided after this point is not a
//!   replay (a replayed connection never gets here), so it runs normally.
//! - fired because the connection died (the one-shot's sender dropped): treated as early
//!   forever.
//!
//! quinn's own `RecvStream::is_0rtt()` is the same test ("still handshaking?") made when the
//! stream is accepted; h3-quinn does not expose it, and deciding later, per request, is at
//! least as strict about replays while refusing fewer genuine requests.
//!
//! ## What is refused in early data
//! Only requests whose replay is harmless run: reads (`GET`/`HEAD`), chunk `PUT`s (a chunk
//! the server holds with the same hash is a no-op success) and a create that carries an
//! `Idempotency-Key` (a replay finds the same session). `POST .../complete`, `DELETE`, a
//! whole-object `PUT` (a late replay could overwrite a newer object) and anything else get
//! `425` with code `too_early`; the client sends them again on the finished connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use http::{HeaderMap, Method};
use uplink_proto::wire::{self, Route};

/// Whether a request may run while it could still be a 0-RTT replay.
pub fn allowed_in_early_data(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    let Some(route) = wire::parse_route(path) else {
        // Unknown path: the answer is a 404 that changes nothing, unless the method says
        // otherwise; stay strict.
        return matches!(*method, Method::GET | Method::HEAD);
    };
    match (route, method) {
        (_, &Method::GET | &Method::HEAD) => true,
        (Route::Chunk(..), &Method::PUT) => true,
        (Route::Uploads, &Method::POST) => headers.contains_key(wire::HDR_IDEMPOTENCY_KEY),
        _ => false,
    }
}

/// The handshake state of one QUIC connection, shared by its request tasks.
#[derive(Clone)]
pub struct Handshake(Arc<Mutex<State>>);

enum State {
    Pending(quinn::ZeroRttAccepted, quinn::Connection),
    Complete,
    /// The connection ended before its handshake did.
    Failed,
}

impl Handshake {
    /// A connection whose handshake already finished before any request was read.
    pub fn complete() -> Self {
        Handshake(Arc::new(Mutex::new(State::Complete)))
    }

    /// A 0.5-RTT connection: complete once `accepted` fires on a live connection.
    pub fn pending(conn: quinn::Connection, accepted: quinn::ZeroRttAccepted) -> Self {
        Handshake(Arc::new(Mutex::new(State::Pending(accepted, conn))))
    }

    /// True once the client has finished the TLS handshake; never waits.
    pub fn is_complete(&self) -> bool {
        // A poisoned lock only means another request task panicked mid-check; the state
        // itself is always valid.
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Pending(accepted, conn) = &mut *state {
            let mut cx = Context::from_waker(Waker::noop());
            if Pin::new(accepted).poll(&mut cx).is_ready() {
                // The one-shot also resolves when quinn drops its sender with a dead
                // connection; only a live connection counts as a finished handshake.
                *state = if conn.close_reason().is_none() {
                    State::Complete
                } else {
                    State::Failed
                };
            }
        }
        matches!(*state, State::Complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn allowed(method: Method, path: &str, key: bool) -> bool {
        let mut h = HeaderMap::new();
        if key {
            h.insert(wire::HDR_IDEMPOTENCY_KEY, "job-1".parse().unwrap());
        }
        allowed_in_early_data(&method, path, &h)
    }

    #[test]
    fn idempotent_requests_run_from_early_data() {
        assert!(allowed(Method::PUT, &wire::chunk_path(ID, 0), false));
        assert!(allowed(Method::PUT, &wire::chunk_path(ID, 4 << 20), false));
        assert!(allowed(Method::GET, &wire::upload_path(ID), false));
        assert!(allowed(Method::HEAD, wire::PATH_PING, false));
        assert!(allowed(Method::POST, wire::PATH_UPLOADS, true));
        assert!(allowed(Method::GET, "/nowhere", false));
    }

    #[test]
    fn requests_that_must_not_run_twice_are_too_early() {
        assert!(!allowed(Method::POST, &wire::complete_path(ID), true));
        assert!(!allowed(Method::DELETE, &wire::upload_path(ID), true));
        assert!(!allowed(Method::POST, wire::PATH_UPLOADS, false));
        assert!(!allowed(Method::PUT, &wire::object_path("scan.ply"), false));
        assert!(!allowed(Method::DELETE, "/nowhere", false));
        assert!(!allowed(Method::POST, &wire::chunk_path(ID, 0), false));
    }
}
