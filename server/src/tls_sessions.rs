//! The TLS session cache with a lifetime: what lets a client resume (and send 0-RTT)
//! without a full handshake, kept for `lifetime` (the seed's 3600 s) and then erased.
//!
//! The server issues stateful tickets: the resumption secret stays here and the client
//! holds only an id. That is what "rotating ticket keys" protects for stateless tickets —
//! a stolen key decrypts every ticket it sealed — turned into a bound on how long a
//! secret exists at all: past its lifetime an entry is refused and wiped, whether or not
//! anybody asks for it (the server purges on a timer, and on every use). rustls' own
//! memory cache forgets only by size, never by age, and does not wipe what it drops.
//!
//! An entry is also single-use on resumption (`take`), which bounds replays of 0-RTT data
//! (see `tls::quic_server_config`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// The seed's rotation period for ticket keys, as the lifetime of a session.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

pub struct SessionCache {
    lifetime: Duration,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_key: HashMap<Vec<u8>, Stored>,
    /// Keys by age, oldest first; an entry whose key was taken or stored again since is
    /// stale and skipped.
    order: VecDeque<(Instant, Vec<u8>)>,
}

struct Stored {
    born: Instant,
    value: Zeroizing<Vec<u8>>,
}

impl SessionCache {
    /// At most `capacity` sessions (the oldest goes first), each for `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> SessionCache {
        SessionCache {
            lifetime,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Sessions held now (for tests and logs).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Wipes every session past its lifetime at `now`.
    pub fn purge(&self, now: Instant) {
        let mut st = self.lock();
        self.purge_locked(&mut st, now);
    }

    fn put_at(&self, key: Vec<u8>, value: Vec<u8>, now: Instant) -> bool {
        let mut st = self.lock();
        self.purge_locked(&mut st, now);
        while st.by_key.len() >= self.capacity && !st.by_key.contains_key(&key) {
            if !pop_oldest(&mut st) {
                break;
            }
        }
        // Stale order entries (taken or replaced keys) are bounded here too.
        while st.order.len() >= 2 * self.capacity {
            pop_oldest(&mut st);
        }
        st.order.push_back((now, key.clone()));
        let value = Zeroizing::new(value);
        st.by_key.insert(key, Stored { born: now, value });
        true
    }

    fn get_at(&self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        let mut st = self.lock();
        self.purge_locked(&mut st, now);
        st.by_key.get(key).map(|s| s.value.to_vec())
    }

    fn take_at(&self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        let mut st = self.lock();
        self.purge_locked(&mut st, now);
        // The removed entry's Zeroizing wipes its copy as it drops.
        st.by_key.remove(key).map(|s| s.value.to_vec())
    }

    fn purge_locked(&self, st: &mut State, now: Instant) {
        while let Some((born, _)) = st.order.front() {
            if now.saturating_duration_since(*born) < self.lifetime {
                break;
            }
            pop_oldest(st);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every step above is
        // one insert or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the oldest order entry and, unless stale, the session it names. False when
/// the order is empty.
fn pop_oldest(st: &mut State) -> bool {
    let Some((born, key)) = st.order.pop_front() else {
        return false;
    };
    if st.by_key.get(&key).is_some_and(|s| s.born == born) {
        st.by_key.remove(&key);
    }
    true
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.put_at(key, value, Instant::now())
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_at(key, Instant::now())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.take_at(key, Instant::now())
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for SessionCache {
    // Counts only: the values are resumption secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("sessions", &self.len())
            .field("capacity", &self.capacity)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_session_resumes_within_its_lifetime_and_once() {
        let c = SessionCache::new(8, HOUR);
        let t0 = Instant::now();
        c.put_at(b"id".to_vec(), b"secret".to_vec(), t0);
        let later = t0 + HOUR - Duration::from_secs(1);
        assert_eq!(c.get_at(b"id", later).as_deref(), Some(&b"secret"[..]));
        assert_eq!(c.take_at(b"id", later).as_deref(), Some(&b"secret"[..]));
        assert_eq!(c.take_at(b"id", later), None, "a resumption is single-use");
    }

    #[test]
    fn past_its_lifetime_a_session_is_refused_and_erased_unasked() {
        let c = SessionCache::new(8, HOUR);
        let t0 = Instant::now();
        c.put_at(b"old".to_vec(), b"s1".to_vec(), t0);
        c.put_at(b"new".to_vec(), b"s2".to_vec(), t0 + HOUR / 2);
        assert_eq!(
            c.get_at(b"old", t0 + HOUR),
            None,
            "expired at exactly 3600 s"
        );
        c.purge(t0 + HOUR + HOUR / 2);
        assert_eq!(c.len(), 0, "the timer's purge wipes what nobody asked for");
    }

    #[test]
    fn a_full_cache_drops_its_oldest_session() {
        let c = SessionCache::new(2, HOUR);
        let t0 = Instant::now();
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            c.put_at(
                k.to_vec(),
                vec![i as u8],
                t0 + Duration::from_secs(i as u64),
            );
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(c.get_at(b"a", now), None);
        assert!(c.get_at(b"b", now).is_some() && c.get_at(b"c", now).is_some());
    }

    #[test]
    fn a_key_stored_again_lives_from_its_new_birth() {
        let c = SessionCache::new(4, HOUR);
        let t0 = Instant::now();
        c.put_at(b"k".to_vec(), b"first".to_vec(), t0);
        c.put_at(b"k".to_vec(), b"second".to_vec(), t0 + HOUR / 2);
        // The first birth's order entry is stale: passing it must not drop the second.
        let at = t0 + HOUR + Duration::from_secs(1);
        assert_eq!(c.get_at(b"k", at).as_deref(), Some(&b"second"[..]));
        // Many takes and puts keep the order bounded.
        for i in 0..100u32 {
            let key = i.to_be_bytes().to_vec();
            c.put_at(key.clone(), vec![1], at);
            c.take_at(&key, at);
        }
        assert!(c.lock().order.len() <= 8);
    }
}
