//! The deterministic multi-raft simulation: 3 or 5 nodes, 1 to 1,000 shards, a network that
//! drops, delays and partitions, crashes that lose unsynced writes (some right after a failed
//! sync), and clients whose histories must be linearizable. After healing, every shard must
//! elect a leader, take a write, and converge to identical data on every replica.
//!
//! A third of the seeds compact logs after a few entries and stream snapshots in tiny chunks,
//! installed a few keys per iteration, so transfers and installs span many iterations and
//! crashes land in the middle of both.
//!
//! Half the seeds split shards at random keys while clients run: clients whose routes went
//! stale are refused and look the key up again, and every shard split off must reach every
//! replica, elect a leader and agree like the others.
//!
//! A quarter of the seeds move replicas instead: shards start on 3 of 4 or 5 nodes, and hot
//! shards repeatedly gain a learner on a spare node and then swap it for a voter in one
//! joint change. After healing, the members agree and every other node holds neither a
//! replica nor data of the shard (removed replicas are destroyed, also those cut off while
//! they were removed, and their ranges cleared).
//!
//! Half the split seeds also merge adjacent shards as placement does: freeze the right one,
//! wait until every replica of it is frozen, then merge it into the left one. Clients of the
//! frozen shard are refused and look the key up again. Some merges are rolled back once
//! frozen (when a node of the right shard is down, and at random), racing the merge
//! commands already sent: the left shard first refuses every merge planned before, then the
//! right one is unfrozen. After healing, no merge is left half
//! done, no node keeps a replica of a shard merged away, and the shards that took merged
//! ranges agree like the others.
//!
//! `RSHARD_MULTIRAFT_SEEDS=N` runs N seeds (default 300); `RSHARD_MULTIRAFT_SEED=S` runs one.

mod support;

use rshard_common::linearizability::{check, Verdict};
use rshard_common::rng::SeededRng;
use rshard_common::shard::numbered_shards;
use rshard_server::multiraft::DriverConfig;
use support::{Faults, World};

const FAULTY_STEPS: u64 = 1_200;
const SETTLE_STEPS: u64 = 1_600;

fn scenario(seed: u64) -> World {
    let mut rng = SeededRng::new(seed ^ 0x5eed);
    let nodes = if rng.below(3) == 0 { 5 } else { 3 };
    let shards = match rng.below(20) {
        0 => 1_000,
        1..=2 => 100,
        3..=7 => 1,
        _ => 1 + rng.below(12),
    };
    let faults = Faults {
        drop_per_mille: rng.below(80),
        max_delay_steps: 1 + rng.below(8),
        crash_per_million: rng.below(3) * 1_500,
        partition_per_million: rng.below(3) * 1_500,
        failed_sync_per_mille: 500,
    };
    let clients = 2 + rng.below(6) as usize;
    let snapshots = rng.below(3) == 0;
    let compact_after = 4 + rng.below(30);
    let chunk_bytes = 16 + rng.below(200) as usize;
    let apply_bytes = 1 + rng.below(400) as usize;
    let window = 1 + rng.below(4) as u32;
    let mut world = World::with_config(seed, nodes, shards, clients, faults.clone(), |config| {
        if snapshots {
            config.max_log_entries = compact_after;
            config.snapshot_chunk_bytes = chunk_bytes;
            config.snapshot_apply_bytes_per_iteration = apply_bytes;
            config.snapshot_chunks_in_flight = window;
        }
    });
    let hot = 1 + rng.below(shards.min(4));
    world.hot_shards = (0..hot).map(|_| 1 + rng.below(shards)).collect();
    if snapshots {
        world.keys_per_shard = 2 + rng.below(30);
    }
    if rng.below(2) == 0 {
        world.keys_per_shard = world.keys_per_shard.max(4 + rng.below(12));
        world.split_every_steps = Some(40 + rng.below(200));
        if rng.below(2) == 0 {
            world.merge_every_steps = Some(10 + rng.below(60));
        }
    } else if rng.below(2) == 0 {
        // Replica moves: the shards start on nodes 1-3 of 4 or 5, so there is room to move.
        let ids: Vec<u64> = (1..=3).collect();
        let layout = numbered_shards(shards, &ids);
        let (hot, keys) = (world.hot_shards.clone(), world.keys_per_shard);
        let config = world.config.clone();
        world = World::with_layout(seed, 4 + rng.below(2), layout, clients, faults, |c| {
            *c = DriverConfig {
                node: c.node,
                ..config.clone()
            };
        });
        world.hot_shards = hot;
        world.keys_per_shard = keys;
        world.move_every_steps = Some(20 + rng.below(100));
    }
    world
}

/// What one seed exercised, summed over the run.
#[derive(Default)]
struct Exercised {
    snapshots_installed: u64,
    installs_resumed: u64,
    snapshot_chunks: u64,
    /// Replicas created by applying a split, and voters created by a snapshot in a split gap.
    split_off: u64,
    created_by_snapshot: u64,
    /// Replicas destroyed once removed: on applying their removal, and by a notice.
    destroyed: u64,
    destroyed_by_notice: u64,
    /// Replicas retired because their shard merged into its left neighbour.
    merged_away: u64,
    merges_rolled_back: u64,
}

fn run_seed(seed: u64) -> Result<Exercised, String> {
    let mut world = scenario(seed);
    for step in 0..FAULTY_STEPS {
        world.drive_clients(200);
        if world
            .split_every_steps
            .is_some_and(|every| step % every == every - 1)
        {
            world.split_random();
        }
        if world
            .move_every_steps
            .is_some_and(|every| step % every == every - 1)
        {
            world.move_random();
        }
        if world
            .merge_every_steps
            .is_some_and(|every| step % every == every - 1)
        {
            world.merge_step();
        }
        world.run_step();
    }
    world.heal();
    // A merge whose right shard is frozen only goes forward: placement keeps at it.
    for step in 0..SETTLE_STEPS {
        if world.merging.is_some() && step % 10 == 0 {
            world.merge_step();
        }
        world.run_step();
    }
    let history = world.checked_history();
    let known = history
        .iter()
        .filter(|e| e.outcome != rshard_common::linearizability::Outcome::Unknown)
        .count();
    if std::env::var("RSHARD_MULTIRAFT_SEED").is_ok() {
        eprintln!(
            "seed {seed}: {} nodes, {} shards ({} now, {} splits asked; merged away {:?} into {:?}, under way {:?}), {} operations ({known} answered), {} crashes, leaders {:?}, snapshots installed {}, chunks {}",
            world.nodes.len(),
            world.shards.len(),
            world.all_shards().len(),
            world.splits_requested,
            world.merged_away,
            world.merged_into,
            world.merging.as_ref().map(|(left, right, _)| (left, right)),
            history.len(),
            world.crashes,
            world.leaders().len(),
            world.total_ever(|c| c.snapshots_installed),
            world.total_ever(|c| c.snapshot_chunks_received),
        );
        for node in world.up_nodes() {
            if let Some(driver) = world.driver(node) {
                let c = driver.counters();
                eprintln!(
                    "  node {node}: readies {} dirty {} iterations {} syncs {} ticks {} group ticks {} ticking {} quiet {} entries/sync {:.1}",
                    c.readies, c.dirty_groups, c.iterations, c.syncs, c.ticks, c.group_ticks, c.ticking_groups, c.quiet_groups, c.entries_per_sync()
                );
                eprintln!(
                    "    snapshots: started {} sent {} failed {} chunks sent {} received {} refused {} timed out {} installed {} discarded {} dropped while installing {} transfers {:?}",
                    c.snapshot_sends_started, c.snapshots_sent, c.snapshot_sends_failed, c.snapshot_chunks_sent, c.snapshot_chunks_received, c.snapshot_chunks_refused, c.snapshot_receives_timed_out, c.snapshots_installed, c.stagings_discarded, c.messages_while_installing, driver.snapshot_transfers()
                );
            }
        }
    }
    if std::env::var("RSHARD_MULTIRAFT_SEED").is_ok() {
        for shard in world.all_shards() {
            for node in world.up_nodes() {
                if let Some(status) = world.driver(node).and_then(|d| d.replica_status(shard)) {
                    eprintln!("  shard {shard} on node {node}: {status}");
                }
            }
        }
    }
    check_liveness(&mut world)?;
    check_agreement(&world)?;
    check_merges(&world)?;
    let exercised = Exercised {
        snapshots_installed: world.total_ever(|c| c.snapshots_installed),
        installs_resumed: world.total_ever(|c| c.installs_resumed),
        snapshot_chunks: world.total_ever(|c| c.snapshot_chunks_received),
        split_off: world.total_ever(|c| c.shards_split_off),
        merged_away: world.total_ever(|c| c.replicas_merged_away),
        merges_rolled_back: world.merges_rolled_back,
        created_by_snapshot: world.total_ever(|c| c.replicas_created_by_snapshot),
        destroyed: world.total_ever(|c| c.replicas_destroyed),
        destroyed_by_notice: world.total_ever(|c| c.replicas_destroyed_by_notice),
    };
    match check(&world.checked_history(), 200_000) {
        Verdict::Linearizable => Ok(exercised),
        Verdict::Inconclusive { key, .. } => {
            eprintln!("seed {seed}: search budget exhausted on {key:?}; not a failure");
            Ok(exercised)
        }
        verdict => {
            let history = world.checked_history();
            let detail = match &verdict {
                Verdict::Violation { key, events } => events
                    .iter()
                    .map(|&i| format!("\n  {:?}", history[i]))
                    .chain([format!("\n  (key {:?})", String::from_utf8_lossy(key))])
                    .collect::<String>(),
                _ => String::new(),
            };
            Err(format!("history not linearizable: {verdict:?}{detail}"))
        }
    }
}

/// The hot shards, every shard split off and every shard that took a merged one's range,
/// but none merged away: the ones the checks after healing cover.
fn checked_shards(world: &World) -> std::collections::BTreeSet<u64> {
    let laid_out = world.shards.len() as u64;
    let split_off = world.all_shards().into_iter().filter(|&s| s > laid_out);
    world
        .hot_shards
        .iter()
        .copied()
        .chain(split_off)
        .chain(world.merged_into.iter().copied())
        .filter(|shard| !world.merged_away.contains(shard))
        .collect()
}

/// After healing, no node holds a replica of a shard merged away (every replica retired
/// it once its left neighbour took the range), and no merge is left half done.
fn check_merges(world: &World) -> Result<(), String> {
    if let Some((left, right, _)) = &world.merging {
        let frozen = world
            .up_nodes()
            .into_iter()
            .filter_map(|node| world.driver(node)?.descriptor(*right).cloned())
            .any(|descriptor| descriptor.merging_into.is_some());
        if frozen {
            return Err(format!(
                "the merge of shard {right} into {left} froze it and never completed"
            ));
        }
    }
    for &shard in &world.merged_away {
        for node in world.up_nodes() {
            if let Some(status) = world.driver(node).and_then(|d| d.replica_status(shard)) {
                return Err(format!(
                    "shard {shard} was merged away but node {node} keeps a replica: {status}"
                ));
            }
        }
    }
    Ok(())
}

/// The nodes `shard`'s leader counts as members (voters and learners).
fn members(world: &World, shard: u64) -> Result<std::collections::BTreeSet<u64>, String> {
    let leader = world.leaders().get(&shard).copied();
    let descriptor = leader.and_then(|l| world.driver(l)?.descriptor(shard).cloned());
    match descriptor {
        Some(descriptor) => Ok(descriptor.members().collect()),
        None => Err(format!("shard {shard} has no leader after healing")),
    }
}

/// After healing, every hot shard and every shard split off has one leader that every
/// member knows.
fn check_liveness(world: &mut World) -> Result<(), String> {
    let leaders = world.leaders();
    for shard in checked_shards(world) {
        let Some(&leader) = leaders.get(&shard) else {
            return Err(format!("shard {shard} has no leader after healing"));
        };
        let members = members(world, shard)?;
        for node in world.up_nodes().intersection(&members).copied() {
            let known = world.driver(node).and_then(|d| d.leader_of(shard));
            if known != Some(leader) {
                return Err(format!(
                    "node {node} believes {known:?} leads shard {shard}, not {leader}"
                ));
            }
        }
    }
    Ok(())
}

/// Every replica of a hot shard or of a shard split off applied the same index, has the
/// same descriptor and holds the same keys and values in the shard's range; a node that is
/// no member holds no replica and no data of it (a replica moved away is destroyed and its
/// range cleared); no install is left half done and no staging is left behind.
fn check_agreement(world: &World) -> Result<(), String> {
    for node in world.up_nodes() {
        let Some(driver) = world.driver(node) else {
            continue;
        };
        if let Some(shard) = driver.shards().find(|&s| driver.is_installing(s)) {
            return Err(format!("node {node} is still installing shard {shard}"));
        }
        let stagings = driver.store().stagings().map_err(|e| e.to_string())?;
        if !stagings.is_empty() {
            return Err(format!("node {node} kept staging {stagings:?}"));
        }
    }
    for shard in checked_shards(world) {
        let mut seen = None;
        let members = members(world, shard)?;
        for node in world.up_nodes() {
            let Some(driver) = world.driver(node) else {
                continue;
            };
            if !members.contains(&node) {
                let data = world.shard_data(node, shard).len();
                if driver.descriptor(shard).is_some() || data > 0 {
                    return Err(format!(
                        "shard {shard}: node {node} is no member but holds {:?} and {data} keys",
                        driver.replica_status(shard)
                    ));
                }
                continue;
            }
            let state = (
                driver.applied_index(shard),
                driver.descriptor(shard).cloned(),
                world.shard_data(node, shard),
            );
            match &seen {
                None => seen = Some((node, state)),
                Some((first, expected)) if *expected != state => {
                    return Err(format!(
                        "shard {shard}: node {first} has {expected:?} but node {node} has {state:?}"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn multiraft_histories_are_linearizable_under_faults() {
    if let Some(seed) = env_u64("RSHARD_MULTIRAFT_SEED") {
        if let Err(failure) = run_seed(seed) {
            panic!("seed {seed}: {failure}");
        }
        return;
    }
    let seeds = env_u64("RSHARD_MULTIRAFT_SEEDS").unwrap_or(300);
    let base = env_u64("RSHARD_MULTIRAFT_BASE_SEED").unwrap_or(0);
    let mut failures = Vec::new();
    let mut total = Exercised::default();
    // Seeds that once failed, run every time beside the range (see docs/architecture.md).
    const REGRESSIONS: [u64; 3] = [50_736, 50_835, 52_551];
    for seed in (base..base + seeds).chain(REGRESSIONS) {
        let started = std::time::Instant::now();
        let result = run_seed(seed);
        if std::env::var("RSHARD_MULTIRAFT_TIMING").is_ok() {
            eprintln!("seed {seed}: {:?}", started.elapsed());
        }
        if let Ok(exercised) = &result {
            total.snapshots_installed += exercised.snapshots_installed;
            total.installs_resumed += exercised.installs_resumed;
            total.snapshot_chunks += exercised.snapshot_chunks;
            total.split_off += exercised.split_off;
            total.created_by_snapshot += exercised.created_by_snapshot;
            total.destroyed += exercised.destroyed;
            total.destroyed_by_notice += exercised.destroyed_by_notice;
            total.merged_away += exercised.merged_away;
            total.merges_rolled_back += exercised.merges_rolled_back;
        }
        if let Err(failure) = result {
            let hint = scenario(seed).replay_hint("multiraft_sim");
            eprintln!("seed {seed} failed: {failure}\n  replay: {hint}");
            failures.push(seed);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    eprintln!(
        "{seeds} seeds: {} snapshots installed from {} chunks, {} installs resumed after a crash, \
         {} replicas split off, {} replicas created by a snapshot, {} replicas destroyed once \
         removed ({} by a notice), {} replicas retired by a merge, {} merges rolled back",
        total.snapshots_installed,
        total.snapshot_chunks,
        total.installs_resumed,
        total.split_off,
        total.created_by_snapshot,
        total.destroyed,
        total.destroyed_by_notice,
        total.merged_away,
        total.merges_rolled_back,
    );
    if seeds >= 100 {
        // The snapshot seeds must keep exercising transfers, installs and crashes in them,
        // and the split seeds splits, including ones a lagging replica gets by snapshot.
        assert!(
            total.snapshots_installed > 0 && total.installs_resumed > 0,
            "the simulation stopped exercising snapshots"
        );
        assert!(
            total.split_off > 0 && total.created_by_snapshot > 0,
            "the simulation stopped exercising splits"
        );
        assert!(
            total.destroyed > 0 && total.destroyed_by_notice > 0,
            "the simulation stopped exercising replica moves"
        );
        assert!(
            total.merged_away > 0 && total.merges_rolled_back > 0,
            "the simulation stopped exercising merges and their rollback"
        );
    }
}
