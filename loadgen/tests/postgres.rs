//! `--postgres-url URL --cps 3`: three real control planes on one real PostgreSQL log, the
//! machines spread over them, every report answered 200, and every control plane appending.
//! Needs `target/<profile>/nixfleet-control-plane` (see tests/spawn.rs) and Debian's `postgresql`.
#![allow(clippy::unwrap_used)]

use nixfleet_testkit::postgres::PgServer;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn machines_are_spread_over_three_control_planes_on_one_postgresql_log() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = PathBuf::from(env!("CARGO_BIN_EXE_nixfleet-loadgen"))
        .with_file_name("nixfleet-control-plane");
    assert!(
        cp.exists(),
        "{} is missing: cargo build -p nixfleet-engine --bin nixfleet-control-plane",
        cp.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nixfleet-loadgen"))
        .arg("--spawn-cp")
        .arg(&cp)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--postgres-url", &pg.url(), "--cps", "3"])
        .args(["--agents", "30", "--concurrency", "6", "--duration", "2"])
        .args(["--warmup", "1", "--decision-rounds", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("reports: ") && l.ends_with("errors: none")),
        "{stdout}"
    );
    // Each machine registered on its own control plane: 10 registrations by each.
    let by_cp = pg.psql(
        "nixfleet",
        "SELECT string_agg(cp || ' ' || n, ', ' ORDER BY cp) FROM (SELECT cp, count(DISTINCT stream) n FROM nixfleet_log WHERE stream LIKE 'machine:%' GROUP BY cp) c",
    );
    assert_eq!(
        by_cp.trim(),
        "cp0 10, cp1 10, cp2 10",
        "machines per control plane"
    );
    let shared = pg.psql(
        "nixfleet",
        "SELECT count(*) FROM (SELECT stream FROM nixfleet_log WHERE stream LIKE 'machine:%' GROUP BY stream HAVING count(DISTINCT cp) > 1) s",
    );
    assert_eq!(
        shared.trim(),
        "0",
        "machines that reported to two control planes"
    );
}
