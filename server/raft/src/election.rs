//! Leader election (§5.2) with pre-vote (thesis §9.6) and the up-to-date check (§5.4.1).

use crate::message::{Message, MessageKind};
use crate::quorum::{vote_result, VoteResult};
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{NodeId, Payload, Role};
use crate::Error;

/// Why a campaign starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CampaignKind {
    /// An election timeout or an explicit `campaign()`: pre-vote first if configured.
    Election,
    /// A leader asked us to take over (TimeoutNow): skip pre-vote and lease checks.
    Transfer,
}

impl<S: Storage> Raft<S> {
    /// Starts an election now (as if the election timeout had passed). Errors if this
    /// replica cannot lead; does nothing if it already does.
    pub fn campaign(&mut self) -> Result<(), Error> {
        self.wake();
        if !self.is_promotable() {
            return Err(Error::NotVoter(self.id()));
        }
        if self.role != Role::Leader && self.in_leader_lease() {
            return Err(Error::LeaderAlive {
                leader: self.leader,
            });
        }
        self.hup(CampaignKind::Election)
    }

    pub(crate) fn hup(&mut self, kind: CampaignKind) -> Result<(), Error> {
        if self.role == Role::Leader || !self.is_promotable() {
            return Ok(());
        }
        // A committed but unapplied membership change may make us count votes under the
        // wrong configuration; wait until it is applied.
        if self.has_unapplied_conf_change()? {
            return Ok(());
        }
        if self.config.pre_vote && kind == CampaignKind::Election {
            self.pre_campaign()
        } else {
            self.real_campaign(kind)
        }
    }

    fn has_unapplied_conf_change(&self) -> Result<bool, Error> {
        let entries = self.log.unapplied_committed(u64::MAX)?;
        Ok(entries
            .iter()
            .any(|e| matches!(e.payload, Payload::ConfChange(_))))
    }

    fn voters(&self) -> Vec<NodeId> {
        let mut voters: Vec<NodeId> = self
            .conf
            .voters
            .union(&self.conf.voters_outgoing)
            .copied()
            .collect();
        voters.retain(|&id| id != self.id());
        voters
    }

    fn pre_campaign(&mut self) -> Result<(), Error> {
        self.become_pre_candidate();
        let own = self.id();
        self.votes.insert(own, true);
        if self.poll() == VoteResult::Won {
            return self.real_campaign(CampaignKind::Election);
        }
        let last = self.log.last_position()?;
        let term = self.term + 1;
        for voter in self.voters() {
            let kind = MessageKind::PreVote {
                last_index: last.index,
                last_term: last.term,
            };
            self.send(voter, term, kind);
        }
        Ok(())
    }

    fn real_campaign(&mut self, kind: CampaignKind) -> Result<(), Error> {
        self.become_candidate();
        let own = self.id();
        self.votes.insert(own, true);
        if self.poll() == VoteResult::Won {
            return self.become_leader();
        }
        let last = self.log.last_position()?;
        let leader_transfer = kind == CampaignKind::Transfer;
        for voter in self.voters() {
            let request = MessageKind::Vote {
                last_index: last.index,
                last_term: last.term,
                leader_transfer,
            };
            self.send(voter, self.term, request);
        }
        Ok(())
    }

    fn poll(&self) -> VoteResult {
        vote_result(&self.conf, &|id| self.votes.get(&id).copied())
    }

    /// Counts an answer to our (pre-)campaign.
    pub(crate) fn record_vote(&mut self, from: NodeId, granted: bool) -> Result<(), Error> {
        self.votes.entry(from).or_insert(granted);
        match self.poll() {
            VoteResult::Won if self.role == Role::PreCandidate => {
                self.real_campaign(CampaignKind::Election)
            }
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                // Pre-vote responses may carry a future term: stay in ours (§9.6).
                self.become_follower(self.term, None);
                Ok(())
            }
            VoteResult::Pending => Ok(()),
        }
    }

    /// Answers a (pre-)vote request whose term is at least ours (§5.2, §5.4.1, §9.6).
    pub(crate) fn handle_vote_request(&mut self, message: &Message) -> Result<(), Error> {
        let (last_index, last_term, pre_vote) = match message.kind {
            MessageKind::PreVote {
                last_index,
                last_term,
            } => (last_index, last_term, true),
            MessageKind::Vote {
                last_index,
                last_term,
                ..
            } => (last_index, last_term, false),
            _ => unreachable!("not a vote request: {message:?}"),
        };
        // One vote per term, persisted before the answer leaves (the answer goes out only
        // after persistence because only a leader's messages skip it).
        let can_vote = self.vote == Some(message.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && message.term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term)?;
        let (term, kind) = if pre_vote {
            // A granted pre-vote answers in the term it was asked for (§9.6).
            let term = if granted { message.term } else { self.term };
            (term, MessageKind::PreVoteResponse { reject: !granted })
        } else {
            (self.term, MessageKind::VoteResponse { reject: !granted })
        };
        if granted && !pre_vote {
            self.election_elapsed_ticks = 0;
            self.vote = Some(message.from);
        }
        self.send(message.from, term, kind);
        Ok(())
    }
}
