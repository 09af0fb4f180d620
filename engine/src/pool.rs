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
}
