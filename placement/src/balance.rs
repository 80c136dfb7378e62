//! The replica balance scheduler: spreads replicas over the live nodes so that each holds
//! within 10% of the mean, moving as few as it can.
//!
//! A round moves replicas from the node holding the most to the node holding the fewest
//! while one of the two lies outside the band (more than 10% above or below the mean) and
//! they differ by two or more: each move then brings the pair closer without swapping
//! them, so rounds converge and a balanced cluster gets nothing (rounds never flap). Which
//! replica: of the shards the source holds and the target does not, not in `busy` and with
//! a known leader, a follower's before the leader's (no leadership to hand away), then the
//! lowest shard id. At most `max_moves_per_node` moves leave and arrive at each node per
//! round. The caller runs it only when nothing else moves replicas (no repair, no drain, no
//! move under way), so the counts it sees are settled.

use std::collections::{BTreeMap, BTreeSet};

use rshard_common::shard::ShardId;

use crate::repair::RepairMove;
use crate::replication::{NodeId, ShardState};

/// The moves of this round, as (shard, from, to).
pub fn plan_replica_balance(
    live_nodes: &BTreeSet<NodeId>,
    shards: &[ShardState],
    busy: &BTreeSet<ShardId>,
    max_moves_per_node: usize,
) -> Vec<RepairMove> {
    if live_nodes.len() < 2 {
        return Vec::new();
    }
    let mut holding: BTreeMap<NodeId, BTreeSet<ShardId>> = live_nodes
        .iter()
        .map(|&node| (node, BTreeSet::new()))
        .collect();
    for shard in shards {
        for member in shard.descriptor.members() {
            if let Some(held) = holding.get_mut(&member) {
                held.insert(shard.descriptor.id);
            }
        }
    }
    let total: usize = holding.values().map(BTreeSet::len).sum();
    let mean = total as f64 / live_nodes.len() as f64;
    let outside = |count: usize| {
        let count = count as f64;
        count > mean * 1.1 || count < mean * 0.9
    };
    let mut left: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut arrived: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut moved: BTreeSet<ShardId> = BTreeSet::new();
    let mut moves = Vec::new();
    loop {
        let may_send = |node: &NodeId| left.get(node).copied().unwrap_or(0) < max_moves_per_node;
        let may_take = |node: &NodeId| arrived.get(node).copied().unwrap_or(0) < max_moves_per_node;
        // The fullest node that may send and the emptiest that may take (ties: lowest id).
        let Some((&from, from_held)) = holding
            .iter()
            .filter(|(node, _)| may_send(node))
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
        else {
            break;
        };
        let Some((&to, to_held)) = holding
            .iter()
            .filter(|(node, _)| may_take(node) && **node != from)
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then(a.0.cmp(b.0)))
        else {
            break;
        };
        let (from_count, to_count) = (from_held.len(), to_held.len());
        if from_count < to_count + 2 || !(outside(from_count) || outside(to_count)) {
            break;
        }
        let candidate = shards
            .iter()
            .filter(|s| s.descriptor.replicas.contains(&from))
            .filter(|s| !s.descriptor.members().any(|member| member == to))
            .filter(|s| s.leader.is_some())
            .filter(|s| !busy.contains(&s.descriptor.id) && !moved.contains(&s.descriptor.id))
            .min_by_key(|s| (s.leader == Some(from), s.descriptor.id));
        let Some(shard) = candidate.map(|s| s.descriptor.id) else {
            // Nothing this pair can trade: let the source rest this round.
            left.insert(from, max_moves_per_node);
            continue;
        };
        moves.push(RepairMove { shard, from, to });
        moved.insert(shard);
        *left.entry(from).or_default() += 1;
        *arrived.entry(to).or_default() += 1;
        if let Some(held) = holding.get_mut(&from) {
            held.remove(&shard);
        }
        if let Some(held) = holding.get_mut(&to) {
            held.insert(shard);
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use rshard_common::shard::ShardDescriptor;

    fn shard(id: ShardId, replicas: &[NodeId]) -> ShardState {
        ShardState {
            descriptor: ShardDescriptor {
                id,
                replicas: replicas.to_vec(),
                ..Default::default()
            },
            leader: replicas.first().copied(),
            caught_up_learners: Vec::new(),
        }
    }

    fn nodes(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn counts(shards: &[ShardState]) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for shard in shards {
            for &voter in &shard.descriptor.replicas {
                *counts.entry(voter).or_default() += 1;
            }
        }
        counts
    }

    /// Applies rounds until one plans nothing; the rounds it took.
    fn run_to_rest(live: &BTreeSet<NodeId>, shards: &mut [ShardState], per_node: usize) -> usize {
        for round in 0..1000 {
            let moves = plan_replica_balance(live, shards, &BTreeSet::new(), per_node);
            if moves.is_empty() {
                return round;
            }
            for planned in moves {
                let state = shards
                    .iter_mut()
                    .find(|s| s.descriptor.id == planned.shard)
                    .expect("a planned shard exists");
                for voter in &mut state.descriptor.replicas {
                    if *voter == planned.from {
                        *voter = planned.to;
                    }
                }
                if state.leader == Some(planned.from) {
                    state.leader = Some(planned.to);
                }
            }
        }
        panic!("the rounds never came to rest");
    }

    #[test]
    fn a_new_node_fills_to_the_mean_and_then_nothing_moves() {
        // 8 shards on nodes 1-3 (24 replicas), node 4 empty: 6 each at rest.
        let mut shards: Vec<ShardState> = (1..=8).map(|id| shard(id, &[1, 2, 3])).collect();
        let live = nodes(&[1, 2, 3, 4]);
        let rounds = run_to_rest(&live, &mut shards, 2);
        assert_eq!(
            counts(&shards),
            BTreeMap::from([(1, 6), (2, 6), (3, 6), (4, 6)])
        );
        assert!(rounds >= 3, "at most two arrive per round: {rounds} rounds");
        for shard in &shards {
            let distinct: BTreeSet<_> = shard.descriptor.replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "two replicas of one shard on one node");
        }
    }

    #[test]
    fn within_the_band_or_one_apart_nothing_moves() {
        // 10 shards x 3 on 4 nodes: 7.5 each; 8,8,7,7 is within 10%.
        let layout = [[1, 2, 3], [1, 2, 4], [1, 3, 4], [2, 3, 4]];
        let shards: Vec<ShardState> = (0..10)
            .map(|i| shard(i + 1, &layout[(i % 4) as usize]))
            .collect();
        let live = nodes(&[1, 2, 3, 4]);
        assert!(plan_replica_balance(&live, &shards, &BTreeSet::new(), 4).is_empty());
        // 2 shards x 3 on 4 nodes (mean 1.5): 2,2,1,1 is as even as integers get.
        let shards = [shard(1, &[1, 2, 3]), shard(2, &[1, 2, 4])];
        assert!(plan_replica_balance(&live, &shards, &BTreeSet::new(), 4).is_empty());
    }

    #[test]
    fn busy_and_leaderless_shards_stay_and_followers_move_before_leaders() {
        let mut shards: Vec<ShardState> = (1..=4).map(|id| shard(id, &[1, 2, 3])).collect();
        shards[0].leader = None;
        shards[3].leader = Some(2);
        let live = nodes(&[1, 2, 3, 4]);
        let busy: BTreeSet<ShardId> = [2].into();
        let moves = plan_replica_balance(&live, &shards, &busy, 1);
        // Mean 3; node 4 holds none, nodes 1-3 four each (the source: node 1, by id). One
        // arrival per round. Not shard 1 (no leader) or 2 (busy); of 3 (node 1 leads it)
        // and 4 (node 1 follows), shard 4.
        assert_eq!(
            moves,
            vec![RepairMove {
                shard: 4,
                from: 1,
                to: 4
            }]
        );
    }
}
