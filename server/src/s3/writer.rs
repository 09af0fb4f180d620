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
use sha2::{Digest, Sha256};

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
    sha: Sha256,
    len: u64,
    upload_id: Option<String>,
    parts: Vec<(u32, String, String)>,
    /// Bytes the store copied from chunk objects (not sent from here).
    copied: u64,
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
            sha: Sha256::new(),
            len: 0,
            upload_id: None,
            parts: Vec::new(),
            copied: 0,
        }
    }

    fn metadata(&self) -> Vec<(&str, &str)> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Appends bytes; a full part is uploaded.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), S3Error> {
        self.sha.update(data);
        self.len += data.len() as u64;
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

    /// Appends `data`, which is also the whole object at `source` in the store: what can
    /// be a part of its own is copied there rather than sent.
    pub fn write_stored(&mut self, source: &str, data: &[u8]) -> Result<(), S3Error> {
        let len = data.len() as u64;
        // Bytes that top up the part being filled, so that the copy starts a part.
        let fill = match self.buf.len() as u64 {
            0 => 0,
            n => self.part_size - n,
        };
        if len < fill + self.part_size || len - fill > MAX_PART {
            return self.write(data);
        }
        self.write(&data[..fill as usize])?;
        let rest = &data[fill as usize..];
        self.sha.update(rest);
        self.len += rest.len() as u64;
        let upload_id = self.upload_id()?;
        let number = self.parts.len() as u32 + 1;
        let crc = super::crc32c_text(crc32c::crc32c(rest));
        let etag = self.s3.upload_part_copy(
            &self.key,
            &upload_id,
            number,
            source,
            (fill, len - 1),
            &crc,
        )?;
        self.parts.push((number, etag, crc));
        self.copied += rest.len() as u64;
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
            sha256: std::mem::take(&mut self.sha).finalize().into(),
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
}
