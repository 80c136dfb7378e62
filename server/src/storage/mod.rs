//! The node's durable storage: one engine (fjall) for every group on the node.
//!
//! Keyspaces: `raft_log` (entries of every group), `raft_state` (per group: hard state,
//! applied index with its configuration, compaction point, shard descriptor, install
//! marker), `data` (user keys of every shard; a shard is a key range of it, so a split moves
//! no bytes) and `snapshot_staging` (received snapshot chunks not yet installed).
//!
//! A group's snapshot is not stored: it is its state machine as of the committed applied
//! index, i.e. that metadata plus the shard's range of `data`, read from a point-in-time
//! [`StoreView`]. Compaction never passes the applied index, so such a snapshot always covers
//! the compacted prefix. Receiving and installing one: see `storage/snapshot.rs`.
//!
//! Contract:
//! - Writes of any number of groups go into one [`NodeBatch`], made atomic and durable by
//!   one [`NodeStore::commit`]: one journal write and one sync for the whole batch (group
//!   commit across groups).
//! - Nothing that depends on a batch may be sent or acknowledged before `commit` returns.
//! - A failed write or sync **poisons** the store: it is never retried (after a failed fsync
//!   the kernel may have dropped the dirty pages, so a retry could falsely succeed). Every
//!   later commit and read fails with [`StoreError::Poisoned`], and the node must stop.
//! - Bytes read back that do not decode are [`StoreError::Corrupt`], never a panic.
//!
//! The engine is a trait ([`Engine`]): fjall in production ([`FjallEngine`]), an in-memory
//! engine that loses unsynced batches on a simulated crash in tests ([`MemEngine`]).

mod batch;
pub mod engine;
mod group;
pub mod keys;
mod snapshot;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use thiserror::Error;

pub use batch::NodeBatch;
pub use engine::{
    Durability, Engine, EngineView, FjallEngine, KeyRange, MemEngine, ScanOrder, Space, SyncData,
    Write,
};
pub use group::{AppliedState, GroupStorage};
pub use keys::{GroupId, StagingId};
pub use snapshot::{
    item_cost_bytes, InstallMarker, InstallPhase, InstallProgress, KeySpan, StagingDiscard,
    StepBudget, PER_KEY_COST_BYTES,
};

/// Why a storage operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The engine reported an error (IO, or its own failure).
    #[error("storage engine error: {0}")]
    Engine(String),
    /// Stored bytes did not decode: the disk or a bug corrupted them.
    #[error("corrupt {what} for group {group}: {detail}")]
    Corrupt {
        group: GroupId,
        what: &'static str,
        detail: String,
    },
    /// An earlier write or sync failed; the store accepts nothing more. Restart the node.
    #[error("storage is poisoned by an earlier failure ({0}); the node must restart")]
    Poisoned(String),
}

impl From<StoreError> for rshard_raft::StorageError {
    fn from(error: StoreError) -> Self {
        rshard_raft::StorageError::Failed(error.to_string())
    }
}

/// What a group's Raft storage reads most, cached between the commits that change it.
/// Filled on a read miss; dropped for every group a committed batch touched.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupCache {
    pub compacted: Option<rshard_raft::LogPosition>,
    pub last_index: Option<rshard_raft::Index>,
    pub applied: Option<AppliedState>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    cache: Mutex<HashMap<GroupId, GroupCache>>,
    /// Set once, by the first failed write or sync; never cleared.
    poison: Mutex<Option<String>>,
}

/// Which node of which cluster a store belongs to: written once, when the node bootstraps
/// a cluster or joins one, and checked at every start.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    pub node: u64,
    pub cluster: String,
}

/// The node's storage. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct NodeStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeStore")
            .field("poisoned", &self.poisoned())
            .finish()
    }
}

impl NodeStore {
    /// Opens (or creates) the fjall store in `path`, syncing with fdatasync.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_durability(path, Box::new(SyncData))
    }

    pub fn open_with_durability(
        path: &Path,
        durability: Box<dyn Durability>,
    ) -> Result<Self, StoreError> {
        let engine = FjallEngine::open(path, durability).map_err(StoreError::Engine)?;
        Ok(Self::with_engine(Arc::new(engine)))
    }

    /// A store over any engine (the in-memory one in tests and simulations).
    pub fn with_engine(engine: Arc<dyn Engine>) -> Self {
        let inner = Inner {
            engine,
            cache: Mutex::new(HashMap::new()),
            poison: Mutex::new(None),
        };
        NodeStore {
            inner: Arc::new(inner),
        }
    }

    /// The read side of one group's Raft storage.
    pub fn group(&self, group: GroupId) -> GroupStorage {
        GroupStorage::new(self.clone(), group)
    }

    pub fn batch(&self) -> NodeBatch {
        NodeBatch::new()
    }

    /// Makes `batch` atomic and durable: one engine write, one sync. On failure the store
    /// is poisoned and the error says so; nothing is retried.
    pub fn commit(&self, batch: NodeBatch) -> Result<(), StoreError> {
        self.write(batch)?;
        self.sync()
    }

    /// Applies `batch` atomically: visible to reads at once, durable only after the next
    /// [`NodeStore::sync`]. A failure poisons the store.
    pub fn write(&self, batch: NodeBatch) -> Result<(), StoreError> {
        self.check_poison()?;
        let (writes, touched) = batch.into_writes();
        let written = self.inner.engine.write(writes);
        {
            let mut cache = self.cache();
            for group in touched {
                cache.remove(&group);
            }
        }
        if let Err(error) = written {
            return Err(self.poison(format!("write failed: {error}")));
        }
        Ok(())
    }

    /// Makes every write so far durable. A failure poisons the store.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.check_poison()?;
        if let Err(error) = self.inner.engine.sync() {
            return Err(self.poison(format!("sync failed: {error}")));
        }
        Ok(())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, GroupCache>> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached value of `group`, or `read` it and cache it with `store`.
    pub(crate) fn cached<T: Clone>(
        &self,
        group: GroupId,
        field: fn(&mut GroupCache) -> &mut Option<T>,
        read: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.check_poison()?;
        if let Some(value) = self.cache().get_mut(&group).and_then(|c| field(c).clone()) {
            return Ok(value);
        }
        let value = read()?;
        *field(self.cache().entry(group).or_default()) = Some(value.clone());
        Ok(value)
    }

    /// Why the store is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        self.inner
            .poison
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn poison(&self, reason: String) -> StoreError {
        let mut poison = self.inner.poison.lock().unwrap_or_else(|e| e.into_inner());
        let reason = poison.get_or_insert(reason).clone();
        StoreError::Poisoned(reason)
    }

    /// Fails if the store is poisoned.
    pub fn check_poison(&self) -> Result<(), StoreError> {
        match self.poisoned() {
            Some(reason) => Err(StoreError::Poisoned(reason)),
            None => Ok(()),
        }
    }

    /// The committed value of `key` in `space`.
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_poison()?;
        self.inner
            .engine
            .get(space, key)
            .map_err(StoreError::Engine)
    }

    /// Which node of which cluster this store belongs to; `None` for a new store.
    pub fn identity(&self) -> Result<Option<NodeIdentity>, StoreError> {
        match self.get(Space::State, keys::IDENTITY_KEY)? {
            None => Ok(None),
            Some(bytes) => {
                rmp_serde::from_slice(&bytes)
                    .map(Some)
                    .map_err(|error| StoreError::Corrupt {
                        group: 0,
                        what: "node identity",
                        detail: error.to_string(),
                    })
            }
        }
    }

    /// Records the store's identity, durably.
    pub fn set_identity(&self, identity: &NodeIdentity) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec(identity).map_err(|error| StoreError::Corrupt {
            group: 0,
            what: "node identity",
            detail: error.to_string(),
        })?;
        let mut batch = self.batch();
        batch.put(Space::State, keys::IDENTITY_KEY.to_vec(), Some(bytes));
        self.commit(batch)
    }

    /// The node's split gaps (see [`keys::SPLIT_GAPS_KEY`]).
    pub fn split_gaps(&self) -> Result<Vec<KeySpan>, StoreError> {
        self.node_list(keys::SPLIT_GAPS_KEY, "split gaps")
    }

    /// Data ranges of removed replicas still to clear (see [`keys::PENDING_CLEARS_KEY`]).
    pub fn pending_clears(&self) -> Result<Vec<KeySpan>, StoreError> {
        self.node_list(keys::PENDING_CLEARS_KEY, "pending clears")
    }

    /// Groups merged away here and not retired yet (see [`keys::RETIRING_KEY`]).
    pub fn retiring(&self) -> Result<Vec<GroupId>, StoreError> {
        self.node_list(keys::RETIRING_KEY, "retiring groups")
    }

    /// The nodes (id, address) this node last knew of.
    pub fn known_peers(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.node_list(keys::KNOWN_PEERS_KEY, "known peers")
    }

    /// A list kept under a node-wide key of `raft_state`; empty if never written.
    fn node_list<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        match self.get(Space::State, key)? {
            None => Ok(Vec::new()),
            Some(bytes) => rmp_serde::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
                group: 0,
                what,
                detail: error.to_string(),
            }),
        }
    }

    pub fn set_known_peers(&self, peers: &[(u64, String)]) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec(peers).map_err(|error| StoreError::Corrupt {
            group: 0,
            what: "known peers",
            detail: error.to_string(),
        })?;
        let mut batch = self.batch();
        batch.put(Space::State, keys::KNOWN_PEERS_KEY.to_vec(), Some(bytes));
        self.commit(batch)
    }

    /// The token this store joins a cluster with, if it has one.
    pub fn join_token(&self) -> Result<Option<String>, StoreError> {
        let token = self.get(Space::State, keys::JOIN_TOKEN_KEY)?;
        Ok(token.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub fn set_join_token(&self, token: &str) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.put(
            Space::State,
            keys::JOIN_TOKEN_KEY.to_vec(),
            Some(token.as_bytes().to_vec()),
        );
        self.commit(batch)
    }

    /// Counts one more start of the node on this store, durably, and returns the count: it
    /// tells this run's messages from those of earlier runs.
    pub fn next_incarnation(&self) -> Result<u64, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            group: 0,
            what: "incarnation",
            detail,
        };
        let previous = match self.get(Space::State, keys::INCARNATION_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(format!("{} bytes", bytes.len())))?,
            ),
            None => 0,
        };
        let incarnation = previous + 1;
        let mut batch = self.batch();
        batch.put(
            Space::State,
            keys::INCARNATION_KEY.to_vec(),
            Some(incarnation.to_be_bytes().to_vec()),
        );
        self.commit(batch)?;
        Ok(incarnation)
    }

    /// Every committed key and value of the data keyspace, in order (for tests).
    #[cfg(test)]
    pub(crate) fn data_items(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut items = Vec::new();
        let everything = KeyRange {
            start: b"",
            end: None,
        };
        self.scan(
            Space::Data,
            everything,
            ScanOrder::Ascending,
            &mut |key, value| {
                items.push((key.to_vec(), value.to_vec()));
                std::ops::ControlFlow::Continue(())
            },
        )
        .expect("the data keyspace reads");
        items
    }

    /// A point-in-time view of the committed state (see [`Engine::view`]).
    pub fn view(&self) -> Result<StoreView, StoreError> {
        self.check_poison()?;
        Ok(StoreView {
            view: self.inner.engine.view(),
        })
    }

    /// Visits the committed keys of `range` in `order` until `visit` breaks.
    pub fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut engine::Visit<'_>,
    ) -> Result<(), StoreError> {
        self.check_poison()?;
        self.inner
            .engine
            .scan(space, range, order, visit)
            .map_err(StoreError::Engine)
    }
}

/// The committed state as of [`NodeStore::view`]; later commits are not seen.
pub struct StoreView {
    view: Box<dyn EngineView>,
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("StoreView").finish_non_exhaustive()
    }
}

impl StoreView {
    /// Visits the keys of `range` in `order` as of the view, until `visit` breaks.
    pub fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut engine::Visit<'_>,
    ) -> Result<(), StoreError> {
        self.view
            .scan(space, range, order, visit)
            .map_err(StoreError::Engine)
    }
}

#[cfg(test)]
mod tests;
