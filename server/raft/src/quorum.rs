//! Quorum arithmetic for plain and joint configurations (§5.2, §5.4, thesis §4.3).
//!
//! Pure functions over [`ConfState`] and a lookup of per-voter facts. In a joint configuration
//! every decision needs a majority of the incoming AND of the outgoing voters.

use std::collections::BTreeSet;

use crate::types::{ConfState, Index, NodeId};

/// The outcome of counting votes (or any yes/no acknowledgement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet: missing answers could still swing it.
    Pending,
    Lost,
    Won,
}

/// Counts yes/no answers in one majority configuration. An empty one always wins, which is
/// what makes the outgoing half of a non-joint configuration neutral.
fn majority_vote(voters: &BTreeSet<NodeId>, answer: &dyn Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match answer(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if yes >= quorum {
        VoteResult::Won
    } else if yes + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts answers under a possibly joint configuration.
pub fn vote_result(conf: &ConfState, answer: &dyn Fn(NodeId) -> Option<bool>) -> VoteResult {
    let incoming = majority_vote(&conf.voters, answer);
    let outgoing = majority_vote(&conf.voters_outgoing, answer);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// The largest index held by a majority of `voters`, given each voter's match index.
fn majority_committed(voters: &BTreeSet<NodeId>, matched: &dyn Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    let mut indexes: Vec<Index> = voters.iter().map(|&id| matched(id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

/// The largest index replicated on a quorum of the (possibly joint) configuration.
pub fn committed_index(conf: &ConfState, matched: &dyn Fn(NodeId) -> Index) -> Index {
    let incoming = majority_committed(&conf.voters, matched);
    let outgoing = majority_committed(&conf.voters_outgoing, matched);
    incoming.min(outgoing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn conf(voters: &[NodeId], outgoing: &[NodeId]) -> ConfState {
        ConfState {
            voters: voters.iter().copied().collect(),
            voters_outgoing: outgoing.iter().copied().collect(),
            ..ConfState::default()
        }
    }

    /// The obviously correct model: try every candidate index, keep the largest that a
    /// majority of each half has reached.
    fn committed_by_brute_force(conf: &ConfState, matched: &BTreeMap<NodeId, Index>) -> Index {
        let reached = |set: &BTreeSet<NodeId>, index: Index| {
            set.is_empty()
                || set
                    .iter()
                    .filter(|id| matched.get(id).copied().unwrap_or(0) >= index)
                    .count()
                    > set.len() / 2
        };
        (0..=20)
            .rev()
            .find(|&i| reached(&conf.voters, i) && reached(&conf.voters_outgoing, i))
            .unwrap_or(0)
    }

    #[test]
    fn committed_index_matches_brute_force_on_many_configurations() {
        let mut rng = crate::rng::SeededRng::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move |bound: u64| rng.below(bound);
        for _ in 0..5_000 {
            let incoming: Vec<NodeId> = (1..=7).filter(|_| next(2) == 0).collect();
            let incoming = if incoming.is_empty() {
                vec![1]
            } else {
                incoming
            };
            let outgoing: Vec<NodeId> = (1..=7).filter(|_| next(3) == 0).collect();
            let conf = conf(&incoming, &outgoing);
            let matched: BTreeMap<NodeId, Index> = (1..=7).map(|id| (id, next(20))).collect();
            let fast = committed_index(&conf, &|id| matched.get(&id).copied().unwrap_or(0));
            assert_eq!(
                fast,
                committed_by_brute_force(&conf, &matched),
                "{conf:?} {matched:?}"
            );
        }
    }

    #[test]
    fn joint_vote_needs_both_majorities() {
        let joint = conf(&[1, 2, 3], &[3, 4, 5]);
        let yes_from = |ids: &'static [NodeId]| move |id: NodeId| Some(ids.contains(&id));
        assert_eq!(vote_result(&joint, &yes_from(&[1, 2])), VoteResult::Lost);
        assert_eq!(
            vote_result(&joint, &yes_from(&[1, 2, 4, 5])),
            VoteResult::Won
        );
        assert_eq!(
            vote_result(&joint, &|id| (id <= 3).then_some(true)),
            VoteResult::Pending
        );
    }
}
