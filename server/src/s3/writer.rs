//! Writing one object of any size: bytes in, in order, hashed as they pass; a single PUT
//! when they fit in one part, else a multipart upload.
//!
//! S3 takes at most 10,000 parts, each at least 5 MiB but the last. Parts here are a fixed
//! size chosen from the object's length ([`part_size`]): at least 8 MiB, and large enough
//! that 9,000 cover the largest file uplink takes, so the limit is never met.

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
}

/// What [`ObjectWriter::finish`] wrote.
pub struct Written {
    pub sha256: [u8; 32],
    pub size: u64,
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
            sha: Sha256::new(),
            len: 0,
            upload_id: None,
            parts: Vec::new(),
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

    fn upload_part(&mut self) -> Result<(), S3Error> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create_multipart(&self.key, &self.metadata())?;
                self.upload_id = Some(id.clone());
                id
            }
        };
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
