//! The node's durable storage: one fjall database for every group on the node.
//!
//! Keyspaces: `raft_log` (entries of every group), `raft_state` (per group: hard state,
//! applied index with its configuration, compaction point, snapshot) and `data` (user keys of
//! every shard; a shard is a key range of it, so a split moves no bytes).
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
//! Not yet here: snapshots are stored as one blob at creation. Producing them as a
//! consistent scan of the shard's data range, streamed in chunks, comes with the KV state
//! machine.

mod batch;
mod group;
pub mod keys;

use std::path::Path;
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use thiserror::Error;

pub use batch::NodeBatch;
pub use group::GroupStorage;
pub use keys::GroupId;

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

fn engine(error: fjall::Error) -> StoreError {
    StoreError::Engine(error.to_string())
}

/// How a committed batch is made durable. The real one fsyncs; tests inject failures.
pub trait Durability: Send + Sync {
    fn sync(&self, database: &Database) -> Result<(), String>;
}

/// `fsync` of the journal (`PersistMode::SyncAll`).
#[derive(Debug)]
pub struct SyncAll;

impl Durability for SyncAll {
    fn sync(&self, database: &Database) -> Result<(), String> {
        database
            .persist(PersistMode::SyncAll)
            .map_err(|e| e.to_string())
    }
}

struct Inner {
    database: Database,
    log: Keyspace,
    state: Keyspace,
    data: Keyspace,
    durability: Box<dyn Durability>,
    /// Set once, by the first failed write or sync; never cleared.
    poison: Mutex<Option<String>>,
}

/// The node's storage. Cheap to clone; all clones share one database.
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
    /// Opens (or creates) the store in `path`, syncing with fsync.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_durability(path, Box::new(SyncAll))
    }

    pub fn open_with_durability(
        path: &Path,
        durability: Box<dyn Durability>,
    ) -> Result<Self, StoreError> {
        let database = Database::builder(path).open().map_err(engine)?;
        let keyspace = |name: &str| {
            database
                .keyspace(name, KeyspaceCreateOptions::default)
                .map_err(engine)
        };
        let (log, state, data) = (
            keyspace("raft_log")?,
            keyspace("raft_state")?,
            keyspace("data")?,
        );
        let inner = Inner {
            database,
            log,
            state,
            data,
            durability,
            poison: Mutex::new(None),
        };
        Ok(NodeStore {
            inner: Arc::new(inner),
        })
    }

    /// The read side of one group's Raft storage.
    pub fn group(&self, group: GroupId) -> GroupStorage {
        GroupStorage::new(self.clone(), group)
    }

    pub fn batch(&self) -> NodeBatch {
        NodeBatch::new(self.clone())
    }

    /// Makes `batch` atomic and durable: one journal write, one sync. On failure the store
    /// is poisoned and the error says so; nothing is retried.
    pub fn commit(&self, batch: NodeBatch) -> Result<(), StoreError> {
        self.check_poison()?;
        if let Err(error) = batch.into_engine_batch().commit() {
            return Err(self.poison(format!("write failed: {error}")));
        }
        if let Err(error) = self.inner.durability.sync(&self.inner.database) {
            return Err(self.poison(format!("sync failed: {error}")));
        }
        Ok(())
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

    pub(crate) fn log(&self) -> &Keyspace {
        &self.inner.log
    }

    pub(crate) fn state(&self) -> &Keyspace {
        &self.inner.state
    }

    /// The user-data keyspace, for the KV state machine.
    pub fn data(&self) -> &Keyspace {
        &self.inner.data
    }
}

#[cfg(test)]
mod tests;
