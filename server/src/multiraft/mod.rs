//! The multi-raft driver: one loop runs every replica (shard) a node holds.
//!
//! An iteration ([`MultiRaft::iterate`]) does, in order:
//! 0. start the batch with the next bounded steps of snapshot installs and staging cleanup;
//! 1. drain at most `max_inputs_per_iteration` inputs from the bounded inbox: ticks,
//!    frames from peers, snapshot chunks, client requests, admin commands; step or tick the
//!    groups they name, stage the chunks;
//! 2. propose each group's writes taken in step 1 as ONE entry (the commands apply in order,
//!    each all or none on its own, and each is answered for itself), then collect a Ready
//!    from each group with work (only those: an idle group costs nothing);
//! 3. send one frame per peer with every message that may go before the sync (a leader's
//!    appends: it counts itself toward a commit only once its own sync is done); heartbeats
//!    are coalesced; snapshots stream in bounded chunks beside the frames (see the
//!    `snapshot` module);
//! 4. build ONE storage batch with every group's entries, hard state, snapshot install and
//!    applied commands, write it, answer the commands it applied, and sync it with ONE sync
//!    (group commit across groups);
//! 5. advance the groups, send at once the messages that needed the sync (a follower's
//!    acknowledgements, which are on every write's path), and answer the reads now served.
//!
//! Durability: no message that depends on a write is sent before the sync that makes the
//! write durable. A command is answered only once it applied, so once its entry committed:
//! durable on a quorum, and here (the core hands out only entries persisted here). Its
//! answer goes before the sync of the batch that applied it, since a crash there loses only
//! the applied state, which the restart rebuilds from the log with the same results. A
//! failed sync poisons the store and stops the driver: the writes it had proposed and not
//! answered are answered [`RequestError::OutcomeUnknown`] (they may be on a quorum already),
//! every later request [`RequestError::Stopped`], and it never syncs again.
//!
//! Quiescence: a leader whose followers all acknowledged its last index and commit, with no
//! pending proposals or reads, stops ticking and tells its followers to stop too. Node-level
//! liveness (any frame from a peer) stands in for the heartbeats of quiet groups: when a peer
//! is silent for `peer_dead_after_ticks`, the quiet groups it led here wake and may elect a new
//! leader; the other quiet groups stay quiet. A replica that cannot campaign (a learner)
//! and has heard from no leader for an election timeout asks its voters: a quiet leader
//! wakes, and one that no longer counts it a member sends it a removal notice.
//!
//! Deterministic: the driver reads no clock and draws no unseeded randomness, so the
//! simulation replays a seed exactly. The production loop around it (tokio, QUIC) feeds it
//! ticks and frames and carries its answers.

mod counters;
mod driver;
mod frame;
mod replica;
pub use replica::LEARNER_CATCH_UP_SLACK_ENTRIES;
mod snapshot;
mod transport;

use rshard_common::shard::{Epoch, ShardDescriptor, ShardId};
use rshard_raft::{ConfChange, NodeId};
use thiserror::Error;

use crate::kv::{
    AbortMergeCommand, FreezeCommand, KvCommand, KvError, KvOutcome, MergeCommand, SplitCommand,
    UnfreezeCommand,
};

pub use counters::{Counters, PeerCounters};
pub use driver::MultiRaft;
pub use frame::{
    CoalescedHeartbeat, CoalescedHeartbeatResponse, Frame, FrameError, GroupMessage, RemovedNotice,
    MAX_FRAME_BYTES,
};
pub use snapshot::{
    SessionId, SnapshotAck, SnapshotChunk, SnapshotItem, SnapshotManifest, SnapshotMessage,
    SnapshotMessageError, SnapshotRefusal, MAX_SNAPSHOT_CHUNK_BYTES, MAX_SNAPSHOT_MESSAGE_BYTES,
};
pub use transport::{QueueTransport, SendError, Transport};

/// Settings of a node's driver. Every limit carries its unit.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub node: NodeId,
    pub election_timeout_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    /// A peer not heard from for this many ticks is declared dead.
    pub peer_dead_after_ticks: u32,
    /// Every this many ticks, each peer gets a frame even if there is nothing to say.
    pub liveness_interval_ticks: u32,
    /// Whether idle groups stop ticking.
    pub quiesce: bool,
    /// Inputs waiting in the inbox; more are refused.
    pub max_inbox_inputs: usize,
    /// Inputs taken from the inbox per iteration, so one iteration stays short.
    pub max_inputs_per_iteration: usize,
    /// Proposals and reads waiting for an answer, over all groups.
    pub max_pending_requests: usize,
    /// A group's log is compacted to its applied index once it holds this many entries.
    pub max_log_entries: u64,
    /// Keys and values per snapshot chunk (a chunk holds at least one item; capped at
    /// [`MAX_SNAPSHOT_CHUNK_BYTES`]).
    pub snapshot_chunk_bytes: usize,
    /// Chunks of one transfer sent and not yet acknowledged.
    pub snapshot_chunks_in_flight: u32,
    /// Snapshots this node sends at once; Raft retries the others later.
    pub max_snapshot_sends: usize,
    /// Snapshots this node receives at once; more are refused.
    pub max_snapshot_receives: usize,
    /// A transfer without progress for this many ticks ends (and Raft retries it).
    pub snapshot_timeout_ticks: u32,
    /// After a receiver refuses a transfer (busy, installing, no replica to create), the
    /// next one to it for that group starts no sooner than this many ticks later.
    pub snapshot_refusal_backoff_ticks: u32,
    /// Bytes of snapshot install and staging cleanup written per iteration, so a large
    /// install never stalls the loop.
    pub snapshot_apply_bytes_per_iteration: usize,
    /// Bytes of snapshot chunks waiting in the inbox; more are refused.
    pub max_snapshot_inbox_bytes: usize,
    /// Seeds every replica's election-timeout randomness.
    pub seed: u64,
}

impl DriverConfig {
    pub fn new(node: NodeId) -> Self {
        DriverConfig {
            node,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            peer_dead_after_ticks: 10,
            liveness_interval_ticks: 2,
            quiesce: true,
            max_inbox_inputs: 65_536,
            max_inputs_per_iteration: 4096,
            max_pending_requests: 65_536,
            max_log_entries: 10_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_in_flight: 4,
            max_snapshot_sends: 4,
            max_snapshot_receives: 4,
            snapshot_timeout_ticks: 50,
            snapshot_refusal_backoff_ticks: 20,
            snapshot_apply_bytes_per_iteration: 8 << 20,
            max_snapshot_inbox_bytes: 64 << 20,
            seed: 0,
        }
    }
}

/// A client's request id, unique among its pending requests on this node.
pub type RequestId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A replicated command on one shard (put, delete, compare-and-swap, atomic batch).
    Write(KvCommand),
    /// A linearizable read of one key (ReadIndex).
    Read {
        shard: ShardId,
        epoch: Epoch,
        key: Vec<u8>,
    },
    /// A linearizable read of the keys in `[start, end)` within the shard (an empty `end`:
    /// to the shard's end), at most `limit` items and [`MAX_SCAN_BYTES`] (ReadIndex).
    Scan {
        shard: ShardId,
        epoch: Epoch,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    },
    /// A membership change of the shard's Raft group, answered once it applies. With
    /// `conf_version`, refused unless the shard's membership is still at that version.
    ChangeReplicas {
        shard: ShardId,
        change: ConfChange,
        conf_version: Option<u64>,
    },
    /// Splits the shard (see [`SplitCommand`]), answered once the split applies. Every
    /// replica creates the new shard's replica as it applies the split. Asking again for a
    /// split that already happened (the shard ends at `at`, and this node holds
    /// `new_shard` from there) is answered as done.
    Split(SplitCommand),
    /// Freezes the shard for its merge into its left neighbour (see
    /// [`crate::kv::FreezeCommand`]), answered once the freeze applies. Asking again once
    /// it is frozen into the same shard answers the frozen descriptor.
    Freeze(FreezeCommand),
    /// Merges the shard with its frozen right neighbour (see [`crate::kv::MergeCommand`]),
    /// answered once the merge applies; refused unless this node's replica of the right
    /// shard is frozen as the command says. Asking again once merged answers the same.
    Merge(MergeCommand),
    /// Rolls a merge back in its left shard (see [`crate::kv::AbortMergeCommand`]),
    /// answered once it applies.
    AbortMerge(AbortMergeCommand),
    /// Unfreezes a shard whose merge was rolled back (see
    /// [`crate::kv::UnfreezeCommand`]), answered once it applies. Asking again once it is
    /// unfrozen is refused; the caller reads the descriptor.
    Unfreeze(UnfreezeCommand),
}

impl Request {
    pub fn shard(&self) -> ShardId {
        match self {
            Request::Write(command) => command.shard,
            Request::Read { shard, .. }
            | Request::Scan { shard, .. }
            | Request::ChangeReplicas { shard, .. } => *shard,
            Request::Split(split) => split.shard,
            Request::Freeze(freeze) => freeze.shard,
            Request::Merge(merge) => merge.shard,
            Request::AbortMerge(abort) => abort.shard,
            Request::Unfreeze(unfreeze) => unfreeze.shard,
        }
    }

    /// True for requests that go through the log (writes and membership changes): once
    /// taken, losing their answer leaves their outcome unknown.
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Request::Write(_)
                | Request::ChangeReplicas { .. }
                | Request::Split(_)
                | Request::Freeze(_)
                | Request::Merge(_)
                | Request::AbortMerge(_)
                | Request::Unfreeze(_)
        )
    }
}

/// Items a scan answer carries at most (a page; the caller continues after the last).
pub const MAX_SCAN_ITEMS: usize = 10_000;
/// Bytes of keys and values a scan answer carries at most (at least one item).
pub const MAX_SCAN_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Written(KvOutcome),
    Value(Option<Vec<u8>>),
    /// Keys in order; `more` if the page ended before the requested range did.
    Items {
        items: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
    },
    /// The change applied; the shard's descriptor after it.
    MembershipChanged(ShardDescriptor),
    /// The split applied: the shard's descriptor after it, and the new shard's.
    Split {
        left: ShardDescriptor,
        right: ShardDescriptor,
    },
    /// The freeze applied: the shard's frozen descriptor.
    Frozen(ShardDescriptor),
    /// The merge applied: the shard's descriptor after it.
    Merged(ShardDescriptor),
    /// A rollback or an unfreeze applied: the shard's descriptor after it.
    RangeChanged(ShardDescriptor),
}

/// Why a request got no result. Only [`RequestError::OutcomeUnknown`] leaves a write's fate
/// open; every other error means it was not and will not be applied.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("this node does not lead shard {shard} (leader: {leader:?}); retry there")]
    NotLeader {
        shard: ShardId,
        leader: Option<NodeId>,
    },
    #[error("shard {0} has no replica on this node; refresh the route")]
    UnknownShard(ShardId),
    #[error(transparent)]
    Refused(#[from] KvError),
    #[error("node busy: {0}; retry later")]
    Busy(&'static str),
    /// Leadership changed before the write's entry applied; it may or may not apply later.
    #[error("leadership changed; the write may or may not have been applied")]
    OutcomeUnknown,
    /// The node stopped (storage failed, or it shuts down) before the request reached Raft:
    /// nothing was applied, and another replica may serve it.
    #[error("the node stopped: {0}")]
    Stopped(String),
    #[error("membership change refused: {0}")]
    MembershipRefused(String),
}

pub type Answer = (RequestId, Result<Response, RequestError>);

/// What the driver takes from its inbox.
#[derive(Clone, Debug)]
pub enum Input {
    /// One unit of logical time.
    Tick,
    Frame(Frame),
    /// A snapshot chunk or its acknowledgement.
    Snapshot(SnapshotMessage),
    Request {
        id: RequestId,
        request: Request,
    },
    /// Creates this node's replica of a new shard (every initial replica gets the same
    /// descriptor); ignored if the replica exists.
    CreateShard(ShardDescriptor),
    TransferLeader {
        shard: ShardId,
        to: NodeId,
    },
}

/// The inbox refused an input: it is full. The request was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("the driver inbox is full")]
pub struct InboxFull;

#[cfg(test)]
mod tests;
