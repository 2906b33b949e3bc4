//! Projections: the tables users see, folded from events by one pure reducer.
//!
//! [`State::apply`] never fails and does no IO. Projections are a cache: dropping them and
//! replaying the log from sequence 1 gives the same value (a property test checks it).
//! History that grows with time (health results, audit) is bounded here; the log keeps it all.

use crate::event::*;
use crate::ids::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Health results kept per machine (the log keeps every one).
pub const HEALTH_HISTORY_MAX: usize = 32;
/// Audit rows kept in memory (the log keeps every one; the replay tool reads older ones).
pub const AUDIT_MAX: usize = 100_000;

/// The desired generation of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The system store path.
    pub path: StorePath,
    /// Where to fetch it.
    pub cache_url: Option<String>,
    /// Why it was set.
    pub cause: DesiredCause,
    /// When.
    pub set_at: Timestamp,
}

/// The last report of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    /// Its sequence number.
    pub seq: Seq,
    /// When it was appended.
    pub at: Timestamp,
    /// What the machine runs.
    pub generation: Option<StorePath>,
    /// Whether the last action succeeded.
    pub success: bool,
    /// What happened.
    pub message: String,
    /// Agent version.
    pub agent_version: String,
    /// Agent uptime.
    pub uptime_secs: u64,
    /// Dry-run agent.
    pub dry_run: bool,
}

/// What a machine's last reported switch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchEntry {
    /// Its sequence number.
    pub seq: Seq,
    /// When it was appended.
    pub at: Timestamp,
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

impl SwitchEntry {
    /// Why this switch makes its machine unhealthy under `options`, if it does: failed units
    /// (unless allowed) and any other non-zero exit after activating.
    pub fn failure(&self, options: &RolloutOptions) -> Option<String> {
        let code = self
            .exit_code
            .map_or_else(|| "non-zero".to_owned(), |c| c.to_string());
        match self.outcome {
            SwitchOutcome::FailedUnits if !options.allow_failed_units => Some(format!(
                "switched to {}, {} units failed (exit status {code}; the rollout does not allow failed units)",
                self.path,
                self.failed_units
                    .map_or_else(|| "some".to_owned(), |n| n.to_string())
            )),
            SwitchOutcome::SwitchedWithErrors => Some(format!(
                "switched to {}, but switch-to-configuration exited with status {code}",
                self.path
            )),
            _ => None,
        }
    }
}

/// One health result set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEntry {
    /// Its sequence number.
    pub seq: Seq,
    /// When it was appended.
    pub at: Timestamp,
    /// What the machine ran.
    pub generation: Option<StorePath>,
    /// The results.
    pub results: Vec<CheckResult>,
    /// True when all passed.
    pub all_passed: bool,
}

/// A machine row (machines, plus its machine_tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Id.
    pub id: MachineId,
    /// Lifecycle.
    pub lifecycle: Lifecycle,
    /// When it registered.
    pub registered_at: Timestamp,
    /// Tags.
    pub tags: BTreeSet<Tag>,
    /// Desired generation.
    pub desired: Option<Desired>,
    /// Last report.
    pub last_report: Option<LastReport>,
    /// Paths it must not be asked to apply again, with the reason.
    pub quarantined: BTreeMap<StorePath, String>,
    /// Latest health results, newest last, bounded by [`HEALTH_HISTORY_MAX`].
    pub health: VecDeque<HealthEntry>,
    /// What its last reported switch did.
    #[serde(default)]
    pub last_switch: Option<SwitchEntry>,
    /// Booted kernel, initrd or systemd that differ from the running generation's (empty: none).
    #[serde(default)]
    pub reboot_needed: Vec<String>,
    /// The event that last decided its desired generation: a `DesiredGenerationSet`, or a
    /// `QuarantineCleared` (a resume, an operator). Sent to the agent, whose local quarantine of a
    /// path ends when this moves past the decision under which the path failed.
    #[serde(default)]
    pub decided_seq: Seq,
}

impl Machine {
    /// What the machine runs, from its last report.
    pub fn current_generation(&self) -> Option<&StorePath> {
        self.last_report
            .as_ref()
            .and_then(|r| r.generation.as_ref())
    }
    /// The latest health results.
    pub fn latest_health(&self) -> Option<&HealthEntry> {
        self.health.back()
    }
}

/// A release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Id.
    pub id: ReleaseId,
    /// Flake.
    pub flake_ref: Option<String>,
    /// Revision.
    pub flake_rev: Option<String>,
    /// Cache.
    pub cache_url: Option<String>,
    /// Entries by machine.
    pub entries: BTreeMap<MachineId, ReleaseEntry>,
    /// Created.
    pub created_at: Timestamp,
    /// By.
    pub created_by: Actor,
}

/// Health of a machine within a started batch, measured from its own reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineHealth {
    /// No deciding report since the batch started.
    Pending,
    /// A passing health report on the release path, at this sequence.
    Healthy(Seq),
    /// A failure at this sequence (None: the health timeout), with the reason.
    Unhealthy(Option<Seq>, String),
}

/// Status of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchStatus {
    /// Not started.
    Pending,
    /// Started; machines are moving and being judged.
    Active,
    /// Passed.
    Succeeded,
    /// Failed.
    Failed,
}

/// A batch of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// 0-based.
    pub index: u32,
    /// Machines with their release paths, in plan order.
    pub machines: Vec<(MachineId, StorePath)>,
    /// Status.
    pub status: BatchStatus,
    /// Starts so far.
    pub attempt: u32,
    /// Sequence of the latest BatchStarted: only later reports count.
    pub started_seq: Option<Seq>,
    /// Time of the latest BatchStarted.
    pub started_at: Option<Timestamp>,
    /// When it was decided.
    pub completed_at: Option<Timestamp>,
    /// Pre-rollout generations, recorded at the first start and kept across resumes.
    pub previous: BTreeMap<MachineId, Option<StorePath>>,
    /// Per-machine health in the current attempt.
    pub health: BTreeMap<MachineId, MachineHealth>,
    /// Healthy count in the current attempt (kept in step with `health`).
    pub healthy: u32,
    /// Unhealthy count in the current attempt (kept in step with `health`).
    pub unhealthy: u32,
}

impl Batch {
    /// Machines with no deciding report yet.
    pub fn pending(&self) -> u32 {
        self.machines.len() as u32 - self.healthy - self.unhealthy
    }
    /// The release path of `m` in this batch.
    pub fn target_of(&self, m: &MachineId) -> Option<&StorePath> {
        self.machines.iter().find(|(id, _)| id == m).map(|(_, p)| p)
    }
    fn set_health(&mut self, m: &MachineId, h: MachineHealth) {
        if let Some(old) = self.health.insert(m.clone(), h.clone()) {
            match old {
                MachineHealth::Healthy(_) => self.healthy -= 1,
                MachineHealth::Unhealthy(..) => self.unhealthy -= 1,
                MachineHealth::Pending => {}
            }
        }
        match h {
            MachineHealth::Healthy(_) => self.healthy += 1,
            MachineHealth::Unhealthy(..) => self.unhealthy += 1,
            MachineHealth::Pending => {}
        }
    }
}

/// A rollout with its batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Id.
    pub id: RolloutId,
    /// The validated plan.
    pub plan: RolloutPlan,
    /// Status.
    pub status: RolloutStatus,
    /// Batches.
    pub batches: Vec<Batch>,
    /// Created.
    pub created_at: Timestamp,
    /// The sequence number of its `RolloutCreated` event: its stream starts there, so reading its
    /// timeline never scans the log before it.
    pub created_seq: Seq,
    /// Last change.
    pub updated_at: Timestamp,
    /// By.
    pub created_by: Actor,
    /// Why it paused, failed or was reverted.
    pub reason: Option<String>,
    /// Activation and failed-units options (`RolloutOptionsSet`; defaults when absent).
    #[serde(default)]
    pub options: RolloutOptions,
}

impl Rollout {
    /// The batch being started or judged: the first one not yet decided.
    pub fn current_batch(&self) -> Option<&Batch> {
        self.batches
            .iter()
            .find(|b| matches!(b.status, BatchStatus::Pending | BatchStatus::Active))
    }
}

/// An API key row (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Name.
    pub name: KeyName,
    /// Role.
    pub role: Role,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// Created.
    pub created_at: Timestamp,
    /// By.
    pub created_by: Actor,
    /// Revoked at.
    pub revoked_at: Option<Timestamp>,
}

/// An audit row, derived from an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence of the event.
    pub seq: Seq,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: Actor,
    /// What (v0.1 action names).
    pub action: String,
    /// On what.
    pub target: String,
    /// Details.
    pub detail: String,
}

/// All projections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Last applied sequence.
    pub last_seq: Seq,
    /// Time of the last applied event.
    pub last_at: Timestamp,
    /// Machines.
    pub machines: BTreeMap<MachineId, Machine>,
    /// Releases.
    pub releases: BTreeMap<ReleaseId, Release>,
    /// Rollouts.
    pub rollouts: BTreeMap<RolloutId, Rollout>,
    /// For each machine in a running or paused rollout, that rollout.
    pub active_rollout_of: BTreeMap<MachineId, RolloutId>,
    /// API keys by name.
    pub api_keys: BTreeMap<KeyName, ApiKey>,
    /// Key names by secret hash.
    pub key_by_hash: BTreeMap<[u8; 32], KeyName>,
    /// Bootstrap has happened.
    pub bootstrapped: bool,
    /// Audit, newest last, bounded by [`AUDIT_MAX`].
    pub audit: VecDeque<AuditEntry>,
    /// How many times rollouts entered each status other than running (for `nixfleet_rollouts_total`).
    pub rollouts_reached: BTreeMap<RolloutStatus, u64>,
    /// The measurement time of a `HealthMeasured` waiting for the `HealthReported` right after it
    /// (same group); taken by that event, so between groups it is always `None`.
    #[serde(default)]
    pub health_measured: Option<(MachineId, Timestamp)>,
}

impl State {
    /// Folds one event into the projections. Never fails, does no IO, reads no clock.
    pub fn apply(&mut self, env: &Envelope) {
        debug_assert!(
            env.seq > self.last_seq,
            "sequence must increase: {:?} after {:?}",
            env.seq,
            self.last_seq
        );
        let (seq, at) = (env.seq, env.at);
        self.last_seq = seq;
        self.last_at = at;
        if let Some((action, target, detail)) = crate::describe::audit(&env.event) {
            if self.audit.len() == AUDIT_MAX {
                self.audit.pop_front();
            }
            self.audit.push_back(AuditEntry {
                seq,
                at,
                actor: env.actor.clone(),
                action: action.to_owned(),
                target,
                detail,
            });
        }
        match &env.event {
            Event::MachineRegistered {
                machine,
                lifecycle,
                tags,
                ..
            } => {
                self.machines.insert(
                    machine.clone(),
                    Machine {
                        id: machine.clone(),
                        lifecycle: *lifecycle,
                        registered_at: at,
                        tags: tags.iter().cloned().collect(),
                        desired: None,
                        last_report: None,
                        quarantined: BTreeMap::new(),
                        health: VecDeque::new(),
                        last_switch: None,
                        reboot_needed: Vec::new(),
                        decided_seq: Seq(0),
                    },
                );
            }
            Event::LifecycleChanged { machine, to, .. } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.lifecycle = *to;
                }
            }
            Event::TagsSet { machine, tags, .. } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.tags = tags.iter().cloned().collect();
                }
            }
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
                    self.judge(machine, seq, |_, _| {
                        Some(MachineHealth::Unhealthy(Some(seq), reason.clone()))
                    });
                }
            }
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
                    if m.health.len() == HEALTH_HISTORY_MAX {
                        m.health.pop_front();
                    }
                    m.health.push_back(HealthEntry {
                        seq,
                        at,
                        generation: generation.clone(),
                        results: results.clone(),
                        all_passed: *all_passed,
                    });
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
            Event::DesiredGenerationSet {
                machine,
                path,
                cache_url,
                cause,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    // A new desired path ends the quarantine of other paths: the operator moved on.
                    m.quarantined.retain(|p, _| p == path);
                    m.decided_seq = seq;
                    m.desired = Some(Desired {
                        path: path.clone(),
                        cache_url: cache_url.clone(),
                        cause: cause.clone(),
                        set_at: at,
                    });
                }
            }
            Event::DesiredGenerationCleared { machine, .. } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.desired = None;
                    m.quarantined.clear();
                }
            }
            Event::ReleaseCreated {
                release,
                flake_ref,
                flake_rev,
                cache_url,
                entries,
            } => {
                self.releases.insert(
                    release.clone(),
                    Release {
                        id: release.clone(),
                        flake_ref: flake_ref.clone(),
                        flake_rev: flake_rev.clone(),
                        cache_url: cache_url.clone(),
                        entries: entries
                            .iter()
                            .map(|e| (e.machine.clone(), e.clone()))
                            .collect(),
                        created_at: at,
                        created_by: env.actor.clone(),
                    },
                );
            }
            Event::ReleaseDeleted { release } => {
                self.releases.remove(release);
            }
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
                    b.health = b
                        .machines
                        .iter()
                        .map(|(m, _)| (m.clone(), MachineHealth::Pending))
                        .collect();
                    b.healthy = 0;
                    b.unhealthy = 0;
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
                        b.health.clear();
                        b.healthy = 0;
                        b.unhealthy = 0;
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
            Event::MachineQuarantined {
                machine,
                path,
                reason,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.quarantined.insert(path.clone(), reason.clone());
                }
            }
            Event::QuarantineCleared { machine, path } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.quarantined.remove(path);
                    m.decided_seq = seq;
                }
            }
            Event::ApiKeyCreated { name, role, hash } => {
                self.key_by_hash.insert(*hash, name.clone());
                self.api_keys.insert(
                    name.clone(),
                    ApiKey {
                        name: name.clone(),
                        role: *role,
                        hash: *hash,
                        created_at: at,
                        created_by: env.actor.clone(),
                        revoked_at: None,
                    },
                );
            }
            Event::ApiKeyRevoked { name } => {
                if let Some(k) = self.api_keys.get_mut(name) {
                    k.revoked_at = Some(at);
                    self.key_by_hash.remove(&k.hash);
                }
            }
            Event::BootstrapDone { .. } => self.bootstrapped = true,
            Event::HealthMeasured {
                machine,
                measured_at,
            } => self.health_measured = Some((machine.clone(), *measured_at)),
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
                    m.last_switch = Some(entry.clone());
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
            Event::RebootNeededSet {
                machine,
                components,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.reboot_needed = components.clone();
                }
            }
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

    /// The active rollout whose gate this event may move.
    pub fn rollout_affected_by(&self, event: &Event) -> Option<&RolloutId> {
        match event {
            Event::ReportReceived { machine, .. }
            | Event::HealthReported { machine, .. }
            | Event::SwitchReported { machine, .. } => self.active_rollout_of.get(machine),
            _ => None,
        }
    }

    /// Machines carrying every tag of `tags`.
    pub fn machines_with_tags<'a>(
        &'a self,
        tags: &'a [Tag],
    ) -> impl Iterator<Item = &'a Machine> + 'a {
        self.machines
            .values()
            .filter(move |m| tags.iter().all(|t| m.tags.contains(t)))
    }

    /// The key holding this secret hash, if it exists and is not revoked.
    pub fn key_for_hash(&self, hash: &[u8; 32]) -> Option<&ApiKey> {
        self.key_by_hash
            .get(hash)
            .and_then(|n| self.api_keys.get(n))
            .filter(|k| k.revoked_at.is_none())
    }

    /// The poll hint for a machine: 5 s while a running or paused rollout involves it.
    pub fn poll_hint(&self, machine: &MachineId) -> Option<u64> {
        self.active_rollout_of.get(machine).map(|_| 5)
    }
}
