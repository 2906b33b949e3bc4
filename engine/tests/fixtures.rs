//! The committed event stream `fixtures/events/v1.bin` holds every kind of event, written by
//! schema version 1. Every later build must still decode it, chain it and replay it.
//! Regenerate (only when adding kinds, never to paper over a decoding change):
//! `NIXFLEET_UPDATE_FIXTURES=1 cargo test -p nixfleet-engine --test fixtures`.
#![allow(clippy::unwrap_used)]

use nixfleet_core::decide::{Command, ReportInput, SwitchInput};
use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::plan::RolloutSpec;
use nixfleet_core::State;
use nixfleet_engine::engine::{Engine, ManualClock};
use nixfleet_engine::log::{decode_record, encode_record, hash_bytes, MemoryLog, SCHEMA_VERSION};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/events/v1.bin")
}

fn p(host: &str, n: u32) -> StorePath {
    StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{host}-{n}", n)).unwrap()
}

fn report(
    gen: StorePath,
    success: bool,
    health: Option<bool>,
    rolled_back_from: Option<StorePath>,
) -> ReportInput {
    ReportInput {
        generation: Some(gen),
        success,
        message: if success {
            "deployed".into()
        } else {
            "rolled back: health checks failed".into()
        },
        tags: vec![Tag::parse("web").unwrap(), Tag::parse("eu-west").unwrap()],
        health: health.map(|ok| {
            (
                vec![CheckResult {
                    name: "http://localhost/health".into(),
                    passed: ok,
                    duration_ms: 4,
                    message: if ok {
                        String::new()
                    } else {
                        "connection refused".into()
                    },
                }],
                ok,
            )
        }),
        agent_version: "0.2.0".into(),
        uptime_secs: 42,
        dry_run: false,
        rolled_back_from,
    }
}

/// A story that produces every kind of event.
fn story() -> Vec<Vec<u8>> {
    let clock = Arc::new(ManualClock::new(Timestamp(1_764_000_000_000)));
    let log = Arc::new(MemoryLog::new());
    let e = Engine::new(log.clone(), State::default(), clock.clone());
    let admin = Actor::Key(KeyName::parse("ops").unwrap());
    let ok = |actor: &Actor, c: Command| {
        e.execute_blocking(actor.clone(), &c)
            .unwrap_or_else(|err| panic!("{c:?}: {err}"));
    };
    let m = |s: &str| MachineId::parse(s).unwrap();
    ok(
        &Actor::Bootstrap,
        Command::Bootstrap {
            name: KeyName::parse("ops").unwrap(),
            hash: [1; 32],
        },
    );
    ok(
        &admin,
        Command::CreateKey {
            name: KeyName::parse("ci").unwrap(),
            role: Role::Deploy,
            hash: [2; 32],
        },
    );
    ok(
        &admin,
        Command::RevokeKey {
            name: KeyName::parse("ci").unwrap(),
        },
    );
    ok(
        &admin,
        Command::Register {
            machine: m("web-01"),
            lifecycle: Lifecycle::Pending,
            tags: vec![Tag::parse("web").unwrap()],
        },
    );
    ok(
        &admin,
        Command::SetLifecycle {
            machine: m("web-01"),
            to: Lifecycle::Active,
        },
    );
    ok(
        &admin,
        Command::Register {
            machine: m("web-02"),
            lifecycle: Lifecycle::Active,
            tags: vec![Tag::parse("web").unwrap()],
        },
    );
    for h in ["web-01", "web-02"] {
        ok(
            &Actor::Machine(m(h)),
            Command::Report {
                machine: m(h),
                report: report(p(h, 1), true, Some(true), None),
                auto_register: true,
            },
        );
    }
    ok(
        &admin,
        Command::NotifyDeploy {
            machine: m("web-02"),
            path: p("web-02", 1),
        },
    );
    ok(
        &admin,
        Command::ClearDesired {
            machine: m("web-02"),
        },
    );
    let release = |id: &str, n: u32| Command::CreateRelease {
        release: ReleaseId::parse(id).unwrap(),
        flake_ref: Some("github:example/fleet".into()),
        flake_rev: Some("abc123".into()),
        cache_url: Some("http://cache:5000".into()),
        entries: ["web-01", "web-02"]
            .iter()
            .map(|h| ReleaseEntry {
                machine: m(h),
                path: p(h, n),
                platform: "x86_64-linux".into(),
                tags: vec![],
            })
            .collect(),
    };
    ok(&admin, release("rel-0", 0));
    ok(
        &admin,
        Command::DeleteRelease {
            release: ReleaseId::parse("rel-0").unwrap(),
        },
    );
    ok(&admin, release("rel-2", 2));
    let spec = |on_failure: &str, strategy: &str| RolloutSpec {
        release: ReleaseId::parse("rel-2").unwrap(),
        strategy: strategy.into(),
        batch_sizes: None,
        failure_threshold: Some("0".into()),
        on_failure: Some(on_failure.into()),
        health_timeout_secs: Some(30),
        target: Target::Tags(vec![Tag::parse("web").unwrap()]),
        cache_url: None,
    };
    let rid = |s: &str| RolloutId::parse(s).unwrap();
    // r-1: canary, the first machine rolls back -> quarantine, pause; resume; complete.
    ok(
        &admin,
        Command::CreateRollout {
            rollout: rid("r-1"),
            spec: spec("pause", "canary"),
            seed: 1,
        },
    );
    let first = e.read(|s| s.rollouts[&rid("r-1")].batches[0].machines[0].0.clone());
    let second = e.read(|s| s.rollouts[&rid("r-1")].batches[1].machines[0].0.clone());
    let (f, s2) = (first.to_string(), second.to_string());
    ok(
        &Actor::Machine(first.clone()),
        Command::Report {
            machine: first.clone(),
            report: report(p(&f, 1), false, Some(false), Some(p(&f, 2))),
            auto_register: true,
        },
    );
    ok(
        &admin,
        Command::ResumeRollout {
            rollout: rid("r-1"),
        },
    );
    ok(
        &Actor::Machine(first.clone()),
        Command::Report {
            machine: first.clone(),
            report: report(p(&f, 2), true, Some(true), None),
            auto_register: true,
        },
    );
    ok(
        &Actor::Machine(second.clone()),
        Command::Report {
            machine: second.clone(),
            report: report(p(&s2, 2), true, Some(true), None),
            auto_register: true,
        },
    );
    assert_eq!(
        e.read(|s| s.rollouts[&rid("r-1")].status),
        RolloutStatus::Completed
    );
    // r-2: all at once, times out, reverts.
    ok(&admin, release("rel-3", 3));
    ok(
        &admin,
        Command::CreateRollout {
            rollout: rid("r-2"),
            spec: RolloutSpec {
                release: ReleaseId::parse("rel-3").unwrap(),
                ..spec("revert", "all_at_once")
            },
            seed: 2,
        },
    );
    clock.advance_ms(31_000);
    e.tick().unwrap();
    assert_eq!(
        e.read(|s| s.rollouts[&rid("r-2")].status),
        RolloutStatus::Reverted
    );
    ok(
        &admin,
        Command::DeleteRollout {
            rollout: rid("r-2"),
        },
    );
    // r-3: cancelled.
    ok(&admin, release("rel-4", 4));
    ok(
        &admin,
        Command::CreateRollout {
            rollout: rid("r-3"),
            spec: RolloutSpec {
                release: ReleaseId::parse("rel-4").unwrap(),
                ..spec("pause", "all_at_once")
            },
            seed: 3,
        },
    );
    ok(
        &admin,
        Command::CancelRollout {
            rollout: rid("r-3"),
        },
    );
    // An operator lifts a quarantine directly.
    ok(
        &admin,
        Command::NotifyDeploy {
            machine: m("web-01"),
            path: p("web-01", 5),
        },
    );
    ok(
        &Actor::Machine(m("web-01")),
        Command::Report {
            machine: m("web-01"),
            report: report(p("web-01", 4), false, None, Some(p("web-01", 5))),
            auto_register: true,
        },
    );
    ok(
        &admin,
        Command::ClearQuarantine {
            machine: m("web-01"),
        },
    );
    ok(
        &admin,
        Command::Register {
            machine: m("web-01"),
            lifecycle: Lifecycle::Active,
            tags: vec![Tag::parse("db").unwrap()],
        },
    );
    // Health results with the agent's measurement time (HealthMeasured, then HealthReported).
    let sent = e.now();
    ok(
        &Actor::Machine(m("web-02")),
        Command::ReportMeasured {
            machine: m("web-02"),
            report: report(p("web-02", 2), true, Some(true), None),
            auto_register: true,
            health_timestamp: Timestamp(sent.0 - 20_000),
            report_timestamp: Some(sent),
        },
    );
    // r-4: a boot rollout that tolerates failed units (RolloutOptionsSet); web-02 reports its
    // boot activation pending a reboot (SwitchReported) and a booted kernel that differs from the
    // running generation's (RebootNeededSet).
    ok(&admin, release("rel-6", 6));
    ok(
        &admin,
        Command::CreateRolloutWithOptions {
            rollout: rid("r-4"),
            spec: RolloutSpec {
                release: ReleaseId::parse("rel-6").unwrap(),
                target: Target::Hosts(vec![m("web-02")]),
                ..spec("pause", "all_at_once")
            },
            seed: 4,
            options: RolloutOptions {
                activation: Activation::Boot,
                allow_failed_units: true,
            },
        },
    );
    ok(
        &Actor::Machine(m("web-02")),
        Command::ReportActivation {
            report: Box::new(Command::Report {
                machine: m("web-02"),
                report: report(p("web-02", 2), true, None, None),
                auto_register: true,
            }),
            machine: m("web-02"),
            switch: Some(SwitchInput {
                path: p("web-02", 6),
                activation: Activation::Boot,
                outcome: SwitchOutcome::PendingReboot,
                exit_code: Some(0),
                failed_units: None,
            }),
            reboot_needed: vec!["kernel".into()],
        },
    );
    assert_eq!(
        e.read(|s| s.rollouts[&rid("r-4")].status),
        RolloutStatus::Completed
    );
    log.raw()
}

fn read_fixture() -> Vec<Vec<u8>> {
    let bytes = std::fs::read(fixture_path()).expect("fixtures/events/v1.bin is committed");
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    out
}

#[test]
fn the_committed_v1_stream_still_decodes_chains_and_replays() {
    if std::env::var("NIXFLEET_UPDATE_FIXTURES").is_ok() {
        let records = story();
        let mut out = Vec::new();
        let mut text = String::new();
        for r in &records {
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(r);
            let rec = decode_record(r).unwrap();
            text.push_str(&format!(
                "{:>3} {:<26} {:<22} {:?}\n",
                rec.seq.0,
                rec.event.kind(),
                rec.actor.to_string(),
                rec.event
            ));
        }
        std::fs::write(fixture_path(), out).unwrap();
        std::fs::write(fixture_path().with_extension("txt"), text).unwrap();
    }
    let records = read_fixture();
    let mut prev = [0u8; 32];
    let mut kinds = BTreeSet::new();
    let mut state = State::default();
    for (i, bytes) in records.iter().enumerate() {
        let rec = decode_record(bytes)
            .unwrap_or_else(|e| panic!("record {} no longer decodes: {e}", i + 1));
        assert_eq!(rec.seq.0, i as u64 + 1);
        assert_eq!(rec.prev_hash, prev, "chain broken at {}", i + 1);
        prev = hash_bytes(bytes);
        kinds.insert(rec.event.kind());
        if SCHEMA_VERSION == 1 {
            assert_eq!(
                &encode_record(rec.seq, rec.at, &rec.actor, rec.prev_hash, &rec.event),
                bytes,
                "v1 encoding changed at {}",
                i + 1
            );
        }
        state.apply(&rec.into_envelope());
    }
    let missing: Vec<_> = Event::KINDS
        .iter()
        .filter(|k| !kinds.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "the fixture lacks {missing:?}; add them to story() and regenerate"
    );
    assert_eq!(state.rollouts.len(), 3, "r-1, r-3 and r-4; r-2 was deleted");
}

#[test]
fn the_fixture_story_is_reproducible() {
    assert_eq!(
        story(),
        read_fixture(),
        "story() and the committed fixture differ: regenerate only if you added kinds"
    );
}
