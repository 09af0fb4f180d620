//! h3's QUIC traits over quinn, handing request bodies to quinn without a copy.
//!
//! `h3-quinn` writes every body through `quinn::SendStream::write(&[u8])`, which copies the
//! bytes into a buffer of quinn's own before they are copied again into packets: on a
//! loopback upload that first copy was 16 % of the daemon's CPU. quinn also takes `Bytes`
//! as they are (`write_chunks`), but h3 hands its QUIC layer a frame (`WriteBuf`) whose
//! payload it only shows as `&[u8]`. So the request code lends the body's `Bytes` to this
//! layer for the duration of the send ([`send_zero_copy`]); when the frame's remaining bytes
//! are exactly those `Bytes` (same memory, same length), they go to quinn by reference.
//! Anything else (frame headers, control streams, a body not lent) is written as before.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt, stream};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;

use crate::transport::progress::BodyProgress;

/// The body `send_zero_copy` is sending, and where to count what quinn took of it.
struct Lent {
    body: Bytes,
    progress: Option<Arc<BodyProgress>>,
}

tokio::task_local! {
    static LENT: Lent;
}

/// Sends `body` as one DATA frame; the QUIC layer below takes it by reference and counts
/// in `progress` what quinn accepted (within the flow-control credit the server grants as
/// it reads, so the count stops when the path does).
pub async fn send_zero_copy<S>(
    stream: &mut h3::client::RequestStream<S, Bytes>,
    body: Bytes,
    progress: Option<Arc<BodyProgress>>,
) -> Result<(), h3::error::StreamError>
where
    S: quic::SendStream<Bytes>,
{
    let lent = Lent {
        body: body.clone(),
        progress,
    };
    LENT.scope(lent, stream.send_data(body)).await
}

/// A future polled again and again as a stream (quinn's accept and open futures are not
/// cancel-safe: each must live until it resolves).
type Pending<T> = Pin<Box<dyn Stream<Item = T> + Send + Sync>>;

fn repeat<T, F, Fut>(conn: &quinn::Connection, f: F) -> Pending<T>
where
    F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + Sync + 'static,
    T: 'static,
{
    let f = Arc::new(f);
    Box::pin(stream::unfold(conn.clone(), move |conn| {
        let f = Arc::clone(&f);
        async move { Some((f(conn.clone()).await, conn)) }
    }))
}

type Bi = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>;
type Uni = Result<quinn::SendStream, quinn::ConnectionError>;
type Incoming = Result<quinn::RecvStream, quinn::ConnectionError>;

/// A quinn connection as h3 sees it.
pub struct Connection {
    conn: quinn::Connection,
    accepting_bi: Pending<Bi>,
    accepting_uni: Pending<Incoming>,
    opener: OpenStreams,
}

impl Connection {
    pub fn new(conn: quinn::Connection) -> Self {
        Connection {
            accepting_bi: repeat(&conn, |c| async move { c.accept_bi().await }),
            accepting_uni: repeat(&conn, |c| async move { c.accept_uni().await }),
            opener: OpenStreams::new(conn.clone()),
            conn,
        }
    }
}

/// Opens streams on a quinn connection.
pub struct OpenStreams {
    conn: quinn::Connection,
    opening_bi: Option<Pending<Bi>>,
    opening_uni: Option<Pending<Uni>>,
}

impl OpenStreams {
    fn new(conn: quinn::Connection) -> Self {
        OpenStreams {
            conn,
            opening_bi: None,
            opening_uni: None,
        }
    }
}

impl Clone for OpenStreams {
    fn clone(&self) -> Self {
        OpenStreams::new(self.conn.clone())
    }
}

/// A stream that answered `None` ends nothing here: `repeat` never ends.
fn next<T>(s: &mut Pending<T>, cx: &mut Context<'_>) -> Poll<Option<T>> {
    s.poll_next_unpin(cx)
}

fn connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into_inner(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_error(e: quinn::ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

fn ended() -> ConnectionErrorIncoming {
    ConnectionErrorIncoming::InternalError("QUIC stream source ended".into())
}

fn write_error(e: quinn::WriteError) -> StreamErrorIncoming {
    match e {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => stream_error(e),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn read_error(e: quinn::ReadError) -> StreamErrorIncoming {
    match e {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => stream_error(e),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn h3_id(id: quinn::StreamId) -> StreamId {
    match StreamId::try_from(u64::from(id)) {
        Ok(id) => id,
        // quinn's stream ids are QUIC varints, exactly the range h3 accepts.
        Err(e) => unreachable!("quinn stream id outside the varint range: {e}"),
    }
}

fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

impl quic::Connection<Bytes> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        match ready!(next(&mut self.accepting_uni, cx)) {
            Some(Ok(recv)) => Poll::Ready(Ok(RecvStream::new(recv))),
            Some(Err(e)) => Poll::Ready(Err(connection_error(e))),
            None => Poll::Ready(Err(ended())),
        }
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, ConnectionErrorIncoming>> {
        match ready!(next(&mut self.accepting_bi, cx)) {
            Some(Ok((send, recv))) => Poll::Ready(Ok(BidiStream::new(send, recv))),
            Some(Err(e)) => Poll::Ready(Err(connection_error(e))),
            None => Poll::Ready(Err(ended())),
        }
    }

    fn opener(&self) -> OpenStreams {
        self.opener.clone()
    }
}

impl quic::OpenStreams<Bytes> for Connection {
    type BidiStream = BidiStream;
    type SendStream = SendStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
        self.opener.poll_open_bidi(cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream, StreamErrorIncoming>> {
        self.opener.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

impl quic::OpenStreams<Bytes> for OpenStreams {
    type BidiStream = BidiStream;
    type SendStream = SendStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
        let conn = &self.conn;
        let opening = self
            .opening_bi
            .get_or_insert_with(|| repeat(conn, |c| async move { c.open_bi().await }));
        match ready!(next(opening, cx)) {
            Some(Ok((send, recv))) => Poll::Ready(Ok(BidiStream::new(send, recv))),
            Some(Err(e)) => Poll::Ready(Err(stream_error(e))),
            None => Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ended(),
            })),
        }
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream, StreamErrorIncoming>> {
        let conn = &self.conn;
        let opening = self
            .opening_uni
            .get_or_insert_with(|| repeat(conn, |c| async move { c.open_uni().await }));
        match ready!(next(opening, cx)) {
            Some(Ok(send)) => Poll::Ready(Ok(SendStream::new(send))),
            Some(Err(e)) => Poll::Ready(Err(stream_error(e))),
            None => Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ended(),
            })),
        }
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

/// The sending half of a stream.
pub struct SendStream {
    stream: quinn::SendStream,
    writing: Option<WriteBuf<Bytes>>,
}

impl SendStream {
    fn new(stream: quinn::SendStream) -> Self {
        SendStream {
            stream,
            writing: None,
        }
    }

    /// The lent body, from where `rest` starts, if `rest` is its tail in the same memory.
    fn lent_tail(rest: &[u8]) -> Option<Bytes> {
        LENT.try_with(|lent| {
            let body = &lent.body;
            let start = body.len().checked_sub(rest.len())?;
            let tail = &body[start..];
            (!rest.is_empty() && tail.as_ptr() == rest.as_ptr()).then(|| body.slice(start..))
        })
        .ok()
        .flatten()
    }

    /// quinn has taken the lent body but its last `left` bytes.
    fn count_lent(left: usize) {
        let _ = LENT.try_with(|lent| {
            if let Some(p) = &lent.progress {
                let len = lent.body.len();
                p.handed_on(len.saturating_sub(left) as u64, left == 0);
            }
        });
    }
}

impl quic::SendStream<Bytes> for SendStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = self.writing.as_mut() {
            while data.has_remaining() {
                match Self::lent_tail(data.chunk()) {
                    Some(tail) => {
                        // quinn keeps the `Bytes` (a reference) until the peer acknowledges them.
                        let mut bufs = [tail];
                        let written = ready!(pin!(self.stream.write_chunks(&mut bufs)).poll(cx))
                            .map_err(write_error)?
                            .bytes;
                        data.advance(written);
                        Self::count_lent(data.remaining());
                    }
                    None => {
                        let written = ready!(pin!(self.stream.write(data.chunk())).poll(cx))
                            .map_err(write_error)?;
                        data.advance(written);
                    }
                }
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data while the previous frame is still being written".into(),
                ),
            });
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        h3_id(self.stream.id())
    }
}

/// The receiving half of a stream. Reads are quinn's own `Bytes`, no copy either.
pub struct RecvStream {
    stream: quinn::RecvStream,
}

impl RecvStream {
    fn new(stream: quinn::RecvStream) -> Self {
        RecvStream { stream }
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        // Cancel-safe in quinn: a read not completed now leaves the data for the next poll,
        // and the waker is kept by the connection, not by the future.
        let chunk = ready!(pin!(self.stream.read_chunk(usize::MAX, true)).poll(cx));
        Poll::Ready(chunk.map(|c| c.map(|c| c.bytes)).map_err(read_error))
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self.stream.stop(varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        h3_id(self.stream.id())
    }
}

/// Both halves of a request stream.
pub struct BidiStream {
    send: SendStream,
    recv: RecvStream,
}

impl BidiStream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        BidiStream {
            send: SendStream::new(send),
            recv: RecvStream::new(recv),
        }
    }
}

impl quic::BidiStream<Bytes> for BidiStream {
    type SendStream = SendStream;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream, RecvStream) {
        (self.send, self.recv)
    }
}

impl quic::SendStream<Bytes> for BidiStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl quic::RecvStream for BidiStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_lent_bodys_own_memory_goes_by_reference() {
        let body = Bytes::from(vec![7u8; 1000]);
        let copy = body.to_vec();
        let lent = Lent {
            body: body.clone(),
            progress: None,
        };
        LENT.scope(lent, async {
            // The frame header is written: what remains is the body itself.
            let tail = SendStream::lent_tail(&body[10..]).expect("the body's tail");
            assert_eq!(tail.as_ptr(), body[10..].as_ptr());
            assert_eq!(tail.len(), 990);
            // The same bytes elsewhere in memory are not the body: they are copied.
            assert!(SendStream::lent_tail(&copy[10..]).is_none());
            // A slice that does not end where the body ends is not its tail.
            assert!(SendStream::lent_tail(&body[10..500]).is_none());
            assert!(SendStream::lent_tail(&[]).is_none());
        })
        .await;
        // Outside a send, nothing is lent.
        assert!(SendStream::lent_tail(&body[..]).is_none());
    }
}
