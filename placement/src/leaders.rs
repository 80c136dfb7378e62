//! The leader balance scheduler: spreads shard leadership over the live nodes, so that each
//! leads within one of the mean.
//!
//! A node that leads two or more shards more than another live node is a source; a shard it
//! leads moves to the live voter of that shard leading the fewest (ties: the lowest id), if
//! that leaves the pair no further apart than before less two. Per round, at most
//! `max_moves_per_node` transfers leave each node and arrive at each node, and none touches
//! a shard in `busy` (another operator is under way there) or a shard without a known
//! leader. Moves always go from a node above another by two or more to that node, so the
//! spread never widens and a balanced cluster gets no operator: rounds never flap.

use std::collections::{BTreeMap, BTreeSet};

use rshard_common::shard::ShardId;

use crate::replication::{NodeId, ShardState};

/// Hand `shard`'s leadership from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLeader {
    pub shard: ShardId,
    pub from: NodeId,
    pub to: NodeId,
}

/// The transfers of this round.
pub fn plan_leader_balance(
    live_nodes: &BTreeSet<NodeId>,
    shards: &[ShardState],
    busy: &BTreeSet<ShardId>,
    max_moves_per_node: usize,
) -> Vec<TransferLeader> {
    let mut leading: BTreeMap<NodeId, usize> = live_nodes.iter().map(|&n| (n, 0)).collect();
    for shard in shards {
        if let Some(count) = shard.leader.and_then(|leader| leading.get_mut(&leader)) {
            *count += 1;
        }
    }
    let mut sent: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut received: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut moved: BTreeSet<ShardId> = BTreeSet::new();
    let mut transfers = Vec::new();
    // The most loaded node that may still send (ties: the lowest id).
    while let Some((&from, &from_count)) = leading
        .iter()
        .filter(|(node, _)| sent.get(node).copied().unwrap_or(0) < max_moves_per_node)
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
    {
        // Of the shards it leads, one that can go to a node leading two fewer or less.
        let candidate = shards
            .iter()
            .filter(|s| s.leader == Some(from))
            .filter(|s| !busy.contains(&s.descriptor.id) && !moved.contains(&s.descriptor.id))
            .filter_map(|s| {
                let to = s
                    .descriptor
                    .replicas
                    .iter()
                    .filter(|&&voter| voter != from)
                    .filter(|voter| received.get(voter).copied().unwrap_or(0) < max_moves_per_node)
                    .filter_map(|voter| leading.get(voter).map(|&count| (count, *voter)))
                    .filter(|&(count, _)| count + 2 <= from_count)
                    .min()?;
                Some((to, s.descriptor.id))
            })
            .min();
        let Some(((_, to), shard)) = candidate else {
            // This node cannot shed a leader; let the next one try.
            sent.insert(from, max_moves_per_node);
            continue;
        };
        transfers.push(TransferLeader { shard, from, to });
        moved.insert(shard);
        *sent.entry(from).or_default() += 1;
        *received.entry(to).or_default() += 1;
        if let Some(count) = leading.get_mut(&from) {
            *count -= 1;
        }
        if let Some(count) = leading.get_mut(&to) {
            *count += 1;
        }
    }
    transfers
}

#[cfg(test)]
mod tests {
    use super::*;
    use rshard_common::shard::ShardDescriptor;

    fn cluster(shards: u64, voters: &[NodeId], leader: NodeId) -> Vec<ShardState> {
        (1..=shards)
            .map(|id| ShardState {
                descriptor: ShardDescriptor {
                    id,
                    replicas: voters.to_vec(),
                    ..Default::default()
                },
                leader: Some(leader),
                caught_up_learners: Vec::new(),
            })
            .collect()
    }

    fn counts(shards: &[ShardState]) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for shard in shards {
            if let Some(leader) = shard.leader {
                *counts.entry(leader).or_default() += 1;
            }
        }
        counts
    }

    /// Runs rounds, applying every transfer, until one plans nothing; the rounds it took.
    fn run_to_rest(live: &BTreeSet<NodeId>, shards: &mut [ShardState], per_node: usize) -> usize {
        for round in 0..1000 {
            let transfers = plan_leader_balance(live, shards, &BTreeSet::new(), per_node);
            if transfers.is_empty() {
                return round;
            }
            for transfer in transfers {
                let shard = shards
                    .iter_mut()
                    .find(|s| s.descriptor.id == transfer.shard)
                    .expect("a planned shard exists");
                assert_eq!(shard.leader, Some(transfer.from));
                assert!(shard.descriptor.replicas.contains(&transfer.to));
                shard.leader = Some(transfer.to);
            }
        }
        panic!("the scheduler never came to rest");
    }

    #[test]
    fn thirty_shards_led_by_one_node_end_ten_each_and_then_nothing_moves() {
        let live: BTreeSet<NodeId> = [1, 2, 3].into();
        let mut shards = cluster(30, &[1, 2, 3], 1);
        let rounds = run_to_rest(&live, &mut shards, 2);
        assert_eq!(counts(&shards), [(1, 10), (2, 10), (3, 10)].into());
        assert!(rounds <= 10, "{rounds} rounds");
        assert!(plan_leader_balance(&live, &shards, &BTreeSet::new(), 2).is_empty());
    }

    #[test]
    fn an_uneven_count_ends_within_one_of_the_mean_without_flapping() {
        let live: BTreeSet<NodeId> = [1, 2, 3, 4].into();
        let mut shards = cluster(31, &[1, 2, 3, 4], 2);
        run_to_rest(&live, &mut shards, 1);
        let counts = counts(&shards);
        let (min, max) = (counts.values().min(), counts.values().max());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{counts:?}"
        );
    }

    #[test]
    fn leadership_goes_only_to_live_voters_and_never_to_busy_or_leaderless_shards() {
        // Node 3 is down; node 4 is up but holds no replica of these shards.
        let live: BTreeSet<NodeId> = [1, 2, 4].into();
        let mut shards = cluster(6, &[1, 2, 3], 1);
        shards[0].leader = None;
        let busy: BTreeSet<ShardId> = [2].into();
        let transfers = plan_leader_balance(&live, &shards, &busy, 8);
        assert!(!transfers.is_empty());
        for transfer in &transfers {
            assert_eq!(transfer.to, 2, "{transfer:?}");
            assert!(transfer.shard != 1 && transfer.shard != 2, "{transfer:?}");
        }
        let mut capped = cluster(10, &[1, 2, 3], 1);
        let live: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(
            plan_leader_balance(&live, &capped, &BTreeSet::new(), 1).len(),
            1
        );
        run_to_rest(&live, &mut capped, 1);
        let counts = counts(&capped);
        assert!(counts.values().all(|&c| (3..=4).contains(&c)), "{counts:?}");
    }

    #[test]
    fn a_balanced_cluster_gets_no_operator() {
        let live: BTreeSet<NodeId> = [1, 2, 3].into();
        let mut shards = cluster(5, &[1, 2, 3], 1);
        for (shard, leader) in shards.iter_mut().zip([1, 2, 3, 1, 2]) {
            shard.leader = Some(leader);
        }
        assert!(plan_leader_balance(&live, &shards, &BTreeSet::new(), 4).is_empty());
    }
}
