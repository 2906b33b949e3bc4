//! Health checks: what they are, how each kind runs, and when each one is due.
//!
//! The configuration file (`HealthChecksConfig`, written by the NixOS module) belongs to the running
//! system generation, so it is re-read before every run: after a switch, the new system's checks
//! apply. Each check keeps its own interval (v0.1 ignored it). A file that cannot be parsed is a
//! failing check named `health-config`, not a silent fallback: a generation that ships a broken
//! health configuration must not look healthy. A missing or empty file falls back to one check,
//! `systemd-system` (`systemctl is-system-running` is `running` or `degraded`).

use crate::exec;
use nixfleet_proto::api::v1::{HealthCheckResult, HealthChecksConfig, HealthReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// Name of the fallback check used when no checks are configured.
pub const FALLBACK_CHECK: &str = "systemd-system";

/// Name of the failing check that stands for an unreadable configuration file.
pub const CONFIG_CHECK: &str = "health-config";

/// Longest failure message of one check (bytes); reports must stay within the control plane's limits.
pub const CHECK_MESSAGE_MAX_BYTES: usize = 512;

/// Deadline of `systemctl` calls made by checks.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(10);

/// What one check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `systemctl is-active <unit>` prints `active`.
    Systemd {
        /// The unit.
        unit: String,
    },
    /// A GET answers with `expected_status` within `timeout`.
    Http {
        /// The URL.
        url: String,
        /// Request deadline.
        timeout: Duration,
        /// Status that passes.
        expected_status: u16,
    },
    /// `/bin/sh -c <command>` exits 0 within `timeout`.
    Command {
        /// The shell command.
        command: String,
        /// Deadline; the command's process group is killed after it.
        timeout: Duration,
    },
    /// `systemctl is-system-running` prints `running` or `degraded` (the fallback).
    SystemRunning,
    /// The configuration could not be read; always fails with this message.
    BrokenConfig {
        /// What is wrong with the file.
        error: String,
    },
}

impl CheckKind {
    /// A short label for metrics (`check_type`).
    pub fn type_label(&self) -> &'static str {
        match self {
            CheckKind::Systemd { .. } | CheckKind::SystemRunning => "systemd",
            CheckKind::Http { .. } => "http",
            CheckKind::Command { .. } => "command",
            CheckKind::BrokenConfig { .. } => "config",
        }
    }
}

/// One configured check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The name results carry: the unit, the URL or the command's name.
    pub name: String,
    /// What it does.
    pub kind: CheckKind,
    /// How often it runs.
    pub interval: Duration,
}

/// Turns the configuration into checks; checks without an interval use `default_interval`.
/// No checks at all gives the fallback check.
pub fn checks_from_config(cfg: &HealthChecksConfig, default_interval: Duration) -> Vec<Check> {
    let every = |secs: Option<u64>| {
        secs.filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(default_interval)
    };
    let mut checks = Vec::new();
    for group in &cfg.systemd {
        for unit in &group.units {
            checks.push(Check {
                name: unit.clone(),
                kind: CheckKind::Systemd { unit: unit.clone() },
                interval: every(group.interval),
            });
        }
    }
    for h in &cfg.http {
        checks.push(Check {
            name: h.url.clone(),
            kind: CheckKind::Http {
                url: h.url.clone(),
                timeout: Duration::from_secs(h.timeout.max(1)),
                expected_status: h.expected_status,
            },
            interval: every(h.interval),
        });
    }
    for c in &cfg.command {
        checks.push(Check {
            name: c.name.clone(),
            kind: CheckKind::Command {
                command: c.command.clone(),
                timeout: Duration::from_secs(c.timeout.max(1)),
            },
            interval: every(c.interval),
        });
    }
    if checks.is_empty() {
        checks.push(fallback_check(default_interval));
    }
    checks
}

fn fallback_check(interval: Duration) -> Check {
    Check {
        name: FALLBACK_CHECK.to_owned(),
        kind: CheckKind::SystemRunning,
        interval,
    }
}

/// Reads the checks from `path`: missing or empty file → the fallback; unparsable → one failing
/// `health-config` check.
pub fn load_checks(path: &Path, default_interval: Duration) -> Vec<Check> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![fallback_check(default_interval)]
        }
        Err(e) => return vec![broken(path, &e.to_string(), default_interval)],
    };
    if text.trim().is_empty() {
        return vec![fallback_check(default_interval)];
    }
    match serde_json::from_str::<HealthChecksConfig>(&text) {
        Ok(cfg) => checks_from_config(&cfg, default_interval),
        Err(e) => vec![broken(path, &e.to_string(), default_interval)],
    }
}

fn broken(path: &Path, error: &str, interval: Duration) -> Check {
    Check {
        name: CONFIG_CHECK.to_owned(),
        kind: CheckKind::BrokenConfig {
            error: format!("cannot read health config {}: {error}", path.display()),
        },
        interval,
    }
}

/// Runs one check now.
pub fn run_check(check: &Check) -> HealthCheckResult {
    let started = Instant::now();
    let outcome = match &check.kind {
        CheckKind::Systemd { unit } => systemd_unit_active(unit),
        CheckKind::Http {
            url,
            timeout,
            expected_status,
        } => http_status(url, *timeout, *expected_status),
        CheckKind::Command { command, timeout } => command_succeeds(command, *timeout),
        CheckKind::SystemRunning => system_running(),
        CheckKind::BrokenConfig { error } => Err(error.clone()),
    };
    let duration = started.elapsed();
    let duration_ms = duration.as_millis() as u64;
    let passed = outcome.is_ok();
    metrics::gauge!("nixfleet_agent_health_check_status", "check_name" => check.name.clone())
        .set(if passed { 1.0 } else { 0.0 });
    metrics::histogram!("nixfleet_agent_health_check_duration_seconds",
        "check_name" => check.name.clone(), "check_type" => check.kind.type_label())
    .record(duration.as_secs_f64());
    match outcome {
        Ok(()) => HealthCheckResult::Pass {
            check_name: check.name.clone(),
            duration_ms,
        },
        Err(message) => HealthCheckResult::Fail {
            check_name: check.name.clone(),
            duration_ms,
            message: crate::truncate(&message, CHECK_MESSAGE_MAX_BYTES),
        },
    }
}

fn systemd_unit_active(unit: &str) -> Result<(), String> {
    let out = exec::run(
        Command::new("systemctl").args(["is-active", "--", unit]),
        SYSTEMCTL_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    match out.stdout.trim() {
        "active" => Ok(()),
        "" => Err(format!(
            "systemctl is-active {unit}: {}",
            out.failure_summary()
        )),
        state => Err(format!("unit {unit} is {state}")),
    }
}

fn system_running() -> Result<(), String> {
    let out = exec::run(
        Command::new("systemctl").arg("is-system-running"),
        SYSTEMCTL_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    match out.stdout.trim() {
        "running" | "degraded" => Ok(()),
        "" => Err(format!(
            "systemctl is-system-running: {}",
            out.failure_summary()
        )),
        state => Err(format!("system is {state}")),
    }
}

fn http_status(url: &str, timeout: Duration, expected: u16) -> Result<(), String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    match agent.get(url).call() {
        Ok(resp) if resp.status().as_u16() == expected => Ok(()),
        Ok(resp) => Err(format!(
            "expected status {expected}, got {}",
            resp.status().as_u16()
        )),
        Err(e) => Err(format!("GET {url} failed: {e}")),
    }
}

fn command_succeeds(command: &str, timeout: Duration) -> Result<(), String> {
    // Absolute /bin/sh: a systemd unit's PATH need not contain sh (seed: vm-fleet-apply-failure).
    let out = exec::run(Command::new("/bin/sh").arg("-c").arg(command), timeout)
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(out.failure_summary())
    }
}

/// Runs all checks in parallel and builds a report, stamped with the time they started.
pub fn run_all(checks: &[Check]) -> HealthReport {
    let measured = SystemTime::now();
    let results = run_each(checks);
    report(results.into_iter().map(|r| (measured, r)).collect())
}

/// Runs `checks` in parallel; one result each, in order.
fn run_each(checks: &[Check]) -> Vec<HealthCheckResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .iter()
            .map(|c| s.spawn(move || run_check(c)))
            .collect();
        handles
            .into_iter()
            .zip(checks)
            .map(|(h, c)| {
                h.join().unwrap_or_else(|_| HealthCheckResult::Fail {
                    check_name: c.name.clone(),
                    duration_ms: 0,
                    message: "the check panicked".to_owned(),
                })
            })
            .collect::<Vec<_>>()
    })
}

/// A report of results with the (wall-clock) time each was measured. Its `timestamp` is the
/// oldest of those times: the control plane counts a pass only when every result was measured
/// after the machine's batch started, so a cached result must keep its own time, never "now".
fn report(results: Vec<(SystemTime, HealthCheckResult)>) -> HealthReport {
    let oldest = results
        .iter()
        .map(|(at, _)| *at)
        .min()
        .unwrap_or_else(SystemTime::now);
    let results: Vec<HealthCheckResult> = results.into_iter().map(|(_, r)| r).collect();
    HealthReport {
        all_passed: results.iter().all(HealthCheckResult::passed),
        results,
        timestamp: crate::rfc3339(oldest),
    }
}

/// The latest result of one check.
#[derive(Debug, Clone)]
struct Latest {
    /// When it ran, for its schedule.
    ran: Instant,
    /// When it ran by the wall clock, for the report.
    measured: SystemTime,
    interval: Duration,
    result: HealthCheckResult,
}

/// Keeps the latest result of each check and runs each one on its own schedule.
#[derive(Debug)]
pub struct HealthRunner {
    config: PathBuf,
    default_interval: Duration,
    last: BTreeMap<String, Latest>,
}

impl HealthRunner {
    /// A runner reading `config`, with `default_interval` for checks that name none.
    pub fn new(config: PathBuf, default_interval: Duration) -> Self {
        HealthRunner {
            config,
            default_interval,
            last: BTreeMap::new(),
        }
    }

    /// Re-reads the configuration, runs the checks that are due at `now` (all of them when `force`,
    /// as right after a switch) and returns the latest result of every configured check.
    pub fn run_due(&mut self, now: Instant, force: bool) -> HealthReport {
        let checks = load_checks(&self.config, self.default_interval);
        let due: Vec<Check> = checks
            .iter()
            .filter(|c| {
                force
                    || self
                        .last
                        .get(&key(c))
                        .is_none_or(|l| now >= l.ran + c.interval)
            })
            .cloned()
            .collect();
        let measured = SystemTime::now();
        for (check, result) in due.iter().zip(run_each(&due)) {
            let latest = Latest {
                ran: now,
                measured,
                interval: check.interval,
                result,
            };
            self.last.insert(key(check), latest);
        }
        // Forget checks that are no longer configured.
        let keys: Vec<String> = checks.iter().map(key).collect();
        self.last.retain(|k, _| keys.contains(k));
        report(
            checks
                .iter()
                .filter_map(|c| {
                    self.last
                        .get(&key(c))
                        .map(|l| (l.measured, l.result.clone()))
                })
                .collect(),
        )
    }

    /// When the next check is due; `now` when some check never ran.
    pub fn next_due(&self, now: Instant) -> Instant {
        if self.last.is_empty() {
            return now;
        }
        self.last
            .values()
            .map(|l| l.ran + l.interval)
            .min()
            .unwrap_or(now)
    }
}

fn key(c: &Check) -> String {
    format!("{}:{}", c.kind.type_label(), c.name)
}
