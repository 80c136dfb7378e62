//! Log replication (§5.3), the commit rule (§5.4.2), heartbeats and snapshots (§7).

use crate::message::{AppendResult, Message, MessageKind};
use crate::progress::ProgressState;
use crate::quorum::committed_index;
use crate::raft::Raft;
use crate::storage::{Storage, StorageError};
use crate::types::{Entry, Index, LogPosition, NodeId, Payload, Role, Snapshot, Term};
use crate::Error;

/// Whether an append with no entries is still worth sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmptyAppend {
    /// Send it anyway, to carry the commit index or probe the follower's log.
    Send,
    /// Only send if there are entries.
    Skip,
    /// Send no entries, only find where the follower's log ends (a repeated probe to a
    /// follower that may be gone, so it costs little).
    ProbeOnly,
}

impl<S: Storage> Raft<S> {
    /// Appends an entry of the current term to the leader's log (unpersisted).
    pub(crate) fn append_entry(&mut self, payload: Payload) -> LogPosition {
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload,
        };
        self.uncommitted_bytes += entry.size_bytes();
        let position = entry.position();
        self.log.append(&[entry]);
        position
    }

    /// Sends appends (or snapshots) to every other member.
    pub(crate) fn broadcast_append(&mut self) -> Result<(), Error> {
        let members: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id())
            .collect();
        for member in members {
            self.send_append(member, EmptyAppend::Send)?;
        }
        Ok(())
    }

    /// Sends the follower what it is missing, within flow control. True if a message went out.
    pub(crate) fn send_append(&mut self, to: NodeId, empty: EmptyAppend) -> Result<bool, Error> {
        let Some(progress) = self.progress.get(&to) else {
            return Ok(false);
        };
        if progress.is_paused() {
            return Ok(false);
        }
        let next = progress.next;
        let previous_term = self.log.term(next - 1);
        let entries = match empty {
            EmptyAppend::ProbeOnly => Ok(Vec::new()),
            EmptyAppend::Send | EmptyAppend::Skip => {
                self.log
                    .slice(next, self.log.last_index() + 1, self.config.max_msg_bytes)
            }
        };
        let (previous_term, entries) = match (previous_term, entries) {
            (Ok(term), Ok(entries)) => (term, entries),
            (Err(StorageError::Compacted), _) | (_, Err(StorageError::Compacted)) => {
                return self.send_snapshot(to);
            }
            (Err(error), _) | (_, Err(error)) => return Err(error.into()),
        };
        if entries.is_empty() && empty == EmptyAppend::Skip {
            return Ok(false);
        }
        let last = entries.last().map_or(next - 1, |e| e.index);
        let count = entries.len();
        let kind = MessageKind::Append {
            prev_index: next - 1,
            prev_term: previous_term,
            entries,
            commit: self.log.committed,
        };
        self.send(to, self.term, kind);
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.sent_append(last, count);
        }
        Ok(true)
    }

    fn send_snapshot(&mut self, to: NodeId) -> Result<bool, Error> {
        let snapshot = match self.log.snapshot() {
            Ok(snapshot) => snapshot,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        assert!(
            snapshot.metadata.index > 0,
            "log compacted without a snapshot"
        );
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.become_snapshot(snapshot.metadata.index);
        }
        self.send(to, self.term, MessageKind::InstallSnapshot { snapshot });
        Ok(true)
    }

    /// Starts a heartbeat round: every follower gets the round number and the commit index
    /// it can safely apply.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        self.heartbeat_round += 1;
        self.heartbeat_round_pending = false;
        self.record_round_tick();
        let round = self.heartbeat_round;
        let id = self.id();
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(&member, _)| member != id)
            .map(|(&member, progress)| (member, progress.matched.min(self.log.committed)))
            .collect();
        for (member, commit) in targets {
            self.send(
                member,
                self.term,
                MessageKind::Heartbeat {
                    commit,
                    round,
                    quiesce: false,
                },
            );
        }
        // With no other voter left, our own acknowledgement is the quorum.
        self.release_confirmed_reads();
    }

    /// Commits the highest index a quorum holds, if it is of our term. Only entries of the
    /// current term commit by counting replicas (§5.4.2, Figure 8); earlier ones commit with
    /// them.
    pub(crate) fn maybe_commit(&mut self) -> Result<bool, Error> {
        let progress = &self.progress;
        let index = committed_index(&self.conf, &|id| progress.get(&id).map_or(0, |p| p.matched));
        Ok(self.log.maybe_commit(index, self.term)?)
    }

    /// Append, heartbeat or snapshot from the leader of our term.
    pub(crate) fn handle_from_leader(&mut self, message: Message) -> Result<(), Error> {
        let from = message.from;
        match message.kind {
            MessageKind::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => self.handle_append(
                from,
                LogPosition {
                    term: prev_term,
                    index: prev_index,
                },
                entries,
                commit,
            ),
            MessageKind::Heartbeat {
                commit,
                round,
                quiesce,
            } => {
                // `commit` never exceeds what we acknowledged to this leader in this term.
                self.log.commit_to(commit.min(self.log.last_index()));
                let commit = self.log.committed;
                self.send(
                    from,
                    self.term,
                    MessageKind::HeartbeatResponse { round, commit },
                );
                if quiesce && self.log.last_index() == commit {
                    self.quiesced = true;
                }
                Ok(())
            }
            MessageKind::InstallSnapshot { snapshot } => self.handle_snapshot(from, snapshot),
            _ => Ok(()),
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        previous: LogPosition,
        entries: Vec<Entry>,
        commit: Index,
    ) -> Result<(), Error> {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader never truncates its own log"
        );
        if previous.index < self.log.committed {
            let result = AppendResult::Accepted {
                match_index: self.log.committed,
            };
            self.respond_append(from, result);
            return Ok(());
        }
        let result = match self.log.maybe_append(previous, commit, &entries)? {
            Some(last_new) => AppendResult::Accepted {
                match_index: last_new,
            },
            None => {
                // Fast backtracking: point the leader at our last entry that may match.
                let hint = self.log.find_conflict_by_term(
                    previous.index.min(self.log.last_index()),
                    previous.term,
                )?;
                AppendResult::Rejected {
                    rejected_index: previous.index,
                    hint_index: hint.index,
                    hint_term: hint.term,
                }
            }
        };
        self.respond_append(from, result);
        Ok(())
    }

    fn respond_append(&mut self, to: NodeId, result: AppendResult) {
        let commit = self.log.committed;
        self.send(
            to,
            self.term,
            MessageKind::AppendResponse { result, commit },
        );
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) -> Result<(), Error> {
        let metadata = &snapshot.metadata;
        let index = metadata.index;
        if index <= self.log.committed {
            let result = AppendResult::Accepted {
                match_index: self.log.committed,
            };
            self.respond_append(from, result);
            return Ok(());
        }
        // The snapshot's configuration may not name us: it can predate our (re-)addition,
        // which the entries after it carry. It is committed state either way, so install it.
        if self.log.match_term(index, metadata.term)? {
            // We already hold the snapshot's last entry: just fast-forward the commit.
            self.log.commit_to(index);
        } else {
            let conf = metadata.conf_state.clone();
            self.log.restore(snapshot);
            self.set_conf(conf);
            self.conf_index = index;
        }
        // Only the snapshot's prefix is known to match the leader's log: a suffix we held
        // past it may be of an older term, so never claim it (etcd answers the same way).
        let result = AppendResult::Accepted {
            match_index: self.log.committed,
        };
        self.respond_append(from, result);
        Ok(())
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        result: AppendResult,
        commit: Index,
    ) -> Result<(), Error> {
        let Some(progress) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.recent_active = true;
        progress.commit_known = progress.commit_known.max(commit);
        match result {
            AppendResult::Rejected {
                rejected_index,
                hint_index,
                hint_term,
            } => {
                let next_probe = if hint_term > 0 {
                    self.log.find_conflict_by_term(hint_index, hint_term)?.index
                } else {
                    hint_index
                };
                let Some(progress) = self.progress.get_mut(&from) else {
                    return Ok(());
                };
                if progress.maybe_decrease_to(rejected_index, next_probe) {
                    if progress.state == ProgressState::Replicate {
                        progress.become_probe();
                    }
                    self.send_append(from, EmptyAppend::Send)?;
                }
                Ok(())
            }
            AppendResult::Accepted { match_index } => {
                self.handle_append_accepted(from, match_index)
            }
        }
    }

    fn handle_append_accepted(&mut self, from: NodeId, match_index: Index) -> Result<(), Error> {
        if match_index > self.log.last_index() {
            // No honest follower holds entries we never had; ignore rather than trust it.
            return Ok(());
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        let was_paused = progress.is_paused();
        // A probe that confirms the index already matched tells where the log ends just as
        // well: stream from there (else an empty probe to an up-to-date follower would
        // leave it paused).
        let confirms_probe =
            progress.state == ProgressState::Probe && progress.matched == match_index;
        if !progress.maybe_update(match_index) && !confirms_probe {
            return Ok(());
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot if progress.matched >= progress.pending_snapshot => {
                progress.become_probe();
                progress.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => progress.acknowledged(match_index),
        }
        if self.maybe_commit()? {
            self.broadcast_append()?;
        } else if was_paused {
            self.send_append(from, EmptyAppend::Send)?;
        }
        // Stream whatever else the window allows.
        while self.send_append(from, EmptyAppend::Skip)? {}
        let caught_up = self
            .progress
            .get(&from)
            .is_some_and(|p| p.matched == self.log.last_index());
        if self.lead_transferee == Some(from) && caught_up {
            self.send_timeout_now(from);
        }
        Ok(())
    }

    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        round: u64,
        commit: Index,
    ) -> Result<(), Error> {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.recent_active = true;
        progress.heartbeat_answered();
        progress.commit_known = progress.commit_known.max(commit);
        progress.round_acked = progress.round_acked.max(round);
        if progress.matched < last_index || progress.commit_known < self.log.committed {
            self.wake();
            self.send_append(from, EmptyAppend::Send)?;
        }
        self.release_confirmed_reads();
        Ok(())
    }

    /// Snapshots not acknowledged within `snapshot_timeout_ticks` are presumed lost and
    /// retried; a driver that knows sooner calls `report_snapshot_failed`.
    pub(crate) fn expire_snapshots(&mut self) {
        let limit = self.config.snapshot_timeout_ticks;
        for progress in self.progress.values_mut() {
            if progress.state == ProgressState::Snapshot {
                progress.snapshot_elapsed_ticks += 1;
                if progress.snapshot_elapsed_ticks > limit {
                    progress.become_probe();
                }
            }
        }
    }

    /// A follower in probe state that got no probe, or no answer to one, for an election
    /// timeout gets a new probe. A follower's heartbeat answer or a new proposal resumes
    /// probing sooner; this covers a follower that answers no heartbeat, such as a node that
    /// holds no replica of the group yet and answers only appends, in a group with no
    /// writes. Without it, one lost probe (or a snapshot refused, which returns the follower
    /// to probe state without sending anything) would leave that follower behind for good.
    pub(crate) fn expire_probes(&mut self) -> Result<(), Error> {
        let limit = self.config.election_timeout_ticks;
        let id = self.id();
        let mut lost = Vec::new();
        for (&member, progress) in self.progress.iter_mut() {
            if member != id && progress.state == ProgressState::Probe {
                progress.probe_elapsed_ticks += 1;
                if progress.probe_elapsed_ticks > limit {
                    progress.probe_sent = false;
                    lost.push(member);
                }
            }
        }
        for member in lost {
            self.send_append(member, EmptyAppend::ProbeOnly)?;
        }
        Ok(())
    }

    /// The driver could not deliver to `to` (connection lost): stop streaming optimistically.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(progress) = self.progress.get_mut(&to) {
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }

    /// The driver learned that `to` no longer holds a replica of this group (its node
    /// answered an append for a group it does not know): whatever it acknowledged is gone.
    /// For a learner, its progress starts over from nothing, so it is probed from the
    /// start of the log and sent a snapshot as a new learner is; without this, its old
    /// acknowledgements make every rejection look stale and it is never caught up again. A
    /// voter is left alone: its acknowledgements may have counted toward commits, and a
    /// voter that lost its replica is not something the leader can repair.
    ///
    /// `term` and `rejected_index` are the answer's: one from an older term, or rejecting
    /// past what `to` acknowledged (a rejection the usual probing handles), says nothing of
    /// a loss and is ignored, so a delayed answer never costs a caught-up learner a snapshot.
    pub fn report_replica_lost(&mut self, to: NodeId, term: Term, rejected_index: Index) {
        if self.role != Role::Leader || term != self.term || !self.conf.learners.contains(&to) {
            return;
        }
        if let Some(progress) = self
            .progress
            .get_mut(&to)
            .filter(|progress| rejected_index <= progress.matched)
        {
            progress.matched = 0;
            progress.commit_known = 0;
            progress.pending_snapshot = 0;
            progress.become_probe();
        }
    }

    /// The driver failed to deliver the snapshot it was handed for `to`: try again later
    /// (probing from what `to` is known to hold, so a new snapshot follows if needed).
    pub fn report_snapshot_failed(&mut self, to: NodeId) {
        if let Some(progress) = self.progress.get_mut(&to) {
            if progress.state == ProgressState::Snapshot {
                progress.pending_snapshot = 0;
                progress.become_probe();
            }
        }
    }

    /// The driver delivered the whole snapshot it was handed for `to` (a chunked transfer
    /// ended). Its answer may still be lost, so stop waiting for it: probe right after the
    /// snapshot. If `to` installed it the probe succeeds; if not, it is refused and a new
    /// snapshot follows, with no wait for `snapshot_timeout_ticks`.
    pub fn report_snapshot_delivered(&mut self, to: NodeId) {
        if let Some(progress) = self.progress.get_mut(&to) {
            if progress.state == ProgressState::Snapshot {
                progress.become_probe();
            }
        }
    }
}
