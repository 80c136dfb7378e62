//! The seeded cluster simulation of the Raft core (see `sim/mod.rs` for what it checks).
//!
//! `cargo test -p rshard-raft --test simulation` runs 2,000 seeds split over four tests;
//! `RSHARD_SIM_SEEDS=N` runs N instead; `RSHARD_SIM_SEED=S` replays one seed with a trace.
//! A failure prints its seed and the command that replays it.

mod sim;
mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};

use sim::world::{SimOptions, World};

const DEFAULT_SEEDS: u64 = 2_000;
const PARTS: u64 = 4;

fn replay_command(seed: u64) -> String {
    format!("RSHARD_SIM_SEED={seed} cargo test --release -p rshard-raft --test simulation replay -- --nocapture")
}

/// Runs one seed; on a violation or a panic anywhere, fails with the seed and how to replay.
fn run_seed(seed: u64, trace: bool) -> sim::world::SimStats {
    let options = SimOptions::from_seed(seed);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        World::new(options.clone(), trace).run()
    }));
    let failure = match outcome {
        Ok(Ok(stats)) => return stats,
        Ok(Err(violation)) => violation,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("panic: {text}")
        }
    };
    panic!(
        "simulation seed {seed} failed: {failure}\noptions: {options:?}\nreplay: {}",
        replay_command(seed)
    );
}

fn run_part(part: u64) {
    if std::env::var("RSHARD_SIM_SEED").is_ok() {
        return; // replaying one seed: only `replay` runs
    }
    let total = std::env::var("RSHARD_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let base = std::env::var("RSHARD_SIM_BASE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let mut totals = sim::world::SimStats::default();
    let mut seeds = 0;
    for seed in (base..base + total).filter(|seed| seed % PARTS == part) {
        let stats = run_seed(seed, false);
        seeds += 1;
        totals.ticks += stats.ticks;
        totals.elections += stats.elections;
        totals.proposals_acknowledged += stats.proposals_acknowledged;
        totals.crashes += stats.crashes;
        totals.partitions += stats.partitions;
        totals.conf_changes += stats.conf_changes;
        totals.snapshots_installed += stats.snapshots_installed;
        totals.reads_served += stats.reads_served;
        totals.checks += stats.checks;
    }
    println!("part {part}: {seeds} seeds passed; totals {totals:?}");
}

#[test]
fn simulation_seeds_part_0() {
    run_part(0);
}

#[test]
fn simulation_seeds_part_1() {
    run_part(1);
}

#[test]
fn simulation_seeds_part_2() {
    run_part(2);
}

#[test]
fn simulation_seeds_part_3() {
    run_part(3);
}

/// Replays the seed in `RSHARD_SIM_SEED` with a trace of every fault and leader change.
#[test]
fn replay() {
    if let Some(seed) = std::env::var("RSHARD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let stats = run_seed(seed, true);
        println!("seed {seed} passed: {stats:?}");
    }
}
