//! Snapshot transfer and install, one property per deterministic scenario (no random
//! faults): a follower cut off while the leader writes and compacts can only catch up by a
//! snapshot, which must travel in bounded chunks, install in bounded steps, survive a crash
//! at any step of the install, and leave no staging behind when a crash cuts the transfer.

mod support;

use rshard_server::kv::KvOp;
use rshard_server::multiraft::DriverConfig;
use support::{key, Faults, NodeId, World, STEPS_PER_TICK};

const SEED: u64 = 11;
const SHARD: u64 = 1;
const CHUNK_BYTES: usize = 200;
/// Keys the leader holds when the follower comes back; the first `DELETED` are gone.
const KEYS: u64 = 300;
const DELETED: u64 = 10;

fn value(index: u64) -> Vec<u8> {
    format!("value-{index:04}").into_bytes()
}

/// Keeps offering `ops` to the leader until its replica holds `expected` keys.
fn write_until(world: &mut World, ops: &[KvOp], leader: NodeId, expected: usize) {
    for _ in 0..50 {
        for chunk in ops.chunks(20) {
            for op in chunk {
                world.write_to_leader(SHARD, op.clone());
            }
            world.run(STEPS_PER_TICK);
        }
        if world.run_until(200, |w| w.shard_data(leader, SHARD).len() == expected) {
            return;
        }
    }
    panic!("the leader never held {expected} keys");
}

/// Three nodes, one shard. A follower holds the first keys, is cut off while the leader
/// writes the rest, deletes the first ones and compacts its log, and is then healed.
/// Returns the world and the follower.
fn lagging_follower() -> (World, NodeId) {
    let mut world = World::with_config(SEED, 3, 1, 0, Faults::none(), |config| {
        // Writes taken together share an entry, so a short log is a few entries.
        config.max_log_entries = 4;
        config.snapshot_chunk_bytes = CHUNK_BYTES;
        config.snapshot_apply_bytes_per_iteration = 1_000;
        config.snapshot_chunks_in_flight = 2;
    });
    assert!(world.run_until(400 * STEPS_PER_TICK, |w| w.leaders().contains_key(&SHARD)));
    let leader = world.leaders()[&SHARD];
    let follower = (1..=3).find(|&n| n != leader).expect("three nodes");
    let put = |i: u64| KvOp::Put {
        key: key(SHARD, i),
        value: value(i),
    };
    let first: Vec<KvOp> = (0..DELETED).map(put).collect();
    write_until(&mut world, &first, leader, DELETED as usize);
    assert!(world.run_until(400, |w| w.shard_data(follower, SHARD).len()
        == DELETED as usize));

    world.isolate(follower, u64::MAX / 2);
    let rest: Vec<KvOp> = (DELETED..KEYS).map(put).collect();
    write_until(&mut world, &rest, leader, KEYS as usize);
    let deletes: Vec<KvOp> = (0..DELETED)
        .map(|i| KvOp::Delete { key: key(SHARD, i) })
        .collect();
    write_until(&mut world, &deletes, leader, (KEYS - DELETED) as usize);
    let compacted = world
        .driver(leader)
        .is_some_and(|d| d.counters().compactions > 0);
    assert!(compacted, "the leader compacted its log");
    world.heal();
    (world, follower)
}

/// Runs until the follower holds what the leader holds at the same applied index.
fn converge(world: &mut World, follower: NodeId) {
    let caught_up = world.run_until(4_000, |w| {
        let Some(leader) = w.leaders().get(&SHARD).copied() else {
            return false;
        };
        let applied = |node| w.driver(node).and_then(|d| d.applied_index(SHARD));
        applied(leader) == applied(follower)
            && w.shard_data(leader, SHARD) == w.shard_data(follower, SHARD)
    });
    assert!(caught_up, "the follower never caught up");
    let data = world.shard_data(follower, SHARD);
    assert_eq!(data.len(), (KEYS - DELETED) as usize);
    assert_eq!(data[0], (key(SHARD, DELETED), value(DELETED)));
    let driver = world.driver(follower).expect("up");
    assert!(!driver.is_installing(SHARD));
    assert_eq!(driver.store().stagings(), Ok(vec![]), "no staging left");
}

fn installing(world: &World, node: NodeId) -> bool {
    world.driver(node).is_some_and(|d| d.is_installing(SHARD))
}

/// Steps from the start of the follower's install to its end (one iteration per step while
/// installing), in the undisturbed run.
fn install_steps() -> u64 {
    let (mut world, follower) = lagging_follower();
    assert!(world.run_until(2_000, |w| installing(w, follower)));
    let mut steps = 0;
    while installing(&world, follower) {
        world.run_step();
        steps += 1;
        assert!(steps < 10_000, "the install never ends");
    }
    steps
}

#[test]
fn a_lagging_follower_catches_up_by_a_snapshot_sent_in_bounded_chunks_and_installed_in_steps() {
    let (mut world, follower) = lagging_follower();
    let steps = install_steps();
    converge(&mut world, follower);

    let chunks = &world.snapshot_chunk_bytes;
    let largest = chunks.iter().copied().max().unwrap_or(0);
    eprintln!(
        "{} chunks of at most {largest} bytes (limit {CHUNK_BYTES}); install took {steps} iterations",
        chunks.len()
    );
    assert!(largest <= CHUNK_BYTES, "a chunk of {largest} bytes");
    let shard_bytes: usize = world
        .shard_data(follower, SHARD)
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert!(
        chunks.len() >= shard_bytes / CHUNK_BYTES,
        "{} chunks for {shard_bytes} bytes",
        chunks.len()
    );
    assert!(
        steps >= 3,
        "the install took {steps} iterations: not bounded"
    );
    let driver = world.driver(follower).expect("up");
    assert!(driver.counters().snapshots_installed >= 1);
    assert!(driver.counters().snapshot_chunks_received as usize >= shard_bytes / CHUNK_BYTES);
}

#[test]
fn a_crash_at_any_step_of_an_install_resumes_it_and_loses_nothing() {
    let steps = install_steps();
    let mut resumed = 0;
    for crash_after in 0..steps {
        let (mut world, follower) = lagging_follower();
        assert!(world.run_until(2_000, |w| installing(w, follower)));
        world.run(crash_after);
        if !installing(&world, follower) {
            continue;
        }
        world.crash_and_reopen((follower - 1) as usize);
        assert!(
            installing(&world, follower),
            "crash after {crash_after} install steps: the reopened node forgot its install"
        );
        resumed += 1;
        converge(&mut world, follower);
    }
    eprintln!("crashed at {resumed} of {steps} install steps; every install resumed");
    assert!(
        resumed >= 3,
        "only {resumed} crashes landed inside an install"
    );
}

#[test]
fn a_transfer_cut_by_a_crash_leaves_staging_that_is_discarded() {
    let (mut world, follower) = lagging_follower();
    let staged = world.run_until(2_000, |w| {
        w.driver(follower)
            .is_some_and(|d| d.store().stagings().is_ok_and(|s| !s.is_empty()))
            && !installing(w, follower)
    });
    assert!(staged, "the follower never staged a chunk");
    world.crash_and_reopen((follower - 1) as usize);
    let driver = world.driver(follower).expect("reopened");
    assert_eq!(
        driver.store().stagings().map(|s| s.len()),
        Ok(1),
        "the cut transfer's staging survives the crash"
    );
    converge(&mut world, follower);
    let discarded = world
        .driver(follower)
        .map_or(0, |d| d.counters().stagings_discarded);
    assert!(discarded >= 1, "the orphaned staging was discarded");
}

/// A voter that lost its state is never recreated by a snapshot (only a learner is), so
/// every snapshot the leader starts toward it is refused. The leader tries again after a
/// backoff, not at every write: each attempt reads a snapshot view and its first chunk.
#[test]
fn a_refused_snapshot_is_retried_after_a_backoff_not_at_every_write() {
    let mut world = World::with_config(SEED, 3, 1, 0, Faults::none(), |config| {
        config.max_log_entries = 4;
    });
    assert!(world.run_until(400 * STEPS_PER_TICK, |w| w.leaders().contains_key(&SHARD)));
    let leader = world.leaders()[&SHARD];
    let wiped = (1..=3).find(|&n| n != leader).expect("three nodes");
    let ops: Vec<KvOp> = (0..40)
        .map(|i| KvOp::Put {
            key: key(SHARD, i),
            value: value(i),
        })
        .collect();
    write_until(&mut world, &ops, leader, 40);
    world.wipe_and_reopen((wiped - 1) as usize);

    let started = |w: &World| {
        w.driver(leader)
            .map_or(0, |d| d.counters().snapshot_sends_started)
    };
    let before = started(&world);
    const TICKS: u64 = 200;
    for i in 0..TICKS * STEPS_PER_TICK {
        world.write_to_leader(
            SHARD,
            KvOp::Put {
                key: key(SHARD, i % 40),
                value: value(i),
            },
        );
        world.run(1);
    }
    let attempts = started(&world) - before;
    let backoff = u64::from(DriverConfig::new(1).snapshot_refusal_backoff_ticks);
    assert!(attempts > 0, "the leader never tried the wiped voter");
    assert!(
        attempts <= TICKS / backoff + 2,
        "{attempts} snapshot attempts in {TICKS} ticks with a backoff of {backoff} ticks"
    );
    assert!(
        world
            .driver(wiped)
            .is_some_and(|d| d.descriptor(SHARD).is_none()),
        "the wiped voter was not recreated by a snapshot"
    );
}
