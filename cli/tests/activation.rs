//! Issue 18, hole 4, end to end: the real `nixfleet` CLI, the real control plane (mutual TLS) and
//! a real `nixfleet-agent` switching fake systems in this machine's Nix store.
//!
//! - A switch whose units failed (exit status 4) pauses a rollout, and passes one created with
//!   `--allow-failed-units`; `nixfleet status` says "switched, 2 units failed".
//! - `--activation boot` sets the boot entry only; the rollout completes once the agent reports
//!   "pending reboot"; `nixfleet status` says so; after a switch to a system with another kernel
//!   than the booted one, `nixfleet status` and `nixfleet machines list` say "reboot needed".
//!
//! Needs the control plane and agent binaries: `cargo build -p nixfleet-engine -p nixfleet-agent`.

mod common;
use common::agent::*;
use common::cp::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// A real agent for web-01 under `<scratch>/web-01` (see [`common::agent`]), with a
/// booted-system link next to its current-system link.
fn start_web01_agent(s: &Scratch, cp: &ControlPlane) -> Agent {
    let dir = prepare_agent(s, "web-01");
    std::os::unix::fs::symlink(dir.join("initial"), dir.join("booted-system")).expect("symlink");
    spawn_agent(s, cp, "web-01")
}

/// Given a bootstrapped control plane (see [`common::cp`]) and web-01's agent polling it.
fn given_a_control_plane_and_web01(tag: &str) -> (Scratch, ControlPlane, Agent) {
    let s = Scratch::new(tag);
    let cp = start(&s);
    nf_ok(&s, &["bootstrap"]);
    let agent = start_web01_agent(&s, &cp);
    (s, cp, agent)
}

/// A flake whose web-01 system is `version`: its switch-to-configuration flips
/// `<scratch>/web-01/current-system` for switch and test (not boot), then exits `status` (with
/// NixOS's failed-units line for 4); its kernel, initrd and systemd link into `parts`.
fn write_flake(s: &Scratch, version: &str, status: i32, parts: &Path) -> String {
    let dir = s.join(&format!("flake-{version}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let failed = if status == 4 {
        "echo 'warning: the following units failed: nginx.service, app.service' >&2"
    } else {
        ""
    };
    let flake = r#"{
  outputs = { self }: {
    nixosConfigurations.web-01 = {
      config.services.nixfleet-agent.tags = [ "web" ];
      config.system.build.toplevel = builtins.derivation {
        name = "nixos-system-web-01-VERSION"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
        parts = "PARTS";
        switchScript = ''
          #!/bin/sh
          out=$(dirname "$(dirname "$0")")
          case "$1" in switch|test) ln -sfn "$out" SCRATCH/web-01/current-system ;; esac
          FAILED
          exit STATUS
        '';
        args = [ "-c" ''
          mkdir -p $out/bin
          touch $out/healthy
          printf '%s\n' "$switchScript" > $out/bin/switch-to-configuration
          chmod +x $out/bin/switch-to-configuration
          for p in kernel initrd systemd; do ln -s "$parts/$p" $out/$p; done
        '' ];
      };
    };
  };
}
"#
    .replace("VERSION", version)
    .replace("PARTS", &parts.display().to_string())
    .replace("SCRATCH", &s.path.display().to_string())
    .replace("FAILED", failed)
    .replace("STATUS", &status.to_string());
    std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
    let out = run(nixfleet(s, &s.path)
        .env("NIX_CONFIG", common::sshd::NIX_CONFIG)
        .args(["--json", "release", "create", "--flake"])
        .arg(&dir));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    v["id"].as_str().expect("id").to_string()
}

/// kernel, initrd and systemd files in `<scratch>/<name>`; those named in `shared` link to `base`'s.
fn boot_parts(s: &Scratch, name: &str, base: Option<&Path>, shared: &[&str]) -> PathBuf {
    let dir = s.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for part in ["kernel", "initrd", "systemd"] {
        match base.filter(|_| shared.contains(&part)) {
            Some(b) => std::os::unix::fs::symlink(b.join(part), dir.join(part)).expect("symlink"),
            None => std::fs::write(dir.join(part), format!("{name} {part}")).expect("write"),
        }
    }
    dir
}

fn create(s: &Scratch, release: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "rollout",
        "create",
        "--release",
        release,
        "--hosts",
        "web-01",
        "--strategy",
        "all-at-once",
        "--health-timeout",
        "60",
        "--wait",
        "--wait-timeout",
        "120",
    ];
    args.extend_from_slice(extra);
    nf(s, &args)
}

fn wait_for(what: &str, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn failed_units_pause_a_rollout_by_default_and_pass_one_that_allows_them() {
    let (s, _cp, _agent) = given_a_control_plane_and_web01("actunits");
    let parts = boot_parts(&s, "parts", None, &[]);

    let r1 = write_flake(&s, "v1", 4, &parts);
    let out = create(&s, &r1, &[]);
    assert_exit(&out, 1);
    let last = stderr(&out).lines().last().unwrap_or_default().to_owned();
    let id = last
        .split_whitespace()
        .nth(2)
        .expect("rollout id")
        .to_owned();
    let detail = nf_ok(&s, &["rollout", "status", &id]);
    assert!(
        detail.contains("PAUSED") && detail.contains("2 units failed (exit status 4"),
        "{detail}"
    );
    let fleet = nf_ok(&s, &["status"]);
    assert!(fleet.contains("ok; switched, 2 units failed"), "{fleet}");
    nf_ok(&s, &["rollout", "cancel", &id]);

    let r2 = write_flake(&s, "v2", 4, &parts);
    let out = create(&s, &r2, &["--allow-failed-units"]);
    assert_exit(&out, 0);
    let id = json(&s, &["rollout", "list"])[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let d = json(&s, &["rollout", "status", &id]);
    assert_eq!(
        (
            d["status"].as_str(),
            d["activation"].as_str(),
            d["allow_failed_units"].as_bool()
        ),
        (Some("completed"), Some("switch"), Some(true))
    );
    let text = nf_ok(&s, &["rollout", "status", &id]);
    assert!(
        text.contains("activation switch, failed units allowed"),
        "{text}"
    );
}

#[test]
fn a_boot_rollout_completes_pending_reboot_and_status_shows_reboot_needed_after_a_new_kernel() {
    let (s, _cp, _agent) = given_a_control_plane_and_web01("actboot");
    let parts1 = boot_parts(&s, "parts-1", None, &[]);
    let parts2 = boot_parts(&s, "parts-2", Some(&parts1), &["initrd", "systemd"]);

    let r1 = write_flake(&s, "v1", 0, &parts1);
    let out = create(&s, &r1, &["--activation", "boot"]);
    assert_exit(&out, 0);
    let fleet = nf_ok(&s, &["status"]);
    assert!(fleet.contains("ok; pending reboot"), "{fleet}");
    let host = s.join("web-01");
    let v1 = std::fs::canonicalize(host.join("profiles/system")).expect("profile set");
    assert!(v1.display().to_string().ends_with("nixos-system-web-01-v1"));
    assert_eq!(
        std::fs::read_link(host.join("current-system")).expect("link"),
        host.join("initial"),
        "boot activated nothing"
    );

    // The machine reboots into v1.
    for link in ["current-system", "booted-system"] {
        let _ = std::fs::remove_file(host.join(link));
        std::os::unix::fs::symlink(&v1, host.join(link)).expect("symlink");
    }
    wait_for("web-01 to report v1 running", || {
        let m = json(&s, &["machines", "list"]);
        (m[0]["current_generation"].as_str() == Some(&v1.display().to_string()))
            .then_some(())
            .map(|()| String::new())
    });
    let fleet = nf_ok(&s, &["status"]);
    assert!(
        !fleet.contains("pending reboot") && !fleet.contains("reboot needed"),
        "{fleet}"
    );

    // A switch to a system with another kernel: it runs, but the booted kernel is the old one.
    let r2 = write_flake(&s, "v2", 0, &parts2);
    let out = create(&s, &r2, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let fleet = wait_for("status to say reboot needed", || {
        let t = nf_ok(&s, &["status"]);
        t.contains("reboot needed").then_some(t)
    });
    assert!(fleet.contains("ok; reboot needed (kernel)"), "{fleet}");
    let list = nf_ok(&s, &["machines", "list"]);
    assert!(list.contains("ok; reboot needed (kernel)"), "{list}");
    let m = json(&s, &["machines", "list"]);
    assert_eq!(m[0]["reboot_needed"], serde_json::json!(["kernel"]));
}
