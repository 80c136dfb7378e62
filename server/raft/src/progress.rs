//! What a leader knows about each follower's log, and the flow control built on it.
//!
//! A follower is in one of three states (etcd/raft's model):
//! - `Probe`: we do not know where its log ends; send one append per heartbeat interval and
//!   back off on rejection;
//! - `Replicate`: it accepted our last append, so we stream optimistically, with at most
//!   `max_inflight_msgs` appends in flight;
//! - `Snapshot`: it needs a snapshot; send nothing else until it is applied or fails.

use std::collections::VecDeque;

use crate::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// The appends sent but not yet acknowledged, by last index, bounded in count.
#[derive(Clone, Debug)]
pub struct Inflights {
    last_indexes: VecDeque<Index>,
    max_inflight_msgs: usize,
}

impl Inflights {
    pub fn new(max_inflight_msgs: usize) -> Self {
        Inflights {
            last_indexes: VecDeque::with_capacity(max_inflight_msgs),
            max_inflight_msgs,
        }
    }

    pub fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.max_inflight_msgs
    }

    pub fn count(&self) -> usize {
        self.last_indexes.len()
    }

    fn add(&mut self, last_index: Index) {
        assert!(!self.is_full(), "inflight window overflow at {last_index}");
        self.last_indexes.push_back(last_index);
    }

    /// Frees every append whose entries are all acknowledged by `index`.
    fn free_to(&mut self, index: Index) {
        while self.last_indexes.front().is_some_and(|&last| last <= index) {
            self.last_indexes.pop_front();
        }
    }

    fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }

    fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// The leader's view of one follower (or of itself).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be durably replicated on this node.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    pub state: ProgressState,
    /// In `Snapshot` state: the index of the snapshot sent.
    pub pending_snapshot: Index,
    /// Ticks spent in `Snapshot` state; past a limit the snapshot is presumed lost.
    pub snapshot_elapsed_ticks: u32,
    /// In `Probe` state: an append is out; wait for its answer or a heartbeat answer (or,
    /// from a follower that answers neither, an election timeout).
    pub probe_sent: bool,
    /// In `Probe` state: ticks since the last probe went out (or since entering the state);
    /// past a limit a new probe goes out.
    pub probe_elapsed_ticks: u32,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The highest commit index this node has told us it knows (for quiescence).
    pub commit_known: Index,
    /// The highest heartbeat round this node acknowledged in the current term.
    pub round_acked: u64,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next: Index, max_inflight_msgs: usize) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            snapshot_elapsed_ticks: 0,
            probe_sent: false,
            probe_elapsed_ticks: 0,
            recent_active: false,
            commit_known: 0,
            round_acked: 0,
            inflights: Inflights::new(max_inflight_msgs),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.probe_elapsed_ticks = 0;
        self.pending_snapshot = 0;
        self.snapshot_elapsed_ticks = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        // Coming back from a snapshot, resume after it rather than before.
        let next = if self.state == ProgressState::Snapshot {
            (self.matched + 1).max(self.pending_snapshot + 1)
        } else {
            self.matched + 1
        };
        self.reset_state(ProgressState::Probe);
        self.next = next;
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Records an acknowledgement up to `index`; false if it tells us nothing new.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Records that an append ending at `last_index` (carrying `entries` entries) went out.
    pub fn sent_append(&mut self, last_index: Index, entries: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next = last_index + 1;
                    self.inflights.add(last_index);
                }
            }
            ProgressState::Probe => {
                self.probe_sent = true;
                self.probe_elapsed_ticks = 0;
            }
            ProgressState::Snapshot => {
                unreachable!("append sent to a follower awaiting a snapshot")
            }
        }
    }

    /// Handles a rejection of the append whose previous index was `rejected`. `match_hint` is
    /// the highest index the follower may still agree with us on. False if the rejection is
    /// stale (an answer to an append we have since moved past).
    pub fn maybe_decrease_to(&mut self, rejected: Index, match_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        let next = rejected.min(match_hint + 1).max(self.matched + 1);
        if next == self.next {
            // Rejected at what it acknowledged: it lost state (a replica destroyed). Nothing
            // was learned, so sending again at once would loop; the probe timer retries.
            return false;
        }
        self.next = next;
        self.probe_sent = false;
        true
    }

    /// A heartbeat answer arrived: let probing resume, and unstick a full window (the answer
    /// proves the follower is reachable; a lost append would otherwise block it forever).
    pub fn heartbeat_answered(&mut self) {
        self.probe_sent = false;
        if self.state == ProgressState::Replicate && self.inflights.is_full() {
            self.inflights.free_first();
        }
    }

    pub fn acknowledged(&mut self, index: Index) {
        if self.state == ProgressState::Replicate {
            self.inflights.free_to(index);
        }
    }

    /// True if nothing more may be sent to this follower now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_pauses_when_window_is_full_and_frees_on_ack() {
        let mut progress = Progress::new(1, 2);
        progress.become_replicate();
        progress.sent_append(3, 3);
        progress.sent_append(5, 2);
        assert!(progress.is_paused());
        progress.maybe_update(3);
        progress.acknowledged(3);
        assert!(!progress.is_paused());
        assert_eq!(progress.next, 6);
    }

    #[test]
    fn probe_rejection_jumps_to_hint_but_not_below_match() {
        let mut progress = Progress::new(11, 4);
        progress.matched = 2;
        progress.sent_append(10, 1);
        assert!(progress.maybe_decrease_to(10, 5));
        assert_eq!(progress.next, 6);
        assert!(
            !progress.maybe_decrease_to(10, 5),
            "a stale rejection is ignored"
        );
        progress.probe_sent = false;
        assert!(progress.maybe_decrease_to(5, 0));
        assert_eq!(progress.next, 3, "never below matched + 1");
    }
}
