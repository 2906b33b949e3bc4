//! Local quarantine of system closures that failed on this machine.
//!
//! v0.1 rolled a failing generation back and then applied it again on the next poll, every 5 s while
//! the rollout stayed paused (defect 1 of the facts file). The agent now remembers, in a file in its
//! state directory, every path it had to roll back or refuse, and does not apply it again.
//!
//! The rule, applied to every desired generation the control plane sends:
//! 1. Entries for paths other than the desired one are dropped: the desired path changed, so a later
//!    return to a dropped path is a new decision and is tried again. A 404 (no desired path) drops all.
//! 2. The desired path is quarantined locally: the control plane's `quarantined` flag decides.
//!    - `true`: the control plane knows. The entry is marked acknowledged; the path is skipped.
//!    - `false` and the entry was acknowledged before: an operator cleared the quarantine on the
//!      control plane. The entry is dropped and the path is applied again.
//!    - `false`, and the control plane decided this desired generation again since the path
//!      failed here (its `decided_seq` moved past the one the entry recorded: a resume or an
//!      operator cleared the quarantine, or the path was set anew), even before this agent ever
//!      saw `quarantined: true`: the entry is dropped and the path is applied again. (Without this,
//!      a resume that came before the agent's next poll left the path skipped for good.)
//!    - `false` and never acknowledged: the control plane has not seen the failure report yet (or
//!      does not implement quarantine). The path is skipped.
//! 3. The desired path is not quarantined locally but the control plane says `quarantined: true`
//!    (for example after the state directory was wiped): skipped, because the control plane says so.

use nixfleet_proto::api::v1::DesiredGeneration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside the state directory.
pub const FILE_NAME: &str = "quarantine.json";

/// One quarantined path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Why it was quarantined.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// Whether the control plane has since sent this path with `quarantined: true`.
    #[serde(default)]
    pub cp_acknowledged: bool,
    /// The control plane's `decided_seq` of the desired generation under which the path failed
    /// (None when it sent none: an older control plane).
    #[serde(default)]
    pub decided_seq: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct File {
    v: u32,
    #[serde(default)]
    entries: BTreeMap<String, Entry>,
}

/// What to do with a desired path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Apply,
    /// Do not apply; the text says why.
    Skip(String),
}

/// The quarantine, backed by `<state-dir>/quarantine.json`.
#[derive(Debug)]
pub struct Quarantine {
    path: PathBuf,
    file: File,
    /// The last desired generation observed: its path and `decided_seq`.
    last_desired: Option<(String, Option<u64>)>,
}

impl Quarantine {
    /// Loads the quarantine from `state_dir`. A missing file is an empty quarantine; an unreadable one
    /// is moved aside (`quarantine.json.corrupt`) with a warning, because a corrupt file must not stop
    /// the agent from rolling out fixes.
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join(FILE_NAME);
        let file = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    let aside = state_dir.join(format!("{FILE_NAME}.corrupt"));
                    tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(),
                        "Quarantine file unreadable; moved aside, starting empty");
                    std::fs::rename(&path, &aside)?;
                    File::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(e),
        };
        Ok(Quarantine {
            path,
            file,
            last_desired: None,
        })
    }

    /// The quarantined paths and their entries.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.file.entries
    }

    /// Whether `path` is quarantined locally.
    pub fn contains(&self, path: &str) -> bool {
        self.file.entries.contains_key(path)
    }

    /// Quarantines `path`, under the decision of the desired generation last observed when it
    /// is that path.
    pub fn add(&mut self, path: &str, reason: &str) {
        let decided_seq = self
            .last_desired
            .as_ref()
            .filter(|(p, _)| p == path)
            .and_then(|(_, d)| *d);
        self.file.entries.insert(
            path.to_owned(),
            Entry {
                reason: reason.to_owned(),
                at: crate::rfc3339(std::time::SystemTime::now()),
                cp_acknowledged: false,
                decided_seq,
            },
        );
        self.save();
    }

    /// The control plane has no desired path for this machine: nothing stays quarantined.
    pub fn observe_none(&mut self) {
        if !self.file.entries.is_empty() {
            tracing::info!(
                paths = self.file.entries.len(),
                "No desired generation; clearing the local quarantine"
            );
            self.file.entries.clear();
            self.save();
        }
    }

    /// Applies the rule of the module documentation to a desired generation.
    pub fn observe(&mut self, desired: &DesiredGeneration) -> Verdict {
        let before = self.file.clone();
        self.last_desired = Some((desired.hash.clone(), desired.decided_seq));
        self.file.entries.retain(|p, _| p == &desired.hash);
        let verdict = match self.file.entries.get_mut(&desired.hash) {
            Some(entry) if desired.quarantined => {
                entry.cp_acknowledged = true;
                Verdict::Skip(format!(
                    "quarantined: {} failed here before ({})",
                    desired.hash, entry.reason
                ))
            }
            Some(entry)
                if entry
                    .decided_seq
                    .zip(desired.decided_seq)
                    .is_some_and(|(failed_under, now)| now > failed_under) =>
            {
                tracing::info!(path = %desired.hash, "The control plane decided this generation again since it failed here (resumed or cleared); applying again");
                self.file.entries.remove(&desired.hash);
                Verdict::Apply
            }
            Some(entry) if entry.cp_acknowledged => {
                tracing::info!(path = %desired.hash, "The control plane cleared the quarantine; applying again");
                self.file.entries.remove(&desired.hash);
                Verdict::Apply
            }
            Some(entry) => Verdict::Skip(format!(
                "quarantined: {} failed here before ({})",
                desired.hash, entry.reason
            )),
            None if desired.quarantined => Verdict::Skip(format!(
                "quarantined: the control plane marks {} as failed on this machine",
                desired.hash
            )),
            None => Verdict::Apply,
        };
        if self.file != before {
            self.save();
        }
        verdict
    }

    /// Writes the file atomically (temporary file, fsync, rename). A failure is logged, not fatal:
    /// the in-memory quarantine still protects this process.
    fn save(&self) {
        if let Err(e) = self.try_save() {
            tracing::error!(path = %self.path.display(), error = %e, "Cannot write the quarantine file");
        }
    }

    fn try_save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        let bytes = serde_json::to_vec_pretty(&File {
            v: 1,
            entries: self.file.entries.clone(),
        })
        .map_err(std::io::Error::other)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}
