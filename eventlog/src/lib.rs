//! The nixfleet event log and what reads it without a server: the log itself (sled, hash
//! chain, group commit, archive, durability), snapshots of the projections, the post-mortem
//! analyses of the replay tool, and the wire views of events and projections that both the
//! HTTPS API and the replay tool render.
//!
//! It links neither HTTP nor TLS nor an async runtime (only tokio's `sync` watch channel), so
//! the CLI's offline replay can use it without the control plane.
#![deny(missing_docs)]

pub mod log;
pub mod postmortem;
pub mod snapshot;
pub mod views;
