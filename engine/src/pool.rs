//! How many chunk buffers the engine may hold, from the memory the system has left.
//!
//! The seed's pool is 15 buffers (12 in flight + 3 prefetched) and shrinks under memory
//! pressure to 8, 4, then 2 — it never pauses: at 2 an upload still moves. The driver
//! reports available memory (MemAvailable, or the cgroup's limit minus its usage when that
//! is lower); the engine applies it.

const MB: u64 = 1_000_000;

/// Chunks that may be held at once (read ahead, or in flight).
pub fn buffers_for(available_bytes: u64) -> usize {
    if available_bytes > 200 * MB {
        15
    } else if available_bytes > 100 * MB {
        8
    } else if available_bytes > 50 * MB {
        4
    } else {
        2
    }
}

/// The largest chunk a pool of `buffers` may cut: memory pressure shrinks the buffers,
/// not just their number, so that all of them together stay well inside the headroom
/// that chose the pool (8 × 16 MiB < 200 MB, 4 × 8 MiB < 100 MB, 2 × 4 MiB < 50 MB; the
/// transport may hold a second copy of what is in flight).
pub fn chunk_cap(buffers: usize) -> u64 {
    const MIB: u64 = 1 << 20;
    match buffers {
        15.. => 32 * MIB,
        8..=14 => 16 * MIB,
        4..=7 => 8 * MIB,
        _ => 4 * MIB,
    }
}

/// Of those, how many may be in flight (the rest is read-ahead).
pub fn in_flight_for(buffers: usize) -> usize {
    if buffers >= 15 { 12 } else { buffers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_12_8_4_2_never_zero() {
        let sizes: Vec<usize> = [8_000, 150, 75, 20, 0]
            .iter()
            .map(|mb| in_flight_for(buffers_for(mb * MB)))
            .collect();
        assert_eq!(sizes, vec![12, 8, 4, 2, 2]);
        assert_eq!(buffers_for(u64::MAX), 15);
    }

    #[test]
    fn pressure_shrinks_the_chunks_too_and_all_of_them_fit_the_headroom() {
        for (headroom_mb, buffers, cap_mib) in [(150, 8, 16), (75, 4, 8), (20, 2, 4)] {
            let b = buffers_for(headroom_mb * MB);
            assert_eq!((b, chunk_cap(b) >> 20), (buffers, cap_mib));
        }
        // Every buffer full: still well inside the headroom that chose the pool.
        for (buffers, bound) in [(8, 200 * MB), (4, 100 * MB), (2, 50 * MB)] {
            let all = buffers as u64 * chunk_cap(buffers);
            assert!(
                2 * all < bound + bound / 2,
                "{buffers} × cap = {all}, bound {bound}"
            );
        }
    }
}
