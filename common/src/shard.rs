//! Shard descriptors: which key range a shard owns, at which epoch, on which replicas.
//!
//! A shard owns `[start_key, end_key)` in byte order; an empty `end_key` means "to the end
//! of the key space". The epoch changes whenever the descriptor does: `version` on split and
//! merge (the range changed), `conf_version` on membership changes. A request routed with an
//! older epoch is answered `StaleEpoch` with the current descriptor. The right-hand shard of
//! a merge is frozen first (`merging_into`, with a version bump): from then on it is retired,
//! never changed again.

use serde::{Deserialize, Serialize};

pub type ShardId = u64;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch {
    /// Bumped by every split and merge.
    pub version: u64,
    /// Bumped by every membership change.
    pub conf_version: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescriptor {
    pub id: ShardId,
    pub start_key: Vec<u8>,
    /// Exclusive; empty means unbounded.
    pub end_key: Vec<u8>,
    pub epoch: Epoch,
    /// Node ids of the voting replicas (in a joint configuration, both halves).
    pub replicas: Vec<u64>,
    /// Node ids of the replicas that receive the log but do not vote (a new replica
    /// catching up before it is promoted).
    #[serde(default)]
    pub learners: Vec<u64>,
    /// Set when the shard was frozen for a merge into its left neighbour, this shard: it
    /// serves and changes nothing more, and is retired when the merge applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merging_into: Option<ShardId>,
}

impl ShardDescriptor {
    /// Every node holding a replica, voter or learner.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.replicas.iter().chain(&self.learners).copied()
    }

    /// True if `key` lies in `[start_key, end_key)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    /// True if every key of `other`'s range lies in this shard's range.
    pub fn covers(&self, other: &ShardDescriptor) -> bool {
        self.start_key <= other.start_key
            && (self.end_key.is_empty()
                || (!other.end_key.is_empty() && other.end_key <= self.end_key))
    }

    /// True if the two shards' ranges share a key.
    pub fn overlaps(&self, other: &ShardDescriptor) -> bool {
        let starts_before_end = |start: &[u8], end: &[u8]| end.is_empty() || start < end;
        starts_before_end(&self.start_key, &other.end_key)
            && starts_before_end(&other.start_key, &self.end_key)
    }
}

/// The prefix of every key of shard `id` in [`numbered_shards`].
pub fn numbered_shard_prefix(id: ShardId) -> Vec<u8> {
    format!("s{id:05}/").into_bytes()
}

/// Shards `1..=count`, shard `id` owning the keys that start with
/// [`numbered_shard_prefix`]`(id)`, each replicated on `replicas`: the layout tests,
/// simulations and benchmarks use.
pub fn numbered_shards(count: u64, replicas: &[u64]) -> Vec<ShardDescriptor> {
    (1..=count)
        .map(|id| ShardDescriptor {
            id,
            start_key: numbered_shard_prefix(id),
            end_key: numbered_shard_prefix(id + 1),
            epoch: Epoch::default(),
            replicas: replicas.to_vec(),
            learners: Vec::new(),
            merging_into: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_half_open_and_an_empty_end_reaches_the_end_of_the_key_space() {
        let shard = ShardDescriptor {
            start_key: b"b".to_vec(),
            end_key: b"d".to_vec(),
            ..Default::default()
        };
        assert!(
            !shard.contains(b"a")
                && shard.contains(b"b")
                && shard.contains(b"c\xff")
                && !shard.contains(b"d")
        );
        let last = ShardDescriptor {
            start_key: b"d".to_vec(),
            ..Default::default()
        };
        assert!(last.contains(b"d") && last.contains(b"\xff\xff") && !last.contains(b"c"));
        let whole = ShardDescriptor::default();
        assert!(whole.contains(b"") && whole.contains(b"anything"));
    }

    #[test]
    fn ranges_overlap_only_when_they_share_a_key() {
        let range = |start: &[u8], end: &[u8]| ShardDescriptor {
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            ..Default::default()
        };
        let middle = range(b"b", b"d");
        assert!(!middle.overlaps(&range(b"a", b"b")) && !range(b"a", b"b").overlaps(&middle));
        assert!(!middle.overlaps(&range(b"d", b"")) && !range(b"d", b"").overlaps(&middle));
        assert!(middle.overlaps(&range(b"c", b"")) && range(b"c", b"").overlaps(&middle));
        assert!(middle.overlaps(&range(b"a", b"b\0")));
        assert!(middle.overlaps(&range(b"", b"")) && range(b"", b"").overlaps(&middle));
        assert!(middle.overlaps(&middle));
    }
}
