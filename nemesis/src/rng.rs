//! The seeded generator shared with the Raft core and the simulator (SplitMix64): one
//! implementation, so a seed means the same sequence everywhere.
pub use kvraft::rng::Rng;
