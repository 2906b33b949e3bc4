//! Tidy checks: the core stays pure, modules say why they exist, and no test is switched off.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir)
        .expect("readable source dir")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(!files.is_empty());
    let forbidden = [
        "std::fs",
        "std::net",
        "std::process",
        "SystemTime",
        "Instant",
        "std::env",
        "rand::",
        "tokio",
        "sled",
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} uses {word}: the core must stay pure",
                f.display()
            );
        }
        assert!(
            text.starts_with("//!"),
            "{} must start with a //! comment saying why it exists",
            f.display()
        );
    }
}

#[test]
fn the_core_depends_on_nothing_that_does_io() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("manifest");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .expect("a [dependencies] table");
    for line in deps.lines().filter(|l| l.contains('=')) {
        let name = line.split(['=', '.']).next().expect("key").trim();
        assert!(
            ["serde", "thiserror"].contains(&name),
            "nixfleet-core may not depend on {name}"
        );
    }
}

#[test]
fn no_test_in_the_workspace_is_ignored_or_expected_to_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["core", "proto", "engine", "agent", "cli", "loadgen"] {
        let d = root.join(dir);
        if d.exists() {
            sources(&d, &mut files);
        }
    }
    let (ignore, panic) = (concat!("#[", "ignore"), concat!("#[", "should_panic"));
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        assert!(
            !text.contains(ignore) && !text.contains(panic),
            "{} switches a test off",
            f.display()
        );
    }
}
