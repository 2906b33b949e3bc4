//! `nixfleet release`: build every host of a flake, push the closures, record a release.
//!
//! A release is an immutable map host → system store path (plus platform and tags). Creating
//! one evaluates every selected host at once (`eval.rs`: one `nix eval`), builds all toplevels
//! in one `nix build` (`build.rs`), with per-host progress (`progress.rs`); hosts that fail to
//! evaluate or build are reported with their log tail and fail the command, unless
//! `--allow-partial` records a release of the others. Then it pushes the closures (`--push-to` a binary cache, `--copy` straight to each host, or nothing with
//! `--eval-only`), then posts the release. Rollouts then move machines to it.

use crate::build;
use crate::client::{path_id, query, Client};
use crate::commands::time;
use crate::commands::SshOpts;
use crate::error::{CliError, Result};
use crate::eval::{self, Evaluated};
use crate::nix;
use crate::output::{self, or_dash, Table};
use crate::process::last_line;
use crate::progress::{HostState, Progress};
use crate::settings::Settings;
use crate::ssh::{Remote, SshTarget};
use clap::{Args, Subcommand};
use nixfleet_ids::ReleaseId;
use nixfleet_ids::StorePath;
use nixfleet_proto::api::v1::{
    CreateReleaseRequest, CreateReleaseResponse, Release, ReleaseDiff, ReleaseEntry,
};
use serde::Serialize;

/// `nixfleet release …`.
#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Build hosts of a flake, push their closures and record a release.
    Create(CreateArgs),
    /// Releases, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only releases containing this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// One release with its hosts.
    Show {
        /// rel-….
        id: String,
    },
    /// What changes between two releases, host by host.
    Diff {
        /// The older release.
        a: String,
        /// The newer release.
        b: String,
    },
    /// Delete a release no rollout refers to.
    Delete {
        /// rel-….
        id: String,
    },
}

/// `release create`.
#[derive(Debug, Args, Clone)]
pub struct CreateArgs {
    /// The flake holding nixosConfigurations.
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// Hosts to include: comma-separated globs.
    #[arg(long, default_value = "*")]
    pub hosts: String,
    /// Push closures to this store URL with `nix copy --to` (e.g. s3://…, ssh://cache, file:///srv/cache).
    #[arg(long, value_name = "URL", conflicts_with_all = ["copy", "eval_only", "hook"])]
    pub push_to: Option<String>,
    /// Copy each closure straight to its host (`nix-copy-closure --to root@<host>`).
    #[arg(long, conflicts_with_all = ["eval_only", "hook"])]
    pub copy: bool,
    /// Push each closure with the [cache.hook] push-cmd of .nixfleet.toml (`{}` is the store
    /// path; run by `sh -c`), and default the cache URL to [cache.hook] url.
    #[arg(long, conflicts_with = "eval_only")]
    pub hook: bool,
    /// Only evaluate the store paths; build and push nothing (another machine builds).
    #[arg(long)]
    pub eval_only: bool,
    /// The cache URL agents fetch from [default: [cache] url of .nixfleet.toml].
    #[arg(long, value_name = "URL")]
    pub cache_url: Option<String>,
    /// Extra ssh options (`--ssh-opts`, default $NIX_SSHOPTS).
    #[command(flatten)]
    pub ssh_opts: SshOpts,
    /// Build and push, then print the release instead of posting it.
    #[arg(long)]
    pub dry_run: bool,
    /// When some hosts fail to evaluate or build, record a release of the others (and name the
    /// missing ones) instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
    /// Builds Nix runs at once (`nix build --max-jobs`) [default: Nix's own setting].
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<String>,
}

/// One host's outcome, for the summary table and `--json`.
#[derive(Debug, Serialize)]
pub struct HostResult {
    /// The host.
    pub host: String,
    /// built, evaluated (--eval-only) or failed.
    pub status: &'static str,
    /// The step that failed: evaluate or build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
    /// The system store path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_path: Option<String>,
    /// Nix's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last lines of the failed build's log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The command that shows the failure again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<String>,
}

impl HostResult {
    /// A failed host, shown as such in the progress display.
    fn failed(
        progress: &Progress,
        host: &str,
        step: &'static str,
        error: String,
        log_tail: Vec<String>,
        reproduce: String,
    ) -> Self {
        progress.set(
            host,
            HostState::Failed(format!("at {step}: {}", last_line(&error))),
        );
        HostResult {
            host: host.to_string(),
            status: "failed",
            step: Some(step),
            store_path: None,
            error: Some(error),
            log_tail,
            reproduce: Some(reproduce),
        }
    }
}

/// Evaluates the selected hosts once, then builds them all in one `nix build` (unless
/// `--eval-only`); returns the hosts that made it and every host's result, in name order.
fn evaluate_and_build(
    settings: &Settings,
    a: &CreateArgs,
) -> Result<(Vec<Evaluated>, Vec<HostResult>, Progress)> {
    let v = settings.verbose;
    eprintln!("Evaluating {} (hosts {})", a.flake, a.hosts);
    let evaluation = eval::select(&a.flake, &a.hosts, v)?;
    let selected = evaluation.selected();
    for h in evaluation
        .ok
        .iter()
        .map(|e| &e.host)
        .chain(evaluation.failed.iter().map(|f| &f.host))
    {
        nix::check_host_name(h).map_err(CliError::Usage)?;
    }
    let progress = Progress::new(if a.eval_only { "evaluated" } else { "building" }, selected);
    let mut results: Vec<HostResult> = Vec::new();
    for f in &evaluation.failed {
        results.push(HostResult::failed(
            &progress,
            &f.host,
            "evaluate",
            f.error.clone(),
            Vec::new(),
            f.reproduce.clone(),
        ));
    }
    let failures = if a.eval_only {
        Default::default()
    } else {
        build::build(
            &a.flake,
            &evaluation.ok,
            a.max_jobs.as_deref(),
            &progress,
            v,
        )
    };
    let mut ok = Vec::new();
    for e in evaluation.ok {
        match failures.get(&e.host) {
            Some(f) => {
                results.push(HostResult::failed(
                    &progress,
                    &e.host,
                    "build",
                    f.error.clone(),
                    f.log_tail.clone(),
                    f.reproduce.clone(),
                ));
            }
            None => {
                let what = if a.eval_only { "evaluated" } else { "built" };
                progress.set(&e.host, HostState::Working(format!("{what} {}", e.out)));
                results.push(HostResult {
                    host: e.host.clone(),
                    status: if a.eval_only { "evaluated" } else { "built" },
                    step: None,
                    store_path: Some(e.out.to_string()),
                    error: None,
                    log_tail: Vec::new(),
                    reproduce: None,
                });
                ok.push(e);
            }
        }
    }
    results.sort_by(|x, y| x.host.cmp(&y.host));
    Ok((ok, results, progress))
}

/// The summary on stderr: one row per host, then each failure with its log tail and the
/// command that shows it again.
fn print_summary(results: &[HostResult]) {
    let mut t = Table::new(&["HOST", "STATUS", "STORE PATH / ERROR"]);
    for r in results {
        let what = match (&r.store_path, &r.error) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => format!("{}: {}", r.step.unwrap_or(""), last_line(e)),
            (None, None) => String::new(),
        };
        t.row(vec![r.host.clone(), r.status.to_string(), what]);
    }
    eprint!("{}", t.render());
    for r in results.iter().filter(|r| r.status == "failed") {
        eprintln!("\n{} failed to {}:", r.host, r.step.unwrap_or("build"));
        for line in r.error.as_deref().unwrap_or("").lines() {
            eprintln!("  {line}");
        }
        if !r.log_tail.is_empty() {
            eprintln!("  last lines of its build log:");
            for line in &r.log_tail {
                eprintln!("  | {line}");
            }
        }
        if let Some(cmd) = &r.reproduce {
            eprintln!("  reproduce: {cmd}");
        }
    }
}

fn flake_metadata(flake: &str, verbose: u8) -> (Option<String>, Option<String>) {
    match nix::run(
        nix::nix().args(["flake", "metadata", "--json", flake]),
        "nix flake metadata",
        verbose,
    ) {
        Ok(out) => {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let url = v.get("url").and_then(|u| u.as_str()).map(String::from);
            let rev = v.get("revision").and_then(|r| r.as_str()).map(String::from);
            (url, rev)
        }
        Err(_) => (None, None),
    }
}

/// Pushes the built closures (`--hook`, `--push-to` or the settings' push-to, `--copy`);
/// returns what the hosts' closures ended as, for the progress display.
fn push(
    settings: &Settings,
    a: &CreateArgs,
    entries: &[Evaluated],
    progress: &Progress,
) -> Result<&'static str> {
    let push_to = a.push_to.clone().or_else(|| {
        if a.copy || a.hook {
            None
        } else {
            settings.push_to.clone()
        }
    });
    let v = settings.verbose;
    if a.hook {
        let cmd = settings.hook.push_cmd.as_deref().ok_or_else(|| {
            CliError::usage("--hook needs push-cmd in the [cache.hook] section of .nixfleet.toml")
        })?;
        let mut paths: Vec<&StorePath> = entries.iter().map(|e| &e.out).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            // The command is the operator's own shell text; the path is validated and quoted.
            let line = cmd.replace("{}", &crate::ssh::quote(path.as_str()));
            progress.println(&format!("Pushing {path} with the [cache.hook] command"));
            nix::run(
                std::process::Command::new("sh").args(["-c", &line]),
                "the [cache.hook] push-cmd",
                v,
            )
            .map_err(|e| CliError::failed(format!("{e}; fix push-cmd in [cache.hook]")))?;
        }
    } else if let Some(url) = push_to {
        let mut paths: Vec<&str> = entries.iter().map(|e| e.out.as_str()).collect();
        paths.sort();
        paths.dedup();
        progress.println(&format!("Pushing {} closure(s) to {url}", paths.len()));
        for e in entries {
            progress.set(&e.host, HostState::Working(format!("pushing to {url}")));
        }
        nix::run(
            nix::nix().args(["copy", "--to", &url]).args(&paths),
            &format!("nix copy --to {url}"),
            v,
        )
        .map_err(|e| {
            CliError::failed(format!("{e}; check --push-to and that you may write there"))
        })?;
    } else if a.copy {
        let opts = a.ssh_opts.as_str().to_string();
        for e in entries {
            progress.set(
                &e.host,
                HostState::Working(format!("copying {} to root@{}", e.out, e.host)),
            );
            let target = SshTarget::root_at(&e.host).map_err(CliError::Usage)?;
            Remote::new(target, &opts, v)
                .copy_closure(&e.out)
                .map_err(|e| CliError::failed(e.message))?;
        }
    } else {
        progress.println("note: closures were built but pushed nowhere; agents fetch them from their cache (--push-to) or need --copy");
        return Ok("built");
    }
    Ok("pushed")
}

/// Builds and pushes, returning the request to post and every host's result.
pub fn build_release(
    settings: &Settings,
    a: &CreateArgs,
) -> Result<(CreateReleaseRequest, Vec<HostResult>)> {
    let v = settings.verbose;
    nix::check_flake_ref(&a.flake).map_err(CliError::Usage)?;
    let (entries, results, progress) = evaluate_and_build(settings, a)?;
    // Ends the progress display (each host that made it on `what` it did), then the summary.
    let finish = |what: &str| {
        for e in &entries {
            progress.set(&e.host, HostState::Done(format!("{what} {}", e.out)));
        }
        progress.finish();
        print_summary(&results);
    };
    let built = if a.eval_only { "evaluated" } else { "built" };
    let missing: Vec<&str> = results
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| r.host.as_str())
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "{} of {} host(s) failed: {}",
            missing.len(),
            results.len(),
            missing.join(", ")
        );
        if !a.allow_partial || entries.is_empty() {
            finish(built);
            if settings.json && !a.dry_run {
                output::json(&serde_json::json!({ "hosts": results }))?;
            }
            return Err(CliError::failed(if entries.is_empty() {
                format!("{why}; no host was built, so no release was recorded")
            } else {
                format!("{why}; fix them (see above), leave them out with --hosts, or record a release of the others with --allow-partial")
            }));
        }
        progress.println(&format!(
            "warning: {why}; --allow-partial: the release leaves them out"
        ));
    }
    let pushed = if a.eval_only {
        Ok(built)
    } else {
        push(settings, a, &entries, &progress)
    };
    finish(pushed.as_ref().map_or(built, |w| w));
    pushed?;
    let (flake_ref, flake_rev) = flake_metadata(&a.flake, v);
    let req = CreateReleaseRequest {
        flake_ref: flake_ref.or_else(|| Some(a.flake.clone())),
        flake_rev,
        cache_url: a
            .cache_url
            .clone()
            .or_else(|| {
                if a.hook {
                    settings.hook.url.clone()
                } else {
                    None
                }
            })
            .or_else(|| settings.cache_url.clone()),
        entries: entries
            .into_iter()
            .map(|e| ReleaseEntry {
                hostname: e.host,
                store_path: e.out.to_string(),
                platform: e.platform,
                tags: e.tags,
            })
            .collect(),
    };
    Ok((req, results))
}

/// Runs `release create` and returns the new id (used by `deploy` in rollout mode).
pub fn create(settings: &Settings, a: &CreateArgs) -> Result<Option<String>> {
    if let (Some(path), true) = (crate::oplog::start("release"), settings.verbose >= 1) {
        eprintln!("oplog: {}", path.display());
    }
    let (req, results) = build_release(settings, a)?;
    if a.dry_run {
        output::json(&req)?;
        return Ok(None);
    }
    post_with(settings, &req, &results).map(Some)
}

/// Posts a release (`POST /api/v1/releases`), prints it and returns its id.
pub fn post(settings: &Settings, req: &CreateReleaseRequest) -> Result<String> {
    post_with(settings, req, &[])
}

/// [`post`]; with `--json` the answer carries `hosts`, each host's result, when there are any.
fn post_with(
    settings: &Settings,
    req: &CreateReleaseRequest,
    results: &[HostResult],
) -> Result<String> {
    let resp: CreateReleaseResponse = Client::new(settings)?.post("/api/v1/releases", req)?;
    if settings.json {
        let mut v = serde_json::to_value(&resp).map_err(|e| CliError::failed(e.to_string()))?;
        if let (Some(obj), false) = (v.as_object_mut(), results.is_empty()) {
            obj.insert("hosts".into(), serde_json::json!(results));
        }
        output::json(&v)?;
    } else {
        output::line(format!(
            "Release {} created ({} hosts)",
            resp.id, resp.host_count
        ))?;
    }
    Ok(resp.id)
}

/// Runs `nixfleet release …`.
pub fn run(settings: &Settings, cmd: ReleaseCmd) -> Result<()> {
    match cmd {
        ReleaseCmd::Create(a) => create(settings, &a).map(|_| ()),
        ReleaseCmd::List { limit, host } => {
            let mut pairs = vec![("limit", limit.to_string())];
            if let Some(h) = host {
                pairs.push(("host", h));
            }
            let releases: Vec<Release> =
                Client::new(settings)?.get(&format!("/api/v1/releases{}", query(&pairs)))?;
            if settings.json {
                return output::json(&releases);
            }
            let mut t = Table::new(&["ID", "CREATED", "HOSTS", "FLAKE", "REV", "BY"]);
            for r in &releases {
                t.row(vec![
                    r.id.clone(),
                    time::short(&r.created_at),
                    r.host_count.to_string(),
                    or_dash(r.flake_ref.as_deref()),
                    or_dash(r.flake_rev.as_deref().map(|s| &s[..s.len().min(12)])),
                    r.created_by.clone(),
                ]);
            }
            t.print()
        }
        ReleaseCmd::Show { id } => {
            let id = path_id("release id", &id, ReleaseId::parse)?;
            let r: Release = Client::new(settings)?.get(&format!("/api/v1/releases/{id}"))?;
            if settings.json {
                return output::json(&r);
            }
            output::line(format!(
                "Release {} ({} hosts), created {} by {}\nflake: {} {}\ncache: {}\n",
                r.id,
                r.host_count,
                time::short(&r.created_at),
                r.created_by,
                or_dash(r.flake_ref.as_deref()),
                r.flake_rev.as_deref().unwrap_or(""),
                or_dash(r.cache_url.as_deref())
            ))?;
            let mut t = Table::new(&["HOST", "PLATFORM", "TAGS", "STORE PATH"]);
            for e in &r.entries {
                t.row(vec![
                    e.hostname.clone(),
                    or_dash(Some(&e.platform)),
                    or_dash(Some(&e.tags.join(","))),
                    e.store_path.clone(),
                ]);
            }
            t.print()
        }
        ReleaseCmd::Diff { a, b } => {
            let (a, b) = (
                path_id("release id", &a, ReleaseId::parse)?,
                path_id("release id", &b, ReleaseId::parse)?,
            );
            let d: ReleaseDiff =
                Client::new(settings)?.get(&format!("/api/v1/releases/{a}/diff/{b}"))?;
            if settings.json {
                return output::json(&d);
            }
            for h in &d.added {
                output::line(format!("+ {h}"))?;
            }
            for h in &d.removed {
                output::line(format!("- {h}"))?;
            }
            for c in &d.changed {
                output::line(format!(
                    "~ {}: {} -> {}",
                    c.hostname, c.old_store_path, c.new_store_path
                ))?;
            }
            output::line(format!(
                "{} added, {} removed, {} changed, {} unchanged",
                d.added.len(),
                d.removed.len(),
                d.changed.len(),
                d.unchanged.len()
            ))
        }
        ReleaseCmd::Delete { id } => {
            let id = path_id("release id", &id, ReleaseId::parse)?;
            Client::new(settings)?.delete(&format!("/api/v1/releases/{id}"))?;
            if settings.json {
                output::json(&serde_json::json!({ "deleted": id }))
            } else {
                output::line(format!("Deleted release {id}"))
            }
        }
    }
}
