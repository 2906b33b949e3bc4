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
//! and no rollout was open then (from its `RolloutCreated` to its end: the gates judged those
//! reports, and a replay must judge them again; `Archive::prepare_compaction` tracks them, and
//! each compacted segment records the rollouts open at its end for the next). Each segment is
//! compacted once, oldest first, when its last record is older than the age.

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
}

impl Retention {
    /// The policy for `state` at `now`, keeping everything younger than `age`.
    pub fn new(state: &State, now: Timestamp, age: std::time::Duration) -> Retention {
        let machines: HashMap<MachineId, Marks> = state
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
                };
                (m.id.clone(), marks)
            })
            .collect();
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
        if report {
            seq < marks.last_report
        } else {
            seq < marks.health_floor
        }
    }
}

/// The ranges of sequence numbers missing between `records` (read in order from a log whose
/// chain was verified, these are exactly the ranges retention compacted), as `(first, last)`.
pub fn gaps(records: &[Record]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = 1;
    for r in records {
        if r.seq.0 > next {
            out.push((next, r.seq.0 - 1));
        }
        next = r.seq.0 + 1;
    }
    out
}

/// The first compacted range inside the life of `stream` (from its first record to its last),
/// if any: the reports of that time are gone, so an analysis that re-runs them cannot.
pub fn compacted_during(records: &[Record], stream: &str) -> Option<(u64, u64)> {
    let mut mine = records.iter().filter(|r| r.stream == stream);
    let first = mine.next()?.seq.0;
    let last = mine.next_back().map_or(first, |r| r.seq.0);
    gaps(records)
        .into_iter()
        .find(|&(a, b)| a <= last && b >= first)
}

/// One line for people naming the compacted ranges (None when there are none).
pub fn describe_gaps(gaps: &[(u64, u64)]) -> Option<String> {
    if gaps.is_empty() {
        return None;
    }
    let n: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    let shown: Vec<String> = gaps
        .iter()
        .take(8)
        .map(|(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let more = if gaps.len() > 8 {
        format!(" and {} more ranges", gaps.len() - 8)
    } else {
        String::new()
    };
    Some(format!(
        "{n} records were compacted by retention (old report and health events; the chain runs through the hashes kept): {}{more}",
        shown.join(", ")
    ))
}
