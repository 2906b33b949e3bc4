//! `nixfleet release`: build every host of a flake, push the closures, record a release.
//!
//! A release is an immutable map host → system store path (plus platform and tags). Creating
//! one evaluates each host's platform and tags and builds its toplevel (four hosts at a time),
//! pushes the closures (`--push-to` a binary cache, `--copy` straight to each host, or nothing with
//! `--eval-only`), then posts the release. Rollouts then move machines to it.

use crate::client::{path_id, query, Client};
use crate::commands::time;
use crate::error::{CliError, Result};
use crate::nix;
use crate::output::{self, or_dash, Table};
use crate::settings::Settings;
use crate::ssh::{Remote, SshTarget};
use nixfleet_ids::StorePath;
use clap::{Args, Subcommand};
use nixfleet_proto::api::v1::{
    CreateReleaseRequest, CreateReleaseResponse, Release, ReleaseDiff, ReleaseEntry,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
    /// Extra ssh options for --copy, as in NIX_SSHOPTS.
    #[arg(
        long,
        env = "NIX_SSHOPTS",
        value_name = "OPTS",
        allow_hyphen_values = true
    )]
    pub ssh_opts: Option<String>,
    /// Build and push, then print the release instead of posting it.
    #[arg(long)]
    pub dry_run: bool,
}

/// One host of the release being built.
struct HostBuild {
    host: String,
    path: StorePath,
    platform: String,
    tags: Vec<String>,
}

/// Evaluates a host's platform and agent tags, then builds (or only evaluates) its toplevel.
///
/// One `nix` call per attribute and per host, with plain attribute paths and no `--apply`:
/// the VM tests' nix shim answers exactly these (`…toplevel.system`, `…nixfleet-agent.tags`,
/// `…toplevel.outPath`, one installable per build).
fn build_host(
    flake: &str,
    host: &str,
    eval_only: bool,
    verbose: u8,
) -> std::result::Result<HostBuild, String> {
    let toplevel = nix::toplevel_attr(flake, host);
    let eval_json = |attr: &str| -> Option<serde_json::Value> {
        let out = nix::run(
            nix::nix().args(["eval", "--json", attr]),
            "nix eval",
            verbose,
        )
        .ok()?;
        serde_json::from_str(&out).ok()
    };
    let platform = eval_json(&format!("{toplevel}.system"))
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    // Hosts without the agent module have no tags; that is not an error.
    let tags = eval_json(&format!(
        "{flake}#nixosConfigurations.\"{host}\".config.services.nixfleet-agent.tags"
    ))
    .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
    .unwrap_or_default();
    let path = if eval_only {
        let out = nix::run(
            nix::nix().args(["eval", "--raw", &format!("{toplevel}.outPath")]),
            &format!("nix eval of {host}"),
            verbose,
        )
        .map_err(|e| e.to_string())?;
        StorePath::try_from(out.trim()).map_err(|e| e.to_string())?
    } else {
        nix::build_toplevel(flake, host, verbose).map_err(|e| e.to_string())?
    };
    Ok(HostBuild {
        host: host.to_string(),
        path,
        platform,
        tags,
    })
}

/// Runs [`build_host`] for every host, a few at a time, keeping the hosts' order.
fn build_hosts(
    flake: &str,
    hosts: &[String],
    eval_only: bool,
    verbose: u8,
) -> Result<Vec<HostBuild>> {
    const JOBS: usize = 4;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, std::result::Result<HostBuild, String>)>> =
        Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..JOBS.min(hosts.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(host) = hosts.get(i) else { break };
                let r = build_host(flake, host, eval_only, verbose);
                results
                    .lock()
                    .expect("a build thread panicked while holding the results")
                    .push((i, r));
            });
        }
    });
    let mut results = results
        .into_inner()
        .expect("a build thread panicked while holding the results");
    results.sort_by_key(|(i, _)| *i);
    let mut built = Vec::new();
    let mut failed = Vec::new();
    for (i, r) in results {
        match r {
            Ok(b) => built.push(b),
            Err(e) => {
                eprintln!("[{}] {e}", hosts[i]);
                failed.push(hosts[i].clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(built)
    } else {
        Err(CliError::failed(format!(
            "{} of {} host(s) failed to {}: {}; fix the errors above, or leave them out with --hosts",
            failed.len(),
            hosts.len(),
            if eval_only { "evaluate" } else { "build" },
            failed.join(", ")
        )))
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

/// Builds and pushes, returning the request to post.
pub fn build_release(settings: &Settings, a: &CreateArgs) -> Result<CreateReleaseRequest> {
    let v = settings.verbose;
    nix::check_flake_ref(&a.flake).map_err(CliError::Usage)?;
    let all = nix::discover_hosts(&a.flake, v).map_err(|e| {
        CliError::usage(format!(
            "{e}; is --flake {} a flake with nixosConfigurations?",
            a.flake
        ))
    })?;
    let hosts = nix::filter_hosts(&all, &a.hosts);
    if hosts.is_empty() {
        return Err(CliError::usage(format!(
            "--hosts {:?} matches none of {}",
            a.hosts,
            all.join(", ")
        )));
    }
    for h in &hosts {
        nix::check_host_name(h).map_err(CliError::Usage)?;
    }
    eprintln!(
        "{} {} host(s): {}",
        if a.eval_only {
            "Evaluating"
        } else {
            "Building"
        },
        hosts.len(),
        hosts.join(", ")
    );
    let entries = build_hosts(&a.flake, &hosts, a.eval_only, v)?;
    if !a.eval_only {
        let push_to = a.push_to.clone().or_else(|| {
            if a.copy || a.hook {
                None
            } else {
                settings.push_to.clone()
            }
        });
        if a.hook {
            let cmd = settings.hook.push_cmd.as_deref().ok_or_else(|| {
                CliError::usage(
                    "--hook needs push-cmd in the [cache.hook] section of .nixfleet.toml",
                )
            })?;
            let mut paths: Vec<&StorePath> = entries.iter().map(|e| &e.path).collect();
            paths.sort();
            paths.dedup();
            for path in paths {
                // The command is the operator's own shell text; the path is validated and quoted.
                let line = cmd.replace("{}", &crate::ssh::quote(path.as_str()));
                eprintln!("Pushing {path} with the [cache.hook] command");
                nix::run(
                    std::process::Command::new("sh").args(["-c", &line]),
                    "the [cache.hook] push-cmd",
                    v,
                )
                .map_err(|e| CliError::failed(format!("{e}; fix push-cmd in [cache.hook]")))?;
            }
        } else if let Some(url) = push_to {
            let mut paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
            paths.sort();
            paths.dedup();
            eprintln!("Pushing {} closure(s) to {url}", paths.len());
            nix::run(
                nix::nix().args(["copy", "--to", &url]).args(&paths),
                &format!("nix copy --to {url}"),
                v,
            )
            .map_err(|e| {
                CliError::failed(format!("{e}; check --push-to and that you may write there"))
            })?;
        } else if a.copy {
            let opts = a.ssh_opts.clone().unwrap_or_default();
            for e in &entries {
                eprintln!("[{}] copying {}", e.host, e.path);
                let target = SshTarget::root_at(&e.host).map_err(CliError::Usage)?;
                Remote::new(target, &opts, v)
                    .copy_closure(&e.path)
                    .map_err(|e| CliError::failed(e.message))?;
            }
        } else {
            eprintln!("note: closures were built but pushed nowhere; agents fetch them from their cache (--push-to) or need --copy");
        }
    }
    let (flake_ref, flake_rev) = flake_metadata(&a.flake, v);
    Ok(CreateReleaseRequest {
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
                store_path: e.path.to_string(),
                platform: e.platform,
                tags: e.tags,
            })
            .collect(),
    })
}

/// Runs `release create` and returns the new id (used by `deploy` in rollout mode).
pub fn create(settings: &Settings, a: &CreateArgs) -> Result<Option<String>> {
    if let (Some(path), true) = (crate::oplog::start("release"), settings.verbose >= 1) {
        eprintln!("oplog: {}", path.display());
    }
    let req = build_release(settings, a)?;
    if a.dry_run {
        output::json(&req)?;
        return Ok(None);
    }
    post(settings, &req).map(Some)
}

/// Posts a release (`POST /api/v1/releases`), prints it and returns its id.
pub fn post(settings: &Settings, req: &CreateReleaseRequest) -> Result<String> {
    let resp: CreateReleaseResponse = Client::new(settings)?.post("/api/v1/releases", req)?;
    if settings.json {
        output::json(&resp)?;
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
            let id = path_id("release id", &id)?;
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
            let (a, b) = (path_id("release id", &a)?, path_id("release id", &b)?);
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
            let id = path_id("release id", &id)?;
            Client::new(settings)?.delete(&format!("/api/v1/releases/{id}"))?;
            if settings.json {
                output::json(&serde_json::json!({ "deleted": id }))
            } else {
                output::line(format!("Deleted release {id}"))
            }
        }
    }
}
