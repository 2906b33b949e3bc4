//! Properties of the core over random command sequences: replay equals incremental state,
//! replay is deterministic, and no machine is ever in two active rollouts.
#![allow(clippy::unwrap_used)]

mod harness;
use harness::*;
use nixfleet_core::event::{Actor, Event, Lifecycle};
use nixfleet_core::ids::Timestamp;
use nixfleet_core::state::{MachineHealth, State};
use nixfleet_core::{Command, ReportInput};
use proptest::prelude::*;

const HOSTS: [&str; 6] = ["web-01", "web-02", "web-03", "db-01", "db-02", "edge-01"];

#[derive(Debug, Clone)]
enum Step {
    Report {
        host: usize,
        generation: u32,
        success: bool,
        health: Option<bool>,
        /// Seconds before the report its health was measured (None: no time sent).
        measured_age: Option<u16>,
    },
    Rollout {
        release: u32,
        strategy: u8,
        tag: bool,
        on_failure: bool,
        threshold: u8,
    },
    Resume(u8),
    Cancel(u8),
    Advance(u16),
    Lifecycle {
        host: usize,
        to: u8,
    },
    Release(u32),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    prop_oneof![
        6 => (0..HOSTS.len(), 1u32..4, any::<bool>(), proptest::option::of(any::<bool>()), proptest::option::of(0u16..120))
            .prop_map(|(host, generation, success, health, measured_age)| Step::Report { host, generation, success, health, measured_age }),
        2 => (1u32..4, 0u8..3, any::<bool>(), any::<bool>(), 0u8..3)
            .prop_map(|(release, strategy, tag, on_failure, threshold)| Step::Rollout { release, strategy, tag, on_failure, threshold }),
        1 => (0u8..6).prop_map(Step::Resume),
        1 => (0u8..6).prop_map(Step::Cancel),
        2 => (0u16..400).prop_map(Step::Advance),
        1 => (0..HOSTS.len(), 0u8..5).prop_map(|(host, to)| Step::Lifecycle { host, to }),
        1 => (1u32..4).prop_map(Step::Release),
    ]
}

fn play(steps: &[Step]) -> Fleet {
    let mut f = Fleet::default();
    for (i, h) in HOSTS.iter().enumerate() {
        f.register(h, if i < 3 { &["web"] } else { &["db"] });
    }
    let mut rollouts = 0u32;
    for s in steps {
        match s {
            Step::Report {
                host,
                generation,
                success,
                health,
                measured_age,
            } => {
                let h = HOSTS[*host];
                let report = ReportInput {
                    generation: Some(path(h, *generation)),
                    success: *success,
                    message: "x".into(),
                    tags: vec![],
                    health: health.map(|ok| (vec![], ok)),
                    agent_version: "p".into(),
                    uptime_secs: 0,
                    dry_run: false,
                    rolled_back_from: (!success).then(|| path(h, *generation + 1)),
                };
                let cmd = match measured_age {
                    None => Command::Report {
                        machine: m(h),
                        report,
                        auto_register: true,
                    },
                    Some(age) => Command::ReportMeasured {
                        machine: m(h),
                        report,
                        auto_register: true,
                        health_timestamp: Timestamp(f.now.0 - u64::from(*age) * 1000),
                        report_timestamp: Some(f.now),
                    },
                };
                let _ = f.run(Actor::Machine(m(h)), cmd);
            }
            Step::Release(n) => {
                let id = format!("rel-{n}-{}", f.state.last_seq.0);
                let hosts: Vec<(&str, u32)> = HOSTS.iter().map(|h| (*h, *n)).collect();
                f.release(&id, &hosts);
            }
            Step::Rollout {
                release,
                strategy,
                tag,
                on_failure,
                threshold,
            } => {
                let Some(rel) = f
                    .state
                    .releases
                    .keys()
                    .nth(*release as usize % f.state.releases.len().max(1))
                    .cloned()
                else {
                    continue;
                };
                rollouts += 1;
                let (strategy, sizes): (&str, Option<&[&str]>) = match strategy {
                    0 => ("canary", None),
                    1 => ("all_at_once", None),
                    _ => ("staged", Some(&["1", "50%", "100%"])),
                };
                let target = if *tag {
                    tags(&["web"])
                } else {
                    hosts(&["db-01", "db-02"])
                };
                let spec = Fleet::spec(
                    rel.as_str(),
                    strategy,
                    sizes,
                    ["0", "1", "50%"][*threshold as usize],
                    if *on_failure { "revert" } else { "pause" },
                    60,
                    target,
                );
                let _ = f.rollout(&format!("r-{rollouts}"), spec);
            }
            Step::Resume(i) | Step::Cancel(i) => {
                let Some(id) = f.state.rollouts.keys().nth(*i as usize).cloned() else {
                    continue;
                };
                let cmd = if matches!(s, Step::Resume(_)) {
                    Command::ResumeRollout { rollout: id }
                } else {
                    Command::CancelRollout { rollout: id }
                };
                let _ = f.run(admin(), cmd);
            }
            Step::Advance(secs) => {
                f.advance(u64::from(*secs));
            }
            Step::Lifecycle { host, to } => {
                let _ = f.run(
                    admin(),
                    Command::SetLifecycle {
                        machine: m(HOSTS[*host]),
                        to: Lifecycle::ALL[*to as usize],
                    },
                );
            }
        }
        check_invariants(&f.state);
        check_health_evidence(&f);
    }
    f
}

/// A machine counts as healthy only on results measured after its batch started, and a
/// measurement time never outlives its group.
fn check_health_evidence(f: &Fleet) {
    assert_eq!(
        f.state.health_measured, None,
        "a HealthMeasured outlived its group"
    );
    for r in f.state.rollouts.values() {
        for b in &r.batches {
            for (mm, h) in &b.health {
                let MachineHealth::Healthy(seq) = h else {
                    continue;
                };
                let before = &f.log[seq.0 as usize - 2].event;
                if let Event::HealthMeasured {
                    machine,
                    measured_at,
                } = before
                {
                    assert_eq!(machine, mm);
                    assert!(
                        Some(*measured_at) >= b.started_at,
                        "{mm} counted healthy on results measured before its batch started"
                    );
                }
            }
        }
    }
}

fn check_invariants(s: &State) {
    let mut seen = std::collections::BTreeMap::new();
    for r in s.rollouts.values().filter(|r| r.status.is_active()) {
        for (mm, _) in r.plan.batches.iter().flatten() {
            assert!(
                seen.insert(mm.clone(), r.id.clone()).is_none(),
                "machine {mm} is in two active rollouts"
            );
            assert_eq!(s.active_rollout_of.get(mm), Some(&r.id));
        }
    }
    assert_eq!(
        seen.len(),
        s.active_rollout_of.len(),
        "active_rollout_of lists only active rollouts' machines"
    );
    for r in s.rollouts.values() {
        let undecided = r
            .batches
            .iter()
            .filter(|b| matches!(b.status, nixfleet_core::state::BatchStatus::Active))
            .count();
        assert!(undecided <= 1, "at most one batch in flight per rollout");
        for b in &r.batches {
            assert_eq!(
                b.healthy + b.unhealthy + b.pending(),
                b.machines.len() as u32
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replaying_the_log_from_zero_gives_the_incremental_state(steps in proptest::collection::vec(step(), 1..80)) {
        let f = play(&steps);
        prop_assert_eq!(f.replayed(), f.state.clone());
    }

    #[test]
    fn the_same_commands_give_the_same_log(steps in proptest::collection::vec(step(), 1..60)) {
        let a = play(&steps);
        let b = play(&steps);
        prop_assert_eq!(a.log, b.log);
    }

    #[test]
    fn no_batch_is_decided_twice_per_attempt(steps in proptest::collection::vec(step(), 1..80)) {
        let f = play(&steps);
        let mut decided = std::collections::BTreeSet::new();
        let mut attempt = std::collections::BTreeMap::new();
        for e in &f.log {
            match &e.event {
                Event::BatchStarted { rollout, batch_index, attempt: a, .. } => { attempt.insert((rollout.clone(), *batch_index), *a); }
                Event::BatchSucceeded { rollout, batch_index, .. } | Event::BatchFailed { rollout, batch_index, .. } => {
                    let a = attempt[&(rollout.clone(), *batch_index)];
                    prop_assert!(decided.insert((rollout.clone(), *batch_index, a)), "batch {} of {} decided twice", batch_index, rollout);
                }
                _ => {}
            }
        }
    }
}
