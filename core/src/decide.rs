//! Decisions: a command and the current state go in, events or a rejection come out.
//!
//! `decide` is pure: no IO, no clock (time arrives as `now`), no randomness (ids and seeds
//! arrive inside the command). The HTTP front end only parses, authenticates, calls this,
//! appends what it returns and answers.

use crate::event::*;
use crate::ids::*;
use crate::plan::RolloutSpec;
use crate::state::State;

mod keys;
mod machines;
mod releases;
mod reports;
mod rollouts;

pub use crate::rejection::Rejection;

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

/// Decides what `cmd` does to `state`. Pure. One function a command, grouped by what it is about:
/// `keys`, `machines`, `reports`, `releases`, `rollouts`.
pub fn decide(state: &State, cmd: &Command, now: Timestamp) -> Result<Vec<Event>, Rejection> {
    match cmd {
        Command::Bootstrap { name, hash } => keys::bootstrap(state, name, hash),
        Command::CreateKey { name, role, hash } => keys::create_key(state, name, *role, hash),
        Command::RevokeKey { name } => keys::revoke_key(state, name),
        Command::Register {
            machine,
            lifecycle,
            tags,
        } => machines::register(state, machine, *lifecycle, tags),
        Command::SetLifecycle { machine, to } => machines::set_lifecycle(state, machine, *to),
        Command::Report {
            machine,
            report,
            auto_register,
        } => reports::report(state, machine, report, *auto_register),
        Command::ReportMeasured {
            machine,
            report,
            auto_register,
            health_timestamp,
            report_timestamp,
        } => {
            let measured_at = health_measured_at(now, *health_timestamp, *report_timestamp);
            reports::report_measured(state, machine, report, *auto_register, measured_at)
        }
        Command::ReportActivation {
            report,
            machine,
            switch,
            reboot_needed,
        } => {
            reports::report_activation(state, report, machine, switch.as_ref(), reboot_needed, now)
        }
        Command::NotifyDeploy { machine, path } => machines::notify_deploy(state, machine, path),
        Command::ClearDesired { machine } => machines::clear_desired(state, machine),
        Command::ClearQuarantine { machine } => machines::clear_quarantine(state, machine),
        Command::CreateRelease {
            release,
            flake_ref,
            flake_rev,
            cache_url,
            entries,
        } => releases::create(state, release, flake_ref, flake_rev, cache_url, entries),
        Command::DeleteRelease { release } => releases::delete(state, release),
        Command::CreateRollout {
            rollout,
            spec,
            seed,
        } => rollouts::create(state, rollout, spec, *seed),
        Command::CreateRolloutWithOptions {
            rollout,
            spec,
            seed,
            options,
        } => rollouts::create_with_options(state, rollout, spec, *seed, options),
        Command::ResumeRollout { rollout } => rollouts::resume(state, rollout),
        Command::CancelRollout { rollout } => rollouts::cancel(state, rollout),
        Command::DeleteRollout { rollout } => rollouts::delete(state, rollout),
    }
}

fn machine_or_404<'a>(
    state: &'a State,
    m: &MachineId,
) -> Result<&'a crate::state::Machine, Rejection> {
    found(&state.machines, "machine", m)
}

fn rollout_or_404<'a>(
    state: &'a State,
    r: &RolloutId,
) -> Result<&'a crate::state::Rollout, Rejection> {
    found(&state.rollouts, "rollout", r)
}

/// The row of `key` in `table`, or "{what} {key} not found" (404).
fn found<'a, K: Ord + std::fmt::Display, V>(
    table: &'a std::collections::BTreeMap<K, V>,
    what: &str,
    key: &K,
) -> Result<&'a V, Rejection> {
    table
        .get(key)
        .ok_or_else(|| Rejection::NotFound(format!("{what} {key} not found")))
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
    crate::state::sorted_tags(tags)
}
