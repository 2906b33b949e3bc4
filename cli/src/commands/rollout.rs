//! `nixfleet rollout`: create (or plan), watch, resume, cancel and delete rollouts.
//!
//! Parameters are validated here before anything is sent (v0.1 accepted a bad threshold and
//! then failed on every executor tick), and `status --wait` turns the rollout's end state into
//! the exit code: completed or cancelled → 0, paused, failed or reverted → 1.

use crate::client::{path_id, query, Client};
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use crate::settings::Settings;
use crate::time;
use clap::{Args, Subcommand};
use nixfleet_ids::{MachineId, ReleaseId, RolloutId};
use nixfleet_proto::api::v1::{
    CreateRolloutRequest, CreateRolloutResponse, MachineHealth, RolloutDetail, RolloutTarget,
};
use std::time::{Duration, Instant};

/// `nixfleet rollout …`.
#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Start a rollout of a release (or, with --plan, show its batches without starting it).
    Create(Box<CreateCmd>),
    /// Rollouts, newest first.
    List {
        /// Only rollouts in this status (running, paused, completed, failed, cancelled, reverted).
        #[arg(long)]
        status: Option<String>,
    },
    /// Batches, per-machine health and timeline of one rollout.
    Status(StatusArgs),
    /// Resume a paused rollout (its failed batch is tried again).
    Resume {
        /// r-….
        id: String,
    },
    /// Stop a rollout; machines already switched stay switched.
    Cancel {
        /// r-….
        id: String,
    },
    /// Delete a finished rollout.
    Delete {
        /// r-….
        id: String,
    },
}

/// `rollout create`.
#[derive(Debug, Args, Clone)]
pub struct CreateArgs {
    /// The release to roll out (rel-…).
    #[arg(long)]
    pub release: String,
    /// How the machines are cut into batches and how a batch is judged.
    #[command(flatten)]
    pub batches: BatchArgs,
    /// Target machines carrying all these tags (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "hosts",
        required_unless_present = "hosts"
    )]
    pub tags: Vec<String>,
    /// Target these machines (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Overrides the release's cache URL for this rollout.
    #[arg(long, value_name = "URL")]
    pub cache_url: Option<String>,
    /// Seed of the machine order (the same seed gives the same batches).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Show the batches the control plane would make, and start nothing.
    #[arg(long)]
    pub plan: bool,
    /// After creating, wait for the end like `rollout status --wait`.
    #[arg(long, conflicts_with = "plan")]
    pub wait: bool,
    /// With --wait: give up after this many seconds (0: never).
    #[arg(long, default_value_t = 600)]
    pub wait_timeout: u64,
}

/// How a rollout is cut into batches and how a batch is judged: the options `rollout create` and
/// `deploy` (rollout mode) share.
#[derive(Debug, Args, Clone, Default)]
pub struct BatchArgs {
    /// canary (1 machine, then the rest), staged (--batch-size) or all-at-once
    /// [default: [deploy] strategy, else canary; staged when --batch-size is given].
    #[arg(long)]
    pub strategy: Option<String>,
    /// Batch sizes for staged: counts or percentages of the remaining machines, e.g. 1,25%,100%.
    #[arg(long, value_delimiter = ',')]
    pub batch_size: Vec<String>,
    /// Unhealthy machines tolerated per batch: N or P% [default: [deploy] failure-threshold, else 0].
    #[arg(long)]
    pub failure_threshold: Option<String>,
    /// What a failed batch does: pause or revert [default: [deploy] on-failure, else pause].
    #[arg(long)]
    pub on_failure: Option<String>,
    /// Seconds a batch waits for health reports [default: [deploy] health-timeout, else 300].
    #[arg(long)]
    pub health_timeout: Option<u64>,
}

impl BatchArgs {
    /// The ids of these arguments, for a mode that conflicts with all of them (`deploy --ssh`).
    pub const IDS: [&'static str; 5] = [
        "strategy",
        "batch_size",
        "failure_threshold",
        "on_failure",
        "health_timeout",
    ];
}

/// `rollout create`: the request and its options.
#[derive(Debug, Args, Clone)]
pub struct CreateCmd {
    /// What to roll out, to which machines, and how batches are judged.
    #[command(flatten)]
    pub args: CreateArgs,
    /// How agents activate it.
    #[command(flatten)]
    pub options: OptionArgs,
}

/// `rollout create` options recorded with the rollout (`RolloutOptionsSet`).
#[derive(Debug, Args, Clone, Default)]
pub struct OptionArgs {
    /// How agents activate the release: switch (now and at boot), boot (at the next boot; a
    /// machine counts healthy once it is set to boot) or test (now, not at boot) [default: switch].
    #[arg(long, value_name = "MODE")]
    pub activation: Option<String>,
    /// A switch whose units failed to start (exit status 4) does not make its machine unhealthy;
    /// its health checks alone judge it.
    #[arg(long)]
    pub allow_failed_units: bool,
}

/// `rollout status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// r-….
    pub id: String,
    /// Poll until the rollout ends or pauses; the exit code says how it ended.
    #[arg(long, conflicts_with = "watch")]
    pub wait: bool,
    /// Redraw the status every --interval seconds until the rollout ends or pauses.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between polls.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 600)]
    pub wait_timeout: u64,
}

fn check_size(spec: &str, what: &str, allow_zero: bool) -> Result<()> {
    let bad = || {
        CliError::usage(format!(
            "{what} {spec:?}: use a count like 2 or a percentage like 25% ({})",
            if allow_zero {
                "0 to 100%"
            } else {
                "at least 1, at most 100%"
            }
        ))
    };
    match spec.strip_suffix('%') {
        Some(p) => {
            let p: u32 = p.parse().map_err(|_| bad())?;
            if p > 100 || (!allow_zero && p == 0) {
                return Err(bad());
            }
        }
        None => {
            let n: u64 = spec.parse().map_err(|_| bad())?;
            if !allow_zero && n == 0 {
                return Err(bad());
            }
        }
    }
    Ok(())
}

/// Validates the arguments and fills in defaults from `[deploy]`.
pub fn request(settings: &Settings, a: &CreateArgs) -> Result<CreateRolloutRequest> {
    let release_id = path_id("--release", &a.release, ReleaseId::parse)?;
    let b = &a.batches;
    let strategy = b
        .strategy
        .clone()
        .or_else(|| (!b.batch_size.is_empty()).then(|| "staged".to_string()))
        .or_else(|| settings.deploy.strategy.clone())
        .unwrap_or_else(|| "canary".to_string())
        .replace('-', "_");
    if !["canary", "staged", "all_at_once"].contains(&strategy.as_str()) {
        return Err(CliError::usage(format!(
            "--strategy {strategy:?}: use canary, staged or all-at-once"
        )));
    }
    if !b.batch_size.is_empty() && strategy != "staged" {
        return Err(CliError::usage(
            "--batch-size only applies to --strategy staged",
        ));
    }
    for s in &b.batch_size {
        check_size(s, "--batch-size", false)?;
    }
    let failure_threshold = b
        .failure_threshold
        .clone()
        .or_else(|| settings.deploy.failure_threshold.clone())
        .unwrap_or_else(|| "0".into());
    check_size(&failure_threshold, "--failure-threshold", true)?;
    let on_failure = b
        .on_failure
        .clone()
        .or_else(|| settings.deploy.on_failure.clone())
        .unwrap_or_else(|| "pause".into());
    if !["pause", "revert"].contains(&on_failure.as_str()) {
        return Err(CliError::usage(format!(
            "--on-failure {on_failure:?}: use pause or revert"
        )));
    }
    let health_timeout = b
        .health_timeout
        .or(settings.deploy.health_timeout)
        .unwrap_or(300);
    if health_timeout == 0 {
        return Err(CliError::usage(
            "--health-timeout must be at least 1 second",
        ));
    }
    let target = if a.hosts.is_empty() {
        RolloutTarget::Tags(a.tags.clone())
    } else {
        for h in &a.hosts {
            path_id("--hosts", h, MachineId::parse)?;
        }
        RolloutTarget::Hosts(a.hosts.clone())
    };
    Ok(CreateRolloutRequest {
        release_id,
        cache_url: a.cache_url.clone(),
        strategy,
        batch_sizes: (!a.batches.batch_size.is_empty()).then(|| a.batches.batch_size.clone()),
        failure_threshold: Some(failure_threshold),
        on_failure: Some(on_failure),
        health_timeout: Some(health_timeout),
        target,
        seed: a.seed,
        activation: None,
        allow_failed_units: None,
    })
}

/// Runs `rollout create` with the default options and returns the rollout id.
pub fn create(settings: &Settings, a: &CreateArgs) -> Result<String> {
    create_with(settings, a, &OptionArgs::default())
}

/// Adds the options to a create request; an unknown activation is a usage error.
pub fn with_options(mut req: CreateRolloutRequest, o: &OptionArgs) -> Result<CreateRolloutRequest> {
    if let Some(a) = &o.activation {
        if !["switch", "boot", "test"].contains(&a.as_str()) {
            return Err(CliError::usage(format!(
                "--activation {a:?}: use switch, boot or test"
            )));
        }
    }
    req.activation = o.activation.clone();
    req.allow_failed_units = o.allow_failed_units.then_some(true);
    Ok(req)
}

/// Runs `rollout create` and returns the rollout id the control plane answered with.
pub fn create_with(settings: &Settings, a: &CreateArgs, o: &OptionArgs) -> Result<String> {
    let req = with_options(request(settings, a)?, o)?;
    let client = Client::new(settings)?;
    let path = if a.plan {
        "/api/v1/rollouts/plan"
    } else {
        "/api/v1/rollouts"
    };
    let resp: CreateRolloutResponse = client.post(path, &req)?;
    if settings.json {
        output::json(&resp)?;
    } else {
        if a.plan {
            output::line(format!(
                "Plan (nothing started): {} in {}, seed {}",
                count(resp.total_machines, "machine"),
                count(resp.batches.len(), "batch"),
                resp.seed
            ))?;
        } else {
            output::line(format!(
                "Rollout {} created ({}, {})",
                resp.rollout_id,
                count(resp.batches.len(), "batch"),
                count(resp.total_machines, "machine")
            ))?;
        }
        let mut t = Table::new(&["BATCH", "MACHINES"]);
        for b in &resp.batches {
            t.row(vec![b.batch_index.to_string(), b.machine_ids.join(", ")]);
        }
        t.print()?;
    }
    if a.wait {
        wait(
            settings,
            &client,
            &resp.rollout_id,
            false,
            2,
            a.wait_timeout,
        )?;
    }
    Ok(resp.rollout_id)
}

/// "1 batch", "2 batches", "1 machine", "3 machines".
pub fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with("ch")) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

fn healthy_count(d: &RolloutDetail, batch: usize) -> usize {
    d.batches[batch]
        .machine_health
        .values()
        .filter(|h| **h == MachineHealth::Healthy)
        .count()
}

fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 10;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

/// The full status text of a rollout.
pub fn render(d: &RolloutDetail) -> String {
    let mut out = vec![format!(
        "Rollout {}  {}  {}  release {}\nthreshold {}, on failure {}, health timeout {}s, created {} by {}",
        d.id,
        d.status.to_uppercase(),
        d.strategy,
        d.release_id,
        d.failure_threshold,
        d.on_failure,
        d.health_timeout,
        time::short(&d.created_at),
        d.created_by
    )];
    if d.activation != "switch" || d.allow_failed_units {
        out.push(format!(
            "activation {}{}",
            d.activation,
            if d.allow_failed_units {
                ", failed units allowed"
            } else {
                ", failed units fail"
            }
        ));
    }
    if let Some(r) = &d.reason {
        out.push(format!("reason: {r}"));
    }
    out.push(String::new());
    let mut t = Table::new(&["BATCH", "STATUS", "MACHINES", "HEALTHY", "PROGRESS"]);
    for (i, b) in d.batches.iter().enumerate() {
        let healthy = healthy_count(d, i);
        t.row(vec![
            b.batch_index.to_string(),
            b.status.clone(),
            b.machine_ids.len().to_string(),
            format!("{healthy}/{}", b.machine_ids.len()),
            bar(healthy, b.machine_ids.len()),
        ]);
    }
    out.push(t.render());
    out.push(String::new());
    let mut m = Table::new(&["MACHINE", "BATCH", "HEALTH"]);
    for b in &d.batches {
        for id in &b.machine_ids {
            let h = match b.machine_health.get(id) {
                Some(MachineHealth::Healthy) => "healthy".to_string(),
                Some(MachineHealth::Unhealthy(why)) => format!("unhealthy: {why}"),
                Some(MachineHealth::Pending) | None => "pending".to_string(),
            };
            m.row(vec![id.clone(), b.batch_index.to_string(), h]);
        }
    }
    out.push(m.render());
    if !d.events.is_empty() {
        out.push(String::new());
        out.push("Timeline:".to_string());
        for e in &d.events {
            out.push(format!(
                "  {}  {:<14} {:<16} {}",
                time::short(&e.created_at),
                e.actor,
                e.event_type,
                e.detail
            ));
        }
    }
    out.join("\n")
}

/// One line summarizing progress, for `--wait`.
fn progress_line(d: &RolloutDetail) -> String {
    let total: usize = d.batches.iter().map(|b| b.machine_ids.len()).sum();
    let healthy: usize = (0..d.batches.len()).map(|i| healthy_count(d, i)).sum();
    let current = d
        .batches
        .iter()
        .find(|b| !matches!(b.status.as_str(), "succeeded"))
        .map(|b| {
            format!(
                "batch {}/{} {}",
                b.batch_index + 1,
                d.batches.len(),
                b.status
            )
        });
    format!(
        "{} {}: {} {healthy}/{total} healthy{}",
        d.id,
        d.status,
        bar(healthy, total),
        current.map(|c| format!(", {c}")).unwrap_or_default()
    )
}

/// Maps an end state to the exit; `None` while still running.
fn outcome(d: &RolloutDetail) -> Option<Result<()>> {
    let reason = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match d.status.as_str() {
        "completed" | "cancelled" => Some(Ok(())),
        "paused" => Some(Err(CliError::failed(format!(
            "rollout {} paused{reason}; fix the cause, then resume with: nixfleet rollout resume {}",
            d.id, d.id
        )))),
        "failed" | "reverted" => Some(Err(CliError::failed(format!("rollout {} {}{reason}", d.id, d.status)))),
        _ => None,
    }
}

fn wait(
    settings: &Settings,
    client: &Client,
    id: &str,
    watch: bool,
    interval: u64,
    timeout: u64,
) -> Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let d: RolloutDetail = client.get(&format!("/api/v1/rollouts/{id}"))?;
        if watch {
            output::line(format!("\x1b[2J\x1b[H{}", render(&d)))?;
        } else {
            let line = progress_line(&d);
            if line != last {
                eprintln!("{line}");
                last = line;
            }
        }
        if let Some(result) = outcome(&d) {
            if settings.json {
                output::json(&d)?;
            } else if !watch {
                output::line(format!("Rollout {} {}", d.id, d.status))?;
            }
            return result;
        }
        if timeout > 0 && started.elapsed() >= Duration::from_secs(timeout) {
            return Err(CliError::failed(format!(
                "rollout {id} is still {} after {timeout}s; keep watching with: nixfleet rollout status {id} --watch",
                d.status
            )));
        }
        std::thread::sleep(Duration::from_secs(interval.max(1)));
    }
}

/// Runs `nixfleet rollout …`.
pub fn run(settings: &Settings, cmd: RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Create(c) => create_with(settings, &c.args, &c.options).map(|_| ()),
        RolloutCmd::List { status } => {
            let pairs: Vec<(&str, String)> = status.into_iter().map(|s| ("status", s)).collect();
            let rollouts: Vec<RolloutDetail> =
                Client::new(settings)?.get(&format!("/api/v1/rollouts{}", query(&pairs)))?;
            if settings.json {
                return output::json(&rollouts);
            }
            let mut t = Table::new(&["ID", "STATUS", "STRATEGY", "BATCHES", "CREATED", "RELEASE"]);
            for r in &rollouts {
                let done = r.batches.iter().filter(|b| b.status == "succeeded").count();
                t.row(vec![
                    r.id.clone(),
                    r.status.clone(),
                    r.strategy.clone(),
                    format!("{done}/{}", r.batches.len()),
                    time::short(&r.created_at),
                    r.release_id.clone(),
                ]);
            }
            t.print()
        }
        RolloutCmd::Status(a) => {
            let id = path_id("rollout id", &a.id, RolloutId::parse)?;
            let client = Client::new(settings)?;
            if a.wait || a.watch {
                return wait(settings, &client, &id, a.watch, a.interval, a.wait_timeout);
            }
            let d: RolloutDetail = client.get(&format!("/api/v1/rollouts/{id}"))?;
            if settings.json {
                output::json(&d)
            } else {
                output::line(render(&d))
            }
        }
        RolloutCmd::Resume { id } => action(settings, &id, "resume", "Resumed"),
        RolloutCmd::Cancel { id } => action(settings, &id, "cancel", "Cancelled"),
        RolloutCmd::Delete { id } => {
            let id = path_id("rollout id", &id, RolloutId::parse)?;
            Client::new(settings)?.delete(&format!("/api/v1/rollouts/{id}"))?;
            if settings.json {
                output::json(&serde_json::json!({ "deleted": id }))
            } else {
                output::line(format!("Deleted rollout {id}"))
            }
        }
    }
}

fn action(settings: &Settings, id: &str, verb: &str, done: &str) -> Result<()> {
    let id = path_id("rollout id", id, RolloutId::parse)?;
    Client::new(settings)?.post_unit::<()>(&format!("/api/v1/rollouts/{id}/{verb}"), None)?;
    if settings.json {
        output::json(&serde_json::json!({ "rollout_id": id, "action": verb }))
    } else {
        output::line(format!("{done} rollout {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_go_into_the_request_and_an_unknown_activation_is_a_usage_error() {
        let base = CreateRolloutRequest {
            release_id: "rel-1".into(),
            cache_url: None,
            strategy: "canary".into(),
            batch_sizes: None,
            failure_threshold: None,
            on_failure: None,
            health_timeout: None,
            target: RolloutTarget::Tags(vec!["web".into()]),
            seed: None,
            activation: None,
            allow_failed_units: None,
        };
        let o = |a: Option<&str>, allow: bool| OptionArgs {
            activation: a.map(str::to_owned),
            allow_failed_units: allow,
        };
        let r = with_options(base.clone(), &o(Some("boot"), true)).expect("valid");
        assert_eq!(
            (r.activation.as_deref(), r.allow_failed_units),
            (Some("boot"), Some(true))
        );
        let r = with_options(base.clone(), &o(None, false)).expect("valid");
        assert_eq!((r.activation, r.allow_failed_units), (None, None));
        let e = with_options(base, &o(Some("reboot"), false)).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "--activation \"reboot\": use switch, boot or test"
        );
    }

    #[test]
    fn sizes_are_counts_or_percentages_within_bounds() {
        assert!(check_size("1", "x", false).is_ok());
        assert!(check_size("25%", "x", false).is_ok());
        assert!(check_size("0", "x", false).is_err());
        assert!(check_size("0", "x", true).is_ok());
        assert!(check_size("101%", "x", true).is_err());
        assert!(check_size("abc", "x", true).is_err());
        assert!(check_size("-1", "x", true).is_err());
    }

    #[test]
    fn progress_bars_fill_in_tenths() {
        assert_eq!(bar(0, 4), "[----------]");
        assert_eq!(bar(2, 4), "[#####-----]");
        assert_eq!(bar(0, 0), "[----------]");
    }
}
