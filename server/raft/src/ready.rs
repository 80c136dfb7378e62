//! The Ready/advance cycle: what the caller must persist, send and apply, and the
//! acknowledgement that it did.

use crate::message::Message;
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{Entry, HardState, Index, LogPosition, ReadState, Role, Snapshot, SoftState};
use crate::Error;

/// Work for the caller, in the order of the crate documentation's duties.
#[derive(Debug, Default)]
#[must_use = "a Ready must be handled and handed back to advance()"]
pub struct Ready {
    /// Set when the role or known leader changed.
    pub soft_state: Option<SoftState>,
    /// Persist if set (with `entries` and `snapshot`, atomically).
    pub hard_state: Option<HardState>,
    /// Install and persist if set, before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Append to the persisted log, replacing any conflicting suffix.
    pub entries: Vec<Entry>,
    /// May be sent at once, even before persisting.
    pub messages: Vec<Message>,
    /// May be sent only after `hard_state`, `snapshot` and `entries` are durable.
    pub persisted_messages: Vec<Message>,
    /// Apply in order, after persisting; all are committed and durable here.
    pub committed_entries: Vec<Entry>,
    /// Confirmed reads: serve each once the applied index reaches its index.
    pub read_states: Vec<ReadState>,
    marks: ReadyMarks,
}

/// What `advance` needs to know about the Ready it acknowledges.
#[derive(Debug, Default)]
struct ReadyMarks {
    hard_state: Option<HardState>,
    last_entry: Option<LogPosition>,
    snapshot_index: Option<Index>,
    applied: Option<Index>,
    /// Bytes of committed entries of the leader's term: those `uncommitted_bytes` counted.
    committed_own_bytes: u64,
}

impl Ready {
    /// True if anything needs writing to storage (and so a sync) before the persisted
    /// messages may go.
    pub fn needs_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

impl<S: Storage> Raft<S> {
    /// True if `ready()` would hand out any work.
    pub fn has_ready(&self) -> bool {
        self.soft_state() != self.previous_soft_state
            || self.hard_state() != self.previous_hard_state
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || self.log.unstable_snapshot().is_some()
            || !self.log.unstable_entries().is_empty()
            || self.log.has_next_committed_entries()
            || !self.read_states.is_empty()
            || self.heartbeat_round_pending
    }

    /// Collects the work accumulated since the last `advance`. Call `advance` with the result
    /// before calling `ready` again.
    pub fn ready(&mut self) -> Result<Ready, Error> {
        assert!(
            !self.ready_outstanding,
            "ready() called again before advance(): the same entries would be applied twice"
        );
        if self.heartbeat_round_pending && self.role == Role::Leader {
            self.broadcast_heartbeat();
        }
        let soft_state = self.soft_state();
        let hard_state = self.hard_state();
        assert!(
            hard_state.term >= self.previous_hard_state.term
                && hard_state.commit >= self.previous_hard_state.commit,
            "hard state moved back: {:?} -> {hard_state:?}",
            self.previous_hard_state
        );
        let snapshot = self.log.unstable_snapshot().cloned();
        let entries = self.log.unstable_entries().to_vec();
        let committed_entries = self
            .log
            .next_committed_entries(self.config.max_apply_bytes)?;
        let marks = ReadyMarks {
            hard_state: (hard_state != self.previous_hard_state).then_some(hard_state),
            last_entry: entries.last().map(Entry::position),
            snapshot_index: snapshot.as_ref().map(|s| s.metadata.index),
            applied: committed_entries.last().map(|e| e.index),
            committed_own_bytes: committed_entries
                .iter()
                .filter(|e| e.term == self.term)
                .map(Entry::size_bytes)
                .sum(),
        };
        let ready = Ready {
            soft_state: (soft_state != self.previous_soft_state).then_some(soft_state),
            hard_state: marks.hard_state,
            snapshot,
            entries,
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.messages_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            marks,
        };
        self.previous_soft_state = soft_state;
        self.previous_hard_state = hard_state;
        self.ready_outstanding = true;
        Ok(ready)
    }

    /// Acknowledges that the caller persisted, sent and applied everything in `ready`.
    pub fn advance(&mut self, ready: Ready) -> Result<(), Error> {
        self.ready_outstanding = false;
        let marks = ready.marks;
        if let Some(hard_state) = marks.hard_state {
            self.persisted_term_vote = (hard_state.term, hard_state.vote);
        }
        if let Some(index) = marks.snapshot_index {
            self.log.stable_snapshot_to(index);
        }
        if let Some(position) = marks.last_entry {
            self.log.stable_to(position);
        }
        if let Some(applied) = marks.applied {
            self.log.applied_to(applied);
        }
        if self.role == Role::Leader {
            self.uncommitted_bytes = self
                .uncommitted_bytes
                .saturating_sub(marks.committed_own_bytes);
            let (id, persisted) = (self.id(), self.log.persisted);
            if let Some(own) = self.progress.get_mut(&id) {
                own.maybe_update(persisted);
            }
            if self.maybe_commit()? {
                self.broadcast_append()?;
            }
            self.maybe_auto_leave_joint()?;
        }
        let (applied, committed, last) =
            (self.log.applied, self.log.committed, self.log.last_index());
        assert!(
            applied <= committed && committed <= last,
            "index order broken: applied {applied}, committed {committed}, last {last}"
        );
        Ok(())
    }
}
