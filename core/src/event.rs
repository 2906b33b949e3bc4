//! Events: the only source of truth. Every state change of nixfleet is one of these.
//!
//! Names are past tense. Each event is wrapped in an envelope (sequence, time, actor, stream) by the
//! log; the storage form and its versioning live in `nixfleet-engine::log`, not here.
//! Adding a variant at the end of [`Event`] keeps old logs decodable; changing an existing variant
//! needs a new schema version and an upcaster (see ARCHITECTURE.md, "Serialization").

use crate::ids::{KeyName, MachineId, ReleaseId, RolloutId, StorePath, Tag};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Actor {
    /// The engine itself (start-up, migrations).
    System,
    /// The rollout executor.
    Executor,
    /// An operator holding this API key.
    Key(KeyName),
    /// An agent, authenticated by its certificate.
    Machine(MachineId),
    /// The unauthenticated first-key bootstrap.
    Bootstrap,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Executor => f.write_str("executor"),
            Actor::Key(k) => write!(f, "apikey:{k}"),
            Actor::Machine(m) => write!(f, "machine:{m}"),
            Actor::Bootstrap => f.write_str("system:bootstrap"),
        }
    }
}

impl Actor {
    /// Parses the displayed form (`apikey:ops`, `machine:web-01`, `executor`, …), as the events
    /// API sends it; `None` for anything else.
    pub fn parse(s: &str) -> Option<Actor> {
        Some(match s {
            "system" => Actor::System,
            "executor" => Actor::Executor,
            "system:bootstrap" => Actor::Bootstrap,
            _ => {
                if let Some(k) = s.strip_prefix("apikey:") {
                    Actor::Key(KeyName::parse(k).ok()?)
                } else {
                    Actor::Machine(MachineId::parse(s.strip_prefix("machine:")?).ok()?)
                }
            }
        })
    }
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            /// Parses the wire name.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
            /// The accepted wire names, for error messages.
            pub fn choices() -> String {
                [$($text),+].join(", ")
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

text_enum!(
    /// Where a machine is in its life.
    Lifecycle {
        /// Known, not yet set up.
        Pending => "pending",
        /// Being set up.
        Provisioning => "provisioning",
        /// In service: the only lifecycle rollouts target.
        Active => "active",
        /// Temporarily out of rollouts.
        Maintenance => "maintenance",
        /// Gone for good (terminal).
        Decommissioned => "decommissioned",
    }
);

impl Lifecycle {
    /// The v0.1 transition graph; self-transitions are invalid and decommissioned is terminal.
    pub fn can_transition_to(self, to: Lifecycle) -> bool {
        use Lifecycle::*;
        matches!(
            (self, to),
            (Pending, Provisioning | Active | Decommissioned)
                | (Provisioning, Active | Pending)
                | (Active, Maintenance | Decommissioned)
                | (Maintenance, Active | Decommissioned)
        )
    }
}

text_enum!(
    /// What an API key may do; ordered so that `a >= b` means "a may do what b may".
    Role {
        /// Every GET.
        Readonly => "readonly",
        /// Readonly plus releases and rollouts.
        Deploy => "deploy",
        /// Everything.
        Admin => "admin",
    }
);

text_enum!(
    /// How a rollout cuts its machines into batches.
    Strategy {
        /// One machine, then the rest.
        Canary => "canary",
        /// The given batch sizes.
        Staged => "staged",
        /// Everything in one batch.
        AllAtOnce => "all_at_once",
    }
);

text_enum!(
    /// What a failed batch does to its rollout.
    OnFailure {
        /// Stop and wait for an operator.
        Pause => "pause",
        /// Put every touched machine back on its pre-rollout generation.
        Revert => "revert",
    }
);

text_enum!(
    /// Status of a rollout.
    RolloutStatus {
        /// Batches are being started and judged.
        Running => "running",
        /// A batch failed; an operator must resume or cancel.
        Paused => "paused",
        /// Every batch succeeded.
        Completed => "completed",
        /// A batch failed and the rollout stopped (with on_failure=revert, followed by `Reverted`).
        Failed => "failed",
        /// An operator cancelled it.
        Cancelled => "cancelled",
        /// It failed and its machines were sent back to their pre-rollout generations.
        Reverted => "reverted",
    }
);

impl RolloutStatus {
    /// Running or paused: its machines cannot join another rollout.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutStatus::Running | RolloutStatus::Paused)
    }
}

text_enum!(
    /// Why a batch failed.
    BatchFailReason {
        /// Machines reported failures.
        Unhealthy => "unhealthy",
        /// Machines stayed silent past the health timeout.
        Timeout => "timeout",
    }
);

text_enum!(
    /// Where a machine's tags came from.
    TagSource {
        /// Set at registration.
        Register => "register",
        /// Declared by the agent in a report.
        Agent => "agent",
    }
);

text_enum!(
    /// How an agent activates the generation a rollout asks of it (`switch-to-configuration ACTION`).
    Activation {
        /// Set the profile and boot entry and activate now (the default).
        Switch => "switch",
        /// Set the profile and boot entry only: the generation runs after the next reboot.
        Boot => "boot",
        /// Activate now, leave the profile and boot entry alone: a reboot returns to the old one.
        Test => "test",
    }
);

text_enum!(
    /// What an agent's `switch-to-configuration` did, read from its exit status and the links.
    SwitchOutcome {
        /// Activated, exit status 0.
        Switched => "switched",
        /// Activated, but some units failed to start (NixOS exit status 4).
        FailedUnits => "failed_units",
        /// Activated, but exited with another non-zero status (the activation script failed, …).
        SwitchedWithErrors => "switched_with_errors",
        /// Boot activation: profile and boot entry set, the generation runs after a reboot.
        PendingReboot => "pending_reboot",
        /// It failed before activating; the agent put the previous generation back.
        NotSwitched => "not_switched",
    }
);

/// The options of a rollout beyond its plan (recorded by [`Event::RolloutOptionsSet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RolloutOptions {
    /// How agents activate the release.
    pub activation: Activation,
    /// A switch whose units failed to start (exit status 4) does not make its machine unhealthy;
    /// the health checks alone judge it.
    pub allow_failed_units: bool,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        RolloutOptions {
            activation: Activation::Switch,
            allow_failed_units: false,
        }
    }
}

/// A count, or a percentage of a total rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Amount {
    /// An absolute number.
    Count(u32),
    /// 1..=100 percent (0 allowed for thresholds).
    Percent(u8),
}

impl Amount {
    /// Applies the amount to `total`: a count as is, a percentage rounded up.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Which machines a rollout targets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// Active machines carrying every one of these tags.
    Tags(Vec<Tag>),
    /// These machines (each must be active).
    Hosts(Vec<MachineId>),
}

/// The result of one health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckResult {
    /// Check name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// How long it took.
    pub duration_ms: u64,
    /// Why it failed ("" when it passed).
    pub message: String,
}

/// Why a machine's desired generation changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DesiredCause {
    /// A rollout's batch started.
    Batch {
        /// The rollout.
        rollout: RolloutId,
        /// The batch.
        batch_index: u32,
    },
    /// An out-of-band deploy (SSH deploy or rollback) was reported.
    Notify,
    /// A rollout was reverted.
    Revert {
        /// The rollout.
        rollout: RolloutId,
    },
    /// An operator cleared it.
    Operator,
}

/// One host of a release.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// The machine.
    pub machine: MachineId,
    /// Its system toplevel.
    pub path: StorePath,
    /// e.g. x86_64-linux.
    pub platform: String,
    /// Tags the host declares.
    pub tags: Vec<Tag>,
}

/// A validated rollout plan, recorded whole in [`Event::RolloutCreated`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// The release.
    pub release: ReleaseId,
    /// The strategy.
    pub strategy: Strategy,
    /// The batch sizes the batches were cut with.
    pub batch_sizes: Vec<Amount>,
    /// Unhealthy machines tolerated per batch.
    pub failure_threshold: Amount,
    /// What a failed batch does.
    pub on_failure: OnFailure,
    /// How long a batch waits for health.
    pub health_timeout_secs: u64,
    /// The request's target.
    pub target: Target,
    /// Where agents fetch from.
    pub cache_url: Option<String>,
    /// Seed of the machine order.
    pub seed: u64,
    /// The batches: each machine with its release path.
    pub batches: Vec<Vec<(MachineId, StorePath)>>,
}

/// Everything that can happen in nixfleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A machine became known (by an operator, or by its first authenticated report).
    MachineRegistered {
        /// The machine.
        machine: MachineId,
        /// Its lifecycle.
        lifecycle: Lifecycle,
        /// Its tags.
        tags: Vec<Tag>,
        /// True when its own first report registered it.
        auto: bool,
    },
    /// A machine moved along the lifecycle graph.
    LifecycleChanged {
        /// The machine.
        machine: MachineId,
        /// Before.
        from: Lifecycle,
        /// After.
        to: Lifecycle,
    },
    /// A machine's tags were replaced.
    TagsSet {
        /// The machine.
        machine: MachineId,
        /// The new tags.
        tags: Vec<Tag>,
        /// Who declared them.
        source: TagSource,
    },
    /// An agent reported.
    ReportReceived {
        /// The machine.
        machine: MachineId,
        /// What it runs (None when it runs no store path yet).
        generation: Option<StorePath>,
        /// Whether its last action succeeded.
        success: bool,
        /// What happened.
        message: String,
        /// Agent version.
        agent_version: String,
        /// Agent uptime.
        uptime_secs: u64,
        /// The agent applies nothing.
        dry_run: bool,
        /// It applied this path, the path failed, and it switched back.
        rolled_back_from: Option<StorePath>,
    },
    /// An agent sent health check results.
    HealthReported {
        /// The machine.
        machine: MachineId,
        /// What it ran when it checked.
        generation: Option<StorePath>,
        /// The results.
        results: Vec<CheckResult>,
        /// True when every check passed.
        all_passed: bool,
    },
    /// The generation a machine should run was set.
    DesiredGenerationSet {
        /// The machine.
        machine: MachineId,
        /// The system store path.
        path: StorePath,
        /// Where to fetch it.
        cache_url: Option<String>,
        /// Why.
        cause: DesiredCause,
    },
    /// A machine no longer has a desired generation.
    DesiredGenerationCleared {
        /// The machine.
        machine: MachineId,
        /// Why.
        cause: DesiredCause,
    },
    /// A release was recorded.
    ReleaseCreated {
        /// `rel-…`.
        release: ReleaseId,
        /// The flake.
        flake_ref: Option<String>,
        /// Its revision.
        flake_rev: Option<String>,
        /// Where its closures are.
        cache_url: Option<String>,
        /// One per host.
        entries: Vec<ReleaseEntry>,
    },
    /// A release was deleted.
    ReleaseDeleted {
        /// The release.
        release: ReleaseId,
    },
    /// A rollout was created with this plan.
    RolloutCreated {
        /// `r-…`.
        rollout: RolloutId,
        /// The validated plan.
        plan: RolloutPlan,
    },
    /// A batch started: its machines were asked to move.
    BatchStarted {
        /// The rollout.
        rollout: RolloutId,
        /// The batch.
        batch_index: u32,
        /// 1 for the first start, 2 after the first resume, …
        attempt: u32,
        /// Each machine's generation before the rollout touched it, as last reported (None: never reported).
        previous: Vec<(MachineId, Option<StorePath>)>,
    },
    /// A batch passed its gate.
    BatchSucceeded {
        /// The rollout.
        rollout: RolloutId,
        /// The batch.
        batch_index: u32,
        /// Healthy machines.
        healthy: u32,
        /// Unhealthy machines.
        unhealthy: u32,
        /// Tolerated unhealthy machines.
        threshold: u32,
    },
    /// A batch failed its gate.
    BatchFailed {
        /// The rollout.
        rollout: RolloutId,
        /// The batch.
        batch_index: u32,
        /// Healthy machines.
        healthy: u32,
        /// Unhealthy machines (silent machines included after a timeout).
        unhealthy: u32,
        /// Tolerated unhealthy machines.
        threshold: u32,
        /// Failure reports or timeout.
        reason: BatchFailReason,
    },
    /// A rollout stopped for an operator.
    RolloutPaused {
        /// The rollout.
        rollout: RolloutId,
        /// Why.
        reason: String,
    },
    /// An operator resumed a paused rollout.
    RolloutResumed {
        /// The rollout.
        rollout: RolloutId,
    },
    /// An operator cancelled a rollout.
    RolloutCancelled {
        /// The rollout.
        rollout: RolloutId,
    },
    /// Every batch succeeded.
    RolloutCompleted {
        /// The rollout.
        rollout: RolloutId,
    },
    /// A batch failed and the rollout stopped for good.
    RolloutFailed {
        /// The rollout.
        rollout: RolloutId,
        /// Why.
        reason: String,
    },
    /// The machines of a failed rollout were sent back to their pre-rollout generations.
    RolloutReverted {
        /// The rollout.
        rollout: RolloutId,
        /// Each machine and the generation it was sent back to (None: desired cleared).
        restored: Vec<(MachineId, Option<StorePath>)>,
    },
    /// A finished rollout was deleted from the projections (its events stay in the log).
    RolloutDeleted {
        /// The rollout.
        rollout: RolloutId,
    },
    /// A machine failed this path: it is not asked to apply it again.
    MachineQuarantined {
        /// The machine.
        machine: MachineId,
        /// The failed path.
        path: StorePath,
        /// Why.
        reason: String,
    },
    /// An operator (or a resume) allowed a quarantined path again.
    QuarantineCleared {
        /// The machine.
        machine: MachineId,
        /// The path.
        path: StorePath,
    },
    /// An API key was created; only its SHA-256 is kept.
    ApiKeyCreated {
        /// Unique name.
        name: KeyName,
        /// Its role.
        role: Role,
        /// SHA-256 of the secret.
        hash: [u8; 32],
    },
    /// An API key was revoked; it fails at once.
    ApiKeyRevoked {
        /// The key.
        name: KeyName,
    },
    /// The first admin key was handed out; bootstrap is closed for good.
    BootstrapDone {
        /// The key's name.
        name: KeyName,
    },
    /// When the checks of the machine's next [`Event::HealthReported`] (appended right after this,
    /// in the same group) were measured, by the control plane's clock. Reports without it (old
    /// logs, agents that send no time) are judged as measured when appended.
    HealthMeasured {
        /// The machine.
        machine: MachineId,
        /// When its oldest result was measured, never later than the report's append time.
        measured_at: crate::ids::Timestamp,
    },
    /// A rollout's options beyond its plan; appended in the same group right after its
    /// `RolloutCreated` when they differ from the defaults (absent: switch, failed units fail).
    RolloutOptionsSet {
        /// The rollout.
        rollout: RolloutId,
        /// How agents activate the release.
        activation: Activation,
        /// Failed units (exit status 4) do not make a machine unhealthy.
        allow_failed_units: bool,
    },
    /// An agent said what its `switch-to-configuration` did for a path.
    SwitchReported {
        /// The machine.
        machine: MachineId,
        /// The generation it switched to.
        path: StorePath,
        /// switch, boot or test.
        activation: Activation,
        /// What happened.
        outcome: SwitchOutcome,
        /// The exit status, when the agent could read one.
        exit_code: Option<i32>,
        /// How many units failed, when the switch's output said.
        failed_units: Option<u32>,
    },
    /// The parts of the booted system that differ from the running generation's changed
    /// (`kernel`, `initrd`, `systemd`; empty: no reboot needed).
    RebootNeededSet {
        /// The machine.
        machine: MachineId,
        /// The differing parts.
        components: Vec<String>,
    },
}

impl Event {
    /// The variant's name, as shown in the events API and the replay tool.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MachineRegistered { .. } => "MachineRegistered",
            Event::LifecycleChanged { .. } => "LifecycleChanged",
            Event::TagsSet { .. } => "TagsSet",
            Event::ReportReceived { .. } => "ReportReceived",
            Event::HealthReported { .. } => "HealthReported",
            Event::DesiredGenerationSet { .. } => "DesiredGenerationSet",
            Event::DesiredGenerationCleared { .. } => "DesiredGenerationCleared",
            Event::ReleaseCreated { .. } => "ReleaseCreated",
            Event::ReleaseDeleted { .. } => "ReleaseDeleted",
            Event::RolloutCreated { .. } => "RolloutCreated",
            Event::BatchStarted { .. } => "BatchStarted",
            Event::BatchSucceeded { .. } => "BatchSucceeded",
            Event::BatchFailed { .. } => "BatchFailed",
            Event::RolloutPaused { .. } => "RolloutPaused",
            Event::RolloutResumed { .. } => "RolloutResumed",
            Event::RolloutCancelled { .. } => "RolloutCancelled",
            Event::RolloutCompleted { .. } => "RolloutCompleted",
            Event::RolloutFailed { .. } => "RolloutFailed",
            Event::RolloutReverted { .. } => "RolloutReverted",
            Event::RolloutDeleted { .. } => "RolloutDeleted",
            Event::MachineQuarantined { .. } => "MachineQuarantined",
            Event::QuarantineCleared { .. } => "QuarantineCleared",
            Event::ApiKeyCreated { .. } => "ApiKeyCreated",
            Event::ApiKeyRevoked { .. } => "ApiKeyRevoked",
            Event::BootstrapDone { .. } => "BootstrapDone",
            Event::HealthMeasured { .. } => "HealthMeasured",
            Event::RolloutOptionsSet { .. } => "RolloutOptionsSet",
            Event::SwitchReported { .. } => "SwitchReported",
            Event::RebootNeededSet { .. } => "RebootNeededSet",
        }
    }

    /// Every kind name, in declaration order (fixtures must cover them all).
    pub const KINDS: &'static [&'static str] = &[
        "MachineRegistered",
        "LifecycleChanged",
        "TagsSet",
        "ReportReceived",
        "HealthReported",
        "DesiredGenerationSet",
        "DesiredGenerationCleared",
        "ReleaseCreated",
        "ReleaseDeleted",
        "RolloutCreated",
        "BatchStarted",
        "BatchSucceeded",
        "BatchFailed",
        "RolloutPaused",
        "RolloutResumed",
        "RolloutCancelled",
        "RolloutCompleted",
        "RolloutFailed",
        "RolloutReverted",
        "RolloutDeleted",
        "MachineQuarantined",
        "QuarantineCleared",
        "ApiKeyCreated",
        "ApiKeyRevoked",
        "BootstrapDone",
        "HealthMeasured",
        "RolloutOptionsSet",
        "SwitchReported",
        "RebootNeededSet",
    ];

    /// The stream the event belongs to: `machine:ID`, `rollout:ID`, `release:ID`, `key:NAME`.
    pub fn stream(&self) -> String {
        match self {
            Event::MachineRegistered { machine, .. }
            | Event::LifecycleChanged { machine, .. }
            | Event::TagsSet { machine, .. }
            | Event::ReportReceived { machine, .. }
            | Event::HealthReported { machine, .. }
            | Event::DesiredGenerationSet { machine, .. }
            | Event::DesiredGenerationCleared { machine, .. }
            | Event::MachineQuarantined { machine, .. }
            | Event::QuarantineCleared { machine, .. }
            | Event::HealthMeasured { machine, .. }
            | Event::SwitchReported { machine, .. }
            | Event::RebootNeededSet { machine, .. } => format!("machine:{machine}"),
            Event::ReleaseCreated { release, .. } | Event::ReleaseDeleted { release } => {
                format!("release:{release}")
            }
            Event::RolloutCreated { rollout, .. }
            | Event::BatchStarted { rollout, .. }
            | Event::BatchSucceeded { rollout, .. }
            | Event::BatchFailed { rollout, .. }
            | Event::RolloutPaused { rollout, .. }
            | Event::RolloutResumed { rollout }
            | Event::RolloutCancelled { rollout }
            | Event::RolloutCompleted { rollout }
            | Event::RolloutFailed { rollout, .. }
            | Event::RolloutReverted { rollout, .. }
            | Event::RolloutDeleted { rollout }
            | Event::RolloutOptionsSet { rollout, .. } => format!("rollout:{rollout}"),
            Event::ApiKeyCreated { name, .. }
            | Event::ApiKeyRevoked { name }
            | Event::BootstrapDone { name } => {
                format!("key:{name}")
            }
        }
    }
}

/// An event with its place in the log. Built by the log; reducers read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Position in the log.
    pub seq: crate::ids::Seq,
    /// When it was appended (stamped once by the front end).
    pub at: crate::ids::Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// What happened.
    pub event: Event,
}
