//! Receiving a chunk into a session: its range is reserved before the body is read
//! ([`Session::begin_chunk`]), then the body is verified (length, CRC32C, SHA-256) and only
//! then written and logged ([`Session::store_chunk`]). Nothing of a chunk that fails a check
//! reaches the disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use uplink_proto::chain::FileState;
use uplink_proto::integrity::{self, ChunkDigest};
use uplink_proto::wire::{self, code};

use super::{Link, Session, chunk_log, lock};
use crate::error::ApiError;

/// A chunk some request is receiving.
///
/// A client that retries after a timeout, or restarts after a crash, must not wait until
/// its abandoned first attempt times out (over QUIC, a killed client's streams linger until
/// the idle timeout). So a request for the same bytes joins the reservation, and a request
/// for overlapping bytes cut differently (the restarted engine chose other chunk sizes)
/// supersedes it while its body is still arriving. Once a holder writes, the range is
/// settled and overlapping requests get `chunk_in_progress` until it is done; so do other
/// bytes for the very same range.
#[derive(Clone, Copy)]
pub(super) struct InFlight {
    id: u64,
    length: u64,
    sha256: [u8; 32],
    /// Requests receiving these same bytes.
    holders: u32,
    /// A holder is writing: the reservation can no longer be superseded.
    writing: bool,
}

/// Outcome of [`Session::begin_chunk`].
pub enum BeginChunk {
    /// The server already holds exactly this chunk: nothing to do.
    Duplicate,
    /// The range is reserved for this request until the guard drops.
    Reserved(Reservation),
}

/// Holds a chunk's byte range while its body is received and verified.
pub struct Reservation {
    session: Arc<Session>,
    id: u64,
    offset: u64,
    length: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = lock(&self.session.state);
        if let Some(r) = st
            .reserved
            .get_mut(&self.offset)
            .filter(|r| r.id == self.id)
        {
            r.holders -= 1;
            if r.holders == 0 {
                st.reserved.remove(&self.offset);
            }
        }
    }
}

fn overlaps(a_off: u64, a_len: u64, b_off: u64, b_len: u64) -> bool {
    a_off < b_off + b_len && b_off < a_off + a_len
}

/// The entry of `map` that overlaps `[offset, offset + length)`, if any.
fn overlapping<V: Copy>(
    map: &BTreeMap<u64, V>,
    offset: u64,
    length: u64,
    len_of: impl Fn(&V) -> u64,
) -> Option<(u64, V)> {
    let before = map.range(..=offset).next_back();
    let after = map.range(offset..offset + length).next();
    [before, after]
        .into_iter()
        .flatten()
        .find(|(o, v)| overlaps(**o, len_of(v), offset, length))
        .map(|(o, v)| (*o, *v))
}

impl Session {
    /// Checks a chunk's place before its body is read, and reserves its range.
    /// `replace`: the client declares new bytes for the chunk held at exactly this offset
    /// and length (see [`wire::HDR_CHUNK_REPLACE`]).
    pub fn begin_chunk(
        self: &Arc<Self>,
        offset: u64,
        length: u64,
        sha256: &[u8; 32],
        replace: bool,
    ) -> Result<BeginChunk, ApiError> {
        if length == 0 {
            return Err(ApiError::bad_header("X-Chunk-Length must be at least 1"));
        }
        if length > wire::MAX_CHUNK_SIZE {
            return Err(ApiError::new(
                413,
                code::CHUNK_TOO_LARGE,
                format!(
                    "chunk of {length} bytes exceeds the limit of {} bytes",
                    wire::MAX_CHUNK_SIZE
                ),
            ));
        }
        if offset
            .checked_add(length)
            .is_none_or(|end| end > self.bound())
        {
            return Err(ApiError::new(
                416,
                code::OUT_OF_RANGE,
                format!(
                    "chunk {offset}+{length} lies beyond the upload's {} bytes",
                    self.bound()
                ),
            ));
        }
        if lock(&self.meta).completed.is_some() {
            return Err(ApiError::new(
                409,
                code::ALREADY_COMPLETED,
                "upload already completed",
            ));
        }
        let mut st = lock(&self.state);
        st.chunk_puts += 1;
        if let Some((o, (l, s))) = overlapping(&st.chunks, offset, length, |v| v.0) {
            if o == offset && l == length && s == *sha256 {
                st.duplicate_puts += 1;
                return Ok(BeginChunk::Duplicate);
            }
            if replace && !self.deferred {
                return Err(ApiError::new(
                    409,
                    code::CHUNK_CONFLICT,
                    format!(
                        "the server holds a different chunk at {o}+{l}; X-Chunk-Replace is \
                         only for uploads whose length was deferred (a growing file)"
                    ),
                ));
            }
            if !(replace && o == offset && l == length) {
                return Err(ApiError::new(
                    409,
                    code::CHUNK_CONFLICT,
                    format!("the server holds a different chunk at {o}+{l}"),
                ));
            }
        }
        let end = offset + length;
        let overlaps: Vec<(u64, InFlight)> = st
            .reserved
            .range(..end)
            .rev()
            .take_while(|(o, r)| **o + r.length > offset)
            .map(|(o, r)| (*o, *r))
            .collect();
        let id = match overlaps.as_slice() {
            // The same bytes again: both requests may proceed; they write identical data.
            [(o, r)] if *o == offset && r.length == length && r.sha256 == *sha256 => {
                if let Some(r) = st.reserved.get_mut(&offset) {
                    r.holders += 1;
                }
                r.id
            }
            _ => {
                // Other bytes for the very same range: the file changed under one of the
                // requests; the first settles it.
                if let Some((o, r)) = overlaps
                    .iter()
                    .find(|(o, r)| r.writing || (*o == offset && r.length == length))
                {
                    return Err(ApiError::new(
                        409,
                        code::CHUNK_IN_PROGRESS,
                        format!(
                            "chunk {o}+{} is being received by another request",
                            r.length
                        ),
                    ));
                }
                for (o, _) in &overlaps {
                    st.reserved.remove(o);
                }
                st.next_reservation += 1;
                let id = st.next_reservation;
                st.reserved.insert(
                    offset,
                    InFlight {
                        id,
                        length,
                        sha256: *sha256,
                        holders: 1,
                        writing: false,
                    },
                );
                id
            }
        };
        Ok(BeginChunk::Reserved(Reservation {
            session: Arc::clone(self),
            id,
            offset,
            length,
        }))
    }

    /// Verifies a received chunk and makes it durable (blocking: run off the reactor).
    /// Nothing is written unless length, CRC32C and SHA-256 all match. `from`: the chunk
    /// came as a link of the file's hash, starting from this state (its digest is then
    /// the link's, see [`uplink_proto::chain`]).
    pub fn store_chunk(
        &self,
        res: Reservation,
        parts: &[Bytes],
        expect: &ChunkDigest,
        from: Option<&FileState>,
    ) -> Result<(), ApiError> {
        let mut hasher = match from {
            Some(from) => integrity::ChunkHasher::from_state(*from),
            None => integrity::ChunkHasher::new(),
        };
        parts.iter().for_each(|p| hasher.update(p));
        if hasher.len() != res.length {
            return Err(ApiError::new(
                400,
                code::LENGTH_MISMATCH,
                format!(
                    "body has {} bytes, X-Chunk-Length says {}",
                    hasher.len(),
                    res.length
                ),
            ));
        }
        let (got, to) = hasher.finish_link();
        let link = from.cloned().zip(to).map(|(from, to)| Link { from, to });
        if got.crc32c != expect.crc32c {
            return Err(ApiError::new(
                422,
                code::CRC32C_MISMATCH,
                "body does not match X-Chunk-CRC32C",
            ));
        }
        if got.sha256 != expect.sha256 {
            return Err(ApiError::new(
                422,
                code::SHA256_MISMATCH,
                "body does not match X-Chunk-SHA256",
            ));
        }
        {
            let mut st = lock(&self.state);
            // A parallel request with the same bytes may have stored them (and the upload
            // may even have completed since): nothing left to write.
            if st.chunks.get(&res.offset) == Some(&(res.length, got.sha256)) {
                return Ok(());
            }
            // From here the range is settled: nothing supersedes a reservation being written.
            match st.reserved.get_mut(&res.offset).filter(|r| r.id == res.id) {
                Some(r) => r.writing = true,
                None => {
                    return Err(ApiError::new(
                        409,
                        code::CHUNK_IN_PROGRESS,
                        format!(
                            "chunk {}+{} was superseded by a newer request for these bytes",
                            res.offset, res.length
                        ),
                    ));
                }
            }
        }
        let (replaced, replaced_link) = {
            let st = lock(&self.state);
            let at = res.offset;
            (st.chunks.get(&at).copied(), st.links.get(&at).copied())
        };
        match &self.remote {
            Some(remote) => {
                let (id, at, len) = (&self.id, res.offset, res.length);
                remote.put_chunk(id, at, len, &got.sha256, link.as_ref(), parts)?;
                if let Some((length, sha)) = replaced {
                    remote.delete_chunk(id, at, length, &sha, replaced_link.as_ref())?;
                }
            }
            None => {
                let part = self.part()?;
                part.write_durable(res.offset, parts)
                    .map_err(|e| ApiError::io("writing the chunk", &e))?;
                // The log's last line for an offset wins when it is read back.
                let line = chunk_log::line(res.offset, res.length, &got.sha256, link.as_ref());
                part.log_durable(&line)
                    .map_err(|e| ApiError::io("recording the chunk", &e))?;
                if replaced.is_some() {
                    part.rewind_hash(res.offset);
                }
            }
        }
        let mut st = lock(&self.state);
        // A parallel request with the same bytes may have recorded it first.
        if st
            .chunks
            .insert(res.offset, (res.length, got.sha256))
            .is_none()
        {
            st.received += res.length;
        }
        match link {
            Some(link) => st.links.insert(res.offset, link),
            None => st.links.remove(&res.offset),
        };
        Ok(())
    }

    /// Lets the running file hash catch up (blocking; call after a chunk was stored, off
    /// the request's path). `fresh` is that chunk's offset, bytes and digest, hashed
    /// without re-reading.
    pub fn advance_hash(&self, fresh: Option<(u64, &[Bytes], ChunkDigest)>) {
        if self.remote.is_some() {
            if let Some((offset, parts, digest)) = fresh {
                let length = parts.iter().map(|p| p.len() as u64).sum();
                // Its link, if the chunk held there is still this one.
                let link = {
                    let st = lock(&self.state);
                    let held = st.chunks.get(&offset) == Some(&(length, digest.sha256));
                    held.then(|| st.links.get(&offset).copied()).flatten()
                };
                let chunk = super::remote_hash::Hashed {
                    offset,
                    length,
                    digest,
                    link,
                };
                lock(&self.file_hash).offer(chunk, parts);
            }
            return;
        }
        let fresh = fresh.map(|(offset, parts, _)| (offset, parts));
        let part = lock(&self.part).clone();
        if let Some(part) = part {
            let stored = |o| {
                let st = lock(&self.state);
                let (length, _) = st.chunks.get(&o)?;
                Some((*length, st.links.get(&o).cloned()))
            };
            part.advance_hash(stored, fresh);
        }
    }
}
