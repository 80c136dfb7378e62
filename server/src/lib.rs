//! One node: storage, the multi-raft driver (batching, coalesced heartbeats, quiescence), QUIC transport, the KV state machine, and the client API service.
