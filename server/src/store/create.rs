//! Creating an upload session: checks, the idempotency key (a repeated create gets the
//! upload it made before), the name (taken unless overwriting), the quota, then the
//! session's files — or its record in the object store.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use rand::RngCore;
use uplink_proto::wire::{self, CreateUpload, UploadCreated, code};

use super::{
    LOG, META, PART, Session, SessionMeta, SessionState, Store, fsutil, lock, now_secs,
    object_exists,
};
use crate::error::ApiError;
use crate::part::PartFile;

impl Store {
    /// `POST /v1/uploads` by `tenant`: a new session, or the one this idempotency key
    /// made before.
    pub fn create(
        &self,
        tenant: &str,
        key: Option<&str>,
        req: &CreateUpload,
    ) -> Result<UploadCreated, ApiError> {
        if req.deferred_length && req.size != 0 {
            return Err(ApiError::new(
                400,
                code::BAD_REQUEST,
                "a deferred-length upload declares size 0 (complete names the length)",
            ));
        }
        if !req.deferred_length && (req.size == 0 || req.size > wire::MAX_FILE_SIZE) {
            return Err(ApiError::new(
                400,
                code::BAD_REQUEST,
                format!(
                    "size must be 1..={} bytes, got {}",
                    wire::MAX_FILE_SIZE,
                    req.size
                ),
            ));
        }
        if !wire::is_valid_object_name(&req.name) {
            return Err(ApiError::new(
                400,
                code::BAD_NAME,
                format!("invalid object name {:?}", req.name),
            ));
        }
        if let (Some(remote), Some(key)) = (&self.remote, key) {
            // The key may have created an upload through another node.
            if let Some(id) = remote.key_owner(tenant, key)?
                && self.load_remote(remote, &id)?.is_none()
            {
                // Its upload is gone (deleted, expired): the key is free again.
                remote.release_key(tenant, key)?;
            }
        }
        if let Some(answer) = self.created_for_key(tenant, key, req) {
            return answer;
        }
        let exists = match &self.remote {
            Some(r) => r.object_exists(tenant, &req.name)?,
            None => self.object_path(tenant, &req.name).exists(),
        };
        if !req.overwrite && exists {
            return Err(object_exists(&req.name));
        }
        self.check_quota(tenant, req.size, true)?;
        if self.per_tenant && self.remote.is_none() {
            std::fs::create_dir_all(self.objects_dir(tenant))
                .map_err(|e| ApiError::io("making the tenant's objects dir", &e))?;
        }
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let now = now_secs();
        let meta = SessionMeta {
            upload_id: id.clone(),
            size: req.size,
            deferred_length: req.deferred_length,
            name: req.name.clone(),
            metadata: req.metadata.clone(),
            nonce: hex::encode(nonce),
            tenant: tenant.to_string(),
            overwrite: req.overwrite,
            idempotency_key: key.map(str::to_owned),
            created_at: now,
            expires_at: now + wire::SESSION_MAX_AGE_SECS,
            completed: None,
            merkle_root: None,
            completed_at: None,
        };
        if let Some(remote) = &self.remote {
            remote.save_meta(&meta)?;
            if let Some(key) = key
                && let Some(winner) = remote.claim_key(tenant, key, &id)?
            {
                // Another node's create with this key won: this one never existed.
                remote.delete_session(&id, None)?;
                self.load_remote(remote, &winner)?;
                return self
                    .created_for_key(tenant, Some(key), req)
                    .unwrap_or_else(|| {
                        Err(ApiError::new(
                            503,
                            code::UNAVAILABLE,
                            "the upload this key created was deleted meanwhile; try again",
                        )
                        .retry_in(1))
                    });
            }
            remote.mark_open(&meta)?;
            if let Err(e) = self.recheck_quota(tenant, req.size) {
                // Creates raced this one past the quota: it never existed.
                if let Err(d) = remote.delete_session(&id, Some(&meta)) {
                    tracing::warn!(upload_id = %id, error = %d.message, "cannot remove an upload refused by the quota");
                }
                return Err(e);
            }
        }
        let dir = self.sessions_dir.join(&id);
        let make = || -> std::io::Result<PartFile> {
            std::fs::create_dir(&dir)?;
            let part = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.join(PART))?;
            // Reserve the space now so a full disk is reported at create, not mid-upload.
            // (A deferred length has nothing to reserve: the file grows with its chunks.)
            let reserved = req.deferred_length
                || self.reserve_space
                    && match rustix::fs::fallocate(
                        &part,
                        rustix::fs::FallocateFlags::empty(),
                        0,
                        req.size,
                    ) {
                        Ok(()) => true,
                        Err(rustix::io::Errno::NOSPC) => {
                            return Err(rustix::io::Errno::NOSPC.into());
                        }
                        Err(_) => false,
                    };
            if !reserved {
                part.set_len(req.size)?;
            }
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(LOG))?;
            let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
            fsutil::write_atomic(&dir, META, &json)?;
            fsutil::sync_dir(&self.sessions_dir)?;
            PartFile::new(part, log)
        };
        let part = match &self.remote {
            Some(_) => None,
            None => match make() {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(ApiError::io("creating the upload session", &e));
                }
            },
        };
        let session = Arc::new(Session {
            id: id.clone(),
            tenant: tenant.to_string(),
            dir,
            size: req.size,
            deferred: req.deferred_length,
            name: req.name.clone(),
            nonce: nonce.to_vec(),
            part: Mutex::new(part),
            last_used: AtomicU64::new(now),
            completing: Mutex::new(()),
            state: Mutex::new(SessionState::default()),
            partials: Mutex::default(),
            meta: Mutex::new(meta.clone()),
            remote: self.remote.clone(),
            file_hash: Mutex::default(),
            files_gone: Default::default(),
        });
        // The files were made without the index lock (their fsyncs must not hold up every
        // other request); a create with the same key may have won meanwhile.
        let mut idx = lock(&self.index);
        let scoped = key.map(|k| (tenant.to_string(), k.to_string()));
        if scoped.as_ref().is_some_and(|k| idx.by_key.contains_key(k)) {
            drop(idx);
            session.close_files();
            session.remove_stored();
            return self.created_for_key(tenant, key, req).unwrap_or_else(|| {
                Err(ApiError::new(
                    503,
                    code::UNAVAILABLE,
                    "the upload this key created was deleted meanwhile; try again",
                ))
            });
        }
        // Creates running at once all passed the early check: the last word is given
        // here, under the index lock, so they cannot all be admitted.
        if self.remote.is_none()
            && let Err(e) = self.admit_counted(&idx, tenant, req.size)
        {
            drop(idx);
            session.close_files();
            session.remove_stored();
            return Err(e);
        }
        if let Some(k) = scoped {
            idx.by_key.insert(k, id.clone());
        }
        idx.by_id.insert(id, session);
        Ok(created(&meta))
    }

    /// The session an idempotency key already created, if any (or its mismatch).
    fn created_for_key(
        &self,
        tenant: &str,
        key: Option<&str>,
        req: &CreateUpload,
    ) -> Option<Result<UploadCreated, ApiError>> {
        let idx = lock(&self.index);
        let scoped = (tenant.to_string(), key?.to_string());
        let existing = idx.by_id.get(idx.by_key.get(&scoped)?)?;
        let meta = lock(&existing.meta);
        if meta.size != req.size
            || meta.deferred_length != req.deferred_length
            || meta.name != req.name
        {
            return Some(Err(ApiError::new(
                409,
                code::IDEMPOTENCY_MISMATCH,
                "this Idempotency-Key created an upload with another size or name",
            )));
        }
        Some(Ok(created(&meta)))
    }
}

/// The answer to a create. Every upload takes chained chunk digests (`sha256_chain`).
fn created(meta: &SessionMeta) -> UploadCreated {
    UploadCreated {
        upload_id: meta.upload_id.clone(),
        nonce: meta.nonce.clone(),
        expires_at: meta.expires_at,
        sha256_chain: true,
    }
}
