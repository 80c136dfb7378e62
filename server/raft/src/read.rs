//! Linearizable reads (ReadIndex, thesis §6.4; leases, §6.4.1) and quiescence.
//!
//! A read registered at heartbeat round `r` is confirmed once a quorum acknowledged a round
//! `>= r` in this term: at that point no other leader can have committed anything. Its read
//! index is `max(commit, index of our term's no-op)`, which covers every write acknowledged
//! before the read arrived.
//!
//! A lease is held while a quorum acknowledged a round sent less than an election timeout
//! ago (leader ticks): followers refuse to elect anyone else for an election timeout after
//! hearing from us. Quiescence, leader transfer and a new term drop the lease.

use crate::config::ReadMode;
use crate::message::MessageKind;
use crate::quorum::committed_index;
use crate::raft::{PendingRead, Raft};
use crate::storage::Storage;
use crate::types::{NodeId, ReadState, Role};
use crate::Error;

impl<S: Storage> Raft<S> {
    /// Requests a linearizable read. When confirmed, a [`ReadState`] with this `context`
    /// comes out of a Ready; serve the read once the state machine has applied its index.
    /// Pending reads are dropped if this replica stops leading: the caller retries them.
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), Error> {
        self.wake();
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        let index = self.log.committed.max(self.term_start_index);
        let only_voter = self.conf.voters.len() == 1
            && self.conf.voters.contains(&self.id())
            && !self.conf.is_joint();
        if only_voter || self.has_lease() {
            self.read_states.push(ReadState { index, context });
            return Ok(());
        }
        if self.pending_reads.len() >= self.config.max_pending_reads {
            return Err(Error::TooManyPendingReads);
        }
        // All reads until the next broadcast share one heartbeat round.
        self.heartbeat_round_pending = true;
        let round = self.heartbeat_round + 1;
        self.pending_reads.push_back(PendingRead {
            round,
            index,
            context,
        });
        Ok(())
    }

    /// The highest round a quorum acknowledged in this term.
    fn quorum_acked_round(&self) -> u64 {
        let (id, own) = (self.id(), self.heartbeat_round);
        let progress = &self.progress;
        committed_index(&self.conf, &|member: NodeId| {
            if member == id {
                own
            } else {
                progress.get(&member).map_or(0, |p| p.round_acked)
            }
        })
    }

    pub(crate) fn release_confirmed_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let acked = self.quorum_acked_round();
        while self
            .pending_reads
            .front()
            .is_some_and(|read| read.round <= acked)
        {
            if let Some(read) = self.pending_reads.pop_front() {
                self.read_states.push(ReadState {
                    index: read.index,
                    context: read.context,
                });
            }
        }
    }

    pub(crate) fn record_round_tick(&mut self) {
        let tick = self.leader_ticks;
        if self
            .round_ticks
            .back()
            .is_none_or(|&(_, last_tick)| last_tick != tick)
        {
            self.round_ticks.push_back((self.heartbeat_round, tick));
        }
        let horizon = u64::from(self.config.election_timeout_ticks);
        while self
            .round_ticks
            .front()
            .is_some_and(|&(_, t)| t + horizon < tick)
        {
            self.round_ticks.pop_front();
        }
    }

    /// True if this leader may serve reads without a heartbeat round.
    pub fn has_lease(&self) -> bool {
        if self.read_mode() != ReadMode::LeaseBased
            || self.role != Role::Leader
            || self.quiesced
            || self.timeout_now_sent
        {
            return false;
        }
        let acked = self.quorum_acked_round();
        if acked < self.lease_first_round {
            return false;
        }
        // The tick at which the acknowledged round was sent.
        let sent_tick = self
            .round_ticks
            .iter()
            .take_while(|&&(first_round, _)| first_round <= acked)
            .last()
            .map(|&(_, tick)| tick);
        // One tick of margin for replicas whose ticks are not exactly aligned.
        let timeout = u64::from(self.config.election_timeout_ticks);
        sent_tick.is_some_and(|sent| self.leader_ticks + 1 < sent + timeout)
    }

    /// True if the group is idle and fully replicated, so it may stop ticking.
    pub fn can_quiesce(&self) -> bool {
        let last = self.log.last_index();
        self.role == Role::Leader
            && self.lead_transferee.is_none()
            && self.pending_reads.is_empty()
            && !self.heartbeat_round_pending
            && !self.conf.is_joint()
            && self.pending_conf_index <= self.log.applied
            && self.log.committed == last
            && self.log.applied == last
            && self.log.persisted == last
            && self
                .progress
                .iter()
                .all(|(&id, p)| id == self.id() || (p.matched == last && p.commit_known == last))
    }

    /// Stops ticking this group if [`Raft::can_quiesce`]; the followers are told to stop too.
    /// Does nothing (and returns false) if already quiesced: telling the followers again
    /// would start a heartbeat exchange that never ends.
    /// The driver's node-level liveness then stands in for this group's heartbeats. Any
    /// message, proposal, read or transfer wakes the group. Safety never depends on ticks;
    /// only the lease does, and a quiesced leader holds none.
    pub fn quiesce(&mut self) -> bool {
        if self.quiesced || !self.can_quiesce() {
            return false;
        }
        self.quiesced = true;
        let commit = self.log.committed;
        let followers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id())
            .collect();
        for follower in followers {
            self.send(
                follower,
                self.term,
                MessageKind::Heartbeat {
                    commit,
                    round: 0,
                    quiesce: true,
                },
            );
        }
        true
    }

    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Resumes ticking. Timers restart from zero, so waking causes no election by itself;
    /// a leader gives every follower a fresh check-quorum interval.
    pub fn wake(&mut self) {
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        // Leader ticks stood still while quiesced, so rounds acknowledged before say nothing
        // about now: a lease needs a round sent after waking.
        self.lease_first_round = self.heartbeat_round + 1;
        self.round_ticks.clear();
        for progress in self.progress.values_mut() {
            progress.recent_active = true;
        }
    }
}
