//! Decisions on machines an operator makes: registering, the lifecycle, out-of-band deploys, the
//! desired generation and quarantine.

use super::*;

/// `Command::Register`: registers a new machine, or moves a known one to `lifecycle` and `tags`.
pub(super) fn register(
    state: &State,
    machine: &MachineId,
    lifecycle: Lifecycle,
    tags: &[Tag],
) -> Result<Vec<Event>, Rejection> {
    check_tags(tags)?;
    let Some(m) = state.machines.get(machine) else {
        return Ok(vec![Event::MachineRegistered {
            machine: machine.clone(),
            lifecycle,
            tags: sorted(tags),
            auto: false,
        }]);
    };
    let mut out = Vec::new();
    if m.lifecycle != lifecycle {
        if !m.lifecycle.can_transition_to(lifecycle) {
            return Err(Rejection::Conflict(format!(
                "machine {machine} is registered as {}; invalid transition: {} -> {lifecycle}",
                m.lifecycle, m.lifecycle
            )));
        }
        out.push(Event::LifecycleChanged {
            machine: machine.clone(),
            from: m.lifecycle,
            to: lifecycle,
        });
    }
    let tags = sorted(tags);
    if m.tags != tags {
        out.push(Event::TagsSet {
            machine: machine.clone(),
            tags,
            source: TagSource::Register,
        });
    }
    Ok(out)
}

/// `Command::SetLifecycle`: along the lifecycle graph only.
pub(super) fn set_lifecycle(
    state: &State,
    machine: &MachineId,
    to: Lifecycle,
) -> Result<Vec<Event>, Rejection> {
    let m = machine_or_404(state, machine)?;
    if !m.lifecycle.can_transition_to(to) {
        return Err(Rejection::Conflict(format!(
            "invalid transition: {} -> {to}",
            m.lifecycle
        )));
    }
    Ok(vec![Event::LifecycleChanged {
        machine: machine.clone(),
        from: m.lifecycle,
        to,
    }])
}

/// `Command::NotifyDeploy`: an out-of-band deploy becomes the desired generation (registering an
/// unknown machine).
pub(super) fn notify_deploy(
    state: &State,
    machine: &MachineId,
    path: &StorePath,
) -> Result<Vec<Event>, Rejection> {
    let mut out = Vec::new();
    if !state.machines.contains_key(machine) {
        out.push(Event::MachineRegistered {
            machine: machine.clone(),
            lifecycle: Lifecycle::Active,
            tags: vec![],
            auto: true,
        });
    }
    out.push(Event::DesiredGenerationSet {
        machine: machine.clone(),
        path: path.clone(),
        cache_url: None,
        cause: DesiredCause::Notify,
    });
    Ok(out)
}

/// `Command::ClearDesired`: nothing to do when there is none.
pub(super) fn clear_desired(state: &State, machine: &MachineId) -> Result<Vec<Event>, Rejection> {
    let m = machine_or_404(state, machine)?;
    if m.desired.is_none() {
        return Ok(vec![]);
    }
    Ok(vec![Event::DesiredGenerationCleared {
        machine: machine.clone(),
        cause: DesiredCause::Operator,
    }])
}

/// `Command::ClearQuarantine`: one `QuarantineCleared` per quarantined path.
pub(super) fn clear_quarantine(
    state: &State,
    machine: &MachineId,
) -> Result<Vec<Event>, Rejection> {
    let m = machine_or_404(state, machine)?;
    Ok(m.quarantined
        .keys()
        .map(|p| Event::QuarantineCleared {
            machine: machine.clone(),
            path: p.clone(),
        })
        .collect())
}
