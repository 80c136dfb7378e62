//! The repair scheduler: a voter on a node placement has not heard from for the dead-node
//! timeout is moved to a live node, so every shard gets back to its full set of voters.
//!
//! Per round and shard, at most one move, and none for a shard in `busy` (an operation or
//! operator is under way there: a move already repairing it, for one) or without a known
//! leader (no one could carry it out). The target is the live node holding no replica of
//! the shard that holds the fewest replicas, counting the moves planned this round (ties:
//! the lowest id). At most `max_moves_per_node` moves arrive at a node at once, counting
//! `in_flight` (those still under way): each streams a snapshot to it, so repair runs at a
//! bounded pace. A shard whose best targets are full waits for a later round rather than
//! going to a node more loaded than one above the least loaded.
//!
//! A move needs a majority of the old voters and of the new ones (one joint change), so a
//! shard that lost a majority of its voters is not repaired by this: it needs an operator.
//! A learner on a dead node is left alone (it counts toward no quorum).

use std::collections::{BTreeMap, BTreeSet};

use rshard_common::shard::ShardId;

use crate::replication::{NodeId, ShardState};

/// Move `shard`'s replica from the dead node `from` to the live node `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairMove {
    pub shard: ShardId,
    pub from: NodeId,
    pub to: NodeId,
}

/// The repairs to start this round.
pub fn plan_repair(
    live_nodes: &BTreeSet<NodeId>,
    dead_nodes: &BTreeSet<NodeId>,
    shards: &[ShardState],
    busy: &BTreeSet<ShardId>,
    in_flight: &BTreeMap<NodeId, usize>,
    max_moves_per_node: usize,
) -> Vec<RepairMove> {
    let mut replicas_per_node: BTreeMap<NodeId, usize> =
        live_nodes.iter().map(|&node| (node, 0)).collect();
    for shard in shards {
        for member in shard.descriptor.members() {
            if let Some(count) = replicas_per_node.get_mut(&member) {
                *count += 1;
            }
        }
    }
    let mut arriving = in_flight.clone();
    let mut moves = Vec::new();
    for shard in shards {
        let descriptor = &shard.descriptor;
        if shard.leader.is_none() || busy.contains(&descriptor.id) {
            continue;
        }
        let Some(&from) = descriptor
            .replicas
            .iter()
            .find(|voter| dead_nodes.contains(voter))
        else {
            continue;
        };
        let load = |node: NodeId| replicas_per_node.get(&node).copied().unwrap_or(0);
        let candidates: Vec<NodeId> = live_nodes
            .iter()
            .copied()
            .filter(|&node| !descriptor.members().any(|member| member == node))
            .collect();
        let Some(least) = candidates.iter().map(|&node| load(node)).min() else {
            continue;
        };
        // Within one of the least loaded: a full node makes the shard wait a round rather
        // than send it somewhere worse (the limit slows repair, it does not skew it).
        let target = candidates
            .into_iter()
            .filter(|&node| load(node) <= least + 1)
            .filter(|node| arriving.get(node).copied().unwrap_or(0) < max_moves_per_node)
            .min_by_key(|&node| (load(node), node));
        let Some(to) = target else {
            continue;
        };
        *replicas_per_node.entry(to).or_default() += 1;
        *arriving.entry(to).or_default() += 1;
        moves.push(RepairMove {
            shard: descriptor.id,
            from,
            to,
        });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use rshard_common::shard::ShardDescriptor;

    fn shard(id: ShardId, replicas: &[NodeId], leader: Option<NodeId>) -> ShardState {
        ShardState {
            descriptor: ShardDescriptor {
                id,
                replicas: replicas.to_vec(),
                ..Default::default()
            },
            leader,
            caught_up_learners: Vec::new(),
        }
    }

    fn nodes(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn plan(
        live: &[NodeId],
        dead: &[NodeId],
        shards: &[ShardState],
        busy: &[ShardId],
        per_node: usize,
    ) -> Vec<RepairMove> {
        plan_repair(
            &nodes(live),
            &nodes(dead),
            shards,
            &busy.iter().copied().collect(),
            &BTreeMap::new(),
            per_node,
        )
    }

    #[test]
    fn nothing_dead_nothing_to_do() {
        let shards = [shard(1, &[1, 2, 3], Some(1))];
        assert_eq!(plan(&[1, 2, 3, 4], &[], &shards, &[], 4), vec![]);
    }

    #[test]
    fn a_dead_voter_moves_to_the_least_loaded_live_node_without_a_replica() {
        let shards = [
            shard(1, &[1, 2, 3], Some(1)),
            shard(2, &[1, 2, 4], Some(1)),
            shard(3, &[2, 3, 5], Some(2)),
        ];
        // Node 3 is dead. Shard 1 may go to 4 (one replica) or 5 (one): the lowest id.
        // Shard 3 may go to 1 (two replicas) or 4 (two, with the move just planned): the
        // lowest id again.
        let moves = plan(&[1, 2, 4, 5], &[3], &shards, &[], 4);
        assert_eq!(
            moves,
            vec![
                RepairMove {
                    shard: 1,
                    from: 3,
                    to: 4
                },
                RepairMove {
                    shard: 3,
                    from: 3,
                    to: 1
                },
            ]
        );
    }

    #[test]
    fn busy_and_leaderless_shards_and_full_targets_wait() {
        let shards = [
            shard(1, &[1, 2, 3], Some(1)),
            shard(2, &[1, 2, 3], None),
            shard(3, &[1, 2, 3], Some(1)),
            shard(4, &[1, 2, 3], Some(2)),
        ];
        // Shard 1 is busy, shard 2 has no leader; one move at a time may arrive at node 4.
        let moves = plan(&[1, 2, 4], &[3], &shards, &[1], 1);
        assert_eq!(
            moves,
            vec![RepairMove {
                shard: 3,
                from: 3,
                to: 4
            }]
        );
        // Moves already under way count against the limit.
        let in_flight = BTreeMap::from([(4, 1)]);
        let none = plan_repair(
            &nodes(&[1, 2, 4]),
            &nodes(&[3]),
            &shards,
            &BTreeSet::new(),
            &in_flight,
            1,
        );
        assert_eq!(none, vec![]);
    }

    #[test]
    fn one_move_per_shard_even_with_two_dead_voters_and_never_onto_a_member() {
        let shards = [shard(1, &[1, 2, 3], Some(1))];
        // Nodes 2 and 3 are dead: one move per round; node 1 (a member) is never a target.
        let moves = plan(&[1, 4, 5], &[2, 3], &shards, &[], 4);
        assert_eq!(
            moves,
            vec![RepairMove {
                shard: 1,
                from: 2,
                to: 4
            }]
        );
        assert_eq!(plan(&[1], &[2, 3], &shards, &[], 4), vec![]);
    }

    /// Rounds to rest on a synthetic cluster, applying each move: every shard ends on
    /// live nodes only, with as many voters as before, and the rounds stop.
    #[test]
    fn rounds_rebuild_every_replica_of_a_dead_node_and_then_rest() {
        let mut shards: Vec<ShardState> = (1..=12)
            .map(|id| {
                let a = id % 4 + 1;
                let b = (id + 1) % 4 + 1;
                let c = (id + 2) % 4 + 1;
                shard(id, &[a, b, c], Some(a))
            })
            .collect();
        let (live, dead) = (nodes(&[1, 2, 3, 5, 6]), nodes(&[4]));
        for _ in 0..100 {
            let moves = plan_repair(&live, &dead, &shards, &BTreeSet::new(), &BTreeMap::new(), 2);
            if moves.is_empty() {
                break;
            }
            for repair in moves {
                let descriptor = &mut shards[(repair.shard - 1) as usize].descriptor;
                for voter in &mut descriptor.replicas {
                    if *voter == repair.from {
                        *voter = repair.to;
                    }
                }
            }
        }
        for shard in &shards {
            assert_eq!(shard.descriptor.replicas.len(), 3);
            assert!(shard.descriptor.replicas.iter().all(|n| live.contains(n)));
        }
        // Spread over the live nodes: 36 replicas on 5 nodes, nobody above 9.
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for shard in &shards {
            for &voter in &shard.descriptor.replicas {
                *count.entry(voter).or_default() += 1;
            }
        }
        assert!(count.values().all(|&n| n <= 9), "{count:?}");
    }
}
