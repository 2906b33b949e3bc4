//! The nixfleet agent as a library, so integration tests can drive its parts directly.
//!
//! Map: `config` (flags) → `run` (loop) → `client` (the control plane, the only HTTP to it) and
//! `cycle` (one deploy cycle) → `nix` (fetch, profile), `switch` (switch and wait), `health`
//! (checks), `quarantine` (paths not to apply again), `inflight` (the deploy in progress, across
//! restarts); every path that comes in is a `nixfleet_ids::StorePath`, checked by the one rule
//! the control plane and the CLI use too; `exec` runs every child process
//! with a deadline; `telemetry` holds logging and metrics.
//!
//! Architecture invariants: only `client` talks HTTP to the control plane, and only through
//! `nixfleet_proto::api::v1`; no command ever goes through a shell except a configured command
//! health check (`/bin/sh -c`); every child process has a deadline.

#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod cycle;
pub mod exec;
pub mod health;
pub mod inflight;
pub mod nix;
pub mod quarantine;
pub mod run;
pub mod switch;
pub mod telemetry;

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `s` cut to at most `max` bytes on a character boundary, ending in "…" when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
