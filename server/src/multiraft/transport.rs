//! How the driver hands frames to the network: without blocking, into bounded queues.
//!
//! The driver never waits on a peer. A transport whose queue to a peer is full refuses the
//! frame, the driver counts the drop and moves on, and Raft recovers the lost messages by
//! retrying (appends on their timeout, heartbeats on the next interval).

use std::collections::{BTreeMap, VecDeque};

use rshard_raft::NodeId;
use thiserror::Error;

use super::frame::Frame;
use super::snapshot::SnapshotMessage;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("the queue to node {0} is full; the frame was dropped")]
    QueueFull(NodeId),
}

pub trait Transport {
    /// Queues `frame` for `frame.to`; never blocks.
    fn send(&mut self, frame: Frame) -> Result<(), SendError>;
    /// Queues a snapshot chunk or acknowledgement, beside the frames (so a large transfer
    /// never delays heartbeats). Messages of one transfer must arrive in order or not at
    /// all. Never blocks.
    fn send_snapshot(&mut self, message: SnapshotMessage) -> Result<(), SendError>;
}

/// Frames and snapshot messages queued per peer in memory, for a simulation or test to
/// deliver as it likes.
#[derive(Debug)]
pub struct QueueTransport {
    queues: BTreeMap<NodeId, VecDeque<Frame>>,
    snapshot_queues: BTreeMap<NodeId, VecDeque<SnapshotMessage>>,
    max_queued_per_peer: usize,
}

fn push_bounded<M>(
    queues: &mut BTreeMap<NodeId, VecDeque<M>>,
    to: NodeId,
    message: M,
    max: usize,
) -> Result<(), SendError> {
    let queue = queues.entry(to).or_default();
    if queue.len() >= max {
        return Err(SendError::QueueFull(to));
    }
    queue.push_back(message);
    Ok(())
}

impl QueueTransport {
    /// Queues of at most `max_queued_per_peer` frames, and as many snapshot messages, per
    /// peer.
    pub fn new(max_queued_per_peer: usize) -> Self {
        QueueTransport {
            queues: BTreeMap::new(),
            snapshot_queues: BTreeMap::new(),
            max_queued_per_peer,
        }
    }

    /// Takes every queued frame, in the order sent per peer.
    pub fn drain(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.queues)
            .into_values()
            .flatten()
            .collect()
    }

    /// Takes every queued snapshot message, in the order sent per peer.
    pub fn drain_snapshots(&mut self) -> Vec<SnapshotMessage> {
        std::mem::take(&mut self.snapshot_queues)
            .into_values()
            .flatten()
            .collect()
    }
}

impl Transport for QueueTransport {
    fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        let to = frame.to;
        push_bounded(&mut self.queues, to, frame, self.max_queued_per_peer)
    }

    fn send_snapshot(&mut self, message: SnapshotMessage) -> Result<(), SendError> {
        let to = message.to();
        push_bounded(
            &mut self.snapshot_queues,
            to,
            message,
            self.max_queued_per_peer,
        )
    }
}
