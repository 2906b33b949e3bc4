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

use crate::health::HealthRunner;
use crate::inflight::{InFlight, Journal, ATTEMPTS_MAX};
use crate::nix::{self, FetchError, Fetched};
use crate::quarantine::{Quarantine, Verdict};
use crate::store_path::StorePath;
use crate::switch::{self, Switcher};
use crate::telemetry::{set_state, State};
use nixfleet_proto::api::v1::{DesiredGeneration, HealthCheckResult, HealthReport, Report};
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
        let verdict = self.quarantine.observe(desired);
        let current = switch::read_current(&self.settings.switcher.current_system);
        if current.as_ref() == Some(&path) {
            // Running it already (even if quarantined: someone switched by hand): nothing to apply.
            tracing::info!(path = %path, "Already at desired generation");
            let health = self.latest_health();
            return self.outcome(true, "up-to-date", Some(health), true, Action::UpToDate);
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
        self.apply(path, current)
    }

    fn apply(&mut self, path: StorePath, previous: Option<StorePath>) -> Outcome {
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
        if let Err(e) = nix::set_profile(&self.settings.profile, &path) {
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
        let outcome = match self.settings.switcher.switch_to(&path) {
            Ok(()) => self.verify(&path, previous),
            Err(e) => self.roll_back(&path, previous, &format!("switch failed: {e}")),
        };
        self.journal.clear();
        outcome
    }

    /// Runs every health check on the freshly switched system; healthy → "deployed", else roll back.
    fn verify(&mut self, path: &StorePath, previous: Option<StorePath>) -> Outcome {
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
        if health.all_passed {
            tracing::info!(path = %path, checks = health.results.len(), "Deployed; health checks passed");
            return self.outcome(true, "deployed", Some(health), true, Action::Deployed);
        }
        log_failed_checks(&health);
        tracing::warn!(path = %path, "Health checks failed after apply");
        let reason = format!("health checks failed: {}", failed_summary(&health));
        self.roll_back(path, previous, &reason)
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
            let outcome = self.verify(&target, previous);
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
        reason: &str,
    ) -> Outcome {
        set_state(State::RollingBack);
        self.quarantine.add(failed.as_str(), reason);
        let Some(previous) = previous else {
            tracing::error!(path = %failed, reason, "Apply failed and no previous generation was recorded; not rolling back");
            let health = self.latest_health();
            let message = format!(
                "apply failed: {reason}; no previous generation recorded, nothing to roll back to"
            );
            return self.outcome(false, &message, Some(health), true, Action::RollbackFailed);
        };
        tracing::warn!(from = %failed, to = %previous, reason, "Rolling back to the pre-deploy generation");
        let result = nix::set_profile(&self.settings.profile, &previous)
            .and_then(|()| self.settings.switcher.switch_to(&previous));
        let health = self.health.run_due(Instant::now(), true);
        match result {
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
        }
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
        }
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
