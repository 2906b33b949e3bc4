//! `deploy --ssh` and `rollback --ssh` against a real sshd and a real Nix store on the target.
//!
//! Each test gets its own network namespace, sshd and target store (see `common::sshd`).
//! Assertions read the target's own Nix database (`nix-store -q --references` inside its mount
//! namespace), its system profile, and the marker file its `switch-to-configuration` writes.

mod common;
use common::sshd::{marker, store_path_of, write_flake, SshTarget};
use common::*;

fn deploy(t: &SshTarget, s: &Scratch, hosts: &str) -> std::process::Output {
    let flake = s.join("flake");
    let mut cmd = t.nixfleet(s);
    cmd.args(["deploy", "--ssh", "--flake"])
        .arg(&flake)
        .args(["--hosts", hosts]);
    run(&mut cmd)
}

#[test]
fn deploy_over_ssh_switches_the_target_and_registers_the_closure_in_its_own_store() {
    let s = Scratch::new("deploy");
    let t = SshTarget::start(&s);
    write_flake(&s.join("flake"), "g1", &s.join("marker"));

    let out = deploy(&t, &s, "target");
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Deploy complete: 1 succeeded, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(marker(&s), "active=g1 arg=switch");

    let p1 = store_path_of(&out, "g1");
    // The target's own database knows the path and its reference to the dependency.
    let refs = t.on_target_ok(&["nix-store", "-q", "--references", &p1]);
    assert!(
        refs.lines().any(|r| r.ends_with("-nfcli-dep")),
        "references of {p1} on target: {refs}"
    );
    assert_eq!(t.profile(), p1);
    // And the check would catch a missing path: the target's store is not the host's.
    let missing = t.on_target(&[
        "nix-store",
        "--check-validity",
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nope",
    ]);
    assert!(!missing.status.success());
}

#[test]
fn an_unreachable_control_plane_only_warns_after_a_successful_switch() {
    let s = Scratch::new("notify");
    let t = SshTarget::start(&s);
    write_flake(&s.join("flake"), "g1", &s.join("marker"));
    let mut cmd = t.nixfleet(&s);
    cmd.env("NIXFLEET_CONTROL_PLANE_URL", "https://127.0.0.1:9")
        .env("NIXFLEET_API_KEY", "nfk-test");
    cmd.args(["deploy", "--ssh", "--hosts", "target", "--flake"])
        .arg(s.join("flake"));
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(marker(&s), "active=g1 arg=switch");
    let err = stderr(&out);
    let warned = err
        .find("warning: [target] switched, but telling the control plane failed")
        .expect("warning printed");
    let done = err.find("[target] switched to").expect("switch reported");
    assert!(
        warned < done,
        "the warning belongs to the host's run: {err}"
    );
}

#[test]
fn rollback_switches_to_the_previous_generation_and_points_the_profile_at_it() {
    let s = Scratch::new("rollback");
    let t = SshTarget::start(&s);
    write_flake(&s.join("flake"), "g1", &s.join("marker"));
    let out = deploy(&t, &s, "target");
    assert!(out.status.success(), "deploy g1: {}", stderr(&out));
    let p1 = store_path_of(&out, "g1");
    write_flake(&s.join("flake"), "g2", &s.join("marker"));
    let out = deploy(&t, &s, "target");
    assert!(out.status.success(), "deploy g2: {}", stderr(&out));
    let p2 = store_path_of(&out, "g2");
    assert_eq!(marker(&s), "active=g2 arg=switch");
    assert_eq!(t.profile(), p2);

    let out = run(t
        .nixfleet(&s)
        .args(["rollback", "--ssh", "--host", "target"]));
    assert!(out.status.success(), "rollback: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("Rolled back target to {p1}"));
    assert_eq!(marker(&s), "active=g1 arg=switch");
    // The boot default follows, so a reboot keeps g1; nothing was deleted.
    assert_eq!(t.profile(), p1);
    t.on_target_ok(&["nix-store", "--check-validity", &p1, &p2]);
    let gens = t.on_target_ok(&[
        "nix-env",
        "-p",
        "/nix/var/nix/profiles/system",
        "--list-generations",
    ]);
    assert_eq!(
        gens.lines().count(),
        3,
        "g1, g2 and the rollback's new generation: {gens}"
    );

    // An explicit generation that the target has: forward again to g2.
    let out =
        run(t
            .nixfleet(&s)
            .args(["rollback", "--ssh", "--host", "target", "--generation", &p2]));
    assert!(
        out.status.success(),
        "rollback --generation: {}",
        stderr(&out)
    );
    assert_eq!(marker(&s), "active=g2 arg=switch");
    assert_eq!(t.profile(), p2);
}

#[test]
fn rollback_to_a_path_the_target_does_not_have_fails_clearly_and_changes_nothing() {
    let s = Scratch::new("rbmissing");
    let t = SshTarget::start(&s);
    write_flake(&s.join("flake"), "g1", &s.join("marker"));
    let out = deploy(&t, &s, "target");
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let p1 = store_path_of(&out, "g1");

    let absent = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-target-g0";
    let out = run(t.nixfleet(&s).args([
        "rollback",
        "--ssh",
        "--host",
        "target",
        "--generation",
        absent,
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is not in the Nix store of root@target"),
        "{err}"
    );
    assert_eq!(t.profile(), p1);

    // Only one generation: there is nothing before it.
    let out = run(t
        .nixfleet(&s)
        .args(["rollback", "--ssh", "--host", "target"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no system generation before 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(marker(&s), "active=g1 arg=switch");
}

#[test]
fn a_host_whose_switch_fails_is_counted_and_the_exit_code_is_non_zero() {
    let s = Scratch::new("partial");
    let t = SshTarget::start(&s);
    write_flake(&s.join("flake"), "g1", &s.join("marker"));
    let out = deploy(&t, &s, "*");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Deploy complete: 1 succeeded, 1 failed"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("[broken] FAILED at switch"), "{err}");
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with("error: deploy failed on 1 host(s): broken")),
        "{err}"
    );

    // The oplog named in the error holds every command with its exit code and output.
    let last = err.lines().last().unwrap_or_default();
    let log = last
        .split("every command and its output: ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no oplog path in: {last}"));
    assert!(log.starts_with(&s.home().display().to_string()), "{log}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(log)
        .expect("oplog")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines[0]["op"], "deploy");
    assert!(
        lines.iter().any(|l| l["exit"] == 0
            && l["cmd"]
                .as_str()
                .is_some_and(|c| c.contains("nixos-system-broken"))),
        "the start of the activation is logged"
    );
    // The wait for the detached activation reports its final state on stdout.
    let switch = lines
        .iter()
        .find(|l| {
            l["stdout"]
                .as_str()
                .is_some_and(|o| o.contains("switch-to-configuration switch exited 1"))
        })
        .expect("the failed activation is logged");
    assert_eq!(switch["exit"], 0, "{switch}");
    assert!(lines.iter().any(|l| l["cmd"]
        .as_str()
        .is_some_and(|c| c.starts_with("nix-copy-closure --to root@target"))));
}

#[test]
fn unsafe_or_ambiguous_input_is_refused_before_anything_runs() {
    let s = Scratch::new("unsafe");
    write_flake(&s.join("flake"), "g1", &s.join("marker"));
    let flake = s.join("flake");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "rollback",
                "--ssh",
                "--host",
                "target",
                "--generation",
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x;reboot",
            ],
            "--generation",
        ),
        (
            vec![
                "rollback",
                "--ssh",
                "--host",
                "target",
                "--target=-oProxyCommand=touch /tmp/pwned",
            ],
            "--target",
        ),
        (vec!["rollback", "--host", "target"], "pass --ssh"),
        (vec!["deploy", "--ssh", "--flake=--impure"], "--flake"),
    ];
    for (args, expect) in cases {
        let out = run(nixfleet(&s, &s.path).args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    // --target with several hosts is ambiguous (needs the flake evaluated, not ssh).
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", common::sshd::NIX_CONFIG)
        .args(["deploy", "--ssh", "--target", "root@127.0.0.1", "--flake"])
        .arg(&flake));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exactly one host"),
        "{}",
        stderr(&out)
    );
    assert!(!s.join("marker").exists());
}
