//! Decisions: a command and the current state go in, events or a rejection come out.
//!
//! `decide` is pure: no IO, no clock (time arrives as `now`), no randomness (ids and seeds
//! arrive inside the command). The HTTP front end only parses, authenticates, calls this,
//! appends what it returns and answers.

use crate::event::*;
use crate::ids::*;
use crate::plan::{plan_rollout, RolloutSpec};
use crate::state::State;

/// Why a command was refused. Expected outcomes, not failures: each maps to one 4xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request is malformed or breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// Something it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
}

/// A report as the front end parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInput {
    /// What the machine runs.
    pub generation: Option<StorePath>,
    /// Success.
    pub success: bool,
    /// Message.
    pub message: String,
    /// Declared tags.
    pub tags: Vec<Tag>,
    /// Health results, if any.
    pub health: Option<(Vec<CheckResult>, bool)>,
    /// Agent version.
    pub agent_version: String,
    /// Uptime.
    pub uptime_secs: u64,
    /// Dry run.
    pub dry_run: bool,
    /// The path it rolled back from.
    pub rolled_back_from: Option<StorePath>,
}

/// What an agent's switch did, as the front end parsed it from a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchInput {
    /// The generation switched to.
    pub path: StorePath,
    /// switch, boot or test.
    pub activation: Activation,
    /// What happened.
    pub outcome: SwitchOutcome,
    /// The exit status, when known.
    pub exit_code: Option<i32>,
    /// Failed units, when counted.
    pub failed_units: Option<u32>,
}

/// Most entries of a report's `reboot_needed`.
pub const REBOOT_PARTS_MAX: usize = 8;
/// Longest entry of a report's `reboot_needed`.
pub const REBOOT_PART_LEN_MAX: usize = 32;

/// Everything an operator or agent can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Hand out the first admin key.
    Bootstrap {
        /// Key name.
        name: KeyName,
        /// SHA-256 of the minted secret.
        hash: [u8; 32],
    },
    /// Create an API key.
    CreateKey {
        /// Name.
        name: KeyName,
        /// Role.
        role: Role,
        /// SHA-256 of the minted secret.
        hash: [u8; 32],
    },
    /// Revoke an API key.
    RevokeKey {
        /// Name.
        name: KeyName,
    },
    /// Register (or re-register) a machine.
    Register {
        /// Machine.
        machine: MachineId,
        /// Lifecycle.
        lifecycle: Lifecycle,
        /// Tags.
        tags: Vec<Tag>,
    },
    /// Move a machine along the lifecycle graph.
    SetLifecycle {
        /// Machine.
        machine: MachineId,
        /// Target lifecycle.
        to: Lifecycle,
    },
    /// An agent reports (authenticated as `machine`).
    Report {
        /// Machine.
        machine: MachineId,
        /// The report.
        report: ReportInput,
        /// Register the machine if unknown.
        auto_register: bool,
    },
    /// An agent reports health results with the times it measured them (its clock), as the API
    /// receives them; [`Command::Report`] is the same without times (results count as measured when
    /// appended). See [`health_measured_at`].
    ReportMeasured {
        /// Machine.
        machine: MachineId,
        /// The report (its `health` must be set for the times to matter).
        report: ReportInput,
        /// Register the machine if unknown.
        auto_register: bool,
        /// When the agent says its health checks ran (`health.timestamp`).
        health_timestamp: Timestamp,
        /// When the agent says it built the report (`timestamp`), if it sent a readable one.
        report_timestamp: Option<Timestamp>,
    },
    /// An out-of-band deploy happened.
    NotifyDeploy {
        /// Machine.
        machine: MachineId,
        /// Path.
        path: StorePath,
    },
    /// Forget a machine's desired generation.
    ClearDesired {
        /// Machine.
        machine: MachineId,
    },
    /// Allow quarantined paths again.
    ClearQuarantine {
        /// Machine.
        machine: MachineId,
    },
    /// Record a release.
    CreateRelease {
        /// Minted id.
        release: ReleaseId,
        /// Flake.
        flake_ref: Option<String>,
        /// Revision.
        flake_rev: Option<String>,
        /// Cache.
        cache_url: Option<String>,
        /// Entries.
        entries: Vec<ReleaseEntry>,
    },
    /// Delete a release no rollout references.
    DeleteRelease {
        /// Release.
        release: ReleaseId,
    },
    /// Create and start a rollout.
    CreateRollout {
        /// Minted id.
        rollout: RolloutId,
        /// The request.
        spec: RolloutSpec,
        /// Seed of the machine order.
        seed: u64,
    },
    /// Resume a paused rollout.
    ResumeRollout {
        /// Rollout.
        rollout: RolloutId,
    },
    /// Cancel an active rollout.
    CancelRollout {
        /// Rollout.
        rollout: RolloutId,
    },
    /// Delete a finished rollout.
    DeleteRollout {
        /// Rollout.
        rollout: RolloutId,
    },
    /// A report ([`Command::Report`] or [`Command::ReportMeasured`], in `report`) that also says
    /// what the agent's switch did and which booted parts differ from the running generation's
    /// (agents after v0.1). Its events follow the report's, in the same group.
    ReportActivation {
        /// The report itself.
        report: Box<Command>,
        /// Machine (must be the report's).
        machine: MachineId,
        /// What the switch did, on the report that follows one.
        switch: Option<SwitchInput>,
        /// Booted kernel, initrd or systemd that differ from the running generation's.
        reboot_needed: Vec<String>,
    },
    /// [`Command::CreateRollout`] with options beyond the plan; `RolloutOptionsSet` follows the
    /// `RolloutCreated` in the same group when they differ from the defaults.
    CreateRolloutWithOptions {
        /// Minted id.
        rollout: RolloutId,
        /// The request.
        spec: RolloutSpec,
        /// Seed of the machine order.
        seed: u64,
        /// Activation and failed-units options.
        options: RolloutOptions,
    },
}

/// Most entries in one release.
pub const RELEASE_ENTRIES_MAX: usize = 100_000;
/// Longest report message kept.
pub const MESSAGE_LEN_MAX: usize = 4096;
/// Most tags on a machine.
pub const TAGS_MAX: usize = 64;

/// When a report's health results were measured, by the control plane's clock (`now`, the
/// report's append time). The agent's clock may be off, so this is the earliest of: `now`; the
/// agent's stamp `health_timestamp`; and `now` less the results' age by the agent's own clock
/// (`report_timestamp - health_timestamp`, in which its offset cancels). A clock ahead thus gains
/// nothing; a clock behind makes results look older (they count later, never wrongly).
pub fn health_measured_at(
    now: Timestamp,
    health_timestamp: Timestamp,
    report_timestamp: Option<Timestamp>,
) -> Timestamp {
    let stamped = health_timestamp.min(now);
    match report_timestamp {
        Some(sent) => {
            let age_ms = sent.0.saturating_sub(health_timestamp.0);
            stamped.min(Timestamp(now.0.saturating_sub(age_ms)))
        }
        None => stamped,
    }
}

/// Decides what `cmd` does to `state`. Pure.
pub fn decide(state: &State, cmd: &Command, now: Timestamp) -> Result<Vec<Event>, Rejection> {
    match cmd {
        Command::ReportMeasured {
            machine,
            report,
            auto_register,
            health_timestamp,
            report_timestamp,
        } => {
            let mut out = decide(
                state,
                &Command::Report {
                    machine: machine.clone(),
                    report: report.clone(),
                    auto_register: *auto_register,
                },
                now,
            )?;
            // Right before the results it dates, so the reducer judges them with their time.
            if let Some(i) = out
                .iter()
                .position(|e| matches!(e, Event::HealthReported { .. }))
            {
                let measured_at = health_measured_at(now, *health_timestamp, *report_timestamp);
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
        Command::Bootstrap { name, hash } => {
            if state.bootstrapped || !state.api_keys.is_empty() {
                return Err(Rejection::Conflict(
                    "API keys already exist. Use an admin key to create more.".into(),
                ));
            }
            Ok(vec![
                Event::ApiKeyCreated {
                    name: name.clone(),
                    role: Role::Admin,
                    hash: *hash,
                },
                Event::BootstrapDone { name: name.clone() },
            ])
        }
        Command::CreateKey { name, role, hash } => {
            if state.api_keys.contains_key(name) {
                return Err(Rejection::Conflict(format!(
                    "an API key named {name} already exists (revoked keys keep their name)"
                )));
            }
            Ok(vec![Event::ApiKeyCreated {
                name: name.clone(),
                role: *role,
                hash: *hash,
            }])
        }
        Command::RevokeKey { name } => match state.api_keys.get(name) {
            None => Err(Rejection::NotFound(format!("API key {name} not found"))),
            Some(k) if k.revoked_at.is_some() => Err(Rejection::Conflict(format!(
                "API key {name} is already revoked"
            ))),
            Some(_) => Ok(vec![Event::ApiKeyRevoked { name: name.clone() }]),
        },
        Command::Register {
            machine,
            lifecycle,
            tags,
        } => {
            check_tags(tags)?;
            match state.machines.get(machine) {
                None => Ok(vec![Event::MachineRegistered {
                    machine: machine.clone(),
                    lifecycle: *lifecycle,
                    tags: sorted(tags),
                    auto: false,
                }]),
                Some(m) => {
                    let mut out = Vec::new();
                    if m.lifecycle != *lifecycle {
                        if !m.lifecycle.can_transition_to(*lifecycle) {
                            return Err(Rejection::Conflict(format!(
                                "machine {machine} is registered as {}; invalid transition: {} -> {lifecycle}",
                                m.lifecycle, m.lifecycle
                            )));
                        }
                        out.push(Event::LifecycleChanged {
                            machine: machine.clone(),
                            from: m.lifecycle,
                            to: *lifecycle,
                        });
                    }
                    let tags = sorted(tags);
                    if m.tags.iter().cloned().collect::<Vec<_>>() != tags {
                        out.push(Event::TagsSet {
                            machine: machine.clone(),
                            tags,
                            source: TagSource::Register,
                        });
                    }
                    Ok(out)
                }
            }
        }
        Command::SetLifecycle { machine, to } => {
            let m = machine_or_404(state, machine)?;
            if !m.lifecycle.can_transition_to(*to) {
                return Err(Rejection::Conflict(format!(
                    "invalid transition: {} -> {to}",
                    m.lifecycle
                )));
            }
            Ok(vec![Event::LifecycleChanged {
                machine: machine.clone(),
                from: m.lifecycle,
                to: *to,
            }])
        }
        Command::Report {
            machine,
            report,
            auto_register,
        } => {
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
                    if !tags.is_empty() && m.tags.iter().cloned().collect::<Vec<_>>() != tags {
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
                let already = state
                    .machines
                    .get(machine)
                    .is_some_and(|m| m.quarantined.contains_key(failed));
                let is_desired = state
                    .machines
                    .get(machine)
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
        Command::NotifyDeploy { machine, path } => {
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
        Command::ClearDesired { machine } => {
            let m = machine_or_404(state, machine)?;
            if m.desired.is_none() {
                return Ok(vec![]);
            }
            Ok(vec![Event::DesiredGenerationCleared {
                machine: machine.clone(),
                cause: DesiredCause::Operator,
            }])
        }
        Command::ClearQuarantine { machine } => {
            let m = machine_or_404(state, machine)?;
            Ok(m.quarantined
                .keys()
                .map(|p| Event::QuarantineCleared {
                    machine: machine.clone(),
                    path: p.clone(),
                })
                .collect())
        }
        Command::CreateRelease {
            release,
            flake_ref,
            flake_rev,
            cache_url,
            entries,
        } => {
            if entries.is_empty() {
                return Err(Rejection::Invalid("entries must not be empty".into()));
            }
            if entries.len() > RELEASE_ENTRIES_MAX {
                return Err(Rejection::Invalid(format!(
                    "a release holds at most {RELEASE_ENTRIES_MAX} entries"
                )));
            }
            if state.releases.contains_key(release) {
                return Err(Rejection::Conflict(format!(
                    "release {release} already exists"
                )));
            }
            if let Some(url) = cache_url {
                crate::plan::check_cache_url(url)?;
            }
            let mut seen = std::collections::BTreeSet::new();
            for e in entries {
                if !seen.insert(&e.machine) {
                    return Err(Rejection::Invalid(format!(
                        "host {} appears twice in entries",
                        e.machine
                    )));
                }
                check_tags(&e.tags)?;
            }
            Ok(vec![Event::ReleaseCreated {
                release: release.clone(),
                flake_ref: flake_ref.clone(),
                flake_rev: flake_rev.clone(),
                cache_url: cache_url.clone(),
                entries: entries.clone(),
            }])
        }
        Command::DeleteRelease { release } => {
            if !state.releases.contains_key(release) {
                return Err(Rejection::NotFound(format!("release {release} not found")));
            }
            if let Some(r) = state.rollouts.values().find(|r| &r.plan.release == release) {
                return Err(Rejection::Conflict(format!(
                    "release {release} is used by rollout {}",
                    r.id
                )));
            }
            Ok(vec![Event::ReleaseDeleted {
                release: release.clone(),
            }])
        }
        Command::CreateRollout {
            rollout,
            spec,
            seed,
        } => {
            if state.rollouts.contains_key(rollout) {
                return Err(Rejection::Conflict(format!(
                    "rollout {rollout} already exists"
                )));
            }
            let plan = plan_rollout(state, spec, *seed)?;
            Ok(vec![Event::RolloutCreated {
                rollout: rollout.clone(),
                plan,
            }])
        }
        Command::ResumeRollout { rollout } => {
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
            for b in r
                .batches
                .iter()
                .filter(|b| b.status == crate::state::BatchStatus::Failed)
            {
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
        Command::CancelRollout { rollout } => {
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
        Command::DeleteRollout { rollout } => {
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
        Command::ReportActivation {
            report,
            machine,
            switch,
            reboot_needed,
        } => {
            match report.as_ref() {
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
            // A machine pending reboot says so on every report; the log keeps it once, and once
            // more for each batch start after it (the gate only counts evidence from after that).
            let batch_started = state
                .active_rollout_of
                .get(machine)
                .and_then(|r| state.rollouts.get(r))
                .and_then(|r| {
                    r.batches.iter().find(|b| {
                        b.status == crate::state::BatchStatus::Active
                            && b.health.contains_key(machine)
                    })
                })
                .and_then(|b| b.started_seq);
            let known = |s: &SwitchInput| {
                state
                    .machines
                    .get(machine)
                    .and_then(|m| m.last_switch.as_ref())
                    .is_some_and(|l| {
                        (&l.path, l.activation, l.outcome) == (&s.path, s.activation, s.outcome)
                            && batch_started.is_none_or(|b| l.seq > b)
                    })
            };
            if let Some(s) = switch.as_ref().filter(|s| !known(s)) {
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
            if known != reboot_needed.as_slice() {
                out.push(Event::RebootNeededSet {
                    machine: machine.clone(),
                    components: reboot_needed.clone(),
                });
            }
            Ok(out)
        }
        Command::CreateRolloutWithOptions {
            rollout,
            spec,
            seed,
            options,
        } => {
            let mut out = decide(
                state,
                &Command::CreateRollout {
                    rollout: rollout.clone(),
                    spec: spec.clone(),
                    seed: *seed,
                },
                now,
            )?;
            if *options != RolloutOptions::default() {
                out.push(Event::RolloutOptionsSet {
                    rollout: rollout.clone(),
                    activation: options.activation,
                    allow_failed_units: options.allow_failed_units,
                });
            }
            Ok(out)
        }
    }
}

fn machine_or_404<'a>(
    state: &'a State,
    m: &MachineId,
) -> Result<&'a crate::state::Machine, Rejection> {
    state
        .machines
        .get(m)
        .ok_or_else(|| Rejection::NotFound(format!("machine {m} not found")))
}

fn rollout_or_404<'a>(
    state: &'a State,
    r: &RolloutId,
) -> Result<&'a crate::state::Rollout, Rejection> {
    state
        .rollouts
        .get(r)
        .ok_or_else(|| Rejection::NotFound(format!("rollout {r} not found")))
}

fn check_tags(tags: &[Tag]) -> Result<(), Rejection> {
    if tags.len() > TAGS_MAX {
        return Err(Rejection::Invalid(format!(
            "{} tags; at most {TAGS_MAX}",
            tags.len()
        )));
    }
    Ok(())
}

fn sorted(tags: &[Tag]) -> Vec<Tag> {
    let mut v = tags.to_vec();
    v.sort();
    v.dedup();
    v
}
