//! Plain data shared by every part of the core: log entries, the persistent hard state,
//! snapshots and the configuration they carry.
//!
//! Everything here derives serde so the driver can put it on the wire or on disk; the core
//! itself never serializes anything.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::confchange::ConfChange;

/// A replica's identity within one group. Unique per group; the driver maps it to a node.
pub type NodeId = u64;
/// A Raft term (§5.1). Zero means "before any election".
pub type Term = u64;
/// A log index. The first real entry has index 1; index 0 is the empty log's sentinel.
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The no-op a new leader appends to commit entries of earlier terms (§5.4.2, §8).
    Empty,
    /// Opaque application data.
    // Bytes, not a sequence of integers: MessagePack `bin` is one copy to encode and decode.
    Normal(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A membership change (thesis §4.3); takes effect when the caller applies it.
    ConfChange(ConfChange),
}

impl Payload {
    /// Bytes of content, as counted by the byte limits (without the per-entry overhead).
    pub fn size_bytes(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Normal(data) => data.len() as u64,
            Payload::ConfChange(change) => 16 * change.changes.len() as u64,
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub payload: Payload,
}

impl Entry {
    /// Fixed per-entry overhead counted by byte limits, so empty entries still cost something.
    pub const OVERHEAD_BYTES: u64 = 24;

    /// The size this entry counts for against `max_msg_bytes` and the other byte limits.
    pub fn size_bytes(&self) -> u64 {
        Self::OVERHEAD_BYTES + self.payload.size_bytes()
    }

    /// Where this entry sits in the log.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            term: self.term,
            index: self.index,
        }
    }
}

/// A (term, index) pair: identifies one entry in every log that holds it (log matching, §5.3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    pub term: Term,
    pub index: Index,
}

/// The state that must be durable before any message that depends on it leaves the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    /// The candidate this replica voted for in `term`, if any.
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// The membership of a group: who votes, who only learns.
///
/// Outside a joint configuration `voters_outgoing` is empty. `learners_next` holds voters of
/// the outgoing configuration being demoted to learners: they become learners when the joint
/// configuration is left (they cannot be voters and learners at once).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub voters_outgoing: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub learners_next: BTreeSet<NodeId>,
    /// Leave the joint configuration automatically once it is applied.
    pub auto_leave: bool,
}

impl ConfState {
    /// A plain configuration of the given voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            ..ConfState::default()
        }
    }

    /// True while the group is between `C_old` and `C_new` (thesis §4.3).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every replica the configuration names, voters and learners alike.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.voters_outgoing);
        all.extend(&self.learners);
        all.extend(&self.learners_next);
        all
    }
}

/// Which log prefix a snapshot replaces, and the configuration as of its last entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    pub index: Index,
    pub term: Term,
    pub conf_state: ConfState,
}

/// A state-machine image at `metadata.index`. `data` is opaque to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub metadata: SnapshotMetadata,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The role of a replica in its group (§5.1, plus pre-vote, thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// The volatile part of a replica's state a driver wants to observe: role and known leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
}

/// A linearizable read the caller may serve once its state machine has applied `index`
/// (thesis §6.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    pub index: Index,
    pub context: Vec<u8>,
}
