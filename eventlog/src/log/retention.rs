//! Retention: which report and health events older than a configured age may leave the log.
//!
//! Every report appends a `ReportReceived`, and health results a `HealthMeasured` and a
//! `HealthReported`: almost all of the log, and of no use once later ones replaced them. When a
//! sealed segment's records are all older than the age, the archiver rewrites it without the
//! records this policy lets go (`Archive::compact`); every other event stays forever. A removed
//! run becomes a compacted range that keeps the hash of its last record, so the next record's
//! `prev_hash` still chains to it and `verify` proves one unbroken chain from record 1 to the head
//! (the removed records' content is gone; their place and the chain through them are not).
//!
//! What goes is chosen so that the projections do not change: a full replay of a compacted log
//! builds the same projections as a replay of the whole log (`eventlog/tests/retention.rs`). So a
//! record may go only if it is older than the age and
//! - a `ReportReceived` that is not its machine's last report (the projections keep the last),
//! - a `HealthReported` older than its machine's last [`HEALTH_HISTORY_MAX`] (the history kept),
//! - a `HealthMeasured` whose `HealthReported` (the next record) goes,
//!
//! and its machine was in no rollout still in the projections while the rollout ran (the gates
//! judge reports: a rollout's detail must replay the same). A finished rollout's reports go once
//! it is deleted (`RolloutDeleted`); each segment is compacted once.

use super::Record;
use nixfleet_core::ids::{MachineId, Timestamp};
use nixfleet_core::state::{State, HEALTH_HISTORY_MAX};
use nixfleet_core::Event;
use std::collections::HashMap;

/// What retention may remove, taken from the projections at one point (the policy only ever
/// allows more as the log grows, so a summary taken earlier stays safe to apply later).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Records appended before this may go.
    pub cutoff: Timestamp,
    machines: HashMap<MachineId, Marks>,
}

#[derive(Debug, Clone, Default)]
struct Marks {
    /// Sequence number of the machine's last report (0: none).
    last_report: u64,
    /// Health events before this sequence number are out of the history (0: none are).
    health_floor: u64,
    /// The rollouts it was in: from their `RolloutCreated`, until when they finished (ms;
    /// `u64::MAX` while running or paused).
    windows: Vec<(u64, u64)>,
}

impl Retention {
    /// The policy for `state` at `now`, keeping everything younger than `age`.
    pub fn new(state: &State, now: Timestamp, age: std::time::Duration) -> Retention {
        let mut machines: HashMap<MachineId, Marks> = state
            .machines
            .values()
            .map(|m| {
                let health_floor = if m.health.len() >= HEALTH_HISTORY_MAX {
                    m.health.front().map_or(0, |h| h.seq.0)
                } else {
                    0
                };
                let marks = Marks {
                    last_report: m.last_report.as_ref().map_or(0, |r| r.seq.0),
                    health_floor,
                    windows: Vec::new(),
                };
                (m.id.clone(), marks)
            })
            .collect();
        for r in state.rollouts.values() {
            let until = if r.status.is_active() {
                u64::MAX
            } else {
                r.updated_at.0
            };
            for b in &r.batches {
                for (m, _) in &b.machines {
                    if let Some(marks) = machines.get_mut(m) {
                        marks.windows.push((r.created_seq.0, until));
                    }
                }
            }
        }
        Retention {
            cutoff: Timestamp(now.0.saturating_sub(age.as_millis() as u64)),
            machines,
        }
    }

    /// Whether `rec` may be removed; `next` is the record after it when known (a
    /// `HealthMeasured` goes only with its `HealthReported`).
    pub fn removable(&self, rec: &Record, next: Option<&Record>) -> bool {
        if rec.at >= self.cutoff {
            return false;
        }
        let seq = rec.seq.0;
        let (machine, report) = match &rec.event {
            Event::ReportReceived { machine, .. } => (machine, true),
            Event::HealthReported { machine, .. } => (machine, false),
            Event::HealthMeasured { machine, .. } => {
                let paired = next.is_some_and(|n| {
                    n.seq.0 == seq + 1
                        && matches!(&n.event, Event::HealthReported { machine: m, .. } if m == machine)
                        && self.removable(n, None)
                });
                return paired;
            }
            _ => return false,
        };
        let Some(marks) = self.machines.get(machine) else {
            return false;
        };
        let superseded = if report {
            seq < marks.last_report
        } else {
            seq < marks.health_floor
        };
        superseded
            && !marks
                .windows
                .iter()
                .any(|&(from, until)| seq >= from && rec.at.0 <= until)
    }
}
