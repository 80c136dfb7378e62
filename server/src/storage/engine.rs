//! The ordered key-value engine under the node store, as a trait: fjall in production, an
//! in-memory engine with explicit durability in tests and the simulation.
//!
//! Contract of an engine:
//! - `write` applies a whole batch atomically: a reader sees all of it or none of it.
//! - What was written is durable only after a successful `sync`; a crash may lose any
//!   batch written since the last successful sync, but never part of a batch.
//! - Errors are strings: the node store turns every one into poison (writes, syncs) or a
//!   typed error (reads); it never retries.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// The node's four keyspaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Raft log entries of every group.
    Log,
    /// Per-group Raft state: hard state, applied state, compaction point, snapshot.
    State,
    /// User data of every shard.
    Data,
    /// Snapshot chunks received and not yet installed, by group and staging id.
    Staging,
}

impl Space {
    #[cfg(test)]
    const ALL: [Space; 4] = [Space::Log, Space::State, Space::Data, Space::Staging];

    fn slot(self) -> usize {
        self as usize
    }
}

/// One write of a batch: `None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub space: Space,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOrder {
    Ascending,
    Descending,
}

/// A key range of one keyspace: `start` inclusive, `end` exclusive (`None`: unbounded).
#[derive(Clone, Copy, Debug)]
pub struct KeyRange<'a> {
    pub start: &'a [u8],
    pub end: Option<&'a [u8]>,
}

impl KeyRange<'_> {
    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let end = self.end.map_or(Bound::Unbounded, Bound::Excluded);
        (Bound::Included(self.start), end)
    }
}

/// Called with each key and value of a scan; `Break` stops it.
pub type Visit<'v> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'v;

pub trait Engine: Send + Sync {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// A consistent read-only view of every keyspace as of now: later writes are not seen.
    /// Keeping a view pins old versions, so hold it only as long as needed.
    fn view(&self) -> Box<dyn EngineView>;
    /// Visits the keys of `range` in `order` until `visit` breaks or the range ends.
    fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut Visit<'_>,
    ) -> Result<(), String>;
    /// Applies `writes` atomically. Keys are distinct within one call.
    fn write(&self, writes: Vec<Write>) -> Result<(), String>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), String>;
}

/// A point-in-time view of an engine (see [`Engine::view`]).
pub trait EngineView: Send {
    /// Visits the keys of `range` in `order` as of the view, until `visit` breaks.
    fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut Visit<'_>,
    ) -> Result<(), String>;
}

/// Feeds `items` to `visit` front to back (or back to front) until it breaks or an item
/// fails.
fn visit_in_order<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    mut items: impl DoubleEndedIterator<Item = Result<(K, V), String>>,
    order: ScanOrder,
    visit: &mut Visit<'_>,
) -> Result<(), String> {
    loop {
        let item = match order {
            ScanOrder::Ascending => items.next(),
            ScanOrder::Descending => items.next_back(),
        };
        let Some(item) = item else { return Ok(()) };
        let (key, value) = item?;
        if visit(key.as_ref(), value.as_ref()).is_break() {
            return Ok(());
        }
    }
}

/// How fjall's journal is made durable. The real one fsyncs; tests inject failures.
pub trait Durability: Send + Sync {
    fn sync(&self, database: &Database) -> Result<(), String>;
}

/// `fdatasync` of the journal (`PersistMode::SyncData`): the data, and what is needed to
/// read it back (the file's size), reach the disk; timestamps do not. `fsync` also wrote
/// the journal's inode on every sync, for nothing recovery reads. etcd's WAL and
/// PostgreSQL's default `wal_sync_method` make the same choice.
#[derive(Debug)]
pub struct SyncData;

impl Durability for SyncData {
    fn sync(&self, database: &Database) -> Result<(), String> {
        database
            .persist(PersistMode::SyncData)
            .map_err(|e| e.to_string())
    }
}

/// fjall: one database, one keyspace per [`Space`], one journal write per batch.
pub struct FjallEngine {
    database: Database,
    keyspaces: [Keyspace; 4],
    durability: Box<dyn Durability>,
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FjallEngine")
            .finish_non_exhaustive()
    }
}

impl FjallEngine {
    pub fn open(path: &std::path::Path, durability: Box<dyn Durability>) -> Result<Self, String> {
        let database = Database::builder(path).open().map_err(|e| e.to_string())?;
        let keyspace = |name: &str| {
            database
                .keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| e.to_string())
        };
        let keyspaces = [
            keyspace("raft_log")?,
            keyspace("raft_state")?,
            keyspace("data")?,
            keyspace("snapshot_staging")?,
        ];
        Ok(FjallEngine {
            database,
            keyspaces,
            durability,
        })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space.slot()]
    }
}

impl Engine for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let value = self.keyspace(space).get(key).map_err(|e| e.to_string())?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn view(&self) -> Box<dyn EngineView> {
        Box::new(FjallView {
            snapshot: self.database.snapshot(),
            keyspaces: self.keyspaces.clone(),
        })
    }

    fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut Visit<'_>,
    ) -> Result<(), String> {
        let items = self
            .keyspace(space)
            .range::<&[u8], _>(range.bounds())
            .map(|guard| guard.into_inner().map_err(|e| e.to_string()));
        visit_in_order(items, order, visit)
    }

    fn write(&self, writes: Vec<Write>) -> Result<(), String> {
        let mut batch = self.database.batch();
        for write in writes {
            let keyspace = self.keyspace(write.space);
            match write.value {
                Some(value) => batch.insert(keyspace, write.key, value),
                None => batch.remove(keyspace, write.key),
            }
        }
        batch.commit().map_err(|e| e.to_string())
    }

    fn sync(&self) -> Result<(), String> {
        self.durability.sync(&self.database)
    }
}

/// A fjall snapshot (a sequence number every keyspace reads at).
struct FjallView {
    snapshot: fjall::Snapshot,
    keyspaces: [Keyspace; 4],
}

impl EngineView for FjallView {
    fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut Visit<'_>,
    ) -> Result<(), String> {
        use fjall::Readable;
        let items = self
            .snapshot
            .range::<&[u8], _>(&self.keyspaces[space.slot()], range.bounds())
            .map(|guard| guard.into_inner().map_err(|e| e.to_string()));
        visit_in_order(items, order, visit)
    }
}

/// Copy-on-write tables: a view shares them until the next write copies the one it changes.
type Table = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;
type Tables = [Table; 4];

fn apply(tables: &mut Tables, writes: &[Write]) {
    for write in writes {
        let table = Arc::make_mut(&mut tables[write.space.slot()]);
        match &write.value {
            Some(value) => table.insert(write.key.clone(), value.clone()),
            None => table.remove(&write.key),
        };
    }
}

#[derive(Default)]
struct MemState {
    /// What readers see.
    visible: Tables,
    /// What survives a crash.
    durable: Tables,
    /// Written since the last sync, oldest first.
    unsynced: Vec<Vec<Write>>,
    fail_syncs: bool,
}

/// An in-memory engine whose durability is explicit: [`MemEngine::crash`] drops every batch
/// written since the last successful sync, exactly what a power cut may do to a real disk.
#[derive(Default)]
pub struct MemEngine {
    state: Mutex<MemState>,
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("MemEngine").finish_non_exhaustive()
    }
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses everything not synced; syncs work again afterwards.
    pub fn crash(&self) {
        let mut state = self.state();
        state.visible = state.durable.clone();
        state.unsynced.clear();
        state.fail_syncs = false;
    }

    /// Makes every later sync fail (until a crash), as a dying disk would.
    pub fn fail_syncs(&self) {
        self.state().fail_syncs = true;
    }
}

impl Engine for MemEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self.state().visible[space.slot()].get(key).cloned())
    }

    fn view(&self) -> Box<dyn EngineView> {
        Box::new(MemView {
            tables: self.state().visible.clone(),
        })
    }

    fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut Visit<'_>,
    ) -> Result<(), String> {
        let table = self.state().visible[space.slot()].clone();
        scan_table(&table, range, order, visit)
    }

    fn write(&self, writes: Vec<Write>) -> Result<(), String> {
        let mut state = self.state();
        apply(&mut state.visible, &writes);
        state.unsynced.push(writes);
        Ok(())
    }

    fn sync(&self) -> Result<(), String> {
        let mut state = self.state();
        if state.fail_syncs {
            return Err("injected sync failure".to_string());
        }
        let unsynced = std::mem::take(&mut state.unsynced);
        for writes in &unsynced {
            apply(&mut state.durable, writes);
        }
        Ok(())
    }
}

fn scan_table(
    table: &BTreeMap<Vec<u8>, Vec<u8>>,
    range: KeyRange<'_>,
    order: ScanOrder,
    visit: &mut Visit<'_>,
) -> Result<(), String> {
    let items = table.range::<[u8], _>(range.bounds()).map(Ok);
    visit_in_order(items, order, visit)
}

/// The tables as of the view, shared with the engine until it writes.
struct MemView {
    tables: Tables,
}

impl EngineView for MemView {
    fn scan(
        &self,
        space: Space,
        range: KeyRange<'_>,
        order: ScanOrder,
        visit: &mut Visit<'_>,
    ) -> Result<(), String> {
        scan_table(&self.tables[space.slot()], range, order, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8]) -> Write {
        Write {
            space: Space::Data,
            key: key.to_vec(),
            value: Some(key.to_vec()),
        }
    }

    #[test]
    fn a_mem_engine_crash_loses_exactly_the_unsynced_batches() {
        let engine = MemEngine::new();
        engine.write(vec![put(b"a")]).expect("writes");
        engine.sync().expect("syncs");
        engine.write(vec![put(b"b"), put(b"c")]).expect("writes");
        assert!(engine.get(Space::Data, b"c").expect("reads").is_some());
        engine.crash();
        assert!(engine.get(Space::Data, b"a").expect("reads").is_some());
        assert_eq!(engine.get(Space::Data, b"b"), Ok(None));
        assert_eq!(engine.get(Space::Data, b"c"), Ok(None));
        for space in Space::ALL {
            assert_eq!(engine.get(space, b"zz"), Ok(None));
        }
    }

    fn data_keys(view: &dyn EngineView) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let range = KeyRange {
            start: b"",
            end: None,
        };
        view.scan(Space::Data, range, ScanOrder::Ascending, &mut |key, _| {
            seen.push(key.to_vec());
            ControlFlow::Continue(())
        })
        .expect("scans");
        seen
    }

    fn a_view_ignores_later_writes(engine: &dyn Engine) {
        engine.write(vec![put(b"a"), put(b"b")]).expect("writes");
        let view = engine.view();
        let deleted = Write {
            space: Space::Data,
            key: b"a".to_vec(),
            value: None,
        };
        engine.write(vec![deleted, put(b"c")]).expect("writes");
        assert_eq!(data_keys(view.as_ref()), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(
            data_keys(engine.view().as_ref()),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn views_are_points_in_time_in_both_engines() {
        a_view_ignores_later_writes(&MemEngine::new());
        let dir = tempfile::tempdir().expect("a temp dir");
        let fjall = FjallEngine::open(dir.path(), Box::new(SyncData)).expect("opens");
        a_view_ignores_later_writes(&fjall);
    }

    #[test]
    fn scans_respect_range_and_order() {
        let engine = MemEngine::new();
        engine
            .write(vec![put(b"a"), put(b"b"), put(b"c"), put(b"d")])
            .expect("writes");
        let mut seen = Vec::new();
        let range = KeyRange {
            start: b"b",
            end: Some(b"d"),
        };
        engine
            .scan(Space::Data, range, ScanOrder::Descending, &mut |key, _| {
                seen.push(key.to_vec());
                ControlFlow::Continue(())
            })
            .expect("scans");
        assert_eq!(seen, vec![b"c".to_vec(), b"b".to_vec()]);
    }
}
