//! The placement simulator: scheduler rounds (`rshard_placement::round::plan_round`, the
//! function the placement service runs) on synthetic clusters, with every operator applied
//! at once, until the rounds rest. Each scenario in `tests/scenarios/*.scenario` names the
//! live and dead nodes, the replication factor and the shards; the rounds' operator counts
//! and the end state are compared with the golden file beside it (`*.expected`).
//!
//! What every scenario must show besides its golden output: the rounds come to rest (three
//! rounds in a row plan nothing, or more than the young window when sizes are modelled) before the round limit, so the schedulers converge and do
//! not flap; no shard ever has two replicas on one node; and no replica is left on a dead
//! node of a shard that still has a leader.
//!
//! The model of a round: a shard whose leader is on a dead node elects the lowest live
//! voter if a majority of its voters is live; a learner added in one round is caught up in
//! the next; a move replaces its voter within the round (a leader moved away hands its
//! leadership to the lowest other voter).
//!
//! Sizes and loads (`limits`, `size`, `load` lines): each shard owns a numeric key range
//! whose bytes and requests are spread evenly over it, so its middle key halves both. A
//! split applies within its round (two shards of half the bytes and load; the new one
//! gets the next id and the same replicas); a merge too (the left shard takes the right
//! one's range, bytes and load). Every round counts as one report: a shard at or over the
//! load threshold adds one to its run of hot reports. A shard whose range changed in the
//! last `young` rounds (default 5) is not merged.
//!
//! `RSHARD_UPDATE_GOLDEN=1 cargo test -p rshard-placement --test simulator` rewrites the
//! golden files (check the diff before committing it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rshard_common::shard::{ShardDescriptor, ShardId};
use rshard_placement::replication::{NodeId, Operator, ShardState};
use rshard_placement::round::{plan_round, ClusterModel};
use rshard_placement::splits::{ShardLoad, SplitLimits, SplitModel};

/// Each initial shard's key range, as numbers: shard `i` owns `[i, i + 1) * SPAN`.
const SPAN: u64 = 1 << 32;

fn key_text(point: u64) -> Vec<u8> {
    format!("{point:020}").into_bytes()
}

fn key_point(key: &[u8]) -> u64 {
    std::str::from_utf8(key)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(u64::MAX)
}

/// A shard's size and load in the simulation.
#[derive(Clone, Copy, Debug, Default)]
struct Weight {
    bytes: u64,
    requests_per_second: u64,
    hot_reports: u32,
    /// The round its range last changed.
    changed_at: usize,
}

struct Scenario {
    live: BTreeSet<NodeId>,
    dead: BTreeSet<NodeId>,
    factor: usize,
    shards: Vec<ShardState>,
    max_rounds: usize,
    limits: SplitLimits,
    weights: BTreeMap<ShardId, Weight>,
    young_rounds: usize,
}

fn parse(text: &str) -> Result<Scenario, String> {
    let mut scenario = Scenario {
        live: BTreeSet::new(),
        dead: BTreeSet::new(),
        factor: 3,
        shards: Vec::new(),
        max_rounds: 100,
        limits: SplitLimits::default(),
        weights: BTreeMap::new(),
        young_rounds: 5,
    };
    let ids = |words: &[&str]| -> Result<Vec<u64>, String> {
        words
            .iter()
            .map(|w| w.parse::<u64>().map_err(|e| format!("{w:?}: {e}")))
            .collect()
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        let fail = |what: &str| format!("line {}: {what}: {line:?}", number + 1);
        match words.as_slice() {
            [] => {}
            ["nodes", rest @ ..] => scenario.live.extend(ids(rest).map_err(|e| fail(&e))?),
            ["dead", rest @ ..] => scenario.dead.extend(ids(rest).map_err(|e| fail(&e))?),
            ["factor", n] => scenario.factor = n.parse().map_err(|_| fail("a count"))?,
            ["rounds", n] => scenario.max_rounds = n.parse().map_err(|_| fail("a count"))?,
            ["young", n] => scenario.young_rounds = n.parse().map_err(|_| fail("a count"))?,
            ["limits", "split", size, "load", rate, "sustained", reports, "merge", merge] => {
                let number = |text: &str| text.parse::<u64>().map_err(|_| fail("a number"));
                scenario.limits = SplitLimits {
                    split_size_bytes: number(size)?,
                    split_load_requests_per_second: number(rate)?,
                    split_load_sustained_reports: number(reports)? as u32,
                    merge_size_bytes: number(merge)?,
                };
            }
            [what @ ("size" | "load"), range, value] => {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                let first: ShardId = first.parse().map_err(|_| fail("a shard range"))?;
                let last: ShardId = last.parse().map_err(|_| fail("a shard range"))?;
                let value: u64 = value.parse().map_err(|_| fail("a number"))?;
                for id in first..=last {
                    let weight = scenario.weights.entry(id).or_default();
                    if *what == "size" {
                        weight.bytes = value;
                    } else {
                        weight.requests_per_second = value;
                    }
                }
            }
            ["shards", range, "voters", rest @ ..] => {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                let first: ShardId = first.parse().map_err(|_| fail("a shard range"))?;
                let last: ShardId = last.parse().map_err(|_| fail("a shard range"))?;
                let (voters, leader) = match rest {
                    [voters @ .., "leader", leader] => (voters, Some(*leader)),
                    voters => (voters, None),
                };
                let voters = ids(voters).map_err(|e| fail(&e))?;
                let leader = match leader {
                    Some("-") | None => None,
                    Some(id) => Some(id.parse().map_err(|_| fail("a leader"))?),
                };
                for id in first..=last {
                    scenario.shards.push(ShardState {
                        descriptor: ShardDescriptor {
                            id,
                            start_key: key_text(id * SPAN),
                            end_key: key_text((id + 1) * SPAN),
                            replicas: voters.clone(),
                            ..ShardDescriptor::default()
                        },
                        leader,
                        caught_up_learners: Vec::new(),
                    });
                }
            }
            _ => return Err(fail("not understood")),
        }
    }
    Ok(scenario)
}

/// Runs the scenario's rounds; returns the report (the golden output) or what broke.
fn simulate(mut scenario: Scenario) -> Result<String, String> {
    let mut report = String::new();
    let mut quiet_rounds = 0;
    let mut rested = None;
    for round in 1..=scenario.max_rounds {
        let live = &scenario.live;
        for shard in &mut scenario.shards {
            let voters = &shard.descriptor.replicas;
            if shard.leader.is_none_or(|leader| !live.contains(&leader)) {
                let up = voters.iter().filter(|v| live.contains(v)).count();
                shard.leader = (up * 2 > voters.len())
                    .then(|| voters.iter().copied().filter(|v| live.contains(v)).min())
                    .flatten();
            }
            shard.caught_up_learners = shard.descriptor.learners.clone();
        }
        for weight in scenario.weights.values_mut() {
            let limits = &scenario.limits;
            let hot = limits.split_load_requests_per_second > 0
                && weight.requests_per_second >= limits.split_load_requests_per_second;
            weight.hot_reports = if hot { weight.hot_reports + 1 } else { 0 };
        }
        let model = ClusterModel {
            live: scenario.live.clone(),
            leaving: scenario.dead.clone(),
            shards: scenario.shards.clone(),
            replication_factor: scenario.factor,
            leader_balance: true,
            replica_balance: true,
            quiet: true,
            splits: split_model(&scenario, round),
            ..ClusterModel::default()
        };
        let plan = plan_round(&model);
        if plan.is_empty() {
            quiet_rounds += 1;
            // Longer than the young window: a merge waiting it out is not rest.
            let needed = 3.max(scenario.young_rounds + 1);
            if quiet_rounds == needed {
                rested = Some(round + 1 - needed);
                break;
            }
            continue;
        }
        quiet_rounds = 0;
        report.push_str(&format!(
            "round {round}: repairs {} replication {} leader transfers {} balance moves {} splits {} merges {}\n",
            plan.repairs.len(),
            plan.replication.len(),
            plan.leader_transfers.len(),
            plan.balance_moves.len(),
            plan.splits.len(),
            plan.merges.len(),
        ));
        apply_splits_and_merges(&mut scenario, &plan, round)?;
        let shards = &mut scenario.shards;
        let find = |shards: &mut Vec<ShardState>, id: ShardId| -> Result<usize, String> {
            shards
                .iter()
                .position(|s| s.descriptor.id == id)
                .ok_or_else(|| format!("round {round}: an operator for unknown shard {id}"))
        };
        for moved in plan.repairs.iter().chain(&plan.balance_moves) {
            let index = find(shards, moved.shard)?;
            let shard = &mut shards[index];
            for voter in &mut shard.descriptor.replicas {
                if *voter == moved.from {
                    *voter = moved.to;
                }
            }
            if shard.leader == Some(moved.from) {
                shard.leader = shard
                    .descriptor
                    .replicas
                    .iter()
                    .copied()
                    .filter(|&v| v != moved.to)
                    .min();
            }
        }
        for operator in &plan.replication {
            match *operator {
                Operator::AddLearner { shard, node } => {
                    let index = find(shards, shard)?;
                    shards[index].descriptor.learners.push(node);
                }
                Operator::RemoveLearner { shard, node } => {
                    let index = find(shards, shard)?;
                    shards[index].descriptor.learners.retain(|&l| l != node);
                }
                Operator::Promote { shard, node } => {
                    let index = find(shards, shard)?;
                    let descriptor = &mut shards[index].descriptor;
                    descriptor.learners.retain(|&l| l != node);
                    descriptor.replicas.push(node);
                }
            }
        }
        for transfer in &plan.leader_transfers {
            let index = find(shards, transfer.shard)?;
            shards[index].leader = Some(transfer.to);
        }
        for shard in shards.iter() {
            let members: Vec<NodeId> = shard.descriptor.members().collect();
            let distinct: BTreeSet<&NodeId> = members.iter().collect();
            if distinct.len() != members.len() {
                return Err(format!(
                    "round {round}: shard {} has two replicas on one node: {members:?}",
                    shard.descriptor.id
                ));
            }
        }
    }
    let Some(rested) = rested else {
        return Err(format!(
            "still planning after {} rounds (flapping or too slow):\n{report}",
            scenario.max_rounds
        ));
    };
    report.push_str(&format!("at rest after round {rested}\n"));
    let mut replicas: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for shard in &scenario.shards {
        for voter in shard.descriptor.members() {
            *replicas.entry(voter).or_default() += 1;
        }
        if let Some(leader) = shard.leader {
            *leads.entry(leader).or_default() += 1;
        }
        if shard.leader.is_some() {
            if let Some(dead) = shard
                .descriptor
                .members()
                .find(|m| scenario.dead.contains(m))
            {
                return Err(format!(
                    "shard {} keeps a replica on dead node {dead}",
                    shard.descriptor.id
                ));
            }
        }
    }
    let leaderless = scenario
        .shards
        .iter()
        .filter(|s| s.leader.is_none())
        .count();
    for node in scenario.live.iter().chain(&scenario.dead) {
        report.push_str(&format!(
            "node {node}{}: replicas {} leads {}\n",
            if scenario.dead.contains(node) {
                " (dead)"
            } else {
                ""
            },
            replicas.get(node).copied().unwrap_or(0),
            leads.get(node).copied().unwrap_or(0)
        ));
    }
    report.push_str(&format!("shards without a leader: {leaderless}\n"));
    if !scenario.weights.is_empty() {
        let weights = scenario.weights.values();
        report.push_str(&format!(
            "shards {}, largest {} bytes, busiest {} requests/s\n",
            scenario.shards.len(),
            weights.clone().map(|w| w.bytes).max().unwrap_or(0),
            weights.map(|w| w.requests_per_second).max().unwrap_or(0),
        ));
    }
    Ok(report)
}

/// What the split and merge schedulers see this round: each shard's weight, with its
/// middle key as both split keys (bytes and load are spread evenly over the range).
fn split_model(scenario: &Scenario, round: usize) -> SplitModel {
    let mut model = SplitModel {
        limits: scenario.limits,
        ..SplitModel::default()
    };
    for shard in &scenario.shards {
        let id = shard.descriptor.id;
        let Some(weight) = scenario.weights.get(&id) else {
            continue;
        };
        let (start, end) = (
            key_point(&shard.descriptor.start_key),
            key_point(&shard.descriptor.end_key),
        );
        let middle = (end > start + 1).then(|| key_text(start + (end - start) / 2));
        model.loads.insert(
            id,
            ShardLoad {
                bytes: Some(weight.bytes),
                size_split_key: middle.clone(),
                requests_per_second: weight.requests_per_second,
                hot_reports: weight.hot_reports,
                load_split_key: middle,
            },
        );
        if round < weight.changed_at + scenario.young_rounds {
            model.young.insert(id);
        }
    }
    model
}

/// Applies the round's splits and merges to the scenario's shards and weights.
fn apply_splits_and_merges(
    scenario: &mut Scenario,
    plan: &rshard_placement::round::RoundPlan,
    round: usize,
) -> Result<(), String> {
    for split in &plan.splits {
        let next = scenario
            .shards
            .iter()
            .map(|s| s.descriptor.id)
            .max()
            .unwrap_or(0)
            + 1;
        let Some(index) = scenario
            .shards
            .iter()
            .position(|s| s.descriptor.id == split.shard)
        else {
            return Err(format!(
                "round {round}: a split of unknown shard {}",
                split.shard
            ));
        };
        let mut right = scenario.shards[index].clone();
        right.descriptor.id = next;
        right.descriptor.start_key = split.at.clone();
        scenario.shards[index].descriptor.end_key = split.at.clone();
        scenario.shards.push(right);
        let weight = scenario.weights.entry(split.shard).or_default();
        weight.bytes /= 2;
        weight.requests_per_second /= 2;
        weight.hot_reports = 0;
        weight.changed_at = round;
        let half = *weight;
        scenario.weights.insert(next, half);
    }
    for merge in &plan.merges {
        let Some(right_index) = scenario
            .shards
            .iter()
            .position(|s| s.descriptor.id == merge.right)
        else {
            return Err(format!(
                "round {round}: a merge of unknown shard {}",
                merge.right
            ));
        };
        let right = scenario.shards.remove(right_index);
        let Some(left) = scenario
            .shards
            .iter_mut()
            .find(|s| s.descriptor.id == merge.left)
        else {
            return Err(format!(
                "round {round}: a merge into unknown shard {}",
                merge.left
            ));
        };
        if left.descriptor.end_key != right.descriptor.start_key {
            return Err(format!(
                "round {round}: shards {} and {} are not neighbours",
                merge.left, merge.right
            ));
        }
        left.descriptor.end_key = right.descriptor.end_key;
        let gone = scenario.weights.remove(&merge.right).unwrap_or_default();
        let weight = scenario.weights.entry(merge.left).or_default();
        weight.bytes += gone.bytes;
        weight.requests_per_second += gone.requests_per_second;
        weight.hot_reports = 0;
        weight.changed_at = round;
    }
    Ok(())
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "scenario"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_scenario_rests_and_matches_its_golden_file() {
    let update = std::env::var("RSHARD_UPDATE_GOLDEN").is_ok();
    let all = scenarios();
    assert!(all.len() >= 4, "scenarios missing: {all:?}");
    let mut failures = Vec::new();
    for path in all {
        let text = std::fs::read_to_string(&path).expect("a readable scenario");
        let report = parse(&text).and_then(simulate);
        let golden = path.with_extension("expected");
        match report {
            Err(error) => failures.push(format!("{}: {error}", path.display())),
            Ok(report) if update => {
                std::fs::write(&golden, &report).expect("the golden file is written")
            }
            Ok(report) => {
                let expected = std::fs::read_to_string(&golden).unwrap_or_default();
                if expected != report {
                    failures.push(format!(
                        "{}: differs from {}\n--- expected\n{expected}--- got\n{report}",
                        path.display(),
                        golden.display()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(RSHARD_UPDATE_GOLDEN=1 cargo test -p rshard-placement --test simulator rewrites \
         the golden files)",
        failures.join("\n")
    );
}

#[test]
fn a_scenario_that_never_rests_is_reported() {
    // Planting a flap: a scenario whose only rounds are capped below what it needs.
    let scenario =
        parse("nodes 1 2 3 4 5\nshards 1-30 voters 1 2 3 leader 1\nrounds 3\n").expect("parses");
    let error = simulate(scenario).expect_err("three rounds cannot balance this");
    assert!(error.contains("still planning after 3 rounds"), "{error}");
    assert!(parse("nodes one\n").is_err());
    assert!(parse("shard 1 voters 1\n").is_err());
}

#[test]
fn a_merge_size_over_the_split_size_thrashes_and_is_reported() {
    // What the node's config check forbids: merged shards big enough to split again. The
    // halves of a split then merge back once they are no longer young, for ever.
    let scenario = parse(
        "nodes 1 2 3\nshards 1 voters 1 2 3 leader 1\n\
         limits split 1000 load 0 sustained 1 merge 3000\nsize 1 2500\nrounds 60\n",
    )
    .expect("parses");
    let error = simulate(scenario).expect_err("split and merge undo each other");
    assert!(error.contains("still planning after 60 rounds"), "{error}");
    assert!(error.contains("merges 2"), "{error}");
}
