//! The seeded cluster simulation of the Raft core (see `sim/mod.rs` for what it checks).
//!
//! `cargo test -p rshard-raft --test simulation` runs 5,000 seeds split over four tests;
//! `RSHARD_SIM_SEEDS=N` runs N instead; `RSHARD_SIM_SEED=S` replays one seed with a trace.
//! A failure prints its seed and the command that replays it.

mod sim;
mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};

use sim::world::{SimOptions, World};

const DEFAULT_SEEDS: u64 = 5_000;
const PARTS: u64 = 4;

fn replay_command(seed: u64) -> String {
    format!("RSHARD_SIM_SEED={seed} cargo test --release -p rshard-raft --test simulation replay -- --nocapture")
}

/// Runs one seed; returns its counters, or the violation (or panic) with how to replay it.
fn run_seed(seed: u64, trace: bool) -> Result<sim::world::SimStats, String> {
    let options = SimOptions::from_seed(seed);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        World::new(options.clone(), trace).run()
    }));
    let failure = match outcome {
        Ok(Ok(stats)) => return Ok(stats),
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
    Err(format!(
        "simulation seed {seed} failed: {failure}\noptions: {options:?}\nreplay: {}",
        replay_command(seed)
    ))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Runs this part's share of the seeds. Stops at the first failure, unless
/// `RSHARD_SIM_KEEP_GOING` is set, in which case it counts every failing seed (used to
/// measure how often a planted bug is caught).
fn run_part(part: u64) {
    if std::env::var("RSHARD_SIM_SEED").is_ok() {
        return; // replaying one seed: only `replay` runs
    }
    let total = env_u64("RSHARD_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let base = env_u64("RSHARD_SIM_BASE_SEED").unwrap_or(0);
    let keep_going = std::env::var("RSHARD_SIM_KEEP_GOING").is_ok();
    let mut totals = sim::world::SimStats::default();
    let (mut passed, mut failures) = (0, Vec::new());
    for seed in (base..base + total).filter(|seed| seed % PARTS == part) {
        match run_seed(seed, false) {
            Ok(stats) => {
                passed += 1;
                totals.add(&stats);
            }
            Err(report) if keep_going => {
                println!("{}", report.lines().next().unwrap_or_default());
                failures.push(seed);
            }
            Err(report) => panic!("{report}"),
        }
    }
    println!("part {part}: {passed} seeds passed; totals {totals:?}");
    assert!(
        failures.is_empty(),
        "part {part}: {} seeds failed: {failures:?}",
        failures.len()
    );
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
    if let Some(seed) = env_u64("RSHARD_SIM_SEED") {
        match run_seed(seed, true) {
            Ok(stats) => println!("seed {seed} passed: {stats:?}"),
            Err(report) => panic!("{report}"),
        }
    }
}
