//! A seeded whole-cluster simulator for the Raft core.
//!
//! One seed determines everything: cluster size, options, fault rates and every random choice
//! (which message drops, which node crashes, which client acts). The world is advanced in
//! ticks; after every input to a replica and every handled Ready the [`checker`] verifies the
//! safety properties of Raft §5 (and linearizable reads, §6.4). A run ends with a healing
//! phase that checks liveness: faults stop, a leader emerges, and every acknowledged
//! proposal is applied on every member.
#![allow(dead_code)]

pub mod checker;
pub mod network;
pub mod rng;
pub mod world;
