//! One node: storage, the multi-raft driver (batching, coalesced heartbeats, quiescence), QUIC transport, the KV state machine, and the client API service.
//!
//! Today it holds the node's durable storage ([`storage`]) and the replicated KV state machine
//! ([`kv`]); the multi-raft driver, transport and API come next.

pub mod kv;
pub mod multiraft;
pub mod storage;
