//! The deterministic multi-raft simulation: 3 or 5 nodes, 1 to 1,000 shards, a network that
//! drops, delays and partitions, crashes that lose unsynced writes (some right after a failed
//! sync), and clients whose histories must be linearizable. After healing, every shard must
//! elect a leader, take a write, and converge to identical data on every replica.
//!
//! `RSHARD_MULTIRAFT_SEEDS=N` runs N seeds (default 300); `RSHARD_MULTIRAFT_SEED=S` runs one.

mod support;

use rshard_common::linearizability::{check, Verdict};
use rshard_common::rng::SeededRng;
use rshard_server::kv;
use support::{key, Faults, World};

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
    let mut world = World::new(seed, nodes, shards, clients, faults);
    let hot = 1 + rng.below(shards.min(4));
    world.hot_shards = (0..hot).map(|_| 1 + rng.below(shards)).collect();
    world
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut world = scenario(seed);
    for _ in 0..FAULTY_STEPS {
        world.drive_clients(200);
        world.run_step();
    }
    world.heal();
    world.run(SETTLE_STEPS);
    let history = world.checked_history();
    let known = history
        .iter()
        .filter(|e| e.outcome != rshard_common::linearizability::Outcome::Unknown)
        .count();
    if std::env::var("RSHARD_MULTIRAFT_SEED").is_ok() {
        eprintln!(
            "seed {seed}: {} nodes, {} shards, {} operations ({known} answered), {} crashes, leaders {:?}",
            world.nodes.len(),
            world.shards.len(),
            history.len(),
            world.crashes,
            world.leaders().len()
        );
        for node in world.up_nodes() {
            if let Some(driver) = world.driver(node) {
                let c = driver.counters();
                eprintln!(
                    "  node {node}: readies {} dirty {} iterations {} syncs {} ticks {} group ticks {} ticking {} quiet {} entries/sync {:.1}",
                    c.readies, c.dirty_groups, c.iterations, c.syncs, c.ticks, c.group_ticks, c.ticking_groups, c.quiet_groups, c.entries_per_sync()
                );
            }
        }
    }
    check_liveness(&mut world)?;
    check_agreement(&world)?;
    match check(&world.checked_history(), 200_000) {
        Verdict::Linearizable => Ok(()),
        Verdict::Inconclusive { key, .. } => {
            eprintln!("seed {seed}: search budget exhausted on {key:?}; not a failure");
            Ok(())
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

/// After healing, every hot shard has one leader that every replica knows and that
/// takes writes.
fn check_liveness(world: &mut World) -> Result<(), String> {
    let leaders = world.leaders();
    for shard in world.hot_shards.clone() {
        let Some(&leader) = leaders.get(&shard) else {
            return Err(format!("shard {shard} has no leader after healing"));
        };
        for node in world.up_nodes() {
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

/// Every replica of a hot shard applied the same index and holds the same values.
fn check_agreement(world: &World) -> Result<(), String> {
    for &shard in &world.hot_shards {
        let mut seen = None;
        for node in world.up_nodes() {
            let Some(driver) = world.driver(node) else {
                continue;
            };
            let values: Vec<_> = (0..2)
                .map(|i| kv::read_committed(driver.store(), &key(shard, i)))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let state = (driver.applied_index(shard), values);
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
    for seed in base..base + seeds {
        let started = std::time::Instant::now();
        let result = run_seed(seed);
        if std::env::var("RSHARD_MULTIRAFT_TIMING").is_ok() {
            eprintln!("seed {seed}: {:?}", started.elapsed());
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
}
