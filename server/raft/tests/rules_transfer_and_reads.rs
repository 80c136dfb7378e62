//! Leader transfer (thesis §3.10), linearizable reads (ReadIndex, thesis §6.4; leases,
//! §6.4.1) and quiescence, one rule per test.

mod support;

use rshard_raft::{ConfState, Error, Message, MessageKind, ReadMode, Role};
use support::Cluster;

/// `support::test_config`'s election timeout.
const ELECTION_TIMEOUT_TICKS: u32 = 10;

fn is_timeout_now_to(message: &Message, to: u64) -> bool {
    message.to == to && message.kind == MessageKind::TimeoutNow
}

fn is_heartbeat(message: &Message) -> bool {
    matches!(message.kind, MessageKind::Heartbeat { .. })
}

// ---------------------------------------------------------------------------------------
// Leader transfer
// ---------------------------------------------------------------------------------------

/// Thesis §3.10: to hand leadership to an up-to-date follower, the leader sends it
/// TimeoutNow and it campaigns at once (its vote requests override the others' leader
/// lease), winning the next term without any election timeout.
#[test]
fn a_transfer_to_an_up_to_date_follower_elects_it_at_once() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.propose(1, b"x").expect("leader");
    let term = cluster.node(1).term();

    cluster
        .node_mut(1)
        .transfer_leader(2)
        .expect("2 is a voter");
    cluster.stabilize(); // no ticks: no timeout can be involved
    assert_eq!(cluster.leaders(), vec![2]);
    assert_eq!(cluster.node(2).term(), term + 1);
    assert_eq!(cluster.node(1).leader(), Some(2));
    assert_eq!(cluster.delivered_matching(|m| is_timeout_now_to(m, 2)), 1);
}

/// Thesis §3.10: a transfer target that lags is first brought up to date; TimeoutNow goes
/// only once its log matches the leader's, so it can win the election.
#[test]
fn a_transfer_to_a_lagging_follower_first_catches_it_up() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.isolate(3);
    for proposal in 0..5u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    let last = cluster.node(1).last_index();
    cluster.heal();

    cluster
        .node_mut(1)
        .transfer_leader(3)
        .expect("3 is a voter");
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![3]);
    let caught_up_at = cluster.delivered.iter().position(|m| {
        m.from == 3
            && matches!(
                m.kind,
                MessageKind::AppendResponse {
                    result: rshard_raft::AppendResult::Accepted { match_index },
                    ..
                } if match_index == last
            )
    });
    let timeout_now_at = cluster
        .delivered
        .iter()
        .position(|m| is_timeout_now_to(m, 3));
    assert!(
        caught_up_at.is_some() && timeout_now_at > caught_up_at,
        "TimeoutNow ({timeout_now_at:?}) must follow 3 catching up ({caught_up_at:?})"
    );
    assert_eq!(cluster.applied_data(3).len(), 5);
}

/// 1 leads and has started handing leadership to 3, which it cannot reach.
fn leader_transferring_to_an_unreachable_3() -> Cluster {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.isolate(3);
    cluster
        .node_mut(1)
        .transfer_leader(3)
        .expect("3 is a voter");
    cluster
}

/// Thesis §3.10: while a transfer is under way the leader refuses proposals, so the target
/// can catch up and the log stops growing under it.
#[test]
fn proposals_are_refused_while_a_transfer_is_in_progress() {
    let mut cluster = leader_transferring_to_an_unreachable_3();
    let last_index = cluster.node(1).last_index();
    assert_eq!(
        cluster.node_mut(1).propose(b"x".to_vec()),
        Err(Error::TransferInProgress { to: 3 })
    );
    assert_eq!(cluster.node(1).last_index(), last_index);
}

/// Thesis §3.10: a transfer that has not completed within an election timeout is abandoned
/// and the leader takes proposals again.
#[test]
fn a_transfer_that_does_not_complete_is_abandoned_after_an_election_timeout() {
    let mut cluster = leader_transferring_to_an_unreachable_3();

    for _ in 1..ELECTION_TIMEOUT_TICKS {
        cluster.tick(1, 1);
        cluster.stabilize();
        assert!(matches!(
            cluster.node_mut(1).propose(b"x".to_vec()),
            Err(Error::TransferInProgress { .. })
        ));
    }
    cluster.tick(1, 1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Leader);
    cluster
        .propose(1, b"x")
        .expect("proposals are accepted again");
    assert_eq!(cluster.applied_data(2), vec![b"x".to_vec()]);
}

/// Thesis §3.10 with learners (§4.2.1): only a voter can lead, so a transfer to a learner is
/// refused.
#[test]
fn a_transfer_to_a_learner_is_refused() {
    let mut conf = ConfState::with_voters([1, 2, 3]);
    conf.learners.insert(4);
    let mut cluster = Cluster::with_conf(conf, |_| {});
    cluster.campaign(1);
    assert_eq!(
        cluster.node_mut(1).transfer_leader(4),
        Err(Error::NotVoter(4))
    );
    cluster
        .propose(1, b"x")
        .expect("no transfer is in progress");
}

// ---------------------------------------------------------------------------------------
// ReadIndex
// ---------------------------------------------------------------------------------------

/// Thesis §6.4: the leader records its commit index as the read index, then confirms it still
/// leads by a heartbeat round acknowledged by a quorum; only then is the read released. Cut
/// off from the quorum it never releases it.
#[test]
fn a_read_is_released_only_after_a_quorum_acknowledges_a_heartbeat_round() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.propose(1, b"x").expect("leader");
    let commit_at_request = cluster.node(1).commit_index();

    cluster.cut.insert((1, 2));
    cluster.cut.insert((1, 3));
    cluster
        .node_mut(1)
        .read_index(b"read".to_vec())
        .expect("leader");
    for _ in 0..3 {
        cluster.tick(1, 1);
        cluster.stabilize();
    }
    assert!(
        cluster.read_states.get(&1).is_none_or(Vec::is_empty),
        "released without a quorum: {:?}",
        cluster.read_states.get(&1)
    );

    cluster.cut.remove(&(1, 2));
    cluster.tick(1, 1);
    cluster.stabilize();
    let released = &cluster.read_states[&1];
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].context, b"read");
    assert!(released[0].index >= commit_at_request);
}

/// Thesis §6.4: only the leader serves reads; a follower refuses and names the leader.
#[test]
fn a_read_on_a_follower_is_refused_with_the_leader_named() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    assert_eq!(
        cluster.node_mut(2).read_index(b"read".to_vec()),
        Err(Error::NotLeader { leader: Some(1) })
    );
}

/// Thesis §6.4 step 1: a new leader may not know the latest commit index, so until its
/// no-op commits its read index is at least the no-op's index. Here the old leader committed
/// `x` but never told the others; the new leader's read must still cover `x`.
#[test]
fn a_new_leaders_read_index_is_at_least_its_no_op() {
    // Without check quorum, 3 votes for 2 right after 1 is cut off.
    let mut cluster = Cluster::new(&[1, 2, 3], |config| config.check_quorum = false);
    cluster.campaign(1);
    let written = cluster.node_mut(1).propose(b"x".to_vec()).expect("leader");
    let committed = cluster.run_until(|cluster| cluster.node(1).commit_index() >= written.index);
    assert!(committed);
    cluster.isolate(1); // the others never learn that x committed
    cluster.stabilize();
    assert!(cluster.node(2).commit_index() < written.index);

    cluster.node_mut(2).campaign().expect("voter");
    let elected = cluster.run_until(|cluster| cluster.node(2).role() == Role::Leader);
    assert!(elected);
    let no_op_index = cluster.node(2).last_index();
    assert!(cluster.node(2).commit_index() < written.index);
    cluster
        .node_mut(2)
        .read_index(b"read".to_vec())
        .expect("leader");
    cluster.stabilize();

    let released = &cluster.read_states[&2];
    assert_eq!(released.len(), 1);
    assert!(
        released[0].index >= no_op_index,
        "read index {} would miss the committed write at {}",
        released[0].index,
        written.index
    );
}

// ---------------------------------------------------------------------------------------
// Lease reads
// ---------------------------------------------------------------------------------------

fn lease_cluster() -> Cluster {
    Cluster::new(&[1, 2, 3], |config| {
        config.read_mode = ReadMode::LeaseBased;
        config.check_quorum = true;
    })
}

/// A lease-mode leader that has had heartbeat rounds of its term acknowledged.
fn leader_holding_a_lease() -> Cluster {
    let mut cluster = lease_cluster();
    cluster.campaign(1);
    cluster.tick_all_until(2, |_| false);
    assert!(cluster.node(1).has_lease());
    cluster
}

/// Requests a read on 1 and returns whether the very next Ready releases it, i.e. whether it
/// was served from the lease without a heartbeat round.
fn read_served_at_once(cluster: &mut Cluster) -> bool {
    cluster
        .node_mut(1)
        .read_index(b"read".to_vec())
        .expect("leader");
    let ready = cluster.take_ready(1);
    let served = !ready.read_states.is_empty();
    if !served {
        assert!(
            ready.messages.iter().any(is_heartbeat),
            "a read without a lease starts a heartbeat round"
        );
    }
    cluster.finish_ready(1, ready);
    served
}

/// Checks that the pending read on 1 is released once a heartbeat round completes.
fn read_released_by_heartbeat_round(cluster: &mut Cluster) {
    cluster.stabilize();
    assert_eq!(
        cluster.read_states.get(&1).map(Vec::len),
        Some(1),
        "the read falls back to a heartbeat round"
    );
}

/// Thesis §6.4.1: while a quorum acknowledged a heartbeat sent less than an election timeout
/// ago, no other leader can exist, so the leader serves a read at once.
#[test]
fn a_lease_read_is_served_at_once_while_the_lease_holds() {
    let mut cluster = leader_holding_a_lease();
    assert!(read_served_at_once(&mut cluster));
}

/// Thesis §6.4.1: a new leader holds no lease until a heartbeat round of its own term is
/// acknowledged; its first read goes through a heartbeat round.
#[test]
fn a_new_leader_has_no_lease_until_a_heartbeat_round_of_its_term_is_acknowledged() {
    let mut cluster = lease_cluster();
    cluster.campaign(1);
    assert!(!cluster.node(1).has_lease());
    assert!(!read_served_at_once(&mut cluster));
    read_released_by_heartbeat_round(&mut cluster);
}

/// Thesis §6.4.1 with quiescence (read.rs: "Quiescence ... drop the lease"): a quiesced
/// group does not tick, so the leader's lease clock stands still while real time passes and
/// the others may elect a new leader. After waking, the leader must not serve a read from
/// the lease it held when it quiesced. Here, while 1 slept cut off, 2 and 3 elected a leader
/// and committed a write; a lease read on 1 would miss it.
#[test]
fn a_leader_woken_from_quiescence_does_not_serve_reads_from_its_old_lease() {
    // Guards against: wake() keeping the pre-quiescence lease (leader ticks stand still while
    // quiesced) so that read_index(), which wakes first, serves a stale read.
    let mut cluster = leader_holding_a_lease();
    quiesce_group(&mut cluster);
    assert!(
        !cluster.node(1).has_lease(),
        "a quiesced leader holds no lease"
    );

    cluster.isolate(1);
    cluster.node_mut(2).wake(); // e.g. its driver saw 1's node die
    let elected = cluster.tick_all_until(10 * ELECTION_TIMEOUT_TICKS, |cluster| {
        cluster.leaders().iter().any(|&id| id != 1)
    });
    assert!(elected.is_some(), "2 and 3 elect a new leader");
    let new_leader = if cluster.node(2).role() == Role::Leader {
        2
    } else {
        3
    };
    let write = cluster.propose(new_leader, b"new").expect("leader");
    assert_eq!(cluster.node(new_leader).commit_index(), write.index);

    cluster
        .node_mut(1)
        .read_index(b"read".to_vec())
        .expect("1 still believes it leads");
    let ready = cluster.take_ready(1);
    let served = ready.read_states.clone();
    cluster.finish_ready(1, ready);
    assert!(
        served.is_empty(),
        "served {served:?} from a lease that predates quiescence; the write at {} is missed",
        write.index
    );
}

/// Thesis §3.10 with §6.4.1: once the leader has sent TimeoutNow, the target may win an
/// election at once (its votes override leases), so the leader's lease is void; reads fall
/// back to a heartbeat round.
#[test]
fn a_leader_that_sent_timeout_now_serves_no_lease_reads() {
    let mut cluster = leader_holding_a_lease();
    cluster.cut.insert((1, 2)); // the TimeoutNow is lost: 1 keeps leading
    cluster
        .node_mut(1)
        .transfer_leader(2)
        .expect("2 is a voter");
    cluster.stabilize();
    assert_eq!(cluster.delivered_matching(|m| is_timeout_now_to(m, 2)), 0);
    assert_eq!(cluster.node(1).role(), Role::Leader);

    assert!(!cluster.node(1).has_lease());
    assert!(!read_served_at_once(&mut cluster));
    read_released_by_heartbeat_round(&mut cluster);
}

// ---------------------------------------------------------------------------------------
// Quiescence
// ---------------------------------------------------------------------------------------

/// read.rs `can_quiesce`: a group may stop ticking only when idle and fully replicated,
/// committed and applied everywhere; an entry in flight prevents it.
#[test]
fn a_group_can_quiesce_only_once_everything_is_replicated_and_applied() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    assert!(cluster.node(1).can_quiesce());

    cluster.node_mut(1).propose(b"x".to_vec()).expect("leader");
    assert!(!cluster.node(1).can_quiesce());
    assert!(!cluster.node_mut(1).quiesce());
    cluster.handle(1);
    cluster.deliver_one();
    assert!(!cluster.node(1).can_quiesce(), "still in flight");

    cluster.stabilize();
    assert!(cluster.node(1).can_quiesce());
    assert!(cluster.node_mut(1).quiesce());
}

/// Quiesces the group led by 1 and delivers everything, the followers' answers included.
fn quiesce_group(cluster: &mut Cluster) {
    assert!(cluster.node_mut(1).quiesce());
    cluster.stabilize();
    for id in 1..=3 {
        assert!(cluster.node(id).is_quiesced(), "replica {id}");
    }
}

/// A quiesced cluster: 1 leads and everyone stopped ticking.
fn quiesced_cluster() -> Cluster {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.propose(1, b"before").expect("leader");
    quiesce_group(&mut cluster);
    cluster
}

/// read.rs `quiesce`: the followers answer the leader's quiesce heartbeat like any other;
/// that answer must not undo the quiescence it acknowledges, or the group wakes at once and
/// never stops ticking.
#[test]
fn a_quiesced_group_stays_quiesced_once_the_followers_answer() {
    // Guards against: the followers' answers to the quiescing heartbeat waking the leader, so
    // that quiesce() never sticks.
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    assert!(cluster.node_mut(1).quiesce());
    cluster.stabilize();
    cluster.tick_all(ELECTION_TIMEOUT_TICKS);
    cluster.stabilize();
    for id in 1..=3 {
        assert!(cluster.node(id).is_quiesced(), "replica {id} woke up");
    }
}

/// read.rs `quiesce`: leader and followers of a quiesced group ignore ticks: no heartbeats,
/// no check-quorum step-down, no election, however long.
#[test]
fn a_quiesced_group_ignores_ticks() {
    let mut cluster = quiesced_cluster();
    let term = cluster.node(1).term();
    cluster.tick_all(100 * ELECTION_TIMEOUT_TICKS);
    for id in 1..=3 {
        assert!(!cluster.node(id).has_ready(), "replica {id} has work");
        assert_eq!(cluster.node(id).term(), term, "replica {id}");
    }
    assert_eq!(cluster.leaders(), vec![1]);
}

/// read.rs `quiesce`: a proposal wakes the leader, and its appends wake the followers.
#[test]
fn a_proposal_wakes_a_quiesced_group() {
    let mut cluster = quiesced_cluster();
    cluster.tick_all(100 * ELECTION_TIMEOUT_TICKS);
    cluster.propose(1, b"after").expect("leader");
    for id in 1..=3 {
        assert!(!cluster.node(id).is_quiesced(), "replica {id}");
        assert_eq!(
            cluster.applied_data(id),
            vec![b"before".to_vec(), b"after".to_vec()],
            "replica {id}"
        );
    }
}

/// read.rs `wake`: timers restart from zero, so however long the group slept, waking causes
/// no election, and the leader does not step down for the silence while it slept.
#[test]
fn waking_a_quiesced_group_does_not_trigger_an_election() {
    let mut cluster = quiesced_cluster();
    let term = cluster.node(1).term();
    cluster.tick_all(100 * ELECTION_TIMEOUT_TICKS);

    // A follower woken alone (say, by its driver) waits a full election timeout.
    cluster.node_mut(2).wake();
    cluster.tick(2, ELECTION_TIMEOUT_TICKS - 1);
    assert_eq!(cluster.node(2).role(), Role::Follower);
    assert!(!cluster.node(2).has_ready());

    cluster.propose(1, b"after").expect("leader");
    cluster.tick_all_until(3 * ELECTION_TIMEOUT_TICKS, |_| false);
    assert_eq!(cluster.leaders(), vec![1]);
    for id in 1..=3 {
        assert_eq!(cluster.node(id).term(), term, "replica {id}");
    }
}
