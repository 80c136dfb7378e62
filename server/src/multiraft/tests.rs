//! Unit tests of the driver on the in-memory engine and transport.

use std::collections::BTreeMap;
use std::sync::Arc;

use rshard_common::shard::{Epoch, ShardDescriptor};
use rshard_raft::{Message, MessageKind};

use super::*;
use crate::kv::{KvCommand, KvError, KvOp, KvOutcome};
use crate::storage::{MemEngine, NodeStore};

fn single_node() -> (Arc<MemEngine>, MultiRaft<QueueTransport>) {
    single_node_with(|_| {})
}

fn single_node_with(
    configure: impl Fn(&mut DriverConfig),
) -> (Arc<MemEngine>, MultiRaft<QueueTransport>) {
    let engine = Arc::new(MemEngine::new());
    let store = NodeStore::with_engine(engine.clone());
    let mut config = DriverConfig::new(1);
    config.max_inbox_inputs = 8;
    configure(&mut config);
    let driver = MultiRaft::open(config, store, QueueTransport::new(4)).expect("opens");
    (engine, driver)
}

fn shard(id: u64) -> ShardDescriptor {
    ShardDescriptor {
        id,
        start_key: b"a".to_vec(),
        end_key: b"m".to_vec(),
        epoch: Epoch::default(),
        replicas: vec![1],
        learners: Vec::new(),
        merging_into: None,
    }
}

fn elect(driver: &mut MultiRaft<QueueTransport>, id: u64) {
    driver.offer(Input::CreateShard(shard(id))).expect("room");
    for _ in 0..100 {
        if driver.is_leader(id) {
            return;
        }
        driver.offer(Input::Tick).expect("room");
        while driver.has_work() {
            driver.iterate();
        }
    }
    panic!("shard {id} never elected its only replica");
}

fn put(key: &[u8], value: &[u8]) -> Request {
    Request::Write(KvCommand {
        shard: 1,
        epoch: Epoch::default(),
        ops: vec![KvOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }],
    })
}

/// Iterates until the request is answered.
fn answer(driver: &mut MultiRaft<QueueTransport>, id: RequestId) -> Result<Response, RequestError> {
    for _ in 0..100 {
        if let Some((_, answer)) = driver.iterate().into_iter().find(|(r, _)| *r == id) {
            return answer;
        }
    }
    panic!("request {id} never answered");
}

#[test]
fn a_put_is_answered_after_it_applies_and_a_read_sees_it() {
    let (_, mut driver) = single_node();
    elect(&mut driver, 1);
    driver
        .offer(Input::Request {
            id: 7,
            request: put(b"b", b"1"),
        })
        .expect("room");
    assert_eq!(
        answer(&mut driver, 7),
        Ok(Response::Written(KvOutcome::Applied))
    );
    let read = Request::Read {
        shard: 1,
        epoch: Epoch::default(),
        key: b"b".to_vec(),
    };
    driver
        .offer(Input::Request {
            id: 8,
            request: read,
        })
        .expect("room");
    assert_eq!(
        answer(&mut driver, 8),
        Ok(Response::Value(Some(b"1".to_vec())))
    );
}

#[test]
fn bad_requests_get_typed_errors_and_change_nothing() {
    let (_, mut driver) = single_node();
    elect(&mut driver, 1);
    let unknown = Request::Read {
        shard: 9,
        epoch: Epoch::default(),
        key: b"b".to_vec(),
    };
    driver
        .offer(Input::Request {
            id: 1,
            request: unknown,
        })
        .expect("room");
    assert_eq!(answer(&mut driver, 1), Err(RequestError::UnknownShard(9)));
    driver
        .offer(Input::Request {
            id: 2,
            request: put(b"z", b"outside"),
        })
        .expect("room");
    assert!(matches!(
        answer(&mut driver, 2),
        Err(RequestError::Refused(
            crate::kv::KvError::KeyNotInShard { .. }
        ))
    ));
    assert_eq!(crate::kv::read_committed(driver.store(), b"z"), Ok(None));
}

#[test]
fn a_full_inbox_refuses_and_counts() {
    let (_, mut driver) = single_node();
    for _ in 0..8 {
        driver.offer(Input::Tick).expect("room");
    }
    assert_eq!(driver.offer(Input::Tick), Err(InboxFull));
    assert_eq!(driver.counters().inbox_drops, 1);
}

#[test]
fn a_failed_sync_stops_the_driver_proposed_writes_outcome_unknown_later_ones_stopped() {
    let (engine, mut driver) = single_node();
    elect(&mut driver, 1);
    engine.fail_syncs();
    driver
        .offer(Input::Request {
            id: 3,
            request: put(b"b", b"1"),
        })
        .expect("room");
    assert_eq!(answer(&mut driver, 3), Err(RequestError::OutcomeUnknown));
    assert!(driver.stopped().is_some_and(|r| r.contains("sync failed")));
    driver
        .offer(Input::Request {
            id: 4,
            request: put(b"c", b"1"),
        })
        .expect("room");
    assert!(matches!(
        answer(&mut driver, 4),
        Err(RequestError::Stopped(_))
    ));
}

#[test]
fn frames_round_trip_and_refuse_garbage_and_foreign_messages() {
    let mut frame = Frame::new(1, 2);
    let heartbeat = |from, to| Message {
        from,
        to,
        term: 3,
        kind: MessageKind::Heartbeat {
            commit: 5,
            round: 1,
            quiesce: false,
        },
    };
    frame.push(4, heartbeat(1, 2));
    frame.push(
        5,
        Message {
            from: 1,
            to: 2,
            term: 3,
            kind: MessageKind::TimeoutNow,
        },
    );
    assert_eq!(frame.heartbeats.len(), 1, "heartbeats are coalesced");
    let decoded = Frame::decode(&frame.encode()).expect("round trips");
    assert_eq!(decoded, frame);
    let expanded: Vec<_> = decoded.into_messages().collect();
    assert!(expanded.contains(&(4, heartbeat(1, 2))));
    assert!(matches!(
        Frame::decode(b"\xc1garbage"),
        Err(FrameError::Malformed(_))
    ));
    let mut foreign = Frame::new(1, 2);
    foreign.messages.push(GroupMessage {
        group: 4,
        message: Message {
            from: 3,
            to: 2,
            term: 3,
            kind: MessageKind::TimeoutNow,
        },
    });
    assert!(matches!(
        Frame::decode(&foreign.encode()),
        Err(FrameError::ForeignMessage { .. })
    ));
}

#[test]
fn requests_past_the_pending_limit_are_refused_busy() {
    let (_, mut driver) = single_node_with(|config| config.max_pending_requests = 1);
    elect(&mut driver, 1);
    for (id, key) in [(1, b"b"), (2, b"c")] {
        driver
            .offer(Input::Request {
                id,
                request: put(key, b"1"),
            })
            .expect("room");
    }
    assert_eq!(
        answer(&mut driver, 2),
        Err(RequestError::Busy("too many pending requests"))
    );
    assert_eq!(
        answer(&mut driver, 1),
        Ok(Response::Written(KvOutcome::Applied))
    );
    assert_eq!(crate::kv::read_committed(driver.store(), b"c"), Ok(None));
}

/// Writes taken in one iteration are proposed as one entry, applied in the order taken, each
/// all or none on its own, and each answered for itself.
#[test]
fn writes_taken_together_share_one_entry_and_get_their_own_answers() {
    let (_, mut driver) = single_node();
    elect(&mut driver, 1);
    let applied_before = driver.applied_index(1).expect("replica");
    let cas = |expected: &[u8], new: &[u8]| {
        Request::Write(KvCommand {
            shard: 1,
            epoch: Epoch::default(),
            ops: vec![KvOp::CompareAndSwap {
                key: b"b".to_vec(),
                expected: Some(expected.to_vec()),
                new: Some(new.to_vec()),
            }],
        })
    };
    let mut stale = put(b"c", b"stale");
    if let Request::Write(command) = &mut stale {
        command.epoch.version += 1;
    }
    let requests = [
        (1, put(b"b", b"1")),
        (2, cas(b"0", b"x")),
        (3, cas(b"1", b"2")),
        (4, stale),
        (5, put(b"c", b"3")),
    ];
    for (id, request) in requests {
        driver.offer(Input::Request { id, request }).expect("room");
    }
    let mut answers = BTreeMap::new();
    for _ in 0..100 {
        answers.extend(driver.iterate());
        if answers.len() == 5 {
            break;
        }
    }
    let written = |outcome| Some(Ok(Response::Written(outcome)));
    assert_eq!(answers.get(&1).cloned(), written(KvOutcome::Applied));
    assert_eq!(
        answers.get(&2).cloned(),
        written(KvOutcome::ConditionFailed {
            op: 0,
            current: Some(b"1".to_vec())
        })
    );
    assert_eq!(answers.get(&3).cloned(), written(KvOutcome::Applied));
    assert!(
        matches!(
            answers.get(&4),
            Some(Err(RequestError::Refused(KvError::StaleEpoch { .. })))
        ),
        "{:?}",
        answers.get(&4)
    );
    assert_eq!(answers.get(&5).cloned(), written(KvOutcome::Applied));
    assert_eq!(
        driver.applied_index(1),
        Some(applied_before + 1),
        "one entry for the five writes"
    );
    let read = |key: &[u8]| crate::kv::read_committed(driver.store(), key);
    assert_eq!(read(b"b"), Ok(Some(b"2".to_vec())));
    assert_eq!(read(b"c"), Ok(Some(b"3".to_vec())));
}

/// A command is answered once its apply is written, before that batch's sync: its entry was
/// durable before it could commit, so a crash that loses the applied state loses nothing the
/// answer promised, and the restart applies the entry again.
#[test]
fn a_write_whose_apply_batch_fails_to_sync_is_answered_and_survives_the_crash() {
    let (engine, mut driver) = single_node();
    elect(&mut driver, 1);
    driver
        .offer(Input::Request {
            id: 5,
            request: put(b"b", b"1"),
        })
        .expect("room");
    // The first iteration persists the entry; the next one applies it.
    assert!(driver.iterate().is_empty());
    assert!(driver.has_work(), "the committed entry waits to apply");
    engine.fail_syncs();
    assert_eq!(
        answer(&mut driver, 5),
        Ok(Response::Written(KvOutcome::Applied))
    );
    assert!(
        driver.stopped().is_some(),
        "the failed sync stops the driver"
    );

    engine.crash();
    let store = NodeStore::with_engine(engine.clone());
    assert_eq!(
        crate::kv::read_committed(&store, b"b"),
        Ok(None),
        "the crash lost the applied write"
    );
    let mut driver =
        MultiRaft::open(DriverConfig::new(1), store, QueueTransport::new(4)).expect("reopens");
    elect(&mut driver, 1);
    for _ in 0..100 {
        if crate::kv::read_committed(driver.store(), b"b") == Ok(Some(b"1".to_vec())) {
            return;
        }
        driver.offer(Input::Tick).expect("room");
        driver.iterate();
    }
    panic!("the restarted node never applied the acknowledged write again");
}

#[test]
fn shutting_down_answers_proposed_writes_outcome_unknown_and_queued_ones_stopped() {
    let (_, mut driver) = single_node();
    elect(&mut driver, 1);
    driver
        .offer(Input::Request {
            id: 6,
            request: put(b"b", b"1"),
        })
        .expect("room");
    // Proposed and persisted, not yet applied.
    assert!(driver.iterate().is_empty());
    driver
        .offer(Input::Request {
            id: 7,
            request: put(b"c", b"1"),
        })
        .expect("room");
    let mut answers = driver.shut_down("the node is shutting down");
    answers.sort_by_key(|(id, _)| *id);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0], (6, Err(RequestError::OutcomeUnknown)));
    assert!(matches!(answers[1], (7, Err(RequestError::Stopped(_)))));
}

/// Node 1 following shard 1 (replicas 1 and 2), with a key inside the shard's range and one
/// outside it already stored.
fn follower_with_data() -> (Arc<MemEngine>, MultiRaft<QueueTransport>) {
    let (engine, mut driver) = single_node_with(|config| config.max_inbox_inputs = 64);
    let mut descriptor = shard(1);
    descriptor.replicas = vec![1, 2];
    driver.offer(Input::CreateShard(descriptor)).expect("room");
    driver.iterate();
    let store = driver.store().clone();
    let mut batch = store.batch();
    batch.write_data(b"c-stale".to_vec(), Some(b"old".to_vec()));
    batch.write_data(b"z-other-shard".to_vec(), Some(b"kept".to_vec()));
    store.commit(batch).expect("commits");
    (engine, driver)
}

const SESSION: SessionId = SessionId {
    incarnation: 1,
    number: 1,
};

fn install_message(index: u64) -> Message {
    let mut descriptor = shard(1);
    descriptor.replicas = vec![1, 2];
    let manifest = SnapshotManifest {
        descriptor,
        staging: 0,
    };
    Message {
        from: 2,
        to: 1,
        term: 5,
        kind: MessageKind::InstallSnapshot {
            snapshot: rshard_raft::Snapshot {
                metadata: rshard_raft::SnapshotMetadata {
                    index,
                    term: 5,
                    conf_state: rshard_raft::ConfState::with_voters([1, 2]),
                },
                data: manifest.encode(),
            },
        },
    }
}

fn chunk(seq: u32, keys: &[&[u8]], last: bool) -> SnapshotChunk {
    SnapshotChunk {
        from: 2,
        to: 1,
        group: 1,
        session: SESSION,
        seq,
        install: (seq == 0).then(|| install_message(50)),
        items: keys
            .iter()
            .map(|key| SnapshotItem {
                key: key.to_vec(),
                value: [b"v-", *key].concat(),
            })
            .collect(),
        last,
    }
}

/// Delivers `chunk`, runs the driver until idle, and returns the acknowledgement.
fn deliver(driver: &mut MultiRaft<QueueTransport>, chunk: SnapshotChunk) -> SnapshotAck {
    driver
        .offer(Input::Snapshot(SnapshotMessage::Chunk(chunk)))
        .expect("room");
    let mut acks = Vec::new();
    for _ in 0..100 {
        if !driver.has_work() {
            break;
        }
        driver.iterate();
        acks.extend(
            driver
                .transport_mut()
                .drain_snapshots()
                .into_iter()
                .filter_map(|m| match m {
                    SnapshotMessage::Ack(ack) => Some(ack),
                    SnapshotMessage::Chunk(_) => None,
                }),
        );
    }
    assert_eq!(acks.len(), 1, "one acknowledgement per chunk: {acks:?}");
    acks.remove(0)
}

fn data(driver: &MultiRaft<QueueTransport>) -> Vec<(Vec<u8>, Vec<u8>)> {
    driver.store().data_items()
}

#[test]
fn a_chunked_snapshot_replaces_the_range_and_nothing_else() {
    let (_, mut driver) = follower_with_data();
    let before = data(&driver);
    assert!(deliver(&mut driver, chunk(0, &[b"a1", b"b2"], false))
        .refused
        .is_none());
    assert!(deliver(&mut driver, chunk(1, &[b"d3"], false))
        .refused
        .is_none());
    assert_eq!(data(&driver), before, "staged chunks change no live data");
    assert_eq!(driver.store().stagings().map(|s| s.len()), Ok(1));
    assert!(deliver(&mut driver, chunk(2, &[b"k4"], true))
        .refused
        .is_none());

    let expected: Vec<(Vec<u8>, Vec<u8>)> = [&b"a1"[..], b"b2", b"d3", b"k4"]
        .iter()
        .map(|key| (key.to_vec(), [b"v-", *key].concat()))
        .chain([(b"z-other-shard".to_vec(), b"kept".to_vec())])
        .collect();
    assert_eq!(
        data(&driver),
        expected,
        "c-stale cleared, z-other-shard kept"
    );
    assert_eq!(driver.applied_index(1), Some(50));
    assert!(!driver.is_installing(1));
    assert_eq!(driver.store().stagings(), Ok(vec![]));
    assert_eq!(driver.counters().snapshots_installed, 1);
}

#[test]
fn bad_chunks_are_refused_with_a_reason_and_change_nothing() {
    let (_, mut driver) = follower_with_data();
    let before = data(&driver);
    let refusal = |driver: &mut MultiRaft<QueueTransport>, chunk| {
        deliver(driver, chunk)
            .refused
            .expect("the chunk is refused")
    };

    // A snapshot of a group this node holds nothing of, whose descriptor places no replica
    // here, or places a voter here (a voter that lost its replica must not come back
    // empty); and a later chunk of a transfer that never started.
    let unknown = |replicas: Vec<NodeId>| {
        let mut unknown = chunk(0, &[b"x"], true);
        unknown.group = 9;
        if let Some(MessageKind::InstallSnapshot { snapshot }) =
            unknown.install.as_mut().map(|m| &mut m.kind)
        {
            let mut descriptor = shard(9);
            (descriptor.start_key, descriptor.end_key) = (b"x".to_vec(), b"y".to_vec());
            descriptor.replicas = replicas;
            snapshot.data = SnapshotManifest {
                descriptor,
                staging: 0,
            }
            .encode();
        }
        unknown
    };
    assert_eq!(
        refusal(&mut driver, unknown(vec![2, 3])),
        SnapshotRefusal::UnknownGroup
    );
    assert_eq!(
        refusal(&mut driver, unknown(vec![1, 2])),
        SnapshotRefusal::UnknownGroup,
        "node 1 is a voter of shard 9 but holds no replica of it"
    );
    let mut unknown_later = chunk(1, &[b"x"], true);
    unknown_later.group = 9;
    assert_eq!(
        refusal(&mut driver, unknown_later),
        SnapshotRefusal::UnknownGroup
    );
    let mut no_install = chunk(0, &[b"b"], true);
    no_install.install = None;
    assert!(matches!(
        refusal(&mut driver, no_install),
        SnapshotRefusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(&mut driver, chunk(0, &[b"b", b"zz"], true)),
        SnapshotRefusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(&mut driver, chunk(0, &[b"c", b"b"], true)),
        SnapshotRefusal::Malformed(_)
    ));
    let mut oversized = chunk(0, &[b"b"], true);
    oversized.items[0].value = vec![0; MAX_SNAPSHOT_CHUNK_BYTES];
    assert!(matches!(
        refusal(&mut driver, oversized),
        SnapshotRefusal::Malformed(_)
    ));
    assert_eq!(
        refusal(&mut driver, chunk(1, &[b"b"], true)),
        SnapshotRefusal::OutOfSequence { expected: None }
    );
    // A gap in a transfer under way ends it; its staging is discarded.
    assert!(deliver(&mut driver, chunk(0, &[b"b"], false))
        .refused
        .is_none());
    assert_eq!(
        refusal(&mut driver, chunk(2, &[b"d"], true)),
        SnapshotRefusal::OutOfSequence { expected: Some(1) }
    );
    assert_eq!(
        refusal(&mut driver, chunk(1, &[b"d"], true)),
        SnapshotRefusal::OutOfSequence { expected: None },
        "the transfer is over"
    );

    // A delayed first chunk of an older transfer from the same node does not end a newer one.
    let mut newer = chunk(0, &[b"b"], false);
    newer.session.number = 2;
    assert!(deliver(&mut driver, newer).refused.is_none());
    assert_eq!(
        refusal(&mut driver, chunk(0, &[b"b"], false)),
        SnapshotRefusal::Superseded
    );
    let mut next = chunk(1, &[b"c"], false);
    next.session.number = 2;
    assert!(
        deliver(&mut driver, next).refused.is_none(),
        "the newer one goes on"
    );
    let mut gap = chunk(3, &[b"d"], true);
    gap.session.number = 2;
    assert!(deliver(&mut driver, gap).refused.is_some());

    assert_eq!(data(&driver), before);
    assert_eq!(driver.store().stagings(), Ok(vec![]));
    assert_eq!(
        driver.applied_index(1),
        Some(rshard_raft::MemStorage::BOOTSTRAP_INDEX)
    );
    assert!(!driver.is_installing(1));
    assert_eq!(driver.snapshot_transfers(), (0, 0));
    assert!(SnapshotMessage::decode(b"\xc1garbage").is_err());
}

/// Iterates once and returns the answers and every message node 1 sent.
fn iterate_and_collect(
    driver: &mut MultiRaft<QueueTransport>,
    answers: &mut Vec<Answer>,
) -> Vec<Message> {
    answers.extend(driver.iterate());
    driver
        .transport_mut()
        .drain()
        .into_iter()
        .flat_map(|frame| frame.into_messages().map(|(_, message)| message))
        .collect()
}

fn from_node_2(message_term: u64, kind: MessageKind) -> Input {
    let mut frame = Frame::new(2, 1);
    frame.push(
        1,
        Message {
            from: 2,
            to: 1,
            term: message_term,
            kind,
        },
    );
    Input::Frame(frame)
}

/// A leader confirms a read (ReadIndex at its term's first index, not yet applied), then a
/// newer leader deposes it with a snapshot past that index. The read must be served from the
/// installed snapshot, not from the data the install is about to replace, even though the
/// applied index reaches the read's index as soon as the snapshot is accepted.
#[test]
fn a_confirmed_read_waits_for_the_snapshot_install_that_deposes_its_leader() {
    let (_, mut driver) = follower_with_data();
    let mut answers = Vec::new();
    let campaign = |driver: &mut MultiRaft<QueueTransport>, answers: &mut Vec<Answer>| {
        for _ in 0..100 {
            driver.offer(Input::Tick).expect("room");
            for message in iterate_and_collect(driver, answers) {
                let reply = match message.kind {
                    MessageKind::PreVote { .. } => MessageKind::PreVoteResponse { reject: false },
                    MessageKind::Vote { .. } => MessageKind::VoteResponse { reject: false },
                    _ => continue,
                };
                driver
                    .offer(from_node_2(message.term, reply))
                    .expect("room");
            }
            if driver.is_leader(1) {
                return;
            }
        }
        panic!("node 1 never won node 2's vote");
    };
    campaign(&mut driver, &mut answers);
    let read = Request::Read {
        shard: 1,
        epoch: Epoch::default(),
        key: b"c-stale".to_vec(),
    };
    driver
        .offer(Input::Request {
            id: 9,
            request: read,
        })
        .expect("room");
    let mut confirmed = false;
    for _ in 0..50 {
        driver.offer(Input::Tick).expect("room");
        for message in iterate_and_collect(&mut driver, &mut answers) {
            if let MessageKind::Heartbeat { round, .. } = message.kind {
                // Node 2 acknowledges the round but never the leader's entry: the read is
                // confirmed at an index nothing has applied yet.
                let answer = MessageKind::HeartbeatResponse { round, commit: 1 };
                driver
                    .offer(from_node_2(message.term, answer))
                    .expect("room");
                confirmed = true;
            }
        }
        if confirmed {
            iterate_and_collect(&mut driver, &mut answers);
            break;
        }
    }
    assert!(confirmed, "the leader never sent a heartbeat round");
    assert!(
        answers.iter().all(|(id, _)| *id != 9),
        "answered before applied"
    );

    driver
        .offer(Input::Snapshot(SnapshotMessage::Chunk(chunk(
            0,
            &[b"b"],
            true,
        ))))
        .expect("room");
    for _ in 0..20 {
        iterate_and_collect(&mut driver, &mut answers);
    }
    assert!(!driver.is_leader(1) && !driver.is_installing(1));
    assert_eq!(driver.applied_index(1), Some(50));
    let read_answer = answers
        .iter()
        .find(|(id, _)| *id == 9)
        .map(|(_, a)| a.clone());
    assert_eq!(
        read_answer,
        Some(Ok(Response::Value(None))),
        "the read saw the replaced data"
    );
}

#[test]
fn a_scan_reads_pages_of_the_shard_range_in_key_order() {
    let (_, mut driver) = single_node_with(|config| config.max_inbox_inputs = 64);
    elect(&mut driver, 1);
    for (id, key) in [b"k", b"c", b"e", b"d", b"b"].iter().enumerate() {
        let id = id as u64 + 1;
        let request = put(*key, b"v");
        driver.offer(Input::Request { id, request }).expect("room");
        assert!(answer(&mut driver, id).is_ok());
    }
    let scan = |id, start: &[u8], end: &[u8], limit| {
        let request = Request::Scan {
            shard: 1,
            epoch: Epoch::default(),
            start: start.to_vec(),
            end: end.to_vec(),
            limit,
        };
        Input::Request { id, request }
    };
    let keys = |response: Result<Response, RequestError>| match response {
        Ok(Response::Items { items, more }) => {
            let keys: Vec<Vec<u8>> = items.into_iter().map(|(k, _)| k).collect();
            (keys, more)
        }
        other => panic!("not items: {other:?}"),
    };
    driver.offer(scan(10, b"c", b"", 2)).expect("room");
    assert_eq!(
        keys(answer(&mut driver, 10)),
        (vec![b"c".to_vec(), b"d".to_vec()], true)
    );
    driver.offer(scan(11, b"d\0", b"", 10)).expect("room");
    assert_eq!(
        keys(answer(&mut driver, 11)),
        (vec![b"e".to_vec(), b"k".to_vec()], false),
        "an empty end stops at the shard's end"
    );
    driver.offer(scan(12, b"b", b"d", 10)).expect("room");
    assert_eq!(
        keys(answer(&mut driver, 12)),
        (vec![b"b".to_vec(), b"c".to_vec()], false)
    );
    driver.offer(scan(13, b"z", b"", 10)).expect("room");
    assert!(matches!(
        answer(&mut driver, 13),
        Err(RequestError::Refused(
            crate::kv::KvError::KeyNotInShard { .. }
        ))
    ));
}

#[test]
fn a_membership_change_planned_against_an_old_conf_version_is_refused() {
    let (_, mut driver) = single_node();
    elect(&mut driver, 1);
    let add_learner = |id, conf_version| Input::Request {
        id,
        request: Request::ChangeReplicas {
            shard: 1,
            change: rshard_raft::ConfChange::new([rshard_raft::ConfChangeStep::AddLearner(2)]),
            conf_version: Some(conf_version),
        },
    };
    driver.offer(add_learner(1, 0)).expect("room");
    let Ok(Response::MembershipChanged(descriptor)) = answer(&mut driver, 1) else {
        panic!("the change planned at the current version applies");
    };
    assert_eq!(
        (descriptor.learners, descriptor.epoch.conf_version),
        (vec![2], 1)
    );
    // The same plan again (a placement round that had not seen the change yet).
    driver.offer(add_learner(2, 0)).expect("room");
    assert!(matches!(
        answer(&mut driver, 2),
        Err(RequestError::MembershipRefused(reason)) if reason.contains("conf version 1")
    ));
    assert_eq!(driver.descriptor(1).map(|d| d.epoch.conf_version), Some(1));
}

fn offer_and_answer(
    driver: &mut MultiRaft<QueueTransport>,
    id: RequestId,
    request: Request,
) -> Result<Response, RequestError> {
    driver.offer(Input::Request { id, request }).expect("room");
    answer(driver, id)
}

fn write_to(shard: u64, version: u64, key: &[u8]) -> Request {
    Request::Write(KvCommand {
        shard,
        epoch: Epoch {
            version,
            conf_version: 0,
        },
        ops: vec![KvOp::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
        }],
    })
}

fn split(at: &[u8], new_shard: u64) -> Request {
    Request::Split(crate::kv::SplitCommand {
        shard: 1,
        epoch: Epoch::default(),
        at: at.to_vec(),
        new_shard,
    })
}

#[test]
fn a_split_hands_the_upper_range_to_a_new_shard_with_its_data_and_survives_a_restart() {
    let (engine, mut driver) = single_node();
    elect(&mut driver, 1);
    for (id, key) in [(1, b"b"), (2, b"k")] {
        assert!(offer_and_answer(&mut driver, id, write_to(1, 0, key)).is_ok());
    }
    let refused = offer_and_answer(&mut driver, 3, split(b"a", 2));
    assert!(
        matches!(
            refused,
            Err(RequestError::Refused(KvError::SplitRefused(_)))
        ),
        "{refused:?}"
    );
    let Ok(Response::Split { left, right }) = offer_and_answer(&mut driver, 4, split(b"f", 2))
    else {
        panic!("the split applies");
    };
    assert_eq!(
        (left.start_key.as_slice(), left.end_key.as_slice()),
        (&b"a"[..], &b"f"[..])
    );
    assert_eq!((right.id, right.start_key.as_slice()), (2, &b"f"[..]));
    assert_eq!(right.end_key, b"m");
    assert_eq!((left.epoch.version, right.epoch.version), (1, 1));
    assert_eq!(right.replicas, vec![1]);
    // The same split asked again (a retried operation) is answered as done.
    assert_eq!(
        offer_and_answer(&mut driver, 5, split(b"f", 2)),
        Ok(Response::Split {
            left: left.clone(),
            right: right.clone()
        })
    );
    // The old epoch is stale; the new one no longer covers "g"; the new shard does, and
    // serves what was written before the split.
    assert!(matches!(
        offer_and_answer(&mut driver, 6, write_to(1, 0, b"g")),
        Err(RequestError::Refused(KvError::StaleEpoch { .. }))
    ));
    assert!(matches!(
        offer_and_answer(&mut driver, 7, write_to(1, 1, b"g")),
        Err(RequestError::Refused(KvError::KeyNotInShard { .. }))
    ));
    for _ in 0..100 {
        if driver.is_leader(2) {
            break;
        }
        driver.offer(Input::Tick).expect("room");
        driver.iterate();
    }
    assert_eq!(
        offer_and_answer(&mut driver, 8, write_to(2, 1, b"g")),
        Ok(Response::Written(KvOutcome::Applied))
    );
    let read = Request::Read {
        shard: 2,
        epoch: right.epoch,
        key: b"k".to_vec(),
    };
    assert_eq!(
        offer_and_answer(&mut driver, 9, read),
        Ok(Response::Value(Some(b"v".to_vec())))
    );
    assert_eq!(driver.counters().shards_split_off, 1);
    // Both shards come back from the store as they were.
    drop(driver);
    let store = NodeStore::with_engine(engine);
    let driver =
        MultiRaft::open(DriverConfig::new(1), store, QueueTransport::new(4)).expect("opens");
    assert_eq!(driver.descriptor(1), Some(&left));
    let reopened = driver
        .descriptor(2)
        .map(|d| (d.start_key.clone(), d.end_key.clone()));
    assert_eq!(reopened, Some((b"f".to_vec(), b"m".to_vec())));
}

#[test]
fn a_read_taken_before_a_split_applies_is_refused_not_served_from_the_new_range() {
    let (_, mut driver) = single_node();
    elect(&mut driver, 1);
    assert!(offer_and_answer(&mut driver, 1, write_to(1, 0, b"k")).is_ok());
    driver
        .offer(Input::Request {
            id: 2,
            request: split(b"f", 2),
        })
        .expect("room");
    driver.iterate();
    assert_eq!(
        driver.descriptor(1).map(|d| d.epoch.version),
        Some(0),
        "the split is proposed, not applied yet"
    );
    let read = Request::Read {
        shard: 1,
        epoch: Epoch::default(),
        key: b"k".to_vec(),
    };
    let answer = offer_and_answer(&mut driver, 3, read);
    assert!(
        matches!(
            answer,
            Err(RequestError::Refused(KvError::StaleEpoch { .. }))
        ),
        "{answer:?}"
    );
    assert_eq!(driver.descriptor(1).map(|d| d.epoch.version), Some(1));
}

/// Chunk `seq` of a snapshot that creates a learner replica of `group` (`[start, end)`)
/// on node 1.
fn learner_chunk(
    group: u64,
    range: (&[u8], &[u8]),
    seq: u32,
    key: &[u8],
    last: bool,
) -> SnapshotChunk {
    let descriptor = ShardDescriptor {
        id: group,
        start_key: range.0.to_vec(),
        end_key: range.1.to_vec(),
        epoch: Epoch::default(),
        replicas: vec![2],
        learners: vec![1],
        merging_into: None,
    };
    let install = Message {
        from: 2,
        to: 1,
        term: 5,
        kind: MessageKind::InstallSnapshot {
            snapshot: rshard_raft::Snapshot {
                metadata: rshard_raft::SnapshotMetadata {
                    index: 50,
                    term: 5,
                    conf_state: rshard_raft::ConfState {
                        voters: [2].into(),
                        learners: [1].into(),
                        ..Default::default()
                    },
                },
                data: SnapshotManifest {
                    descriptor,
                    staging: 0,
                }
                .encode(),
            },
        },
    };
    SnapshotChunk {
        from: 2,
        to: 1,
        group,
        session: SESSION,
        seq,
        install: (seq == 0).then_some(install),
        items: vec![SnapshotItem {
            key: key.to_vec(),
            value: b"v".to_vec(),
        }],
        last,
    }
}

#[test]
fn a_transfer_whose_range_a_replica_took_meanwhile_is_refused_at_its_last_chunk() {
    let (_, mut driver) = single_node();
    // Two transfers that would create overlapping replicas (the older one from before a
    // split of the range): both start while nothing here overlaps them.
    assert_eq!(
        deliver(&mut driver, learner_chunk(7, (b"m", b"t"), 0, b"n", false)).refused,
        None
    );
    assert_eq!(
        deliver(&mut driver, learner_chunk(8, (b"p", b"t"), 0, b"q", false)).refused,
        None
    );
    assert_eq!(
        deliver(&mut driver, learner_chunk(8, (b"p", b"t"), 1, b"r", true)).refused,
        None
    );
    assert!(driver.descriptor(8).is_some(), "shard 8 was created");
    let late = deliver(&mut driver, learner_chunk(7, (b"m", b"t"), 1, b"s", true));
    assert!(
        matches!(
            late.refused,
            Some(SnapshotRefusal::Overlaps(8) | SnapshotRefusal::Busy)
        ),
        "{late:?}"
    );
    assert!(
        driver.descriptor(7).is_none(),
        "shard 7 was not created over shard 8"
    );
}

/// Node 2, leading term 5, appends `changes` membership changes to node 1's replica of
/// shard 1 (voters 1 and 2), uncommitted.
fn append_conf_changes(driver: &mut MultiRaft<QueueTransport>, changes: u64) {
    let first = rshard_raft::MemStorage::BOOTSTRAP_INDEX + 1;
    let entries = (0..changes)
        .map(|i| rshard_raft::Entry {
            term: 5,
            index: first + i,
            payload: rshard_raft::Payload::ConfChange(rshard_raft::ConfChange::new([
                rshard_raft::ConfChangeStep::AddLearner(3 + i),
            ])),
        })
        .collect();
    let bootstrap = rshard_raft::MemStorage::BOOTSTRAP_INDEX;
    let append = MessageKind::Append {
        prev_index: bootstrap,
        prev_term: bootstrap,
        entries,
        commit: bootstrap,
    };
    driver.offer(from_node_2(5, append)).expect("room");
    while driver.has_work() {
        driver.iterate();
    }
}

fn notice(conf_version: u64) -> Input {
    let mut frame = Frame::new(2, 1);
    frame.push_removed(RemovedNotice {
        group: 1,
        conf_version,
    });
    Input::Frame(frame)
}

fn deliver_notice(driver: &mut MultiRaft<QueueTransport>, conf_version: u64) {
    driver.offer(notice(conf_version)).expect("room");
    while driver.has_work() {
        driver.iterate();
    }
}

/// A removal notice destroys a replica only if neither its applied membership nor the
/// changes waiting in its log reach the notice's conf version: otherwise the replica may be
/// (or become) a member the sender does not know of yet.
#[test]
fn a_removal_notice_destroys_only_a_replica_that_cannot_reach_its_conf_version() {
    let (_, mut driver) = follower_with_data();
    // Conf version 0 here: a notice at 0 comes from a replica no further on.
    deliver_notice(&mut driver, 0);
    assert!(
        driver.descriptor(1).is_some(),
        "destroyed by a notice not ahead of it"
    );
    // Two changes in the log, not applied: conf version 2 is within reach.
    append_conf_changes(&mut driver, 2);
    deliver_notice(&mut driver, 1);
    assert!(
        driver.descriptor(1).is_some(),
        "destroyed though its log may add it back"
    );
    assert_eq!(driver.counters().replicas_destroyed, 0);

    deliver_notice(&mut driver, 2);
    assert!(driver.descriptor(1).is_none());
    assert_eq!(driver.counters().replicas_destroyed_by_notice, 1);
    // The shard's data goes in later steps; other ranges stay.
    while driver.has_work() {
        driver.iterate();
    }
    assert_eq!(
        data(&driver),
        vec![(b"z-other-shard".to_vec(), b"kept".to_vec())]
    );
    // A leader's snapshot from before the removal cannot bring it back.
    let ack = deliver(&mut driver, learner_chunk(1, (b"a", b"m"), 0, b"b", true));
    assert_eq!(ack.refused, Some(SnapshotRefusal::Removed(2)));
    assert!(driver.descriptor(1).is_none());
}

fn freeze(shard: u64, version: u64, into: u64) -> Request {
    Request::Freeze(crate::kv::FreezeCommand {
        shard,
        epoch: Epoch {
            version,
            conf_version: 0,
        },
        into,
    })
}

fn merge(left: &ShardDescriptor, right: &ShardDescriptor) -> Request {
    Request::Merge(crate::kv::MergeCommand {
        shard: left.id,
        epoch: left.epoch,
        right: right.clone(),
    })
}

#[test]
fn a_merge_freezes_the_right_shard_then_the_left_takes_its_range_and_data() {
    let (engine, mut driver) = single_node();
    elect(&mut driver, 1);
    let Ok(Response::Split { left, right }) = offer_and_answer(&mut driver, 1, split(b"f", 2))
    else {
        panic!("the split applies");
    };
    for _ in 0..100 {
        if driver.is_leader(2) {
            break;
        }
        driver.offer(Input::Tick).expect("room");
        driver.iterate();
    }
    assert!(offer_and_answer(&mut driver, 2, write_to(1, 1, b"b")).is_ok());
    assert!(offer_and_answer(&mut driver, 3, write_to(2, 1, b"k")).is_ok());
    // Not frozen yet: the merge is refused before it is proposed.
    let early = offer_and_answer(&mut driver, 4, merge(&left, &right));
    assert!(
        matches!(early, Err(RequestError::Refused(KvError::MergeRefused(_)))),
        "{early:?}"
    );
    let Ok(Response::Frozen(frozen)) = offer_and_answer(&mut driver, 5, freeze(2, 1, 1)) else {
        panic!("the freeze applies");
    };
    assert_eq!((frozen.merging_into, frozen.epoch.version), (Some(1), 2));
    // Asked again: the same answer. Frozen: no write, no read, whatever the epoch.
    assert_eq!(
        offer_and_answer(&mut driver, 6, freeze(2, 1, 1)),
        Ok(Response::Frozen(frozen.clone()))
    );
    for (id, version) in [(7, 1), (8, 2)] {
        let refused = offer_and_answer(&mut driver, id, write_to(2, version, b"l"));
        assert!(
            matches!(
                refused,
                Err(RequestError::Refused(KvError::ShardMerging {
                    shard: 2,
                    into: 1
                }))
            ),
            "{refused:?}"
        );
    }
    let read = Request::Read {
        shard: 2,
        epoch: frozen.epoch,
        key: b"k".to_vec(),
    };
    assert!(offer_and_answer(&mut driver, 9, read).is_err());
    // A merge planned against the unfrozen right descriptor is refused when it applies
    // (here: before it is proposed, the replica here being frozen differently).
    assert!(offer_and_answer(&mut driver, 10, merge(&left, &right)).is_err());
    let Ok(Response::Merged(merged)) = offer_and_answer(&mut driver, 11, merge(&left, &frozen))
    else {
        panic!("the merge applies");
    };
    assert_eq!(
        (merged.start_key.as_slice(), merged.end_key.as_slice()),
        (&b"a"[..], &b"m"[..])
    );
    assert_eq!(merged.epoch.version, 3);
    assert_eq!(driver.descriptor(2), None, "the right shard is retired");
    assert_eq!(driver.counters().replicas_merged_away, 1);
    assert_eq!(
        offer_and_answer(&mut driver, 12, merge(&left, &frozen)),
        Ok(Response::Merged(merged.clone())),
        "asked again: done"
    );
    // The left shard serves the right one's data, and writes over its whole range.
    let read = Request::Read {
        shard: 1,
        epoch: merged.epoch,
        key: b"k".to_vec(),
    };
    assert_eq!(
        offer_and_answer(&mut driver, 13, read),
        Ok(Response::Value(Some(b"v".to_vec())))
    );
    assert!(offer_and_answer(&mut driver, 14, write_to(1, 3, b"l")).is_ok());
    drop(driver);
    let store = NodeStore::with_engine(engine);
    let driver =
        MultiRaft::open(DriverConfig::new(1), store, QueueTransport::new(4)).expect("opens");
    assert_eq!(driver.descriptor(1), Some(&merged));
    assert_eq!(driver.descriptor(2), None);
}
