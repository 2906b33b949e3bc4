//! `nixfleet demo`, the real command with the real control plane and agents.
//!
//! Needs the binaries next to each other: `cargo build -p nixfleet-engine -p nixfleet-agent`
//! (or NIXFLEET_CP_BIN, whose directory must also hold nixfleet-agent).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    let cp = match std::env::var_os("NIXFLEET_CP_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
            .join("debug/nixfleet-control-plane"),
    };
    for bin in [cp.clone(), cp.with_file_name("nixfleet-agent")] {
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p nixfleet-engine -p nixfleet-agent` first",
            bin.display()
        );
    }
    cp.parent().expect("a directory").to_path_buf()
}

/// Processes whose command line names `dir` (the demo's children all do).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

#[test]
fn the_demo_completes_a_canary_pauses_the_db_rollout_on_health_prints_timelines_and_leaves_no_process(
) {
    let s = Scratch::new("demo");
    let dir = s.join("demo");
    let started = Instant::now();
    let out = run(nixfleet(&s, &s.path)
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .arg("--bin-dir")
        .arg(bin_dir()));
    let took = started.elapsed();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{text}\nstderr:\n{}",
        out.status.code(),
        stderr(&out)
    );
    eprintln!("nixfleet demo took {:.1} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}, the demo promises under a minute"
    );
    for expected in [
        "4 machines registered themselves",
        "Release rel-",
        "batch 0 started: ",
        "batch 1 succeeded: 2 healthy, 0 unhealthy, threshold 0",
        "completed",
        "db-01: health FAILED: http://127.0.0.1:",
        "batch 0 FAILED (unhealthy): 0 healthy, 1 unhealthy, threshold 0",
        "PAUSED: batch 0 failed: 1 unhealthy, threshold 0 (db-01: health checks failed: http://127.0.0.1:",
        "nixfleet rollout resume r-",
        "4/4 hosts in sync (4 machines)",
        "Demo finished in",
        "stopped the control plane and 4 agents",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    // The timelines, by `nixfleet timeline`: the canary's batches in order, then the end.
    let timelines: Vec<&str> = text.split("$ nixfleet timeline r-").skip(1).collect();
    assert_eq!(timelines.len(), 2, "{text}");
    let canary = timelines[0];
    let order = [
        "created: release rel-",
        "strategy canary, 2 batches (1+2)",
        "batch 0 started (attempt 1): web-0",
        "batch 0 succeeded: 1 healthy",
        "healthy by #",
        "batch 1 started (attempt 1): web-0",
        "batch 1 succeeded: 2 healthy",
        "completed",
        "Status: completed",
    ];
    let mut at = 0;
    for step in order {
        at += canary[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{canary}"));
    }
    let gated = timelines[1];
    for expected in [
        "strategy all_at_once",
        "batch 0 FAILED (unhealthy): 0 healthy, 1 unhealthy, threshold 0",
        "db-01 unhealthy by #",
        "health checks failed: http://127.0.0.1:",
        "paused: batch 0 failed: 1 unhealthy, threshold 0",
        "Status: paused",
    ] {
        assert!(
            gated.contains(expected),
            "{expected:?} missing from:\n{gated}"
        );
    }
    assert!(
        text.contains("nixfleet timeline --data-dir "),
        "the offline commands are missing:\n{text}"
    );

    // The offline command it prints works on the directory it left.
    let offline = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("nixfleet timeline --data-dir "))
        .expect("offline timeline command");
    let (data_dir, id) = offline.split_once(' ').expect("dir and id");
    let story = run(nixfleet(&s, &s.path).args(["timeline", "--data-dir", data_dir, id]));
    assert!(story.status.success(), "{}", stderr(&story));
    assert!(
        stdout(&story).contains("Status: completed"),
        "{}",
        stdout(&story)
    );

    let left = processes_under(&s.path);
    assert!(left.is_empty(), "left running: {left:#?}");
    for kept in [
        "cp",
        "logs/control-plane.log",
        "logs/db-01.log",
        "api-key",
        "pki/ca.pem",
    ] {
        assert!(dir.join(kept).exists(), "{kept} not left in the demo dir");
    }

    // A second run replaces the first one's directory.
    let again = run(nixfleet(&s, &s.path)
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .arg("--bin-dir")
        .arg(bin_dir()));
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("(removed the previous demo found there)"),
        "{}",
        stdout(&again)
    );
    assert!(processes_under(&s.path).is_empty());
}

#[test]
fn missing_binaries_are_one_line_naming_the_build_command_and_nothing_is_created() {
    let s = Scratch::new("demo-nobin");
    let empty = s.join("no-binaries-here");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = run(nixfleet(&s, &s.path)
        .args(["demo", "--dir", "d", "--bin-dir"])
        .arg(&empty));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: nixfleet-control-plane and nixfleet-agent not found in ")
            && err.contains("cargo build -p nixfleet-engine -p nixfleet-agent"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(!s.join("d").exists());
}

#[test]
fn a_directory_that_holds_something_else_is_refused_and_left_alone() {
    let s = Scratch::new("demo-busy");
    let dir = s.join("mine");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("notes.txt"), "keep me").expect("write");
    let out = run(nixfleet(&s, &s.path)
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .arg("--bin-dir")
        .arg(bin_dir()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not hold a previous demo"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).expect("still there"),
        "keep me"
    );
}
