//! Shared checks of the fuzz targets: the invariants of the projections that every target that
//! drives the core (directly or through the HTTP handlers) asserts after each step. They live in
//! the test kit (`nixfleet-testkit`), shared with the core's property tests and the engine
//! simulation; a failed check is a fuzzer crash.

pub use nixfleet_testkit::{check_decided_once, check_invariants, replay};
