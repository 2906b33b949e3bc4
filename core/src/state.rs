//! Projections: the tables users see, folded from events by one pure reducer.
//!
//! [`State::apply`] never fails and does no IO. Projections are a cache: dropping them and
//! replaying the log from sequence 1 gives the same value (a property test checks it).
//! History that grows with time (health results, audit) is bounded here; the log keeps it all.

use crate::event::*;
use crate::ids::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

pub use history::HealthEntry;

// The reducer, one module a group of events; `State::apply` dispatches to them.
mod history;
mod keys;
mod machines;
mod reports;
mod rollouts;

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

/// A machine row (machines, plus its machine_tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Id.
    pub id: MachineId,
    /// Lifecycle.
    pub lifecycle: Lifecycle,
    /// When it registered.
    pub registered_at: Timestamp,
    /// Tags, sorted, each once.
    pub tags: Vec<Tag>,
    /// Desired generation (boxed: most machines have none most of the time).
    pub desired: Option<Box<Desired>>,
    /// Last report.
    pub last_report: Option<LastReport>,
    /// Paths it must not be asked to apply again, with the reason.
    pub quarantined: BTreeMap<StorePath, String>,
    /// Latest health results, newest last, bounded by [`HEALTH_HISTORY_MAX`].
    #[serde(deserialize_with = "history::deserialize")]
    pub health: VecDeque<HealthEntry>,
    /// What its last reported switch did (boxed: reported only around a switch).
    #[serde(default)]
    pub last_switch: Option<Box<SwitchEntry>>,
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
    /// Forgets the health of the previous attempt: `fresh` becomes the health map, counts zero.
    fn reset_health(&mut self, fresh: BTreeMap<MachineId, MachineHealth>) {
        self.health = fresh;
        self.healthy = 0;
        self.unhealthy = 0;
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

/// Tags as a machine row keeps them (and commands compare them): sorted, each once, no spare
/// capacity.
pub(crate) fn sorted_tags(tags: &[Tag]) -> Vec<Tag> {
    let mut v = tags.to_vec();
    v.sort();
    v.dedup();
    v.shrink_to_fit();
    v
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
            Event::MachineRegistered { .. }
            | Event::LifecycleChanged { .. }
            | Event::TagsSet { .. }
            | Event::DesiredGenerationSet { .. }
            | Event::DesiredGenerationCleared { .. }
            | Event::MachineQuarantined { .. }
            | Event::QuarantineCleared { .. }
            | Event::RebootNeededSet { .. } => self.apply_machine_event(env),
            Event::ReportReceived { .. }
            | Event::HealthMeasured { .. }
            | Event::HealthReported { .. }
            | Event::SwitchReported { .. } => self.apply_report_event(env),
            Event::ReleaseCreated { .. } | Event::ReleaseDeleted { .. } => {
                self.apply_release_event(env)
            }
            Event::RolloutCreated { .. }
            | Event::RolloutOptionsSet { .. }
            | Event::RolloutPaused { .. }
            | Event::RolloutResumed { .. }
            | Event::RolloutCancelled { .. }
            | Event::RolloutCompleted { .. }
            | Event::RolloutFailed { .. }
            | Event::RolloutReverted { .. }
            | Event::RolloutDeleted { .. } => self.apply_rollout_event(env),
            Event::BatchStarted { .. }
            | Event::BatchSucceeded { .. }
            | Event::BatchFailed { .. } => self.apply_batch_event(env),
            Event::ApiKeyCreated { .. }
            | Event::ApiKeyRevoked { .. }
            | Event::BootstrapDone { .. } => self.apply_key_event(env),
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
