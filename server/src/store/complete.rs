//! Sealing a session: the length it ends at (declared at create, or named by `complete`
//! for a deferred one), and `complete` itself — contiguity, the Merkle root, the
//! whole-file hash, then the object moved into place.

use std::path::Path;

use uplink_proto::wire::{self, UploadCompleted, code};

use super::{LOG, META, PART, Session, fsutil, lock, now_secs};
use crate::error::ApiError;

impl Session {
    /// The highest end a chunk may have: the declared size, or while the length is
    /// deferred the largest file the server takes.
    pub fn bound(&self) -> u64 {
        match self.deferred {
            true => wire::MAX_FILE_SIZE,
            false => self.size,
        }
    }

    /// The length `complete` seals: a deferred upload must name it; a declared one may
    /// repeat it.
    fn final_size(&self, named: Option<u64>) -> Result<u64, ApiError> {
        match (self.deferred, named) {
            (true, Some(n)) if (1..=wire::MAX_FILE_SIZE).contains(&n) => Ok(n),
            (true, Some(n)) => Err(ApiError::new(
                400,
                code::BAD_REQUEST,
                format!("size must be 1..={} bytes, got {n}", wire::MAX_FILE_SIZE),
            )),
            (true, None) => Err(ApiError::new(
                400,
                code::BAD_REQUEST,
                "this upload's length was deferred: complete must name its size",
            )),
            (false, Some(n)) if n != self.size => Err(ApiError::new(
                409,
                code::LENGTH_MISMATCH,
                format!(
                    "complete names {n} bytes; the upload declared {}",
                    self.size
                ),
            )),
            (false, _) => Ok(self.size),
        }
    }

    /// `POST /v1/uploads/{id}/complete` (blocking): checks contiguity and the Merkle root,
    /// then assembles the object. Idempotent: a repeat answers the same result.
    pub fn complete(
        &self,
        objects_dir: &Path,
        merkle_root: &str,
        size: Option<u64>,
    ) -> Result<UploadCompleted, ApiError> {
        let claimed = uplink_proto::parse_hex32(merkle_root).ok_or_else(|| {
            ApiError::new(400, code::BAD_REQUEST, "merkle_root must be 64 hex digits")
        })?;
        let size = self.final_size(size)?;
        let _one = lock(&self.completing);
        let part_path = self.dir.join(PART);
        {
            let meta = lock(&self.meta);
            if let Some(done) = &meta.completed {
                if meta.merkle_root.as_deref() == Some(&hex::encode(claimed)) {
                    // An earlier complete may have stopped before the object was in place.
                    if part_path.exists() {
                        fsutil::rename_durable(&part_path, &objects_dir.join(&self.name))
                            .map_err(|e| ApiError::io("moving the object into place", &e))?;
                    }
                    return Ok(done.clone());
                }
                return Err(ApiError::new(
                    422,
                    code::MERKLE_MISMATCH,
                    "upload completed with another Merkle root",
                ));
            }
        }
        // Checked under the state lock, which is released before the (long) hashing: once
        // every byte is stored, later PUTs can only be replays or conflicts.
        let st = lock(&self.state);
        let mut next = 0u64;
        for (o, (l, _)) in &st.chunks {
            if *o != next {
                break;
            }
            next = o + l;
        }
        if next < size {
            return Err(ApiError::new(
                409,
                code::INCOMPLETE,
                format!("bytes {next}.. of {size} are missing"),
            ));
        }
        // Only a deferred length can meet this: chunks past the length it seals.
        if next > size || st.chunks.len() != st.chunks.range(..size).count() {
            return Err(ApiError::new(
                409,
                code::LENGTH_MISMATCH,
                format!("chunks reach past the sealed length of {size} bytes"),
            ));
        }
        let root = uplink_proto::merkle::root_of(st.chunks.iter().map(|(o, (l, s))| (*o, *l, s)))
            .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?;
        if root != claimed {
            return Err(ApiError::new(
                422,
                code::MERKLE_MISMATCH,
                format!(
                    "Merkle root of the received chunks is {}",
                    hex::encode(root)
                ),
            ));
        }
        drop(st);
        let part = self.part()?;
        let sha = part
            .finish_hash(size)
            .map_err(|e| ApiError::io("hashing the assembled file", &e))?;
        let done = UploadCompleted {
            sha256: hex::encode(sha),
            size,
            location: wire::object_path(&self.name),
        };
        // Record completion first: a crash after this line finishes the rename on load.
        let mut meta = lock(&self.meta);
        let mut next_meta = meta.clone();
        next_meta.completed = Some(done.clone());
        next_meta.size = size;
        next_meta.merkle_root = Some(hex::encode(claimed));
        next_meta.completed_at = Some(now_secs());
        let json = serde_json::to_vec_pretty(&next_meta)
            .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?;
        fsutil::write_atomic(&self.dir, META, &json)
            .map_err(|e| ApiError::io("recording completion", &e))?;
        *meta = next_meta;
        drop(meta);
        drop(part);
        // Requests still holding the files only find their chunk already stored.
        self.close_files();
        fsutil::rename_durable(&part_path, &objects_dir.join(&self.name))
            .map_err(|e| ApiError::io("moving the object into place", &e))?;
        let _ = std::fs::remove_file(self.dir.join(LOG));
        Ok(done)
    }
}
