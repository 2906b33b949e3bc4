//! The load generator against the real control plane binary (`--spawn-cp`): a small fleet with
//! its own certificates reports over mTLS, every report is answered 200, and two rollouts decide.
//! Needs `target/<profile>/nixfleet-control-plane`, which `cargo build --workspace` (or
//! `cargo test --workspace`) puts next to this package's binary.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn control_plane() -> PathBuf {
    let lg = PathBuf::from(env!("CARGO_BIN_EXE_nixfleet-loadgen"));
    let cp = lg.with_file_name("nixfleet-control-plane");
    assert!(
        cp.exists(),
        "{} is missing: run `cargo build -p nixfleet-engine --bin nixfleet-control-plane` first",
        cp.display()
    );
    cp
}

#[test]
fn fifty_agents_report_through_a_spawned_control_plane_and_rollouts_decide() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(env!("CARGO_BIN_EXE_nixfleet-loadgen"))
        .arg("--spawn-cp")
        .arg(control_plane())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--pki-dir")
        .arg(&pki)
        .args(["--agents", "50", "--concurrency", "8", "--duration", "2"])
        .args([
            "--warmup",
            "1",
            "--decision-rounds",
            "2",
            "--decision-machines",
            "5",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let reports = stdout
        .lines()
        .find(|l| l.starts_with("reports: "))
        .unwrap_or_else(|| panic!("no reports line: {stdout}"));
    assert!(reports.ends_with("errors: none"), "{reports}");
    let n: u64 = reports
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(n > 50, "every agent reported more than once: {reports}");
    assert!(
        stdout.contains("50 mTLS connections"),
        "one connection per agent: {stdout}"
    );
    assert!(
        stdout.contains("decision latency over 2 rounds of an all_at_once rollout of 5 machines"),
        "{stdout}"
    );
    assert!(
        pki.join("ca.pem").exists() && pki.join("ca-key.pem").exists(),
        "the CA is kept in --pki-dir, in the layout of `nixfleet pki`"
    );
    let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_run_without_a_control_plane_fails_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_nixfleet-loadgen"))
        .args(["--agents", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--url") && err.contains("--spawn-cp"), "{err}");
}
