//! The receive half of an HTTP/3 request stream as an `http_body::Body`, so the
//! protocol handler (`api.rs`) reads HTTP/3 and HTTP/2 request bodies the same way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use h3::server::RequestStream;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

/// A body is abandoned when neither it nor anything else on its connection has arrived for
/// this long. Over QUIC a client that died (kill -9, lost network) leaves no trace until
/// the connection's 30 s idle timeout, and until then its half-received chunk stays
/// reserved: a restarted client would get `chunk_in_progress` for it all that time. The
/// whole connection must be silent, not just this stream, because a client may well send
/// its streams one after another on a slow link (a live daemon also pings every 15 s).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("no request body data for {} s", STALL_TIMEOUT.as_secs())]
    Stalled,
}

/// A request body read from the DATA frames of an HTTP/3 request stream.
pub struct H3Body {
    stream: RecvStream,
    done: bool,
    /// A read returned `Pending` and has not completed: h3-quinn then holds the QUIC stream
    /// inside its read future, and `stop_sending` would panic on the missing stream.
    reading: bool,
    /// Fires [`STALL_TIMEOUT`] after the last data on this stream (or the start).
    stall: Pin<Box<Sleep>>,
    /// For the connection's received-bytes count when the stall timer fires.
    conn: quinn::Connection,
    conn_rx: u64,
}

impl H3Body {
    pub fn new(stream: RecvStream, conn: quinn::Connection) -> Self {
        let conn_rx = conn.stats().udp_rx.bytes;
        H3Body {
            stream,
            done: false,
            reading: false,
            stall: Box::pin(tokio::time::sleep(STALL_TIMEOUT)),
            conn,
            conn_rx,
        }
    }

    /// The stall timer fired: has the connection received anything since last time?
    /// If so, the client is alive and this stream just waits its turn: re-arm.
    fn connection_silent(&mut self) -> bool {
        let rx = self.conn.stats().udp_rx.bytes;
        if rx == self.conn_rx {
            return true;
        }
        self.conn_rx = rx;
        self.stall.as_mut().reset(Instant::now() + STALL_TIMEOUT);
        false
    }
}

impl http_body::Body for H3Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.stream.poll_recv_data(cx);
        this.reading = polled.is_pending();
        // Polling the timer registers the waker; a re-armed timer is polled again for that.
        while polled.is_pending() && this.stall.as_mut().poll(cx).is_ready() {
            if this.connection_silent() {
                this.done = true;
                return Poll::Ready(Some(Err(BodyError::Stalled)));
            }
        }
        match ready!(polled) {
            // quinn hands out `Bytes` that own the received data: no copy here.
            Ok(Some(mut data)) => {
                this.stall.as_mut().reset(Instant::now() + STALL_TIMEOUT);
                let bytes = data.copy_to_bytes(data.remaining());
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            // Trailers, if a client sends any, carry nothing the protocol uses.
            Ok(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for H3Body {
    /// The handler answered without reading the whole body (a refusal, or a duplicate
    /// chunk): tell the client to stop sending rather than let it push the rest of the
    /// chunk into a stream nobody reads (RFC 9114 §4.1: `H3_NO_ERROR`).
    /// Dropped in the middle of a read, quinn stops the stream itself when the read future
    /// (which owns it) is dropped.
    fn drop(&mut self) {
        if !self.done && !self.reading {
            self.stream.stop_sending(Code::H3_NO_ERROR);
        }
    }
}
