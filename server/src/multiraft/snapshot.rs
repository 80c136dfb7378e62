//! Shard snapshots between nodes: streamed in chunks of bounded size, beside the frames.
//!
//! When a leader's Raft core asks to send a snapshot, the driver opens a point-in-time view
//! of the node store (taken before the iteration's batch commits, so it holds exactly the
//! state at the applied index the snapshot's metadata names) and streams the shard's range
//! from it as [`SnapshotChunk`]s of at most `snapshot_chunk_bytes` of keys and values (or
//! one item, if a single item is larger). The first chunk carries the Raft
//! `InstallSnapshot` message; its data is a [`SnapshotManifest`] (the shard descriptor), not
//! the shard's contents. At most `snapshot_chunks_in_flight` chunks wait for an
//! acknowledgement; a chunk out of sequence, a full transport queue, or
//! `snapshot_timeout_ticks` without progress ends the transfer and reports the snapshot
//! failed to Raft, which retries with a new transfer. A refusal for any other reason (the
//! receiver is busy or installing, or holds no replica and may not create one) is reported
//! only after `snapshot_refusal_backoff_ticks`: until then Raft keeps that follower in
//! snapshot state and sends it nothing, so a refusal that persists costs one transfer per
//! backoff, not one per append. Memory per transfer is bounded by the window, never by the
//! shard.
//!
//! The receiver checks every chunk (sequence, key order, keys within the descriptor's range,
//! size) and stages it in the staging keyspace without touching live data (see
//! `storage::snapshot`). Only when the last chunk is staged does Raft see the
//! `InstallSnapshot` message, its manifest now naming the local staging; if Raft accepts it,
//! the batch that persists the snapshot also writes the install marker, and the install then
//! proceeds in bounded steps that survive crashes. A transfer that fails, or whose snapshot
//! Raft no longer needs, leaves staging that is discarded in bounded steps.
//!
//! Snapshot messages between two nodes must arrive in order or not at all (one QUIC stream
//! per transfer in production); a gap ends the transfer, never corrupts it. A session id
//! includes the sender's incarnation (bumped durably at every start), so chunks a crashed
//! incarnation left in flight never join a later transfer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rshard_common::shard::ShardDescriptor;
use rshard_raft::{Index, Message, MessageKind, NodeId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::counters::Counters;
use super::replica::Replica;
use super::transport::Transport;
use super::DriverConfig;
use crate::storage::{
    item_cost_bytes, GroupId, InstallMarker, InstallProgress, KeyRange, KeySpan, NodeBatch,
    NodeStore, ScanOrder, Space, StagingDiscard, StagingId, StepBudget, StoreError, StoreView,
};

/// What a received chunk's items may cost ([`SnapshotChunk::cost_bytes`]); larger chunks
/// are refused. Senders cap `snapshot_chunk_bytes` to it (and one KV item is far smaller).
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 8 << 20;
/// Bytes a decoded snapshot message may occupy on the wire.
pub const MAX_SNAPSHOT_MESSAGE_BYTES: usize = MAX_SNAPSHOT_CHUNK_BYTES + (1 << 20);

/// One transfer: unique per sender across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId {
    /// The sender's incarnation: how many times its store was opened.
    pub incarnation: u64,
    pub number: u64,
}

/// What a snapshot's Raft message carries as data: the shard it is of, and (on the receiver
/// only, once every chunk is staged) where the chunks were staged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub descriptor: ShardDescriptor,
    pub staging: StagingId,
}

impl SnapshotManifest {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: MessagePack encoding cannot fail.
        rmp_serde::to_vec(self).expect("a manifest always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotItem {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Part of one shard's snapshot, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub from: NodeId,
    pub to: NodeId,
    pub group: GroupId,
    pub session: SessionId,
    /// 0 for the first chunk, then one more per chunk.
    pub seq: u32,
    /// The Raft `InstallSnapshot` message: in the first chunk, and only there.
    pub install: Option<Message>,
    pub items: Vec<SnapshotItem>,
    /// True on the transfer's final chunk.
    pub last: bool,
}

impl SnapshotChunk {
    /// Bytes of keys and values.
    pub fn data_bytes(&self) -> usize {
        self.items.iter().map(|i| i.key.len() + i.value.len()).sum()
    }

    /// What the items count for against byte limits: their bytes plus a per-item cost
    /// ([`crate::storage::PER_KEY_COST_BYTES`]) that covers their framing on the wire and their overhead in
    /// memory, so a chunk of many tiny items is bounded too.
    pub fn cost_bytes(&self) -> usize {
        self.items
            .iter()
            .map(|i| item_cost_bytes(&i.key, &i.value))
            .sum()
    }
}

/// Why a receiver refused a chunk (and dropped the transfer it belonged to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum SnapshotRefusal {
    #[error("this node holds no replica of the group")]
    UnknownGroup,
    #[error("too many snapshots being received")]
    Busy,
    #[error("the replica is installing another snapshot")]
    Installing,
    #[error("chunk out of sequence (expected {expected:?})")]
    OutOfSequence { expected: Option<u32> },
    #[error("a newer transfer from the same node is under way")]
    Superseded,
    #[error("the snapshot's range overlaps shard {0} on this node")]
    Overlaps(GroupId),
    #[error("malformed chunk: {0}")]
    Malformed(String),
    #[error("this node's replica of the group was removed at conf version {0}")]
    Removed(u64),
    #[error("this node's replica of the group is frozen for a merge and needs no snapshot")]
    Frozen,
}

/// The receiver's answer to one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAck {
    pub from: NodeId,
    pub to: NodeId,
    pub group: GroupId,
    pub session: SessionId,
    pub seq: u32,
    pub refused: Option<SnapshotRefusal>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotMessage {
    Chunk(SnapshotChunk),
    Ack(SnapshotAck),
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotMessageError {
    #[error("snapshot message of {bytes} bytes exceeds the limit of {MAX_SNAPSHOT_MESSAGE_BYTES}")]
    TooLarge { bytes: usize },
    #[error("undecodable snapshot message: {0}")]
    Malformed(String),
}

impl SnapshotMessage {
    pub fn from(&self) -> NodeId {
        match self {
            SnapshotMessage::Chunk(chunk) => chunk.from,
            SnapshotMessage::Ack(ack) => ack.from,
        }
    }

    pub fn to(&self) -> NodeId {
        match self {
            SnapshotMessage::Chunk(chunk) => chunk.to,
            SnapshotMessage::Ack(ack) => ack.to,
        }
    }

    /// What the message counts for against the inbox's byte limit.
    pub fn cost_bytes(&self) -> usize {
        match self {
            SnapshotMessage::Chunk(chunk) => chunk.cost_bytes(),
            SnapshotMessage::Ack(_) => 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: MessagePack encoding cannot fail.
        rmp_serde::to_vec(self).expect("a snapshot message always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotMessageError> {
        if bytes.len() > MAX_SNAPSHOT_MESSAGE_BYTES {
            return Err(SnapshotMessageError::TooLarge { bytes: bytes.len() });
        }
        rmp_serde::from_slice(bytes).map_err(|e| SnapshotMessageError::Malformed(e.to_string()))
    }
}

/// A snapshot this node is sending.
#[derive(Debug)]
struct OutgoingSnapshot {
    session: SessionId,
    index: Index,
    view: StoreView,
    span: KeySpan,
    /// The Raft message, until the first chunk takes it.
    install: Option<Message>,
    /// Where the next chunk starts; `None` once the range is exhausted.
    cursor: Option<Vec<u8>>,
    next_seq: u32,
    /// Chunks acknowledged (they are acknowledged in order).
    acked: u32,
    idle_ticks: u32,
}

impl OutgoingSnapshot {
    fn in_flight(&self) -> u32 {
        self.next_seq - self.acked
    }

    fn all_sent(&self) -> bool {
        self.cursor.is_none() && self.install.is_none()
    }
}

/// A snapshot this node is receiving.
#[derive(Debug)]
struct IncomingSnapshot {
    from: NodeId,
    session: SessionId,
    staging: StagingId,
    next_seq: u32,
    install: Message,
    descriptor: ShardDescriptor,
    last_key: Option<Vec<u8>>,
    idle_ticks: u32,
}

/// Every snapshot transfer and install of one node.
#[derive(Debug)]
pub(super) struct Snapshots {
    node: NodeId,
    incarnation: u64,
    next_session: u64,
    next_staging: StagingId,
    sending: BTreeMap<(GroupId, NodeId), OutgoingSnapshot>,
    /// Transfers the receiver refused: ticks until Raft hears of it and may start another.
    /// Meanwhile its progress stays in snapshot state, so nothing is sent to that follower.
    refused: BTreeMap<(GroupId, NodeId), u32>,
    receiving: BTreeMap<GroupId, IncomingSnapshot>,
    /// Received in full this iteration and handed to Raft: staging that Raft may install.
    completed: BTreeMap<GroupId, StagingId>,
    installing: BTreeMap<GroupId, InstallProgress>,
    discarding: VecDeque<StagingDiscard>,
    /// Acknowledgements to send once this iteration's batch is durable.
    acks: Vec<SnapshotAck>,
    /// The node's split gaps (as stored): where a snapshot may create a voter replica.
    pub split_gaps: Vec<KeySpan>,
    /// Data ranges of removed replicas still to delete (as stored); no replica is created
    /// over them until they are clear.
    pub pending_clears: Vec<KeySpan>,
    /// Groups whose replica was removed here, with the conf version at which this node was
    /// known not to be a member: a snapshot at or below it never creates the group again.
    pub tombstones: BTreeMap<GroupId, u64>,
}

impl Snapshots {
    /// Resumes the installs the store was in the middle of (`installing`: the groups with
    /// an install marker) and discards staging nobody will install.
    pub fn open(
        node: NodeId,
        incarnation: u64,
        store: &NodeStore,
        installing: &[GroupId],
        tombstones: BTreeMap<GroupId, u64>,
    ) -> Result<Self, StoreError> {
        let mut resumed = BTreeMap::new();
        for &group in installing {
            if let Some(marker) = store.group(group).install_marker()? {
                resumed.insert(group, InstallProgress::new(group, marker));
            }
        }
        let installing = resumed;
        let stagings = store.stagings()?;
        let next_staging = stagings.iter().map(|(_, s)| s + 1).max().unwrap_or(1);
        let discarding = stagings
            .into_iter()
            .filter(|(group, staging)| {
                installing
                    .get(group)
                    .is_none_or(|install: &InstallProgress| install.staging() != *staging)
            })
            .map(|(group, staging)| StagingDiscard::new(group, staging))
            .collect();
        Ok(Snapshots {
            node,
            incarnation,
            next_session: 1,
            next_staging,
            sending: BTreeMap::new(),
            refused: BTreeMap::new(),
            receiving: BTreeMap::new(),
            completed: BTreeMap::new(),
            installing,
            discarding,
            acks: Vec::new(),
            split_gaps: store.split_gaps()?,
            pending_clears: store.pending_clears()?,
            tombstones,
        })
    }

    pub fn is_installing(&self, group: GroupId) -> bool {
        self.installing.contains_key(&group)
    }

    /// True if an iteration has snapshot work to do now.
    pub fn has_work(&self, config: &DriverConfig) -> bool {
        !self.installing.is_empty()
            || !self.discarding.is_empty()
            || !self.pending_clears.is_empty()
            || !self.acks.is_empty()
            || self.sending.values().any(|send| {
                !send.all_sent() && send.in_flight() < config.snapshot_chunks_in_flight.max(1)
            })
    }

    /// Starts streaming the snapshot Raft asked to send (`message` is its
    /// `InstallSnapshot`), from a view of the committed state taken now.
    pub fn start_send(
        &mut self,
        store: &NodeStore,
        replica: &mut Replica,
        mut message: Message,
        config: &DriverConfig,
        counters: &mut Counters,
    ) -> Result<(), StoreError> {
        let group = replica.descriptor.id;
        let to = message.to;
        let MessageKind::InstallSnapshot { snapshot } = &mut message.kind else {
            return Ok(());
        };
        // The core may have taken this metadata while an earlier iteration was applying
        // entries (applying a membership change broadcasts appends at once), so before that
        // iteration's batch was written: it can name an older applied index than the
        // descriptor and data sent below. Take it again now, from the same committed state.
        snapshot.metadata = rshard_raft::Storage::snapshot(replica.raft.storage())
            .map_err(super::driver::store_error)?
            .metadata;
        let index = snapshot.metadata.index;
        // Raft asked again (a new leadership, or a follower re-added): an earlier refusal's
        // timer must not end the transfer that starts now.
        self.refused.remove(&(group, to));
        if self
            .sending
            .get(&(group, to))
            .is_some_and(|send| send.index == index)
        {
            return Ok(()); // Already streaming this very snapshot.
        }
        let replacing = self.sending.contains_key(&(group, to));
        if !replacing && self.sending.len() >= config.max_snapshot_sends {
            counters.snapshot_sends_failed += 1;
            replica.raft.report_snapshot_failed(to);
            return Ok(());
        }
        snapshot.data = SnapshotManifest {
            descriptor: replica.descriptor.clone(),
            staging: 0,
        }
        .encode();
        let span = KeySpan::of(&replica.descriptor);
        let session = SessionId {
            incarnation: self.incarnation,
            number: self.next_session,
        };
        self.next_session += 1;
        let send = OutgoingSnapshot {
            session,
            index,
            view: store.view()?,
            cursor: Some(span.start.clone()),
            span,
            install: Some(message),
            next_seq: 0,
            acked: 0,
            idle_ticks: 0,
        };
        self.sending.insert((group, to), send);
        counters.snapshot_sends_started += 1;
        Ok(())
    }

    /// Sends the next chunks of every transfer whose window has room.
    pub fn pump<T: Transport>(
        &mut self,
        replicas: &mut BTreeMap<GroupId, Replica>,
        transport: &mut T,
        config: &DriverConfig,
        counters: &mut Counters,
    ) -> Result<(), StoreError> {
        let chunk_bytes = config
            .snapshot_chunk_bytes
            .clamp(1, MAX_SNAPSHOT_CHUNK_BYTES);
        let window = config.snapshot_chunks_in_flight.max(1);
        let mut failed = Vec::new();
        for (&(group, to), send) in &mut self.sending {
            let leads = replicas
                .get(&group)
                .is_some_and(|r| r.raft.role() == rshard_raft::Role::Leader);
            if !leads {
                failed.push((group, to));
                continue;
            }
            while !send.all_sent() && send.in_flight() < window {
                let (items, cursor) = match &send.cursor {
                    Some(start) => read_chunk(&send.view, &send.span, start, chunk_bytes)?,
                    None => (Vec::new(), None),
                };
                send.cursor = cursor;
                let chunk = SnapshotChunk {
                    from: self.node,
                    to,
                    group,
                    session: send.session,
                    seq: send.next_seq,
                    install: send.install.take(),
                    items,
                    last: send.cursor.is_none(),
                };
                let bytes = chunk.data_bytes() as u64;
                if transport
                    .send_snapshot(SnapshotMessage::Chunk(chunk))
                    .is_err()
                {
                    failed.push((group, to));
                    break;
                }
                send.next_seq += 1;
                counters.snapshot_chunks_sent += 1;
                counters.snapshot_bytes_sent += bytes;
            }
        }
        for key in failed {
            self.fail_send(key, replicas, counters);
        }
        Ok(())
    }

    fn fail_send(
        &mut self,
        (group, to): (GroupId, NodeId),
        replicas: &mut BTreeMap<GroupId, Replica>,
        counters: &mut Counters,
    ) {
        if self.sending.remove(&(group, to)).is_some() {
            counters.snapshot_sends_failed += 1;
            if let Some(replica) = replicas.get_mut(&group) {
                replica.raft.report_snapshot_failed(to);
            }
        }
    }

    pub fn on_ack(
        &mut self,
        ack: SnapshotAck,
        replicas: &mut BTreeMap<GroupId, Replica>,
        config: &DriverConfig,
        counters: &mut Counters,
    ) {
        let key = (ack.group, ack.from);
        let Some(send) = self.sending.get_mut(&key) else {
            return;
        };
        if ack.to != self.node || send.session != ack.session {
            return; // An answer to an earlier transfer.
        }
        match &ack.refused {
            // A lost or reordered chunk (or a restarted receiver): a new transfer at once.
            None | Some(SnapshotRefusal::OutOfSequence { .. }) => {}
            // The receiver cannot take it now, or ever (no replica to create): retrying at
            // every append would read a snapshot view and its first chunk each time.
            Some(_) => {
                self.sending.remove(&key);
                counters.snapshot_sends_failed += 1;
                counters.snapshot_sends_refused += 1;
                self.refused
                    .insert(key, config.snapshot_refusal_backoff_ticks.max(1));
                return;
            }
        }
        if ack.refused.is_some() || ack.seq != send.acked || ack.seq >= send.next_seq {
            self.fail_send(key, replicas, counters);
            return;
        }
        send.acked += 1;
        send.idle_ticks = 0;
        if send.all_sent() && send.acked == send.next_seq {
            self.sending.remove(&key);
            counters.snapshots_sent += 1;
            if let Some(replica) = replicas.get_mut(&ack.group) {
                replica.raft.report_snapshot_delivered(ack.from);
            }
        }
    }

    /// Takes one received chunk: stages its items into `batch` and queues its
    /// acknowledgement. Returns the group and Raft message to step once the last chunk is
    /// staged.
    pub fn on_chunk(
        &mut self,
        chunk: SnapshotChunk,
        replicas: &BTreeMap<GroupId, Replica>,
        batch: &mut NodeBatch,
        config: &DriverConfig,
        counters: &mut Counters,
    ) -> Option<(GroupId, Message)> {
        let (group, from, session, seq) = (chunk.group, chunk.from, chunk.session, chunk.seq);
        if chunk.to != self.node {
            counters.snapshot_chunks_refused += 1;
            return None; // Not ours to answer.
        }
        let (done, refused) = match self.accept_chunk(chunk, replicas, batch, config) {
            Ok(done) => {
                counters.snapshot_chunks_received += 1;
                (done, None)
            }
            Err(refusal) => {
                counters.snapshot_chunks_refused += 1;
                if self
                    .receiving
                    .get(&group)
                    .is_some_and(|r| r.from == from && r.session == session)
                {
                    self.abandon_receive(group);
                }
                (None, Some(refusal))
            }
        };
        self.acks.push(SnapshotAck {
            from: self.node,
            to: from,
            group,
            session,
            seq,
            refused,
        });
        done
    }

    fn accept_chunk(
        &mut self,
        chunk: SnapshotChunk,
        replicas: &BTreeMap<GroupId, Replica>,
        batch: &mut NodeBatch,
        config: &DriverConfig,
    ) -> Result<Option<(GroupId, Message)>, SnapshotRefusal> {
        let group = chunk.group;
        // A first chunk may create the replica (checked in `begin_receive`).
        if !replicas.contains_key(&group) && chunk.seq > 0 && !self.receiving.contains_key(&group) {
            return Err(SnapshotRefusal::UnknownGroup);
        }
        if self.installing.contains_key(&group) || self.completed.contains_key(&group) {
            return Err(SnapshotRefusal::Installing);
        }
        if chunk.cost_bytes() > MAX_SNAPSHOT_CHUNK_BYTES {
            return Err(SnapshotRefusal::Malformed(format!(
                "items costing {} bytes",
                chunk.cost_bytes()
            )));
        }
        if chunk.seq == 0 {
            self.begin_receive(&chunk, replicas, config)?;
        }
        let receive = match self.receiving.get_mut(&group) {
            Some(r) if r.from == chunk.from && r.session == chunk.session => r,
            _ => return Err(SnapshotRefusal::OutOfSequence { expected: None }),
        };
        if chunk.seq != receive.next_seq || (chunk.seq > 0 && chunk.install.is_some()) {
            return Err(SnapshotRefusal::OutOfSequence {
                expected: Some(receive.next_seq),
            });
        }
        for item in &chunk.items {
            if receive
                .last_key
                .as_ref()
                .is_some_and(|last| item.key <= *last)
            {
                return Err(SnapshotRefusal::Malformed("keys out of order".to_string()));
            }
            if !receive.descriptor.contains(&item.key) {
                return Err(SnapshotRefusal::Malformed(
                    "a key outside the shard's range".to_string(),
                ));
            }
            receive.last_key = Some(item.key.clone());
        }
        receive.next_seq += 1;
        receive.idle_ticks = 0;
        batch.stage_snapshot_items(
            group,
            receive.staging,
            chunk.items.into_iter().map(|item| (item.key, item.value)),
        );
        if !chunk.last {
            return Ok(None);
        }
        let descriptor = receive.descriptor.clone();
        self.check_creation(&descriptor, replicas)?;
        let Some(receive) = self.receiving.remove(&group) else {
            return Ok(None);
        };
        let mut install = receive.install;
        if let MessageKind::InstallSnapshot { snapshot } = &mut install.kind {
            snapshot.data = SnapshotManifest {
                descriptor: receive.descriptor,
                staging: receive.staging,
            }
            .encode();
        }
        self.completed.insert(group, receive.staging);
        Ok(Some((group, install)))
    }

    /// Whether a snapshot of `descriptor` may be installed here, checked at its first chunk
    /// and again at its last (another transfer may have created a replica meanwhile):
    /// - never over a range another replica here holds, but for a replica frozen for its
    ///   merge into this very shard (this node's replica of the shard fell behind its
    ///   merge: the frozen one is retired as the install starts);
    /// - a new replica only where the descriptor places this node as a learner (how a
    ///   replica added by a membership change gets its first state), or as a voter inside
    ///   a split gap (a shard split off while this node's replica was behind, which this
    ///   node therefore never held); never at or below the conf version of the group's
    ///   tombstone here (a stale leader's view from before this node's replica was removed); Never for another voter: a voter without its replica
    ///   has lost state it may have voted or acknowledged with (a restored old backup), and
    ///   an empty voter could elect a leader that lacks committed entries;
    /// - a new replica not while an install runs: it may still be clearing the range the
    ///   new replica takes (the old range of a shard that split), nor over the data of a
    ///   removed replica still being cleared.
    fn check_creation(
        &self,
        descriptor: &ShardDescriptor,
        replicas: &BTreeMap<GroupId, Replica>,
    ) -> Result<(), SnapshotRefusal> {
        let group = descriptor.id;
        if replicas.get(&group).is_some_and(|r| {
            r.descriptor.merging_into.is_some()
                && descriptor.epoch.version <= r.descriptor.epoch.version
        }) {
            // A frozen replica applied its freeze: it holds its shard's final state unless
            // the merge was rolled back (the shard unfrozen, at a higher version), and an
            // install would rewrite a range its left neighbour may take over meanwhile.
            return Err(SnapshotRefusal::Frozen);
        }
        // Overlapping at all means the merge is in the snapshot: before it, the shard ends
        // where the frozen one starts. Not while the frozen one's own transfer or install
        // runs: the two installs would write the same range.
        let merged_into_this = |right: &ShardDescriptor| right.merging_into == Some(group);
        let moving = |id: GroupId| {
            self.installing.contains_key(&id)
                || self.completed.contains_key(&id)
                || self.receiving.contains_key(&id)
        };
        if let Some((&other, _)) = replicas.iter().find(|(&id, r)| {
            id != group
                && r.descriptor.overlaps(descriptor)
                && (!merged_into_this(&r.descriptor) || moving(id))
        }) {
            return Err(SnapshotRefusal::Overlaps(other));
        }
        if replicas.contains_key(&group) {
            return Ok(());
        }
        if let Some(&removed) = self.tombstones.get(&group) {
            if descriptor.epoch.conf_version <= removed {
                return Err(SnapshotRefusal::Removed(removed));
            }
        }
        let learner = descriptor.learners.contains(&self.node);
        let split_off_here = descriptor.replicas.contains(&self.node)
            && covered_by_gaps(&self.split_gaps, descriptor);
        if !learner && !split_off_here {
            return Err(SnapshotRefusal::UnknownGroup);
        }
        let clearing = self
            .pending_clears
            .iter()
            .any(|span| span.overlaps(descriptor));
        if clearing || !self.installing.is_empty() || !self.completed.is_empty() {
            return Err(SnapshotRefusal::Busy);
        }
        Ok(())
    }

    /// Checks the first chunk of a transfer and starts receiving it, replacing any earlier
    /// transfer of the same group.
    fn begin_receive(
        &mut self,
        chunk: &SnapshotChunk,
        replicas: &BTreeMap<GroupId, Replica>,
        config: &DriverConfig,
    ) -> Result<(), SnapshotRefusal> {
        let group = chunk.group;
        let malformed = |what: &str| SnapshotRefusal::Malformed(what.to_string());
        let Some(install) = &chunk.install else {
            return Err(malformed("the first chunk carries no Raft message"));
        };
        let MessageKind::InstallSnapshot { snapshot } = &install.kind else {
            return Err(malformed("the Raft message is not InstallSnapshot"));
        };
        if install.from != chunk.from || install.to != chunk.to {
            return Err(malformed("the Raft message names other nodes"));
        }
        install.check_well_formed().map_err(&malformed)?;
        let manifest =
            SnapshotManifest::decode(&snapshot.data).map_err(|e| malformed(e.as_str()))?;
        if manifest.descriptor.id != group {
            return Err(malformed("the manifest is of another shard"));
        }
        self.check_creation(&manifest.descriptor, replicas)?;
        if let Some(current) = self.receiving.get(&group) {
            if current.from == chunk.from && current.session > chunk.session {
                // A delayed start of an older transfer must not end the current one.
                return Err(SnapshotRefusal::Superseded);
            }
            self.abandon_receive(group);
        } else if self.receiving.len() >= config.max_snapshot_receives {
            return Err(SnapshotRefusal::Busy);
        }
        let staging = self.next_staging;
        self.next_staging += 1;
        self.receiving.insert(
            group,
            IncomingSnapshot {
                from: chunk.from,
                session: chunk.session,
                staging,
                next_seq: 0,
                install: install.clone(),
                descriptor: manifest.descriptor,
                last_key: None,
                idle_ticks: 0,
            },
        );
        Ok(())
    }

    /// The replica of `group` is gone: every transfer of it ends (Raft never hears of
    /// them; there is no Raft left to tell).
    pub fn forget_group(&mut self, group: GroupId) {
        self.sending.retain(|(sent, _), _| *sent != group);
        self.refused.retain(|(sent, _), _| *sent != group);
        self.abandon_receive(group);
    }

    fn abandon_receive(&mut self, group: GroupId) {
        if let Some(receive) = self.receiving.remove(&group) {
            self.discarding
                .push_back(StagingDiscard::new(group, receive.staging));
        }
    }

    /// The staging a snapshot in a Ready names: it must be one completed this iteration
    /// (anything else would install data that is not there).
    pub fn take_completed(&mut self, group: GroupId, staging: StagingId) -> Result<(), StoreError> {
        match self.completed.get(&group) {
            Some(&completed) if completed == staging => {
                self.completed.remove(&group);
                Ok(())
            }
            _ => Err(StoreError::Corrupt {
                group,
                what: "snapshot to install",
                detail: format!("staging {staging} was not received in full"),
            }),
        }
    }

    /// Raft took up the snapshots in `installs` (their markers are in the committed batch);
    /// the other transfers completed this iteration were not needed.
    pub fn after_commit<T: Transport>(
        &mut self,
        installs: Vec<(GroupId, InstallMarker)>,
        transport: &mut T,
    ) {
        for (group, marker) in installs {
            self.installing
                .insert(group, InstallProgress::new(group, marker));
        }
        for (group, staging) in std::mem::take(&mut self.completed) {
            self.discarding
                .push_back(StagingDiscard::new(group, staging));
        }
        for ack in std::mem::take(&mut self.acks) {
            // A lost acknowledgement only times the transfer out; Raft retries it.
            let _dropped = transport.send_snapshot(SnapshotMessage::Ack(ack));
        }
    }

    /// Writes the next install and discard steps into `batch`, within the iteration's byte
    /// budget. Returns the groups whose install completes with this batch.
    pub fn step_installs(
        &mut self,
        store: &NodeStore,
        batch: &mut NodeBatch,
        config: &DriverConfig,
        counters: &mut Counters,
    ) -> Result<Vec<GroupId>, StoreError> {
        let mut budget = StepBudget::new(config.snapshot_apply_bytes_per_iteration);
        let mut finished = Vec::new();
        for (&group, progress) in &mut self.installing {
            if budget.exhausted() {
                break;
            }
            if store.continue_install(progress, batch, &mut budget)? {
                finished.push(group);
            }
        }
        while let Some(discard) = self.discarding.front_mut() {
            if budget.exhausted() {
                break;
            }
            if store.continue_discard(discard, batch, &mut budget)? {
                self.discarding.pop_front();
                counters.stagings_discarded += 1;
            }
        }
        if !self.pending_clears.is_empty() && !budget.exhausted() {
            store.continue_clear(&mut self.pending_clears, batch, &mut budget)?;
        }
        Ok(finished)
    }

    /// The installs of `groups` are durable: the groups may run again.
    pub fn finish_installs(&mut self, groups: &[GroupId]) {
        for group in groups {
            self.installing.remove(group);
        }
    }

    /// Ages every transfer; those without progress for `snapshot_timeout_ticks` end.
    pub fn tick(
        &mut self,
        replicas: &mut BTreeMap<GroupId, Replica>,
        config: &DriverConfig,
        counters: &mut Counters,
    ) {
        let timeout = config.snapshot_timeout_ticks.max(1);
        let mut expired = Vec::new();
        for (&key, send) in &mut self.sending {
            send.idle_ticks += 1;
            if send.idle_ticks > timeout {
                expired.push(key);
            }
        }
        for key in expired {
            self.fail_send(key, replicas, counters);
        }
        self.refused.retain(|&(group, to), ticks| {
            *ticks -= 1;
            if *ticks > 0 {
                return true;
            }
            if let Some(replica) = replicas.get_mut(&group) {
                replica.raft.report_snapshot_failed(to);
            }
            false
        });
        let stale: BTreeSet<GroupId> = self
            .receiving
            .iter_mut()
            .filter_map(|(&group, receive)| {
                receive.idle_ticks += 1;
                (receive.idle_ticks > timeout).then_some(group)
            })
            .collect();
        for group in stale {
            counters.snapshot_receives_timed_out += 1;
            self.abandon_receive(group);
        }
    }

    /// Transfers under way, for tests.
    pub fn transfers(&self) -> (usize, usize) {
        (self.sending.len(), self.receiving.len())
    }
}

/// Reads the chunk of `span` that starts at `start`: items up to `chunk_bytes` (at least
/// one), and where the next chunk starts (`None` if this one ends the range).
fn read_chunk(
    view: &StoreView,
    span: &KeySpan,
    start: &[u8],
    chunk_bytes: usize,
) -> Result<(Vec<SnapshotItem>, Option<Vec<u8>>), StoreError> {
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut next = None;
    let range = KeyRange {
        start,
        end: (!span.end.is_empty()).then_some(&span.end[..]),
    };
    view.scan(
        Space::Data,
        range,
        ScanOrder::Ascending,
        &mut |key, value| {
            let size = item_cost_bytes(key, value);
            if !items.is_empty() && bytes + size > chunk_bytes {
                next = Some(key.to_vec());
                return std::ops::ControlFlow::Break(());
            }
            bytes += size;
            items.push(SnapshotItem {
                key: key.to_vec(),
                value: value.to_vec(),
            });
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok((items, next))
}

/// True if `descriptor`'s range lies in the union of `gaps` (adjacent gaps, one from a
/// narrowed shard and one from a retired merged replica, may each hold part of it).
fn covered_by_gaps(gaps: &[KeySpan], descriptor: &ShardDescriptor) -> bool {
    let mut rest = vec![KeySpan::of(descriptor)];
    for gap in gaps {
        let taken = ShardDescriptor {
            start_key: gap.start.clone(),
            end_key: gap.end.clone(),
            ..ShardDescriptor::default()
        };
        rest = rest.iter().flat_map(|span| span.without(&taken)).collect();
    }
    rest.is_empty()
}
