//! A set of `u64` offsets stored as disjoint half-open ranges, so a group
//! that acked a million offsets above one stuck message holds two ranges,
//! not a million entries.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent half-open ranges keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// Number of offsets in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.map.range(..=x).next_back().is_some_and(|(_, &e)| x < e)
    }

    /// Adds `[start, end)`; returns how many offsets were new.
    pub fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let (mut start, mut end) = (r.start, r.end);
        let before = self.len;
        // Merge with a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.map.remove(&s);
                self.len -= e - s;
            }
        }
        // Swallow every range that starts inside (or right after) the new one.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            end = end.max(e);
            self.map.remove(&s);
            self.len -= e - s;
        }
        self.map.insert(start, end);
        self.len += end - start;
        self.len - before
    }

    /// Removes every offset below `floor`.
    pub fn remove_below(&mut self, floor: u64) {
        while let Some((&s, &e)) = self.map.iter().next() {
            if s >= floor {
                break;
            }
            self.map.remove(&s);
            self.len -= e - s;
            if e > floor {
                self.map.insert(floor, e);
                self.len += e - floor;
                break;
            }
        }
    }

    /// Removes every offset at or above `end`.
    pub fn remove_from(&mut self, end: u64) {
        let above: Vec<(u64, u64)> = self.map.range(..).filter(|(_, &e)| e > end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in above {
            self.map.remove(&s);
            self.len -= e - s;
            if s < end {
                self.map.insert(s, end);
                self.len += end - s;
            }
        }
    }

    /// If the set holds `[x, e)`, removes it and returns `e`; else `x`.
    /// (Advances a floor over acked offsets.)
    pub fn take_run_from(&mut self, x: u64) -> u64 {
        match self.map.range(..=x).next_back().map(|(&s, &e)| (s, e)) {
            Some((s, e)) if x < e => {
                self.map.remove(&s);
                self.len -= e - x;
                if s < x {
                    self.map.insert(s, x);
                }
                e
            }
            _ => x,
        }
    }

    /// The ranges in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Number of offsets of the set inside `[r.start, r.end)`.
    pub fn count_in(&self, r: Range<u64>) -> u64 {
        let mut n = 0;
        let first = self.map.range(..=r.start).next_back().map_or(r.start, |(&s, _)| s);
        for (&s, &e) in self.map.range(first..r.end) {
            let (a, b) = (s.max(r.start), e.min(r.end));
            if a < b {
                n += b - a;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_set() {
        let mut seed = 0x1234_5678_u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut rs = RangeSet::new();
        let mut plain = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let a = next() % 300;
            let len = next() % 6;
            match next() % 10 {
                0 => {
                    rs.remove_below(a);
                    plain.retain(|&x| x >= a);
                }
                1 => {
                    let e = rs.take_run_from(a);
                    if plain.contains(&a) {
                        let mut x = a;
                        while plain.remove(&x) {
                            x += 1;
                        }
                        assert_eq!(e, x);
                    } else {
                        assert_eq!(e, a);
                    }
                }
                _ => {
                    let new = (a..a + len).filter(|x| plain.insert(*x)).count() as u64;
                    assert_eq!(rs.insert(a..a + len), new);
                }
            }
            assert_eq!(rs.len(), plain.len() as u64);
            let x = next() % 310;
            assert_eq!(rs.contains(x), plain.contains(&x));
            let (lo, hi) = (next() % 300, next() % 300);
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            assert_eq!(rs.count_in(lo..hi), plain.range(lo..hi).count() as u64);
            let flat: Vec<u64> = rs.ranges().flatten().collect();
            assert_eq!(flat, plain.iter().copied().collect::<Vec<_>>());
            assert!(rs.ranges().collect::<Vec<_>>().windows(2).all(|w| w[0].end < w[1].start));
        }
    }
}
