//! Words for events and times: one line per event for `events`, UTC times, elapsed times, and
//! the parsing of `--since`/`--until` values.

use crate::error::{CliError, Result};
use crate::output::short_path;
use nixfleet_core::event::{DesiredCause, Event, RolloutPlan, SwitchOutcome, Target};
use nixfleet_core::ids::{StorePath, Timestamp};
use std::time::{Duration, UNIX_EPOCH};

/// `2025-11-24 16:00:05` (UTC, to the second).
pub fn utc(t: Timestamp) -> String {
    let s = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t.0)).to_string();
    s.trim_end_matches('Z').replace('T', " ")
}

/// `2025-11-24T16:00:05.123Z`.
pub fn rfc3339(t: Timestamp) -> String {
    nixfleet_eventlog::views::rfc3339(t)
}

/// Time from `from` to `to` as `+0s`, `+45s`, `+2m05s`, `+1h02m`.
pub fn elapsed(from: Timestamp, to: Timestamp) -> String {
    let secs = to.0.saturating_sub(from.0) / 1000;
    match secs {
        0..=59 => format!("+{secs}s"),
        60..=3599 => format!("+{}m{:02}s", secs / 60, secs % 60),
        _ => format!("+{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// A duration in words: `45s`, `2m05s`, `1h02m`.
pub fn duration(from: Timestamp, to: Timestamp) -> String {
    elapsed(from, to).trim_start_matches('+').to_string()
}

/// Parses a time given on the command line: RFC 3339 (`2025-11-24T16:00:05Z`), or the form the
/// tables print (`2025-11-24 16:00:05`, UTC), optionally with fractional seconds.
pub fn parse_time(flag: &str, s: &str) -> Result<Timestamp> {
    humantime::parse_rfc3339_weak(s.trim())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| Timestamp(d.as_millis() as u64))
        .ok_or_else(|| {
            CliError::usage(format!(
                "{flag} {s:?}: not a time; use UTC like 2025-11-24T16:00:05Z or \"2025-11-24 16:00:05\""
            ))
        })
}

fn path(p: &StorePath) -> String {
    short_path(p.as_str())
}

fn opt_path(p: &Option<StorePath>) -> String {
    p.as_ref().map(path).unwrap_or_else(|| "nothing".into())
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `release rel-2, canary, 2 batches (1+1), threshold 0, on failure pause, health timeout 30s`.
pub fn plan(p: &RolloutPlan) -> String {
    let target = match &p.target {
        Target::Tags(t) => format!("tags {}", join(t)),
        Target::Hosts(h) => format!("hosts {}", join(h)),
    };
    format!(
        "release {}, {}, {target}, {} batch{} ({}), threshold {}, on failure {}, health timeout {}s",
        p.release,
        p.strategy,
        p.batches.len(),
        if p.batches.len() == 1 { "" } else { "es" },
        p.batches
            .iter()
            .map(|b| b.len().to_string())
            .collect::<Vec<_>>()
            .join("+"),
        p.failure_threshold,
        p.on_failure,
        p.health_timeout_secs,
    )
}

fn cause(c: &DesiredCause) -> String {
    match c {
        DesiredCause::Batch {
            rollout,
            batch_index,
        } => format!("{rollout} batch {batch_index}"),
        DesiredCause::Notify => "deployed out of band".into(),
        DesiredCause::Revert { rollout } => format!("{rollout} reverted"),
        DesiredCause::Operator => "by an operator".into(),
    }
}

/// One line saying what an event means, for the events table.
pub fn describe(e: &Event) -> String {
    match e {
        Event::MachineRegistered {
            machine,
            lifecycle,
            tags,
            auto,
        } => format!(
            "{machine} registered{}, {lifecycle}, tags {}",
            if *auto { " by its first report" } else { "" },
            or_none(join(tags))
        ),
        Event::LifecycleChanged { machine, from, to } => format!("{machine} {from} → {to}"),
        Event::TagsSet {
            machine,
            tags,
            source,
        } => format!("{machine} tags {} (from {source})", or_none(join(tags))),
        Event::ReportReceived {
            machine,
            generation,
            success,
            message,
            rolled_back_from,
            dry_run,
            ..
        } => {
            let mut s = format!(
                "{machine} runs {}: {}",
                opt_path(generation),
                if *success { "ok" } else { "FAILED" }
            );
            if !message.is_empty() {
                s.push_str(&format!(" \"{message}\""));
            }
            if let Some(p) = rolled_back_from {
                s.push_str(&format!(", rolled back from {}", path(p)));
            }
            if *dry_run {
                s.push_str(", dry run");
            }
            s
        }
        Event::HealthReported {
            machine,
            generation,
            results,
            all_passed,
        } => {
            let passed = results.iter().filter(|r| r.passed).count();
            let mut s = format!(
                "{machine} health {} on {}: {passed}/{} checks passed",
                if *all_passed { "ok" } else { "FAILED" },
                opt_path(generation),
                results.len()
            );
            for r in results.iter().filter(|r| !r.passed) {
                s.push_str(&format!("; {} failed", r.name));
                if !r.message.is_empty() {
                    s.push_str(&format!(": {}", r.message));
                }
            }
            s
        }
        Event::DesiredGenerationSet {
            machine,
            path: p,
            cause: c,
            ..
        } => format!("{machine} should run {} ({})", path(p), cause(c)),
        Event::DesiredGenerationCleared { machine, cause: c } => {
            format!("{machine} should run nothing in particular ({})", cause(c))
        }
        Event::ReleaseCreated {
            release,
            flake_ref,
            flake_rev,
            entries,
            ..
        } => {
            let mut s = format!("{release}: {} hosts", entries.len());
            if let Some(f) = flake_ref {
                s.push_str(&format!(" from {f}"));
                if let Some(r) = flake_rev {
                    s.push_str(&format!(" at {r}"));
                }
            }
            s
        }
        Event::ReleaseDeleted { release } => format!("{release} deleted"),
        Event::RolloutCreated { rollout, plan: p } => format!("{rollout}: {}", plan(p)),
        Event::BatchStarted {
            rollout,
            batch_index,
            attempt,
            previous,
        } => format!(
            "{rollout} batch {batch_index} (attempt {attempt}): {}",
            previous
                .iter()
                .map(|(m, _)| m.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::BatchSucceeded {
            rollout,
            batch_index,
            healthy,
            unhealthy,
            threshold,
        } => format!(
            "{rollout} batch {batch_index} succeeded: {healthy} healthy, {unhealthy} unhealthy, threshold {threshold}"
        ),
        Event::BatchFailed {
            rollout,
            batch_index,
            healthy,
            unhealthy,
            threshold,
            reason,
        } => format!(
            "{rollout} batch {batch_index} FAILED ({reason}): {healthy} healthy, {unhealthy} unhealthy, threshold {threshold}"
        ),
        Event::RolloutPaused { rollout, reason } => format!("{rollout} paused: {reason}"),
        Event::RolloutResumed { rollout } => format!("{rollout} resumed"),
        Event::RolloutCancelled { rollout } => format!("{rollout} cancelled"),
        Event::RolloutCompleted { rollout } => format!("{rollout} completed"),
        Event::RolloutFailed { rollout, reason } => format!("{rollout} failed: {reason}"),
        Event::RolloutReverted { rollout, restored } => format!(
            "{rollout} reverted: {}",
            restored
                .iter()
                .map(|(m, p)| format!("{m} → {}", opt_path(p)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::RolloutDeleted { rollout } => format!("{rollout} deleted"),
        Event::MachineQuarantined {
            machine,
            path: p,
            reason,
        } => format!(
            "{machine} will not be asked for {} again: {reason}",
            path(p)
        ),
        Event::QuarantineCleared { machine, path: p } => {
            format!("{machine} may be asked for {} again", path(p))
        }
        Event::ApiKeyCreated { name, role, .. } => format!("key {name} created, role {role}"),
        Event::ApiKeyRevoked { name } => format!("key {name} revoked"),
        Event::BootstrapDone { name } => format!("bootstrap closed (first key {name})"),
        Event::HealthMeasured {
            machine,
            measured_at,
        } => format!(
            "{machine} health checks below measured at {}",
            rfc3339(*measured_at)
        ),
        Event::RolloutOptionsSet {
            rollout,
            activation,
            allow_failed_units,
        } => format!(
            "{rollout} options: activation {activation}{}",
            if *allow_failed_units {
                ", failed units allowed"
            } else {
                ""
            }
        ),
        Event::SwitchReported {
            machine,
            path: p,
            activation,
            outcome,
            exit_code,
            failed_units,
        } => {
            let mut s = format!("{machine} {activation} to {}: {outcome}", path(p));
            if *outcome == SwitchOutcome::FailedUnits {
                s.push_str(&format!(
                    " ({} units)",
                    failed_units.map_or_else(|| "some".to_owned(), |n| n.to_string())
                ));
            }
            if let Some(c) = exit_code.filter(|c| *c != 0) {
                s.push_str(&format!(", exit status {c}"));
            }
            s
        }
        Event::RebootNeededSet {
            machine,
            components,
        } => {
            if components.is_empty() {
                format!("{machine} no longer needs a reboot")
            } else {
                format!(
                    "{machine} needs a reboot: booted {} differ from the running generation's",
                    components.join(", ")
                )
            }
        }
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_and_elapsed_times_are_short() {
        let t = Timestamp(1_764_000_005_123);
        assert_eq!(utc(t), "2025-11-24 16:00:05");
        assert_eq!(
            parse_time("--until", "2025-11-24 16:00:05").ok(),
            Some(Timestamp(1_764_000_005_000))
        );
        assert_eq!(
            parse_time("--until", "2025-11-24T16:00:05.123Z").ok(),
            Some(t)
        );
        assert!(parse_time("--until", "yesterday").is_err());
        assert_eq!(elapsed(Timestamp(0), Timestamp(45_000)), "+45s");
        assert_eq!(elapsed(Timestamp(0), Timestamp(125_000)), "+2m05s");
        assert_eq!(elapsed(Timestamp(0), Timestamp(3_720_000)), "+1h02m");
    }
}
