//! The errors the core returns. Each leaves the replica's state unchanged, except
//! `Storage`, after which the group must stop.

use thiserror::Error;

use crate::confchange::ConfChangeError;
use crate::storage::StorageError;
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Error {
    /// Only the leader takes proposals, reads and transfers; `leader` is who to ask instead.
    #[error("this replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Leadership is moving to `to`; retry against the new leader.
    #[error("leadership is being transferred to {to}; retry shortly")]
    TransferInProgress { to: NodeId },
    /// Too much proposed and not yet committed; retry when the log drains.
    #[error("too many uncommitted bytes; retry when replication catches up")]
    TooManyUncommittedBytes,
    /// Another membership change has not been applied yet.
    #[error("a membership change is still pending; wait for it to apply")]
    ConfChangePending,
    #[error("invalid membership change: {0}")]
    InvalidConfChange(#[from] ConfChangeError),
    /// Learners and removed replicas cannot campaign or receive leadership.
    #[error("replica {0} is not a voter")]
    NotVoter(NodeId),
    #[error("too many pending reads; retry later")]
    TooManyPendingReads,
    #[error("message addressed to {to} delivered to {id}")]
    WrongRecipient { id: NodeId, to: NodeId },
    /// A peer sent a message no correct replica sends; it was dropped.
    #[error("malformed message from {from}: {reason}")]
    MalformedMessage { from: NodeId, reason: &'static str },
    /// A leader was heard within an election timeout (or, in lease mode, this replica just
    /// restarted): campaigning now could break its lease. Use `transfer_leader` instead.
    #[error("a leader ({leader:?}) is alive; transfer leadership instead of campaigning")]
    LeaderAlive { leader: Option<NodeId> },
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The storage failed; the group must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
