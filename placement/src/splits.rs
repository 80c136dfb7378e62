//! The split and merge schedulers: shards that grew large or hot are split in two, and
//! small cold neighbours are merged, with enough distance between the two thresholds that
//! one never undoes the other.
//!
//! - By size: a shard whose last measured bytes reach `split_size_bytes` splits at the key
//!   that halves its bytes (measured by its leader).
//! - By load: a shard whose leader reported `split_load_requests_per_second` or more in each
//!   of its last `split_load_sustained_reports` reports splits at the key that halves its
//!   load (from a sample of its requests' keys). A single hot key has no such key and is
//!   never split.
//! - Merge: two adjacent shards are merged when together they hold less than
//!   `merge_size_bytes`, each answers less than a quarter of the load threshold, neither
//!   changed its range recently (`young`), and the key between them is not a sticky
//!   (manual) split. The merge thresholds sit far below the split ones (merged shards are
//!   under a quarter of the split size unless configured otherwise, and under a quarter
//!   of the load), so a merged shard never qualifies for a split: the two never thrash.
//!
//! Shards that are busy (another operator or operation under way), leaderless, frozen for
//! a merge, or are the placement shard are never planned. At most [`MAX_SPLITS_PER_ROUND`] splits and
//! [`MAX_MERGES_PER_ROUND`] merges per round, and a shard is in at most one of them.

use std::collections::{BTreeMap, BTreeSet};

use rshard_common::shard::ShardId;

use crate::replication::ShardState;

/// Splits placement starts per round at most.
pub const MAX_SPLITS_PER_ROUND: usize = 4;
/// Merges placement starts per round at most (each may move replicas first).
pub const MAX_MERGES_PER_ROUND: usize = 2;

/// What the split and merge schedulers decide by (0 turns a rule off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitLimits {
    pub split_size_bytes: u64,
    pub split_load_requests_per_second: u64,
    pub split_load_sustained_reports: u32,
    pub merge_size_bytes: u64,
}

/// A shard's size and load, from its leader's last reports (of the shard's current range).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    pub bytes: Option<u64>,
    pub size_split_key: Option<Vec<u8>>,
    pub requests_per_second: u64,
    /// Reports in a row at or above the load threshold.
    pub hot_reports: u32,
    pub load_split_key: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitReason {
    Size,
    Load,
}

/// Split `shard` at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoSplit {
    pub shard: ShardId,
    pub at: Vec<u8>,
    pub reason: SplitReason,
}

/// Merge `left` with its right neighbour `right`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoMerge {
    pub left: ShardId,
    pub right: ShardId,
}

/// What the two schedulers look at besides the shards.
#[derive(Clone, Debug, Default)]
pub struct SplitModel {
    pub limits: SplitLimits,
    pub loads: BTreeMap<ShardId, ShardLoad>,
    /// Shards whose range changed lately: never merged yet.
    pub young: BTreeSet<ShardId>,
    /// Keys where an operator split and asked the split to stay: never merged away.
    pub sticky_keys: BTreeSet<Vec<u8>>,
    /// The shard no split or merge may touch (placement's own).
    pub fixed: Option<ShardId>,
}

/// The splits of this round, by size first, then by load.
pub fn plan_splits(
    shards: &[ShardState],
    model: &SplitModel,
    busy: &BTreeSet<ShardId>,
) -> Vec<AutoSplit> {
    let limits = model.limits;
    let mut splits = Vec::new();
    for shard in shards {
        let id = shard.descriptor.id;
        if splits.len() >= MAX_SPLITS_PER_ROUND {
            break;
        }
        if busy.contains(&id)
            || shard.leader.is_none()
            || model.fixed == Some(id)
            || shard.descriptor.merging_into.is_some()
        {
            continue;
        }
        let Some(load) = model.loads.get(&id) else {
            continue;
        };
        let by_size = (limits.split_size_bytes > 0
            && load.bytes.is_some_and(|b| b >= limits.split_size_bytes))
        .then(|| load.size_split_key.clone())
        .flatten()
        .map(|at| (at, SplitReason::Size));
        let by_load = || {
            (limits.split_load_requests_per_second > 0
                && load.requests_per_second >= limits.split_load_requests_per_second
                && load.hot_reports >= limits.split_load_sustained_reports.max(1))
            .then(|| load.load_split_key.clone())
            .flatten()
            .map(|at| (at, SplitReason::Load))
        };
        let Some((at, reason)) = by_size.or_else(by_load) else {
            continue;
        };
        // The leader measured the range this descriptor has; a key outside it is stale.
        if at.as_slice() > shard.descriptor.start_key.as_slice() && shard.descriptor.contains(&at) {
            splits.push(AutoSplit {
                shard: id,
                at,
                reason,
            });
        }
    }
    splits
}

/// The merges of this round: adjacent pairs, left to right, each shard in one at most.
pub fn plan_merges(
    shards: &[ShardState],
    model: &SplitModel,
    busy: &BTreeSet<ShardId>,
) -> Vec<AutoMerge> {
    let limits = model.limits;
    if limits.merge_size_bytes == 0 {
        return Vec::new();
    }
    let cold_below = limits.split_load_requests_per_second / 4;
    let mergeable = |shard: &ShardState| -> Option<u64> {
        let id = shard.descriptor.id;
        if busy.contains(&id)
            || shard.leader.is_none()
            || model.fixed == Some(id)
            || model.young.contains(&id)
            || shard.descriptor.merging_into.is_some()
        {
            return None;
        }
        let load = model.loads.get(&id)?;
        let cold =
            limits.split_load_requests_per_second == 0 || load.requests_per_second < cold_below;
        cold.then_some(load.bytes?)
    };
    let mut ordered: Vec<&ShardState> = shards.iter().collect();
    ordered.sort_by(|a, b| a.descriptor.start_key.cmp(&b.descriptor.start_key));
    let mut merges = Vec::new();
    let mut index = 0;
    while index + 1 < ordered.len() && merges.len() < MAX_MERGES_PER_ROUND {
        let (left, right) = (ordered[index], ordered[index + 1]);
        let adjacent = !left.descriptor.end_key.is_empty()
            && left.descriptor.end_key == right.descriptor.start_key;
        let small = match (mergeable(left), mergeable(right)) {
            (Some(a), Some(b)) => a.saturating_add(b) < limits.merge_size_bytes,
            _ => false,
        };
        if adjacent && small && !model.sticky_keys.contains(&right.descriptor.start_key) {
            merges.push(AutoMerge {
                left: left.descriptor.id,
                right: right.descriptor.id,
            });
            index += 2;
        } else {
            index += 1;
        }
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;
    use rshard_common::shard::ShardDescriptor;

    fn shard(id: ShardId, start: &str, end: &str) -> ShardState {
        ShardState {
            descriptor: ShardDescriptor {
                id,
                start_key: start.as_bytes().to_vec(),
                end_key: end.as_bytes().to_vec(),
                replicas: vec![1, 2, 3],
                ..ShardDescriptor::default()
            },
            leader: Some(1),
            caught_up_learners: Vec::new(),
        }
    }

    fn limits() -> SplitLimits {
        SplitLimits {
            split_size_bytes: 1000,
            split_load_requests_per_second: 100,
            split_load_sustained_reports: 3,
            merge_size_bytes: 250,
        }
    }

    fn sized(bytes: u64, key: &str) -> ShardLoad {
        ShardLoad {
            bytes: Some(bytes),
            size_split_key: Some(key.as_bytes().to_vec()),
            ..ShardLoad::default()
        }
    }

    #[test]
    fn a_shard_at_the_size_limit_splits_at_its_middle_key_and_one_below_does_not() {
        let shards = [shard(1, "a", "m"), shard(2, "m", "z")];
        let model = SplitModel {
            limits: limits(),
            loads: [(1, sized(1000, "f")), (2, sized(999, "p"))].into(),
            ..SplitModel::default()
        };
        let splits = plan_splits(&shards, &model, &BTreeSet::new());
        assert_eq!(
            splits,
            vec![AutoSplit {
                shard: 1,
                at: b"f".to_vec(),
                reason: SplitReason::Size
            }]
        );
        assert!(
            plan_splits(&shards, &model, &BTreeSet::from([1])).is_empty(),
            "busy"
        );
    }

    #[test]
    fn load_splits_need_sustained_load_and_a_key_inside_the_range() {
        let shards = [shard(1, "a", "m")];
        let hot = |reports, key: &str| ShardLoad {
            requests_per_second: 150,
            hot_reports: reports,
            load_split_key: Some(key.as_bytes().to_vec()),
            ..ShardLoad::default()
        };
        let plan = |load: ShardLoad| {
            let model = SplitModel {
                limits: limits(),
                loads: [(1, load)].into(),
                ..SplitModel::default()
            };
            plan_splits(&shards, &model, &BTreeSet::new())
        };
        assert!(plan(hot(2, "c")).is_empty(), "two hot reports of three");
        assert_eq!(plan(hot(3, "c"))[0].reason, SplitReason::Load);
        assert!(
            plan(hot(3, "a")).is_empty(),
            "the first key leaves an empty left side"
        );
        assert!(plan(hot(3, "q")).is_empty(), "outside the range (stale)");
    }

    #[test]
    fn small_cold_neighbours_merge_unless_young_hot_sticky_or_too_big_together() {
        let shards = [
            shard(1, "a", "c"),
            shard(2, "c", "e"),
            shard(3, "e", "g"),
            shard(4, "g", "i"),
        ];
        let base = SplitModel {
            limits: limits(),
            loads: [
                (1, sized(100, "b")),
                (2, sized(100, "d")),
                (3, sized(100, "f")),
                (4, sized(100, "h")),
            ]
            .into(),
            ..SplitModel::default()
        };
        let pairs = |model: &SplitModel| {
            plan_merges(&shards, model, &BTreeSet::new())
                .into_iter()
                .map(|m| (m.left, m.right))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&base), vec![(1, 2), (3, 4)]);
        let mut young = base.clone();
        young.young.insert(2);
        assert_eq!(pairs(&young), vec![(3, 4)], "2 split lately");
        let mut sticky = base.clone();
        sticky.sticky_keys.insert(b"c".to_vec());
        assert_eq!(pairs(&sticky), vec![(2, 3)], "c was split by hand");
        let mut big = base.clone();
        big.loads.insert(1, sized(150, "b"));
        assert_eq!(pairs(&big), vec![(2, 3)], "1 and 2 hold 250 together");
        let mut hot = base.clone();
        if let Some(load) = hot.loads.get_mut(&4) {
            load.requests_per_second = 25;
        }
        assert_eq!(
            pairs(&hot),
            vec![(1, 2)],
            "4 takes a quarter of the load limit"
        );
    }

    #[test]
    fn a_merged_shard_never_qualifies_for_a_split_with_the_default_ratios() {
        // Merges need less than merge_size_bytes together and a quarter of the load each;
        // splits need split_size_bytes or the full load: with merge below split, a merge
        // result is never split by the next round.
        let limits = limits();
        assert!(limits.merge_size_bytes < limits.split_size_bytes);
        let merged = ShardLoad {
            bytes: Some(limits.merge_size_bytes - 1),
            size_split_key: Some(b"d".to_vec()),
            requests_per_second: 2 * (limits.split_load_requests_per_second / 4 - 1),
            hot_reports: u32::MAX,
            load_split_key: Some(b"d".to_vec()),
        };
        let model = SplitModel {
            limits,
            loads: [(1, merged)].into(),
            ..SplitModel::default()
        };
        assert!(plan_splits(&[shard(1, "a", "z")], &model, &BTreeSet::new()).is_empty());
    }
}
