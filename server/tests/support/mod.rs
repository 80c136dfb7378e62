//! A deterministic world of multi-raft nodes: each node is a real [`MultiRaft`] driver over
//! the in-memory engine, frames travel through a seeded network that drops, delays and
//! partitions, and nodes crash (losing every unsynced write) and restart from their engine.
//! Clients issue puts, compare-and-swaps and reads and record a history for the
//! linearizability checker. One seed decides everything, so a failure replays exactly.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use rshard_common::linearizability::{Event, Operation, Outcome};
use rshard_common::rng::SeededRng;
use rshard_common::shard::{
    numbered_shard_prefix, numbered_shards, Epoch, ShardDescriptor, ShardId,
};
use rshard_raft::{ConfChange, ConfChangeStep};
use rshard_server::kv::{self, KvCommand, KvOp, KvOutcome};
use rshard_server::multiraft::{
    Counters, DriverConfig, Frame, Input, MultiRaft, QueueTransport, Request, RequestError,
    RequestId, Response, SnapshotMessage,
};
use rshard_server::storage::{MemEngine, NodeStore, ScanOrder, Space};

pub type NodeId = u64;

/// Simulation steps per driver tick: frames can arrive between ticks.
pub const STEPS_PER_TICK: u64 = 4;
/// Iterations a node may run in one step before the world moves on.
const MAX_ITERATIONS_PER_STEP: usize = 16;

#[derive(Clone, Debug)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub max_delay_steps: u64,
    /// Per step, chance of a crash / of a partition starting, in millionths.
    pub crash_per_million: u64,
    pub partition_per_million: u64,
    /// Of crashes, the share (per mille) that fail a sync first, so the node dies with
    /// frames sent ahead of a write that never became durable.
    pub failed_sync_per_mille: u64,
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            drop_per_mille: 0,
            max_delay_steps: 1,
            crash_per_million: 0,
            partition_per_million: 0,
            failed_sync_per_mille: 0,
        }
    }
}

/// What travels between nodes.
enum Packet {
    Frame(Frame),
    Snapshot(SnapshotMessage),
}

impl Packet {
    fn endpoints(&self) -> (NodeId, NodeId) {
        match self {
            Packet::Frame(frame) => (frame.from, frame.to),
            Packet::Snapshot(message) => (message.from(), message.to()),
        }
    }
}

pub struct SimNode {
    pub id: NodeId,
    pub engine: Arc<MemEngine>,
    pub driver: Option<MultiRaft<QueueTransport>>,
    restart_at: u64,
}

struct Pending {
    client: usize,
    event: usize,
    shard: ShardId,
}

pub struct Client {
    busy_until_answer: Option<(NodeId, RequestId, u64)>,
    leader_guess: BTreeMap<ShardId, NodeId>,
}

pub struct World {
    pub seed: u64,
    pub rng: SeededRng,
    pub step: u64,
    pub nodes: Vec<SimNode>,
    pub shards: Vec<ShardDescriptor>,
    pub faults: Faults,
    pub config: DriverConfig,
    network: BinaryHeap<Reverse<(u64, u64, usize)>>,
    in_flight: BTreeMap<u64, Packet>,
    /// Per (from, to): the step the last snapshot message sent on that link arrives. Snapshot
    /// messages keep their order, as on a stream; frames may overtake each other.
    snapshot_link_arrival: BTreeMap<(NodeId, NodeId), u64>,
    next_frame: u64,
    /// Nodes cut off from all others until the given step.
    isolated: BTreeMap<NodeId, u64>,
    pub clients: Vec<Client>,
    pub history: Vec<Event>,
    pending: BTreeMap<(NodeId, RequestId), Pending>,
    next_request: RequestId,
    /// Requests a client waits for before giving up (outcome unknown), in steps.
    pub client_timeout_steps: u64,
    /// Client operations go to these shards (hot set); empty means all.
    pub hot_shards: Vec<ShardId>,
    /// Clients use keys 0..this of a shard.
    pub keys_per_shard: u64,
    pub crashes: u64,
    /// Counters of drivers that crashed, so totals survive restarts.
    retired_counters: Vec<Counters>,
    /// What every snapshot chunk sent counts for against `snapshot_chunk_bytes`, in order.
    pub snapshot_chunk_bytes: Vec<usize>,
    /// The clients' route cache (shared by every client): start key -> descriptor. Starts
    /// as the layout; a refusal that says a route moved refreshes it from a node.
    routes: BTreeMap<Vec<u8>, ShardDescriptor>,
    /// The id the next split gives its new shard.
    next_shard: ShardId,
    /// Every this many faulty steps, a split of a random hot key (`None`: no splits).
    pub split_every_steps: Option<u64>,
    /// Splits asked for (each may apply or be refused).
    pub splits_requested: u64,
    /// When set, every this many steps a hot shard takes one step of a replica move
    /// (see [`World::move_random`]).
    pub move_every_steps: Option<u64>,
    pub moves_requested: u64,
    /// When set, every this many steps the merge under way takes a step, or one starts
    /// (see [`World::merge_step`]).
    pub merge_every_steps: Option<u64>,
    pub merges_started: u64,
    /// The merge under way: the left shard, the right shard, and the right one's range.
    pub merging: Option<(ShardId, ShardId, ShardDescriptor)>,
    /// The merge under way is being rolled back: the left shard's epoch version when that
    /// was decided.
    pub merge_rolling_back: Option<u64>,
    pub merges_rolled_back: u64,
    /// Shards merged away, and the shards that took their ranges.
    pub merged_away: BTreeSet<ShardId>,
    pub merged_into: BTreeSet<ShardId>,
    /// The step each shard was last asked to split at: placement never merges a shard with
    /// a split of it under way (both are busy), so a merge picks none split lately.
    split_asked_at: BTreeMap<ShardId, u64>,
}

/// Steps after a split was asked of a shard before a merge may pick it.
const MERGE_AFTER_SPLIT_STEPS: u64 = 300;

pub fn key(shard: ShardId, index: u64) -> Vec<u8> {
    let mut key = numbered_shard_prefix(shard);
    key.extend_from_slice(format!("k{index}").as_bytes());
    key
}

impl World {
    pub fn new(seed: u64, nodes: u64, shards: u64, clients: usize, faults: Faults) -> Self {
        Self::with_config(seed, nodes, shards, clients, faults, |_| {})
    }

    /// A world whose drivers use the default config changed by `configure`.
    pub fn with_config(
        seed: u64,
        nodes: u64,
        shards: u64,
        clients: usize,
        faults: Faults,
        configure: impl Fn(&mut DriverConfig),
    ) -> Self {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        let layout = numbered_shards(shards, &ids);
        Self::with_layout(seed, nodes, layout, clients, faults, configure)
    }

    /// A world of `nodes` nodes holding the shards of `layout` (each on the nodes its
    /// descriptor names).
    pub fn with_layout(
        seed: u64,
        nodes: u64,
        layout: Vec<ShardDescriptor>,
        clients: usize,
        faults: Faults,
        configure: impl Fn(&mut DriverConfig),
    ) -> Self {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        let mut config = DriverConfig::new(0);
        config.seed = seed;
        configure(&mut config);
        let mut world = World {
            seed,
            rng: SeededRng::new(seed),
            step: 0,
            nodes: Vec::new(),
            shards: layout,
            faults,
            config,
            network: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            snapshot_link_arrival: BTreeMap::new(),
            next_frame: 0,
            isolated: BTreeMap::new(),
            clients: (0..clients)
                .map(|_| Client {
                    busy_until_answer: None,
                    leader_guess: BTreeMap::new(),
                })
                .collect(),
            history: Vec::new(),
            pending: BTreeMap::new(),
            next_request: 1,
            client_timeout_steps: 400,
            hot_shards: Vec::new(),
            keys_per_shard: 2,
            crashes: 0,
            retired_counters: Vec::new(),
            snapshot_chunk_bytes: Vec::new(),
            routes: BTreeMap::new(),
            next_shard: 1,
            split_every_steps: None,
            splits_requested: 0,
            move_every_steps: None,
            moves_requested: 0,
            merge_every_steps: None,
            merges_started: 0,
            merging: None,
            merge_rolling_back: None,
            merges_rolled_back: 0,
            merged_away: BTreeSet::new(),
            merged_into: BTreeSet::new(),
            split_asked_at: BTreeMap::new(),
        };
        world.routes = world
            .shards
            .iter()
            .map(|shard| (shard.start_key.clone(), shard.clone()))
            .collect();
        world.next_shard = world.shards.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        for id in ids {
            let engine = Arc::new(MemEngine::new());
            let mut node = SimNode {
                id,
                engine,
                driver: None,
                restart_at: 0,
            };
            node.driver = Some(world.open_driver(&node));
            world.nodes.push(node);
        }
        // The initial replicas exist before any fault: creations still in an inbox would be
        // lost by a crash, leaving a node without its replicas for good.
        for node in &mut world.nodes {
            let Some(driver) = node.driver.as_mut() else {
                continue;
            };
            let own: Vec<&ShardDescriptor> = world
                .shards
                .iter()
                .filter(|shard| shard.replicas.contains(&node.id))
                .collect();
            for shard in &own {
                while driver.offer(Input::CreateShard((*shard).clone())).is_err() {
                    driver.iterate();
                }
            }
            while own
                .iter()
                .any(|shard| driver.descriptor(shard.id).is_none())
            {
                driver.iterate();
            }
        }
        world
    }

    fn open_driver(&self, node: &SimNode) -> MultiRaft<QueueTransport> {
        let mut config = self.config.clone();
        config.node = node.id;
        let store = NodeStore::with_engine(node.engine.clone());
        MultiRaft::open(config, store, QueueTransport::new(64)).expect("the engine reopens")
    }

    pub fn driver(&self, node: NodeId) -> Option<&MultiRaft<QueueTransport>> {
        self.nodes[(node - 1) as usize].driver.as_ref()
    }

    fn offer(&mut self, node: usize, input: Input) -> bool {
        match self.nodes[node].driver.as_mut() {
            Some(driver) => driver.offer(input).is_ok(),
            None => false,
        }
    }

    /// Runs `steps` steps.
    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.run_step();
        }
    }

    pub fn run_step(&mut self) {
        self.step += 1;
        self.deliver_due_frames();
        if self.step.is_multiple_of(STEPS_PER_TICK) {
            for node in 0..self.nodes.len() {
                self.offer(node, Input::Tick);
            }
        }
        self.inject_faults();
        self.restart_due_nodes();
        self.time_out_clients();
        for node in 0..self.nodes.len() {
            self.run_node(node);
        }
    }

    fn run_node(&mut self, node: usize) {
        let Some(driver) = self.nodes[node].driver.as_mut() else {
            return;
        };
        let mut answers = Vec::new();
        // A node installing a snapshot runs one iteration per step (a loaded disk), so an
        // install spans steps and crashes can land inside it.
        let installing = driver.shards().any(|shard| driver.is_installing(shard));
        let iterations = if installing {
            1
        } else {
            MAX_ITERATIONS_PER_STEP
        };
        for _ in 0..iterations {
            if !driver.has_work() {
                break;
            }
            answers.extend(driver.iterate());
        }
        let frames = driver.transport_mut().drain();
        let snapshot_messages = driver.transport_mut().drain_snapshots();
        let id = self.nodes[node].id;
        for (request, answer) in answers {
            self.complete(id, request, answer);
        }
        for frame in frames {
            self.schedule(Packet::Frame(frame));
        }
        for message in snapshot_messages {
            if let SnapshotMessage::Chunk(chunk) = &message {
                self.snapshot_chunk_bytes.push(chunk.cost_bytes());
            }
            self.schedule(Packet::Snapshot(message));
        }
    }

    fn schedule(&mut self, packet: Packet) {
        let (from, to) = packet.endpoints();
        if self.cut(from, to) || self.rng.below(1000) < self.faults.drop_per_mille {
            return;
        }
        let mut arrival = self.step + 1 + self.rng.below(self.faults.max_delay_steps.max(1));
        if let Packet::Snapshot(_) = packet {
            let last = self.snapshot_link_arrival.entry((from, to)).or_default();
            arrival = arrival.max(*last);
            *last = arrival;
        }
        let id = self.next_frame;
        self.next_frame += 1;
        self.in_flight.insert(id, packet);
        self.network.push(Reverse((arrival, id, (to - 1) as usize)));
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        let isolated = |n: NodeId| {
            self.isolated
                .get(&n)
                .is_some_and(|&until| until > self.step)
        };
        isolated(a) || isolated(b)
    }

    fn deliver_due_frames(&mut self) {
        while let Some(Reverse((at, id, to))) = self.network.peek().copied() {
            if at > self.step {
                break;
            }
            self.network.pop();
            if let Some(packet) = self.in_flight.remove(&id) {
                let (from, to_node) = packet.endpoints();
                if !self.cut(from, to_node) {
                    let input = match packet {
                        Packet::Frame(frame) => Input::Frame(frame),
                        Packet::Snapshot(message) => Input::Snapshot(message),
                    };
                    self.offer(to, input);
                }
            }
        }
    }

    fn inject_faults(&mut self) {
        if self.rng.below(1_000_000) < self.faults.partition_per_million {
            let node = 1 + self.rng.below(self.nodes.len() as u64);
            let until = self.step + 50 + self.rng.below(400);
            self.isolated.insert(node, until);
        }
        if self.rng.below(1_000_000) < self.faults.crash_per_million {
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let failed_sync = self.rng.below(1000) < self.faults.failed_sync_per_mille;
            let down_steps = 20 + self.rng.below(300);
            self.crash(node, failed_sync, down_steps);
        }
        // Installs are where a crash hurts most: when crashes are on, aim some at them.
        if self.faults.crash_per_million > 0 && self.rng.below(100) < 5 {
            let installing = self.nodes.iter().position(|n| {
                n.driver
                    .as_ref()
                    .is_some_and(|d| d.shards().any(|shard| d.is_installing(shard)))
            });
            if let Some(node) = installing {
                let failed_sync = self.rng.below(1000) < self.faults.failed_sync_per_mille;
                let down_steps = 20 + self.rng.below(100);
                self.crash(node, failed_sync, down_steps);
            }
        }
    }

    /// Crashes node index `node`: with `failed_sync`, its next sync fails first (it sends
    /// that iteration's early frames, then dies with the write not durable).
    pub fn crash(&mut self, node: usize, failed_sync: bool, down_steps: u64) {
        if self.nodes[node].driver.is_none() {
            return;
        }
        if failed_sync {
            self.nodes[node].engine.fail_syncs();
            self.run_node(node);
        }
        if let Some(driver) = self.nodes[node].driver.take() {
            self.retired_counters.push(driver.counters().clone());
        }
        self.nodes[node].engine.crash();
        self.nodes[node].restart_at = self.step + down_steps;
        self.crashes += 1;
        let id = self.nodes[node].id;
        let lost: Vec<(NodeId, RequestId)> = self
            .pending
            .keys()
            .filter(|(n, _)| *n == id)
            .copied()
            .collect();
        for request in lost {
            self.complete(request.0, request.1, Err(RequestError::OutcomeUnknown));
        }
    }

    fn restart_due_nodes(&mut self) {
        for node in 0..self.nodes.len() {
            if self.nodes[node].driver.is_none() && self.nodes[node].restart_at <= self.step {
                let driver = self.open_driver(&self.nodes[node]);
                self.nodes[node].driver = Some(driver);
            }
        }
    }

    /// Stops all faults and brings every node back.
    pub fn heal(&mut self) {
        self.faults.drop_per_mille = 0;
        self.faults.crash_per_million = 0;
        self.faults.partition_per_million = 0;
        self.isolated.clear();
        for node in &mut self.nodes {
            node.restart_at = node.restart_at.min(self.step);
        }
    }

    fn time_out_clients(&mut self) {
        let step = self.step;
        let timeout = self.client_timeout_steps;
        let expired: Vec<(NodeId, RequestId)> = self
            .clients
            .iter()
            .filter_map(|c| c.busy_until_answer)
            .filter(|&(_, _, since)| since + timeout < step)
            .map(|(node, request, _)| (node, request))
            .collect();
        for (node, request) in expired {
            self.complete(node, request, Err(RequestError::OutcomeUnknown));
        }
    }

    fn complete(
        &mut self,
        node: NodeId,
        request: RequestId,
        answer: Result<Response, RequestError>,
    ) {
        let Some(pending) = self.pending.remove(&(node, request)) else {
            return; // answered after the client gave up
        };
        self.clients[pending.client].busy_until_answer = None;
        let event = &mut self.history[pending.event];
        let outcome = match (&event.operation, answer) {
            (Operation::Get, Ok(Response::Value(value))) => Outcome::Read(value),
            (Operation::Put(_) | Operation::Delete, Ok(Response::Written(KvOutcome::Applied))) => {
                Outcome::Done
            }
            (Operation::CompareAndSwap { .. }, Ok(Response::Written(KvOutcome::Applied))) => {
                Outcome::Swapped(true)
            }
            (
                Operation::CompareAndSwap { .. },
                Ok(Response::Written(KvOutcome::ConditionFailed { .. })),
            ) => Outcome::Swapped(false),
            (_, Err(RequestError::OutcomeUnknown | RequestError::Stopped(_))) => Outcome::Unknown,
            (_, Err(RequestError::NotLeader { leader, .. })) => {
                let client = &mut self.clients[pending.client];
                match leader {
                    Some(leader) => client.leader_guess.insert(pending.shard, leader),
                    None => client.leader_guess.remove(&pending.shard),
                };
                self.forget(pending.event);
                return;
            }
            (_, Err(RequestError::Busy(_))) => {
                self.forget(pending.event);
                return;
            }
            (_, Err(RequestError::UnknownShard(_))) => {
                // A node that has not applied the split that made the shard (yet), or one
                // that retired it (merged into its left neighbour): look the key up again.
                self.clients[pending.client]
                    .leader_guess
                    .remove(&pending.shard);
                let key = event.key.clone();
                self.forget(pending.event);
                self.refresh_route(&key);
                return;
            }
            (_, Err(RequestError::Refused(kv::KvError::ShardMerging { .. }))) => {
                // Frozen for a merge: nothing was done; the merged shard serves it soon.
                let key = event.key.clone();
                self.forget(pending.event);
                self.refresh_route(&key);
                return;
            }
            (
                _,
                Err(RequestError::Refused(
                    kv::KvError::KeyNotInShard { .. } | kv::KvError::StaleEpoch { .. },
                )),
            ) => {
                // The range moved (a split): nothing was done; look the key up again.
                let key = event.key.clone();
                self.forget(pending.event);
                self.refresh_route(&key);
                return;
            }
            (operation, answer) => panic!(
                "seed {}: {operation:?} got an answer no correct node gives: {answer:?}",
                self.seed
            ),
        };
        event.outcome = outcome;
        event.completed_at = self.step;
    }

    /// A definite failure: the operation never took effect, so it leaves the history.
    fn forget(&mut self, event: usize) {
        self.history[event].outcome = Outcome::Done;
        self.history[event].operation = Operation::Get;
        self.history[event].key.clear();
    }

    /// The history without forgotten events.
    pub fn checked_history(&self) -> Vec<Event> {
        self.history
            .iter()
            .filter(|e| !e.key.is_empty())
            .cloned()
            .collect()
    }

    /// Lets every idle client start an operation with probability `chance_per_mille`.
    pub fn drive_clients(&mut self, chance_per_mille: u64) {
        for client in 0..self.clients.len() {
            if self.clients[client].busy_until_answer.is_none()
                && self.rng.below(1000) < chance_per_mille
            {
                self.start_operation(client);
            }
        }
    }

    /// The shard that owns `key` as the clients' route cache has it.
    fn route(&self, key: &[u8]) -> Option<&ShardDescriptor> {
        let (_, descriptor) = self.routes.range(..=key.to_vec()).next_back()?;
        descriptor.contains(key).then_some(descriptor)
    }

    /// Asks a node that is up which of its replicas owns `key` (as a `Route` request does),
    /// and caches the answer in place of the routes it overlaps.
    fn refresh_route(&mut self, key: &[u8]) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].driver.is_some())
            .collect();
        let Some(&node) = up.get(self.rng.below(up.len().max(1) as u64) as usize) else {
            return;
        };
        let Some(driver) = &self.nodes[node].driver else {
            return;
        };
        let Some(found) = driver
            .shards()
            .filter_map(|shard| driver.descriptor(shard))
            .find(|descriptor| descriptor.contains(key))
            .cloned()
        else {
            return;
        };
        let outdated = self
            .routes
            .values()
            .any(|r| r.id == found.id && r.epoch.version > found.epoch.version);
        if !outdated {
            self.routes.retain(|_, route| !route.overlaps(&found));
            self.routes.insert(found.start_key.clone(), found);
        }
    }

    /// Asks the leader of the shard owning a random key of a hot shard to split there, into
    /// a new shard; false if there was no leader or no room. Whether it applies shows in
    /// the replicas' descriptors.
    pub fn split_random(&mut self) -> bool {
        let original = if self.hot_shards.is_empty() {
            1 + self.rng.below(self.shards.len() as u64)
        } else {
            self.hot_shards[self.rng.below(self.hot_shards.len() as u64) as usize]
        };
        let at = key(original, self.rng.below(self.keys_per_shard.max(2)));
        let Some(owner) = self.route(&at).map(|d| d.id) else {
            self.refresh_route(&at);
            return false;
        };
        // Placement never splits a shard a merge works on (both are busy).
        if self
            .merging
            .as_ref()
            .is_some_and(|(left, right, _)| owner == *left || owner == *right)
        {
            return false;
        }
        let Some(&leader) = self.leaders().get(&owner) else {
            return false;
        };
        let Some(epoch) = self
            .driver(leader)
            .and_then(|d| d.descriptor(owner))
            .map(|d| d.epoch)
        else {
            return false;
        };
        let request = Request::Split(kv::SplitCommand {
            shard: owner,
            epoch,
            at,
            new_shard: self.next_shard,
        });
        self.next_shard += 1;
        self.splits_requested += 1;
        self.split_asked_at.insert(owner, self.step);
        let id = self.next_request;
        self.next_request += 1;
        self.offer((leader - 1) as usize, Input::Request { id, request })
    }

    /// One step of a merge, as placement takes it: with none under way, pick two adjacent
    /// shards with the same voters (as their leaders see them); then freeze the right one
    /// through its leader; once every replica of it is frozen (on a running, unstopped
    /// node), ask the left one's leader to merge; done once the left leader's range covers
    /// the right's. False if nothing was asked.
    pub fn merge_step(&mut self) -> bool {
        let leaders = self.leaders();
        let at_leader = |world: &World, shard: ShardId| {
            let leader = *leaders.get(&shard)?;
            let descriptor = world.driver(leader)?.descriptor(shard)?.clone();
            Some((leader, descriptor))
        };
        let Some((left, right, right_range)) = self.merging.clone() else {
            let mut led: Vec<ShardDescriptor> = leaders
                .keys()
                .filter_map(|&shard| at_leader(self, shard).map(|(_, d)| d))
                .collect();
            led.sort_by(|a, b| a.start_key.cmp(&b.start_key));
            let pairs: Vec<(ShardDescriptor, ShardDescriptor)> = led
                .windows(2)
                .filter(|pair| {
                    let (l, r) = (&pair[0], &pair[1]);
                    let split_lately = |shard: ShardId| {
                        self.split_asked_at
                            .get(&shard)
                            .is_some_and(|&at| self.step < at + MERGE_AFTER_SPLIT_STEPS)
                    };
                    !split_lately(l.id)
                        && !split_lately(r.id)
                        && !l.end_key.is_empty()
                        && l.end_key == r.start_key
                        && l.replicas == r.replicas
                        && l.learners.is_empty()
                        && r.learners.is_empty()
                        && l.merging_into.is_none()
                        && r.merging_into.is_none()
                })
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            if pairs.is_empty() {
                return false;
            }
            let (l, r) = pairs[self.rng.below(pairs.len() as u64) as usize].clone();
            self.merging = Some((l.id, r.id, r));
            self.merges_started += 1;
            return true;
        };
        let Some((left_leader, left_now)) = at_leader(self, left) else {
            return false;
        };
        // Done once every replica retired the right shard (placement keeps both busy until
        // then, so nothing splits the merged shard under a replica still behind it).
        let retired_everywhere = left_now.replicas.iter().all(|&node| {
            self.driver(node)
                .is_some_and(|driver| driver.descriptor(right).is_none())
        });
        if left_now.covers(&right_range)
            && left_now.epoch.version > right_range.epoch.version
            && retired_everywhere
        {
            if std::env::var("RSHARD_MERGE_TRACE").is_ok() {
                eprintln!(
                    "step {}: merged {right} into {left}: {left_now:?}",
                    self.step
                );
            }
            self.merged_away.insert(right);
            self.merged_into.insert(left);
            self.merging = None;
            // A rollback decided too late: the merge won the race in the left shard's log.
            self.merge_rolling_back = None;
            return false;
        }
        let Some((right_leader, right_now)) = at_leader(self, right) else {
            return false;
        };
        if left_now.covers(&right_range) && left_now.epoch.version > right_range.epoch.version {
            return false; // merged: waiting for every replica to retire the right shard
        }
        if let Some(decided_at) = self.merge_rolling_back {
            // Rolling back, as placement does: the left shard first refuses every merge
            // planned before (its version moves on), then the right one is unfrozen. A
            // merge still in flight may win the race in the left shard's log: then it
            // stands (the check above).
            let (leader, request) = if right_now.merging_into.is_none() {
                if std::env::var("RSHARD_MERGE_TRACE").is_ok() {
                    eprintln!(
                        "step {}: rolled back the merge of {right} into {left}",
                        self.step
                    );
                }
                self.merging = None;
                self.merge_rolling_back = None;
                self.merges_rolled_back += 1;
                return false;
            } else if left_now.epoch.version > decided_at {
                let unfreeze = kv::UnfreezeCommand {
                    shard: right,
                    epoch: right_now.epoch,
                    into: left,
                };
                (right_leader, Request::Unfreeze(unfreeze))
            } else {
                let abort = kv::AbortMergeCommand {
                    shard: left,
                    epoch: left_now.epoch,
                    right,
                };
                (left_leader, Request::AbortMerge(abort))
            };
            if std::env::var("RSHARD_MERGE_TRACE").is_ok() {
                eprintln!("step {}: {request:?} to node {leader}", self.step);
            }
            let id = self.next_request;
            self.next_request += 1;
            return self.offer((leader - 1) as usize, Input::Request { id, request });
        }
        if right_now.merging_into.is_some() {
            // Placement rolls back a merge whose right shard lost a node; the simulation
            // also rolls back some at random, racing the merges it already sent.
            let node_down = right_now
                .replicas
                .iter()
                .any(|&node| self.driver(node).is_none());
            if (node_down && self.rng.below(2) == 0) || self.rng.below(8) == 0 {
                self.merge_rolling_back = Some(left_now.epoch.version);
                return false;
            }
        }
        let request = if right_now.merging_into.is_none() {
            Request::Freeze(kv::FreezeCommand {
                shard: right,
                epoch: right_now.epoch,
                into: left,
            })
        } else {
            let frozen_everywhere = right_now.replicas.iter().all(|&node| {
                self.driver(node).is_some_and(|driver| {
                    driver.stopped().is_none()
                        && driver.descriptor(right) == Some(&right_now)
                        && driver.descriptor(left).is_some()
                })
            });
            if !frozen_everywhere {
                return false;
            }
            // A placement leader that sent the merge and failed, and a new one that rolls
            // it back: the rollback races the merge in the left shard's log.
            if self.rng.below(4) == 0 {
                self.merge_rolling_back = Some(left_now.epoch.version);
            }
            Request::Merge(kv::MergeCommand {
                shard: left,
                epoch: left_now.epoch,
                right: right_now,
            })
        };
        let leader = match request {
            Request::Freeze(_) => right_leader,
            _ => left_leader,
        };
        if std::env::var("RSHARD_MERGE_TRACE").is_ok() {
            eprintln!("step {}: {request:?} to node {leader}", self.step);
        }
        let id = self.next_request;
        self.next_request += 1;
        self.offer((leader - 1) as usize, Input::Request { id, request })
    }

    /// One step of moving a replica of a random hot shard, as placement would ask its
    /// leader: with no learner, add one on a node that holds no replica of the shard; with a
    /// learner the leader reports caught up, promote it and remove a voter other than the
    /// leader in one joint change. False if nothing was asked (no leader, no spare node, a
    /// learner still catching up, a full inbox).
    pub fn move_random(&mut self) -> bool {
        let shard = self.hot_shards[self.rng.below(self.hot_shards.len() as u64) as usize];
        let Some(&leader) = self.leaders().get(&shard) else {
            return false;
        };
        let Some(driver) = self.driver(leader) else {
            return false;
        };
        let Some(descriptor) = driver.descriptor(shard).cloned() else {
            return false;
        };
        let change = if let Some(&learner) = descriptor.learners.first() {
            if !driver.learner_caught_up(shard, learner) {
                return false;
            }
            let voters: Vec<NodeId> = descriptor
                .replicas
                .iter()
                .copied()
                .filter(|&voter| voter != leader)
                .collect();
            if voters.is_empty() {
                return false;
            }
            let out = voters[self.rng.below(voters.len() as u64) as usize];
            ConfChange::new([
                ConfChangeStep::AddVoter(learner),
                ConfChangeStep::Remove(out),
            ])
        } else {
            let spare: Vec<NodeId> = self
                .nodes
                .iter()
                .map(|n| n.id)
                .filter(|&node| !descriptor.members().any(|member| member == node))
                .collect();
            if spare.is_empty() {
                return false;
            }
            let node = spare[self.rng.below(spare.len() as u64) as usize];
            ConfChange::new([ConfChangeStep::AddLearner(node)])
        };
        self.moves_requested += 1;
        let request = Request::ChangeReplicas {
            shard,
            change,
            conf_version: Some(descriptor.epoch.conf_version),
        };
        let id = self.next_request;
        self.next_request += 1;
        self.offer((leader - 1) as usize, Input::Request { id, request })
    }

    /// Every shard some node that is up holds.
    pub fn all_shards(&self) -> BTreeSet<ShardId> {
        self.nodes
            .iter()
            .filter_map(|n| n.driver.as_ref())
            .flat_map(|d| d.shards().collect::<Vec<_>>())
            .collect()
    }

    fn start_operation(&mut self, client: usize) {
        let original = if self.hot_shards.is_empty() {
            1 + self.rng.below(self.shards.len() as u64)
        } else {
            self.hot_shards[self.rng.below(self.hot_shards.len() as u64) as usize]
        };
        let key = key(original, self.rng.below(self.keys_per_shard));
        let Some((shard, epoch)) = self.route(&key).map(|d| (d.id, d.epoch)) else {
            self.refresh_route(&key);
            return;
        };
        let value = format!("c{client}r{}", self.next_request).into_bytes();
        let operation = match self.rng.below(10) {
            0..=3 => Operation::Put(value),
            4..=6 => Operation::Get,
            7 => Operation::Delete,
            _ => {
                let expected = self
                    .history
                    .iter()
                    .rev()
                    .find(|e| e.key == key)
                    .and_then(|e| match &e.operation {
                        Operation::Put(v) => Some(v.clone()),
                        _ => None,
                    });
                Operation::CompareAndSwap {
                    expected,
                    new: Some(value),
                }
            }
        };
        let request = match &operation {
            Operation::Get => Request::Read {
                shard,
                epoch,
                key: key.clone(),
            },
            Operation::Put(value) => write(
                shard,
                epoch,
                KvOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
            ),
            Operation::Delete => write(shard, epoch, KvOp::Delete { key: key.clone() }),
            Operation::CompareAndSwap { expected, new } => write(
                shard,
                epoch,
                KvOp::CompareAndSwap {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: new.clone(),
                },
            ),
        };
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.driver.is_some())
            .map(|n| n.id)
            .collect();
        let guess = self.clients[client].leader_guess.get(&shard).copied();
        let node = match guess.filter(|g| up.contains(g)) {
            Some(node) => node,
            None => match up.get(self.rng.below(up.len() as u64) as usize) {
                Some(&node) => node,
                None => return,
            },
        };
        let id = self.next_request;
        self.next_request += 1;
        if !self.offer((node - 1) as usize, Input::Request { id, request }) {
            return;
        }
        self.history.push(Event {
            client: client as u64,
            key,
            operation,
            outcome: Outcome::Unknown,
            invoked_at: self.step,
            completed_at: self.step,
        });
        self.pending.insert(
            (node, id),
            Pending {
                client,
                event: self.history.len() - 1,
                shard,
            },
        );
        self.clients[client].busy_until_answer = Some((node, id, self.step));
    }

    /// Sends one put of key 0 straight to the shard's leader, outside any client history;
    /// false if the shard has no leader or the leader's inbox is full.
    pub fn put_to_leader(&mut self, shard: ShardId, value: &[u8]) -> bool {
        self.write_to_leader(
            shard,
            KvOp::Put {
                key: key(shard, 0),
                value: value.to_vec(),
            },
        )
    }

    /// Sends one write straight to the shard's leader, outside any client history; false if
    /// the shard has no leader or the leader's inbox is full.
    pub fn write_to_leader(&mut self, shard: ShardId, op: KvOp) -> bool {
        let Some(&leader) = self.leaders().get(&shard) else {
            return false;
        };
        let epoch = self.shards[(shard - 1) as usize].epoch;
        let request = write(shard, epoch, op);
        let id = self.next_request;
        self.next_request += 1;
        self.offer((leader - 1) as usize, Input::Request { id, request })
    }

    /// Sends a membership change of `shard` to its leader; false if it has no leader or
    /// the leader's inbox is full. The outcome shows in the replicas' descriptors.
    pub fn change_replicas(&mut self, shard: ShardId, change: ConfChange) -> bool {
        let Some(&leader) = self.leaders().get(&shard) else {
            return false;
        };
        let id = self.next_request;
        self.next_request += 1;
        let request = Request::ChangeReplicas {
            shard,
            change,
            conf_version: None,
        };
        self.offer((leader - 1) as usize, Input::Request { id, request })
    }

    /// Asks `shard`'s leader to hand its leadership to `to`; false if it has no leader or
    /// the leader's inbox is full. The outcome shows in who leads.
    pub fn transfer_leader(&mut self, shard: ShardId, to: NodeId) -> bool {
        let Some(&leader) = self.leaders().get(&shard) else {
            return false;
        };
        self.offer((leader - 1) as usize, Input::TransferLeader { shard, to })
    }

    /// The sum of `counter` over the nodes that are up.
    pub fn total(&self, counter: impl Fn(&Counters) -> u64) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.driver.as_ref())
            .map(|d| counter(d.counters()))
            .sum()
    }

    /// The sum of `counter` over every driver that ran, crashed ones included.
    pub fn total_ever(&self, counter: impl Fn(&Counters) -> u64) -> u64 {
        self.total(&counter) + self.retired_counters.iter().map(&counter).sum::<u64>()
    }

    /// Cuts `node` off from every other node for `steps` steps.
    pub fn isolate(&mut self, node: NodeId, steps: u64) {
        self.isolated.insert(node, self.step + steps);
    }

    /// Crashes node index `node` and reopens its driver at once, before it iterates.
    pub fn crash_and_reopen(&mut self, node: usize) {
        self.crash(node, false, 0);
        let driver = self.open_driver(&self.nodes[node]);
        self.nodes[node].driver = Some(driver);
    }

    /// Crashes node index `node` and reopens it at once with an empty store: same id, every
    /// replica lost (a wiped data directory).
    pub fn wipe_and_reopen(&mut self, node: usize) {
        self.crash(node, false, 0);
        self.nodes[node].engine = Arc::new(MemEngine::new());
        let driver = self.open_driver(&self.nodes[node]);
        self.nodes[node].driver = Some(driver);
    }

    /// Runs steps until `done` holds (true) or `max_steps` pass (false).
    pub fn run_until(&mut self, max_steps: u64, done: impl Fn(&World) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.run_step();
        }
        done(self)
    }

    /// Runs until every up node has nothing to do and every group is quiet, or `max_steps`.
    /// Returns the steps it took, or `None` if the cluster never went quiet.
    pub fn run_until_quiet(&mut self, max_steps: u64) -> Option<u64> {
        for step in 0..max_steps {
            self.run_step();
            let quiet = self
                .nodes
                .iter()
                .filter_map(|n| n.driver.as_ref())
                .all(|d| d.counters().ticking_groups == 0 && self.network.is_empty());
            if quiet {
                return Some(step);
            }
        }
        None
    }

    /// Every shard's leader, as its own replica sees it (`None` if none leads).
    pub fn leaders(&self) -> BTreeMap<ShardId, NodeId> {
        let mut leaders = BTreeMap::new();
        for node in &self.nodes {
            if let Some(driver) = &node.driver {
                for shard in driver.shards() {
                    if driver.is_leader(shard) {
                        leaders.insert(shard, node.id);
                    }
                }
            }
        }
        leaders
    }

    /// Every key and value node `node` holds in `shard`'s range (as that node's replica
    /// has it, or as laid out if it holds none).
    pub fn shard_data(&self, node: NodeId, shard: ShardId) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(driver) = self.driver(node) else {
            return Vec::new();
        };
        let Some(descriptor) = driver
            .descriptor(shard)
            .or_else(|| self.shards.iter().find(|d| d.id == shard))
        else {
            return Vec::new();
        };
        let mut items = Vec::new();
        driver
            .store()
            .scan(
                Space::Data,
                kv::shard_range(descriptor),
                ScanOrder::Ascending,
                &mut |key, value| {
                    items.push((key.to_vec(), value.to_vec()));
                    std::ops::ControlFlow::Continue(())
                },
            )
            .expect("the in-memory engine reads");
        items
    }

    pub fn up_nodes(&self) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.driver.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Replays a seed: the command printed with a failure.
    pub fn replay_hint(&self, test: &str) -> String {
        format!(
            "RSHARD_MULTIRAFT_SEED={} cargo test -p rshard-server --test {test} -- --nocapture",
            self.seed
        )
    }
}

fn write(shard: ShardId, epoch: Epoch, op: KvOp) -> Request {
    Request::Write(KvCommand {
        shard,
        epoch,
        ops: vec![op],
    })
}
