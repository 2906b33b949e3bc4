//! Every control plane command against the real control plane on loopback, with mutual TLS.
//!
//! Needs the control plane binary: `cargo build -p nixfleet-engine` (or NIXFLEET_CP_BIN).
//! The PKI comes from `nixfleet pki`; settings from a `.nixfleet.toml` in the scratch dir.

mod common;
use common::agent::*;
use common::cp::*;
use common::*;

/// A flake with two hosts and no nixpkgs; the agent tags are read by `release create`.
fn write_fleet_flake(dir: &std::path::Path, version: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let flake = r#"{
  outputs = { self }: let
    mk = host: tags: {
      config.services.nixfleet-agent.tags = tags;
      config.system.build.toplevel = builtins.derivation {
        name = "nixos-system-${host}-VERSION"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
        args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\n' > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration" ];
      };
    };
  in {
    nixosConfigurations.web-01 = mk "web-01" [ "web" "eu" ];
    nixosConfigurations.web-02 = mk "web-02" [ "web" ];
  };
}
"#
    .replace("VERSION", version);
    std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
}

#[test]
fn bootstrap_prints_and_saves_the_first_key_and_a_second_bootstrap_fails_with_the_409_message() {
    let s = Scratch::new("apiboot");
    let _cp = start(&s);
    let key = nf_ok(&s, &["bootstrap", "--name", "admin"]);
    let key = key.trim();
    assert!(key.starts_with("nfk-") && key.len() == 68, "{key}");
    let creds =
        std::fs::read_to_string(s.home().join(".config/nixfleet/credentials.toml")).expect("saved");
    assert!(creds.contains(key));

    let again = nf(&s, &["bootstrap"]);
    assert_eq!(again.status.code(), Some(4), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exist"),
        "{}",
        stderr(&again)
    );
    assert_eq!(stderr(&again).lines().count(), 1);
    // The saved key still works.
    nf_ok(&s, &["keys", "list"]);
}

#[test]
fn keys_are_created_listed_and_revoked_and_a_revoked_key_is_refused() {
    let s = Scratch::new("apikeys");
    let _cp = start(&s);
    nf_ok(&s, &["bootstrap"]);
    let ci = nf_ok(&s, &["keys", "create", "--name", "ci", "--role", "deploy"]);
    let ci = ci.trim().to_string();
    let list = json(&s, &["keys", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(names.contains(&"admin") && names.contains(&"ci"), "{list}");
    nf_ok(&s, &["--api-key", &ci, "machines", "list"]);
    nf_ok(&s, &["keys", "revoke", "ci"]);
    let refused = nf(&s, &["--api-key", &ci, "machines", "list"]);
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
}

#[test]
fn machines_are_registered_filtered_by_tags_and_moved_through_their_lifecycle() {
    let s = Scratch::new("apimach");
    let _cp = start(&s);
    nf_ok(&s, &["bootstrap"]);
    nf_ok(&s, &["machines", "register", "web-01", "--tags", "web,eu"]);
    nf_ok(&s, &["machines", "register", "web-02", "--tags", "web"]);
    let table = nf_ok(&s, &["machines", "list", "--tags", "eu"]);
    assert!(
        table.contains("web-01") && !table.contains("web-02"),
        "{table}"
    );
    assert!(table.trim_end().ends_with("1 machine(s)"), "{table}");
    let both = json(&s, &["machines", "list", "--tags", "web"]);
    assert_eq!(both.as_array().map(Vec::len), Some(2));

    nf_ok(&s, &["machines", "set-lifecycle", "web-02", "maintenance"]);
    let bad = nf(&s, &["machines", "set-lifecycle", "web-02", "pending"]);
    assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("409"), "{}", stderr(&bad));
    let unknown = nf(&s, &["machines", "set-lifecycle", "web-02", "sleeping"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn a_release_is_created_from_a_flake_and_rolled_out_planned_cancelled_and_deleted() {
    let s = Scratch::new("apirel");
    let _cp = start(&s);
    nf_ok(&s, &["bootstrap"]);
    nf_ok(&s, &["machines", "register", "web-01", "--tags", "web,eu"]);
    nf_ok(&s, &["machines", "register", "web-02", "--tags", "web"]);
    let flake = s.join("flake");
    write_fleet_flake(&flake, "v1");
    let nix_config = common::sshd::NIX_CONFIG;
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", nix_config)
        .args(["release", "create", "--eval-only", "--flake"])
        .arg(&flake));
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        line.starts_with("Release rel-") && line.contains("(2 hosts)"),
        "{line}"
    );
    let r1 = line.split_whitespace().nth(1).expect("id").to_string();
    let shown = json(&s, &["release", "show", &r1]);
    assert_eq!(shown["entries"][0]["hostname"], "web-01");
    assert_eq!(
        shown["entries"][0]["tags"],
        serde_json::json!(["web", "eu"])
    );
    assert_eq!(shown["entries"][0]["platform"], "x86_64-linux");

    write_fleet_flake(&flake, "v2");
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", nix_config)
        .args([
            "--json",
            "release",
            "create",
            "--eval-only",
            "--hosts",
            "web-01",
            "--flake",
        ])
        .arg(&flake));
    assert!(out.status.success(), "{}", stderr(&out));
    let r2: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let r2 = r2["id"].as_str().expect("id").to_string();
    let diff = json(&s, &["release", "diff", &r1, &r2]);
    assert_eq!(diff["removed"], serde_json::json!(["web-02"]));
    assert_eq!(diff["changed"][0]["hostname"], "web-01");
    assert!(nf_ok(&s, &["release", "list"]).contains(&r2));

    let plan = json(
        &s,
        &[
            "rollout",
            "create",
            "--release",
            &r1,
            "--tags",
            "web",
            "--strategy",
            "canary",
            "--plan",
        ],
    );
    assert_eq!(plan["total_machines"], 2);
    assert_eq!(plan["batches"].as_array().map(Vec::len), Some(2));
    assert!(
        json(&s, &["rollout", "list"])
            .as_array()
            .is_some_and(Vec::is_empty),
        "a plan starts nothing"
    );

    let created = json(
        &s,
        &[
            "rollout",
            "create",
            "--release",
            &r1,
            "--hosts",
            "web-01,web-02",
            "--strategy",
            "all-at-once",
            "--health-timeout",
            "60",
        ],
    );
    let id = created["rollout_id"].as_str().expect("id").to_string();
    let status = nf_ok(&s, &["rollout", "status", &id]);
    assert!(
        status.contains(&id) && status.contains("web-01"),
        "{status}"
    );
    let fleet = json(&s, &["status"]);
    assert!(
        fleet
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["sync"] == "outdated"),
        "{fleet}"
    );
    let check = nf(&s, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(1));

    // A second rollout over the same machines conflicts while the first is active.
    let conflict = nf(
        &s,
        &["rollout", "create", "--release", &r1, "--hosts", "web-01"],
    );
    assert_eq!(conflict.status.code(), Some(4), "{}", stderr(&conflict));

    // Releases in use cannot be deleted.
    assert_eq!(nf(&s, &["release", "delete", &r1]).status.code(), Some(4));
    nf_ok(&s, &["rollout", "cancel", &id]);
    let waited = nf(
        &s,
        &["rollout", "status", &id, "--wait", "--wait-timeout", "10"],
    );
    assert_eq!(
        waited.status.code(),
        Some(0),
        "cancelled is a clean end: {}",
        stderr(&waited)
    );
    nf_ok(&s, &["rollout", "delete", &id]);
    nf_ok(&s, &["release", "delete", &r1]);
    nf_ok(&s, &["machines", "clear-desired", "web-01"]);
    assert_eq!(nf(&s, &["release", "show", &r1]).status.code(), Some(4));
}

#[test]
fn without_a_client_certificate_the_control_plane_is_unreachable_with_a_hint() {
    let s = Scratch::new("apinocert");
    let cp = start(&s);
    // An empty settings file, so the project file with the client certificate is not used.
    std::fs::write(s.join("empty.toml"), "").expect("write");
    let out = run(nixfleet(&s, &s.path)
        .arg("--config")
        .arg(s.join("empty.toml"))
        .args([
            "--control-plane-url",
            &format!("https://127.0.0.1:{}", cp.port),
            "--ca-cert",
        ])
        .arg(s.join("pki/ca.pem"))
        .args(["machines", "list"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("client"), "{}", stderr(&out));
}

/// Hosts web-01 and web-02 whose switch points `<scratch>/<host>/current-system` at the new
/// system; every system carries `healthy` except `unhealthy_host`'s.
fn write_agent_flake(s: &Scratch, version: &str, unhealthy_host: &str) {
    let dir = s.join("agent-flake");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let flake = r#"{
  outputs = { self }: let
    mk = host: healthy: {
      config.services.nixfleet-agent.tags = [ "web" ];
      config.system.build.toplevel = builtins.derivation {
        name = "nixos-system-${host}-VERSION"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
        args = [ "-c" ''
          mkdir -p $out/bin
          ${if healthy then "touch $out/healthy" else ""}
          printf '#!/bin/sh\nln -sfn %s SCRATCH/${host}/current-system\n' "$out" > $out/bin/switch-to-configuration
          chmod +x $out/bin/switch-to-configuration
        '' ];
      };
    };
  in {
    nixosConfigurations.web-01 = mk "web-01" ("web-01" != "UNHEALTHY");
    nixosConfigurations.web-02 = mk "web-02" ("web-02" != "UNHEALTHY");
  };
}
"#
    .replace("VERSION", version)
    .replace("UNHEALTHY", unhealthy_host)
    .replace("SCRATCH", &s.path.display().to_string());
    std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
}

fn create_release(s: &Scratch) -> String {
    let out = run(nixfleet(s, &s.path)
        .env("NIX_CONFIG", common::sshd::NIX_CONFIG)
        .args(["--json", "release", "create", "--flake"])
        .arg(s.join("agent-flake")));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    v["id"].as_str().expect("id").to_string()
}

#[test]
fn a_rollout_to_real_agents_completes_with_exit_0_and_a_failing_health_check_pauses_with_exit_1() {
    let s = Scratch::new("apiroll");
    let cp = start(&s);
    nf_ok(&s, &["bootstrap"]);
    let _agents: Vec<Agent> = ["web-01", "web-02"]
        .iter()
        .map(|h| start_agent(&s, &cp, h))
        .collect();

    write_agent_flake(&s, "v1", "nobody");
    let r1 = create_release(&s);
    let out = nf(
        &s,
        &[
            "rollout",
            "create",
            "--release",
            &r1,
            "--tags",
            "web",
            "--strategy",
            "canary",
            "--health-timeout",
            "60",
            "--wait",
            "--wait-timeout",
            "120",
        ],
    );
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("completed"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("2/2 healthy"),
        "progress lines: {}",
        stderr(&out)
    );
    let fleet = nf_ok(&s, &["status"]);
    assert!(fleet.contains("2/2 hosts in sync"), "{fleet}");
    nf_ok(&s, &["status", "--check"]);

    write_agent_flake(&s, "v2", "web-02");
    let r2 = create_release(&s);
    let out = nf(
        &s,
        &[
            "rollout",
            "create",
            "--release",
            &r2,
            "--tags",
            "web",
            "--batch-size",
            "100%",
            "--health-timeout",
            "60",
            "--wait",
            "--wait-timeout",
            "120",
        ],
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: rollout r-")
            && last.contains("paused")
            && last.contains("nixfleet rollout resume r-"),
        "{err}"
    );
    let id = last.split_whitespace().nth(2).expect("rollout id");
    let detail = nf_ok(&s, &["rollout", "status", id]);
    assert!(
        detail.contains("PAUSED") && detail.contains("web-02") && detail.contains("unhealthy"),
        "{detail}"
    );
    let paused = nf_ok(&s, &["rollout", "list", "--status", "paused"]);
    assert!(paused.contains(id), "{paused}");
    let out = nf_ok(&s, &["rollout", "resume", id]);
    assert!(out.starts_with("Resumed rollout"), "{out}");
    // Resuming a running rollout is refused by the control plane.
    let again = nf(&s, &["rollout", "resume", id]);
    assert_eq!(again.status.code(), Some(4), "{}", stderr(&again));
    nf_ok(&s, &["rollout", "cancel", id]);
    let cancelled = json(&s, &["rollout", "status", id]);
    assert_eq!(cancelled["status"], "cancelled");
}

#[test]
fn ssh_deploy_and_rollback_tell_the_control_plane_only_after_a_successful_switch() {
    let s = Scratch::new("apissh");
    let t = common::sshd::SshTarget::start(&s);
    let _cp = start_in(&s, Some(&t.ns));
    let in_ns = |args: &[&str]| run(t.nixfleet(&s).args(args));
    let out = in_ns(&["bootstrap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for host in ["target", "broken"] {
        let out = in_ns(&["machines", "register", host]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let desired = |host: &str| -> serde_json::Value {
        let out = in_ns(&["--json", "machines", "list"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let all: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
        all.as_array()
            .and_then(|ms| ms.iter().find(|m| m["machine_id"] == host))
            .map(|m| m["desired_generation"].clone())
            .unwrap_or(serde_json::Value::Null)
    };

    let flake = s.join("flake");
    common::sshd::write_flake(&flake, "g1", &s.join("marker"));
    let flake_arg = flake.display().to_string();
    // "target" and "broken" are two names for the same sshd and store, so they share one
    // system profile: deploy broken first, then target, so that the generation before
    // target's next one is target's own.
    let out = in_ns(&[
        "deploy", "--ssh", "--flake", &flake_arg, "--hosts", "broken",
    ]);
    assert_eq!(out.status.code(), Some(1), "broken fails: {}", stderr(&out));
    let out = in_ns(&[
        "deploy", "--ssh", "--flake", &flake_arg, "--hosts", "target",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let p1 = err
        .split_whitespace()
        .find(|w| w.starts_with("/nix/store/") && w.ends_with("-nixos-system-target-g1"))
        .expect("target's path")
        .to_string();
    assert_eq!(desired("target"), serde_json::json!(p1));
    // The failed switch told the control plane nothing, so no agent will chase that path.
    assert_eq!(desired("broken"), serde_json::Value::Null);

    common::sshd::write_flake(&flake, "g2", &s.join("marker"));
    let out = in_ns(&[
        "deploy", "--ssh", "--flake", &flake_arg, "--hosts", "target",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(desired("target"), serde_json::json!(p1));

    let out = in_ns(&["rollback", "--ssh", "--host", "target"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(desired("target"), serde_json::json!(p1));
    assert_eq!(t.profile(), p1);

    // The check above can see a notification: send one for broken by hand.
    let out = in_ns(&["machines", "notify-deploy", "broken", &p1]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(desired("broken"), serde_json::json!(p1));
}

#[test]
fn deploy_without_ssh_creates_a_release_and_a_rollout_of_it() {
    let s = Scratch::new("apideploy");
    let _cp = start(&s);
    nf_ok(&s, &["bootstrap"]);
    nf_ok(&s, &["machines", "register", "web-01", "--tags", "web"]);
    nf_ok(&s, &["machines", "register", "web-02", "--tags", "web"]);
    let flake = s.join("flake");
    write_fleet_flake(&flake, "d1");
    let deploy = |extra: &[&str]| {
        run(nixfleet(&s, &s.path)
            .env("NIX_CONFIG", common::sshd::NIX_CONFIG)
            .args(["deploy", "--eval-only", "--flake"])
            .arg(&flake)
            .args(extra))
    };

    // --plan: a release is recorded, the rollout is only planned.
    let out = deploy(&[
        "--hosts",
        "web-*",
        "--strategy",
        "staged",
        "--batch-size",
        "1,100%",
        "--plan",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("(2 hosts)")
            && text.contains("Plan (nothing started): 2 machines in 2 batches"),
        "{text}"
    );
    assert!(json(&s, &["rollout", "list"])
        .as_array()
        .is_some_and(Vec::is_empty));

    // For real, targeting only the hosts --hosts picked.
    let out = deploy(&["--hosts", "web-02", "--strategy", "all-at-once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Rollout r-") && text.contains("(1 batch, 1 machine)"),
        "{text}"
    );
    let rollouts = json(&s, &["rollout", "list"]);
    assert_eq!(
        rollouts[0]["batches"][0]["machine_ids"],
        serde_json::json!(["web-02"])
    );
}
