//! Deterministic simulation: the engine (on a real sled log) with 60 fake agents and a fake
//! clock. Agents report late, fail health checks, roll back, go silent and come back; operators
//! create, resume and cancel rollouts; the engine is restarted from its log mid-rollout.
//! After every step the invariants are checked; at every restart and at the end, the replayed
//! state must equal the live one.
//!
//! A failure prints `NIXFLEET_SEED=<n>`; `NIXFLEET_SEED=<n> cargo test -p nixfleet-engine --test simulation`
//! replays exactly that run.
#![allow(clippy::unwrap_used)]

use nixfleet_core::decide::{Command, ReportInput};
use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::plan::{RolloutSpec, SplitMix64};
use nixfleet_core::state::State;
use nixfleet_engine::engine::{Engine, ManualClock};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const MACHINES: usize = 60;
const STEPS: usize = 900;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Profile {
    Good,
    Slow,
    Flaky,
    Silent,
}

struct Agent {
    id: MachineId,
    profile: Profile,
    current: StorePath,
    /// Simulated time (s) at which the pending apply finishes.
    applying: Option<(StorePath, u64)>,
    quarantined: BTreeSet<StorePath>,
    silent_until: u64,
}

fn path(host: &str, n: u64) -> StorePath {
    StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{host}-{n}", n)).unwrap()
}

fn check_invariants(s: &State) {
    let mut seen = BTreeMap::new();
    for r in s.rollouts.values().filter(|r| r.status.is_active()) {
        for (m, _) in r.plan.batches.iter().flatten() {
            assert!(
                seen.insert(m.clone(), r.id.clone()).is_none(),
                "machine {m} in two active rollouts"
            );
        }
    }
    assert_eq!(seen, s.active_rollout_of, "active_rollout_of out of step");
}

fn check_log(engine: &Engine) {
    let records = engine.log().read_after(Seq(0), usize::MAX).unwrap();
    let mut decided = BTreeSet::new();
    let mut attempts = BTreeMap::new();
    for r in &records {
        match &r.event {
            Event::BatchStarted {
                rollout,
                batch_index,
                attempt,
                ..
            } => {
                attempts.insert((rollout.clone(), *batch_index), *attempt);
            }
            Event::BatchSucceeded {
                rollout,
                batch_index,
                ..
            }
            | Event::BatchFailed {
                rollout,
                batch_index,
                ..
            } => {
                let a = attempts[&(rollout.clone(), *batch_index)];
                assert!(
                    decided.insert((rollout.clone(), *batch_index, a)),
                    "batch {batch_index} of {rollout} attempt {a} decided twice"
                );
            }
            _ => {}
        }
    }
    let mut replayed = State::default();
    for r in records {
        replayed.apply(&r.into_envelope());
    }
    assert_eq!(
        replayed,
        engine.read(|s| s.clone()),
        "replayed state differs from live state"
    );
}

fn run(seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_764_000_000_000)));
    let mut engine = Engine::open(dir.path(), clock.clone()).unwrap();
    let admin = Actor::Key(KeyName::parse("sim").unwrap());
    let mut agents: Vec<Agent> = (0..MACHINES)
        .map(|i| {
            let id = MachineId::parse(&format!("host-{i:02}")).unwrap();
            let profile = match rng.below(10) {
                0..=5 => Profile::Good,
                6 | 7 => Profile::Slow,
                8 => Profile::Flaky,
                _ => Profile::Silent,
            };
            let current = path(id.as_str(), 0);
            Agent {
                id,
                profile,
                current,
                applying: None,
                quarantined: BTreeSet::new(),
                silent_until: 0,
            }
        })
        .collect();
    let mut release_n = 0u64;
    let mut rollout_n = 0u64;
    let mut restarts = 0;
    let mut outcomes: BTreeMap<RolloutStatus, u32> = BTreeMap::new();
    for step in 0..STEPS as u64 {
        clock.advance_ms(1000);
        // Agents poll roughly every 2-5 s.
        for a in agents.iter_mut() {
            if rng.below(3) != 0 || step < a.silent_until {
                continue;
            }
            if a.profile == Profile::Silent && rng.below(100) < 3 {
                a.silent_until = step + 40 + rng.below(80) as u64; // goes silent, comes back later
                continue;
            }
            let desired = engine.read(|s| {
                s.machines
                    .get(&a.id)
                    .and_then(|m| m.desired.as_ref().map(|d| d.path.clone()))
            });
            let mut report = ReportInput {
                generation: Some(a.current.clone()),
                success: true,
                message: "up-to-date".into(),
                tags: vec![Tag::parse(if a.id.as_str() < "host-40" {
                    "web"
                } else {
                    "db"
                })
                .unwrap()],
                health: Some((vec![], true)),
                agent_version: "sim".into(),
                uptime_secs: step,
                dry_run: false,
                rolled_back_from: None,
            };
            match (&desired, &a.applying) {
                (Some(d), None) if *d != a.current && !a.quarantined.contains(d) => {
                    let delay = if a.profile == Profile::Slow {
                        5 + rng.below(40) as u64
                    } else {
                        rng.below(3) as u64
                    };
                    a.applying = Some((d.clone(), step + delay));
                    report.message = "applying".into();
                    report.health = None;
                }
                (_, Some((target, done))) if step >= *done => {
                    let target = target.clone();
                    a.applying = None;
                    let fails = match a.profile {
                        Profile::Flaky => rng.below(2) == 0,
                        _ => rng.below(50) == 0,
                    };
                    if fails {
                        report.success = false;
                        report.message = "rolled back: health checks failed".into();
                        report.rolled_back_from = Some(target.clone());
                        report.health = Some((
                            vec![CheckResult {
                                name: "app".into(),
                                passed: false,
                                duration_ms: 1,
                                message: "down".into(),
                            }],
                            false,
                        ));
                        a.quarantined.insert(target);
                    } else {
                        a.current = target;
                        report.message = "deployed".into();
                    }
                }
                (_, Some(_)) => continue,
                _ => {}
            }
            if desired.as_ref() != Some(&a.current) {
                a.quarantined.retain(|p| Some(p) == desired.as_ref());
            }
            engine
                .submit(
                    Actor::Machine(a.id.clone()),
                    &Command::Report {
                        machine: a.id.clone(),
                        report,
                        auto_register: true,
                    },
                )
                .unwrap();
        }
        // Operators.
        if step % 60 == 5 {
            release_n += 1;
            let entries = agents
                .iter()
                .map(|a| ReleaseEntry {
                    machine: a.id.clone(),
                    path: path(a.id.as_str(), release_n),
                    platform: "x86_64-linux".into(),
                    tags: vec![],
                })
                .collect();
            engine
                .submit(
                    admin.clone(),
                    &Command::CreateRelease {
                        release: ReleaseId::parse(&format!("rel-{release_n}")).unwrap(),
                        flake_ref: None,
                        flake_rev: None,
                        cache_url: None,
                        entries,
                    },
                )
                .unwrap();
            for tag in ["web", "db"] {
                rollout_n += 1;
                let strategy = ["canary", "staged", "all_at_once"][rng.below(3)];
                let spec = RolloutSpec {
                    release: ReleaseId::parse(&format!("rel-{release_n}")).unwrap(),
                    strategy: strategy.into(),
                    batch_sizes: (strategy == "staged")
                        .then(|| vec!["2".into(), "25%".into(), "100%".into()]),
                    failure_threshold: Some(["0", "1", "10%"][rng.below(3)].into()),
                    on_failure: Some(["pause", "revert"][rng.below(2)].into()),
                    health_timeout_secs: Some(20 + rng.below(40) as u64),
                    target: Target::Tags(vec![Tag::parse(tag).unwrap()]),
                    cache_url: None,
                };
                // Conflicts (machines still in an active rollout) are expected and refused.
                let _ = engine.submit(
                    admin.clone(),
                    &Command::CreateRollout {
                        rollout: RolloutId::parse(&format!("r-{rollout_n}")).unwrap(),
                        spec,
                        seed: rng.next_u64(),
                    },
                );
            }
        }
        if step % 17 == 0 {
            let paused: Vec<RolloutId> = engine.read(|s| {
                s.rollouts
                    .values()
                    .filter(|r| r.status == RolloutStatus::Paused)
                    .map(|r| r.id.clone())
                    .collect()
            });
            for id in paused {
                let cmd = if rng.below(4) == 0 {
                    Command::CancelRollout { rollout: id }
                } else {
                    Command::ResumeRollout { rollout: id }
                };
                engine.submit(admin.clone(), &cmd).unwrap();
            }
        }
        engine.tick().unwrap();
        engine.read(check_invariants);
        // Restart the engine from its log now and then, mid-rollout.
        if rng.below(150) == 0 {
            let last = engine.log().last_seq();
            engine.log().wait_durable(last).unwrap();
            check_log(&engine);
            let before = engine.read(|s| s.clone());
            drop(engine);
            engine = Engine::open(dir.path(), clock.clone()).unwrap();
            assert_eq!(
                engine.read(|s| s.clone()),
                before,
                "state after restart differs"
            );
            restarts += 1;
        }
    }
    let last = engine.log().last_seq();
    engine.log().wait_durable(last).unwrap();
    check_log(&engine);
    engine.read(|s| {
        for r in s.rollouts.values() {
            *outcomes.entry(r.status).or_default() += 1;
        }
    });
    println!(
        "seed {seed}: {} events, {restarts} restarts, rollouts by status {outcomes:?}",
        last.0
    );
    assert!(
        outcomes
            .get(&RolloutStatus::Completed)
            .copied()
            .unwrap_or(0)
            > 0,
        "no rollout completed: the simulation exercises nothing"
    );
}

#[test]
fn the_engine_keeps_its_invariants_with_misbehaving_agents_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("NIXFLEET_SEED") {
        Ok(s) => vec![s.parse().expect("NIXFLEET_SEED must be a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        println!("NIXFLEET_SEED={seed}");
        let r = std::panic::catch_unwind(|| run(seed));
        if let Err(e) = r {
            eprintln!("simulation failed; re-run with NIXFLEET_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}
