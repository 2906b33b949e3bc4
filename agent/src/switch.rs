//! Switching the running system to a closure and waiting until it runs.
//!
//! `switch-to-configuration switch` restarts services, possibly the agent itself, so on a systemd host
//! it runs detached in a transient unit (`systemd-run --unit=nixfleet-switch-<n> --collect`), where the
//! agent's own restart cannot kill it. The agent then watches the current-system link until it points
//! at the target, within a deadline. Each switch gets a fresh unit name, so a stale unit from an
//! earlier switch can never block the next one (a v0.1 defect, ADR-011).

use crate::exec;
use crate::store_path::StorePath;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the current-system link is read while waiting for a switch.
const LINK_POLL: Duration = Duration::from_millis(200);

/// How often the transient unit's state is checked while waiting (systemd-run mode).
const UNIT_POLL: Duration = Duration::from_secs(2);

/// How often the transient unit is checked once the link has flipped.
const UNIT_END_POLL: Duration = Duration::from_millis(250);

/// Deadline of `systemd-run` itself (it returns once the unit started) and of `systemctl` queries.
const SYSTEMD_CALL_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Runs `<path>/bin/switch-to-configuration switch` and waits until the current-system link points
    /// at `path`. Errors are one line, ready for a report.
    pub fn switch_to(&self, path: &StorePath) -> Result<(), String> {
        check_closure(path).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let result = match self.mode {
            SwitchMode::Direct => self.switch_direct(path),
            SwitchMode::SystemdRun => self.switch_systemd_run(path),
        };
        match &result {
            Ok(()) => {
                tracing::info!(path = %path, elapsed_ms = started.elapsed().as_millis() as u64, "Switch complete")
            }
            Err(e) => tracing::warn!(path = %path, error = %e, "Switch failed"),
        }
        result
    }

    fn points_at(&self, path: &StorePath) -> bool {
        read_current(&self.current_system).as_ref() == Some(path)
    }

    fn switch_direct(&self, path: &StorePath) -> Result<(), String> {
        let program = path.as_path().join("bin/switch-to-configuration");
        let out = exec::run(Command::new(&program).arg("switch"), self.timeout)
            .map_err(|e| e.to_string())?;
        if self.points_at(path) {
            if !out.status.success() {
                // NixOS exits 4 when some units failed to (re)start; the health checks judge that.
                tracing::warn!(path = %path, status = %out.status, "switch-to-configuration reported errors, but the system switched");
            }
            return Ok(());
        }
        if out.status.success() {
            Err(format!(
                "switch-to-configuration exited successfully but {} does not point at {path}",
                self.current_system.display()
            ))
        } else {
            Err(format!(
                "switch-to-configuration failed: {}",
                out.failure_summary()
            ))
        }
    }

    fn switch_systemd_run(&self, path: &StorePath) -> Result<(), String> {
        let unit = format!("nixfleet-switch-{}", unique_suffix());
        let program = path.as_path().join("bin/switch-to-configuration");
        let out = exec::run(
            Command::new("systemd-run")
                .arg(format!("--unit={unit}"))
                .arg("--collect")
                .arg(format!("--description=nixfleet switch to {path}"))
                .arg("--")
                .arg(&program)
                .arg("switch"),
            SYSTEMD_CALL_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "systemd-run --unit={unit} failed: {}",
                out.failure_summary()
            ));
        }
        tracing::info!(unit, path = %path, "Switch started in a transient unit");
        let deadline = Instant::now() + self.timeout;
        let mut next_unit_check = Instant::now() + UNIT_POLL;
        loop {
            if self.points_at(path) {
                return self.wait_for_unit_end(&unit, deadline);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{} did not point at {path} within {} s (unit {unit})",
                    self.current_system.display(),
                    self.timeout.as_secs()
                ));
            }
            if now >= next_unit_check {
                next_unit_check = now + UNIT_POLL;
                if !unit_running(&unit) && !self.points_at(path) {
                    return Err(format!(
                        "switch unit {unit} ended but {} does not point at {path}",
                        self.current_system.display()
                    ));
                }
            }
            thread::sleep(LINK_POLL);
        }
    }
}

impl Switcher {
    /// The link flips during activation, before switch-to-configuration restarts the changed units;
    /// health checks must not run in the middle of that, so wait for the unit to end too.
    fn wait_for_unit_end(&self, unit: &str, deadline: Instant) -> Result<(), String> {
        while unit_running(unit) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "switch unit {unit} still running after {} s (the system already points at the new generation)",
                    self.timeout.as_secs()
                ));
            }
            thread::sleep(UNIT_END_POLL);
        }
        Ok(())
    }
}

/// Whether the transient unit is still active or activating. A collected (finished) unit is not.
fn unit_running(unit: &str) -> bool {
    match exec::run(
        Command::new("systemctl")
            .args(["is-active", "--"])
            .arg(format!("{unit}.service")),
        SYSTEMD_CALL_TIMEOUT,
    ) {
        Ok(out) => matches!(out.stdout.trim(), "active" | "activating" | "reloading"),
        // If systemctl cannot be asked, keep waiting for the link until the deadline.
        Err(_) => true,
    }
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
