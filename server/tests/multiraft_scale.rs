//! What a node pays for many groups, measured in the deterministic simulation (no faults):
//! heartbeat frames between two nodes do not grow with the number of groups, an idle node
//! ticks almost none of its groups, a dead node wakes only the groups it led, and concurrent
//! proposals across groups share syncs.

mod support;

use support::{Faults, World, STEPS_PER_TICK};

const SEED: u64 = 7;

/// Heartbeat-carrying frames between nodes 1 and 2 (both ways) per tick, measured over
/// `ticks` once every group has a leader, with quiescence off so every group heartbeats.
fn heartbeat_frames_per_tick(shards: u64, ticks: u64) -> (f64, u64) {
    let mut world = World::with_config(SEED, 3, shards, 0, Faults::none(), |config| {
        config.quiesce = false;
    });
    world.run(200 * STEPS_PER_TICK);
    assert_eq!(world.leaders().len() as u64, shards, "every group elected");
    let between = |world: &World| {
        let one = world.driver(1).map_or(0, |d| {
            d.counters()
                .per_peer
                .get(&2)
                .map_or(0, |p| p.heartbeat_frames_sent)
        });
        let two = world.driver(2).map_or(0, |d| {
            d.counters()
                .per_peer
                .get(&1)
                .map_or(0, |p| p.heartbeat_frames_sent)
        });
        one + two
    };
    let heartbeats =
        |world: &World| world.total(|c| c.per_peer.values().map(|p| p.heartbeats_sent).sum());
    let (frames_before, beats_before) = (between(&world), heartbeats(&world));
    world.run(ticks * STEPS_PER_TICK);
    let frames = between(&world) - frames_before;
    let beats = heartbeats(&world) - beats_before;
    (frames as f64 / ticks as f64, beats)
}

#[test]
fn heartbeat_frames_between_two_nodes_do_not_grow_with_groups() {
    let ticks = 200;
    let (few, few_beats) = heartbeat_frames_per_tick(10, ticks);
    let (many, many_beats) = heartbeat_frames_per_tick(1_000, ticks);
    eprintln!(
        "heartbeat frames per tick between nodes 1 and 2: {few:.2} with 10 groups, \
         {many:.2} with 1,000 groups; coalesced heartbeats sent: {few_beats} vs {many_beats}"
    );
    assert!(few > 0.0, "heartbeats flow");
    assert!(
        many_beats > 50 * few_beats,
        "the 1,000 groups really heartbeat: {many_beats} vs {few_beats}"
    );
    assert!(
        many <= 1.5 * few,
        "frames grew with groups: {many:.2} vs {few:.2} per tick"
    );
}

#[test]
fn an_idle_node_ticks_almost_none_of_its_groups_and_a_dead_node_wakes_only_what_it_led() {
    let shards = 10_000;
    let mut world = World::new(SEED, 3, shards, 0, Faults::none());
    world
        .run_until_quiet(600 * STEPS_PER_TICK)
        .expect("the cluster elects and goes quiet");
    // A write burst over a tenth of the groups, then settling.
    for shard in (1..=shards).step_by(10) {
        assert!(
            world.put_to_leader(shard, b"burst"),
            "shard {shard} takes a write"
        );
    }
    world
        .run_until_quiet(200 * STEPS_PER_TICK)
        .expect("quiet again after the burst");
    let applied = world.driver(1).and_then(|d| d.applied_index(1));
    assert!(
        applied.is_some_and(|a| a > 2),
        "the burst applied: {applied:?}"
    );

    // One second at 10 ticks per second.
    let window_ticks = 10;
    let before = world.driver(1).map_or(0, |d| d.counters().group_ticks);
    world.run(window_ticks * STEPS_PER_TICK);
    let ticked = world.driver(1).map_or(0, |d| d.counters().group_ticks) - before;
    let share = ticked as f64 / (window_ticks * shards) as f64;
    eprintln!("idle node 1 ticked {ticked} group-ticks in {window_ticks} ticks ({:.4}% of groups per tick)", share * 100.0);
    assert!(share < 0.01, "idle groups tick: {share}");

    let leaders = world.leaders();
    let led_by_three: Vec<u64> = leaders
        .iter()
        .filter(|(_, &node)| node == 3)
        .map(|(&shard, _)| shard)
        .collect();
    assert!(!led_by_three.is_empty(), "node 3 leads some groups");
    world.crash(2, false, u64::MAX / 2);
    world.run(100 * STEPS_PER_TICK);
    let woken = world.total(|c| c.groups_woken_by_dead_peer);
    eprintln!(
        "node 3 died leading {} of {shards} groups; {woken} replicas woke on nodes 1 and 2",
        led_by_three.len()
    );
    assert_eq!(
        woken,
        2 * led_by_three.len() as u64,
        "exactly the surviving replicas of the groups node 3 led wake"
    );
    let after = world.leaders();
    for shard in &led_by_three {
        let leader = after.get(shard);
        assert!(
            leader.is_some_and(|&l| l != 3),
            "shard {shard} elected a new leader: {leader:?}"
        );
    }
    for (shard, node) in &leaders {
        if *node != 3 {
            assert!(
                world.driver(*node).is_some_and(|d| d.is_quiet(*shard)),
                "shard {shard}, led by live node {node}, stayed quiet"
            );
        }
    }
}

#[test]
fn concurrent_proposals_across_a_thousand_groups_share_syncs() {
    let shards = 1_000;
    let mut world = World::new(SEED, 3, shards, 0, Faults::none());
    world
        .run_until_quiet(600 * STEPS_PER_TICK)
        .expect("the cluster elects and goes quiet");
    let entries_before = world.total(|c| c.entries_persisted);
    let syncs_before = world.total(|c| c.syncs);
    for round in 0..5u8 {
        for shard in 1..=shards {
            assert!(
                world.put_to_leader(shard, &[round]),
                "shard {shard} takes a write"
            );
        }
        world.run(STEPS_PER_TICK);
    }
    world
        .run_until_quiet(200 * STEPS_PER_TICK)
        .expect("quiet after the writes");
    let entries = world.total(|c| c.entries_persisted) - entries_before;
    let syncs = world.total(|c| c.syncs) - syncs_before;
    let per_sync = entries as f64 / syncs as f64;
    eprintln!("{entries} entries in {syncs} syncs: {per_sync:.1} entries per sync");
    assert!(
        entries >= 3 * 5 * shards,
        "every write reached every replica: {entries}"
    );
    assert!(per_sync > 10.0, "entries per sync: {per_sync:.1}");
}
