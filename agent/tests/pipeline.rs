//! The fetch → apply → verify → rollback pipeline against the real Nix store of this machine.
//!
//! Each test builds its own fake system closures (see `common`), drives `Agent::handle_desired` with
//! a `DesiredGeneration` value, and checks the report, the current-system link, the profile and the
//! switch marker.

mod common;

use common::{delete, fabricated_path, is_valid, publish, Machine};
use nixfleet_agent::cycle::Action;
use nixfleet_proto::api::v1::DesiredGeneration;
use std::time::Duration;

fn desired(path: &str) -> DesiredGeneration {
    common::desired(path, None)
}

#[test]
fn a_new_generation_is_applied_verified_and_reported_as_deployed_with_its_health() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-v2", true);
    m.boot_into(&v1);
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(v2.as_str())));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert!(out.ok);
    assert!(out.report.success);
    assert_eq!(out.report.message, "deployed");
    assert_eq!(out.report.current_generation, v2.as_str());
    assert_eq!(
        out.report.tags,
        vec!["web".to_owned(), "eu-west".to_owned()]
    );
    assert_eq!(out.report.rolled_back_from, None);
    let health = out
        .report
        .health
        .expect("the deploy report carries the verification results");
    assert!(health.all_passed);
    assert_eq!(health.results.len(), 1);
    assert_eq!(health.results[0].check_name(), "app");
    assert_eq!(m.running(), v2.as_str());
    assert_eq!(m.profile_target(), v2.as_str());
    assert_eq!(m.switches(), vec![format!("switch {v2}")]);
    let root = |name: &str| {
        std::fs::read_link(m.state_dir.join("gcroots").join(name))
            .expect("root")
            .display()
            .to_string()
    };
    assert_eq!(root("desired"), v2.as_str());
    assert_eq!(
        root("previous"),
        v1.as_str(),
        "the rollback target is kept alive"
    );
    let gc = std::process::Command::new("nix-store")
        .arg("--delete")
        .arg(v1.as_str())
        .output()
        .expect("nix-store --delete");
    assert!(
        !gc.status.success(),
        "a garbage collection cannot delete the rollback target"
    );
    assert!(is_valid(&v1));
}

#[test]
fn the_running_generation_is_reported_up_to_date_with_the_latest_health() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    m.boot_into(&v1);
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(v1.as_str())));

    assert_eq!(out.action, Action::UpToDate);
    assert!(out.report.success);
    assert_eq!(out.report.message, "up-to-date");
    assert_eq!(out.report.current_generation, v1.as_str());
    assert!(out.report.health.expect("health attached").all_passed);
    assert!(m.switches().is_empty(), "nothing was switched");
}

#[test]
fn a_failed_health_check_rolls_back_to_the_exact_pre_deploy_generation_and_quarantines_the_path() {
    let m = Machine::new();
    let v0 = m.build("nixos-system-web-01-v0", true);
    let v1 = m.build("nixos-system-web-01-v1", true);
    let boot_only = m.build("nixos-system-web-01-boot-only", true);
    let bad = m.build("nixos-system-web-01-bad", false);
    m.boot_into(&v0);
    m.boot_into(&v1);
    // Someone ran `nixos-rebuild boot`: the newest profile generation is not the running one, so
    // v0.1's "second-newest profile generation" would pick the wrong rollback target.
    m.set_profile(&boot_only);
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(bad.as_str())));

    assert_eq!(out.action, Action::RolledBack, "{:?}", out.report);
    assert!(!out.report.success);
    assert!(
        out.report
            .message
            .starts_with("rolled back: health checks failed: app: "),
        "message: {}",
        out.report.message
    );
    assert_eq!(out.report.rolled_back_from.as_deref(), Some(bad.as_str()));
    assert_eq!(out.report.current_generation, v1.as_str());
    assert_eq!(
        m.running(),
        v1.as_str(),
        "back on exactly the generation that ran before"
    );
    assert_eq!(
        m.profile_target(),
        v1.as_str(),
        "the profile points at it too, so a reboot keeps it"
    );
    assert!(
        out.report
            .health
            .expect("health of the restored system")
            .all_passed
    );
    assert_eq!(
        m.switches(),
        vec![format!("switch {bad}"), format!("switch {v1}")]
    );
    assert!(agent.quarantine().contains(bad.as_str()));

    // The control plane has not processed the rollback yet and sends the same path again.
    let again = agent.handle_desired(Some(&desired(bad.as_str())));
    assert_eq!(again.action, Action::Quarantined);
    assert!(
        again.report.message.starts_with("quarantined: "),
        "{}",
        again.report.message
    );
    assert_eq!(
        m.switches().len(),
        2,
        "the quarantined path was not applied a second time"
    );
    assert_eq!(m.running(), v1.as_str());

    // A new agent process (restart) still remembers.
    let mut restarted = m.agent();
    assert_eq!(
        restarted
            .handle_desired(Some(&desired(bad.as_str())))
            .action,
        Action::Quarantined
    );
    assert_eq!(m.switches().len(), 2);
}

#[test]
fn an_operator_clearing_the_quarantine_on_the_control_plane_lets_the_agent_try_again() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let bad = m.build("nixos-system-web-01-flaky", false);
    m.boot_into(&v1);
    let mut agent = m.agent();
    assert_eq!(
        agent.handle_desired(Some(&desired(bad.as_str()))).action,
        Action::RolledBack
    );

    let mut acknowledged = desired(bad.as_str());
    acknowledged.quarantined = true;
    assert_eq!(
        agent.handle_desired(Some(&acknowledged)).action,
        Action::Quarantined
    );
    assert_eq!(m.switches().len(), 2);

    // The operator cleared it: the same path now comes with quarantined = false.
    let out = agent.handle_desired(Some(&desired(bad.as_str())));
    assert_eq!(
        out.action,
        Action::RolledBack,
        "applied again, and failed again"
    );
    assert_eq!(m.switches().len(), 4);
    assert_eq!(m.running(), v1.as_str());
}

#[test]
fn a_path_missing_locally_with_no_cache_url_fails_and_touches_nothing() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    m.boot_into(&v1);
    let generations = m.profile_generations();
    let missing = fabricated_path();
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(missing.as_str())));

    assert_eq!(out.action, Action::FetchFailed);
    assert!(!out.ok, "a fetch failure is retried at the retry interval");
    assert!(!out.report.success);
    assert_eq!(
        out.report.message,
        format!("store path {missing} not found locally and no cache URL configured")
    );
    assert_eq!(m.running(), v1.as_str(), "current-system untouched");
    assert_eq!(m.profile_target(), v1.as_str(), "profile untouched");
    assert_eq!(
        m.profile_generations(),
        generations,
        "no profile generation added"
    );
    assert!(m.switches().is_empty());
    assert!(
        !agent.quarantine().contains(missing.as_str()),
        "a missing path is not a failed path"
    );
}

#[test]
fn a_closure_without_switch_to_configuration_is_refused_before_anything_changes() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let data = m.build_not_a_system("not-a-system");
    m.boot_into(&v1);
    let generations = m.profile_generations();
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(data.as_str())));

    assert_eq!(out.action, Action::Refused);
    assert!(!out.report.success);
    assert_eq!(
        out.report.message,
        format!("refused: {data} is not a system closure: it lacks bin/switch-to-configuration")
    );
    assert_eq!(m.running(), v1.as_str());
    assert_eq!(m.profile_generations(), generations);
    assert!(agent.quarantine().contains(data.as_str()));
}

#[test]
fn dry_run_fetches_but_applies_nothing_and_says_so() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-v2", true);
    m.boot_into(&v1);
    let mut agent = m.agent_with(m.settings(true, None));

    let out = agent.handle_desired(Some(&desired(v2.as_str())));

    assert_eq!(out.action, Action::DryRun);
    assert!(out.report.success);
    assert!(out.report.dry_run);
    assert_eq!(out.report.message, "dry-run: would apply");
    assert_eq!(m.running(), v1.as_str());
    assert_eq!(m.profile_target(), v1.as_str());
    assert!(m.switches().is_empty());
}

#[test]
fn a_failing_switch_is_rolled_back() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let broken = m.build_with_switch(
        "nixos-system-web-01-broken-switch",
        true,
        "#!/bin/sh\necho activation failed >&2\nexit 3",
    );
    m.boot_into(&v1);
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(broken.as_str())));

    assert_eq!(out.action, Action::RolledBack);
    assert!(
        out.report.message.starts_with("rolled back: switch failed: switch-to-configuration failed: exit status: 3: activation failed"),
        "{}",
        out.report.message
    );
    assert_eq!(
        out.report.rolled_back_from.as_deref(),
        Some(broken.as_str())
    );
    assert_eq!(m.running(), v1.as_str());
    assert_eq!(m.profile_target(), v1.as_str());
}

#[test]
fn a_switch_that_hangs_past_the_deadline_is_killed_and_rolled_back() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let hangs = m.build_with_switch("nixos-system-web-01-hangs", true, "#!/bin/sh\nsleep 600");
    m.boot_into(&v1);
    let mut settings = m.settings(false, None);
    settings.switcher.timeout = Duration::from_secs(2);
    let mut agent = m.agent_with(settings);

    let started = std::time::Instant::now();
    let out = agent.handle_desired(Some(&desired(hangs.as_str())));

    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.action, Action::RolledBack);
    assert!(
        out.report.message.contains("did not finish within 2 s"),
        "{}",
        out.report.message
    );
    assert_eq!(m.running(), v1.as_str());
}

#[test]
fn a_signed_closure_is_fetched_from_a_file_cache_after_being_deleted_locally() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-cached", true);
    m.boot_into(&v1);
    let cache_dir = m.dir.path().join("cache");
    let url = publish(&v2, &cache_dir, true);
    delete(&v2);
    let mut agent = m.agent();
    let mut d = desired(v2.as_str());
    d.cache_url = Some(url);

    let out = agent.handle_desired(Some(&d));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert!(is_valid(&v2));
    assert_eq!(m.running(), v2.as_str());
}

#[test]
fn an_unsigned_closure_in_the_cache_is_refused_because_signatures_are_required() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-unsigned", true);
    m.boot_into(&v1);
    let cache_dir = m.dir.path().join("cache");
    let url = publish(&v2, &cache_dir, false);
    delete(&v2);
    // The agent's own --cache-url this time, not the control plane's.
    let mut agent = m.agent_with(m.settings(false, Some(&url)));

    let out = agent.handle_desired(Some(&desired(v2.as_str())));

    assert_eq!(out.action, Action::FetchFailed, "{:?}", out.report);
    assert!(
        out.report.message.contains("lacks a valid signature"),
        "{}",
        out.report.message
    );
    assert!(!is_valid(&v2));
    assert_eq!(m.running(), v1.as_str());
}

#[test]
fn a_signed_closure_is_fetched_from_a_cache_served_over_http() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-over-http", true);
    m.boot_into(&v1);
    let cache_dir = m.dir.path().join("cache");
    publish(&v2, &cache_dir, true);
    delete(&v2);
    let server = HttpServer::serve(&cache_dir);
    let mut agent = m.agent();
    let mut d = desired(v2.as_str());
    d.cache_url = Some(server.url.clone());

    let out = agent.handle_desired(Some(&d));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert_eq!(m.running(), v2.as_str());
}

/// `python3 -m http.server` on a loopback port, killed on drop.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl HttpServer {
    fn serve(dir: &std::path::Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leaves the state a process killed mid-deploy leaves: the deploy record, the profile set to
/// `target` and, when `switched`, the current-system link flipped to it.
fn interrupted_deploy(
    m: &Machine,
    target: &nixfleet_ids::StorePath,
    previous: &str,
    attempts: u32,
    switched: bool,
) {
    nixfleet_agent::inflight::Journal::new(&m.state_dir)
        .start(&nixfleet_agent::inflight::InFlight {
            target: target.to_string(),
            previous: Some(previous.to_owned()),
            attempts,
            at: "2026-11-25T08:00:00.000Z".into(),
        })
        .expect("write the deploy record");
    m.set_profile(target);
    if switched {
        let _ = std::fs::remove_file(&m.current);
        std::os::unix::fs::symlink(target.as_str(), &m.current).expect("symlink");
    }
}

#[test]
fn a_deploy_interrupted_after_the_switch_is_verified_and_rolled_back_by_the_next_agent_process() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let bad = m.build("nixos-system-web-01-bad", false);
    m.boot_into(&v1);
    interrupted_deploy(&m, &bad, v1.as_str(), 1, true);

    let out = m.agent().handle_desired(Some(&desired(bad.as_str())));

    assert_eq!(out.action, Action::RolledBack, "{:?}", out.report);
    assert_eq!(out.report.rolled_back_from.as_deref(), Some(bad.as_str()));
    assert_eq!(m.running(), v1.as_str());
    assert_eq!(m.profile_target(), v1.as_str());
    assert!(
        !m.state_dir
            .join(nixfleet_agent::inflight::FILE_NAME)
            .exists(),
        "the record is gone"
    );
}

#[test]
fn a_deploy_interrupted_after_the_switch_of_a_healthy_generation_is_reported_deployed() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-v2", true);
    m.boot_into(&v1);
    interrupted_deploy(&m, &v2, v1.as_str(), 1, true);

    let out = m.agent().handle_desired(Some(&desired(v2.as_str())));

    assert_eq!(out.action, Action::Deployed);
    assert_eq!(out.report.message, "deployed");
    assert!(out.report.health.expect("verification results").all_passed);
    assert!(m.switches().is_empty(), "verified without switching again");
}

#[test]
fn a_deploy_interrupted_before_the_switch_is_tried_again_and_quarantined_after_two_interruptions() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-v2", true);
    let v3 = m.build("nixos-system-web-01-v3", true);
    m.boot_into(&v1);

    interrupted_deploy(&m, &v2, v1.as_str(), 1, false);
    let out = m.agent().handle_desired(Some(&desired(v2.as_str())));
    assert_eq!(
        out.action,
        Action::Deployed,
        "one interruption: applied again"
    );

    m.boot_into(&v1);
    interrupted_deploy(&m, &v3, v1.as_str(), 2, false);
    let out = m.agent().handle_desired(Some(&desired(v3.as_str())));
    assert_eq!(out.action, Action::Quarantined, "{:?}", out.report);
    assert!(
        out.report.message.contains("interrupted 2 times"),
        "{}",
        out.report.message
    );
    assert_eq!(m.running(), v1.as_str());
}

#[test]
fn a_switch_already_running_defers_the_deploy_instead_of_failing_it() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-v2", true);
    m.boot_into(&v1);
    let lock = std::fs::File::create(m.switch_lock()).expect("lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("hold the lock");
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(v2.as_str())));
    assert_eq!(out.action, Action::Deferred);
    assert!(!out.ok, "retried at the retry interval");
    assert!(m.switches().is_empty());
    assert_eq!(m.running(), v1.as_str());
    assert!(
        !agent.quarantine().contains(v2.as_str()),
        "a busy system is not the generation's fault"
    );

    drop(lock);
    assert_eq!(
        agent.handle_desired(Some(&desired(v2.as_str()))).action,
        Action::Deployed
    );
}

#[test]
fn a_check_that_passes_shortly_after_the_switch_does_not_roll_back_a_good_generation() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let v2 = m.build("nixos-system-web-01-slow-start", true);
    m.boot_into(&v1);
    // The "service" answers from its second probe on, like a server still binding its port.
    let probes = m.dir.path().join("probes");
    std::fs::write(
        &m.health_config,
        format!(
            r#"{{"command":[{{"name":"slow-start","command":"echo x >> {p}; test $(wc -l < {p}) -ge 2"}}]}}"#,
            p = probes.display()
        ),
    )
    .expect("write health config");
    let mut settings = m.settings(false, None);
    settings.verify_window = Duration::from_secs(10);
    let mut agent = m.agent_with(settings);

    let started = std::time::Instant::now();
    let out = agent.handle_desired(Some(&desired(v2.as_str())));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert!(out.report.health.expect("health").all_passed);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(m.running(), v2.as_str());
}

#[test]
fn a_check_that_keeps_failing_rolls_back_when_the_verification_window_ends() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-web-01-v1", true);
    let bad = m.build("nixos-system-web-01-bad", false);
    m.boot_into(&v1);
    let mut settings = m.settings(false, None);
    settings.verify_window = Duration::from_secs(3);
    let mut agent = m.agent_with(settings);

    let started = std::time::Instant::now();
    let out = agent.handle_desired(Some(&desired(bad.as_str())));

    assert_eq!(out.action, Action::RolledBack);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "retried for the whole window"
    );
    assert_eq!(m.running(), v1.as_str());
}
