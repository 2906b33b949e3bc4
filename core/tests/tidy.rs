//! Tidy checks: the core and the ids crate stay pure, modules say why they exist, and no test
//! is switched off.

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

/// The pure crates: the core, and the ids it re-exports (which the agent and the CLI use too).
fn pure_crates() -> [std::path::PathBuf; 2] {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    [core.to_path_buf(), core.join("..").join("ids")]
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let mut files = Vec::new();
    for dir in pure_crates() {
        let before = files.len();
        sources(&dir.join("src"), &mut files);
        assert!(files.len() > before, "no sources in {}", dir.display());
    }
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
    // nixfleet-ids is held to the same rule, so depending on it keeps the core pure.
    let allowed = ["nixfleet-ids", "serde", "thiserror"];
    for dir in pure_crates() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|s| s.split("\n[").next())
            .expect("a [dependencies] table");
        for line in deps.lines().filter(|l| l.contains('=')) {
            let name = line.split(['=', '.']).next().expect("key").trim();
            assert!(
                allowed.contains(&name),
                "{} may not depend on {name}",
                dir.display()
            );
        }
    }
}

#[test]
fn no_test_in_the_workspace_is_ignored_or_expected_to_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["ids", "core", "proto", "engine", "agent", "cli", "loadgen"] {
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
