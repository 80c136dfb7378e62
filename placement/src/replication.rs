//! The replication scheduler: brings every shard to the replication factor, one step at a
//! time, as nodes join.
//!
//! A new replica is added as a learner (it receives a snapshot and catches up without
//! counting toward quorums), then promoted to voter once its leader reports it holds every
//! committed entry: adding an empty voter directly would stall commits of a small group
//! while it catches up.
//!
//! Per shard and round, at most one operator: promote a caught-up learner, or add a
//! learner on the live node holding the fewest replicas (ties: the lowest id), or remove a
//! learner nobody needs (on a node that is not live, or in a shard that has all its voters:
//! left by a move that was cancelled or failed; a running move's shard is busy and never
//! planned). Shards without a known leader get nothing (no one could carry the change out).
//! Voters are never removed here (that is repair and rebalancing).

use std::collections::{BTreeMap, BTreeSet};

use rshard_common::shard::{ShardDescriptor, ShardId};

pub type NodeId = u64;

/// A shard as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardState {
    pub descriptor: ShardDescriptor,
    pub leader: Option<NodeId>,
    /// Learners the leader reports as holding every committed entry.
    pub caught_up_learners: Vec<NodeId>,
}

/// A membership step for a shard's leader to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    AddLearner {
        shard: ShardId,
        node: NodeId,
    },
    Promote {
        shard: ShardId,
        node: NodeId,
    },
    /// A learner nobody needs: on a node that is not live, or in a shard that has all its
    /// voters (left behind by a move that was cancelled or failed).
    RemoveLearner {
        shard: ShardId,
        node: NodeId,
    },
}

/// The operators that move `shards` toward `replication_factor` voters on `live_nodes`.
pub fn plan_replication(
    live_nodes: &BTreeSet<NodeId>,
    shards: &[ShardState],
    replication_factor: usize,
) -> Vec<Operator> {
    let mut replicas_per_node: BTreeMap<NodeId, usize> =
        live_nodes.iter().map(|&node| (node, 0)).collect();
    for shard in shards {
        for member in shard.descriptor.members() {
            *replicas_per_node.entry(member).or_default() += 1;
        }
    }
    let mut operators = Vec::new();
    for shard in shards {
        let descriptor = &shard.descriptor;
        if shard.leader.is_none() {
            continue;
        }
        let full = descriptor.replicas.len() >= replication_factor;
        if let Some(&stale) = descriptor
            .learners
            .iter()
            .find(|learner| full || !live_nodes.contains(learner))
        {
            operators.push(Operator::RemoveLearner {
                shard: descriptor.id,
                node: stale,
            });
            continue;
        }
        if full {
            continue;
        }
        if let Some(&learner) = descriptor.learners.first() {
            if shard.caught_up_learners.contains(&learner) {
                operators.push(Operator::Promote {
                    shard: descriptor.id,
                    node: learner,
                });
            }
            continue; // One new replica at a time.
        }
        let members: BTreeSet<NodeId> = descriptor.members().collect();
        let target = live_nodes
            .iter()
            .filter(|node| !members.contains(node))
            .min_by_key(|&&node| (replicas_per_node.get(&node).copied(), node));
        if let Some(&node) = target {
            *replicas_per_node.entry(node).or_default() += 1;
            operators.push(Operator::AddLearner {
                shard: descriptor.id,
                node,
            });
        }
    }
    operators
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: ShardId, replicas: &[NodeId], learners: &[NodeId]) -> ShardState {
        ShardState {
            descriptor: ShardDescriptor {
                id,
                replicas: replicas.to_vec(),
                learners: learners.to_vec(),
                ..ShardDescriptor::default()
            },
            leader: replicas.first().copied(),
            caught_up_learners: Vec::new(),
        }
    }

    fn nodes(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_lone_node_gets_nothing_to_do() {
        let shards = [shard(0, &[1], &[]), shard(1, &[1], &[])];
        assert_eq!(plan_replication(&nodes(&[1]), &shards, 3), vec![]);
    }

    #[test]
    fn new_replicas_go_to_the_least_loaded_live_node_as_learners() {
        let shards = [
            shard(0, &[1], &[]),
            shard(1, &[1, 2], &[]),
            shard(2, &[1, 2], &[]),
        ];
        let plan = plan_replication(&nodes(&[1, 2, 3]), &shards, 3);
        assert_eq!(
            plan,
            vec![
                Operator::AddLearner { shard: 0, node: 3 },
                // Node 3 now holds one planned replica, node 2 two: still node 3.
                Operator::AddLearner { shard: 1, node: 3 },
                Operator::AddLearner { shard: 2, node: 3 },
            ]
        );
        // A node that is not live gets nothing, even if it holds the fewest.
        let plan = plan_replication(&nodes(&[1, 2]), &shards, 3);
        assert_eq!(plan, vec![Operator::AddLearner { shard: 0, node: 2 }]);
    }

    #[test]
    fn a_learner_is_promoted_only_once_caught_up_and_blocks_further_adds() {
        let mut waiting = shard(1, &[1], &[2]);
        let live = nodes(&[1, 2, 3]);
        assert_eq!(plan_replication(&live, &[waiting.clone()], 3), vec![]);
        waiting.caught_up_learners = vec![2];
        assert_eq!(
            plan_replication(&live, &[waiting], 3),
            vec![Operator::Promote { shard: 1, node: 2 }]
        );
    }

    #[test]
    fn full_or_leaderless_shards_are_left_alone() {
        let mut leaderless = shard(1, &[1], &[]);
        leaderless.leader = None;
        let full = shard(2, &[1, 2, 3], &[]);
        assert_eq!(
            plan_replication(&nodes(&[1, 2, 3, 4]), &[leaderless, full], 3),
            vec![]
        );
    }

    #[test]
    fn learners_nobody_needs_are_removed() {
        // A learner left in a full shard, and one on a node that is not live.
        let shards = [shard(0, &[1, 2, 3], &[4]), shard(1, &[1, 2], &[5])];
        let plan = plan_replication(&nodes(&[1, 2, 3, 4]), &shards, 3);
        assert_eq!(
            plan,
            vec![
                Operator::RemoveLearner { shard: 0, node: 4 },
                Operator::RemoveLearner { shard: 1, node: 5 },
            ]
        );
    }
}
