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

impl Message {
    /// Checks what any correct sender guarantees, so a malformed or hostile message is
    /// refused before it changes anything. Returns the reason it is malformed.
    pub fn check_well_formed(&self) -> Result<(), &'static str> {
        if self.term == Term::MAX {
            return Err("term at its maximum");
        }
        if self.from == self.to {
            return Err("message from a replica to itself");
        }
        match &self.kind {
            MessageKind::PreVote { last_term, .. } | MessageKind::Vote { last_term, .. }
                if *last_term > self.term =>
            {
                Err("candidate's last term is past its campaign term")
            }
            MessageKind::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => check_entries(*prev_index, *prev_term, self.term, entries),
            MessageKind::AppendResponse {
                result:
                    AppendResult::Rejected {
                        rejected_index,
                        hint_index,
                        ..
                    },
                ..
            } if hint_index > rejected_index => Err("rejection hint past the rejected index"),
            MessageKind::InstallSnapshot { snapshot } => {
                let metadata = &snapshot.metadata;
                if metadata.index == 0 || metadata.term > self.term {
                    Err("snapshot index or term out of range")
                } else if metadata.conf_state.voters.is_empty() {
                    Err("snapshot configuration has no voters")
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// Entries of an append follow `prev_index` one by one, with terms that never decrease,
/// starting at or after `prev_term` and never past the leader's term.
fn check_entries(
    prev_index: Index,
    prev_term: Term,
    term: Term,
    entries: &[Entry],
) -> Result<(), &'static str> {
    if prev_term > term {
        return Err("previous term past the leader's term");
    }
    let mut last_term = prev_term;
    for (offset, entry) in entries.iter().enumerate() {
        if Some(entry.index) != prev_index.checked_add(offset as u64 + 1) {
            return Err("entries are not contiguous after the previous index");
        }
        if entry.term < last_term || entry.term > term {
            return Err("entry terms out of order or past the leader's term");
        }
        last_term = entry.term;
    }
    Ok(())
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
