//! A shard snapshot on the receiving node: its chunks are staged, then installed in steps of
//! bounded size that survive a crash between any two of them.
//!
//! While a snapshot arrives, each chunk (keys of the shard's range, ascending) is written to
//! the staging keyspace under `group ++ staging id ++ key`, in whatever batch the node commits
//! next. The live data does not change while chunks arrive, and a transfer that stops halfway
//! leaves only staging behind.
//!
//! Installing starts when Raft accepts the snapshot. The batch that persists the snapshot's
//! Raft state (log replaced, applied index = the snapshot's, new shard descriptor) also writes
//! an [`InstallMarker`] naming the staging id and the ranges to clear. Until the marker is
//! gone the group's data is not consistent with its applied index, so the driver runs nothing
//! on the group (no ticks, messages or applies) while [`NodeStore::continue_install`] works
//! through it, each call spending at most a [`StepBudget`]:
//! 1. clearing: delete every live key of the ranges (the old and the new descriptor's);
//! 2. moving: write each staged key to the data keyspace and delete it from staging, both in
//!    the same batch;
//! 3. deleting the marker, in the batch of the last move.
//!
//! Every step goes into a committed batch, so a crash leaves the marker at the phase the
//! last committed batch recorded (the phase changes in the batch that ends the one before),
//! and both phases are idempotent: the restarted node continues where the disk says. The
//! phase must be recorded: clearing again once moves began would delete moved keys.
//!
//! Staging that no marker names (a transfer abandoned, cut by a crash, or whose snapshot Raft
//! did not need) is garbage, deleted in bounded steps by [`NodeStore::continue_discard`].

use std::ops::ControlFlow;

use rshard_common::api::prefix_end;
use rshard_common::shard::ShardDescriptor;
use serde::{Deserialize, Serialize};

use super::engine::{KeyRange, ScanOrder, Space};
use super::keys::{self, GroupId, StagingId};
use super::{NodeBatch, NodeStore, StoreError};

/// What each key costs on top of its bytes, wherever keys are counted against a byte
/// limit (install steps, snapshot chunks, the inbox), so many tiny keys are bounded too: it
/// covers a key's in-memory overhead and its MessagePack framing. A seek costs one key.
pub const PER_KEY_COST_BYTES: usize = 64;

/// What one key and its value count for against a byte limit.
pub fn item_cost_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + PER_KEY_COST_BYTES
}

/// A key range to clear: `start` inclusive, `end` exclusive, an empty `end` unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpan {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
}

impl KeySpan {
    pub fn of(descriptor: &ShardDescriptor) -> Self {
        KeySpan {
            start: descriptor.start_key.clone(),
            end: descriptor.end_key.clone(),
        }
    }

    fn end(&self) -> Option<&[u8]> {
        (!self.end.is_empty()).then_some(&self.end[..])
    }

    /// True if `descriptor`'s whole range lies in this span.
    pub fn covers(&self, descriptor: &ShardDescriptor) -> bool {
        self.start <= descriptor.start_key
            && (self.end.is_empty()
                || (!descriptor.end_key.is_empty() && descriptor.end_key <= self.end))
    }

    /// True if this span and `descriptor`'s range share a key.
    pub fn overlaps(&self, descriptor: &ShardDescriptor) -> bool {
        (self.end.is_empty() || descriptor.start_key < self.end)
            && (descriptor.end_key.is_empty() || self.start < descriptor.end_key)
    }

    /// This span without `descriptor`'s range: zero, one or two spans.
    pub fn without(&self, descriptor: &ShardDescriptor) -> Vec<KeySpan> {
        if !self.overlaps(descriptor) {
            return vec![self.clone()];
        }
        let taken = KeySpan::of(descriptor);
        let mut left = Vec::new();
        if taken.start > self.start {
            left.push(KeySpan {
                start: self.start.clone(),
                end: taken.start.clone(),
            });
        }
        if !taken.end.is_empty() && (self.end.is_empty() || taken.end < self.end) {
            left.push(KeySpan {
                start: taken.end.clone(),
                end: self.end.clone(),
            });
        }
        left
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstallPhase {
    Clearing,
    Moving,
}

/// Persisted while a snapshot is being installed into the data keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallMarker {
    pub staging: StagingId,
    pub phase: InstallPhase,
    pub clear: Vec<KeySpan>,
}

impl InstallMarker {
    /// An install that replaces whatever `old` and `new` cover with staging `staging`.
    pub fn new(staging: StagingId, old: &ShardDescriptor, new: &ShardDescriptor) -> Self {
        let mut clear = vec![KeySpan::of(old)];
        if old.start_key != new.start_key || old.end_key != new.end_key {
            clear.push(KeySpan::of(new));
        }
        InstallMarker {
            staging,
            phase: InstallPhase::Clearing,
            clear,
        }
    }
}

/// Bytes one round of install and discard steps may still write.
#[derive(Clone, Copy, Debug)]
pub struct StepBudget {
    remaining_bytes: usize,
}

impl StepBudget {
    /// A budget of `bytes` (at least one key's worth is always spent per step).
    pub fn new(bytes: usize) -> Self {
        StepBudget {
            remaining_bytes: bytes.max(1),
        }
    }

    pub fn exhausted(&self) -> bool {
        self.remaining_bytes == 0
    }

    fn spend(&mut self, key: &[u8], value: &[u8]) {
        self.remaining_bytes = self
            .remaining_bytes
            .saturating_sub(item_cost_bytes(key, value));
    }
}

/// An install under way: the marker as last written, and where the next step resumes (so
/// it does not rescan the keys the previous steps deleted).
#[derive(Clone, Debug)]
pub struct InstallProgress {
    group: GroupId,
    marker: InstallMarker,
    span: usize,
    cursor: Option<Vec<u8>>,
}

impl InstallProgress {
    pub fn new(group: GroupId, marker: InstallMarker) -> Self {
        InstallProgress {
            group,
            marker,
            span: 0,
            cursor: None,
        }
    }

    pub fn phase(&self) -> InstallPhase {
        self.marker.phase
    }

    pub fn staging(&self) -> StagingId {
        self.marker.staging
    }
}

/// Staging being deleted, and where the next step resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagingDiscard {
    pub group: GroupId,
    pub staging: StagingId,
    cursor: Option<Vec<u8>>,
}

impl StagingDiscard {
    pub fn new(group: GroupId, staging: StagingId) -> Self {
        StagingDiscard {
            group,
            staging,
            cursor: None,
        }
    }
}

impl NodeBatch {
    /// Stages one chunk of a received snapshot (nothing live changes).
    pub fn stage_snapshot_items(
        &mut self,
        group: GroupId,
        staging: StagingId,
        items: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) {
        for (key, value) in items {
            self.put(
                Space::Staging,
                keys::staging_key(group, staging, &key),
                Some(value),
            );
        }
    }

    /// Records that `group` is installing a snapshot (with the Raft state of that snapshot).
    pub fn set_install_marker(
        &mut self,
        group: GroupId,
        marker: &InstallMarker,
    ) -> Result<(), StoreError> {
        self.put_state(group, keys::INSTALL_TAG, "install marker", marker)
    }

    fn clear_install_marker(&mut self, group: GroupId) {
        self.touched.insert(group);
        self.put(
            Space::State,
            keys::state_key(group, keys::INSTALL_TAG).to_vec(),
            None,
        );
    }
}

impl NodeStore {
    /// Writes the next steps of an install into `batch`, spending `budget`. Returns true
    /// when the install is complete in `batch` (the marker deleted). Reads the committed
    /// state, so call it once per group per batch.
    pub fn continue_install(
        &self,
        progress: &mut InstallProgress,
        batch: &mut NodeBatch,
        budget: &mut StepBudget,
    ) -> Result<bool, StoreError> {
        let group = progress.group;
        if progress.marker.phase == InstallPhase::Clearing {
            while let Some(span) = progress.marker.clear.get(progress.span) {
                let start = progress.cursor.take().unwrap_or_else(|| span.start.clone());
                let range = KeyRange {
                    start: &start,
                    end: span.end(),
                };
                let resume = self.visit_within_budget(Space::Data, range, budget, |key, _| {
                    batch.write_data(key.to_vec(), None);
                })?;
                if resume.is_some() {
                    progress.cursor = resume;
                    return Ok(false);
                }
                progress.span += 1;
            }
            progress.marker.phase = InstallPhase::Moving;
            batch.set_install_marker(group, &progress.marker)?;
        }
        let prefix = keys::staging_prefix(group, progress.marker.staging);
        let end = prefix_end(&prefix);
        let start = progress.cursor.take().unwrap_or_else(|| prefix.to_vec());
        let range = KeyRange {
            start: &start,
            end: end.as_deref(),
        };
        let resume = self.visit_within_budget(Space::Staging, range, budget, |staged, value| {
            if let Some((_, _, key)) = keys::parse_staging_key(staged) {
                batch.write_data(key.to_vec(), Some(value.to_vec()));
            }
            batch.put(Space::Staging, staged.to_vec(), None);
        })?;
        if resume.is_some() {
            progress.cursor = resume;
            return Ok(false);
        }
        batch.clear_install_marker(group);
        Ok(true)
    }

    /// Writes the next deletions of abandoned staging into `batch`, spending `budget`.
    /// Returns true when `batch` deletes the last of it.
    pub fn continue_discard(
        &self,
        discard: &mut StagingDiscard,
        batch: &mut NodeBatch,
        budget: &mut StepBudget,
    ) -> Result<bool, StoreError> {
        let prefix = keys::staging_prefix(discard.group, discard.staging);
        let end = prefix_end(&prefix);
        let start = discard.cursor.take().unwrap_or_else(|| prefix.to_vec());
        let range = KeyRange {
            start: &start,
            end: end.as_deref(),
        };
        let resume = self.visit_within_budget(Space::Staging, range, budget, |staged, _| {
            batch.put(Space::Staging, staged.to_vec(), None);
        })?;
        discard.cursor = resume;
        Ok(discard.cursor.is_none())
    }

    /// Writes the next deletions of live data in `spans` into `batch`, spending `budget`,
    /// and records in it what is left to clear (the first span shortened, or the spans
    /// cleared gone): the deletions and the record commit together, so a crash resumes
    /// where the disk says.
    pub fn continue_clear(
        &self,
        spans: &mut Vec<KeySpan>,
        batch: &mut NodeBatch,
        budget: &mut StepBudget,
    ) -> Result<(), StoreError> {
        while let Some(span) = spans.first_mut() {
            if budget.exhausted() {
                break;
            }
            let range = KeyRange {
                start: &span.start,
                end: span.end(),
            };
            let resume = self.visit_within_budget(Space::Data, range, budget, |key, _| {
                batch.write_data(key.to_vec(), None);
            })?;
            match resume {
                Some(key) => span.start = key,
                None => {
                    spans.remove(0);
                }
            }
        }
        batch.set_pending_clears(spans)
    }

    /// Visits `range` until `budget` runs out (at least one key, so every call progresses;
    /// the seek itself costs one key, so even empty ranges are bounded per round).
    /// Returns the key to resume at, or `None` if the range was finished.
    fn visit_within_budget(
        &self,
        space: Space,
        range: KeyRange<'_>,
        budget: &mut StepBudget,
        mut visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<Option<Vec<u8>>, StoreError> {
        budget.spend(&[], &[]);
        let mut resume = None;
        let mut visited_any = false;
        self.scan(space, range, ScanOrder::Ascending, &mut |key, value| {
            if visited_any && budget.exhausted() {
                resume = Some(key.to_vec());
                return ControlFlow::Break(());
            }
            visited_any = true;
            visit(key, value);
            budget.spend(key, value);
            ControlFlow::Continue(())
        })?;
        Ok(resume)
    }

    /// Every (group, staging id) that has staged keys, in key order: one seek per staging.
    pub fn stagings(&self) -> Result<Vec<(GroupId, StagingId)>, StoreError> {
        let mut found = Vec::new();
        let mut start = Vec::new();
        loop {
            let mut next = None;
            let range = KeyRange {
                start: &start,
                end: None,
            };
            self.scan(
                Space::Staging,
                range,
                ScanOrder::Ascending,
                &mut |key, _| {
                    next = Some(key.to_vec());
                    ControlFlow::Break(())
                },
            )?;
            let Some(key) = next else {
                return Ok(found);
            };
            let Some((group, staging, _)) = keys::parse_staging_key(&key) else {
                return Err(StoreError::Corrupt {
                    group: 0,
                    what: "staged snapshot key",
                    detail: format!("{} bytes", key.len()),
                });
            };
            found.push((group, staging));
            match prefix_end(&keys::staging_prefix(group, staging)) {
                Some(end) => start = end,
                None => return Ok(found),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
