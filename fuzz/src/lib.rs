//! Fuzz harnesses for the AGEniX contract (`agenix-proto`): the plan parser and validator,
//! the frame decoder and the envelope verifier.
//!
//! Each harness is a plain function over the input bytes, so the libFuzzer targets in
//! `fuzz_targets/` and the replay tests (`tests/replay.rs`, every seed and every regression
//! input) run the same code. A harness fails by panicking: on a panic inside proto, or on a
//! property of the contract that does not hold (a parsed plan that does not survive its own
//! serialization, a tampered envelope that verifies). The allocation caps are enforced by
//! [`alloc::Capped`], which each target installs as its global allocator.
//!
//! What this crate does not do: it never changes proto, and it holds no state between
//! inputs apart from fixtures built once ([`fixtures`]).

pub mod alloc;
pub mod fixtures;
pub mod seeds;
pub mod targets;
