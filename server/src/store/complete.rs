//! Sealing a session: the length it ends at (declared at create, or named by `complete`
//! for a deferred one), and `complete` itself — contiguity, the Merkle root, the
//! whole-file hash, then the object moved into place.

use std::collections::BTreeMap;
use std::path::Path;

use uplink_proto::wire::{self, UploadCompleted, code};

use super::{LOG, META, PART, Session, Store, fsutil, lock, object_exists};
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
        store: &Store,
        merkle_root: &str,
        size: Option<u64>,
    ) -> Result<UploadCompleted, ApiError> {
        let dest = store.object_path(&self.tenant, &self.name);
        let claimed = uplink_proto::parse_hex32(merkle_root).ok_or_else(|| {
            ApiError::new(400, code::BAD_REQUEST, "merkle_root must be 64 hex digits")
        })?;
        let size = self.final_size(size)?;
        if let Some(remote) = &self.remote {
            return self.complete_remote(store, remote, claimed, size);
        }
        let _one = lock(&self.completing);
        let part_path = self.dir.join(PART);
        let overwrite = {
            let meta = lock(&self.meta);
            if let Some(done) = &meta.completed {
                if meta.merkle_root.as_deref() == Some(&hex::encode(claimed)) {
                    // An earlier complete may have stopped before the object was in place.
                    place_object(&part_path, &dest, meta.overwrite)?;
                    return Ok(done.clone());
                }
                return Err(ApiError::new(
                    422,
                    code::MERKLE_MISMATCH,
                    "upload completed with another Merkle root",
                ));
            }
            meta.overwrite
        };
        // Checked under the state lock, which is released before the (long) hashing: once
        // every byte is stored, later PUTs can only be replays or conflicts.
        let st = lock(&self.state);
        check_tiling(&st.chunks, size, &claimed)?;
        drop(st);
        let part = self.part()?;
        let (sha, tally) = part
            .finish_hash(size)
            .map_err(|e| ApiError::io("hashing the assembled file", &e))?;
        tracing::info!(
            upload_id = %self.id,
            size,
            linked = tally.linked,
            hashed_again = tally.hashed,
            "whole-file SHA-256: bytes taken on chunk links, bytes hashed a second time"
        );
        let done = UploadCompleted {
            sha256: hex::encode(sha),
            size,
            location: wire::object_path(&self.name),
        };
        // Without overwrite, the link that claims the name is the commit point: an object
        // made meanwhile under this name wins, and this upload is told so.
        if !overwrite {
            link_new(&part_path, &dest)?;
        }
        // Record completion first: a crash after this line finishes the rename on load.
        let mut meta = lock(&self.meta);
        let next_meta = meta.completed_with(&done, size, &claimed);
        let json = serde_json::to_vec_pretty(&next_meta)
            .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?;
        fsutil::write_atomic(&self.dir, META, &json)
            .map_err(|e| ApiError::io("recording completion", &e))?;
        *meta = next_meta;
        drop(meta);
        drop(part);
        // Requests still holding the files only find their chunk already stored.
        self.close_files();
        let replaced = place_object(&part_path, &dest, overwrite)?;
        store.note_stored(&self.tenant, size, replaced);
        let _ = std::fs::remove_file(self.dir.join(LOG));
        Ok(done)
    }
}

/// Puts a completed session's part file at `dest`, if it is not there already (a crash
/// or a failed answer can interrupt this; it is repeated on load and on the next
/// complete). Returns the size of the object it replaced.
pub(super) fn place_object(part: &Path, dest: &Path, overwrite: bool) -> Result<u64, ApiError> {
    if !part.exists() {
        return Ok(0);
    }
    match fsutil::place(part, dest, overwrite) {
        Ok(Some(replaced)) => Ok(replaced),
        Ok(None) => Err(name_taken(dest)),
        Err(e) => Err(ApiError::io("moving the object into place", &e)),
    }
}

/// Claims `dest` for `part` with a link, unless another file holds that name.
fn link_new(part: &Path, dest: &Path) -> Result<(), ApiError> {
    match fsutil::link_new(part, dest) {
        Ok(true) => Ok(()),
        Ok(false) => Err(name_taken(dest)),
        Err(e) => Err(ApiError::io("moving the object into place", &e)),
    }
}

fn name_taken(dest: &Path) -> ApiError {
    object_exists(&dest.file_name().unwrap_or_default().to_string_lossy())
}

/// The chunks must cover `[0, size)` exactly, end to end, and hash to the claimed Merkle
/// root.
pub(super) fn check_tiling(
    chunks: &BTreeMap<u64, (u64, [u8; 32])>,
    size: u64,
    claimed: &[u8; 32],
) -> Result<(), ApiError> {
    let mut next = 0u64;
    for (o, (l, _)) in chunks {
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
    if next > size || chunks.len() != chunks.range(..size).count() {
        return Err(ApiError::new(
            409,
            code::LENGTH_MISMATCH,
            format!("chunks reach past the sealed length of {size} bytes"),
        ));
    }
    let root = uplink_proto::merkle::root_of(chunks.iter().map(|(o, (l, s))| (*o, *l, s)))
        .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?;
    if root != *claimed {
        return Err(ApiError::new(
            422,
            code::MERKLE_MISMATCH,
            format!(
                "Merkle root of the received chunks is {}",
                hex::encode(root)
            ),
        ));
    }
    Ok(())
}
