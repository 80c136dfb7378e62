//! One node: storage, the multi-raft driver (batching, coalesced heartbeats, quiescence), QUIC transport, the KV state machine, and the client API service.
//!
//! Today it holds the node's durable storage ([`storage`]), the replicated KV state machine
//! ([`kv`]) and the multi-raft driver ([`multiraft`]); the QUIC transport and the client API
//! come next.

pub mod kv;
pub mod multiraft;
pub mod node;
pub mod storage;
