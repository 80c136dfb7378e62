//! The driver loop itself; see the module documentation for the order of an iteration.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rshard_common::shard::{ShardDescriptor, ShardId};
use rshard_raft::{ConfState, Config, Message, MessageKind, NodeId, Raft, Ready, Role};

use super::counters::Counters;
use super::frame::{Frame, RemovedNotice};
use super::replica::{PendingRead, ReadKind, Replica};
use super::snapshot::{SnapshotMessage, Snapshots};
use super::transport::Transport;
use super::{Answer, DriverConfig, InboxFull, Input, Request, RequestError, RequestId, Response};
use crate::kv::{self, Applier};
use crate::storage::{
    keys, GroupId, KeyRange, KeySpan, NodeBatch, NodeStore, ScanOrder, Space, StoreError,
};

/// What the driver knows of a peer node.
#[derive(Clone, Copy, Debug, Default)]
struct Peer {
    ticks_since_heard: u32,
    dead: bool,
}

/// Drives every replica on one node. See the module documentation.
#[derive(Debug)]
pub struct MultiRaft<T: Transport> {
    config: DriverConfig,
    store: NodeStore,
    transport: T,
    inbox: VecDeque<Input>,
    replicas: BTreeMap<GroupId, Replica>,
    /// Groups that are not quiesced.
    ticking: BTreeSet<GroupId>,
    /// Groups that took input or still have work: the only ones asked for a Ready.
    dirty: BTreeSet<GroupId>,
    peers: BTreeMap<NodeId, Peer>,
    /// Messages for the next frames: those that waited for the sync (sent at the end of the
    /// iteration), liveness frames and rejections (sent with the iteration's first frames).
    held: BTreeMap<NodeId, Frame>,
    answers: Vec<Answer>,
    /// Answers of commands applied into the batch being built: released once the batch is
    /// written, before its sync (their entries are committed, so already durable), or
    /// turned into `OutcomeUnknown` if the write fails.
    unsynced_answers: Vec<Answer>,
    /// Requests waiting for an answer: counted over all groups at the iteration's first
    /// request, plus those taken since (an overestimate within one iteration, never an
    /// underestimate). `None` until a request needs it, so ticks and frames never pay for it.
    pending_requests: Option<usize>,
    counters: Counters,
    snapshots: Snapshots,
    /// Bytes of snapshot chunks waiting in the inbox.
    snapshot_inbox_bytes: usize,
    /// Set when storage failed: the driver answers everything with it and does nothing else.
    stopped: Option<String>,
    /// Removal notices received this iteration, acted on after its batch is written (at
    /// most one per group per frame, and frames per iteration are bounded).
    removal_notices: Vec<RemovedNotice>,
    /// (group, node) pairs a membership change led here removed, with the ticks left to
    /// keep telling the node so at each liveness frame: a removed replica hears nothing
    /// more from its group, and one that never campaigns (a learner, or a quiet follower)
    /// would otherwise never learn of it. At most [`MAX_REMOVED_MEMBERS_TOLD`].
    removed_members: BTreeMap<(GroupId, NodeId), u32>,
}

/// Removed members told at once (each for ten election timeouts).
const MAX_REMOVED_MEMBERS_TOLD: usize = 4096;

fn stop_error(reason: &str) -> RequestError {
    RequestError::Stopped(reason.to_string())
}

impl<T: Transport> MultiRaft<T> {
    /// Starts the driver over `store`, restarting every replica the store holds.
    pub fn open(config: DriverConfig, store: NodeStore, transport: T) -> Result<Self, StoreError> {
        let incarnation = store.next_incarnation()?;
        let stored = stored_groups(&store)?;
        let (groups, installing) = (stored.groups, stored.installing);
        let snapshots = Snapshots::open(
            config.node,
            incarnation,
            &store,
            &installing,
            stored.tombstones,
        )?;
        let counters = Counters {
            installs_resumed: installing.len() as u64,
            ..Counters::default()
        };
        let mut driver = MultiRaft {
            config,
            store,
            transport,
            inbox: VecDeque::new(),
            replicas: BTreeMap::new(),
            ticking: BTreeSet::new(),
            dirty: BTreeSet::new(),
            peers: BTreeMap::new(),
            held: BTreeMap::new(),
            answers: Vec::new(),
            unsynced_answers: Vec::new(),
            pending_requests: None,
            counters,
            snapshots,
            snapshot_inbox_bytes: 0,
            stopped: None,
            removal_notices: Vec::new(),
            removed_members: BTreeMap::new(),
        };
        for &group in &groups {
            driver.load_replica(group)?;
        }
        // A crash between applying a replica's removal and destroying it.
        for group in groups {
            driver.destroy_if_removed(group)?;
        }
        // A crash between applying a merge and retiring the right shard's replica.
        let retiring = driver.store.retiring()?;
        driver.retire_merged(retiring)?;
        Ok(driver)
    }

    fn load_replica(&mut self, group: GroupId) -> Result<(), StoreError> {
        let descriptor = self
            .store
            .group(group)
            .descriptor()?
            .ok_or(StoreError::Corrupt {
                group,
                what: "shard descriptor",
                detail: "missing".to_string(),
            })?;
        self.start_replica(group, descriptor)
    }

    /// Starts the replica of `group` from what the store holds of it (nothing, for a replica
    /// created by its first snapshot).
    fn start_replica(
        &mut self,
        group: GroupId,
        descriptor: ShardDescriptor,
    ) -> Result<(), StoreError> {
        let storage = self.store.group(group);
        let applied = storage.applied_state()?;
        let mut raft_config = Config::new(self.config.node);
        raft_config.election_timeout_ticks = self.config.election_timeout_ticks;
        raft_config.heartbeat_interval_ticks = self.config.heartbeat_interval_ticks;
        raft_config.applied = applied.applied;
        raft_config.seed = mix(self.config.seed, self.config.node, group);
        let raft = Raft::new(raft_config, storage).map_err(|error| StoreError::Corrupt {
            group,
            what: "raft state",
            detail: error.to_string(),
        })?;
        for member in applied.conf_state.members() {
            if member != self.config.node {
                self.peers.entry(member).or_default();
            }
        }
        self.replicas.insert(group, Replica::new(raft, descriptor));
        // A group in the middle of an install runs again once the install completes.
        if !self.snapshots.is_installing(group) {
            self.ticking.insert(group);
            self.dirty.insert(group);
        }
        Ok(())
    }

    /// Queues an input for the next iteration.
    pub fn offer(&mut self, input: Input) -> Result<(), InboxFull> {
        let snapshot_bytes = match &input {
            Input::Snapshot(message) => message.cost_bytes(),
            _ => 0,
        };
        // One chunk always fits an inbox holding none, whatever the limit.
        let snapshots_full = self.snapshot_inbox_bytes > 0
            && self.snapshot_inbox_bytes + snapshot_bytes > self.config.max_snapshot_inbox_bytes;
        if self.inbox.len() >= self.config.max_inbox_inputs || snapshots_full {
            self.counters.inbox_drops += 1;
            return Err(InboxFull);
        }
        self.snapshot_inbox_bytes += snapshot_bytes;
        self.inbox.push_back(input);
        Ok(())
    }

    /// True if an iteration now would do something (so the loop should not wait).
    pub fn has_work(&self) -> bool {
        if self.stopped.is_some() {
            // Only refusals are left to do; they must not wait for the next tick.
            return !self.inbox.is_empty();
        }
        !self.inbox.is_empty()
            || !self.dirty.is_empty()
            || !self.held.is_empty()
            || self.snapshots.has_work(&self.config)
    }

    /// True while `shard`'s replica is installing a snapshot (it runs nothing meanwhile).
    pub fn is_installing(&self, shard: ShardId) -> bool {
        self.snapshots.is_installing(shard)
    }

    /// Snapshot transfers under way: (sending, receiving).
    pub fn snapshot_transfers(&self) -> (usize, usize) {
        self.snapshots.transfers()
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn store(&self) -> &NodeStore {
        &self.store
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Why the driver stopped, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.replicas.keys().copied()
    }

    /// The leader this node's replica of `shard` knows, if any.
    pub fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        self.replicas.get(&shard).and_then(|r| r.raft.leader())
    }

    pub fn is_leader(&self, shard: ShardId) -> bool {
        self.replicas
            .get(&shard)
            .is_some_and(|r| r.raft.role() == Role::Leader)
    }

    pub fn is_quiet(&self, shard: ShardId) -> bool {
        self.replicas.contains_key(&shard) && !self.ticking.contains(&shard)
    }

    /// The index this node's replica of `shard` has applied.
    pub fn applied_index(&self, shard: ShardId) -> Option<rshard_raft::Index> {
        self.replicas.get(&shard).map(|r| r.raft.applied_index())
    }

    /// A one-line account of this node's replica of `shard`, for operators and failing
    /// tests: role, term, indexes, and as leader each follower's progress.
    /// As leader of `shard`: how replication to `node` stands (its progress state, the
    /// index it matches, and the commit index).
    pub fn follower_progress(
        &self,
        shard: ShardId,
        node: NodeId,
    ) -> Option<(rshard_raft::progress::ProgressState, u64, u64)> {
        let raft = &self.replicas.get(&shard)?.raft;
        let progress = raft.progress(node)?;
        Some((progress.state, progress.matched, raft.commit_index()))
    }

    pub fn replica_status(&self, shard: ShardId) -> Option<String> {
        let replica = self.replicas.get(&shard)?;
        let raft = &replica.raft;
        let mut status = format!(
            "{:?} term {} leader {:?} commit {} applied {} last {} installing {} quiet {}",
            raft.role(),
            raft.term(),
            raft.leader(),
            raft.commit_index(),
            raft.applied_index(),
            raft.last_index(),
            self.snapshots.is_installing(shard),
            raft.is_quiesced(),
        );
        if raft.role() == Role::Leader {
            for member in raft.conf_state().members() {
                if let Some(progress) = raft.progress(member).filter(|_| member != self.config.node)
                {
                    status.push_str(&format!(
                        "; {member}: {:?} match {} next {}",
                        progress.state, progress.matched, progress.next
                    ));
                }
            }
        }
        Some(status)
    }

    /// True if this node leads `shard` and `node`, a learner of it, is close enough to
    /// the commit index to be promoted (see [`super::LEARNER_CATCH_UP_SLACK_ENTRIES`]) and
    /// its node is alive (node-level liveness: a learner that died a moment ago can still
    /// look caught up to its group, which may be quiet).
    pub fn learner_caught_up(&self, shard: ShardId, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|peer| !peer.dead)
            && self
                .replicas
                .get(&shard)
                .is_some_and(|replica| replica.learner_caught_up(node))
    }

    pub fn descriptor(&self, shard: ShardId) -> Option<&ShardDescriptor> {
        self.replicas.get(&shard).map(|r| &r.descriptor)
    }

    /// One iteration; returns the requests answered in it.
    pub fn iterate(&mut self) -> Vec<Answer> {
        let mut early = Vec::new();
        let mut answers = self.iterate_releasing(&mut |answers| early.extend(answers));
        early.append(&mut answers);
        early
    }

    /// One iteration, handing `release` the answers of applied commands as soon as their
    /// batch is written, before its sync (see the module documentation); returns the other
    /// requests answered in it.
    pub fn iterate_releasing(&mut self, release: &mut dyn FnMut(Vec<Answer>)) -> Vec<Answer> {
        if let Some(reason) = self.stopped.clone() {
            self.refuse_inbox(&reason);
            return std::mem::take(&mut self.answers);
        }
        self.counters.iterations += 1;
        if let Err(error) = self.run_iteration(release) {
            self.stop(error);
        }
        self.counters.ticking_groups = self.ticking.len() as u64;
        self.counters.quiet_groups = (self.replicas.len() - self.ticking.len()) as u64;
        std::mem::take(&mut self.answers)
    }

    fn run_iteration(&mut self, release: &mut dyn FnMut(Vec<Answer>)) -> Result<(), StoreError> {
        let mut batch = self.store.batch();
        let installed = self.snapshots.step_installs(
            &self.store,
            &mut batch,
            &self.config,
            &mut self.counters,
        )?;
        let inputs = self.inbox.len().min(self.config.max_inputs_per_iteration);
        self.pending_requests = None;
        for _ in 0..inputs {
            if let Some(input) = self.inbox.pop_front() {
                self.handle_input(input, &mut batch)?;
            }
        }
        let mut readies = Vec::new();
        let mut outbox: BTreeMap<NodeId, Frame> = std::mem::take(&mut self.held);
        self.counters.dirty_groups += self.dirty.len() as u64;
        for group in std::mem::take(&mut self.dirty) {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            if self.snapshots.is_installing(group) {
                continue;
            }
            replica.propose_batched(&mut self.answers)?;
            if self.config.quiesce
                && replica.raft.role() == Role::Leader
                && !replica.raft.is_quiesced()
            {
                replica.raft.quiesce();
            }
            if !replica.raft.has_ready() {
                self.note_quiescence(group);
                continue;
            }
            let mut ready = replica.raft.ready().map_err(raft_failure(group))?;
            if ready
                .soft_state
                .is_some_and(|soft| soft.role != Role::Leader)
            {
                replica.lost_leadership(&mut self.answers);
            }
            for message in std::mem::take(&mut ready.messages) {
                self.route(group, message, &mut outbox)?;
            }
            self.counters.readies += 1;
            readies.push((group, ready));
        }
        self.snapshots.pump(
            &mut self.replicas,
            &mut self.transport,
            &self.config,
            &mut self.counters,
        )?;
        self.send_frames(outbox);
        let mut applier = Applier::new(&self.store);
        let mut entries = 0;
        let mut installs = Vec::new();
        let mut split_off = Vec::new();
        let mut merged = Vec::new();
        let mut installed_ranges = Vec::new();
        let mut narrowed = Vec::new();
        let mut membership_changed = Vec::new();
        for (group, ready) in &readies {
            if let Some(replica) = self.replicas.get_mut(group) {
                entries += ready.entries.len();
                let before = ready.snapshot.as_ref().map(|_| replica.descriptor.clone());
                let conf_version = replica.descriptor.epoch.conf_version;
                // Only a ready that applies a membership change needs the members before it.
                let changes_members = ready
                    .committed_entries
                    .iter()
                    .any(|entry| matches!(entry.payload, rshard_raft::Payload::ConfChange(_)));
                let members_before: Vec<NodeId> = if changes_members {
                    replica.descriptor.members().collect()
                } else {
                    Vec::new()
                };
                let rights = merge_rights(ready);
                let frozen_here: BTreeMap<ShardId, ShardDescriptor> = if rights.is_empty() {
                    BTreeMap::new()
                } else {
                    // Another replica of this map than the one borrowed for staging: taken
                    // out and put back around the lookup.
                    let replica = self.replicas.remove(group);
                    // One still installing has not all its data in: not frozen as far as
                    // a merge is concerned.
                    let found = rights
                        .into_iter()
                        .filter(|right| !self.snapshots.is_installing(*right))
                        .filter_map(|right| {
                            let frozen = self.replicas.get(&right)?.descriptor.clone();
                            Some((right, frozen))
                        })
                        .collect();
                    if let Some(replica) = replica {
                        self.replicas.insert(*group, replica);
                    }
                    found
                };
                let Some(replica) = self.replicas.get_mut(group) else {
                    continue;
                };
                let install = replica.stage(
                    ready,
                    &mut applier,
                    &mut batch,
                    &mut self.unsynced_answers,
                    &mut split_off,
                    &mut merged,
                    &frozen_here,
                )?;
                if let Some(marker) = install {
                    installed_ranges.push(replica.descriptor.clone());
                    if let Some(before) = before {
                        // What the shard's range was and no longer is.
                        narrowed.extend(KeySpan::of(&before).without(&replica.descriptor));
                    }
                    self.snapshots.take_completed(*group, marker.staging)?;
                    installs.push((*group, marker));
                } else if !ready.committed_entries.is_empty() {
                    self.counters.compactions += u64::from(compact_if_long(
                        replica,
                        self.config.max_log_entries,
                        &mut batch,
                    )?);
                }
                self.counters.entries_applied += ready.committed_entries.len() as u64;
                if replica.descriptor.epoch.conf_version != conf_version {
                    membership_changed.push(*group);
                    if replica.raft.role() == Role::Leader {
                        // The nodes this change removed hear nothing more from the group;
                        // tell them for a while (see `removed_members`).
                        let removed = members_before
                            .into_iter()
                            .filter(|node| !replica.descriptor.members().any(|m| m == *node));
                        let ticks = self.config.election_timeout_ticks.saturating_mul(10);
                        for node in removed {
                            if self.removed_members.len() < MAX_REMOVED_MEMBERS_TOLD {
                                self.removed_members.insert((*group, node), ticks);
                            }
                        }
                    }
                }
                for member in replica.descriptor.members() {
                    if member != self.config.node {
                        self.peers.entry(member).or_default();
                    }
                }
            }
        }
        applier.finish(&mut batch);
        if !narrowed.is_empty() {
            // A snapshot took a range from a shard here: it split while this replica was
            // behind, so the shards split off never reached this node. Their leaders may
            // create them here by snapshot, as voters (see `Snapshots::begin_receive`).
            self.snapshots.split_gaps.extend(narrowed);
            batch.set_split_gaps(&self.snapshots.split_gaps)?;
        }
        for installed in &installed_ranges {
            // A replica here frozen for its merge into a shard whose snapshot now takes part
            // of its range: the merge is in the snapshot (before the merge, the shard ends
            // where the frozen one starts).
            merged.extend(
                self.replicas
                    .values()
                    .filter(|other| {
                        other.descriptor.merging_into == Some(installed.id)
                            && other.descriptor.overlaps(installed)
                    })
                    .map(|other| other.descriptor.id),
            );
        }
        if !merged.is_empty() {
            // Retired once this batch is durable; until then, a crash finds them here.
            batch.set_retiring(&merged)?;
        }
        let created = self.stage_split_off(split_off, &mut batch)?;
        let write = !batch.is_empty();
        if write {
            self.store.write(batch)?;
        }
        self.start_split_off(created)?;
        // The commands applied in this batch were committed, so their entries are already
        // durable on a quorum (and here: the core hands out only entries persisted here);
        // a crash before the sync below loses the applied state, never the entries, and the
        // restart applies them again with the same results.
        let applied_answers = std::mem::take(&mut self.unsynced_answers);
        if !applied_answers.is_empty() {
            release(applied_answers);
        }
        if write {
            self.store.sync()?;
            self.counters.syncs += 1;
            self.counters.entries_persisted += entries as u64;
        }
        self.snapshots.finish_installs(&installed);
        self.counters.snapshots_installed += installed.len() as u64;
        for group in installed {
            self.ticking.insert(group);
            self.dirty.insert(group);
            self.serve_reads(group)?;
        }
        self.snapshots.after_commit(installs, &mut self.transport);
        for (group, mut ready) in readies {
            self.finish_ready(group, &mut ready)?;
            if let Some(replica) = self.replicas.get_mut(&group) {
                replica.raft.advance(ready).map_err(raft_failure(group))?;
                if replica.raft.has_ready() {
                    self.dirty.insert(group);
                }
            }
            self.serve_reads(group)?;
            self.note_quiescence(group);
        }
        // Durable: the messages that waited for the sync go now rather than with the next
        // iteration's frames, since a follower's acknowledgement is on every write's path.
        let held = std::mem::take(&mut self.held);
        self.send_frames(held);
        for group in membership_changed {
            self.destroy_if_removed(group)?;
        }
        for notice in std::mem::take(&mut self.removal_notices) {
            self.on_removed_notice(notice)?;
        }
        self.retire_merged(merged)?;
        Ok(())
    }

    /// Destroys this node's replica of `group` if its applied membership (committed, so
    /// final) leaves this node out, unless its log holds membership changes not applied yet:
    /// one may add this node back, and it may have acknowledged entries as a voter of that
    /// configuration, so it stays until they apply. True if it was destroyed.
    fn destroy_if_removed(&mut self, group: GroupId) -> Result<bool, StoreError> {
        let Some(replica) = self.replicas.get(&group) else {
            return Ok(false);
        };
        if self.snapshots.is_installing(group)
            || is_member(replica.raft.conf_state(), self.config.node)
            || replica.unapplied_conf_changes()? > 0
        {
            return Ok(false);
        }
        let conf_version = replica.descriptor.epoch.conf_version;
        self.destroy_replica(group, conf_version)?;
        Ok(true)
    }

    /// A peer's replica of `notice.group` says this node is not a member as of
    /// `notice.conf_version`. This replica is destroyed if it is behind that version by
    /// more than the membership changes its log holds: then no configuration this replica
    /// could still reach (and none it acknowledged entries in) has it as a member beyond
    /// the one the notice names. A leader never is (it would know its own membership).
    fn on_removed_notice(&mut self, notice: RemovedNotice) -> Result<(), StoreError> {
        let Some(replica) = self.replicas.get(&notice.group) else {
            return Ok(());
        };
        // A frozen replica's members are final, and its data is what its left neighbour
        // takes over when the merge applies here: it goes only by `retire_merged`.
        if self.snapshots.is_installing(notice.group)
            || replica.raft.role() == Role::Leader
            || replica.descriptor.merging_into.is_some()
        {
            return Ok(());
        }
        let applied = replica.descriptor.epoch.conf_version;
        if applied >= notice.conf_version
            || applied + replica.unapplied_conf_changes()? > notice.conf_version
        {
            return Ok(());
        }
        self.counters.replicas_destroyed_by_notice += 1;
        self.destroy_replica(notice.group, notice.conf_version)
    }

    /// Removes the replica of `group` from this node: answers what waits on it, ends its
    /// transfers, deletes its log and Raft state and leaves a tombstone at `conf_version`
    /// (one committed batch), and queues its data range for clearing in bounded steps, less
    /// the ranges other replicas here hold.
    fn destroy_replica(&mut self, group: GroupId, conf_version: u64) -> Result<(), StoreError> {
        let Some((replica, clear)) = self.take_out(group) else {
            return Ok(());
        };
        let mut batch = self.store.batch();
        batch.destroy_group(replica.raft.storage(), conf_version)?;
        self.snapshots.pending_clears.extend(clear);
        batch.set_pending_clears(&self.snapshots.pending_clears)?;
        self.store.commit(batch)?;
        self.counters.syncs += 1;
        self.snapshots.tombstones.insert(group, conf_version);
        self.counters.replicas_destroyed += 1;
        Ok(())
    }

    /// Takes the replica of `group` out of the driver (what waits on it is answered, its
    /// transfers end) for destroying or retiring it; with it, the parts of its range no
    /// other replica here holds.
    fn take_out(&mut self, group: GroupId) -> Option<(Replica, Vec<KeySpan>)> {
        let mut replica = self.replicas.remove(&group)?;
        replica.fail_all(&RequestError::UnknownShard(group), &mut self.answers);
        self.ticking.remove(&group);
        self.dirty.remove(&group);
        self.snapshots.forget_group(group);
        let mut rest = vec![KeySpan::of(&replica.descriptor)];
        for other in self.replicas.values() {
            rest = rest
                .iter()
                .flat_map(|span| span.without(&other.descriptor))
                .collect();
        }
        Some((replica, rest))
    }

    fn finish_ready(&mut self, group: GroupId, ready: &mut Ready) -> Result<(), StoreError> {
        for message in std::mem::take(&mut ready.persisted_messages) {
            let to = message.to;
            self.held
                .entry(to)
                .or_insert_with(|| Frame::new(self.config.node, to))
                .push(group, message);
        }
        if let Some(replica) = self.replicas.get_mut(&group) {
            for read in std::mem::take(&mut ready.read_states) {
                let bytes: [u8; 8] = read.context.as_slice().try_into().unwrap_or_default();
                let request = RequestId::from_be_bytes(bytes);
                if let Some(pending) = replica.unconfirmed_reads.remove(&request) {
                    replica.confirmed_reads.push((read.index, pending));
                }
            }
        }
        Ok(())
    }

    /// Serves the confirmed reads whose index the group applied. Not while it installs a
    /// snapshot: its applied index is the snapshot's, its data not yet (a deposed leader's
    /// confirmed reads would read the old state).
    fn serve_reads(&mut self, group: GroupId) -> Result<(), StoreError> {
        if self.snapshots.is_installing(group) {
            return Ok(());
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return Ok(());
        };
        let applied = replica.raft.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut replica.confirmed_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        replica.confirmed_reads = waiting;
        for (_, PendingRead { request, kind }) in ready {
            let response = match kind {
                ReadKind::Key(key) => Response::Value(kv::read_committed(&self.store, &key)?),
                ReadKind::Range { start, end, limit } => {
                    let (items, more) = kv::scan_committed(
                        &self.store,
                        &start,
                        end.as_deref(),
                        limit,
                        super::MAX_SCAN_BYTES,
                    )?;
                    Response::Items { items, more }
                }
            };
            self.answers.push((request, Ok(response)));
        }
        Ok(())
    }

    /// Keeps the ticking set in step with the group's quiescence (an installing group does
    /// not tick either).
    fn note_quiescence(&mut self, group: GroupId) {
        match self.replicas.get(&group) {
            Some(_) if self.snapshots.is_installing(group) => self.ticking.remove(&group),
            Some(replica) if replica.raft.is_quiesced() => self.ticking.remove(&group),
            Some(_) => self.ticking.insert(group),
            None => false,
        };
    }

    fn handle_input(&mut self, input: Input, batch: &mut NodeBatch) -> Result<(), StoreError> {
        match input {
            Input::Tick => self.tick(),
            Input::Frame(frame) => self.receive(frame),
            Input::Snapshot(message) => {
                self.snapshot_inbox_bytes = self
                    .snapshot_inbox_bytes
                    .saturating_sub(message.cost_bytes());
                self.receive_snapshot_message(message, batch)
            }
            Input::Request { id, request } => self.take_request(id, request),
            Input::CreateShard(descriptor) => self.create_shard(descriptor),
            Input::TransferLeader { shard, to } => {
                if self.snapshots.is_installing(shard) {
                    return Ok(());
                }
                if let Some(replica) = self.replicas.get_mut(&shard) {
                    // A refused transfer changes nothing; the caller sees the leader stay.
                    let _refused = replica.raft.transfer_leader(to);
                    self.dirty.insert(shard);
                }
                Ok(())
            }
        }
    }

    fn create_shard(&mut self, descriptor: ShardDescriptor) -> Result<(), StoreError> {
        let group = descriptor.id;
        if self.replicas.contains_key(&group) || !descriptor.replicas.contains(&self.config.node) {
            return Ok(());
        }
        let mut batch = self.store.batch();
        batch.bootstrap(
            group,
            ConfState::with_voters(descriptor.replicas.iter().copied()),
        )?;
        batch.set_descriptor(group, &descriptor)?;
        self.store.commit(batch)?;
        self.counters.syncs += 1;
        self.load_replica(group)
    }

    /// Bootstraps, in the batch that applies the split, this node's replica of each shard
    /// split off here: the same first state on every replica (the split's membership, an
    /// empty log), as for a shard created at bootstrap. Skipped where the replica exists.
    /// Returns the shards to start once the batch is written.
    fn stage_split_off(
        &mut self,
        split_off: Vec<super::replica::SplitOff>,
        batch: &mut NodeBatch,
    ) -> Result<Vec<GroupId>, StoreError> {
        let mut created = Vec::new();
        for (descriptor, conf_state) in split_off {
            let group = descriptor.id;
            if let Some(existing) = self.replicas.get(&group) {
                if existing.descriptor.start_key == descriptor.start_key {
                    continue; // The same shard is here already: nothing to create.
                }
                // Ids are handed out once; another shard under this id means the store
                // or the cluster state is not what it should be. Stop rather than leave
                // the range without a replica.
                return Err(StoreError::Corrupt {
                    group,
                    what: "split",
                    detail: format!(
                        "the new shard's id is taken here by a shard starting at {:?}",
                        existing.descriptor.start_key
                    ),
                });
            }
            if created.contains(&group) {
                continue;
            }
            batch.bootstrap(group, conf_state)?;
            batch.set_descriptor(group, &descriptor)?;
            self.counters.shards_split_off += 1;
            created.push(group);
        }
        Ok(created)
    }

    /// Starts the replicas [`Self::stage_split_off`] wrote. Where this node leads the shard
    /// that split, its new replica campaigns at once rather than after an election timeout.
    fn start_split_off(&mut self, created: Vec<GroupId>) -> Result<(), StoreError> {
        for group in created {
            self.load_replica(group)?;
            let leads_left = self.replicas.values().any(|replica| {
                replica.raft.role() == Role::Leader
                    && replica.descriptor.id != group
                    && self.replicas.get(&group).is_some_and(|right| {
                        right.descriptor.start_key == replica.descriptor.end_key
                    })
            });
            if let Some(right) = self.replicas.get_mut(&group) {
                if leads_left {
                    // Refused only if it cannot vote here; then another member campaigns.
                    let _refused = right.raft.campaign();
                }
            }
        }
        Ok(())
    }

    fn take_request(&mut self, id: RequestId, request: Request) -> Result<(), StoreError> {
        let shard = request.shard();
        if let Request::Split(split) = &request {
            if let Some(done) = self.split_already_done(split) {
                self.answers.push((id, Ok(done)));
                return Ok(());
            }
        }
        match &request {
            Request::Freeze(freeze) => {
                if let Some(frozen) = self.replicas.get(&freeze.shard).filter(|r| {
                    r.raft.role() == Role::Leader && r.descriptor.merging_into == Some(freeze.into)
                }) {
                    self.answers
                        .push((id, Ok(Response::Frozen(frozen.descriptor.clone()))));
                    return Ok(());
                }
            }
            Request::Merge(merge) => {
                if let Some(answer) = self.check_merge(merge) {
                    self.answers.push((id, answer));
                    return Ok(());
                }
            }
            _ => {}
        }
        let replicas = &self.replicas;
        let pending = *self
            .pending_requests
            .get_or_insert_with(|| replicas.values().map(Replica::pending_requests).sum());
        let Some(replica) = self.replicas.get_mut(&shard) else {
            self.answers
                .push((id, Err(RequestError::UnknownShard(shard))));
            return Ok(());
        };
        if pending >= self.config.max_pending_requests {
            self.answers
                .push((id, Err(RequestError::Busy("too many pending requests"))));
            return Ok(());
        }
        match replica.take_request(id, request)? {
            Ok(()) => self.pending_requests = Some(pending + 1),
            Err(error) => self.answers.push((id, Err(error))),
        }
        if replica.batch_is_full() {
            replica.propose_batched(&mut self.answers)?;
        }
        self.dirty.insert(shard);
        Ok(())
    }

    /// The answer to a merge request before it is proposed, if it gets one: done already
    /// (the shard, led here, covers the right shard's range), or refused because this
    /// node's replica of the right shard is not frozen as the merge says (the merge would
    /// then fail here when it applies; placement waits for every replica first).
    fn check_merge(
        &self,
        merge: &crate::kv::MergeCommand,
    ) -> Option<Result<Response, RequestError>> {
        let left = self.replicas.get(&merge.shard)?;
        let right = &merge.right;
        if left.raft.role() == Role::Leader
            && left.descriptor.covers(right)
            && left.descriptor.epoch.version > right.epoch.version
        {
            return Some(Ok(Response::Merged(left.descriptor.clone())));
        }
        let frozen_here = self
            .replicas
            .get(&right.id)
            .filter(|_| !self.snapshots.is_installing(right.id))
            .map(|r| &r.descriptor);
        (frozen_here != Some(right)).then(|| {
            Err(RequestError::Refused(crate::kv::KvError::MergeRefused(
                format!(
                    "this node's replica of shard {} is not frozen for the merge yet",
                    right.id
                ),
            )))
        })
    }

    /// Retires this node's replicas of `groups`, shards merged into a neighbour here (the
    /// merge applied, or a snapshot of the merged shard is being installed): their log and
    /// Raft state go with a tombstone no snapshot passes, in one committed batch that also
    /// empties the stored list of groups to retire. Their data stays where a replica here
    /// holds the range now (the merged shard, and any shard split off it since); the rest
    /// is queued for clearing, as for a removed replica, and becomes a split gap: only a
    /// snapshot of a merged shard that split again since leaves such a rest, and the
    /// shards split off it are this node's to receive by snapshot.
    fn retire_merged(&mut self, groups: Vec<GroupId>) -> Result<(), StoreError> {
        if groups.is_empty() {
            return Ok(());
        }
        let mut batch = self.store.batch();
        for group in groups {
            let Some((replica, clear)) = self.take_out(group) else {
                continue;
            };
            self.snapshots.split_gaps.extend(clear.iter().cloned());
            self.snapshots.pending_clears.extend(clear);
            batch.destroy_group(replica.raft.storage(), u64::MAX)?;
            self.snapshots.tombstones.insert(group, u64::MAX);
            self.counters.replicas_merged_away += 1;
        }
        batch.set_pending_clears(&self.snapshots.pending_clears)?;
        batch.set_split_gaps(&self.snapshots.split_gaps)?;
        batch.set_retiring(&[])?;
        self.store.commit(batch)?;
        self.counters.syncs += 1;
        Ok(())
    }

    /// The answer to a split that already applied here: the shard ends at its key and this
    /// node holds the new shard from there (a retry of the same operation).
    fn split_already_done(&self, split: &crate::kv::SplitCommand) -> Option<Response> {
        let left = self.replicas.get(&split.shard)?;
        let right = self.replicas.get(&split.new_shard)?;
        (left.raft.role() == Role::Leader
            && left.descriptor.end_key == split.at
            && right.descriptor.start_key == split.at)
            .then(|| Response::Split {
                left: left.descriptor.clone(),
                right: right.descriptor.clone(),
            })
    }

    fn tick(&mut self) -> Result<(), StoreError> {
        self.snapshots
            .tick(&mut self.replicas, &self.config, &mut self.counters);
        self.counters.ticks += 1;
        self.counters.group_ticks += self.ticking.len() as u64;
        let timeout = self.config.election_timeout_ticks.max(1);
        let mut asks = Vec::new();
        for &group in &self.ticking {
            if let Some(replica) = self.replicas.get_mut(&group) {
                replica.raft.tick().map_err(raft_failure(group))?;
                self.dirty.insert(group);
                // A replica that cannot campaign waits for a leader to speak; one that has
                // heard none for an election timeout asks its voters (see
                // `Frame::leaderless`). Messages from its leader reset the count (`step`).
                if replica.raft.is_promotable() || self.snapshots.is_installing(group) {
                    replica.leaderless_ticks = 0;
                    continue;
                }
                replica.leaderless_ticks += 1;
                if replica.leaderless_ticks.is_multiple_of(timeout) {
                    let conf = replica.raft.conf_state();
                    let voters = conf.voters.union(&conf.voters_outgoing);
                    asks.extend(voters.map(|&voter| (voter, group)));
                }
            }
        }
        for (voter, group) in asks {
            if voter != self.config.node {
                self.held
                    .entry(voter)
                    .or_insert_with(|| Frame::new(self.config.node, voter))
                    .push_leaderless(group);
                self.counters.leaderless_asks_sent += 1;
            }
        }
        let mut newly_dead = Vec::new();
        for (&node, peer) in &mut self.peers {
            peer.ticks_since_heard = peer.ticks_since_heard.saturating_add(1);
            if !peer.dead && peer.ticks_since_heard > self.config.peer_dead_after_ticks {
                peer.dead = true;
                newly_dead.push(node);
            }
        }
        for node in newly_dead {
            self.counters.peers_declared_dead += 1;
            self.wake_groups_led_by(node);
        }
        let interval = u64::from(self.config.liveness_interval_ticks.max(1));
        if self.counters.ticks.is_multiple_of(interval) {
            for &node in self.peers.keys() {
                self.held
                    .entry(node)
                    .or_insert_with(|| Frame::new(self.config.node, node));
            }
            let told: Vec<(GroupId, NodeId)> = self.removed_members.keys().copied().collect();
            for (group, node) in told {
                let removed = self
                    .replicas
                    .get(&group)
                    .is_some_and(|replica| !is_member(replica.raft.conf_state(), node));
                if removed {
                    self.notify_removed(group, node);
                }
            }
        }
        self.removed_members.retain(|_, ticks| {
            *ticks = ticks.saturating_sub(1);
            *ticks > 0
        });
        Ok(())
    }

    /// A dead peer's quiet groups can no longer be trusted to be led: wake them so their
    /// election timers run. Groups led elsewhere stay quiet.
    fn wake_groups_led_by(&mut self, node: NodeId) {
        for (&group, replica) in &mut self.replicas {
            if replica.raft.is_quiesced() && replica.raft.leader() == Some(node) {
                replica.raft.wake();
                self.ticking.insert(group);
                self.dirty.insert(group);
                self.counters.groups_woken_by_dead_peer += 1;
            }
        }
    }

    /// `from`'s replica of `group` hears from no leader and cannot campaign (see
    /// [`Frame::leaderless`]). If `from` is no member here, it is told so; if this replica
    /// leads, quietly, it wakes: the group quiesces again at once if its followers still
    /// look caught up, and the quiescing heartbeat names the leader (else it ticks and
    /// heartbeats). Any other replica ignores it: `from` asks every voter.
    fn on_leaderless(&mut self, from: NodeId, group: GroupId) {
        if self.snapshots.is_installing(group) {
            return;
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        if !is_member(replica.raft.conf_state(), from) {
            self.notify_removed(group, from);
        } else if replica.raft.role() == Role::Leader && replica.raft.is_quiesced() {
            replica.raft.wake();
            self.ticking.insert(group);
            self.dirty.insert(group);
            self.counters.groups_woken_by_leaderless += 1;
        }
    }

    /// Tells `to` that this replica's membership of `group` leaves it out.
    fn notify_removed(&mut self, group: GroupId, to: NodeId) {
        let Some(replica) = self.replicas.get(&group) else {
            return;
        };
        let notice = RemovedNotice {
            group,
            conf_version: replica.descriptor.epoch.conf_version,
        };
        self.held
            .entry(to)
            .or_insert_with(|| Frame::new(self.config.node, to))
            .push_removed(notice);
        self.counters.removal_notices_sent += 1;
    }

    fn receive(&mut self, mut frame: Frame) -> Result<(), StoreError> {
        if frame.to != self.config.node || frame.check().is_err() {
            self.counters.malformed_messages += 1;
            return Ok(());
        }
        self.heard_from(frame.from);
        self.counters.peer(frame.from).frames_received += 1;
        // Acted on once this iteration's batch is written: destroying commits a batch of
        // its own, which must come after the iteration's (it records the pending clears).
        self.removal_notices.append(&mut frame.removed);
        for group in std::mem::take(&mut frame.leaderless) {
            self.on_leaderless(frame.from, group);
        }
        for (group, message) in frame.into_messages() {
            if matches!(message.kind, MessageKind::InstallSnapshot { .. }) {
                // Snapshots arrive only as chunks, whose last one hands this to Raft.
                self.counters.malformed_messages += 1;
                continue;
            }
            self.step(group, message)?;
        }
        Ok(())
    }

    fn heard_from(&mut self, node: NodeId) {
        let peer = self.peers.entry(node).or_default();
        peer.ticks_since_heard = 0;
        peer.dead = false;
    }

    /// Hands one message to its group's Raft core (not while the group installs).
    fn step(&mut self, group: GroupId, message: Message) -> Result<(), StoreError> {
        if self.snapshots.is_installing(group) {
            self.counters.messages_while_installing += 1;
            return Ok(());
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            self.counters.messages_for_unknown_groups += 1;
            self.reject_append_for_unknown_group(group, &message);
            return Ok(());
        };
        if !is_member(replica.raft.conf_state(), message.from) {
            // A replica removed while cut off (or one whose removal this replica applied
            // first): tell it, so it stops campaigning and goes. Stepped anyway; the core
            // ignores what a non-member says.
            self.notify_removed(group, message.from);
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return Ok(());
        };
        let from = message.from;
        // The answer a node gives for a group it holds no replica of (see
        // `reject_append_for_unknown_group`): whatever it acknowledged is gone.
        if let MessageKind::AppendResponse {
            result:
                rshard_raft::AppendResult::Rejected {
                    rejected_index,
                    hint_index: 0,
                    hint_term: 0,
                },
            ..
        } = message.kind
        {
            replica
                .raft
                .report_replica_lost(from, message.term, rejected_index);
        }
        match replica.raft.step(message) {
            Ok(()) => {
                if replica.raft.leader() == Some(from) {
                    replica.leaderless_ticks = 0;
                }
            }
            Err(rshard_raft::Error::Storage(error)) => {
                return Err(StoreError::Engine(error.to_string()))
            }
            Err(_) => self.counters.malformed_messages += 1,
        }
        self.dirty.insert(group);
        Ok(())
    }

    /// A leader appending to a group this node holds no replica of (a replica just added
    /// by a membership change) is told the log here is empty, so it falls back to a
    /// snapshot, whose first chunk creates the replica. A rejection promises nothing, so
    /// answering a stale or foreign leader is harmless.
    fn reject_append_for_unknown_group(&mut self, group: GroupId, message: &Message) {
        let MessageKind::Append { prev_index, .. } = message.kind else {
            return;
        };
        if prev_index == 0 {
            return; // Nothing to reject below.
        }
        let rejection = Message {
            from: self.config.node,
            to: message.from,
            term: message.term,
            kind: MessageKind::AppendResponse {
                result: rshard_raft::AppendResult::Rejected {
                    rejected_index: prev_index,
                    hint_index: 0,
                    hint_term: 0,
                },
                commit: 0,
            },
        };
        let to = message.from;
        self.held
            .entry(to)
            .or_insert_with(|| Frame::new(self.config.node, to))
            .push(group, rejection);
    }

    fn receive_snapshot_message(
        &mut self,
        message: SnapshotMessage,
        batch: &mut NodeBatch,
    ) -> Result<(), StoreError> {
        if message.to() != self.config.node {
            self.counters.malformed_messages += 1;
            return Ok(());
        }
        self.heard_from(message.from());
        match message {
            SnapshotMessage::Chunk(chunk) => {
                let completed = self.snapshots.on_chunk(
                    chunk,
                    &self.replicas,
                    batch,
                    &self.config,
                    &mut self.counters,
                );
                if let Some((group, install)) = completed {
                    if !self.replicas.contains_key(&group) {
                        self.create_replica_for_snapshot(group, &install, batch)?;
                    }
                    self.step(group, install)?;
                }
            }
            SnapshotMessage::Ack(ack) => {
                self.snapshots
                    .on_ack(ack, &mut self.replicas, &self.config, &mut self.counters)
            }
        }
        Ok(())
    }

    /// Starts an empty replica for the snapshot that will give it its state (its descriptor
    /// is the manifest's; it is persisted with the snapshot, so a crash before leaves
    /// nothing behind but staging, which is discarded).
    fn create_replica_for_snapshot(
        &mut self,
        group: GroupId,
        install: &Message,
        batch: &mut NodeBatch,
    ) -> Result<(), StoreError> {
        let MessageKind::InstallSnapshot { snapshot } = &install.kind else {
            return Ok(());
        };
        let manifest =
            super::snapshot::SnapshotManifest::decode(&snapshot.data).map_err(|detail| {
                StoreError::Corrupt {
                    group,
                    what: "snapshot manifest",
                    detail,
                }
            })?;
        self.counters.replicas_created_by_snapshot += 1;
        let gaps = &mut self.snapshots.split_gaps;
        if gaps.iter().any(|gap| gap.covers(&manifest.descriptor)) {
            // Held here from now on: the gap no longer covers its range.
            *gaps = gaps
                .iter()
                .flat_map(|gap| gap.without(&manifest.descriptor))
                .collect();
            batch.set_split_gaps(gaps)?;
        }
        self.start_replica(group, manifest.descriptor)
    }

    /// Adds a message to its peer's frame; a snapshot starts a chunked transfer instead.
    fn route(
        &mut self,
        group: GroupId,
        message: Message,
        outbox: &mut BTreeMap<NodeId, Frame>,
    ) -> Result<(), StoreError> {
        if matches!(message.kind, MessageKind::InstallSnapshot { .. }) {
            if let Some(replica) = self.replicas.get_mut(&group) {
                self.snapshots.start_send(
                    &self.store,
                    replica,
                    message,
                    &self.config,
                    &mut self.counters,
                )?;
            }
            return Ok(());
        }
        let to = message.to;
        outbox
            .entry(to)
            .or_insert_with(|| Frame::new(self.config.node, to))
            .push(group, message);
        Ok(())
    }

    fn send_frames(&mut self, outbox: BTreeMap<NodeId, Frame>) {
        for (node, frame) in outbox {
            let counters = self.counters.peer(node);
            let heartbeats = (frame.heartbeats.len() + frame.heartbeat_responses.len()) as u64;
            let messages = frame.messages.len() as u64;
            let groups: BTreeSet<GroupId> = frame.messages.iter().map(|m| m.group).collect();
            let has_heartbeats = frame.has_heartbeats();
            match self.transport.send(frame) {
                Ok(()) => {
                    counters.frames_sent += 1;
                    counters.heartbeats_sent += heartbeats;
                    counters.messages_sent += messages;
                    counters.heartbeat_frames_sent += u64::from(has_heartbeats);
                }
                Err(_) => {
                    counters.frames_dropped += 1;
                    for group in groups {
                        if let Some(replica) = self.replicas.get_mut(&group) {
                            replica.raft.report_unreachable(node);
                        }
                    }
                }
            }
        }
    }

    fn refuse_inbox(&mut self, reason: &str) {
        for input in std::mem::take(&mut self.inbox) {
            if let Input::Request { id, .. } = input {
                self.answers.push((id, Err(stop_error(reason))));
            }
        }
    }

    /// Storage failed: answer everything waiting, and never touch storage again.
    fn stop(&mut self, error: StoreError) {
        let reason = error.to_string();
        self.fail_waiting(&reason);
        self.held.clear();
        self.dirty.clear();
        self.stopped = Some(reason);
    }

    /// The node shuts down: answers every request it holds (proposed writes
    /// `OutcomeUnknown`, the rest `Stopped`) and returns the answers. The driver must not be
    /// iterated afterwards.
    pub fn shut_down(&mut self, reason: &str) -> Vec<Answer> {
        self.fail_waiting(reason);
        std::mem::take(&mut self.answers)
    }

    /// Answers every waiting request because the driver stops for `reason`. A write that
    /// reached Raft is `OutcomeUnknown`, never `Stopped`: its entry may be on a quorum and
    /// apply without this node, so a client must not blindly retry it.
    fn fail_waiting(&mut self, reason: &str) {
        for (request, _) in std::mem::take(&mut self.unsynced_answers) {
            self.answers
                .push((request, Err(RequestError::OutcomeUnknown)));
        }
        let failure = stop_error(reason);
        for replica in self.replicas.values_mut() {
            replica.fail_all(&failure, &mut self.answers);
        }
        self.refuse_inbox(reason);
    }
}

/// What the state keyspace says of the groups: one scan.
#[derive(Default)]
struct StoredGroups {
    /// Groups with a replica here (those with a stored descriptor).
    groups: Vec<GroupId>,
    /// Of those, the ones with an install marker.
    installing: Vec<GroupId>,
    /// Groups whose replica was removed here, with the tombstone's conf version.
    tombstones: BTreeMap<GroupId, u64>,
}

fn stored_groups(store: &NodeStore) -> Result<StoredGroups, StoreError> {
    let mut stored = StoredGroups::default();
    let mut corrupt = None;
    let range = KeyRange {
        start: &[],
        end: None,
    };
    store.scan(
        Space::State,
        range,
        ScanOrder::Ascending,
        &mut |key, value| {
            if let (9, Some(&tag), Some(id)) = (key.len(), key.get(8), key.get(..8)) {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(id);
                let group = GroupId::from_be_bytes(bytes);
                match tag {
                    keys::DESCRIPTOR_TAG => stored.groups.push(group),
                    keys::INSTALL_TAG => stored.installing.push(group),
                    keys::TOMBSTONE_TAG => match rmp_serde::from_slice(value) {
                        Ok(conf_version) => {
                            stored.tombstones.insert(group, conf_version);
                        }
                        Err(error) => {
                            corrupt = Some(StoreError::Corrupt {
                                group,
                                what: "tombstone",
                                detail: error.to_string(),
                            });
                            return std::ops::ControlFlow::Break(());
                        }
                    },
                    _ => {}
                }
            }
            std::ops::ControlFlow::Continue(())
        },
    )?;
    match corrupt {
        Some(error) => Err(error),
        None => Ok(stored),
    }
}

/// True if `node` is in `conf` at all (voter, learner, in either half of a joint one).
fn is_member(conf: &ConfState, node: NodeId) -> bool {
    conf.voters.contains(&node)
        || conf.voters_outgoing.contains(&node)
        || conf.learners.contains(&node)
        || conf.learners_next.contains(&node)
}

/// A Raft storage error as the store's (the log and state live in the node store).
pub(super) fn store_error(error: rshard_raft::StorageError) -> StoreError {
    StoreError::Engine(error.to_string())
}

/// Drops the log prefix of a group whose log holds `max_log_entries` or more, up to the
/// applied index already durable (the batch cannot be read, so not this batch's applies).
fn compact_if_long(
    replica: &Replica,
    max_log_entries: u64,
    batch: &mut crate::storage::NodeBatch,
) -> Result<bool, StoreError> {
    let storage = replica.raft.storage();
    let first = rshard_raft::Storage::first_index(storage).map_err(store_error)?;
    let applied = replica.raft.applied_index();
    if applied.saturating_sub(first) + 1 < max_log_entries {
        return Ok(false);
    }
    batch.compact(storage, applied)?;
    Ok(true)
}

fn raft_failure(group: GroupId) -> impl Fn(rshard_raft::Error) -> StoreError {
    move |error| StoreError::Corrupt {
        group,
        what: "raft step",
        detail: error.to_string(),
    }
}

/// The right shards of the merges among `ready`'s committed entries (rare: the entries are
/// decoded only when they carry a range command).
fn merge_rights(ready: &Ready) -> Vec<ShardId> {
    ready
        .committed_entries
        .iter()
        .filter_map(|entry| match &entry.payload {
            rshard_raft::Payload::Normal(bytes) if crate::kv::is_range_command(bytes) => {
                match crate::kv::decode_entry(bytes) {
                    Ok(crate::kv::EntryCommands::Merge(merge)) => Some(merge.right.id),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// One seed per replica, from the node's seed (SplitMix64 finalizer).
fn mix(seed: u64, node: NodeId, group: GroupId) -> u64 {
    let mut z = seed ^ node.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ group.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
