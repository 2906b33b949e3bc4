//! The safety net of `deploy --ssh`: the switch runs detached on the target, the CLI confirms it
//! after its health checks, and without a confirmation (failed check, failed switch, lost
//! connection, killed CLI) the target rolls itself back. Against a real sshd in a network
//! namespace with its own Nix store (see `common::sshd`); the "running system" is the marker
//! file each generation's `switch-to-configuration` writes, the boot default is the system
//! profile on the target.

mod common;
use common::sshd::{store_path_of, SshTarget};
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A flake with one host, `target`, whose `switch-to-configuration` writes
/// `active=<gen> arg=$1` to `marker`, then sleeps `sleep_secs` and exits `exit`.
fn write_flake(dir: &Path, gen: &str, marker: &Path, sleep_secs: u32, exit: u8) {
    std::fs::create_dir_all(dir).expect("mkdir flake");
    let flake = r#"{
  outputs = { self }: {
    nixosConfigurations.target.config.system.build.toplevel = builtins.derivation {
      name = "nixos-system-target-GEN"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
      args = [ "-c" ''
        mkdir -p $out/bin
        printf '#!/bin/sh\necho "active=GEN arg=$1" > MARKER\nsleep SLEEP\nexit EXIT\n' > $out/bin/switch-to-configuration
        chmod +x $out/bin/switch-to-configuration
      '' ];
    };
  };
}
"#
    .replace("MARKER", &marker.display().to_string())
    .replace("GEN", gen)
    .replace("SLEEP", &sleep_secs.to_string())
    .replace("EXIT", &exit.to_string());
    std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
}

struct Env {
    s: Scratch,
    t: SshTarget,
}

impl Env {
    fn new(tag: &str) -> Env {
        let s = Scratch::new(tag);
        let t = SshTarget::start(&s);
        Env { s, t }
    }

    fn flake(&self, gen: &str, sleep_secs: u32, exit: u8) {
        write_flake(
            &self.s.join("flake"),
            gen,
            &self.s.join("marker"),
            sleep_secs,
            exit,
        );
    }

    fn deploy_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = self.t.nixfleet(&self.s);
        cmd.args(["deploy", "--ssh", "--hosts", "target", "--flake"])
            .arg(self.s.join("flake"))
            .args(extra);
        cmd
    }

    fn deploy(&self, extra: &[&str]) -> Output {
        run(&mut self.deploy_cmd(extra))
    }

    /// Deploys generation `gen` (a switch that succeeds) and returns its store path.
    fn deploy_ok(&self, gen: &str) -> String {
        self.flake(gen, 0, 0);
        let out = self.deploy(&["--confirm-timeout", "15"]);
        assert!(out.status.success(), "deploy {gen}: {}", stderr(&out));
        store_path_of(&out, gen)
    }

    /// Given the target deployed to g1 and the flake at g2, whose switch sleeps `sleep_secs` and
    /// exits `exit`: g1's store path.
    fn given_g1_deployed_and_a_g2_flake(&self, sleep_secs: u32, exit: u8) -> String {
        let p1 = self.deploy_ok("g1");
        self.flake("g2", sleep_secs, exit);
        p1
    }

    fn marker(&self) -> String {
        common::sshd::marker(&self.s)
    }

    /// Waits until the target runs the switch to `gen` (its state "switching", its marker
    /// written), the switch not finished yet.
    fn wait_switching_to(&self, gen: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let marker = format!("active={gen} arg=switch");
        while !(self.last_state() == "switching" && self.marker() == marker) {
            assert!(
                Instant::now() < deadline,
                "the target never started switching to {gen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nixfleet rollback --ssh --host target` with `extra`.
    fn rollback(&self, extra: &[&str]) -> Output {
        run(self
            .t
            .nixfleet(&self.s)
            .args(["rollback", "--ssh", "--host", "target"])
            .args(extra))
    }

    /// The first line of the last deploy's state file on the target.
    fn last_state(&self) -> String {
        let out = self.t.on_target(&[
            "sh",
            "-c",
            "head -n 1 /nix/var/nixfleet/deploy/$(cat /nix/var/nixfleet/deploy/last)/state",
        ]);
        stdout(&out).trim().to_string()
    }

    /// Waits until the last deploy's state starts with `prefix`.
    fn wait_state(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let state = self.last_state();
            if state.starts_with(prefix) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "the target's deploy state is {state:?}, not {prefix}… after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn generations(&self) -> usize {
        self.t
            .on_target_ok(&[
                "nix-env",
                "-p",
                "/nix/var/nix/profiles/system",
                "--list-generations",
            ])
            .lines()
            .count()
    }
}

fn failed_line(out: &Output) -> String {
    let err = stderr(out);
    err.lines()
        .find(|l| l.starts_with("[target] FAILED at "))
        .unwrap_or_else(|| panic!("no FAILED line in: {err}"))
        .to_string()
}

#[test]
fn a_confirmed_deploy_stays_on_the_new_generation_after_the_timeout() {
    let e = Env::new("confirm");
    let p1 = e.given_g1_deployed_and_a_g2_flake(0, 0);
    // Each ssh session takes up to a second on a loaded machine: 6 s for wait, check, confirm.
    let out = e.deploy(&[
        "--confirm-timeout",
        "6",
        "--check-cmd",
        "test -d /nix/store",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p2 = store_path_of(&out, "g2");
    assert!(
        stderr(&out).contains("[target] 1 health check(s) passed"),
        "{}",
        stderr(&out)
    );
    // The CLI's rename won; the script writes "confirmed" on its next look (every 0.2 s).
    e.wait_state("confirmed", Duration::from_secs(5));
    // Well past the confirmation timeout, the watchdog has not undone the confirmed switch.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(e.marker(), "active=g2 arg=switch");
    assert_eq!(e.t.profile(), p2);
    assert_eq!(e.last_state(), "confirmed");
    assert_eq!(e.generations(), 2);
    assert_ne!(p1, p2);
    // The target keeps a log of what it did.
    let log = e.t.on_target_ok(&[
        "sh",
        "-c",
        "cat /nix/var/nixfleet/deploy/$(cat /nix/var/nixfleet/deploy/last)/log",
    ]);
    assert!(log.contains(&format!("previous: {p1}")), "{log}");
    assert!(log.contains("confirmed"), "{log}");
}

#[test]
fn a_failing_health_check_rolls_the_target_back_to_the_previous_generation() {
    let e = Env::new("badcheck");
    let p1 = e.given_g1_deployed_and_a_g2_flake(0, 0);
    let out = e.deploy(&["--confirm-timeout", "3", "--check-cmd", "echo sick; exit 3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        failed_line(&out),
        format!("[target] FAILED at health-check: health check `echo sick; exit 3` failed on root@target: exit 3: sick; root@target rolled back to {p1}")
    );
    assert_eq!(e.marker(), "active=g1 arg=switch");
    assert_eq!(e.t.profile(), p1, "the boot default is back on g1");
    assert_eq!(e.generations(), 3, "g1, g2, and g1 again");
    assert!(
        e.last_state().starts_with("rolled-back: "),
        "{}",
        e.last_state()
    );
}

#[test]
fn an_http_check_runs_on_the_target_and_a_wrong_answer_rolls_back() {
    let e = Env::new("httpcheck");
    let root = e.s.join("www");
    std::fs::create_dir_all(&root).expect("www");
    std::fs::write(root.join("ok"), "ok").expect("ok");
    // The server listens on the namespace's loopback: only a check run on the target reaches it.
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &e.t.ns,
            "python3",
            "-m",
            "http.server",
            "18080",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("http server");
    let p1 = e.given_g1_deployed_and_a_g2_flake(0, 0);
    let out = e.deploy(&[
        "--confirm-timeout",
        "15",
        "--check-http",
        "http://127.0.0.1:18080/ok",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p2 = store_path_of(&out, "g2");
    assert_eq!(e.t.profile(), p2);

    e.flake("g3", 0, 0);
    let out = e.deploy(&[
        "--confirm-timeout",
        "3",
        "--check-http",
        "http://127.0.0.1:18080/missing",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        failed_line(&out),
        format!("[target] FAILED at health-check: health check GET http://127.0.0.1:18080/missing failed on root@target: HTTP 404; root@target rolled back to {p2}")
    );
    assert_eq!(e.marker(), "active=g2 arg=switch");
    assert_eq!(e.t.profile(), p2);
    assert_ne!(p1, p2);
}

#[test]
fn a_killed_cli_leaves_no_confirmation_so_the_target_rolls_itself_back() {
    let e = Env::new("cut");
    // g2's switch takes 3 s: the CLI (and its ssh) die while the target is switching.
    let p1 = e.given_g1_deployed_and_a_g2_flake(3, 0);
    let mut cmd = e.deploy_cmd(&["--confirm-timeout", "2"]);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn deploy");
    e.wait_switching_to("g2");
    // SIGKILL to the CLI's whole process group: nixfleet and its ssh client.
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = child.wait();

    // The switch finishes, nobody confirms, and 2 s later the target goes back to g1.
    let state = e.wait_state("rolled-back", Duration::from_secs(30));
    assert_eq!(state, "rolled-back: no confirmation within 2s");
    assert_eq!(e.marker(), "active=g1 arg=switch");
    assert_eq!(e.t.profile(), p1);

    // The next deploy tells what happened while nobody watched.
    e.flake("g3", 0, 0);
    let out = e.deploy(&["--confirm-timeout", "15"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("ended while no CLI watched it: rolled-back: no confirmation within 2s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(e.marker(), "active=g3 arg=switch");
}

#[test]
fn a_dropped_link_makes_the_cli_fail_and_the_target_roll_itself_back() {
    let e = Env::new("link");
    let p1 = e.given_g1_deployed_and_a_g2_flake(3, 0);
    let child = e
        .deploy_cmd(&["--confirm-timeout", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn deploy");
    e.wait_switching_to("g2");
    // Every packet of the namespace goes over its loopback: take it down.
    let down = Command::new("ip")
        .args(["-n", &e.t.ns, "link", "set", "lo", "down"])
        .status()
        .expect("ip link");
    assert!(down.success());
    let state = e.wait_state("rolled-back", Duration::from_secs(30));
    assert_eq!(state, "rolled-back: no confirmation within 2s");
    assert_eq!(e.marker(), "active=g1 arg=switch");
    assert_eq!(e.t.profile(), p1);

    // The CLI notices the dead link through ssh keepalives and says what the target does.
    let out = child.wait_with_output().expect("deploy ends");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = failed_line(&out);
    assert!(
        line.starts_with("[target] FAILED at connect: lost root@target during the deploy")
            && line.contains("unless it was confirmed it rolls itself back 2s after its switch"),
        "{line}"
    );
}

#[test]
fn a_failed_switch_rolls_back_at_once() {
    let e = Env::new("failswitch");
    let p1 = e.given_g1_deployed_and_a_g2_flake(0, 1);
    let started = Instant::now();
    let out = e.deploy(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the rollback did not wait for the 30 s confirmation timeout"
    );
    assert_eq!(
        failed_line(&out),
        format!("[target] FAILED at switch: switch-to-configuration switch exited 1; root@target rolled back to {p1}")
    );
    assert_eq!(e.marker(), "active=g1 arg=switch");
    assert_eq!(e.t.profile(), p1);
}

#[test]
fn with_no_rollback_a_failure_leaves_the_target_as_it_is_and_says_how_to_roll_back() {
    let e = Env::new("norollback");
    let _p1 = e.given_g1_deployed_and_a_g2_flake(0, 1);
    let out = e.deploy(&["--no-rollback"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let p2 = store_path_of(&out, "g2");
    assert_eq!(
        failed_line(&out),
        "[target] FAILED at switch: switch-to-configuration switch exited 1; left as it is (--no-rollback); roll back with `nixfleet rollback --ssh --host target`"
    );
    assert_eq!(e.marker(), "active=g2 arg=switch");
    assert_eq!(e.t.profile(), p2);

    // A failing check with --no-rollback: the new generation stays, with the same hint.
    e.flake("g3", 0, 0);
    let out = e.deploy(&[
        "--no-rollback",
        "--confirm-timeout",
        "1",
        "--check-cmd",
        "false",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let p3 = store_path_of(&out, "g3");
    assert_eq!(
        failed_line(&out),
        "[target] FAILED at health-check: health check `false` failed on root@target: exit 1; left as it is (--no-rollback): roll back with `nixfleet rollback --ssh --host target`"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(e.marker(), "active=g3 arg=switch");
    assert_eq!(e.t.profile(), p3);
    assert_eq!(e.last_state(), "done");
}

#[test]
fn boot_and_test_activations_set_what_they_should() {
    let e = Env::new("modes");
    let p1 = e.given_g1_deployed_and_a_g2_flake(0, 0);
    let out = e.deploy(&["--activation", "test", "--confirm-timeout", "15"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(e.marker(), "active=g2 arg=test");
    assert_eq!(e.t.profile(), p1, "test leaves the boot default alone");

    e.flake("g3", 0, 0);
    let out = e.deploy(&["--activation", "boot", "--confirm-timeout", "15"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p3 = store_path_of(&out, "g3");
    assert_eq!(e.marker(), "active=g3 arg=boot");
    assert_eq!(e.t.profile(), p3);

    // A failed check after a boot activation puts the boot default back with `boot`.
    e.flake("g4", 0, 0);
    let out = e.deploy(&[
        "--activation",
        "boot",
        "--confirm-timeout",
        "2",
        "--check-cmd",
        "false",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(e.marker(), "active=g3 arg=boot");
    assert_eq!(e.t.profile(), p3);
}

#[test]
fn rollback_with_activation_boot_sets_the_boot_default_without_switching() {
    let e = Env::new("rbboot");
    let p1 = e.deploy_ok("g1");
    let p2 = e.deploy_ok("g2");
    assert_eq!(e.t.profile(), p2);
    let out = e.rollback(&["--activation", "boot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(e.marker(), "active=g1 arg=boot");
    assert_eq!(e.t.profile(), p1);

    let out = e.rollback(&["--activation", "test"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("use switch or boot"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_safety_flags_are_refused_before_anything_runs() {
    let e = Env::new("flags");
    e.flake("g1", 0, 0);
    for (args, expect) in [
        (
            vec!["--confirm-timeout", "0"],
            "--confirm-timeout must be at least 1 second",
        ),
        (
            vec!["--check-http", "ftp://x"],
            "expected an http:// or https:// URL",
        ),
        (vec!["--check-unit=-x"], "expected a systemd unit name"),
        (vec!["--activation", "reboot"], "invalid value 'reboot'"),
    ] {
        let out = e.deploy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    assert!(!e.s.join("marker").exists());
}
