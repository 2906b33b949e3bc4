//! Decisions on what agents report: the report itself (with its health results, dated or not),
//! auto-registration, quarantine, and what a switch did.

use super::*;
use crate::state::BatchStatus;

/// `Command::Report`: the report's events, registering an unknown machine when `auto_register`,
/// and quarantining the path it rolled back from when that was its desired generation.
pub(super) fn report(
    state: &State,
    machine: &MachineId,
    report: &ReportInput,
    auto_register: bool,
) -> Result<Vec<Event>, Rejection> {
    check_tags(&report.tags)?;
    if report.message.len() > MESSAGE_LEN_MAX {
        return Err(Rejection::Invalid(format!(
            "message is {} bytes; at most {MESSAGE_LEN_MAX}",
            report.message.len()
        )));
    }
    let mut out = Vec::new();
    let tags = sorted(&report.tags);
    match state.machines.get(machine) {
        None if !auto_register => {
            return Err(Rejection::NotFound(format!(
                "machine {machine} is not registered"
            )))
        }
        None => out.push(Event::MachineRegistered {
            machine: machine.clone(),
            lifecycle: Lifecycle::Active,
            tags: tags.clone(),
            auto: true,
        }),
        Some(m) => {
            // Declared tags replace stored ones; an agent declaring none leaves them alone.
            if !tags.is_empty() && m.tags != tags {
                out.push(Event::TagsSet {
                    machine: machine.clone(),
                    tags,
                    source: TagSource::Agent,
                });
            }
            if matches!(m.lifecycle, Lifecycle::Pending | Lifecycle::Provisioning) {
                out.push(Event::LifecycleChanged {
                    machine: machine.clone(),
                    from: m.lifecycle,
                    to: Lifecycle::Active,
                });
            }
        }
    }
    out.push(Event::ReportReceived {
        machine: machine.clone(),
        generation: report.generation.clone(),
        success: report.success,
        message: report.message.clone(),
        agent_version: report.agent_version.clone(),
        uptime_secs: report.uptime_secs,
        dry_run: report.dry_run,
        rolled_back_from: report.rolled_back_from.clone(),
    });
    if let Some((results, all_passed)) = &report.health {
        out.push(Event::HealthReported {
            machine: machine.clone(),
            generation: report.generation.clone(),
            results: results.clone(),
            all_passed: *all_passed,
        });
    }
    // Quarantine: the machine failed the path it was asked to run; never ask it again.
    if let Some(failed) = &report.rolled_back_from {
        let m = state.machines.get(machine);
        let already = m.is_some_and(|m| m.quarantined.contains_key(failed));
        let is_desired = m
            .and_then(|m| m.desired.as_ref())
            .is_some_and(|d| &d.path == failed);
        if is_desired && !already {
            out.push(Event::MachineQuarantined {
                machine: machine.clone(),
                path: failed.clone(),
                reason: report.message.chars().take(512).collect(),
            });
        }
    }
    Ok(out)
}

/// `Command::ReportMeasured`: [`report`] with a `HealthMeasured` (`measured_at`, from
/// [`health_measured_at`]) right before the results it dates, so the reducer judges them with
/// their time.
pub(super) fn report_measured(
    state: &State,
    machine: &MachineId,
    input: &ReportInput,
    auto_register: bool,
    measured_at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let mut out = report(state, machine, input, auto_register)?;
    if let Some(i) = out
        .iter()
        .position(|e| matches!(e, Event::HealthReported { .. }))
    {
        out.insert(
            i,
            Event::HealthMeasured {
                machine: machine.clone(),
                measured_at,
            },
        );
    }
    Ok(out)
}

/// `Command::ReportActivation`: the wrapped report's events, then what the switch did and which
/// booted parts differ, each only when it is news.
pub(super) fn report_activation(
    state: &State,
    report: &Command,
    machine: &MachineId,
    switch: Option<&SwitchInput>,
    reboot_needed: &[String],
    now: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    match report {
        Command::Report { machine: m, .. } | Command::ReportMeasured { machine: m, .. }
            if m == machine => {}
        _ => {
            return Err(Rejection::Invalid(
                "an activation report must wrap a report of the same machine".into(),
            ))
        }
    }
    if reboot_needed.len() > REBOOT_PARTS_MAX
        || reboot_needed
            .iter()
            .any(|p| p.is_empty() || p.len() > REBOOT_PART_LEN_MAX)
    {
        return Err(Rejection::Invalid(format!(
            "reboot_needed holds at most {REBOOT_PARTS_MAX} names of 1 to {REBOOT_PART_LEN_MAX} bytes (kernel, initrd, systemd)"
        )));
    }
    let mut out = decide(state, report, now)?;
    if let Some(s) = switch.filter(|s| !switch_known(state, machine, s)) {
        out.push(Event::SwitchReported {
            machine: machine.clone(),
            path: s.path.clone(),
            activation: s.activation,
            outcome: s.outcome,
            exit_code: s.exit_code,
            failed_units: s.failed_units,
        });
    }
    let known: &[String] = state
        .machines
        .get(machine)
        .map_or(&[], |m| m.reboot_needed.as_slice());
    if known != reboot_needed {
        out.push(Event::RebootNeededSet {
            machine: machine.clone(),
            components: reboot_needed.to_vec(),
        });
    }
    Ok(out)
}

/// Whether the log already holds this switch of `machine`. A machine pending reboot says so on
/// every report; the log keeps it once, and once more for each batch start after it (the gate
/// only counts evidence from after that).
fn switch_known(state: &State, machine: &MachineId, s: &SwitchInput) -> bool {
    let batch_started = state
        .active_rollout_of
        .get(machine)
        .and_then(|r| state.rollouts.get(r))
        .and_then(|r| {
            r.batches
                .iter()
                .find(|b| b.status == BatchStatus::Active && b.health.contains_key(machine))
        })
        .and_then(|b| b.started_seq);
    state
        .machines
        .get(machine)
        .and_then(|m| m.last_switch.as_ref())
        .is_some_and(|l| {
            (&l.path, l.activation, l.outcome) == (&s.path, s.activation, s.outcome)
                && batch_started.is_none_or(|b| l.seq > b)
        })
}
