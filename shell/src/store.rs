//! Where the shell's reads and writes go: the cluster through the routing client, or an
//! in-memory map (for tests of the SQL layer, with shard boundaries of the test's choice).
//!
//! [`Store::write_batches`] is the one way statements write: it sorts the operations by key,
//! cuts them into batches that each fall in one shard and stay under the batch limits, and
//! writes them in key order. Each batch is atomic; a statement whose operations fit one
//! batch is atomic, and one that does not says so when it fails part-way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rshard_common::api::{ApiError, WriteOp, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use rshard_common::client::{Client, ClientError, Item};
use rshard_common::shard::ShardId;

use crate::error::SqlError;

/// A batch's bytes of keys and values, kept well under the API's frame limit.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Times a batch is cut again when a shard split under it (nothing was written).
const MAX_REROUTES: usize = 8;

#[derive(Clone, Debug)]
pub enum Store {
    Cluster(Arc<Client>),
    Memory(Arc<MemoryStore>),
}

/// A batch's failed condition: the operation's index in the batch and what its key held.
type FailedOp = (usize, Option<Vec<u8>>);

/// What [`Store::write_batches`] did when a batch's condition failed.
#[derive(Debug)]
pub struct FailedCondition {
    /// Index in the operations as given.
    pub op: usize,
    /// What the key held.
    pub current: Option<Vec<u8>>,
    /// Operations written by earlier batches (they stay).
    pub written_ops: usize,
}

/// What [`Store::write_one_batch`] did.
#[derive(Debug)]
pub enum OneBatch {
    Written,
    /// A condition failed; nothing was written (`written_ops` is 0).
    Failed(FailedCondition),
    /// The operations span shards or exceed the batch limits; nothing was written.
    TooBig,
}

impl Store {
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SqlError> {
        match self {
            Store::Cluster(client) => Ok(client.get(key).await?),
            Store::Memory(memory) => Ok(memory.get(key)),
        }
    }

    /// Keys in `[start, end)`, at most `limit`, in order.
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Item>, SqlError> {
        match self {
            Store::Cluster(client) => Ok(client.scan(start, end, limit).await?),
            Store::Memory(memory) => Ok(memory.scan(start, end, limit)),
        }
    }

    /// One atomic batch in one shard.
    async fn write(&self, ops: Vec<WriteOp>) -> Result<Option<FailedOp>, ClientError> {
        match self {
            Store::Cluster(client) => client.write(ops).await,
            Store::Memory(memory) => memory.write(ops),
        }
    }

    /// The shard owning `key` and where it ends (empty: the end of the key space).
    async fn shard_of(&self, key: &[u8]) -> Result<(ShardId, Vec<u8>), SqlError> {
        match self {
            Store::Cluster(client) => {
                let descriptor = client.shard_of(key).await?;
                Ok((descriptor.id, descriptor.end_key))
            }
            Store::Memory(memory) => Ok(memory.shard_of(key)),
        }
    }

    /// Writes `ops` in batches (see the module docs); returns how many batches it took,
    /// or the first failed condition. Keys must be distinct.
    pub async fn write_batches(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Result<usize, FailedCondition>, SqlError> {
        for op in &ops {
            check_sizes(op)?;
        }
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by(|&a, &b| ops[a].key().cmp(ops[b].key()));
        let mut batches = 0;
        let mut written_ops = 0;
        let mut next = 0;
        let mut reroutes = 0;
        while next < order.len() {
            // The longest run from `next` in one shard and within the limits.
            let (_, shard_end) = self.shard_of(ops[order[next]].key()).await?;
            let mut end = next;
            let mut bytes = 0;
            while end < order.len() && end - next < MAX_BATCH_OPS {
                let op = &ops[order[end]];
                let size = op_bytes(op);
                let in_shard = shard_end.is_empty() || op.key() < shard_end.as_slice();
                if !in_shard || (end > next && bytes + size > MAX_BATCH_BYTES) {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let batch: Vec<WriteOp> = order[next..end].iter().map(|&i| ops[i].clone()).collect();
            match self.write(batch).await {
                Ok(None) => {
                    batches += 1;
                    written_ops += end - next;
                    next = end;
                }
                Ok(Some((index, current))) => {
                    // The index comes from the network: one outside the batch is the
                    // server's fault, reported as such.
                    let op = order[next..end]
                        .get(index)
                        .copied()
                        .ok_or_else(|| failed_outside(index, end - next))?;
                    return Ok(Err(FailedCondition {
                        op,
                        current,
                        written_ops,
                    }));
                }
                // The shard split or moved its boundary since it was looked up: nothing of
                // this batch was written; cut it again.
                Err(ClientError::CrossShard(..)) if reroutes < MAX_REROUTES => reroutes += 1,
                Err(error) => {
                    let error = SqlError::Cluster(error);
                    return Err(if written_ops > 0 {
                        SqlError::PartlyWritten {
                            written: written_ops as u64,
                            cause: Box::new(error),
                        }
                    } else {
                        error
                    });
                }
            }
        }
        Ok(Ok(batches))
    }

    /// Whether `ops` fall in one shard (as routed now) and within the batch limits.
    pub async fn fits_one_batch(&self, ops: &[WriteOp]) -> Result<bool, SqlError> {
        let (Some(first), Some(last)) = (
            ops.iter().map(WriteOp::key).min(),
            ops.iter().map(WriteOp::key).max(),
        ) else {
            return Ok(true);
        };
        let bytes: usize = ops.iter().map(op_bytes).sum();
        if ops.len() > MAX_BATCH_OPS || bytes > MAX_BATCH_BYTES {
            return Ok(false);
        }
        let (_, shard_end) = self.shard_of(first).await?;
        Ok(shard_end.is_empty() || last < shard_end.as_slice())
    }

    /// Writes `ops` as one atomic batch if they fit one (see [`Store::fits_one_batch`]; a
    /// shard that splits meanwhile is looked up again); otherwise writes nothing.
    pub async fn write_one_batch(&self, ops: &[WriteOp]) -> Result<OneBatch, SqlError> {
        for op in ops {
            check_sizes(op)?;
        }
        if ops.is_empty() {
            return Ok(OneBatch::Written);
        }
        for _ in 0..=MAX_REROUTES {
            if !self.fits_one_batch(ops).await? {
                return Ok(OneBatch::TooBig);
            }
            match self.write(ops.to_vec()).await {
                Ok(None) => return Ok(OneBatch::Written),
                Ok(Some((index, current))) => {
                    if index >= ops.len() {
                        return Err(failed_outside(index, ops.len()));
                    }
                    return Ok(OneBatch::Failed(FailedCondition {
                        op: index,
                        current,
                        written_ops: 0,
                    }));
                }
                Err(ClientError::CrossShard(..)) => {}
                Err(error) => return Err(SqlError::Cluster(error)),
            }
        }
        Ok(OneBatch::TooBig)
    }
}

/// A failed condition the cluster placed outside the batch it was sent.
fn failed_outside(index: usize, batch_ops: usize) -> SqlError {
    SqlError::Corrupt(format!(
        "the cluster reported a failed condition at operation {index} of a batch of {batch_ops}"
    ))
}

/// The bytes of keys and values an operation puts in a batch.
fn op_bytes(op: &WriteOp) -> usize {
    op.key().len() + op.written_value().map_or(0, <[u8]>::len)
}

fn check_sizes(op: &WriteOp) -> Result<(), SqlError> {
    if op.key().len() > MAX_KEY_BYTES {
        return Err(SqlError::Limit(format!(
            "a key of {} bytes is over the limit of {MAX_KEY_BYTES} (primary keys must be short)",
            op.key().len()
        )));
    }
    if let Some(value) = op.written_value() {
        if value.len() > MAX_VALUE_BYTES {
            return Err(SqlError::Limit(format!(
                "a row of {} bytes is over the limit of {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
    }
    Ok(())
}

/// An in-memory store whose "shards" end at the given keys, so that tests see batches cut
/// and refused as on a cluster. Writes are atomic per call, like a shard's.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    boundaries: Mutex<Vec<Vec<u8>>>,
    /// Write requests taken (each a round trip on a cluster), for tests of their number.
    write_requests: AtomicUsize,
    /// The write request that is applied but answered "outcome unknown", as a lost reply
    /// would be (usize::MAX: none).
    lost_reply: AtomicUsize,
}

impl MemoryStore {
    /// A store with shard boundaries at `boundaries` (each the first key of a shard).
    pub fn with_boundaries(mut boundaries: Vec<Vec<u8>>) -> Self {
        boundaries.sort();
        boundaries.dedup();
        MemoryStore {
            data: Mutex::default(),
            boundaries: Mutex::new(boundaries),
            write_requests: Default::default(),
            lost_reply: AtomicUsize::new(usize::MAX),
        }
    }

    /// The `nth` write request from now (0: the next) is applied but answered "outcome
    /// unknown", as when its reply is lost. For tests of that case.
    pub fn lose_reply(&self, nth: usize) {
        self.lost_reply
            .store(self.write_requests() + nth, Ordering::Relaxed);
    }

    /// Write requests taken so far.
    pub fn write_requests(&self) -> usize {
        self.write_requests.load(Ordering::Relaxed)
    }

    /// Everything stored, in key order.
    pub fn dump(&self) -> Vec<Item> {
        self.lock_data()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn lock_data(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn shard_of(&self, key: &[u8]) -> (ShardId, Vec<u8>) {
        let boundaries = self
            .boundaries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = boundaries.partition_point(|b| b.as_slice() <= key);
        let end = boundaries.get(index).cloned().unwrap_or_default();
        (index as ShardId + 1, end)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock_data().get(key).cloned()
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<Item> {
        let data = self.lock_data();
        data.range(start.to_vec()..)
            .take_while(|(key, _)| end.is_empty() || key.as_slice() < end)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<Option<FailedOp>, ClientError> {
        let request = self.write_requests.fetch_add(1, Ordering::Relaxed);
        let answer = self.apply(ops);
        if request == self.lost_reply.load(Ordering::Relaxed) {
            return Err(ClientError::OutcomeUnknown(
                "the reply was lost".to_string(),
            ));
        }
        answer
    }

    fn apply(&self, ops: Vec<WriteOp>) -> Result<Option<FailedOp>, ClientError> {
        let Some(first) = ops.first() else {
            return Err(ClientError::Refused(ApiError::Malformed(
                "no operations".to_string(),
            )));
        };
        let (shard, _) = self.shard_of(first.key());
        if let Some(other) = ops.iter().find(|op| self.shard_of(op.key()).0 != shard) {
            return Err(ClientError::CrossShard(shard, self.shard_of(other.key()).0));
        }
        let mut data = self.lock_data();
        for (index, op) in ops.iter().enumerate() {
            if let WriteOp::CompareAndSwap { key, expected, .. } = op {
                let current = data.get(key);
                if current != expected.as_ref() {
                    return Ok(Some((index, current.cloned())));
                }
            }
        }
        for op in ops {
            match op {
                WriteOp::Put { key, value } => {
                    data.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    data.remove(&key);
                }
                WriteOp::CompareAndSwap { key, new, .. } => match new {
                    Some(value) => {
                        data.insert(key, value);
                    }
                    None => {
                        data.remove(&key);
                    }
                },
            }
        }
        Ok(None)
    }
}
