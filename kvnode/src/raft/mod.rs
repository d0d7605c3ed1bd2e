//! The Raft core: a pure state machine. No I/O, no clock, no threads, no unseeded randomness.
pub mod message;
