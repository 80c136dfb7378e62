//! Proposals per second through one node's driver over fjall with fsync on: 64 single-replica
//! shards, bursts of puts answered only after the sync that makes them durable.
//!
//! `cargo bench -p rshard-server --bench driver`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rshard_common::shard::{numbered_shard_prefix, numbered_shards, Epoch};
use rshard_server::kv::{KvCommand, KvOp};
use rshard_server::multiraft::{DriverConfig, Input, MultiRaft, QueueTransport, Request};
use rshard_server::storage::NodeStore;

const SHARDS: u64 = 64;

fn node(dir: &std::path::Path) -> MultiRaft<QueueTransport> {
    let store = NodeStore::open(dir).expect("store opens");
    let mut driver =
        MultiRaft::open(DriverConfig::new(1), store, QueueTransport::new(1)).expect("driver");
    for descriptor in numbered_shards(SHARDS, &[1]) {
        driver.offer(Input::CreateShard(descriptor)).expect("inbox");
    }
    while (1..=SHARDS).any(|shard| !driver.is_leader(shard)) {
        driver.offer(Input::Tick).expect("inbox");
        driver.iterate();
    }
    driver
}

/// Offers `count` puts spread over the shards and iterates until all are answered.
fn burst(driver: &mut MultiRaft<QueueTransport>, count: u64, next_id: &mut u64) {
    for _ in 0..count {
        *next_id += 1;
        let shard = 1 + *next_id % SHARDS;
        let command = KvCommand {
            shard,
            epoch: Epoch::default(),
            ops: vec![KvOp::Put {
                key: [
                    numbered_shard_prefix(shard),
                    (*next_id % 4096).to_be_bytes().to_vec(),
                ]
                .concat(),
                value: vec![7; 100],
            }],
        };
        let input = Input::Request {
            id: *next_id,
            request: Request::Write(command),
        };
        driver.offer(input).expect("inbox");
    }
    let mut answered = 0;
    while answered < count {
        answered += driver.iterate().len() as u64;
    }
}

fn proposals(c: &mut Criterion) {
    let mut group = c.benchmark_group("driver_fjall_fsync");
    for count in [1_u64, 64, 1024] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut driver = node(dir.path());
        let mut next_id = 0;
        group.throughput(Throughput::Elements(count));
        group.bench_with_input(
            BenchmarkId::new("puts_per_burst", count),
            &count,
            |b, &n| b.iter(|| burst(&mut driver, n, &mut next_id)),
        );
    }
    group.finish();
}

criterion_group!(benches, proposals);
criterion_main!(benches);
