//! Tests of the node store against real fjall files in temporary directories.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rshard_raft::{
    ConfState, Config, Entry, HardState, MemStorage, Payload, Raft, Role, Snapshot,
    SnapshotMetadata, Storage, StorageError,
};

use super::*;

const GROUP: GroupId = 7;

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            term,
            index,
            payload: Payload::Normal(format!("t{term}i{index}").into_bytes()),
        })
        .collect()
}

fn voters() -> ConfState {
    ConfState::with_voters([1, 2, 3])
}

fn commit_ready(store: &NodeStore, entries: &[Entry], hard_state: Option<HardState>) {
    let mut batch = store.batch();
    batch
        .persist_ready(&store.group(GROUP), None, entries, hard_state)
        .expect("encodes");
    store.commit(batch).expect("commits");
}

fn bootstrapped(dir: &tempfile::TempDir) -> NodeStore {
    let store = NodeStore::open(dir.path()).expect("opens");
    let mut batch = store.batch();
    batch.bootstrap(GROUP, voters()).expect("encodes");
    store.commit(batch).expect("commits");
    store
}

#[test]
fn a_bootstrapped_group_starts_after_its_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let group = bootstrapped(&dir).group(GROUP);
    let start = MemStorage::BOOTSTRAP_INDEX;
    assert_eq!(group.first_index(), Ok(start + 1));
    assert_eq!(group.last_index(), Ok(start));
    assert_eq!(group.term(start), Ok(start));
    assert_eq!(group.term(start - 1), Err(StorageError::Compacted));
    let initial = group.initial_state().expect("readable");
    assert_eq!(initial.conf_state, voters());
    assert_eq!(initial.hard_state.commit, start);
    let snapshot = group.snapshot().expect("at the applied index");
    assert_eq!(
        (snapshot.metadata.index, snapshot.metadata.term),
        (start, start)
    );
    assert_eq!(snapshot.metadata.conf_state, voters());
}

#[test]
fn appended_entries_read_back_and_a_conflicting_append_replaces_the_suffix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = bootstrapped(&dir);
    commit_ready(&store, &entries(1, 2..=6), None);
    let group = store.group(GROUP);
    assert_eq!(group.entries(2, 7, u64::MAX), Ok(entries(1, 2..=6)));
    let one_entry_budget = 1;
    assert_eq!(
        group.entries(2, 7, one_entry_budget).map(|e| e.len()),
        Ok(1),
        "at least one"
    );
    assert_eq!(
        group.entries(2, 8, u64::MAX),
        Err(StorageError::Unavailable)
    );

    commit_ready(&store, &entries(2, 4..=4), None); // a new leader's entry at 4
    assert_eq!(group.last_index(), Ok(4), "5 and 6 are gone");
    assert_eq!(group.term(4), Ok(2));
    assert_eq!(group.term(5), Err(StorageError::Unavailable));
}

#[test]
fn everything_committed_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hard_state = HardState {
        term: 3,
        vote: Some(2),
        commit: 4,
    };
    {
        let store = bootstrapped(&dir);
        commit_ready(&store, &entries(3, 2..=5), Some(hard_state));
    }
    let store = NodeStore::open(dir.path()).expect("reopens");
    let group = store.group(GROUP);
    assert_eq!(group.hard_state(), Ok(hard_state));
    assert_eq!(group.entries(2, 6, u64::MAX), Ok(entries(3, 2..=5)));
}

#[test]
fn compaction_never_passes_the_applied_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = bootstrapped(&dir);
    commit_ready(&store, &entries(1, 2..=10), None);
    let group = store.group(GROUP);
    let mut batch = store.batch();
    batch.set_applied(GROUP, 6, voters()).expect("encodes");
    store.commit(batch).expect("commits");
    let mut batch = store.batch();
    batch.compact(&group, 9).expect("compacts");
    store.commit(batch).expect("commits");
    assert_eq!(group.first_index(), Ok(7), "only up to the applied index 6");
    assert_eq!(group.snapshot().map(|s| s.metadata.index), Ok(6));
    assert_eq!(group.term(6), Ok(1));
    assert_eq!(group.entries(6, 8, u64::MAX), Err(StorageError::Compacted));
    assert_eq!(group.entries(7, 11, u64::MAX), Ok(entries(1, 7..=10)));
}

#[test]
fn an_installed_snapshot_replaces_the_log_but_keeps_entries_after_it_in_the_same_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = bootstrapped(&dir);
    commit_ready(&store, &entries(1, 2..=12), None); // a stale suffix from an old leader
    let snapshot = Snapshot {
        metadata: SnapshotMetadata {
            index: 8,
            term: 4,
            conf_state: voters(),
        },
        data: b"at 8".to_vec(),
    };
    let group = store.group(GROUP);
    let mut batch = store.batch();
    let after = entries(4, 9..=10);
    let hard_state = HardState {
        term: 4,
        vote: None,
        commit: 8,
    };
    batch
        .persist_ready(&group, Some(&snapshot), &after, Some(hard_state))
        .expect("encodes");
    store.commit(batch).expect("commits");
    assert_eq!(group.first_index(), Ok(9));
    assert_eq!(
        group.last_index(),
        Ok(10),
        "11 and 12 of the old log are gone"
    );
    assert_eq!(group.entries(9, 11, u64::MAX), Ok(after));
    assert_eq!(group.applied_state().map(|a| a.applied), Ok(8));
    assert_eq!(group.snapshot().map(|s| s.metadata), Ok(snapshot.metadata));
}

#[test]
fn corrupt_bytes_are_a_typed_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = bootstrapped(&dir);
    commit_ready(&store, &entries(1, 2..=3), None);
    let raw = |space, key: &[u8], value: &[u8]| Write {
        space,
        key: key.to_vec(),
        value: Some(value.to_vec()),
    };
    store
        .inner
        .engine
        .write(vec![
            raw(Space::Log, &keys::log_key(GROUP, 3), b"\xc1 not msgpack"),
            raw(
                Space::State,
                &keys::state_key(GROUP, keys::HARD_STATE_TAG),
                b"\xff",
            ),
        ])
        .expect("raw write");
    let group = store.group(GROUP);
    for result in [
        group.term(3).map(|_| ()),
        group.entries(2, 4, u64::MAX).map(|_| ()),
        group.initial_state().map(|_| ()),
    ] {
        match result {
            Err(StorageError::Failed(message)) => assert!(message.contains("corrupt"), "{message}"),
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }
}

/// Fails every sync and counts the attempts.
struct FailingDisk(Arc<AtomicUsize>);

impl Durability for FailingDisk {
    fn sync(&self, _: &fjall::Database) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err("EIO".to_string())
    }
}

#[test]
fn a_failed_sync_poisons_the_store_and_is_never_retried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let attempts = Arc::new(AtomicUsize::new(0));
    let store =
        NodeStore::open_with_durability(dir.path(), Box::new(FailingDisk(attempts.clone())))
            .expect("opens");
    let mut batch = store.batch();
    batch.bootstrap(GROUP, voters()).expect("encodes");
    let error = store.commit(batch).expect_err("the sync fails");
    assert_eq!(error, StoreError::Poisoned("sync failed: EIO".to_string()));
    assert_eq!(store.poisoned().as_deref(), Some("sync failed: EIO"));

    let mut batch = store.batch();
    batch.set_applied(GROUP, 1, voters()).expect("encodes");
    assert!(matches!(store.commit(batch), Err(StoreError::Poisoned(_))));
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "no second sync");
    assert!(
        matches!(store.group(GROUP).last_index(), Err(StorageError::Failed(m)) if m.contains("poisoned"))
    );
}

/// The obviously correct model: the same random sequence of Readies and compactions applied
/// to `MemStorage` and to the node store gives the same answers to every `Storage` question.
#[test]
fn the_node_store_answers_like_mem_storage() {
    let mut rng = rshard_common::rng::SeededRng::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move |bound: u64| rng.below(bound);
    for round in 0..20 {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = bootstrapped(&dir);
        let group = store.group(GROUP);
        let mut model = MemStorage::bootstrap(voters(), b"initial".to_vec());
        let mut term = 1;
        for step in 0..40 {
            let (first, last) = (
                model.first_index().expect("model"),
                model.last_index().expect("model"),
            );
            let mut batch = store.batch();
            match next(10) {
                0 => {
                    let index = first - 1 + next(last + 2 - first);
                    let conf = voters();
                    model
                        .create_snapshot(index, conf.clone(), vec![])
                        .expect("model");
                    if index > group.applied_state().expect("readable").applied {
                        batch.set_applied(GROUP, index, conf).expect("encodes");
                    }
                    model.compact(index).expect("model");
                    store.commit(batch).expect("commits");
                    let mut batch = store.batch();
                    batch.compact(&group, index).expect("compacts");
                    store.commit(batch).expect("commits");
                    continue;
                }
                1 => {
                    term += 1;
                    let index = last + 1 + next(5);
                    let snapshot = Snapshot {
                        metadata: SnapshotMetadata {
                            index,
                            term,
                            conf_state: voters(),
                        },
                        data: vec![],
                    };
                    model.apply_snapshot(snapshot.clone());
                    batch
                        .persist_ready(&group, Some(&snapshot), &[], None)
                        .expect("encodes");
                }
                _ => {
                    if next(3) == 0 {
                        term += 1;
                    }
                    let from = first + next(last + 2 - first);
                    let appended = entries(term, from..=from + next(6));
                    model.append(&appended);
                    batch
                        .persist_ready(&group, None, &appended, None)
                        .expect("encodes");
                }
            }
            store.commit(batch).expect("commits");
            let context = format!("round {round} step {step}");
            let (first, last) = (
                model.first_index().expect("model"),
                model.last_index().expect("model"),
            );
            assert_eq!(group.first_index(), Ok(first), "{context}");
            assert_eq!(group.last_index(), Ok(last), "{context}");
            assert_eq!(
                group.entries(first, last + 1, u64::MAX),
                model.entries(first, last + 1, u64::MAX),
                "{context}"
            );
            for index in first.saturating_sub(2)..=last + 1 {
                assert_eq!(
                    group.term(index),
                    model.term(index),
                    "{context} term({index})"
                );
            }
        }
    }
}

/// A real replica on the node store: it elects itself, commits proposals, and after the
/// store is closed and reopened restarts with every persisted entry and its hard state.
#[test]
fn a_raft_replica_runs_on_the_store_and_restarts_from_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let single = ConfState::with_voters([1]);
    let drive = |raft: &mut Raft<GroupStorage>, store: &NodeStore| {
        while raft.has_ready() {
            let mut ready = raft.ready().expect("ready");
            let mut batch = store.batch();
            batch
                .persist_ready(
                    raft.storage(),
                    ready.snapshot.as_ref(),
                    &ready.entries,
                    ready.hard_state,
                )
                .expect("encodes");
            if let Some(last) = ready.committed_entries.last() {
                batch
                    .set_applied(GROUP, last.index, raft.conf_state().clone())
                    .expect("encodes");
            }
            store.commit(batch).expect("commits");
            ready.committed_entries.clear();
            raft.advance(ready).expect("advance");
        }
    };
    let (last, hard_state) = {
        let store = NodeStore::open(dir.path()).expect("opens");
        let mut batch = store.batch();
        batch.bootstrap(GROUP, single.clone()).expect("encodes");
        store.commit(batch).expect("commits");
        let mut raft = Raft::new(Config::new(1), store.group(GROUP)).expect("valid");
        raft.campaign().expect("voter");
        drive(&mut raft, &store);
        assert_eq!(raft.role(), Role::Leader);
        for n in 0..5u8 {
            raft.propose(vec![n]).expect("leader");
            drive(&mut raft, &store);
        }
        assert_eq!(raft.commit_index(), raft.last_index());
        (raft.last_index(), raft.hard_state())
    };
    let store = NodeStore::open(dir.path()).expect("reopens");
    let applied = store
        .group(GROUP)
        .applied_state()
        .expect("readable")
        .applied;
    let mut config = Config::new(1);
    config.applied = applied;
    let raft = Raft::new(config, store.group(GROUP)).expect("restarts");
    assert_eq!(raft.last_index(), last);
    assert_eq!(raft.hard_state(), hard_state);
    assert_eq!(
        applied, last,
        "the applied index was persisted with the entries"
    );
}

/// An install in fjall, reopened from disk after every bounded step (so each step resumes
/// from the marker alone, without the in-memory cursor): the range ends up holding exactly
/// the staged keys, keys outside it are untouched, and the staging is gone.
#[test]
fn an_install_resumes_from_its_marker_after_every_step() {
    use rshard_common::shard::ShardDescriptor;
    let dir = tempfile::tempdir().expect("a temp dir");
    let descriptor = ShardDescriptor {
        id: GROUP,
        start_key: b"b".to_vec(),
        end_key: b"m".to_vec(),
        ..Default::default()
    };
    let staging = 3;
    let staged: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("c{i:02}").into_bytes(),
                format!("new{i}").into_bytes(),
            )
        })
        .collect();
    {
        let store = bootstrapped(&dir);
        let mut batch = store.batch();
        for i in 0..30 {
            // Live keys the snapshot does not have: all must go.
            batch.write_data(format!("d{i:02}").into_bytes(), Some(b"old".to_vec()));
        }
        batch.write_data(b"a-outside".to_vec(), Some(b"kept".to_vec()));
        batch.write_data(b"m-outside".to_vec(), Some(b"kept".to_vec()));
        batch.stage_snapshot_items(GROUP, staging, staged.clone());
        batch.stage_snapshot_items(GROUP + 1, 1, [(b"x".to_vec(), b"other".to_vec())]);
        let marker = InstallMarker::new(staging, &descriptor, &descriptor);
        batch.set_install_marker(GROUP, &marker).expect("encodes");
        store.commit(batch).expect("commits");
    }
    let mut steps = 0;
    let mut phases = Vec::new();
    loop {
        let store = NodeStore::open(dir.path()).expect("reopens");
        let Some(marker) = store.group(GROUP).install_marker().expect("reads") else {
            break;
        };
        let mut progress = InstallProgress::new(GROUP, marker);
        phases.push(progress.phase());
        let mut batch = store.batch();
        let mut budget = StepBudget::new(5 * PER_KEY_COST_BYTES);
        store
            .continue_install(&mut progress, &mut batch, &mut budget)
            .expect("steps");
        store.commit(batch).expect("commits");
        steps += 1;
        assert!(steps < 100, "the install never finished");
    }
    assert!(
        steps >= 10,
        "only {steps} steps: the budget did not bound them"
    );
    assert!(phases.contains(&InstallPhase::Clearing) && phases.contains(&InstallPhase::Moving));
    let store = NodeStore::open(dir.path()).expect("reopens");
    let mut expected = staged;
    expected.insert(0, (b"a-outside".to_vec(), b"kept".to_vec()));
    expected.push((b"m-outside".to_vec(), b"kept".to_vec()));
    assert_eq!(store.data_items(), expected);
    assert_eq!(
        store.stagings(),
        Ok(vec![(GROUP + 1, 1)]),
        "other staging kept"
    );
    let mut discard = StagingDiscard::new(GROUP + 1, 1);
    let mut batch = store.batch();
    let done = store
        .continue_discard(&mut discard, &mut batch, &mut StepBudget::new(1))
        .expect("steps");
    store.commit(batch).expect("commits");
    assert!(done);
    assert_eq!(store.stagings(), Ok(vec![]));
}
