//! The control plane binary refuses a damaged event log, naming the record, with or without a
//! projection snapshot: an altered record, a record missing in the middle, a truncated tail. A
//! snapshot lets a start skip reading the records under its checkpoint; those are then verified in
//! the background, and damage there stops the control plane and removes the snapshot, so the next
//! start reads the whole log and refuses it before serving.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use nixfleet_core::decide::{Command, ReportInput};
use nixfleet_core::event::Actor;
use nixfleet_core::ids::*;
use nixfleet_engine::engine::{Engine, ManualClock};
use nixfleet_engine::snapshot;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Appends `n` reports of 20 machines (each report is one or two records) through the engine.
fn reports(e: &Engine, from: u32, n: u32) {
    for i in from..from + n {
        let m = MachineId::parse(&format!("host-{:02}", i % 20)).unwrap();
        let report = ReportInput {
            generation: Some(
                StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{m}", i % 3)).unwrap(),
            ),
            success: true,
            message: format!("report {i}"),
            tags: vec![Tag::parse("web").unwrap()],
            health: Some((vec![], true)),
            agent_version: "t".into(),
            uptime_secs: u64::from(i),
            dry_run: false,
            rolled_back_from: None,
        };
        e.execute_blocking(
            Actor::Machine(m.clone()),
            &Command::Report {
                machine: m,
                report,
                auto_register: true,
            },
        )
        .unwrap();
    }
}

/// A data directory with a log of about 400 records; with `snapshot`, a snapshot taken after
/// about 200 of them. Returns the snapshot's sequence (0 without) and the last sequence.
fn data_dir(root: &Path, snapshot: bool) -> (PathBuf, u64, u64) {
    let data = root.join("data");
    let e = Engine::open(
        &data,
        Arc::new(ManualClock::new(Timestamp(1_764_000_000_000))),
    )
    .unwrap();
    reports(&e, 0, 100);
    let checkpoint = if snapshot {
        e.write_snapshot(&data).unwrap().unwrap().0
    } else {
        0
    };
    reports(&e, 100, 100);
    let last = e.read(|s| s.last_seq.0);
    (data, checkpoint, last)
}

fn key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Damages the log as a disk or an intruder would, through sled directly.
fn damage(data: &Path, f: impl FnOnce(&nixfleet_engine::log::RawDb)) {
    let db = nixfleet_engine::log::open_raw(&data.join("log")).unwrap();
    f(&db);
    db.flush().unwrap();
}

/// Flips the last byte of record `seq`.
fn alter(db: &nixfleet_engine::log::RawDb, seq: u64) {
    let mut v = db.get(key(seq)).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] ^= 0x01;
    db.insert(key(seq), v).unwrap();
}

struct Outcome {
    /// Exit code, or None if it was still running at the deadline (then killed).
    code: Option<i32>,
    /// Whether /health answered 200 at some point.
    served: bool,
    stderr: String,
}

/// Runs the control plane on `data` for at most `secs`, polling /health.
fn run_cp(root: &Path, pki: &Pki, data: &Path, secs: u64) -> Outcome {
    let port = free_port();
    let log = root.join(format!("cp-{port}.log"));
    let d = &pki.dir;
    let mut child = spawn_cp(data, pki, port, &log);
    let client = Client::new(port, d, Some("operator"), None);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut served = false;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if !served && client.try_call("GET", "/health", None).map(|r| r.0).ok() == Some(200) {
            served = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Outcome {
        code,
        served,
        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// The control plane stopped with a failure, before serving, naming one of `seqs`.
fn assert_refused_at_start(o: &Outcome, seqs: &[u64]) {
    assert!(
        o.code.is_some() && o.code != Some(0),
        "exit {:?}: {}",
        o.code,
        o.stderr
    );
    assert!(!o.served, "it served a damaged log: {}", o.stderr);
    assert_names_one_of(&o.stderr, seqs);
}

fn assert_names_one_of(stderr: &str, seqs: &[u64]) {
    assert!(
        seqs.iter()
            .any(|s| stderr.contains(&format!("corrupt at sequence {s}:"))),
        "names none of records {seqs:?}: {stderr}"
    );
}

#[test]
fn an_altered_record_stops_the_control_plane_at_start_naming_the_record() {
    // Given a log of about 400 records without snapshot, and record 150 altered
    let root = tempfile::tempdir().unwrap();
    let pki = fleet_pki(root.path(), &[]);
    let (data, _, _) = data_dir(root.path(), false);
    damage(&data, |db| alter(db, 150));
    // When the control plane starts
    let o = run_cp(root.path(), &pki, &data, 20);
    // Then it refuses to serve and names record 150 (or 151, whose chain it breaks)
    assert_refused_at_start(&o, &[150, 151]);
}

#[test]
fn a_missing_record_or_a_truncated_tail_stops_the_control_plane_at_start_naming_the_record() {
    let root = tempfile::tempdir().unwrap();
    let pki = fleet_pki(root.path(), &[]);
    // Given a log with record 77 removed
    let (data, _, last) = data_dir(root.path(), false);
    damage(&data, |db| {
        db.remove(key(77)).unwrap();
    });
    // When the control plane starts, then it refuses and names record 77
    let o = run_cp(root.path(), &pki, &data, 20);
    assert_refused_at_start(&o, &[77]);
    assert!(o.stderr.contains("missing"), "{}", o.stderr);
    // Given another log whose last 5 records were cut off
    let root2 = tempfile::tempdir().unwrap();
    let (data, _, last2) = data_dir(root2.path(), false);
    assert_eq!(last, last2);
    damage(&data, |db| {
        for s in last - 4..=last {
            db.remove(key(s)).unwrap();
        }
    });
    // When the control plane starts, then it refuses, says truncated and names the first missing
    let o = run_cp(root2.path(), &pki, &data, 20);
    assert_refused_at_start(&o, &[last - 4]);
    assert!(o.stderr.contains("truncated"), "{}", o.stderr);
}

#[test]
fn damage_after_the_snapshot_checkpoint_stops_the_control_plane_at_start() {
    // Given a log with a snapshot, and a record after its checkpoint altered
    let root = tempfile::tempdir().unwrap();
    let pki = fleet_pki(root.path(), &[]);
    let (data, checkpoint, last) = data_dir(root.path(), true);
    assert!(checkpoint > 0 && checkpoint + 50 < last);
    damage(&data, |db| alter(db, checkpoint + 20));
    // When the control plane starts, then it refuses before serving, naming the record
    let o = run_cp(root.path(), &pki, &data, 20);
    assert_refused_at_start(&o, &[checkpoint + 20, checkpoint + 21]);
}

#[test]
fn damage_under_the_snapshot_stops_the_control_plane_and_the_next_start_refuses_it() {
    // Given a log with a snapshot, and a record under its checkpoint altered
    let root = tempfile::tempdir().unwrap();
    let pki = fleet_pki(root.path(), &[]);
    let (data, checkpoint, _) = data_dir(root.path(), true);
    let bad = checkpoint / 2;
    damage(&data, |db| alter(db, bad));
    assert!(snapshot::path(&data).exists());
    // When the control plane starts from the snapshot
    let o = run_cp(root.path(), &pki, &data, 30);
    // Then the background verification of the records under the snapshot finds the damage, and
    // the control plane stops with a failure naming the record and removes the snapshot
    assert!(
        o.code.is_some() && o.code != Some(0),
        "exit {:?}: {}",
        o.code,
        o.stderr
    );
    assert_names_one_of(&o.stderr, &[bad, bad + 1]);
    assert!(o.stderr.contains("snapshot was removed"), "{}", o.stderr);
    assert!(!snapshot::path(&data).exists());
    // When it is started again (as systemd would)
    let o = run_cp(root.path(), &pki, &data, 20);
    // Then it reads the whole log and refuses before serving, naming the record
    assert_refused_at_start(&o, &[bad, bad + 1]);
}

#[test]
fn an_intact_log_with_a_snapshot_starts_verifies_the_records_under_it_and_keeps_serving() {
    // Given an intact log with a snapshot (positive control for the tests above)
    let root = tempfile::tempdir().unwrap();
    let pki = fleet_pki(root.path(), &[]);
    let (data, checkpoint, _) = data_dir(root.path(), true);
    // When the control plane starts
    let cp = Cp::start_at(data.clone(), &pki, free_port());
    // Then it says it verified the records under the snapshot, and keeps serving
    wait_until("the background verification", 20, || {
        cp.log_text()
            .contains("the records under the snapshot are verified")
    });
    assert!(
        cp.log_text().contains(&format!("records={checkpoint}")),
        "{}",
        cp.log_text()
    );
    assert_eq!(cp.client("operator", None).get("/health").0, 200);
    assert!(snapshot::path(&data).exists());
}
