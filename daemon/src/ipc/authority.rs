//! A front on each local gRPC connection that makes `:authority` acceptable to `h2`.
//!
//! gRPC C-core (Python, C++, Ruby, PHP, Objective-C) and grpc-java send the socket path,
//! percent-encoded, as `:authority` when they dial `unix:///path` (Python 1.85 sends
//! `tmp%2Fx%2Fuplinkd.sock`). hyper's `h2` parses `:authority` as a URI authority and answers
//! anything else with `RST_STREAM(PROTOCOL_ERROR)`, so every call from those stock clients
//! fails (hyperium/h2 PR 487, tonic issues 243/742). On a Unix socket the authority names
//! nothing, so the front replaces one that does not parse with `localhost` before `h2` sees it.
//!
//! Why a front and not another server stack or a patched `h2`: tonic and hyper stay as they
//! are (one HTTP/2 implementation in the daemon, maintained upstream), the change is confined
//! to the one direction and the one frame kind that carry the problem, and it is testable on
//! its own. The cost is an HPACK decode and re-encode of each request's headers — nothing
//! next to a gRPC call on a local socket; DATA frames pass through untouched.
//!
//! HPACK is stateful: the client's encoder and the server's decoder share a dynamic table.
//! Rewriting only some header blocks would leave the server's table out of step with the
//! client's, so the front decodes *every* header block with its own decoder (mirroring the
//! client's table) and re-encodes every one as literals that never touch the server's
//! table. The server → client direction is not touched at all.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which opens every HTTP/2 connection.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames of this size (RFC 9113 §4.2), whatever it advertised.
const MAX_OUT_FRAME: usize = 16_384;
/// A request's header block larger than this is refused (the connection closes).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// What `h2` advertises as SETTINGS_HEADER_TABLE_SIZE; clients may not grow beyond it.
const HEADER_TABLE_SIZE: usize = 4096;
/// The authority a local socket stands for.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// A header block being collected from HEADERS + CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    /// Stream dependency + weight, when the HEADERS frame had PRIORITY.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

enum Phase {
    /// Bytes of the connection preface still to pass.
    Preface(usize),
    /// Between frames.
    FrameStart,
    /// Payload bytes of a frame that passes as it is.
    PassThrough(usize),
}

/// The client → server byte stream of one HTTP/2 connection, with every header block
/// re-encoded and an unparseable `:authority` replaced. Not tied to any I/O.
pub struct Rewriter {
    phase: Phase,
    decoder: Decoder<'static>,
    pending: Option<PendingBlock>,
    /// Raw bytes not yet consumed.
    input: BytesMut,
    /// Bytes ready for the server.
    output: BytesMut,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            phase: Phase::Preface(PREFACE_LEN),
            decoder,
            pending: None,
            input: BytesMut::new(),
            output: BytesMut::new(),
        }
    }
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Rewriter {
    /// Feeds bytes from the client; what can be processed moves to the output.
    pub fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        self.process()
    }

    /// Takes the bytes ready for the server.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.phase {
                Phase::Preface(left) | Phase::PassThrough(left) => {
                    let n = left.min(self.input.len());
                    self.output.put(self.input.split_to(n));
                    let rest = left - n;
                    if rest > 0 {
                        self.phase = match self.phase {
                            Phase::Preface(_) => Phase::Preface(rest),
                            _ => Phase::PassThrough(rest),
                        };
                        return Ok(());
                    }
                    self.phase = Phase::FrameStart;
                }
                Phase::FrameStart => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let h = &self.input[..FRAME_HEADER_LEN];
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let (kind, flags) = (h[3], h[4]);
                    let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.pending.is_some() {
                            return Err(protocol_error(
                                "a header block was interrupted by another frame",
                            ));
                        }
                        self.phase = Phase::PassThrough(FRAME_HEADER_LEN + len);
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK {
                        return Err(protocol_error("header block too large"));
                    }
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        return Ok(());
                    }
                    self.input.advance(FRAME_HEADER_LEN);
                    let payload = self.input.split_to(len);
                    self.header_frame(kind, flags, stream_id, &payload)?;
                }
            }
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut block = match (kind, self.pending.take()) {
            (HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0usize;
                if flags & PADDED != 0 {
                    let (&p, rest) = body
                        .split_first()
                        .ok_or_else(|| protocol_error("PADDED HEADERS frame without length"))?;
                    pad = p as usize;
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let p: [u8; 5] = body
                        .get(..5)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| protocol_error("short PRIORITY fields"))?;
                    priority = Some(p);
                    body = &body[5..];
                }
                let fragment = body
                    .get(..body.len().checked_sub(pad).unwrap_or(usize::MAX))
                    .ok_or_else(|| protocol_error("padding longer than the frame"))?;
                PendingBlock {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                }
            }
            (CONTINUATION, Some(mut block)) if block.stream_id == stream_id => {
                if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(protocol_error("header block too large"));
                }
                block.fragment.extend_from_slice(payload);
                block
            }
            _ => return Err(protocol_error("CONTINUATION out of place")),
        };
        if flags & END_HEADERS == 0 {
            self.pending = Some(block);
            return Ok(());
        }
        let encoded = self.reencode(&block.fragment)?;
        block.fragment = encoded;
        self.emit(&block);
        Ok(())
    }

    /// Decodes a whole header block and encodes it again as literals without indexing,
    /// with an unparseable `:authority` replaced.
    fn reencode(&mut self, fragment: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(fragment.len() * 2);
        let mut failed = None;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                let value: &[u8] = if name.as_ref() == b":authority"
                    && http::uri::Authority::try_from(value.as_ref()).is_err()
                {
                    LOCAL_AUTHORITY
                } else {
                    value.as_ref()
                };
                if let Err(e) = literal(&mut out, &name, value) {
                    failed = Some(e);
                }
            })
            .map_err(|e| protocol_error(format!("bad header block: {e}")))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Writes a HEADERS frame and as many CONTINUATION frames as the block needs.
    fn emit(&mut self, block: &PendingBlock) {
        let prio_len = if block.priority.is_some() { 5 } else { 0 };
        let first_room = MAX_OUT_FRAME - prio_len;
        let (first, mut rest) = block
            .fragment
            .split_at(block.fragment.len().min(first_room));
        let mut flags = 0u8;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame_header(prio_len + first.len(), HEADERS, flags, block.stream_id);
        if let Some(p) = block.priority {
            self.output.put_slice(&p);
        }
        self.output.put_slice(first);
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            self.frame_header(piece.len(), CONTINUATION, flags, block.stream_id);
            self.output.put_slice(piece);
            rest = tail;
        }
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream_id: u32) {
        // `len` <= MAX_OUT_FRAME, so it fits the 24-bit length field.
        let l = (len as u32).to_be_bytes();
        self.output.put_slice(&[l[1], l[2], l[3], kind, flags]);
        self.output.put_u32(stream_id);
    }
}

/// HPACK "literal header field without indexing — new name", no Huffman (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> io::Result<()> {
    out.push(0x00);
    loona_hpack::encoder::encode_integer_into(name.len(), 7, 0, out)?;
    out.extend_from_slice(name);
    loona_hpack::encoder::encode_integer_into(value.len(), 7, 0, out)?;
    out.extend_from_slice(value);
    Ok(())
}

/// A client connection whose reads go through a [`Rewriter`]; writes pass straight on.
pub struct Fronted<S> {
    inner: S,
    rewriter: Rewriter,
    /// The client closed its side; deliver what is left, then EOF.
    eof: bool,
}

impl<S> Fronted<S> {
    pub fn new(inner: S) -> Self {
        Fronted {
            inner,
            rewriter: Rewriter::default(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fronted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            let ready = me.rewriter.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => me.eof = true,
                Poll::Ready(Ok(())) => me.rewriter.feed(rb.filled())?,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fronted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
