//! The demo's directory (refused unless empty or a previous demo's, which is removed unless a
//! process still uses it) and the executables it starts.

use crate::error::{CliError, Result};
use std::path::{Path, PathBuf};

/// Marks a directory as the demo's, so a second run may remove it.
pub const MARKER: &str = ".nixfleet-demo";

/// The two executables the demo starts.
pub struct Binaries {
    pub cp: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    /// `nixfleet-control-plane` and `nixfleet-agent` in `bin_dir`, else next to this executable.
    pub fn find(bin_dir: Option<&Path>) -> Result<Binaries> {
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or_else(|| {
                    CliError::usage(
                        "cannot tell where this nixfleet executable is; pass --bin-dir DIR",
                    )
                })?,
        };
        let (cp, agent) = (
            dir.join("nixfleet-control-plane"),
            dir.join("nixfleet-agent"),
        );
        let missing: Vec<&str> = [(&cp, "nixfleet-control-plane"), (&agent, "nixfleet-agent")]
            .iter()
            .filter(|(p, _)| !p.is_file())
            .map(|(_, n)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(CliError::usage(format!(
                "{} not found in {}; build them with `cargo build -p nixfleet-engine -p nixfleet-agent`, or pass --bin-dir DIR",
                missing.join(" and "),
                dir.display()
            )));
        }
        Ok(Binaries { cp, agent })
    }
}

/// Creates the demo directory, removing a previous demo's; returns its absolute path and
/// whether a previous demo was removed.
pub fn prepare_dir(dir: &Path) -> Result<(PathBuf, bool)> {
    let mut removed = false;
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CliError::usage(format!(
                "--dir {}: {e}; pass a directory",
                dir.display()
            )))
        }
        Ok(mut entries) => {
            if dir.join(MARKER).is_file() {
                let abs = std::fs::canonicalize(dir)
                    .map_err(|e| CliError::usage(format!("--dir {}: {e}", dir.display())))?;
                if let Some((pid, what)) = user_of(&abs) {
                    return Err(CliError::usage(format!(
                        "{} holds a previous demo that is still in use (pid {pid}: {what}); stop that process first, or pass another --dir",
                        dir.display()
                    )));
                }
                std::fs::remove_dir_all(dir).map_err(|e| {
                    CliError::failed(format!(
                        "cannot remove the previous demo in {}: {e}",
                        dir.display()
                    ))
                })?;
                removed = true;
            } else if entries.next().is_some() {
                return Err(CliError::usage(format!(
                    "{} exists and does not hold a previous demo (no {MARKER} in it); pass another --dir, or remove it",
                    dir.display()
                )));
            }
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    let abs = std::fs::canonicalize(dir)
        .map_err(|e| CliError::usage(format!("--dir {}: {e}", dir.display())))?;
    std::fs::write(
        abs.join(MARKER),
        format!("nixfleet demo, pid {}\n", std::process::id()),
    )
    .map_err(|e| CliError::usage(format!("cannot write in {}: {e}", dir.display())))?;
    Ok((abs, removed))
}

/// A process other than this one whose command line names `dir` or whose pid the marker holds
/// (a demo still running there, or a child a killed demo left behind).
fn user_of(dir: &Path) -> Option<(u32, String)> {
    let marker_pid: Option<u32> = std::fs::read_to_string(dir.join(MARKER))
        .ok()
        .and_then(|t| t.trim().rsplit(' ').next().and_then(|p| p.parse().ok()));
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").ok()?;
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .find_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let ours = Some(pid) == marker_pid && cmdline.contains("demo");
            (ours || cmdline.contains(&needle)).then(|| (pid, cmdline.trim().to_string()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_demo_is_refused_and_a_previous_demo_is_removed() {
        let base = std::env::temp_dir().join(format!("nfdemo-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("mkdir");
        std::fs::write(base.join("precious"), "x").expect("write");
        let err = prepare_dir(&base).expect_err("refused");
        assert!(
            err.to_string().contains("does not hold a previous demo"),
            "{err}"
        );
        assert!(base.join("precious").exists());

        std::fs::remove_file(base.join("precious")).expect("rm");
        let (abs, removed) = prepare_dir(&base).expect("empty dir is fine");
        assert!(!removed);
        std::fs::write(abs.join("old-log"), "x").expect("write");
        // The marker names a process that is not a demo: the directory is a finished demo's.
        std::fs::write(abs.join(MARKER), "nixfleet demo, pid 1\n").expect("write");
        let (_, removed) = prepare_dir(&base).expect("previous demo");
        assert!(removed);
        assert!(!abs.join("old-log").exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
