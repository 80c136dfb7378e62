//! Membership changes by joint consensus (thesis §4.3), as pure functions on [`ConfState`].
//!
//! A change is a list of single steps plus a transition rule:
//! - one voter added or removed (learner steps are free) with [`Transition::Auto`] is applied
//!   directly ("simple" change, thesis §4.1: one voter at a time keeps majorities overlapping);
//! - anything else enters a joint configuration `C_old,new`, where every decision needs a
//!   majority of both halves; an empty change leaves it;
//! - `Auto` and `Implicit` joint configurations are left automatically by the leader once
//!   applied; `Explicit` ones wait for the caller to propose the empty change.
//!
//! So moving a replica is one call: `[AddVoter(new), Remove(old)]` enters the joint
//! configuration and leaves it by itself.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{ConfState, NodeId};

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeStep {
    /// Make the node a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Make the node a learner (demoting it if it is a voter).
    AddLearner(NodeId),
    /// Remove the node entirely.
    Remove(NodeId),
}

/// How a change moves through joint consensus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// Simple if possible, otherwise joint and left automatically.
    #[default]
    Auto,
    /// Always joint, left automatically.
    Implicit,
    /// Always joint, left only when the caller proposes the empty change.
    Explicit,
}

/// A proposed membership change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    pub transition: Transition,
    pub changes: Vec<ConfChangeStep>,
}

impl ConfChange {
    /// A change of the given steps with the default transition.
    pub fn new(changes: impl IntoIterator<Item = ConfChangeStep>) -> Self {
        ConfChange {
            transition: Transition::Auto,
            changes: changes.into_iter().collect(),
        }
    }

    /// The empty change, which leaves a joint configuration.
    pub fn leave_joint() -> Self {
        ConfChange::default()
    }

    /// True if this change leaves a joint configuration rather than changing members.
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    fn uses_joint(&self) -> bool {
        self.transition != Transition::Auto || self.changes.len() > 1
    }
}

/// Why a membership change cannot be applied. Nothing changes when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfChangeError {
    #[error("the configuration is joint; leave it before changing members again")]
    AlreadyJoint,
    #[error("the configuration is not joint, so there is nothing to leave")]
    NotJoint,
    #[error("the change would leave no voters")]
    NoVoters,
}

/// Applies `change` to `current`, returning the new configuration, or an error and no change.
pub fn apply(current: &ConfState, change: &ConfChange) -> Result<ConfState, ConfChangeError> {
    if change.is_leave_joint() {
        return leave_joint(current);
    }
    if current.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    let mut next = current.clone();
    if change.uses_joint() {
        if current.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        next.voters_outgoing = current.voters.clone();
        next.auto_leave = change.transition != Transition::Explicit;
    }
    for step in &change.changes {
        apply_step(&mut next, *step);
    }
    if next.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    // A simple change has exactly one step, so at most one voter differs: majorities of the
    // old and new configurations always overlap (thesis §4.1).
    debug_assert!(
        next.is_joint() || current.voters.symmetric_difference(&next.voters).count() <= 1
    );
    check_invariants(&next);
    Ok(next)
}

fn leave_joint(current: &ConfState) -> Result<ConfState, ConfChangeError> {
    if !current.is_joint() {
        return Err(ConfChangeError::NotJoint);
    }
    let mut next = current.clone();
    next.learners.append(&mut next.learners_next);
    next.voters_outgoing.clear();
    next.auto_leave = false;
    check_invariants(&next);
    Ok(next)
}

fn apply_step(conf: &mut ConfState, step: ConfChangeStep) {
    match step {
        ConfChangeStep::AddVoter(id) => {
            conf.learners.remove(&id);
            conf.learners_next.remove(&id);
            conf.voters.insert(id);
        }
        ConfChangeStep::AddLearner(id) => {
            conf.voters.remove(&id);
            if conf.voters_outgoing.contains(&id) {
                // Still a voter of C_old: becomes a learner only when the joint config is left.
                conf.learners_next.insert(id);
            } else {
                conf.learners.insert(id);
            }
        }
        ConfChangeStep::Remove(id) => {
            conf.voters.remove(&id);
            conf.learners.remove(&id);
            conf.learners_next.remove(&id);
        }
    }
}

/// A learner is never a voter of the incoming configuration, and `learners_next` only holds
/// outgoing voters. A violation is a bug in this module, not bad input.
fn check_invariants(conf: &ConfState) {
    assert!(
        conf.learners.is_disjoint(&conf.voters),
        "learner is also a voter: {conf:?}"
    );
    assert!(
        conf.learners.is_disjoint(&conf.voters_outgoing),
        "learner in C_old: {conf:?}"
    );
    assert!(
        conf.learners_next.is_subset(&conf.voters_outgoing),
        "bad learners_next: {conf:?}"
    );
    assert!(
        conf.is_joint() || !conf.auto_leave,
        "auto_leave outside joint: {conf:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use ConfChangeStep::*;

    fn voters(ids: &[NodeId]) -> ConfState {
        ConfState::with_voters(ids.iter().copied())
    }

    #[test]
    fn simple_change_adds_one_voter() {
        let next = apply(&voters(&[1, 2, 3]), &ConfChange::new([AddVoter(4)])).expect("valid");
        assert_eq!(next, voters(&[1, 2, 3, 4]));
    }

    #[test]
    fn replacing_a_voter_goes_through_joint_and_leaves_automatically() {
        let change = ConfChange::new([AddVoter(4), Remove(1)]);
        let joint = apply(&voters(&[1, 2, 3]), &change).expect("valid");
        assert!(joint.is_joint() && joint.auto_leave);
        assert_eq!(joint.voters_outgoing, voters(&[1, 2, 3]).voters);
        assert_eq!(joint.voters, voters(&[2, 3, 4]).voters);
        assert_eq!(apply(&joint, &change), Err(ConfChangeError::AlreadyJoint));
        let left = apply(&joint, &ConfChange::leave_joint()).expect("valid");
        assert_eq!(left, voters(&[2, 3, 4]));
    }

    #[test]
    fn demoting_a_voter_in_joint_defers_learnership_until_leave() {
        let change = ConfChange {
            transition: Transition::Explicit,
            changes: vec![AddLearner(3), AddVoter(4)],
        };
        let joint = apply(&voters(&[1, 2, 3]), &change).expect("valid");
        assert!(!joint.auto_leave);
        assert!(joint.learners_next.contains(&3) && !joint.learners.contains(&3));
        let left = apply(&joint, &ConfChange::leave_joint()).expect("valid");
        assert_eq!(left.learners, BTreeSet::from([3]));
        assert_eq!(left.voters, BTreeSet::from([1, 2, 4]));
    }

    #[test]
    fn errors_change_nothing() {
        let conf = voters(&[1]);
        assert_eq!(
            apply(&conf, &ConfChange::new([Remove(1)])),
            Err(ConfChangeError::NoVoters)
        );
        assert_eq!(
            apply(&conf, &ConfChange::leave_joint()),
            Err(ConfChangeError::NotJoint)
        );
    }

    #[test]
    fn learner_promotion_is_simple() {
        let with_learner =
            apply(&voters(&[1, 2, 3]), &ConfChange::new([AddLearner(4)])).expect("valid");
        assert_eq!(with_learner.learners, BTreeSet::from([4]));
        let promoted = apply(&with_learner, &ConfChange::new([AddVoter(4)])).expect("valid");
        assert!(promoted.learners.is_empty() && promoted.voters.contains(&4));
    }
}
