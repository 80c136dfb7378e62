//! Writes of many groups gathered into one atomic batch (group commit).

use rshard_raft::{ConfState, Entry, HardState, Index, LogPosition, Snapshot, Storage};
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::engine::{Space, Write};
use super::group::{AppliedState, GroupStorage};
use super::keys::{self, GroupId};
use super::StoreError;

/// Pending writes; nothing is visible or durable until [`super::NodeStore::commit`].
///
/// Each method reads the group's committed state to know what to replace, so write each
/// group at most once per kind per batch (the driver persists one Ready per group per batch).
/// A later write of the same key replaces an earlier one of the same batch.
pub struct NodeBatch {
    writes: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    /// Groups whose Raft log or state this batch changes (their cached reads go stale).
    pub(super) touched: BTreeSet<GroupId>,
}

impl std::fmt::Debug for NodeBatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("NodeBatch").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(
    group: GroupId,
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(value).map_err(|error| StoreError::Corrupt {
        group,
        what,
        detail: error.to_string(),
    })
}

impl NodeBatch {
    pub(crate) fn new() -> Self {
        NodeBatch {
            writes: BTreeMap::new(),
            touched: BTreeSet::new(),
        }
    }

    pub(crate) fn into_writes(self) -> (Vec<Write>, BTreeSet<GroupId>) {
        let writes = self
            .writes
            .into_iter()
            .map(|((space, key), value)| Write { space, key, value })
            .collect();
        (writes, self.touched)
    }

    /// True if nothing was written (so committing would only cost a sync).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// How many keys the batch writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub(super) fn put(&mut self, space: Space, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.writes.insert((space, key), value);
    }

    pub(super) fn put_state<T: Serialize>(
        &mut self,
        group: GroupId,
        tag: u8,
        what: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode(group, what, value)?;
        self.touched.insert(group);
        self.put(
            Space::State,
            keys::state_key(group, tag).to_vec(),
            Some(bytes),
        );
        Ok(())
    }

    fn remove_entries(&mut self, group: GroupId, indexes: impl IntoIterator<Item = Index>) {
        self.touched.insert(group);
        for index in indexes {
            self.put(Space::Log, keys::log_key(group, index).to_vec(), None);
        }
    }

    /// Persists what one Ready asks of a group: the snapshot (replacing the whole log), the
    /// entries (replacing any conflicting suffix) and the hard state, in one batch. Removals
    /// and inserts never touch the same key.
    pub fn persist_ready(
        &mut self,
        group: &GroupStorage,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), StoreError> {
        let id = group.group();
        let mut compacted = group.compacted()?;
        let old_last = group.stored_last_index()?;
        let mut stale: Vec<Index> = Vec::new();
        if let Some(snapshot) = snapshot {
            let metadata = &snapshot.metadata;
            stale = group.stored_indexes(compacted.index + 1, old_last)?;
            compacted = LogPosition {
                term: metadata.term,
                index: metadata.index,
            };
            self.put_state(id, keys::COMPACTED_TAG, "compaction point", &compacted)?;
            let applied = AppliedState {
                applied: metadata.index,
                conf_state: metadata.conf_state.clone(),
            };
            self.put_state(id, keys::APPLIED_STATE_TAG, "applied state", &applied)?;
        }
        let entries: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > compacted.index)
            .collect();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if snapshot.is_none() {
                stale = ((last.index + 1)..=old_last).collect();
            }
            stale.retain(|&index| index < first.index || index > last.index);
            self.touched.insert(id);
            for entry in &entries {
                let bytes = encode(id, "log entry", *entry)?;
                self.put(
                    Space::Log,
                    keys::log_key(id, entry.index).to_vec(),
                    Some(bytes),
                );
            }
        }
        self.remove_entries(id, stale);
        if let Some(hard_state) = hard_state {
            self.put_state(id, keys::HARD_STATE_TAG, "hard state", &hard_state)?;
        }
        Ok(())
    }

    /// Writes (or, with `None`, deletes) one user key in the data keyspace.
    pub fn write_data(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.put(Space::Data, key, value);
    }

    /// Records what the group's state machine has applied (with the data writes of the same
    /// entries, in the same batch).
    pub fn set_applied(
        &mut self,
        group: GroupId,
        applied: Index,
        conf_state: ConfState,
    ) -> Result<(), StoreError> {
        let state = AppliedState {
            applied,
            conf_state,
        };
        self.put_state(group, keys::APPLIED_STATE_TAG, "applied state", &state)
    }

    /// Records the shard a group replicates (at creation, and when a split or merge changes
    /// its range).
    /// Replaces the node's split gaps (see [`keys::SPLIT_GAPS_KEY`]).
    pub fn set_split_gaps(&mut self, gaps: &[super::KeySpan]) -> Result<(), StoreError> {
        self.set_node_list(keys::SPLIT_GAPS_KEY, "split gaps", gaps)
    }

    /// Replaces the node's data ranges still to clear (see [`keys::PENDING_CLEARS_KEY`]).
    pub fn set_pending_clears(&mut self, spans: &[super::KeySpan]) -> Result<(), StoreError> {
        self.set_node_list(keys::PENDING_CLEARS_KEY, "pending clears", spans)
    }

    /// Replaces the node's list of groups to retire (see [`keys::RETIRING_KEY`]).
    pub fn set_retiring(&mut self, groups: &[GroupId]) -> Result<(), StoreError> {
        self.set_node_list(keys::RETIRING_KEY, "retiring groups", groups)
    }

    fn set_node_list<T: Serialize>(
        &mut self,
        key: &[u8],
        what: &'static str,
        items: &[T],
    ) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec(items).map_err(|error| StoreError::Corrupt {
            group: 0,
            what,
            detail: error.to_string(),
        })?;
        self.put(Space::State, key.to_vec(), Some(bytes));
        Ok(())
    }

    /// Deletes a removed replica's log and Raft state (not its data: that is cleared in
    /// bounded steps) and leaves its tombstone: `conf_version`, the membership at which this
    /// node was known not to be a member.
    pub fn destroy_group(
        &mut self,
        group: &GroupStorage,
        conf_version: u64,
    ) -> Result<(), StoreError> {
        let id = group.group();
        let entries = group.stored_indexes(0, Index::MAX)?;
        self.remove_entries(id, entries);
        for tag in [
            keys::HARD_STATE_TAG,
            keys::APPLIED_STATE_TAG,
            keys::DESCRIPTOR_TAG,
            keys::COMPACTED_TAG,
            keys::INSTALL_TAG,
        ] {
            self.put(Space::State, keys::state_key(id, tag).to_vec(), None);
        }
        self.touched.insert(id);
        self.put_state(id, keys::TOMBSTONE_TAG, "tombstone", &conf_version)
    }

    pub fn set_descriptor(
        &mut self,
        group: GroupId,
        descriptor: &rshard_common::shard::ShardDescriptor,
    ) -> Result<(), StoreError> {
        self.put_state(group, keys::DESCRIPTOR_TAG, "shard descriptor", descriptor)
    }

    /// Drops entries up to `index`, never past the committed applied index: a follower that
    /// needs them is sent a snapshot, which is taken at the applied index.
    pub fn compact(&mut self, group: &GroupStorage, index: Index) -> Result<(), StoreError> {
        let covered = group.applied_state()?.applied;
        let index = index.min(covered);
        let compacted = group.compacted()?;
        if index <= compacted.index {
            return Ok(());
        }
        let term = group
            .term(index)
            .map_err(|e| StoreError::Engine(format!("compact to {index}: {e}")))?;
        let dropped = group.stored_indexes(compacted.index + 1, index)?;
        self.remove_entries(group.group(), dropped);
        self.put_state(
            group.group(),
            keys::COMPACTED_TAG,
            "compaction point",
            &LogPosition { term, index },
        )
    }

    /// An initial replica of a new group: its log starts after a snapshot at
    /// `MemStorage::BOOTSTRAP_INDEX` holding the initial membership (see the Raft core docs).
    pub fn bootstrap(&mut self, group: GroupId, conf_state: ConfState) -> Result<(), StoreError> {
        let start = rshard_raft::MemStorage::BOOTSTRAP_INDEX;
        let position = LogPosition {
            term: start,
            index: start,
        };
        self.put_state(group, keys::COMPACTED_TAG, "compaction point", &position)?;
        self.put_state(
            group,
            keys::APPLIED_STATE_TAG,
            "applied state",
            &AppliedState {
                applied: start,
                conf_state,
            },
        )?;
        let hard_state = HardState {
            term: start,
            vote: None,
            commit: start,
        };
        self.put_state(group, keys::HARD_STATE_TAG, "hard state", &hard_state)
    }
}
