//! Key groups: the unit in which keyed state is partitioned, snapshotted and rescaled.
//!
//! **Every component that routes or stores keyed data must use [`key_group_of`]**: the runtime's hash
//! exchange sends a record to subtask [`subtask_for_key_group`]`(key_group_of(key, max_p), max_p, p)`, and
//! that subtask's state backend owns exactly [`key_group_range`]`(max_p, p, i)`. If the two disagreed, a
//! record would reach a subtask whose backend does not own its key.

use std::fmt;
use std::ops::Range;

use crate::error::StateError;

/// Flink's default `max_parallelism` for keyed operators.
pub const DEFAULT_MAX_PARALLELISM: u16 = 128;

/// Upper bound of `max_parallelism` (as in Flink): key groups fit in a `u16` and are written as such in
/// snapshots and in the RocksDB key prefix.
pub const MAX_MAX_PARALLELISM: u16 = 32768;

/// Seed of the key-group hash. Part of the snapshot format: changing it moves every key.
const KEY_GROUP_HASH_SEED: u64 = 0;

/// The key group of a key: `xxHash64(key_bytes, seed 0) mod max_parallelism`.
///
/// `key_bytes` is the canonical byte encoding of the key, the same bytes passed as `key` to the state
/// backend. xxHash64 is specified independently of Rust and stable across releases and platforms (unlike
/// `std`'s `DefaultHasher`), so snapshots stay restorable by any later build. The modulo bias is below
/// 2^-48 for any `max_parallelism` ≤ 32768.
///
/// # Panics
/// When `max_parallelism` is 0.
#[inline]
pub fn key_group_of(key_bytes: &[u8], max_parallelism: u16) -> u16 {
    let hash = xxhash_rust::xxh64::xxh64(key_bytes, KEY_GROUP_HASH_SEED);
    // The remainder is < max_parallelism ≤ u16::MAX, so the cast is lossless.
    (hash % u64::from(max_parallelism)) as u16
}

/// The subtask (0-based) that owns `key_group` at `parallelism` (Flink's
/// `computeOperatorIndexForKeyGroup`: `key_group * parallelism / max_parallelism`).
#[inline]
pub fn subtask_for_key_group(key_group: u16, max_parallelism: u16, parallelism: u16) -> u16 {
    let index = u32::from(key_group) * u32::from(parallelism) / u32::from(max_parallelism);
    // index < parallelism because key_group < max_parallelism.
    index as u16
}

/// The contiguous key groups owned by subtask `subtask_index` of `parallelism` (Flink's assignment:
/// `start = ceil(i * max_p / p)`, `end = ceil((i + 1) * max_p / p)`, end exclusive).
///
/// Errors when `parallelism` is 0 or above `max_parallelism`, when `max_parallelism` is 0 or above
/// [`MAX_MAX_PARALLELISM`], or when `subtask_index >= parallelism`.
pub fn key_group_range(
    max_parallelism: u16,
    parallelism: u16,
    subtask_index: u16,
) -> Result<KeyGroupRange, StateError> {
    if max_parallelism == 0 || max_parallelism > MAX_MAX_PARALLELISM {
        return Err(StateError::InvalidArgument(format!(
            "max_parallelism {max_parallelism} must be in 1..={MAX_MAX_PARALLELISM}"
        )));
    }
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(StateError::InvalidArgument(format!(
            "parallelism {parallelism} must be in 1..={max_parallelism} (max_parallelism)"
        )));
    }
    if subtask_index >= parallelism {
        return Err(StateError::InvalidArgument(format!(
            "subtask index {subtask_index} is not below parallelism {parallelism}"
        )));
    }
    let (m, p, i) = (
        u32::from(max_parallelism),
        u32::from(parallelism),
        u32::from(subtask_index),
    );
    let start = (i * m).div_ceil(p);
    let end = ((i + 1) * m).div_ceil(p);
    // Both are ≤ max_parallelism ≤ 32768.
    Ok(KeyGroupRange {
        start: start as u16,
        end: end as u16,
    })
}

/// A half-open range `[start, end)` of key groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    pub start: u16,
    pub end: u16,
}

impl KeyGroupRange {
    pub fn new(start: u16, end: u16) -> Result<Self, StateError> {
        if start > end {
            return Err(StateError::InvalidArgument(format!(
                "key group range start {start} is after its end {end}"
            )));
        }
        Ok(Self { start, end })
    }

    /// All key groups of `max_parallelism` (a backend at parallelism 1).
    pub fn all(max_parallelism: u16) -> Self {
        Self {
            start: 0,
            end: max_parallelism,
        }
    }

    #[inline]
    pub fn contains(&self, key_group: u16) -> bool {
        self.start <= key_group && key_group < self.end
    }

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn iter(&self) -> Range<u16> {
        self.start..self.end
    }

    /// The key groups in both ranges (empty when they do not overlap).
    pub fn intersect(&self, other: &KeyGroupRange) -> KeyGroupRange {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end).max(start);
        KeyGroupRange { start, end }
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_key_groups_and_agree_with_subtask_for_key_group() {
        for max_p in [1u16, 2, 7, 128, 1000] {
            for p in 1..=max_p.min(40) {
                let mut next = 0;
                for i in 0..p {
                    let r = key_group_range(max_p, p, i).unwrap();
                    assert_eq!(r.start, next, "max_p {max_p} p {p} i {i}");
                    assert!(!r.is_empty(), "every subtask owns a key group");
                    for kg in r.iter() {
                        assert_eq!(subtask_for_key_group(kg, max_p, p), i);
                    }
                    next = r.end;
                }
                assert_eq!(next, max_p);
            }
        }
    }

    #[test]
    fn range_matches_flink_for_128_over_3() {
        // Flink: KeyGroupRangeAssignment.computeKeyGroupRangeForOperatorIndex(128, 3, i)
        // gives [0,42], [43,85], [86,127] (inclusive ends).
        let got: Vec<_> = (0..3)
            .map(|i| key_group_range(128, 3, i).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                KeyGroupRange { start: 0, end: 43 },
                KeyGroupRange { start: 43, end: 86 },
                KeyGroupRange {
                    start: 86,
                    end: 128
                },
            ]
        );
    }

    #[test]
    fn key_group_hash_is_pinned() {
        // xxHash64 reference values (seed 0): any change here breaks every existing snapshot.
        assert_eq!(xxhash_rust::xxh64::xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(
            key_group_of(b"", 128),
            (0xEF46_DB37_51D8_E999u64 % 128) as u16
        );
        assert_eq!(key_group_of(b"user-42", 1), 0);
    }

    #[test]
    fn key_groups_are_spread_evenly() {
        let mut counts = [0u32; 128];
        for i in 0..128_000u64 {
            counts[usize::from(key_group_of(&i.to_be_bytes(), 128))] += 1;
        }
        // 1000 expected per group; a well-mixed hash stays within ±15 %.
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn invalid_arguments_are_rejected() {
        assert!(key_group_range(0, 1, 0).is_err());
        assert!(key_group_range(128, 0, 0).is_err());
        assert!(key_group_range(128, 129, 0).is_err());
        assert!(key_group_range(128, 2, 2).is_err());
        assert!(key_group_range(40000, 2, 0).is_err());
        assert!(KeyGroupRange::new(5, 4).is_err());
    }
}
