//! Housekeeping while the server runs: sessions that expired or outlived their
//! retention are removed, idle ones close their files (or, from an object store, are
//! forgotten by this node until a request names them again).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::remote::Remote;
use super::{IDLE_CLOSE_SECS, Index, Store, fsutil, lock};

/// How often, at most, a node looks through the object store's sessions for expired ones
/// (a listing and a read per session: not every sweep).
const REMOTE_SWEEP_SECS: u64 = 300;

impl Store {
    /// Housekeeping while the server runs (blocking): removes expired sessions and
    /// completed ones older than `retention_secs`, and closes the files of sessions idle
    /// for [`IDLE_CLOSE_SECS`]. Returns how many sessions were removed.
    pub fn sweep(&self, now: u64, retention_secs: u64) -> usize {
        let mut gone = Vec::new();
        {
            let mut idx = lock(&self.index);
            let Index { by_id, by_key } = &mut *idx;
            by_id.retain(|_, s| {
                let meta = lock(&s.meta);
                let remove = meta.outlived(now, retention_secs);
                // A node forgets an idle session of the object store (another node may be
                // serving it now); the next request reads it afresh.
                // Not while a request holds it (a chunk being received, a complete).
                let forget = s.remote.is_some()
                    && s.last_used.load(Ordering::Relaxed) + IDLE_CLOSE_SECS <= now
                    && Arc::strong_count(s) == 1;
                if (remove || forget)
                    && let Some(k) = &meta.idempotency_key
                {
                    by_key.remove(&(s.tenant.clone(), k.clone()));
                }
                drop(meta);
                if remove {
                    gone.push(Arc::clone(s));
                } else {
                    s.close_if_idle(now);
                }
                !(remove || forget)
            });
        }
        for s in &gone {
            s.close_files();
            s.remove_stored();
        }
        if let Some(remote) = &self.remote {
            let mut last = lock(&self.remote_swept);
            let every = (retention_secs / 2).clamp(1, REMOTE_SWEEP_SECS);
            if *last + every <= now {
                *last = now;
                drop(last);
                let removed = self.sweep_remote(remote, now, retention_secs);
                if removed > 0 {
                    tracing::info!(removed, "swept expired and completed sessions of the store");
                }
            }
        }
        if !gone.is_empty() && self.remote.is_none() {
            if let Err(e) = fsutil::sync_dir(&self.sessions_dir) {
                tracing::warn!(error = %e, "cannot sync the sessions dir");
            }
            tracing::info!(removed = gone.len(), "swept expired and completed sessions");
        }
        gone.len()
    }

    /// Removes the sessions of the object store that expired, or completed more than
    /// `retention_secs` ago, whichever node made them (a node that died leaves its
    /// sessions to the others). Sessions this node holds are swept with its index.
    /// Returns how many it removed.
    fn sweep_remote(&self, remote: &Remote, now: u64, retention_secs: u64) -> usize {
        let ids = match remote.s3.list_dirs(&remote.key("sessions/")) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the store's sessions");
                return 0;
            }
        };
        let mut removed = 0;
        for dir in ids {
            let id = dir
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            if lock(&self.index).by_id.contains_key(id) {
                continue;
            }
            let meta = match remote.load_meta(id) {
                Ok(Some(meta)) => meta,
                // Keys without a session record: a create that failed half-way, or a
                // delete cut short.
                Ok(None) => {
                    let _ = remote.delete_session(id, None);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(upload_id = %id, error = %e.message, "cannot read a session");
                    continue;
                }
            };
            if meta.outlived(now, retention_secs) {
                match remote.delete_session(id, Some(&meta)) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(upload_id = %id, error = %e.message, "cannot remove a session")
                    }
                }
            }
        }
        let aborted = remote.abort_stale_multiparts(now);
        if aborted > 0 {
            tracing::info!(
                aborted,
                "aborted multipart uploads left by completes that died"
            );
        }
        removed
    }
}
