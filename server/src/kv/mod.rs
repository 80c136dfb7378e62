//! The replicated key-value state machine of a shard.
//!
//! A [`KvCommand`] is what a shard's Raft log carries (a list of them per entry, see
//! [`encode_commands`]): put, delete and compare-and-swap operations, applied atomically
//! (all or none), routed with the shard epoch the client saw.
//! Applying is deterministic, so every replica reaches the same state and the same answer:
//! - the command's epoch version must equal the shard's (`StaleEpoch` otherwise: the range
//!   changed under the client, which must refresh its route);
//! - every key must lie in the shard's range (`KeyNotInShard`);
//! - sizes are bounded (`KeyTooLarge`, `ValueTooLarge`, `TooManyOps`);
//! - if any compare-and-swap's condition does not hold, nothing is written and the answer
//!   says which one failed and what it found.
//!
//! A refused command changes nothing. Writes go into the same node batch as the group's
//! applied index, so data and applied index are durable together.
//!
//! An entry may instead carry a [`SplitCommand`] (see [`decode_entry`]): the shard keeps
//! `[start, at)` and a new shard takes `[at, end)` with the same members. It is checked the
//! same way on every replica ([`SplitCommand::split`]), so all of them split at the same log
//! index or none does.
//!
//! A merge takes two entries, one in each shard (see docs/architecture.md for the protocol):
//! - [`FreezeCommand`] in the right-hand shard: it is marked `merging_into` its left
//!   neighbour (epoch version bumped) and from then on refuses every read, write, split
//!   and membership change (`ShardMerging`): its data and members are final;
//! - [`MergeCommand`] in the left-hand shard, carrying the frozen right descriptor: the
//!   left shard's range grows over the right's. Every replica checks it alike
//!   ([`MergeCommand::merge`]); the driver then retires its replica of the right shard
//!   (whose data, in the shared keyspace, is already where the left shard reads it).

use std::collections::BTreeMap;

use rshard_common::shard::{Epoch, ShardDescriptor, ShardId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::{KeyRange, NodeBatch, NodeStore, Space, StoreError};

pub const MAX_KEY_BYTES: usize = 4 << 10;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_OPS_PER_COMMAND: usize = 1024;

/// One operation of a command: the client's write operation, as it travels in the log.
pub use rshard_common::api::WriteOp as KvOp;

/// One replicated command: operations on one shard, applied all or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCommand {
    pub shard: ShardId,
    /// The epoch the client routed with.
    pub epoch: Epoch,
    pub ops: Vec<KvOp>,
}

/// Why a command was refused; nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KvError {
    #[error("key is outside shard {} ([{:?}, {:?})); refresh the route", descriptor.id, descriptor.start_key, descriptor.end_key)]
    KeyNotInShard {
        key: Vec<u8>,
        descriptor: Box<ShardDescriptor>,
    },
    #[error("shard {} changed (epoch {:?}); refresh the route", descriptor.id, descriptor.epoch)]
    StaleEpoch { descriptor: Box<ShardDescriptor> },
    #[error("command is for shard {command} but was applied by shard {shard}")]
    WrongShard { command: ShardId, shard: ShardId },
    #[error("key of {bytes} bytes exceeds the limit of {MAX_KEY_BYTES}")]
    KeyTooLarge { bytes: usize },
    #[error("value of {bytes} bytes exceeds the limit of {MAX_VALUE_BYTES}")]
    ValueTooLarge { bytes: usize },
    #[error("{count} operations exceed the limit of {MAX_OPS_PER_COMMAND} per command")]
    TooManyOps { count: usize },
    #[error("a command needs at least one operation")]
    Empty,
    #[error("undecodable command: {0}")]
    Malformed(String),
    #[error("split refused: {0}")]
    SplitRefused(String),
    #[error("shard {shard} is being merged into shard {into}; retry shortly")]
    ShardMerging { shard: ShardId, into: ShardId },
    #[error("merge refused: {0}")]
    MergeRefused(String),
}

/// The answer to a command that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutcome {
    /// Every operation was written.
    Applied,
    /// Operation `op` (a compare-and-swap) found `current`; nothing was written.
    ConditionFailed { op: usize, current: Option<Vec<u8>> },
}

impl KvCommand {
    /// One command alone: the entry format from before writes were batched, which
    /// [`decode_commands`] still reads. Nothing writes it any more but the tests.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: MessagePack encoding cannot fail.
        rmp_serde::to_vec(self).expect("a KvCommand always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        rmp_serde::from_slice(bytes).map_err(|e| KvError::Malformed(e.to_string()))
    }

    /// Bytes this command adds to a log entry, about (keys, values, and a little framing).
    pub fn size_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| 16 + op.key().len() + op.written_value().map_or(0, <[u8]>::len))
            .sum::<usize>()
            + 16
    }

    /// The checks that need no data: shard, epoch, range, sizes. Also used before proposing,
    /// to refuse bad commands without a trip through Raft.
    pub fn check(&self, descriptor: &ShardDescriptor) -> Result<(), KvError> {
        check_shard(descriptor, self.shard)?;
        if self.ops.is_empty() {
            return Err(KvError::Empty);
        }
        if self.ops.len() > MAX_OPS_PER_COMMAND {
            return Err(KvError::TooManyOps {
                count: self.ops.len(),
            });
        }
        check_epoch(descriptor, self.epoch)?;
        for op in &self.ops {
            let key = op.key();
            check_key_size(key)?;
            if let Some(value) = op.written_value().filter(|v| v.len() > MAX_VALUE_BYTES) {
                return Err(KvError::ValueTooLarge { bytes: value.len() });
            }
            check_in_shard(descriptor, key)?;
        }
        Ok(())
    }
}

/// The payload of one log entry of a data shard: commands applied in order, each all or none
/// on its own. A leader proposes the writes it takes in one iteration as one entry, so the
/// log, the messages and the storage batch carry one entry instead of one per write.
pub fn encode_commands(commands: &[KvCommand]) -> Vec<u8> {
    // Plain data into a Vec: MessagePack encoding cannot fail.
    rmp_serde::to_vec(commands).expect("commands always encode")
}

/// Splits shard `shard` at `at`: the shard keeps `[start, at)`, shard `new_shard` gets
/// `[at, end)`. Routed with the epoch the caller planned with, like a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCommand {
    pub shard: ShardId,
    pub epoch: Epoch,
    #[serde(with = "serde_bytes")]
    pub at: Vec<u8>,
    pub new_shard: ShardId,
}

/// The first byte of an entry that holds a [`SplitCommand`]. 0xc1 is the one byte
/// MessagePack never uses, so no entry of commands (a MessagePack value) starts with it.
const SPLIT_ENTRY_TAG: u8 = 0xc1;
/// The first two bytes of an entry that holds a [`RangeCommand`]: a split's second byte
/// starts a MessagePack value, so it is never 0xc1 either.
const RANGE_ENTRY_TAG: [u8; 2] = [0xc1, 0xc1];

/// What one log entry of a data shard carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryCommands {
    Writes(Vec<KvCommand>),
    Split(SplitCommand),
    Freeze(FreezeCommand),
    Merge(MergeCommand),
    AbortMerge(AbortMergeCommand),
    Unfreeze(UnfreezeCommand),
}

/// Freezes shard `shard` for its merge into `into`, its left neighbour. Routed with the
/// epoch the caller planned with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeCommand {
    pub shard: ShardId,
    pub epoch: Epoch,
    pub into: ShardId,
}

/// Merges shard `shard` with `right`, its frozen right neighbour: `epoch` is the left
/// shard's as planned (version and conf version), `right` the frozen descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCommand {
    pub shard: ShardId,
    pub epoch: Epoch,
    pub right: ShardDescriptor,
}

/// Rolls a merge back, in the left shard: bumps its epoch version if it is still at
/// `epoch`, so no merge planned before (all carry an older version) can apply any more.
/// Only then may the right shard be unfrozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortMergeCommand {
    pub shard: ShardId,
    pub epoch: Epoch,
    pub right: ShardId,
}

/// Unfreezes shard `shard`, frozen at epoch version `epoch.version` for a merge into
/// `into` that was rolled back (see [`AbortMergeCommand`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfreezeCommand {
    pub shard: ShardId,
    pub epoch: Epoch,
    pub into: ShardId,
}

// Variants added later go last: entries in logs decode by position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum RangeCommand {
    Freeze(FreezeCommand),
    Merge(MergeCommand),
    AbortMerge(AbortMergeCommand),
    Unfreeze(UnfreezeCommand),
}

impl AbortMergeCommand {
    pub fn encode(&self) -> Vec<u8> {
        encode_range_command(&RangeCommand::AbortMerge(self.clone()))
    }

    /// The left shard's descriptor with its version bumped, if it is still at the epoch
    /// version the rollback was decided at.
    pub fn abort(&self, descriptor: &ShardDescriptor) -> Result<ShardDescriptor, KvError> {
        check_shard(descriptor, self.shard)?;
        check_epoch(descriptor, self.epoch)?;
        let mut bumped = descriptor.clone();
        bumped.epoch.version += 1;
        Ok(bumped)
    }
}

impl UnfreezeCommand {
    pub fn encode(&self) -> Vec<u8> {
        encode_range_command(&RangeCommand::Unfreeze(self.clone()))
    }

    /// The shard's descriptor unfrozen (version bumped), if it is frozen into `into` at
    /// the epoch version given.
    pub fn unfreeze(&self, descriptor: &ShardDescriptor) -> Result<ShardDescriptor, KvError> {
        check_shard(descriptor, self.shard)?;
        if descriptor.merging_into != Some(self.into)
            || descriptor.epoch.version != self.epoch.version
        {
            return Err(KvError::MergeRefused(format!(
                "shard {} is not frozen for a merge into {} at version {}",
                descriptor.id, self.into, self.epoch.version
            )));
        }
        let mut thawed = descriptor.clone();
        thawed.merging_into = None;
        thawed.epoch.version += 1;
        Ok(thawed)
    }
}

/// True if `bytes` (an entry's payload) holds a freeze or a merge.
pub fn is_range_command(bytes: &[u8]) -> bool {
    bytes.starts_with(&RANGE_ENTRY_TAG)
}

fn encode_range_command(command: &RangeCommand) -> Vec<u8> {
    let mut bytes = RANGE_ENTRY_TAG.to_vec();
    // Plain data into a Vec: MessagePack encoding cannot fail.
    bytes.extend(rmp_serde::to_vec(command).expect("a range command always encodes"));
    bytes
}

impl FreezeCommand {
    pub fn encode(&self) -> Vec<u8> {
        encode_range_command(&RangeCommand::Freeze(self.clone()))
    }

    /// The shard's descriptor once frozen, if `descriptor` (as it is when the entry
    /// applies) may be: the epoch (version and conf version) is the one planned, it is not
    /// frozen yet, it has no learners. (Not in a joint configuration either: the replica
    /// checks that.)
    pub fn freeze(&self, descriptor: &ShardDescriptor) -> Result<ShardDescriptor, KvError> {
        check_shard(descriptor, self.shard)?;
        check_epoch(descriptor, self.epoch)?;
        if descriptor.epoch.conf_version != self.epoch.conf_version {
            return Err(KvError::MergeRefused(format!(
                "shard {}'s membership changed since the merge was planned",
                descriptor.id
            )));
        }
        if self.into == descriptor.id {
            return Err(KvError::MergeRefused(
                "a shard cannot merge into itself".to_string(),
            ));
        }
        if !descriptor.learners.is_empty() {
            return Err(KvError::MergeRefused(format!(
                "shard {} has learners; retry once they are promoted or removed",
                descriptor.id
            )));
        }
        let mut frozen = descriptor.clone();
        frozen.merging_into = Some(self.into);
        frozen.epoch.version += 1;
        Ok(frozen)
    }
}

impl MergeCommand {
    pub fn encode(&self) -> Vec<u8> {
        encode_range_command(&RangeCommand::Merge(self.clone()))
    }

    /// The left shard's descriptor after the merge, if `descriptor` (as it is when the
    /// entry applies) may take `right`: its epoch (version and conf version) is the one
    /// planned, `right` is frozen into it and starts where it ends, and both have the same
    /// voters and no learners. Every replica decides alike.
    pub fn merge(&self, descriptor: &ShardDescriptor) -> Result<ShardDescriptor, KvError> {
        check_shard(descriptor, self.shard)?;
        check_epoch(descriptor, self.epoch)?;
        let refuse = |reason: String| Err(KvError::MergeRefused(reason));
        let right = &self.right;
        if descriptor.epoch.conf_version != self.epoch.conf_version {
            return refuse(format!(
                "shard {}'s membership changed since the merge was planned",
                descriptor.id
            ));
        }
        if right.merging_into != Some(descriptor.id) {
            return refuse(format!("shard {} is not frozen for this merge", right.id));
        }
        if descriptor.end_key.is_empty() || descriptor.end_key != right.start_key {
            return refuse(format!(
                "shard {} does not start where shard {} ends",
                right.id, descriptor.id
            ));
        }
        let voters = |d: &ShardDescriptor| {
            let mut voters = d.replicas.clone();
            voters.sort_unstable();
            voters
        };
        if voters(descriptor) != voters(right)
            || !descriptor.learners.is_empty()
            || !right.learners.is_empty()
        {
            return refuse(format!(
                "shards {} and {} are not on the same nodes",
                descriptor.id, right.id
            ));
        }
        let mut merged = descriptor.clone();
        merged.end_key = right.end_key.clone();
        merged.epoch.version = descriptor.epoch.version.max(right.epoch.version) + 1;
        Ok(merged)
    }
}

impl SplitCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![SPLIT_ENTRY_TAG];
        // Plain data into a Vec: MessagePack encoding cannot fail.
        bytes.extend(rmp_serde::to_vec(self).expect("a split always encodes"));
        bytes
    }

    /// The two descriptors the split leaves, if it may happen to `descriptor` (the shard as
    /// it is when the entry applies). Every replica decides alike.
    pub fn split(
        &self,
        descriptor: &ShardDescriptor,
    ) -> Result<(ShardDescriptor, ShardDescriptor), KvError> {
        check_shard(descriptor, self.shard)?;
        check_epoch(descriptor, self.epoch)?;
        check_key_size(&self.at)?;
        let refuse = |reason: &str| Err(KvError::SplitRefused(reason.to_string()));
        if self.at.as_slice() <= descriptor.start_key.as_slice() || !descriptor.contains(&self.at) {
            return refuse("the split key must lie inside the shard, after its first key");
        }
        if self.new_shard == descriptor.id {
            return refuse("the new shard needs its own id");
        }
        let mut left = descriptor.clone();
        left.end_key = self.at.clone();
        left.epoch.version += 1;
        let right = ShardDescriptor {
            id: self.new_shard,
            start_key: self.at.clone(),
            end_key: descriptor.end_key.clone(),
            epoch: left.epoch,
            replicas: descriptor.replicas.clone(),
            learners: descriptor.learners.clone(),
            merging_into: None,
        };
        Ok((left, right))
    }
}

/// Decodes one entry of a data shard: a split, or writes (see [`decode_commands`]).
pub fn decode_entry(bytes: &[u8]) -> Result<EntryCommands, KvError> {
    if let Some(rest) = bytes.strip_prefix(&RANGE_ENTRY_TAG) {
        return match rmp_serde::from_slice(rest) {
            Ok(RangeCommand::Freeze(freeze)) => Ok(EntryCommands::Freeze(freeze)),
            Ok(RangeCommand::Merge(merge)) => Ok(EntryCommands::Merge(merge)),
            Ok(RangeCommand::AbortMerge(abort)) => Ok(EntryCommands::AbortMerge(abort)),
            Ok(RangeCommand::Unfreeze(unfreeze)) => Ok(EntryCommands::Unfreeze(unfreeze)),
            Err(error) => Err(KvError::Malformed(error.to_string())),
        };
    }
    match bytes.split_first() {
        Some((&SPLIT_ENTRY_TAG, rest)) => rmp_serde::from_slice(rest)
            .map(EntryCommands::Split)
            .map_err(|e| KvError::Malformed(e.to_string())),
        _ => decode_commands(bytes).map(EntryCommands::Writes),
    }
}

/// Decodes an entry written by [`encode_commands`], or by earlier versions, which wrote one
/// command per entry (a MessagePack array of commands never decodes as one command, nor the
/// reverse, so the two cannot be confused).
pub fn decode_commands(bytes: &[u8]) -> Result<Vec<KvCommand>, KvError> {
    match rmp_serde::from_slice::<Vec<KvCommand>>(bytes) {
        Ok(commands) => Ok(commands),
        Err(error) => KvCommand::decode(bytes)
            .map(|command| vec![command])
            .map_err(|_| KvError::Malformed(error.to_string())),
    }
}

/// The checks of a read of `key` routed to shard `shard` at `epoch`: the same shard, epoch,
/// key-size and range checks a command gets.
pub fn check_read(
    descriptor: &ShardDescriptor,
    shard: ShardId,
    epoch: Epoch,
    key: &[u8],
) -> Result<(), KvError> {
    check_shard(descriptor, shard)?;
    check_epoch(descriptor, epoch)?;
    check_key_size(key)?;
    check_in_shard(descriptor, key)
}

fn check_shard(descriptor: &ShardDescriptor, shard: ShardId) -> Result<(), KvError> {
    if shard != descriptor.id {
        return Err(KvError::WrongShard {
            command: shard,
            shard: descriptor.id,
        });
    }
    Ok(())
}

fn check_epoch(descriptor: &ShardDescriptor, epoch: Epoch) -> Result<(), KvError> {
    // A frozen shard serves nothing: its range is about to belong to its left neighbour,
    // whose writes it would not see.
    if let Some(into) = descriptor.merging_into {
        return Err(KvError::ShardMerging {
            shard: descriptor.id,
            into,
        });
    }
    if epoch.version != descriptor.epoch.version {
        return Err(KvError::StaleEpoch {
            descriptor: Box::new(descriptor.clone()),
        });
    }
    Ok(())
}

fn check_key_size(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLarge { bytes: key.len() });
    }
    Ok(())
}

fn check_in_shard(descriptor: &ShardDescriptor, key: &[u8]) -> Result<(), KvError> {
    if !descriptor.contains(key) {
        return Err(KvError::KeyNotInShard {
            key: key.to_vec(),
            descriptor: Box::new(descriptor.clone()),
        });
    }
    Ok(())
}

/// Applies commands into one node batch. Later commands in the same batch see the writes of
/// earlier ones (the batch itself cannot be read before it commits).
#[derive(Debug)]
pub struct Applier<'store> {
    store: &'store NodeStore,
    /// This batch's writes so far: key -> new value (`None`: deleted).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'store> Applier<'store> {
    pub fn new(store: &'store NodeStore) -> Self {
        Applier {
            store,
            pending: BTreeMap::new(),
        }
    }

    /// The value of `key` as of the commands applied so far.
    pub fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.pending.get(key) {
            return Ok(pending.clone());
        }
        read_committed(self.store, key)
    }

    /// Applies one command. The outer error is a storage failure (stop the node); the inner
    /// one a refusal that every replica makes alike.
    pub fn apply(
        &mut self,
        descriptor: &ShardDescriptor,
        command: &KvCommand,
    ) -> Result<Result<KvOutcome, KvError>, StoreError> {
        if let Err(refusal) = command.check(descriptor) {
            return Ok(Err(refusal));
        }
        for (index, op) in command.ops.iter().enumerate() {
            if let KvOp::CompareAndSwap { key, expected, .. } = op {
                let current = self.read(key)?;
                if &current != expected {
                    return Ok(Ok(KvOutcome::ConditionFailed { op: index, current }));
                }
            }
        }
        for op in &command.ops {
            self.pending
                .insert(op.key().to_vec(), op.written_value().map(<[u8]>::to_vec));
        }
        Ok(Ok(KvOutcome::Applied))
    }

    /// Moves the writes into `batch`, to be committed with the applied index.
    pub fn finish(self, batch: &mut NodeBatch) {
        for (key, value) in self.pending {
            batch.write_data(key, value);
        }
    }
}

/// The shard's range of the data keyspace.
pub fn shard_range(descriptor: &ShardDescriptor) -> KeyRange<'_> {
    KeyRange {
        start: &descriptor.start_key,
        end: (!descriptor.end_key.is_empty()).then_some(&descriptor.end_key[..]),
    }
}

/// A key and its value.
pub type Item = (Vec<u8>, Vec<u8>);

/// The committed keys in `[start, end)` (`None`: to the end of the key space), in order: at
/// most `limit` items and about `max_bytes` of keys and values (always at least one item).
/// `more` is true if the page stopped before the range did.
pub fn scan_committed(
    store: &NodeStore,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<Item>, bool), StoreError> {
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut more = false;
    let range = KeyRange { start, end };
    store.scan(
        Space::Data,
        range,
        crate::storage::ScanOrder::Ascending,
        &mut |key, value| {
            if items.len() >= limit || (!items.is_empty() && bytes >= max_bytes) {
                more = true;
                return std::ops::ControlFlow::Break(());
            }
            bytes += key.len() + value.len();
            items.push((key.to_vec(), value.to_vec()));
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok((items, more))
}

/// The committed value of `key` (for reads served after ReadIndex).
pub fn read_committed(store: &NodeStore, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    store.get(Space::Data, key)
}

#[cfg(test)]
mod tests;
