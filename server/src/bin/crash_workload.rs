//! A child process for the crash-recovery test: one node over a real fjall store in the
//! given directory, eight single-replica shards, and a stream of puts. It prints
//! `ack <shard> <sequence>` the moment a put is answered as applied, and runs until killed.
//!
//! Usage: `crash_workload <store dir> <first sequence>`

use std::io::Write;

use rshard_common::shard::{numbered_shard_prefix, numbered_shards, Epoch};
use rshard_server::kv::{KvCommand, KvOp};
use rshard_server::multiraft::{
    DriverConfig, Input, MultiRaft, QueueTransport, Request, RequestId, Response,
};
use rshard_server::storage::NodeStore;

const SHARDS: u64 = 8;
const IN_FLIGHT_PER_SHARD: u64 = 4;

pub fn key(shard: u64, sequence: u64) -> Vec<u8> {
    let mut key = numbered_shard_prefix(shard);
    key.extend_from_slice(format!("{sequence:010}").as_bytes());
    key
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: crash_workload <dir> <first sequence>")?;
    let mut sequence: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("the first sequence must be a number")?;
    let store = NodeStore::open(std::path::Path::new(&dir)).map_err(|e| e.to_string())?;
    let mut driver = MultiRaft::open(DriverConfig::new(1), store, QueueTransport::new(1))
        .map_err(|e| e.to_string())?;
    for descriptor in numbered_shards(SHARDS, &[1]) {
        driver
            .offer(Input::CreateShard(descriptor))
            .map_err(|e| e.to_string())?;
    }
    let mut in_flight: std::collections::BTreeMap<RequestId, (u64, u64)> = Default::default();
    let mut stdout = std::io::stdout().lock();
    loop {
        driver.offer(Input::Tick).map_err(|e| e.to_string())?;
        for shard in 1..=SHARDS {
            let waiting = in_flight.values().filter(|(s, _)| *s == shard).count() as u64;
            if driver.is_leader(shard) && waiting < IN_FLIGHT_PER_SHARD {
                sequence += 1;
                let command = KvCommand {
                    shard,
                    epoch: Epoch::default(),
                    ops: vec![KvOp::Put {
                        key: key(shard, sequence),
                        value: sequence.to_be_bytes().to_vec(),
                    }],
                };
                in_flight.insert(sequence, (shard, sequence));
                let input = Input::Request {
                    id: sequence,
                    request: Request::Write(command),
                };
                driver.offer(input).map_err(|e| e.to_string())?;
            }
        }
        for (id, answer) in driver.iterate() {
            let Some((shard, sequence)) = in_flight.remove(&id) else {
                continue;
            };
            if let Ok(Response::Written(_)) = answer {
                writeln!(stdout, "ack {shard} {sequence}").map_err(|e| e.to_string())?;
                stdout.flush().map_err(|e| e.to_string())?;
            }
        }
        if let Some(reason) = driver.stopped() {
            return Err(format!("the node stopped: {reason}"));
        }
    }
}
