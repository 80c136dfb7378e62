//! Test support: the caller's duties for one Ready against `MemStorage`, and a small
//! in-memory cluster that delivers messages instantly unless told to cut links.
//!
//! Shared by the rule tests and the simulator so both drive replicas exactly as the crate
//! documentation says a caller must.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rshard_raft::{
    ConfState, Config, Entry, LogPosition, MemStorage, Message, Payload, Raft, ReadState, Ready,
};

/// Persists what `ready` asks (snapshot, entries, hard state) into the replica's storage.
pub fn persist(raft: &mut Raft<MemStorage>, ready: &Ready) {
    let storage = raft.storage_mut();
    if let Some(snapshot) = &ready.snapshot {
        storage.apply_snapshot(snapshot.clone());
    }
    storage.append(&ready.entries);
    if let Some(hard_state) = ready.hard_state {
        storage.set_hard_state(hard_state);
    }
}

/// Applies the committed entries of `ready` (membership changes through the core) and
/// returns them.
pub fn apply(raft: &mut Raft<MemStorage>, ready: &mut Ready) -> Vec<Entry> {
    let committed = std::mem::take(&mut ready.committed_entries);
    for entry in &committed {
        if let Payload::ConfChange(change) = &entry.payload {
            if let Ok(conf) = raft.apply_conf_change(entry.index, change) {
                raft.storage_mut().set_conf_state(conf);
            }
        }
    }
    committed
}

/// What one Ready produced once handled.
#[derive(Debug, Default)]
pub struct Handled {
    /// Immediate messages first, then those released by persistence.
    pub messages: Vec<Message>,
    pub applied: Vec<Entry>,
    pub read_states: Vec<ReadState>,
}

/// Performs every duty for one Ready, in the documented order, and advances.
pub fn handle_ready(raft: &mut Raft<MemStorage>) -> Handled {
    let ready = raft.ready().expect("ready");
    perform_duties(raft, ready)
}

/// The caller's duties for a Ready already taken: send early, persist, send the rest, apply,
/// advance.
pub fn perform_duties(raft: &mut Raft<MemStorage>, mut ready: Ready) -> Handled {
    let mut messages = std::mem::take(&mut ready.messages);
    persist(raft, &ready);
    messages.append(&mut ready.persisted_messages);
    let applied = apply(raft, &mut ready);
    let read_states = std::mem::take(&mut ready.read_states);
    raft.advance(ready).expect("advance");
    Handled {
        messages,
        applied,
        read_states,
    }
}

/// A config with short timeouts for tests.
pub fn test_config(id: u64) -> Config {
    let mut config = Config::new(id);
    config.election_timeout_ticks = 10;
    config.heartbeat_interval_ticks = 1;
    config.snapshot_timeout_ticks = 2 * config.election_timeout_ticks;
    config.seed = id;
    config
}

/// Replicas connected by an instant, lossless network, except for cut links.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Raft<MemStorage>>,
    /// Messages sent and not yet delivered.
    pub in_flight: VecDeque<Message>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub read_states: BTreeMap<u64, Vec<ReadState>>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(u64, u64)>,
    /// Every message delivered, for tests that inspect traffic.
    pub delivered: Vec<Message>,
}

impl Cluster {
    /// A new group whose members are `voters`, all fresh.
    pub fn new(voters: &[u64], configure: impl Fn(&mut Config)) -> Self {
        Self::with_conf(ConfState::with_voters(voters.iter().copied()), configure)
    }

    /// A new group with the given membership (learners included).
    pub fn with_conf(conf: ConfState, configure: impl Fn(&mut Config)) -> Self {
        let mut nodes = BTreeMap::new();
        for id in conf.members() {
            let mut config = test_config(id);
            configure(&mut config);
            let storage = MemStorage::new_with_conf_state(conf.clone());
            nodes.insert(id, Raft::new(config, storage).expect("valid config"));
        }
        Cluster {
            nodes,
            in_flight: VecDeque::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
        }
    }

    pub fn node(&self, id: u64) -> &Raft<MemStorage> {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// Adds a fresh, empty replica (e.g. before adding it to the configuration).
    pub fn add_node(&mut self, id: u64, conf: ConfState, configure: impl Fn(&mut Config)) {
        let mut config = test_config(id);
        configure(&mut config);
        let storage = MemStorage::new_with_conf_state(conf);
        self.nodes
            .insert(id, Raft::new(config, storage).expect("valid config"));
    }

    /// Handles the Ready of one node, queueing its messages.
    pub fn handle(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.has_ready() {
            return;
        }
        let handled = handle_ready(node);
        self.record(id, handled);
    }

    /// Delivers one queued message (dropping it if its link is cut). False if none queued.
    pub fn deliver_one(&mut self) -> bool {
        let Some(message) = self.in_flight.pop_front() else {
            return false;
        };
        if self.cut.contains(&(message.from, message.to)) {
            return true;
        }
        self.delivered.push(message.clone());
        if let Some(node) = self.nodes.get_mut(&message.to) {
            node.step(message).expect("step");
        }
        true
    }

    /// Handles Readys and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let mut busy = false;
            for id in ids {
                if self.nodes[&id].has_ready() {
                    self.handle(id);
                    busy = true;
                }
            }
            while self.deliver_one() {
                busy = true;
            }
            if !busy {
                return;
            }
        }
        panic!("cluster did not stabilize within 10,000 rounds");
    }

    pub fn tick(&mut self, id: u64, ticks: u32) {
        for _ in 0..ticks {
            self.node_mut(id).tick().expect("tick");
        }
    }

    pub fn tick_all(&mut self, ticks: u32) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for _ in 0..ticks {
            for &id in &ids {
                self.node_mut(id).tick().expect("tick");
            }
        }
    }

    /// Makes `id` campaign and runs the cluster until quiet.
    pub fn campaign(&mut self, id: u64) {
        self.node_mut(id).campaign().expect("campaign");
        self.stabilize();
    }

    pub fn propose(&mut self, id: u64, data: &[u8]) -> Result<LogPosition, rshard_raft::Error> {
        let position = self.node_mut(id).propose(data.to_vec());
        self.stabilize();
        position
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The replicas that currently believe they lead.
    pub fn leaders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.role() == rshard_raft::Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The normal payloads a node has applied, in order.
    pub fn applied_data(&self, id: u64) -> Vec<Vec<u8>> {
        self.applied
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|e| match &e.payload {
                Payload::Normal(data) => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
}

// Helpers for the per-rule tests (`rules_*.rs`): hand-built logs, crashes and fine-grained
// stepping. None of them changes how the functions above behave.

/// Entries at `indexes`, all of `term`, each with a payload naming its position, for
/// hand-built logs.
pub fn entries_of_term(
    term: rshard_raft::Term,
    indexes: std::ops::RangeInclusive<u64>,
) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            term,
            index,
            payload: Payload::Normal(format!("t{term}i{index}").into_bytes()),
        })
        .collect()
}

/// The storage of a replica that has already persisted `entries` and `hard_state`, in a group
/// whose members are `conf`.
pub fn storage_with_log(
    conf: &ConfState,
    entries: &[Entry],
    hard_state: rshard_raft::HardState,
) -> MemStorage {
    let mut storage = MemStorage::new_with_conf_state(conf.clone());
    storage.append(entries);
    storage.set_hard_state(hard_state);
    storage
}

impl Cluster {
    /// A group whose replicas restart from the given storages (hand-built logs).
    pub fn with_storages(
        storages: Vec<(u64, MemStorage)>,
        configure: impl Fn(&mut Config),
    ) -> Self {
        let mut cluster = Cluster::new(&[], |_| {});
        for (id, storage) in storages {
            let mut config = test_config(id);
            configure(&mut config);
            cluster
                .nodes
                .insert(id, Raft::new(config, storage).expect("valid config"));
        }
        cluster
    }

    /// Crashes `id` and restarts it from what it persisted: everything handed out in a Ready
    /// that was not persisted, and every message it had not yet handed out, is lost. The
    /// state machine (`applied`) survives, as if applied atomically with its index, so the
    /// replica restarts with `applied` at the last entry it applied (at most its persisted
    /// commit).
    pub fn restart(&mut self, id: u64, configure: impl Fn(&mut Config)) {
        let storage = self.nodes.remove(&id).expect("known node").into_storage();
        let mut config = test_config(id);
        configure(&mut config);
        let applied = self
            .applied
            .get(&id)
            .and_then(|entries| entries.last())
            .map_or(0, |e| e.index);
        config.applied = applied.min(
            rshard_raft::Storage::initial_state(&storage)
                .expect("state")
                .hard_state
                .commit,
        );
        self.nodes
            .insert(id, Raft::new(config, storage).expect("restart"));
    }

    /// Takes the Ready of `id` for a test to inspect; hand it back with [`Cluster::finish_ready`].
    pub fn take_ready(&mut self, id: u64) -> Ready {
        self.node_mut(id).ready().expect("ready")
    }

    /// Performs the duties for a Ready taken with [`Cluster::take_ready`], exactly as
    /// [`Cluster::handle`] does, queueing its messages.
    pub fn finish_ready(&mut self, id: u64, ready: Ready) {
        let handled = perform_duties(self.node_mut(id), ready);
        self.record(id, handled);
    }

    fn record(&mut self, id: u64, handled: Handled) {
        self.in_flight.extend(handled.messages);
        self.applied.entry(id).or_default().extend(handled.applied);
        self.read_states
            .entry(id)
            .or_default()
            .extend(handled.read_states);
    }

    /// Delivers `request` straight to its recipient, handles the Ready it causes, and returns
    /// the answers that had to wait for persistence (votes, acknowledgements).
    pub fn persisted_answers_to(&mut self, request: Message) -> Vec<Message> {
        let to = request.to;
        self.inject(request);
        let ready = self.take_ready(to);
        let answers = ready.persisted_messages.clone();
        self.finish_ready(to, ready);
        answers
    }

    /// Delivers `message` at once, as if it had arrived from the network (links ignored).
    pub fn inject(&mut self, message: Message) {
        self.delivered.push(message.clone());
        self.node_mut(message.to).step(message).expect("step");
    }

    /// Removes the queued messages matching `predicate` (lost in the network); returns how many.
    pub fn drop_in_flight(&mut self, predicate: impl Fn(&Message) -> bool) -> usize {
        let before = self.in_flight.len();
        self.in_flight.retain(|message| !predicate(message));
        before - self.in_flight.len()
    }

    /// Like [`Cluster::stabilize`], one action at a time (handle one Ready, or deliver one
    /// message), stopping as soon as `condition` holds. True if it held before the cluster
    /// went quiet.
    pub fn run_until(&mut self, condition: impl Fn(&Cluster) -> bool) -> bool {
        for _ in 0..100_000 {
            if condition(self) {
                return true;
            }
            let ready = self
                .nodes
                .iter()
                .find(|(_, node)| node.has_ready())
                .map(|(&id, _)| id);
            match ready {
                Some(id) => self.handle(id),
                None => {
                    if !self.deliver_one() {
                        return condition(self);
                    }
                }
            }
        }
        panic!("cluster did not go quiet within 100,000 actions");
    }

    /// Ticks every replica once and stabilizes, up to `max_ticks` times, until `condition`
    /// holds. Returns the number of ticks it took, or None.
    pub fn tick_all_until(
        &mut self,
        max_ticks: u32,
        condition: impl Fn(&Cluster) -> bool,
    ) -> Option<u32> {
        for tick in 1..=max_ticks {
            self.tick_all(1);
            self.stabilize();
            if condition(self) {
                return Some(tick);
            }
        }
        None
    }

    /// Like [`Cluster::stabilize`], but the network loses every message matching `lost`.
    pub fn stabilize_losing(&mut self, lost: impl Fn(&Message) -> bool) {
        for _ in 0..10_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.handle(id);
            }
            self.drop_in_flight(&lost);
            if self.in_flight.is_empty() {
                return;
            }
            while self.deliver_one() {}
        }
        panic!("cluster did not stabilize within 10,000 rounds");
    }

    /// The entries `id` has persisted, in order.
    pub fn persisted_log(&self, id: u64) -> Vec<Entry> {
        use rshard_raft::Storage;
        let storage = self.node(id).storage();
        let first = storage.first_index().expect("first index");
        let last = storage.last_index().expect("last index");
        storage.entries(first, last + 1, u64::MAX).expect("entries")
    }

    /// Messages delivered so far that match `predicate`.
    pub fn delivered_matching(&self, predicate: impl Fn(&Message) -> bool) -> usize {
        self.delivered
            .iter()
            .filter(|message| predicate(message))
            .count()
    }
}

/// A vote request (§5.2) from a candidate whose log ends at `last`.
pub fn vote_request(from: u64, to: u64, term: rshard_raft::Term, last: LogPosition) -> Message {
    let kind = rshard_raft::MessageKind::Vote {
        last_index: last.index,
        last_term: last.term,
        leader_transfer: false,
    };
    Message {
        from,
        to,
        term,
        kind,
    }
}

/// A pre-vote request (thesis §9.6) for `term` from a replica whose log ends at `last`.
pub fn pre_vote_request(from: u64, to: u64, term: rshard_raft::Term, last: LogPosition) -> Message {
    let kind = rshard_raft::MessageKind::PreVote {
        last_index: last.index,
        last_term: last.term,
    };
    Message {
        from,
        to,
        term,
        kind,
    }
}

impl Cluster {
    /// Where the persisted log of `id` ends.
    pub fn last_persisted_position(&self, id: u64) -> LogPosition {
        self.persisted_log(id)
            .last()
            .map_or(LogPosition::default(), Entry::position)
    }

    /// True if the persisted log of `id` holds an entry with this payload.
    pub fn holds(&self, id: u64, data: &[u8]) -> bool {
        self.persisted_log(id)
            .iter()
            .any(|entry| entry.payload == Payload::Normal(data.to_vec()))
    }
}
