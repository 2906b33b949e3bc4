//! The nixfleet control plane as a library: event log, engine (projections + executor) and,
//! in later modules, the HTTPS API. The binary `nixfleet-control-plane` is a thin `main` over it.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod engine;
pub use nixfleet_eventlog::{log, postmortem, snapshot};
