//! Properties of the core over random command sequences: replay equals incremental state,
//! replay is deterministic, and no machine is ever in two active rollouts.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Event, Lifecycle};
use nixfleet_core::state::MachineHealth;
use nixfleet_core::Command;
use nixfleet_testkit::OnFailure::{Pause, Revert};
use nixfleet_testkit::*;
use proptest::prelude::*;

const HOSTS: [&str; 6] = ["web-01", "web-02", "web-03", "db-01", "db-02", "edge-01"];

#[derive(Debug, Clone)]
enum Step {
    Report {
        host: usize,
        generation: u64,
        success: bool,
        health: Option<bool>,
        /// Seconds before the report its health was measured (None: no time sent).
        measured_age: Option<u16>,
    },
    Rollout {
        release: u64,
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
    Release(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    prop_oneof![
        6 => (0..HOSTS.len(), 1u64..4, any::<bool>(), proptest::option::of(any::<bool>()), proptest::option::of(0u16..120))
            .prop_map(|(host, generation, success, health, measured_age)| Step::Report { host, generation, success, health, measured_age }),
        2 => (1u64..4, 0u8..3, any::<bool>(), any::<bool>(), 0u8..3)
            .prop_map(|(release, strategy, tag, on_failure, threshold)| Step::Rollout { release, strategy, tag, on_failure, threshold }),
        1 => (0u8..6).prop_map(Step::Resume),
        1 => (0u8..6).prop_map(Step::Cancel),
        2 => (0u16..400).prop_map(Step::Advance),
        1 => (0..HOSTS.len(), 0u8..5).prop_map(|(host, to)| Step::Lifecycle { host, to }),
        1 => (1u64..4).prop_map(Step::Release),
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
                let mut report = Report::on(*generation).message("x");
                if let Some(ok) = health {
                    report = report.health((vec![], *ok));
                }
                if !success {
                    report = report.failed().rolled_back_from(*generation + 1);
                }
                if let Some(age) = measured_age {
                    report = report.measured(u64::from(*age), 0);
                }
                let _ = f.try_report(HOSTS[*host], report);
            }
            Step::Release(n) => {
                let id = format!("rel-{n}-{}", f.state.last_seq.0);
                let hosts: Vec<(&str, u64)> = HOSTS.iter().map(|h| (*h, *n)).collect();
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
                let rollout = Rollout::of(rel.as_str());
                let rollout = match strategy {
                    0 => rollout.canary(),
                    1 => rollout.all_at_once(),
                    _ => rollout.staged(&["1", "50%", "100%"]),
                };
                let rollout = if *tag {
                    rollout.to_tags(&["web"])
                } else {
                    rollout.to_hosts(&["db-01", "db-02"])
                };
                let rollout = rollout
                    .failure_threshold(["0", "1", "50%"][*threshold as usize])
                    .on_failure(if *on_failure { Revert } else { Pause })
                    .health_timeout(60);
                let _ = f.try_start(&format!("r-{rollouts}"), rollout);
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
        check_decided_once(f.log.iter().map(|e| &e.event));
    }
}
