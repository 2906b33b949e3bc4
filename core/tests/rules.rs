//! The rollout rules, one test per rule, written as given / when / then with `nixfleet-testkit`.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::state::{BatchStatus, MachineHealth};
use nixfleet_core::{Command, Rejection};
use nixfleet_testkit::OnFailure::Revert;
use nixfleet_testkit::*;

/// Given two web machines running generation 1, healthy, and a release `rel-2` of generation 2.
fn two_web_machines() -> Fleet {
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);
    f.register("web-02", &["web"]);
    f.report("web-01", Report::on(1).healthy());
    f.report("web-02", Report::on(1).healthy());
    f.release("rel-2", &[("web-01", 2), ("web-02", 2)]);
    f
}

/// A rollout of `rel-2` to every web machine at once (no failure tolerated, pause, 60 s).
fn rel2_to_all_web_machines() -> Rollout {
    Rollout::of("rel-2").all_at_once().to_tags(&["web"])
}

#[test]
fn a_canary_rollout_starts_with_one_machine_and_completes_when_all_are_healthy() {
    let mut f = two_web_machines();
    let ev = f.start("r-1", Rollout::of("rel-2").canary().to_tags(&["web"]));
    ev.assert_kinds(&["RolloutCreated", "BatchStarted", "DesiredGenerationSet"]);
    assert_eq!(f.rollout("r-1").batches.len(), 2);
    let first = f.machines_of_batch("r-1", 0)[0].clone();
    let second = f.machines_of_batch("r-1", 1)[0].clone();

    f.report(&first, Report::on(2).healthy())
        .assert_ends_with(&["BatchSucceeded", "BatchStarted", "DesiredGenerationSet"]);
    f.report(&second, Report::on(2).healthy())
        .assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);

    assert_eq!(f.status("r-1"), RolloutStatus::Completed);
    assert!(f.state.active_rollout_of.is_empty());
}

#[test]
fn a_machine_is_healthy_only_with_a_passing_health_report_on_the_release_path_after_its_batch_started(
) {
    let mut f = two_web_machines();
    f.start("r-1", rel2_to_all_web_machines());
    // A passing report on the OLD generation decides nothing.
    f.report("web-01", Report::on(1).healthy())
        .assert_lacks("BatchSucceeded");
    // A successful report on the new generation without health results decides nothing either.
    f.report("web-01", Report::on(2))
        .assert_lacks("BatchSucceeded");

    f.report("web-01", Report::on(2).healthy());

    assert!(matches!(
        f.health("r-1", 0, "web-01"),
        MachineHealth::Healthy(_)
    ));
    assert_eq!(f.health("r-1", 0, "web-02"), MachineHealth::Pending);
    assert_eq!(f.status("r-1"), RolloutStatus::Running);
}

#[test]
fn an_explicit_failure_fails_the_batch_at_once_without_waiting_for_the_others() {
    let mut f = two_web_machines();
    f.start("r-1", rel2_to_all_web_machines().health_timeout(300));

    let ev = f.report("web-01", Report::on(2).unhealthy());

    ev.assert_ends_with(&["BatchFailed", "RolloutPaused"]);
    assert_eq!(f.status("r-1"), RolloutStatus::Paused);
}

#[test]
fn a_failing_periodic_health_report_from_the_old_generation_says_nothing_about_the_release() {
    let mut f = two_web_machines();
    f.start("r-1", rel2_to_all_web_machines().health_timeout(300));

    // v0.1: the periodic report's `success` is whether its checks passed; web-01 still runs 1.
    let ev = f.report(
        "web-01",
        Report::on(1).unhealthy().failed().message("health-check"),
    );

    ev.assert_kinds(&["ReportReceived", "HealthReported"]);
    assert_eq!(f.health("r-1", 0, "web-01"), MachineHealth::Pending);
    // A failed deploy of the release (here: it could not fetch it) does count.
    let ev = f.report("web-01", Report::on(1).failed().message("fetch failed"));
    ev.assert_ends_with(&["BatchFailed", "RolloutPaused"]);
}

#[test]
fn a_failure_within_the_threshold_does_not_fail_the_batch() {
    let mut f = two_web_machines();
    let rollout = rel2_to_all_web_machines()
        .failure_threshold("50%")
        .health_timeout(300);
    f.start("r-1", rollout);

    f.report("web-01", Report::on(2).unhealthy());
    assert_eq!(f.status("r-1"), RolloutStatus::Running);
    let ev = f.report("web-02", Report::on(2).healthy());

    ev.assert_has("BatchSucceeded");
    assert_eq!(f.status("r-1"), RolloutStatus::Completed);
}

#[test]
fn silent_machines_count_as_unhealthy_once_the_health_timeout_elapses() {
    let mut f = two_web_machines();
    f.start("r-1", rel2_to_all_web_machines().health_timeout(30));
    f.report("web-01", Report::on(2).healthy());

    f.advance(29).assert_kinds(&[]); // nothing happens before the deadline
    assert_eq!(
        nixfleet_core::next_deadline(&f.state),
        Some(f.now.plus_secs(1))
    );
    let ev = f.advance(1);

    ev.assert_kinds(&["BatchFailed", "RolloutPaused"]);
    let Event::BatchFailed {
        unhealthy,
        healthy,
        reason,
        ..
    } = &ev[0]
    else {
        panic!("unexpected {:?}", ev[0]);
    };
    assert_eq!(
        (*healthy, *unhealthy, *reason),
        (1, 1, BatchFailReason::Timeout)
    );
    assert!(matches!(
        f.health("r-1", 0, "web-02"),
        MachineHealth::Unhealthy(None, _)
    ));
}

#[test]
fn reports_from_before_a_resume_are_ignored_and_the_original_generations_are_kept() {
    let mut f = two_web_machines();
    f.start("r-1", rel2_to_all_web_machines());
    f.report("web-01", Report::on(2).unhealthy());
    assert_eq!(f.status("r-1"), RolloutStatus::Paused);

    let ev = f.resume("r-1");

    // The desired paths are already set: no DesiredGenerationSet.
    ev.assert_kinds(&["RolloutResumed", "BatchStarted"]);
    let Event::BatchStarted {
        attempt, previous, ..
    } = &ev[1]
    else {
        panic!("unexpected {:?}", ev[1]);
    };
    assert_eq!(*attempt, 2);
    assert!(
        previous.contains(&(m("web-01"), Some(path("web-01", 1)))),
        "pre-rollout generation kept: {previous:?}"
    );
    assert_eq!(
        f.status("r-1"),
        RolloutStatus::Running,
        "the stale failure does not re-fail the batch"
    );
    f.report("web-01", Report::on(2).healthy());
    f.report("web-02", Report::on(2).healthy());
    assert_eq!(f.status("r-1"), RolloutStatus::Completed);
}

#[test]
fn revert_sends_every_touched_machine_back_including_the_failed_batch() {
    let mut f = two_web_machines();
    let rollout = Rollout::of("rel-2")
        .staged(&["1", "1"])
        .on_failure(Revert)
        .to_hosts(&["web-01", "web-02"]);
    f.start("r-1", rollout);
    let first = f.machines_of_batch("r-1", 0)[0].clone();
    let second = f.machines_of_batch("r-1", 1)[0].clone();
    f.report(&first, Report::on(2).healthy());
    assert_eq!(f.desired(&second), Some(path(&second, 2)));

    let ev = f.report(&second, Report::on(2).unhealthy());

    assert_eq!(
        ev.kinds()[2..],
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
    f.start("r-1", rel2_to_all_web_machines().on_failure(Revert));

    f.report("web-02", Report::on(2).failed());

    assert_eq!(f.desired("web-01"), Some(path("web-01", 1)));
}

#[test]
fn a_machine_that_never_reported_has_its_desired_generation_cleared_on_revert() {
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);
    f.release("rel-2", &[("web-01", 2)]);
    let rollout = rel2_to_all_web_machines()
        .on_failure(Revert)
        .health_timeout(10);
    f.start("r-1", rollout);

    f.advance(10).assert_has("DesiredGenerationCleared");

    assert_eq!(f.desired("web-01"), None);
}

#[test]
fn cancel_stops_further_batches_and_leaves_desired_paths_alone() {
    let mut f = two_web_machines();
    f.start("r-1", Rollout::of("rel-2").canary().to_tags(&["web"]));

    f.cancel("r-1");

    let first = f.machines_of_batch("r-1", 0)[0].clone();
    f.report(&first, Report::on(2).healthy())
        .assert_kinds(&["ReportReceived", "HealthReported"]);
    assert_eq!(f.batch("r-1", 1).status, BatchStatus::Pending);
    assert_eq!(f.desired(&first), Some(path(&first, 2)));
    f.advance(3600).assert_kinds(&[]);
}

#[test]
fn a_machine_already_in_an_active_rollout_is_a_conflict() {
    let mut f = two_web_machines();
    f.start("r-1", Rollout::of("rel-2").to_hosts(&["web-01"]));

    let err = f.try_start("r-2", rel2_to_all_web_machines()).unwrap_err();

    assert_eq!(
        err,
        Rejection::Conflict("machine web-01 is in active rollout r-1".into())
    );
}

#[test]
fn invalid_rollout_parameters_are_rejected_with_a_reason_not_coerced() {
    let mut f = two_web_machines();
    let web = || rel2_to_all_web_machines();
    let cases = [
        (web().strategy("yolo"), "strategy"),
        (web().strategy("staged"), "batch_sizes"),
        (web().staged(&["0"]), "batch size"),
        (web().staged(&["x%"]), "batch size"),
        (web().canary().batch_sizes(&["2", "100%"]), "canary"),
        (web().failure_threshold("ten"), "failure_threshold"),
        (web().failure_threshold("101%"), "failure_threshold"),
        (web().on_failure_named("shrug"), "on_failure"),
        (web().health_timeout(0), "health_timeout"),
        (web().to_tags(&["db"]), "no active machines"),
        (web().to_hosts(&["ghost"]), "not registered"),
    ];
    for (rollout, needle) in cases {
        match f.try_start("r-x", rollout.clone()) {
            Err(Rejection::Invalid(msg)) => {
                assert!(msg.contains(needle), "{msg:?} should mention {needle:?}")
            }
            other => panic!("{rollout:?} gave {other:?}"),
        }
    }
    assert!(f.state.rollouts.is_empty(), "nothing was created");
    let err = f
        .try_start("r-x", Rollout::of("rel-9").canary().to_tags(&["web"]))
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
    let hosts: Vec<(String, u64)> = (1..20).map(|i| (format!("web-{i:02}"), 2)).collect();
    let hosts_ref: Vec<(&str, u64)> = hosts.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    f.release("rel-2", &hosts_ref[..18]);
    let spec = Rollout::of("rel-2")
        .staged(&["1", "25%", "100%"])
        .to_tags(&["web"])
        .spec();

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
    f.start("r-1", Rollout::of("rel-2").to_hosts(&["web-01"]));

    let rolled_back = Report::on(1)
        .failed()
        .message("rolled back: health checks failed")
        .rolled_back_from(2);
    f.report("web-01", rolled_back).assert_kinds(&[
        "ReportReceived",
        "MachineQuarantined",
        "BatchFailed",
        "RolloutPaused",
    ]);
    assert!(f.state.machines[&m("web-01")]
        .quarantined
        .contains_key(&path("web-01", 2)));

    f.resume("r-1")
        .assert_kinds(&["RolloutResumed", "QuarantineCleared", "BatchStarted"]);
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
    let to = |to| Command::SetLifecycle {
        machine: m("db-01"),
        to,
    };
    let err = f.rejected(to(Lifecycle::Pending));
    assert_eq!(
        err,
        Rejection::Conflict("invalid transition: active -> pending".into())
    );
    f.ok(to(Lifecycle::Decommissioned));
    f.rejected(to(Lifecycle::Active));
}

#[test]
fn declared_tags_replace_stored_ones_but_an_agent_declaring_none_keeps_them() {
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);

    f.report(
        "web-01",
        Report::without_generation().tags(&["web", "canary", "eu-west"]),
    );
    let got: Vec<String> = f.state.machines[&m("web-01")]
        .tags
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(got, ["canary", "eu-west", "web"]);

    f.report("web-01", Report::without_generation());
    assert_eq!(f.state.machines[&m("web-01")].tags.len(), 3);
}

#[test]
fn an_unknown_agent_registers_itself_as_active_on_its_first_report() {
    let mut f = Fleet::default();
    f.report("web-09", Report::without_generation())
        .assert_kinds(&["MachineRegistered", "ReportReceived"]);
    assert_eq!(f.state.machines[&m("web-09")].lifecycle, Lifecycle::Active);
}

#[test]
fn a_release_in_use_cannot_be_deleted() {
    let mut f = two_web_machines();
    f.start("r-1", rel2_to_all_web_machines());
    let err = f.rejected(Command::DeleteRelease {
        release: ReleaseId::parse("rel-2").unwrap(),
    });
    assert!(matches!(err, Rejection::Conflict(_)));
    let err = f.rejected(Command::DeleteRollout {
        rollout: RolloutId::parse("r-1").unwrap(),
    });
    assert!(
        matches!(err, Rejection::Conflict(_)),
        "an active rollout cannot be deleted"
    );
}

#[test]
fn incremental_state_equals_replay_after_a_full_story() {
    let mut f = two_web_machines();
    f.start("r-1", Rollout::of("rel-2").canary().to_tags(&["web"]));
    f.advance(61);
    f.resume("r-1");
    f.report("web-01", Report::on(2).healthy());
    f.report("web-02", Report::on(2).healthy());
    assert_eq!(f.replayed(), f.state);
}

// Issue 18, hole 3: health evidence must be measured after the batch started.

/// An all-at-once rollout of `release` to web-01 alone (threshold 0, pause, 60 s health timeout).
fn to_web01_alone(release: &str) -> Rollout {
    Rollout::of(release).all_at_once().to_hosts(&["web-01"])
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

/// web-01's poll report on the release path (generation 2): the failure, if any, is only in the
/// health results, measured `age_secs` before the report was sent by a clock `clock_ahead_secs`
/// ahead.
fn measured(passed: bool, age_secs: u64, clock_ahead_secs: u64) -> Report {
    let report = Report::on(2).measured(age_secs, clock_ahead_secs);
    if passed {
        report.healthy()
    } else {
        report.unhealthy()
    }
}

/// Given web-01 already running the release path, healthy, and a rollout of it started 10 s ago.
fn web01_on_the_release_path_in_a_started_batch() -> Fleet {
    let mut f = two_web_machines();
    f.report("web-01", Report::on(2).healthy());
    f.start("r-1", to_web01_alone("rel-2"));
    f.advance(10);
    f
}

fn health_of_web01(f: &Fleet) -> MachineHealth {
    f.health("r-1", 0, "web-01")
}

#[test]
fn a_pass_measured_before_the_batch_started_does_not_count() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    // A cached result, measured 30 s ago (20 s before the batch started), sent again now.
    f.report("web-01", measured(true, 30, 0)).assert_kinds(&[
        "ReportReceived",
        "HealthMeasured",
        "HealthReported",
    ]);
    assert_eq!(health_of_web01(&f), MachineHealth::Pending);
    assert_eq!(f.status("r-1"), RolloutStatus::Running);
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_pass_measured_after_the_batch_started_counts() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    f.report("web-01", measured(true, 30, 0));
    f.report("web-01", measured(true, 5, 0))
        .assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_failure_counts_at_once_however_old_its_measurement() {
    // Fresh: measured 5 s ago, after the batch started.
    let mut f = web01_on_the_release_path_in_a_started_batch();
    f.report("web-01", measured(false, 5, 0))
        .assert_ends_with(&["BatchFailed", "RolloutPaused"]);
    // Stale: measured before the batch started still counts (failures err on the safe side).
    let mut f = web01_on_the_release_path_in_a_started_batch();
    f.report("web-01", measured(false, 30, 0))
        .assert_ends_with(&["BatchFailed", "RolloutPaused"]);
}

#[test]
fn a_report_without_measurement_time_counts_as_measured_when_appended() {
    // Old logs hold HealthReported without HealthMeasured, and agents that send no time give the
    // same: such a pass is judged as before, as measured when it was appended.
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let ev = f.report("web-01", Report::on(2).healthy());
    ev.assert_lacks("HealthMeasured");
    ev.assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);
}

#[test]
fn a_measurement_time_in_the_future_is_taken_as_the_append_time() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    let now = f.now;
    let ev = f.run_as_machine(
        "web-01",
        Command::ReportMeasured {
            machine: m("web-01"),
            report: Report::on(2).health((vec![], true)).input("web-01"),
            auto_register: true,
            health_timestamp: now.plus_secs(3600),
            report_timestamp: None,
        },
    );
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
    let ev = f.report("web-01", measured(true, 30, 3600));
    let Event::HealthMeasured { measured_at, .. } = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(*measured_at, Timestamp(f.now.0 - 30_000));
    assert_eq!(health_of_web01(&f), MachineHealth::Pending);
    // A result measured 5 s ago, still by that clock, counts.
    f.report("web-01", measured(true, 5, 3600))
        .assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);
}

#[test]
fn after_a_resume_a_pass_measured_before_the_resume_does_not_count() {
    let mut f = web01_on_the_release_path_in_a_started_batch();
    f.report("web-01", measured(false, 1, 0))
        .assert_ends_with(&["BatchFailed", "RolloutPaused"]);
    f.advance(20);
    // Fixed and measured passing 15 s ago, i.e. before the operator resumes now.
    f.resume("r-1");
    f.advance(1);
    f.report("web-01", measured(true, 16, 0));
    assert_eq!(health_of_web01(&f), MachineHealth::Pending);
    f.report("web-01", measured(true, 0, 0))
        .assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);
}

// Issue 18, hole 4: a failed switch must not count as a success.

/// web-01 reports that it switched to generation 2 (`activation`, `outcome`), with passing
/// health checks on generation 2 in the same report, as the agent's "deployed" report does.
fn switch_report(
    f: &mut Fleet,
    activation: Activation,
    outcome: SwitchOutcome,
    exit_code: i32,
) -> Outcome {
    let running = if activation == Activation::Boot { 1 } else { 2 };
    f.run_as_machine(
        "web-01",
        Command::ReportActivation {
            report: Box::new(Command::Report {
                machine: m("web-01"),
                report: Report::on(running)
                    .message("deployed")
                    .healthy()
                    .input("web-01"),
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
}

/// Given web-01 on generation 1 and a rollout of generation 2 to it alone, with these options.
fn web01_rollout_with(options: RolloutOptions) -> (Fleet, Outcome) {
    let mut f = two_web_machines();
    let ev = f.start("r-1", to_web01_alone("rel-2").with_options(options));
    (f, ev)
}

#[test]
fn a_switch_with_failed_units_fails_the_gate_by_default_even_with_passing_health_checks() {
    let (mut f, ev) = web01_rollout_with(RolloutOptions::default());
    // Default options add no event.
    ev.assert_kinds(&["RolloutCreated", "BatchStarted", "DesiredGenerationSet"]);

    let ev = switch_report(&mut f, Activation::Switch, SwitchOutcome::FailedUnits, 4);

    ev.assert_has("SwitchReported");
    ev.assert_ends_with(&["BatchFailed", "RolloutPaused"]);
    let MachineHealth::Unhealthy(_, why) = health_of_web01(&f) else {
        panic!("not unhealthy: {:?}", health_of_web01(&f));
    };
    assert!(why.contains("3 units failed"), "{why}");
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn a_switch_with_failed_units_passes_the_gate_when_the_rollout_allows_failed_units() {
    let (mut f, ev) = web01_rollout_with(switch_allowing_failed_units());
    ev.assert_kinds(&[
        "RolloutCreated",
        "RolloutOptionsSet",
        "BatchStarted",
        "DesiredGenerationSet",
    ]);

    switch_report(&mut f, Activation::Switch, SwitchOutcome::FailedUnits, 4)
        .assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn later_passing_health_checks_do_not_undo_a_failed_switch_in_the_same_batch() {
    // A threshold of 1 keeps the batch open after web-01's failed switch.
    let mut f = two_web_machines();
    let rollout = rel2_to_all_web_machines()
        .failure_threshold("1")
        .with_options(RolloutOptions::default());
    f.start("r-1", rollout);

    switch_report(&mut f, Activation::Switch, SwitchOutcome::FailedUnits, 4);
    f.report("web-01", Report::on(2).healthy());

    assert!(
        matches!(health_of_web01(&f), MachineHealth::Unhealthy(..)),
        "{:?}",
        health_of_web01(&f)
    );
}

#[test]
fn a_switch_that_exited_with_another_error_fails_the_gate_even_when_failed_units_are_allowed() {
    let (mut f, _) = web01_rollout_with(switch_allowing_failed_units());
    switch_report(
        &mut f,
        Activation::Switch,
        SwitchOutcome::SwitchedWithErrors,
        2,
    )
    .assert_ends_with(&["BatchFailed", "RolloutPaused"]);
}

#[test]
fn a_boot_rollout_counts_a_machine_healthy_once_it_reports_the_release_pending_reboot() {
    let (mut f, _) = web01_rollout_with(boot_activation());
    // Its health checks ran on generation 1 (still running): they say nothing about the release.
    switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0)
        .assert_ends_with(&["BatchSucceeded", "RolloutCompleted"]);
    assert_eq!(f.rollout("r-1").options.activation, Activation::Boot);
    let last = f.state.machines[&m("web-01")].last_switch.clone().unwrap();
    assert_eq!(last.outcome, SwitchOutcome::PendingReboot);
}

#[test]
fn reboot_needed_is_kept_in_the_machine_projection_and_logged_only_when_it_changes() {
    let mut f = two_web_machines();
    let report = |parts: &[&str]| Command::ReportActivation {
        report: Box::new(Command::Report {
            machine: m("web-01"),
            report: Report::on(1).input("web-01"),
            auto_register: true,
        }),
        machine: m("web-01"),
        switch: None,
        reboot_needed: parts.iter().map(|s| s.to_string()).collect(),
    };
    f.run_as_machine("web-01", report(&["kernel", "initrd"]))
        .assert_kinds(&["ReportReceived", "RebootNeededSet"]);
    assert_eq!(
        f.state.machines[&m("web-01")].reboot_needed,
        ["kernel", "initrd"]
    );
    f.run_as_machine("web-01", report(&["kernel", "initrd"]))
        .assert_kinds(&["ReportReceived"]);
    f.run_as_machine("web-01", report(&[]))
        .assert_kinds(&["ReportReceived", "RebootNeededSet"]);
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
    switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0)
        .assert_has("SwitchReported");
    // Every later poll says "pending reboot" again: nothing new for the log.
    switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0)
        .assert_kinds(&["ReportReceived", "HealthReported"]);
    // A new rollout of the same path starts a batch: the same fact is evidence again.
    f.release("rel-2b", &[("web-01", 2)]);
    let again = to_web01_alone("rel-2b")
        .seed(1)
        .with_options(boot_activation());
    f.start("r-2", again);
    switch_report(&mut f, Activation::Boot, SwitchOutcome::PendingReboot, 0).assert_ends_with(&[
        "SwitchReported",
        "BatchSucceeded",
        "RolloutCompleted",
    ]);
    assert_eq!(f.replayed(), f.state);
}
