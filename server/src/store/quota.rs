//! Per-tenant quotas: bytes held (objects plus the declared sizes of open uploads) and
//! uploads open. Checked at create, so a tenant over its quota is told before it sends a
//! byte; an upload already admitted always completes.

use std::collections::HashMap;
use std::path::Path;

use uplink_proto::wire::code;

use super::{Quota, Store, lock};
use crate::error::ApiError;

/// How long a node trusts its count of a tenant's bytes in an object store.
const RECOUNT_SECS: u64 = 30;

impl Store {
    /// Sets the tenants whose quota is their own (at start and at each reload); a field
    /// they leave `None` is the server's.
    pub fn set_tenant_quotas(&self, quotas: HashMap<String, Quota>) {
        *self
            .tenant_quotas
            .write()
            .unwrap_or_else(|p| p.into_inner()) = quotas;
    }

    /// The quota `tenant` runs under.
    fn quota_of(&self, tenant: &str) -> Quota {
        let own = self
            .tenant_quotas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or_default();
        Quota {
            bytes: own.bytes.or(self.quota.bytes),
            sessions: own.sessions.or(self.quota.sessions),
        }
    }

    /// Refuses a new upload of `size` bytes that would take `tenant` past its quota (a
    /// `session` also counts against the uploads open; a whole-object PUT does not).
    ///
    /// This is the early answer, before anything is written; creates running at once can
    /// all pass it, so a create checks again once its upload counts
    /// ([`Store::admit_counted`], [`Store::recheck_quota`]).
    pub fn check_quota(&self, tenant: &str, size: u64, session: bool) -> Result<(), ApiError> {
        let quota = self.quota_of(tenant);
        if quota.bytes.is_none() && quota.sessions.is_none() {
            return Ok(());
        }
        let (open, open_bytes) = match &self.remote {
            // Every node's uploads count.
            Some(remote) => remote.open_uploads(tenant)?,
            None => open_here(&lock(&self.index), tenant),
        };
        // A whole-object PUT opens no upload: only bytes count for it.
        let sessions = session.then_some(open + 1);
        self.within_quota(tenant, quota, sessions, open_bytes, size)
    }

    /// The local store's last word on a new upload, given the index it is about to join
    /// (locked by the caller, so no other create counts in between): `tenant`'s open
    /// uploads plus this one of `size` bytes.
    pub(super) fn admit_counted(
        &self,
        idx: &super::Index,
        tenant: &str,
        size: u64,
    ) -> Result<(), ApiError> {
        let quota = self.quota_of(tenant);
        if quota.bytes.is_none() && quota.sessions.is_none() {
            return Ok(());
        }
        let (open, open_bytes) = open_here(idx, tenant);
        self.within_quota(tenant, quota, Some(open + 1), open_bytes, size)
    }

    /// An object store's last word on a new upload of `size` bytes whose open marker is
    /// written: it is counted with every node's. Of creates racing past the quota, each
    /// sees the others' markers: at worst all are refused (429, retryable), never all
    /// admitted.
    pub(super) fn recheck_quota(&self, tenant: &str, size: u64) -> Result<(), ApiError> {
        let quota = self.quota_of(tenant);
        if quota.bytes.is_none() && quota.sessions.is_none() {
            return Ok(());
        }
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let (open, open_bytes) = remote.open_uploads(tenant)?;
        self.within_quota(
            tenant,
            quota,
            Some(open),
            open_bytes.saturating_sub(size),
            size,
        )
    }

    /// Refuses when `open` uploads (this one among them; `None`: not counted), or the
    /// tenant's objects plus `open_bytes` plus `size`, are past `quota`.
    fn within_quota(
        &self,
        tenant: &str,
        quota: Quota,
        open: Option<usize>,
        open_bytes: u64,
        size: u64,
    ) -> Result<(), ApiError> {
        if let (Some(max), Some(open)) = (quota.sessions, open)
            && open > max
        {
            let others = open - 1;
            return Err(ApiError::new(
                429,
                code::TOO_MANY_SESSIONS,
                format!("{others} uploads open, the quota is {max}: one finishing makes room"),
            )
            .retry_in(5));
        }
        if let Some(max) = quota.bytes {
            let stored = self.stored_bytes(tenant)?;
            let total = stored.saturating_add(open_bytes).saturating_add(size);
            if total > max {
                return Err(ApiError::new(
                    413,
                    code::QUOTA_EXCEEDED,
                    format!(
                        "{size} more bytes would hold {total}, the quota is {max} \
                         ({stored} in objects, {open_bytes} in open uploads)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Bytes in `tenant`'s objects (counted once by listing, then kept up to date; from an
    /// object store, counted again after [`RECOUNT_SECS`], as other nodes add objects).
    fn stored_bytes(&self, tenant: &str) -> Result<u64, ApiError> {
        let now = super::now_secs();
        let fresh = |at: u64| self.remote.is_none() || at + RECOUNT_SECS > now;
        if let Some((n, _)) = lock(&self.stored).get(tenant).filter(|(_, at)| fresh(*at)) {
            return Ok(*n);
        }
        let n = match &self.remote {
            Some(remote) => remote.stored_bytes(tenant)?,
            None => dir_bytes(&self.objects_dir(tenant))
                .map_err(|e| ApiError::io("counting the tenant's objects", &e))?,
        };
        lock(&self.stored).insert(tenant.to_string(), (n, now));
        Ok(n)
    }

    /// An object of `added` bytes was placed, replacing one of `replaced` bytes.
    pub fn note_stored(&self, tenant: &str, added: u64, replaced: u64) {
        if let Some((n, _)) = lock(&self.stored).get_mut(tenant) {
            *n = n.saturating_add(added).saturating_sub(replaced);
        }
    }
}

/// Total size of the regular, visible files in `dir` (a missing dir holds nothing).
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && !entry.file_name().to_string_lossy().starts_with('.') {
            total += meta.len();
        }
    }
    Ok(total)
}

/// `tenant`'s uploads open in this node's index, and their declared bytes.
fn open_here(idx: &super::Index, tenant: &str) -> (usize, u64) {
    idx.by_id
        .values()
        .filter(|s| s.tenant == tenant && lock(&s.meta).completed.is_none())
        .fold((0, 0), |(n, b), s| (n + 1, b + s.size))
}
