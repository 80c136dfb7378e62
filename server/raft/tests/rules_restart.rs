//! Crashes and restarts: what persists (Raft §5.2, §5.3 and Figure 2's "persistent state"),
//! what is lost, and the lease-mode restart guard (raft.rs `restart_guard`, thesis §6.4.1),
//! one rule per test. A crash is `Cluster::restart`: the replica is rebuilt from its storage alone.

mod support;

use rshard_raft::MessageKind;
use support::{vote_request, Cluster};

/// `support::test_config`'s election timeout.
const ELECTION_TIMEOUT_TICKS: u32 = 10;

/// Figure 2 / §5.2 / §5.3: currentTerm, votedFor and the log are persistent state: a replica
/// rebuilt from its storage has the same term, the same vote (so it cannot vote twice in
/// that term) and every entry it persisted.
#[test]
fn a_restarted_replica_keeps_its_term_vote_and_persisted_log() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    for proposal in 0..3u8 {
        cluster.propose(1, &[proposal]).expect("leader");
    }
    let hard_state = cluster.node(2).hard_state();
    assert_eq!(hard_state.vote, Some(1));
    let log = cluster.persisted_log(2);

    cluster.restart(2, |_| {});
    let restarted = cluster.node(2);
    assert_eq!(restarted.term(), hard_state.term);
    assert_eq!(restarted.hard_state().vote, Some(1));
    assert_eq!(restarted.commit_index(), hard_state.commit);
    assert_eq!(restarted.last_index(), log.last().map_or(0, |e| e.index));
    assert_eq!(cluster.persisted_log(2), log);

    // The vote still binds: another candidate of that term is refused.
    let last = cluster.last_persisted_position(3);
    cluster.inject(vote_request(3, 2, hard_state.term, last));
    let ready = cluster.take_ready(2);
    assert!(
        ready
            .persisted_messages
            .iter()
            .any(|m| m.kind == MessageKind::VoteResponse { reject: true }),
        "{:?}",
        ready.persisted_messages
    );
    cluster.finish_ready(2, ready);
}

/// Crate contract ("nothing is committed before a quorum has persisted it, the leader
/// included") and §5.4: the leader sends its new entry before persisting it, but does not
/// count its own unpersisted copy. Here only 2 persisted `x`; had the leader counted itself,
/// `x` would be "committed" on two of three and then lost in the leader's crash, as the
/// election that follows overwrites it.
#[test]
fn an_entry_the_leader_has_not_persisted_is_not_counted_and_is_lost_on_crash() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    cluster.cut.insert((1, 3)); // only 2 receives x
    let x = cluster.node_mut(1).propose(b"x".to_vec()).expect("leader");

    // The leader hands out x and its appends in one Ready; the appends go, x is not yet
    // persisted.
    let unpersisted = cluster.take_ready(1);
    assert_eq!(
        unpersisted.entries.last().map(|e| e.position()),
        Some(x),
        "x is still to be persisted"
    );
    cluster
        .in_flight
        .extend(unpersisted.messages.iter().cloned());
    while cluster.deliver_one() {}
    cluster.handle(2); // 2 persists x and acknowledges it
    while cluster.deliver_one() {}
    assert!(
        cluster.node(1).commit_index() < x.index,
        "x is durable on one replica of three only"
    );

    drop(unpersisted); // the leader crashes before persisting
    cluster.restart(1, |_| {});
    assert!(
        cluster.node(1).last_index() < x.index,
        "x was lost with the crash"
    );

    // An election timeout later 3 no longer hears from a leader; it wins the next term with
    // 1's vote (their logs match) and overwrites 2's x.
    cluster.heal();
    let election_timeout_ticks = support::test_config(3).election_timeout_ticks;
    cluster.tick(3, election_timeout_ticks);
    cluster.campaign(3);
    assert_eq!(cluster.leaders(), vec![3]);
    for id in 1..=3 {
        assert!(!cluster.holds(id, b"x"), "replica {id} still holds x");
        assert!(
            cluster.applied_data(id).is_empty(),
            "replica {id} applied x"
        );
    }
}

/// §5.3 / §5.4 (leader completeness): an entry committed by the followers' acknowledgements
/// while the leader had not yet persisted it survives the leader's crash: the next leader
/// holds it and every replica, the restarted one included, applies it.
#[test]
fn an_entry_committed_before_the_leader_persisted_it_survives_the_leaders_crash() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let x = cluster.node_mut(1).propose(b"x".to_vec()).expect("leader");
    let unpersisted = cluster.take_ready(1);
    cluster
        .in_flight
        .extend(unpersisted.messages.iter().cloned());
    while cluster.deliver_one() {}
    cluster.handle(2);
    cluster.handle(3);
    while cluster.deliver_one() {}
    assert_eq!(
        cluster.node(1).commit_index(),
        x.index,
        "2 and 3 are a quorum without the leader"
    );

    drop(unpersisted);
    cluster.restart(1, |_| {});
    assert!(cluster.node(1).last_index() < x.index);
    let elected = cluster.tick_all_until(10 * ELECTION_TIMEOUT_TICKS, |cluster| {
        !cluster.leaders().is_empty()
    });
    assert!(elected.is_some());
    cluster.stabilize();
    for id in 1..=3 {
        assert_eq!(
            cluster.applied_data(id),
            vec![b"x".to_vec()],
            "replica {id}"
        );
    }
}

fn lease_mode(config: &mut rshard_raft::Config) {
    config.read_mode = rshard_raft::ReadMode::LeaseBased;
    config.check_quorum = true;
}

/// raft.rs `restart_guard` (thesis §6.4.1): in lease mode, a replica restarted with state
/// ignores vote requests for an election timeout, as if it had just heard from a leader, so
/// a lease it helped grant before the crash is honoured; afterwards it votes normally.
#[test]
fn in_lease_mode_a_restarted_voter_ignores_vote_requests_for_an_election_timeout() {
    let mut cluster = Cluster::new(&[1, 2, 3], lease_mode);
    cluster.campaign(1);
    cluster.propose(1, b"x").expect("leader");
    let term = cluster.node(3).term();
    cluster.restart(3, lease_mode);
    assert!(!cluster.node(3).has_ready());
    let candidate_last = cluster.last_persisted_position(2);

    cluster.inject(vote_request(2, 3, term + 1, candidate_last));
    assert!(!cluster.node(3).has_ready(), "ignored right after restart");
    cluster.tick(3, ELECTION_TIMEOUT_TICKS - 1);
    cluster.inject(vote_request(2, 3, term + 1, candidate_last));
    assert!(
        !cluster.node(3).has_ready(),
        "still ignored before an election timeout"
    );
    assert_eq!(cluster.node(3).term(), term);

    cluster.tick(3, 1);
    cluster.handle(3); // whatever 3 does on its own at the timeout
    cluster.in_flight.clear();
    let answers = cluster.persisted_answers_to(vote_request(2, 3, term + 1, candidate_last));
    assert!(
        answers
            .iter()
            .any(|m| m.to == 2 && m.kind == MessageKind::VoteResponse { reject: false }),
        "{answers:?}"
    );
    assert_eq!(cluster.node(3).term(), term + 1);
}

/// raft.rs `restart_guard`: only lease reads depend on the guard, so outside lease mode (here
/// check quorum with safe reads) a restarted voter, which has heard from no leader since,
/// answers a vote request at once.
#[test]
fn outside_lease_mode_a_restarted_voter_answers_vote_requests_at_once() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let term = cluster.node(3).term();
    cluster.restart(3, |_| {});
    let candidate_last = cluster.last_persisted_position(2);
    cluster.inject(vote_request(2, 3, term + 1, candidate_last));
    let ready = cluster.take_ready(3);
    assert!(ready
        .persisted_messages
        .iter()
        .any(|m| m.to == 2 && m.kind == MessageKind::VoteResponse { reject: false }));
    cluster.finish_ready(3, ready);
}
