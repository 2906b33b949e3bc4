//! SSH to one target: closure copy, system profile, `switch-to-configuration`, generations,
//! and the detached, self-rolling-back activation of `deploy --ssh`.
//!
//! A deploy does not switch inside the ssh session: it writes a small script to
//! `/nix/var/nixfleet/deploy/<id>/` on the target and starts it detached (a transient unit from
//! `systemd-run` when systemd runs the target, else `setsid nohup`), so a dropped connection
//! cannot interrupt the switch. The script sets the profile, switches, and then waits for the
//! CLI to confirm; without a confirmation in time (lost connection, failed health check, CLI
//! killed) or after a failed switch it sets the profile back and switches to the previous
//! generation itself, and writes what it did to `state` and `log` in that directory.
//!
//! Remote commands are fixed scripts into which only validated store paths are inserted, and
//! those are single-quoted too; targets are validated so that none can pass as an ssh option.
//! Extra ssh options come from `--ssh-opts` or `NIX_SSHOPTS`, split on whitespace the way Nix
//! splits `NIX_SSHOPTS`, and are handed to both `ssh` and `nix-copy-closure`.

use crate::process::{self, last_line, CommandFailed};
use nixfleet_ids::StorePath;
use std::fmt;
use std::process::Command;

/// The NixOS system profile.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// Exit codes of the activation script, one per step.
const INVALID: i32 = 90;
const NOT_A_SYSTEM: i32 = 91;
const SET_FAILED: i32 = 92;
const SWITCH_FAILED: i32 = 93;
const STATE_DIR_FAILED: i32 = 94;
const BUSY: i32 = 95;
const LAUNCH_FAILED: i32 = 96;

/// Where the detached activation keeps its script, state and log on the target: next to the
/// system profile (root-owned, on the same file system, and it survives a reboot).
pub const DEPLOY_DIR: &str = "/nix/var/nixfleet/deploy";

/// Deploy directories kept on the target (older ones are removed by the next deploy).
const DEPLOY_DIRS_KEPT: usize = 20;

/// Seconds a deploy waits for another one to the same machine to finish.
const LOCK_WAIT_SECS: u64 = 300;

/// ssh keepalives of the long-running sessions: a dead link is noticed within 15 s.
const KEEPALIVE: [&str; 4] = ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"];

pub use crate::process::quote;

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
    /// A health check after the switch.
    HealthCheck,
    /// Confirming the switch to the target's watchdog.
    Confirm,
    /// The target's own rollback.
    Rollback,
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
            Step::HealthCheck => "health-check",
            Step::Confirm => "confirm",
            Step::Rollback => "rollback",
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
        self.ssh_with(&[], script, what)
    }

    /// Runs a fixed shell script on the target with extra ssh options after the user's.
    fn ssh_with(&self, extra: &[&str], script: &str, what: &str) -> Result<String, CommandFailed> {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts)
            .args(extra)
            .args(["-o", "BatchMode=yes", "--"])
            .arg(self.target.to_string())
            .arg(script);
        process::run(&mut cmd, what, self.verbose)
    }

    /// Whether ssh reaches the target at all (`true` run there, 10 s to connect unless the
    /// user's options say otherwise): `Err` at [`Step::Connect`] when ssh itself fails.
    pub fn reachable(&self) -> Result<(), StepError> {
        match self.ssh_with(&["-o", "ConnectTimeout=10"], "true", "ssh") {
            Err(e) if e.code == Some(255) || e.code.is_none() => {
                Err(StepError::from_command(Step::Connect, e))
            }
            _ => Ok(()),
        }
    }

    /// `nix-copy-closure --to <target> <path>`.
    pub fn copy_closure(&self, path: &StorePath) -> Result<(), StepError> {
        let mut cmd = Command::new("nix-copy-closure");
        cmd.env("NIX_SSHOPTS", self.nix_sshopts())
            .arg("--to")
            .arg(self.target.to_string())
            .arg(path.as_str());
        process::run(
            &mut cmd,
            &format!("nix-copy-closure to {}", self.target),
            self.verbose,
        )
        .map(|_| ())
        .map_err(|e| StepError::from_command(Step::Copy, e))
    }

    /// On the target, in one ssh session (used by `rollback --ssh`): check that `path` is in its
    /// store and is a NixOS system, set the system profile to it (the boot default from now on),
    /// then run `switch-to-configuration <mode>` (`switch`, or `boot` to take effect at the next
    /// boot). Each step has its own exit code so the failing step is named; ssh itself fails
    /// with 255.
    pub fn activate(&self, path: &StorePath, mode: Activation) -> Result<(), StepError> {
        let p = quote(path.as_str());
        let script = format!(
            "nix-store --check-validity {p} >/dev/null 2>&1 || exit {INVALID}; \
             test -x {p}/bin/switch-to-configuration || exit {NOT_A_SYSTEM}; \
             nix-env -p {SYSTEM_PROFILE} --set {p} || exit {SET_FAILED}; \
             {p}/bin/switch-to-configuration {mode} || {{ echo \"switch-to-configuration exited $?\" >&2; exit {SWITCH_FAILED}; }}"
        );
        let what = format!("activating {path} on {}", self.target);
        let Err(e) = self.ssh(&script, &what) else {
            return Ok(());
        };
        Err(match e.code {
            Some(INVALID | NOT_A_SYSTEM) => self.check_error(path, e.code),
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

    /// The error of a path that is not in the target's store (`INVALID`) or is not a system.
    fn check_error(&self, path: &StorePath, code: Option<i32>) -> StepError {
        if code == Some(INVALID) {
            StepError::new(
                Step::Check,
                format!(
                    "{path} is not in the Nix store of {}; copy it first (nix-copy-closure --to {} {path}) or pick a generation listed by `nix-env -p {SYSTEM_PROFILE} --list-generations` there",
                    self.target, self.target
                ),
            )
        } else {
            StepError::new(
                Step::Check,
                format!("{path} has no bin/switch-to-configuration, so it is not a NixOS system; give a system toplevel"),
            )
        }
    }

    /// Starts the detached activation of `path` on the target (see the module doc) and returns
    /// at once. Checks the path first, waits for another deploy to the same machine to end,
    /// records the generation to go back to, and reports how the previous deploy ended if no
    /// CLI saw its end.
    pub fn launch(
        &self,
        path: &StorePath,
        id: &DeployId,
        plan: &DeployPlan,
    ) -> Result<Launched, StepError> {
        let p = quote(path.as_str());
        let id_q = quote(&id.0);
        let script = format!(
            "new={p}; id={id_q}; mode={mode}; base={DEPLOY_DIR}
nix-store --check-validity \"$new\" >/dev/null 2>&1 || exit {INVALID}
test -x \"$new/bin/switch-to-configuration\" || exit {NOT_A_SYSTEM}
mkdir -p \"$base\" || exit {STATE_DIR_FAILED}
waited=0
until mkdir \"$base/lock\" 2>/dev/null; do
  other=$(cat \"$base/lock/id\" 2>/dev/null)
  if [ -n \"$other\" ]; then
    st=$(head -n 1 \"$base/$other/state\" 2>/dev/null)
    pid=$(cat \"$base/$other/pid\" 2>/dev/null)
    case \"$st\" in
      starting|switching|rolling-back*|awaiting-confirmation)
        if [ -n \"$pid\" ] && ! kill -0 \"$pid\" 2>/dev/null; then rm -rf \"$base/lock\"; continue; fi ;;
      *) rm -rf \"$base/lock\"; continue ;;
    esac
  fi
  if [ \"$waited\" -ge {LOCK_WAIT_SECS} ]; then
    echo \"another deploy ($other) has held $base/lock for {LOCK_WAIT_SECS}s; if none runs, remove that directory\" >&2; exit {BUSY}
  fi
  sleep 1; waited=$((waited + 1))
done
last=$(cat \"$base/last\" 2>/dev/null)
if [ -n \"$last\" ] && [ -d \"$base/$last\" ] && [ ! -e \"$base/$last/seen\" ]; then
  printf 'last %s %s\\n' \"$last\" \"$(head -n 1 \"$base/$last/state\" 2>/dev/null)\"
  : > \"$base/$last/seen\"
fi
dir=\"$base/$id\"
mkdir \"$dir\" || {{ rm -rf \"$base/lock\"; exit {STATE_DIR_FAILED}; }}
printf 'starting\\n' > \"$dir/state\"
printf '%s\\n' \"$id\" > \"$base/lock/id\"
printf '%s\\n' \"$id\" > \"$base/last\"
prev=
if [ \"$mode\" = test ] && [ -e /run/current-system ]; then prev=$(readlink -f /run/current-system)
elif [ -e {SYSTEM_PROFILE} ]; then prev=$(readlink -f {SYSTEM_PROFILE}); fi
case \"$prev\" in /nix/store/*) [ -x \"$prev/bin/switch-to-configuration\" ] || prev= ;; *) prev= ;; esac
printf '%s\\n' \"$prev\" > \"$dir/prev\"
cat > \"$dir/activate.sh\" <<'NIXFLEET_ACTIVATE_EOF'
{activate}NIXFLEET_ACTIVATE_EOF
ls -1t \"$base\" | grep '^nixfleet-deploy-' | tail -n +{keep_from} | while read -r old; do rm -rf \"${{base:?}}/$old\"; done
printf 'prev %s\\ndir %s\\n' \"$prev\" \"$dir\"
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --unit=\"$id\" --description=\"nixfleet deploy of $new\" --collect --service-type=exec \\
    --setenv=PATH=\"$PATH\" /bin/sh \"$dir/activate.sh\" >/dev/null 2>\"$dir/launch.err\" \\
    || {{ cat \"$dir/launch.err\" >&2; printf 'failed: systemd-run failed\\n' > \"$dir/state\"; rm -rf \"$base/lock\"; exit {LAUNCH_FAILED}; }}
  echo 'via systemd-run'
elif command -v setsid >/dev/null 2>&1; then
  setsid nohup /bin/sh \"$dir/activate.sh\" </dev/null >\"$dir/out\" 2>&1 &
  echo 'via setsid'
else
  nohup /bin/sh \"$dir/activate.sh\" </dev/null >\"$dir/out\" 2>&1 &
  echo 'via nohup'
fi
",
            mode = plan.mode,
            activate = activate_script(path, id, plan),
            keep_from = DEPLOY_DIRS_KEPT + 1,
        );
        let what = format!("starting the activation of {path} on {}", self.target);
        let out = match self.ssh(&script, &what) {
            Ok(out) => out,
            Err(e) => {
                return Err(match e.code {
                    Some(INVALID | NOT_A_SYSTEM) => self.check_error(path, e.code),
                    Some(STATE_DIR_FAILED | LAUNCH_FAILED) => {
                        let mut err = StepError::from_command(Step::Switch, e);
                        err.message = format!(
                            "could not start the activation on {} (state directory {DEPLOY_DIR}): {}",
                            self.target,
                            last_line(&err.detail)
                        );
                        err
                    }
                    Some(BUSY) => {
                        let mut err = StepError::from_command(Step::Switch, e);
                        err.message = last_line(&err.detail).to_string();
                        err
                    }
                    _ => StepError::from_command(Step::Connect, e),
                })
            }
        };
        Ok(parse_launched(&out))
    }

    /// Waits until the activation in `dir` leaves its transient states (starting, switching,
    /// rolling back) and returns the state it is in, with the tail of its log when it ended
    /// badly. ssh keepalives make a dead link an error within 15 s.
    /// With `past_confirmation`, waiting for the confirmation is a transient state too (after
    /// the CLI rejected the switch or confirmed too late).
    pub fn wait_state(
        &self,
        dir: &str,
        past_confirmation: bool,
    ) -> Result<(TargetState, String), StepError> {
        let d = quote(dir);
        let transient = if past_confirmation {
            "starting|switching|rolling-back*|awaiting-confirmation"
        } else {
            "starting|switching|rolling-back*"
        };
        let script = format!(
            "d={d}
while :; do
  s=$(head -n 1 \"$d/state\" 2>/dev/null)
  case \"$s\" in
    {transient}) ;;
    *) printf '%s\\n' \"$s\"
       case \"$s\" in awaiting-confirmation) ;; *) : > \"$d/seen\" ;; esac
       case \"$s\" in failed*|rolled-back*|rollback-failed*) tail -n 15 \"$d/log\" 2>/dev/null ;; esac
       exit 0 ;;
  esac
  pid=$(cat \"$d/pid\" 2>/dev/null)
  if [ -n \"$pid\" ] && ! kill -0 \"$pid\" 2>/dev/null; then
    sleep 1
    [ \"$(head -n 1 \"$d/state\" 2>/dev/null)\" = \"$s\" ] && {{ printf 'died: the deploy script stopped while %s\\n' \"$s\"; tail -n 15 \"$d/log\" 2>/dev/null; exit 0; }}
  fi
  sleep 0.2 2>/dev/null || sleep 1
done"
        );
        let out = self
            .ssh_with(
                &KEEPALIVE,
                &script,
                &format!("waiting for the activation on {}", self.target),
            )
            .map_err(|e| StepError::from_command(Step::Connect, e))?;
        let (first, rest) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        Ok((TargetState::parse(first), rest.to_string()))
    }

    /// Confirms the switch: renames `armed` to `confirmed`, which the watchdog reads as "keep
    /// it". Returns false when the watchdog had already given up (the rename is atomic, so
    /// exactly one of the two wins).
    pub fn confirm(&self, dir: &str) -> Result<bool, StepError> {
        let script = format!(
            "cd {} && if mv armed confirmed 2>/dev/null; then : > seen; echo confirmed; else echo late; fi",
            quote(dir)
        );
        let out = self
            .ssh_with(
                &KEEPALIVE,
                &script,
                &format!("confirming the switch on {}", self.target),
            )
            .map_err(|e| StepError::from_command(Step::Confirm, e))?;
        Ok(out.trim() == "confirmed")
    }

    /// Tells the watchdog to roll back now, with `reason` for its log.
    pub fn reject(&self, dir: &str, reason: &str) -> Result<(), StepError> {
        let script = format!(
            "cd {} && printf '%s\\n' {} > reason && {{ mv armed rejected 2>/dev/null; true; }}",
            quote(dir),
            quote(reason)
        );
        self.ssh_with(
            &KEEPALIVE,
            &script,
            &format!("asking {} to roll back", self.target),
        )
        .map(|_| ())
        .map_err(|e| StepError::from_command(Step::Confirm, e))
    }

    /// Runs one health check on the target; `Err` holds why it failed, in one line.
    pub fn run_check(&self, check: &HealthCheck, timeout_secs: u64) -> Result<(), String> {
        let t = timeout_secs.max(1);
        let script = match check {
            HealthCheck::Command(c) => format!(
                "exec 1>&2; if command -v timeout >/dev/null 2>&1; then out=$(timeout {t} /bin/sh -c {q} 2>&1); else out=$(/bin/sh -c {q} 2>&1); fi; c=$?; \
                 [ $c -eq 0 ] && exit 0; [ $c -eq 124 ] && {{ echo 'timed out after {t}s'; exit 1; }}; \
                 echo \"exit $c${{out:+: $(printf '%s\\n' \"$out\" | tail -n 1)}}\"; exit 1",
                q = quote(c)
            ),
            HealthCheck::Http(url) => format!(
                "exec 1>&2; command -v curl >/dev/null 2>&1 || {{ echo 'curl is not installed on the target (NixOS: pkgs.curl)'; exit 1; }}; \
                 code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time {t} {u}); \
                 case \"$code\" in 2??) exit 0 ;; 000|'') echo 'no answer' ;; *) echo \"HTTP $code\" ;; esac; exit 1",
                u = quote(url)
            ),
            HealthCheck::Unit(unit) => format!(
                "exec 1>&2; s=$(systemctl is-active {u} 2>&1); [ \"$s\" = active ] && exit 0; echo \"unit is ${{s:-unknown}}\"; exit 1",
                u = quote(unit)
            ),
        };
        match self.ssh_with(
            &KEEPALIVE,
            &script,
            &format!("health check {check} on {}", self.target),
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.code == Some(255) => Err(format!("ssh to {} failed", self.target)),
            Err(e) => Err(tail_of_output(&e.stderr)),
        }
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

/// How the new system is activated: `switch-to-configuration <mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Activation {
    /// Now and at the next boot (the profile is set first).
    Switch,
    /// At the next boot only (the profile is set; the running system is left alone).
    Boot,
    /// Now only (the profile and the boot default are left alone).
    Test,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Switch => "switch",
            Activation::Boot => "boot",
            Activation::Test => "test",
        })
    }
}

/// The name of one deploy: its directory under [`DEPLOY_DIR`] and its systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployId(String);

impl DeployId {
    /// `nixfleet-deploy-<unix ms>-<pid>-<n>`: unique per CLI run and host.
    pub fn new(n: usize) -> DeployId {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        DeployId(format!("nixfleet-deploy-{ms}-{}-{n}", std::process::id()))
    }
}

impl fmt::Display for DeployId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the detached activation does.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// `switch-to-configuration` mode.
    pub mode: Activation,
    /// Seconds the target waits for the confirmation after the switch.
    pub confirm_timeout_secs: u64,
    /// Whether the target rolls back by itself (false: `--no-rollback`).
    pub rollback: bool,
}

/// What `launch` learnt on the target.
#[derive(Debug, Clone, Default)]
pub struct Launched {
    /// The deploy's directory on the target.
    pub dir: String,
    /// The generation a rollback returns to (none on a first deploy).
    pub prev: Option<StorePath>,
    /// The previous deploy, when no CLI saw how it ended: its id and final state.
    pub unseen_last: Option<(String, String)>,
    /// How it was started (systemd-run, setsid, nohup).
    pub via: String,
}

fn parse_launched(out: &str) -> Launched {
    let mut l = Launched::default();
    for line in out.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "prev" => l.prev = StorePath::try_from(value.trim()).ok(),
            "dir" => l.dir = value.trim().to_string(),
            "via" => l.via = value.trim().to_string(),
            "last" => {
                let (id, state) = value.split_once(' ').unwrap_or((value, ""));
                l.unseen_last = Some((id.to_string(), state.trim().to_string()));
            }
            _ => {}
        }
    }
    l
}

/// Where the detached activation stands, from the first line of its `state` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Switched; waiting for the confirmation.
    AwaitingConfirmation,
    /// Switched with no watchdog (`--no-rollback`).
    Done,
    /// Confirmed in time.
    Confirmed,
    /// Failed and left as it is (why).
    Failed(String),
    /// Rolled back to the previous generation (why).
    RolledBack(String),
    /// The rollback itself failed (why).
    RollbackFailed(String),
    /// The script stopped without finishing, or wrote something unknown.
    Died(String),
}

impl TargetState {
    /// Parses a state line.
    pub fn parse(line: &str) -> TargetState {
        let line = line.trim();
        let (kind, why) = line.split_once(": ").unwrap_or((line, ""));
        let why = why.to_string();
        match kind {
            "awaiting-confirmation" => TargetState::AwaitingConfirmation,
            "done" => TargetState::Done,
            "confirmed" => TargetState::Confirmed,
            "failed" => TargetState::Failed(why),
            "rolled-back" => TargetState::RolledBack(why),
            "rollback-failed" => TargetState::RollbackFailed(why),
            "died" => TargetState::Died(why),
            "" => TargetState::Died("no state file".to_string()),
            other => TargetState::Died(format!("unknown state {other:?}")),
        }
    }
}

/// A health check the CLI runs on the target, over ssh, after the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `sh -c <command>` exits 0.
    Command(String),
    /// A GET (curl on the target) answers 2xx.
    Http(String),
    /// `systemctl is-active <unit>` prints `active`.
    Unit(String),
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthCheck::Command(c) => write!(f, "`{c}`"),
            HealthCheck::Http(u) => write!(f, "GET {u}"),
            HealthCheck::Unit(u) => write!(f, "unit {u}"),
        }
    }
}

/// The last non-empty line of a check's output, at most 300 bytes.
fn tail_of_output(text: &str) -> String {
    let line = last_line(text);
    let mut end = line.len().min(300);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    if line.is_empty() {
        "failed with no output".to_string()
    } else {
        line[..end].to_string()
    }
}

/// The script that runs detached on the target: set the profile, switch, wait for the
/// confirmation, roll back without it. Its states, one line in `state`: starting, switching,
/// awaiting-confirmation, then confirmed / done, or failed: / rolling-back: / rolled-back: /
/// rollback-failed: with the reason. `armed` exists while it waits; the CLI renames it to
/// `confirmed` (keep) or `rejected` (roll back now, the reason in `reason`), the script to
/// `expired` when the time is up; a rename is atomic, so exactly one of them wins.
fn activate_script(path: &StorePath, id: &DeployId, plan: &DeployPlan) -> String {
    format!(
        "#!/bin/sh
# nixfleet deploy {id}: written by `nixfleet deploy --ssh`; see docs/cli.md.
id={id_q}
new={new}
mode={mode}
timeout={timeout}
watchdog={watchdog}
{ACTIVATE_BODY}",
        id_q = quote(&id.0),
        new = quote(path.as_str()),
        mode = plan.mode,
        timeout = plan.confirm_timeout_secs,
        watchdog = u8::from(plan.rollback),
    )
}

const ACTIVATE_BODY: &str = r#"profile=/nix/var/nix/profiles/system
cd "$(dirname "$0")" || exit 1
echo $$ > pid
prev=$(cat prev 2>/dev/null)
back=switch
[ "$mode" = boot ] && back=boot
[ "$mode" = test ] && back=test
log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >> log; }
state() { printf '%s\n' "$*" > state.tmp && mv -f state.tmp state; log "$*"; }
nap() { sleep 0.2 2>/dev/null || sleep 1; }
# At the end, give a watching CLI 2 s to mark the end seen (so the next deploy does not
# report it as unseen), then let the next deploy in.
unlock() {
  i=0; while [ ! -e seen ] && [ "$i" -lt 10 ]; do nap; i=$((i + 1)); done
  [ "$(cat ../lock/id 2>/dev/null)" = "$id" ] && rm -rf ../lock
}
trap unlock EXIT
rollback() {
  if [ "$watchdog" != 1 ]; then state "failed: $1; left as it is (--no-rollback)"; exit 1; fi
  if [ -z "$prev" ]; then state "failed: $1; no previous generation to roll back to"; exit 1; fi
  state "rolling-back: $1"
  if [ "$mode" != test ]; then
    nix-env -p "$profile" --set "$prev" >> log 2>&1 || { state "rollback-failed: $1; nix-env --set $prev exited $?"; exit 1; }
  fi
  "$prev/bin/switch-to-configuration" "$back" >> log 2>&1 || { state "rollback-failed: $1; $prev/bin/switch-to-configuration $back exited $?"; exit 1; }
  state "rolled-back: $1"
  exit 1
}
log "deploy $id: $mode $new; previous: ${prev:-none}; watchdog: $watchdog (${timeout}s)"
state switching
if [ "$mode" != test ]; then
  nix-env -p "$profile" --set "$new" >> log 2>&1 || { state "failed: nix-env --set $new exited $?; nothing changed"; exit 1; }
fi
"$new/bin/switch-to-configuration" "$mode" >> log 2>&1
c=$?
[ "$c" -eq 0 ] || rollback "switch-to-configuration $mode exited $c"
if [ "$watchdog" != 1 ]; then state done; exit 0; fi
: > armed
state awaiting-confirmation
# Whole seconds: +1 so that the wait is never shorter than the timeout.
end=$(( $(date +%s) + timeout + 1 ))
while [ -e armed ] && [ "$(date +%s)" -lt "$end" ]; do nap; done
if [ -e confirmed ]; then state confirmed; exit 0; fi
if mv armed expired 2>/dev/null; then rollback "no confirmation within ${timeout}s"; fi
if [ -e confirmed ]; then state confirmed; exit 0; fi
rollback "$(head -n 1 reason 2>/dev/null || echo 'rejected by the CLI')"
"#;

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
    fn target_states_parse_with_their_reasons() {
        assert_eq!(
            TargetState::parse("awaiting-confirmation\n"),
            TargetState::AwaitingConfirmation
        );
        assert_eq!(
            TargetState::parse("rolled-back: no confirmation within 30s"),
            TargetState::RolledBack("no confirmation within 30s".to_string())
        );
        assert_eq!(
            TargetState::parse("failed: x: y"),
            TargetState::Failed("x: y".to_string())
        );
        assert!(matches!(TargetState::parse(""), TargetState::Died(_)));
        assert!(matches!(
            TargetState::parse("switching"),
            TargetState::Died(_)
        ));
    }

    #[test]
    fn launch_output_names_the_previous_generation_and_an_unseen_end() {
        let l = parse_launched(
            "last nixfleet-deploy-1-2-0 rolled-back: no confirmation within 3s\n\
             prev /nix/store/0123456789abcdfghijklmnpqrsvwxyz-g1\n\
             dir /nix/var/nixfleet/deploy/nixfleet-deploy-5-6-0\nvia systemd-run\n",
        );
        assert_eq!(
            l.prev.map(|p| p.to_string()).as_deref(),
            Some("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-g1")
        );
        assert_eq!(l.dir, "/nix/var/nixfleet/deploy/nixfleet-deploy-5-6-0");
        assert_eq!(l.via, "systemd-run");
        assert_eq!(
            l.unseen_last,
            Some((
                "nixfleet-deploy-1-2-0".to_string(),
                "rolled-back: no confirmation within 3s".to_string()
            ))
        );
        assert_eq!(parse_launched("prev \ndir /d\n").prev, None);
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
