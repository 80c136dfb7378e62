//! Proposals, membership changes (thesis §4.3) and leader transfer (thesis §3.10).

use crate::confchange::{self, ConfChange};
use crate::message::MessageKind;
use crate::raft::Raft;
use crate::replication::EmptyAppend;
use crate::storage::Storage;
use crate::types::{ConfState, Entry, Index, LogPosition, NodeId, Payload, Role};
use crate::Error;

impl<S: Storage> Raft<S> {
    /// Proposes application data. On success returns where the entry sits: it is committed
    /// when a committed entry appears at that index with that term, and lost if another term
    /// does.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<LogPosition, Error> {
        self.propose_payload(Payload::Normal(data))
    }

    /// Proposes several entries at once: all are appended, then one round of appends goes
    /// out, so followers receive them in as few messages as `max_msg_bytes` allows. All or
    /// none are accepted.
    pub fn propose_batch(&mut self, batch: Vec<Vec<u8>>) -> Result<Vec<LogPosition>, Error> {
        self.wake();
        self.check_can_propose()?;
        let size: u64 = batch
            .iter()
            .map(|data| Entry::OVERHEAD_BYTES + data.len() as u64)
            .sum();
        self.check_uncommitted_room(size)?;
        let positions = batch
            .into_iter()
            .map(|data| self.append_entry(Payload::Normal(data)))
            .collect();
        self.broadcast_append()?;
        Ok(positions)
    }

    /// Proposes a membership change. Only one may be in flight: the next is refused until this
    /// one is applied. The caller must call [`Raft::apply_conf_change`] when it applies it.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<LogPosition, Error> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(Error::ConfChangePending);
        }
        confchange::apply(&self.conf, &change)?;
        let position = self.propose_payload(Payload::ConfChange(change))?;
        self.pending_conf_index = position.index;
        Ok(position)
    }

    fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader || !self.progress.contains_key(&self.id()) {
            return Err(Error::NotLeader {
                leader: self.leader.filter(|&l| l != self.id()),
            });
        }
        if let Some(to) = self.lead_transferee {
            // §3.10: stop taking proposals so the target can catch up.
            return Err(Error::TransferInProgress { to });
        }
        Ok(())
    }

    fn propose_payload(&mut self, payload: Payload) -> Result<LogPosition, Error> {
        self.wake();
        self.check_can_propose()?;
        self.check_uncommitted_room(Entry::OVERHEAD_BYTES + payload.size_bytes())?;
        let position = self.append_entry(payload);
        self.broadcast_append()?;
        Ok(position)
    }

    /// Refuses more than `max_uncommitted_bytes` in flight, but always admits a proposal when
    /// nothing is in flight, so a single large entry cannot wedge the group.
    fn check_uncommitted_room(&self, size: u64) -> Result<(), Error> {
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.config.max_uncommitted_bytes
        {
            return Err(Error::TooManyUncommittedBytes);
        }
        Ok(())
    }

    /// Applies the committed membership change at log index `index`; the caller calls this
    /// when it applies the entry, and persists the returned configuration with its applied
    /// index. A change that is invalid here is invalid on every replica alike and changes
    /// nothing. A change at or before the configuration's own index (a snapshot installed
    /// since the Ready that carried it already includes it) is ignored.
    pub fn apply_conf_change(
        &mut self,
        index: Index,
        change: &ConfChange,
    ) -> Result<ConfState, Error> {
        if index <= self.conf_index {
            return Ok(self.conf.clone());
        }
        let next = confchange::apply(&self.conf, change)?;
        self.set_conf(next);
        self.conf_index = index;
        self.release_confirmed_reads();
        if self.role == Role::Leader {
            if !self.progress.contains_key(&self.id()) || !self.is_promotable() {
                // Removed or demoted: stop leading now that the change is committed.
                self.become_follower(self.term, None);
                return Ok(self.conf.clone());
            }
            if self
                .lead_transferee
                .is_some_and(|to| !self.progress.contains_key(&to))
            {
                self.lead_transferee = None;
            }
            self.maybe_commit()?;
            self.broadcast_append()?;
        }
        Ok(self.conf.clone())
    }

    /// Leaves an automatic joint configuration once it is applied (called after apply).
    pub(crate) fn maybe_auto_leave_joint(&mut self) -> Result<(), Error> {
        let applied = self.log.applied >= self.pending_conf_index;
        if self.role == Role::Leader && self.conf.is_joint() && self.conf.auto_leave && applied {
            match self.propose_conf_change(ConfChange::leave_joint()) {
                Ok(_) | Err(Error::TransferInProgress { .. } | Error::TooManyUncommittedBytes) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Hands leadership to `to` (thesis §3.10): catch it up, then tell it to campaign at once.
    /// Proposals are refused until it takes over or an election timeout passes.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        self.wake();
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id() {
            return Ok(());
        }
        if !(self.conf.voters.contains(&to) || self.conf.voters_outgoing.contains(&to)) {
            return Err(Error::NotVoter(to));
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.lead_transferee = Some(to);
        self.election_elapsed_ticks = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, EmptyAppend::Send)?;
        }
        Ok(())
    }

    pub(crate) fn send_timeout_now(&mut self, to: NodeId) {
        self.timeout_now_sent = true;
        self.send(to, self.term, MessageKind::TimeoutNow);
    }

    pub(crate) fn handle_timeout_now(&mut self) -> Result<(), Error> {
        if self.is_promotable() {
            self.hup(crate::election::CampaignKind::Transfer)?;
        }
        Ok(())
    }
}
