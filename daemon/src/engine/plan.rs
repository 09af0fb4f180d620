//! Which byte ranges still need to be sent: the gaps between acknowledged ranges, cut
//! into chunks. Chunks are keyed by offset, so a resume may use another chunk size.

/// Splits the parts of `[0, size)` not in `covered` (sorted, non-overlapping) into chunks
/// of at most `chunk_size` bytes.
pub fn gaps(size: u64, chunk_size: u64, covered: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let chunk_size = chunk_size.max(1);
    let mut out = Vec::new();
    let mut push_gap = |from: u64, to: u64| {
        let mut o = from;
        while o < to {
            let len = chunk_size.min(to - o);
            out.push((o, len));
            o += len;
        }
    };
    let mut at = 0u64;
    for &(off, len) in covered {
        if off > at {
            push_gap(at, off.min(size));
        }
        at = at.max(off + len);
    }
    if at < size {
        push_gap(at, size);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn a_fresh_file_is_cut_into_chunks_with_a_short_tail() {
        assert_eq!(gaps(10, 4, &[]), vec![(0, 4), (4, 4), (8, 2)]);
    }

    #[test]
    fn acknowledged_ranges_are_skipped() {
        assert_eq!(gaps(20, 4, &[(0, 8), (12, 4)]), vec![(8, 4), (16, 4)]);
        assert_eq!(gaps(20, 4, &[(0, 20)]), vec![]);
    }

    #[test]
    fn gaps_follow_foreign_chunk_boundaries() {
        // The server holds a 3-byte chunk at 5 from an earlier run with another chunk size.
        assert_eq!(gaps(12, 4, &[(5, 3)]), vec![(0, 4), (4, 1), (8, 4)]);
    }
}
