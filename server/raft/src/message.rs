//! Messages between the replicas of one group. The driver adds the group id and batches them
//! per destination node; the core only sees one group's messages.
//!
//! Heartbeats are their own kinds (not empty appends) so a multi-raft driver can coalesce
//! the heartbeats of many groups into one frame per node pair.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, NodeId, Snapshot, Term};

/// One message within a group. `term` is the sender's term, except for pre-vote requests and
/// granted pre-vote responses, which carry the term the pre-candidate would campaign in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub kind: MessageKind,
}

/// What a message asks or answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// Would you vote for me in `term`? Changes no state on the receiver (thesis §9.6).
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResponse {
        reject: bool,
    },
    /// RequestVote (§5.2). `leader_transfer` marks a campaign started by `TimeoutNow`, which
    /// may disturb a live leader (thesis §3.10).
    Vote {
        last_index: Index,
        last_term: Term,
        leader_transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    /// AppendEntries (§5.3).
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    AppendResponse {
        result: AppendResult,
        commit: Index,
    },
    /// The leader's periodic "I am alive". `commit` is at most what this follower matched, so
    /// it never tells a follower to commit entries it may not hold. `round` numbers the heartbeat round; a quorum of answers
    /// to a round confirms leadership for reads and leases (thesis §6.4). `quiesce` asks the
    /// follower to stop ticking if it is caught up.
    Heartbeat {
        commit: Index,
        round: u64,
        quiesce: bool,
    },
    HeartbeatResponse {
        round: u64,
        commit: Index,
    },
    /// InstallSnapshot (§7).
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// Start an election now, skipping pre-vote and lease checks (leader transfer, §3.10).
    TimeoutNow,
}

/// A follower's answer to `Append` or `InstallSnapshot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `match_index`, durably.
    Accepted { match_index: Index },
    /// The entry at `rejected_index` did not match. The hint is the follower's last entry at
    /// or before `rejected_index` whose term is at most the leader's `prev_term`, so the
    /// leader can skip a whole term per round trip (fast backtracking, §5.3 end).
    Rejected {
        rejected_index: Index,
        hint_index: Index,
        hint_term: Term,
    },
}

impl MessageKind {
    /// True for messages only a leader of `term` sends.
    pub fn is_from_leader(&self) -> bool {
        matches!(
            self,
            MessageKind::Append { .. }
                | MessageKind::Heartbeat { .. }
                | MessageKind::InstallSnapshot { .. }
        )
    }
}
