//! The Store and Session side of the object-store backend (`remote.rs` has the layout):
//! a node reads a session it does not know when a request first names it, reads it again
//! for requests that report it, and completes it from the chunks the store lists
//! (whichever node took them).
//!
//! `complete` takes the session's lease (so two nodes asked at once write the object
//! once), then makes the object from the chunks in order — one multipart upload
//! ([`crate::s3::writer`]) whose parts are copied inside the store where a chunk holds a
//! whole part, else sent from here. The whole-file SHA-256 continues the hash this node
//! kept as the chunks came ([`super::remote_hash`]); only chunks it did not go over (taken
//! by another node, or arrived too far ahead) and bytes sent are read back. It makes it
//! visible with `If-None-Match: *` unless the upload asked to
//! overwrite, so of two uploads of one name exactly one wins. The object carries the
//! upload id in its metadata, so a complete repeated after a crash recognises its own
//! object. The chunk objects go after the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use uplink_proto::wire::{self, UploadCompleted, code};

use super::chunk_records::{links_of, newest, tiling};
use super::remote::{META_UPLOAD, Remote, s3_error};

/// Chunks read ahead while `complete` writes the object (each up to 32 MiB).
const PREFETCH: usize = 2;
use super::{Session, SessionState, Store, lock, now_secs};
use crate::error::ApiError;
use crate::s3::writer::{self, ObjectWriter};

impl Store {
    /// Session `id` as the object store has it, made known to this node; `None` when it
    /// does not exist (or expired).
    pub(super) fn load_remote(
        &self,
        remote: &Arc<Remote>,
        id: &str,
    ) -> Result<Option<Arc<Session>>, ApiError> {
        let Some(meta) = remote.load_meta(id)? else {
            return Ok(None);
        };
        let now = now_secs();
        if meta.expires_at <= now {
            return Ok(None);
        }
        let mut state = SessionState::default();
        match &meta.completed {
            Some(done) => state.received = done.size,
            None => {
                (state.chunks, state.links) = remote.chunks(id)?;
                state.received = state.chunks.values().map(|(l, _)| *l).sum();
            }
        }
        let nonce = hex::decode(&meta.nonce)
            .map_err(|e| ApiError::new(500, code::INTERNAL, format!("session {id}: {e}")))?;
        let tenant = match meta.tenant.as_str() {
            "" => crate::clients::DEFAULT_TENANT.to_string(),
            t => t.to_string(),
        };
        let session = Arc::new(Session {
            id: meta.upload_id.clone(),
            tenant,
            dir: std::path::PathBuf::new(),
            size: meta.size,
            deferred: meta.deferred_length,
            name: meta.name.clone(),
            nonce,
            part: std::sync::Mutex::new(None),
            last_used: AtomicU64::new(now),
            completing: std::sync::Mutex::new(()),
            state: std::sync::Mutex::new(state),
            partials: std::sync::Mutex::default(),
            meta: std::sync::Mutex::new(meta),
            remote: Some(Arc::clone(remote)),
            file_hash: std::sync::Mutex::default(),
            files_gone: Default::default(),
        });
        let mut idx = lock(&self.index);
        // Another request may have loaded it meanwhile: keep that one.
        let kept = idx
            .by_id
            .entry(session.id.clone())
            .or_insert_with(|| Arc::clone(&session))
            .clone();
        if let Some(k) = lock(&kept.meta).idempotency_key.clone() {
            idx.by_key.insert((kept.tenant.clone(), k), kept.id.clone());
        }
        Ok(Some(kept))
    }
}

impl Store {
    /// Session `id` of `tenant` as it is now, for a request that reports it (state, chunk
    /// pages): with an object store, other nodes may have stored chunks, completed or
    /// deleted it since this node last looked, so it is read again (blocking).
    pub fn get_fresh(&self, tenant: &str, id: &str) -> Result<Arc<Session>, ApiError> {
        let s = self.get(tenant, id)?;
        let Some(remote) = &s.remote else {
            return Ok(s);
        };
        let Some(meta) = remote.load_meta(id)? else {
            self.forget(id);
            return Err(ApiError::unknown_upload(id));
        };
        if meta.completed.is_none() {
            let (listed, links) = remote.chunks(id)?;
            let mut st = lock(&s.state);
            for (offset, chunk) in listed {
                if st.chunks.insert(offset, chunk).is_none() {
                    st.received += chunk.0;
                }
                match links.get(&offset) {
                    Some(link) => st.links.insert(offset, *link),
                    None => st.links.remove(&offset),
                };
            }
        }
        *lock(&s.meta) = meta;
        Ok(s)
    }

    /// Drops session `id` from this node's index (it is gone from the store).
    fn forget(&self, id: &str) {
        let mut idx = lock(&self.index);
        if let Some(s) = idx.by_id.remove(id)
            && let Some(k) = &lock(&s.meta).idempotency_key
        {
            idx.by_key.remove(&(s.tenant.clone(), k.clone()));
        }
    }
}

impl Session {
    /// `complete` on the object store (blocking): the chunks as S3 lists them now must
    /// tile the file and match the Merkle root; then the object is written from them.
    pub(super) fn complete_remote(
        &self,
        store: &Store,
        remote: &Arc<Remote>,
        claimed: [u8; 32],
        size: u64,
    ) -> Result<UploadCompleted, ApiError> {
        let _one = lock(&self.completing);
        if let Some(done) = self.completed_elsewhere(remote, &claimed)? {
            return Ok(done);
        }
        let overwrite = lock(&self.meta).overwrite;
        // Chunks another node stored count too; where records overlap (nodes that did not
        // see each other's), the newest way through the file is taken.
        let records = remote.records(&self.id)?;
        let listed = tiling(&records, size).unwrap_or_else(|| newest(&records));
        let links = links_of(&records, &listed);
        {
            let mut st = lock(&self.state);
            st.received = listed.values().map(|(l, _)| *l).sum();
            st.chunks = listed.clone();
            st.links = links.clone();
        }
        super::complete::check_tiling(&listed, size, &claimed)?;
        let lease = remote.take_lease(&self.id)?;
        // The node that held the lease before may just have finished.
        if let Some(done) = self.completed_elsewhere(remote, &claimed)? {
            return Ok(done);
        }
        tracing::info!(upload_id = %self.id, size, "writing the object from its chunks");
        let key = remote.object_key(&self.tenant, &self.name);
        let mut w = ObjectWriter::new(&remote.s3, &key, size, &[(META_UPLOAD, &self.id)]);
        // The hash this node kept as the chunks came: what it went over is not read again,
        // and parts copied in the store are not read at all.
        let resumed = lock(&self.file_hash).resume(listed.iter().map(|(o, (l, s))| (*o, *l, s)));
        let (covered, hashed_before) = (resumed.covered, resumed.frontier);
        let (linked, hashed_again) = (resumed.linked, resumed.hashed + (size - hashed_before));
        w.resume_hash(resumed.sha, hashed_before);
        let plan = writer::plan(listed.values().map(|(l, _)| *l), w.part_size());
        let read_back = AtomicU64::new(0);
        // The next chunks are read while this one is hashed and uploaded.
        std::thread::scope(|scope| -> Result<(), ApiError> {
            let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH);
            scope.spawn(|| {
                for (i, ((&offset, &(length, sha)), p)) in listed.iter().zip(&plan).enumerate() {
                    let key = remote.chunk_key(&self.id, offset, length, &sha, links.get(&offset));
                    let known = covered.get(i).map(|h| h.digest.crc32c);
                    let need = match known {
                        Some(_) => p.sent,
                        None => length,
                    };
                    read_back.fetch_add(need, Ordering::Relaxed);
                    let chunk = self
                        .read_chunk(remote, &key, offset, need, length)
                        .map(|c| (key, length, c, known));
                    let failed = chunk.is_err();
                    // The receiver went away (a write failed): stop reading.
                    if tx.send(chunk).is_err() || failed {
                        break;
                    }
                }
                drop(tx);
            });
            for chunk in rx {
                let (key, length, bytes, crc) = chunk?;
                w.write_stored(&key, length, &bytes, crc)
                    .map_err(|e| s3_error("writing the object", &e))?;
            }
            Ok(())
        })?;
        let (written, placed) = w.finish(!overwrite);
        match placed {
            Ok(()) => {}
            Err(e) if e.is_precondition_failed() => {
                // Ours, if an earlier attempt of this complete placed it before a crash
                // (the same upload's chunks: the same bytes, so the same size).
                let head = remote
                    .s3
                    .head(&key)
                    .map_err(|e| s3_error("looking up the object", &e))?;
                let ours = |h: &crate::s3::Head| {
                    h.metadata.get(META_UPLOAD) == Some(&self.id) && h.size == size
                };
                if !head.as_ref().is_some_and(ours) {
                    return Err(super::object_exists(&self.name));
                }
            }
            Err(e) => return Err(s3_error("writing the object", &e)),
        }
        tracing::info!(
            upload_id = %self.id,
            size,
            hashed_before,
            read_back = read_back.load(Ordering::Relaxed),
            copied = written.copied,
            "object written: hashed before complete, read back from the store, copied in the store"
        );
        if written.size != size {
            return Err(ApiError::new(
                500,
                code::INTERNAL,
                format!("the chunks held {} bytes, not {size}", written.size),
            ));
        }
        tracing::info!(
            upload_id = %self.id,
            size,
            linked,
            hashed_again,
            "whole-file SHA-256: bytes taken on chunk links, bytes hashed a second time"
        );
        let done = UploadCompleted {
            sha256: hex::encode(written.sha256),
            size,
            location: wire::object_path(&self.name),
        };
        // Not under the meta lock: the sweep and quota checks take it, and S3 may be slow.
        let next = lock(&self.meta).completed_with(&done, size, &claimed);
        remote.save_meta(&next)?;
        drop(lease);
        // Chunks still kept ahead (past a range another node took) are of no use now.
        *lock(&self.file_hash) = Default::default();
        *lock(&self.meta) = next.clone();
        if let Err(e) = remote.mark_closed(&next) {
            // It goes with the session's sweep; until then it counts against the quota.
            tracing::warn!(upload_id = %self.id, error = %e.message, "cannot unmark an upload");
        }
        store.note_stored(&self.tenant, size, 0);
        // The chunk objects go after the answer: one request each, thousands for a big
        // file. If this stops midway, the rest go when the session is swept.
        let (remote, id) = (Arc::clone(remote), self.id.clone());
        let cleanup = move || {
            let every = records
                .iter()
                .flat_map(|(o, at)| at.iter().map(move |(l, s, _, k)| (*o, *l, *s, *k)));
            for (offset, length, sha, link) in every {
                if let Err(e) =
                    remote
                        .s3
                        .delete(&remote.chunk_key(&id, offset, length, &sha, link.as_ref()))
                {
                    tracing::warn!(upload_id = %id, error = %e, "cannot delete a chunk object");
                    break;
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("chunk-cleanup".into())
            .spawn(cleanup)
        {
            tracing::warn!(upload_id = %self.id, error = %e, "chunk objects left for the sweep");
        }
        Ok(done)
    }

    /// Reads the session again (another node may have completed or deleted it): its
    /// answer if it is complete, `None` if not yet.
    fn completed_elsewhere(
        &self,
        remote: &Remote,
        claimed: &[u8; 32],
    ) -> Result<Option<UploadCompleted>, ApiError> {
        let Some(fresh) = remote.load_meta(&self.id)? else {
            return Err(ApiError::unknown_upload(&self.id));
        };
        let mut meta = lock(&self.meta);
        *meta = fresh;
        let Some(done) = &meta.completed else {
            return Ok(None);
        };
        match meta.merkle_root.as_deref() == Some(&hex::encode(claimed)) {
            true => Ok(Some(done.clone())),
            false => Err(ApiError::new(
                422,
                code::MERKLE_MISMATCH,
                "upload completed with another Merkle root",
            )),
        }
    }

    /// Memory `complete` holds while it writes the object from the store: the chunks read
    /// ahead, the one being written, and a part.
    pub fn assembly_bytes(&self) -> u64 {
        // Queued, one waiting to queue, one being written, one in the answer being read;
        // a part being uploaded and the next one filling.
        let size = self.bound();
        let chunk = size.min(wire::MAX_CHUNK_SIZE);
        chunk * (PREFETCH as u64 + 2) + 2 * crate::s3::writer::part_size(size).min(size)
    }

    /// A stored chunk's bytes, checked to be as long as its record says.
    /// The first `need` bytes of the chunk of `length` at `offset`, stored at `key`.
    fn read_chunk(
        &self,
        remote: &Remote,
        key: &str,
        offset: u64,
        need: u64,
        length: u64,
    ) -> Result<bytes::Bytes, ApiError> {
        let got = match need {
            0 => return Ok(bytes::Bytes::new()),
            n if n == length => remote.s3.get(key),
            n => remote.s3.get_range(key, 0, n - 1),
        };
        let bytes = got
            .map_err(|e| s3_error("reading a chunk back", &e))?
            .ok_or_else(|| {
                ApiError::new(
                    500,
                    code::INTERNAL,
                    format!("chunk {offset}+{length} vanished from the store"),
                )
            })?;
        if bytes.len() as u64 != need {
            return Err(ApiError::new(
                500,
                code::INTERNAL,
                format!(
                    "chunk {offset}+{length} reads back as {} bytes, not {need}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}
