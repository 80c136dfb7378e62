//! What the driver loop did, for tests now and metrics later. Monotonic counts, except the
//! two gauges of ticking and quiet groups.

use std::collections::BTreeMap;

use rshard_raft::NodeId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub frames_sent: u64,
    /// Frames that carried at least one heartbeat or heartbeat answer.
    pub heartbeat_frames_sent: u64,
    /// Coalesced heartbeats and answers, counted per group.
    pub heartbeats_sent: u64,
    pub messages_sent: u64,
    /// Frames the transport refused because the peer's queue was full.
    pub frames_dropped: u64,
    pub frames_received: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub iterations: u64,
    /// Readies handled: groups that had work, summed over iterations.
    pub readies: u64,
    /// Groups looked at because they took input, summed over iterations.
    pub dirty_groups: u64,
    /// Storage syncs; at most one per iteration.
    pub syncs: u64,
    /// Log entries made durable (so entries per sync = this / `syncs`).
    pub entries_persisted: u64,
    pub entries_applied: u64,
    /// Ticks of the node, and the sum over ticks of groups ticked.
    pub ticks: u64,
    pub group_ticks: u64,
    /// Gauges, as of the end of the last iteration.
    pub ticking_groups: u64,
    pub quiet_groups: u64,
    /// Inputs refused because the inbox was full.
    pub inbox_drops: u64,
    /// Messages for groups this node does not hold, and messages the core refused.
    pub messages_for_unknown_groups: u64,
    /// Replicas created by the first snapshot of a group this node had no replica of.
    pub replicas_created_by_snapshot: u64,
    /// Replicas created here by applying a split of a shard this node holds.
    pub shards_split_off: u64,
    /// Replicas removed from this node by a membership change: destroyed when they applied
    /// their removal, or when a removal notice told them.
    pub replicas_destroyed: u64,
    pub replicas_destroyed_by_notice: u64,
    /// Replicas of shards merged into their left neighbour, retired here.
    pub replicas_merged_away: u64,
    /// Removal notices sent to nodes that are no longer members of a group.
    pub removal_notices_sent: u64,
    pub malformed_messages: u64,
    /// Peers declared dead, and groups woken because a dead peer led them.
    pub peers_declared_dead: u64,
    pub groups_woken_by_dead_peer: u64,
    /// Leaderless replicas here that asked their voters (see `Frame::leaderless`), and
    /// quiet groups led here woken by such a question.
    pub leaderless_asks_sent: u64,
    pub groups_woken_by_leaderless: u64,
    /// Snapshot transfers started, completed (every chunk acknowledged) and failed.
    pub snapshot_sends_started: u64,
    pub snapshots_sent: u64,
    pub snapshot_sends_failed: u64,
    /// Of those, refused by the receiver (the next waits `snapshot_refusal_backoff_ticks`).
    pub snapshot_sends_refused: u64,
    pub snapshot_chunks_sent: u64,
    /// Keys and values sent in snapshot chunks.
    pub snapshot_bytes_sent: u64,
    pub snapshot_chunks_received: u64,
    pub snapshot_chunks_refused: u64,
    pub snapshot_receives_timed_out: u64,
    /// Installs completed (the data is in place and the group runs again).
    pub snapshots_installed: u64,
    /// Installs found half done when the driver opened (a crash interrupted them).
    pub installs_resumed: u64,
    /// Staging of transfers that ended without an install, deleted.
    pub stagings_discarded: u64,
    /// Messages dropped because their group was installing a snapshot.
    pub messages_while_installing: u64,
    pub compactions: u64,
    pub per_peer: BTreeMap<NodeId, PeerCounters>,
}

impl Counters {
    pub fn peer(&mut self, peer: NodeId) -> &mut PeerCounters {
        self.per_peer.entry(peer).or_default()
    }

    /// Mean log entries made durable per sync.
    pub fn entries_per_sync(&self) -> f64 {
        if self.syncs == 0 {
            return 0.0;
        }
        self.entries_persisted as f64 / self.syncs as f64
    }
}
