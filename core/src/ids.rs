//! Validated identifiers and scalar newtypes, from `nixfleet-ids`.
//!
//! They live in their own crate so that the control plane, the agent and the CLI check ids and
//! store paths by one rule; the core re-exports them so `nixfleet_core::ids::*` keeps working.

pub use nixfleet_ids::*;
