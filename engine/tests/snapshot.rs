//! Snapshots only accelerate start-up: with, without, stale, foreign or corrupt, the engine ends
//! up with exactly the state that a full replay of its log gives.
#![allow(clippy::unwrap_used)]

use nixfleet_core::decide::{Command, ReportInput};
use nixfleet_core::event::{Actor, Lifecycle};
use nixfleet_core::ids::*;
use nixfleet_core::State;
use nixfleet_engine::engine::{Engine, ManualClock};
use nixfleet_engine::snapshot;
use std::path::Path;
use std::sync::Arc;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp(1_764_000_000_000)))
}

fn story(e: &Engine, from: u32, to: u32) {
    for i in from..to {
        let m = MachineId::parse(&format!("host-{:03}", i % 50)).unwrap();
        let report = ReportInput {
            generation: Some(
                StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{m}", i)).unwrap(),
            ),
            success: i % 7 != 0,
            message: format!("report {i}"),
            tags: vec![Tag::parse("web").unwrap()],
            health: Some((vec![], i % 5 != 0)),
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
    let _ = e.execute_blocking(
        Actor::System,
        &Command::Register {
            machine: MachineId::parse(&format!("extra-{to}")).unwrap(),
            lifecycle: Lifecycle::Maintenance,
            tags: vec![],
        },
    );
}

fn full_replay(data: &Path) -> State {
    let copy = tempfile::tempdir().unwrap();
    let mut state = State::default();
    // Replay the log without any snapshot, on a copy so the original stays closed.
    let records = nixfleet_engine::postmortem::open_copy(data).unwrap();
    let _ = copy;
    for r in records {
        state.apply(&r.into_envelope());
    }
    state
}

#[test]
fn a_snapshot_start_gives_the_state_of_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), clock()).unwrap();
    story(&e, 0, 300);
    assert_eq!(
        e.write_snapshot(dir.path()).unwrap(),
        Some(Seq(e.read(|s| s.last_seq.0)))
    );
    story(&e, 300, 420);
    let live = e.read(|s| s.clone());
    drop(e);
    let reopened = Engine::open(dir.path(), clock()).unwrap();
    assert_eq!(
        reopened.read(|s| s.clone()),
        live,
        "snapshot + tail == live"
    );
    drop(reopened);
    assert_eq!(full_replay(dir.path()), live, "full replay == live");
    std::fs::remove_file(snapshot::path(dir.path())).unwrap();
    let without = Engine::open(dir.path(), clock()).unwrap();
    assert_eq!(
        without.read(|s| s.clone()),
        live,
        "deleting the snapshot changes nothing but start-up time"
    );
}

#[test]
fn a_snapshot_of_another_log_is_ignored() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ea = Engine::open(a.path(), clock()).unwrap();
    story(&ea, 0, 50);
    ea.write_snapshot(a.path()).unwrap();
    drop(ea);
    let eb = Engine::open(b.path(), clock()).unwrap();
    story(&eb, 1000, 1100);
    let live_b = eb.read(|s| s.clone());
    drop(eb);
    std::fs::copy(snapshot::path(a.path()), snapshot::path(b.path())).unwrap();
    let reopened = Engine::open(b.path(), clock()).unwrap();
    assert_eq!(reopened.read(|s| s.clone()), live_b);
}

#[test]
fn a_corrupt_or_truncated_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), clock()).unwrap();
    story(&e, 0, 80);
    e.write_snapshot(dir.path()).unwrap();
    let live = e.read(|s| s.clone());
    drop(e);
    let p = snapshot::path(dir.path());
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(
        Engine::open(dir.path(), clock())
            .unwrap()
            .read(|s| s.clone()),
        live
    );
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&p, &flipped).unwrap();
    assert_eq!(
        Engine::open(dir.path(), clock())
            .unwrap()
            .read(|s| s.clone()),
        live
    );
    assert!(snapshot::load(dir.path()).is_err() || snapshot::load(dir.path()).unwrap().is_some());
}

#[test]
fn a_snapshot_ahead_of_the_log_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), clock()).unwrap();
    story(&e, 0, 40);
    e.write_snapshot(dir.path()).unwrap();
    let snap = std::fs::read(snapshot::path(dir.path())).unwrap();
    drop(e);
    // A log restored from an older backup than the snapshot.
    let other = tempfile::tempdir().unwrap();
    let e2 = Engine::open(other.path(), clock()).unwrap();
    story(&e2, 0, 10);
    let live = e2.read(|s| s.clone());
    drop(e2);
    std::fs::write(snapshot::path(other.path()), snap).unwrap();
    assert_eq!(
        Engine::open(other.path(), clock())
            .unwrap()
            .read(|s| s.clone()),
        live
    );
}
