//! One deploy cycle: compare, fetch, apply, verify, roll back; and the report that says what happened.
//!
//! [`Agent::handle_desired`] takes the control plane's answer (a desired generation or none) and
//! returns the report to send. It knows nothing about HTTP, so tests drive the whole pipeline with a
//! `DesiredGeneration` value against a real Nix store.
//!
//! Decisions that differ from v0.1 (facts file §9):
//! - The generation to roll back to is the one running *before* this deploy (read from the
//!   current-system link), not the second-newest profile generation (defect 13).
//! - A path that failed is quarantined locally and not applied again (defect 1; see `quarantine`).
//! - Health results of the post-switch verification travel with the "deployed" report, and every
//!   "up-to-date" report carries the latest results, so the rollout gate need not wait (defect 7).
//! - What `switch-to-configuration` did travels with the report that follows it (`switch`: switched,
//!   failed_units, switched_with_errors, pending_reboot, not_switched), so the rollout gate judges a
//!   switch whose units failed (exit status 4) even when the health checks pass (issue 18). A switch
//!   that activated is verified, never rolled back for its exit status alone: the gate decides.
//! - The activation comes with the desired generation (`activation`: switch, boot or test). `boot`
//!   sets the profile and boot entry and reports "pending reboot" (on every report until the machine
//!   runs it); `test` activates without touching the profile.
//! - Every report says which booted parts (kernel, initrd, systemd) differ from the running
//!   generation's (`reboot_needed`).

use crate::health::HealthRunner;
use crate::inflight::{InFlight, Journal, ATTEMPTS_MAX};
use crate::nix::{self, FetchError, Fetched};
use crate::quarantine::{Quarantine, Verdict};
use crate::switch::{self, Activation, Outcome as SwitchOutcome, Switched, Switcher};
use crate::telemetry::{set_state, State};
use nixfleet_ids::StorePath;
use nixfleet_proto::api::v1::{
    DesiredGeneration, HealthCheckResult, HealthReport, Report, SwitchReport,
};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// What the agent needs to run cycles (a subset of `Config`, so tests can build one directly).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This machine.
    pub machine_id: String,
    /// Declared tags, sent as they are.
    pub tags: Vec<String>,
    /// Never apply.
    pub dry_run: bool,
    /// Cache used when the control plane names none.
    pub cache_url: Option<String>,
    /// The system profile.
    pub profile: PathBuf,
    /// How to switch (and which link names the running system).
    pub switcher: Switcher,
    /// The lock a running `switch-to-configuration` holds ([`switch::SWITCH_LOCK`]).
    pub switch_lock: PathBuf,
    /// How long failing checks are retried after a switch before it counts as failed ([`VERIFY_WINDOW`]).
    pub verify_window: Duration,
    /// Directory of the agent's GC roots (`<state-dir>/gcroots`): `desired` (the last fetched
    /// closure) and `previous` (the generation a rollback returns to).
    pub gc_roots: PathBuf,
}

/// How long the agent keeps re-running failing health checks after a switch before it rolls back.
/// Services restarted by the switch may need a moment (an HTTP server binding its port); a check
/// that fails in that moment must not roll back a good generation. A bad one rolls back after this.
pub const VERIFY_WINDOW: Duration = Duration::from_secs(15);

/// Longest report message (bytes). The control plane refuses messages over 4096 bytes (v0.1: 400),
/// and a refused report would hide the very failure it describes.
pub const REPORT_MESSAGE_MAX_BYTES: usize = 4000;

/// Pause between verification runs within [`VERIFY_WINDOW`].
const VERIFY_RETRY: Duration = Duration::from_secs(2);

/// The result of a cycle.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The report to send.
    pub report: Report,
    /// False when the cycle should be retried soon (fetch or profile failure); true otherwise,
    /// including after a rollback, which must not be retried.
    pub ok: bool,
    /// What happened, for logs and tests.
    pub action: Action,
}

/// What a cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No desired generation.
    NothingDesired,
    /// Already running the desired generation.
    UpToDate,
    /// The desired generation is quarantined.
    Quarantined,
    /// The desired value is not an acceptable store path.
    Invalid,
    /// Fetching failed.
    FetchFailed,
    /// Dry run: fetched, not applied.
    DryRun,
    /// Not a system closure: refused and quarantined.
    Refused,
    /// Another switch is running; nothing done, retried soon.
    Deferred,
    /// The profile could not be set; nothing was switched.
    ProfileFailed,
    /// Applied and healthy.
    Deployed,
    /// Boot activation: profile and boot entry point at the desired generation; it runs after a
    /// reboot.
    PendingReboot,
    /// Applied, failed, and switched back to the previous generation.
    RolledBack,
    /// Applied, failed, and switching back failed too (or there was nothing to switch back to).
    RollbackFailed,
}

/// The agent's cycle state: settings, the local quarantine and the health checks.
#[derive(Debug)]
pub struct Agent {
    settings: Settings,
    quarantine: Quarantine,
    journal: Journal,
    health: HealthRunner,
    started: Instant,
}

impl Agent {
    /// An agent with these parts.
    pub fn new(
        settings: Settings,
        quarantine: Quarantine,
        journal: Journal,
        health: HealthRunner,
    ) -> Self {
        Agent {
            settings,
            quarantine,
            journal,
            health,
            started: Instant::now(),
        }
    }

    /// The local quarantine.
    pub fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    /// When the next health check is due.
    pub fn next_health_due(&self, now: Instant) -> Instant {
        self.health.next_due(now)
    }

    /// Runs the due health checks and builds the periodic "health-check" report.
    pub fn health_report(&mut self) -> Report {
        let health = self.health.run_due(Instant::now(), false);
        log_failed_checks(&health);
        self.report(health.all_passed, "health-check", Some(health))
    }

    /// Runs one cycle for the control plane's answer.
    pub fn handle_desired(&mut self, desired: Option<&DesiredGeneration>) -> Outcome {
        if let Some(record) = self.journal.load() {
            if let Some(outcome) = self.resume(record, desired) {
                return outcome;
            }
        }
        let Some(desired) = desired else {
            tracing::info!("No desired generation set yet (CP returned 404); steady-state poll");
            self.quarantine.observe_none();
            let health = self.latest_health();
            return self.outcome(
                true,
                "no desired generation",
                Some(health),
                true,
                Action::NothingDesired,
            );
        };
        let path = match StorePath::try_from(desired.hash.as_str()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "Refusing the desired generation");
                return self.outcome(
                    false,
                    &format!("invalid desired generation: {e}"),
                    None,
                    false,
                    Action::Invalid,
                );
            }
        };
        let activation = match Activation::parse(desired.activation.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "Refusing the desired generation");
                let health = self.latest_health();
                return self.outcome(false, &e, Some(health), true, Action::Invalid);
            }
        };
        let verdict = self.quarantine.observe(desired);
        let current = switch::read_current(&self.settings.switcher.current_system);
        let boot_set = activation == Activation::Boot && self.profile_points_at(&path);
        if current.as_ref() == Some(&path) && (activation != Activation::Boot || boot_set) {
            // Running it already (even if quarantined: someone switched by hand): nothing to apply.
            tracing::info!(path = %path, "Already at desired generation");
            let health = self.latest_health();
            return self.outcome(true, "up-to-date", Some(health), true, Action::UpToDate);
        }
        if boot_set {
            tracing::info!(path = %path, "Desired generation is the boot generation; pending reboot");
            let set_before = Switched {
                outcome: SwitchOutcome::PendingReboot,
                exit_code: None,
                failed_units: None,
            };
            return self.pending_reboot(&path, activation, &set_before);
        }
        if let Verdict::Skip(why) = verdict {
            tracing::warn!(path = %path, reason = %why, "Not applying a quarantined generation");
            let health = self.latest_health();
            return self.outcome(false, &why, Some(health), true, Action::Quarantined);
        }
        tracing::info!(desired = %path, current = current.as_ref().map(StorePath::as_str).unwrap_or(""),
            "Generation mismatch, fetching");

        set_state(State::Fetching);
        let cache = desired
            .cache_url
            .as_deref()
            .filter(|c| !c.is_empty())
            .or(self.settings.cache_url.as_deref());
        match nix::fetch(&path, cache) {
            Ok(how) => {
                tracing::info!(path = %path, source = fetched_label(&how), "Closure present");
                self.root("desired", &path);
            }
            Err(e) => {
                tracing::error!(path = %path, error = %e, "Failed to fetch closure");
                let message = match &e {
                    FetchError::NotFoundNoCache(_) => e.to_string(),
                    _ => format!("fetch failed: {e}"),
                };
                return self.outcome(false, &message, None, false, Action::FetchFailed);
            }
        }

        if self.settings.dry_run {
            tracing::info!(path = %path, "Dry run - skipping apply");
            let mut out = self.outcome(true, "dry-run: would apply", None, true, Action::DryRun);
            out.report.dry_run = true;
            return out;
        }
        self.apply(path, current, activation)
    }

    /// The report of `path` set to boot but not running: a success with the latest health
    /// (of the generation still running) and the switch report of `switched`.
    fn pending_reboot(
        &mut self,
        path: &StorePath,
        activation: Activation,
        switched: &Switched,
    ) -> Outcome {
        let health = self.latest_health();
        let mut out = self.outcome(
            true,
            &format!("pending reboot: {path} is set to boot"),
            Some(health),
            true,
            Action::PendingReboot,
        );
        out.report.switch = Some(switch_report(path, activation, Some(switched)));
        out
    }

    /// Whether the system profile points at `path` (the boot entry follows the profile).
    fn profile_points_at(&self, path: &StorePath) -> bool {
        std::fs::canonicalize(&self.settings.profile).is_ok_and(|p| p == path.as_path())
    }

    fn apply(
        &mut self,
        path: StorePath,
        previous: Option<StorePath>,
        activation: Activation,
    ) -> Outcome {
        set_state(State::Applying);
        if let Err(e) = switch::check_closure(&path) {
            tracing::error!(error = %e, "Refusing to apply");
            let reason = e.to_string();
            self.quarantine.add(path.as_str(), &reason);
            let health = self.latest_health();
            return self.outcome(
                false,
                &format!("refused: {reason}"),
                Some(health),
                true,
                Action::Refused,
            );
        }
        if switch::switch_in_progress(&self.settings.switch_lock) {
            tracing::info!(path = %path, lock = %self.settings.switch_lock.display(),
                "System switch already in progress, deferring to next poll");
            let health = self.latest_health();
            let message = "deferred: another system switch is in progress";
            return self.outcome(true, message, Some(health), false, Action::Deferred);
        }
        tracing::info!(path = %path, previous = previous.as_ref().map(StorePath::as_str).unwrap_or(""),
            "Applying; recorded the running generation to return to on failure");
        if let Some(previous) = &previous {
            self.root("previous", previous);
        }
        let attempts = self
            .journal
            .load()
            .filter(|r| r.target == path.as_str())
            .map_or(0, |r| r.attempts)
            + 1;
        let record = InFlight {
            target: path.to_string(),
            previous: previous.as_ref().map(StorePath::to_string),
            attempts,
            at: crate::rfc3339(SystemTime::now()),
        };
        if let Err(e) = self.journal.start(&record) {
            tracing::warn!(error = %e, "Cannot write the deploy record; an interrupted deploy will not be resumed");
        }
        let profile = if activation.sets_profile() {
            nix::set_profile(&self.settings.profile, &path)
        } else {
            Ok(())
        };
        if let Err(e) = profile {
            tracing::error!(error = %e, "Cannot set the system profile");
            self.journal.clear();
            return self.outcome(
                false,
                &format!("apply failed: {e}"),
                None,
                false,
                Action::ProfileFailed,
            );
        }
        let outcome = match self.settings.switcher.activate(&path, activation) {
            Ok(s) if s.outcome == SwitchOutcome::PendingReboot => {
                // Nothing of the new generation runs yet, so there is nothing to verify.
                tracing::info!(path = %path, "Boot entry set; pending reboot");
                self.pending_reboot(&path, activation, &s)
            }
            Ok(s) => self.verify(&path, previous, activation, Some(s)),
            Err(e) => self.roll_back(
                &path,
                previous,
                activation,
                &format!("switch failed: {e}"),
                switch_report(&path, activation, None),
            ),
        };
        self.journal.clear();
        outcome
    }

    /// Runs every health check on the freshly switched system; healthy → "deployed", else roll back.
    /// `switched` is what the switch's exit status said (None: unknown, a resumed deploy); failed
    /// units do not roll back by themselves, they travel with the report for the gate to judge.
    fn verify(
        &mut self,
        path: &StorePath,
        previous: Option<StorePath>,
        activation: Activation,
        switched: Option<Switched>,
    ) -> Outcome {
        set_state(State::Verifying);
        let deadline = Instant::now() + self.settings.verify_window;
        let mut health = self.health.run_due(Instant::now(), true);
        while !health.all_passed && Instant::now() < deadline {
            tracing::info!(path = %path, failing = %failed_summary(&health),
                "Health checks not passing yet after the switch; retrying");
            std::thread::sleep(
                VERIFY_RETRY.min(deadline.saturating_duration_since(Instant::now())),
            );
            health = self.health.run_due(Instant::now(), true);
        }
        let switch = switched
            .as_ref()
            .map(|s| switch_report(path, activation, Some(s)));
        if health.all_passed {
            tracing::info!(path = %path, checks = health.results.len(), "Deployed; health checks passed");
            let message = match &switched {
                Some(s) if s.outcome != SwitchOutcome::Switched => {
                    format!("deployed; {}", s.describe())
                }
                _ => "deployed".to_owned(),
            };
            let mut out = self.outcome(true, &message, Some(health), true, Action::Deployed);
            out.report.switch = switch;
            return out;
        }
        log_failed_checks(&health);
        tracing::warn!(path = %path, "Health checks failed after apply");
        let mut reason = format!("health checks failed: {}", failed_summary(&health));
        if let Some(s) = switched
            .as_ref()
            .filter(|s| s.outcome != SwitchOutcome::Switched)
        {
            reason = format!("{}; {reason}", s.describe());
        }
        let switch = switch.unwrap_or_else(|| switch_report(path, activation, None));
        self.roll_back(path, previous, activation, &reason, switch)
    }

    /// Finishes a deploy a previous agent process left behind (see `inflight`). `None`: nothing to
    /// finish, go on with the normal cycle.
    fn resume(&mut self, record: InFlight, desired: Option<&DesiredGeneration>) -> Option<Outcome> {
        let Ok(target) = StorePath::try_from(record.target.as_str()) else {
            self.journal.clear();
            return None;
        };
        let previous = record
            .previous
            .as_deref()
            .and_then(|p| StorePath::try_from(p).ok());
        let current = switch::read_current(&self.settings.switcher.current_system);
        if current.as_ref() == Some(&target) {
            tracing::warn!(path = %target, attempts = record.attempts,
                "Resuming a deploy interrupted after the switch; verifying it now");
            // The activation is not journaled; a deploy interrupted after its link flipped was a
            // switch or a test, and is verified (and rolled back) as a switch.
            let outcome = self.verify(&target, previous, Activation::Switch, None);
            self.journal.clear();
            return Some(outcome);
        }
        if record.attempts >= ATTEMPTS_MAX {
            let reason = format!(
                "its deploy was interrupted {} times before the switch completed",
                record.attempts
            );
            tracing::error!(path = %target, reason, "Quarantining");
            self.quarantine.add(target.as_str(), &reason);
            self.journal.clear();
        } else if desired.is_none_or(|d| d.hash != record.target) {
            self.journal.clear();
        } else {
            tracing::warn!(path = %target, attempts = record.attempts,
                "A deploy was interrupted before the switch completed; trying again");
        }
        None
    }

    fn roll_back(
        &mut self,
        failed: &StorePath,
        previous: Option<StorePath>,
        activation: Activation,
        reason: &str,
        switch: SwitchReport,
    ) -> Outcome {
        set_state(State::RollingBack);
        self.quarantine.add(failed.as_str(), reason);
        let Some(previous) = previous else {
            tracing::error!(path = %failed, reason, "Apply failed and no previous generation was recorded; not rolling back");
            let health = self.latest_health();
            let message = format!(
                "apply failed: {reason}; no previous generation recorded, nothing to roll back to"
            );
            let mut out = self.outcome(false, &message, Some(health), true, Action::RollbackFailed);
            out.report.switch = Some(switch);
            return out;
        };
        tracing::warn!(from = %failed, to = %previous, reason, "Rolling back to the pre-deploy generation");
        // Back the same way: the profile only where it was set, and a boot entry for boot.
        let profile = if activation.sets_profile() {
            nix::set_profile(&self.settings.profile, &previous)
        } else {
            Ok(())
        };
        let result = profile.and_then(|()| {
            self.settings
                .switcher
                .activate(&previous, activation)
                .map(|_| ())
        });
        let health = self.health.run_due(Instant::now(), true);
        let mut out = match result {
            Ok(()) => {
                tracing::info!(to = %previous, "Rolled back");
                let mut out = self.outcome(
                    false,
                    &format!("rolled back: {reason}"),
                    Some(health),
                    true,
                    Action::RolledBack,
                );
                out.report.rolled_back_from = Some(failed.to_string());
                out
            }
            Err(e) => {
                tracing::error!(to = %previous, error = %e, "Rollback failed");
                let message = format!("rollback failed: {e} (after: {reason})");
                self.outcome(false, &message, Some(health), true, Action::RollbackFailed)
            }
        };
        out.report.switch = Some(switch);
        out
    }

    /// Keeps `path` alive across garbage collections; a failure is only a warning.
    fn root(&self, name: &str, path: &StorePath) {
        if let Err(e) = nix::add_root(&self.settings.gc_roots.join(name), path) {
            tracing::warn!(path = %path, error = %e, "Cannot add a GC root");
        }
    }

    /// The checks' latest results (running those that are due), for a poll's report. A failing
    /// check is logged here too, as by the periodic report: an operator reading the journal sees
    /// why the machine counts as unhealthy whichever report carried it.
    fn latest_health(&mut self) -> HealthReport {
        let health = self.health.run_due(Instant::now(), false);
        log_failed_checks(&health);
        health
    }

    fn outcome(
        &self,
        success: bool,
        message: &str,
        health: Option<HealthReport>,
        ok: bool,
        action: Action,
    ) -> Outcome {
        Outcome {
            report: self.report(success, message, health),
            ok,
            action,
        }
    }

    /// A report about the running system.
    pub fn report(&self, success: bool, message: &str, health: Option<HealthReport>) -> Report {
        let current = switch::read_current(&self.settings.switcher.current_system);
        Report {
            machine_id: self.settings.machine_id.clone(),
            current_generation: current.map(|p| p.to_string()).unwrap_or_default(),
            success,
            message: crate::truncate(message, REPORT_MESSAGE_MAX_BYTES),
            timestamp: crate::rfc3339(SystemTime::now()),
            tags: self.settings.tags.clone(),
            health,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            rolled_back_from: None,
            dry_run: self.settings.dry_run,
            switch: None,
            reboot_needed: self.reboot_needed(),
        }
    }

    /// Booted parts that differ from the running generation's; the booted-system link is the
    /// current-system link's sibling (`/run/booted-system`).
    fn reboot_needed(&self) -> Vec<String> {
        let current = &self.settings.switcher.current_system;
        switch::reboot_needed(&current.with_file_name("booted-system"), current)
    }
}

/// The report's `switch` object: what switching to `path` did (`None`: it did not activate).
fn switch_report(path: &StorePath, activation: Activation, s: Option<&Switched>) -> SwitchReport {
    SwitchReport {
        path: path.to_string(),
        activation: activation.as_str().to_owned(),
        outcome: s.map_or("not_switched", |s| s.outcome.as_str()).to_owned(),
        exit_code: s.and_then(|s| s.exit_code),
        failed_units: s.and_then(|s| s.failed_units),
    }
}

fn fetched_label(f: &Fetched) -> &'static str {
    match f {
        Fetched::AlreadyPresent => "local store",
        Fetched::FromCache => "cache",
        Fetched::FromSubstituters => "substituters",
    }
}

fn failed_summary(h: &HealthReport) -> String {
    h.results
        .iter()
        .filter_map(|r| match r {
            HealthCheckResult::Fail {
                check_name,
                message,
                ..
            } => Some(format!("{check_name}: {message}")),
            HealthCheckResult::Pass { .. } => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn log_failed_checks(h: &HealthReport) {
    for r in &h.results {
        if let HealthCheckResult::Fail {
            check_name,
            message,
            ..
        } = r
        {
            tracing::warn!(check = %check_name, message = %message, "Health check failed");
        }
    }
}
