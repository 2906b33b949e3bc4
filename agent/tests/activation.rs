//! What a switch did, read from `switch-to-configuration`'s exit status (issue 18, hole 4), the
//! activation modes (switch, boot, test), and reboot-needed, against the real Nix store.
//!
//! Each fake system's `switch-to-configuration` is a script with the exit status under test: 0,
//! 4 (units failed, after activating, as NixOS does), 1 after activating, 1 before activating.
//! systemd is not PID 1 here, so the systemd-run mode runs against a stand-in `systemd-run` (a
//! shell script first on this test binary's PATH) that runs the command as `systemd-run --wait`
//! would and prints what it prints; the unit's output goes to a file that a stand-in `journalctl`
//! serves. The agent's parsing of that output is what these tests exercise, with real processes.

mod common;

use common::{desired, Machine};
use nixfleet_agent::cycle::Action;
use nixfleet_agent::switch::SwitchMode;
use nixfleet_proto::api::v1::SwitchReport;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A switch-to-configuration that records `ACTION path` in the marker, flips the current-system
/// link for switch and test when `activates`, prints NixOS's failed-units line when it exits 4,
/// and exits with `status`.
fn script(m: &Machine, activates: bool, status: i32) -> String {
    let flip = if activates {
        format!(
            "case \"$1\" in switch|test) ln -sfn \"$out\" {} ;; esac\n",
            m.current.display()
        )
    } else {
        String::new()
    };
    let failed = if status == 4 {
        "echo 'warning: the following units failed: nginx.service, app.service' >&2\n"
    } else {
        ""
    };
    format!(
        "#!/bin/sh\nout=$(dirname \"$(dirname \"$0\")\")\necho \"$1 $out\" >> {}\n{flip}{failed}exit {status}\n",
        m.marker.display()
    )
}

fn switch_of(report: &nixfleet_proto::api::v1::Report) -> &SwitchReport {
    report
        .switch
        .as_ref()
        .unwrap_or_else(|| panic!("the report says what the switch did: {report:?}"))
}

#[test]
fn a_switch_that_exits_0_is_reported_switched() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let v2 = m.build_with_switch("nixos-system-act-exit0", true, &script(&m, true, 0));
    m.boot_into(&v1);

    let out = m.agent().handle_desired(Some(&desired(v2.as_str(), None)));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert_eq!(out.report.message, "deployed");
    let s = switch_of(&out.report);
    assert_eq!(
        (
            s.path.as_str(),
            s.activation.as_str(),
            s.outcome.as_str(),
            s.exit_code
        ),
        (v2.as_str(), "switch", "switched", Some(0))
    );
    assert_eq!(m.switches(), vec![format!("switch {v2}")]);
}

#[test]
fn a_switch_whose_units_failed_exit_4_is_reported_with_the_count_and_left_for_the_gate() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let v2 = m.build_with_switch("nixos-system-act-exit4", true, &script(&m, true, 4));
    m.boot_into(&v1);

    let out = m.agent().handle_desired(Some(&desired(v2.as_str(), None)));

    // The health checks pass, so the agent keeps it; the gate decides (failed units fail it by
    // default), so the report says what happened rather than "deployed".
    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert!(out.report.success);
    assert_eq!(out.report.message, "deployed; switched, 2 units failed");
    let s = switch_of(&out.report);
    assert_eq!(
        (s.outcome.as_str(), s.exit_code, s.failed_units),
        ("failed_units", Some(4), Some(2))
    );
    assert_eq!(m.running(), v2.as_str());
}

#[test]
fn a_switch_that_exits_1_after_activating_is_reported_switched_with_errors() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let v2 = m.build_with_switch("nixos-system-act-exit1-late", true, &script(&m, true, 1));
    m.boot_into(&v1);

    let out = m.agent().handle_desired(Some(&desired(v2.as_str(), None)));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert_eq!(
        out.report.message,
        "deployed; switched with errors (exit status 1)"
    );
    let s = switch_of(&out.report);
    assert_eq!(
        (s.outcome.as_str(), s.exit_code, s.failed_units),
        ("switched_with_errors", Some(1), None)
    );
}

#[test]
fn a_switch_that_exits_1_before_activating_is_rolled_back_and_reported_not_switched() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let v2 = m.build_with_switch("nixos-system-act-exit1-early", true, &script(&m, false, 1));
    m.boot_into(&v1);

    let out = m.agent().handle_desired(Some(&desired(v2.as_str(), None)));

    assert_eq!(out.action, Action::RolledBack, "{:?}", out.report);
    assert!(!out.report.success);
    assert!(
        out.report.message.starts_with(
            "rolled back: switch failed: switch-to-configuration failed: exit status: 1"
        ),
        "{}",
        out.report.message
    );
    let s = switch_of(&out.report);
    assert_eq!(
        (s.path.as_str(), s.outcome.as_str()),
        (v2.as_str(), "not_switched")
    );
    assert_eq!(m.running(), v1.as_str());
}

#[test]
fn a_boot_activation_sets_profile_and_boot_entry_reports_pending_reboot_until_the_machine_runs_it()
{
    let m = Machine::new();
    let v1 = m.build_with_switch("nixos-system-act-boot-v1", true, &script(&m, true, 0));
    let v2 = m.build_with_switch("nixos-system-act-boot-v2", true, &script(&m, true, 0));
    m.boot_into(&v1);
    let mut agent = m.agent();
    let want = desired(v2.as_str(), Some("boot"));

    let out = agent.handle_desired(Some(&want));

    assert_eq!(out.action, Action::PendingReboot, "{:?}", out.report);
    assert!(out.report.success);
    assert_eq!(
        out.report.message,
        format!("pending reboot: {v2} is set to boot")
    );
    let s = switch_of(&out.report);
    assert_eq!(
        (s.activation.as_str(), s.outcome.as_str(), s.exit_code),
        ("boot", "pending_reboot", Some(0))
    );
    assert_eq!(m.running(), v1.as_str(), "nothing was activated");
    assert_eq!(m.profile_target(), v2.as_str());
    assert_eq!(m.switches(), vec![format!("boot {v2}")]);
    assert_eq!(out.report.current_generation, v1.as_str());

    // The next poll does not apply it again, and still says pending reboot.
    let again = agent.handle_desired(Some(&want));
    assert_eq!(again.action, Action::PendingReboot);
    assert_eq!(switch_of(&again.report).outcome, "pending_reboot");
    assert_eq!(m.switches().len(), 1);

    // After the reboot it runs it.
    m.boot_into(&v2);
    let after = agent.handle_desired(Some(&want));
    assert_eq!(after.action, Action::UpToDate);
    assert_eq!(after.report.switch, None);
}

#[test]
fn a_failed_boot_activation_puts_the_previous_boot_entry_back() {
    let m = Machine::new();
    let v1 = m.build_with_switch("nixos-system-act-boot-v1", true, &script(&m, true, 0));
    let bad = m.build_with_switch("nixos-system-act-boot-bad", true, &script(&m, false, 1));
    m.boot_into(&v1);

    let out = m
        .agent()
        .handle_desired(Some(&desired(bad.as_str(), Some("boot"))));

    assert_eq!(out.action, Action::RolledBack, "{:?}", out.report);
    assert_eq!(m.profile_target(), v1.as_str());
    assert_eq!(m.running(), v1.as_str());
    assert_eq!(
        m.switches(),
        vec![format!("boot {bad}"), format!("boot {v1}")],
        "the boot entry was written back, nothing was activated"
    );
    assert_eq!(switch_of(&out.report).outcome, "not_switched");
}

#[test]
fn a_test_activation_activates_without_touching_the_profile_and_rolls_back_the_same_way() {
    let m = Machine::new();
    let v1 = m.build_with_switch("nixos-system-act-test-v1", true, &script(&m, true, 0));
    let v2 = m.build_with_switch("nixos-system-act-test-v2", true, &script(&m, true, 0));
    let bad = m.build_with_switch("nixos-system-act-test-bad", false, &script(&m, true, 0));
    m.boot_into(&v1);
    let generations = m.profile_generations();
    let mut agent = m.agent();

    let out = agent.handle_desired(Some(&desired(v2.as_str(), Some("test"))));
    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert_eq!(switch_of(&out.report).activation, "test");
    assert_eq!(m.running(), v2.as_str());
    assert_eq!(m.profile_target(), v1.as_str(), "the profile is left alone");
    assert_eq!(m.profile_generations(), generations);

    let out = agent.handle_desired(Some(&desired(bad.as_str(), Some("test"))));
    assert_eq!(out.action, Action::RolledBack, "{:?}", out.report);
    assert_eq!(m.running(), v2.as_str());
    assert_eq!(m.profile_target(), v1.as_str());
    assert_eq!(
        m.switches(),
        vec![
            format!("test {v2}"),
            format!("test {bad}"),
            format!("test {v2}")
        ]
    );
}

#[test]
fn an_unknown_activation_is_refused_without_applying_anything() {
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let v2 = m.build("nixos-system-act-v2", true);
    m.boot_into(&v1);

    let out = m
        .agent()
        .handle_desired(Some(&desired(v2.as_str(), Some("dry-activate"))));

    assert_eq!(out.action, Action::Invalid);
    assert!(!out.report.success);
    assert_eq!(
        out.report.message,
        "unknown activation \"dry-activate\"; this agent knows switch, boot and test"
    );
    assert!(m.switches().is_empty());
}

/// A directory holding `kernel`, `initrd` and `systemd`: files, or links to `base`'s for the
/// names in `shared`.
fn boot_parts(m: &Machine, name: &str, base: Option<&Path>, shared: &[&str]) -> PathBuf {
    let dir = m.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for part in ["kernel", "initrd", "systemd"] {
        match base.filter(|_| shared.contains(&part)) {
            Some(b) => std::os::unix::fs::symlink(b.join(part), dir.join(part)).expect("symlink"),
            None => std::fs::write(dir.join(part), format!("{name} {part}")).expect("write"),
        }
    }
    dir
}

#[test]
fn reports_say_which_booted_parts_differ_from_the_running_generation() {
    let m = Machine::new();
    let parts1 = boot_parts(&m, "parts-1", None, &[]);
    let parts2 = boot_parts(&m, "parts-2", Some(&parts1), &["systemd"]);
    let v1 = m.build_full("nixos-system-act-kernel-v1", true, "", Some(&parts1));
    let v2 = m.build_full("nixos-system-act-kernel-v2", true, "", Some(&parts2));
    m.reboot_into(&v1);
    let mut agent = m.agent();
    let up = agent.handle_desired(Some(&desired(v1.as_str(), None)));
    assert_eq!(up.report.reboot_needed, Vec::<String>::new());

    let out = agent.handle_desired(Some(&desired(v2.as_str(), None)));
    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert_eq!(out.report.reboot_needed, ["kernel", "initrd"]);
    assert_eq!(agent.health_report().reboot_needed, ["kernel", "initrd"]);

    m.reboot_into(&v2);
    let after = agent.handle_desired(Some(&desired(v2.as_str(), None)));
    assert_eq!(after.report.reboot_needed, Vec::<String>::new());
}

/// This test binary's PATH starts with stand-ins for `systemd-run` and `journalctl` (see the
/// module doc); returns the file where the stand-in records its arguments.
fn systemd_stand_ins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("nixfleet-systemd-run")
            .tempdir()
            .expect("tempdir")
            .keep();
        let d = dir.display();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write stand-in");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        };
        write(
            "systemd-run",
            format!(
                r#"#!/bin/sh
echo "$*" >> {d}/calls
unit=
while [ $# -gt 0 ]; do
  case "$1" in --unit=*) unit=${{1#--unit=}} ;; --) shift; break ;; esac
  shift
done
echo "Running as unit: $unit.service; invocation ID: 0123" >&2
# As in a real unit, the command runs apart from systemd-run: killing systemd-run leaves it running.
setsid "$@" > {d}/$unit.service.log 2>&1 &
pid=$!
echo $pid > {d}/$unit.service.pid
wait $pid
status=$?
if [ $status -eq 0 ]; then echo "Finished with result: success" >&2; else echo "Finished with result: exit-code" >&2; fi
echo "Main processes terminated with: code=exited/status=$status" >&2
echo "Service runtime: 12ms" >&2
exit $status
"#
            ),
        );
        write(
            "systemctl",
            format!(
                r#"#!/bin/sh
if [ "$1" = stop ]; then
  echo "$*" >> {d}/calls
  pid=$(cat {d}/$2.pid) && /bin/kill -s KILL -- -$pid
  exit 0
fi
for s in /usr/bin/systemctl /bin/systemctl; do [ -x $s ] && exec $s "$@"; done
exit 1
"#
            ),
        );
        write(
            "journalctl",
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do last=$a; done\ncat {d}/$last.log\n"
            ),
        );
        let path = std::env::var("PATH").unwrap_or_default();
        // Set once, before any test of this binary starts a process that looks at PATH.
        std::env::set_var("PATH", format!("{}:{path}", dir.display()));
        dir
    })
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn in_systemd_run_mode_a_switch_past_its_timeout_is_stopped_before_the_rollback() {
    let dir = systemd_stand_ins();
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let pid_file = m.marker.with_extension("hung-pid");
    let hang = format!(
        "#!/bin/sh
echo $$ > {}
exec sleep 300
",
        pid_file.display()
    );
    let v2 = m.build_with_switch("nixos-system-act-sd-hang", true, &hang);
    m.boot_into(&v1);
    let mut settings = m.settings(false, None);
    settings.switcher.mode = SwitchMode::SystemdRun;
    settings.switcher.timeout = std::time::Duration::from_secs(2);

    let out = m
        .agent_with(settings)
        .handle_desired(Some(&desired(v2.as_str(), None)));

    assert_eq!(
        out.report.rolled_back_from.as_deref(),
        Some(v2.as_str()),
        "{:?}",
        out.report
    );
    assert_eq!(m.running(), v1.as_str());
    let pid = std::fs::read_to_string(&pid_file).expect("the switch ran");
    let pid = pid.trim();
    assert!(
        !alive(pid),
        "the hung switch (pid {pid}) still runs after the rollback: on NixOS it would hold the switch lock; report: {}",
        out.report.message
    );
    let calls = std::fs::read_to_string(dir.join("calls")).expect("calls");
    assert!(
        calls
            .lines()
            .any(|l| l.starts_with("stop nixfleet-switch-")),
        "{calls}"
    );
}

fn systemd_run_agent(m: &Machine) -> nixfleet_agent::cycle::Agent {
    let mut settings = m.settings(false, None);
    settings.switcher.mode = SwitchMode::SystemdRun;
    m.agent_with(settings)
}

#[test]
fn in_systemd_run_mode_the_units_exit_status_4_and_its_failed_units_are_reported() {
    let dir = systemd_stand_ins();
    let m = Machine::new();
    let v1 = m.build("nixos-system-act-v1", true);
    let v2 = m.build_with_switch("nixos-system-act-sd-exit4", true, &script(&m, true, 4));
    m.boot_into(&v1);

    let out = systemd_run_agent(&m).handle_desired(Some(&desired(v2.as_str(), None)));

    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    let s = switch_of(&out.report);
    assert_eq!(
        (s.outcome.as_str(), s.exit_code, s.failed_units),
        ("failed_units", Some(4), Some(2)),
        "the exit status from systemd-run --wait, the count from the unit's journal"
    );
    let calls = std::fs::read_to_string(dir.join("calls")).expect("systemd-run ran");
    let call = calls
        .lines()
        .find(|l| l.contains(v2.as_str()))
        .expect("a call for v2");
    assert!(
        call.contains("--wait") && call.contains("--collect"),
        "{call}"
    );
    assert!(
        call.ends_with(&format!("-- {v2}/bin/switch-to-configuration switch")),
        "{call}"
    );
}

#[test]
fn in_systemd_run_mode_exit_status_0_is_switched_and_1_before_activating_rolls_back() {
    systemd_stand_ins();
    let m = Machine::new();
    let v1 = m.build_with_switch("nixos-system-act-sd-v1", true, &script(&m, true, 0));
    let v2 = m.build_with_switch("nixos-system-act-sd-v2", true, &script(&m, true, 0));
    let bad = m.build_with_switch("nixos-system-act-sd-bad", true, &script(&m, false, 1));
    m.boot_into(&v1);
    let mut agent = systemd_run_agent(&m);

    let out = agent.handle_desired(Some(&desired(v2.as_str(), None)));
    assert_eq!(out.action, Action::Deployed, "{:?}", out.report);
    assert_eq!(
        (
            switch_of(&out.report).outcome.as_str(),
            switch_of(&out.report).exit_code
        ),
        ("switched", Some(0))
    );

    let out = agent.handle_desired(Some(&desired(bad.as_str(), None)));
    assert_eq!(out.action, Action::RolledBack, "{:?}", out.report);
    assert!(
        out.report
            .message
            .contains("switch-to-configuration failed: exit status: 1"),
        "{}",
        out.report.message
    );
    assert_eq!(switch_of(&out.report).outcome, "not_switched");
    assert_eq!(m.running(), v2.as_str());
}
