//! Switching the running system to a closure, and reading what the switch did.
//!
//! `switch-to-configuration switch` restarts services, possibly the agent itself, so on a systemd host
//! it runs detached in a transient unit (`systemd-run --unit=nixfleet-switch-<n> --collect --wait`),
//! where the agent's own restart cannot kill it; `--wait` returns once the unit ended, with the
//! unit's exit status, and prints it (`Main processes terminated with: code=exited/status=N`).
//! Each switch gets a fresh unit name, so a stale unit from an earlier switch can never block the
//! next one (a v0.1 defect, ADR-011).
//!
//! The exit status is evidence (issue 18): NixOS's `switch-to-configuration` exits 4 when units
//! failed to start, and another non-zero status when the activation failed in another way. So a
//! switch ends in one of: switched (0), switched with failed units (4; the count from its
//! `the following units failed:` line when the agent can read it), switched with errors (another
//! status after the current-system link flipped), pending reboot (`boot` activation), or not
//! switched (the link did not flip: the caller rolls back).

use crate::exec;
use nixfleet_ids::StorePath;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Deadline of the `journalctl` query for a finished switch unit's failed units.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// NixOS's `switch-to-configuration` exit status when some units failed to start.
pub const EXIT_FAILED_UNITS: i32 = 4;

/// The line `switch-to-configuration` (both the Perl and the Rust one) prints before the names of
/// the units that failed.
const FAILED_UNITS_LINE: &str = "the following units failed:";

/// How the generation is activated: `switch-to-configuration ACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// Profile and boot entry set, activated now.
    #[default]
    Switch,
    /// Profile and boot entry set, activated at the next boot.
    Boot,
    /// Activated now; profile and boot entry unchanged.
    Test,
}

impl Activation {
    /// The action argument and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Switch => "switch",
            Activation::Boot => "boot",
            Activation::Test => "test",
        }
    }

    /// Parses the wire name (`None`: the default, switch).
    pub fn parse(s: Option<&str>) -> Result<Activation, String> {
        match s {
            None | Some("switch") => Ok(Activation::Switch),
            Some("boot") => Ok(Activation::Boot),
            Some("test") => Ok(Activation::Test),
            Some(other) => Err(format!(
                "unknown activation {other:?}; this agent knows switch, boot and test"
            )),
        }
    }

    /// Whether the system profile (and with it the boot entry) is set to the generation.
    pub fn sets_profile(self) -> bool {
        self != Activation::Test
    }
}

/// What a switch that did not fail before activating did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Activated, exit status 0.
    Switched,
    /// Activated, exit status 4: some units failed to start.
    FailedUnits,
    /// Activated, another non-zero exit status (or killed by a signal) after the link flipped.
    SwitchedWithErrors,
    /// `boot`: profile and boot entry set, exit status 0; runs after a reboot.
    PendingReboot,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Switched => "switched",
            Outcome::FailedUnits => "failed_units",
            Outcome::SwitchedWithErrors => "switched_with_errors",
            Outcome::PendingReboot => "pending_reboot",
        }
    }
}

/// A switch's result, when it activated (or, for `boot`, set the boot entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// What happened.
    pub outcome: Outcome,
    /// The exit status of `switch-to-configuration`, if it exited (not killed).
    pub exit_code: Option<i32>,
    /// How many units failed, when its output said.
    pub failed_units: Option<u32>,
}

impl Switched {
    /// A short description for report messages: "switched", "switched, 3 units failed", …
    pub fn describe(&self) -> String {
        match self.outcome {
            Outcome::Switched => "switched".into(),
            Outcome::PendingReboot => "pending reboot".into(),
            Outcome::FailedUnits => format!(
                "switched, {} units failed",
                self.failed_units
                    .map_or_else(|| "some".to_owned(), |n| n.to_string())
            ),
            Outcome::SwitchedWithErrors => match self.exit_code {
                Some(c) => format!("switched with errors (exit status {c})"),
                None => "switched with errors (killed by a signal)".into(),
            },
        }
    }
}

/// Classifies the end of a switch that activated (the link flipped): by exit status, with the
/// failed units counted from `output` (its stdout and stderr, or the unit's journal).
pub fn classify(exit_code: Option<i32>, output: &str) -> Switched {
    let outcome = match exit_code {
        Some(0) => Outcome::Switched,
        Some(EXIT_FAILED_UNITS) => Outcome::FailedUnits,
        _ => Outcome::SwitchedWithErrors,
    };
    Switched {
        outcome,
        exit_code,
        failed_units: (outcome == Outcome::FailedUnits)
            .then(|| count_failed_units(output))
            .flatten(),
    }
}

/// The number of units named on the last `the following units failed: a.service, b.service` line.
pub fn count_failed_units(output: &str) -> Option<u32> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(FAILED_UNITS_LINE))?;
    let names = line.split(FAILED_UNITS_LINE).nth(1)?;
    let n = names.split(',').filter(|u| !u.trim().is_empty()).count();
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// The main process's exit status as `systemd-run --wait` prints it on stderr
/// (`Main processes terminated with: code=exited/status=4`). `Ok(None)`: the process was killed by a
/// signal (`code=killed/status=TERM`). `None`: no such line, so the unit never ran its process and
/// systemd-run's own exit status says why.
pub fn systemd_run_exit_status(stderr: &str) -> Option<Option<i32>> {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.split("Main processes terminated with: ").nth(1))?;
    let mut code = None;
    let mut status = None;
    for part in line.trim().split('/') {
        if let Some(c) = part.strip_prefix("code=") {
            code = Some(c.trim());
        } else if let Some(s) = part.strip_prefix("status=") {
            status = Some(s.trim());
        }
    }
    match code? {
        "exited" => status.and_then(|s| s.parse::<i32>().ok()).map(Some),
        _ => Some(None),
    }
}

/// How the agent starts `switch-to-configuration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchMode {
    /// In a transient systemd unit, detached from the agent.
    SystemdRun,
    /// As the agent's own child, in its own process group (hosts without systemd, tests).
    Direct,
}

impl SwitchMode {
    /// `auto`: systemd-run when systemd is the running init (`/run/systemd/system` exists), else direct.
    pub fn detect() -> SwitchMode {
        if Path::new("/run/systemd/system").is_dir() {
            SwitchMode::SystemdRun
        } else {
            SwitchMode::Direct
        }
    }
}

/// Why a closure cannot be applied at all. The closure never changes, so this is final for that path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is not a system closure: it lacks bin/switch-to-configuration")]
pub struct NotASystem {
    /// The closure.
    pub path: StorePath,
}

/// Checks that `path` looks like a NixOS system before anything is changed.
///
/// `bin/switch-to-configuration` is required: without it nothing can be switched. `init` and
/// `nixos-version` are only warned about: every NixOS toplevel has them, but test systems built
/// without nixpkgs need not, and their absence does not stop a switch from working.
pub fn check_closure(path: &StorePath) -> Result<(), NotASystem> {
    let switch = path.as_path().join("bin/switch-to-configuration");
    if !switch.is_file() {
        return Err(NotASystem { path: path.clone() });
    }
    for essential in ["init", "nixos-version"] {
        if !path.as_path().join(essential).exists() {
            tracing::warn!(path = %path, missing = essential, "System closure lacks an essential file; switching anyway");
        }
    }
    Ok(())
}

/// The lock `switch-to-configuration` holds while it runs (NixOS).
pub const SWITCH_LOCK: &str = "/run/nixos/switch-to-configuration.lock";

/// Whether another `switch-to-configuration` holds `lock` right now (an operator's `nixos-rebuild`,
/// say). Starting a second switch then would fail for a reason that has nothing to do with the new
/// generation, and that failure would roll it back and quarantine it; the agent defers instead.
/// A missing or unopenable lock file means nobody holds it.
pub fn switch_in_progress(lock: &Path) -> bool {
    let Ok(file) = std::fs::File::open(lock) else {
        return false;
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        // We got it, so nobody else had it; closing the file releases it.
        Ok(()) => false,
        Err(e) => e == rustix::io::Errno::WOULDBLOCK,
    }
}

/// Reads where the current-system link points, as a store path when it is one.
///
/// `None` when the link does not exist or does not lead to a valid store path.
pub fn read_current(link: &Path) -> Option<StorePath> {
    let target = std::fs::read_link(link).ok()?;
    if let Some(p) = target.to_str().and_then(|s| StorePath::try_from(s).ok()) {
        return Some(p);
    }
    // An indirect link (for example to a profile): follow it to the end.
    let resolved = std::fs::canonicalize(link).ok()?;
    StorePath::try_from(resolved.to_str()?).ok()
}

/// Starts switches and waits for them to take effect.
#[derive(Debug, Clone)]
pub struct Switcher {
    /// How to start the switch.
    pub mode: SwitchMode,
    /// The current-system link to watch (`/run/current-system`).
    pub current_system: PathBuf,
    /// How long a switch may take before it counts as failed.
    pub timeout: Duration,
}

impl Switcher {
    /// Runs `<path>/bin/switch-to-configuration switch` (see [`Switcher::activate`]).
    pub fn switch_to(&self, path: &StorePath) -> Result<Switched, String> {
        self.activate(path, Activation::Switch)
    }

    /// Runs `<path>/bin/switch-to-configuration ACTION` and waits until it ended. `Ok`: it
    /// activated (switch, test: the current-system link points at `path`) or set the boot entry
    /// (boot, exit status 0), with what its exit status says. `Err`: it did not (one line, ready
    /// for a report); the caller rolls back.
    pub fn activate(&self, path: &StorePath, activation: Activation) -> Result<Switched, String> {
        check_closure(path).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let result = match self.mode {
            SwitchMode::Direct => self.run_direct(path, activation),
            SwitchMode::SystemdRun => self.run_systemd(path, activation),
        }
        .and_then(|(code, output)| self.judge(path, activation, code, &output));
        match &result {
            Ok(s) => {
                tracing::info!(path = %path, action = activation.as_str(), outcome = s.outcome.as_str(),
                exit_code = s.exit_code, failed_units = s.failed_units,
                elapsed_ms = started.elapsed().as_millis() as u64, "Switch complete")
            }
            Err(e) => {
                tracing::warn!(path = %path, action = activation.as_str(), error = %e, "Switch failed")
            }
        }
        result
    }

    fn points_at(&self, path: &StorePath) -> bool {
        read_current(&self.current_system).as_ref() == Some(path)
    }

    /// From the exit status (`None`: killed by a signal) and output of a switch that ran to its end.
    fn judge(
        &self,
        path: &StorePath,
        activation: Activation,
        code: Option<i32>,
        output: &str,
    ) -> Result<Switched, String> {
        let status = code.map_or_else(
            || "killed by a signal".to_owned(),
            |c| format!("exit status: {c}"),
        );
        let last = output.trim().lines().last().unwrap_or("").trim();
        let detail = if last.is_empty() {
            status.clone()
        } else {
            format!("{status}: {last}")
        };
        if activation == Activation::Boot {
            // Nothing is activated, so nothing but the exit status tells whether the boot entry
            // was written.
            return if code == Some(0) {
                Ok(Switched {
                    outcome: Outcome::PendingReboot,
                    exit_code: code,
                    failed_units: None,
                })
            } else {
                Err(format!("switch-to-configuration boot failed: {detail}"))
            };
        }
        if self.points_at(path) {
            let s = classify(code, output);
            if s.outcome != Outcome::Switched {
                tracing::warn!(path = %path, status = %status, outcome = s.outcome.as_str(),
                    "switch-to-configuration reported errors after the system switched");
            }
            return Ok(s);
        }
        if code == Some(0) {
            Err(format!(
                "switch-to-configuration exited successfully but {} does not point at {path}",
                self.current_system.display()
            ))
        } else {
            // "switch-to-configuration failed" for switch, as before activation modes existed.
            let action = match activation {
                Activation::Switch => String::new(),
                a => format!(" {}", a.as_str()),
            };
            Err(format!("switch-to-configuration{action} failed: {detail}"))
        }
    }

    fn run_direct(
        &self,
        path: &StorePath,
        activation: Activation,
    ) -> Result<(Option<i32>, String), String> {
        let program = path.as_path().join("bin/switch-to-configuration");
        let out = exec::run(
            Command::new(&program).arg(activation.as_str()),
            self.timeout,
        )
        .map_err(|e| e.to_string())?;
        Ok((out.status.code(), format!("{}\n{}", out.stdout, out.stderr)))
    }

    /// In a transient unit, waited for with `systemd-run --wait` (which returns once the unit ended:
    /// the link flips during activation, before the changed units restart, and health checks must
    /// not run in the middle of that). The unit's exit status comes from systemd-run's stderr; the
    /// failed units from the unit's journal, when it can be read.
    fn run_systemd(
        &self,
        path: &StorePath,
        activation: Activation,
    ) -> Result<(Option<i32>, String), String> {
        let unit = format!("nixfleet-switch-{}", unique_suffix());
        let program = path.as_path().join("bin/switch-to-configuration");
        let out = exec::run(
            Command::new("systemd-run")
                .arg(format!("--unit={unit}"))
                .arg("--collect")
                .arg("--wait")
                .arg(format!("--description=nixfleet {} to {path}", activation.as_str()))
                .arg("--")
                .arg(&program)
                .arg(activation.as_str()),
            self.timeout,
        )
        .map_err(|e| match e {
            // Killing systemd-run does not stop the unit: a hung switch would go on running, and
            // on NixOS keep holding /run/nixos/switch-to-configuration.lock against the rollback's
            // own switch. So the unit is stopped before the rollback starts.
            exec::ExecError::Timeout { secs, .. } => format!(
                "switch unit {unit} still running after {secs} s, {} (the system may already point at the new generation)",
                stop_unit(&unit)
            ),
            e => e.to_string(),
        })?;
        let code = systemd_run_exit_status(&out.stderr).ok_or_else(|| {
            format!(
                "systemd-run --unit={unit} failed: {}",
                out.failure_summary()
            )
        })?;
        tracing::info!(unit, path = %path, exit_code = code, "Switch unit ended");
        let journal = if code == Some(EXIT_FAILED_UNITS) {
            unit_journal(&unit)
        } else {
            String::new()
        };
        Ok((code, format!("{}\n{journal}", out.stderr)))
    }
}

/// How long stopping a hung switch unit may take.
const UNIT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops the transient unit of a switch that ran past its timeout; says what happened.
fn stop_unit(unit: &str) -> String {
    let service = format!("{unit}.service");
    match exec::run(
        Command::new("systemctl").args(["stop", &service]),
        UNIT_STOP_TIMEOUT,
    ) {
        Ok(out) if out.status.success() => {
            tracing::warn!(unit = %service, "Stopped the switch unit that ran past the switch timeout");
            "stopped".into()
        }
        Ok(out) => {
            let why = out.failure_summary();
            tracing::error!(unit = %service, error = %why, "Cannot stop the hung switch unit");
            format!("and could not be stopped ({why})")
        }
        Err(e) => {
            tracing::error!(unit = %service, error = %e, "Cannot stop the hung switch unit");
            format!("and could not be stopped ({e})")
        }
    }
}

/// The messages of a finished unit, for its failed-units line; "" when the journal cannot be read.
fn unit_journal(unit: &str) -> String {
    match exec::run(
        Command::new("journalctl")
            .args(["--no-pager", "--output=cat", "--lines=200", "--unit"])
            .arg(format!("{unit}.service")),
        JOURNAL_TIMEOUT,
    ) {
        Ok(out) if out.status.success() => out.stdout,
        _ => String::new(),
    }
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// Which of `kernel`, `initrd` and `systemd` of the booted system (`booted`, `/run/booted-system`)
/// differ from those of the running one (`current`): those need a reboot to take effect. A part
/// missing on either side (containers, test systems) is not compared; no booted-system link, nothing.
pub fn reboot_needed(booted: &Path, current: &Path) -> Vec<String> {
    let resolve = |root: &Path, part: &str| std::fs::canonicalize(root.join(part)).ok();
    ["kernel", "initrd", "systemd"]
        .into_iter()
        .filter(
            |part| match (resolve(booted, part), resolve(current, part)) {
                (Some(b), Some(c)) => b != c,
                _ => false,
            },
        )
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_run_exit_statuses_are_read_from_its_stderr() {
        let out = "Running as unit: nixfleet-switch-1.service; invocation ID: 4b1c\n\
                   Finished with result: exit-code\n\
                   Main processes terminated with: code=exited/status=4\n\
                   Service runtime: 1.203s\n";
        assert_eq!(systemd_run_exit_status(out), Some(Some(4)));
        let ok = "Running as unit: u.service\nFinished with result: success\nMain processes terminated with: code=exited/status=0\n";
        assert_eq!(systemd_run_exit_status(ok), Some(Some(0)));
        let killed = "Finished with result: signal\nMain processes terminated with: code=killed/status=TERM\n";
        assert_eq!(systemd_run_exit_status(killed), Some(None));
        let no_unit = "Failed to start transient service unit: Unit u.service already exists.\n";
        assert_eq!(systemd_run_exit_status(no_unit), None);
    }

    #[test]
    fn failed_units_are_counted_from_the_switch_output() {
        let out = "restarting the following units: nginx.service\n\
                   warning: the following units failed: nginx.service, postgresql.service, x.mount\n\
                   × nginx.service - Nginx\n";
        assert_eq!(count_failed_units(out), Some(3));
        assert_eq!(
            count_failed_units("activating the configuration...\n"),
            None
        );
        let s = classify(Some(4), out);
        assert_eq!(s.outcome, Outcome::FailedUnits);
        assert_eq!(s.describe(), "switched, 3 units failed");
        assert_eq!(
            classify(Some(4), "").describe(),
            "switched, some units failed"
        );
        assert_eq!(classify(Some(0), out).outcome, Outcome::Switched);
        assert_eq!(classify(Some(2), "").outcome, Outcome::SwitchedWithErrors);
        assert_eq!(classify(None, "").outcome, Outcome::SwitchedWithErrors);
    }
}
