//! Log compaction and InstallSnapshot (Raft §7), one rule per test.

mod support;

use rshard_raft::progress::ProgressState;
use rshard_raft::{AppendResult, Index, Message, MessageKind, Snapshot, SnapshotMetadata, Storage};
use support::Cluster;

/// `support::test_config`'s election timeout.
const ELECTION_TIMEOUT_TICKS: u32 = 10;
const SNAPSHOT_DATA: &[u8] = b"state machine image";

fn is_snapshot_to(message: &Message, to: u64) -> bool {
    message.to == to && matches!(message.kind, MessageKind::InstallSnapshot { .. })
}

/// Three replicas; 3 is cut off while the leader commits ten entries, snapshots them and
/// compacts its log, then takes two more. Links are healed but nothing is delivered yet.
/// Returns the cluster and the snapshot's index.
fn follower_behind_a_compacted_log() -> (Cluster, Index) {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.isolate(3);
    for proposal in 0..10u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    let snapshot_index = cluster.node(1).applied_index();
    let conf = cluster.node(1).conf_state().clone();
    let storage = cluster.node_mut(1).storage_mut();
    storage
        .create_snapshot(snapshot_index, conf, SNAPSHOT_DATA.to_vec())
        .expect("snapshot of applied state");
    storage.compact(snapshot_index).expect("compact");
    assert!(cluster.node(3).last_index() < snapshot_index);
    for proposal in [b"after 1", b"after 2"] {
        cluster.propose(1, proposal).expect("leader");
    }
    cluster.heal();
    (cluster, snapshot_index)
}

/// §7: a follower that needs entries the leader has compacted away is sent the snapshot
/// instead; installing it replaces its log (which now starts right after the snapshot), and
/// the entries after the snapshot then follow as ordinary appends.
#[test]
fn a_follower_behind_the_compacted_log_installs_a_snapshot_and_then_catches_up() {
    let (mut cluster, snapshot_index) = follower_behind_a_compacted_log();
    let last = cluster.node(1).last_index();
    let caught_up = cluster.tick_all_until(5, |cluster| cluster.node(3).last_index() == last);
    assert!(caught_up.is_some(), "3 catches up");

    assert_eq!(cluster.delivered_matching(|m| is_snapshot_to(m, 3)), 1);
    let storage = cluster.node(3).storage();
    assert_eq!(storage.first_index(), Ok(snapshot_index + 1));
    let snapshot = storage.snapshot().expect("snapshot");
    assert_eq!(snapshot.metadata.index, snapshot_index);
    assert_eq!(snapshot.data, SNAPSHOT_DATA);
    assert_eq!(cluster.persisted_log(3), cluster.persisted_log(1));
    assert_eq!(
        cluster.applied_data(3),
        vec![b"after 1".to_vec(), b"after 2".to_vec()],
        "only the entries after the snapshot are applied one by one"
    );
    assert_eq!(cluster.node(3).commit_index(), last);
    assert_eq!(
        cluster.node(1).progress(3).map(|p| p.state),
        Some(ProgressState::Replicate)
    );
}

/// §7: a snapshot that covers no more than the follower has committed is stale (delayed or
/// duplicated); it is acknowledged at the follower's commit index and changes nothing.
#[test]
fn a_snapshot_at_or_below_the_commit_index_is_ignored() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    for proposal in 0..4u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    let commit = cluster.node(2).commit_index();
    let log_before = cluster.persisted_log(2);
    let term = cluster.node(1).term();
    let stale = Snapshot {
        metadata: SnapshotMetadata {
            index: commit - 2,
            term,
            conf_state: cluster.node(1).conf_state().clone(),
        },
        data: b"old image".to_vec(),
    };
    cluster.inject(Message {
        from: 1,
        to: 2,
        term,
        kind: MessageKind::InstallSnapshot { snapshot: stale },
    });

    let ready = cluster.take_ready(2);
    assert!(ready.snapshot.is_none());
    assert!(ready.entries.is_empty());
    let acknowledged_at_commit = ready.persisted_messages.iter().any(|m| {
        m.kind
            == MessageKind::AppendResponse {
                result: AppendResult::Accepted {
                    match_index: commit,
                },
                commit,
            }
    });
    assert!(acknowledged_at_commit, "{:?}", ready.persisted_messages);
    cluster.finish_ready(2, ready);
    assert_eq!(cluster.persisted_log(2), log_before);
    assert_eq!(cluster.node(2).storage().first_index(), Ok(1));
    assert_eq!(cluster.node(2).commit_index(), commit);
}

/// Heals the links and ticks the leader until it sends 3 a snapshot, which the network loses.
fn lose_the_first_snapshot(cluster: &mut Cluster) {
    for _ in 0..5 {
        cluster.tick(1, 1);
        cluster.stabilize_losing(|m| is_snapshot_to(m, 3));
        if cluster.node(1).progress(3).map(|p| p.state) == Some(ProgressState::Snapshot) {
            return;
        }
    }
    panic!("the leader never sent a snapshot");
}

/// After the first snapshot was lost: a new one is sent (exactly one gets through) and 3
/// catches up with the leader.
fn assert_catches_up_with_one_new_snapshot(cluster: &mut Cluster) {
    let last = cluster.node(1).last_index();
    let caught_up = cluster.tick_all_until(5, |cluster| cluster.node(3).last_index() == last);
    assert!(
        caught_up.is_some(),
        "a new snapshot is sent and 3 catches up"
    );
    assert_eq!(cluster.delivered_matching(|m| is_snapshot_to(m, 3)), 1);
}

/// §7 with loss: the leader sends nothing else to a follower awaiting a snapshot, so a lost
/// snapshot must not block it forever: with no answer for `snapshot_timeout_ticks` the
/// snapshot is presumed lost, the follower goes back to probing and is sent a new one.
#[test]
fn a_lost_snapshot_is_retried_after_the_snapshot_timeout() {
    let (mut cluster, _) = follower_behind_a_compacted_log();
    lose_the_first_snapshot(&mut cluster);
    let snapshot_timeout_ticks = support::test_config(1).snapshot_timeout_ticks;

    let mut waited = 0;
    while cluster.node(1).progress(3).map(|p| p.state) == Some(ProgressState::Snapshot) {
        assert!(
            waited <= snapshot_timeout_ticks,
            "still waiting after {waited} ticks"
        );
        cluster.tick(1, 1);
        cluster.stabilize();
        waited += 1;
    }
    assert!(
        waited >= ELECTION_TIMEOUT_TICKS,
        "gave up on the snapshot after only {waited} ticks"
    );

    assert_catches_up_with_one_new_snapshot(&mut cluster);
}

/// §7 with loss: a snapshot the driver reports delivered (a chunked transfer ended) whose
/// answer was lost: the leader stops waiting at once, probes right after the snapshot, and
/// the follower catches up with appends alone, no second snapshot.
#[test]
fn a_snapshot_reported_delivered_resumes_after_it_without_another_snapshot() {
    let (mut cluster, snapshot_index) = follower_behind_a_compacted_log();
    let mut sent = false;
    for _ in 0..5 {
        cluster.tick(1, 1);
        cluster.stabilize_losing(|m| {
            m.from == 3
                && matches!(m.kind, MessageKind::AppendResponse {
                    result: AppendResult::Accepted { match_index },
                    ..
                } if match_index >= snapshot_index)
        });
        if cluster.node(1).progress(3).map(|p| p.state) == Some(ProgressState::Snapshot) {
            sent = true;
            break;
        }
    }
    assert!(sent, "the leader never sent a snapshot");
    assert_eq!(
        cluster.node(3).commit_index(),
        snapshot_index,
        "3 installed it"
    );

    cluster.node_mut(1).report_snapshot_delivered(3);
    let progress = cluster.node(1).progress(3).cloned();
    assert_eq!(
        progress.as_ref().map(|p| p.state),
        Some(ProgressState::Probe)
    );
    assert_eq!(progress.map(|p| p.next), Some(snapshot_index + 1));
    let last = cluster.node(1).last_index();
    let caught_up = cluster.tick_all_until(5, |cluster| cluster.node(3).last_index() == last);
    assert!(caught_up.is_some(), "3 catches up");
    assert_eq!(cluster.delivered_matching(|m| is_snapshot_to(m, 3)), 1);
}

/// §7 with loss: when the driver reports that it could not deliver a snapshot, the leader
/// stops waiting for it at once and retries.
#[test]
fn a_snapshot_reported_failed_is_retried_without_waiting_for_the_timeout() {
    let (mut cluster, _) = follower_behind_a_compacted_log();
    lose_the_first_snapshot(&mut cluster);

    cluster.node_mut(1).report_snapshot_failed(3);
    assert_eq!(
        cluster.node(1).progress(3).map(|p| p.state),
        Some(ProgressState::Probe)
    );
    assert_catches_up_with_one_new_snapshot(&mut cluster);
}
