//! Crash recovery against the real fjall store: a child process runs a node that acknowledges
//! puts; it is killed with SIGKILL at a random point, restarted on the same directory, and
//! every write it acknowledged must be there, with the value it acknowledged. Five rounds per
//! run; `RSHARD_CRASH_ROUNDS=N` runs more, `RSHARD_CRASH_SEED=S` replays a run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rshard_common::rng::SeededRng;
use rshard_server::kv::read_committed;
use rshard_server::storage::NodeStore;

/// The child's key layout (`crash_workload.rs`).
fn key(shard: u64, sequence: u64) -> Vec<u8> {
    let mut key = rshard_common::shard::numbered_shard_prefix(shard);
    key.extend_from_slice(format!("{sequence:010}").as_bytes());
    key
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs the child until it has acknowledged `acks` writes (or 60 s pass), then kills it.
fn run_and_kill(dir: &std::path::Path, first: u64, acks: usize) -> Vec<(u64, u64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_workload"))
        .arg(dir)
        .arg(first.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("readable child output");
        let mut words = line.split_whitespace().skip(1);
        let (Some(shard), Some(sequence)) = (words.next(), words.next()) else {
            panic!("unexpected child output: {line}");
        };
        let parsed = (
            shard.parse().expect("shard"),
            sequence.parse().expect("seq"),
        );
        acknowledged.push(parsed);
        if acknowledged.len() >= acks || Instant::now() > deadline {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    acknowledged
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let seed = env_u64("RSHARD_CRASH_SEED").unwrap_or(0xc4a5);
    let rounds = env_u64("RSHARD_CRASH_ROUNDS").unwrap_or(5);
    eprintln!(
        "crash recovery seed {seed}; replay: RSHARD_CRASH_SEED={seed} cargo test -p rshard-server --test crash_recovery"
    );
    let mut rng = SeededRng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = Vec::new();
    let mut next_sequence = 0;
    for round in 0..rounds {
        let acks = 20 + rng.below(300) as usize;
        let acknowledged = run_and_kill(dir.path(), next_sequence, acks);
        assert!(
            !acknowledged.is_empty(),
            "round {round}: the restarted node made progress"
        );
        next_sequence = acknowledged.iter().map(|a| a.1).max().unwrap_or(0) + 1_000_000;
        all.extend(acknowledged);
        // The store reopens after the kill, and every acknowledged write is in it.
        let store = NodeStore::open(dir.path()).expect("the store reopens after SIGKILL");
        for &(shard, sequence) in &all {
            let value = read_committed(&store, &key(shard, sequence)).expect("readable");
            assert_eq!(
                value,
                Some(sequence.to_be_bytes().to_vec()),
                "round {round}: acknowledged write {sequence} of shard {shard} survives (seed {seed})"
            );
        }
        eprintln!("round {round}: {} acknowledged writes survive", all.len());
    }
}
