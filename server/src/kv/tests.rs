//! The state machine's rules, against a real node store.

use rshard_common::shard::{Epoch, ShardDescriptor};

use super::*;

fn shard() -> ShardDescriptor {
    ShardDescriptor {
        id: 4,
        start_key: b"b".to_vec(),
        end_key: b"m".to_vec(),
        epoch: Epoch {
            version: 3,
            conf_version: 1,
        },
        replicas: vec![1, 2, 3],
        learners: Vec::new(),
        merging_into: None,
    }
}

fn command(ops: Vec<KvOp>) -> KvCommand {
    KvCommand {
        shard: 4,
        epoch: shard().epoch,
        ops,
    }
}

fn put(key: &[u8], value: &[u8]) -> KvOp {
    KvOp::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn cas(key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> KvOp {
    KvOp::CompareAndSwap {
        key: key.to_vec(),
        expected: expected.map(<[u8]>::to_vec),
        new: new.map(<[u8]>::to_vec),
    }
}

/// Applies the commands in one batch and commits it; returns each answer.
fn apply_all(store: &NodeStore, commands: &[KvCommand]) -> Vec<Result<KvOutcome, KvError>> {
    let mut applier = Applier::new(store);
    let answers = commands
        .iter()
        .map(|c| applier.apply(&shard(), c).expect("storage works"))
        .collect();
    let mut batch = store.batch();
    applier.finish(&mut batch);
    store.commit(batch).expect("commits");
    answers
}

fn value(store: &NodeStore, key: &[u8]) -> Option<Vec<u8>> {
    read_committed(store, key).expect("readable")
}

fn open() -> (tempfile::TempDir, NodeStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = NodeStore::open(dir.path()).expect("opens");
    (dir, store)
}

#[test]
fn put_delete_and_a_batch_apply_atomically() {
    let (_dir, store) = open();
    let answers = apply_all(
        &store,
        &[
            command(vec![put(b"c", b"1"), put(b"d", b"2")]),
            command(vec![KvOp::Delete { key: b"c".to_vec() }]),
        ],
    );
    assert_eq!(
        answers,
        vec![Ok(KvOutcome::Applied), Ok(KvOutcome::Applied)]
    );
    assert_eq!(value(&store, b"c"), None);
    assert_eq!(value(&store, b"d"), Some(b"2".to_vec()));
}

#[test]
fn a_failed_condition_writes_nothing_of_the_command() {
    let (_dir, store) = open();
    apply_all(&store, &[command(vec![put(b"c", b"1")])]);
    let answers = apply_all(
        &store,
        &[command(vec![
            put(b"d", b"new"),
            cas(b"c", Some(b"other"), Some(b"x")),
        ])],
    );
    assert_eq!(
        answers,
        vec![Ok(KvOutcome::ConditionFailed {
            op: 1,
            current: Some(b"1".to_vec())
        })]
    );
    assert_eq!(
        value(&store, b"d"),
        None,
        "the put of the same command is not written"
    );
    assert_eq!(value(&store, b"c"), Some(b"1".to_vec()));
}

#[test]
fn later_commands_in_a_batch_see_earlier_writes() {
    let (_dir, store) = open();
    let answers = apply_all(
        &store,
        &[
            command(vec![cas(b"c", None, Some(b"1"))]),
            command(vec![cas(b"c", Some(b"1"), Some(b"2"))]),
            command(vec![cas(b"c", None, Some(b"3"))]),
        ],
    );
    assert_eq!(
        answers[..2],
        [Ok(KvOutcome::Applied), Ok(KvOutcome::Applied)]
    );
    assert_eq!(
        answers[2],
        Ok(KvOutcome::ConditionFailed {
            op: 0,
            current: Some(b"2".to_vec())
        })
    );
    assert_eq!(value(&store, b"c"), Some(b"2".to_vec()));
}

/// Recognizes the refusal a case expects.
type IsExpected = fn(&KvError) -> bool;

#[test]
fn refused_commands_change_nothing() {
    let (_dir, store) = open();
    let stale = KvCommand {
        epoch: Epoch {
            version: 2,
            conf_version: 1,
        },
        ..command(vec![put(b"c", b"1")])
    };
    let cases: Vec<(KvCommand, IsExpected)> = vec![
        (
            command(vec![put(b"c", b"1"), put(b"z", b"outside")]),
            |e| matches!(e, KvError::KeyNotInShard { key, .. } if key == b"z"),
        ),
        (
            stale,
            |e| matches!(e, KvError::StaleEpoch { descriptor } if descriptor.epoch.version == 3),
        ),
        (
            KvCommand {
                shard: 9,
                ..command(vec![put(b"c", b"1")])
            },
            |e| matches!(e, KvError::WrongShard { .. }),
        ),
        (
            command(vec![put(&vec![b'c'; MAX_KEY_BYTES + 1], b"1")]),
            |e| matches!(e, KvError::KeyTooLarge { .. }),
        ),
        (
            command(vec![put(b"c", &vec![0; MAX_VALUE_BYTES + 1])]),
            |e| matches!(e, KvError::ValueTooLarge { .. }),
        ),
        (
            command(vec![put(b"c", b"1"); MAX_OPS_PER_COMMAND + 1]),
            |e| matches!(e, KvError::TooManyOps { .. }),
        ),
        (command(vec![]), |e| matches!(e, KvError::Empty)),
    ];
    for (refused, expected) in cases {
        let answer = apply_all(&store, &[refused]).remove(0);
        match answer {
            Err(error) => assert!(expected(&error), "unexpected refusal {error}"),
            Ok(outcome) => panic!("expected a refusal, got {outcome:?}"),
        }
        assert_eq!(value(&store, b"c"), None);
    }
}

#[test]
fn commands_round_trip_and_garbage_is_a_typed_error() {
    let original = command(vec![put(b"c", b"1"), cas(b"d", None, None)]);
    assert_eq!(KvCommand::decode(&original.encode()), Ok(original));
    assert!(matches!(
        KvCommand::decode(b"\xc1garbage"),
        Err(KvError::Malformed(_))
    ));
}

/// An entry holds a list of commands; entries written one command each (before writes
/// were batched) still decode, as a list of one.
#[test]
fn entries_of_several_commands_and_of_one_legacy_command_decode() {
    let first = command(vec![put(b"c", b"1")]);
    let second = command(vec![cas(b"d", None, Some(b"2"))]);
    let both = vec![first.clone(), second];
    assert_eq!(decode_commands(&encode_commands(&both)), Ok(both));
    assert_eq!(decode_commands(&first.encode()), Ok(vec![first]));
    assert_eq!(decode_commands(&encode_commands(&[])), Ok(Vec::new()));
    assert!(matches!(
        decode_commands(b"\xc1garbage"),
        Err(KvError::Malformed(_))
    ));
}

#[test]
fn data_and_applied_index_are_durable_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = NodeStore::open(dir.path()).expect("opens");
        let mut applier = Applier::new(&store);
        applier
            .apply(&shard(), &command(vec![put(b"c", b"1")]))
            .expect("storage")
            .expect("applies");
        let mut batch = store.batch();
        applier.finish(&mut batch);
        batch
            .set_applied(4, 17, rshard_raft::ConfState::with_voters([1, 2, 3]))
            .expect("encodes");
        store.commit(batch).expect("commits");
    }
    let store = NodeStore::open(dir.path()).expect("reopens");
    assert_eq!(value(&store, b"c"), Some(b"1".to_vec()));
    assert_eq!(store.group(4).applied_state().map(|a| a.applied), Ok(17));
}
