//! A machine's report as a test names it: `Report::on(2).healthy()`.

use crate::names::{path, tag};
use nixfleet_core::event::CheckResult;
use nixfleet_core::ids::{StorePath, Tag};
use nixfleet_core::ReportInput;

/// What a machine reports: the generation it runs, whether its last deployment succeeded, and
/// its health results, if any. Generations are numbers, resolved per machine with [`path`].
#[derive(Debug, Clone)]
pub struct Report {
    generation: Option<Generation>,
    success: bool,
    message: Option<String>,
    health: Option<(Vec<CheckResult>, bool)>,
    tags: Vec<Tag>,
    rolled_back_from: Option<Generation>,
    measured: Option<Measured>,
}

#[derive(Debug, Clone)]
enum Generation {
    Number(u64),
    Path(StorePath),
}

/// When the health results were measured, by the agent's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    /// Seconds before sending the report.
    pub(crate) age_secs: u64,
    /// How far the agent's clock is ahead of the control plane's.
    pub(crate) clock_ahead_secs: u64,
}

impl Report {
    /// A successful report of a machine running system generation `n`, without health results.
    pub fn on(n: u64) -> Report {
        Report::running(Some(Generation::Number(n)))
    }

    /// A successful report of a machine running `path`, without health results.
    pub fn on_path(path: StorePath) -> Report {
        Report::running(Some(Generation::Path(path)))
    }

    /// A successful report that names no running generation (an agent that could not tell).
    pub fn without_generation() -> Report {
        Report::running(None)
    }

    fn running(generation: Option<Generation>) -> Report {
        Report {
            generation,
            success: true,
            message: None,
            health: None,
            tags: vec![],
            rolled_back_from: None,
            measured: None,
        }
    }

    /// With one health check that passed.
    pub fn healthy(self) -> Report {
        self.health(one_check(true))
    }

    /// With one health check that failed.
    pub fn unhealthy(self) -> Report {
        self.health(one_check(false))
    }

    /// With these health results (the checks and whether the machine is healthy overall).
    pub fn health(mut self, results: (Vec<CheckResult>, bool)) -> Report {
        self.health = Some(results);
        self
    }

    /// The last deployment failed (message `failed` unless [`Report::message`] says otherwise).
    pub fn failed(mut self) -> Report {
        self.success = false;
        self
    }

    /// The agent rolled back from generation `n` (the generation reported is the one it went
    /// back to).
    pub fn rolled_back_from(mut self, n: u64) -> Report {
        self.rolled_back_from = Some(Generation::Number(n));
        self
    }

    /// The report's message (default `up-to-date`, or `failed` for a failed one).
    pub fn message(mut self, message: &str) -> Report {
        self.message = Some(message.into());
        self
    }

    /// The tags the machine declares.
    pub fn tags(mut self, t: &[&str]) -> Report {
        self.tags = t.iter().map(|x| tag(x)).collect();
        self
    }

    /// The health results were measured `age_secs` before the report was sent, by an agent
    /// clock `clock_ahead_secs` ahead of the control plane's (sent as `ReportMeasured`).
    pub fn measured(mut self, age_secs: u64, clock_ahead_secs: u64) -> Report {
        self.measured = Some(Measured {
            age_secs,
            clock_ahead_secs,
        });
        self
    }

    pub(crate) fn measured_at(&self) -> Option<Measured> {
        self.measured
    }

    /// The report as machine `host` sends it.
    pub fn input(&self, host: &str) -> ReportInput {
        let resolve = |g: &Generation| match g {
            Generation::Number(n) => path(host, *n),
            Generation::Path(p) => p.clone(),
        };
        let default_message = if self.success { "up-to-date" } else { "failed" };
        ReportInput {
            tags: self.tags.clone(),
            rolled_back_from: self.rolled_back_from.as_ref().map(resolve),
            ..report_input(
                self.generation.as_ref().map(resolve),
                self.success,
                self.message.as_deref().unwrap_or(default_message),
                self.health.clone(),
            )
        }
    }
}

/// A report of a machine running `generation`, with these health results, no tags declared and
/// no rollback.
pub fn report_input(
    generation: Option<StorePath>,
    success: bool,
    message: &str,
    health: Option<(Vec<CheckResult>, bool)>,
) -> ReportInput {
    ReportInput {
        generation,
        success,
        message: message.into(),
        tags: vec![],
        health,
        agent_version: "test".into(),
        uptime_secs: 1,
        dry_run: false,
        rolled_back_from: None,
    }
}

/// Health results of one check that passed (or failed).
pub fn one_check(passed: bool) -> (Vec<CheckResult>, bool) {
    (
        vec![CheckResult {
            name: "check".into(),
            passed,
            duration_ms: 1,
            message: if passed { "".into() } else { "down".into() },
        }],
        passed,
    )
}
