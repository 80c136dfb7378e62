//! Inputs no correct peer sends, and the edges of the caller contract: each is refused with a
//! typed error or ignored, and nothing changes. "Bad input is normal" — a malformed message is
//! not a bug of this replica, so it must never panic it or move its state.

mod support;

use rshard_raft::{
    AppendResult, ConfChange, ConfChangeStep, ConfState, Entry, Error, HardState, MemStorage,
    Message, MessageKind, Payload, Raft, Snapshot, SnapshotMetadata,
};
use support::{entries_of_term, storage_with_log, test_config, Cluster};

fn leader_of_three() -> Cluster {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Normal(b"x".to_vec()),
    }
}

fn message(from: u64, to: u64, term: u64, kind: MessageKind) -> Message {
    Message {
        from,
        to,
        term,
        kind,
    }
}

fn append(term: u64, prev_index: u64, prev_term: u64, entries: Vec<Entry>) -> Message {
    let kind = MessageKind::Append {
        prev_index,
        prev_term,
        entries,
        commit: 0,
    };
    message(1, 2, term, kind)
}

/// Every malformed shape a hostile or broken peer could send is refused with
/// `MalformedMessage`, before any term rule runs: the receiver's term, vote, log and role are
/// unchanged and it has nothing to send.
#[test]
fn malformed_messages_are_refused_and_change_nothing() {
    let mut cluster = leader_of_three();
    cluster.propose(1, b"a").expect("leader");
    let (term, last) = (cluster.node(2).term(), cluster.node(2).last_index());
    let higher = term + 1;
    let heartbeat = MessageKind::Heartbeat {
        commit: 0,
        round: 0,
        quiesce: false,
    };
    let cases = vec![
        (
            "gap after prev",
            append(higher, last, term, vec![entry(term, last + 2)]),
        ),
        (
            "entry at prev",
            append(higher, last, term, vec![entry(term, last)]),
        ),
        (
            "decreasing terms",
            append(
                higher,
                last,
                term,
                vec![entry(higher, last + 1), entry(term, last + 2)],
            ),
        ),
        (
            "entry past the leader's term",
            append(term, last, term, vec![entry(term + 5, last + 1)]),
        ),
        (
            "index overflow",
            append(higher, u64::MAX, term, vec![entry(term, 0)]),
        ),
        (
            "term at its maximum",
            message(1, 2, u64::MAX, heartbeat.clone()),
        ),
        ("message to itself", message(2, 2, higher, heartbeat)),
        (
            "candidate's last term past its term",
            message(
                3,
                2,
                higher,
                MessageKind::Vote {
                    last_index: 9,
                    last_term: higher + 1,
                    leader_transfer: true,
                },
            ),
        ),
        (
            "snapshot at index 0",
            message(
                1,
                2,
                higher,
                MessageKind::InstallSnapshot {
                    snapshot: Snapshot::default(),
                },
            ),
        ),
        (
            "rejection hint past the rejected index",
            message(
                2,
                1,
                term,
                MessageKind::AppendResponse {
                    result: AppendResult::Rejected {
                        rejected_index: 1,
                        hint_index: 5,
                        hint_term: 1,
                    },
                    commit: 0,
                },
            ),
        ),
    ];
    for (what, bad) in cases {
        let to = bad.to;
        let node = cluster.node(to);
        let before = (
            node.hard_state(),
            node.last_index(),
            node.role(),
            node.leader(),
        );
        match cluster.node_mut(to).step(bad) {
            Err(Error::MalformedMessage { .. }) => {}
            other => panic!("{what}: expected MalformedMessage, got {other:?}"),
        }
        let node = cluster.node(to);
        assert_eq!(
            (
                node.hard_state(),
                node.last_index(),
                node.role(),
                node.leader()
            ),
            before,
            "{what}"
        );
        assert!(!node.has_ready(), "{what}: nothing to persist or send");
    }
}

/// §7: a follower that already holds a snapshot's last entry only fast-forwards its commit,
/// and claims no more than the snapshot: its suffix past it may come from an older term.
#[test]
fn a_snapshot_the_follower_already_holds_is_acknowledged_at_its_index_not_at_the_suffix() {
    let conf = ConfState::with_voters([1, 2, 3]);
    let mut log = entries_of_term(1, 1..=3);
    log.extend(entries_of_term(2, 4..=6)); // a suffix from a deposed leader of term 2
    let hard_state = HardState {
        term: 2,
        vote: None,
        commit: 2,
    };
    let mut cluster =
        Cluster::with_storages(vec![(2, storage_with_log(&conf, &log, hard_state))], |_| {});
    let snapshot = Snapshot {
        metadata: SnapshotMetadata {
            index: 3,
            term: 1,
            conf_state: conf,
        },
        data: Vec::new(),
    };
    let answers =
        cluster.persisted_answers_to(message(1, 2, 3, MessageKind::InstallSnapshot { snapshot }));
    let claimed: Vec<AppendResult> = answers
        .iter()
        .filter_map(|m| match m.kind {
            MessageKind::AppendResponse { result, .. } => Some(result),
            _ => None,
        })
        .collect();
    assert_eq!(claimed, vec![AppendResult::Accepted { match_index: 3 }]);
    assert_eq!(cluster.node(2).commit_index(), 3);
}

/// A leader never trusts an acknowledgement of entries it does not have: it would count the
/// follower toward commit and later ask its own log for terms past its end.
#[test]
fn an_acknowledgement_past_the_leaders_log_is_ignored() {
    let mut cluster = leader_of_three();
    let (term, last) = (cluster.node(1).term(), cluster.node(1).last_index());
    let matched_before = cluster.node(1).progress(2).map(|p| p.matched);
    let commit_before = cluster.node(1).commit_index();
    let forged = MessageKind::AppendResponse {
        result: AppendResult::Accepted {
            match_index: last + 100,
        },
        commit: 0,
    };
    cluster.inject(message(2, 1, term, forged));
    assert_eq!(
        cluster.node(1).progress(2).map(|p| p.matched),
        matched_before
    );
    assert_eq!(cluster.node(1).commit_index(), commit_before);
}

/// Thesis §4.2.3 / §6.4.1: a follower that heard from its leader within an election timeout
/// has promised not to help elect another; an explicit campaign would break that promise
/// (and the leader's lease), so it is refused until the timeout passes.
#[test]
fn campaign_is_refused_while_a_leader_was_heard_within_an_election_timeout() {
    let mut cluster = leader_of_three();
    assert_eq!(
        cluster.node_mut(2).campaign(),
        Err(Error::LeaderAlive { leader: Some(1) })
    );
    assert_eq!(cluster.node(2).role(), rshard_raft::Role::Follower);
    let election_timeout_ticks = test_config(2).election_timeout_ticks;
    cluster.tick(2, election_timeout_ticks);
    assert_eq!(cluster.node_mut(2).campaign(), Ok(()));
}

/// A membership change at or before the index the configuration took effect (a snapshot
/// installed while the Ready carrying the change was being handled already includes it) is
/// ignored; a later one applies.
#[test]
fn a_membership_change_superseded_by_the_configuration_is_ignored() {
    let conf = ConfState::with_voters([1, 2, 3]);
    let storage = MemStorage::bootstrap(conf.clone(), Vec::new());
    let mut raft = Raft::new(test_config(1), storage).expect("valid");
    let add_four = ConfChange::new([ConfChangeStep::AddVoter(4)]);
    let bootstrap = MemStorage::BOOTSTRAP_INDEX;
    assert_eq!(raft.apply_conf_change(bootstrap, &add_four), Ok(conf));
    let applied = raft
        .apply_conf_change(bootstrap + 1, &add_four)
        .expect("valid change");
    assert!(applied.voters.contains(&4));
}

/// §6.4 with §4.3: a read waiting for a quorum must not wait forever when the configuration
/// shrinks to the leader alone; its own acknowledgement is then the quorum.
#[test]
fn a_pending_read_is_released_when_the_leader_becomes_the_only_voter() {
    let mut cluster = Cluster::new(&[1, 2], |_| {});
    cluster.campaign(1);
    cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::new([ConfChangeStep::Remove(2)]))
        .expect("leader");
    cluster
        .node_mut(1)
        .read_index(b"r".to_vec())
        .expect("leader");
    // Heartbeat answers are lost, so only the membership change can release the read.
    cluster.stabilize_losing(|m| matches!(m.kind, MessageKind::HeartbeatResponse { .. }));
    assert_eq!(cluster.node(1).conf_state().voters, [1].into());
    let released: Vec<&[u8]> = cluster.read_states[&1]
        .iter()
        .map(|r| r.context.as_slice())
        .collect();
    assert_eq!(released, vec![b"r".as_slice()]);
}

/// The caller contract: a second `ready()` before `advance()` would hand out the same
/// committed entries again, so it is a caller bug and stops loudly.
#[test]
#[should_panic(expected = "ready() called again before advance()")]
fn ready_twice_without_advance_is_a_caller_bug() {
    let mut cluster = leader_of_three();
    cluster.propose(1, b"a").expect("leader");
    cluster.node_mut(1).propose(b"b".to_vec()).expect("leader");
    let _first = cluster.take_ready(1);
    let _second = cluster.take_ready(1);
}
