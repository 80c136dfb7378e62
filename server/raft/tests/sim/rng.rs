//! The simulator's seeded generator: every random choice of a run comes from it.

pub use rshard_common::rng::SeededRng as SimRng;
