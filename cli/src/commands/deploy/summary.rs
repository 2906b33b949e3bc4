//! The outcome of `deploy --ssh`, per host and for the fleet: the result table, `--json`.

use crate::output::Table;
use crate::progress::{HostState, Progress};
use crate::ssh::StepError;
use serde::Serialize;

/// A host now on its new generation.
#[derive(Debug, Serialize)]
pub struct HostDone {
    pub host: String,
    pub store_path: String,
    pub seconds: f64,
}

/// A host that failed, at which step.
#[derive(Debug, Serialize)]
pub struct HostFailed {
    pub host: String,
    pub step: String,
    pub error: String,
}

/// A host left out: ssh could not reach it (`--skip-unreachable`).
#[derive(Debug, Serialize)]
pub struct HostSkipped {
    pub host: String,
    pub reason: String,
}

/// Every host's outcome.
#[derive(Debug, Serialize, Default)]
pub struct Summary {
    pub succeeded: Vec<HostDone>,
    pub failed: Vec<HostFailed>,
    pub skipped: Vec<HostSkipped>,
}

impl Summary {
    /// The per-host result table.
    pub fn table(&self) -> Table {
        let mut t = Table::new(&["HOST", "RESULT", "STEP", "STORE PATH / WHY"]);
        let mut rows: Vec<Vec<String>> = Vec::new();
        for d in &self.succeeded {
            rows.push(vec![
                d.host.clone(),
                "ok".into(),
                "-".into(),
                d.store_path.clone(),
            ]);
        }
        for f in &self.failed {
            rows.push(vec![
                f.host.clone(),
                "FAILED".into(),
                f.step.clone(),
                f.error.clone(),
            ]);
        }
        for k in &self.skipped {
            rows.push(vec![
                k.host.clone(),
                "skipped".into(),
                "connect".into(),
                k.reason.clone(),
            ]);
        }
        rows.sort();
        for r in rows {
            t.row(r);
        }
        t
    }
}

/// One host's outcome.
pub enum HostOutcome {
    Done(HostDone),
    Failed(HostFailed),
    Skipped(HostSkipped),
}

/// Reports a host's failure as it happens (with the failing command's output) and returns it.
pub fn failed(progress: &Progress, host: &str, e: StepError) -> HostOutcome {
    progress.set(
        host,
        HostState::Failed(format!("at {}: {}", e.step, e.message)),
    );
    for line in e.detail.lines().filter(|l| !l.trim().is_empty()).take(40) {
        progress.println(&format!("[{host}]   {line}"));
    }
    HostOutcome::Failed(HostFailed {
        host: host.to_string(),
        step: e.step.to_string(),
        error: e.message,
    })
}
