//! The crate graph ARCHITECTURE.md draws, enforced: which nixfleet crate may depend on which,
//! and what the binaries that run on every machine (agent) or on operators' laptops (CLI) must
//! not link. Direct dependencies are read from each crate's Cargo.toml; what a crate links in
//! the end (through crates.io dependencies too) from `cargo tree`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The names under `[dependencies]` (not dev or build dependencies) of a workspace crate.
fn direct(krate: &str) -> BTreeSet<String> {
    let path = root().join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]"
                || (line.starts_with("[target.") && line.ends_with(".dependencies]"));
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
        out.insert(name.trim_matches('"').to_owned());
    }
    out
}

fn nixfleet(deps: &BTreeSet<String>) -> BTreeSet<&str> {
    deps.iter()
        .filter(|d| d.starts_with("nixfleet-"))
        .map(String::as_str)
        .collect()
}

/// Every package (and enabled feature, as `name feature "f"`) a crate links in a normal build.
fn linked(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--prefix",
            "none",
            "-e",
            "normal,features",
        ])
        .args(["-p", krate])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {krate}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn links(lines: &[String], package: &str) -> bool {
    lines.iter().any(|l| l.starts_with(&format!("{package} v")))
}

#[test]
fn pure_and_wire_crates_depend_on_no_other_nixfleet_crate_but_the_ids() {
    assert_eq!(nixfleet(&direct("ids")), BTreeSet::new(), "ids");
    for krate in ["core", "proto"] {
        let deps = direct(krate);
        let ours = nixfleet(&deps);
        assert!(
            ours.iter().all(|d| *d == "nixfleet-ids"),
            "{krate} may depend on nixfleet-ids only, not {ours:?}"
        );
    }
    let agent = direct("agent");
    let ours = nixfleet(&agent);
    assert!(
        ours.iter()
            .all(|d| ["nixfleet-proto", "nixfleet-ids"].contains(d)),
        "the agent talks to the control plane through nixfleet-proto only, not {ours:?}"
    );
}

#[test]
fn the_event_log_links_no_server() {
    let deps = direct("eventlog");
    assert!(
        !deps.contains("nixfleet-engine"),
        "nixfleet-eventlog must not depend on the engine"
    );
    let tree = linked("nixfleet-eventlog");
    for server in [
        "hyper",
        "hyper-util",
        "rustls",
        "tokio-rustls",
        "nixfleet-engine",
    ] {
        assert!(!links(&tree, server), "nixfleet-eventlog links {server}");
    }
    // tokio for its watch channel only: no runtime, no network.
    let tokio_features: Vec<&String> = tree
        .iter()
        .filter(|l| l.starts_with("tokio feature "))
        .collect();
    assert!(
        tokio_features
            .iter()
            .all(|l| *l == "tokio feature \"sync\""),
        "nixfleet-eventlog enables tokio features beyond sync: {tokio_features:?}"
    );
}

#[test]
fn the_cli_and_the_agent_link_no_control_plane() {
    let cli = linked("nixfleet-cli");
    for server in ["nixfleet-engine", "hyper"] {
        assert!(!links(&cli, server), "the nixfleet CLI links {server}");
    }
    let agent = linked("nixfleet-agent");
    for server in [
        "nixfleet-engine",
        "nixfleet-eventlog",
        "nixfleet-pglog",
        "postgres",
        "hyper",
        "sled",
    ] {
        assert!(!links(&agent, server), "the agent links {server}");
    }
}

#[test]
fn the_postgres_log_is_a_log_not_a_server() {
    let deps = direct("pglog");
    let ours = nixfleet(&deps);
    assert!(
        ours.iter()
            .all(|d| ["nixfleet-core", "nixfleet-eventlog"].contains(d)),
        "nixfleet-pglog may depend on the core and the event log only, not {ours:?}"
    );
    let tree = linked("nixfleet-pglog");
    for server in ["hyper", "nixfleet-engine"] {
        assert!(!links(&tree, server), "nixfleet-pglog links {server}");
    }
}

#[test]
fn unsafe_code_is_forbidden_everywhere_but_the_allocator_crate_which_only_the_control_plane_links()
{
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("workspace manifest");
    let members = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("members");
    for krate in members
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|k| *k != "malloc")
    {
        let text =
            std::fs::read_to_string(root().join(krate).join("Cargo.toml")).expect("crate manifest");
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{krate} does not take the workspace's lints (unsafe_code = \"forbid\")"
        );
    }
    assert!(manifest.contains("unsafe_code = \"forbid\""));
    for krate in [
        "nixfleet-eventlog",
        "nixfleet-pglog",
        "nixfleet-cli",
        "nixfleet-agent",
    ] {
        assert!(
            !links(&linked(krate), "nixfleet-malloc"),
            "{krate} links nixfleet-malloc"
        );
    }
    assert_eq!(nixfleet(&direct("malloc")), BTreeSet::new(), "malloc");
}
