//! The reducer for rollouts and their batches: creation, options, batch starts and verdicts,
//! and status changes (which free the machines of a rollout that stops being active).

use super::*;

impl State {
    /// Folds a rollout's creation, options or status change.
    pub(super) fn apply_rollout_event(&mut self, env: &Envelope) {
        let (seq, at) = (env.seq, env.at);
        match &env.event {
            Event::RolloutCreated { rollout, plan } => {
                let batches = plan
                    .batches
                    .iter()
                    .enumerate()
                    .map(|(i, ms)| Batch {
                        index: i as u32,
                        machines: ms.clone(),
                        status: BatchStatus::Pending,
                        attempt: 0,
                        started_seq: None,
                        started_at: None,
                        completed_at: None,
                        previous: BTreeMap::new(),
                        health: BTreeMap::new(),
                        healthy: 0,
                        unhealthy: 0,
                    })
                    .collect();
                for (m, _) in plan.batches.iter().flatten() {
                    self.active_rollout_of.insert(m.clone(), rollout.clone());
                }
                self.rollouts.insert(
                    rollout.clone(),
                    Rollout {
                        id: rollout.clone(),
                        plan: plan.clone(),
                        status: RolloutStatus::Running,
                        batches,
                        created_at: at,
                        created_seq: seq,
                        updated_at: at,
                        created_by: env.actor.clone(),
                        reason: None,
                        options: RolloutOptions::default(),
                    },
                );
            }
            Event::RolloutOptionsSet {
                rollout,
                activation,
                allow_failed_units,
            } => {
                if let Some(r) = self.rollouts.get_mut(rollout) {
                    r.options = RolloutOptions {
                        activation: *activation,
                        allow_failed_units: *allow_failed_units,
                    };
                }
            }
            Event::RolloutPaused { rollout, reason } => {
                self.set_status(rollout, RolloutStatus::Paused, Some(reason.clone()), at)
            }
            Event::RolloutResumed { rollout } => {
                if let Some(r) = self.rollouts.get_mut(rollout) {
                    for b in r
                        .batches
                        .iter_mut()
                        .filter(|b| b.status == BatchStatus::Failed)
                    {
                        b.status = BatchStatus::Pending;
                        b.reset_health(BTreeMap::new());
                    }
                }
                self.set_status(rollout, RolloutStatus::Running, None, at);
            }
            Event::RolloutCancelled { rollout } => {
                self.set_status(rollout, RolloutStatus::Cancelled, None, at)
            }
            Event::RolloutCompleted { rollout } => {
                self.set_status(rollout, RolloutStatus::Completed, None, at)
            }
            Event::RolloutFailed { rollout, reason } => {
                self.set_status(rollout, RolloutStatus::Failed, Some(reason.clone()), at)
            }
            Event::RolloutReverted { rollout, .. } => {
                let reason = self.rollouts.get(rollout).and_then(|r| r.reason.clone());
                self.set_status(rollout, RolloutStatus::Reverted, reason, at)
            }
            Event::RolloutDeleted { rollout } => {
                self.rollouts.remove(rollout);
            }
            // `State::apply` sends only the events above here.
            _ => {}
        }
    }

    /// Folds a batch start or verdict.
    pub(super) fn apply_batch_event(&mut self, env: &Envelope) {
        let (seq, at) = (env.seq, env.at);
        match &env.event {
            Event::BatchStarted {
                rollout,
                batch_index,
                attempt,
                previous,
            } => {
                if let Some(b) = self.batch_mut(rollout, *batch_index, at) {
                    b.status = BatchStatus::Active;
                    b.attempt = *attempt;
                    b.started_seq = Some(seq);
                    b.started_at = Some(at);
                    b.completed_at = None;
                    if b.previous.is_empty() {
                        b.previous = previous.iter().cloned().collect();
                    }
                    let fresh = b
                        .machines
                        .iter()
                        .map(|(m, _)| (m.clone(), MachineHealth::Pending))
                        .collect();
                    b.reset_health(fresh);
                }
            }
            Event::BatchSucceeded {
                rollout,
                batch_index,
                healthy,
                unhealthy,
                ..
            }
            | Event::BatchFailed {
                rollout,
                batch_index,
                healthy,
                unhealthy,
                ..
            } => {
                let failed = matches!(env.event, Event::BatchFailed { .. });
                if let Some(b) = self.batch_mut(rollout, *batch_index, at) {
                    b.status = if failed {
                        BatchStatus::Failed
                    } else {
                        BatchStatus::Succeeded
                    };
                    b.completed_at = Some(at);
                    if *unhealthy > b.unhealthy {
                        // The health timeout elapsed: silent machines count as unhealthy.
                        let silent: Vec<MachineId> = b
                            .health
                            .iter()
                            .filter(|(_, h)| **h == MachineHealth::Pending)
                            .map(|(m, _)| m.clone())
                            .collect();
                        for m in silent {
                            b.set_health(
                                &m,
                                MachineHealth::Unhealthy(
                                    None,
                                    "no passing health report before the health timeout".into(),
                                ),
                            );
                        }
                    }
                    debug_assert_eq!(
                        (b.healthy, b.unhealthy),
                        (*healthy, *unhealthy),
                        "batch counts drifted"
                    );
                }
            }
            // `State::apply` sends only the events above here.
            _ => {}
        }
    }

    fn batch_mut(&mut self, rollout: &RolloutId, index: u32, at: Timestamp) -> Option<&mut Batch> {
        let r = self.rollouts.get_mut(rollout)?;
        r.updated_at = at;
        r.batches.get_mut(index as usize)
    }

    fn set_status(
        &mut self,
        rollout: &RolloutId,
        status: RolloutStatus,
        reason: Option<String>,
        at: Timestamp,
    ) {
        let Some(r) = self.rollouts.get_mut(rollout) else {
            return;
        };
        let old = r.status;
        r.status = status;
        r.updated_at = at;
        if reason.is_some() || status == RolloutStatus::Running {
            r.reason = reason;
        }
        if old.is_active() && !status.is_active() {
            for (m, _) in r.plan.batches.iter().flatten() {
                if self.active_rollout_of.get(m) == Some(rollout) {
                    self.active_rollout_of.remove(m);
                }
            }
        }
        if status != old && status != RolloutStatus::Running {
            *self.rollouts_reached.entry(status).or_default() += 1;
        }
    }
}
