//! The Raft consensus core of rshard: one value per replica of one group, fed with ticks,
//! messages and proposals, handing back work as plain data. It does no IO, reads no clock,
//! spawns nothing and draws randomness only from a seed in its [`Config`], so the same inputs
//! always produce the same outputs and a failing simulation seed replays exactly.
//!
//! # Driving a replica
//!
//! Inputs, in any order: [`Raft::tick`] (logical time), [`Raft::step`] (a message from a
//! peer), [`Raft::propose`], [`Raft::propose_conf_change`], [`Raft::read_index`],
//! [`Raft::transfer_leader`], [`Raft::campaign`], [`Raft::quiesce`] / [`Raft::wake`].
//!
//! Then, whenever [`Raft::has_ready`], take a [`Ready`] with [`Raft::ready`] and do, in this
//! order:
//!
//! 1. Send `ready.messages` (they may go before anything is persisted).
//! 2. Persist atomically: install `ready.snapshot` if set (it replaces the log and the state
//!    machine), append `ready.entries` (replacing any conflicting suffix), store
//!    `ready.hard_state` if set. Make it durable (fsync). If that fails, stop: never retry.
//! 3. Send `ready.persisted_messages`.
//! 4. Apply `ready.committed_entries` in order. For a membership change call
//!    [`Raft::apply_conf_change`] and persist the returned [`ConfState`] with the applied
//!    index.
//! 5. Serve each of `ready.read_states` once the applied index reaches its index.
//! 6. Call [`Raft::advance`] with the Ready.
//!
//! Writes go through [`Raft::storage_mut`]; the core reads persisted state back only through
//! the [`Storage`] trait. Compaction is the caller's: after applying, record a snapshot and
//! drop the log prefix it covers; followers behind it are then sent the snapshot.
//!
//! # Guarantees
//!
//! Election safety, log matching, leader completeness and state machine safety (Raft §5) hold
//! under any message loss, duplication, reordering and delay, and any crash that loses what
//! was not yet persisted, provided the caller keeps the duties above. Nothing is committed
//! before a quorum has persisted it, the leader included.
//!
//! What it deliberately does not do: serialize, talk to the network, batch across groups,
//! or decide when to snapshot. Those belong to the multi-raft driver.

pub mod confchange;
mod config;
mod election;
mod error;
mod log;
mod membership;
pub mod message;
pub mod progress;
pub mod quorum;
mod raft;
mod read;
mod ready;
mod replication;
mod rng;
pub mod storage;
pub mod types;

pub use confchange::{ConfChange, ConfChangeError, ConfChangeStep, Transition};
pub use config::{Config, ReadMode};
pub use error::Error;
pub use message::{AppendResult, Message, MessageKind};
pub use raft::Raft;
pub use ready::Ready;
pub use storage::{InitialState, MemStorage, Storage, StorageError};
pub use types::{
    ConfState, Entry, HardState, Index, LogPosition, NodeId, Payload, ReadState, Role, Snapshot,
    SnapshotMetadata, SoftState, Term,
};
