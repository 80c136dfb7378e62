//! Growing a shard's replica set the way the replica scheduler does: add a learner on a
//! node that holds nothing of the shard, let its first snapshot create the replica, then
//! promote it once it holds every committed entry. Deterministic (no random faults).

mod support;

use rshard_common::shard::{numbered_shards, ShardId};
use rshard_raft::{ConfChange, ConfChangeStep};
use rshard_server::kv::KvOp;
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
