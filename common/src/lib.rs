//! What both sides of the wire share: messages, framing, key encoding, shard descriptors and epochs, errors, TLS setup, and the routing client.
//!
//! Today it holds shard descriptors and the linearizability checker that the simulations and
//! end-to-end tests use to judge client histories.

pub mod linearizability;
pub mod rng;
pub mod shard;
