//! Writing one object of any size: bytes in, in order, hashed as they pass; a single PUT
//! when they fit in one part, else a multipart upload.
//!
//! S3 takes at most 10,000 parts, each at least 5 MiB but the last. Parts here are at
//! least a size chosen from the object's length ([`part_size`]): 8 MiB or more, and large
//! enough that 9,000 cover the largest file uplink takes, so the limit is never met.
//!
//! Bytes already in the store (a chunk object, [`ObjectWriter::write_stored`]) need not
//! be sent again: where a chunk holds a whole part or more, that part is copied inside
//! the store (`UploadPartCopy`) and only its hash is computed here. A chunk that follows a
//! partly filled part first tops it up from its own bytes, then copies the rest, so one
//! small chunk at the start (the daemon's first chunks are small) does not leave every
//! later part out of step. Every part but the last is still at least [`part_size`].

use bytes::{Bytes, BytesMut};
use uplink_proto::chain::FileState;

use super::{S3, S3Error};

const MIN_PART: u64 = 8 << 20;
const MAX_PARTS: u64 = 9_000;

/// The part size for an object of `size` bytes: a multiple of 1 MiB.
pub fn part_size(size: u64) -> u64 {
    let need = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    need.max(MIN_PART)
}

/// An object being written.
pub struct ObjectWriter<'a> {
    s3: &'a S3,
    key: String,
    metadata: Vec<(String, String)>,
    part_size: u64,
    buf: BytesMut,
    sha: FileState,
    len: u64,
    upload_id: Option<String>,
    parts: Vec<(u32, String, String)>,
    /// Bytes the store copied from chunk objects (not sent from here).
    copied: u64,
    /// `sha` already covers bytes [0, hashed_to) ([`ObjectWriter::resume_hash`]).
    hashed_to: u64,
}

/// What [`ObjectWriter::finish`] wrote.
pub struct Written {
    pub sha256: [u8; 32],
    pub size: u64,
    /// Of which the store copied this many from objects it held.
    pub copied: u64,
}

/// S3's largest part.
const MAX_PART: u64 = 5 << 30;

/// Where a chunk already in the store goes in the object.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Bytes from the chunk's start that pass through here (to top up a part, or all).
    pub sent: u64,
    /// The rest, if any, is a part of its own copied inside the store.
    pub copy: bool,
}

/// How a chunk of `len` bytes is placed while `buffered` bytes of a part wait: copied
/// (after topping up the waiting part) if what is left still makes a whole part.
pub fn placement(buffered: u64, part_size: u64, len: u64) -> Placement {
    let fill = match buffered {
        0 => 0,
        n => part_size - n,
    };
    match len >= fill + part_size && len - fill <= MAX_PART {
        true => Placement {
            sent: fill,
            copy: true,
        },
        false => Placement {
            sent: len,
            copy: false,
        },
    }
}

/// The placement of each chunk of `lengths` (file order) in an object of `part_size`
/// parts: what [`ObjectWriter::write_stored`] will do, known before reading a byte.
pub fn plan(lengths: impl Iterator<Item = u64>, part_size: u64) -> Vec<Placement> {
    let mut buffered = 0;
    lengths
        .map(|len| {
            let p = placement(buffered, part_size, len);
            buffered = match p.copy {
                true => 0,
                false => (buffered + len) % part_size,
            };
            p
        })
        .collect()
}

/// The CRC32C of a chunk's bytes after its first `prefix` ones, from the CRC32C of the
/// whole chunk and of that prefix: CRCs are linear (`crc(A‖B) = crc(A)·x^|B| ⊕ crc(B)`),
/// so a copied part's checksum follows without reading it.
pub fn suffix_crc32c(whole: u32, prefix: u32, suffix_len: u64) -> u32 {
    whole ^ crc32c::crc32c_combine(prefix, 0, suffix_len as usize)
}

impl<'a> ObjectWriter<'a> {
    /// An object at `key` of about `size` bytes (the part size follows from it).
    pub fn new(s3: &'a S3, key: &str, size: u64, metadata: &[(&str, &str)]) -> ObjectWriter<'a> {
        let part_size = part_size(size);
        ObjectWriter {
            s3,
            key: key.to_string(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            part_size,
            buf: BytesMut::with_capacity(part_size.min(size) as usize),
            sha: FileState::start(),
            len: 0,
            upload_id: None,
            parts: Vec::new(),
            copied: 0,
            hashed_to: 0,
        }
    }

    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Starts from a hash of the object's first `hashed_to` bytes (made as they arrived):
    /// chunks within them are not hashed again.
    pub fn resume_hash(&mut self, sha: FileState, hashed_to: u64) {
        self.sha = sha;
        self.hashed_to = hashed_to;
    }

    fn metadata(&self) -> Vec<(&str, &str)> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Appends bytes; a full part is uploaded.
    pub fn write(&mut self, data: &[u8]) -> Result<(), S3Error> {
        self.sha.update(data);
        self.len += data.len() as u64;
        self.buffer(data)
    }

    /// Adds bytes (hashed or not) to the part being filled; a full part is uploaded.
    fn buffer(&mut self, mut data: &[u8]) -> Result<(), S3Error> {
        while !data.is_empty() {
            let room = self.part_size as usize - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() as u64 == self.part_size {
                self.upload_part()?;
            }
        }
        Ok(())
    }

    /// Appends a chunk of `len` bytes that is also the whole object at `source` in the
    /// store, placed as [`placement`] says. `bytes`: all of the chunk if the hash has not
    /// gone over it yet, else at least its first [`Placement::sent`]; `crc32c`: the whole
    /// chunk's, if known (else a copied part's is computed from `bytes`).
    pub fn write_stored(
        &mut self,
        source: &str,
        len: u64,
        bytes: &[u8],
        crc32c: Option<u32>,
    ) -> Result<(), S3Error> {
        let p = placement(self.buf.len() as u64, self.part_size, len);
        let hashed = self.len + len <= self.hashed_to;
        let missing = |what: &str| {
            S3Error::transport(format!(
                "{source}: {} bytes given, {what} needed",
                bytes.len()
            ))
        };
        match hashed {
            false if bytes.len() as u64 != len => return Err(missing("all")),
            false => self.sha.update(bytes),
            true if (bytes.len() as u64) < p.sent => return Err(missing("the part sent")),
            true => {}
        }
        self.len += len;
        self.buffer(&bytes[..p.sent as usize])?;
        if !p.copy {
            return Ok(());
        }
        let fill = p.sent;
        let crc = match crc32c {
            Some(whole) => {
                suffix_crc32c(whole, crc32c::crc32c(&bytes[..fill as usize]), len - fill)
            }
            None if bytes.len() as u64 == len => crc32c::crc32c(&bytes[fill as usize..]),
            None => return Err(missing("all, or the chunk's CRC32C,")),
        };
        let crc = super::crc32c_text(crc);
        let upload_id = self.upload_id()?;
        let number = self.parts.len() as u32 + 1;
        let etag = self.s3.upload_part_copy(
            &self.key,
            &upload_id,
            number,
            source,
            (fill, len - 1),
            &crc,
        )?;
        self.parts.push((number, etag, crc));
        self.copied += len - fill;
        Ok(())
    }

    /// The multipart upload, started at the first part.
    fn upload_id(&mut self) -> Result<String, S3Error> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let id = self.s3.create_multipart(&self.key, &self.metadata())?;
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    fn upload_part(&mut self) -> Result<(), S3Error> {
        let upload_id = self.upload_id()?;
        let number = self.parts.len() as u32 + 1;
        let body: Bytes = std::mem::take(&mut self.buf).freeze();
        self.buf = BytesMut::with_capacity(self.part_size as usize);
        let (etag, crc) = self
            .s3
            .upload_part(&self.key, &upload_id, number, vec![body])?;
        self.parts.push((number, etag, crc));
        Ok(())
    }

    /// Makes the object visible. `create_only`: fail with 412 (and leave nothing) if the
    /// key exists by then. What was written (its hash, its size) is known either way.
    pub fn finish(mut self, create_only: bool) -> (Written, Result<(), S3Error>) {
        let written = Written {
            sha256: self.sha.finish(),
            size: self.len,
            copied: self.copied,
        };
        let placed = self.place(create_only);
        (written, placed)
    }

    fn place(&mut self, create_only: bool) -> Result<(), S3Error> {
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buf).freeze();
            let meta = self.metadata();
            return self.s3.put(&self.key, vec![body], None, create_only, &meta);
        }
        if !self.buf.is_empty() {
            self.upload_part()?;
        }
        let upload_id = self.upload_id.clone().unwrap_or_default();
        self.s3
            .complete_multipart(&self.key, &upload_id, &self.parts, create_only)?;
        self.upload_id = None;
        Ok(())
    }
}

impl Drop for ObjectWriter<'_> {
    /// An object not finished leaves no parts behind.
    fn drop(&mut self) {
        if let Some(id) = self.upload_id.take()
            && let Err(e) = self.s3.abort_multipart(&self.key, &id)
        {
            tracing::warn!(key = %self.key, error = %e, "cannot abort a multipart upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_s3s_limits_for_every_size() {
        for size in [
            1,
            5 << 20,
            8 << 20,
            1 << 30,
            75_000_000_000,
            100_000_000_000,
        ] {
            let p = part_size(size);
            assert!(p >= 5 << 20, "{size}: part {p} under S3's minimum");
            assert!(p <= 5 << 30, "{size}: part {p} over S3's maximum");
            assert!(
                size.div_ceil(p) <= 10_000,
                "{size}: {} parts",
                size.div_ceil(p)
            );
        }
        assert_eq!(part_size(1 << 30), 8 << 20);
        assert_eq!(part_size(100_000_000_000), 11 << 20);
    }

    #[test]
    fn large_chunks_are_copied_and_small_ones_sent_and_every_part_but_the_last_is_whole() {
        const M: u64 = 1 << 20;
        let part = 8 * M;
        let send = |sent| Placement { sent, copy: false };
        let copy = |sent| Placement { sent, copy: true };
        // The daemon's ramp: small chunks first, then large ones, a short tail.
        let lengths = [M / 4, M, 4 * M, 16 * M, 16 * M, 8 * M, 5 * M, 9 * M, 3];
        let got = plan(lengths.iter().copied(), part);
        assert_eq!(
            got,
            [
                send(M / 4),
                send(M),
                send(4 * M),
                // Tops up the waiting 5.25 MiB with 2.75, copies its other 13.25.
                copy(11 * M / 4),
                copy(0),
                copy(0),
                send(5 * M),
                // 5 waiting: 3 top the part up; 6 left do not make a part, so all is sent.
                send(9 * M),
                send(3),
            ]
        );
        // Parts as the writer makes them: sent bytes fill parts of `part`, copies are
        // parts of their own; none but the last is under `part`.
        let mut parts = Vec::new();
        let mut buffered = 0;
        for (len, p) in lengths.iter().zip(&got) {
            buffered += p.sent;
            while buffered >= part {
                parts.push(part);
                buffered -= part;
            }
            if p.copy {
                parts.push(len - p.sent);
            }
        }
        if buffered > 0 {
            parts.push(buffered);
        }
        assert_eq!(parts.iter().sum::<u64>(), lengths.iter().sum::<u64>());
        let last = parts.len() - 1;
        assert!(parts[..last].iter().all(|&p| p >= part), "{parts:?}");
    }

    #[test]
    fn a_suffix_crc_follows_from_the_whole_and_the_prefix() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 256) as u8).collect();
        for cut in [0, 1, 100, 4999, 5000] {
            let whole = crc32c::crc32c(&data);
            let prefix = crc32c::crc32c(&data[..cut]);
            assert_eq!(
                suffix_crc32c(whole, prefix, (data.len() - cut) as u64),
                crc32c::crc32c(&data[cut..]),
                "cut at {cut}"
            );
        }
    }
}
