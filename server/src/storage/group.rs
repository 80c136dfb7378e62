//! One group's view of the node store, implementing the Raft core's read-only `Storage`.

use rshard_common::shard::ShardDescriptor;
use rshard_raft::{
    ConfState, Entry, HardState, Index, InitialState, LogPosition, Snapshot, SnapshotMetadata,
    Storage, StorageError, Term,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::engine::{KeyRange, ScanOrder, Space};
use super::keys::{self, GroupId};
use super::{NodeStore, StoreError};

/// What a group's state machine has applied, persisted atomically with the applied data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub applied: Index,
    pub conf_state: ConfState,
}

/// The persisted Raft state of one group.
#[derive(Clone, Debug)]
pub struct GroupStorage {
    store: NodeStore,
    group: GroupId,
}

pub(crate) fn decode<T: DeserializeOwned>(
    group: GroupId,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        group,
        what,
        detail: error.to_string(),
    })
}

impl GroupStorage {
    pub(crate) fn new(store: NodeStore, group: GroupId) -> Self {
        GroupStorage { store, group }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn read_state<T: DeserializeOwned>(
        &self,
        tag: u8,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let bytes = self
            .store
            .get(Space::State, &keys::state_key(self.group, tag))?;
        bytes
            .map(|bytes| decode(self.group, what, &bytes))
            .transpose()
    }

    pub fn hard_state(&self) -> Result<HardState, StoreError> {
        Ok(self
            .read_state(keys::HARD_STATE_TAG, "hard state")?
            .unwrap_or_default())
    }

    pub fn applied_state(&self) -> Result<AppliedState, StoreError> {
        self.store.cached(
            self.group,
            |cache| &mut cache.applied,
            || {
                Ok(self
                    .read_state(keys::APPLIED_STATE_TAG, "applied state")?
                    .unwrap_or_default())
            },
        )
    }

    /// The last position compacted away; (0, 0) for a log that never was.
    pub fn compacted(&self) -> Result<LogPosition, StoreError> {
        self.store.cached(
            self.group,
            |cache| &mut cache.compacted,
            || {
                Ok(self
                    .read_state(keys::COMPACTED_TAG, "compaction point")?
                    .unwrap_or_default())
            },
        )
    }

    /// The snapshot install this group is in the middle of, if any.
    pub fn install_marker(&self) -> Result<Option<super::InstallMarker>, StoreError> {
        self.read_state(keys::INSTALL_TAG, "install marker")
    }

    /// The shard this group replicates, if it was created on this node.
    pub fn descriptor(&self) -> Result<Option<ShardDescriptor>, StoreError> {
        self.read_state(keys::DESCRIPTOR_TAG, "shard descriptor")
    }

    /// The highest index with an entry, or the compaction point if none is left.
    pub(crate) fn stored_last_index(&self) -> Result<Index, StoreError> {
        self.store.cached(
            self.group,
            |cache| &mut cache.last_index,
            || self.read_last_index(),
        )
    }

    fn read_last_index(&self) -> Result<Index, StoreError> {
        let (start, end) = (
            keys::log_key(self.group, 0),
            keys::group_prefix(self.group + 1),
        );
        let range = KeyRange {
            start: &start,
            end: (self.group < GroupId::MAX).then_some(&end[..]),
        };
        let mut last = None;
        self.store
            .scan(Space::Log, range, ScanOrder::Descending, &mut |key, _| {
                last = Some(key.to_vec());
                std::ops::ControlFlow::Break(())
            })?;
        match last {
            Some(key) => keys::index_of_log_key(&key).ok_or(StoreError::Corrupt {
                group: self.group,
                what: "log key",
                detail: format!("{} bytes", key.len()),
            }),
            None => Ok(self.compacted()?.index),
        }
    }

    fn entry(&self, index: Index) -> Result<Option<Entry>, StoreError> {
        let bytes = self
            .store
            .get(Space::Log, &keys::log_key(self.group, index))?;
        let entry: Option<Entry> = bytes
            .map(|b| decode(self.group, "log entry", &b))
            .transpose()?;
        match entry {
            Some(entry) if entry.index != index => Err(StoreError::Corrupt {
                group: self.group,
                what: "log entry",
                detail: format!("entry {} stored at index {index}", entry.index),
            }),
            other => Ok(other),
        }
    }

    /// The indexes of the stored entries in `[low, high]`, in order.
    pub(crate) fn stored_indexes(&self, low: Index, high: Index) -> Result<Vec<Index>, StoreError> {
        if low > high {
            return Ok(Vec::new());
        }
        let (start, end) = (
            keys::log_key(self.group, low),
            keys::log_key(self.group, high),
        );
        let range = KeyRange {
            start: &start,
            end: None,
        };
        let mut indexes = Vec::new();
        self.store
            .scan(Space::Log, range, ScanOrder::Ascending, &mut |key, _| {
                if key > &end[..] {
                    return std::ops::ControlFlow::Break(());
                }
                indexes.extend(keys::index_of_log_key(key));
                std::ops::ControlFlow::Continue(())
            })?;
        Ok(indexes)
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state()?,
            conf_state: self.applied_state()?.conf_state,
        })
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.compacted()?.index {
            return Err(StorageError::Compacted);
        }
        if high > self.stored_last_index()? + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut total = 0;
        let mut failure = None;
        let (start, end) = (
            keys::log_key(self.group, low),
            keys::log_key(self.group, high),
        );
        let range = KeyRange {
            start: &start,
            end: Some(&end),
        };
        self.store
            .scan(Space::Log, range, ScanOrder::Ascending, &mut |_, value| {
                let entry: Entry = match decode(self.group, "log entry", value) {
                    Ok(entry) => entry,
                    Err(error) => {
                        failure = Some(error);
                        return std::ops::ControlFlow::Break(());
                    }
                };
                total += entry.size_bytes();
                if !entries.is_empty() && total > max_bytes {
                    return std::ops::ControlFlow::Break(());
                }
                let expected = low + entries.len() as u64;
                if entry.index != expected {
                    failure = Some(StoreError::Corrupt {
                        group: self.group,
                        what: "log",
                        detail: format!("entry {} where {expected} was expected", entry.index),
                    });
                    return std::ops::ControlFlow::Break(());
                }
                entries.push(entry);
                std::ops::ControlFlow::Continue(())
            })?;
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(entries),
        }
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let compacted = self.compacted()?;
        if index == compacted.index {
            return Ok(compacted.term);
        }
        if index < compacted.index {
            return Err(StorageError::Compacted);
        }
        self.entry(index)?
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.compacted()?.index + 1)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.stored_last_index()?)
    }

    /// The state machine as of its committed applied index. The Raft core sees only the
    /// metadata: the shard's data is a range of the data keyspace that the driver scans when
    /// it sends the snapshot, before anything else is committed, so data and index agree.
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let applied = self.applied_state()?;
        let term = self.term(applied.applied)?;
        Ok(Snapshot {
            metadata: SnapshotMetadata {
                index: applied.applied,
                term,
                conf_state: applied.conf_state,
            },
            data: Vec::new(),
        })
    }
}
