//! The rollout rules, one test per rule, written as given / when / then.
#![allow(clippy::unwrap_used)]

mod harness;
use harness::*;
use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::plan::RolloutSpec;
use nixfleet_core::state::{BatchStatus, MachineHealth};
use nixfleet_core::{Command, Rejection, ReportInput};

/// Given two web machines running generation 1 and a release of generation 2.
fn two_web_machines() -> Fleet {
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);
    f.register("web-02", &["web"]);
    f.report("web-01", Some(path("web-01", 1)), true, Some(true));
    f.report("web-02", Some(path("web-02", 1)), true, Some(true));
    f.release("rel-2", &[("web-01", 2), ("web-02", 2)]);
    f
}

fn healthy_on(f: &mut Fleet, id: &str, n: u32) -> Vec<Event> {
    f.report(id, Some(path(id, n)), true, Some(true))
}

#[test]
fn a_canary_rollout_starts_with_one_machine_and_completes_when_all_are_healthy() {
    let mut f = two_web_machines();
    let ev = f
        .rollout(
            "r-1",
            Fleet::spec("rel-2", "canary", None, "0", "pause", 60, tags(&["web"])),
        )
        .unwrap();
    assert_eq!(
        Fleet::kinds(&ev),
        ["RolloutCreated", "BatchStarted", "DesiredGenerationSet"]
    );
    let r = &f.state.rollouts[&RolloutId::parse("r-1").unwrap()];
    assert_eq!(r.batches.len(), 2);
    let first = r.batches[0].machines[0].0.to_string();
    let second = r.batches[1].machines[0].0.to_string();
    let ev = healthy_on(&mut f, &first, 2);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "BatchStarted", "DesiredGenerationSet"]),
        "{ev:?}"
    );
    let ev = healthy_on(&mut f, &second, 2);
    assert!(Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]));
    assert_eq!(f.status("r-1"), RolloutStatus::Completed);
    assert!(f.state.active_rollout_of.is_empty());
}

#[test]
fn a_machine_is_healthy_only_with_a_passing_health_report_on_the_release_path_after_its_batch_started(
) {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            60,
            tags(&["web"]),
        ),
    )
    .unwrap();
    // A passing report on the OLD generation decides nothing.
    let ev = healthy_on(&mut f, "web-01", 1);
    assert!(!Fleet::kinds(&ev).contains(&"BatchSucceeded"));
    // A successful report on the new generation without health results decides nothing either.
    let ev = f.report("web-01", Some(path("web-01", 2)), true, None);
    assert!(!Fleet::kinds(&ev).contains(&"BatchSucceeded"));
    healthy_on(&mut f, "web-01", 2);
    let b = &f.state.rollouts[&RolloutId::parse("r-1").unwrap()].batches[0];
    assert!(matches!(b.health[&m("web-01")], MachineHealth::Healthy(_)));
    assert_eq!(b.health[&m("web-02")], MachineHealth::Pending);
    assert_eq!(f.status("r-1"), RolloutStatus::Running);
}

#[test]
fn an_explicit_failure_fails_the_batch_at_once_without_waiting_for_the_others() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            300,
            tags(&["web"]),
        ),
    )
    .unwrap();
    let ev = f.report("web-01", Some(path("web-01", 2)), true, Some(false));
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchFailed", "RolloutPaused"]),
        "{ev:?}"
    );
    assert_eq!(f.status("r-1"), RolloutStatus::Paused);
}

#[test]
fn a_failure_within_the_threshold_does_not_fail_the_batch() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "50%",
            "pause",
            300,
            tags(&["web"]),
        ),
    )
    .unwrap();
    f.report("web-01", Some(path("web-01", 2)), true, Some(false));
    assert_eq!(f.status("r-1"), RolloutStatus::Running);
    let ev = healthy_on(&mut f, "web-02", 2);
    assert!(Fleet::kinds(&ev).contains(&"BatchSucceeded"));
    assert_eq!(f.status("r-1"), RolloutStatus::Completed);
}

#[test]
fn silent_machines_count_as_unhealthy_once_the_health_timeout_elapses() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            30,
            tags(&["web"]),
        ),
    )
    .unwrap();
    healthy_on(&mut f, "web-01", 2);
    assert!(
        f.advance(29).is_empty(),
        "nothing happens before the deadline"
    );
    assert_eq!(
        nixfleet_core::next_deadline(&f.state),
        Some(f.now.plus_secs(1))
    );
    let ev = f.advance(1);
    assert_eq!(Fleet::kinds(&ev), ["BatchFailed", "RolloutPaused"]);
    match &ev[0] {
        Event::BatchFailed {
            unhealthy,
            healthy,
            reason,
            ..
        } => {
            assert_eq!(
                (*healthy, *unhealthy, *reason),
                (1, 1, BatchFailReason::Timeout)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let b = &f.state.rollouts[&RolloutId::parse("r-1").unwrap()].batches[0];
    assert!(matches!(
        b.health[&m("web-02")],
        MachineHealth::Unhealthy(None, _)
    ));
}

#[test]
fn reports_from_before_a_resume_are_ignored_and_the_original_generations_are_kept() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            60,
            tags(&["web"]),
        ),
    )
    .unwrap();
    f.report("web-01", Some(path("web-01", 2)), true, Some(false));
    assert_eq!(f.status("r-1"), RolloutStatus::Paused);
    let ev = f.ok(Command::ResumeRollout {
        rollout: RolloutId::parse("r-1").unwrap(),
    });
    assert_eq!(
        Fleet::kinds(&ev),
        ["RolloutResumed", "BatchStarted"],
        "desired paths are already set"
    );
    match &ev[1] {
        Event::BatchStarted {
            attempt, previous, ..
        } => {
            assert_eq!(*attempt, 2);
            assert!(
                previous.contains(&(m("web-01"), Some(path("web-01", 1)))),
                "pre-rollout generation kept: {previous:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        f.status("r-1"),
        RolloutStatus::Running,
        "the stale failure does not re-fail the batch"
    );
    healthy_on(&mut f, "web-01", 2);
    healthy_on(&mut f, "web-02", 2);
    assert_eq!(f.status("r-1"), RolloutStatus::Completed);
}

#[test]
fn revert_sends_every_touched_machine_back_including_the_failed_batch() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "staged",
            Some(&["1", "1"]),
            "0",
            "revert",
            60,
            hosts(&["web-01", "web-02"]),
        ),
    )
    .unwrap();
    let r = f.state.rollouts[&RolloutId::parse("r-1").unwrap()].clone();
    let first = r.batches[0].machines[0].0.to_string();
    let second = r.batches[1].machines[0].0.to_string();
    healthy_on(&mut f, &first, 2);
    assert_eq!(f.desired(&second), Some(path(&second, 2)));
    let ev = f.report(&second, Some(path(&second, 2)), true, Some(false));
    assert_eq!(
        Fleet::kinds(&ev)[2..],
        [
            "BatchFailed",
            "RolloutFailed",
            "DesiredGenerationSet",
            "DesiredGenerationSet",
            "RolloutReverted"
        ]
    );
    assert_eq!(f.status("r-1"), RolloutStatus::Reverted);
    assert_eq!(
        f.desired(&first),
        Some(path(&first, 1)),
        "succeeded batch reverted"
    );
    assert_eq!(
        f.desired(&second),
        Some(path(&second, 1)),
        "failed batch reverted too"
    );
}

#[test]
fn revert_restores_the_observed_generation_even_for_machines_never_deployed_by_the_control_plane() {
    let mut f = two_web_machines();
    assert_eq!(f.desired("web-01"), None);
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "revert",
            60,
            tags(&["web"]),
        ),
    )
    .unwrap();
    f.report("web-02", Some(path("web-02", 2)), false, None);
    assert_eq!(f.desired("web-01"), Some(path("web-01", 1)));
}

#[test]
fn a_machine_that_never_reported_has_its_desired_generation_cleared_on_revert() {
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);
    f.release("rel-2", &[("web-01", 2)]);
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "revert",
            10,
            tags(&["web"]),
        ),
    )
    .unwrap();
    let ev = f.advance(10);
    assert!(Fleet::kinds(&ev).contains(&"DesiredGenerationCleared"));
    assert_eq!(f.desired("web-01"), None);
}

#[test]
fn cancel_stops_further_batches_and_leaves_desired_paths_alone() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec("rel-2", "canary", None, "0", "pause", 60, tags(&["web"])),
    )
    .unwrap();
    f.ok(Command::CancelRollout {
        rollout: RolloutId::parse("r-1").unwrap(),
    });
    let r = f.state.rollouts[&RolloutId::parse("r-1").unwrap()].clone();
    let first = r.batches[0].machines[0].0.to_string();
    let ev = healthy_on(&mut f, &first, 2);
    assert_eq!(Fleet::kinds(&ev), ["ReportReceived", "HealthReported"]);
    assert_eq!(r.batches[1].status, BatchStatus::Pending);
    assert_eq!(f.desired(&first), Some(path(&first, 2)));
    assert!(f.advance(3600).is_empty());
}

#[test]
fn a_machine_already_in_an_active_rollout_is_a_conflict() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            60,
            hosts(&["web-01"]),
        ),
    )
    .unwrap();
    let err = f
        .rollout(
            "r-2",
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "0",
                "pause",
                60,
                tags(&["web"]),
            ),
        )
        .unwrap_err();
    assert_eq!(
        err,
        Rejection::Conflict("machine web-01 is in active rollout r-1".into())
    );
}

#[test]
fn invalid_rollout_parameters_are_rejected_with_a_reason_not_coerced() {
    let mut f = two_web_machines();
    let cases = [
        (
            Fleet::spec("rel-2", "yolo", None, "0", "pause", 60, tags(&["web"])),
            "strategy",
        ),
        (
            Fleet::spec("rel-2", "staged", None, "0", "pause", 60, tags(&["web"])),
            "batch_sizes",
        ),
        (
            Fleet::spec(
                "rel-2",
                "staged",
                Some(&["0"]),
                "0",
                "pause",
                60,
                tags(&["web"]),
            ),
            "batch size",
        ),
        (
            Fleet::spec(
                "rel-2",
                "staged",
                Some(&["x%"]),
                "0",
                "pause",
                60,
                tags(&["web"]),
            ),
            "batch size",
        ),
        (
            Fleet::spec(
                "rel-2",
                "canary",
                Some(&["2", "100%"]),
                "0",
                "pause",
                60,
                tags(&["web"]),
            ),
            "canary",
        ),
        (
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "ten",
                "pause",
                60,
                tags(&["web"]),
            ),
            "failure_threshold",
        ),
        (
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "101%",
                "pause",
                60,
                tags(&["web"]),
            ),
            "failure_threshold",
        ),
        (
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "0",
                "shrug",
                60,
                tags(&["web"]),
            ),
            "on_failure",
        ),
        (
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "0",
                "pause",
                0,
                tags(&["web"]),
            ),
            "health_timeout",
        ),
        (
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "0",
                "pause",
                60,
                tags(&["db"]),
            ),
            "no active machines",
        ),
        (
            Fleet::spec(
                "rel-2",
                "all_at_once",
                None,
                "0",
                "pause",
                60,
                hosts(&["ghost"]),
            ),
            "not registered",
        ),
    ];
    for (spec, needle) in cases {
        match f.rollout("r-x", spec.clone()) {
            Err(Rejection::Invalid(msg)) => {
                assert!(msg.contains(needle), "{msg:?} should mention {needle:?}")
            }
            other => panic!("{spec:?} gave {other:?}"),
        }
    }
    assert!(f.state.rollouts.is_empty(), "nothing was created");
    let err = f
        .rollout(
            "r-x",
            Fleet::spec("rel-9", "canary", None, "0", "pause", 60, tags(&["web"])),
        )
        .unwrap_err();
    assert!(matches!(err, Rejection::NotFound(_)));
}

#[test]
fn the_plan_keeps_only_active_machines_of_the_release_in_a_seeded_order() {
    let mut f = Fleet::default();
    for i in 0..20 {
        f.register(&format!("web-{i:02}"), &["web"]);
    }
    f.ok(Command::SetLifecycle {
        machine: m("web-00"),
        to: Lifecycle::Maintenance,
    });
    let hosts: Vec<(String, u32)> = (1..20).map(|i| (format!("web-{i:02}"), 2)).collect();
    let hosts_ref: Vec<(&str, u32)> = hosts.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    f.release("rel-2", &hosts_ref[..18]);
    let spec = Fleet::spec(
        "rel-2",
        "staged",
        Some(&["1", "25%", "100%"]),
        "0",
        "pause",
        60,
        tags(&["web"]),
    );
    let a = nixfleet_core::plan::plan_rollout(&f.state, &spec, 9).unwrap();
    let b = nixfleet_core::plan::plan_rollout(&f.state, &spec, 9).unwrap();
    assert_eq!(a, b, "same seed, same plan");
    let lens: Vec<usize> = a.batches.iter().map(Vec::len).collect();
    assert_eq!(
        lens,
        vec![1, 5, 12],
        "18 machines: web-00 is in maintenance, web-19 is not in the release"
    );
    assert!(a
        .batches
        .iter()
        .flatten()
        .all(|(mm, _)| mm.as_str() != "web-00" && mm.as_str() != "web-19"));
}

#[test]
fn a_machine_that_rolled_back_is_quarantined_for_that_path_until_resume() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            60,
            hosts(&["web-01"]),
        ),
    )
    .unwrap();
    let ev = f.report_full(
        "web-01",
        ReportInput {
            generation: Some(path("web-01", 1)),
            success: false,
            message: "rolled back: health checks failed".into(),
            tags: vec![],
            health: None,
            agent_version: "t".into(),
            uptime_secs: 3,
            dry_run: false,
            rolled_back_from: Some(path("web-01", 2)),
        },
    );
    assert_eq!(
        Fleet::kinds(&ev),
        [
            "ReportReceived",
            "MachineQuarantined",
            "BatchFailed",
            "RolloutPaused"
        ]
    );
    assert!(f.state.machines[&m("web-01")]
        .quarantined
        .contains_key(&path("web-01", 2)));
    let ev = f.ok(Command::ResumeRollout {
        rollout: RolloutId::parse("r-1").unwrap(),
    });
    assert_eq!(
        Fleet::kinds(&ev),
        ["RolloutResumed", "QuarantineCleared", "BatchStarted"]
    );
    assert!(f.state.machines[&m("web-01")].quarantined.is_empty());
}

#[test]
fn a_second_bootstrap_is_a_conflict() {
    let mut f = Fleet::default();
    let name = KeyName::parse("admin").unwrap();
    f.run(
        Actor::Bootstrap,
        Command::Bootstrap {
            name: name.clone(),
            hash: [1; 32],
        },
    )
    .unwrap();
    let err = f
        .run(
            Actor::Bootstrap,
            Command::Bootstrap {
                name,
                hash: [2; 32],
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        Rejection::Conflict("API keys already exist. Use an admin key to create more.".into())
    );
}

#[test]
fn a_revoked_key_no_longer_resolves() {
    let mut f = Fleet::default();
    let name = KeyName::parse("ci").unwrap();
    f.ok(Command::CreateKey {
        name: name.clone(),
        role: Role::Deploy,
        hash: [7; 32],
    });
    assert!(f.state.key_for_hash(&[7; 32]).is_some());
    f.ok(Command::RevokeKey { name });
    assert!(f.state.key_for_hash(&[7; 32]).is_none());
}

#[test]
fn lifecycle_changes_follow_the_graph() {
    let mut f = Fleet::default();
    f.register("db-01", &[]);
    let err = f
        .run(
            admin(),
            Command::SetLifecycle {
                machine: m("db-01"),
                to: Lifecycle::Pending,
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        Rejection::Conflict("invalid transition: active -> pending".into())
    );
    f.ok(Command::SetLifecycle {
        machine: m("db-01"),
        to: Lifecycle::Decommissioned,
    });
    assert!(f
        .run(
            admin(),
            Command::SetLifecycle {
                machine: m("db-01"),
                to: Lifecycle::Active
            }
        )
        .is_err());
}

#[test]
fn declared_tags_replace_stored_ones_but_an_agent_declaring_none_keeps_them() {
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);
    let mut r = ReportInput {
        generation: None,
        success: true,
        message: "up-to-date".into(),
        tags: vec![tag("web"), tag("canary"), tag("eu-west")],
        health: None,
        agent_version: "t".into(),
        uptime_secs: 1,
        dry_run: false,
        rolled_back_from: None,
    };
    f.report_full("web-01", r.clone());
    let got: Vec<String> = f.state.machines[&m("web-01")]
        .tags
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(got, ["canary", "eu-west", "web"]);
    r.tags.clear();
    f.report_full("web-01", r);
    assert_eq!(f.state.machines[&m("web-01")].tags.len(), 3);
}

#[test]
fn an_unknown_agent_registers_itself_as_active_on_its_first_report() {
    let mut f = Fleet::default();
    let ev = f.report("web-09", None, true, None);
    assert_eq!(Fleet::kinds(&ev), ["MachineRegistered", "ReportReceived"]);
    assert_eq!(f.state.machines[&m("web-09")].lifecycle, Lifecycle::Active);
}

#[test]
fn a_release_in_use_cannot_be_deleted() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "0",
            "pause",
            60,
            tags(&["web"]),
        ),
    )
    .unwrap();
    let err = f
        .run(
            admin(),
            Command::DeleteRelease {
                release: ReleaseId::parse("rel-2").unwrap(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Rejection::Conflict(_)));
    let err = f
        .run(
            admin(),
            Command::DeleteRollout {
                rollout: RolloutId::parse("r-1").unwrap(),
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, Rejection::Conflict(_)),
        "an active rollout cannot be deleted"
    );
}

#[test]
fn incremental_state_equals_replay_after_a_full_story() {
    let mut f = two_web_machines();
    f.rollout(
        "r-1",
        Fleet::spec("rel-2", "canary", None, "0", "pause", 60, tags(&["web"])),
    )
    .unwrap();
    f.advance(61);
    f.ok(Command::ResumeRollout {
        rollout: RolloutId::parse("r-1").unwrap(),
    });
    healthy_on(&mut f, "web-01", 2);
    healthy_on(&mut f, "web-02", 2);
    assert_eq!(f.replayed(), f.state);
}

// Issue 18, hole 3: health evidence must be measured after the batch started.

/// An all-at-once rollout of `release` to web-01 alone (threshold 0, pause, 60 s health timeout).
fn to_web01_alone(release: &str) -> RolloutSpec {
    Fleet::spec(
        release,
        "all_at_once",
        None,
        "0",
        "pause",
        60,
        hosts(&["web-01"]),
    )
}

/// The operator creates rollout `id` of `spec` with these options.
fn create_rollout_with(
    f: &mut Fleet,
    id: &str,
    spec: RolloutSpec,
    seed: u64,
    options: RolloutOptions,
) -> Vec<Event> {
    f.run(
        admin(),
        Command::CreateRolloutWithOptions {
            rollout: RolloutId::parse(id).unwrap(),
            spec,
            seed,
            options,
        },
    )
    .unwrap()
}

/// Rollout options that activate with `nixos-rebuild boot`, failed units not allowed.
fn boot_activation() -> RolloutOptions {
    RolloutOptions {
        activation: Activation::Boot,
        allow_failed_units: false,
    }
}

/// Rollout options that switch and allow failed units.
fn switch_allowing_failed_units() -> RolloutOptions {
    RolloutOptions {
        activation: Activation::Switch,
        allow_failed_units: true,
    }
}

/// The reports of `web-01`, already running the release path (`rel-2` = generation 2), each with
/// one check that passed (or failed), measured `age_secs` before the report was sent.
fn measured_report(
    f: &mut Fleet,
    passed: bool,
    age_secs: u64,
    clock_ahead_secs: u64,
) -> Vec<Event> {
    let sent = f.now.plus_secs(clock_ahead_secs);
    let health_timestamp = Timestamp(sent.0 - age_secs * 1000);
    f.run(
        Actor::Machine(m("web-01")),
        Command::ReportMeasured {
            machine: m("web-01"),
            // A poll's report: the failure, if any, is only in the health results.
            report: report_input(
                Some(path("web-01", 2)),
                true,
                "up-to-date",
                Some(one_check(passed)),
            ),
            auto_register: true,
            health_timestamp,
            report_timestamp: Some(sent),
        },
    )
    .expect("report accepted")
}

/// Given web-01 already running the release path, healthy, and a rollout of it started 10 s ago.
fn web01_on_the_release_path_in_a_started_batch() -> Fleet {
    let mut f = two_web_machines();
    f.report("web-01", Some(path("web-01", 2)), true, Some(true));
    f.rollout("r-1", to_web01_alone("rel-2")).unwrap();
    f.advance(10);
    f
}

fn health_of_web01(f: &Fleet) -> MachineHealth {
    f.state.rollouts[&RolloutId::parse("r-1").unwrap()].batches[0].health[&m("web-01")].clone()
}

#[test]
fn a_pass_measured_before_the_batch_started_does_not_count() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    // A cached result, measured 30 s ago (20 s before the batch started), sent again now.
    let ev = measured_report(&mut f, true, 30, 0);
    assert_eq!(
        Fleet::kinds(&ev),
        ["ReportReceived", "HealthMeasured", "HealthReported"]
    );
    assert_eq!(health_of_web01(&f), MachineHealth::Pending);
    assert_eq!(f.status("r-1"), RolloutStatus::Running);
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_pass_measured_after_the_batch_started_counts() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    measured_report(&mut f, true, 30, 0);
    let ev = measured_report(&mut f, true, 5, 0);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]),
        "{ev:?}"
    );
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_failure_counts_at_once_however_old_its_measurement() {
    // Fresh: measured 5 s ago, after the batch started.
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let ev = measured_report(&mut f, false, 5, 0);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchFailed", "RolloutPaused"]),
        "{ev:?}"
    );
    // Stale: measured before the batch started still counts (failures err on the safe side).
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let ev = measured_report(&mut f, false, 30, 0);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchFailed", "RolloutPaused"]),
        "{ev:?}"
    );
}

#[test]
fn a_report_without_measurement_time_counts_as_measured_when_appended() {
    // Old logs hold HealthReported without HealthMeasured, and agents that send no time give the
    // same: such a pass is judged as before, as measured when it was appended.
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let ev = healthy_on(&mut f, "web-01", 2);
    assert!(!Fleet::kinds(&ev).contains(&"HealthMeasured"));
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]),
        "{ev:?}"
    );
}

#[test]
fn a_measurement_time_in_the_future_is_taken_as_the_append_time() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let now = f.now;
    let ev = f
        .run(
            Actor::Machine(m("web-01")),
            Command::ReportMeasured {
                machine: m("web-01"),
                report: report_input(
                    Some(path("web-01", 2)),
                    true,
                    "up-to-date",
                    Some((vec![], true)),
                ),
                auto_register: true,
                health_timestamp: now.plus_secs(3600),
                report_timestamp: None,
            },
        )
        .unwrap();
    assert_eq!(
        ev[1],
        Event::HealthMeasured {
            machine: m("web-01"),
            measured_at: now
        }
    );
}

#[test]
fn an_agent_clock_ahead_does_not_make_an_old_pass_look_fresh() {
    // The agent's clock is an hour ahead: its stamp of a result measured 30 s ago lies after the
    // batch start, but the result's age by its own clock (30 s) does not.
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let ev = measured_report(&mut f, true, 30, 3600);
    let Event::HealthMeasured { measured_at, .. } = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(*measured_at, Timestamp(f.now.0 - 30_000));
    assert_eq!(health_of_web01(&f), MachineHealth::Pending);
    // A result measured 5 s ago, still by that clock, counts.
    let ev = measured_report(&mut f, true, 5, 3600);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]),
        "{ev:?}"
    );
}

#[test]
fn after_a_resume_a_pass_measured_before_the_resume_does_not_count() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let ev = measured_report(&mut f, false, 1, 0);
    assert!(Fleet::kinds(&ev).ends_with(&["BatchFailed", "RolloutPaused"]));
    f.advance(20);
    // Fixed and measured passing 15 s ago, i.e. before the operator resumes now.
    f.ok(Command::ResumeRollout {
        rollout: RolloutId::parse("r-1").unwrap(),
    });
    f.advance(1);
    measured_report(&mut f, true, 16, 0);
    assert_eq!(health_of_web01(&f), MachineHealth::Pending);
    let ev = measured_report(&mut f, true, 0, 0);
    assert!(Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]));
}

// Issue 18, hole 4: a failed switch must not count as a success.

/// web-01 reports that it switched to generation 2 (`activation`, `outcome`), with passing
/// health checks on generation 2 in the same report, as the agent's "deployed" report does.
fn switch_report(
    f: &mut Fleet,
    activation: Activation,
    outcome: SwitchOutcome,
    exit_code: i32,
) -> Vec<Event> {
    let running = if activation == Activation::Boot { 1 } else { 2 };
    f.run(
        Actor::Machine(m("web-01")),
        Command::ReportActivation {
            report: Box::new(Command::Report {
                machine: m("web-01"),
                report: report_input(
                    Some(path("web-01", running)),
                    true,
                    "deployed",
                    Some(one_check(true)),
                ),
                auto_register: true,
            }),
            machine: m("web-01"),
            switch: Some(nixfleet_core::decide::SwitchInput {
                path: path("web-01", 2),
                activation,
                outcome,
                exit_code: Some(exit_code),
                failed_units: (outcome == SwitchOutcome::FailedUnits).then_some(3),
            }),
            reboot_needed: vec![],
        },
    )
    .expect("report accepted")
}

/// Given web-01 on generation 1 and a rollout of generation 2 to it alone, with these options.
fn web01_rollout_with(options: RolloutOptions) -> (Fleet, Vec<Event>) {
    let mut f = two_web_machines();
    let ev = create_rollout_with(&mut f, "r-1", to_web01_alone("rel-2"), 42, options);
    (f, ev)
}

#[test]
fn a_switch_with_failed_units_fails_the_gate_by_default_even_with_passing_health_checks() {
    let (mut f, ev) = web01_rollout_with(RolloutOptions::default());
    assert_eq!(
        Fleet::kinds(&ev),
        ["RolloutCreated", "BatchStarted", "DesiredGenerationSet"],
        "default options add no event"
    );
    let ev = switch_report(&mut f, Activation::Switch, SwitchOutcome::FailedUnits, 4);
    assert!(Fleet::kinds(&ev).contains(&"SwitchReported"), "{ev:?}");
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchFailed", "RolloutPaused"]),
        "{:?}",
        Fleet::kinds(&ev)
    );
    let MachineHealth::Unhealthy(_, why) = health_of_web01(&f) else {
        panic!("not unhealthy: {:?}", health_of_web01(&f));
    };
    assert!(why.contains("3 units failed"), "{why}");
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_switch_with_failed_units_passes_the_gate_when_the_rollout_allows_failed_units() {
    let (mut f, ev) = web01_rollout_with(switch_allowing_failed_units());
    assert_eq!(
        Fleet::kinds(&ev),
        [
            "RolloutCreated",
            "RolloutOptionsSet",
            "BatchStarted",
            "DesiredGenerationSet"
        ]
    );
    let ev = switch_report(&mut f, Activation::Switch, SwitchOutcome::FailedUnits, 4);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]),
        "{:?}",
        Fleet::kinds(&ev)
    );
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn later_passing_health_checks_do_not_undo_a_failed_switch_in_the_same_batch() {
    // A threshold of 1 keeps the batch open after web-01's failed switch.
    let mut f = two_web_machines();
    create_rollout_with(
        &mut f,
        "r-1",
        Fleet::spec(
            "rel-2",
            "all_at_once",
            None,
            "1",
            "pause",
            60,
            tags(&["web"]),
        ),
        42,
        RolloutOptions::default(),
    );
    switch_report(&mut f, Activation::Switch, SwitchOutcome::FailedUnits, 4);
    healthy_on(&mut f, "web-01", 2);
    assert!(
        matches!(health_of_web01(&f), MachineHealth::Unhealthy(..)),
        "{:?}",
        health_of_web01(&f)
    );
}

#[test]
fn a_switch_that_exited_with_another_error_fails_the_gate_even_when_failed_units_are_allowed() {
    let (mut f, _) = web01_rollout_with(switch_allowing_failed_units());
    let ev = switch_report(
        &mut f,
        Activation::Switch,
        SwitchOutcome::SwitchedWithErrors,
        2,
    );
    assert!(Fleet::kinds(&ev).ends_with(&["BatchFailed", "RolloutPaused"]));
}

#[test]
fn a_boot_rollout_counts_a_machine_healthy_once_it_reports_the_release_pending_reboot() {
    let (mut f, _) = web01_rollout_with(boot_activation());
    // Its health checks ran on generation 1 (still running): they say nothing about the release.
    let ev = switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0);
    assert!(
        Fleet::kinds(&ev).ends_with(&["BatchSucceeded", "RolloutCompleted"]),
        "{:?}",
        Fleet::kinds(&ev)
    );
    let r = &f.state.rollouts[&RolloutId::parse("r-1").unwrap()];
    assert_eq!(r.options.activation, Activation::Boot);
    let last = f.state.machines[&m("web-01")].last_switch.clone().unwrap();
    assert_eq!(last.outcome, SwitchOutcome::PendingReboot);
}

#[test]
fn reboot_needed_is_kept_in_the_machine_projection_and_logged_only_when_it_changes() {
    let mut f = two_web_machines();
    let report = |parts: &[&str]| Command::ReportActivation {
        report: Box::new(Command::Report {
            machine: m("web-01"),
            report: report_input(Some(path("web-01", 1)), true, "up-to-date", None),
            auto_register: true,
        }),
        machine: m("web-01"),
        switch: None,
        reboot_needed: parts.iter().map(|s| s.to_string()).collect(),
    };
    let ev = f
        .run(Actor::Machine(m("web-01")), report(&["kernel", "initrd"]))
        .unwrap();
    assert_eq!(Fleet::kinds(&ev), ["ReportReceived", "RebootNeededSet"]);
    assert_eq!(
        f.state.machines[&m("web-01")].reboot_needed,
        ["kernel", "initrd"]
    );
    let ev = f
        .run(Actor::Machine(m("web-01")), report(&["kernel", "initrd"]))
        .unwrap();
    assert_eq!(Fleet::kinds(&ev), ["ReportReceived"]);
    let ev = f.run(Actor::Machine(m("web-01")), report(&[])).unwrap();
    assert_eq!(Fleet::kinds(&ev), ["ReportReceived", "RebootNeededSet"]);
    assert!(f.state.machines[&m("web-01")].reboot_needed.is_empty());
    let too_many = vec!["x"; 9];
    assert!(matches!(
        f.run(Actor::Machine(m("web-01")), report(&too_many)),
        Err(Rejection::Invalid(_))
    ));
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_repeated_switch_report_is_logged_once_per_batch_start() {
    let (mut f, _) = web01_rollout_with(boot_activation());
    let ev = switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0);
    assert!(Fleet::kinds(&ev).contains(&"SwitchReported"));
    // Every later poll says "pending reboot" again: nothing new for the log.
    let ev = switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0);
    assert_eq!(Fleet::kinds(&ev), ["ReportReceived", "HealthReported"]);
    // A new rollout of the same path starts a batch: the same fact is evidence again.
    f.ok(Command::CreateRelease {
        release: ReleaseId::parse("rel-2b").unwrap(),
        flake_ref: None,
        flake_rev: None,
        cache_url: None,
        entries: vec![ReleaseEntry {
            machine: m("web-01"),
            path: path("web-01", 2),
            platform: "x86_64-linux".into(),
            tags: vec![],
        }],
    });
    create_rollout_with(
        &mut f,
        "r-2",
        to_web01_alone("rel-2b"),
        1,
        boot_activation(),
    );
    let ev = switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0);
    assert!(
        Fleet::kinds(&ev).ends_with(&["SwitchReported", "BatchSucceeded", "RolloutCompleted"]),
        "{:?}",
        Fleet::kinds(&ev)
    );
    assert_eq!(f.replayed(), f.state);
}
