//! The size and load of the shards this node leads, measured here for placement's split
//! and merge schedulers (see `rshard_placement::splits`).
//!
//! - Load: every answered request of a shard counts, and a sample of their keys is kept
//!   (every request until [`MAX_LOAD_SAMPLES`], then every second one, then every fourth:
//!   a systematic sample that stays spread over the whole interval). Each report takes the
//!   interval's rate and the sampled key that halves it, and starts a new interval.
//! - Size: a shard's range is scanned (bytes of keys and values, key count, and the key
//!   that halves the bytes) when it has no size yet, when its range changed, or when
//!   [`SizeCheck::rescan_after_written_bytes`] were written to it since its last scan. One
//!   scan runs at a time, on a blocking thread, over a consistent view of the store; idle
//!   shards are never scanned again.
//!
//! Memory is bounded per shard (the sample and the scan's checkpoints have fixed caps) and
//! only shards led here are kept: [`ShardStatsTracker::retain_led`] drops the rest.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::Instant;

use rshard_common::api::ShardStats;
use rshard_common::shard::{ShardDescriptor, ShardId};

use crate::storage::{KeyRange, NodeStore, ScanOrder, Space, StoreError};

/// Keys of requests kept per shard and interval to find a load split key.
pub const MAX_LOAD_SAMPLES: usize = 256;
/// Points of a size scan at which it remembers the key (to find the middle by bytes).
const MAX_SIZE_CHECKPOINTS: usize = 256;
/// A side of a load split must hold at least this share of the sample (1/4).
const MIN_LOAD_SIDE_QUARTERS: usize = 1;

/// When shards are scanned for their size.
#[derive(Clone, Copy, Debug)]
pub struct SizeCheck {
    /// A shard is scanned again once this many bytes were written to it since its last
    /// scan (an eighth of the split size: a shard outgrows the limit by at most that much
    /// before placement hears of it).
    pub rescan_after_written_bytes: u64,
}

#[derive(Debug, Default)]
struct ShardLoad {
    interval_start: Option<Instant>,
    requests: u64,
    /// Every `stride`-th request's key, at most [`MAX_LOAD_SAMPLES`].
    samples: Vec<Vec<u8>>,
    stride: u64,
    written_bytes_since_scan: u64,
    size: Option<MeasuredSize>,
}

/// The result of one scan of a shard's range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasuredSize {
    /// The epoch version the range was scanned at.
    pub version: u64,
    pub bytes: u64,
    pub keys: u64,
    pub middle_key: Option<Vec<u8>>,
}

/// Per-shard counters, shared by the API (which counts) and the report (which takes).
#[derive(Debug, Default)]
pub struct ShardStatsTracker {
    shards: Mutex<HashMap<ShardId, ShardLoad>>,
}

impl ShardStatsTracker {
    /// Counts one answered request of `shard` on `key`, which wrote `written_bytes`.
    pub fn record(&self, shard: ShardId, key: &[u8], written_bytes: u64) {
        let Ok(mut shards) = self.shards.lock() else {
            return;
        };
        let load = shards.entry(shard).or_default();
        if load.stride == 0 {
            load.stride = 1;
        }
        load.requests += 1;
        load.written_bytes_since_scan = load.written_bytes_since_scan.saturating_add(written_bytes);
        if load.requests % load.stride == 0 {
            if load.samples.len() >= MAX_LOAD_SAMPLES {
                // Keep every second sample and take every second request from now on.
                let mut index = 0;
                load.samples.retain(|_| {
                    index += 1;
                    index % 2 == 0
                });
                load.stride *= 2;
            }
            load.samples.push(key.to_vec());
        }
    }

    /// The stats of each shard in `led` for a report, starting a new load interval for
    /// each. `now` ends the interval.
    pub fn take(&self, led: &[ShardDescriptor], now: Instant) -> Vec<ShardStats> {
        let Ok(mut shards) = self.shards.lock() else {
            return Vec::new();
        };
        led.iter()
            .map(|descriptor| {
                let load = shards.entry(descriptor.id).or_default();
                let started = load.interval_start.replace(now);
                let seconds = started.map_or(0.0, |start| (now - start).as_secs_f64());
                let requests_per_second = if seconds > 0.0 {
                    (load.requests as f64 / seconds).round() as u64
                } else {
                    0
                };
                let load_split_key = load_split_key(descriptor, &mut load.samples);
                load.requests = 0;
                load.samples.clear();
                load.stride = 1;
                let size = load
                    .size
                    .as_ref()
                    .filter(|size| size.version == descriptor.epoch.version);
                ShardStats {
                    shard: descriptor.id,
                    version: descriptor.epoch.version,
                    bytes: size.map(|s| s.bytes),
                    keys: size.map(|s| s.keys),
                    size_split_key: size
                        .and_then(|s| s.middle_key.clone())
                        .filter(|key| strictly_inside(descriptor, key)),
                    requests_per_second,
                    load_split_key,
                }
            })
            .collect()
    }

    /// Forgets shards not led here any more.
    pub fn retain_led(&self, led: &[ShardDescriptor]) {
        if let Ok(mut shards) = self.shards.lock() {
            shards.retain(|shard, _| led.iter().any(|d| d.id == *shard));
        }
    }

    /// The shard of `led` most in need of a size scan, if any needs one.
    pub fn next_to_scan(
        &self,
        led: &[ShardDescriptor],
        check: SizeCheck,
    ) -> Option<ShardDescriptor> {
        let shards = self.shards.lock().ok()?;
        led.iter()
            .filter_map(|descriptor| {
                let load = shards.get(&descriptor.id);
                let written = load.map_or(0, |l| l.written_bytes_since_scan);
                let stale = load
                    .and_then(|l| l.size.as_ref())
                    .is_none_or(|size| size.version != descriptor.epoch.version);
                (stale || written >= check.rescan_after_written_bytes)
                    // Never scanned first, then the most written.
                    .then_some((!stale, std::cmp::Reverse(written), descriptor))
            })
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, _, descriptor)| descriptor.clone())
    }

    /// Stores a scan's result; the bytes written since it started count towards the next.
    pub fn scanned(&self, shard: ShardId, size: MeasuredSize, written_before_scan: u64) {
        if let Ok(mut shards) = self.shards.lock() {
            let load = shards.entry(shard).or_default();
            load.written_bytes_since_scan = load
                .written_bytes_since_scan
                .saturating_sub(written_before_scan);
            load.size = Some(size);
        }
    }

    /// Bytes written to `shard` since its last scan.
    pub fn written_since_scan(&self, shard: ShardId) -> u64 {
        self.shards
            .lock()
            .ok()
            .and_then(|shards| shards.get(&shard).map(|l| l.written_bytes_since_scan))
            .unwrap_or(0)
    }
}

/// True if a split at `key` leaves both sides of `descriptor` non-empty ranges.
fn strictly_inside(descriptor: &ShardDescriptor, key: &[u8]) -> bool {
    key > descriptor.start_key.as_slice() && descriptor.contains(key)
}

/// The sampled key that halves the sample, if both sides hold a quarter of it or more and
/// the key splits the shard's range.
fn load_split_key(descriptor: &ShardDescriptor, samples: &mut [Vec<u8>]) -> Option<Vec<u8>> {
    if samples.len() < 16 {
        return None;
    }
    samples.sort_unstable();
    let total = samples.len();
    let middle = &samples[total / 2];
    // Requests on the middle key itself go right: the split key is the right side's first.
    let left = samples.partition_point(|key| key < middle);
    let quarter = total * MIN_LOAD_SIDE_QUARTERS / 4;
    (left >= quarter && total - left >= quarter && strictly_inside(descriptor, middle))
        .then(|| middle.clone())
}

/// Scans `descriptor`'s range in `store`: bytes of keys and values, key count, and the key
/// with about half the bytes before it.
pub fn measure(
    store: &NodeStore,
    descriptor: &ShardDescriptor,
) -> Result<MeasuredSize, StoreError> {
    let view = store.view()?;
    let end = (!descriptor.end_key.is_empty()).then_some(descriptor.end_key.as_slice());
    let range = KeyRange {
        start: &descriptor.start_key,
        end,
    };
    let (mut bytes, mut keys) = (0u64, 0u64);
    // (bytes before the key, key), every `step` bytes; thinned by half when full.
    let mut checkpoints: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut step = 1024u64;
    let mut next_checkpoint = 0u64;
    view.scan(
        Space::Data,
        range,
        ScanOrder::Ascending,
        &mut |key, value| {
            if bytes >= next_checkpoint {
                if checkpoints.len() >= MAX_SIZE_CHECKPOINTS {
                    step *= 2;
                    checkpoints.retain(|before, _| before % step == 0 || *before == 0);
                }
                checkpoints.insert(bytes, key.to_vec());
                next_checkpoint = (bytes / step + 1) * step;
            }
            bytes += (key.len() + value.len()) as u64;
            keys += 1;
            ControlFlow::Continue(())
        },
    )?;
    // The checkpoint nearest the half (they are at most `step` bytes apart).
    let half = bytes / 2;
    let mut candidates: Vec<(u64, &Vec<u8>)> = checkpoints
        .iter()
        .filter(|(_, key)| strictly_inside(descriptor, key))
        .map(|(before, key)| (before.abs_diff(half), key))
        .collect();
    candidates.sort_by_key(|(distance, _)| *distance);
    let middle_key = candidates.first().map(|(_, key)| (*key).clone());
    Ok(MeasuredSize {
        version: descriptor.epoch.version,
        bytes,
        keys,
        middle_key,
    })
}

/// How often the size check looks for a shard to scan when it found none.
const SIZE_CHECK_IDLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Scans, one at a time for ever, the shard led here most in need of a size scan (see the
/// module doc).
pub async fn run_size_checks(context: std::sync::Arc<super::NodeContext>) {
    let check = SizeCheck {
        rescan_after_written_bytes: (context.config.split_size_bytes / 8).max(1),
    };
    loop {
        let led: Vec<ShardDescriptor> = context
            .driver
            .view()
            .leading()
            .filter(|replica| replica.descriptor.id != rshard_common::api::PLACEMENT_SHARD)
            .map(|replica| replica.descriptor.clone())
            .collect();
        let Some(descriptor) = context.shard_stats.next_to_scan(&led, check) else {
            tokio::time::sleep(SIZE_CHECK_IDLE_INTERVAL).await;
            continue;
        };
        let written_before = context.shard_stats.written_since_scan(descriptor.id);
        let store = context.store.clone();
        let shard = descriptor.id;
        let measured = tokio::task::spawn_blocking(move || measure(&store, &descriptor)).await;
        match measured {
            Ok(Ok(size)) => {
                tracing::debug!(
                    shard,
                    bytes = size.bytes,
                    keys = size.keys,
                    "shard size measured"
                );
                context.shard_stats.scanned(shard, size, written_before);
            }
            Ok(Err(error)) => {
                // A poisoned store: the node is stopping; nothing more to measure.
                tracing::warn!(shard, %error, "size check stopped");
                return;
            }
            Err(error) => {
                tracing::warn!(shard, %error, "size check failed");
                tokio::time::sleep(SIZE_CHECK_IDLE_INTERVAL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shard(start: &[u8], end: &[u8]) -> ShardDescriptor {
        ShardDescriptor {
            id: 7,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            ..ShardDescriptor::default()
        }
    }

    #[test]
    fn load_is_a_rate_per_interval_and_its_split_key_halves_the_requests() {
        let tracker = ShardStatsTracker::default();
        let descriptor = shard(b"", b"");
        let start = Instant::now();
        tracker.take(std::slice::from_ref(&descriptor), start);
        // 1,000 requests over keys k000..k999 in one second: the middle is k500.
        for i in 0..1000 {
            tracker.record(7, format!("k{i:03}").as_bytes(), 0);
        }
        let stats = tracker.take(
            std::slice::from_ref(&descriptor),
            start + Duration::from_secs(1),
        );
        assert_eq!(stats[0].requests_per_second, 1000);
        let key = stats[0].load_split_key.clone().expect("a split key");
        let key = String::from_utf8(key).expect("ascii");
        assert!(("k480".."k520").contains(&key.as_str()), "{key}");
        // The next interval starts empty.
        let stats = tracker.take(&[descriptor], start + Duration::from_secs(2));
        assert_eq!(stats[0].requests_per_second, 0);
        assert_eq!(stats[0].load_split_key, None);
    }

    #[test]
    fn one_hot_key_or_a_lopsided_sample_gives_no_load_split_key() {
        let tracker = ShardStatsTracker::default();
        let descriptor = shard(b"", b"");
        let start = Instant::now();
        tracker.take(std::slice::from_ref(&descriptor), start);
        for _ in 0..500 {
            tracker.record(7, b"hot", 0);
        }
        for i in 0..100 {
            tracker.record(7, format!("z{i:03}").as_bytes(), 0);
        }
        let stats = tracker.take(&[descriptor], start + Duration::from_secs(1));
        assert_eq!(stats[0].load_split_key, None, "5/6 of the load is one key");
    }

    #[test]
    fn a_shard_is_rescanned_only_when_unmeasured_changed_or_written_enough() {
        let tracker = ShardStatsTracker::default();
        let check = SizeCheck {
            rescan_after_written_bytes: 1000,
        };
        let mut descriptor = shard(b"a", b"m");
        let led = [descriptor.clone()];
        assert_eq!(tracker.next_to_scan(&led, check), Some(descriptor.clone()));
        let size = MeasuredSize {
            version: 0,
            bytes: 10,
            keys: 1,
            middle_key: None,
        };
        tracker.scanned(7, size, 0);
        assert_eq!(tracker.next_to_scan(&led, check), None);
        tracker.record(7, b"b", 999);
        assert_eq!(tracker.next_to_scan(&led, check), None);
        tracker.record(7, b"b", 1);
        assert_eq!(tracker.next_to_scan(&led, check), Some(descriptor.clone()));
        descriptor.epoch.version += 1;
        tracker.scanned(
            7,
            MeasuredSize {
                version: 0,
                bytes: 0,
                keys: 0,
                middle_key: None,
            },
            1000,
        );
        assert_eq!(
            tracker.next_to_scan(std::slice::from_ref(&descriptor), check),
            Some(descriptor.clone()),
            "a split changed the range"
        );
    }

    #[test]
    fn a_scan_finds_the_key_that_halves_the_bytes() {
        let store = NodeStore::with_engine(std::sync::Arc::new(crate::storage::MemEngine::new()));
        let mut batch = crate::storage::NodeBatch::new();
        for i in 0..1000u32 {
            batch.write_data(format!("k{i:04}").into_bytes(), Some(vec![0u8; 95]));
        }
        batch.write_data(b"z-outside".to_vec(), Some(vec![0u8; 10_000]));
        store.write(batch).expect("write");
        let measured = measure(&store, &shard(b"k", b"l")).expect("scan");
        assert_eq!(measured.keys, 1000);
        assert_eq!(measured.bytes, 1000 * 100);
        let middle = String::from_utf8(measured.middle_key.expect("middle")).expect("ascii");
        assert!(("k0480".."k0520").contains(&middle.as_str()), "{middle}");
        let empty = measure(&store, &shard(b"q", b"r")).expect("scan");
        assert_eq!((empty.bytes, empty.keys, empty.middle_key), (0, 0, None));
    }
}
