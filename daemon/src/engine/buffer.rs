//! A pooled buffer for a copy of the user's bytes (today: a chunk's LZ4 block).
//!
//! Source chunks are never copied (they are mapped from the file); what the daemon does
//! copy is held here, allocated once and reused. Two promises about such copies:
//! - **zeroed before reuse**: what one job wrote is wiped before the buffer goes back to
//!   the pool, so no later job, and no core dump, finds it in a free buffer;
//! - **locked in RAM where the limit allows** (`mlock`): the copy is not written to swap.
//!   The budget is the soft `RLIMIT_MEMLOCK`, even for root (who could lock more): locked
//!   memory is memory the system cannot reclaim under pressure, and a background daemon
//!   should not take more than its limit says. A buffer beyond the budget works unlocked.

use std::sync::atomic::{AtomicUsize, Ordering};

use zeroize::Zeroize;

/// Bytes this process holds locked through [`Buffer`]s.
static LOCKED: AtomicUsize = AtomicUsize::new(0);

/// A fixed-size, initialised buffer; `len` bytes of it are in use.
pub struct Buffer {
    bytes: Vec<u8>,
    len: usize,
    locked: bool,
}

impl Buffer {
    /// A zeroed buffer of `capacity` bytes, locked if the budget has room.
    pub fn new(capacity: usize) -> Buffer {
        let bytes = vec![0; capacity];
        let locked = lock(&bytes);
        Buffer {
            bytes,
            len: 0,
            locked,
        }
    }

    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// The whole buffer, to write into; call [`Buffer::set_len`] with what was written.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.bytes.len());
    }

    /// Nothing in use and every byte zero (for tests).
    #[cfg(test)]
    pub fn is_wiped(&self) -> bool {
        self.len == 0 && self.bytes.iter().all(|&b| b == 0)
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Wipes what was written, ready for the next user. Only the written part: the rest
    /// is still zero from the last wipe (or from the allocation). A writer that failed
    /// midway, with no length to report, calls [`Buffer::wipe_all`].
    pub fn wipe(&mut self) {
        self.bytes[..self.len].zeroize();
        self.len = 0;
    }

    pub fn wipe_all(&mut self) {
        self.bytes.as_mut_slice().zeroize();
        self.len = 0;
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.bytes[..self.len].zeroize();
        if self.locked {
            unlock(&self.bytes);
        }
    }
}

/// Bytes currently locked by buffers (for Status and tests).
pub fn locked_bytes() -> usize {
    LOCKED.load(Ordering::Relaxed)
}

/// The soft RLIMIT_MEMLOCK, or 0 when it cannot be read.
fn lock_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return 0;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

fn lock(bytes: &[u8]) -> bool {
    let len = bytes.len();
    if len == 0 {
        return false;
    }
    let budget = lock_budget();
    // Reserve first, so two threads cannot both squeeze into the last room.
    let before = LOCKED.fetch_add(len, Ordering::Relaxed);
    if before.saturating_add(len) > budget {
        LOCKED.fetch_sub(len, Ordering::Relaxed);
        return false;
    }
    // SAFETY: mlock only changes the residency of the pages under `bytes`, a live
    // allocation we own for at least as long as the lock (Drop unlocks before freeing).
    let rc = unsafe { libc::mlock(bytes.as_ptr().cast(), len) };
    if rc != 0 {
        LOCKED.fetch_sub(len, Ordering::Relaxed);
        return false;
    }
    true
}

fn unlock(bytes: &[u8]) {
    // SAFETY: as in `lock`: the same live range, unlocked before the Vec frees it.
    // (A page shared with a neighbouring allocation is unlocked with it: a buffer may
    // then be partly swappable, never unsound.)
    unsafe { libc::munlock(bytes.as_ptr().cast(), bytes.len()) };
    LOCKED.fetch_sub(bytes.len(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wiped_buffer_holds_nothing_of_its_last_user() {
        let mut b = Buffer::new(1 << 20);
        b.space()[..5].copy_from_slice(b"point");
        b.set_len(5);
        assert_eq!(b.as_ref(), b"point");
        b.wipe();
        assert!(b.as_ref().is_empty());
        assert!(
            b.space().iter().all(|&x| x == 0),
            "every byte is zero again"
        );
    }

    #[test]
    fn locking_stays_inside_the_soft_limit_and_is_given_back() {
        let budget = lock_budget();
        let before = locked_bytes();
        let b = Buffer::new(256 << 10);
        if b.is_locked() {
            assert!(locked_bytes() <= budget);
            assert_eq!(locked_bytes() - before, 256 << 10);
        }
        drop(b);
        assert_eq!(locked_bytes(), before, "a dropped buffer unlocks");
        // More than the budget never locks (a budget near usize::MAX cannot be exceeded).
        if budget < (1 << 30) {
            let big = Buffer::new(budget + 4096);
            assert!(!big.is_locked());
        }
    }
}
