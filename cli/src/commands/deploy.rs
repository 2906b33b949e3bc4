//! `nixfleet deploy`: with `--ssh`, build each host's system and switch it over SSH with no
//! control plane; without, create a release (or take `--release`) and a rollout of it.
//!
//! Per host: `nix build` the toplevel → `nix-copy-closure` → check the path on the target and
//! start the detached activation there (`ssh::Remote::launch`: profile, `switch-to-configuration
//! <mode>`, then a watchdog) → wait for the switch → run the health checks over ssh → confirm,
//! or ask the target to roll back → notify the control plane if one is configured, with what
//! the machine ends up running (the new path, or the previous one after a rollback). A dropped
//! connection or a killed CLI means no confirmation, so the target rolls itself back.
//! Hosts are independent: one failing does not stop the others; the exit code says whether any
//! failed.

use crate::build;
use crate::client::Client;
use crate::commands::{notify, release, rollout, SshOpts};
use crate::error::{CliError, Result};
use crate::eval;
use crate::nix;
use crate::output;
use crate::progress::{HostState, Progress};
use crate::settings::Settings;
use crate::ssh::{
    Activation, DeployId, DeployPlan, HealthCheck, Launched, Remote, SshTarget, Step, StepError,
    TargetState,
};
use clap::Args;
use nixfleet_ids::StorePath;
use nixfleet_proto::api::v1::Release;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use summary::{failed, HostDone, HostOutcome, HostSkipped, Summary};

mod summary;

/// Pause between two rounds of failing health checks.
const CHECK_RETRY: Duration = Duration::from_secs(1);

/// Time kept back from `--confirm-timeout` for the confirmation itself to reach the target.
const CONFIRM_MARGIN: Duration = Duration::from_secs(1);

/// `nixfleet deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Deploy over SSH directly, without the control plane.
    #[arg(long, conflicts_with_all = rollout::BatchArgs::IDS)]
    pub ssh: bool,
    /// SSH destination (user@host); only when exactly one host matches [default: root@<host>].
    #[arg(long, requires = "ssh")]
    pub target: Option<String>,
    /// The flake holding nixosConfigurations.
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// Hosts to deploy: comma-separated globs over nixosConfigurations names.
    #[arg(long, default_value = "*")]
    pub hosts: String,
    /// Extra ssh options (`--ssh-opts`, default $NIX_SSHOPTS).
    #[command(flatten)]
    pub ssh_opts: SshOpts,
    /// Build and show what would be switched; copy and switch nothing.
    #[arg(long, requires = "ssh")]
    pub dry_run: bool,
    /// Hosts copied to and switched at the same time (all hosts are built in one `nix build`).
    #[arg(long, short = 'j', default_value_t = 8, requires = "ssh")]
    pub jobs: usize,
    /// Hosts that ssh cannot reach are skipped and counted, not failures.
    #[arg(long, requires = "ssh")]
    pub skip_unreachable: bool,
    /// Builds Nix runs at once (`nix build --max-jobs`) [default: Nix's own setting].
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<String>,
    /// switch-to-configuration mode: switch (now and at boot), boot (next boot only), test (now only).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Activation::Switch)]
    pub activation: Activation,
    /// Seconds the target waits, after its switch, for the CLI's confirmation before it rolls itself back.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub confirm_timeout: u64,
    /// No watchdog on the target: a failed switch or health check leaves it as it is.
    #[arg(long, requires = "ssh")]
    pub no_rollback: bool,
    /// Health check: this shell command, run on the target, must exit 0 (repeatable).
    #[arg(long, value_name = "CMD", requires = "ssh")]
    pub check_cmd: Vec<String>,
    /// Health check: a GET of this URL, made on the target with curl, must answer 2xx (repeatable).
    #[arg(long, value_name = "URL", requires = "ssh")]
    pub check_http: Vec<String>,
    /// Health check: `systemctl is-active UNIT` on the target must print active (repeatable).
    #[arg(long, value_name = "UNIT", requires = "ssh")]
    pub check_unit: Vec<String>,
    /// Seconds one run of one health check may take.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub check_timeout: u64,

    /// Roll out this existing release instead of building one.
    #[arg(long, conflicts_with_all = ["ssh", "push_to", "copy", "eval_only"], help_heading = "Rollout mode (without --ssh)")]
    pub release: Option<String>,
    /// Push the closures to this store URL (see `release create --push-to`).
    #[arg(long, value_name = "URL", conflicts_with_all = ["ssh", "copy", "eval_only"], help_heading = "Rollout mode (without --ssh)")]
    pub push_to: Option<String>,
    /// Copy each closure straight to its host.
    #[arg(long, conflicts_with_all = ["ssh", "eval_only"], help_heading = "Rollout mode (without --ssh)")]
    pub copy: bool,
    /// Only evaluate store paths (another machine builds and pushes).
    #[arg(
        long,
        conflicts_with = "ssh",
        help_heading = "Rollout mode (without --ssh)"
    )]
    pub eval_only: bool,
    /// The cache URL agents fetch from.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "ssh",
        help_heading = "Rollout mode (without --ssh)"
    )]
    pub cache_url: Option<String>,
    /// Target machines carrying all these tags [default: the hosts of --hosts].
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "ssh",
        help_heading = "Rollout mode (without --ssh)"
    )]
    pub tags: Vec<String>,
    /// How the machines are cut into batches and how a batch is judged.
    #[command(flatten, next_help_heading = "Rollout mode (without --ssh)")]
    pub batches: rollout::BatchArgs,
    /// Show the batches and start nothing.
    #[arg(
        long,
        conflicts_with = "ssh",
        help_heading = "Rollout mode (without --ssh)"
    )]
    pub plan: bool,
    /// Wait for the rollout to end; the exit code says how it ended.
    #[arg(long, conflicts_with_all = ["ssh", "plan"], help_heading = "Rollout mode (without --ssh)")]
    pub wait: bool,
    /// With --wait, give up after this many seconds (0: never).
    #[arg(
        long,
        default_value_t = 600,
        help_heading = "Rollout mode (without --ssh)"
    )]
    pub wait_timeout: u64,
}

/// Rollout mode: create (or reuse) a release, then a rollout of it.
fn rollout_mode(settings: &Settings, args: DeployArgs) -> Result<()> {
    let release_id = match &args.release {
        Some(id) => crate::client::path_id("--release", id, nixfleet_ids::ReleaseId::parse)?,
        None => {
            let create = release::CreateArgs {
                flake: args.flake.clone(),
                hosts: args.hosts.clone(),
                push_to: args.push_to.clone(),
                copy: args.copy,
                hook: false,
                eval_only: args.eval_only,
                cache_url: args.cache_url.clone(),
                ssh_opts: args.ssh_opts.clone(),
                dry_run: false,
                allow_partial: false,
                max_jobs: args.max_jobs.clone(),
            };
            release::create(settings, &create)?
                .ok_or_else(|| CliError::failed("no release was created"))?
        }
    };
    let hosts = if args.tags.is_empty() {
        let rel: Release = Client::new(settings)?.get(&format!("/api/v1/releases/{release_id}"))?;
        let names: Vec<String> = rel.entries.iter().map(|e| e.hostname.clone()).collect();
        let picked = nix::filter_hosts(&names, &args.hosts);
        if picked.is_empty() {
            return Err(CliError::usage(format!(
                "--hosts {:?} matches none of release {release_id}'s hosts ({})",
                args.hosts,
                names.join(", ")
            )));
        }
        picked
    } else {
        Vec::new()
    };
    let create = rollout::CreateArgs {
        release: release_id,
        batches: args.batches,
        tags: args.tags,
        hosts,
        cache_url: args.cache_url,
        seed: None,
        plan: args.plan,
        wait: args.wait,
        wait_timeout: args.wait_timeout,
    };
    rollout::create(settings, &create).map(|_| ())
}

/// Runs `nixfleet deploy`; the SSH mode is below, the rollout mode above.
pub fn run(settings: &Settings, args: DeployArgs) -> Result<()> {
    let log = crate::oplog::start("deploy");
    if let (Some(path), true) = (&log, settings.verbose >= 1) {
        eprintln!("oplog: {}", path.display());
    }
    if !args.ssh {
        return rollout_mode(settings, args);
    }
    nix::check_flake_ref(&args.flake).map_err(CliError::Usage)?;
    let started = Instant::now();
    let evaluation = eval::select(&args.flake, &args.hosts, settings.verbose)?;
    let count = evaluation.selected();
    let target = match &args.target {
        Some(_) if count != 1 => {
            let mut names: Vec<&str> = evaluation.ok.iter().map(|e| e.host.as_str()).collect();
            names.extend(evaluation.failed.iter().map(|f| f.host.as_str()));
            return Err(CliError::usage(format!(
                "--target works with exactly one host but --hosts matches {count} ({}); narrow --hosts",
                names.join(", ")
            )));
        }
        Some(t) => Some(SshTarget::parse(t).map_err(CliError::Usage)?),
        None => None,
    };
    let ssh_opts = args.ssh_opts.as_str().to_string();
    let checks = health_checks(&args)?;
    let progress = Progress::new("deploying", count);

    // One build of every host's toplevel; then hosts are independent, up to --jobs of them are
    // copied and switched at once.
    let mut outcomes: Vec<(String, HostOutcome)> = Vec::new();
    for f in &evaluation.failed {
        let e = StepError {
            step: Step::Eval,
            message: eval::tail(&f.error, 1),
            detail: format!("{}\nreproduce: {}", f.error, f.reproduce),
        };
        outcomes.push((f.host.clone(), failed(&progress, &f.host, e)));
    }
    let failures = build::build(
        &args.flake,
        &evaluation.ok,
        args.max_jobs.as_deref(),
        &progress,
        settings.verbose,
    );
    let mut built = Vec::new();
    for e in &evaluation.ok {
        match failures.get(&e.host) {
            Some(f) => {
                let detail = format!(
                    "{}\n{}\nreproduce: {}",
                    f.error,
                    f.log_tail.join("\n"),
                    f.reproduce
                );
                let err = StepError {
                    step: Step::Build,
                    message: eval::tail(&f.error, 1),
                    detail,
                };
                outcomes.push((e.host.clone(), failed(&progress, &e.host, err)));
            }
            None => built.push((e.host.clone(), e.out.clone())),
        }
    }
    let jobs = args.jobs.clamp(1, built.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, HostOutcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((host, path)) = built.get(i) else {
                    break;
                };
                let one = One {
                    settings,
                    progress: &progress,
                    host,
                    n: i,
                    checks: &checks,
                    args: &args,
                };
                let outcome = one.deploy(path, target.as_ref(), &ssh_opts);
                results
                    .lock()
                    .expect("a deploy thread panicked while holding the results")
                    .push((host.clone(), outcome));
            });
        }
    });
    progress.finish();
    outcomes.extend(
        results
            .into_inner()
            .expect("a deploy thread panicked while holding the results"),
    );
    let mut summary = Summary::default();
    for (_, outcome) in outcomes {
        match outcome {
            HostOutcome::Done(d) => summary.succeeded.push(d),
            HostOutcome::Failed(f) => summary.failed.push(f),
            HostOutcome::Skipped(k) => summary.skipped.push(k),
        }
    }
    summary.failed.sort_by(|a, b| a.host.cmp(&b.host));
    if settings.json {
        output::json(&summary)?;
    } else {
        output::line(format!(
            "Deploy complete: {} succeeded, {} failed, {} unreachable skipped ({:.1}s)\n{}",
            summary.succeeded.len(),
            summary.failed.len(),
            summary.skipped.len(),
            started.elapsed().as_secs_f64(),
            summary.table().render().trim_end()
        ))?;
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = summary.failed.iter().map(|f| f.host.as_str()).collect();
        Err(CliError::failed(format!(
            "deploy failed on {} host(s): {}; fix the errors above and re-run with --hosts {}{}",
            names.len(),
            names.join(", "),
            names.join(","),
            log.map(|p| format!(" (every command and its output: {})", p.display()))
                .unwrap_or_default()
        )))
    }
}

/// One host's deploy: what it needs from the command, and where it reports.
struct One<'a> {
    settings: &'a Settings,
    progress: &'a Progress,
    host: &'a str,
    n: usize,
    checks: &'a [HealthCheck],
    args: &'a DeployArgs,
}

impl One<'_> {
    /// Deploys one built host and reports the outcome as it happens.
    fn deploy(&self, path: &StorePath, target: Option<&SshTarget>, ssh_opts: &str) -> HostOutcome {
        let (host, args) = (self.host, self.args);
        let host_started = Instant::now();
        let remote = match nix::check_host_name(host).and_then(|()| match target {
            Some(t) => Ok(t.clone()),
            None => SshTarget::root_at(host),
        }) {
            Ok(t) => Remote::new(t, ssh_opts, self.settings.verbose),
            Err(m) => return failed(self.progress, host, StepError::new(Step::Eval, m)),
        };
        if !args.dry_run {
            let to = format!("connecting to {}", remote.target);
            self.progress.set(host, HostState::Working(to));
            if let Err(e) = remote.reachable() {
                if args.skip_unreachable {
                    self.progress.set(
                        host,
                        HostState::Skipped(format!("unreachable: {}", e.message)),
                    );
                    return HostOutcome::Skipped(HostSkipped {
                        host: host.to_string(),
                        reason: e.message,
                    });
                }
                let message = format!(
                    "{} is unreachable ({}); pass --skip-unreachable to skip such hosts",
                    remote.target, e.message
                );
                return failed(self.progress, host, StepError { message, ..e });
            }
        }
        let result = if args.dry_run {
            Ok(path.clone())
        } else {
            self.deploy_host(path, &remote)
        };
        match result {
            Ok(path) => {
                let seconds = host_started.elapsed().as_secs_f64();
                let did = match (args.dry_run, args.activation) {
                    (true, _) => "would switch to",
                    (false, Activation::Switch) => "switched to",
                    (false, Activation::Boot) => "set the boot default to",
                    (false, Activation::Test) => "switched (test: not the boot default) to",
                };
                self.progress.set(
                    host,
                    HostState::Done(format!("{did} {path} in {seconds:.2}s")),
                );
                HostOutcome::Done(HostDone {
                    host: host.to_string(),
                    store_path: path.to_string(),
                    seconds,
                })
            }
            Err(e) => failed(self.progress, host, e),
        }
    }

    /// A line about this host above the progress display.
    fn say(&self, what: impl std::fmt::Display) {
        self.progress.println(&format!("[{}] {what}", self.host));
    }
}

/// The health checks of `--check-*`, validated.
fn health_checks(args: &DeployArgs) -> Result<Vec<HealthCheck>> {
    if args.confirm_timeout == 0 {
        return Err(CliError::usage(
            "--confirm-timeout must be at least 1 second (or pass --no-rollback for no watchdog)",
        ));
    }
    if args.check_timeout == 0 {
        return Err(CliError::usage("--check-timeout must be at least 1 second"));
    }
    let mut checks = Vec::new();
    for c in &args.check_cmd {
        if c.trim().is_empty() {
            return Err(CliError::usage("--check-cmd: give a shell command"));
        }
        checks.push(HealthCheck::Command(c.clone()));
    }
    for u in &args.check_http {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || u.contains(char::is_whitespace)
        {
            return Err(CliError::usage(format!(
                "--check-http {u:?}: expected an http:// or https:// URL"
            )));
        }
        checks.push(HealthCheck::Http(u.clone()));
    }
    for u in &args.check_unit {
        if u.is_empty() || u.starts_with('-') || u.contains(char::is_whitespace) {
            return Err(CliError::usage(format!(
                "--check-unit {u:?}: expected a systemd unit name such as nginx.service"
            )));
        }
        checks.push(HealthCheck::Unit(u.clone()));
    }
    Ok(checks)
}

impl One<'_> {
    /// Copies, launches the detached activation, checks and confirms (or rolls back) one host.
    fn deploy_host(&self, path: &StorePath, remote: &Remote) -> Result<StorePath, StepError> {
        let (settings, host, n, checks, args) =
            (self.settings, self.host, self.n, self.checks, self.args);
        self.progress.set(
            host,
            HostState::Working(format!("copying {path} to {}", remote.target)),
        );
        remote.copy_closure(path)?;
        let plan = DeployPlan {
            mode: args.activation,
            confirm_timeout_secs: args.confirm_timeout,
            rollback: !args.no_rollback,
        };
        let id = DeployId::new(n);
        let launched = remote.launch(path, &id, &plan).map_err(|mut e| {
        if e.step == Step::Connect && plan.rollback {
            e.message = format!(
                "{}; if the activation started before the connection broke, the target rolls it back {}s after its switch (see {}/{id}/log there)",
                e.message,
                plan.confirm_timeout_secs,
                crate::ssh::DEPLOY_DIR
            );
        }
        e
    })?;
        if let Some((last, state)) = &launched.unseen_last {
            self.say(format!(
                "note: the previous deploy {last} ended while no CLI watched it: {state}"
            ));
        }
        if plan.rollback && launched.prev.is_none() {
            self.say(
                "no previous system generation on the target: a failure cannot be rolled back",
            );
        }
        self.say(format!(
            "switching ({}) on the target, detached ({}; state and log in {})",
            plan.mode, launched.via, launched.dir
        ));
        self.progress.set(
            host,
            HostState::Working(format!("switching ({})", plan.mode)),
        );
        let watch = Watch {
            settings,
            host,
            remote,
            launched: &launched,
            plan: &plan,
        };
        let (state, detail) = remote
            .wait_state(&launched.dir, false)
            .map_err(|e| watch.lost(e))?;
        let result = match state {
            TargetState::AwaitingConfirmation | TargetState::Done => {
                let window =
                    Duration::from_secs(plan.confirm_timeout_secs).saturating_sub(CONFIRM_MARGIN);
                let checked = run_checks(self, remote, checks, args.check_timeout, window);
                match (checked, plan.rollback) {
                (Ok(()), false) => Ok(()),
                (Ok(()), true) => {
                    if remote.confirm(&launched.dir).map_err(|e| watch.lost(e))? {
                        Ok(())
                    } else {
                        // The watchdog gave up first: report what it did.
                        let (state, detail) = remote
                            .wait_state(&launched.dir, true)
                            .map_err(|e| watch.lost(e))?;
                        let late = format!(
                            "the confirmation came too late (raise --confirm-timeout above {}s)",
                            plan.confirm_timeout_secs
                        );
                        watch.ended(state, detail, Step::Confirm, Some(&late))
                    }
                }
                (Err(why), false) => Err(StepError::new(
                    Step::HealthCheck,
                    format!(
                        "{why}; left as it is (--no-rollback): roll back with `nixfleet rollback --ssh --host {host}`"
                    ),
                )),
                (Err(why), true) => {
                    self.say(format!("{why}; asking the target to roll back"));
                    remote
                        .reject(&launched.dir, &why)
                        .map_err(|e| watch.lost(e))?;
                    let (state, detail) = remote
                        .wait_state(&launched.dir, true)
                        .map_err(|e| watch.lost(e))?;
                    watch.ended(state, detail, Step::HealthCheck, Some(&why))
                }
            }
            }
            other => watch.ended(other, detail, Step::Switch, None),
        };
        match result {
            Ok(()) => {
                notify::notify_deploy(settings, host, path);
                Ok(path.clone())
            }
            Err(e) => Err(e),
        }
    }
}

/// Runs every check until all pass in one round or `window` is over; the failure names the
/// first failing check.
fn run_checks(
    one: &One<'_>,
    remote: &Remote,
    checks: &[HealthCheck],
    timeout_secs: u64,
    window: Duration,
) -> std::result::Result<(), String> {
    if checks.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + window;
    one.progress
        .set(one.host, HostState::Working("health checks".to_string()));
    loop {
        let failed = checks.iter().find_map(|c| {
            remote
                .run_check(c, timeout_secs)
                .err()
                .map(|why| format!("health check {c} failed on {}: {why}", remote.target))
        });
        match failed {
            None => {
                one.say(format!("{} health check(s) passed", checks.len()));
                return Ok(());
            }
            Some(why) if Instant::now() + CHECK_RETRY < deadline => {
                one.say(format!("{why}; retrying"));
                std::thread::sleep(CHECK_RETRY);
            }
            Some(why) => return Err(why),
        }
    }
}

/// One host's running activation, for turning its end into the host's outcome.
struct Watch<'a> {
    settings: &'a Settings,
    host: &'a str,
    remote: &'a Remote,
    launched: &'a Launched,
    plan: &'a DeployPlan,
}

impl Watch<'_> {
    fn log(&self) -> String {
        format!("{}/log", self.launched.dir)
    }

    /// The CLI lost the target while the activation ran: say what the target will do alone.
    fn lost(&self, e: StepError) -> StepError {
        let alone = if self.plan.rollback {
            format!(
                "unless it was confirmed it rolls itself back {}s after its switch",
                self.plan.confirm_timeout_secs
            )
        } else {
            "it finishes the switch on its own (--no-rollback)".to_string()
        };
        StepError {
            step: e.step,
            message: format!(
                "lost {} during the deploy ({}); {alone}; its log: {}",
                self.remote.target,
                e.message,
                self.log()
            ),
            detail: e.detail,
        }
    }

    /// A final state → the host's outcome; `step` is what led there, `cause` what the CLI
    /// knows better than the target (a failed check, a late confirmation).
    fn ended(
        &self,
        state: TargetState,
        detail: String,
        step: Step,
        cause: Option<&str>,
    ) -> Result<(), StepError> {
        let (step, message) = match state {
            TargetState::Confirmed | TargetState::Done => return Ok(()),
            TargetState::RolledBack(why) => {
                // The control plane learns what the machine runs in the end.
                if let Some(prev) = &self.launched.prev {
                    notify::notify_deploy(self.settings, self.host, prev);
                }
                let prev = self
                    .launched
                    .prev
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "the previous generation".to_string());
                (
                    step,
                    format!(
                        "{}; {} rolled back to {prev}",
                        cause.unwrap_or(&why),
                        self.remote.target
                    ),
                )
            }
            TargetState::Failed(why) if !self.plan.rollback => (
                step,
                format!(
                    "{why}; roll back with `nixfleet rollback --ssh --host {}`",
                    self.host
                ),
            ),
            TargetState::Failed(why) => (
                step,
                format!(
                    "{why}; inspect {} (log: {})",
                    self.remote.target,
                    self.log()
                ),
            ),
            TargetState::RollbackFailed(why) => (
                Step::Rollback,
                format!(
                    "{why}; the rollback failed: inspect {} (log: {})",
                    self.remote.target,
                    self.log()
                ),
            ),
            TargetState::Died(why) => (
                step,
                format!(
                    "the deploy script on {} stopped ({why}); inspect it (log: {})",
                    self.remote.target,
                    self.log()
                ),
            ),
            TargetState::AwaitingConfirmation => (
                step,
                format!(
                    "{} still waits for a confirmation; inspect it (log: {})",
                    self.remote.target,
                    self.log()
                ),
            ),
        };
        Err(StepError {
            step,
            message,
            detail,
        })
    }
}
