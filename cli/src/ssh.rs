//! SSH to one target: closure copy, system profile, `switch-to-configuration`, generations.
//!
//! Remote commands are fixed scripts into which only validated store paths are inserted, and
//! those are single-quoted too; targets are validated so that none can pass as an ssh option.
//! Extra ssh options come from `--ssh-opts` or `NIX_SSHOPTS`, split on whitespace the way Nix
//! splits `NIX_SSHOPTS`, and are handed to both `ssh` and `nix-copy-closure`.

use crate::nix::{self, CommandFailed};
use crate::store_path::StorePath;
use std::fmt;
use std::process::Command;

/// The NixOS system profile.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// Exit codes of the activation script, one per step.
const INVALID: i32 = 90;
const NOT_A_SYSTEM: i32 = 91;
const SET_FAILED: i32 = 92;
const SWITCH_FAILED: i32 = 93;

/// Quotes a word for a POSIX shell.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `[user@]host` for ssh, checked so it cannot be read as an option or inject anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget(String);

impl SshTarget {
    /// Parses `user@host` or `host`.
    pub fn parse(raw: &str) -> Result<SshTarget, String> {
        let (user, host) = match raw.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, raw),
        };
        let user_ok = user.is_none_or(|u| {
            !u.is_empty()
                && !u.starts_with('-')
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
        let host_ok = !host.is_empty()
            && !host.starts_with('-')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:[]".contains(c));
        if user_ok && host_ok {
            Ok(SshTarget(raw.to_string()))
        } else {
            Err(format!(
                "--target {raw:?}: expected user@host or host (letters, digits, '.', '-', ':')"
            ))
        }
    }

    /// `root@<host>`, the default for NixOS machines.
    pub fn root_at(host: &str) -> Result<SshTarget, String> {
        SshTarget::parse(&format!("root@{host}"))
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The step of a remote operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Evaluating the flake.
    Eval,
    /// Building the toplevel.
    Build,
    /// nix-copy-closure.
    Copy,
    /// Reaching the target over ssh.
    Connect,
    /// Checking the path on the target.
    Check,
    /// Resolving the previous generation.
    Resolve,
    /// nix-env --set on the system profile.
    SetProfile,
    /// switch-to-configuration switch.
    Switch,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Eval => "eval",
            Step::Build => "build",
            Step::Copy => "copy",
            Step::Connect => "connect",
            Step::Check => "check",
            Step::Resolve => "resolve",
            Step::SetProfile => "set-profile",
            Step::Switch => "switch",
        })
    }
}

/// A failed step and why.
#[derive(Debug)]
pub struct StepError {
    /// Which step.
    pub step: Step,
    /// One line: what happened and what to do.
    pub message: String,
    /// The tail of the failing command's stderr, for the per-host report.
    pub detail: String,
}

impl StepError {
    /// From a failed command.
    pub fn from_command(step: Step, e: CommandFailed) -> StepError {
        StepError {
            step,
            message: e.to_string(),
            detail: e.stderr,
        }
    }
    /// A plain message.
    pub fn new(step: Step, message: impl Into<String>) -> StepError {
        StepError {
            step,
            message: message.into(),
            detail: String::new(),
        }
    }
}

/// One machine reached over ssh.
pub struct Remote {
    /// Where to.
    pub target: SshTarget,
    opts: Vec<String>,
    verbose: u8,
}

/// A generation link of the system profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// N in system-N-link.
    pub number: u64,
    /// What it points to.
    pub path: StorePath,
}

impl Remote {
    /// A remote with extra ssh options (`NIX_SSHOPTS` syntax).
    pub fn new(target: SshTarget, ssh_opts: &str, verbose: u8) -> Remote {
        Remote {
            target,
            opts: ssh_opts.split_whitespace().map(String::from).collect(),
            verbose,
        }
    }

    /// The options for `NIX_SSHOPTS`: the user's first (ssh keeps the first value), then BatchMode.
    fn nix_sshopts(&self) -> String {
        let mut all = self.opts.clone();
        all.extend(["-o".to_string(), "BatchMode=yes".to_string()]);
        all.join(" ")
    }

    /// Runs a fixed shell script on the target.
    fn ssh(&self, script: &str, what: &str) -> Result<String, CommandFailed> {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts)
            .args(["-o", "BatchMode=yes", "--"])
            .arg(self.target.to_string())
            .arg(script);
        nix::run(&mut cmd, what, self.verbose)
    }

    /// `nix-copy-closure --to <target> <path>`.
    pub fn copy_closure(&self, path: &StorePath) -> Result<(), StepError> {
        let mut cmd = Command::new("nix-copy-closure");
        cmd.env("NIX_SSHOPTS", self.nix_sshopts())
            .arg("--to")
            .arg(self.target.to_string())
            .arg(path.as_str());
        nix::run(
            &mut cmd,
            &format!("nix-copy-closure to {}", self.target),
            self.verbose,
        )
        .map(|_| ())
        .map_err(|e| StepError::from_command(Step::Copy, e))
    }

    /// On the target, in one ssh session: check that `path` is in its store and is a NixOS
    /// system, set the system profile to it (the boot default from now on), then run
    /// `switch-to-configuration switch`. Each step has its own exit code so the failing step
    /// is named; ssh itself fails with 255.
    pub fn activate(&self, path: &StorePath) -> Result<(), StepError> {
        let p = quote(path.as_str());
        let script = format!(
            "nix-store --check-validity {p} >/dev/null 2>&1 || exit {INVALID}; \
             test -x {p}/bin/switch-to-configuration || exit {NOT_A_SYSTEM}; \
             nix-env -p {SYSTEM_PROFILE} --set {p} || exit {SET_FAILED}; \
             {p}/bin/switch-to-configuration switch || {{ echo \"switch-to-configuration exited $?\" >&2; exit {SWITCH_FAILED}; }}"
        );
        let what = format!("activating {path} on {}", self.target);
        let Err(e) = self.ssh(&script, &what) else {
            return Ok(());
        };
        Err(match e.code {
            Some(INVALID) => StepError::new(
                Step::Check,
                format!(
                    "{path} is not in the Nix store of {}; copy it first (nix-copy-closure --to {} {path}) or pick a generation listed by `nix-env -p {SYSTEM_PROFILE} --list-generations` there",
                    self.target, self.target
                ),
            ),
            Some(NOT_A_SYSTEM) => StepError::new(
                Step::Check,
                format!("{path} has no bin/switch-to-configuration, so it is not a NixOS system; give a system toplevel"),
            ),
            Some(SET_FAILED) => StepError::from_command(Step::SetProfile, e),
            Some(SWITCH_FAILED) => {
                let mut err = StepError::from_command(Step::Switch, e);
                err.message = format!(
                    "switch-to-configuration failed on {}: {}; the system profile already points at {path}, so a reboot would boot it: inspect the machine, or go back with `nixfleet rollback --ssh`",
                    self.target,
                    err.detail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
                );
                err
            }
            _ => StepError::from_command(Step::Connect, e),
        })
    }

    /// The system profile's generations and the current one's number.
    pub fn generations(&self) -> Result<(u64, Vec<Generation>), StepError> {
        let script = format!(
            "cd {} && readlink system && for l in system-*-link; do [ -L \"$l\" ] && printf '%s %s\\n' \"$l\" \"$(readlink \"$l\")\"; done; true",
            quote(SYSTEM_PROFILE.trim_end_matches("/system"))
        );
        let out = self
            .ssh(&script, &format!("listing generations on {}", self.target))
            .map_err(|e| StepError::from_command(Step::Resolve, e))?;
        parse_generations(&out)
            .map_err(|why| StepError::new(Step::Resolve, format!("{}: {why}", self.target)))
    }
}

fn link_number(link: &str) -> Option<u64> {
    link.trim()
        .strip_prefix("system-")?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// Parses `readlink system` followed by `system-N-link <target>` lines.
pub fn parse_generations(out: &str) -> Result<(u64, Vec<Generation>), String> {
    let mut lines = out.lines();
    let current = lines.next().and_then(link_number).ok_or_else(|| {
        format!(
            "the system profile is not a generation link ({:?})",
            out.lines().next().unwrap_or("")
        )
    })?;
    let mut gens = Vec::new();
    for line in lines {
        let Some((link, target)) = line.split_once(' ') else {
            continue;
        };
        let (Some(number), Ok(path)) = (link_number(link), StorePath::try_from(target.trim()))
        else {
            continue;
        };
        gens.push(Generation { number, path });
    }
    gens.sort_by_key(|g| g.number);
    Ok((current, gens))
}

/// The generation just before `current`.
pub fn previous_generation(current: u64, gens: &[Generation]) -> Option<&Generation> {
    gens.iter()
        .filter(|g| g.number < current)
        .max_by_key(|g| g.number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_metacharacters() {
        assert_eq!(quote("/nix/store/abc-x"), "/nix/store/abc-x");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's;$(x)"), r"'it'\''s;$(x)'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn targets_that_look_like_options_are_refused() {
        assert!(SshTarget::parse("root@web-01").is_ok());
        assert!(SshTarget::parse("web-01.example.org").is_ok());
        assert!(SshTarget::parse("-oProxyCommand=sh").is_err());
        assert!(SshTarget::parse("root@-x").is_err());
        assert!(SshTarget::parse("root@web;reboot").is_err());
    }

    #[test]
    fn the_previous_generation_is_the_highest_number_below_the_current() {
        let out = "system-3-link\n\
            system-1-link /nix/store/0123456789abcdfghijklmnpqrsvwxyz-g1\n\
            system-2-link /nix/store/1123456789abcdfghijklmnpqrsvwxyz-g2\n\
            system-3-link /nix/store/2123456789abcdfghijklmnpqrsvwxyz-g3\n";
        let (current, gens) = parse_generations(out).expect("parses");
        assert_eq!(current, 3);
        assert_eq!(
            previous_generation(current, &gens).map(|g| g.number),
            Some(2)
        );
        assert_eq!(previous_generation(1, &gens), None);
    }
}
