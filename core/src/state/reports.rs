//! The reducer for what agents report: the last report, health history and last switch of a
//! machine, and the gate: how each moves the health of the machine in its active batch (`judge`).

use super::*;

/// The message of an agent's periodic health report (v0.1 wire value).
const HEALTH_CHECK_MESSAGE: &str = "health-check";

impl State {
    /// Folds a report, its health results (with their measurement time) or a switch.
    pub(super) fn apply_report_event(&mut self, env: &Envelope) {
        let (seq, at) = (env.seq, env.at);
        match &env.event {
            Event::ReportReceived {
                machine,
                generation,
                success,
                message,
                agent_version,
                uptime_secs,
                dry_run,
                rolled_back_from,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.last_report = Some(LastReport {
                        seq,
                        at,
                        generation: generation.clone(),
                        success: *success,
                        message: message.clone(),
                        agent_version: agent_version.clone(),
                        uptime_secs: *uptime_secs,
                        dry_run: *dry_run,
                    });
                }
                // A measurement time never outlives its group (see `health_measured`).
                self.health_measured = None;
                if !success {
                    let reason = match rolled_back_from {
                        Some(p) => format!("rolled back from {p}: {message}"),
                        None => format!("report failed: {message}"),
                    };
                    self.judge(machine, seq, |target, _| {
                        // A periodic health report (v0.1: `success` = all checks passed) from
                        // another generation than the release says nothing about the release,
                        // as its `HealthReported` says nothing: the machine has not moved yet.
                        let other_generation = generation.as_ref() != Some(target)
                            && rolled_back_from.as_ref() != Some(target);
                        if message == HEALTH_CHECK_MESSAGE && other_generation {
                            return None;
                        }
                        Some(MachineHealth::Unhealthy(Some(seq), reason.clone()))
                    });
                }
            }
            Event::HealthMeasured {
                machine,
                measured_at,
            } => self.health_measured = Some((machine.clone(), *measured_at)),
            Event::HealthReported {
                machine,
                generation,
                results,
                all_passed,
            } => {
                // Old logs (and agents that send no time) have no `HealthMeasured`: such results
                // count as measured when appended, as before.
                let measured_at = self
                    .health_measured
                    .take()
                    .filter(|(m, _)| m == machine)
                    .map(|(_, t)| t);
                if let Some(m) = self.machines.get_mut(machine) {
                    history::push(&mut m.health, seq, at, generation, results, *all_passed);
                }
                self.judge(machine, seq, |target, started_at| {
                    if generation.as_ref() != Some(target) {
                        // Health of the old generation says nothing about the release.
                        return None;
                    }
                    if *all_passed {
                        // A pass measured before the batch started (a cached result re-sent by
                        // a machine already on the release path) is no evidence about the batch.
                        if measured_at.zip(started_at).is_some_and(|(m, s)| m < s) {
                            return None;
                        }
                        Some(MachineHealth::Healthy(seq))
                    } else {
                        let failed: Vec<&str> = results
                            .iter()
                            .filter(|r| !r.passed)
                            .map(|r| r.name.as_str())
                            .collect();
                        Some(MachineHealth::Unhealthy(
                            Some(seq),
                            format!("health checks failed: {}", failed.join(", ")),
                        ))
                    }
                });
            }
            Event::SwitchReported {
                machine,
                path,
                activation,
                outcome,
                exit_code,
                failed_units,
            } => {
                let entry = SwitchEntry {
                    seq,
                    at,
                    path: path.clone(),
                    activation: *activation,
                    outcome: *outcome,
                    exit_code: *exit_code,
                    failed_units: *failed_units,
                };
                if let Some(m) = self.machines.get_mut(machine) {
                    m.last_switch = Some(Box::new(entry.clone()));
                }
                let options = self
                    .active_rollout_of
                    .get(machine)
                    .and_then(|r| self.rollouts.get(r))
                    .map(|r| r.options)
                    .unwrap_or_default();
                self.judge(machine, seq, |target, _| {
                    if path != target {
                        return None;
                    }
                    if let Some(why) = entry.failure(&options) {
                        return Some(MachineHealth::Unhealthy(Some(seq), why));
                    }
                    // Boot activation: nothing runs the release before a reboot, so a set
                    // profile and boot entry is all the evidence there can be.
                    (entry.outcome == SwitchOutcome::PendingReboot)
                        .then_some(MachineHealth::Healthy(seq))
                });
            }
            // `State::apply` sends only the events above here.
            _ => {}
        }
    }

    /// Updates the health of `machine` in its active batch, if `seq` is after the batch started.
    fn judge(
        &mut self,
        machine: &MachineId,
        seq: Seq,
        verdict: impl Fn(&StorePath, Option<Timestamp>) -> Option<MachineHealth>,
    ) {
        let last_switch = self
            .machines
            .get(machine)
            .and_then(|m| m.last_switch.clone());
        let Some(rid) = self.active_rollout_of.get(machine) else {
            return;
        };
        let Some(r) = self.rollouts.get_mut(rid) else {
            return;
        };
        if r.status != RolloutStatus::Running {
            return;
        }
        let Some(b) = r
            .batches
            .iter_mut()
            .find(|b| b.status == BatchStatus::Active && b.health.contains_key(machine))
        else {
            return;
        };
        if b.started_seq.is_none_or(|s| seq <= s) {
            return;
        }
        let Some(target) = b.target_of(machine).cloned() else {
            return;
        };
        if let Some(h) = verdict(&target, b.started_at) {
            // A failed switch to the release in this attempt is not undone by later passing checks.
            let failed_switch = matches!(h, MachineHealth::Healthy(_))
                && last_switch.as_ref().is_some_and(|s| {
                    s.path == target
                        && b.started_seq.is_some_and(|st| s.seq > st)
                        && s.failure(&r.options).is_some()
                });
            if !failed_switch {
                b.set_health(machine, h);
            }
        }
    }
}
