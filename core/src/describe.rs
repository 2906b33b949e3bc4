//! Events in words: the one place that says what an event means, for every reader.
//!
//! - [`audit`]: the audit row (v0.1 action names) the reducer keeps in `State::audit`;
//! - [`line()`]: one line per event, for the replay tool's `events` table;
//! - [`story`]: a line of a rollout's story (`nixfleet timeline`);
//! - [`decision`]: an executor decision as `what-if` compares them;
//! - [`log_line`]: the control plane's log message for an executor decision (the v0.1 lines,
//!   e.g. "Health timeout elapsed, treating pending machines as unhealthy").
//!
//! The texts are what operators and tests read; change them only on purpose. Pure: no IO, no
//! clock (times are the events' own).

use crate::event::{DesiredCause, Event, RolloutPlan, SwitchOutcome, Target};
use crate::ids::{RolloutId, StorePath, Timestamp};

/// An audit row: (action, target, detail). Reports and health results are not audited: the log
/// has them.
pub fn audit(e: &Event) -> Option<(&'static str, String, String)> {
    Some(match e {
        Event::MachineRegistered {
            machine,
            lifecycle,
            tags,
            auto,
        } => (
            "register",
            machine.to_string(),
            format!(
                "{}lifecycle={lifecycle} tags={}",
                if *auto { "auto " } else { "" },
                join(tags)
            ),
        ),
        Event::LifecycleChanged { machine, from, to } => (
            "update_lifecycle",
            machine.to_string(),
            format!("{from} -> {to}"),
        ),
        Event::TagsSet {
            machine,
            tags,
            source,
        } => (
            "set_tags",
            machine.to_string(),
            format!("{source}: {}", join(tags)),
        ),
        Event::ReportReceived { .. }
        | Event::HealthReported { .. }
        | Event::HealthMeasured { .. }
        | Event::SwitchReported { .. }
        | Event::RebootNeededSet { .. } => return None,
        Event::DesiredGenerationSet {
            machine,
            path,
            cause,
            ..
        } => {
            let action = match cause {
                DesiredCause::Notify => "notify_deploy",
                DesiredCause::Revert { .. } => "revert",
                _ => "set_desired",
            };
            (action, machine.to_string(), path.to_string())
        }
        Event::DesiredGenerationCleared { machine, .. } => {
            ("clear_desired", machine.to_string(), String::new())
        }
        Event::ReleaseCreated {
            release, entries, ..
        } => (
            "create_release",
            release.to_string(),
            format!("{} hosts", entries.len()),
        ),
        Event::ReleaseDeleted { release } => ("delete_release", release.to_string(), String::new()),
        Event::MachineQuarantined { machine, path, .. } => {
            ("quarantine", machine.to_string(), path.to_string())
        }
        Event::QuarantineCleared { machine, path } => {
            ("clear_quarantine", machine.to_string(), path.to_string())
        }
        Event::ApiKeyCreated { name, role, .. } => {
            ("create_key", name.to_string(), format!("role={role}"))
        }
        Event::ApiKeyRevoked { name } => ("revoke_key", name.to_string(), String::new()),
        Event::BootstrapDone { name } => ("bootstrap", name.to_string(), String::new()),
        rollout_event => return rollout_audit(rollout_event),
    })
}

/// The audit rows of the rollout stream's events (dotted v0.1 action names).
fn rollout_audit(e: &Event) -> Option<(&'static str, String, String)> {
    let (action, rollout, detail) = match e {
        Event::RolloutCreated { rollout, plan } => (
            "rollout.created",
            rollout,
            format!(
                "strategy={} machines={} batches={}",
                plan.strategy,
                plan.batches.iter().map(Vec::len).sum::<usize>(),
                plan.batches.len()
            ),
        ),
        Event::RolloutOptionsSet {
            rollout,
            activation,
            allow_failed_units,
        } => (
            "rollout.options",
            rollout,
            format!("activation={activation} allow_failed_units={allow_failed_units}"),
        ),
        Event::BatchStarted {
            rollout,
            batch_index,
            ..
        } => ("batch.deploying", rollout, format!("batch {batch_index}")),
        Event::BatchSucceeded {
            rollout,
            batch_index,
            ..
        } => ("batch.succeeded", rollout, format!("batch {batch_index}")),
        Event::BatchFailed {
            rollout,
            batch_index,
            reason,
            ..
        } => (
            "batch.failed",
            rollout,
            format!("batch {batch_index}: {reason}"),
        ),
        Event::RolloutPaused { rollout, reason } => ("rollout.paused", rollout, reason.clone()),
        Event::RolloutResumed { rollout } => ("rollout.resumed", rollout, String::new()),
        Event::RolloutCancelled { rollout } => ("rollout.cancelled", rollout, String::new()),
        Event::RolloutCompleted { rollout } => ("rollout.completed", rollout, String::new()),
        Event::RolloutFailed { rollout, reason } => ("rollout.failed", rollout, reason.clone()),
        Event::RolloutReverted { rollout, restored } => (
            "rollout.reverted",
            rollout,
            format!("{} machines", restored.len()),
        ),
        Event::RolloutDeleted { rollout } => ("rollout.deleted", rollout, String::new()),
        _ => return None,
    };
    Some((action, rollout.to_string(), detail))
}

/// One line saying what an event means, for the replay tool's events table.
pub fn line(e: &Event) -> String {
    machine_line(e)
        .or_else(|| rollout_line(e))
        .unwrap_or_else(|| other_line(e))
}

/// The line of a machine stream's event about its reports and generations.
fn machine_line(e: &Event) -> Option<String> {
    Some(match e {
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
                ok_or_failed(*success)
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
                ok_or_failed(*all_passed),
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
        Event::HealthMeasured {
            machine,
            measured_at,
        } => format!(
            "{machine} health checks below measured at {}",
            rfc3339(*measured_at)
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
        } if components.is_empty() => format!("{machine} no longer needs a reboot"),
        Event::RebootNeededSet {
            machine,
            components,
        } => format!(
            "{machine} needs a reboot: booted {} differ from the running generation's",
            components.join(", ")
        ),
        Event::DesiredGenerationSet {
            machine,
            path: p,
            cause: c,
            ..
        } => format!("{machine} should run {} ({})", path(p), cause(c)),
        Event::DesiredGenerationCleared { machine, cause: c } => {
            format!("{machine} should run nothing in particular ({})", cause(c))
        }
        _ => return None,
    })
}

/// The line of a rollout stream's event.
fn rollout_line(e: &Event) -> Option<String> {
    Some(match e {
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
        Event::BatchSucceeded { rollout, .. } | Event::BatchFailed { rollout, .. } => {
            format!("{rollout} {}", batch_outcome(e, "FAILED")?)
        }
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
        _ => return None,
    })
}

/// The line of the other events: machines' registration, releases, quarantine and keys.
fn other_line(e: &Event) -> String {
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
        other => other.kind().to_string(),
    }
}

/// One line of a rollout's story (`nixfleet timeline`), for the rollout's own events and the
/// desired generations it set; any other event is named by its kind.
pub fn story(e: &Event) -> String {
    match e {
        Event::RolloutCreated { plan, .. } => format!(
            "created: release {}, strategy {}, {}, threshold {}, on failure {}, health timeout {}s, seed {}",
            plan.release,
            plan.strategy,
            batches(plan),
            plan.failure_threshold,
            plan.on_failure,
            plan.health_timeout_secs,
            plan.seed
        ),
        Event::BatchStarted {
            batch_index,
            attempt,
            previous,
            ..
        } => format!(
            "batch {batch_index} started (attempt {attempt}): {}",
            previous
                .iter()
                .map(|(m, p)| format!(
                    "{m} (was {})",
                    p.as_ref()
                        .map(story_path)
                        .unwrap_or_else(|| "never reported".into())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::DesiredGenerationSet {
            machine,
            path,
            cause: DesiredCause::Revert { .. },
            ..
        } => format!("  {machine} sent back to {}", story_path(path)),
        Event::DesiredGenerationSet { machine, path, .. } => {
            format!("  {machine} asked to run {}", story_path(path))
        }
        Event::DesiredGenerationCleared { machine, .. } => {
            format!("  {machine} desired generation cleared (it never reported one)")
        }
        Event::BatchSucceeded { .. } | Event::BatchFailed { .. } => {
            batch_outcome(e, "FAILED").unwrap_or_default()
        }
        Event::RolloutPaused { reason, .. } => format!("paused: {reason}"),
        Event::RolloutResumed { .. } => "resumed".into(),
        Event::RolloutCancelled { .. } => "cancelled".into(),
        Event::RolloutCompleted { .. } => "completed".into(),
        Event::RolloutFailed { reason, .. } => format!("failed: {reason}"),
        Event::RolloutReverted { restored, .. } => {
            format!("reverted {} machines", restored.len())
        }
        Event::RolloutDeleted { .. } => "deleted".into(),
        other => other.kind().to_string(),
    }
}

/// An executor decision (or an operator's resume or cancel) in words, as `what-if` lists the
/// recorded and the re-computed ones; `None` for other events.
pub fn decision(e: &Event) -> Option<String> {
    Some(match e {
        Event::BatchStarted {
            batch_index,
            attempt,
            previous,
            ..
        } => format!(
            "batch {batch_index} started (attempt {attempt}, {} machine{})",
            previous.len(),
            if previous.len() == 1 { "" } else { "s" }
        ),
        Event::BatchSucceeded { .. } | Event::BatchFailed { .. } => batch_outcome(e, "failed")?,
        Event::RolloutPaused { .. } => "rollout paused".into(),
        Event::RolloutCompleted { .. } => "rollout completed".into(),
        Event::RolloutFailed { .. } => "rollout failed".into(),
        Event::RolloutReverted { restored, .. } => {
            format!("rollout reverted ({} machines)", restored.len())
        }
        Event::RolloutResumed { .. } => "rollout resumed (operator)".into(),
        Event::RolloutCancelled { .. } => "rollout cancelled (operator)".into(),
        _ => return None,
    })
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Progress.
    Info,
    /// Something an operator should look at.
    Warn,
}

/// What the control plane logs when it appends an executor decision: the v0.1 message (e.g.
/// "Health timeout elapsed, treating pending machines as unhealthy") and the fields beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// How loud.
    pub level: Level,
    /// The message.
    pub message: &'static str,
    /// The rollout decided.
    pub rollout: &'a RolloutId,
    /// The batch, for batch decisions.
    pub batch_index: Option<u32>,
    /// The attempt, for a batch start.
    pub attempt: Option<u32>,
    /// Healthy machines, for a batch success.
    pub healthy: Option<u32>,
    /// Unhealthy machines, for a batch failure.
    pub unhealthy: Option<u32>,
    /// The threshold, for a batch failure.
    pub threshold: Option<u32>,
    /// Why, for a pause.
    pub reason: Option<&'a str>,
    /// Machines sent back, for a revert.
    pub machines: Option<usize>,
}

/// The log line of an executor decision; `None` for other events.
pub fn log_line(e: &Event) -> Option<LogLine<'_>> {
    use crate::event::BatchFailReason;
    let line = |level, message, rollout| LogLine {
        level,
        message,
        rollout,
        batch_index: None,
        attempt: None,
        healthy: None,
        unhealthy: None,
        threshold: None,
        reason: None,
        machines: None,
    };
    Some(match e {
        Event::BatchFailed {
            rollout,
            batch_index,
            unhealthy,
            threshold,
            reason,
            ..
        } => LogLine {
            batch_index: Some(*batch_index),
            unhealthy: Some(*unhealthy),
            threshold: Some(*threshold),
            ..line(
                Level::Warn,
                match reason {
                    BatchFailReason::Timeout => {
                        "Health timeout elapsed, treating pending machines as unhealthy"
                    }
                    _ => "batch failed",
                },
                rollout,
            )
        },
        Event::BatchSucceeded {
            rollout,
            batch_index,
            healthy,
            ..
        } => LogLine {
            batch_index: Some(*batch_index),
            healthy: Some(*healthy),
            ..line(Level::Info, "batch succeeded", rollout)
        },
        Event::BatchStarted {
            rollout,
            batch_index,
            attempt,
            ..
        } => LogLine {
            batch_index: Some(*batch_index),
            attempt: Some(*attempt),
            ..line(Level::Info, "batch started", rollout)
        },
        Event::RolloutPaused { rollout, reason } => LogLine {
            reason: Some(reason),
            ..line(Level::Warn, "rollout paused", rollout)
        },
        Event::RolloutCompleted { rollout } => line(Level::Info, "rollout completed", rollout),
        Event::RolloutReverted { rollout, restored } => LogLine {
            machines: Some(restored.len()),
            ..line(Level::Warn, "rollout reverted", rollout)
        },
        _ => return None,
    })
}

/// `batch 1 FAILED (timeout): 1 healthy, 1 unhealthy, threshold 0`, with `failed` as the word
/// for a failure; `None` for other events.
fn batch_outcome(e: &Event, failed: &str) -> Option<String> {
    let (batch_index, healthy, unhealthy, threshold, verdict) = match e {
        Event::BatchSucceeded {
            batch_index,
            healthy,
            unhealthy,
            threshold,
            ..
        } => (
            batch_index,
            healthy,
            unhealthy,
            threshold,
            "succeeded".into(),
        ),
        Event::BatchFailed {
            batch_index,
            healthy,
            unhealthy,
            threshold,
            reason,
            ..
        } => (
            batch_index,
            healthy,
            unhealthy,
            threshold,
            format!("{failed} ({reason})"),
        ),
        _ => return None,
    };
    Some(format!(
        "batch {batch_index} {verdict}: {healthy} healthy, {unhealthy} unhealthy, threshold {threshold}"
    ))
}

/// `release rel-2, canary, tags web, 2 batches (1+1), threshold 0, on failure pause, health
/// timeout 30s`.
pub fn plan(p: &RolloutPlan) -> String {
    let target = match &p.target {
        Target::Tags(t) => format!("tags {}", join(t)),
        Target::Hosts(h) => format!("hosts {}", join(h)),
    };
    format!(
        "release {}, {}, {target}, {}, threshold {}, on failure {}, health timeout {}s",
        p.release,
        p.strategy,
        batches(p),
        p.failure_threshold,
        p.on_failure,
        p.health_timeout_secs,
    )
}

/// `3 batches (1+2+2)`.
fn batches(p: &RolloutPlan) -> String {
    format!(
        "{} batch{} ({})",
        p.batches.len(),
        if p.batches.len() == 1 { "" } else { "es" },
        p.batches
            .iter()
            .map(|b| b.len().to_string())
            .collect::<Vec<_>>()
            .join("+"),
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

fn ok_or_failed(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// A store path in tables: `00000000…-nixos-system-web-01-7` (8 characters of the hash).
pub fn short_path(path: &str) -> String {
    match path.strip_prefix("/nix/store/") {
        Some(rest) if rest.len() > 33 => format!("{}…{}", &rest[..8], &rest[32..]),
        Some(rest) => rest.to_string(),
        None => path.to_string(),
    }
}

fn path(p: &StorePath) -> String {
    short_path(p.as_str())
}

fn opt_path(p: &Option<StorePath>) -> String {
    p.as_ref().map(path).unwrap_or_else(|| "nothing".into())
}

/// A store path in a rollout's story: `0000000…-nixos-system-web-01-7` (7 characters).
fn story_path(p: &StorePath) -> String {
    let s = p.as_str().trim_start_matches("/nix/store/");
    match s.split_once('-') {
        Some((h, name)) => format!("{}…-{name}", &h[..7.min(h.len())]),
        None => s.to_string(),
    }
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// RFC 3339 in UTC with milliseconds: `2025-11-24T16:00:05.123Z`.
pub fn rfc3339(t: Timestamp) -> String {
    let (secs, ms) = (t.0 / 1000, t.0 % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}
