//! Growing a shard's replica set the way the replica scheduler does: add a learner on a
//! node that holds nothing of the shard, let its first snapshot create the replica, then
//! promote it once it holds every committed entry. Deterministic (no random faults).

mod support;

use rshard_common::shard::{numbered_shards, ShardId};
use rshard_raft::{ConfChange, ConfChangeStep};
use rshard_server::kv::KvOp;
use rshard_server::multiraft::Counters;
use support::{key, Faults, NodeId, World, STEPS_PER_TICK};

const SHARD: ShardId = 1;
const NEW_NODE: NodeId = 3;

fn members(world: &World, node: NodeId) -> Option<(Vec<u64>, Vec<u64>)> {
    let descriptor = world.driver(node)?.descriptor(SHARD)?;
    Some((descriptor.replicas.clone(), descriptor.learners.clone()))
}

fn put(world: &mut World, from: u64, to: u64) {
    let leader = world.leaders()[&SHARD];
    for i in from..to {
        let op = KvOp::Put {
            key: key(SHARD, i),
            value: format!("v{i}").into_bytes(),
        };
        assert!(world.write_to_leader(SHARD, op));
        world.run(1);
    }
    let expected = to as usize;
    assert!(
        world.run_until(2_000, |w| w.shard_data(leader, SHARD).len() == expected),
        "the leader never held {expected} keys"
    );
}

#[test]
fn a_learner_added_on_an_empty_node_is_created_by_snapshot_then_promoted() {
    let layout = numbered_shards(1, &[1, 2]);
    let mut world = World::with_layout(5, 3, layout, 0, Faults::none(), |config| {
        config.max_log_entries = 20;
    });
    assert!(world.run_until(400 * STEPS_PER_TICK, |w| w.leaders().contains_key(&SHARD)));
    put(&mut world, 0, 60);
    assert!(world
        .driver(NEW_NODE)
        .is_some_and(|d| d.descriptor(SHARD).is_none()));

    let add = ConfChange::new([ConfChangeStep::AddLearner(NEW_NODE)]);
    assert!(world.change_replicas(SHARD, add));
    let leader = world.leaders()[&SHARD];
    let caught_up = world.run_until(4_000, |w| {
        w.driver(leader)
            .is_some_and(|d| d.learner_caught_up(SHARD, NEW_NODE))
            && w.shard_data(NEW_NODE, SHARD) == w.shard_data(leader, SHARD)
    });
    assert!(
        caught_up,
        "the learner never caught up: {:?}",
        world.driver(leader).and_then(|d| d.replica_status(SHARD))
    );
    assert_eq!(
        members(&world, NEW_NODE),
        Some((vec![1, 2], vec![NEW_NODE]))
    );
    assert_eq!(
        world.total(|c| c.replicas_created_by_snapshot),
        1,
        "the replica is created by its first snapshot, once"
    );

    let promote = ConfChange::new([ConfChangeStep::AddVoter(NEW_NODE)]);
    assert!(world.change_replicas(SHARD, promote));
    let everyone = (vec![1, 2, 3], vec![]);
    assert!(world.run_until(4_000, |w| (1..=3)
        .all(|n| members(w, n).as_ref() == Some(&everyone))));
    let descriptor = world
        .driver(NEW_NODE)
        .and_then(|d| d.descriptor(SHARD).cloned());
    assert_eq!(
        descriptor.map(|d| d.epoch.conf_version),
        Some(2),
        "one bump per change"
    );

    // A voter now: it receives new writes, and keeps its replica across a restart.
    put(&mut world, 60, 80);
    assert!(world.run_until(2_000, |w| w.shard_data(NEW_NODE, SHARD).len() == 80));
    world.crash_and_reopen((NEW_NODE - 1) as usize);
    assert_eq!(members(&world, NEW_NODE), Some(everyone));
    assert_eq!(world.shard_data(NEW_NODE, SHARD).len(), 80);
}

#[test]
fn a_learner_a_few_entries_behind_under_load_counts_as_caught_up() {
    let layout = numbered_shards(1, &[1, 2]);
    let mut world = World::with_layout(7, 3, layout, 0, Faults::none(), |_| {});
    assert!(world.run_until(400 * STEPS_PER_TICK, |w| w.leaders().contains_key(&SHARD)));
    put(&mut world, 0, 20);
    let add = ConfChange::new([ConfChangeStep::AddLearner(NEW_NODE)]);
    assert!(world.change_replicas(SHARD, add));
    let leader = world.leaders()[&SHARD];
    // Writes every step, as under a steady load. Whenever the leader streams to the learner
    // and it trails the commit index by a few entries in flight, it counts as caught up
    // (requiring it to match the commit index exactly never promoted it under load).
    let (mut trailing, mut not_yet) = (0, 0);
    for i in 20..1_020 {
        for j in 0..4 {
            let op = KvOp::Put {
                key: key(SHARD, i * 4 + j),
                value: b"v".to_vec(),
            };
            // A full inbox refuses some: the load is what matters here.
            let _taken = world.write_to_leader(SHARD, op);
        }
        world.run(1);
        let Some(driver) = world.driver(leader) else {
            continue;
        };
        let Some((state, matched, commit)) = driver.follower_progress(SHARD, NEW_NODE) else {
            continue;
        };
        let slack = rshard_server::multiraft::LEARNER_CATCH_UP_SLACK_ENTRIES;
        let streaming = state == rshard_raft::progress::ProgressState::Replicate;
        let caught_up = driver.learner_caught_up(SHARD, NEW_NODE);
        if streaming && matched < commit && matched + slack >= commit {
            trailing += 1;
            assert!(
                caught_up,
                "{matched} of {commit}: {:?}",
                driver.replica_status(SHARD)
            );
        } else if !streaming || matched + slack < commit {
            // Still probing or taking its snapshot, or too far behind.
            not_yet += 1;
            assert!(!caught_up, "{state:?} {matched} of {commit}");
        }
    }
    assert!(trailing > 0, "the learner never trailed under this load");
    assert!(
        not_yet > 0,
        "the learner was never seen before it caught up"
    );
}

/// Shard 1 on nodes 1-3 with 60 keys, node 4 empty; returns the world and the shard's
/// leader.
fn three_replicas_and_a_spare(seed: u64) -> (World, NodeId) {
    let layout = numbered_shards(1, &[1, 2, 3]);
    let mut world = World::with_layout(seed, 4, layout, 0, Faults::none(), |config| {
        config.max_log_entries = 20;
    });
    assert!(world.run_until(400 * STEPS_PER_TICK, |w| w.leaders().contains_key(&SHARD)));
    put(&mut world, 0, 60);
    let leader = world.leaders()[&SHARD];
    (world, leader)
}

const SPARE: NodeId = 4;

fn add_caught_up_learner(world: &mut World, node: NodeId) {
    let add = ConfChange::new([ConfChangeStep::AddLearner(node)]);
    assert!(world.change_replicas(SHARD, add));
    let caught_up = world.run_until(4_000, |w| {
        let leader = w.leaders().get(&SHARD).copied();
        leader.is_some_and(|leader| {
            w.driver(leader)
                .is_some_and(|d| d.learner_caught_up(SHARD, node))
        })
    });
    assert!(caught_up, "node {node} never caught up as a learner");
}

/// Every node of `voters` holds the shard with exactly those voters and no learner.
fn settled_on(world: &World, voters: &[NodeId]) -> bool {
    let expected = (voters.to_vec(), vec![]);
    voters
        .iter()
        .all(|&n| members(world, n).as_ref() == Some(&expected))
}

fn replace(world: &mut World, add: NodeId, remove: NodeId) {
    let change = ConfChange::new([
        ConfChangeStep::AddVoter(add),
        ConfChangeStep::Remove(remove),
    ]);
    assert!(world.change_replicas(SHARD, change));
}

fn counter(world: &World, node: NodeId, read: impl Fn(&Counters) -> u64) -> u64 {
    world.driver(node).map_or(0, |d| read(d.counters()))
}

/// Nodes 1-4 but `from`, in order: the voters once `from`'s replica moved to the spare.
fn voters_without(from: NodeId) -> Vec<NodeId> {
    (1..=4).filter(|&n| n != from).collect()
}

/// True if `node` (up) holds no replica of the shard.
fn holds_none(world: &World, node: NodeId) -> bool {
    world
        .driver(node)
        .is_some_and(|d| d.descriptor(SHARD).is_none())
}

/// Runs until `node`'s removed replica and its data are gone, and checks that a removal
/// notice destroyed it.
fn assert_destroyed_by_notice(world: &mut World, node: NodeId) {
    let gone = world.run_until(4_000, |w| {
        holds_none(w, node) && w.shard_data(node, SHARD).is_empty()
    });
    assert!(
        gone,
        "node {node}'s removed replica never went: {:?}",
        world.driver(node).and_then(|d| d.replica_status(SHARD))
    );
    assert_eq!(counter(world, node, |c| c.replicas_destroyed_by_notice), 1);
}

#[test]
fn a_replica_moved_off_a_node_is_destroyed_with_its_data_and_may_come_back_later() {
    let (mut world, leader) = three_replicas_and_a_spare(11);
    let from = (1..=3).find(|&n| n != leader).expect("a follower");
    add_caught_up_learner(&mut world, SPARE);
    replace(&mut world, SPARE, from);
    let voters = voters_without(from);
    let moved = world.run_until(4_000, |w| settled_on(w, &voters) && holds_none(w, from));
    assert!(moved, "the move never settled: {:?}", members(&world, from));
    assert_eq!(counter(&world, from, |c| c.replicas_destroyed), 1);
    // Cleared in bounded steps after the replica went.
    assert!(world.run_until(400, |w| w.shard_data(from, SHARD).is_empty()));
    assert_eq!(world.shard_data(SPARE, SHARD).len(), 60);

    // Gone for good: a restart finds neither the replica nor its data.
    world.crash_and_reopen((from - 1) as usize);
    assert!(holds_none(&world, from));
    assert!(world.shard_data(from, SHARD).is_empty());

    // Its tombstone holds back only what is older: added again, it gets a snapshot.
    add_caught_up_learner(&mut world, from);
    assert!(world.run_until(2_000, |w| w.shard_data(from, SHARD).len() == 60));
}

/// A learner that restarts under a quiet leader knows no leader and never campaigns to
/// find one: it asks its voters, so the leader wakes the group and its quiescing
/// heartbeat names it. (A quick restart: the learner's node is never declared dead.)
#[test]
fn a_learner_restarted_under_a_quiet_leader_learns_who_leads() {
    let (mut world, leader) = three_replicas_and_a_spare(13);
    add_caught_up_learner(&mut world, SPARE);
    assert!(
        world.run_until_quiet(4_000).is_some(),
        "the shard never went quiet"
    );
    world.crash_and_reopen((SPARE - 1) as usize);
    let leader_known = |w: &World| w.driver(SPARE).and_then(|d| d.leader_of(SHARD));
    assert_eq!(leader_known(&world), None);
    assert!(
        world.run_until(100 * STEPS_PER_TICK, |w| leader_known(w) == Some(leader)),
        "the learner never learned its leader: {:?}",
        world.driver(SPARE).and_then(|d| d.replica_status(SHARD))
    );
    assert!(
        world.run_until_quiet(4_000).is_some(),
        "the shard never went quiet again"
    );
    assert_eq!(counter(&world, leader, |c| c.groups_woken_by_leaderless), 1);
}

/// A learner removed while its node is down knows no leader when it comes back and never
/// campaigns, so it says nothing that would draw a removal notice: it asks its voters
/// who leads, and they answer with one.
#[test]
fn a_learner_removed_while_down_learns_it_when_it_asks_for_its_leader() {
    let (mut world, _) = three_replicas_and_a_spare(14);
    add_caught_up_learner(&mut world, SPARE);
    world.crash((SPARE - 1) as usize, false, 200);
    let remove = ConfChange::new([ConfChangeStep::Remove(SPARE)]);
    assert!(world.change_replicas(SHARD, remove));
    assert!(world.run_until(2_000, |w| settled_on(w, &[1, 2, 3])));
    assert_destroyed_by_notice(&mut world, SPARE);
}

/// The same for a learner cut off while it is removed: it still names the leader it last
/// heard from, which no longer speaks to it, so it asks once an election timeout passes.
#[test]
fn a_learner_cut_off_while_it_is_removed_asks_and_learns_it() {
    let (mut world, _) = three_replicas_and_a_spare(15);
    add_caught_up_learner(&mut world, SPARE);
    world.isolate(SPARE, 400);
    let remove = ConfChange::new([ConfChangeStep::Remove(SPARE)]);
    assert!(world.change_replicas(SHARD, remove));
    assert!(world.run_until(2_000, |w| settled_on(w, &[1, 2, 3])));
    assert_destroyed_by_notice(&mut world, SPARE);
}

#[test]
fn a_replica_cut_off_while_it_is_removed_learns_it_from_a_removal_notice() {
    let (mut world, leader) = three_replicas_and_a_spare(12);
    let from = (1..=3).find(|&n| n != leader).expect("a follower");
    add_caught_up_learner(&mut world, SPARE);
    // Cut off before the change, so it applies none of it and keeps campaigning in the
    // old membership once it is back.
    world.isolate(from, 2_000);
    replace(&mut world, SPARE, from);
    let voters = voters_without(from);
    assert!(world.run_until(1_900, |w| settled_on(w, &voters)));
    assert!(world
        .driver(from)
        .is_some_and(|d| d.descriptor(SHARD).is_some()));
    assert_destroyed_by_notice(&mut world, from);
    assert!(settled_on(&world, &voters));
}

#[test]
fn a_quiet_replica_removed_while_briefly_cut_off_is_told_by_the_leader() {
    let (mut world, leader) = three_replicas_and_a_spare(14);
    let from = (1..=3).find(|&n| n != leader).expect("a follower");
    add_caught_up_learner(&mut world, SPARE);
    assert!(
        world.run_until_quiet(4_000).is_some(),
        "the group never went quiet"
    );
    assert!(world.driver(from).is_some_and(|d| d.is_quiet(SHARD)));
    // Cut off for less than a peer takes to be declared dead, so nothing wakes its quiet
    // replica, and it misses the whole change.
    world.isolate(from, 36);
    replace(&mut world, SPARE, from);
    let voters = voters_without(from);
    assert!(
        world.run_until(36, |w| settled_on(w, &voters)),
        "the change outlasted the cut"
    );
    assert!(world.driver(from).is_some_and(|d| d.is_quiet(SHARD)));
    let gone = world.run_until(2_000, |w| holds_none(w, from));
    assert!(
        gone,
        "the quiet removed replica never heard: {:?}",
        members(&world, from)
    );
}
