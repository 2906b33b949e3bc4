//! The rollout executor: decides batch transitions from the projections and the time.
//!
//! It is driven by a closed set of inputs ([`ExecutorInput`]): a group of events was appended,
//! or a deadline passed. [`settle`] evaluates each woken rollout once, hands the resulting events
//! (by the executor actor) to the caller's append path, and repeats until nothing more happens.
//! There is no polling tick: a deciding report moves the gate at once, and the engine arms one
//! timer for [`next_deadline`].

use crate::event::*;
use crate::ids::*;
use crate::state::{Batch, BatchStatus, Rollout, State};

/// Everything that can wake the executor.
#[derive(Debug, Clone, Copy)]
pub enum ExecutorInput<'a> {
    /// This group of events was just appended and applied (one command's events, or one decision's).
    Appended(&'a [Event]),
    /// The clock reached a deadline (or the engine started).
    Tick,
}

/// The rollouts to evaluate for `input`, each once, in id order.
pub fn wake(state: &State, input: ExecutorInput<'_>) -> Vec<RolloutId> {
    let mut out: Vec<RolloutId> = match input {
        ExecutorInput::Tick => state
            .rollouts
            .values()
            .filter(|r| r.status == RolloutStatus::Running)
            .map(|r| r.id.clone())
            .collect(),
        ExecutorInput::Appended(events) => events
            .iter()
            .filter_map(|e| match e {
                Event::RolloutCreated { rollout, .. }
                | Event::RolloutResumed { rollout }
                | Event::BatchSucceeded { rollout, .. } => Some(rollout.clone()),
                other => state.rollout_affected_by(other).cloned(),
            })
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// Runs the executor until nothing more happens. `append` must durably stage the executor's
/// events and apply them to `state`; it is called once per decision, so every decision is made
/// on a state that includes all earlier ones. Returns how many decisions were appended.
pub fn settle<E>(
    state: &mut State,
    input: ExecutorInput<'_>,
    now: Timestamp,
    mut append: impl FnMut(&mut State, Vec<Event>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut todo = wake(state, input);
    let mut decisions = 0;
    while !todo.is_empty() {
        let mut produced = Vec::new();
        for id in todo {
            let events = match state.rollouts.get(&id) {
                Some(r) => evaluate(state, r, now),
                None => continue,
            };
            if events.is_empty() {
                continue;
            }
            decisions += 1;
            assert!(decisions < 1_000_000, "executor does not settle");
            append(state, events.clone())?;
            produced.extend(events);
        }
        todo = wake(state, ExecutorInput::Appended(&produced));
    }
    Ok(decisions)
}

/// The earliest health deadline of any running batch still waiting for machines.
pub fn next_deadline(state: &State) -> Option<Timestamp> {
    state.rollouts.values().filter_map(deadline_of).min()
}

/// The health deadline of a running rollout's batch, while it still waits for machines.
pub fn deadline_of(r: &Rollout) -> Option<Timestamp> {
    if r.status != RolloutStatus::Running {
        return None;
    }
    let b = r.current_batch()?;
    (b.status == BatchStatus::Active && b.pending() > 0)
        .then(|| {
            b.started_at
                .map(|t| t.plus_secs(r.plan.health_timeout_secs))
        })
        .flatten()
}

/// One rollout's next transition, if any.
pub fn evaluate(state: &State, r: &Rollout, now: Timestamp) -> Vec<Event> {
    if r.status != RolloutStatus::Running {
        return Vec::new();
    }
    let Some(b) = r.current_batch() else {
        return if r.batches.iter().all(|b| b.status == BatchStatus::Succeeded) {
            vec![Event::RolloutCompleted {
                rollout: r.id.clone(),
            }]
        } else {
            Vec::new()
        };
    };
    match b.status {
        BatchStatus::Pending => start_batch(state, r, b),
        BatchStatus::Active => judge_batch(state, r, b, now),
        BatchStatus::Succeeded | BatchStatus::Failed => Vec::new(),
    }
}

fn start_batch(state: &State, r: &Rollout, b: &Batch) -> Vec<Event> {
    // The first start records what each machine really ran; a restart after resume keeps it.
    let previous: Vec<(MachineId, Option<StorePath>)> = b
        .machines
        .iter()
        .map(|(m, _)| {
            let prev = match b.previous.get(m) {
                Some(p) => p.clone(),
                None => state
                    .machines
                    .get(m)
                    .and_then(|mm| mm.current_generation().cloned()),
            };
            (m.clone(), prev)
        })
        .collect();
    let mut out = vec![Event::BatchStarted {
        rollout: r.id.clone(),
        batch_index: b.index,
        attempt: b.attempt + 1,
        previous,
    }];
    for (m, path) in &b.machines {
        let desired = state.machines.get(m).and_then(|mm| mm.desired.as_ref());
        let same = desired.is_some_and(|d| &d.path == path && d.cache_url == r.plan.cache_url);
        if !same {
            out.push(Event::DesiredGenerationSet {
                machine: m.clone(),
                path: path.clone(),
                cache_url: r.plan.cache_url.clone(),
                cause: DesiredCause::Batch {
                    rollout: r.id.clone(),
                    batch_index: b.index,
                },
            });
        }
    }
    out
}

fn judge_batch(state: &State, r: &Rollout, b: &Batch, now: Timestamp) -> Vec<Event> {
    let threshold = r.plan.failure_threshold.of(b.machines.len()) as u32;
    let (healthy, unhealthy, pending) = (b.healthy, b.unhealthy, b.pending());
    let timed_out = b
        .started_at
        .is_some_and(|t| now >= t.plus_secs(r.plan.health_timeout_secs));
    let verdict = if unhealthy > threshold {
        Some((false, unhealthy, BatchFailReason::Unhealthy))
    } else if pending == 0 {
        Some((true, unhealthy, BatchFailReason::Unhealthy))
    } else if timed_out {
        let total = unhealthy + pending;
        Some((total <= threshold, total, BatchFailReason::Timeout))
    } else {
        None
    };
    let Some((ok, unhealthy, reason)) = verdict else {
        return Vec::new();
    };
    let (rollout, batch_index) = (r.id.clone(), b.index);
    if ok {
        return vec![Event::BatchSucceeded {
            rollout,
            batch_index,
            healthy,
            unhealthy,
            threshold,
        }];
    }
    let why = match reason {
        BatchFailReason::Timeout => format!(
            "batch {batch_index} failed: {unhealthy} unhealthy (of them {pending} silent past the {}s health timeout), threshold {threshold}",
            r.plan.health_timeout_secs
        ),
        BatchFailReason::Unhealthy => format!("batch {batch_index} failed: {unhealthy} unhealthy, threshold {threshold}"),
    };
    let mut out = vec![Event::BatchFailed {
        rollout: rollout.clone(),
        batch_index,
        healthy,
        unhealthy,
        threshold,
        reason,
    }];
    match r.plan.on_failure {
        OnFailure::Pause => out.push(Event::RolloutPaused {
            rollout,
            reason: why,
        }),
        OnFailure::Revert => {
            out.push(Event::RolloutFailed {
                rollout: rollout.clone(),
                reason: why,
            });
            let mut restored = Vec::new();
            for started in r
                .batches
                .iter()
                .filter(|x| x.status != BatchStatus::Pending)
            {
                for (m, _) in &started.machines {
                    let prev = started.previous.get(m).cloned().flatten();
                    let desired = state
                        .machines
                        .get(m)
                        .and_then(|mm| mm.desired.as_ref())
                        .map(|d| &d.path);
                    match &prev {
                        Some(p) if desired != Some(p) => out.push(Event::DesiredGenerationSet {
                            machine: m.clone(),
                            path: p.clone(),
                            cache_url: None,
                            cause: DesiredCause::Revert {
                                rollout: rollout.clone(),
                            },
                        }),
                        None if desired.is_some() => out.push(Event::DesiredGenerationCleared {
                            machine: m.clone(),
                            cause: DesiredCause::Revert {
                                rollout: rollout.clone(),
                            },
                        }),
                        _ => {}
                    }
                    restored.push((m.clone(), prev));
                }
            }
            out.push(Event::RolloutReverted { rollout, restored });
        }
    }
    out
}
