//! Membership changes (thesis §4.1–§4.3: learners, single-server changes, joint consensus),
//! one rule per test.
//!
//! Replicas added to a group start from the group's bootstrap membership {1, 2, 3} with an
//! empty log, as the founding replicas did, so that replaying the log from index 1 gives
//! them the same configuration as everyone else.

mod support;

use std::collections::BTreeSet;

use rshard_raft::{
    ConfChange, ConfChangeError, ConfChangeStep, ConfState, Error, MessageKind, Payload, Role,
    Transition,
};
use support::Cluster;

use ConfChangeStep::{AddLearner, AddVoter, Remove};

/// `support::test_config`'s election timeout.
const ELECTION_TIMEOUT_TICKS: u32 = 10;

fn founders() -> ConfState {
    ConfState::with_voters([1, 2, 3])
}

fn ids(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

/// Three founders with `leader` elected, plus fresh replicas `joining` not yet members.
fn group_led_by(leader: u64, joining: &[u64]) -> Cluster {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(leader);
    for &id in joining {
        cluster.add_node(id, founders(), |_| {});
    }
    cluster
}

fn change(cluster: &mut Cluster, leader: u64, steps: &[ConfChangeStep]) {
    cluster
        .node_mut(leader)
        .propose_conf_change(ConfChange::new(steps.iter().copied()))
        .expect("change accepted");
    cluster.stabilize();
}

/// Thesis §4.2.1: a learner (non-voting member) receives the whole log and applies it.
#[test]
fn a_learner_receives_and_applies_the_log() {
    let mut cluster = group_led_by(1, &[4]);
    cluster.propose(1, b"before").expect("leader");
    change(&mut cluster, 1, &[AddLearner(4)]);
    cluster.propose(1, b"after").expect("leader");

    assert_eq!(cluster.node(1).conf_state().learners, ids(&[4]));
    assert_eq!(cluster.node(4).conf_state(), cluster.node(1).conf_state());
    assert_eq!(
        cluster.applied_data(4),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
}

/// Thesis §4.2.1: a learner's acknowledgement does not count toward the commit quorum.
#[test]
fn a_learners_acknowledgement_does_not_count_toward_commit() {
    let mut cluster = group_led_by(1, &[4]);
    change(&mut cluster, 1, &[AddLearner(4)]);
    cluster.cut.insert((1, 2));
    cluster.cut.insert((1, 3));

    let position = cluster.propose(1, b"x").expect("leader");
    assert_eq!(
        cluster.node(4).last_index(),
        position.index,
        "the learner has it"
    );
    assert!(cluster.node(1).commit_index() < position.index);

    cluster.heal();
    cluster.tick(1, 1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), position.index);
}

/// Thesis §4.2.1: a learner never campaigns (explicitly it is refused with `NotVoter`, and
/// its election timeouts do nothing) and nobody asks it for a vote.
#[test]
fn a_learner_cannot_campaign_and_is_never_asked_to_vote() {
    let mut cluster = group_led_by(1, &[4]);
    change(&mut cluster, 1, &[AddLearner(4)]);
    assert_eq!(cluster.node_mut(4).campaign(), Err(Error::NotVoter(4)));

    cluster.isolate(1);
    let elected = cluster.tick_all_until(10 * ELECTION_TIMEOUT_TICKS, |cluster| {
        cluster.leaders().iter().any(|&id| id != 1)
    });
    assert!(elected.is_some(), "2 or 3 takes over");
    assert_eq!(cluster.node(4).role(), Role::Follower);
    let campaign_traffic = cluster.delivered_matching(|m| {
        (m.from == 4 || m.to == 4)
            && matches!(
                m.kind,
                MessageKind::PreVote { .. } | MessageKind::Vote { .. }
            )
    });
    assert_eq!(campaign_traffic, 0);
}

/// Thesis §4.2.1: promoting a caught-up learner is a simple change; it then votes and may
/// lead.
#[test]
fn a_promoted_learner_becomes_a_voter_that_can_lead() {
    let mut cluster = group_led_by(1, &[4]);
    change(&mut cluster, 1, &[AddLearner(4)]);
    change(&mut cluster, 1, &[AddVoter(4)]);

    for id in 1..=4 {
        let conf = cluster.node(id).conf_state();
        assert_eq!(conf.voters, ids(&[1, 2, 3, 4]), "replica {id}");
        assert!(conf.learners.is_empty(), "replica {id}");
    }
    cluster
        .node_mut(1)
        .transfer_leader(4)
        .expect("4 is a voter");
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![4]);
}

/// Thesis §4.1: removing one voter is a simple change; afterwards the quorum is a majority of
/// the remaining voters only.
#[test]
fn a_removed_voter_no_longer_counts_toward_the_quorum() {
    let mut cluster = group_led_by(1, &[]);
    change(&mut cluster, 1, &[Remove(3)]);
    assert_eq!(cluster.node(1).conf_state().voters, ids(&[1, 2]));
    assert!(cluster.node(1).progress(3).is_none());

    cluster.isolate(3);
    let position = cluster.propose(1, b"x").expect("leader");
    assert_eq!(cluster.node(1).commit_index(), position.index);
    cluster.cut.insert((1, 2));
    let position = cluster.propose(1, b"y").expect("leader");
    assert!(
        cluster.node(1).commit_index() < position.index,
        "both of two voters are a quorum"
    );
}

/// Thesis §4.3: replacing a voter in one change ([AddVoter(4), Remove(1)]) goes through the
/// joint configuration C_old,new = {1,2,3},{2,3,4}, which the leader leaves on its own once
/// it is applied, ending in {2,3,4}.
#[test]
fn replacing_a_voter_enters_joint_consensus_and_leaves_it_automatically() {
    let mut cluster = group_led_by(2, &[4]);
    cluster
        .node_mut(2)
        .propose_conf_change(ConfChange::new([AddVoter(4), Remove(1)]))
        .expect("change accepted");
    let joint = cluster.run_until(|cluster| cluster.node(2).conf_state().is_joint());
    assert!(joint, "the leader applies the joint configuration");
    let conf = cluster.node(2).conf_state().clone();
    assert_eq!(conf.voters_outgoing, ids(&[1, 2, 3]));
    assert_eq!(conf.voters, ids(&[2, 3, 4]));
    assert!(conf.auto_leave);

    cluster.stabilize();
    for id in 2..=4 {
        let conf = cluster.node(id).conf_state();
        assert!(!conf.is_joint(), "replica {id}: {conf:?}");
        assert_eq!(conf.voters, ids(&[2, 3, 4]), "replica {id}");
    }
    let leave_joint = cluster
        .persisted_log(2)
        .iter()
        .any(|entry| entry.payload == Payload::ConfChange(ConfChange::leave_joint()));
    assert!(leave_joint, "the leader proposed the empty change itself");
    assert_eq!(cluster.leaders(), vec![2]);
}

/// {1,2,3} moving to {1,4,5} in an explicit joint configuration, led by 1.
fn explicit_joint_cluster() -> Cluster {
    let mut cluster = group_led_by(1, &[4, 5]);
    let change = ConfChange {
        transition: Transition::Explicit,
        changes: vec![AddVoter(4), AddVoter(5), Remove(2), Remove(3)],
    };
    cluster
        .node_mut(1)
        .propose_conf_change(change)
        .expect("change accepted");
    cluster.stabilize();
    let conf = cluster.node(1).conf_state().clone();
    assert_eq!(conf.voters_outgoing, ids(&[1, 2, 3]));
    assert_eq!(conf.voters, ids(&[1, 4, 5]));
    cluster
}

/// Thesis §4.3: in C_old,new every decision needs a majority of C_old AND of C_new. An entry
/// acknowledged by all of the new configuration but only the leader of the old one does not
/// commit, nor does one acknowledged by the old configuration only.
#[test]
fn during_joint_consensus_a_commit_needs_a_majority_of_both_configurations() {
    let mut cluster = explicit_joint_cluster();
    for (without, label) in [([2, 3], "only C_new"), ([4, 5], "only C_old")] {
        for id in without {
            cluster.cut.insert((1, id));
        }
        let position = cluster.propose(1, label.as_bytes()).expect("leader");
        assert!(
            cluster.node(1).commit_index() < position.index,
            "acknowledged by {label}, yet committed"
        );
        cluster.heal();
        cluster.tick(1, 1);
        cluster.stabilize();
        assert_eq!(cluster.node(1).commit_index(), position.index, "{label}");
    }
}

/// Thesis §4.3 (explicit transition): a joint configuration entered explicitly is left only
/// when the empty change is proposed; until then it stays joint whatever happens.
#[test]
fn an_explicit_joint_configuration_stays_joint_until_the_empty_change() {
    let mut cluster = explicit_joint_cluster();
    cluster.propose(1, b"x").expect("leader");
    cluster.tick_all_until(3 * ELECTION_TIMEOUT_TICKS, |_| false);
    assert!(cluster.node(1).conf_state().is_joint());

    cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::leave_joint())
        .expect("leave joint");
    cluster.stabilize();
    for id in [1, 4, 5] {
        let conf = cluster.node(id).conf_state();
        assert!(!conf.is_joint(), "replica {id}");
        assert_eq!(conf.voters, ids(&[1, 4, 5]), "replica {id}");
    }
}

/// Thesis §4.1: one change at a time. A second change proposed before the first is applied
/// is refused with `ConfChangePending`; once it is applied the next is accepted.
#[test]
fn only_one_membership_change_may_be_pending() {
    let mut cluster = group_led_by(1, &[4, 5]);
    let leader = cluster.node_mut(1);
    leader
        .propose_conf_change(ConfChange::new([AddLearner(4)]))
        .expect("first change");
    let last_index = leader.last_index();
    assert_eq!(
        leader.propose_conf_change(ConfChange::new([AddLearner(5)])),
        Err(Error::ConfChangePending)
    );
    assert_eq!(
        leader.last_index(),
        last_index,
        "the refused change is not appended"
    );

    cluster.stabilize();
    cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::new([AddLearner(5)]))
        .expect("accepted once the first is applied");
}

/// Thesis §4.2.2: a leader that removes itself keeps leading until the change is committed
/// (it must replicate it without counting itself), then steps down when it applies it; the
/// remaining voters elect a new leader.
#[test]
fn a_leader_removed_from_the_configuration_steps_down_once_the_change_is_applied() {
    let mut cluster = group_led_by(1, &[]);
    let position = cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::new([Remove(1)]))
        .expect("change accepted");
    let committed = cluster.run_until(|cluster| cluster.node(1).commit_index() >= position.index);
    assert!(committed);
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "committed, not yet applied"
    );

    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).conf_state().voters, ids(&[2, 3]));
    assert_eq!(cluster.node_mut(1).campaign(), Err(Error::NotVoter(1)));
    let elected = cluster.tick_all_until(10 * ELECTION_TIMEOUT_TICKS, |cluster| {
        !cluster.leaders().is_empty()
    });
    assert!(elected.is_some());
    let leaders = cluster.leaders();
    assert!(leaders == vec![2] || leaders == vec![3], "{leaders:?}");
}

/// Crate contract (error.rs, confchange.rs): an invalid change is refused with
/// `InvalidConfChange` and changes nothing, neither the log nor the configuration nor the
/// one-change-at-a-time guard.
#[test]
fn an_invalid_membership_change_is_refused_and_changes_nothing() {
    let mut cluster = group_led_by(1, &[4]);
    let leader = cluster.node_mut(1);
    let last_index = leader.last_index();
    let conf = leader.conf_state().clone();

    assert_eq!(
        leader.propose_conf_change(ConfChange::leave_joint()),
        Err(Error::InvalidConfChange(ConfChangeError::NotJoint))
    );
    assert_eq!(
        leader.propose_conf_change(ConfChange::new([Remove(1), Remove(2), Remove(3)])),
        Err(Error::InvalidConfChange(ConfChangeError::NoVoters))
    );
    assert_eq!(leader.last_index(), last_index);
    assert_eq!(leader.conf_state(), &conf);

    leader
        .propose_conf_change(ConfChange::new([AddLearner(4)]))
        .expect("a valid change is still accepted");
}

/// Thesis §4.3: a joint configuration must be left before members change again.
#[test]
fn a_membership_change_during_joint_consensus_is_refused() {
    let mut cluster = explicit_joint_cluster();
    let leader = cluster.node_mut(1);
    let last_index = leader.last_index();
    assert_eq!(
        leader.propose_conf_change(ConfChange::new([AddLearner(6)])),
        Err(Error::InvalidConfChange(ConfChangeError::AlreadyJoint))
    );
    assert_eq!(leader.last_index(), last_index);
}

/// A learner whose replica was lost (destroyed on its node, then added again) had
/// acknowledged entries it no longer holds: it rejects every append at what it
/// acknowledged, which teaches the leader nothing (and must not make it send again at once:
/// that loops), so it is never caught up, until the driver reports it lost; then it is
/// probed from nothing.
#[test]
fn a_learner_reported_lost_is_caught_up_from_nothing() {
    let mut cluster = group_led_by(1, &[4]);
    change(&mut cluster, 1, &[AddLearner(4)]);
    cluster.propose(1, b"held").expect("leader");
    assert_eq!(cluster.applied_data(4), vec![b"held".to_vec()]);
    // Node 4 loses its replica and starts over empty.
    cluster.add_node(4, founders(), |_| {});
    cluster
        .propose(1, b"after")
        .expect("leader (and no append loop)");
    cluster.tick_all(ELECTION_TIMEOUT_TICKS);
    cluster.stabilize();
    let last = cluster.node(1).last_index();
    assert_eq!(
        cluster.node(4).last_index(),
        0,
        "caught up without the report: the test does not test"
    );
    let (term, matched) = (
        cluster.node(1).term(),
        cluster.node(1).progress(4).map_or(0, |p| p.matched),
    );
    // A stale answer (older term, or past what was acknowledged) says nothing of a loss.
    cluster
        .node_mut(1)
        .report_replica_lost(4, term - 1, matched);
    cluster
        .node_mut(1)
        .report_replica_lost(4, term, matched + 1);
    assert_eq!(
        cluster.node(1).progress(4).map(|p| p.matched),
        Some(matched)
    );
    cluster.node_mut(1).report_replica_lost(4, term, matched);
    cluster.tick(1, 1);
    cluster.stabilize();
    assert_eq!(cluster.node(4).last_index(), last);
    assert_eq!(cluster.node(4).commit_index(), last);
    // A voter's progress is never reset: its acknowledgements may have counted.
    let matched = cluster.node(1).progress(2).map(|p| p.matched);
    cluster.node_mut(1).report_replica_lost(2, term, 0);
    assert_eq!(cluster.node(1).progress(2).map(|p| p.matched), matched);
}
