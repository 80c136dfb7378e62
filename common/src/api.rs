//! The request and response messages of a node's API, as they travel in frames
//! ([`crate::wire`]) on QUIC bi-directional streams: one request and one response per stream,
//! so a client runs many requests concurrently on one connection.
//!
//! Key-value requests name the shard and epoch the client routed with; a node that cannot
//! serve them answers with an [`ApiError`] that says what to do next (follow the leader,
//! refresh the route, back off). Requests marked "node only" are refused on connections
//! whose certificate is not a node's.
//!
//! User keys are any bytes below [`SYSTEM_KEY_PREFIX`]: keys from it up belong to the
//! placement group (the cluster's own records), and user requests for them are refused
//! with [`ApiError::ReservedKey`].

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::shard::{Epoch, ShardDescriptor, ShardId};

pub type NodeId = u64;

/// Keys starting with this byte are the cluster's own (the placement group's range).
pub const SYSTEM_KEY_PREFIX: u8 = 0xff;
/// The placement group's shard id; it owns every key from [`SYSTEM_KEY_PREFIX`] up.
pub const PLACEMENT_SHARD: ShardId = 0;
/// The first data shard of a new cluster: every user key.
pub const FIRST_DATA_SHARD: ShardId = 1;

/// The largest request or response frame, in bytes (values are at most 1 MiB; a batch or a
/// scan page stays under this).
pub const MAX_API_FRAME_BYTES: usize = 16 << 20;
pub const MAX_KEY_BYTES: usize = 4 << 10;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_BATCH_OPS: usize = 1024;
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// One write operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets `key` to `new` (`None`: delete) if its value is `expected` (`None`: absent).
    CompareAndSwap {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
}

impl WriteOp {
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::CompareAndSwap { key, .. } => key,
        }
    }

    /// The value the operation writes, if it writes one (`None` for a delete).
    pub fn written_value(&self) -> Option<&[u8]> {
        match self {
            WriteOp::Put { value, .. } => Some(value),
            WriteOp::CompareAndSwap { new, .. } => new.as_deref(),
            WriteOp::Delete { .. } => None,
        }
    }
}

/// What a request asks of one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardOp {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Applied atomically: all or none.
    Write { ops: Vec<WriteOp> },
    /// Keys in `[start, end)` within the shard (an empty `end`: to the shard's end).
    Scan {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
        limit: usize,
    },
}

/// Everything a node's API takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// A key-value request for `shard`, routed with `epoch`.
    Shard {
        shard: ShardId,
        epoch: Epoch,
        op: ShardOp,
    },
    /// The shard owning `key` and where its leader is, as this node knows it.
    Route {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The nodes and shards of the cluster, as this node knows them.
    Cluster,
    /// This node's own status.
    NodeStatus,
    /// Node only: a new node asks for an id. Refused if `address` belongs to a registered
    /// node (restart that node with its data dir instead).
    Join {
        address: String,
        /// Random, kept in the joining node's store: a retry after a crash presents the
        /// same token and gets the same id.
        token: String,
    },
    /// Node only: a node's periodic report to the placement leader.
    Heartbeat(NodeReport),
    /// Node only: a membership change for the leader of `shard` to propose, refused unless
    /// the shard's membership is still at `conf_version` (the one the change was planned
    /// against), so a stale plan can never apply twice or demote a voter.
    ChangeReplicas {
        shard: ShardId,
        change: ReplicaChange,
        conf_version: u64,
    },
    /// Node only: split `shard` at `at`, the keys from `at` on going to the new shard
    /// `new_shard`; for the shard's leader to propose, refused (`StaleEpoch`) unless the
    /// shard's range is still at `version`. Asking again once it is done answers the same.
    SplitShard {
        shard: ShardId,
        version: u64,
        #[serde(with = "serde_bytes")]
        at: Vec<u8>,
        new_shard: ShardId,
    },
    /// Admin, for the placement leader: split `shard` at `at`, as an operation with an id.
    /// Answered with the operation once it ended, or while it still runs when the request
    /// timeout nears (follow it with [`ApiRequest::AdminOperations`]).
    AdminSplit {
        shard: ShardId,
        #[serde(with = "serde_bytes")]
        at: Vec<u8>,
        /// The split is sticky (automatic merges keep the boundary) for this long; `None`:
        /// for ever.
        #[serde(default)]
        sticky_seconds: Option<u64>,
    },
    /// Admin, for the placement leader: the operations it recorded, oldest first.
    AdminOperations,
    /// Node only: hand the leadership of `shard` (led here) to its voter `to`. Answered
    /// once asked of Raft; the move shows in who leads next.
    TransferLeadership { shard: ShardId, to: NodeId },
    /// Admin, for the placement leader: move the leadership of `shard` to node `to`, as an
    /// operation with an id (done once `to` leads it).
    AdminTransferLeader { shard: ShardId, to: NodeId },
    /// Admin, for the placement leader: pause (`false`) or resume (`true`) the leader
    /// balance scheduler, cluster-wide and durably. Answered with the setting.
    AdminLeaderBalance { enabled: bool },
    /// Admin, for the placement leader: move `shard`'s replica on node `from` to node `to`,
    /// as an operation with an id (done once `to` is a voter and `from` holds nothing).
    AdminMoveReplica {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
    /// Admin, for the placement leader: move every replica off `node` (its leaderships go
    /// with them), as an operation done once no shard lists it; with `decommission`, then
    /// remove the node from the cluster. Asked again while one runs: that operation.
    AdminDrainNode { node: NodeId, decommission: bool },
    /// Admin, for the placement leader: pause (`false`) or resume (`true`) the replica
    /// balance scheduler, cluster-wide and durably. Answered with the setting.
    AdminReplicaBalance { enabled: bool },
    /// Admin, for the placement leader: stop a running move or drain; a move not yet past
    /// its joint change is rolled back (its learner removed). Answered with the operation.
    AdminCancel { id: u64 },
    /// Node only: freeze `shard` for its merge into `into`, its left neighbour; for the
    /// shard's leader to propose, refused unless the shard is still at `epoch` (its range
    /// and its membership as planned). Asking again once it is frozen into `into` answers
    /// the same.
    FreezeShard {
        shard: ShardId,
        epoch: Epoch,
        into: ShardId,
    },
    /// Node only: whether this node's replica of `shard` is frozen at epoch version
    /// `version` (it applied everything up to its freeze, durably), and this node holds a
    /// replica of `into` (which will apply the merge from its log, or take a snapshot of
    /// the merged shard over the frozen one).
    MergeReady {
        shard: ShardId,
        version: u64,
        into: ShardId,
    },
    /// Node only: merge `shard` with `right`, its frozen right neighbour; for the shard's
    /// leader to propose, refused unless the shard is still at `epoch` (version and conf
    /// version). Asking again once merged answers the same.
    MergeShards {
        shard: ShardId,
        epoch: Epoch,
        right: ShardDescriptor,
    },
    /// Node only: whether this node holds a replica of `shard`.
    ReplicaHeld { shard: ShardId },
    /// Node only: roll a merge of `right` into `shard` back, in `shard` (its leader
    /// proposes it): refused unless `shard` is still at epoch version `version`; once it
    /// applied, no merge planned before can apply.
    AbortMerge {
        shard: ShardId,
        version: u64,
        right: ShardId,
    },
    /// Node only: unfreeze `shard`, frozen at `version` for a merge into `into` that was
    /// rolled back (its leader proposes it).
    UnfreezeShard {
        shard: ShardId,
        version: u64,
        into: ShardId,
    },
    /// Admin, for the placement leader: merge `shard` with its right neighbour, as an
    /// operation with an id (the neighbour's replicas are first moved onto the shard's
    /// nodes).
    AdminMerge { shard: ShardId },
}

/// An operation placement carries out, with its id and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: u64,
    pub kind: OperationKind,
    pub state: OperationState,
    /// Where a long operation (a move, a drain) stands, as its executor last recorded.
    #[serde(default)]
    pub progress: Option<OperationProgress>,
}

/// `done` of `total` units of an operation, and the step it is at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationProgress {
    pub step: String,
    pub done: u64,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationKind {
    /// Split `shard` at `at`; the keys from `at` on go to the new shard `new_shard`.
    Split {
        shard: ShardId,
        #[serde(with = "serde_bytes")]
        at: Vec<u8>,
        new_shard: ShardId,
    },
    /// Move the leadership of `shard` to node `to`.
    TransferLeader { shard: ShardId, to: NodeId },
    /// Move `shard`'s replica from node `from` to node `to`: a learner on `to`, caught up
    /// by snapshot, then one joint change promoting it and removing `from` (whose
    /// leadership, if it leads, moves first).
    MoveReplica {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
    /// Move every replica off `node` (placement's repair scheduler moves them, as from a
    /// dead node); with `decommission`, then remove the node from the cluster.
    Drain { node: NodeId, decommission: bool },
    /// Merge shard `left` with `right`, its right neighbour: `right`'s replicas moved onto
    /// `left`'s nodes, `right` frozen, then `left` takes its range and `right` is retired.
    Merge { left: ShardId, right: ShardId },
}

impl OperationKind {
    /// Every shard the operation works on (none for a drain, two for a merge).
    pub fn shards(&self) -> Vec<ShardId> {
        match self {
            OperationKind::Merge { left, right } => vec![*left, *right],
            other => other.shard().into_iter().collect(),
        }
    }

    /// The shard the operation works on, if it works on one (the left one of a merge).
    pub fn shard(&self) -> Option<ShardId> {
        match self {
            OperationKind::Split { shard, .. }
            | OperationKind::TransferLeader { shard, .. }
            | OperationKind::MoveReplica { shard, .. } => Some(*shard),
            OperationKind::Merge { left, .. } => Some(*left),
            OperationKind::Drain { .. } => None,
        }
    }

    /// The operation in words, for people.
    pub fn describe(&self) -> String {
        match self {
            Self::TransferLeader { shard, to } => {
                format!("transfer the leadership of shard {shard} to node {to}")
            }
            Self::MoveReplica { shard, from, to } => {
                format!("move the replica of shard {shard} from node {from} to node {to}")
            }
            Self::Drain {
                node,
                decommission: false,
            } => format!("drain node {node}: move every replica off it"),
            Self::Drain {
                node,
                decommission: true,
            } => format!("decommission node {node}: drain it, then remove it from the cluster"),
            Self::Split {
                shard,
                at,
                new_shard,
            } => format!(
                "split shard {shard} at {} (new shard {new_shard})",
                crate::keytext::show(at)
            ),
            Self::Merge { left, right } => {
                format!("merge shard {right} into shard {left}, its left neighbour")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationState {
    /// Under way; resumed by the next placement leader if this one fails.
    Running,
    Done,
    Failed {
        reason: String,
    },
}

impl OperationState {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, OperationState::Running)
    }
}

/// A membership change placement asks of a shard leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaChange {
    AddLearner(NodeId),
    /// Promote a learner; refused until it holds every committed entry.
    Promote(NodeId),
    /// Promote the learner `add` and remove `remove` in one joint change (left by the
    /// leader on its own): the voter count never drops. Refused until `add` holds every
    /// committed entry, and while `remove` leads (move the leadership away first).
    Replace {
        add: NodeId,
        remove: NodeId,
    },
    /// Remove a replica (a learner, or a voter the shard can spare); refused for the leader.
    Remove(NodeId),
}

/// A node's report to placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: NodeId,
    pub address: String,
    /// Descriptors of the shards this node leads.
    pub leading: Vec<ShardDescriptor>,
    /// Replicas this node holds.
    pub replicas: u64,
    /// (shard, learner) pairs of shards this node leads whose learner holds every committed
    /// entry: ready to be promoted.
    pub caught_up_learners: Vec<(ShardId, NodeId)>,
    /// The data directory's file system; `None` if it could not be read. (Fields added
    /// after the first release go last, with a default, so older senders still decode.)
    #[serde(default)]
    pub disk: Option<DiskSpace>,
    /// Size and load of the shards this node leads, as measured here (see [`ShardStats`]).
    #[serde(default)]
    pub shard_stats: Vec<ShardStats>,
}

/// A shard's size and load as its leader measured them, for placement's split and merge
/// schedulers. Every figure is of the shard at epoch version `version`: a report of an
/// older version (the shard split or merged since) is stale.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: ShardId,
    pub version: u64,
    /// Bytes of keys and values in the shard's range at the last size check; `None`
    /// before the first.
    pub bytes: Option<u64>,
    pub keys: Option<u64>,
    /// The key that halves the shard's bytes, from the last size check (`None` if no key
    /// strictly inside the range does).
    #[serde(default, with = "serde_bytes")]
    pub size_split_key: Option<Vec<u8>>,
    /// Requests answered per second over the last report interval.
    pub requests_per_second: u64,
    /// The key that halves the requests of the last interval, from a sample of their keys
    /// (`None` if no key strictly inside the range splits the sample into two sides of a
    /// quarter or more each: one hot key cannot be split).
    #[serde(default, with = "serde_bytes")]
    pub load_split_key: Option<Vec<u8>>,
}

/// The file system holding a node's data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use.
    pub available_bytes: u64,
}

/// What a node holds and has room for, as of its last report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// Replicas (of any shard) on the node.
    pub replicas: u64,
    /// `None` if the node could not read its file system.
    pub disk: Option<DiskSpace>,
}

/// A node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub address: String,
    /// Heard from by the placement leader recently (false if unknown).
    pub live: bool,
    /// From the node's last report to placement; `None` if placement has none (yet).
    /// Last, defaulted and skipped when absent, so the other fields keep their places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeCapacity>,
}

/// A shard and its leader, as a node knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRoute {
    pub descriptor: ShardDescriptor,
    pub leader: Option<NodeInfo>,
    /// Size and load as placement last heard them from the shard's leader (placement's
    /// view only). Last, defaulted and skipped when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ShardStats>,
}

/// This node's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub cluster: String,
    pub address: String,
    pub replicas: u64,
    pub leading: u64,
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiResponse {
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// The write applied; or op `op` (a compare-and-swap) found `current` and nothing was
    /// written.
    Written {
        failed_condition: Option<(usize, Option<serde_bytes::ByteBuf>)>,
    },
    /// Keys in order; `more` if the page ended before the requested range did.
    Items {
        items: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
        more: bool,
    },
    Route(ShardRoute),
    Cluster {
        nodes: Vec<NodeInfo>,
        shards: Vec<ShardRoute>,
    },
    NodeStatus(NodeStatus),
    Joined {
        node: NodeId,
        cluster: String,
    },
    /// The placement leader's answer to a heartbeat: the cluster as it knows it.
    ClusterView {
        cluster: String,
        nodes: Vec<NodeInfo>,
        shards: Vec<ShardRoute>,
    },
    ReplicasChanged(ShardDescriptor),
    Error(ApiError),
    // Variants added later go last: variants travel by position.
    /// A shard split: its descriptor after the split, and the new shard's.
    Split {
        left: ShardDescriptor,
        right: ShardDescriptor,
    },
    Operation(Operation),
    Operations(Vec<Operation>),
    /// The request was taken; what it asked for shows later.
    Accepted,
    /// Whether the leader balance scheduler runs.
    LeaderBalance {
        enabled: bool,
    },
    /// Whether the replica balance scheduler runs.
    ReplicaBalance {
        enabled: bool,
    },
    /// A shard was frozen for its merge: its frozen descriptor.
    Frozen(ShardDescriptor),
    /// Whether this node's replica of a shard is frozen as asked.
    MergeReady {
        ready: bool,
    },
    /// Two shards merged: the left one's descriptor after the merge.
    Merged(ShardDescriptor),
    /// Whether a node holds a replica of a shard.
    ReplicaHeld {
        held: bool,
    },
    /// A merge was rolled back, or a shard unfrozen: the shard's descriptor after it.
    RangeChanged(ShardDescriptor),
}

/// Who leads, for a message.
fn leader_text(leader: Option<&NodeInfo>) -> String {
    match leader {
        Some(node) => format!("the leader is node {} at {}", node.id, node.address),
        None => "the leader is not known".to_string(),
    }
}

/// A shard's range in the printable key form, for a message.
fn range_text(descriptor: &ShardDescriptor) -> String {
    let end = if descriptor.end_key.is_empty() {
        "the end".to_string()
    } else {
        crate::keytext::show(&descriptor.end_key)
    };
    format!("{} .. {end}", crate::keytext::show(&descriptor.start_key))
}

/// Errors a client can act on. Only [`ApiError::OutcomeUnknown`] and [`ApiError::Timeout`]
/// leave a write's fate open; every other error means nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum ApiError {
    #[error("not the leader of shard {shard}; {}", leader_text(leader.as_ref()))]
    NotLeader {
        shard: ShardId,
        leader: Option<NodeInfo>,
    },
    #[error("the key is not in shard {}; the shard is now {}", descriptor.id, range_text(descriptor))]
    KeyNotInShard { descriptor: Box<ShardDescriptor> },
    #[error("shard {} changed (now version {}, membership version {}); refresh the route", descriptor.id, descriptor.epoch.version, descriptor.epoch.conf_version)]
    StaleEpoch { descriptor: Box<ShardDescriptor> },
    #[error("shard {shard} has no replica or no leader reachable here: {reason}")]
    ShardUnavailable { shard: ShardId, reason: String },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("keys starting with 0xff are reserved for the cluster")]
    ReservedKey,
    #[error("the node is busy ({0}); retry later")]
    Busy(String),
    #[error("the outcome is unknown (leadership changed); the write may or may not have applied")]
    OutcomeUnknown,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the node is stopping or stopped: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// True if the request certainly changed nothing.
    pub fn wrote_nothing(&self) -> bool {
        !matches!(self, ApiError::OutcomeUnknown | ApiError::Timeout(_))
    }
}

/// The first key after every key that starts with `prefix` (`None`: there is none, as
/// for a prefix of 0xff bytes only).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The first key a scan resuming after `key` reads from: `key` + 0x00, unless that would
/// be longer than a key may be; then no stored key extends `key`, and the next one is the
/// first past every key it prefixes. `None`: no key comes after it.
pub fn key_after(key: &[u8]) -> Option<Vec<u8>> {
    if key.len() < MAX_KEY_BYTES {
        return Some([key, &[0]].concat());
    }
    prefix_end(key)
}

/// Checks a user's key-value request before it is routed: sizes, counts, and no system
/// keys.
pub fn check_user_op(op: &ShardOp) -> Result<(), ApiError> {
    let check_key = |key: &[u8]| {
        if key.first() == Some(&SYSTEM_KEY_PREFIX) {
            return Err(ApiError::ReservedKey);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(ApiError::TooLarge(format!(
                "key of {} bytes (limit {MAX_KEY_BYTES})",
                key.len()
            )));
        }
        Ok(())
    };
    match op {
        ShardOp::Get { key } => check_key(key),
        ShardOp::Scan { start, limit, .. } => {
            check_key(start)?;
            if *limit == 0 || *limit > MAX_SCAN_LIMIT {
                return Err(ApiError::Malformed(format!(
                    "scan limit {limit} (1 to {MAX_SCAN_LIMIT})"
                )));
            }
            Ok(())
        }
        ShardOp::Write { ops } => {
            if ops.is_empty() || ops.len() > MAX_BATCH_OPS {
                return Err(ApiError::Malformed(format!(
                    "{} operations (1 to {MAX_BATCH_OPS})",
                    ops.len()
                )));
            }
            for op in ops {
                check_key(op.key())?;
                if let Some(value) = op.written_value().filter(|v| v.len() > MAX_VALUE_BYTES) {
                    return Err(ApiError::TooLarge(format!(
                        "value of {} bytes (limit {MAX_VALUE_BYTES})",
                        value.len()
                    )));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan resumes after any key at a key a request may name, and never before it.
    #[test]
    fn the_key_after_a_key_is_one_a_request_may_name() {
        assert_eq!(key_after(b"ab"), Some(b"ab\0".to_vec()));
        let longest = vec![b'k'; MAX_KEY_BYTES];
        let next = key_after(&longest).expect("a next key");
        assert!(next.len() <= MAX_KEY_BYTES && next > longest);
        let mut ending_in_ff = vec![b'k'; MAX_KEY_BYTES - 1];
        ending_in_ff.push(0xff);
        assert_eq!(
            key_after(&ending_in_ff),
            Some([vec![b'k'; MAX_KEY_BYTES - 2], vec![b'l']].concat())
        );
        assert_eq!(key_after(&vec![0xff; MAX_KEY_BYTES]), None);
    }

    #[test]
    fn fields_added_later_leave_the_earlier_layout_readable_both_ways() {
        // The layout before capacity existed: (id, address, live).
        let old = rmp_serde::to_vec(&(7u64, "127.0.0.1:7001", true)).expect("encodes");
        let read: NodeInfo = rmp_serde::from_slice(&old).expect("an old sender decodes");
        assert_eq!(read.capacity, None);
        let without = NodeInfo {
            id: 7,
            address: "127.0.0.1:7001".to_string(),
            live: true,
            capacity: None,
        };
        let encoded = rmp_serde::to_vec(&without).expect("encodes");
        assert_eq!(encoded, old, "absent capacity is not written at all");
        // A report from before disk space: (node, address, leading, replicas, learners).
        let old = rmp_serde::to_vec(&(
            2u64,
            "a",
            Vec::<ShardDescriptor>::new(),
            5u64,
            Vec::<(u64, u64)>::new(),
        ))
        .expect("encodes");
        let report: NodeReport = rmp_serde::from_slice(&old).expect("an old report decodes");
        assert_eq!((report.replicas, report.disk), (5, None));
    }

    #[test]
    fn user_requests_for_system_keys_or_over_the_limits_are_refused() {
        let get = |key: &[u8]| ShardOp::Get { key: key.to_vec() };
        assert_eq!(check_user_op(&get(b"user")), Ok(()));
        assert_eq!(check_user_op(&get(b"")), Ok(()));
        assert_eq!(check_user_op(&get(b"\xffnode")), Err(ApiError::ReservedKey));
        assert!(matches!(
            check_user_op(&get(&vec![b'k'; MAX_KEY_BYTES + 1])),
            Err(ApiError::TooLarge(_))
        ));
        let put = |value: usize| ShardOp::Write {
            ops: vec![WriteOp::Put {
                key: b"k".to_vec(),
                value: vec![0; value],
            }],
        };
        assert_eq!(check_user_op(&put(MAX_VALUE_BYTES)), Ok(()));
        assert!(matches!(
            check_user_op(&put(MAX_VALUE_BYTES + 1)),
            Err(ApiError::TooLarge(_))
        ));
        assert!(matches!(
            check_user_op(&ShardOp::Write { ops: vec![] }),
            Err(ApiError::Malformed(_))
        ));
        let scan = |limit| ShardOp::Scan {
            start: vec![],
            end: vec![],
            limit,
        };
        assert!(matches!(
            check_user_op(&scan(0)),
            Err(ApiError::Malformed(_))
        ));
        assert_eq!(check_user_op(&scan(10)), Ok(()));
    }
}
