//! The events the log benchmarks write: registrations, up-to-date reports and passing health
//! results (one check).
#![allow(dead_code)] // Each example uses part of it.

use nixfleet_core::event::{CheckResult, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, StorePath};

/// One active machine registered per id.
pub fn registered(machines: impl IntoIterator<Item = MachineId>, auto: bool) -> Vec<Event> {
    machines
        .into_iter()
        .map(|machine| Event::MachineRegistered {
            machine,
            lifecycle: Lifecycle::Active,
            tags: vec![],
            auto,
        })
        .collect()
}

/// A successful up-to-date report.
pub fn report(machine: MachineId, generation: Option<StorePath>, uptime_secs: u64) -> Event {
    Event::ReportReceived {
        machine,
        generation,
        success: true,
        message: "up-to-date".into(),
        agent_version: "0.2.0".into(),
        uptime_secs,
        dry_run: false,
        rolled_back_from: None,
    }
}

/// A passing health result of one check.
pub fn health(
    machine: MachineId,
    generation: Option<StorePath>,
    check: &str,
    duration_ms: u64,
) -> Event {
    Event::HealthReported {
        machine,
        generation,
        results: vec![CheckResult {
            name: check.into(),
            passed: true,
            duration_ms,
            message: String::new(),
        }],
        all_passed: true,
    }
}
