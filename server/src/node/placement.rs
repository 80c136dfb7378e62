//! The placement service, first part: the node registry, node reports, and the replication
//! scheduler, run by whichever node leads the placement group (shard 0).
//!
//! The placement group's state is ordinary replicated key-value data in the system range
//! (keys from 0xff): node records under `\xff/node/<id>` and the newest shard descriptor
//! each shard leader reported under `\xff/shard/<id>`. Reading and writing them goes
//! through the local leader replica like any request (linearizable reads, compare-and-swap
//! writes), so a new placement leader finds exactly what the old one wrote.
//!
//! What is not replicated: when each node was last heard from, and which node leads which
//! shard. Every node reports both every [`REPORT_INTERVAL`], so a new placement leader knows
//! them again within one interval and schedules nothing before (a shard without a known
//! leader gets no operator).
//!
//! Every node runs the report loop; the one leading shard 0 also runs the scheduler rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rshard_common::api::{
    ApiError, ApiRequest, ApiResponse, DiskSpace, NodeCapacity, NodeId, NodeInfo, NodeReport,
    Operation, OperationKind, OperationProgress, OperationState, ReplicaChange, ShardRoute,
    ShardStats, PLACEMENT_SHARD,
};
use rshard_common::shard::{Epoch, ShardDescriptor, ShardId};
use rshard_placement::leaders::TransferLeader;
use rshard_placement::repair::RepairMove;
use rshard_placement::replication::{Operator, ShardState};
use rshard_placement::round::{plan_round, ClusterModel};
use rshard_placement::splits::{AutoMerge, AutoSplit, ShardLoad, SplitLimits, SplitModel};
use serde::{Deserialize, Serialize};

use super::api::Caller;
use super::NodeContext;
use crate::kv::KvOp;
use crate::multiraft::{Request, Response};

/// How often every node reports to the placement leader, and the scheduler runs.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
const NODE_PREFIX: &[u8] = b"\xff/node/";
const SHARD_PREFIX: &[u8] = b"\xff/shard/";
/// Operations, by id: `\xff/op/<id>` -> [`Operation`].
const OPERATION_PREFIX: &[u8] = b"\xff/op/";
/// The next shard and operation ids to hand out.
const ID_COUNTER_KEY: &[u8] = b"\xff/counter/ids";
/// Whether the leader balance scheduler is paused ([`SchedulerSettings`]).
const SCHEDULER_SETTINGS_KEY: &[u8] = b"\xff/settings/schedulers";
/// Sticky split keys (see [`StickySplit`]): `\xff/sticky/<key>`.
const STICKY_PREFIX: &[u8] = b"\xff/sticky/";
/// Attempts at allocating ids when operations start at once.
const MAX_ALLOCATION_ATTEMPTS: usize = 8;
/// How long a shard whose leadership the balancer moved gets no other operator: until the
/// reports show where its leadership went.
const LEADER_MOVE_SETTLE: Duration = Duration::from_secs(2);
/// Attempts at reaching a shard's leader for one step of an operation.
const MAX_LEADER_ATTEMPTS: u32 = 10;
/// Attempts at allocating a node id when joins race.
const MAX_JOIN_ATTEMPTS: usize = 8;

/// A registered node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub address: String,
    /// The token the node joined with (empty for the bootstrap node).
    #[serde(default)]
    pub join_token: String,
    /// Drained and removed from the cluster: its reports are refused, its address may go
    /// to a new node, and its id is never handed out again.
    #[serde(default)]
    pub decommissioned: bool,
}

/// The registered nodes that were not decommissioned.
async fn member_nodes(context: &NodeContext) -> Result<Vec<NodeRecord>, ApiError> {
    let nodes: Vec<NodeRecord> = scan_records(context, NODE_PREFIX).await?;
    Ok(nodes.into_iter().filter(|n| !n.decommissioned).collect())
}

/// What the placement leader remembers between reports (not replicated).
#[derive(Debug, Default)]
pub struct PlacementMemory {
    last_heard: BTreeMap<NodeId, Instant>,
    leaders: BTreeMap<ShardId, NodeId>,
    caught_up: BTreeMap<ShardId, Vec<NodeId>>,
    /// Each node's capacity, from its last report.
    capacity: BTreeMap<NodeId, NodeCapacity>,
    /// Shards with a replication operator under way: at most one each, so rounds never
    /// pile operators (and tasks) onto a slow shard.
    operating: BTreeSet<ShardId>,
    /// Operations being carried out by this placement leader (not resumed again).
    executing: BTreeSet<u64>,
    /// Leadership transfers of the balancer not yet settled (see `LEADER_MOVE_SETTLE`).
    leader_moves_settling: usize,
    /// Since when this node leads placement (`None` while it does not): `last_heard` is
    /// only this leader's, so no node counts as dead before a dead-node timeout of it.
    leading_since: Option<Instant>,
    /// Each shard's size and load from its leader's last report (of the epoch version
    /// they name), and how many reports in a row were at or above the load threshold.
    loads: BTreeMap<ShardId, (ShardStats, u32)>,
    /// The epoch version each shard was first seen at by this placement leader, and when:
    /// a shard whose range changed within `merge_after_range_change` is not merged.
    range_seen: BTreeMap<ShardId, (u64, Instant)>,
}

impl PlacementMemory {
    /// True if `node` reported to this placement leader within `window`.
    fn heard_within(&self, node: NodeId, window: Duration) -> bool {
        self.last_heard
            .get(&node)
            .is_some_and(|heard| heard.elapsed() < window)
    }

    /// True if this node has led placement for `window` or more: only then has it heard
    /// every live node at least once in that window.
    fn led_for(&self, window: Duration) -> bool {
        self.leading_since
            .is_some_and(|since| since.elapsed() >= window)
    }
}

/// What an operator set about the schedulers (replicated, so it survives a change of
/// placement leader). Absent: every scheduler runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SchedulerSettings {
    leader_balance_paused: bool,
    #[serde(default)]
    replica_balance_paused: bool,
}

/// The next ids placement hands out (replicated, under [`ID_COUNTER_KEY`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdCounters {
    next_shard: ShardId,
    next_operation: u64,
}

fn record_key(prefix: &[u8], id: u64) -> Vec<u8> {
    [prefix, &id.to_be_bytes()].concat()
}

/// The first key after every key starting with `prefix` (empty: the end of the key space).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    rshard_common::api::prefix_end(prefix).unwrap_or_default()
}

/// The placement shard's epoch, if this node leads it.
fn placement_epoch(context: &NodeContext) -> Result<Epoch, ApiError> {
    let view = context.driver.view();
    let replica = view.replicas.get(&PLACEMENT_SHARD);
    match replica {
        Some(r) if r.leader == Some(context.identity.node) => Ok(r.descriptor.epoch),
        _ => Err(ApiError::NotLeader {
            shard: PLACEMENT_SHARD,
            leader: replica
                .and_then(|r| r.leader)
                .or_else(|| context.cluster_leader(PLACEMENT_SHARD))
                .and_then(|node| context.node_info(node)),
        }),
    }
}

async fn scan_records<T: for<'de> Deserialize<'de>>(
    context: &NodeContext,
    prefix: &[u8],
) -> Result<Vec<T>, ApiError> {
    let epoch = placement_epoch(context)?;
    let end = prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut records = Vec::new();
    loop {
        let request = Request::Scan {
            shard: PLACEMENT_SHARD,
            epoch,
            start: start.clone(),
            end: end.clone(),
            limit: 1000,
        };
        let Response::Items { items, more } = context.request(request).await? else {
            return Err(ApiError::Refused("unexpected answer to a scan".to_string()));
        };
        for (_, value) in &items {
            let record = rmp_serde::from_slice(value)
                .map_err(|error| ApiError::Refused(format!("corrupt placement record: {error}")))?;
            records.push(record);
        }
        match items.last() {
            Some((key, _)) if more => start = [key.as_slice(), &[0]].concat(),
            _ => return Ok(records),
        }
    }
}

/// Writes `key` whatever it holds (for records only one writer changes, like sticky marks).
async fn put_record(context: &NodeContext, key: Vec<u8>, value: Vec<u8>) -> Result<(), ApiError> {
    let command = crate::kv::KvCommand {
        shard: PLACEMENT_SHARD,
        epoch: placement_epoch(context)?,
        ops: vec![KvOp::Put { key, value }],
    };
    match context.request(Request::Write(command)).await? {
        Response::Written(_) => Ok(()),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Writes `key` if its current value is `expected`; false if it was not.
async fn compare_and_swap(
    context: &NodeContext,
    key: Vec<u8>,
    expected: Option<Vec<u8>>,
    new: Vec<u8>,
) -> Result<bool, ApiError> {
    let epoch = placement_epoch(context)?;
    let command = crate::kv::KvCommand {
        shard: PLACEMENT_SHARD,
        epoch,
        ops: vec![KvOp::CompareAndSwap {
            key,
            expected,
            new: Some(new),
        }],
    };
    match context.request(Request::Write(command)).await? {
        Response::Written(crate::kv::KvOutcome::Applied) => Ok(true),
        Response::Written(crate::kv::KvOutcome::ConditionFailed { .. }) => Ok(false),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, ApiError> {
    rmp_serde::to_vec(record).map_err(|error| ApiError::Refused(error.to_string()))
}

/// Registers a new node at `address` and gives it an id.
pub async fn join(
    context: &NodeContext,
    address: String,
    token: String,
) -> Result<ApiResponse, ApiError> {
    if address.parse::<SocketAddr>().is_err() {
        return Err(ApiError::Malformed(format!("not an address: {address:?}")));
    }
    for _ in 0..MAX_JOIN_ATTEMPTS {
        let nodes: Vec<NodeRecord> = scan_records(context, NODE_PREFIX).await?;
        if let Some(existing) = nodes
            .iter()
            .find(|n| n.address == address && !n.decommissioned)
        {
            if !token.is_empty() && existing.join_token == token {
                // The same node retrying after a crash before it stored its identity.
                return Ok(ApiResponse::Joined {
                    node: existing.id,
                    cluster: context.identity.cluster.clone(),
                });
            }
            return Err(ApiError::Refused(format!(
                "address {address} belongs to node {}; restart that node with its own data \
                 directory instead of joining as a new node",
                existing.id
            )));
        }
        // Above every id in use: registered, this node's (the bootstrap node registers
        // itself with its first report, which a join may precede), and every replica.
        let view = context.driver.view();
        let in_use = nodes
            .iter()
            .map(|n| n.id)
            .chain([context.identity.node])
            .chain(view.replicas.values().flat_map(|r| r.descriptor.members()));
        let id = in_use.max().unwrap_or(0) + 1;
        let record = NodeRecord {
            id,
            address: address.clone(),
            join_token: token.clone(),
            decommissioned: false,
        };
        let key = record_key(NODE_PREFIX, id);
        if compare_and_swap(context, key, None, encode(&record)?).await? {
            tracing::info!(node = id, %address, "node joined");
            if let Ok(mut memory) = context.placement.lock() {
                memory.last_heard.insert(id, Instant::now());
            }
            return Ok(ApiResponse::Joined {
                node: id,
                cluster: context.identity.cluster.clone(),
            });
        }
    }
    Err(ApiError::Busy("too many nodes joining at once".to_string()))
}

/// Takes a node's report; answers with the cluster as placement knows it.
pub async fn heartbeat(context: &NodeContext, report: NodeReport) -> Result<ApiResponse, ApiError> {
    let nodes: Vec<NodeRecord> = scan_records(context, NODE_PREFIX).await?;
    if nodes
        .iter()
        .any(|n| n.id == report.node && n.decommissioned)
    {
        return Err(ApiError::Refused(format!(
            "node {} was decommissioned; stop it",
            report.node
        )));
    }
    let nodes: Vec<NodeRecord> = nodes.into_iter().filter(|n| !n.decommissioned).collect();
    if report.node != context.identity.node && !nodes.iter().any(|n| n.id == report.node) {
        return Err(ApiError::Refused(format!(
            "node {} is not registered in this cluster",
            report.node
        )));
    }
    let mut nodes = nodes;
    if !nodes
        .iter()
        .any(|n| n.id == report.node && n.address == report.address)
    {
        // The bootstrap node registers itself here; a node whose address changed updates it.
        let current = nodes.iter().find(|n| n.id == report.node);
        let record = NodeRecord {
            id: report.node,
            address: report.address.clone(),
            join_token: current.map(|n| n.join_token.clone()).unwrap_or_default(),
            decommissioned: false,
        };
        let key = record_key(NODE_PREFIX, report.node);
        let current = current.map(encode).transpose()?;
        if compare_and_swap(context, key, current, encode(&record)?).await? {
            nodes.retain(|n| n.id != report.node);
            nodes.push(record);
        }
    }
    let stored: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    for descriptor in &report.leading {
        let current = stored.iter().find(|s| s.id == descriptor.id);
        if current.is_some_and(|c| c.epoch >= descriptor.epoch) {
            continue;
        }
        // A shard merged away, reported by a replica that has not applied the merge yet:
        // the shard that took its range is newer.
        let superseded = stored.iter().any(|other| {
            other.id != descriptor.id
                && other.overlaps(descriptor)
                && other.epoch.version > descriptor.epoch.version
        });
        if superseded {
            continue;
        }
        let key = record_key(SHARD_PREFIX, descriptor.id);
        let expected = current.map(encode).transpose()?;
        // A lost race means another report stored a descriptor first; the next report
        // compares again.
        let _stored = compare_and_swap(context, key, expected, encode(descriptor)?).await?;
    }
    {
        let Ok(mut memory) = context.placement.lock() else {
            return Err(ApiError::Unavailable(
                "placement state poisoned".to_string(),
            ));
        };
        memory.last_heard.insert(report.node, Instant::now());
        memory.capacity.insert(
            report.node,
            NodeCapacity {
                replicas: report.replicas,
                disk: report.disk,
            },
        );
        memory.leaders.retain(|_, leader| *leader != report.node);
        for descriptor in &report.leading {
            memory.leaders.insert(descriptor.id, report.node);
            memory.caught_up.remove(&descriptor.id);
        }
        for (shard, learner) in &report.caught_up_learners {
            memory.caught_up.entry(*shard).or_default().push(*learner);
        }
        let hot_at = context.config.split_load_requests_per_second;
        for stats in &report.shard_stats {
            let previous = memory
                .loads
                .get(&stats.shard)
                .filter(|(last, _)| last.version == stats.version)
                .map_or(0, |(_, hot_reports)| *hot_reports);
            let hot = hot_at > 0 && stats.requests_per_second >= hot_at;
            let hot_reports = if hot { previous.saturating_add(1) } else { 0 };
            memory
                .loads
                .insert(stats.shard, (stats.clone(), hot_reports));
        }
    }
    cluster_view(context, nodes).await
}

async fn cluster_view(
    context: &NodeContext,
    nodes: Vec<NodeRecord>,
) -> Result<ApiResponse, ApiError> {
    let shards: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    let Ok(memory) = context.placement.lock() else {
        return Err(ApiError::Unavailable(
            "placement state poisoned".to_string(),
        ));
    };
    let live_within = context.config.suspect_node_timeout;
    let nodes: Vec<NodeInfo> = nodes
        .into_iter()
        .map(|record| NodeInfo {
            live: memory.heard_within(record.id, live_within),
            capacity: memory.capacity.get(&record.id).copied(),
            id: record.id,
            address: record.address,
        })
        .collect();
    let shards = shards
        .into_iter()
        .map(|descriptor| ShardRoute {
            leader: memory
                .leaders
                .get(&descriptor.id)
                .and_then(|leader| nodes.iter().find(|n| n.id == *leader))
                .cloned(),
            // Sizes and loads, not the split keys (every node gets this view each second).
            stats: memory
                .loads
                .get(&descriptor.id)
                .filter(|(stats, _)| stats.version == descriptor.epoch.version)
                .map(|(stats, _)| ShardStats {
                    size_split_key: None,
                    load_split_key: None,
                    ..stats.clone()
                }),
            descriptor,
        })
        .collect();
    Ok(ApiResponse::ClusterView {
        cluster: context.identity.cluster.clone(),
        nodes,
        shards,
    })
}

/// One scheduler round, if this node leads the placement group: plan, then ask each
/// shard's leader to carry its operator out.
pub async fn schedule(context: &Arc<NodeContext>) -> Result<usize, ApiError> {
    let records: Vec<NodeRecord> = scan_records(context, NODE_PREFIX).await?;
    // A decommissioned node holding a replica (one placed there while it drained) is
    // leaving like a dead one.
    let retired: BTreeSet<NodeId> = records
        .iter()
        .filter(|n| n.decommissioned)
        .map(|n| n.id)
        .collect();
    let nodes: Vec<NodeRecord> = records.into_iter().filter(|n| !n.decommissioned).collect();
    let descriptors: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    let (live, dead, shards) = {
        let Ok(memory) = context.placement.lock() else {
            return Err(ApiError::Unavailable(
                "placement state poisoned".to_string(),
            ));
        };
        let dead_after = context.config.dead_node_timeout;
        let dead: BTreeSet<NodeId> = nodes
            .iter()
            .map(|n| n.id)
            .filter(|&id| memory.led_for(dead_after) && !memory.heard_within(id, dead_after))
            .collect();
        let live: BTreeSet<NodeId> = nodes
            .iter()
            .map(|n| n.id)
            .filter(|&id| memory.heard_within(id, context.config.suspect_node_timeout))
            .collect();
        let shards: Vec<ShardState> = descriptors
            .into_iter()
            .map(|descriptor| ShardState {
                leader: memory.leaders.get(&descriptor.id).copied(),
                caught_up_learners: memory
                    .caught_up
                    .get(&descriptor.id)
                    .cloned()
                    .unwrap_or_default(),
                descriptor,
            })
            .collect();
        (live, dead, shards)
    };
    let running = resume_operations(context).await?;
    let sticky_keys = sticky_keys(context).await?;
    let settings: SchedulerSettings = read_record(context, SCHEDULER_SETTINGS_KEY)
        .await?
        .map(|(settings, _)| settings)
        .unwrap_or_default();
    let model = {
        let Ok(mut memory) = context.placement.lock() else {
            return Err(ApiError::Unavailable(
                "placement state poisoned".to_string(),
            ));
        };
        let splits = split_model(context, &mut memory, &shards, sticky_keys);
        ClusterModel {
            // A draining node takes nothing new, and its replicas move as a dead node's do.
            live: live.difference(&running.draining).copied().collect(),
            leaving: dead
                .iter()
                .chain(&running.draining)
                .chain(&retired)
                .copied()
                .collect(),
            shards,
            busy: memory.operating.clone(),
            moves_in_flight: running.moves_to,
            replication_factor: context.config.replication_factor,
            // A stale count would move a leader that need not move.
            leader_balance: !settings.leader_balance_paused && memory.leader_moves_settling == 0,
            replica_balance: !settings.replica_balance_paused,
            // A move started last round and not yet recorded would not be counted.
            quiet: memory.operating.is_empty() && memory.executing.is_empty(),
            splits,
        }
    };
    let plan = plan_round(&model);
    let count = plan.replication.len();
    start_moves(context, plan.repairs, &model.shards, "repair");
    start_replication(context, plan.replication, &model);
    start_leader_transfers(context, plan.leader_transfers);
    start_splits(context, plan.splits, &model.shards);
    start_merges(context, plan.merges);
    start_moves(
        context,
        plan.balance_moves,
        &model.shards,
        "replica balance",
    );
    Ok(count)
}

/// The split and merge schedulers' picture: loads of the shards' current ranges only, and
/// which shards changed their range lately (remembered here from round to round).
fn split_model(
    context: &NodeContext,
    memory: &mut PlacementMemory,
    shards: &[ShardState],
    sticky_keys: BTreeSet<Vec<u8>>,
) -> SplitModel {
    let now = Instant::now();
    memory
        .range_seen
        .retain(|shard, _| shards.iter().any(|s| s.descriptor.id == *shard));
    memory
        .loads
        .retain(|shard, _| shards.iter().any(|s| s.descriptor.id == *shard));
    let mut young = BTreeSet::new();
    let mut loads = BTreeMap::new();
    for shard in shards {
        let (id, version) = (shard.descriptor.id, shard.descriptor.epoch.version);
        let seen = memory.range_seen.entry(id).or_insert((version, now));
        if seen.0 != version {
            *seen = (version, now);
        }
        if now.duration_since(seen.1) < context.config.merge_after_range_change {
            young.insert(id);
        }
        if let Some((stats, hot_reports)) = memory
            .loads
            .get(&id)
            .filter(|(stats, _)| stats.version == version)
        {
            let load = ShardLoad {
                bytes: stats.bytes,
                size_split_key: stats.size_split_key.clone(),
                requests_per_second: stats.requests_per_second,
                hot_reports: *hot_reports,
                load_split_key: stats.load_split_key.clone(),
            };
            loads.insert(id, load);
        }
    }
    let config = &context.config;
    SplitModel {
        limits: SplitLimits {
            split_size_bytes: config.split_size_bytes,
            split_load_requests_per_second: config.split_load_requests_per_second,
            split_load_sustained_reports: config.split_load_sustained_reports,
            merge_size_bytes: config.merge_size_bytes,
        },
        loads,
        young,
        sticky_keys,
        fixed: Some(PLACEMENT_SHARD),
    }
}

/// A split an operator asked to keep: automatic merges never remove the boundary at its
/// key (until `expires_unix_seconds`, if set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StickySplit {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    expires_unix_seconds: Option<u64>,
}

fn unix_seconds_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn sticky_key(at: &[u8]) -> Vec<u8> {
    [STICKY_PREFIX, at].concat()
}

/// Expired sticky marks deleted per scheduler round at most (one write).
const MAX_STICKY_PRUNED_PER_ROUND: usize = 256;

/// The split keys that are sticky now; expired marks are deleted (a bounded number per
/// round), so the marks every round scans stay those that still count.
async fn sticky_keys(context: &NodeContext) -> Result<BTreeSet<Vec<u8>>, ApiError> {
    let now = unix_seconds_now();
    let sticky: Vec<StickySplit> = scan_records(context, STICKY_PREFIX).await?;
    let (live, expired): (Vec<StickySplit>, Vec<StickySplit>) = sticky
        .into_iter()
        .partition(|split| split.expires_unix_seconds.is_none_or(|at| at > now));
    if !expired.is_empty() {
        let ops = expired
            .iter()
            .take(MAX_STICKY_PRUNED_PER_ROUND)
            .map(|split| KvOp::Delete {
                key: sticky_key(&split.key),
            })
            .collect();
        let command = crate::kv::KvCommand {
            shard: PLACEMENT_SHARD,
            epoch: placement_epoch(context)?,
            ops,
        };
        context.request(Request::Write(command)).await?;
    }
    Ok(live.into_iter().map(|split| split.key).collect())
}

/// Starts this round's automatic splits, each a recorded `Split` operation (resumed like
/// an operator's), on a shard with nothing else under way.
fn start_splits(context: &Arc<NodeContext>, splits: Vec<AutoSplit>, shards: &[ShardState]) {
    for AutoSplit { shard, at, reason } in splits {
        let Some(version) = shards
            .iter()
            .find(|state| state.descriptor.id == shard)
            .map(|state| state.descriptor.epoch.version)
        else {
            continue;
        };
        if !context.begin_operator(shard) {
            continue;
        }
        tracing::info!(shard, ?reason, at = %String::from_utf8_lossy(&at), "splitting a shard");
        let context = context.clone();
        tokio::spawn(async move {
            let (id, new_shard) = match allocate_ids(&context).await {
                Ok(ids) => ids,
                Err(error) => {
                    context.end_operator(shard);
                    tracing::info!(shard, %error, "automatic split not started");
                    return;
                }
            };
            let operation = Operation {
                id,
                kind: OperationKind::Split {
                    shard,
                    at,
                    new_shard,
                },
                state: OperationState::Running,
                progress: None,
            };
            // It owns the mark from here and clears it however it ends.
            if let Err(error) = run_operation(&context, operation, version, Marked::Already).await {
                tracing::info!(shard, %error, "automatic split not started");
            }
        });
    }
}

/// Starts this round's replication operators, each on its shard's leader (beside the
/// round: a slow shard leader must not hold up the others).
fn start_replication(context: &Arc<NodeContext>, operators: Vec<Operator>, model: &ClusterModel) {
    for operator in operators {
        let (shard, change) = match operator {
            Operator::AddLearner { shard, node } => (shard, ReplicaChange::AddLearner(node)),
            Operator::Promote { shard, node } => (shard, ReplicaChange::Promote(node)),
            Operator::RemoveLearner { shard, node } => (shard, ReplicaChange::Remove(node)),
        };
        let Some(state) = model.shards.iter().find(|s| s.descriptor.id == shard) else {
            continue;
        };
        // A leader placement has not heard from lately would only time the call out.
        let Some(leader) = state.leader.filter(|leader| model.live.contains(leader)) else {
            continue;
        };
        if !context.begin_operator(shard) {
            continue;
        }
        tracing::info!(shard, ?change, leader, "replication operator");
        let request = ApiRequest::ChangeReplicas {
            shard,
            change,
            conf_version: state.descriptor.epoch.conf_version,
        };
        let context = context.clone();
        // Each ends within the request timeout, and its shard takes no other meanwhile.
        tokio::spawn(async move {
            let outcome = context.call_node(leader, request).await;
            context.end_operator(shard);
            match outcome {
                Ok(ApiResponse::ReplicasChanged(descriptor)) => {
                    tracing::info!(shard, replicas = ?descriptor.replicas, learners = ?descriptor.learners, "replicas changed");
                }
                Ok(other) => tracing::info!(shard, ?other, "replication operator not applied"),
                Err(error) => tracing::info!(shard, %error, "replication operator failed"),
            }
        });
    }
}

/// Starts `moves`, each a recorded `MoveReplica` operation carried out like an operator's
/// `move` (and so resumed the same way), on a shard with nothing else under way.
fn start_moves(
    context: &Arc<NodeContext>,
    moves: Vec<RepairMove>,
    shards: &[ShardState],
    why: &'static str,
) {
    for RepairMove { shard, from, to } in moves {
        let Some(version) = shards
            .iter()
            .find(|state| state.descriptor.id == shard)
            .map(|state| state.descriptor.epoch.version)
        else {
            continue;
        };
        if !context.begin_operator(shard) {
            continue;
        }
        tracing::info!(shard, from, to, why, "moving a replica");
        let context = context.clone();
        tokio::spawn(async move {
            let (id, _) = match allocate_ids(&context).await {
                Ok(ids) => ids,
                Err(error) => {
                    // Not recorded: nothing runs, so the mark goes.
                    context.end_operator(shard);
                    tracing::info!(shard, %error, why, "move not started");
                    return;
                }
            };
            let operation = Operation {
                id,
                kind: OperationKind::MoveReplica { shard, from, to },
                state: OperationState::Running,
                progress: None,
            };
            // It owns the mark from here and clears it however it ends.
            if let Err(error) = run_operation(&context, operation, version, Marked::Already).await {
                tracing::info!(shard, %error, why, "move not started");
            }
        });
    }
}

/// A scheduler an operator may pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    LeaderBalance,
    ReplicaBalance,
}

/// Pauses (`enabled` false) or resumes one scheduler; answered with the setting as stored.
pub async fn set_scheduler(
    context: &NodeContext,
    scheduler: Scheduler,
    enabled: bool,
) -> Result<ApiResponse, ApiError> {
    let answer = match scheduler {
        Scheduler::LeaderBalance => ApiResponse::LeaderBalance { enabled },
        Scheduler::ReplicaBalance => ApiResponse::ReplicaBalance { enabled },
    };
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        let current: Option<(SchedulerSettings, Vec<u8>)> =
            read_record(context, SCHEDULER_SETTINGS_KEY).await?;
        let mut new = current
            .as_ref()
            .map(|(settings, _)| *settings)
            .unwrap_or_default();
        match scheduler {
            Scheduler::LeaderBalance => new.leader_balance_paused = !enabled,
            Scheduler::ReplicaBalance => new.replica_balance_paused = !enabled,
        }
        if current
            .as_ref()
            .is_some_and(|(settings, _)| *settings == new)
        {
            return Ok(answer);
        }
        let expected = current.map(|(_, bytes)| bytes);
        let key = SCHEDULER_SETTINGS_KEY.to_vec();
        if compare_and_swap(context, key, expected, encode(&new)?).await? {
            tracing::info!(?scheduler, enabled, "scheduler set");
            return Ok(answer);
        }
    }
    Err(ApiError::Busy(
        "scheduler settings changing too often".to_string(),
    ))
}

/// Starts this round's leadership transfers (see `rshard_placement::leaders`), each on a
/// shard with no other operator under way; the shard takes no other operator until the
/// reports show where its leadership went.
fn start_leader_transfers(context: &Arc<NodeContext>, transfers: Vec<TransferLeader>) {
    for transfer in transfers {
        if !context.begin_operator(transfer.shard) {
            continue;
        }
        if let Ok(mut memory) = context.placement.lock() {
            memory.leader_moves_settling += 1;
        }
        tracing::info!(
            shard = transfer.shard,
            from = transfer.from,
            to = transfer.to,
            "leader balance"
        );
        let context = context.clone();
        tokio::spawn(async move {
            let request = ApiRequest::TransferLeadership {
                shard: transfer.shard,
                to: transfer.to,
            };
            if let Err(error) = context.call_node(transfer.from, request).await {
                tracing::info!(shard = transfer.shard, %error, "leader balance transfer not sent");
            }
            tokio::time::sleep(LEADER_MOVE_SETTLE).await;
            context.end_operator(transfer.shard);
            if let Ok(mut memory) = context.placement.lock() {
                memory.leader_moves_settling -= 1;
            }
        });
    }
}

impl NodeContext {
    /// Marks an operator on `shard` under way; false if one already is.
    fn begin_operator(&self, shard: ShardId) -> bool {
        match self.placement.lock() {
            Ok(mut memory) => memory.operating.insert(shard),
            Err(_) => false,
        }
    }

    fn end_operator(&self, shard: ShardId) {
        if let Ok(mut memory) = self.placement.lock() {
            memory.operating.remove(&shard);
        }
    }
}

/// The size of, and room on, the file system of this node's data directory; `None` if it
/// cannot be read. (One `statvfs`, once per report.)
fn disk_space(context: &NodeContext) -> Option<DiskSpace> {
    let fs = rustix::fs::statvfs(&context.config.data_dir).ok()?;
    Some(DiskSpace {
        total_bytes: fs.f_blocks.saturating_mul(fs.f_frsize),
        available_bytes: fs.f_bavail.saturating_mul(fs.f_frsize),
    })
}

/// This node's report to placement.
pub fn report(context: &NodeContext) -> NodeReport {
    let view = context.driver.view();
    let leading: Vec<_> = view.leading().collect();
    let led: Vec<ShardDescriptor> = leading
        .iter()
        .map(|replica| replica.descriptor.clone())
        .filter(|descriptor| descriptor.id != PLACEMENT_SHARD)
        .collect();
    context.shard_stats.retain_led(&led);
    let shard_stats = context.shard_stats.take(&led, Instant::now());
    NodeReport {
        node: context.identity.node,
        address: context.address.clone(),
        caught_up_learners: leading
            .iter()
            .flat_map(|r| {
                r.caught_up_learners
                    .iter()
                    .map(move |learner| (r.descriptor.id, *learner))
            })
            .collect(),
        leading: leading.into_iter().map(|r| r.descriptor.clone()).collect(),
        replicas: view.replicas.len() as u64,
        disk: disk_space(context),
        shard_stats,
    }
}

/// Every [`REPORT_INTERVAL`]: report to the placement leader and take its view of the
/// cluster; if this node leads the placement group, run a scheduler round.
pub async fn run(context: Arc<NodeContext>) {
    let mut interval = tokio::time::interval(REPORT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if context.is_draining() {
            return;
        }
        match send_report(&context).await {
            Ok(()) => context.mark_ready(),
            Err(error) => tracing::debug!(%error, "report to placement failed"),
        }
        let leading = placement_epoch(&context).is_ok();
        if let Ok(mut memory) = context.placement.lock() {
            match (leading, memory.leading_since) {
                (true, None) => memory.leading_since = Some(Instant::now()),
                (false, Some(_)) => memory.leading_since = None,
                _ => {}
            }
        }
        if leading {
            if let Err(error) = schedule(&context).await {
                tracing::debug!(%error, "scheduler round failed");
            }
        }
    }
}

async fn send_report(context: &Arc<NodeContext>) -> Result<(), String> {
    let request = ApiRequest::Heartbeat(report(context));
    let mut targets: Vec<Target> = Vec::new();
    let local_leader = context
        .driver
        .view()
        .replicas
        .get(&PLACEMENT_SHARD)
        .and_then(|r| r.leader);
    if let Some(leader) = local_leader.or_else(|| context.cluster_leader(PLACEMENT_SHARD)) {
        targets.push(Target::Node(leader));
    }
    targets.extend(context.config.join.iter().copied().map(Target::Address));
    targets.extend(context.known_addresses().into_iter().map(Target::Address));
    let mut last_error = "no placement leader known".to_string();
    for target in targets {
        let response = match target {
            Target::Node(node) if node == context.identity.node => {
                super::api::handle(context, request.clone(), Caller::Node).await
            }
            Target::Node(node) => match context.call_node(node, request.clone()).await {
                Ok(response) => response,
                Err(error) => {
                    last_error = error;
                    continue;
                }
            },
            Target::Address(address) => match context.call(address, request.clone()).await {
                Ok(response) => response,
                Err(error) => {
                    last_error = error;
                    continue;
                }
            },
        };
        match response {
            ApiResponse::ClusterView {
                cluster,
                nodes,
                shards,
            } => {
                if cluster != context.identity.cluster {
                    return Err(format!("placement answered for cluster {cluster}"));
                }
                context.set_cluster_view(nodes, shards);
                return Ok(());
            }
            ApiResponse::Error(ApiError::NotLeader {
                leader: Some(leader),
                ..
            }) => {
                if let Ok(address) = leader.address.parse::<SocketAddr>() {
                    match context.call(address, request.clone()).await {
                        Ok(ApiResponse::ClusterView {
                            cluster,
                            nodes,
                            shards,
                        }) if cluster == context.identity.cluster => {
                            context.set_cluster_view(nodes, shards);
                            return Ok(());
                        }
                        Ok(other) => last_error = format!("{other:?}"),
                        Err(error) => last_error = error,
                    }
                }
            }
            other => last_error = format!("{other:?}"),
        }
    }
    Err(last_error)
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Node(NodeId),
    Address(SocketAddr),
}

/// A placement record read linearizably; `None` if absent.
async fn read_record<T: for<'de> Deserialize<'de>>(
    context: &NodeContext,
    key: &[u8],
) -> Result<Option<(T, Vec<u8>)>, ApiError> {
    let epoch = placement_epoch(context)?;
    let request = Request::Read {
        shard: PLACEMENT_SHARD,
        epoch,
        key: key.to_vec(),
    };
    let Response::Value(value) = context.request(request).await? else {
        return Err(ApiError::Refused("unexpected answer to a read".to_string()));
    };
    value
        .map(|bytes| {
            rmp_serde::from_slice(&bytes)
                .map(|record| (record, bytes))
                .map_err(|error| ApiError::Refused(format!("corrupt placement record: {error}")))
        })
        .transpose()
}

/// A new operation id and shard id, each never handed out before (a compare-and-swap on
/// the replicated counter, so two placement leaders in a row never hand out one twice).
async fn allocate_ids(context: &NodeContext) -> Result<(u64, ShardId), ApiError> {
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        let current: Option<(IdCounters, Vec<u8>)> = read_record(context, ID_COUNTER_KEY).await?;
        let counters = match &current {
            Some((counters, _)) => *counters,
            None => {
                // First use: above every shard id known here or in the registry.
                let stored: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
                let view = context.driver.view();
                let highest = stored
                    .iter()
                    .map(|d| d.id)
                    .chain(view.replicas.keys().copied())
                    .max()
                    .unwrap_or(0);
                IdCounters {
                    next_shard: highest + 1,
                    next_operation: 1,
                }
            }
        };
        let next = IdCounters {
            next_shard: counters.next_shard + 1,
            next_operation: counters.next_operation + 1,
        };
        let expected = current.map(|(_, bytes)| bytes);
        if compare_and_swap(context, ID_COUNTER_KEY.to_vec(), expected, encode(&next)?).await? {
            return Ok((counters.next_operation, counters.next_shard));
        }
    }
    Err(ApiError::Busy(
        "too many operations starting at once".to_string(),
    ))
}

/// Records `operation` in its new state, if its record still holds `previous`.
async fn record_operation(
    context: &NodeContext,
    operation: &Operation,
    previous: Option<&Operation>,
) -> Result<bool, ApiError> {
    let key = record_key(OPERATION_PREFIX, operation.id);
    let expected = previous.map(encode).transpose()?;
    compare_and_swap(context, key, expected, encode(operation)?).await
}

/// Every operation placement recorded, oldest first.
pub async fn operations(context: &NodeContext) -> Result<ApiResponse, ApiError> {
    let operations: Vec<Operation> = scan_records(context, OPERATION_PREFIX).await?;
    Ok(ApiResponse::Operations(operations))
}

/// Splits `shard` at `at`, as an operation: checked against the shard's descriptor here,
/// given ids, recorded as running, carried out by the shard's leader, then recorded as done
/// or failed with its reason. A placement leader that fails in between leaves it running,
/// and the next one resumes it (the split step is idempotent).
pub async fn admin_split(
    context: &NodeContext,
    shard: ShardId,
    at: Vec<u8>,
    sticky_seconds: Option<u64>,
) -> Result<ApiResponse, ApiError> {
    if shard == PLACEMENT_SHARD {
        return Err(ApiError::Refused(
            "the placement shard is never split".to_string(),
        ));
    }
    if at.first() == Some(&0xff) {
        return Err(ApiError::ReservedKey);
    }
    if at.len() + STICKY_PREFIX.len() > crate::kv::MAX_KEY_BYTES {
        return Err(ApiError::TooLarge(format!(
            "a split key of {} bytes; at most {} (its sticky mark is a key too)",
            at.len(),
            crate::kv::MAX_KEY_BYTES - STICKY_PREFIX.len()
        )));
    }
    let descriptors: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    let Some(descriptor) = descriptors.into_iter().find(|d| d.id == shard) else {
        return Err(ApiError::Refused(format!("there is no shard {shard}")));
    };
    if at.as_slice() <= descriptor.start_key.as_slice() || !descriptor.contains(&at) {
        return Err(ApiError::Refused(format!(
            "the split key must lie inside shard {shard}, after its first key"
        )));
    }
    // Sticky before the split can happen, so no merge round ever sees the boundary without
    // its mark (a split refused later leaves a mark on no boundary, which is harmless).
    let sticky = StickySplit {
        key: at.clone(),
        expires_unix_seconds: sticky_seconds
            .map(|seconds| unix_seconds_now().saturating_add(seconds)),
    };
    put_record(context, sticky_key(&at), encode(&sticky)?).await?;
    let (id, new_shard) = allocate_ids(context).await?;
    let operation = Operation {
        id,
        kind: OperationKind::Split {
            shard,
            at,
            new_shard,
        },
        state: OperationState::Running,
        progress: None,
    };
    tracing::info!(operation = id, shard, new_shard, "split started");
    run_operation(context, operation, descriptor.epoch.version, Marked::No).await
}

/// Moves the leadership of `shard` to node `to`, as an operation (see [`admin_split`] for
/// how operations are recorded): checked first (the shard exists, `to` is one of its
/// voters and live), done once `to` leads the shard.
pub async fn admin_transfer_leader(
    context: &NodeContext,
    shard: ShardId,
    to: NodeId,
) -> Result<ApiResponse, ApiError> {
    let descriptors: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    let Some(descriptor) = descriptors.into_iter().find(|d| d.id == shard) else {
        return Err(ApiError::Refused(format!("there is no shard {shard}")));
    };
    if !descriptor.replicas.contains(&to) {
        return Err(ApiError::Refused(format!(
            "node {to} is not a voter of shard {shard} (voters: {:?})",
            descriptor.replicas
        )));
    }
    check_live(context, to).await?;
    let (id, _) = allocate_ids(context).await?;
    let operation = Operation {
        id,
        kind: OperationKind::TransferLeader { shard, to },
        state: OperationState::Running,
        progress: None,
    };
    run_operation(context, operation, descriptor.epoch.version, Marked::No).await
}

/// True if `node` went quiet: this placement leader has led long enough to have heard from
/// it (the suspect timeout) and has not lately. A leader that took over a moment ago has
/// heard nobody yet, which says nothing.
fn gone_quiet(context: &NodeContext, node: NodeId) -> bool {
    let window = context.config.suspect_node_timeout;
    context
        .placement
        .lock()
        .ok()
        .is_some_and(|memory| memory.led_for(window) && !memory.heard_within(node, window))
}

/// True if placement heard from `node` within the suspect timeout.
fn is_live(context: &NodeContext, node: NodeId) -> bool {
    let window = context.config.suspect_node_timeout;
    context
        .placement
        .lock()
        .ok()
        .is_some_and(|memory| memory.heard_within(node, window))
}

/// A placement leader that took over moments ago has heard nobody yet: wait for the next
/// reports (two intervals; three at most) before judging who is live.
async fn await_reports(context: &NodeContext) {
    let new_leader = |context: &NodeContext| {
        context
            .placement
            .lock()
            .ok()
            .is_some_and(|memory| !memory.led_for(REPORT_INTERVAL * 2))
    };
    let deadline = Instant::now() + REPORT_INTERVAL * 3;
    while new_leader(context) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refuses unless `node` is live (judged on the reports, see [`await_reports`]).
async fn check_live(context: &NodeContext, node: NodeId) -> Result<(), ApiError> {
    if !is_live(context, node) {
        await_reports(context).await;
    }
    if is_live(context, node) {
        Ok(())
    } else {
        Err(ApiError::Refused(format!(
            "node {node} has not been heard from lately"
        )))
    }
}

/// Drains `node` (and with `decommission`, then removes it), as an operation: refused if
/// the node is unknown, or if the live nodes left could not hold every shard's replicas;
/// answered with the drain already running for the node if there is one.
pub async fn admin_drain_node(
    context: &NodeContext,
    node: NodeId,
    decommission: bool,
) -> Result<ApiResponse, ApiError> {
    let nodes = member_nodes(context).await?;
    if !nodes.iter().any(|record| record.id == node) {
        return Err(ApiError::Refused(format!(
            "there is no node {node} (or it was decommissioned)"
        )));
    }
    let operations: Vec<Operation> = scan_records(context, OPERATION_PREFIX).await?;
    let mut draining = BTreeSet::new();
    for operation in &operations {
        if let (OperationKind::Drain { node: other, .. }, false) =
            (&operation.kind, operation.state.is_terminal())
        {
            if *other == node {
                return Ok(ApiResponse::Operation(operation.clone()));
            }
            draining.insert(*other);
        }
    }
    await_reports(context).await;
    let staying = nodes
        .iter()
        .filter(|record| record.id != node && !draining.contains(&record.id))
        .filter(|record| is_live(context, record.id))
        .count();
    if staying < context.config.replication_factor {
        return Err(ApiError::Refused(format!(
            "draining node {node} would leave {staying} live nodes for {} replicas of each \
             shard",
            context.config.replication_factor
        )));
    }
    let (id, _) = allocate_ids(context).await?;
    let operation = Operation {
        id,
        kind: OperationKind::Drain { node, decommission },
        state: OperationState::Running,
        progress: None,
    };
    tracing::info!(operation = id, node, decommission, "drain started");
    run_operation(context, operation, 0, Marked::No).await
}

/// Waits for the repair scheduler to move every replica off `node` (it treats a node with
/// a running drain as a source, never a target); done once no shard in the registry lists
/// it, and for a decommission once its record is removed too. Running until then.
async fn execute_drain(
    record: &mut OperationRecord<'_>,
    node: NodeId,
    decommission: bool,
) -> Result<OperationState, ApiError> {
    let (context, id) = (record.context, record.id());
    let deadline = Instant::now() + context.config.request_timeout;
    while Instant::now() < deadline {
        if record.ended_elsewhere().await {
            tracing::info!(operation = id, node, "drain cancelled");
            return Ok(OperationState::Running);
        }
        let shards: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
        let holding = shards
            .iter()
            .filter(|shard| shard.members().any(|member| member == node))
            .count() as u64;
        // The most seen so far is the whole (a resumed drain starts from what is left).
        let total = record
            .current
            .progress
            .as_ref()
            .map_or(holding, |progress| progress.total.max(holding));
        let step = format!(
            "{} of {total} replicas moved off node {node}",
            total - holding
        );
        record.progress(step, total - holding, total).await;
        if holding == 0 {
            if decommission {
                retire_node(context, node).await?;
            }
            tracing::info!(operation = id, node, decommission, "drained");
            return Ok(OperationState::Done);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(OperationState::Running)
}

/// Marks `node` decommissioned (see [`NodeRecord::decommissioned`]).
async fn retire_node(context: &NodeContext, node: NodeId) -> Result<(), ApiError> {
    let key = record_key(NODE_PREFIX, node);
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        let current: Option<(NodeRecord, Vec<u8>)> = read_record(context, &key).await?;
        let Some((record, bytes)) = current else {
            return Ok(());
        };
        if record.decommissioned {
            return Ok(());
        }
        let retired = NodeRecord {
            decommissioned: true,
            ..record
        };
        if compare_and_swap(context, key.clone(), Some(bytes), encode(&retired)?).await? {
            if let Ok(mut memory) = context.placement.lock() {
                memory.last_heard.remove(&node);
                memory.capacity.remove(&node);
            }
            return Ok(());
        }
    }
    Err(ApiError::Busy("node record changing too often".to_string()))
}

/// Moves `shard`'s replica on node `from` to node `to`, as an operation (see
/// [`admin_split`] for how operations are recorded): checked first (the shard exists,
/// `from` is one of its voters, `to` is a live node holding no voter of it), done once
/// `to` is a voter and `from` holds nothing of the shard.
pub async fn admin_move_replica(
    context: &NodeContext,
    shard: ShardId,
    from: NodeId,
    to: NodeId,
) -> Result<ApiResponse, ApiError> {
    let descriptors: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    let Some(descriptor) = descriptors.into_iter().find(|d| d.id == shard) else {
        return Err(ApiError::Refused(format!("there is no shard {shard}")));
    };
    if from == to {
        return Err(ApiError::Refused(
            "a replica moves to another node".to_string(),
        ));
    }
    if !descriptor.replicas.contains(&from) {
        return Err(ApiError::Refused(format!(
            "node {from} holds no voter of shard {shard} (voters: {:?})",
            descriptor.replicas
        )));
    }
    if descriptor.replicas.contains(&to) {
        return Err(ApiError::Refused(format!(
            "node {to} already holds a voter of shard {shard}"
        )));
    }
    let nodes = member_nodes(context).await?;
    if !nodes.iter().any(|node| node.id == to) {
        return Err(ApiError::Refused(format!("there is no node {to}")));
    }
    let operations: Vec<Operation> = scan_records(context, OPERATION_PREFIX).await?;
    let draining = operations.iter().any(|op| {
        !op.state.is_terminal()
            && matches!(op.kind, OperationKind::Drain { node, .. } if node == to)
    });
    if draining {
        return Err(ApiError::Refused(format!("node {to} is being drained")));
    }
    check_live(context, to).await?;
    let (id, _) = allocate_ids(context).await?;
    let operation = Operation {
        id,
        kind: OperationKind::MoveReplica { shard, from, to },
        state: OperationState::Running,
        progress: None,
    };
    tracing::info!(operation = id, shard, from, to, "move started");
    run_operation(context, operation, descriptor.epoch.version, Marked::No).await
}

/// Whether the caller already holds its shard's operator mark (which the operation then
/// owns and clears when it ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marked {
    Already,
    No,
}

/// Records `operation` as running and carries it out (marked as executing meanwhile, so a
/// scheduler round does not resume it at the same time). Refused `Busy`, before anything
/// is recorded, while its shard has another operation or operator under way.
async fn run_operation(
    context: &NodeContext,
    operation: Operation,
    version: u64,
    marked: Marked,
) -> Result<ApiResponse, ApiError> {
    let id = operation.id;
    let shards = operation.kind.shards();
    // Marked first, so a scheduler round neither resumes it nor puts an operator of its own
    // on the shard meanwhile; one operation or operator per shard at a time (two moves of
    // one shard could each take the other's new voter for its own and remove a voter).
    let marked: Vec<ShardId> = match context.placement.lock() {
        Ok(mut memory) => {
            if let Marked::No = marked {
                if let Some(shard) = shards.iter().find(|s| memory.operating.contains(s)) {
                    return Err(ApiError::Busy(format!(
                        "shard {shard} has another operation or operator under way; retry once it ends"
                    )));
                }
                memory.operating.extend(shards.iter().copied());
            }
            memory.executing.insert(id);
            shards.clone()
        }
        Err(_) => Vec::new(),
    };
    let ended = async {
        if !shards.is_empty() {
            let running: Vec<Operation> = scan_records(context, OPERATION_PREFIX).await?;
            if let Some((other, shard)) = running.iter().find_map(|op| {
                let shared = op.kind.shards().into_iter().find(|s| shards.contains(s))?;
                (!op.state.is_terminal()).then_some((op, shared))
            }) {
                return Err(ApiError::Busy(format!(
                    "shard {shard} has operation {} running; wait for it or cancel it",
                    other.id
                )));
            }
        }
        if !record_operation(context, &operation, None).await? {
            return Err(ApiError::Refused(format!(
                "operation id {id} already in use"
            )));
        }
        // Once recorded, the caller gets the operation back, never an error it might retry
        // (which would start a second one): what did not finish in time is resumed.
        let step = tokio::time::timeout(
            context.config.request_timeout,
            execute(context, operation.clone(), version),
        )
        .await;
        Ok(match step {
            Ok(Ok(ended)) => ended,
            Ok(Err(error)) => {
                tracing::info!(operation = id, %error, "operation left running");
                operation
            }
            Err(_) => operation,
        })
    }
    .await;
    if let Ok(mut memory) = context.placement.lock() {
        memory.executing.remove(&id);
        for shard in &marked {
            memory.operating.remove(shard);
        }
    }
    Ok(ApiResponse::Operation(ended?))
}

/// Ended operations deleted per scheduler round at most (one write).
const MAX_OPERATIONS_PRUNED_PER_ROUND: usize = 256;

/// Deletes the oldest ended operations beyond `ended_operations_kept`. An ended record
/// never changes again, so a plain delete cannot lose an update.
async fn prune_ended_operations(
    context: &NodeContext,
    operations: &[Operation],
) -> Result<(), ApiError> {
    let ended: Vec<u64> = operations
        .iter()
        .filter(|operation| operation.state.is_terminal())
        .map(|operation| operation.id)
        .collect();
    let excess = ended
        .len()
        .saturating_sub(context.config.ended_operations_kept)
        .min(MAX_OPERATIONS_PRUNED_PER_ROUND);
    if excess == 0 {
        return Ok(());
    }
    // Oldest first: ids rise, and the scan is in key (id) order.
    let ops = ended[..excess]
        .iter()
        .map(|&id| KvOp::Delete {
            key: record_key(OPERATION_PREFIX, id),
        })
        .collect();
    let command = crate::kv::KvCommand {
        shard: PLACEMENT_SHARD,
        epoch: placement_epoch(context)?,
        ops,
    };
    context.request(Request::Write(command)).await?;
    tracing::debug!(pruned = excess, "ended operations pruned");
    Ok(())
}

/// What the operations still running mean for the schedulers.
#[derive(Debug, Default)]
struct RunningOperations {
    /// Replica moves under way to each node.
    moves_to: BTreeMap<NodeId, usize>,
    /// Nodes being drained: sources of moves, never targets.
    draining: BTreeSet<NodeId>,
}

/// Runs the operations left running by an earlier placement leader (or by a step that
/// could not reach the shard's leader), each in its own task.
async fn resume_operations(context: &Arc<NodeContext>) -> Result<RunningOperations, ApiError> {
    let operations: Vec<Operation> = scan_records(context, OPERATION_PREFIX).await?;
    prune_ended_operations(context, &operations).await?;
    let mut running = RunningOperations::default();
    for operation in operations {
        if operation.state.is_terminal() {
            continue;
        }
        match operation.kind {
            OperationKind::MoveReplica { to, .. } => *running.moves_to.entry(to).or_default() += 1,
            OperationKind::Drain { node, .. } => {
                running.draining.insert(node);
            }
            _ => {}
        }
        let Ok(mut memory) = context.placement.lock() else {
            return Err(ApiError::Unavailable(
                "placement state poisoned".to_string(),
            ));
        };
        if !memory.executing.insert(operation.id) {
            continue;
        }
        // No scheduler operator on its shard meanwhile (a move leaves a learner that the
        // replication scheduler must not promote on its own).
        let marked: Vec<ShardId> = operation
            .kind
            .shards()
            .into_iter()
            .filter(|&shard| memory.operating.insert(shard))
            .collect();
        drop(memory);
        let context = context.clone();
        tokio::spawn(async move {
            let id = operation.id;
            // The version it was planned at is gone with the old leader; the split step
            // recognises a split already done, and refuses one the shard outgrew.
            let shard = operation.kind.shard();
            let version = match shard {
                Some(shard) => context
                    .cluster_snapshot()
                    .1
                    .iter()
                    .find(|route| route.descriptor.id == shard)
                    .map(|route| route.descriptor.epoch.version),
                None => Some(0),
            };
            let outcome = match version {
                Some(version) => execute(&context, operation, version).await,
                None => Err(ApiError::Unavailable(
                    "shard not in the view yet".to_string(),
                )),
            };
            if let Err(error) = outcome {
                tracing::info!(operation = id, %error, "operation not resumed yet");
            }
            if let Ok(mut memory) = context.placement.lock() {
                memory.executing.remove(&id);
                for shard in &marked {
                    memory.operating.remove(shard);
                }
            }
        });
    }
    Ok(running)
}

/// Carries `operation` (recorded as running) out and records how it ended. Returns it in
/// its new state; still running if the shard's leader could not be reached (resumed by a
/// later round).
async fn execute(
    context: &NodeContext,
    operation: Operation,
    version: u64,
) -> Result<Operation, ApiError> {
    let state = match operation.kind.clone() {
        OperationKind::Split {
            shard,
            at,
            new_shard,
        } => execute_split(context, operation.id, shard, version, at, new_shard).await?,
        OperationKind::TransferLeader { shard, to } => {
            execute_transfer(context, operation.id, shard, to).await
        }
        OperationKind::MoveReplica { shard, from, to } => {
            let mut record = OperationRecord::new(context, operation.clone());
            let state = execute_move(&mut record, shard, from, to).await;
            return record.finish(state).await;
        }
        OperationKind::Drain { node, decommission } => {
            let mut record = OperationRecord::new(context, operation.clone());
            let state = execute_drain(&mut record, node, decommission).await?;
            return record.finish(state).await;
        }
        OperationKind::Merge { left, right } => {
            let mut record = OperationRecord::new(context, operation.clone());
            let state = execute_merge(&mut record, left, right).await?;
            return record.finish(state).await;
        }
    };
    OperationRecord::new(context, operation).finish(state).await
}

/// A running operation's record as its executor last wrote or read it: progress is
/// recorded by compare-and-swap from it, and a record found changed means someone else
/// ended the operation (an operator cancelled it), so the executor stops.
struct OperationRecord<'a> {
    context: &'a NodeContext,
    current: Operation,
}

impl<'a> OperationRecord<'a> {
    fn new(context: &'a NodeContext, current: Operation) -> Self {
        OperationRecord { context, current }
    }

    fn id(&self) -> u64 {
        self.current.id
    }

    /// True if the operation was ended by someone else (read from placement); an
    /// unreadable record counts as not ended.
    async fn ended_elsewhere(&mut self) -> bool {
        let key = record_key(OPERATION_PREFIX, self.current.id);
        match read_record::<Operation>(self.context, &key).await {
            Ok(Some((stored, _))) if stored.state.is_terminal() => true,
            Ok(Some((stored, _))) => {
                self.current = stored;
                false
            }
            _ => false,
        }
    }

    /// Records where the operation stands, if that changed.
    async fn progress(&mut self, step: String, done: u64, total: u64) {
        let _recorded = self.record_step(step, done, total).await;
    }

    /// Records where the operation stands; true once the record holds it (false if the
    /// record changed meanwhile: someone else ended it, or it is unreadable). A step that
    /// must not start after a cancel is recorded first: cancel and step are then ordered
    /// by the record's compare-and-swap.
    async fn record_step(&mut self, step: String, done: u64, total: u64) -> bool {
        let progress = Some(OperationProgress { step, done, total });
        if self.current.progress == progress {
            return true;
        }
        let next = Operation {
            progress,
            ..self.current.clone()
        };
        if let Ok(true) = record_operation(self.context, &next, Some(&self.current)).await {
            self.current = next;
            return true;
        }
        false
    }

    /// Records how the operation ended (nothing while it still runs). Returns it as
    /// recorded; if the record changed meanwhile, what is there stands.
    async fn finish(self, state: OperationState) -> Result<Operation, ApiError> {
        if state == OperationState::Running {
            return Ok(self.current);
        }
        let ended = Operation {
            state,
            ..self.current.clone()
        };
        if !record_operation(self.context, &ended, Some(&self.current)).await? {
            return Ok(self.current);
        }
        Ok(ended)
    }
}

/// Ends a running move or drain at an operator's request (recorded failed, "cancelled");
/// its executor sees the record change and stops, taking a move's learner back out.
/// Refused for splits and leadership transfers (one step each, nothing to stop), and for a
/// move whose new replica is already a voter (its joint change is under way and completes).
pub async fn cancel_operation(context: &NodeContext, id: u64) -> Result<ApiResponse, ApiError> {
    let key = record_key(OPERATION_PREFIX, id);
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        let Some((operation, _)) = read_record::<Operation>(context, &key).await? else {
            return Err(ApiError::Refused(format!("there is no operation {id}")));
        };
        if operation.state.is_terminal() {
            return Err(ApiError::Refused(format!(
                "operation {id} already ended: {:?}",
                operation.state
            )));
        }
        match &operation.kind {
            OperationKind::Split { .. } | OperationKind::TransferLeader { .. } => {
                return Err(ApiError::Refused(format!(
                    "operation {id} is a single step and cannot be cancelled"
                )));
            }
            OperationKind::MoveReplica { shard, to, .. } => {
                let voter = registry_descriptor(context, *shard)
                    .await
                    .is_some_and(|descriptor| descriptor.replicas.contains(to));
                if voter {
                    return Err(ApiError::Refused(format!(
                        "node {to} is already a voter of shard {shard}: the move completes"
                    )));
                }
            }
            OperationKind::Drain { .. } => {}
            OperationKind::Merge { right, .. } => {
                let frozen = registry_descriptor(context, *right)
                    .await
                    .is_some_and(|descriptor| descriptor.merging_into.is_some());
                let freezing = operation
                    .progress
                    .as_ref()
                    .is_some_and(|progress| progress.done >= MERGE_FREEZE_STEP);
                if frozen || freezing {
                    return Err(ApiError::Refused(format!(
                        "shard {right} is frozen for the merge: the merge completes"
                    )));
                }
            }
        }
        let cancelled = Operation {
            state: OperationState::Failed {
                reason: "cancelled by an operator".to_string(),
            },
            ..operation.clone()
        };
        if record_operation(context, &cancelled, Some(&operation)).await? {
            tracing::info!(operation = id, "cancelled");
            // No executor may be running it now (one resumes only running operations):
            // roll a move back here. One running meanwhile does the same, harmlessly.
            if let OperationKind::MoveReplica { shard, to, .. } = operation.kind {
                if let Some(descriptor) = registry_descriptor(context, shard).await {
                    if descriptor.learners.contains(&to) {
                        let remove = ReplicaChange::Remove(to);
                        change_replicas_step(context, &descriptor, remove).await;
                    }
                }
            }
            return Ok(ApiResponse::Operation(cancelled));
        }
    }
    Err(ApiError::Busy(format!(
        "operation {id} changing too often to cancel"
    )))
}

/// Moves the leadership of `shard` to `to`: asks the leader, then watches `to` until it
/// leads, within the request timeout. Already led by `to`: done at once.
async fn execute_transfer(
    context: &NodeContext,
    id: u64,
    shard: ShardId,
    to: NodeId,
) -> OperationState {
    let deadline = Instant::now() + context.config.request_timeout;
    // From the registry, which a split updates before it is reported done (this node's
    // view of the cluster can be a report interval behind).
    let stored: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX)
        .await
        .unwrap_or_default();
    let Some(start_key) = stored
        .into_iter()
        .find(|descriptor| descriptor.id == shard)
        .map(|descriptor| descriptor.start_key)
    else {
        return OperationState::Running;
    };
    let mut leader = None;
    while Instant::now() < deadline {
        let route = call_node_plain(
            context,
            to,
            ApiRequest::Route {
                key: start_key.clone(),
            },
        )
        .await;
        if let Ok(ApiResponse::Route(route)) = route {
            leader = route.leader.map(|l| l.id);
            if route.descriptor.id == shard && leader == Some(to) {
                tracing::info!(operation = id, shard, to, "leadership transferred");
                return OperationState::Done;
            }
        }
        match call_shard_leader(context, shard, ApiRequest::TransferLeadership { shard, to }).await
        {
            Ok(ApiResponse::Error(error)) if !is_transient(&error) => {
                return OperationState::Failed {
                    reason: error.to_string(),
                };
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    OperationState::Failed {
        reason: format!(
            "node {to} did not take the leadership of shard {shard} within {:?} (leader seen \
             there: {leader:?})",
            context.config.request_timeout
        ),
    }
}

/// How long a move waits, with `to` a voter and `from` still one, for the joint change
/// to be left (the leader does it on its own) before it asks for `from`'s removal alone.
const MOVE_LEAVE_JOINT_WAIT: Duration = Duration::from_secs(5);

/// Moves `shard`'s replica from `from` to `to`, one step at a time, each planned against
/// the registry's descriptor at its conf version (a step planned on a stale descriptor is
/// refused, never applied twice) and checked again on the next look:
/// 1. `to` holds nothing: add it as a learner (its first snapshot creates it);
/// 2. `to` a learner its leader reports caught up: if `from` leads, move the leadership to
///    another voter first; then promote `to` and remove `from` in one joint change, which
///    the leader leaves on its own;
/// 3. `to` a voter and `from` gone: done. (`from`'s node destroys its replica when it
///    applies its removal, or when a member's removal notice tells it.)
///
/// Runs until done or the request timeout; then it is left running, and the next
/// scheduler round resumes it where the registry says it stands. A move to a node that is
/// no longer live fails, and takes its learner back out.
async fn execute_move(
    record: &mut OperationRecord<'_>,
    shard: ShardId,
    from: NodeId,
    to: NodeId,
) -> OperationState {
    let (context, id) = (record.context, record.id());
    let deadline = Instant::now() + context.config.request_timeout;
    let mut both_voters_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let Some(descriptor) = registry_descriptor(context, shard).await else {
            return OperationState::Running;
        };
        let holds = |node: NodeId| descriptor.members().any(|member| member == node);
        let voter = |node: NodeId| descriptor.replicas.contains(&node);
        if record.ended_elsewhere().await {
            // Cancelled: a learner added for the move goes again (a voter stays; the
            // cancel is refused once the new replica votes).
            if descriptor.learners.contains(&to) {
                change_replicas_step(context, &descriptor, ReplicaChange::Remove(to)).await;
            }
            tracing::info!(operation = id, shard, "move cancelled");
            return OperationState::Running;
        }
        if voter(to) && !holds(from) {
            tracing::info!(operation = id, shard, from, to, "move done");
            return OperationState::Done;
        }
        if !holds(from) {
            // Removed by someone else; the move has nothing left to take away.
            if descriptor.learners.contains(&to) {
                change_replicas_step(context, &descriptor, ReplicaChange::Remove(to)).await;
            }
            return OperationState::Failed {
                reason: format!("node {from} no longer holds a replica of shard {shard}"),
            };
        }
        if gone_quiet(context, to) {
            if descriptor.learners.contains(&to) {
                change_replicas_step(context, &descriptor, ReplicaChange::Remove(to)).await;
            }
            return OperationState::Failed {
                reason: format!("node {to} has not been heard from lately"),
            };
        }
        let leader = leader_of(context, shard);
        let step = |done: u64, what: String| (done, what);
        let (done, what) = if !holds(to) {
            step(0, format!("adding a learner on node {to}"))
        } else if !voter(to) {
            step(1, format!("node {to} receiving the shard and catching up"))
        } else {
            step(3, format!("promoting node {to} and removing node {from}"))
        };
        record.progress(what, done, 4).await;
        if !holds(to) {
            change_replicas_step(context, &descriptor, ReplicaChange::AddLearner(to)).await;
        } else if !voter(to) {
            let caught_up = context.placement.lock().ok().is_some_and(|memory| {
                memory
                    .caught_up
                    .get(&shard)
                    .is_some_and(|l| l.contains(&to))
            });
            if !caught_up {
                // Receiving its snapshot, or catching up: the leader's next reports say.
            } else if leader == Some(from) {
                hand_leadership_away(context, &descriptor, from).await;
            } else {
                let change = ReplicaChange::Replace {
                    add: to,
                    remove: from,
                };
                change_replicas_step(context, &descriptor, change).await;
            }
        } else {
            // Both voters: the joint change not left yet, or not reported yet.
            let since = *both_voters_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MOVE_LEAVE_JOINT_WAIT {
                if descriptor.replicas.len() <= context.config.replication_factor {
                    // Not this move's joint change (that leaves one voter above the factor
                    // until it is left): the membership changed under the move.
                    return OperationState::Failed {
                        reason: format!(
                            "shard {shard}'s membership changed under the move (voters {:?})",
                            descriptor.replicas
                        ),
                    };
                }
                if leader == Some(from) {
                    hand_leadership_away(context, &descriptor, from).await;
                } else {
                    change_replicas_step(context, &descriptor, ReplicaChange::Remove(from)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    OperationState::Running
}

/// Steps of a merge, as its progress records them: a merge whose progress reached
/// [`MERGE_FREEZE_STEP`] may have frozen its right shard and is never cancelled.
const MERGE_STEPS: u64 = 5;
const MERGE_FREEZE_STEP: u64 = 2;

/// Merges `left` with its right neighbour `right` (see docs/architecture.md, "Merge"):
/// 1. aligns the two shards' replicas (moves `right`'s onto `left`'s nodes) while neither
///    is frozen; cancellable until here;
/// 2. once every replica's node is live, records the freeze step, then asks `right`'s
///    leader to freeze it: from here the merge only goes forward;
/// 3. waits until every node of `right` reports its replica frozen (durably applied);
/// 4. asks `left`'s leader to merge; stores the merged descriptor and deletes `right`'s.
///
/// Every step reads the registry first, so a resumed merge picks up where it stopped.
async fn execute_merge(
    record: &mut OperationRecord<'_>,
    left: ShardId,
    right: ShardId,
) -> Result<OperationState, ApiError> {
    let (context, id) = (record.context, record.id());
    let deadline = Instant::now() + context.config.request_timeout;
    let pause = || tokio::time::sleep(Duration::from_millis(250));
    while Instant::now() < deadline {
        let Some(left_now) = registry_descriptor(context, left).await else {
            return Ok(OperationState::Running);
        };
        let Some(right_now) = registry_descriptor(context, right).await else {
            // Deleted only once the merged descriptor was stored.
            return Ok(await_retired(record, &left_now, right).await);
        };
        if left_now.covers(&right_now) && left_now.epoch.version > right_now.epoch.version {
            delete_record(context, record_key(SHARD_PREFIX, right)).await?;
            return Ok(await_retired(record, &left_now, right).await);
        }
        let misaligned = |a: &ShardDescriptor, b: &ShardDescriptor| {
            let from = a.replicas.iter().find(|n| !b.replicas.contains(n)).copied();
            let to = b.replicas.iter().find(|n| !a.replicas.contains(n)).copied();
            from.zip(to)
        };
        if let Some(reason) = rollback_reason(record) {
            match roll_back_merge(record, &left_now, &right_now, reason).await? {
                Some(ended) => return Ok(ended),
                None => {
                    pause().await;
                    continue;
                }
            }
        }
        let freeze_sent = record
            .current
            .progress
            .as_ref()
            .is_some_and(|progress| progress.done >= MERGE_FREEZE_STEP);
        match right_now.merging_into {
            None if freeze_sent => {
                // The freeze may have been sent (its answer lost, the registry a report
                // behind): send it again, never start over (a cancel is refused from the
                // freeze step on, and must stay so).
                let request = ApiRequest::FreezeShard {
                    shard: right,
                    epoch: right_now.epoch,
                    into: left,
                };
                match call_shard_leader(context, right, request).await {
                    Ok(ApiResponse::Frozen(frozen)) => store_descriptor(context, &frozen).await?,
                    Ok(ApiResponse::Error(ApiError::StaleEpoch { descriptor })) => {
                        store_descriptor(context, &descriptor).await?;
                        if descriptor.merging_into.is_none() {
                            // Changed without freezing (not through placement): give up.
                            let reason = format!("shard {right} changed before it froze");
                            return Ok(OperationState::Failed { reason });
                        }
                    }
                    _ => pause().await,
                }
            }
            None => {
                if record.ended_elsewhere().await {
                    return Ok(OperationState::Running);
                }
                if left_now.end_key.is_empty() || left_now.end_key != right_now.start_key {
                    return Ok(OperationState::Failed {
                        reason: format!("shard {right} no longer starts where shard {left} ends"),
                    });
                }
                if !left_now.learners.is_empty()
                    || !right_now.learners.is_empty()
                    || left_now.replicas.len() != right_now.replicas.len()
                {
                    record
                        .progress(
                            "waiting for the shards' replication to settle".to_string(),
                            0,
                            MERGE_STEPS,
                        )
                        .await;
                    pause().await;
                    continue;
                }
                if let Some((from, to)) = misaligned(&right_now, &left_now) {
                    record
                        .progress(
                            format!("moving shard {right}'s replica from node {from} to node {to}"),
                            1,
                            MERGE_STEPS,
                        )
                        .await;
                    match execute_move(record, right, from, to).await {
                        OperationState::Done => continue,
                        OperationState::Running => return Ok(OperationState::Running),
                        OperationState::Failed { reason } => {
                            return Ok(OperationState::Failed {
                                reason: format!("moving shard {right}'s replicas: {reason}"),
                            })
                        }
                    }
                }
                if let Some(down) = right_now.replicas.iter().find(|&&n| !is_live(context, n)) {
                    record
                        .progress(
                            format!("waiting for node {down}, which holds a replica"),
                            1,
                            MERGE_STEPS,
                        )
                        .await;
                    pause().await;
                    continue;
                }
                // Recorded before the freeze: a cancel either came first (then this fails
                // and nothing is frozen) or is refused from now on.
                let step = format!("freezing shard {right}");
                if !record
                    .record_step(step, MERGE_FREEZE_STEP, MERGE_STEPS)
                    .await
                {
                    return Ok(OperationState::Running);
                }
                let request = ApiRequest::FreezeShard {
                    shard: right,
                    epoch: right_now.epoch,
                    into: left,
                };
                match call_shard_leader(context, right, request).await {
                    Ok(ApiResponse::Frozen(frozen)) => {
                        tracing::info!(operation = id, left, right, "right shard frozen");
                        store_descriptor(context, &frozen).await?;
                    }
                    Ok(other) => {
                        tracing::info!(operation = id, ?other, "freeze not done yet");
                        pause().await;
                    }
                    Err(error) => {
                        tracing::info!(operation = id, %error, "freeze not done yet");
                        pause().await;
                    }
                }
            }
            Some(into) if into != left => {
                return Ok(OperationState::Failed {
                    reason: format!("shard {right} is frozen for a merge into shard {into}"),
                });
            }
            Some(_) => {
                // Frozen: forward while it can go forward; else roll back (recorded first,
                // so whoever resumes it rolls back too, and never merges).
                let stuck = if left_now.merging_into.is_some() {
                    Some(format!("shard {left} is frozen for another merge"))
                } else if left_now.end_key != right_now.start_key {
                    Some(format!(
                        "shard {left} no longer ends where shard {right} starts"
                    ))
                } else if left_now.replicas.len() != right_now.replicas.len() {
                    Some(format!(
                        "shards {left} and {right} have different voter counts"
                    ))
                } else {
                    // Not merely unknown to a placement leader that took over moments ago.
                    right_now
                        .replicas
                        .iter()
                        .find(|&&node| gone_quiet(context, node))
                        .map(|node| format!("node {node} stopped answering during the merge"))
                };
                if let Some(reason) = stuck {
                    let step = format!("{MERGE_ROLLBACK_PREFIX}{reason}");
                    if !record
                        .record_step(step, MERGE_FREEZE_STEP, MERGE_STEPS)
                        .await
                    {
                        return Ok(OperationState::Running);
                    }
                    continue;
                }
                if let Some((from, to)) = misaligned(&left_now, &right_now) {
                    record
                        .progress(
                            format!("moving shard {left}'s replica from node {from} to node {to}"),
                            3,
                            MERGE_STEPS,
                        )
                        .await;
                    if execute_move(record, left, from, to).await != OperationState::Done {
                        return Ok(OperationState::Running);
                    }
                    continue;
                }
                record
                    .progress(
                        format!("waiting for every replica of shard {right} to freeze"),
                        3,
                        MERGE_STEPS,
                    )
                    .await;
                let mut ready = true;
                for &node in &right_now.replicas {
                    let request = ApiRequest::MergeReady {
                        shard: right,
                        version: right_now.epoch.version,
                        into: left,
                    };
                    let answer = call_node_plain(context, node, request).await;
                    ready &= matches!(answer, Ok(ApiResponse::MergeReady { ready: true }));
                }
                if !ready {
                    pause().await;
                    continue;
                }
                record
                    .progress(
                        format!("merging shard {right} into shard {left}"),
                        4,
                        MERGE_STEPS,
                    )
                    .await;
                let request = ApiRequest::MergeShards {
                    shard: left,
                    epoch: left_now.epoch,
                    right: right_now.clone(),
                };
                match call_shard_leader(context, left, request).await {
                    Ok(ApiResponse::Merged(merged)) => {
                        store_descriptor(context, &merged).await?;
                        delete_record(context, record_key(SHARD_PREFIX, right)).await?;
                        return Ok(await_retired(record, &merged, right).await);
                    }
                    Ok(other) => {
                        // A registry a report behind (StaleEpoch), or a replica not frozen
                        // yet: read again and retry.
                        tracing::info!(operation = id, ?other, "merge not done yet");
                        pause().await;
                    }
                    Err(error) => {
                        tracing::info!(operation = id, %error, "merge not done yet");
                        pause().await;
                    }
                }
            }
        }
    }
    Ok(OperationState::Running)
}

/// The last step of a merge: done once every live node of the merged shard retired its
/// replica of `right` (applied the merge). Until then the merge keeps both shards busy, so
/// nothing splits the merged shard under a replica that has not taken the range yet.
async fn await_retired(
    record: &mut OperationRecord<'_>,
    merged: &ShardDescriptor,
    right: ShardId,
) -> OperationState {
    let context = record.context;
    let step = format!("waiting for every replica to retire shard {right}");
    record.progress(step, 4, MERGE_STEPS).await;
    let deadline = Instant::now() + context.config.request_timeout;
    while Instant::now() < deadline {
        let mut retired = true;
        for &node in merged.members().collect::<Vec<_>>().iter() {
            if !is_live(context, node) {
                continue;
            }
            let answer =
                call_node_plain(context, node, ApiRequest::ReplicaHeld { shard: right }).await;
            retired &= matches!(answer, Ok(ApiResponse::ReplicaHeld { held: false }));
        }
        if retired {
            tracing::info!(
                operation = record.id(),
                left = merged.id,
                right,
                "merge done"
            );
            return OperationState::Done;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    OperationState::Running
}

/// The start of a merge's progress step once it rolls back, followed by the reason.
const MERGE_ROLLBACK_PREFIX: &str = "rolling back: ";

/// Why the merge rolls back, if its record says it does.
fn rollback_reason(record: &OperationRecord<'_>) -> Option<String> {
    let progress = record.current.progress.as_ref()?;
    progress
        .step
        .strip_prefix(MERGE_ROLLBACK_PREFIX)
        .map(str::to_string)
}

/// One attempt at rolling a merge back: first the left shard refuses every merge planned
/// before (`AbortMerge` bumps its version), then the right shard is unfrozen. `Some` with
/// how the operation ended (failed with `reason` once the right shard serves again, or
/// done if the merge had applied after all); `None` to try again.
async fn roll_back_merge(
    record: &mut OperationRecord<'_>,
    left_now: &ShardDescriptor,
    right_now: &ShardDescriptor,
    reason: String,
) -> Result<Option<OperationState>, ApiError> {
    let context = record.context;
    let (left, right) = (left_now.id, right_now.id);
    if right_now.merging_into.is_none() {
        return Ok(Some(OperationState::Failed {
            reason: format!("{reason}; rolled back"),
        }));
    }
    if left_now.covers(right_now) && left_now.epoch.version > right_now.epoch.version {
        // A merge sent before the rollback was decided applied first: it stands.
        delete_record(context, record_key(SHARD_PREFIX, right)).await?;
        return Ok(Some(await_retired(record, left_now, right).await));
    }
    if left_now.merging_into.is_some() {
        // A frozen left shard applies no merge, and leaves that state only by a merge of
        // its own or an unfreeze, both of which bump its version past any merge planned.
        return unfreeze_right(context, left, right_now, reason).await;
    }
    let request = ApiRequest::AbortMerge {
        shard: left,
        version: left_now.epoch.version,
        right,
    };
    match call_shard_leader(context, left, request).await {
        Ok(ApiResponse::RangeChanged(bumped)) => store_descriptor(context, &bumped).await?,
        Ok(ApiResponse::Error(ApiError::StaleEpoch { descriptor })) => {
            // The registry is behind: the left shard is past the version read, by a
            // rollback applied earlier, or by the merge (then it covers the right range).
            store_descriptor(context, &descriptor).await?;
            if descriptor.covers(right_now) {
                return Ok(None);
            }
        }
        other => {
            tracing::info!(left, right, ?other, "merge rollback not applied yet");
            return Ok(None);
        }
    }
    // No merge planned before can apply now: the right shard may serve again.
    unfreeze_right(context, left, right_now, reason).await
}

/// The last step of a rollback: unfreezes `right_now`, frozen for a merge into `left`.
async fn unfreeze_right(
    context: &NodeContext,
    left: ShardId,
    right_now: &ShardDescriptor,
    reason: String,
) -> Result<Option<OperationState>, ApiError> {
    let right = right_now.id;
    let request = ApiRequest::UnfreezeShard {
        shard: right,
        version: right_now.epoch.version,
        into: left,
    };
    match call_shard_leader(context, right, request).await {
        Ok(ApiResponse::RangeChanged(thawed)) => {
            store_descriptor(context, &thawed).await?;
            tracing::info!(left, right, %reason, "merge rolled back");
            Ok(Some(OperationState::Failed {
                reason: format!("{reason}; rolled back"),
            }))
        }
        other => {
            tracing::info!(left, right, ?other, "unfreeze not applied yet");
            Ok(None)
        }
    }
}

/// Deletes a placement record.
async fn delete_record(context: &NodeContext, key: Vec<u8>) -> Result<(), ApiError> {
    let command = crate::kv::KvCommand {
        shard: PLACEMENT_SHARD,
        epoch: placement_epoch(context)?,
        ops: vec![KvOp::Delete { key }],
    };
    match context.request(Request::Write(command)).await? {
        Response::Written(_) => Ok(()),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Merges `shard` with its right neighbour, as an operation (see [`admin_split`] for how
/// operations are recorded; [`execute_merge`] for its steps): checked first (both exist,
/// neither is placement's nor frozen).
pub async fn admin_merge(context: &NodeContext, shard: ShardId) -> Result<ApiResponse, ApiError> {
    let descriptors: Vec<ShardDescriptor> = scan_records(context, SHARD_PREFIX).await?;
    let Some(left) = descriptors.iter().find(|d| d.id == shard) else {
        return Err(ApiError::Refused(format!("there is no shard {shard}")));
    };
    let right = descriptors.iter().find(|d| {
        !left.end_key.is_empty() && d.start_key == left.end_key && d.merging_into.is_none()
    });
    let Some(right) = right.filter(|d| d.id != PLACEMENT_SHARD) else {
        return Err(ApiError::Refused(format!(
            "shard {shard} has no right neighbour to merge with (it ends the data key space, \
             or its neighbour is frozen for another merge)"
        )));
    };
    if shard == PLACEMENT_SHARD || left.merging_into.is_some() {
        return Err(ApiError::Refused(format!("shard {shard} cannot be merged")));
    }
    let right = right.id;
    let (id, _) = allocate_ids(context).await?;
    let operation = Operation {
        id,
        kind: OperationKind::Merge { left: shard, right },
        state: OperationState::Running,
        progress: None,
    };
    tracing::info!(operation = id, left = shard, right, "merge started");
    run_operation(context, operation, left.epoch.version, Marked::No).await
}

/// Starts this round's automatic merges, each a recorded `Merge` operation (resumed like
/// an operator's), on shards with nothing else under way.
fn start_merges(context: &Arc<NodeContext>, merges: Vec<AutoMerge>) {
    for AutoMerge { left, right } in merges {
        if !context.begin_operator(left) {
            continue;
        }
        if !context.begin_operator(right) {
            context.end_operator(left);
            continue;
        }
        tracing::info!(left, right, "merging small cold shards");
        let context = context.clone();
        tokio::spawn(async move {
            let (id, _) = match allocate_ids(&context).await {
                Ok(ids) => ids,
                Err(error) => {
                    context.end_operator(left);
                    context.end_operator(right);
                    tracing::info!(left, right, %error, "automatic merge not started");
                    return;
                }
            };
            let operation = Operation {
                id,
                kind: OperationKind::Merge { left, right },
                state: OperationState::Running,
                progress: None,
            };
            // It owns both marks from here and clears them however it ends.
            if let Err(error) = run_operation(&context, operation, 0, Marked::Already).await {
                tracing::info!(left, right, %error, "automatic merge not started");
            }
        });
    }
}

/// `shard`'s descriptor as placement's registry holds it (the newest its leaders reported,
/// or a step stored).
async fn registry_descriptor(context: &NodeContext, shard: ShardId) -> Option<ShardDescriptor> {
    let key = record_key(SHARD_PREFIX, shard);
    let record: Option<(ShardDescriptor, Vec<u8>)> = read_record(context, &key).await.ok()?;
    record.map(|(descriptor, _)| descriptor)
}

/// Asks `descriptor`'s shard leader for one membership change planned at its conf
/// version, and stores the membership it answers with. What goes wrong is logged: the
/// caller looks at the registry again and plans its next step from what it finds.
async fn change_replicas_step(
    context: &NodeContext,
    descriptor: &ShardDescriptor,
    change: ReplicaChange,
) {
    let shard = descriptor.id;
    let request = ApiRequest::ChangeReplicas {
        shard,
        change,
        conf_version: descriptor.epoch.conf_version,
    };
    match call_shard_leader(context, shard, request).await {
        Ok(ApiResponse::ReplicasChanged(changed)) => {
            tracing::info!(shard, ?change, replicas = ?changed.replicas, learners = ?changed.learners, "replicas changed");
            if let Err(error) = store_descriptor(context, &changed).await {
                tracing::info!(shard, %error, "changed membership not stored yet");
            }
        }
        Ok(other) => tracing::info!(shard, ?change, ?other, "membership step not taken"),
        Err(error) => tracing::info!(shard, ?change, %error, "membership step not taken"),
    }
}

/// Asks `from`, leading `descriptor`'s shard, to hand the leadership to another live
/// voter.
async fn hand_leadership_away(context: &NodeContext, descriptor: &ShardDescriptor, from: NodeId) {
    let shard = descriptor.id;
    let Some(&to) = descriptor
        .replicas
        .iter()
        .find(|&&voter| voter != from && is_live(context, voter))
    else {
        tracing::info!(shard, from, "no live voter to take the leadership");
        return;
    };
    let request = ApiRequest::TransferLeadership { shard, to };
    if let Err(error) = call_shard_leader(context, shard, request).await {
        tracing::info!(shard, from, to, %error, "leadership not handed away yet");
    }
}

/// Splits `shard` at `at` into `new_shard` through its leader; the state the operation
/// reached.
async fn execute_split(
    context: &NodeContext,
    id: u64,
    shard: ShardId,
    version: u64,
    at: Vec<u8>,
    new_shard: ShardId,
) -> Result<OperationState, ApiError> {
    let request = ApiRequest::SplitShard {
        shard,
        version,
        at: at.clone(),
        new_shard,
    };
    let state = match call_shard_leader(context, shard, request).await {
        Ok(ApiResponse::Split { left, right }) => {
            store_descriptor(context, &left).await?;
            store_descriptor(context, &right).await?;
            tracing::info!(operation = id, shard, new_shard, "split done");
            OperationState::Done
        }
        Ok(ApiResponse::Error(error)) if error.wrote_nothing() && !is_transient(&error) => {
            // Refused: done already by an earlier attempt of this operation (whose answer
            // was lost, or whose placement leader failed before recording it), or refused
            // for good (the shard changed under the plan, the key no longer inside it).
            match split_of(context, shard, &at, new_shard).await {
                SplitSeen::Done(left, right) => {
                    store_descriptor(context, &left).await?;
                    store_descriptor(context, &right).await?;
                    OperationState::Done
                }
                SplitSeen::Unknown => OperationState::Running,
                SplitSeen::NotDone => OperationState::Failed {
                    reason: error.to_string(),
                },
            }
        }
        Ok(other) => {
            tracing::info!(operation = id, ?other, "split step not done yet");
            OperationState::Running
        }
        Err(error) => {
            tracing::info!(operation = id, %error, "split step not done yet");
            OperationState::Running
        }
    };
    Ok(state)
}

/// Errors after which the step may succeed if tried again.
fn is_transient(error: &ApiError) -> bool {
    matches!(
        error,
        ApiError::NotLeader { .. }
            | ApiError::ShardUnavailable { .. }
            | ApiError::Busy(_)
            | ApiError::Unavailable(_)
            | ApiError::Timeout(_)
            | ApiError::OutcomeUnknown
    )
}

/// Whether `shard` was split at `at` into `new_shard`: as the registry has it, or as the
/// node leading `shard` answers for both ranges.
async fn split_of(
    context: &NodeContext,
    shard: ShardId,
    at: &[u8],
    new_shard: ShardId,
) -> SplitSeen {
    // The registry first: the new shard's leader reports it within a report interval.
    if let Ok(stored) = scan_records::<ShardDescriptor>(context, SHARD_PREFIX).await {
        let right = stored
            .iter()
            .find(|d| d.id == new_shard && d.start_key == at);
        let left = stored.iter().find(|d| d.id == shard);
        if let (Some(left), Some(right)) = (left, right) {
            return SplitSeen::Done(Box::new(left.clone()), Box::new(right.clone()));
        }
    }
    let Some(leader) = leader_of(context, shard) else {
        return SplitSeen::Unknown;
    };
    let route = |key: Vec<u8>| async {
        match call_node_plain(context, leader, ApiRequest::Route { key }).await {
            Ok(ApiResponse::Route(route)) => Some(route.descriptor),
            _ => None,
        }
    };
    let Some(right) = route(at.to_vec()).await else {
        return SplitSeen::Unknown;
    };
    if right.id != new_shard || right.start_key != at {
        return SplitSeen::NotDone;
    }
    let left_key = context
        .cluster_snapshot()
        .1
        .into_iter()
        .find(|r| r.descriptor.id == shard)
        .map(|r| r.descriptor.start_key);
    let Some(left_key) = left_key else {
        return SplitSeen::Unknown;
    };
    match route(left_key).await {
        Some(left) if left.id == shard && left.end_key == at => {
            SplitSeen::Done(Box::new(left), Box::new(right))
        }
        Some(_) => SplitSeen::NotDone,
        None => SplitSeen::Unknown,
    }
}

/// Whether a split happened, as far as placement can tell.
enum SplitSeen {
    Done(Box<ShardDescriptor>, Box<ShardDescriptor>),
    NotDone,
    /// Nobody to ask yet (a new placement leader that has not heard the reports).
    Unknown,
}

/// The node placement last heard lead `shard`.
fn leader_of(context: &NodeContext, shard: ShardId) -> Option<NodeId> {
    context.placement.lock().ok()?.leaders.get(&shard).copied()
}

/// `request` to the leader of `shard`, following `NotLeader` answers, a bounded number of
/// times with backoff.
async fn call_shard_leader(
    context: &NodeContext,
    shard: ShardId,
    request: ApiRequest,
) -> Result<ApiResponse, String> {
    let mut leader = leader_of(context, shard);
    let mut backoff = Duration::from_millis(50);
    let mut last = format!("no leader of shard {shard} known");
    for _ in 0..MAX_LEADER_ATTEMPTS {
        let Some(node) = leader else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            leader = leader_of(context, shard);
            continue;
        };
        match call_node_plain(context, node, request.clone()).await {
            Ok(ApiResponse::Error(ApiError::NotLeader {
                leader: Some(next), ..
            })) if next.id != node => leader = Some(next.id),
            Ok(ApiResponse::Error(error)) if is_transient(&error) => {
                last = error.to_string();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                leader = leader_of(context, shard).or(leader);
            }
            Ok(response) => return Ok(response),
            Err(error) => {
                last = error;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                leader = leader_of(context, shard);
            }
        }
    }
    Err(last)
}

/// `request` to `node` over the network, or to this node's driver directly (not through
/// [`super::api::handle`], which would make the futures recursive).
async fn call_node_plain(
    context: &NodeContext,
    node: NodeId,
    request: ApiRequest,
) -> Result<ApiResponse, String> {
    if node != context.identity.node {
        let address = context
            .node_info(node)
            .and_then(|info| info.address.parse().ok())
            .ok_or_else(|| format!("no address known for node {node}"))?;
        return context.call(address, request).await;
    }
    match request {
        ApiRequest::SplitShard {
            shard,
            version,
            at,
            new_shard,
        } => Ok(
            super::api::split_shard(context, shard, version, at, new_shard)
                .await
                .unwrap_or_else(ApiResponse::Error),
        ),
        ApiRequest::Route { key } => Ok(super::api::route(context, &key)),
        ApiRequest::ChangeReplicas {
            shard,
            change,
            conf_version,
        } => Ok(
            super::api::change_replicas(context, shard, change, conf_version)
                .await
                .unwrap_or_else(ApiResponse::Error),
        ),
        ApiRequest::TransferLeadership { shard, to } => {
            Ok(super::api::transfer_leadership(context, shard, to)
                .unwrap_or_else(ApiResponse::Error))
        }
        ApiRequest::FreezeShard { shard, epoch, into } => {
            Ok(super::api::freeze_shard(context, shard, epoch, into)
                .await
                .unwrap_or_else(ApiResponse::Error))
        }
        ApiRequest::MergeReady {
            shard,
            version,
            into,
        } => Ok(super::api::merge_ready(context, shard, version, into)),
        ApiRequest::ReplicaHeld { shard } => Ok(super::api::replica_held(context, shard)),
        ApiRequest::AbortMerge {
            shard,
            version,
            right,
        } => Ok(super::api::abort_merge(context, shard, version, right)
            .await
            .unwrap_or_else(ApiResponse::Error)),
        ApiRequest::UnfreezeShard {
            shard,
            version,
            into,
        } => Ok(super::api::unfreeze_shard(context, shard, version, into)
            .await
            .unwrap_or_else(ApiResponse::Error)),
        ApiRequest::MergeShards {
            shard,
            epoch,
            right,
        } => Ok(super::api::merge_shards(context, shard, epoch, right)
            .await
            .unwrap_or_else(ApiResponse::Error)),
        other => Err(format!("not served locally: {other:?}")),
    }
}

/// Stores `descriptor` in the registry unless it holds a newer one.
async fn store_descriptor(
    context: &NodeContext,
    descriptor: &ShardDescriptor,
) -> Result<(), ApiError> {
    let key = record_key(SHARD_PREFIX, descriptor.id);
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        let current: Option<(ShardDescriptor, Vec<u8>)> = read_record(context, &key).await?;
        if current
            .as_ref()
            .is_some_and(|(stored, _)| stored.epoch >= descriptor.epoch)
        {
            return Ok(());
        }
        let expected = current.map(|(_, bytes)| bytes);
        if compare_and_swap(context, key.clone(), expected, encode(descriptor)?).await? {
            return Ok(());
        }
    }
    Err(ApiError::Busy(
        "shard record changing too often".to_string(),
    ))
}
