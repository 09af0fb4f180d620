//! Sessions kept in an S3-compatible object store (`--store s3://bucket/prefix`), so that
//! several `uplink-server` nodes behind one name serve the same uploads: the layout, and
//! the S3 calls the store makes (`remote_sessions.rs` is the Store and Session side).
//!
//! Layout under the prefix:
//! ```text
//! sessions/<id>/meta.json                          the session (as on disk)
//! sessions/<id>/chunks/<offset:020>.<len>.<digest>[.<from>.<to>]
//!                                                  one verified chunk: its bytes, its record
//!                                                  in its name (a link's states too)
//! sessions/<id>/completing                         the completion lease (until when, Unix seconds; its holder)
//! objects/<name> | objects/<tenant>/<name>         completed files
//! open/<tenant>/<id>.<size>                        an upload open (for quotas across nodes)
//! keys/<hash>                                      the upload an idempotency key created
//! ```
//! A chunk is acknowledged once its PUT returned: S3 made it durable, and its key *is* the
//! chunk log, so whichever node the client reaches next lists the same chunks. Nodes that
//! did not see each other's chunks can store overlapping ones; `complete` takes the newest
//! way through the file (`chunk_records.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use rand::RngCore;
use uplink_proto::wire::code;

use super::chunk_records::{Chunks, Links, Records, links_of, newest, parse_chunk_name};
use super::{Link, SessionMeta, now_secs};
use crate::error::ApiError;
use crate::s3::writer::ObjectWriter;
use crate::s3::{Precondition, S3, S3Error};

/// Object metadata naming the upload that made an object.
pub(super) const META_UPLOAD: &str = "uplink-upload";

/// The S3 side of a store.
pub struct Remote {
    pub s3: S3,
    prefix: String,
    per_tenant: bool,
    /// Multipart uploads under objects/ older than this (seconds) are aborted by the sweep.
    abandoned_multipart_secs: u64,
    /// upload id -> when this node's sweep first listed it (Unix seconds).
    multipart_seen: Mutex<HashMap<String, u64>>,
}

/// A failed S3 call as the client sees it: retryable (503) when the store may recover,
/// else a 500 naming what went wrong (a missing bucket, refused credentials).
pub fn s3_error(what: &str, e: &S3Error) -> ApiError {
    match e.is_transient() {
        true => ApiError::new(503, code::UNAVAILABLE, format!("{what}: {e}")).retry_in(1),
        false => ApiError::new(500, code::INTERNAL, format!("{what}: {e}")),
    }
}

impl Remote {
    pub fn new(s3: S3, prefix: &str, per_tenant: bool) -> Remote {
        Remote {
            s3,
            prefix: prefix.trim_matches('/').to_string(),
            per_tenant,
            abandoned_multipart_secs: ABANDONED_MULTIPART_SECS,
            multipart_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Multipart uploads older than `secs` are taken as abandoned (their complete's node
    /// died) and aborted by the sweep.
    pub fn abandoning_multiparts_after(mut self, secs: u64) -> Remote {
        self.abandoned_multipart_secs = secs;
        self
    }

    pub(super) fn key(&self, rest: &str) -> String {
        match self.prefix.is_empty() {
            true => rest.to_string(),
            false => format!("{}/{rest}", self.prefix),
        }
    }

    fn meta_key(&self, id: &str) -> String {
        self.key(&format!("sessions/{id}/meta.json"))
    }

    fn chunks_prefix(&self, id: &str) -> String {
        self.key(&format!("sessions/{id}/chunks/"))
    }

    /// `<offset:020>.<len>.<digest>`, and for a link `.<from>.<to>` (the file-hash states,
    /// as `X-Chunk-SHA256-From` writes them): a listing tells all a resume or `complete`
    /// needs, with no request per chunk.
    pub(super) fn chunk_key(
        &self,
        id: &str,
        offset: u64,
        length: u64,
        sha256: &[u8; 32],
        link: Option<&Link>,
    ) -> String {
        let states = link.map_or(String::new(), |l| {
            format!(".{}.{}", l.from.encode(), l.to.encode())
        });
        format!(
            "{}{offset:020}.{length}.{}{states}",
            self.chunks_prefix(id),
            hex::encode(sha256)
        )
    }

    /// The prefix of `tenant`'s objects.
    pub fn objects_prefix(&self, tenant: &str) -> String {
        match self.per_tenant {
            true => self.key(&format!("objects/{tenant}/")),
            false => self.key("objects/"),
        }
    }

    /// The key of `tenant`'s object `name`.
    pub fn object_key(&self, tenant: &str, name: &str) -> String {
        format!("{}{name}", self.objects_prefix(tenant))
    }

    /// Checks the bucket answers with these credentials (at start, so a wrong setting
    /// stops the server rather than every upload).
    pub fn probe(&self) -> Result<(), String> {
        self.s3
            .check_bucket(&self.key("sessions/"))
            .map_err(|e| format!("bucket {}: {e}", self.s3.bucket()))
    }

    pub(super) fn save_meta(&self, meta: &SessionMeta) -> Result<(), ApiError> {
        let json = serde_json::to_vec_pretty(meta)
            .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?;
        self.s3
            .put(
                &self.meta_key(&meta.upload_id),
                vec![Bytes::from(json)],
                None,
                false,
                &[],
            )
            .map_err(|e| s3_error("recording the session", &e))
    }

    pub(super) fn load_meta(&self, id: &str) -> Result<Option<SessionMeta>, ApiError> {
        // Ids are 32 hex digits; anything else cannot name a session (nor a key elsewhere).
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(bytes) = self
            .s3
            .get(&self.meta_key(id))
            .map_err(|e| s3_error("reading the session", &e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ApiError::new(500, code::INTERNAL, format!("session {id} unreadable: {e}"))
        })
    }

    /// Every chunk record stored for session `id`, by offset; at one offset the newest
    /// first. Records can overlap: nodes that did not see each other's chunks took
    /// differently cut ones (a restarted daemon chose other sizes).
    pub(super) fn records(&self, id: &str) -> Result<Records, ApiError> {
        let prefix = self.chunks_prefix(id);
        let listed = self
            .s3
            .list(&prefix)
            .map_err(|e| s3_error("listing the upload's chunks", &e))?;
        let mut out: Records = BTreeMap::new();
        for item in listed {
            let Some((offset, length, sha, link)) =
                item.key.strip_prefix(&prefix).and_then(parse_chunk_name)
            else {
                tracing::warn!(key = %item.key, "ignoring an unknown key among the chunks");
                continue;
            };
            out.entry(offset)
                .or_default()
                .push((length, sha, item.last_modified, link));
        }
        for at in out.values_mut() {
            at.sort_by(|a, b| b.2.cmp(&a.2));
        }
        Ok(out)
    }

    /// The chunks stored for session `id`, the newest record at each offset, and the
    /// links among them.
    pub(super) fn chunks(&self, id: &str) -> Result<(Chunks, Links), ApiError> {
        let records = self.records(id)?;
        let chunks = newest(&records);
        let links = links_of(&records, &chunks);
        Ok((chunks, links))
    }

    /// Stores a verified chunk; it is durable when this returns.
    pub(super) fn put_chunk(
        &self,
        id: &str,
        offset: u64,
        length: u64,
        sha256: &[u8; 32],
        link: Option<&Link>,
        parts: &[Bytes],
    ) -> Result<(), ApiError> {
        let key = self.chunk_key(id, offset, length, sha256, link);
        // A link's digest is not its bytes' SHA-256: the body goes unsigned, its CRC32C
        // checked by the store.
        let payload_sha = link.is_none().then_some(*sha256);
        self.s3
            .put(&key, parts.to_vec(), payload_sha, false, &[])
            .map_err(|e| s3_error("storing the chunk", &e))
    }

    /// Removes a chunk's record (replaced by another at its offset).
    pub(super) fn delete_chunk(
        &self,
        id: &str,
        offset: u64,
        length: u64,
        sha256: &[u8; 32],
        link: Option<&Link>,
    ) -> Result<(), ApiError> {
        self.s3
            .delete(&self.chunk_key(id, offset, length, sha256, link))
            .map_err(|e| s3_error("replacing the chunk", &e))
    }

    /// The key naming which upload an idempotency key created (a hash: keys are the
    /// client's text).
    fn idempotency_object(&self, tenant: &str, key: &str) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("{tenant}\n{key}").as_bytes());
        self.key(&format!("keys/{}", hex::encode(h)))
    }

    /// The upload `tenant`'s idempotency key created, on any node.
    pub(super) fn key_owner(&self, tenant: &str, key: &str) -> Result<Option<String>, ApiError> {
        let owner = self
            .s3
            .get(&self.idempotency_object(tenant, key))
            .map_err(|e| s3_error("looking up the idempotency key", &e))?;
        Ok(owner.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Claims an idempotency key for upload `id`; `Some(other)` when another node's create
    /// claimed it first.
    pub(super) fn claim_key(
        &self,
        tenant: &str,
        key: &str,
        id: &str,
    ) -> Result<Option<String>, ApiError> {
        let object = self.idempotency_object(tenant, key);
        let body = vec![Bytes::from(id.to_string())];
        match self.s3.put(&object, body, None, true, &[]) {
            Ok(()) => Ok(None),
            Err(e) if e.is_precondition_failed() => match self.key_owner(tenant, key)? {
                Some(owner) => Ok(Some(owner)),
                // Released between the two calls: the client tries again.
                None => Err(ApiError::new(
                    503,
                    code::UNAVAILABLE,
                    "this Idempotency-Key is being released; try again",
                )
                .retry_in(1)),
            },
            Err(e) => Err(s3_error("recording the idempotency key", &e)),
        }
    }

    /// Forgets which upload an idempotency key created.
    pub(super) fn release_key(&self, tenant: &str, key: &str) -> Result<(), ApiError> {
        self.s3
            .delete(&self.idempotency_object(tenant, key))
            .map_err(|e| s3_error("deleting the idempotency key", &e))
    }

    /// The marker of an upload open (created, not completed): `open/<tenant>/<id>.<size>`,
    /// so one listing counts a tenant's open uploads and their bytes across nodes.
    fn open_marker(&self, meta: &SessionMeta) -> String {
        self.key(&format!(
            "open/{}/{}.{}",
            meta.tenant, meta.upload_id, meta.size
        ))
    }

    pub(super) fn mark_open(&self, meta: &SessionMeta) -> Result<(), ApiError> {
        self.s3
            .put(&self.open_marker(meta), Vec::new(), None, false, &[])
            .map_err(|e| s3_error("recording the upload as open", &e))
    }

    pub(super) fn mark_closed(&self, meta: &SessionMeta) -> Result<(), ApiError> {
        self.s3
            .delete(&self.open_marker(meta))
            .map_err(|e| s3_error("recording the upload as closed", &e))
    }

    /// `tenant`'s uploads open on any node: how many, and their declared bytes.
    pub(super) fn open_uploads(&self, tenant: &str) -> Result<(usize, u64), ApiError> {
        let prefix = self.key(&format!("open/{tenant}/"));
        let listed = self
            .s3
            .list(&prefix)
            .map_err(|e| s3_error("counting the tenant's open uploads", &e))?;
        Ok(listed
            .iter()
            .filter_map(|i| i.key.rsplit_once('.')?.1.parse::<u64>().ok())
            .fold((0, 0), |(n, b), size| (n + 1, b + size)))
    }

    /// Takes the right to write session `id`'s object: a lease object made with
    /// `If-None-Match`, so that of nodes asked to complete at once (a client's complete
    /// timed out and was sent again elsewhere) one writes and the others answer 503 until
    /// it is done. A lease outlives a node that died holding it by at most [`LEASE_SECS`];
    /// then one node takes it over by replacing it with `If-Match` on the ETag it read
    /// (of nodes doing so at once, one succeeds). The lease names its holder's token, so a
    /// write whose answer was lost is still recognised as ours.
    pub(super) fn take_lease(&self, id: &str) -> Result<Lease<'_>, ApiError> {
        let key = self.key(&format!("sessions/{id}/completing"));
        let busy = || {
            ApiError::new(
                503,
                code::UNAVAILABLE,
                "another server is completing this upload; ask again shortly",
            )
            .retry_in(5)
        };
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let body = || vec![Bytes::from(format!("{} {token}", now_secs() + LEASE_SECS))];
        let held = |etag: String| Lease {
            remote: self,
            key: key.clone(),
            token: token.clone(),
            etag,
        };
        match self.s3.put_if(&key, body(), Precondition::Absent) {
            Ok(etag) => return Ok(held(etag)),
            // Held by someone, or our write's answer was lost: the lease tells.
            Err(e) if e.is_precondition_failed() || e.status.is_none() => {}
            Err(e) => return Err(s3_error("taking the completion lease", &e)),
        }
        let Some((lease, etag)) = self
            .s3
            .get_tagged(&key)
            .map_err(|e| s3_error("reading the completion lease", &e))?
        else {
            // Given back between the two calls: the client asks again.
            return Err(busy());
        };
        let (until, holder) = parse_lease(&lease);
        if holder == Some(token.as_str()) {
            return Ok(held(etag));
        }
        if until.is_some_and(|t| t > now_secs()) {
            return Err(busy());
        }
        // Its holder died: take it over, unless another node did since we read it.
        match self.s3.put_if(&key, body(), Precondition::ETag(&etag)) {
            Ok(etag) => Ok(held(etag)),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Err(busy()),
            Err(e) => Err(s3_error("taking over a stale completion lease", &e)),
        }
    }

    /// Aborts the multipart uploads that completes which died left behind (their parts
    /// cost storage and are never seen). Returns how many.
    ///
    /// An upload is old when the store's `Initiated` says so *and* this node has listed it
    /// for that long: some S3-compatible stores answer a fixed or wrong `Initiated` (moto
    /// answers 2010-11-10 for every upload), and trusting it alone would abort a complete
    /// still writing. A node that restarts only starts counting again: later, never early.
    pub(super) fn abort_stale_multiparts(&self, now: u64) -> usize {
        let uploads = match self.s3.multipart_uploads(&self.key("objects/")) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the multipart uploads in progress");
                return 0;
            }
        };
        let age = self.abandoned_multipart_secs;
        let before = crate::s3::sigv4::iso8601(now.saturating_sub(age));
        let stale: Vec<(String, String)> = {
            let mut seen = self
                .multipart_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            seen.retain(|id, _| uploads.iter().any(|(_, u, _)| u == id));
            uploads
                .into_iter()
                .filter(|(_, upload_id, initiated)| {
                    let first_seen = *seen.entry(upload_id.clone()).or_insert(now);
                    let by_store = initiated
                        .get(..before.len())
                        .is_some_and(|t| t < before.as_str());
                    by_store && first_seen.saturating_add(age) <= now
                })
                .map(|(key, upload_id, _)| (key, upload_id))
                .collect()
        };
        let mut aborted = 0;
        for (key, upload_id) in stale {
            match self.s3.abort_multipart(&key, &upload_id) {
                Ok(()) => aborted += 1,
                Err(e) => tracing::warn!(%key, error = %e, "cannot abort a multipart upload"),
            }
        }
        aborted
    }

    /// Removes every key of session `id` (and the idempotency key that names it, if
    /// `meta` tells it).
    pub(super) fn delete_session(
        &self,
        id: &str,
        meta: Option<&SessionMeta>,
    ) -> Result<(), ApiError> {
        if let Some(meta) = meta {
            self.mark_closed(meta)?;
            if let Some(key) = &meta.idempotency_key
                && self.key_owner(&meta.tenant, key)?.as_deref() == Some(id)
            {
                self.release_key(&meta.tenant, key)?;
            }
        }
        let all = self
            .s3
            .list(&self.key(&format!("sessions/{id}/")))
            .map_err(|e| s3_error("listing the session", &e))?;
        // The meta goes last: while it exists, the session can be found and deleted again.
        let meta = self.meta_key(id);
        for item in all.iter().filter(|i| i.key != meta) {
            self.s3
                .delete(&item.key)
                .map_err(|e| s3_error("deleting the session", &e))?;
        }
        self.s3
            .delete(&meta)
            .map_err(|e| s3_error("deleting the session", &e))
    }

    pub fn object_exists(&self, tenant: &str, name: &str) -> Result<bool, ApiError> {
        self.s3
            .head(&self.object_key(tenant, name))
            .map(|h| h.is_some())
            .map_err(|e| s3_error("looking up the object", &e))
    }

    /// Bytes in `tenant`'s objects.
    pub fn stored_bytes(&self, tenant: &str) -> Result<u64, ApiError> {
        let prefix = self.objects_prefix(tenant);
        let listed = self
            .s3
            .list(&prefix)
            .map_err(|e| s3_error("counting the tenant's objects", &e))?;
        // Without per-tenant dirs other tenants' dirs do not exist; skip nested keys anyway.
        Ok(listed
            .iter()
            .filter(|i| {
                i.key
                    .strip_prefix(&prefix)
                    .is_some_and(|n| !n.contains('/'))
            })
            .map(|i| i.size)
            .sum())
    }

    /// Writes the file at `file` as `tenant`'s object `name` (a whole-object PUT, already
    /// verified). Returns the size of the object it replaced, `None` if the name is taken.
    pub fn put_file(
        &self,
        tenant: &str,
        name: &str,
        file: &std::path::Path,
        overwrite: bool,
    ) -> Result<Option<u64>, ApiError> {
        use std::io::Read;
        let key = self.object_key(tenant, name);
        let replaced = match overwrite {
            true => self
                .s3
                .head(&key)
                .map_err(|e| s3_error("looking up the object", &e))?
                .map_or(0, |h| h.size),
            false => 0,
        };
        let io = |e: std::io::Error| ApiError::io("reading the object back", &e);
        let mut f = std::fs::File::open(file).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut w = ObjectWriter::new(&self.s3, &key, size, &[]);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])
                .map_err(|e| s3_error("storing the object", &e))?;
        }
        match w.finish(!overwrite).1 {
            Ok(()) => Ok(Some(replaced)),
            Err(e) if e.is_precondition_failed() => Ok(None),
            Err(e) => Err(s3_error("storing the object", &e)),
        }
    }
}

/// How long a completion lease holds: a complete of 100 GB takes minutes; one whose node
/// died holds the upload back at most this long.
pub const LEASE_SECS: u64 = 3600;
/// By default, a multipart upload older than this was left by a complete that died (one
/// that lives finishes within its lease).
pub const ABANDONED_MULTIPART_SECS: u64 = 6 * 3600;

/// A lease's body: until when it holds (Unix seconds) and its holder's token.
fn parse_lease(body: &[u8]) -> (Option<u64>, Option<&str>) {
    let text = std::str::from_utf8(body).unwrap_or_default();
    let mut fields = text.split_whitespace();
    let until = fields.next().and_then(|t| t.parse().ok());
    (until, fields.next())
}

/// The right to write one session's object, given back when dropped.
pub(super) struct Lease<'a> {
    remote: &'a Remote,
    key: String,
    /// Ours, written in the lease.
    token: String,
    /// The lease object's ETag when we wrote it.
    etag: String,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let s3 = &self.remote.s3;
        // Only the lease we wrote: past its time another node may hold a new one.
        let given_back = match s3.delete_if(&self.key, &self.etag) {
            Err(e) if e.is_not_implemented() => match s3.get_tagged(&self.key) {
                // A store without conditional deletes: look first (a short race).
                Ok(Some((body, _))) if parse_lease(&body).1 == Some(self.token.as_str()) => {
                    s3.delete(&self.key)
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            other => other,
        };
        match given_back {
            Ok(()) => {}
            Err(e) if e.is_precondition_failed() => {
                tracing::warn!(key = %self.key, "the completion lease was taken over before it was given back");
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "cannot give back a completion lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_names_its_time_and_holder() {
        assert_eq!(
            parse_lease(b"1800000000 ab12"),
            (Some(1_800_000_000), Some("ab12"))
        );
        // Written by an older node: a time only, no holder that could be us.
        assert_eq!(parse_lease(b"1800000000\n"), (Some(1_800_000_000), None));
        assert_eq!(parse_lease(b"\xff garbage"), (None, None));
    }
}
