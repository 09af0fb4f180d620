//! Sets of byte ranges: what is acknowledged, what is in flight. Kept as disjoint,
//! coalesced `[start, end)` intervals, so a 100 GB upload in 1 MiB chunks is a handful of
//! intervals, not 100,000 entries — this is also what a checkpoint and the server's state
//! answer carry.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end, disjoint and not touching.
    map: BTreeMap<u64, u64>,
    total: u64,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> RangeSet {
        let mut s = RangeSet::new();
        for r in ranges {
            s.insert(r);
        }
        s
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of disjoint intervals.
    pub fn intervals(&self) -> usize {
        self.map.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(s, e)| *s..*e)
    }

    /// Adds `r`; returns how many bytes of it were new.
    pub fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let (mut start, mut end) = (r.start, r.end);
        let before = self.total;
        // Merge with every interval that overlaps or touches [start, end].
        let first = self
            .map
            .range(..=start)
            .next_back()
            .filter(|(_, e)| **e >= start)
            .map(|(s, _)| *s);
        // The common case, bytes appended to the interval before them, changes that
        // interval's end in place: no node of the map is freed or allocated.
        if let Some(s) = first {
            start = s;
        }
        // Every later interval starting within [start, end] is absorbed.
        while let Some((s, e)) = self
            .map
            .range((Bound::Excluded(start), Bound::Included(end)))
            .next()
            .map(|(s, e)| (*s, *e))
        {
            self.map.remove(&s);
            self.total -= e - s;
            end = end.max(e);
        }
        match self.map.get_mut(&start) {
            Some(e) => {
                self.total -= *e - start;
                *e = (*e).max(end);
                self.total += *e - start;
            }
            None => {
                self.map.insert(start, end);
                self.total += end - start;
            }
        }
        self.total - before
    }

    /// Removes `r`; returns how many bytes were removed.
    pub fn remove(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let before = self.total;
        let from = self
            .map
            .range(..=r.start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(r.start);
        while let Some((s, e)) = self
            .map
            .range(from..r.end)
            .find(|(_, e)| **e > r.start)
            .map(|(s, e)| (*s, *e))
        {
            self.total -= e - s;
            // The part before `r` stays under its key, cut short in place.
            match self.map.get_mut(&s) {
                Some(end) if s < r.start => {
                    *end = r.start;
                    self.total += r.start - s;
                }
                _ => {
                    self.map.remove(&s);
                }
            }
            if e > r.end {
                self.map.insert(r.end, e);
                self.total += e - r.end;
            }
        }
        before - self.total
    }

    /// Every byte of `r` is in the set.
    pub fn contains(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        self.map
            .range(..=r.start)
            .next_back()
            .is_some_and(|(_, e)| *e >= r.end)
    }

    /// Some byte of `r` is in the set.
    pub fn overlaps(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return false;
        }
        let before = self
            .map
            .range(..=r.start)
            .next_back()
            .is_some_and(|(_, e)| *e > r.start);
        before || self.map.range(r.start..r.end).next().is_some()
    }

    /// The first byte at or after `from` that is not in the set, and where the run of
    /// missing bytes starting there ends (`None` = it runs to infinity).
    pub fn first_gap(&self, from: u64) -> (u64, Option<u64>) {
        let mut at = from;
        if let Some((_, e)) = self.map.range(..=at).next_back()
            && *e > at
        {
            at = *e;
        }
        let next = self.map.range(at..).next().map(|(s, _)| *s);
        (at, next)
    }

    /// End of the contiguous run starting at 0 (0 if byte 0 is missing).
    pub fn prefix_end(&self) -> u64 {
        match self.map.first_key_value() {
            Some((0, e)) => *e,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_coalesce_and_count_only_new_bytes() {
        let mut s = RangeSet::new();
        assert_eq!(s.insert(10..20), 10);
        assert_eq!(s.insert(30..40), 10);
        assert_eq!(s.insert(15..35), 10, "only 20..30 is new");
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..40]);
        assert_eq!(s.insert(40..45), 5, "touching ranges merge");
        assert_eq!(s.intervals(), 1);
        assert_eq!(s.len(), 35);
    }

    #[test]
    fn removal_splits() {
        let mut s = RangeSet::from_ranges(std::iter::once(0..100));
        assert_eq!(s.remove(10..20), 10);
        assert_eq!(s.remove(50..150), 50);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..10, 20..50]);
        assert!(s.contains(20..50) && !s.contains(5..25));
        assert!(s.overlaps(5..25) && !s.overlaps(10..20) && !s.overlaps(60..70));
    }

    #[test]
    fn gaps_and_prefix() {
        let s = RangeSet::from_ranges([0..10, 20..30]);
        assert_eq!(s.first_gap(0), (10, Some(20)));
        assert_eq!(s.first_gap(25), (30, None));
        assert_eq!(s.first_gap(12), (12, Some(20)));
        assert_eq!(s.prefix_end(), 10);
        assert_eq!(
            RangeSet::from_ranges(std::iter::once(5..10)).prefix_end(),
            0
        );
    }

    #[test]
    fn matches_a_bitmap_under_random_operations() {
        let mut rng = crate::rng::Rng::new(42);
        let mut s = RangeSet::new();
        let mut bits = [false; 200];
        for _ in 0..5_000 {
            let a = rng.between(0, 199);
            let b = rng.between(a, 200);
            if rng.unit() < 0.6 {
                let new = (a..b).filter(|i| !bits[*i as usize]).count() as u64;
                assert_eq!(s.insert(a..b), new);
                (a..b).for_each(|i| bits[i as usize] = true);
            } else {
                let gone = (a..b).filter(|i| bits[*i as usize]).count() as u64;
                assert_eq!(s.remove(a..b), gone);
                (a..b).for_each(|i| bits[i as usize] = false);
            }
            assert_eq!(s.len(), bits.iter().filter(|b| **b).count() as u64);
            let c = rng.between(0, 199);
            let d = rng.between(c, 200);
            assert_eq!(s.contains(c..d), (c..d).all(|i| bits[i as usize]));
            assert_eq!(s.overlaps(c..d), (c..d).any(|i| bits[i as usize]));
        }
    }
}
