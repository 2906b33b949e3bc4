//! A record of the deploy in progress, so a deploy interrupted by an agent restart (crash, reboot,
//! or a switch that stops the agent) is finished by the next agent process instead of forgotten.
//!
//! It is written to `<state-dir>/deploy.json` before the profile is touched and removed when the
//! deploy has ended (deployed, rolled back, or rollback failed). If it is still there when a cycle
//! starts, the previous process died mid-deploy; `cycle` then decides (see `Agent::resume`):
//! - the system runs the target: verify it now, then report "deployed" or roll back to the recorded
//!   previous generation, exactly as an uninterrupted deploy would;
//! - it does not: the switch never happened. The next cycle applies again, but a path whose deploy
//!   was interrupted [`ATTEMPTS_MAX`] times is quarantined, so a switch that kills the agent cannot
//!   loop forever.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside the state directory.
pub const FILE_NAME: &str = "deploy.json";

/// Interrupted attempts after which a path is quarantined.
pub const ATTEMPTS_MAX: u32 = 2;

/// The deploy in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The path being applied.
    pub target: String,
    /// The generation that ran before (the rollback target), if any.
    pub previous: Option<String>,
    /// How many times applying `target` was started.
    pub attempts: u32,
    /// When this attempt started (RFC 3339).
    pub at: String,
}

/// The record file.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// The journal of `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Journal {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// The record left by a previous process, if any. An unreadable record is dropped with a warning.
    pub fn load(&self) -> Option<InFlight> {
        let bytes = std::fs::read(&self.path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Dropping an unreadable deploy record");
                self.clear();
                None
            }
        }
    }

    /// Records a deploy as started (atomically: temporary file, fsync, rename).
    pub fn start(&self, record: &InFlight) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the record: the deploy has ended.
    pub fn clear(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "Cannot remove the deploy record")
            }
        }
    }
}
