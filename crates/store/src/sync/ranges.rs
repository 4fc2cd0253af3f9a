//! Sorted, disjoint lists of `[start, end)` block ranges.

/// The union of two lists of sorted, disjoint ranges, merged where they touch.
pub(super) fn union_ranges(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Remove `[start, end)` from sorted disjoint ranges.
pub(super) fn remove_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(s, e) in ranges.iter() {
        if e <= start || s >= end {
            out.push((s, e));
            continue;
        }
        if s < start {
            out.push((s, start));
        }
        if e > end {
            out.push((end, e));
        }
    }
    *ranges = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges() {
        assert_eq!(
            union_ranges(&[(0, 5), (10, 20)], &[(3, 8), (20, 25), (30, 31)]),
            vec![(0, 8), (10, 25), (30, 31)]
        );
        assert_eq!(union_ranges(&[], &[(1, 2)]), vec![(1, 2)]);
    }

    #[test]
    fn remove_range_splits() {
        let mut r = vec![(0, 10), (20, 30)];
        remove_range(&mut r, 5, 25);
        assert_eq!(r, vec![(0, 5), (25, 30)]);
    }
}
