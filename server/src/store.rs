//! Upload sessions on disk.
//!
//! Layout under the data dir:
//! ```text
//! sessions/<upload_id>/meta.json   the session (atomic writes)
//! sessions/<upload_id>/data.part   the file being assembled, chunks written at their offsets
//! sessions/<upload_id>/chunks.log  one JSON line per verified chunk, appended after its data is synced
//! objects/<name>                   completed files (`--token-file`: one tenant)
//! objects/<tenant>/<name>          completed files (`--clients DIR`: one dir per tenant)
//! ```
//! Every session belongs to the tenant (client) that created it; to any other it does not
//! exist (404), and its object lands in its tenant's directory. An object is replaced only
//! when the upload asked to overwrite it.
//! A chunk is acknowledged only after its bytes and its log line are both on disk, so a
//! server restart (or power cut) never forgets an acknowledged chunk. A torn last log line
//! is cut off on load.
//!
//! Open files are a budget (a systemd service gets 1024): a session holds its part file and
//! log open only while requests use it. They open on first use, close when the session
//! completes or is deleted, and [`Store::sweep`] closes them after [`IDLE_CLOSE_SECS`]
//! without a request. The sweep also removes expired sessions and, after the retention
//! time, completed ones, while the server runs.
//!
//! With `--store s3://…` the sessions and objects live in an object store instead
//! (`store/remote.rs`), so several nodes serve the same uploads.
//!
//! This file keeps the sessions (open, load, get, delete, state); `store/create.rs` makes
//! them, `store/chunks.rs` receives chunks into them (reserve, verify, write),
//! `store/complete.rs` seals them, `store/sweep.rs` removes the finished ones.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uplink_proto::chain::FileState;
use uplink_proto::wire::{
    ChunkPage, ChunkPageQuery, ChunkRecord, UploadCompleted, UploadState, code,
};

use crate::chunk_log;
use crate::error::ApiError;
use crate::fsutil;
use crate::part::PartFile;

const META: &str = "meta.json";
const PART: &str = "data.part";
const LOG: &str = "chunks.log";

/// The name prefix of an object PUT's temp file, beside the objects it becomes.
pub const OBJECT_TEMP_PREFIX: &str = ".upload-";

/// A session's files close after this long without a request.
pub const IDLE_CLOSE_SECS: u64 = 30;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionMeta {
    upload_id: String,
    size: u64,
    #[serde(default)]
    deferred_length: bool,
    name: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    nonce: String,
    /// The client that created it; empty in sessions from before tenants (the default).
    #[serde(default)]
    tenant: String,
    /// Replace an existing object of this name at complete.
    #[serde(default)]
    overwrite: bool,
    idempotency_key: Option<String>,
    created_at: u64,
    expires_at: u64,
    #[serde(default)]
    completed: Option<UploadCompleted>,
    #[serde(default)]
    merkle_root: Option<String>,
    /// When `complete` succeeded (retention counts from here).
    #[serde(default)]
    completed_at: Option<u64>,
}

impl SessionMeta {
    /// Whether the session is to be removed at `now`: expired, or completed more than
    /// `retention_secs` ago.
    fn outlived(&self, now: u64, retention_secs: u64) -> bool {
        let done_at = self
            .completed
            .as_ref()
            .map(|_| self.completed_at.unwrap_or(self.created_at));
        self.expires_at <= now || done_at.is_some_and(|t| t.saturating_add(retention_secs) <= now)
    }

    /// This session completed as `done` (sealed at `size`, with Merkle root `root`), now.
    fn completed_with(&self, done: &UploadCompleted, size: u64, root: &[u8; 32]) -> SessionMeta {
        SessionMeta {
            completed: Some(done.clone()),
            size,
            merkle_root: Some(hex::encode(root)),
            completed_at: Some(now_secs()),
            ..self.clone()
        }
    }
}

/// All sessions of one data dir.
pub struct Store {
    sessions_dir: PathBuf,
    objects_dir: PathBuf,
    /// Each tenant's objects in `objects/<tenant>/` (else all in `objects/`).
    per_tenant: bool,
    index: Mutex<Index>,
    /// Reserve each upload's size at create (fallocate), so a full disk shows there.
    reserve_space: bool,
    quota: Quota,
    /// Tenants whose quota differs from [`Self::quota`] (`<id>.quota` in the clients dir).
    tenant_quotas: std::sync::RwLock<HashMap<String, Quota>>,
    /// Bytes of objects each tenant stores, counted on first need and kept up to date.
    /// With an object store: (bytes, when counted), counted again after a while since
    /// other nodes add objects too.
    stored: Mutex<HashMap<String, (u64, u64)>>,
    /// Sessions and objects in an object store instead of the data dir (`--store s3://`).
    remote: Option<Arc<Remote>>,
    /// When [`Store::sweep`] last looked through the object store's sessions.
    remote_swept: Mutex<u64>,
}

/// What each tenant may hold (`None`: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quota {
    /// Objects stored plus the declared sizes of uploads open.
    pub bytes: Option<u64>,
    /// Uploads open (created, not completed).
    pub sessions: Option<usize>,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<Session>>,
    /// (tenant, idempotency key) -> upload id.
    by_key: HashMap<(String, String), String>,
}

/// One upload session.
pub struct Session {
    pub id: String,
    /// The client it belongs to.
    pub tenant: String,
    dir: PathBuf,
    /// The declared length; 0 when `deferred` (complete names it).
    size: u64,
    deferred: bool,
    name: String,
    nonce: Vec<u8>,
    /// The part file and log while open; `None` when closed (idle, completed, deleted).
    /// Requests hold an `Arc`, so closing never pulls a file from under a write.
    part: Mutex<Option<Arc<PartFile>>>,
    /// Unix seconds of the last request that used the files.
    last_used: AtomicU64,
    /// Serialises `complete` calls.
    completing: Mutex<()>,
    state: Mutex<SessionState>,
    meta: Mutex<SessionMeta>,
    /// Chunk bodies being received, and those cut off, for resumed PUTs.
    partials: Mutex<partials::Partials>,
    /// Where the session lives when not in the data dir (then `dir` and `part` are unused).
    remote: Option<Arc<Remote>>,
    /// In the object store: the whole-file hash as chunks came to this node.
    file_hash: Mutex<remote_hash::FileHash>,
    /// Its files were closed for good (deleted, swept, completed): never opened again, so
    /// a request still in flight cannot make a file in a directory being removed.
    files_gone: AtomicBool,
}

#[derive(Default)]
struct SessionState {
    /// offset -> (length, sha256) of verified, durable chunks.
    chunks: BTreeMap<u64, (u64, [u8; 32])>,
    /// offset -> the file-hash states around the chunk held there, if it came as a link
    /// of the file's hash (see [`uplink_proto::chain`]).
    links: BTreeMap<u64, Link>,
    /// offset -> chunks being received right now.
    reserved: BTreeMap<u64, InFlight>,
    /// Numbers reservations, so a superseded one knows it is no longer the holder.
    next_reservation: u64,
    received: u64,
    chunk_puts: u64,
    duplicate_puts: u64,
}

/// A chunk that came as a link of the file's hash: the state at its first byte, as the
/// client named it, and the state after it, as this server computed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub from: FileState,
    pub to: FileState,
}

/// The byte ranges the chunks cover, adjacent ones merged.
fn coalesced(chunks: &BTreeMap<u64, (u64, [u8; 32])>) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for (&off, &(len, _)) in chunks {
        match out.last_mut() {
            Some(last) if last[1] == off => last[1] = off + len,
            _ => out.push([off, off + len]),
        }
    }
    out
}

impl Store {
    /// Whether create reserves each upload's whole size on disk (the default).
    pub fn reserving_space(mut self, reserve: bool) -> Store {
        self.reserve_space = reserve;
        self
    }

    /// Per-tenant limits.
    pub fn with_quota(mut self, quota: Quota) -> Store {
        self.quota = quota;
        self
    }

    /// Opens (or creates) the store and loads every live session. With `per_tenant`,
    /// each tenant's objects go to `objects/<tenant>/`.
    pub fn open(data_dir: &Path, per_tenant: bool) -> std::io::Result<Store> {
        let sessions_dir = data_dir.join("sessions");
        let objects_dir = data_dir.join("objects");
        std::fs::create_dir_all(&sessions_dir)?;
        std::fs::create_dir_all(&objects_dir)?;
        let store = Store {
            sessions_dir,
            objects_dir,
            per_tenant,
            index: Mutex::new(Index::default()),
            reserve_space: true,
            quota: Quota::default(),
            tenant_quotas: std::sync::RwLock::default(),
            stored: Mutex::default(),
            remote: None,
            remote_swept: Mutex::new(0),
        };
        // At open no PUT is in flight: every object PUT temp file left is one a crash or a
        // kill cut off.
        crate::fsutil::remove_temp_files(&store.objects_dir, OBJECT_TEMP_PREFIX)?;
        let now = now_secs();
        for entry in std::fs::read_dir(&store.sessions_dir)? {
            let dir = entry?.path();
            match store.load_session(&dir, now) {
                Ok(Some(s)) => {
                    let mut idx = lock(&store.index);
                    if let Some(k) = lock(&s.meta).idempotency_key.clone() {
                        idx.by_key.insert((s.tenant.clone(), k), s.id.clone());
                    }
                    idx.by_id.insert(s.id.clone(), s);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "skipping unreadable session")
                }
            }
        }
        Ok(store)
    }

    /// A store whose sessions and objects live in an object store (`remote`); the data dir
    /// only holds whole-object PUTs while they arrive. Sessions are read from the object
    /// store when a request first names them, so nothing is loaded here.
    pub fn open_remote(
        data_dir: &Path,
        per_tenant: bool,
        remote: Remote,
    ) -> std::io::Result<Store> {
        let mut store = Store::open(&data_dir.join("spool"), per_tenant)?;
        store.remote = Some(Arc::new(remote));
        Ok(store)
    }

    /// The object store, if sessions live there.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Where `tenant`'s objects live (made on first use).
    pub fn objects_dir(&self, tenant: &str) -> PathBuf {
        match self.per_tenant {
            true => self.objects_dir.join(tenant),
            false => self.objects_dir.clone(),
        }
    }

    /// The path of `tenant`'s object `name`.
    pub fn object_path(&self, tenant: &str, name: &str) -> PathBuf {
        self.objects_dir(tenant).join(name)
    }

    pub fn session_count(&self) -> usize {
        lock(&self.index).by_id.len()
    }

    fn load_session(&self, dir: &Path, now: u64) -> std::io::Result<Option<Arc<Session>>> {
        let bytes = match std::fs::read(dir.join(META)) {
            Ok(b) => b,
            // A session dir without meta was never acknowledged to anyone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::remove_dir_all(dir)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta: SessionMeta = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if meta.expires_at <= now {
            tracing::info!(upload_id = %meta.upload_id, "removing expired session");
            std::fs::remove_dir_all(dir)?;
            return Ok(None);
        }
        let nonce = hex::decode(&meta.nonce)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let tenant = match meta.tenant.as_str() {
            "" => crate::clients::DEFAULT_TENANT.to_string(),
            t => t.to_string(),
        };
        let mut state = SessionState::default();
        if let Some(done) = &meta.completed {
            // Completed: finish placing the object if a crash interrupted it.
            complete::place_object(
                &dir.join(PART),
                &self.object_path(&tenant, &meta.name),
                meta.overwrite,
            )
            .map_err(|e| std::io::Error::other(e.message))?;
            state.received = done.size;
        } else {
            let chunk_log::Logged {
                chunks,
                links,
                good_len,
            } = chunk_log::read(&dir.join(LOG))?;
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(LOG))?;
            if log.metadata()?.len() != good_len {
                tracing::warn!(upload_id = %meta.upload_id, "cutting a torn line off the chunk log");
                log.set_len(good_len)?;
                log.sync_all()?;
            }
            state.received = chunks.values().map(|(l, _)| *l).sum();
            state.chunks = chunks;
            state.links = links;
            // The files open again when a request needs them.
        }
        Ok(Some(Arc::new(Session {
            id: meta.upload_id.clone(),
            tenant,
            dir: dir.to_path_buf(),
            size: meta.size,
            deferred: meta.deferred_length,
            name: meta.name.clone(),
            nonce,
            part: Mutex::new(None),
            last_used: AtomicU64::new(now),
            completing: Mutex::new(()),
            state: Mutex::new(state),
            partials: Mutex::default(),
            meta: Mutex::new(meta),
            remote: None,
            file_hash: Mutex::default(),
            files_gone: AtomicBool::new(false),
        })))
    }

    /// The live session `id` of `tenant` (another tenant's is unknown, not forbidden:
    /// its existence is not told).
    pub fn get(&self, tenant: &str, id: &str) -> Result<Arc<Session>, ApiError> {
        let known = lock(&self.index).by_id.get(id).cloned();
        let s = match (known, &self.remote) {
            (Some(s), _) => Some(s),
            // Another node may have created it.
            (None, Some(remote)) => blocking_here(|| self.load_remote(remote, id))?,
            (None, None) => None,
        }
        .filter(|s| s.tenant == tenant)
        .ok_or_else(|| ApiError::unknown_upload(id))?;
        // In use: an object store's session is not forgotten while requests come.
        s.last_used.store(now_secs(), Ordering::Relaxed);
        if lock(&s.meta).expires_at <= now_secs() {
            return Err(ApiError::new(
                410,
                code::EXPIRED,
                format!("upload {id} expired"),
            ));
        }
        Ok(s)
    }

    /// `DELETE /v1/uploads/{id}`: forget the session and free its space. A completed
    /// object stays.
    pub fn delete(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        if let Some(remote) = &self.remote
            && !lock(&self.index).by_id.contains_key(id)
        {
            // Another node may have created it.
            self.load_remote(remote, id)?;
        }
        let mut idx = lock(&self.index);
        if idx.by_id.get(id).is_none_or(|s| s.tenant != tenant) {
            return Err(ApiError::unknown_upload(id));
        }
        let s = idx
            .by_id
            .remove(id)
            .ok_or_else(|| ApiError::unknown_upload(id))?;
        if let Some(k) = &lock(&s.meta).idempotency_key {
            idx.by_key.remove(&(s.tenant.clone(), k.clone()));
        }
        drop(idx);
        s.close_files();
        if let Some(remote) = &s.remote {
            let meta = lock(&s.meta).clone();
            return remote.delete_session(&s.id, Some(&meta));
        }
        std::fs::remove_dir_all(&s.dir).map_err(|e| ApiError::io("deleting the session", &e))?;
        fsutil::sync_dir(&self.sessions_dir).map_err(|e| ApiError::io("deleting the session", &e))
    }

    /// Sessions whose part file and log are open right now.
    #[cfg(test)]
    pub fn open_sessions(&self) -> usize {
        lock(&self.index)
            .by_id
            .values()
            .filter(|s| lock(&s.part).is_some())
            .count()
    }
}

fn object_exists(name: &str) -> ApiError {
    ApiError::new(
        409,
        code::OBJECT_EXISTS,
        format!("an object named {name:?} exists; ask to overwrite it to replace it"),
    )
}

impl Session {
    /// The open part file, opening it if the session is idle-closed. A completed session
    /// has none.
    fn part(&self) -> Result<Arc<PartFile>, ApiError> {
        let mut slot = lock(&self.part);
        self.last_used.store(now_secs(), Ordering::Relaxed);
        if let Some(p) = &*slot {
            return Ok(Arc::clone(p));
        }
        if self.files_gone.load(Ordering::SeqCst) && lock(&self.meta).completed.is_none() {
            return Err(ApiError::unknown_upload(&self.id));
        }
        if lock(&self.meta).completed.is_some() {
            return Err(ApiError::new(
                409,
                code::ALREADY_COMPLETED,
                "upload already completed",
            ));
        }
        let open = || -> std::io::Result<PartFile> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(PART))?;
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(LOG))?;
            PartFile::new(file, log)
        };
        let p = Arc::new(open().map_err(|e| ApiError::io("opening the upload's files", &e))?);
        *slot = Some(Arc::clone(&p));
        Ok(p)
    }

    /// Removes what the session stored (its dir, or its keys in the object store).
    fn remove_stored(&self) {
        let removed = match &self.remote {
            Some(remote) => {
                let meta = lock(&self.meta).clone();
                remote
                    .delete_session(&self.id, Some(&meta))
                    .map_err(|e| e.message)
            }
            None => std::fs::remove_dir_all(&self.dir).map_err(|e| e.to_string()),
        };
        if let Err(e) = removed {
            tracing::warn!(upload_id = %self.id, error = %e, "cannot remove a finished session");
        }
    }

    /// Drops the session's handle on its files; they close when the last request using
    /// them ends.
    /// Closes the files for good (the session is going: deleted, swept, completed).
    fn close_files(&self) {
        let mut slot = lock(&self.part);
        self.files_gone.store(true, Ordering::SeqCst);
        slot.take();
    }

    /// Closes the files if no request has used them for [`IDLE_CLOSE_SECS`] and none
    /// holds them now.
    fn close_if_idle(&self, now: u64) {
        let mut slot = lock(&self.part);
        let idle = self.last_used.load(Ordering::Relaxed) + IDLE_CLOSE_SECS <= now;
        if idle && slot.as_ref().is_some_and(|p| Arc::strong_count(p) == 1) {
            *slot = None;
        }
    }

    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// `GET /v1/uploads/{id}`
    pub fn state(&self) -> UploadState {
        let meta = lock(&self.meta).clone();
        let st = lock(&self.state);
        UploadState {
            upload_id: self.id.clone(),
            size: meta.completed.as_ref().map_or(self.size, |c| c.size),
            deferred_length: self.deferred,
            name: self.name.clone(),
            nonce: meta.nonce,
            expires_at: meta.expires_at,
            ranges: coalesced(&st.chunks),
            chunk_count: st.chunks.len() as u64,
            received_bytes: st.received,
            completed: meta.completed,
            chunk_puts: st.chunk_puts,
            duplicate_puts: st.duplicate_puts,
            // Every upload takes links: the data dir keeps their states in the chunk log,
            // the object store in the chunk objects' names.
            sha256_chain: true,
        }
    }

    /// `GET /v1/uploads/{id}/chunks`: records at and after `q.from`, at most `q.limit()`.
    pub fn chunk_page(&self, q: &ChunkPageQuery) -> ChunkPage {
        let st = lock(&self.state);
        let mut it = st.chunks.range(q.from..);
        let chunks: Vec<ChunkRecord> = it
            .by_ref()
            .take(q.limit())
            .map(|(o, (l, s))| ChunkRecord {
                offset: *o,
                length: *l,
                sha256: hex::encode(s),
                sha256_from: st.links.get(o).map(|link| link.from.encode()),
            })
            .collect();
        ChunkPage {
            chunks,
            next_from: it.next().map(|(o, _)| *o),
        }
    }
}

mod chunk_records;
mod chunks;
mod complete;
mod create;
mod partials;
mod quota;
mod remote;
mod remote_hash;
mod remote_sessions;
mod sweep;

pub use remote::{ABANDONED_MULTIPART_SECS, LEASE_SECS, Remote};
pub use remote_hash::set_budget as set_hash_ahead_budget;

/// Runs `f`, which blocks on the object store, from wherever `get` was called: on a
/// runtime worker it tells the runtime first, so other tasks move to other workers.
fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

use chunks::InFlight;
pub use chunks::{BeginChunk, Reservation};
pub use partials::{Receipt, TakenOver};

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod tenant_tests;
#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
