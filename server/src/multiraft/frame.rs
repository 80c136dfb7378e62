//! What one node sends another: one [`Frame`] per peer per driver iteration.
//!
//! A frame carries the Raft messages of every group between the two nodes. Heartbeats and
//! their answers travel coalesced, as small per-group records without the per-message
//! header, so the heartbeats of all groups led on A with followers on B cost one frame. Any
//! frame, even an empty one, tells the receiver its sender is alive (node-level liveness).
//!
//! Replica ids are node ids (a node holds at most one replica of a group), so a message's
//! `from` and `to` are the frame's; [`Frame::check`] refuses a frame that speaks for others.

use rshard_raft::{Index, Message, MessageKind, NodeId, Term};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::GroupId;

/// Bytes a decoded frame may occupy on the wire.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub from: NodeId,
    pub to: NodeId,
    pub messages: Vec<GroupMessage>,
    pub heartbeats: Vec<CoalescedHeartbeat>,
    pub heartbeat_responses: Vec<CoalescedHeartbeatResponse>,
    /// Groups whose replica on the receiver is no longer a member, as the sender's replica
    /// knows (see [`RemovedNotice`]).
    #[serde(default)]
    pub removed: Vec<RemovedNotice>,
    /// Groups whose replica on the sender has heard from no leader for an election timeout
    /// and cannot campaign to find one (a learner, say after a restart, or one whose leader
    /// lost office): a quiet leader here wakes, so its heartbeat names it; a replica here
    /// whose membership leaves the sender out answers with a [`RemovedNotice`] (a learner
    /// removed while it was down or cut off never says anything else that would draw one).
    #[serde(default)]
    pub leaderless: Vec<GroupId>,
}

/// "Your replica of `group` is not a member as of `conf_version`": sent by a replica whose
/// applied membership (committed, so final) leaves out the node a message came from. The
/// receiver, if its replica is behind that version and its log cannot bring it back in,
/// removes it; that is how a replica cut off while it was removed learns of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedNotice {
    pub group: GroupId,
    pub conf_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    pub group: GroupId,
    pub message: Message,
}

/// `MessageKind::Heartbeat` of one group, without the header the frame already carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoalescedHeartbeat {
    pub group: GroupId,
    pub term: Term,
    pub commit: Index,
    pub round: u64,
    pub quiesce: bool,
}

/// `MessageKind::HeartbeatResponse` of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoalescedHeartbeatResponse {
    pub group: GroupId,
    pub term: Term,
    pub round: u64,
    pub commit: Index,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {bytes} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge { bytes: usize },
    #[error("undecodable frame: {0}")]
    Malformed(String),
    #[error("frame from {from} to {to} carries a message from {message_from} to {message_to}")]
    ForeignMessage {
        from: NodeId,
        to: NodeId,
        message_from: NodeId,
        message_to: NodeId,
    },
}

impl Frame {
    pub fn new(from: NodeId, to: NodeId) -> Self {
        Frame {
            from,
            to,
            ..Frame::default()
        }
    }

    /// True if the frame carries heartbeats or their answers.
    pub fn has_heartbeats(&self) -> bool {
        !self.heartbeats.is_empty() || !self.heartbeat_responses.is_empty()
    }

    /// Adds a leaderless group, once per frame.
    pub fn push_leaderless(&mut self, group: GroupId) {
        if !self.leaderless.contains(&group) {
            self.leaderless.push(group);
        }
    }

    /// Adds a removal notice, once per group per frame.
    pub fn push_removed(&mut self, notice: RemovedNotice) {
        if !self.removed.iter().any(|n| n.group == notice.group) {
            self.removed.push(notice);
        }
    }

    /// Adds one group's message, coalescing heartbeats.
    pub fn push(&mut self, group: GroupId, message: Message) {
        match message.kind {
            MessageKind::Heartbeat {
                commit,
                round,
                quiesce,
            } => self.heartbeats.push(CoalescedHeartbeat {
                group,
                term: message.term,
                commit,
                round,
                quiesce,
            }),
            MessageKind::HeartbeatResponse { round, commit } => {
                self.heartbeat_responses.push(CoalescedHeartbeatResponse {
                    group,
                    term: message.term,
                    round,
                    commit,
                })
            }
            _ => self.messages.push(GroupMessage { group, message }),
        }
    }

    /// Every message of the frame as the Raft core takes it, heartbeats expanded.
    pub fn into_messages(self) -> impl Iterator<Item = (GroupId, Message)> {
        let (from, to) = (self.from, self.to);
        let heartbeats = self.heartbeats.into_iter().map(move |beat| {
            let kind = MessageKind::Heartbeat {
                commit: beat.commit,
                round: beat.round,
                quiesce: beat.quiesce,
            };
            (
                beat.group,
                Message {
                    from,
                    to,
                    term: beat.term,
                    kind,
                },
            )
        });
        let responses = self.heartbeat_responses.into_iter().map(move |answer| {
            let kind = MessageKind::HeartbeatResponse {
                round: answer.round,
                commit: answer.commit,
            };
            (
                answer.group,
                Message {
                    from,
                    to,
                    term: answer.term,
                    kind,
                },
            )
        });
        self.messages
            .into_iter()
            .map(|m| (m.group, m.message))
            .chain(heartbeats)
            .chain(responses)
    }

    /// Refuses a frame whose messages claim other endpoints than the frame's.
    pub fn check(&self) -> Result<(), FrameError> {
        for GroupMessage { message, .. } in &self.messages {
            if message.from != self.from || message.to != self.to {
                return Err(FrameError::ForeignMessage {
                    from: self.from,
                    to: self.to,
                    message_from: message.from,
                    message_to: message.to,
                });
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: MessagePack encoding cannot fail.
        rmp_serde::to_vec(self).expect("a frame always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { bytes: bytes.len() });
        }
        let frame: Frame =
            rmp_serde::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
        frame.check()?;
        Ok(frame)
    }
}
