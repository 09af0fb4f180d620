//! What clients can make the server hold, bounded: connections, bytes of request bodies
//! held in memory (per connection and in total), and how long a body may go silent.
//!
//! A chunk's body is held in memory until it is verified and written, so the bytes a
//! chunk PUT declares are taken from two budgets before its body is read: its
//! connection's and the server's. When either is spent the PUT is answered 503 `busy`
//! with `Retry-After` (the daemon waits and sends it again): memory stays bounded under
//! any number of slow or oversized requests, and nothing is cut off halfway. A body that
//! does not deliver [`PROGRESS_BYTES`] within the idle time (silent, or trickling a few
//! bytes now and then to keep its share) is answered 408 `body_timeout`, which frees it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use uplink_proto::wire::code;

use crate::error::ApiError;

/// The limits a server runs with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections, HTTP/2 and HTTP/3 together.
    pub max_connections: usize,
    /// Bytes of request bodies held at once, all connections together.
    pub max_buffered: u64,
    /// Bytes of request bodies held at once by one connection.
    pub connection_buffered: u64,
    /// A request body that delivers less than [`PROGRESS_BYTES`] in this long is
    /// answered 408.
    pub body_idle: Duration,
    /// A new HTTP/2 connection that sends no request in this long is closed.
    pub first_request: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_connection: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            max_buffered: 2 << 30,
            // 12 streams of 32 MiB chunks (the daemon's fastest tier), chunks sent again
            // while their first try is still arriving, and room to spare.
            connection_buffered: 1 << 30,
            // Long enough for a handover's silence, short enough that the requests of a
            // client that vanished (a killed process's QUIC connection is not closed)
            // give back their memory soon.
            body_idle: Duration::from_secs(10),
            // A daemon sends its first request (a prewarm's probe) right after connecting.
            first_request: Duration::from_secs(30),
            // nginx's `http2_idle_timeout` default: long enough that a prewarmed
            // connection is still there when the capture ends.
            idle_connection: Duration::from_secs(180),
        }
    }
}

/// A count of bytes that may be held, shared by the requests that hold them.
#[derive(Debug)]
pub struct Budget {
    held: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicU64::new(0),
            max,
        })
    }

    /// Takes `n` bytes, or `None` if fewer are left.
    pub fn try_take(self: &Arc<Self>, n: u64) -> Option<Held> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&total| total <= self.max)
            })
            .ok()?;
        Some(Held {
            budget: Arc::clone(self),
            n,
        })
    }

    #[cfg(test)]
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

/// Bytes taken from a budget; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    n: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// The budget of the connection a request came on (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionBudget(pub Arc<Budget>);

/// Takes `n` bytes for one chunk body from its connection's budget and the server's.
pub fn take_for_body(
    total: &Arc<Budget>,
    connection: Option<&ConnectionBudget>,
    n: u64,
) -> Result<(Held, Option<Held>), ApiError> {
    let busy = |whose: &str, max: u64| {
        ApiError::new(
            503,
            code::BUSY,
            format!(
                "{whose} holds as many request bytes as it may ({max}); send this chunk again shortly"
            ),
        )
        .retry_in(1)
    };
    let cap = connection.map_or(total.max, |c| c.0.max.min(total.max));
    if n > cap {
        // It could never fit: waiting would not help.
        return Err(ApiError::new(
            413,
            code::CHUNK_TOO_LARGE,
            format!(
                "this server holds at most {cap} bytes of one request body; send smaller chunks"
            ),
        ));
    }
    let conn = match connection {
        Some(c) => Some(
            c.0.try_take(n)
                .ok_or_else(|| busy("this connection", c.0.max))?,
        ),
        None => None,
    };
    let server = total
        .try_take(n)
        .ok_or_else(|| busy("the server", total.max))?;
    Ok((server, conn))
}

/// Open connections against the limit.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    max: usize,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more connection, or `None` at the limit.
    pub fn try_open(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionSlot(Arc::clone(self)))
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One open connection; its slot frees when dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Connections>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to every request on a connection over the limit.
pub fn too_many_connections(max: usize) -> ApiError {
    ApiError::new(
        503,
        code::TOO_MANY_CONNECTIONS,
        format!("the server has {max} connections open, its limit; connect again shortly"),
    )
    .retry_in(1)
}

/// What a request body must deliver per idle time: 16 KiB in 10 s is ~1.6 kB/s, far below
/// any link that carries an upload, far above a client trickling bytes to hold memory.
pub const PROGRESS_BYTES: usize = 16 * 1024;

/// The start of the error a stalled body ends with (see [`is_idle`]).
const IDLE: &str = "request body delivered less than 16 KiB in";

/// Whether a body read error is [`IdleBody`]'s timeout.
pub fn is_idle(error: &str) -> bool {
    error.starts_with(IDLE)
}

/// A request body that fails when it delivers less than [`PROGRESS_BYTES`] in `idle`.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    /// When the body last made progress: a frame only stamps the time; the timer is moved
    /// when it fires early, not on every frame.
    last: tokio::time::Instant,
    /// Bytes since `last`.
    since: usize,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> IdleBody<B> {
        IdleBody {
            inner,
            idle,
            last: tokio::time::Instant::now(),
            since: 0,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// A body read error: the transport's, or silence.
#[derive(Debug)]
pub enum BodyError<E> {
    Transport(E),
    Idle(Duration),
}

impl<E: std::fmt::Display> std::fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Transport(e) => e.fmt(f),
            BodyError::Idle(d) => write!(f, "{IDLE} {} s", d.as_secs()),
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.since += frame.data_ref().map_or(0, Bytes::len);
                if this.since >= PROGRESS_BYTES {
                    this.last = tokio::time::Instant::now();
                    this.since = 0;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Transport(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = this.last + this.idle;
                if due <= tokio::time::Instant::now() {
                    return Poll::Ready(Some(Err(BodyError::Idle(this.idle))));
                }
                this.timer.as_mut().reset(due);
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_out_no_more_than_it_has_and_takes_back_on_drop() {
        let b = Budget::new(10);
        let a = b.try_take(6).unwrap();
        assert!(b.try_take(5).is_none());
        let c = b.try_take(4).unwrap();
        assert_eq!(b.held(), 10);
        drop(a);
        assert_eq!(b.held(), 4);
        assert!(b.try_take(6).is_some());
        drop(c);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_body_is_held_against_its_connection_and_the_server() {
        let (total, conn) = (Budget::new(100), ConnectionBudget(Budget::new(10)));
        let held = take_for_body(&total, Some(&conn), 8).unwrap();
        let e = take_for_body(&total, Some(&conn), 8).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (503, code::BUSY, Some(1))
        );
        assert_eq!(total.held(), 8, "a refusal holds nothing");
        drop(held);
        assert_eq!((total.held(), conn.0.held()), (0, 0));
        let e = take_for_body(&total, Some(&conn), 11).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (413, code::CHUNK_TOO_LARGE),
            "it never fits"
        );
    }

    #[test]
    fn connections_stop_at_the_limit_and_free_their_slot() {
        let c = Connections::new(2);
        let (a, _b) = (c.try_open().unwrap(), c.try_open().unwrap());
        assert!(c.try_open().is_none());
        drop(a);
        assert!(c.try_open().is_some());
    }

    #[tokio::test]
    async fn a_body_that_stops_making_progress_fails_after_the_idle_time() {
        use http_body_util::BodyExt;
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        let mut body = IdleBody::new(rx, Duration::from_millis(100));
        // Bytes that keep coming, but too few: still a stall.
        for _ in 0..3 {
            tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
            assert!(body.frame().await.unwrap().is_ok());
        }
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(is_idle(&e.to_string()), "{e}");
        drop(tx);
    }
}
