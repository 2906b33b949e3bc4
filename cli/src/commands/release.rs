//! `nixfleet release`: build every host of a flake, push the closures, record a release.
//!
//! A release is an immutable map host → system store path (plus platform and tags). Creating
//! one evaluates the flake once for all hosts, builds them in one `nix build`, pushes the
//! closures (`--push-to` a binary cache, `--copy` straight to each host, or nothing with
//! `--eval-only`), then posts the release. Rollouts then move machines to it.

use crate::client::{path_id, query, Client};
use crate::commands::time;
use crate::error::{CliError, Result};
use crate::nix::{self, CommandFailed};
use crate::output::{self, or_dash, Table};
use crate::settings::Settings;
use crate::ssh::{Remote, SshTarget};
use crate::store_path::StorePath;
use clap::{Args, Subcommand};
use nixfleet_proto::api::v1::{
    CreateReleaseRequest, CreateReleaseResponse, Release, ReleaseDiff, ReleaseEntry,
};
use std::collections::BTreeMap;

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
    #[arg(long, value_name = "URL", conflicts_with_all = ["copy", "eval_only"])]
    pub push_to: Option<String>,
    /// Copy each closure straight to its host (`nix-copy-closure --to root@<host>`).
    #[arg(long, conflicts_with = "eval_only")]
    pub copy: bool,
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

#[derive(Debug, serde::Deserialize)]
struct HostMeta {
    path: String,
    system: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Evaluates store path, platform and agent tags of the given hosts in one `nix eval`.
fn eval_hosts(
    flake: &str,
    hosts: &[String],
    verbose: u8,
) -> std::result::Result<BTreeMap<String, HostMeta>, CommandFailed> {
    // Host names were validated (letters, digits, - _ .), so they are safe inside a Nix string.
    let names: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let apply = format!(
        "cs: builtins.listToAttrs (map (n: let c = cs.${{n}}.config; t = c.system.build.toplevel; in {{ name = n; value = {{ \
         path = t.outPath; system = t.system or null; tags = c.services.nixfleet-agent.tags or []; }}; }}) [ {} ])",
        names.join(" ")
    );
    let attr = format!("{flake}#nixosConfigurations");
    let out = nix::run(
        nix::nix().args(["eval", "--json", &attr, "--apply", &apply]),
        &format!("nix eval of {attr}"),
        verbose,
    )?;
    serde_json::from_str(&out).map_err(|e| CommandFailed {
        what: "nix eval".into(),
        code: Some(0),
        stderr: format!("unexpected output ({e})"),
    })
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
    eprintln!("Evaluating {} host(s): {}", hosts.len(), hosts.join(", "));
    let meta = eval_hosts(&a.flake, &hosts, v).map_err(|e| CliError::failed(e.to_string()))?;
    let mut entries = Vec::new();
    for h in &hosts {
        let m = meta
            .get(h)
            .ok_or_else(|| CliError::failed(format!("nix eval returned nothing for {h}")))?;
        let path = StorePath::try_from(m.path.as_str()).map_err(CliError::Failed)?;
        entries.push((
            h.clone(),
            path,
            m.system.clone().unwrap_or_default(),
            m.tags.clone(),
        ));
    }
    if !a.eval_only {
        eprintln!("Building {} system(s)", entries.len());
        let installables: Vec<String> = hosts
            .iter()
            .map(|h| nix::toplevel_attr(&a.flake, h))
            .collect();
        let out = nix::run(
            nix::nix()
                .args(["build", "--no-link", "--json"])
                .args(&installables),
            "nix build",
            v,
        )
        .map_err(|e| CliError::failed(e.to_string()))?;
        let built: Vec<serde_json::Value> = serde_json::from_str(&out)
            .map_err(|e| CliError::failed(format!("unexpected output of nix build --json: {e}")))?;
        for (entry, b) in entries.iter().zip(&built) {
            let got = b
                .pointer("/outputs/out")
                .and_then(|p| p.as_str())
                .unwrap_or_default();
            if got != entry.1.as_str() {
                return Err(CliError::failed(format!(
                    "{}: nix build produced {got}, evaluation said {}",
                    entry.0, entry.1
                )));
            }
        }
        let push_to = a.push_to.clone().or_else(|| {
            if a.copy {
                None
            } else {
                settings.push_to.clone()
            }
        });
        if let Some(url) = push_to {
            let mut paths: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
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
            for (host, path, _, _) in &entries {
                eprintln!("[{host}] copying {path}");
                let target = SshTarget::root_at(host).map_err(CliError::Usage)?;
                Remote::new(target, &opts, v)
                    .copy_closure(path)
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
        cache_url: a.cache_url.clone().or_else(|| settings.cache_url.clone()),
        entries: entries
            .into_iter()
            .map(|(hostname, path, platform, tags)| ReleaseEntry {
                hostname,
                store_path: path.to_string(),
                platform,
                tags,
            })
            .collect(),
    })
}

/// Runs `release create` and returns the new id (used by `deploy` in rollout mode).
pub fn create(settings: &Settings, a: &CreateArgs) -> Result<Option<String>> {
    let req = build_release(settings, a)?;
    if a.dry_run {
        output::json(&req)?;
        return Ok(None);
    }
    let resp: CreateReleaseResponse = Client::new(settings)?.post("/api/v1/releases", &req)?;
    if settings.json {
        output::json(&resp)?;
    } else {
        output::line(format!(
            "Release {} created ({} hosts)",
            resp.id, resp.host_count
        ))?;
    }
    Ok(Some(resp.id))
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
