//! Log replication, one rule per test: log matching and repair (Raft §5.3), the commit rule
//! and Figure 8 (§5.4.2), the new leader's no-op (§8), flow control, and the ordering of
//! acknowledgements and persistence.

mod support;

use rshard_raft::progress::ProgressState;
use rshard_raft::{
    AppendResult, ConfState, Entry, HardState, Index, LogPosition, Message, MessageKind, Payload,
    Role, Term,
};
use support::{entries_of_term, storage_with_log, Cluster};

fn append(
    from: u64,
    to: u64,
    term: Term,
    previous: LogPosition,
    entries: Vec<Entry>,
    commit: Index,
) -> Message {
    Message {
        from,
        to,
        term,
        kind: MessageKind::Append {
            prev_index: previous.index,
            prev_term: previous.term,
            entries,
            commit,
        },
    }
}

fn is_append_to(message: &Message, to: u64) -> bool {
    message.to == to && matches!(message.kind, MessageKind::Append { .. })
}

fn is_rejection_from(message: &Message, from: u64) -> bool {
    message.from == from
        && matches!(
            message.kind,
            MessageKind::AppendResponse {
                result: AppendResult::Rejected { .. },
                ..
            }
        )
}

fn hard_state(term: Term, commit: Index) -> HardState {
    HardState {
        term,
        vote: None,
        commit,
    }
}

/// §5.3 (log matching): a follower accepts an append only if its log holds the entry just
/// before the new ones with the same term; otherwise it rejects it and changes nothing.
#[test]
fn a_follower_rejects_an_append_whose_previous_entry_does_not_match() {
    let conf = ConfState::with_voters([1, 2, 3]);
    let log = entries_of_term(1, 1..=2);
    let storage = storage_with_log(&conf, &log, hard_state(1, 0));
    let mut cluster = Cluster::with_storages(vec![(2, storage)], |_| {});

    // The leader of term 2 believes index 2 has term 2; ours has term 1.
    let previous = LogPosition { term: 2, index: 2 };
    let new_entries = entries_of_term(2, 3..=3);
    cluster.inject(append(1, 2, 2, previous, new_entries, 0));

    let ready = cluster.take_ready(2);
    assert!(
        ready.entries.is_empty(),
        "nothing is appended: {:?}",
        ready.entries
    );
    let rejected = ready.persisted_messages.iter().any(|m| {
        m.to == 1
            && matches!(
                m.kind,
                MessageKind::AppendResponse {
                    result: AppendResult::Rejected {
                        rejected_index: 2,
                        ..
                    },
                    ..
                }
            )
    });
    assert!(rejected, "{:?}", ready.persisted_messages);
    cluster.finish_ready(2, ready);
    assert_eq!(cluster.persisted_log(2), log);
    assert_eq!(cluster.node(2).last_index(), 2);
}

/// §5.3: the leader backs up to the last entry both logs agree on and overwrites the
/// follower's conflicting suffix, after which both logs are identical.
#[test]
fn a_follower_with_a_conflicting_suffix_is_repaired_to_the_leaders_log() {
    let conf = ConfState::with_voters([1, 2, 3]);
    let common = entries_of_term(1, 1..=2);
    let leader_log = [common.clone(), entries_of_term(3, 3..=4)].concat();
    let stale_log = [common, entries_of_term(2, 3..=5)].concat();
    let mut cluster = Cluster::with_storages(
        vec![
            (1, storage_with_log(&conf, &leader_log, hard_state(3, 2))),
            (2, storage_with_log(&conf, &leader_log, hard_state(3, 2))),
            (3, storage_with_log(&conf, &stale_log, hard_state(2, 2))),
        ],
        |_| {},
    );
    cluster.campaign(1);
    assert_eq!(cluster.leaders(), vec![1]);

    assert!(
        cluster.delivered_matching(|m| is_rejection_from(m, 3)) >= 1,
        "3's log conflicted"
    );
    let repaired = cluster.persisted_log(3);
    assert_eq!(repaired, cluster.persisted_log(1));
    assert!(
        repaired.iter().all(|entry| entry.term != 2),
        "the conflicting entries of term 2 are gone: {repaired:?}"
    );
    assert_eq!(
        cluster.node(3).commit_index(),
        cluster.node(1).commit_index()
    );
}

/// §5.3 (the optimization at its end): a rejection carries a hint so the leader skips a whole
/// term of conflicting entries per round trip. A follower holding 50 divergent entries of one
/// old term is repaired after at most a few rejections, not one per entry.
#[test]
fn a_long_divergent_suffix_of_one_term_is_skipped_in_few_round_trips() {
    const COMMON: Index = 5;
    const DIVERGENT_ENTRIES: Index = 50;
    const LEADER_EXTRA_ENTRIES: Index = 60;
    let conf = ConfState::with_voters([1, 2, 3]);
    let common = entries_of_term(1, 1..=COMMON);
    // 1 led term 1 and appended 50 entries nobody else got; 2 and 3 went on in term 2.
    let divergent = [
        common.clone(),
        entries_of_term(1, COMMON + 1..=COMMON + DIVERGENT_ENTRIES),
    ]
    .concat();
    let current = [
        common,
        entries_of_term(2, COMMON + 1..=COMMON + LEADER_EXTRA_ENTRIES),
    ]
    .concat();
    let mut cluster = Cluster::with_storages(
        vec![
            (
                1,
                storage_with_log(&conf, &divergent, hard_state(1, COMMON)),
            ),
            (2, storage_with_log(&conf, &current, hard_state(2, COMMON))),
            (3, storage_with_log(&conf, &current, hard_state(2, COMMON))),
        ],
        |_| {},
    );
    cluster.campaign(2);
    assert_eq!(cluster.leaders(), vec![2]);

    let rejections = cluster.delivered_matching(|m| is_rejection_from(m, 1));
    assert!(
        (1..=3).contains(&rejections),
        "{rejections} rejections to skip {DIVERGENT_ENTRIES} divergent entries of one term"
    );
    let appends = cluster.delivered_matching(|m| is_append_to(m, 1));
    assert!(appends <= 4, "{appends} appends to repair the follower");
    assert_eq!(cluster.persisted_log(1), cluster.persisted_log(2));
}

/// The five replicas of Figure 8 at stage (c), by hand: entry 1 (term 1) is committed
/// everywhere; 1 led term 2 and gave entry 2 (term 2) to 2 only; 5 led term 3 and wrote its
/// own entry 2 (term 3) before crashing. Appends carry one entry each (`max_msg_bytes` 1) so
/// the test can let an entry through without the one after it. As in the paper, there is no
/// pre-vote (5 campaigns straight into a new term) and no check quorum (2 and 3 vote as soon
/// as 1 crashes instead of waiting out its lease).
fn figure_8_cluster() -> Cluster {
    let conf = ConfState::with_voters([1, 2, 3, 4, 5]);
    let first = entries_of_term(1, 1..=1);
    let with_term_2 = [first.clone(), entries_of_term(2, 2..=2)].concat();
    let with_term_3 = [first.clone(), entries_of_term(3, 2..=2)].concat();
    Cluster::with_storages(
        vec![
            (1, storage_with_log(&conf, &with_term_2, hard_state(3, 1))),
            (2, storage_with_log(&conf, &with_term_2, hard_state(2, 1))),
            (3, storage_with_log(&conf, &first, hard_state(3, 1))),
            (4, storage_with_log(&conf, &first, hard_state(3, 1))),
            (5, storage_with_log(&conf, &with_term_3, hard_state(3, 1))),
        ],
        |config| {
            config.check_quorum = false;
            config.pre_vote = false;
            config.max_msg_bytes = 1;
        },
    )
}

/// Figure 8 stage (c): 1 is elected in term 4 by 2 and 3 (4 and 5 are out of reach) and
/// copies entry 2 (term 2) to 3, but its own no-op (entry 3, term 4) reaches only 2. Entry 2
/// is then stored on 1, 2 and 3: a majority of five.
fn figure_8_stage_c() -> Cluster {
    let mut cluster = figure_8_cluster();
    for unreachable in [4, 5] {
        cluster.cut.insert((1, unreachable));
        cluster.cut.insert((unreachable, 1));
    }
    cluster.node_mut(1).campaign().expect("voter");
    // Step by step, and cut the link to 3 as soon as 3 has entry 2, so that the no-op
    // following it never arrives.
    let reached = cluster.run_until(|cluster| {
        cluster
            .node(1)
            .progress(3)
            .is_some_and(|progress| progress.matched >= 2)
    });
    assert!(reached, "3 receives entry 2");
    cluster.cut.insert((1, 3));
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).term(), 4);
    let term_2_entry = LogPosition { term: 2, index: 2 };
    for id in [1, 2, 3] {
        let log = cluster.persisted_log(id);
        assert_eq!(log[1].position(), term_2_entry, "replica {id}: {log:?}");
    }
    assert_eq!(
        cluster.persisted_log(3).len(),
        2,
        "3 lacks the no-op of term 4"
    );
    cluster
}

/// §5.4.2, Figure 8: a leader never commits an entry of an earlier term by counting the
/// replicas that store it, even a majority. Here entry 2 (term 2) sits on three of five, yet
/// is not committed, and rightly: 5 can still win term 5 (with 3's and 4's votes) and
/// overwrite it everywhere. Had the leader of term 4 committed it, a committed entry would
/// be lost.
#[test]
fn an_entry_of_an_earlier_term_on_a_majority_is_not_committed_by_counting() {
    let mut cluster = figure_8_stage_c();
    assert_eq!(
        cluster.node(1).commit_index(),
        1,
        "entry 2 (term 2) must not commit by counting replicas"
    );

    // Stage (d): 1 crashes; 5 campaigns. In term 4 it loses (2 and 3 already voted for 1),
    // in term 5 it wins with 3's and 4's votes: its last entry (term 3) beats theirs (term 2).
    cluster.isolate(1);
    cluster.campaign(5);
    cluster.campaign(5);
    assert_eq!(cluster.node(5).role(), Role::Leader);
    assert_eq!(cluster.node(5).term(), 5);
    for id in [3, 4, 5] {
        let log = cluster.persisted_log(id);
        assert_eq!(log[1].term, 3, "replica {id}: entry 2 is now 5's: {log:?}");
    }
    for (id, applied) in &cluster.applied {
        assert!(
            applied
                .iter()
                .all(|entry| entry.position() != LogPosition { term: 2, index: 2 }),
            "replica {id} applied an entry that was later overwritten"
        );
    }
}

/// §5.4.2, Figure 8 stage (e): once an entry of the leader's own term is on a majority it
/// commits, and every earlier entry with it; then the replica holding the stale entry 2 can
/// no longer be elected.
#[test]
fn an_earlier_term_entry_commits_with_the_first_entry_of_the_current_term() {
    let mut cluster = figure_8_stage_c();
    cluster.cut.remove(&(1, 3));
    cluster.tick(1, 1); // a heartbeat reveals what 3 lacks
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), 3);
    let applied: Vec<LogPosition> = cluster.applied[&1].iter().map(Entry::position).collect();
    assert!(
        applied.contains(&LogPosition { term: 2, index: 2 }),
        "{applied:?}"
    );

    cluster.isolate(1);
    cluster.campaign(5);
    cluster.campaign(5);
    assert_ne!(
        cluster.node(5).role(),
        Role::Leader,
        "2 and 3 hold a newer log than 5"
    );
}

/// §5.4.2 and §8: a new leader starts its term by appending an empty entry of that term, so
/// that entries of earlier terms commit (and reads are safe) without waiting for a client.
#[test]
fn a_new_leader_appends_and_commits_a_no_op_of_its_term() {
    // Without check quorum, 2 can be elected while 1 still leads.
    let mut cluster = Cluster::new(&[1, 2, 3], |config| config.check_quorum = false);
    cluster.campaign(1);
    cluster.propose(1, b"written in term 1").expect("leader");
    let before = cluster.node(1).last_index();

    cluster.campaign(2);
    assert_eq!(cluster.leaders(), vec![2]);
    let term = cluster.node(2).term();
    let no_op = cluster.persisted_log(2).last().cloned().expect("an entry");
    assert_eq!(
        no_op,
        Entry {
            term,
            index: before + 1,
            payload: Payload::Empty
        }
    );
    for id in 1..=3 {
        assert_eq!(cluster.node(id).commit_index(), no_op.index, "replica {id}");
    }
}

/// Flow control: to a follower in the replicate state the leader streams appends of entries
/// optimistically, but at most `max_inflight_msgs` unacknowledged ones; then it sends that
/// follower nothing at all until it hears back. (Entry-less appends that only carry a new
/// commit index take no slot, as in etcd/raft.)
#[test]
fn a_follower_that_does_not_answer_has_at_most_max_inflight_msgs_appends_outstanding() {
    const MAX_INFLIGHT_MSGS: usize = 3;
    let mut cluster = Cluster::new(&[1, 2, 3], |config| {
        config.max_inflight_msgs = MAX_INFLIGHT_MSGS
    });
    cluster.campaign(1);
    assert_eq!(
        cluster.node(1).progress(2).map(|p| p.state),
        Some(ProgressState::Replicate)
    );

    cluster.cut.insert((2, 1)); // 2 receives but its answers are lost
    let delivered_before = cluster.delivered.len();
    let appends_to_2 = |cluster: &Cluster, with_entries: bool| {
        cluster.delivered[delivered_before..]
            .iter()
            .filter(|m| match &m.kind {
                MessageKind::Append { entries, .. } => {
                    m.to == 2 && (!with_entries || !entries.is_empty())
                }
                _ => false,
            })
            .count()
    };
    for proposal in 0..MAX_INFLIGHT_MSGS as u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    assert_eq!(appends_to_2(&cluster, true), MAX_INFLIGHT_MSGS);
    let appends_when_full = appends_to_2(&cluster, false);
    assert_eq!(
        cluster.node(1).progress(2).map(|p| p.inflights.count()),
        Some(MAX_INFLIGHT_MSGS)
    );

    for proposal in 0..10u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    assert_eq!(
        appends_to_2(&cluster, false),
        appends_when_full,
        "nothing more goes to a follower whose window is full"
    );
    assert_eq!(
        cluster.node(3).commit_index(),
        cluster.node(1).last_index(),
        "3 keeps up"
    );

    cluster.heal();
    let last = cluster.node(1).last_index();
    let caught_up = cluster.tick_all_until(5, |cluster| cluster.node(2).last_index() == last);
    assert!(
        caught_up.is_some(),
        "the follower catches up once it answers again"
    );
}

/// Flow control: an append carries at most `max_msg_bytes` of entries, except that a single
/// entry larger than that still goes (alone), so replication never stalls.
#[test]
fn each_append_carries_at_most_max_msg_bytes_of_entries_unless_one_entry_is_larger() {
    const MAX_MSG_BYTES: u64 = 100;
    const SMALL_PAYLOAD: usize = 10; // 34 bytes with the entry overhead: two fit in 100
    const LARGE_PAYLOAD: usize = 500;
    let mut cluster = Cluster::new(&[1, 2, 3], |config| config.max_msg_bytes = MAX_MSG_BYTES);
    cluster.campaign(1);
    cluster.isolate(2);
    for _ in 0..10 {
        cluster.propose(1, &[1; SMALL_PAYLOAD]).expect("leader");
    }
    cluster.propose(1, &[2; LARGE_PAYLOAD]).expect("leader");
    for _ in 0..5 {
        cluster.propose(1, &[3; SMALL_PAYLOAD]).expect("leader");
    }

    cluster.heal();
    let delivered_before = cluster.delivered.len();
    let last = cluster.node(1).last_index();
    let caught_up = cluster.tick_all_until(5, |cluster| cluster.node(2).last_index() == last);
    assert!(caught_up.is_some());

    let mut most_entries = 0;
    for message in &cluster.delivered[delivered_before..] {
        let MessageKind::Append { entries, .. } = &message.kind else {
            continue;
        };
        if message.to != 2 || entries.is_empty() {
            continue;
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        assert!(
            bytes <= MAX_MSG_BYTES || entries.len() == 1,
            "{} entries of {bytes} bytes in one append",
            entries.len()
        );
        most_entries = most_entries.max(entries.len());
    }
    assert_eq!(
        most_entries, 2,
        "the limit, not one entry per append, decides the batch"
    );
}

/// Flow control (probe state): while the leader does not know where a follower's log ends,
/// it sends one append and waits: for the answer, or for the next heartbeat interval.
/// Proposals in between send nothing more to that follower.
#[test]
fn a_probing_follower_gets_at_most_one_append_per_heartbeat_interval() {
    const HEARTBEAT_INTERVAL_TICKS: u32 = 2;
    let mut cluster = Cluster::new(&[1, 2, 3], |config| {
        config.heartbeat_interval_ticks = HEARTBEAT_INTERVAL_TICKS;
    });
    cluster.campaign(1);
    cluster.node_mut(1).report_unreachable(2);
    assert_eq!(
        cluster.node(1).progress(2).map(|p| p.state),
        Some(ProgressState::Probe)
    );
    // 2's answers to appends are lost, so it stays in probe; its heartbeat answers arrive.
    let lost = |m: &Message| m.from == 2 && matches!(m.kind, MessageKind::AppendResponse { .. });
    let appends_to_2 = |cluster: &Cluster| cluster.delivered_matching(|m| is_append_to(m, 2));
    let before = appends_to_2(&cluster);

    for proposal in 0..5u8 {
        cluster.node_mut(1).propose(vec![proposal]).expect("leader");
        cluster.stabilize_losing(lost);
    }
    assert_eq!(appends_to_2(&cluster) - before, 1);

    for interval in 1..=4 {
        for tick in 0..HEARTBEAT_INTERVAL_TICKS {
            cluster
                .node_mut(1)
                .propose(vec![100 + tick as u8])
                .expect("leader");
            cluster.tick(1, 1);
            cluster.stabilize_losing(lost);
        }
        assert_eq!(
            appends_to_2(&cluster) - before,
            1 + interval,
            "after {interval} intervals"
        );
    }
}

/// §5.3: the leader retries an unanswered append indefinitely. A probe to a follower that
/// answers nothing, heartbeats included (as a node that holds no replica of the group yet,
/// which answers only appends), is sent again once an election timeout has passed without
/// an answer; otherwise the lost probe would leave that follower behind for good.
#[test]
fn a_lost_probe_to_a_follower_that_answers_no_heartbeat_is_sent_again() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    let election_timeout_ticks = support::test_config(1).election_timeout_ticks;
    // Elected by 2; the new leader's first append to 3 is lost.
    cluster.node_mut(1).campaign().expect("campaign");
    cluster.stabilize_losing(|m| m.to == 3);
    let progress = cluster.node(1).progress(3).expect("3 is a member");
    assert!(progress.state == ProgressState::Probe && progress.probe_sent);

    // From now on 3 gets appends but no heartbeat, so it never answers one.
    let heartbeat_to_3 = |m: &Message| m.to == 3 && matches!(m.kind, MessageKind::Heartbeat { .. });
    cluster
        .node_mut(1)
        .propose(b"after".to_vec())
        .expect("leader");
    cluster.stabilize_losing(heartbeat_to_3);
    assert!(!cluster.holds(3, b"after"), "the probe is still out");
    for _ in 0..=election_timeout_ticks {
        cluster.tick(1, 1);
        cluster.stabilize_losing(heartbeat_to_3);
    }
    assert!(
        cluster.holds(3, b"after"),
        "3 caught up once the lost probe was sent again"
    );
}

/// The same holds for a follower put back to probe state with nothing sent (as after a
/// refused snapshot) in a group with no writes: it gets a probe within an election timeout,
/// though it answers no heartbeat.
#[test]
fn a_follower_back_in_probe_state_in_an_idle_group_is_probed_again() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    let election_timeout_ticks = support::test_config(1).election_timeout_ticks;
    cluster.campaign(1);
    cluster.node_mut(1).report_unreachable(3);
    let progress = cluster.node(1).progress(3).expect("3 is a member");
    assert!(progress.state == ProgressState::Probe && !progress.probe_sent);

    let heartbeat_to_3 = |m: &Message| m.to == 3 && matches!(m.kind, MessageKind::Heartbeat { .. });
    let appends_to_3 = |cluster: &Cluster| cluster.delivered_matching(|m| is_append_to(m, 3));
    let before = appends_to_3(&cluster);
    for _ in 0..=election_timeout_ticks {
        cluster.tick(1, 1);
        cluster.stabilize_losing(heartbeat_to_3);
    }
    assert!(appends_to_3(&cluster) > before, "3 was never probed");
    assert_eq!(
        cluster.node(1).progress(3).map(|p| p.state),
        Some(ProgressState::Replicate)
    );
}

/// The crate's ordering rule applied to §5.3: a follower acknowledges entries only once they
/// are durable, so its AppendResponse leaves only after the Ready that carries the entries
/// is persisted.
#[test]
fn a_follower_acknowledges_new_entries_only_after_persisting_them() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let position = cluster.node_mut(1).propose(b"x".to_vec()).expect("leader");
    cluster.handle(1);
    while cluster.deliver_one() {}

    let ready = cluster.take_ready(2);
    assert_eq!(ready.entries.last().map(Entry::position), Some(position));
    let is_ack = |m: &Message| matches!(m.kind, MessageKind::AppendResponse { .. });
    assert!(!ready.messages.iter().any(is_ack), "{:?}", ready.messages);
    let acked = ready.persisted_messages.iter().any(|m| {
        matches!(
            m.kind,
            MessageKind::AppendResponse {
                result: AppendResult::Accepted { match_index },
                ..
            } if m.to == 1 && match_index == position.index
        )
    });
    assert!(acked, "{:?}", ready.persisted_messages);
    cluster.finish_ready(2, ready);
}

/// "Nothing is committed before a quorum has persisted it, the leader included" (crate docs,
/// §5.3): a lone voter's entry commits only once the caller has persisted it and advanced.
#[test]
fn a_leader_counts_itself_toward_commit_only_after_persisting_its_entries() {
    let mut cluster = Cluster::new(&[1], |_| {});
    cluster.campaign(1);
    let position = cluster.node_mut(1).propose(b"x".to_vec()).expect("leader");
    assert!(cluster.node(1).commit_index() < position.index);

    let ready = cluster.take_ready(1);
    assert_eq!(ready.entries.last().map(Entry::position), Some(position));
    assert!(ready
        .committed_entries
        .iter()
        .all(|e| e.index < position.index));
    assert!(ready.hard_state.is_none_or(|h| h.commit < position.index));
    assert!(
        cluster.node(1).commit_index() < position.index,
        "not before persisting"
    );
    cluster.finish_ready(1, ready);

    assert_eq!(cluster.node(1).commit_index(), position.index);
    cluster.stabilize();
    assert_eq!(cluster.applied_data(1), vec![b"x".to_vec()]);
}

/// §5.3 / Figure 2: commitIndex only grows. A follower told an older commit index (a stale
/// or lagging leader message) keeps the one it has.
#[test]
fn a_follower_never_moves_its_commit_index_back() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    for proposal in 0..3u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    let term = cluster.node(1).term();
    let commit = cluster.node(2).commit_index();
    assert_eq!(commit, 4);

    let heartbeat = Message {
        from: 1,
        to: 2,
        term,
        kind: MessageKind::Heartbeat {
            commit: 1,
            round: 0,
            quiesce: false,
        },
    };
    cluster.inject(heartbeat);
    assert_eq!(cluster.node(2).commit_index(), commit);
    let first = LogPosition { term, index: 1 };
    cluster.inject(append(1, 2, term, first, Vec::new(), 1));
    assert_eq!(cluster.node(2).commit_index(), commit);
    let ready = cluster.take_ready(2);
    assert!(ready.hard_state.is_none_or(|h| h.commit == commit));
    cluster.finish_ready(2, ready);
    assert_eq!(cluster.node(2).storage().hard_state().commit, commit);
}
