//! The receive half of an HTTP/3 request stream as an `http_body::Body`, so the
//! protocol handler (`api.rs`) reads HTTP/3 and HTTP/2 request bodies the same way.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use h3::server::RequestStream;
use http_body::Frame;

type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

/// A request body read from the DATA frames of an HTTP/3 request stream.
pub struct H3Body {
    stream: RecvStream,
    done: bool,
    /// A read returned `Pending` and has not completed: h3-quinn then holds the QUIC stream
    /// inside its read future, and `stop_sending` would panic on the missing stream.
    reading: bool,
}

impl H3Body {
    pub fn new(stream: RecvStream) -> Self {
        H3Body {
            stream,
            done: false,
            reading: false,
        }
    }
}

impl http_body::Body for H3Body {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.stream.poll_recv_data(cx);
        this.reading = polled.is_pending();
        match ready!(polled) {
            // quinn hands out `Bytes` that own the received data: no copy here.
            Ok(Some(mut data)) => {
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
                Poll::Ready(Some(Err(e)))
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
