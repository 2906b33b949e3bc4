//! Decisions on rollouts an operator makes: creating (with the plan from `plan`), resuming,
//! cancelling and deleting them. The executor decides the rest.

use super::*;
use crate::plan::plan_rollout;
use crate::state::BatchStatus;

/// `Command::CreateRollout`: a new id and a valid plan.
pub(super) fn create(
    state: &State,
    rollout: &RolloutId,
    spec: &RolloutSpec,
    seed: u64,
) -> Result<Vec<Event>, Rejection> {
    if state.rollouts.contains_key(rollout) {
        return Err(Rejection::Conflict(format!(
            "rollout {rollout} already exists"
        )));
    }
    let plan = plan_rollout(state, spec, seed)?;
    Ok(vec![Event::RolloutCreated {
        rollout: rollout.clone(),
        plan,
    }])
}

/// `Command::CreateRolloutWithOptions`: `RolloutOptionsSet` follows `RolloutCreated` when the
/// options are not the defaults.
pub(super) fn create_with_options(
    state: &State,
    rollout: &RolloutId,
    spec: &RolloutSpec,
    seed: u64,
    options: &RolloutOptions,
) -> Result<Vec<Event>, Rejection> {
    let mut out = create(state, rollout, spec, seed)?;
    if *options != RolloutOptions::default() {
        out.push(Event::RolloutOptionsSet {
            rollout: rollout.clone(),
            activation: options.activation,
            allow_failed_units: options.allow_failed_units,
        });
    }
    Ok(out)
}

/// `Command::ResumeRollout`: a paused rollout runs again, and the failed batches' machines may try
/// the release path again.
pub(super) fn resume(state: &State, rollout: &RolloutId) -> Result<Vec<Event>, Rejection> {
    let r = rollout_or_404(state, rollout)?;
    if r.status != RolloutStatus::Paused {
        return Err(Rejection::Conflict(format!(
            "rollout is {}, not paused",
            r.status
        )));
    }
    let mut out = vec![Event::RolloutResumed {
        rollout: rollout.clone(),
    }];
    // The operator asks the failed machines to try again: lift their quarantine of this path.
    for b in r.batches.iter().filter(|b| b.status == BatchStatus::Failed) {
        for (m, p) in &b.machines {
            if state
                .machines
                .get(m)
                .is_some_and(|mm| mm.quarantined.contains_key(p))
            {
                out.push(Event::QuarantineCleared {
                    machine: m.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// `Command::CancelRollout`: only a running or paused one.
pub(super) fn cancel(state: &State, rollout: &RolloutId) -> Result<Vec<Event>, Rejection> {
    let r = rollout_or_404(state, rollout)?;
    if !r.status.is_active() {
        return Err(Rejection::Conflict(format!(
            "rollout is {}, not running or paused",
            r.status
        )));
    }
    Ok(vec![Event::RolloutCancelled {
        rollout: rollout.clone(),
    }])
}

/// `Command::DeleteRollout`: only a finished one.
pub(super) fn delete(state: &State, rollout: &RolloutId) -> Result<Vec<Event>, Rejection> {
    let r = rollout_or_404(state, rollout)?;
    if r.status.is_active() {
        return Err(Rejection::Conflict(format!(
            "rollout is {}; cancel it first",
            r.status
        )));
    }
    Ok(vec![Event::RolloutDeleted {
        rollout: rollout.clone(),
    }])
}
