//! Cost of the Raft core alone: a 3-voter group driven in memory (MemStorage, instant
//! delivery), measured per committed-and-applied entry.
//!
//! - `unbatched`: propose one entry, run the group until every replica applied it.
//! - `batched/N`: propose N entries in one `propose_batch`, then run the group until all
//!   applied them.
//!
//! Run: `cargo bench -p rshard-raft --bench core`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rshard_raft::{ConfState, MemStorage, Message, Raft, Role};

/// A minimal in-memory group: no history kept, so memory stays flat however long it runs.
struct Group {
    replicas: Vec<Raft<MemStorage>>,
    in_flight: VecDeque<Message>,
}

impl Group {
    fn new() -> Self {
        let conf = ConfState::with_voters([1, 2, 3]);
        let replicas = (1..=3)
            .map(|id| {
                let storage = MemStorage::bootstrap(conf.clone(), Vec::new());
                Raft::new(support::test_config(id), storage).expect("valid config")
            })
            .collect();
        let mut group = Group {
            replicas,
            in_flight: VecDeque::new(),
        };
        group.replicas[0].campaign().expect("voter");
        group.run_until_quiet();
        assert_eq!(group.replicas[0].role(), Role::Leader);
        group
    }

    fn run_until_quiet(&mut self) {
        loop {
            let mut busy = false;
            for replica in &mut self.replicas {
                if replica.has_ready() {
                    busy = true;
                    let handled = support::handle_ready(replica);
                    self.in_flight.extend(handled.messages);
                }
            }
            while let Some(message) = self.in_flight.pop_front() {
                busy = true;
                let to = (message.to - 1) as usize;
                self.replicas[to].step(message).expect("step");
            }
            if !busy {
                return;
            }
        }
    }

    fn propose_and_commit(&mut self, entries: usize, payload: &[u8]) {
        if entries == 1 {
            self.replicas[0]
                .propose(payload.to_vec())
                .expect("leader accepts");
        } else {
            let batch = vec![payload.to_vec(); entries];
            self.replicas[0]
                .propose_batch(batch)
                .expect("leader accepts");
        }
        self.run_until_quiet();
    }

    /// Keeps the in-memory logs short between measurements.
    fn compact(&mut self) {
        for replica in &mut self.replicas {
            let applied = replica.applied_index();
            let conf = replica.conf_state().clone();
            let storage = replica.storage_mut();
            storage
                .create_snapshot(applied, conf, Vec::new())
                .expect("applied is in the log");
            storage.compact(applied).expect("covered by the snapshot");
        }
    }
}

fn commit_cost(c: &mut Criterion) {
    let payload = [7u8; 128];
    let mut group = c.benchmark_group("raft_core_commit_128B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("unbatched", |b| {
        let mut cluster = Group::new();
        let mut rounds = 0u64;
        b.iter(|| {
            cluster.propose_and_commit(1, &payload);
            rounds += 1;
            if rounds.is_multiple_of(1024) {
                cluster.compact();
            }
        });
    });
    for batch in [16usize, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batched/{batch}"), |b| {
            b.iter_batched_ref(
                Group::new,
                |cluster| cluster.propose_and_commit(batch, &payload),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, commit_cost);
criterion_main!(benches);
