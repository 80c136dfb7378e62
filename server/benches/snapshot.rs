//! A shard snapshot end to end over fjall with fsync on. Each iteration, nodes 1 and 2 load a
//! new 8 MiB shard (replicas 1, 2 and 3) through Raft, compacting its log, untimed; then node
//! 3 creates its replica, which can only catch up by a snapshot. Timed from then until node 3
//! has installed the shard and applied the leader's index: streaming from the leader's view
//! in 1 MiB chunks, staging with a sync per iteration, and the bounded install steps.
//!
//! `cargo bench -p rshard-server --bench snapshot`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use rshard_common::shard::{numbered_shard_prefix, numbered_shards, Epoch, ShardDescriptor};
use rshard_server::kv::{KvCommand, KvOp};
use rshard_server::multiraft::{DriverConfig, Input, MultiRaft, QueueTransport, Request};
use rshard_server::storage::NodeStore;

const KEYS: u64 = 8 * 1024;
const VALUE_BYTES: usize = 1024;
const OPS_PER_COMMAND: u64 = 64;

type Driver = MultiRaft<QueueTransport>;

fn driver(node: u64, dir: &std::path::Path) -> Driver {
    let store = NodeStore::open(dir).expect("store opens");
    let mut config = DriverConfig::new(node);
    config.max_log_entries = 64;
    MultiRaft::open(config, store, QueueTransport::new(1024)).expect("driver")
}

/// Iterates every node and carries their frames and snapshot messages; ticks when all are
/// idle.
fn pump(nodes: &mut [&mut Driver]) {
    let mut idle = true;
    for index in 0..nodes.len() {
        if nodes[index].has_work() {
            idle = false;
            nodes[index].iterate();
        }
        let frames = nodes[index].transport_mut().drain();
        let snapshots = nodes[index].transport_mut().drain_snapshots();
        let deliver = |nodes: &mut [&mut Driver], to: u64, input: Input| {
            if let Some(target) = nodes.iter_mut().find(|d| d.node() == to) {
                let _full = target.offer(input);
            }
        };
        for frame in frames {
            deliver(nodes, frame.to, Input::Frame(frame));
        }
        for message in snapshots {
            deliver(nodes, message.to(), Input::Snapshot(message));
        }
    }
    if idle {
        for node in nodes.iter_mut() {
            let _full = node.offer(Input::Tick);
        }
    }
}

/// Creates `descriptor`'s shard on nodes 1 and 2 and fills it through its leader.
fn leader_with_data(one: &mut Driver, two: &mut Driver, descriptor: &ShardDescriptor) {
    let shard = descriptor.id;
    for node in [&mut *one, &mut *two] {
        node.offer(Input::CreateShard(descriptor.clone()))
            .expect("inbox");
    }
    while !one.is_leader(shard) && !two.is_leader(shard) {
        pump(&mut [one, two]);
    }
    for (id, first) in (0..KEYS).step_by(OPS_PER_COMMAND as usize).enumerate() {
        let ops = (first..first + OPS_PER_COMMAND)
            .map(|i| KvOp::Put {
                key: [numbered_shard_prefix(shard), i.to_be_bytes().to_vec()].concat(),
                value: vec![(i % 251) as u8; VALUE_BYTES],
            })
            .collect();
        let request = Request::Write(KvCommand {
            shard,
            epoch: Epoch::default(),
            ops,
        });
        let leader = if one.is_leader(shard) {
            &mut *one
        } else {
            &mut *two
        };
        leader
            .offer(Input::Request {
                id: id as u64,
                request,
            })
            .expect("inbox");
        for _ in 0..4 {
            pump(&mut [one, two]);
        }
    }
    while one.applied_index(shard) != two.applied_index(shard) || one.has_work() || two.has_work() {
        pump(&mut [one, two]);
    }
}

fn snapshot(c: &mut Criterion) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut one = driver(1, dirs[0].path());
    let mut two = driver(2, dirs[1].path());
    let mut three = driver(3, dirs[2].path());
    let mut shards = numbered_shards(1_000, &[1, 2, 3]).into_iter();
    let mut group = c.benchmark_group("snapshot_fjall_fsync");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(KEYS * VALUE_BYTES as u64));
    group.bench_function("install_8MiB_shard_on_a_new_replica", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let descriptor = shards.next().expect("enough shards");
                let shard = descriptor.id;
                leader_with_data(&mut one, &mut two, &descriptor);
                let installed = three.counters().snapshots_installed;
                let started = Instant::now();
                three.offer(Input::CreateShard(descriptor)).expect("inbox");
                while three.counters().snapshots_installed == installed
                    || three.applied_index(shard) < one.applied_index(shard)
                {
                    pump(&mut [&mut one, &mut two, &mut three]);
                }
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
