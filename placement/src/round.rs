//! One scheduler round as a pure function: which schedulers run, in what order, on what
//! picture of the cluster, and with which limits. The placement service builds the model,
//! calls [`plan_round`] and carries the plan out; the placement simulator
//! (`placement/tests/simulator.rs`) runs rounds of it on synthetic clusters.
//!
//! Order and gating, each scheduler skipping the shards an earlier one took:
//! 1. repair: voters on leaving nodes (dead, or being drained) move to live nodes;
//! 2. replication: shards short of voters gain a learner, caught-up learners are promoted;
//! 3. splits, by size and by load (see `crate::splits`), on shards nothing else took;
//! 4. leader balance, only when enabled and every shard's leader is known (and the caller
//!    says its last transfers settled);
//! 5. merges of small cold neighbours, and then replica balance, only when the picture is
//!    settled: no replica left on a leaving node, no shard short of voters or with a
//!    learner, no move under way, nothing else planned this round, and nothing under way
//!    on the placement leader (`quiet`); replica balance only when enabled. A merge may
//!    move replicas (to align the right shard's with the left's), so it waits like a
//!    balance move does, and takes precedence.

use std::collections::{BTreeMap, BTreeSet};

use rshard_common::shard::ShardId;

use crate::balance::plan_replica_balance;
use crate::leaders::{plan_leader_balance, TransferLeader};
use crate::repair::{plan_repair, RepairMove};
use crate::replication::{plan_replication, NodeId, Operator, ShardState};
use crate::splits::{plan_merges, plan_splits, AutoMerge, AutoSplit, SplitModel};

/// Repair moves under way to one node at once (each streams it a snapshot).
pub const MAX_REPAIRS_PER_NODE: usize = 4;
/// Replica balance moves leaving and arriving at one node per round.
pub const MAX_BALANCE_MOVES_PER_NODE: usize = 2;
/// Leadership transfers the balancer starts from, and to, one node per round.
pub const MAX_LEADER_MOVES_PER_NODE: usize = 8;

/// What placement knows when a round starts.
#[derive(Clone, Debug, Default)]
pub struct ClusterModel {
    /// Nodes that may take replicas and leaderships (heard from lately, not draining).
    pub live: BTreeSet<NodeId>,
    /// Nodes whose replicas must go: dead, or being drained.
    pub leaving: BTreeSet<NodeId>,
    pub shards: Vec<ShardState>,
    /// Shards with an operator or operation under way.
    pub busy: BTreeSet<ShardId>,
    /// Replica moves under way, by target node.
    pub moves_in_flight: BTreeMap<NodeId, usize>,
    pub replication_factor: usize,
    /// The leader balancer is enabled and its last transfers settled.
    pub leader_balance: bool,
    /// The replica balancer is enabled.
    pub replica_balance: bool,
    /// Nothing is under way on the placement leader (no operator, no operation).
    pub quiet: bool,
    /// Sizes, loads and limits for the split and merge schedulers.
    pub splits: SplitModel,
}

/// The operators of one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundPlan {
    pub repairs: Vec<RepairMove>,
    pub replication: Vec<Operator>,
    pub leader_transfers: Vec<TransferLeader>,
    pub splits: Vec<AutoSplit>,
    pub merges: Vec<AutoMerge>,
    pub balance_moves: Vec<RepairMove>,
}

impl RoundPlan {
    pub fn is_empty(&self) -> bool {
        self.repairs.is_empty()
            && self.replication.is_empty()
            && self.leader_transfers.is_empty()
            && self.splits.is_empty()
            && self.merges.is_empty()
            && self.balance_moves.is_empty()
    }
}

pub fn plan_round(model: &ClusterModel) -> RoundPlan {
    let mut busy = model.busy.clone();
    let repairs = if model.leaving.is_empty() {
        Vec::new()
    } else {
        plan_repair(
            &model.live,
            &model.leaving,
            &model.shards,
            &busy,
            &model.moves_in_flight,
            MAX_REPAIRS_PER_NODE,
        )
    };
    busy.extend(repairs.iter().map(|repair| repair.shard));
    let replication: Vec<Operator> =
        plan_replication(&model.live, &model.shards, model.replication_factor)
            .into_iter()
            .filter(|operator| !busy.contains(&operator_shard(operator)))
            .collect();
    busy.extend(replication.iter().map(operator_shard));
    let splits = plan_splits(&model.shards, &model.splits, &busy);
    busy.extend(splits.iter().map(|split| split.shard));
    let leaders_known = model.shards.iter().all(|shard| shard.leader.is_some());
    let leader_transfers = if model.leader_balance && leaders_known {
        plan_leader_balance(&model.live, &model.shards, &busy, MAX_LEADER_MOVES_PER_NODE)
    } else {
        Vec::new()
    };
    busy.extend(leader_transfers.iter().map(|transfer| transfer.shard));
    let replicated = model.shards.iter().all(|shard| {
        shard.descriptor.learners.is_empty()
            && shard.descriptor.replicas.len() >= model.replication_factor
    });
    // A dead node that holds nothing any more (repaired) does not hold balance back; one
    // still holding replicas does (repair first, or an operator for a lost majority).
    let repaired = !model.shards.iter().any(|shard| {
        shard
            .descriptor
            .members()
            .any(|member| model.leaving.contains(&member))
    });
    let settled = model.quiet
        && replicated
        && repaired
        && model.moves_in_flight.is_empty()
        && repairs.is_empty()
        && replication.is_empty()
        && splits.is_empty()
        && leader_transfers.is_empty();
    let merges = if settled {
        plan_merges(&model.shards, &model.splits, &busy)
    } else {
        Vec::new()
    };
    busy.extend(merges.iter().flat_map(|merge| [merge.left, merge.right]));
    let balance_moves = if model.replica_balance && settled && merges.is_empty() {
        plan_replica_balance(
            &model.live,
            &model.shards,
            &busy,
            MAX_BALANCE_MOVES_PER_NODE,
        )
    } else {
        Vec::new()
    };
    RoundPlan {
        repairs,
        replication,
        leader_transfers,
        splits,
        merges,
        balance_moves,
    }
}

fn operator_shard(operator: &Operator) -> ShardId {
    match operator {
        Operator::AddLearner { shard, .. }
        | Operator::Promote { shard, .. }
        | Operator::RemoveLearner { shard, .. } => *shard,
    }
}
