//! What both sides of the wire share: messages, framing, key encoding, shard descriptors and epochs, errors, TLS setup, and the routing client.
//!
//! Today it holds shard descriptors, the cluster certificates (`rshard cert`), and the
//! linearizability checker that the simulations and end-to-end tests use to judge client
//! histories.

pub mod api;
pub mod certs;
pub mod client;
pub mod keytext;
pub mod linearizability;
pub mod quic;
pub mod rng;
pub mod shard;
pub mod tls;
pub mod wire;
