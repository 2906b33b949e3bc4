//! `deploy --ssh` across several hosts with one that cannot be reached: skipped and counted with
//! `--skip-unreachable`, a failure without it; the others are deployed either way.
//!
//! A real sshd in its own network namespace (see `common::sshd`); an ssh config sends host
//! `gone` to a closed port of that namespace's loopback and every other host to the sshd.

mod common;
use common::sshd::{marker, write_flake, SshTarget};
use common::*;

fn deploy(t: &SshTarget, s: &Scratch, extra: &[&str]) -> std::process::Output {
    let d = t.dir.display();
    std::fs::write(
        s.join("ssh_config"),
        "Host gone\n  HostName 127.0.0.9\n  Port 2\nHost *\n  HostName 127.0.0.1\n",
    )
    .expect("write ssh config");
    let opts = format!(
        "-F {} -i {d}/id -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o ConnectTimeout=5",
        s.join("ssh_config").display()
    );
    let mut cmd = t.nixfleet(s);
    cmd.env("NIX_SSHOPTS", opts)
        .args(["deploy", "--ssh", "--flake"])
        .arg(s.join("flake"))
        .args(extra);
    run(&mut cmd)
}

#[test]
fn with_skip_unreachable_the_others_are_deployed_and_the_unreachable_host_is_reported() {
    let s = Scratch::new("unreach");
    let t = SshTarget::start(&s);
    write_flake(&s.join("flake"), "u1", &s.join("marker"));
    let flake = std::fs::read_to_string(s.join("flake/flake.nix")).expect("flake");
    std::fs::write(
        s.join("flake/flake.nix"),
        flake.replace("nixosConfigurations.broken", "nixosConfigurations.gone"),
    )
    .expect("write flake");

    let out = deploy(&t, &s, &["--skip-unreachable"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    assert!(
        o.starts_with("Deploy complete: 1 succeeded, 0 failed, 1 unreachable skipped"),
        "{o}"
    );
    let row = |host: &str| {
        o.lines()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("no row for {host}: {o}"))
            .to_string()
    };
    assert!(row("target").contains(" ok "), "{o}");
    assert!(row("gone").contains(" skipped "), "{o}");
    assert!(e.contains("[gone] skipped: unreachable"), "{e}");
    assert_eq!(marker(&s), "active=u1 arg=switch");

    // --json: the same, machine-readable.
    let out = deploy(&t, &s, &["--skip-unreachable", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json summary");
    assert_eq!(v["succeeded"][0]["host"], "target");
    assert_eq!(v["skipped"][0]["host"], "gone");

    // Without --skip-unreachable the unreachable host is a failure; the other is still deployed.
    std::fs::remove_file(s.join("marker")).expect("rm marker");
    let out = deploy(&t, &s, &[]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{o}\n{e}");
    assert!(
        o.starts_with("Deploy complete: 1 succeeded, 1 failed, 0 unreachable skipped"),
        "{o}"
    );
    assert!(
        e.contains("[gone] FAILED at connect: root@gone is unreachable"),
        "{e}"
    );
    assert!(e.contains("pass --skip-unreachable"), "{e}");
    assert_eq!(marker(&s), "active=u1 arg=switch");
}
