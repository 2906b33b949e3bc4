//! Retention through the engine (`Engine::apply_retention`, what the control plane runs hourly
//! with `--log-retention-days`): old reports leave the sealed segments while the control plane's
//! projections, a start from its snapshot, a full replay and a start without the snapshot all
//! still agree.
#![allow(clippy::unwrap_used)]

use nixfleet_core::decide::{Command, ReportInput};
use nixfleet_core::event::{Actor, CheckResult};
use nixfleet_core::ids::*;
use nixfleet_core::State;
use nixfleet_engine::engine::{Engine, ManualClock};
use nixfleet_engine::log::LogOptions;
use nixfleet_engine::snapshot;
use std::sync::Arc;
use std::time::Duration;

const DAY_MS: u64 = 86_400_000;
const THIRTY_DAYS: Duration = Duration::from_secs(30 * 86_400);

fn reports(e: &Engine, clock: &ManualClock, rounds: u32) {
    for round in 0..rounds {
        for i in 0..10 {
            let m = MachineId::parse(&format!("host-{i:02}")).unwrap();
            let check = CheckResult {
                name: "http".into(),
                passed: true,
                duration_ms: 3,
                message: String::new(),
            };
            let report = ReportInput {
                generation: Some(
                    StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{m}", 1)).unwrap(),
                ),
                success: true,
                message: format!("round {round}"),
                tags: vec![],
                health: Some((vec![check], true)),
                agent_version: "t".into(),
                uptime_secs: u64::from(round),
                dry_run: false,
                rolled_back_from: None,
            };
            let cmd = Command::Report {
                machine: m.clone(),
                report,
                auto_register: true,
            };
            e.execute_blocking(Actor::Machine(m), &cmd).unwrap();
        }
        clock.advance_ms(60_000);
    }
}

fn full_replay(data: &std::path::Path) -> State {
    let mut state = State::default();
    for r in nixfleet_engine::postmortem::open_copy(data).unwrap() {
        state.apply(&r.into_envelope());
    }
    state
}

#[test]
fn given_old_reports_when_the_engine_applies_retention_then_every_start_gives_the_same_projections()
{
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_764_000_000_000)));
    let e = Engine::open_with(dir.path(), clock.clone(), LogOptions::segments_of(64)).unwrap();
    reports(&e, &clock, 20);
    clock.advance_ms(31 * DAY_MS);
    reports(&e, &clock, 40);
    // The archiver seals segments in the background: apply retention until it has seen them.
    let (mut removed, deadline) = (0, std::time::Instant::now() + Duration::from_secs(20));
    while std::time::Instant::now() < deadline {
        removed += e.apply_retention(THIRTY_DAYS).unwrap();
        if removed >= 374 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The first day: 10 registrations and 400 report and health events, none a machine's last
    // report nor among its last 32 health results. The six 64-record segments all older than
    // 30 days hold 384 of those records: all go but the registrations.
    assert_eq!(removed, 374, "old reports go");
    assert!(!e.log().compacted().unwrap().is_empty());
    e.write_snapshot(dir.path()).unwrap();
    let live = e.read(|s| s.clone());
    drop(e);
    let opened = Engine::open(dir.path(), clock.clone()).unwrap();
    assert_eq!(opened.read(|s| s.clone()), live, "snapshot + tail == live");
    drop(opened);
    assert_eq!(full_replay(dir.path()), live, "full replay == live");
    std::fs::remove_file(snapshot::path(dir.path())).unwrap();
    let without = Engine::open(dir.path(), clock).unwrap();
    assert_eq!(without.read(|s| s.clone()), live, "no snapshot == live");
}
