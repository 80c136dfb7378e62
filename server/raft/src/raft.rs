//! The per-group state machine: fields, construction, role transitions, ticking and the
//! dispatch of incoming messages. Elections, replication, membership, reads and the
//! Ready/advance cycle are in sibling modules as further `impl` blocks.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{Config, ReadMode};
use crate::log::RaftLog;
use crate::message::{Message, MessageKind};
use crate::progress::Progress;
use crate::rng::SeededRng;
use crate::storage::Storage;
use crate::types::{ConfState, HardState, Index, NodeId, Role, SoftState, Term};
use crate::Error;

/// A ReadIndex request waiting for a quorum to acknowledge heartbeat round `round`.
#[derive(Debug)]
pub(crate) struct PendingRead {
    pub round: u64,
    pub index: Index,
    pub context: Vec<u8>,
}

/// One replica of one Raft group. See the crate documentation for how to drive it.
#[derive(Debug)]
pub struct Raft<S: Storage> {
    pub(crate) config: Config,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    pub(crate) conf: ConfState,
    /// The log index at which `conf` took effect (applied change or installed snapshot).
    pub(crate) conf_index: Index,
    /// Every member's progress; maintained on all replicas, meaningful on the leader.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Answers received in the current (pre-)campaign.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Messages that may be sent before the next persistence.
    pub(crate) messages: Vec<Message>,
    /// Messages that may be sent only after the Ready they come in is persisted.
    pub(crate) messages_after_persist: Vec<Message>,
    pub(crate) election_elapsed_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    pub(crate) randomized_election_timeout_ticks: u32,
    /// Started with state in lease mode: refuse votes for an election timeout, as if a leader
    /// had just been heard, so a lease this replica helped grant before a crash is honoured.
    /// Only lease reads depend on it, so other modes elect without the delay.
    pub(crate) restart_guard: bool,
    rng: SeededRng,
    pub(crate) lead_transferee: Option<NodeId>,
    /// A TimeoutNow went out this term: a campaign may bypass lease checks, so no lease.
    pub(crate) timeout_now_sent: bool,
    /// Index of the last membership change proposed; none may be proposed until it applies.
    pub(crate) pending_conf_index: Index,
    pub(crate) uncommitted_bytes: u64,
    /// Index of the no-op this leader appended: reads wait at least for it.
    pub(crate) term_start_index: Index,
    /// Ticks since this replica became leader; the leader's clock for leases.
    pub(crate) leader_ticks: u64,
    /// Heartbeat rounds: each broadcast gets the next number.
    pub(crate) heartbeat_round: u64,
    /// The first heartbeat round that may ground a lease: rounds of this leadership, sent
    /// since the group last woke.
    pub(crate) lease_first_round: u64,
    /// (first round sent in a tick, that tick), for the last election timeout of ticks.
    pub(crate) round_ticks: VecDeque<(u64, u64)>,
    /// Reads registered for a round not yet broadcast.
    pub(crate) heartbeat_round_pending: bool,
    pub(crate) pending_reads: VecDeque<PendingRead>,
    pub(crate) read_states: Vec<crate::types::ReadState>,
    pub(crate) quiesced: bool,
    /// A Ready was handed out and not yet advanced.
    pub(crate) ready_outstanding: bool,
    pub(crate) previous_soft_state: SoftState,
    pub(crate) previous_hard_state: HardState,
    /// The (term, vote) the caller last made durable.
    pub(crate) persisted_term_vote: (Term, Option<NodeId>),
}

impl<S: Storage> Raft<S> {
    /// A replica restarting from `storage` (or starting fresh if it is empty).
    pub fn new(config: Config, storage: S) -> Result<Self, Error> {
        config.validate()?;
        let initial = storage.initial_state()?;
        let hard_state = initial.hard_state;
        let log = RaftLog::new(storage, hard_state.commit, config.applied)?;
        if config.applied > hard_state.commit {
            return Err(Error::InvalidConfig(
                "applied index is past the persisted commit",
            ));
        }
        let soft_state = SoftState {
            role: Role::Follower,
            leader: None,
        };
        let mut raft = Raft {
            rng: SeededRng::new(config.seed ^ config.id.rotate_left(32)),
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            conf: ConfState::default(),
            conf_index: 0,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: config.election_timeout_ticks,
            restart_guard: hard_state.term > 0 && config.read_mode == ReadMode::LeaseBased,
            lead_transferee: None,
            timeout_now_sent: false,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            term_start_index: 0,
            leader_ticks: 0,
            heartbeat_round: 0,
            lease_first_round: 1,
            round_ticks: VecDeque::new(),
            heartbeat_round_pending: false,
            pending_reads: VecDeque::new(),
            read_states: Vec::new(),
            quiesced: false,
            ready_outstanding: false,
            previous_soft_state: soft_state,
            previous_hard_state: hard_state,
            persisted_term_vote: (hard_state.term, hard_state.vote),
            config,
        };
        raft.set_conf(initial.conf_state);
        raft.conf_index = raft.log.applied;
        raft.become_follower(hard_state.term, None);
        Ok(raft)
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
        }
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// The configuration as of the last applied membership change.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    pub fn commit_index(&self) -> Index {
        self.log.committed
    }

    pub fn applied_index(&self) -> Index {
        self.log.applied
    }

    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// The leader's view of `id`, if this replica tracks it.
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// The caller writes what a Ready hands it through this (see the crate docs).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    /// Turns this replica back into its storage, e.g. to simulate a crash and restart.
    pub fn into_storage(self) -> S {
        self.log.storage
    }

    /// True if this replica may become leader: a voter of the current configuration.
    pub fn is_promotable(&self) -> bool {
        let id = self.id();
        self.conf.voters.contains(&id) || self.conf.voters_outgoing.contains(&id)
    }

    /// Advances logical time by one tick. A quiesced replica ignores ticks.
    pub fn tick(&mut self) -> Result<(), Error> {
        if self.quiesced {
            return Ok(());
        }
        if self.role == Role::Leader {
            self.tick_leader()
        } else {
            self.tick_election()
        }
    }

    fn tick_election(&mut self) -> Result<(), Error> {
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.restart_guard = false;
        }
        if self.is_promotable()
            && self.election_elapsed_ticks >= self.randomized_election_timeout_ticks
        {
            self.election_elapsed_ticks = 0;
            self.hup(crate::election::CampaignKind::Election)?;
        }
        Ok(())
    }

    fn tick_leader(&mut self) -> Result<(), Error> {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        self.leader_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // §6.2 / check quorum: a leader cut off from a quorum stops acting as one.
                self.become_follower(self.term, None);
                return Ok(());
            }
            // A transfer that did not finish within an election timeout is abandoned (§3.10).
            self.lead_transferee = None;
        }
        self.expire_snapshots();
        self.expire_probes()?;
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    /// True if a quorum was heard from since the last check; starts a new check.
    fn quorum_recently_active(&mut self) -> bool {
        let id = self.id();
        let progress = &self.progress;
        let active = crate::quorum::vote_result(&self.conf, &|voter| {
            Some(voter == id || progress.get(&voter).is_some_and(|p| p.recent_active))
        }) == crate::quorum::VoteResult::Won;
        for (&member, progress) in self.progress.iter_mut() {
            progress.recent_active = member == id;
        }
        active
    }

    /// Handles one message from another replica of this group.
    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.id() {
            return Err(Error::WrongRecipient {
                id: self.id(),
                to: message.to,
            });
        }
        if let Err(reason) = message.check_well_formed() {
            return Err(Error::MalformedMessage {
                from: message.from,
                reason,
            });
        }
        // Heartbeat answers carry no work: the answers to a quiescing heartbeat must not undo
        // it. If one shows a follower behind, the leader wakes when it sends the catch-up.
        let quiet = matches!(
            message.kind,
            MessageKind::Heartbeat { quiesce: true, .. } | MessageKind::HeartbeatResponse { .. }
        );
        if !quiet {
            self.wake();
        }
        if !self.step_term(&message)? {
            return Ok(());
        }
        match &message.kind {
            MessageKind::PreVote { .. } | MessageKind::Vote { .. } => {
                self.handle_vote_request(&message)
            }
            _ => match self.role {
                Role::Leader => self.step_leader(message),
                Role::Candidate | Role::PreCandidate => self.step_candidate(message),
                Role::Follower => self.step_follower(message),
            },
        }
    }

    /// Applies the term rules of §5.1 (and pre-vote, check quorum). Returns false if the
    /// message was fully handled here.
    fn step_term(&mut self, message: &Message) -> Result<bool, Error> {
        use std::cmp::Ordering;
        match message.term.cmp(&self.term) {
            Ordering::Greater => {
                let forced = matches!(
                    message.kind,
                    MessageKind::Vote {
                        leader_transfer: true,
                        ..
                    }
                );
                let campaign = matches!(
                    message.kind,
                    MessageKind::PreVote { .. } | MessageKind::Vote { .. }
                );
                if campaign && !forced && self.in_leader_lease() {
                    // We heard from a live leader within an election timeout: this campaign
                    // would only disrupt it (thesis §4.2.3).
                    return Ok(false);
                }
                match message.kind {
                    // Pre-votes never change terms, and a granted pre-vote answer carries the
                    // term we would campaign in.
                    MessageKind::PreVote { .. } => {}
                    MessageKind::PreVoteResponse { reject: false } => {}
                    ref kind if kind.is_from_leader() => {
                        self.become_follower(message.term, Some(message.from))
                    }
                    _ => self.become_follower(message.term, None),
                }
                Ok(true)
            }
            Ordering::Less => {
                if (self.config.check_quorum || self.config.pre_vote)
                    && message.kind.is_from_leader()
                {
                    // A stale leader; tell it our term so it steps down. Without this a leader
                    // cut off and then reconnected would never learn it was replaced, since
                    // pre-vote keeps us from ever sending it a higher-term campaign.
                    self.send(
                        message.from,
                        self.term,
                        MessageKind::HeartbeatResponse {
                            round: 0,
                            commit: 0,
                        },
                    );
                } else if matches!(message.kind, MessageKind::PreVote { .. }) {
                    self.send(
                        message.from,
                        self.term,
                        MessageKind::PreVoteResponse { reject: true },
                    );
                }
                Ok(false)
            }
            Ordering::Equal => Ok(true),
        }
    }

    /// True while this replica believes a leader is alive and so refuses to help depose it.
    pub(crate) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && (self.leader.is_some() || self.restart_guard)
            && self.election_elapsed_ticks < self.config.election_timeout_ticks
    }

    fn step_follower(&mut self, message: Message) -> Result<(), Error> {
        match message.kind {
            MessageKind::Append { .. }
            | MessageKind::Heartbeat { .. }
            | MessageKind::InstallSnapshot { .. } => {
                self.election_elapsed_ticks = 0;
                self.leader = Some(message.from);
                self.handle_from_leader(message)
            }
            MessageKind::TimeoutNow => self.handle_timeout_now(),
            _ => Ok(()),
        }
    }

    fn step_candidate(&mut self, message: Message) -> Result<(), Error> {
        match message.kind {
            MessageKind::Append { .. }
            | MessageKind::Heartbeat { .. }
            | MessageKind::InstallSnapshot { .. } => {
                // A leader of our term exists (§5.2): stand down and follow it.
                self.become_follower(message.term, Some(message.from));
                self.handle_from_leader(message)
            }
            MessageKind::PreVoteResponse { reject } if self.role == Role::PreCandidate => {
                self.record_vote(message.from, !reject)
            }
            MessageKind::VoteResponse { reject } if self.role == Role::Candidate => {
                self.record_vote(message.from, !reject)
            }
            _ => Ok(()),
        }
    }

    fn step_leader(&mut self, message: Message) -> Result<(), Error> {
        if !self.progress.contains_key(&message.from) {
            return Ok(());
        }
        match message.kind {
            MessageKind::AppendResponse { result, commit } => {
                self.handle_append_response(message.from, result, commit)
            }
            MessageKind::HeartbeatResponse { round, commit } => {
                self.handle_heartbeat_response(message.from, round, commit)
            }
            _ => Ok(()),
        }
    }

    /// Queues a message. A message may leave before the next persistence only if this replica
    /// leads and its term and vote are durable: a leader's appends do not depend on its own
    /// log being durable, because it counts itself toward a quorum only once it is.
    pub(crate) fn send(&mut self, to: NodeId, term: Term, kind: MessageKind) {
        let message = Message {
            from: self.id(),
            to,
            term,
            kind,
        };
        if self.role == Role::Leader && self.persisted_term_vote == (self.term, self.vote) {
            self.messages.push(message);
        } else {
            self.messages_after_persist.push(message);
        }
    }

    /// Resets volatile state for `term`. The term never decreases.
    fn reset(&mut self, term: Term) {
        assert!(
            term >= self.term,
            "term would move back from {} to {term}",
            self.term
        );
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.randomized_election_timeout_ticks = self.config.election_timeout_ticks
            + self
                .rng
                .below(u64::from(self.config.election_timeout_ticks)) as u32;
        self.lead_transferee = None;
        self.timeout_now_sent = false;
        self.votes.clear();
        self.uncommitted_bytes = 0;
        self.pending_reads.clear();
        self.heartbeat_round_pending = false;
        self.round_ticks.clear();
        self.leader_ticks = 0;
        let next = self.log.last_index() + 1;
        let (id, persisted, max_inflight) =
            (self.id(), self.log.persisted, self.config.max_inflight_msgs);
        for (&member, progress) in self.progress.iter_mut() {
            *progress = Progress::new(next, max_inflight);
            if member == id {
                progress.matched = persisted;
            }
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    pub(crate) fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader cannot pre-campaign");
        // Pre-campaigning changes neither term nor vote (thesis §9.6).
        self.votes.clear();
        self.leader = None;
        self.role = Role::PreCandidate;
    }

    pub(crate) fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader cannot campaign");
        self.reset(self.term + 1);
        self.vote = Some(self.id());
        self.role = Role::Candidate;
    }

    pub(crate) fn become_leader(&mut self) -> Result<(), Error> {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.id());
        let id = self.id();
        if let Some(own) = self.progress.get_mut(&id) {
            own.become_replicate();
        }
        // Any unapplied entry may be a membership change: allow no new one until all apply.
        self.pending_conf_index = self.log.last_index();
        self.lease_first_round = self.heartbeat_round + 1;
        // §5.4.2 / §8: a no-op of our term lets us commit entries of earlier terms.
        let position = self.append_entry(crate::types::Payload::Empty);
        self.term_start_index = position.index;
        self.broadcast_append()
    }

    /// Replaces the configuration and keeps one progress per member.
    pub(crate) fn set_conf(&mut self, conf: ConfState) {
        let members = conf.members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut progress = Progress::new(next, self.config.max_inflight_msgs);
                // A new member gets a grace period before it counts as unreachable.
                progress.recent_active = true;
                progress
            });
        }
        let id = self.id();
        let persisted = self.log.persisted;
        if let Some(own) = self.progress.get_mut(&id) {
            own.matched = own.matched.max(persisted);
        }
        self.conf = conf;
    }

    pub(crate) fn read_mode(&self) -> ReadMode {
        self.config.read_mode
    }
}
