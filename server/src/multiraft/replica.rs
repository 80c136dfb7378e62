//! One replica of one shard inside the driver: its Raft core, its shard descriptor, and the
//! requests waiting on it. Applying committed entries lives here; control flow stays in the
//! driver.

use std::collections::BTreeMap;

use rshard_common::shard::ShardDescriptor;
use rshard_raft::{ConfState, Entry, Index, Payload, Raft, Ready, Role, Term};

use super::snapshot::SnapshotManifest;
use super::{Answer, Request, RequestError, RequestId, Response};
use crate::kv::{Applier, EntryCommands, KvCommand};
use crate::storage::{GroupStorage, InstallMarker, NodeBatch, StoreError};

/// A read waiting for ReadIndex to confirm it, then for the applied index to reach it.
#[derive(Clone, Debug)]
pub(super) struct PendingRead {
    pub request: RequestId,
    pub kind: ReadKind,
}

#[derive(Clone, Debug)]
pub(super) enum ReadKind {
    Key(Vec<u8>),
    /// `[start, end)`, already clamped to the shard's range (`None`: to the end).
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    },
}

/// What applying one entry produced, for the proposals waiting on it.
enum Applied {
    Nothing,
    /// One result per command of the entry, in order.
    Commands(Vec<Result<crate::kv::KvOutcome, crate::kv::KvError>>),
    /// The entry did not decode: every command of it is refused alike.
    Malformed(crate::kv::KvError),
    Membership(Result<ShardDescriptor, String>),
    Split(Result<(ShardDescriptor, ShardDescriptor), crate::kv::KvError>),
    Frozen(Result<ShardDescriptor, crate::kv::KvError>),
    Merged(Result<ShardDescriptor, crate::kv::KvError>),
    RangeChanged(Result<ShardDescriptor, crate::kv::KvError>),
}

/// A shard created on this node by applying a split: its descriptor and its first
/// membership (the split shard's, at the split's index).
pub(super) type SplitOff = (ShardDescriptor, ConfState);

/// Writes taken in one iteration are proposed as one entry, and a new entry is started
/// once the commands batched reach this many bytes. One command may be larger; it ends the
/// entry it joins.
pub const MAX_BATCHED_COMMAND_BYTES: usize = 256 << 10;

#[derive(Debug)]
pub(super) struct Replica {
    pub raft: Raft<GroupStorage>,
    pub descriptor: ShardDescriptor,
    /// Proposals waiting to apply: log index -> (term, the requests of the entry's commands
    /// in order; one for a membership change).
    pub proposals: BTreeMap<Index, (Term, Vec<RequestId>)>,
    /// Writes taken since the last proposal, proposed together as one entry before the
    /// group's next Ready (see [`Replica::propose_batched`]).
    batched: Vec<(RequestId, KvCommand)>,
    batched_bytes: usize,
    /// Reads handed to ReadIndex, by request id (the read's context).
    pub unconfirmed_reads: BTreeMap<RequestId, PendingRead>,
    /// Confirmed reads: serve each once the applied index reaches its index.
    pub confirmed_reads: Vec<(Index, PendingRead)>,
    /// Ticks this replica, unable to campaign, has gone without a message from its leader.
    pub leaderless_ticks: u32,
}

/// Entries a learner may trail the commit index by and still count as caught up, once the
/// leader streams appends to it (its snapshot is in). Under a steady write load a learner
/// is always the entries in flight behind, so "holds every committed entry" would almost
/// never be true when sampled (seen: a learner left unpromoted for minutes at 24k
/// puts/s). Promoting one a few entries short is safe; it catches up as a voter.
pub const LEARNER_CATCH_UP_SLACK_ENTRIES: u64 = 256;

impl Replica {
    pub fn new(raft: Raft<GroupStorage>, descriptor: ShardDescriptor) -> Self {
        Replica {
            raft,
            descriptor,
            proposals: BTreeMap::new(),
            batched: Vec::new(),
            batched_bytes: 0,
            unconfirmed_reads: BTreeMap::new(),
            confirmed_reads: Vec::new(),
            leaderless_ticks: 0,
        }
    }

    pub fn pending_requests(&self) -> usize {
        self.proposals
            .values()
            .map(|(_, requests)| requests.len())
            .sum::<usize>()
            + self.batched.len()
            + self.unconfirmed_reads.len()
            + self.confirmed_reads.len()
    }

    fn not_leader(&self) -> RequestError {
        RequestError::NotLeader {
            shard: self.descriptor.id,
            leader: self.raft.leader(),
        }
    }

    /// Answers what can no longer complete here because this replica stopped leading:
    /// unconfirmed reads (the core dropped them) fail; proposals may still commit under
    /// the next leader, so their outcome is unknown.
    pub fn lost_leadership(&mut self, answers: &mut Vec<Answer>) {
        let error = self.not_leader();
        let never_proposed = std::mem::take(&mut self.unconfirmed_reads)
            .into_keys()
            .chain(self.take_batched());
        answer_each(answers, never_proposed, Err(error));
        for (_, (_, requests)) in std::mem::take(&mut self.proposals) {
            answer_each(answers, requests, Err(RequestError::OutcomeUnknown));
        }
    }

    fn take_batched(&mut self) -> Vec<RequestId> {
        self.batched_bytes = 0;
        std::mem::take(&mut self.batched)
            .into_iter()
            .map(|(request, _)| request)
            .collect()
    }

    /// Every request waiting here, answered because the node stops: proposed writes with
    /// `OutcomeUnknown` (their entries may already sit on a quorum and apply without this
    /// node), reads with `read_error` (a read changes nothing, so it is safe to retry).
    pub fn fail_all(&mut self, read_error: &RequestError, answers: &mut Vec<Answer>) {
        for (_, (_, requests)) in std::mem::take(&mut self.proposals) {
            answer_each(answers, requests, Err(RequestError::OutcomeUnknown));
        }
        // Batched writes never reached Raft: as safe to retry as a read.
        let never_proposed = self
            .take_batched()
            .into_iter()
            .chain(std::mem::take(&mut self.unconfirmed_reads).into_keys())
            .chain(
                std::mem::take(&mut self.confirmed_reads)
                    .into_iter()
                    .map(|(_, read)| read.request),
            );
        answer_each(answers, never_proposed, Err(read_error.clone()));
    }

    /// Takes a request for this shard: proposes a write or registers a read. Errors are
    /// answers (nothing was proposed); a storage failure is returned as `Err`.
    pub fn take_request(
        &mut self,
        id: RequestId,
        request: Request,
    ) -> Result<Result<(), RequestError>, StoreError> {
        if self.raft.role() != Role::Leader {
            return Ok(Err(self.not_leader()));
        }
        let outcome = match request {
            Request::Write(command) => {
                if let Err(refusal) = command.check(&self.descriptor) {
                    return Ok(Err(refusal.into()));
                }
                self.batched_bytes += command.size_bytes();
                self.batched.push((id, command));
                Ok(())
            }
            Request::Read { shard, epoch, key } => {
                if let Err(refusal) = crate::kv::check_read(&self.descriptor, shard, epoch, &key) {
                    return Ok(Err(refusal.into()));
                }
                self.read_index(id, ReadKind::Key(key))
            }
            Request::Scan {
                shard,
                epoch,
                start,
                end,
                limit,
            } => {
                if let Err(refusal) = crate::kv::check_read(&self.descriptor, shard, epoch, &start)
                {
                    return Ok(Err(refusal.into()));
                }
                let shard_end = &self.descriptor.end_key;
                let end = match (end.is_empty(), shard_end.is_empty()) {
                    (true, true) => None,
                    (true, false) => Some(shard_end.clone()),
                    (false, true) => Some(end),
                    (false, false) => Some(end.min(shard_end.clone())),
                };
                let limit = limit.clamp(1, super::MAX_SCAN_ITEMS);
                self.read_index(id, ReadKind::Range { start, end, limit })
            }
            Request::ChangeReplicas {
                change,
                conf_version,
                ..
            } => {
                let current = self.descriptor.epoch.conf_version;
                if conf_version.is_some_and(|planned| planned != current) {
                    return Ok(Err(RequestError::MembershipRefused(format!(
                        "the membership changed since the plan (conf version {current}, \
                         planned at {conf_version:?}); plan again"
                    ))));
                }
                if let Ok(next) = rshard_raft::confchange::apply(self.raft.conf_state(), &change) {
                    if !next.voters.contains(&self.raft.id()) {
                        return Ok(Err(RequestError::MembershipRefused(
                            "the change removes or demotes this shard's leader; move the \
                             leadership away first"
                                .to_string(),
                        )));
                    }
                }
                self.raft.propose_conf_change(change).map(|position| {
                    self.proposals
                        .insert(position.index, (position.term, vec![id]));
                })
            }
            Request::Split(split) => {
                // Checked again when it applies; this refuses the hopeless at once.
                if let Err(refusal) = split
                    .split(&self.descriptor)
                    .and_then(|_| self.check_settled(crate::kv::KvError::SplitRefused))
                {
                    return Ok(Err(refusal.into()));
                }
                self.propose_alone(id, split.encode())
            }
            Request::Freeze(freeze) => {
                if let Err(refusal) = freeze
                    .freeze(&self.descriptor)
                    .and_then(|_| self.check_settled(crate::kv::KvError::MergeRefused))
                {
                    return Ok(Err(refusal.into()));
                }
                self.propose_alone(id, freeze.encode())
            }
            Request::AbortMerge(abort) => {
                if let Err(refusal) = abort.abort(&self.descriptor) {
                    return Ok(Err(refusal.into()));
                }
                self.propose_alone(id, abort.encode())
            }
            Request::Unfreeze(unfreeze) => {
                if let Err(refusal) = unfreeze.unfreeze(&self.descriptor) {
                    return Ok(Err(refusal.into()));
                }
                self.propose_alone(id, unfreeze.encode())
            }
            Request::Merge(merge) => {
                if let Err(refusal) = merge
                    .merge(&self.descriptor)
                    .and_then(|_| self.check_settled(crate::kv::KvError::MergeRefused))
                {
                    return Ok(Err(refusal.into()));
                }
                self.propose_alone(id, merge.encode())
            }
        };
        self.answer_proposal(outcome)
    }

    /// Proposes one entry that answers request `id` alone (a split, freeze, merge or their
    /// rollback).
    fn propose_alone(&mut self, id: RequestId, bytes: Vec<u8>) -> Result<(), rshard_raft::Error> {
        let position = self.raft.propose(bytes)?;
        self.proposals
            .insert(position.index, (position.term, vec![id]));
        Ok(())
    }

    /// True if the writes batched so far should be proposed now rather than with the rest
    /// of the iteration's.
    pub fn batch_is_full(&self) -> bool {
        self.batched_bytes >= MAX_BATCHED_COMMAND_BYTES
    }

    /// Proposes the writes taken since the last call as one entry, in the order taken. A
    /// refusal (no longer leader, too many uncommitted bytes) answers each of them; a
    /// storage failure is returned as `Err`.
    pub fn propose_batched(&mut self, answers: &mut Vec<Answer>) -> Result<(), StoreError> {
        if self.batched.is_empty() {
            return Ok(());
        }
        self.batched_bytes = 0;
        let (requests, commands): (Vec<RequestId>, Vec<KvCommand>) =
            std::mem::take(&mut self.batched).into_iter().unzip();
        match self.raft.propose(crate::kv::encode_commands(&commands)) {
            Ok(position) => {
                self.proposals
                    .insert(position.index, (position.term, requests));
            }
            Err(refusal) => match self.answer_proposal(Err(refusal)) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => answer_each(answers, requests, Err(error)),
                Err(storage) => {
                    // The node stops; the entry may have been appended before the failure.
                    answer_each(answers, requests, Err(RequestError::OutcomeUnknown));
                    return Err(storage);
                }
            },
        }
        Ok(())
    }

    /// What a proposal's outcome means for the requests behind it.
    fn answer_proposal(
        &self,
        outcome: Result<(), rshard_raft::Error>,
    ) -> Result<Result<(), RequestError>, StoreError> {
        match outcome {
            Ok(()) => Ok(Ok(())),
            Err(rshard_raft::Error::Storage(error)) => Err(StoreError::Engine(error.to_string())),
            Err(rshard_raft::Error::NotLeader { .. }) => Ok(Err(self.not_leader())),
            // Still the leader, for now: "not leader, the leader is me" would send the
            // client straight back without a pause.
            Err(rshard_raft::Error::TransferInProgress { .. }) => {
                Ok(Err(RequestError::Busy("leadership transfer in progress")))
            }
            Err(rshard_raft::Error::TooManyUncommittedBytes) => {
                Ok(Err(RequestError::Busy("too many uncommitted bytes")))
            }
            Err(rshard_raft::Error::TooManyPendingReads) => {
                Ok(Err(RequestError::Busy("too many pending reads")))
            }
            Err(rshard_raft::Error::ConfChangePending) => {
                Ok(Err(RequestError::Busy("membership change pending")))
            }
            Err(other) => Ok(Err(RequestError::MembershipRefused(other.to_string()))),
        }
    }

    fn read_index(&mut self, id: RequestId, kind: ReadKind) -> Result<(), rshard_raft::Error> {
        self.raft.read_index(id.to_be_bytes().to_vec())?;
        self.unconfirmed_reads
            .insert(id, PendingRead { request: id, kind });
        Ok(())
    }

    /// True if this replica leads and `node`, a learner, holds every committed entry: it
    /// can be promoted without stalling commits.
    pub fn learner_caught_up(&self, node: rshard_raft::NodeId) -> bool {
        self.raft.role() == Role::Leader
            && self.raft.conf_state().learners.contains(&node)
            && self.raft.progress(node).is_some_and(|progress| {
                progress.state == rshard_raft::progress::ProgressState::Replicate
                    && progress.matched + LEARNER_CATCH_UP_SLACK_ENTRIES >= self.raft.commit_index()
            })
    }

    /// Membership changes in the log after the applied index: at most how many more conf
    /// versions this replica can reach before it hears from a leader again.
    pub fn unapplied_conf_changes(&self) -> Result<u64, StoreError> {
        use rshard_raft::Storage;
        let storage = self.raft.storage();
        let last = storage.last_index().map_err(super::driver::store_error)?;
        let mut next = self.raft.applied_index() + 1;
        let mut changes = 0;
        while next <= last {
            let entries = storage
                .entries(next, last + 1, 1 << 20)
                .map_err(super::driver::store_error)?;
            let Some(end) = entries.last().map(|entry| entry.index) else {
                break;
            };
            changes += entries
                .iter()
                .filter(|entry| matches!(entry.payload, Payload::ConfChange(_)))
                .count() as u64;
            next = end + 1;
        }
        Ok(changes)
    }

    /// A shard in a joint configuration is not split, frozen or merged: the new shard would
    /// have to start in the middle of a membership change, and the two shards of a merge
    /// must have one settled membership.
    fn check_settled(
        &self,
        refusal: fn(String) -> crate::kv::KvError,
    ) -> Result<(), crate::kv::KvError> {
        let conf = self.raft.conf_state();
        if conf.voters_outgoing.is_empty() && conf.learners_next.is_empty() {
            return Ok(());
        }
        Err(refusal(
            "the shard is changing its membership; retry once that is done".to_string(),
        ))
    }

    /// Every read waiting here, answered `StaleEpoch`: the shard's range just changed, and a
    /// read of a key it gave away must not be served from this replica's data.
    fn refuse_reads(&mut self, answers: &mut Vec<Answer>) {
        let error = RequestError::Refused(crate::kv::KvError::StaleEpoch {
            descriptor: Box::new(self.descriptor.clone()),
        });
        let reads = std::mem::take(&mut self.unconfirmed_reads)
            .into_keys()
            .chain(
                std::mem::take(&mut self.confirmed_reads)
                    .into_iter()
                    .map(|(_, read)| read.request),
            );
        answer_each(answers, reads, Err(error));
    }

    /// Brings the descriptor's members in line with `conf` (a membership change applied),
    /// bumping its conf version.
    fn set_members(&mut self, conf: &ConfState) {
        let voters: std::collections::BTreeSet<u64> =
            conf.voters.union(&conf.voters_outgoing).copied().collect();
        let learners: std::collections::BTreeSet<u64> =
            conf.learners.union(&conf.learners_next).copied().collect();
        self.descriptor.replicas = voters.into_iter().collect();
        self.descriptor.learners = learners.into_iter().collect();
        self.descriptor.epoch.conf_version += 1;
    }

    /// Stages what `ready` asks to persist and apply into `batch` (with `applier` holding
    /// the data writes), and queues the answers of applied proposals into `answers`, to be
    /// released only after the batch is durable. A snapshot starts an install: its marker
    /// goes into the batch and is returned (the data is installed in later steps). Shards
    /// split off by applied splits go to `split_off`, for the driver to create; shards
    /// merged into this one by applied merges go to `merged`, for the driver to retire.
    /// `frozen_here` holds this node's replicas of the right shards of the merges in
    /// `ready` (see [`Replica::merge_rights`]).
    #[allow(clippy::too_many_arguments)]
    pub fn stage(
        &mut self,
        ready: &Ready,
        applier: &mut Applier<'_>,
        batch: &mut NodeBatch,
        answers: &mut Vec<Answer>,
        split_off: &mut Vec<SplitOff>,
        merged: &mut Vec<rshard_common::shard::ShardId>,
        frozen_here: &BTreeMap<rshard_common::shard::ShardId, ShardDescriptor>,
    ) -> Result<Option<InstallMarker>, StoreError> {
        let group = self.descriptor.id;
        let mut install = None;
        if let Some(snapshot) = &ready.snapshot {
            let manifest =
                SnapshotManifest::decode(&snapshot.data).map_err(|detail| StoreError::Corrupt {
                    group,
                    what: "snapshot manifest",
                    detail,
                })?;
            let marker =
                InstallMarker::new(manifest.staging, &self.descriptor, &manifest.descriptor);
            batch.set_install_marker(group, &marker)?;
            batch.set_descriptor(group, &manifest.descriptor)?;
            install = Some(marker);
            self.descriptor = manifest.descriptor;
            if !ready.committed_entries.is_empty() {
                // The core never does this (nothing after a snapshot is durable yet); the
                // entries would apply to data the install has not written.
                return Err(StoreError::Corrupt {
                    group,
                    what: "ready",
                    detail: "committed entries with a snapshot".to_string(),
                });
            }
            let covered = snapshot.metadata.index;
            let skipped: Vec<Index> = self.proposals.range(..=covered).map(|(i, _)| *i).collect();
            for index in skipped {
                if let Some((_, requests)) = self.proposals.remove(&index) {
                    answer_each(answers, requests, Err(RequestError::OutcomeUnknown));
                }
            }
        }
        let storage = self.raft.storage().clone();
        batch.persist_ready(
            &storage,
            ready.snapshot.as_ref(),
            &ready.entries,
            ready.hard_state,
        )?;
        if let Some(last) = ready.committed_entries.last() {
            let epoch = self.descriptor.epoch;
            for entry in &ready.committed_entries {
                self.apply(entry, applier, answers, split_off, merged, frozen_here)?;
            }
            batch.set_applied(group, last.index, self.raft.conf_state().clone())?;
            if self.descriptor.epoch != epoch {
                batch.set_descriptor(group, &self.descriptor)?;
            }
        }
        Ok(install)
    }

    fn apply(
        &mut self,
        entry: &Entry,
        applier: &mut Applier<'_>,
        answers: &mut Vec<Answer>,
        split_off: &mut Vec<SplitOff>,
        merged: &mut Vec<rshard_common::shard::ShardId>,
        frozen_here: &BTreeMap<rshard_common::shard::ShardId, ShardDescriptor>,
    ) -> Result<(), StoreError> {
        let (entry_index, entry_term) = (entry.index, entry.term);
        let result = match &entry.payload {
            Payload::Empty => Applied::Nothing,
            Payload::ConfChange(_) if self.descriptor.merging_into.is_some() => {
                // Frozen: the members are final (every replica refuses alike).
                Applied::Membership(Err(format!(
                    "shard {} is frozen for a merge",
                    self.descriptor.id
                )))
            }
            Payload::ConfChange(change) => {
                // A refused change applies as a no-op on every replica alike.
                let before = self.raft.conf_state().clone();
                match self.raft.apply_conf_change(entry.index, change) {
                    Ok(conf) => {
                        if conf != before {
                            self.set_members(&conf);
                        }
                        Applied::Membership(Ok(self.descriptor.clone()))
                    }
                    Err(rshard_raft::Error::Storage(error)) => {
                        return Err(StoreError::Engine(error.to_string()))
                    }
                    Err(refusal) => Applied::Membership(Err(refusal.to_string())),
                }
            }
            Payload::Normal(bytes) => match crate::kv::decode_entry(bytes) {
                Ok(EntryCommands::Writes(commands)) => Applied::Commands(
                    commands
                        .iter()
                        .map(|command| applier.apply(&self.descriptor, command))
                        .collect::<Result<_, _>>()?,
                ),
                Ok(EntryCommands::Split(split)) => {
                    let outcome = split.split(&self.descriptor).and_then(|halves| {
                        self.check_settled(crate::kv::KvError::SplitRefused)
                            .map(|()| halves)
                    });
                    if let Ok((left, right)) = &outcome {
                        self.descriptor = left.clone();
                        self.refuse_reads(answers);
                        split_off.push((right.clone(), self.raft.conf_state().clone()));
                    }
                    Applied::Split(outcome)
                }
                Ok(EntryCommands::Freeze(freeze)) => {
                    let outcome = freeze.freeze(&self.descriptor).and_then(|frozen| {
                        self.check_settled(crate::kv::KvError::MergeRefused)
                            .map(|()| frozen)
                    });
                    if let Ok(frozen) = &outcome {
                        self.descriptor = frozen.clone();
                        self.refuse_reads(answers);
                    }
                    Applied::Frozen(outcome)
                }
                Ok(EntryCommands::Merge(merge)) => {
                    let outcome = merge.merge(&self.descriptor).and_then(|after| {
                        self.check_settled(crate::kv::KvError::MergeRefused)
                            .map(|()| after)
                    });
                    if let Ok(after) = &outcome {
                        // The right shard's data is in the shared keyspace; it is this
                        // shard's only if this node's replica of it applied everything up
                        // to its freeze. Placement proposes the merge only once every
                        // replica reported that, durably, so anything else is corruption.
                        if frozen_here.get(&merge.right.id) != Some(&merge.right) {
                            return Err(StoreError::Corrupt {
                                group: self.descriptor.id,
                                what: "merge",
                                detail: format!(
                                    "merging shard {} whose replica here is {:?}, not frozen as {:?}",
                                    merge.right.id,
                                    frozen_here.get(&merge.right.id),
                                    merge.right
                                ),
                            });
                        }
                        self.descriptor = after.clone();
                        self.refuse_reads(answers);
                        merged.push(merge.right.id);
                    }
                    Applied::Merged(outcome)
                }
                Ok(EntryCommands::AbortMerge(abort)) => {
                    let outcome = abort.abort(&self.descriptor);
                    if let Ok(bumped) = &outcome {
                        self.descriptor = bumped.clone();
                        self.refuse_reads(answers);
                    }
                    Applied::RangeChanged(outcome)
                }
                Ok(EntryCommands::Unfreeze(unfreeze)) => {
                    let outcome = unfreeze.unfreeze(&self.descriptor);
                    if let Ok(thawed) = &outcome {
                        self.descriptor = thawed.clone();
                    }
                    Applied::RangeChanged(outcome)
                }
                Err(refusal) => Applied::Malformed(refusal),
            },
        };
        // Proposals below this index were overwritten by other entries: never applied.
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() >= entry_index {
                break;
            }
            let (_, requests) = entry.remove();
            answer_each(answers, requests, Err(self.not_leader()));
        }
        let Some((term, requests)) = self.proposals.remove(&entry_index) else {
            return Ok(());
        };
        if term != entry_term {
            // Another leader's entry took the index: ours never applied.
            answer_each(answers, requests, Err(self.not_leader()));
            return Ok(());
        }
        match result {
            Applied::Commands(results) => {
                for (position, request) in requests.into_iter().enumerate() {
                    let answer = match results.get(position) {
                        Some(Ok(outcome)) => Ok(Response::Written(outcome.clone())),
                        Some(Err(refusal)) => Err(RequestError::Refused(refusal.clone())),
                        // Never: the entry holds the commands these requests proposed.
                        None => Err(RequestError::OutcomeUnknown),
                    };
                    answers.push((request, answer));
                }
            }
            Applied::Malformed(refusal) => {
                answer_each(answers, requests, Err(RequestError::Refused(refusal)))
            }
            Applied::Membership(outcome) => {
                let answer = match outcome {
                    Ok(descriptor) => Ok(Response::MembershipChanged(descriptor)),
                    Err(reason) => Err(RequestError::MembershipRefused(reason)),
                };
                answer_each(answers, requests, answer);
            }
            Applied::Split(outcome) => {
                let answer = match outcome {
                    Ok((left, right)) => Ok(Response::Split { left, right }),
                    Err(refusal) => Err(RequestError::Refused(refusal)),
                };
                answer_each(answers, requests, answer);
            }
            Applied::Frozen(outcome) => {
                let answer = outcome.map(Response::Frozen).map_err(RequestError::Refused);
                answer_each(answers, requests, answer);
            }
            Applied::Merged(outcome) => {
                let answer = outcome.map(Response::Merged).map_err(RequestError::Refused);
                answer_each(answers, requests, answer);
            }
            Applied::RangeChanged(outcome) => {
                let answer = outcome
                    .map(Response::RangeChanged)
                    .map_err(RequestError::Refused);
                answer_each(answers, requests, answer);
            }
            Applied::Nothing => {
                answer_each(answers, requests, Err(self.not_leader()));
            }
        }
        Ok(())
    }
}

/// Gives each of `requests` the same answer.
fn answer_each(
    answers: &mut Vec<Answer>,
    requests: impl IntoIterator<Item = RequestId>,
    answer: Result<Response, RequestError>,
) {
    answers.extend(
        requests
            .into_iter()
            .map(|request| (request, answer.clone())),
    );
}
