//! The test kit stays dev-only: no crate of the workspace names it under `[dependencies]` or
//! `[build-dependencies]` (only `[dev-dependencies]`), so no binary links it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// The member directories listed in the root manifest's `members = [...]`.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("root Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("a members line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The `[section]` headers under which `manifest` names `nixfleet-testkit`, apart from dev ones.
fn non_dev_uses(manifest: &str) -> Vec<String> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
        }
        let names_it =
            line.starts_with("nixfleet-testkit") || section.ends_with("nixfleet-testkit");
        let dev = section.contains("dev-dependencies");
        if names_it && section.contains("dependencies") && !dev && !found.contains(&section) {
            found.push(section.clone());
        }
    }
    found
}

#[test]
fn no_workspace_crate_depends_on_the_test_kit_outside_dev_dependencies() {
    let root = root();
    let members = members(&root);
    assert!(members.len() > 3, "members not found: {members:?}");
    let mut offenders = Vec::new();
    for member in &members {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{member}/Cargo.toml: {e}"));
        for section in non_dev_uses(&manifest) {
            offenders.push(format!("{member}/Cargo.toml [{section}]"));
        }
    }
    assert!(
        offenders.is_empty(),
        "nixfleet-testkit is dev-only (a [dev-dependencies] entry), but is a normal dependency in {offenders:?}"
    );
}

#[test]
fn the_check_sees_every_way_of_naming_a_dependency() {
    assert!(non_dev_uses("[dev-dependencies]\nnixfleet-testkit.workspace = true\n").is_empty());
    assert_eq!(
        non_dev_uses("[dependencies]\nnixfleet-testkit = { path = \"../testkit\" }\n"),
        ["dependencies"]
    );
    assert_eq!(
        non_dev_uses("[target.'cfg(unix)'.dependencies]\nnixfleet-testkit.workspace = true\n"),
        ["target.'cfg(unix)'.dependencies"]
    );
    assert_eq!(
        non_dev_uses("[dependencies.nixfleet-testkit]\npath = \"../testkit\"\n"),
        ["dependencies.nixfleet-testkit"]
    );
}
