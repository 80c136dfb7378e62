//! The safety properties checked during a simulation, each with its source.
//!
//! - Election safety (§5.2, Figure 3): at most one leader per term.
//! - Log matching (§5.3): two logs holding an entry of the same index and term are identical
//!   up to it. Checked as "one entry per (index, term)" on every persist, and pairwise over
//!   whole persisted logs periodically.
//! - Leader completeness (§5.4): a leader's log holds every entry committed before its term.
//! - State machine safety (§5.4.3): no two replicas apply different entries at one index;
//!   snapshots agree with what was applied.
//! - Monotonic indexes: commit never moves back within a life; applied never moves back,
//!   even across crashes (the state machine is durable with its applied index).
//! - Linearizable reads (§6.4): a read's index covers every entry committed when it was
//!   requested.

use std::collections::BTreeMap;

use rshard_raft::{Entry, Index, MemStorage, NodeId, Payload, Storage, Term};

/// A compact identity of an entry's content.
pub fn digest(entry: &Entry) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&entry.term.to_le_bytes());
    match &entry.payload {
        Payload::Empty => feed(b"empty"),
        Payload::Normal(data) => feed(data),
        Payload::ConfChange(change) => feed(format!("{change:?}").as_bytes()),
    }
    hash
}

/// What one applied index held: (term, digest).
pub type AppliedEntry = (Term, u64);

#[derive(Debug, Default)]
pub struct Checker {
    leaders_by_term: BTreeMap<Term, NodeId>,
    /// Every (index, term) ever persisted anywhere, and its content.
    persisted: BTreeMap<(Index, Term), u64>,
    /// Every index applied anywhere: committed, with its content.
    pub committed: BTreeMap<Index, AppliedEntry>,
    /// Terms whose leader's log has been checked for completeness.
    completeness_checked: BTreeMap<Term, NodeId>,
    /// Highest commit index seen anywhere: everything up to it is committed.
    pub max_commit: Index,
    pub checks: u64,
}

impl Checker {
    /// Election safety: call whenever a replica is observed leading. True if this is the
    /// first time a leader of `term` is seen.
    pub fn observe_leader(&mut self, id: NodeId, term: Term) -> Result<bool, String> {
        self.checks += 1;
        match self.leaders_by_term.insert(term, id) {
            Some(other) if other != id => Err(format!(
                "election safety: nodes {other} and {id} both lead term {term}"
            )),
            previous => Ok(previous.is_none()),
        }
    }

    pub fn observe_commit(&mut self, commit: Index) {
        self.max_commit = self.max_commit.max(commit);
    }

    /// Log matching, part one: an (index, term) names one entry everywhere.
    pub fn observe_persisted(&mut self, id: NodeId, entries: &[Entry]) -> Result<(), String> {
        for entry in entries {
            self.checks += 1;
            let content = digest(entry);
            if let Some(&known) = self.persisted.get(&(entry.index, entry.term)) {
                if known != content {
                    return Err(format!(
                        "log matching: node {id} persisted a different entry at index {} term {}",
                        entry.index, entry.term
                    ));
                }
            } else {
                self.persisted.insert((entry.index, entry.term), content);
            }
        }
        Ok(())
    }

    /// State machine safety: `id` applies `entry` at `index`.
    pub fn observe_applied(
        &mut self,
        id: NodeId,
        index: Index,
        entry: AppliedEntry,
    ) -> Result<(), String> {
        self.checks += 1;
        match self.committed.get(&index) {
            Some(&known) if known != entry => Err(format!(
                "state machine safety: node {id} applied {entry:?} at index {index}, another applied {known:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(index, entry);
                self.max_commit = self.max_commit.max(index);
                Ok(())
            }
        }
    }

    /// Leader completeness: the new leader of `term` holds every committed entry.
    pub fn check_leader_completeness(
        &mut self,
        id: NodeId,
        term: Term,
        storage: &MemStorage,
    ) -> Result<(), String> {
        if self.completeness_checked.insert(term, id).is_some() {
            return Ok(());
        }
        let first = storage.first_index().map_err(|e| e.to_string())?;
        for (&index, &(entry_term, _)) in self.committed.range(first..) {
            self.checks += 1;
            match storage.term(index) {
                Ok(found) if found == entry_term => {}
                other => {
                    return Err(format!(
                        "leader completeness: leader {id} of term {term} lacks committed entry {index} (term {entry_term}); has {other:?}"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Log matching, part two: pairwise over whole persisted logs.
    pub fn check_log_matching(&mut self, logs: &[(NodeId, Vec<Entry>)]) -> Result<(), String> {
        for (i, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[i + 1..] {
                self.checks += 1;
                check_pair(*a, log_a, *b, log_b)?;
            }
        }
        Ok(())
    }
}

fn check_pair(a: NodeId, log_a: &[Entry], b: NodeId, log_b: &[Entry]) -> Result<(), String> {
    let (Some(first_a), Some(first_b)) = (log_a.first(), log_b.first()) else {
        return Ok(());
    };
    let low = first_a.index.max(first_b.index);
    let high = log_a
        .last()
        .map_or(0, |e| e.index)
        .min(log_b.last().map_or(0, |e| e.index));
    let at = |log: &[Entry], first: Index, index: Index| log[(index - first) as usize].clone();
    // The highest index in the overlap where both hold the same term...
    let Some(agreed) = (low..=high).rev().find(|&index| {
        at(log_a, first_a.index, index).term == at(log_b, first_b.index, index).term
    }) else {
        return Ok(());
    };
    // ...must be preceded by identical entries.
    for index in low..=agreed {
        if at(log_a, first_a.index, index) != at(log_b, first_b.index, index) {
            return Err(format!(
                "log matching: nodes {a} and {b} agree on the term at {agreed} but differ at {index}"
            ));
        }
    }
    Ok(())
}
