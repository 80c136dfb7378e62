//! The read-only view of persisted state the core needs, and an in-memory implementation.
//!
//! The core never writes storage. The caller writes what a [`crate::Ready`] hands it (entries,
//! hard state, snapshot) and compacts the log; the core reads back through [`Storage`].
//!
//! Contract of a `Storage`: the log holds the contiguous entries `first_index()..=last_index()`;
//! `term(first_index() - 1)` answers the term of the entry the last snapshot or compaction
//! replaced (the "dummy" entry), so the entry before the first retained one can still be
//! matched. `Compacted` and `Unavailable` are normal answers; any other error is fatal for
//! the group.

use thiserror::Error;

use crate::types::{
    ConfState, Entry, HardState, Index, LogPosition, Snapshot, SnapshotMetadata, Term,
};

/// What a storage read can answer besides data.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StorageError {
    /// The entry was compacted into a snapshot.
    #[error("the requested index is compacted")]
    Compacted,
    /// The entry is past the end of the log.
    #[error("the requested index is past the end of the log")]
    Unavailable,
    /// A snapshot is being built; ask again later.
    #[error("no snapshot is available yet")]
    SnapshotTemporarilyUnavailable,
    /// The storage failed (IO error, corruption). The group cannot go on.
    #[error("storage failed: {0}")]
    Failed(String),
}

/// The persisted state a replica restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    pub hard_state: HardState,
    /// The configuration as of the last applied membership change or snapshot.
    pub conf_state: ConfState,
}

/// Read access to a replica's persisted log and snapshot.
pub trait Storage {
    fn initial_state(&self) -> Result<InitialState, StorageError>;
    /// Entries in `[low, high)`, stopping once `max_bytes` is reached but always returning at
    /// least one entry if the range is not empty.
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    fn first_index(&self) -> Result<Index, StorageError>;
    fn last_index(&self) -> Result<Index, StorageError>;
    /// The most recent snapshot, to send to a follower that is behind the first index.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// A `Storage` in memory, with the write operations a caller performs. Used by tests, the
/// simulator and benchmarks; the node's real storage lives in the server crate.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; covers at least everything compacted.
    snapshot: Snapshot,
    /// The entry just before `entries[0]`: the last compacted one (or the snapshot's).
    dummy: LogPosition,
    /// Entries after `dummy`, contiguous.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// The first member of a new group: the log starts after a snapshot at
    /// [`MemStorage::BOOTSTRAP_INDEX`] that holds the initial membership and `data`.
    ///
    /// Starting past index 0 matters: a replica added later starts empty (last index 0), so
    /// the leader finds the entries it needs compacted and must send a snapshot, which carries
    /// the configuration. Without it the new replica would apply membership changes to an
    /// empty configuration.
    pub fn bootstrap(conf_state: ConfState, data: Vec<u8>) -> Self {
        let position = LogPosition {
            term: Self::BOOTSTRAP_INDEX,
            index: Self::BOOTSTRAP_INDEX,
        };
        MemStorage {
            hard_state: HardState {
                term: position.term,
                vote: None,
                commit: position.index,
            },
            snapshot: Snapshot {
                metadata: SnapshotMetadata {
                    index: position.index,
                    term: position.term,
                    conf_state: conf_state.clone(),
                },
                data,
            },
            conf_state,
            dummy: position,
            entries: Vec::new(),
        }
    }

    /// Index (and term) of the snapshot every bootstrapped group starts from.
    pub const BOOTSTRAP_INDEX: Index = 1;

    /// A fresh replica whose members are `conf_state`, with an empty log from index 1. Fine
    /// when every member starts this way (tests); a replica added later must start empty
    /// (`MemStorage::default()`) and receive a snapshot, see [`MemStorage::bootstrap`].
    pub fn new_with_conf_state(conf_state: ConfState) -> Self {
        MemStorage {
            snapshot: Snapshot {
                metadata: SnapshotMetadata {
                    conf_state: conf_state.clone(),
                    ..Default::default()
                },
                data: Vec::new(),
            },
            conf_state,
            ..MemStorage::default()
        }
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Records the configuration the caller just applied.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Appends entries, replacing any existing suffix they conflict with. Entries at or
    /// before the compacted prefix are skipped: they are committed and already covered.
    pub fn append(&mut self, entries: &[Entry]) {
        let entries: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > self.dummy.index)
            .collect();
        let Some(first) = entries.first() else { return };
        let keep = (first.index - self.dummy.index - 1) as usize;
        assert!(
            keep <= self.entries.len(),
            "append at {} leaves a gap",
            first.index
        );
        self.entries.truncate(keep);
        self.entries.extend(entries.into_iter().cloned());
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let metadata = &snapshot.metadata;
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.conf_state = metadata.conf_state.clone();
        self.dummy = LogPosition {
            term: metadata.term,
            index: metadata.index,
        };
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Records a snapshot of the local state machine at `index`, which the caller has applied.
    /// The log is kept; [`MemStorage::compact`] discards it.
    pub fn create_snapshot(
        &mut self,
        index: Index,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        if index <= self.snapshot.metadata.index {
            return Ok(());
        }
        let term = self.term(index)?;
        self.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(())
    }

    /// Discards entries up to and including `index`. Only entries covered by the latest
    /// snapshot can go, so a follower that needs them can always be sent that snapshot.
    pub fn compact(&mut self, index: Index) -> Result<(), StorageError> {
        let index = index.min(self.snapshot.metadata.index);
        if index <= self.dummy.index {
            return Ok(());
        }
        let term = self.term(index)?;
        self.entries.drain(..(index - self.dummy.index) as usize);
        self.dummy = LogPosition { term, index };
        Ok(())
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.dummy.index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index()? + 1 {
            return Err(StorageError::Unavailable);
        }
        let start = (low - self.dummy.index - 1) as usize;
        let end = (high - self.dummy.index - 1) as usize;
        Ok(crate::log::limit_bytes(&self.entries[start..end], max_bytes).to_vec())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.dummy.index {
            return Ok(self.dummy.term);
        }
        if index < self.dummy.index {
            return Err(StorageError::Compacted);
        }
        let offset = (index - self.dummy.index - 1) as usize;
        self.entries
            .get(offset)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.dummy.index + 1)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.dummy.index + self.entries.len() as u64)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}
