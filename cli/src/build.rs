//! One `nix build` of every evaluated host's toplevel, watched through Nix's structured log.
//!
//! The toplevel derivations (from [`crate::eval`]) are built by a single `nix build
//! --keep-going`, so Nix schedules them together (`--max-jobs`), builds what the hosts share
//! once, and a failing host does not stop the others. Its stderr is read as it comes, in
//! `--log-format internal-json`: build activities starting and stopping give each host's
//! "N of M derivations" (M from the host's derivation closure, read from the `.drv` files),
//! log lines are kept per derivation, and errors are matched to the derivations they name, so
//! a failed host is reported with its own log tail.

use crate::eval::Evaluated;
use crate::nix;
use crate::progress::{HostState, Progress};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;

/// Log lines kept per derivation, and shown for a failed host.
const LOG_TAIL_LINES: usize = 25;

/// Nix's activity type of one derivation build (`actBuild`).
const ACT_BUILD: u64 = 105;
/// Nix's result type of one build log line (`resBuildLogLine`).
const RES_BUILD_LOG_LINE: u64 = 101;

/// Why a host's toplevel was not built.
#[derive(Debug, Clone)]
pub struct BuildFailure {
    /// Nix's error messages about the host's derivations.
    pub error: String,
    /// The last lines of the failed builds' logs.
    pub log_tail: Vec<String>,
    /// The command that builds the host alone.
    pub reproduce: String,
}

/// One message of `--log-format internal-json` (`@nix {…}` on stderr).
#[derive(Deserialize)]
struct LogEvent {
    action: String,
    #[serde(default)]
    id: u64,
    #[serde(default, rename = "type")]
    kind: u64,
    #[serde(default)]
    level: u64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    fields: Vec<serde_json::Value>,
}

/// Removes terminal colour sequences (Nix colours its error messages even in JSON).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The store paths a `.drv` file names: (input derivations, outputs).
fn read_drv(drv: &str) -> Option<(Vec<String>, Vec<String>)> {
    let text = std::fs::read_to_string(drv).ok()?;
    let outputs_end = text.find(")],[")?;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (i, piece) in text.split('"').enumerate() {
        // Odd pieces are inside quotes.
        if i % 2 == 1 && piece.starts_with("/nix/store/") && piece.ends_with(".drv") && piece != drv
        {
            inputs.push(piece.to_string());
        }
    }
    for (i, piece) in text[..outputs_end].split('"').enumerate() {
        if i % 2 == 1 && piece.starts_with("/nix/store/") && !piece.ends_with(".drv") {
            outputs.push(piece.to_string());
        }
    }
    Some((inputs, outputs))
}

/// For each host, the derivations of its closure that have an output missing: what building
/// it takes. `None` when a `.drv` cannot be read (then only the host's own build is followed).
fn to_build(hosts: &[Evaluated]) -> Vec<Option<HashSet<String>>> {
    let mut known: HashMap<String, Option<(Vec<String>, bool)>> = HashMap::new();
    hosts
        .iter()
        .map(|h| {
            let mut seen = HashSet::new();
            let mut needed = HashSet::new();
            let mut queue = vec![h.drv.clone()];
            while let Some(drv) = queue.pop() {
                if !seen.insert(drv.clone()) {
                    continue;
                }
                let entry = known.entry(drv.clone()).or_insert_with(|| {
                    read_drv(&drv).map(|(inputs, outputs)| {
                        let missing = outputs.iter().any(|o| !Path::new(o).exists());
                        (inputs, missing)
                    })
                });
                let (inputs, missing) = entry.as_ref()?;
                if *missing {
                    needed.insert(drv.clone());
                }
                queue.extend(inputs.iter().cloned());
            }
            Some(needed)
        })
        .collect()
}

/// The installable of a derivation's outputs: `drv` up to Nix 2.12, `drv^*` from 2.13 on
/// (where a bare `.drv` means the file itself).
fn installable(drv: &str, version: (u32, u32)) -> String {
    if version >= (2, 13) {
        format!("{drv}^*")
    } else {
        drv.to_string()
    }
}

/// `nix --version` as (major, minor); (2, 0) when unreadable.
fn nix_version(verbose: u8) -> (u32, u32) {
    let out = nix::run(nix::nix().arg("--version"), "nix --version", verbose).unwrap_or_default();
    let v = out.split_whitespace().last().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(2), parts.next().unwrap_or(0))
}

/// The command that builds one host's toplevel, for a failure report.
pub fn reproduce_build(flake: &str, host: &str) -> String {
    format!(
        "nix --extra-experimental-features 'nix-command flakes' build --no-link -L {}",
        crate::process::quote(&nix::toplevel_attr(flake, host))
    )
}

/// What the structured log has said so far.
#[derive(Default)]
struct Watch {
    /// Build activity id → derivation.
    building: HashMap<u64, String>,
    /// Derivation → its last log lines.
    logs: HashMap<String, VecDeque<String>>,
    /// Derivations whose build stopped.
    finished: HashSet<String>,
    /// Error messages, colours removed.
    errors: Vec<String>,
    /// stderr lines that were not JSON.
    other: VecDeque<String>,
    /// With `-vv`: the last build log line, `[name] line`, for the caller to print.
    echo: Option<String>,
}

impl Watch {
    /// Takes one stderr line; returns the derivation whose build started or stopped, if any.
    fn take(&mut self, line: &str) -> Option<String> {
        let Some(json) = line.strip_prefix("@nix ") else {
            push_tail(&mut self.other, strip_ansi(line));
            return None;
        };
        let ev: LogEvent = serde_json::from_str(json).ok()?;
        match ev.action.as_str() {
            "start" if ev.kind == ACT_BUILD => {
                let drv = ev.fields.first()?.as_str()?.to_string();
                self.building.insert(ev.id, drv.clone());
                Some(drv)
            }
            "stop" => {
                let drv = self.building.remove(&ev.id)?;
                self.finished.insert(drv.clone());
                Some(drv)
            }
            "result" if ev.kind == RES_BUILD_LOG_LINE => {
                let drv = self.building.get(&ev.id)?;
                let text = strip_ansi(ev.fields.first()?.as_str()?);
                if self.echo.is_some() {
                    let name = drv.get(44..drv.len() - 4).unwrap_or(drv);
                    self.echo = Some(format!("[{name}] {text}"));
                }
                push_tail(self.logs.entry(drv.clone()).or_default(), text);
                None
            }
            "msg" if ev.level == 0 => {
                self.errors.push(strip_ansi(&ev.msg));
                None
            }
            _ => None,
        }
    }

    /// Why `host` was not built: the errors and logs of its derivations that failed.
    fn failure(
        &self,
        flake: &str,
        host: &Evaluated,
        closure: Option<&HashSet<String>>,
    ) -> BuildFailure {
        let mine = |drv: &str| closure.map_or(drv == host.drv, |c| c.contains(drv));
        let failed: Vec<&String> = self
            .finished
            .iter()
            .filter(|d| mine(d) && self.errors.iter().any(|e| e.contains(d.as_str())))
            .collect();
        let mut error: Vec<&str> = self
            .errors
            .iter()
            .filter(|e| failed.iter().any(|d| e.contains(d.as_str())) || e.contains(&host.drv))
            .map(String::as_str)
            .collect();
        if error.is_empty() {
            error = self.errors.iter().map(String::as_str).collect();
        }
        let mut log_tail = Vec::new();
        for d in &failed {
            if let Some(lines) = self.logs.get(*d) {
                log_tail.extend(lines.iter().cloned());
            }
        }
        if log_tail.is_empty() && failed.is_empty() {
            log_tail.extend(self.other.iter().cloned());
        }
        let keep = log_tail.len().saturating_sub(LOG_TAIL_LINES);
        BuildFailure {
            error: if error.is_empty() {
                "nix build failed".to_string()
            } else {
                error.join("\n")
            },
            log_tail: log_tail.split_off(keep),
            reproduce: reproduce_build(flake, &host.host),
        }
    }
}

fn push_tail(lines: &mut VecDeque<String>, line: String) {
    if lines.len() == LOG_TAIL_LINES {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// Builds every host's toplevel in one `nix build`; returns the hosts that failed.
pub fn build(
    flake: &str,
    hosts: &[Evaluated],
    max_jobs: Option<&str>,
    progress: &Progress,
    verbose: u8,
) -> BTreeMap<String, BuildFailure> {
    if hosts.is_empty() {
        return BTreeMap::new();
    }
    let closures = to_build(hosts);
    let mut done = vec![0usize; hosts.len()];
    for (i, h) in hosts.iter().enumerate() {
        let total = closures[i].as_ref().map(HashSet::len);
        progress.set(&h.host, HostState::Building { done: 0, total });
    }
    let version = nix_version(verbose);
    let mut cmd = nix::nix();
    cmd.args([
        "build",
        "--no-link",
        "--keep-going",
        "--log-format",
        "internal-json",
    ]);
    if let Some(j) = max_jobs {
        cmd.args(["--max-jobs", j]);
    }
    cmd.args(hosts.iter().map(|h| installable(&h.drv, version)));
    let cmdline = crate::process::describe(&cmd);
    if verbose >= 1 {
        progress.println(&format!("+ {cmdline}"));
    }
    let started = std::time::Instant::now();
    let mut watch = Watch {
        echo: (verbose >= 2).then(String::new),
        ..Watch::default()
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let status = match child {
        Err(e) => {
            watch.errors.push(format!("cannot start nix: {e}"));
            None
        }
        Ok(mut child) => {
            if let Some(stderr) = child.stderr.take() {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if verbose >= 2 && !line.starts_with("@nix ") {
                        progress.println(&line);
                    }
                    let seen = watch.take(&line);
                    if let Some(echo) = watch.echo.as_mut().filter(|e| !e.is_empty()) {
                        progress.println(echo);
                        echo.clear();
                    }
                    let Some(drv) = seen else {
                        continue;
                    };
                    if !watch.finished.contains(&drv) {
                        continue;
                    }
                    for (i, h) in hosts.iter().enumerate() {
                        let Some(c) = &closures[i] else { continue };
                        if c.contains(&drv) {
                            done[i] += 1;
                            let total = Some(c.len());
                            progress.set(
                                &h.host,
                                HostState::Building {
                                    done: done[i],
                                    total,
                                },
                            );
                        }
                    }
                }
            }
            child.wait().ok()
        }
    };
    crate::oplog::command(
        &cmdline,
        status.and_then(|s| s.code()),
        b"",
        watch.errors.join("\n").as_bytes(),
        started.elapsed().as_millis(),
    );
    if status.is_some_and(|s| s.success()) {
        return BTreeMap::new();
    }
    // Which toplevels are in the store now (a failed build can leave an unregistered file at
    // its out path, so existence is not enough).
    let invalid = invalid_paths(hosts, verbose);
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| invalid.as_ref().is_none_or(|i| i.contains(h.out.as_str())))
        .map(|(i, h)| {
            (
                h.host.clone(),
                watch.failure(flake, h, closures[i].as_ref()),
            )
        })
        .collect()
}

/// The hosts' out paths that are not valid in the local store (`None`: could not ask).
fn invalid_paths(hosts: &[Evaluated], verbose: u8) -> Option<HashSet<String>> {
    let mut cmd = std::process::Command::new("nix-store");
    cmd.args(["--check-validity", "--print-invalid"])
        .args(hosts.iter().map(|h| h.out.as_str()));
    let out = crate::process::run(&mut cmd, "nix-store --check-validity", verbose).ok()?;
    Some(out.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_removed_and_versions_pick_the_installable_syntax() {
        assert_eq!(
            strip_ansi("\u{1b}[31;1merror:\u{1b}[0m builder for 'x' failed"),
            "error: builder for 'x' failed"
        );
        assert_eq!(installable("/nix/store/a.drv", (2, 8)), "/nix/store/a.drv");
        assert_eq!(
            installable("/nix/store/a.drv", (2, 24)),
            "/nix/store/a.drv^*"
        );
    }

    #[test]
    fn build_log_lines_and_errors_are_kept_per_derivation() {
        let mut w = Watch::default();
        let drv = "/nix/store/24vbqkpm3y5icv9ba4bbnbwdra3l2s7b-nixos-system-b.drv";
        let start = format!(
            r#"@nix {{"action":"start","fields":["{drv}","",1,1],"id":7,"level":3,"text":"building","type":105}}"#
        );
        assert_eq!(w.take(&start).as_deref(), Some(drv));
        w.take(r#"@nix {"action":"result","fields":["boom"],"id":7,"type":101}"#);
        assert_eq!(
            w.take(r#"@nix {"action":"stop","id":7}"#).as_deref(),
            Some(drv)
        );
        w.take(&format!(
            r#"@nix {{"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m builder for '{drv}' failed with exit code 3"}}"#
        ));
        assert!(w.finished.contains(drv));
        assert_eq!(w.logs[drv], ["boom"]);
        assert_eq!(
            w.errors,
            [format!(
                "error: builder for '{drv}' failed with exit code 3"
            )]
        );
    }
}
