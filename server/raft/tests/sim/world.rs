//! The simulated cluster: replicas with durable storage and state machines, a faulty network,
//! a random client, and the driver duties (persist, send, apply, advance) performed exactly
//! as the crate documentation prescribes, with crashes allowed at any point in between.

use std::collections::{BTreeMap, BTreeSet};

use rshard_raft::{
    ConfChange, ConfChangeStep, ConfState, Config, Error, MemStorage, NodeId, Payload, Raft,
    ReadMode, Role, Storage, Transition,
};

use super::checker::{digest, AppliedEntry, Checker};
use super::network::{Network, NetworkFaults};
use super::rng::SimRng;
use crate::support;

/// Everything a run does, derived from its seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub node_count: u64,
    pub initial_voters: u64,
    pub read_mode: ReadMode,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_inflight_msgs: usize,
    pub max_msg_bytes: u64,
    pub election_timeout_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    pub faults: NetworkFaults,
    pub fault_ticks: u64,
    pub heal_limit_ticks: u64,
    pub crash_probability: f64,
    pub crash_mid_ready_probability: f64,
    pub restart_probability: f64,
    pub partition_probability: f64,
    pub heal_probability: f64,
    pub proposal_probability: f64,
    pub read_probability: f64,
    pub conf_change_probability: f64,
    pub transfer_probability: f64,
    pub campaign_probability: f64,
    pub compact_probability: f64,
    pub quiesce_probability: f64,
}

impl SimOptions {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SimRng::new(seed ^ 0x5151_5151);
        let node_count = [3, 5, 7][(seed % 3) as usize];
        let initial_voters = if rng.chance(0.5) { node_count } else { 3 };
        let lease = rng.chance(0.3);
        let check_quorum = lease || rng.chance(0.8);
        SimOptions {
            seed,
            node_count,
            initial_voters,
            read_mode: if lease {
                ReadMode::LeaseBased
            } else {
                ReadMode::Safe
            },
            pre_vote: rng.chance(0.8),
            check_quorum,
            max_inflight_msgs: 1 + rng.below(4) as usize,
            // Timeouts from "generous" to "barely above the round trip", for more churn.
            election_timeout_ticks: 5 + rng.below(15) as u32,
            heartbeat_interval_ticks: 1 + rng.below(3) as u32,
            // Often one entry per append, so an old entry and a new leader's no-op travel apart.
            max_msg_bytes: 1 + rng.below(150),
            faults: NetworkFaults {
                drop_probability: rng.below(20) as f64 / 100.0,
                duplicate_probability: rng.below(10) as f64 / 100.0,
                max_delay_ticks: 1 + rng.below(5),
            },
            fault_ticks: 1_000,
            heal_limit_ticks: 600,
            crash_probability: rng.below(30) as f64 / 1000.0,
            crash_mid_ready_probability: rng.below(30) as f64 / 1000.0,
            restart_probability: 0.1,
            partition_probability: rng.below(20) as f64 / 1000.0,
            heal_probability: 0.03,
            proposal_probability: 0.3,
            read_probability: 0.1,
            conf_change_probability: 0.02,
            transfer_probability: 0.01,
            campaign_probability: 0.005,
            compact_probability: 0.02,
            quiesce_probability: 0.03,
        }
    }
}

/// The replicated state machine: the (term, content) applied at each index, in order. Durable
/// together with its applied index, so a restart resumes from it.
#[derive(Clone, Debug, Default)]
struct StateMachine {
    entries: Vec<AppliedEntry>,
}

impl StateMachine {
    fn applied_index(&self) -> u64 {
        self.entries.len() as u64
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * 16);
        for (term, content) in &self.entries {
            bytes.extend_from_slice(&term.to_le_bytes());
            bytes.extend_from_slice(&content.to_le_bytes());
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Self {
        let word = |chunk: &[u8]| u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let entries = bytes
            .chunks_exact(16)
            .map(|c| (word(&c[..8]), word(&c[8..])))
            .collect();
        StateMachine { entries }
    }
}

struct SimNode {
    raft: Option<Raft<MemStorage>>,
    /// The durable storage while the node is down.
    storage_while_down: Option<MemStorage>,
    machine: StateMachine,
    /// Commit index seen in this life (commit never moves back while a replica runs).
    commit_seen: u64,
    /// A completeness check owed once this node persists its next Ready as leader of a term.
    completeness_due: Option<u64>,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub ticks: u64,
    pub proposals_acknowledged: usize,
    pub crashes: u64,
    pub partitions: u64,
    pub conf_changes: u64,
    pub snapshots_installed: u64,
    pub reads_served: u64,
    pub elections: usize,
    pub quiesces: u64,
    pub transfers: u64,
    pub lease_reads: u64,
    pub checks: u64,
}

impl SimStats {
    pub fn add(&mut self, other: &SimStats) {
        self.ticks += other.ticks;
        self.proposals_acknowledged += other.proposals_acknowledged;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.conf_changes += other.conf_changes;
        self.snapshots_installed += other.snapshots_installed;
        self.reads_served += other.reads_served;
        self.elections += other.elections;
        self.quiesces += other.quiesces;
        self.transfers += other.transfers;
        self.lease_reads += other.lease_reads;
        self.checks += other.checks;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Heal,
}

pub struct World {
    options: SimOptions,
    rng: SimRng,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    network: Network,
    checker: Checker,
    next_request: u64,
    /// Proposals applied somewhere, hence committed: each must end up applied everywhere.
    acknowledged: BTreeSet<u64>,
    /// Pending reads: context -> highest commit anywhere when requested.
    reads: BTreeMap<u64, u64>,
    /// The client writes nothing until this tick (bursty load lets groups quiesce).
    idle_until: u64,
    stats: SimStats,
    trace: bool,
}

type SimResult<T = ()> = Result<T, String>;

fn raft_error(context: &str, error: Error) -> String {
    format!("{context}: unexpected error {error}")
}

impl World {
    pub fn new(options: SimOptions, trace: bool) -> Self {
        let voters = ConfState::with_voters(1..=options.initial_voters);
        let mut world = World {
            rng: SimRng::new(options.seed),
            now: 0,
            nodes: BTreeMap::new(),
            network: Network::new(options.faults.clone()),
            checker: Checker::default(),
            next_request: 1,
            acknowledged: BTreeSet::new(),
            reads: BTreeMap::new(),
            idle_until: 0,
            stats: SimStats::default(),
            trace,
            options,
        };
        for id in 1..=world.options.node_count {
            // Spare nodes start empty; they receive a snapshot when added.
            let bootstrap = StateMachine {
                entries: vec![(MemStorage::BOOTSTRAP_INDEX, 0)],
            };
            let (storage, machine) = if id <= world.options.initial_voters {
                (
                    MemStorage::bootstrap(voters.clone(), bootstrap.encode()),
                    bootstrap,
                )
            } else {
                (MemStorage::default(), StateMachine::default())
            };
            let node = SimNode {
                raft: None,
                storage_while_down: Some(storage),
                machine,
                commit_seen: 0,
                completeness_due: None,
            };
            world.nodes.insert(id, node);
            world.restart(id).expect("fresh node starts");
        }
        world
    }

    fn config(&self, id: NodeId, applied: u64) -> Config {
        let mut config = Config::new(id);
        config.election_timeout_ticks = self.options.election_timeout_ticks;
        // The network loses snapshots like any message; retry well within the heal limit.
        config.snapshot_timeout_ticks = 2 * self.options.election_timeout_ticks;
        config.heartbeat_interval_ticks = self.options.heartbeat_interval_ticks;
        config.max_inflight_msgs = self.options.max_inflight_msgs;
        config.max_msg_bytes = self.options.max_msg_bytes;
        config.pre_vote = self.options.pre_vote;
        config.check_quorum = self.options.check_quorum;
        config.read_mode = self.options.read_mode;
        config.applied = applied;
        config.seed = self.options.seed.wrapping_add(self.now);
        config
    }

    fn log(&self, line: impl FnOnce() -> String) {
        if self.trace {
            println!("[tick {:>4}] {}", self.now, line());
        }
    }

    /// Runs the fault phase, then the healing phase; returns the run's counters.
    pub fn run(mut self) -> SimResult<SimStats> {
        for _ in 0..self.options.fault_ticks {
            self.step(Phase::Faults)?;
        }
        self.heal()?;
        self.stats.ticks = self.now;
        self.stats.proposals_acknowledged = self.acknowledged.len();
        self.stats.checks = self.checker.checks;
        Ok(self.stats)
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn raft(&mut self, id: NodeId) -> Option<&mut Raft<MemStorage>> {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut())
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(&id, _)| id)
            .collect()
    }

    fn step(&mut self, phase: Phase) -> SimResult {
        self.now += 1;
        let mut live = self.live();
        self.rng.shuffle(&mut live);
        for &id in &live {
            if let Some(raft) = self.raft(id) {
                raft.tick().map_err(|e| raft_error("tick", e))?;
            }
            self.observe(id)?;
        }
        for message in self.network.due(self.now, &mut self.rng) {
            let to = message.to;
            if let Some(raft) = self.raft(to) {
                raft.step(message).map_err(|e| raft_error("step", e))?;
                self.observe(to)?;
            }
        }
        if phase == Phase::Faults {
            self.client_actions()?;
            self.faults()?;
        }
        let mut live = self.live();
        self.rng.shuffle(&mut live);
        for id in live {
            for _ in 0..3 {
                let ready = self.raft(id).is_some_and(|r| r.has_ready());
                if !ready {
                    break;
                }
                self.handle_ready(id, phase)?;
            }
        }
        self.wake_quiesced_without_live_leader();
        if self.now.is_multiple_of(25) {
            self.check_log_matching()?;
        }
        Ok(())
    }

    /// Records what every input may have changed: a new leader, a higher commit.
    fn observe(&mut self, id: NodeId) -> SimResult {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let Some(raft) = node.raft.as_ref() else {
            return Ok(());
        };
        let (role, term, commit) = (raft.role(), raft.term(), raft.commit_index());
        if commit < node.commit_seen {
            return Err(format!(
                "commit of node {id} moved back from {} to {commit}",
                node.commit_seen
            ));
        }
        node.commit_seen = commit;
        self.checker.observe_commit(commit);
        if role == Role::Leader {
            if node.completeness_due != Some(term) {
                node.completeness_due = Some(term);
            }
            if self.checker.observe_leader(id, term)? && self.trace {
                println!("[tick {:>4}] node {id} leads term {term}", self.now);
            }
        }
        Ok(())
    }

    fn handle_ready(&mut self, id: NodeId, phase: Phase) -> SimResult {
        let crash_now =
            phase == Phase::Faults && self.rng.chance(self.options.crash_mid_ready_probability);
        let Some(raft) = self.raft(id) else {
            return Ok(());
        };
        let mut ready = raft.ready().map_err(|e| raft_error("ready", e))?;
        for message in std::mem::take(&mut ready.messages) {
            self.network.send(self.now, message, &mut self.rng);
        }
        if crash_now {
            // Sent what could go early, persisted nothing.
            self.log(|| format!("node {id} crashes in the middle of a Ready"));
            return self.crash(id);
        }
        let node = self.nodes.get_mut(&id).expect("live node");
        let raft = node.raft.as_mut().expect("live node");
        support::persist(raft, &ready);
        self.checker.observe_persisted(id, &ready.entries)?;
        if let Some(snapshot) = &ready.snapshot {
            let machine = StateMachine::decode(&snapshot.data);
            if machine.applied_index() != snapshot.metadata.index {
                return Err(format!(
                    "snapshot at {} holds {} entries",
                    snapshot.metadata.index,
                    machine.applied_index()
                ));
            }
            if machine.applied_index() < node.machine.applied_index() {
                return Err(format!(
                    "node {id} installed a snapshot behind its applied index"
                ));
            }
            for (position, &entry) in machine.entries.iter().enumerate() {
                self.checker
                    .observe_applied(id, position as u64 + 1, entry)?;
            }
            node.machine = machine;
            self.stats.snapshots_installed += 1;
        }
        if let Some(term) = node.completeness_due.take() {
            if raft.role() == Role::Leader && raft.term() == term {
                self.checker
                    .check_leader_completeness(id, term, raft.storage())?;
            }
        }
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.network.send(self.now, message, &mut self.rng);
        }
        // Inputs may arrive between ready() and advance(): deliver one now and then.
        if self.rng.chance(0.1) {
            if let Some(message) = self.network.take_due_for(id, self.now) {
                let raft = self.raft(id).expect("live node");
                raft.step(message)
                    .map_err(|e| raft_error("step inside a Ready", e))?;
                self.observe(id)?;
            }
        }
        self.apply(id, &mut ready)?;
        self.serve_reads(id, &mut ready)?;
        let raft = self.raft(id).expect("live node");
        raft.advance(ready).map_err(|e| raft_error("advance", e))?;
        self.observe(id)
    }

    fn apply(&mut self, id: NodeId, ready: &mut rshard_raft::Ready) -> SimResult {
        for entry in std::mem::take(&mut ready.committed_entries) {
            let node = self.nodes.get_mut(&id).expect("live node");
            let expected = node.machine.applied_index() + 1;
            if entry.index != expected {
                return Err(format!(
                    "node {id} applies index {} but expected {expected}",
                    entry.index
                ));
            }
            node.machine.entries.push((entry.term, digest(&entry)));
            self.checker
                .observe_applied(id, entry.index, (entry.term, digest(&entry)))?;
            match &entry.payload {
                Payload::Normal(data) => {
                    let request = u64::from_le_bytes(data[..8].try_into().expect("8-byte id"));
                    self.acknowledged.insert(request);
                }
                Payload::ConfChange(change) => {
                    let raft = node.raft.as_mut().expect("live node");
                    if let Ok(conf) = raft.apply_conf_change(entry.index, change) {
                        raft.storage_mut().set_conf_state(conf);
                    }
                }
                Payload::Empty => {}
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self, id: NodeId, ready: &mut rshard_raft::Ready) -> SimResult {
        for read in std::mem::take(&mut ready.read_states) {
            let context = u64::from_le_bytes(read.context[..8].try_into().expect("8-byte id"));
            let Some(required) = self.reads.remove(&context) else {
                continue;
            };
            if read.index < required {
                return Err(format!(
                    "linearizability: node {id} released read {context} at index {} but {required} was committed when it was requested",
                    read.index
                ));
            }
            self.stats.reads_served += 1;
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) -> SimResult {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(raft) = node.raft.take() {
            node.storage_while_down = Some(raft.into_storage());
            node.completeness_due = None;
            self.stats.crashes += 1;
        }
        Ok(())
    }

    fn restart(&mut self, id: NodeId) -> SimResult {
        let applied = self.nodes[&id].machine.applied_index();
        let config = self.config(id, applied);
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(storage) = node.storage_while_down.take() else {
            return Ok(());
        };
        let raft = Raft::new(config, storage).map_err(|e| raft_error("restart", e))?;
        node.commit_seen = raft.commit_index();
        node.raft = Some(raft);
        Ok(())
    }

    /// The driver's node-level liveness: a quiesced follower whose leader is down or cut off
    /// from it wakes up, so it can elect a new leader.
    fn wake_quiesced_without_live_leader(&mut self) {
        let live: BTreeSet<NodeId> = self.live().into_iter().collect();
        let cut = self.network.cut.clone();
        for (&id, node) in self.nodes.iter_mut() {
            let Some(raft) = node.raft.as_mut() else {
                continue;
            };
            if !raft.is_quiesced() || raft.role() == Role::Leader {
                continue;
            }
            let leader_alive = raft
                .leader()
                .is_some_and(|l| live.contains(&l) && !cut.contains(&(l, id)));
            if !leader_alive {
                raft.wake();
            }
        }
    }

    fn check_log_matching(&mut self) -> SimResult {
        let mut logs = Vec::new();
        for (&id, node) in &self.nodes {
            let storage = match (&node.raft, &node.storage_while_down) {
                (Some(raft), _) => raft.storage(),
                (None, Some(storage)) => storage,
                (None, None) => continue,
            };
            let (first, last) = (
                storage.first_index().map_err(|e| e.to_string())?,
                storage.last_index().map_err(|e| e.to_string())?,
            );
            let entries = storage
                .entries(first, last + 1, u64::MAX)
                .map_err(|e| e.to_string())?;
            logs.push((id, entries));
        }
        self.checker.check_log_matching(&logs)
    }

    fn client_actions(&mut self) -> SimResult {
        let options = self.options.clone();
        let idle = self.now < self.idle_until;
        if !idle && self.rng.chance(0.01) {
            self.idle_until = self.now + 20 + self.rng.below(60);
        }
        if !idle && self.rng.chance(options.proposal_probability) {
            self.propose()?;
        }
        let read_probability = if idle {
            options.read_probability / 4.0
        } else {
            options.read_probability
        };
        if self.rng.chance(read_probability) {
            self.read()?;
        }
        if !idle && self.rng.chance(options.conf_change_probability) {
            self.change_membership()?;
        }
        if !idle && self.rng.chance(options.transfer_probability) {
            self.transfer()?;
        }
        if self.rng.chance(options.campaign_probability) {
            if let Some(id) = self.rng.pick(&self.live()) {
                let result = self.raft(id).map(|r| r.campaign());
                self.expected_refusal(result)?;
                self.observe(id)?;
            }
        }
        if self.rng.chance(options.compact_probability) {
            self.compact()?;
        }
        let quiesce_probability = if idle {
            0.3
        } else {
            options.quiesce_probability
        };
        if self.rng.chance(quiesce_probability) {
            if let Some(leader) = self.rng.pick(&self.leaders()) {
                if self.raft(leader).is_some_and(|r| r.quiesce()) {
                    self.stats.quiesces += 1;
                    self.log(|| format!("leader {leader} quiesces"));
                }
            }
        }
        Ok(())
    }

    /// A client target: usually a node that believes it leads, sometimes any node.
    fn client_target(&mut self) -> Option<NodeId> {
        let leaders = self.leaders();
        if !leaders.is_empty() && self.rng.chance(0.85) {
            return self.rng.pick(&leaders);
        }
        self.rng.pick(&self.live())
    }

    fn propose(&mut self) -> SimResult {
        let Some(id) = self.client_target() else {
            return Ok(());
        };
        let request = self.next_request;
        self.next_request += 1;
        let mut data = request.to_le_bytes().to_vec();
        data.resize(8 + self.rng.below(40) as usize, 0xab);
        let result = self.raft(id).map(|r| r.propose(data));
        self.expected_refusal(result.map(|r| r.map(|_| ())))?;
        self.observe(id)
    }

    fn read(&mut self) -> SimResult {
        let Some(id) = self.client_target() else {
            return Ok(());
        };
        let context = self.next_request;
        self.next_request += 1;
        self.reads.insert(context, self.checker.max_commit);
        if self.raft(id).is_some_and(|r| r.has_lease()) {
            self.stats.lease_reads += 1;
        }
        let result = self
            .raft(id)
            .map(|r| r.read_index(context.to_le_bytes().to_vec()));
        if !matches!(result, Some(Ok(()))) {
            self.reads.remove(&context);
        }
        self.expected_refusal(result)
    }

    /// Refusals are normal client answers; a storage failure is not.
    fn expected_refusal(&self, result: Option<Result<(), Error>>) -> SimResult {
        match result {
            Some(Err(Error::Storage(error))) => Err(format!("storage failed: {error}")),
            Some(Err(
                Error::WrongRecipient { .. }
                | Error::InvalidConfig(_)
                | Error::MalformedMessage { .. },
            )) => Err(format!("unexpected error {result:?}")),
            _ => Ok(()),
        }
    }

    fn change_membership(&mut self) -> SimResult {
        let Some(leader) = self.rng.pick(&self.leaders()) else {
            return Ok(());
        };
        let conf = self.raft(leader).expect("live leader").conf_state().clone();
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let outsiders: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !conf.members().contains(id))
            .collect();
        let change =
            if conf.is_joint() {
                ConfChange::leave_joint()
            } else {
                match self.rng.below(5) {
                    0 => self
                        .rng
                        .pick(&outsiders)
                        .map(|id| ConfChange::new([ConfChangeStep::AddLearner(id)])),
                    1 => self
                        .rng
                        .pick(&learners)
                        .map(|id| ConfChange::new([ConfChangeStep::AddVoter(id)])),
                    2 if voters.len() > 3 => self
                        .rng
                        .pick(&voters)
                        .map(|id| ConfChange::new([ConfChangeStep::Remove(id)])),
                    3 => {
                        let candidates: Vec<NodeId> =
                            learners.iter().chain(&outsiders).copied().collect();
                        match (self.rng.pick(&candidates), self.rng.pick(&voters)) {
                            (Some(incoming), Some(outgoing)) => Some(ConfChange::new([
                                ConfChangeStep::AddVoter(incoming),
                                ConfChangeStep::Remove(outgoing),
                            ])),
                            _ => None,
                        }
                    }
                    _ => self.rng.pick(&voters).zip(self.rng.pick(&outsiders)).map(
                        |(demoted, added)| ConfChange {
                            transition: Transition::Explicit,
                            changes: vec![
                                ConfChangeStep::AddLearner(demoted),
                                ConfChangeStep::AddVoter(added),
                            ],
                        },
                    ),
                }
                .unwrap_or_default()
            };
        if change.is_leave_joint() && !conf.is_joint() {
            return Ok(());
        }
        self.log(|| format!("leader {leader} proposes {change:?} on {conf:?}"));
        let result = self
            .raft(leader)
            .map(|r| r.propose_conf_change(change).map(|_| ()));
        if matches!(result, Some(Ok(()))) {
            self.stats.conf_changes += 1;
        }
        self.expected_refusal(result)?;
        self.observe(leader)
    }

    fn transfer(&mut self) -> SimResult {
        let Some(leader) = self.rng.pick(&self.leaders()) else {
            return Ok(());
        };
        let voters: Vec<NodeId> = self
            .raft(leader)
            .expect("live leader")
            .conf_state()
            .voters
            .iter()
            .copied()
            .collect();
        let Some(to) = self.rng.pick(&voters) else {
            return Ok(());
        };
        let result = self.raft(leader).map(|r| r.transfer_leader(to));
        if matches!(result, Some(Ok(()))) && to != leader {
            self.stats.transfers += 1;
        }
        self.expected_refusal(result)?;
        self.observe(leader)
    }

    /// Snapshots the state machine of a node and drops (most of) the log it covers.
    fn compact(&mut self) -> SimResult {
        let Some(id) = self.rng.pick(&self.live()) else {
            return Ok(());
        };
        let keep = self.rng.below(4);
        let node = self.nodes.get_mut(&id).expect("live node");
        let applied = node.machine.applied_index();
        let data = node.machine.encode();
        let storage = node.raft.as_mut().expect("live node").storage_mut();
        let conf = storage
            .initial_state()
            .map_err(|e| e.to_string())?
            .conf_state;
        storage
            .create_snapshot(applied, conf, data)
            .map_err(|e| e.to_string())?;
        storage
            .compact(applied.saturating_sub(keep))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn faults(&mut self) -> SimResult {
        let options = self.options.clone();
        if self.rng.chance(options.crash_probability) {
            // Half the crashes hit a leader: the interesting histories follow a leader's death.
            let leaders = self.leaders();
            let target = if self.rng.chance(0.5) && !leaders.is_empty() {
                leaders
            } else {
                self.live()
            };
            if let Some(id) = self.rng.pick(&target) {
                self.log(|| format!("node {id} crashes"));
                self.crash(id)?;
            }
        }
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.is_none())
            .map(|(&id, _)| id)
            .collect();
        if self.rng.chance(options.restart_probability) {
            if let Some(id) = self.rng.pick(&down) {
                self.log(|| format!("node {id} restarts"));
                self.restart(id)?;
            }
        }
        if self.rng.chance(options.partition_probability) {
            self.partition();
        }
        if self.rng.chance(options.heal_probability) && !self.network.cut.is_empty() {
            self.log(|| "network heals".to_string());
            self.network.heal();
        }
        Ok(())
    }

    fn partition(&mut self) {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.stats.partitions += 1;
        match self.rng.below(3) {
            0 => {
                // Two sides, cut both ways.
                let side: BTreeSet<NodeId> = all
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(0.5))
                    .collect();
                for &a in &all {
                    for &b in &all {
                        if side.contains(&a) != side.contains(&b) {
                            self.network.cut.insert((a, b));
                        }
                    }
                }
                self.log(|| format!("partition {side:?} from the rest"));
            }
            1 => {
                // Asymmetric: some directed links only.
                for _ in 0..1 + self.rng.below(3) {
                    let (a, b) = (
                        self.rng.pick(&all).expect("nodes"),
                        self.rng.pick(&all).expect("nodes"),
                    );
                    if a != b {
                        self.network.cut.insert((a, b));
                        self.log(|| format!("link {a} -> {b} cut"));
                    }
                }
            }
            _ => {
                let leaders = self.leaders();
                let target = if self.rng.chance(0.5) && !leaders.is_empty() {
                    leaders
                } else {
                    all.clone()
                };
                let id = self.rng.pick(&target).expect("nodes");
                for &other in &all {
                    if other != id {
                        self.network.cut.insert((id, other));
                        self.network.cut.insert((other, id));
                    }
                }
                self.log(|| format!("node {id} isolated"));
            }
        }
    }

    /// Stops all faults and checks liveness: within a bounded number of ticks a leader exists,
    /// a fresh proposal commits, and every acknowledged proposal is applied on every member.
    fn heal(&mut self) -> SimResult {
        self.network.heal();
        self.network.faults = NetworkFaults::none();
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            self.restart(id)?;
        }
        self.log(|| "healing: all nodes up, network perfect".to_string());
        let deadline = self.now + self.options.heal_limit_ticks;
        // A fresh proposal must commit; like a real client, retry it if a leader change lost it.
        let retry_after_ticks = 5 * u64::from(self.options.election_timeout_ticks);
        let mut probe: Option<(u64, u64)> = None;
        while self.now < deadline {
            self.step(Phase::Heal)?;
            let leaders = self.leaders();
            let Some(&leader) = leaders
                .iter()
                .max_by_key(|&&id| self.nodes[&id].raft.as_ref().map(|r| r.term()))
            else {
                continue;
            };
            match probe {
                Some((request, _)) if self.acknowledged.contains(&request) => {
                    if self.converged(leader) {
                        self.stats.elections = self.checker_terms();
                        return self.check_log_matching();
                    }
                }
                Some((_, proposed_at)) if self.now < proposed_at + retry_after_ticks => {}
                _ => {
                    let request = self.next_request;
                    let accepted = self
                        .raft(leader)
                        .is_some_and(|r| r.propose(request.to_le_bytes().to_vec()).is_ok());
                    if accepted {
                        self.next_request += 1;
                        probe = Some((request, self.now));
                    }
                }
            }
        }
        Err(format!(
            "liveness: no convergence {} ticks after healing (leaders {:?}, probe {probe:?}, {} messages in flight, {} committed)\n{}",
            self.options.heal_limit_ticks,
            self.leaders(),
            self.network.in_flight_count(),
            self.checker.committed.keys().next_back().copied().unwrap_or(0),
            self.describe()
        ))
    }

    /// One line per node, for failure reports.
    fn describe(&self) -> String {
        let mut lines = Vec::new();
        for (&id, node) in &self.nodes {
            let Some(raft) = node.raft.as_ref() else {
                lines.push(format!("  node {id}: down"));
                continue;
            };
            let mut line = format!(
                "  node {id}: {:?} term {} leader {:?} commit {} applied {} (machine {}) last {} quiesced {} conf {:?}",
                raft.role(),
                raft.term(),
                raft.leader(),
                raft.commit_index(),
                raft.applied_index(),
                node.machine.applied_index(),
                raft.last_index(),
                raft.is_quiesced(),
                raft.conf_state()
            );
            if raft.role() == Role::Leader {
                for member in raft.conf_state().members() {
                    if let Some(p) = raft.progress(member) {
                        line.push_str(&format!(
                            "\n    progress {member}: {:?} match {} next {} inflight {} probe_sent {} commit_known {}",
                            p.state, p.matched, p.next, p.inflights.count(), p.probe_sent, p.commit_known
                        ));
                    }
                }
            }
            lines.push(line);
        }
        lines.join("\n")
    }

    fn checker_terms(&self) -> usize {
        self.nodes
            .values()
            .filter_map(|n| n.raft.as_ref().map(|r| r.term() as usize))
            .max()
            .unwrap_or(0)
    }

    /// Every member of the leader's configuration has applied every acknowledged proposal.
    fn converged(&self, leader: NodeId) -> bool {
        let Some(raft) = self.nodes[&leader].raft.as_ref() else {
            return false;
        };
        let target = self
            .checker
            .committed
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        raft.conf_state()
            .members()
            .iter()
            .all(|id| self.nodes[id].machine.applied_index() >= target)
    }
}
