//! The errors the core returns. Each leaves the replica's state unchanged.

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
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The storage failed; the group must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
