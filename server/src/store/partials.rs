//! Partly received chunks, so a chunk cut off mid-body does not start again from byte 0.
//!
//! A request's body bytes are kept as they arrive ([`Session::receiving`]). When the
//! client loses the connection (its path died, it abandoned a stalled request), it asks
//! what the server has of that chunk (`POST …/chunks/{offset}/resume`, answered by
//! [`Session::take_over`]): the bytes so far are taken from the old request, which stops,
//! and parked for the client's next PUT, which names how many of them it builds on
//! (`X-Chunk-Resume-From`) and sends only the rest ([`Session::resume_prefix`]). Nothing
//! is trusted early: the whole chunk, prefix and rest, is verified against its SHA-256,
//! CRC32C and HMAC-authenticated identity as if it had come in one piece.
//!
//! Parked bytes live in memory only, for [`PARK_TTL`], at most [`PARKED_LIMIT`] per
//! session (oldest dropped first). A lost prefix costs the client one whole re-send.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use uplink_proto::wire::code;

use super::{Session, lock};
use crate::error::ApiError;

/// How long parked bytes wait for the client's resumed PUT.
pub const PARK_TTL: Duration = Duration::from_secs(120);
/// Parked bytes one session may hold.
pub const PARKED_LIMIT: u64 = 256 << 20;

/// The bytes of one chunk body received so far.
#[derive(Default)]
struct Body {
    parts: Vec<Bytes>,
    len: u64,
    /// A resumed request took these bytes: the request still receiving them stops.
    taken: bool,
}

/// Which chunk a body belongs to: bytes are only ever handed to the same chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    length: u64,
    sha256: [u8; 32],
}

struct Receiving {
    id: u64,
    identity: Identity,
    body: Arc<Mutex<Body>>,
}

struct Parked {
    identity: Identity,
    parts: Vec<Bytes>,
    len: u64,
    at: Instant,
}

#[derive(Default)]
pub(super) struct Partials {
    /// offset -> the latest request receiving that chunk's body.
    receiving: BTreeMap<u64, Receiving>,
    /// offset -> bytes waiting for a resumed PUT.
    parked: BTreeMap<u64, Parked>,
    next_id: u64,
}

impl Partials {
    fn parked_bytes(&self) -> u64 {
        self.parked.values().map(|p| p.len).sum()
    }

    fn park(&mut self, offset: u64, parked: Parked) {
        let now = Instant::now();
        self.parked
            .retain(|_, p| now.duration_since(p.at) < PARK_TTL);
        if parked.len == 0 || parked.len > PARKED_LIMIT {
            return;
        }
        while self.parked_bytes() + parked.len > PARKED_LIMIT {
            let oldest = self
                .parked
                .iter()
                .min_by_key(|(_, p)| p.at)
                .map(|(o, _)| *o);
            match oldest {
                Some(o) => self.parked.remove(&o),
                None => break,
            };
        }
        self.parked.insert(offset, parked);
    }
}

/// A request receiving a chunk body: its bytes are kept where a resumed request can take
/// them. Dropped without [`Receipt::finish`] (the body was cut off), the bytes are parked.
pub struct Receipt {
    session: Arc<Session>,
    offset: u64,
    id: u64,
    identity: Identity,
    body: Arc<Mutex<Body>>,
    prefix_len: u64,
}

/// A resumed request took this request's bytes.
pub struct TakenOver;

impl Receipt {
    /// Adds body bytes as they arrive.
    pub fn push(&self, data: Bytes) -> Result<(), TakenOver> {
        let mut b = lock(&self.body);
        if b.taken {
            return Err(TakenOver);
        }
        b.len += data.len() as u64;
        b.parts.push(data);
        Ok(())
    }

    /// Bytes received, counting a resumed request's prefix.
    pub fn len(&self) -> u64 {
        lock(&self.body).len
    }

    /// How many of [`Self::len`] came from an earlier request.
    pub fn prefix_len(&self) -> u64 {
        self.prefix_len
    }

    /// Drops the bytes without parking them (the body was refused).
    pub fn discard(self) {
        lock(&self.body).taken = true;
    }

    /// The whole body, prefix first; nothing is parked any more.
    pub fn finish(self) -> Result<Vec<Bytes>, TakenOver> {
        let mut b = lock(&self.body);
        if b.taken {
            return Err(TakenOver);
        }
        b.taken = true;
        Ok(std::mem::take(&mut b.parts))
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        let mut p = lock(&self.session.partials);
        if p.receiving
            .get(&self.offset)
            .is_some_and(|r| r.id == self.id)
        {
            p.receiving.remove(&self.offset);
        }
        let mut b = lock(&self.body);
        if b.taken {
            return;
        }
        b.taken = true;
        let parked = Parked {
            identity: self.identity,
            parts: std::mem::take(&mut b.parts),
            len: b.len,
            at: Instant::now(),
        };
        drop(b);
        p.park(self.offset, parked);
    }
}

/// The first `len` bytes of `parts`.
fn truncated(parts: Vec<Bytes>, len: u64) -> Vec<Bytes> {
    let mut left = len;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        if left == 0 {
            break;
        }
        let take = left.min(part.len() as u64);
        out.push(part.slice(..take as usize));
        left -= take;
    }
    out
}

impl Session {
    /// Starts keeping a chunk body's bytes as they arrive; `prefix` is what an earlier
    /// request received of it ([`Session::resume_prefix`]).
    pub fn receiving(
        self: &Arc<Self>,
        offset: u64,
        length: u64,
        sha256: &[u8; 32],
        prefix: Vec<Bytes>,
    ) -> Receipt {
        let prefix_len = prefix.iter().map(|p| p.len() as u64).sum();
        let body = Arc::new(Mutex::new(Body {
            parts: prefix,
            len: prefix_len,
            taken: false,
        }));
        let identity = Identity {
            length,
            sha256: *sha256,
        };
        let mut p = lock(&self.partials);
        p.next_id += 1;
        let id = p.next_id;
        p.receiving.insert(
            offset,
            Receiving {
                id,
                identity,
                body: Arc::clone(&body),
            },
        );
        Receipt {
            session: Arc::clone(self),
            offset,
            id,
            identity,
            body,
            prefix_len,
        }
    }

    /// What the server has of this chunk's body, taken from the request receiving it (which
    /// stops) and parked for a resumed PUT. 0 when it has nothing of it.
    pub fn take_over(&self, offset: u64, length: u64, sha256: &[u8; 32]) -> u64 {
        let identity = Identity {
            length,
            sha256: *sha256,
        };
        let mut p = lock(&self.partials);
        if let Some(r) = p
            .receiving
            .remove(&offset)
            .filter(|r| r.identity == identity)
        {
            let mut b = lock(&r.body);
            if !b.taken {
                b.taken = true;
                let parked = Parked {
                    identity,
                    parts: std::mem::take(&mut b.parts),
                    len: b.len,
                    at: Instant::now(),
                };
                drop(b);
                p.park(offset, parked);
            }
        }
        p.parked
            .get(&offset)
            .filter(|k| k.identity == identity && k.at.elapsed() < PARK_TTL)
            .map_or(0, |k| k.len)
    }

    /// The first `from` bytes of this chunk, parked by [`Session::take_over`] (or by a body
    /// cut off). An error when the server no longer has them: the client sends it whole.
    pub fn resume_prefix(
        &self,
        offset: u64,
        length: u64,
        sha256: &[u8; 32],
        from: u64,
    ) -> Result<Vec<Bytes>, ApiError> {
        let identity = Identity {
            length,
            sha256: *sha256,
        };
        let mut p = lock(&self.partials);
        let usable = p
            .parked
            .get(&offset)
            .is_some_and(|k| k.identity == identity && k.len >= from && k.at.elapsed() < PARK_TTL);
        match p.parked.remove(&offset) {
            Some(k) if usable => Ok(truncated(k.parts, from)),
            _ => Err(ApiError::new(
                409,
                code::PARTIAL_GONE,
                format!(
                    "the server no longer holds the first {from} bytes of chunk \
                     {offset}+{length}: send it whole"
                ),
            )),
        }
    }

    /// Parked bytes of this session.
    #[cfg(test)]
    pub fn parked_bytes(&self) -> u64 {
        lock(&self.partials).parked_bytes()
    }
}
