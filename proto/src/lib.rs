//! Wire types of the nixfleet HTTP API.
//!
//! This crate is the only API boundary shared by the control plane, the agent and the CLI.
//! It holds plain serde types and nothing else: no IO, no HTTP client, no storage.
//! Field names follow the v0.1 wire format so that v0.1 clients and test scripts keep working;
//! fields added since are optional with defaults, so old peers ignore them.
#![deny(missing_docs)]

pub mod api;
