//! How the driver hands frames to the network: without blocking, into bounded queues.
//!
//! The driver never waits on a peer. A transport whose queue to a peer is full refuses the
//! frame, the driver counts the drop and moves on, and Raft recovers the lost messages by
//! retrying (appends on their timeout, heartbeats on the next interval).

use std::collections::{BTreeMap, VecDeque};

use rshard_raft::NodeId;
use thiserror::Error;

use super::frame::Frame;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("the queue to node {0} is full; the frame was dropped")]
    QueueFull(NodeId),
}

pub trait Transport {
    /// Queues `frame` for `frame.to`; never blocks.
    fn send(&mut self, frame: Frame) -> Result<(), SendError>;
}

/// Frames queued per peer in memory, for a simulation or test to deliver as it likes.
#[derive(Debug)]
pub struct QueueTransport {
    queues: BTreeMap<NodeId, VecDeque<Frame>>,
    max_queued_frames_per_peer: usize,
}

impl QueueTransport {
    pub fn new(max_queued_frames_per_peer: usize) -> Self {
        QueueTransport {
            queues: BTreeMap::new(),
            max_queued_frames_per_peer,
        }
    }

    /// Takes every queued frame, in the order sent per peer.
    pub fn drain(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.queues)
            .into_values()
            .flatten()
            .collect()
    }
}

impl Transport for QueueTransport {
    fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        let queue = self.queues.entry(frame.to).or_default();
        if queue.len() >= self.max_queued_frames_per_peer {
            return Err(SendError::QueueFull(frame.to));
        }
        queue.push_back(frame);
        Ok(())
    }
}
