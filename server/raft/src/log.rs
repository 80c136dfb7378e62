//! The replica's log: the persisted part read through [`Storage`], plus an unstable suffix
//! (and possibly a snapshot) the caller has not persisted yet.
//!
//! Indexes obey `applied <= committed <= last_index()` and `persisted <= last_index()`.
//! `persisted` is the highest index the caller has made durable with the term we still hold
//! for it; only entries at or below it are handed out for applying, and only it counts as
//! the leader's own acknowledgement.

use crate::storage::{Storage, StorageError};
use crate::types::{Entry, Index, LogPosition, Snapshot, Term};

/// Keeps the longest prefix of `entries` within `max_bytes`, but at least one entry.
pub(crate) fn limit_bytes(entries: &[Entry], max_bytes: u64) -> &[Entry] {
    let mut total = 0;
    let mut keep = 0;
    for entry in entries {
        total += entry.size_bytes();
        if keep > 0 && total > max_bytes {
            break;
        }
        keep += 1;
    }
    &entries[..keep]
}

/// Entries and a snapshot received or proposed but not yet persisted by the caller.
#[derive(Debug, Default)]
struct Unstable {
    snapshot: Option<Snapshot>,
    /// Index of `entries[0]`; always the stable log's last index + 1.
    offset: Index,
    entries: Vec<Entry>,
}

impl Unstable {
    fn maybe_term(&self, index: Index) -> Option<Term> {
        if index < self.offset {
            let snapshot = self.snapshot.as_ref()?;
            return (snapshot.metadata.index == index).then_some(snapshot.metadata.term);
        }
        self.entries
            .get((index - self.offset) as usize)
            .map(|e| e.term)
    }

    fn truncate_and_append(&mut self, entries: &[Entry]) {
        let after = entries[0].index;
        if after <= self.offset {
            // Replaces the whole unstable suffix and part of the stable log.
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after - self.offset) as usize);
        }
        self.entries.extend_from_slice(entries);
    }

    fn stable_to(&mut self, position: LogPosition) -> bool {
        if position.index < self.offset || self.maybe_term(position.index) != Some(position.term) {
            return false;
        }
        self.entries
            .drain(..=(position.index - self.offset) as usize);
        self.offset = position.index + 1;
        true
    }
}

#[derive(Debug)]
pub(crate) struct RaftLog<S> {
    pub storage: S,
    unstable: Unstable,
    pub committed: Index,
    pub applied: Index,
    pub persisted: Index,
    /// The terms of the entries appended since this log was opened, as runs: `(first index,
    /// term)`, ascending, each run reaching to the next (the last to `last_index()`). It
    /// answers `term()` without reading storage, which the leader asks on every
    /// acknowledgement (the commit rule). Older entries, and anything below the storage's
    /// first index, are asked of storage as before.
    term_runs: Vec<(Index, Term)>,
}

/// Term runs kept at most; older ones are dropped (their terms are read from storage).
const MAX_TERM_RUNS: usize = 64;

impl<S: Storage> RaftLog<S> {
    /// `applied` is raised to the storage's snapshot index: the state machine the caller
    /// restored includes everything the snapshot covers.
    pub fn new(storage: S, committed: Index, applied: Index) -> Result<Self, StorageError> {
        let last = storage.last_index()?;
        let snapshot_index = storage.first_index()? - 1;
        Ok(RaftLog {
            storage,
            unstable: Unstable {
                snapshot: None,
                offset: last + 1,
                entries: Vec::new(),
            },
            committed: committed.max(snapshot_index),
            applied: applied.max(snapshot_index),
            persisted: last,
            term_runs: Vec::new(),
        })
    }

    pub fn first_index(&self) -> Result<Index, StorageError> {
        match &self.unstable.snapshot {
            Some(snapshot) => Ok(snapshot.metadata.index + 1),
            None => self.storage.first_index(),
        }
    }

    pub fn last_index(&self) -> Index {
        self.unstable.offset + self.unstable.entries.len() as u64 - 1
    }

    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if let Some(term) = self.unstable.maybe_term(index) {
            return Ok(term);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(snapshot) = &self.unstable.snapshot {
            if index < snapshot.metadata.index {
                return Err(StorageError::Compacted);
            }
        }
        if let Some(term) = self.cached_term(index) {
            if index >= self.storage.first_index()? {
                return Ok(term);
            }
        }
        self.storage.term(index)
    }

    /// The term of `index` (at most `last_index()`) from the runs, if they cover it.
    fn cached_term(&self, index: Index) -> Option<Term> {
        let covering = self.term_runs.partition_point(|&(start, _)| start <= index);
        let (_, term) = self.term_runs.get(covering.checked_sub(1)?)?;
        Some(*term)
    }

    fn record_term_runs(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let kept = self
            .term_runs
            .partition_point(|&(start, _)| start < first.index);
        self.term_runs.truncate(kept);
        for entry in entries {
            if self.term_runs.last().map(|&(_, term)| term) != Some(entry.term) {
                self.term_runs.push((entry.index, entry.term));
            }
        }
        if self.term_runs.len() > MAX_TERM_RUNS {
            let excess = self.term_runs.len() - MAX_TERM_RUNS;
            self.term_runs.drain(..excess);
        }
    }

    pub fn last_term(&self) -> Result<Term, StorageError> {
        self.term(self.last_index())
    }

    pub fn last_position(&self) -> Result<LogPosition, StorageError> {
        Ok(LogPosition {
            term: self.last_term()?,
            index: self.last_index(),
        })
    }

    /// True if the entry at `index` has `term`; false if it differs or is not held.
    pub fn match_term(&self, index: Index, term: Term) -> Result<bool, StorageError> {
        match self.term(index) {
            Ok(ours) => Ok(ours == term),
            Err(StorageError::Compacted | StorageError::Unavailable) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// §5.4.1: a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> Result<bool, StorageError> {
        let ours = self.last_term()?;
        Ok(last_term > ours || (last_term == ours && last_index >= self.last_index()))
    }

    /// Entries in `[low, high)` within `max_bytes` (at least one if the range is not empty).
    pub fn slice(
        &self,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index()? {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let offset = self.unstable.offset;
        let mut entries = Vec::new();
        if low < offset {
            entries = self.storage.entries(low, high.min(offset), max_bytes)?;
            if (entries.len() as u64) < high.min(offset) - low {
                return Ok(entries); // the byte limit cut it short
            }
        }
        if high > offset {
            let start = (low.max(offset) - offset) as usize;
            let end = (high - offset) as usize;
            let used: u64 = entries.iter().map(Entry::size_bytes).sum();
            let unstable = &self.unstable.entries[start..end];
            if entries.is_empty() {
                entries.extend_from_slice(limit_bytes(unstable, max_bytes));
            } else {
                let mut total = used;
                for entry in unstable {
                    total += entry.size_bytes();
                    if total > max_bytes {
                        break;
                    }
                    entries.push(entry.clone());
                }
            }
        }
        Ok(entries)
    }

    /// Appends entries that follow a known position; returns the new last index.
    pub fn append(&mut self, entries: &[Entry]) -> Index {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        let after = first.index - 1;
        assert!(
            after >= self.committed,
            "appending at {} would overwrite committed entries (committed {})",
            first.index,
            self.committed
        );
        self.unstable.truncate_and_append(entries);
        self.record_term_runs(entries);
        self.persisted = self.persisted.min(after);
        self.last_index()
    }

    /// The follower side of AppendEntries (§5.3): if our log holds `previous`, append the
    /// entries (dropping a conflicting suffix), advance commit, and return the last new index.
    pub fn maybe_append(
        &mut self,
        previous: LogPosition,
        leader_commit: Index,
        entries: &[Entry],
    ) -> Result<Option<Index>, StorageError> {
        if !self.match_term(previous.index, previous.term)? {
            return Ok(None);
        }
        let last_new = previous.index + entries.len() as u64;
        if let Some(conflict) = self.find_conflict(entries)? {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with the committed prefix (committed {})",
                self.committed
            );
            self.append(&entries[(conflict - previous.index - 1) as usize..]);
        }
        self.commit_to(leader_commit.min(last_new));
        Ok(Some(last_new))
    }

    /// The first entry that is new or whose term differs from ours.
    fn find_conflict(&self, entries: &[Entry]) -> Result<Option<Index>, StorageError> {
        for entry in entries {
            if !self.match_term(entry.index, entry.term)? {
                return Ok(Some(entry.index));
            }
        }
        Ok(None)
    }

    /// Our last entry at or before `index` whose term is at most `term`: where the leader's
    /// and our logs may still agree (fast backtracking).
    pub fn find_conflict_by_term(
        &self,
        index: Index,
        term: Term,
    ) -> Result<LogPosition, StorageError> {
        let mut index = index.min(self.last_index());
        while index > 0 {
            match self.term(index) {
                Ok(ours) if ours <= term => return Ok(LogPosition { term: ours, index }),
                Ok(_) => index -= 1,
                Err(StorageError::Compacted) => return Ok(LogPosition { term: 0, index }),
                Err(other) => return Err(other),
            }
        }
        Ok(LogPosition { term: 0, index: 0 })
    }

    /// Commit never moves back: a lower index is ignored.
    pub fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} is past the last index {}",
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Commits `index` if its entry is of `term` (the leader's current term, §5.4.2).
    pub fn maybe_commit(&mut self, index: Index, term: Term) -> Result<bool, StorageError> {
        if index > self.committed && self.match_term(index, term)? {
            self.commit_to(index);
            return Ok(true);
        }
        Ok(false)
    }

    pub fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.committed,
            "applied {index} is past committed {}",
            self.committed
        );
        self.applied = self.applied.max(index);
    }

    /// The highest index that may be applied: committed and durable here.
    fn applicable(&self) -> Index {
        self.committed.min(self.persisted)
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.applicable() > self.applied
    }

    pub fn next_committed_entries(&self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let low = (self.applied + 1).max(self.first_index()?);
        self.slice(low, self.applicable() + 1, max_bytes)
    }

    /// Committed entries not yet applied, to look for pending membership changes. Entries a
    /// snapshot (not yet applied) replaced are not among them: the snapshot carries their
    /// configuration.
    pub fn unapplied_committed(&self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let low = (self.applied + 1).max(self.first_index()?);
        self.slice(low, self.committed + 1, max_bytes)
    }

    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    pub fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable.snapshot.as_ref()
    }

    /// Replaces the log with a snapshot (§7); the caller persists it from the next Ready.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.committed = snapshot.metadata.index;
        self.unstable.offset = snapshot.metadata.index + 1;
        self.unstable.entries.clear();
        self.term_runs.clear();
        // The old log is not ours any more and the snapshot is not yet durable.
        self.persisted = 0;
        self.unstable.snapshot = Some(snapshot);
    }

    /// The caller persisted entries up to `position`.
    pub fn stable_to(&mut self, position: LogPosition) {
        if self.unstable.stable_to(position) {
            self.persisted = self.persisted.max(position.index);
        }
    }

    /// The caller persisted (and applied) the snapshot at `index`.
    pub fn stable_snapshot_to(&mut self, index: Index) {
        if self
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.unstable.snapshot = None;
            self.persisted = self.persisted.max(index);
            self.applied = self.applied.max(index);
        }
    }

    /// The latest snapshot to send to a follower that is behind our first index.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(snapshot) => Ok(snapshot.clone()),
            None => self.storage.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use crate::types::{ConfState, Payload};

    fn entries(first: Index, terms: &[Term]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(offset, &term)| Entry {
                term,
                index: first + offset as Index,
                payload: Payload::Empty,
            })
            .collect()
    }

    /// Persists the unstable entries, as the caller of a Ready does.
    fn persist(log: &mut RaftLog<MemStorage>) {
        let unstable = log.unstable_entries().to_vec();
        if let Some(last) = unstable.last() {
            log.storage.append(&unstable);
            log.stable_to(last.position());
        }
    }

    #[test]
    fn terms_from_memory_match_storage_across_truncation_and_compaction() {
        let storage = MemStorage::new_with_conf_state(ConfState::with_voters([1]));
        let mut log = RaftLog::new(storage, 0, 0).expect("opens");
        log.append(&entries(1, &[1, 1, 2, 2, 2, 3]));
        persist(&mut log);
        // A new leader's entries replace the suffix from index 4.
        log.append(&entries(4, &[4, 4, 5]));
        persist(&mut log);
        let expected = [1, 1, 2, 4, 4, 5];
        for (offset, term) in expected.iter().enumerate() {
            let index = offset as Index + 1;
            assert_eq!(log.term(index), Ok(*term), "index {index}");
            assert_eq!(
                log.storage.term(index),
                Ok(*term),
                "storage agrees at {index}"
            );
        }
        assert_eq!(log.term(7), Err(StorageError::Unavailable));
        let conf = ConfState::with_voters([1]);
        log.storage
            .create_snapshot(3, conf, Vec::new())
            .expect("a snapshot");
        log.storage.compact(3).expect("compacts");
        assert_eq!(
            log.term(2),
            Err(StorageError::Compacted),
            "compaction still shows"
        );
        assert_eq!(log.term(5), Ok(4));
    }
}
