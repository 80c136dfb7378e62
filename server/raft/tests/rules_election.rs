//! Leader election, one rule per test: terms (Raft §5.1), votes and timeouts (§5.2), the
//! up-to-date check (§5.4.1), pre-vote (thesis §9.6) and check quorum / disruptive servers
//! (§6.2, thesis §4.2.3).

mod support;

use rshard_raft::{ConfState, HardState, LogPosition, Message, MessageKind, Role, Term};
use support::{entries_of_term, pre_vote_request, storage_with_log, vote_request, Cluster};

/// `support::test_config`'s election timeout.
const ELECTION_TIMEOUT_TICKS: u32 = 10;

/// Ticks replica 1 of a fresh three-replica group one tick at a time until it starts a
/// (pre-)campaign and returns that tick, checking that it stays a silent follower before.
fn first_campaign_tick(seed: u64) -> u32 {
    let mut cluster = Cluster::new(&[1, 2, 3], |config| config.seed = seed);
    for tick in 1..=2 * ELECTION_TIMEOUT_TICKS {
        cluster.tick(1, 1);
        let node = cluster.node(1);
        if node.role() != Role::Follower {
            assert_eq!(node.role(), Role::PreCandidate, "seed {seed}");
            return tick;
        }
        assert!(
            !node.has_ready(),
            "seed {seed}: a follower produced work at tick {tick} before campaigning"
        );
    }
    panic!("seed {seed}: no campaign within two election timeouts");
}

/// §5.2: a follower that hears from no leader campaigns once its election timeout passes,
/// chosen at random in [election_timeout_ticks, 2 × election_timeout_ticks), and not before.
#[test]
fn a_fresh_follower_campaigns_within_its_randomized_election_timeout_and_not_before() {
    for seed in 0..32 {
        let tick = first_campaign_tick(seed);
        assert!(
            (ELECTION_TIMEOUT_TICKS..2 * ELECTION_TIMEOUT_TICKS).contains(&tick),
            "seed {seed}: campaigned at tick {tick}"
        );
    }
}

/// §5.2 with the determinism the crate promises: the randomized timeout comes from the
/// configured seed only, so a seed replays exactly, and different seeds spread the timeouts.
#[test]
fn randomized_election_timeouts_are_deterministic_per_seed_and_vary_across_seeds() {
    let ticks: Vec<u32> = (0..16).map(first_campaign_tick).collect();
    let replayed: Vec<u32> = (0..16).map(first_campaign_tick).collect();
    assert_eq!(
        ticks, replayed,
        "the same seed must campaign at the same tick"
    );
    let distinct: std::collections::BTreeSet<u32> = ticks.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "sixteen seeds all campaigned at tick {ticks:?}: the timeout is not randomized"
    );
}

/// §5.1: a leader that sees a higher term in any message learns it is stale, adopts the term
/// and becomes a follower.
#[test]
fn a_leader_that_sees_a_higher_term_steps_down_and_adopts_it() {
    // Without check quorum the isolated old leader would lead forever on its own; without
    // pre-vote the new leader can be elected while the others still heard from the old one.
    let mut cluster = Cluster::new(&[1, 2, 3], |config| {
        config.check_quorum = false;
        config.pre_vote = false;
    });
    cluster.campaign(1);
    let old_term = cluster.node(1).term();
    cluster.isolate(1);
    cluster.campaign(2);
    assert_eq!(
        cluster.leaders(),
        vec![1, 2],
        "two leaders, of different terms"
    );
    let new_term = cluster.node(2).term();
    assert!(new_term > old_term);

    cluster.heal();
    cluster.tick(2, 1); // a heartbeat of the new term reaches the old leader
    cluster.stabilize();

    let old_leader = cluster.node(1);
    assert_eq!(old_leader.role(), Role::Follower);
    assert_eq!(old_leader.term(), new_term);
    assert_eq!(old_leader.leader(), Some(2));
    assert_eq!(cluster.leaders(), vec![2]);
}

/// §5.1: a message of a stale term changes no replica's term (terms never decrease); with
/// check quorum the receiver answers with its own term so the stale sender steps down.
#[test]
fn a_message_from_a_stale_term_never_lowers_a_term_and_tells_the_sender_the_current_one() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let stale_term = cluster.node(1).term();
    cluster.isolate(1);
    // Let the others forget the old leader and elect 2.
    let elected = cluster.tick_all_until(4 * ELECTION_TIMEOUT_TICKS, |cluster| {
        cluster.node(2).role() == Role::Leader || cluster.node(3).role() == Role::Leader
    });
    assert!(elected.is_some(), "2 and 3 elect a new leader");
    let new_leader = if cluster.node(2).role() == Role::Leader {
        2
    } else {
        3
    };
    let current_term = cluster.node(new_leader).term();
    assert!(current_term > stale_term);

    cluster.heal();
    cluster.in_flight.clear();
    let stale_append = Message {
        from: 1,
        to: new_leader,
        term: stale_term,
        kind: MessageKind::Append {
            prev_index: 0,
            prev_term: 0,
            entries: Vec::new(),
            commit: 0,
        },
    };
    cluster.inject(stale_append);
    assert_eq!(cluster.node(new_leader).term(), current_term);
    assert_eq!(cluster.node(new_leader).role(), Role::Leader);

    cluster.stabilize();
    assert_eq!(
        cluster.node(1).term(),
        current_term,
        "the answer carries the term"
    );
    assert_ne!(cluster.node(1).role(), Role::Leader);
}

/// §5.2: a replica votes for at most one candidate per term; a second candidate of the same
/// term is refused even though its log is just as up to date.
#[test]
fn a_replica_votes_for_at_most_one_candidate_per_term() {
    // Plain votes, so that the vote (not a pre-vote) is what is answered.
    let mut cluster = Cluster::new(&[1, 2, 3], |config| config.pre_vote = false);
    let empty = LogPosition::default();
    cluster.inject(vote_request(1, 2, 1, empty));
    cluster.handle(2);
    cluster.in_flight.clear();

    cluster.inject(vote_request(3, 2, 1, empty));
    let ready = cluster.take_ready(2);
    assert_eq!(ready.hard_state, None, "the vote must not change");
    let answers: Vec<&Message> = ready.persisted_messages.iter().collect();
    assert_eq!(
        answers,
        vec![&Message {
            from: 2,
            to: 3,
            term: 1,
            kind: MessageKind::VoteResponse { reject: true },
        }]
    );
    cluster.finish_ready(2, ready);
    assert_eq!(cluster.node(2).hard_state().vote, Some(1));

    // Asking again for the same candidate is answered the same way (duplicates are harmless).
    cluster.inject(vote_request(1, 2, 1, empty));
    let ready = cluster.take_ready(2);
    assert!(ready
        .persisted_messages
        .iter()
        .any(|m| m.to == 1 && m.kind == MessageKind::VoteResponse { reject: false }));
    cluster.finish_ready(2, ready);
}

/// §5.2 (and the crate's ordering rule): the vote is part of the hard state handed out in the
/// same Ready as the answer, and the answer may leave only after that hard state is durable:
/// it is in `persisted_messages`, never in `messages`. Otherwise a crash after answering
/// could let the replica vote twice in one term.
#[test]
fn a_granted_vote_is_persisted_before_the_vote_response_leaves() {
    // Plain votes, so that the vote (not a pre-vote) is what is answered.
    let mut cluster = Cluster::new(&[1, 2, 3], |config| config.pre_vote = false);
    cluster.inject(vote_request(1, 2, 1, LogPosition::default()));

    let ready = cluster.take_ready(2);
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.kind, MessageKind::VoteResponse { .. })),
        "a vote response may not leave before the vote is persisted: {:?}",
        ready.messages
    );
    assert_eq!(
        ready.persisted_messages,
        vec![Message {
            from: 2,
            to: 1,
            term: 1,
            kind: MessageKind::VoteResponse { reject: false },
        }]
    );
    cluster.finish_ready(2, ready);
    assert_eq!(cluster.node(2).storage().hard_state().vote, Some(1));
}

/// Node 2's storage for the up-to-date tests: log `[1: term 1, 2: term 2, 3: term 2]` at term
/// 2. The requests are plain votes (no pre-vote round) so the answer is the vote itself.
fn voter_with_log_ending_at_term_2_index_3() -> Cluster {
    let conf = ConfState::with_voters([1, 2, 3]);
    let mut entries = entries_of_term(1, 1..=1);
    entries.extend(entries_of_term(2, 2..=3));
    let hard_state = HardState {
        term: 2,
        vote: None,
        commit: 0,
    };
    let storage = storage_with_log(&conf, &entries, hard_state);
    Cluster::with_storages(vec![(2, storage)], |config| config.pre_vote = false)
}

/// Sends node 2 a vote request from `candidate` and returns whether it was granted, checking
/// that a refusal records no vote.
fn vote_granted(cluster: &mut Cluster, candidate: u64, term: Term, last: LogPosition) -> bool {
    cluster.inject(vote_request(candidate, 2, term, last));
    let ready = cluster.take_ready(2);
    let granted = ready
        .persisted_messages
        .iter()
        .find_map(|m| match m.kind {
            MessageKind::VoteResponse { reject } if m.to == candidate => Some(!reject),
            _ => None,
        })
        .expect("a vote request is answered");
    let recorded = ready.hard_state.and_then(|hard_state| hard_state.vote);
    assert_eq!(recorded, granted.then_some(candidate));
    cluster.finish_ready(2, ready);
    granted
}

/// §5.4.1: logs are compared by last term first: a candidate whose last entry has an older
/// term is refused however long its log, and one with a newer last term wins however short.
#[test]
fn a_candidate_whose_last_term_is_older_is_refused_even_with_a_longer_log() {
    let mut cluster = voter_with_log_ending_at_term_2_index_3();
    let longer_but_older = LogPosition { term: 1, index: 50 };
    assert!(!vote_granted(&mut cluster, 1, 3, longer_but_older));
    let shorter_but_newer = LogPosition { term: 3, index: 1 };
    assert!(vote_granted(&mut cluster, 3, 4, shorter_but_newer));
}

/// §5.4.1: with equal last terms, the longer log is more up to date: a candidate whose log
/// ends before ours is refused; one ending at the same index is granted.
#[test]
fn a_candidate_with_the_same_last_term_but_a_shorter_log_is_refused() {
    let mut cluster = voter_with_log_ending_at_term_2_index_3();
    let shorter = LogPosition { term: 2, index: 2 };
    assert!(!vote_granted(&mut cluster, 1, 3, shorter));
    let as_long = LogPosition { term: 2, index: 3 };
    assert!(vote_granted(&mut cluster, 3, 4, as_long));
}

/// §5.2: when a vote splits and nobody wins, candidates time out again at randomized times,
/// and one of them soon wins a later term. Checked for several seeds.
#[test]
fn a_split_vote_is_resolved_by_a_later_election() {
    for seed in 0..16 {
        let mut cluster = Cluster::new(&[1, 2, 3, 4], |config| {
            // The classic §5.2 setting: no pre-vote round, no leader lease.
            config.seed = seed;
            config.pre_vote = false;
            config.check_quorum = false;
        });
        // 1 and 2 campaign at once; 3 hears only 1 and 4 only 2: two votes each, of four.
        cluster.cut.insert((1, 4));
        cluster.cut.insert((2, 3));
        cluster.node_mut(1).campaign().expect("voter");
        cluster.node_mut(2).campaign().expect("voter");
        cluster.stabilize();
        assert!(cluster.leaders().is_empty(), "seed {seed}: the vote splits");
        assert_eq!(cluster.node(1).role(), Role::Candidate, "seed {seed}");
        assert_eq!(cluster.node(2).role(), Role::Candidate, "seed {seed}");

        cluster.heal();
        let resolved = cluster.tick_all_until(10 * ELECTION_TIMEOUT_TICKS, |cluster| {
            !cluster.leaders().is_empty()
        });
        assert!(resolved.is_some(), "seed {seed}: no leader after the split");
        let leaders = cluster.leaders();
        assert_eq!(leaders.len(), 1, "seed {seed}: {leaders:?}");
        assert!(cluster.node(leaders[0]).term() > 1, "seed {seed}");
    }
}

/// Thesis §9.6: a replica cut off from the others pre-campaigns without raising its term, so
/// when it rejoins it neither forces a new election nor deposes the leader.
#[test]
fn a_partitioned_replica_that_rejoins_neither_raises_the_term_nor_disrupts_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let term = cluster.node(1).term();

    cluster.isolate(3);
    cluster.tick_all_until(5 * ELECTION_TIMEOUT_TICKS, |_| false);
    assert_eq!(
        cluster.node(3).term(),
        term,
        "failed pre-campaigns must not raise the partitioned replica's term"
    );
    assert_eq!(
        cluster.node(3).role(),
        Role::PreCandidate,
        "the partitioned replica keeps trying"
    );

    cluster.heal();
    cluster.tick_all_until(5 * ELECTION_TIMEOUT_TICKS, |_| false);
    assert_eq!(cluster.leaders(), vec![1]);
    for id in 1..=3 {
        assert_eq!(cluster.node(id).term(), term, "replica {id}");
        assert_eq!(cluster.node(id).leader(), Some(1), "replica {id}");
    }
}

/// §6.2 / thesis §4.2.3 (check quorum): a leader that stops hearing from a quorum steps down
/// by itself. The leader checks once per election timeout whether a quorum was heard since
/// the previous check, so it steps down at the second check after losing contact at the
/// latest: within two election timeouts.
#[test]
fn an_isolated_leader_steps_down_when_a_quorum_check_finds_no_quorum() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let term = cluster.node(1).term();
    cluster.isolate(1);

    let mut ticks = 0;
    while cluster.node(1).role() == Role::Leader {
        assert!(
            ticks < 2 * ELECTION_TIMEOUT_TICKS,
            "still leading {ticks} ticks after losing its quorum"
        );
        cluster.tick(1, 1);
        ticks += 1;
    }
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).leader(), None);
    assert_eq!(
        cluster.node(1).term(),
        term,
        "stepping down needs no new term"
    );
}

/// §6.2 / thesis §4.2.3: the check counts a quorum, not everyone: a leader that loses one
/// follower of three keeps leading.
#[test]
fn a_leader_that_still_hears_from_a_quorum_keeps_leading() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    cluster.tick_all_until(5 * ELECTION_TIMEOUT_TICKS, |_| false);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), term);
}

/// Thesis §4.2.3: a follower that heard from its leader less than an election timeout ago
/// ignores pre-vote and vote requests for a later term (no answer, no term change), so a
/// replica that was only briefly cut off cannot depose a live leader. Once an election timeout
/// passes without the leader, it answers again.
#[test]
fn a_follower_that_hears_from_a_leader_ignores_campaigns_for_a_later_term() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    let term = cluster.node(1).term();
    let last = cluster.last_persisted_position(3);

    cluster.inject(pre_vote_request(3, 2, term + 1, last));
    assert!(!cluster.node(2).has_ready(), "a pre-vote is ignored");
    cluster.inject(vote_request(3, 2, term + 1, last));
    assert!(!cluster.node(2).has_ready(), "a vote is ignored");
    assert_eq!(cluster.node(2).term(), term);
    assert_eq!(cluster.node(2).hard_state().vote, Some(1));
    assert_eq!(cluster.node(2).leader(), Some(1));

    // An election timeout without hearing from the leader ends the protection.
    cluster.tick(2, ELECTION_TIMEOUT_TICKS);
    cluster.handle(2); // whatever 2 does on its own at the timeout
    cluster.in_flight.clear();
    let answers = cluster.persisted_answers_to(pre_vote_request(3, 2, term + 1, last));
    assert!(
        answers
            .iter()
            .any(|m| m.to == 3 && m.kind == MessageKind::PreVoteResponse { reject: false }),
        "{answers:?}"
    );
}
