//! What the log benchmarks share: the events they write (registrations, up-to-date reports and
//! passing health results of one check) and the disk usage they print.
#![allow(dead_code)] // Each example uses part of it.

use nixfleet_core::event::{CheckResult, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, StorePath};
use std::path::Path;

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

/// Bytes in the files under `p` (or of the file `p`; 0 when it does not exist).
pub fn du(p: &Path) -> u64 {
    let Ok(m) = std::fs::metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| du(&e.unwrap().path()))
        .sum()
}
