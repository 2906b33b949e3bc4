//! `release create` at fleet scale with the real Nix: one evaluation and one build for every
//! host, hosts that fail to evaluate or build reported without stopping the others, and
//! `--allow-partial` recording a release of the rest.

mod common;
use common::sshd::NIX_CONFIG;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A flake of four hosts, no nixpkgs: `good-1` and `good-2` build (sharing a dependency),
/// `bad-build`'s builder fails after printing a line, `bad-eval` throws.
fn write_partial_flake(dir: &Path, stamp: &str) {
    std::fs::create_dir_all(dir).expect("mkdir flake");
    let flake = r#"{
  outputs = { self }: let
    dep = builtins.derivation {
      name = "nfpart-dep-STAMP"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo dep > $out" ];
    };
    mk = host: script: builtins.derivation {
      name = "nixos-system-${host}-STAMP"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo building ${host}; ${script} echo ${dep} > $out" ];
    };
  in {
    nixosConfigurations.good-1.config.system.build.toplevel = mk "good-1" "";
    nixosConfigurations.good-2.config.system.build.toplevel = mk "good-2" "";
    nixosConfigurations.bad-build.config.system.build.toplevel =
      mk "bad-build" "echo bad-build-says-boom >&2; exit 7;";
    nixosConfigurations.bad-eval.config.system.build.toplevel = throw "bad-eval is broken on purpose";
  };
}
"#
    .replace("STAMP", stamp);
    std::fs::write(dir.join("flake.nix"), flake).expect("write flake");
}

fn release(s: &Scratch, extra: &[&str]) -> std::process::Output {
    run(nixfleet(s, &s.path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["release", "create", "--flake"])
        .arg(s.join("flake"))
        .args(extra))
}

#[test]
fn a_host_whose_build_fails_does_not_stop_the_others_and_is_named_with_its_log_tail() {
    let s = Scratch::new("relpart");
    write_partial_flake(&s.join("flake"), &format!("{}", std::process::id()));
    let out = release(&s, &["--dry-run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        stdout(&out).is_empty(),
        "no release printed: {}",
        stdout(&out)
    );
    // The summary: one row per host.
    let row = |host: &str| {
        err.lines()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("no summary row for {host}: {err}"))
            .to_string()
    };
    for good in ["good-1", "good-2"] {
        let r = row(good);
        assert!(r.contains(" built "), "{r}");
        let path = r.split_whitespace().last().expect("path");
        assert!(Path::new(path).exists(), "{good} was built: {path}");
    }
    assert!(row("bad-build").contains("failed  build:"), "{err}");
    assert!(row("bad-eval").contains("failed  evaluate:"), "{err}");
    // The failure's log tail and the command that shows it again.
    assert!(err.contains("bad-build failed to build:"), "{err}");
    assert!(err.contains("| bad-build-says-boom"), "{err}");
    assert!(err.contains("failed with exit code 7"), "{err}");
    assert!(
        err.contains(
            "reproduce: nix --extra-experimental-features 'nix-command flakes' build --no-link -L"
        ),
        "{err}"
    );
    assert!(err.contains("bad-eval is broken on purpose"), "{err}");
    assert!(
        err.contains("2 of 4 host(s) failed: bad-build, bad-eval"),
        "{err}"
    );

    // --json: one result per host on stdout.
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--json", "release", "create", "--eval-only", "--flake"])
        .arg(s.join("flake")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json result");
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 4);
    assert_eq!(hosts[1]["host"], "bad-eval");
    assert_eq!(hosts[1]["status"], "failed");
    assert_eq!(hosts[1]["step"], "evaluate");
    assert_eq!(hosts[2]["status"], "evaluated");
}

#[test]
fn with_allow_partial_a_release_of_the_hosts_that_built_is_recorded() {
    let s = Scratch::new("relallow");
    let _cp = common::cp::start(&s);
    nf_ok(&s, &["bootstrap"]);
    write_partial_flake(&s.join("flake"), &format!("a{}", std::process::id()));
    let out = release(&s, &["--allow-partial"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: 2 of 4 host(s) failed: bad-build, bad-eval; --allow-partial"),
        "{err}"
    );
    let line = stdout(&out);
    assert!(
        line.starts_with("Release rel-") && line.contains("(2 hosts)"),
        "{line}"
    );
    let id = line.split_whitespace().nth(1).expect("id");
    let shown = json(&s, &["release", "show", id]);
    let names: Vec<&str> = shown["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["hostname"].as_str())
        .collect();
    assert_eq!(names, ["good-1", "good-2"]);

    // --json: the release's id and every host's result.
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--json", "release", "create", "--allow-partial", "--flake"])
        .arg(s.join("flake")));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json answer");
    assert!(
        v["id"].as_str().is_some_and(|i| i.starts_with("rel-")),
        "{v}"
    );
    let statuses: Vec<(&str, &str)> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| Some((h["host"].as_str()?, h["status"].as_str()?)))
        .collect();
    assert_eq!(
        statuses,
        [
            ("bad-build", "failed"),
            ("bad-eval", "failed"),
            ("good-1", "built"),
            ("good-2", "built")
        ]
    );
    assert!(
        v["hosts"][0]["log_tail"][1] == "bad-build-says-boom",
        "{}",
        v["hosts"][0]
    );
}

#[test]
fn release_create_evaluates_the_flake_once_and_builds_every_host_in_one_nix_build() {
    let s = Scratch::new("relonce");
    write_partial_flake(&s.join("flake"), &format!("o{}", std::process::id()));
    // A `nix` first on PATH that logs its arguments and runs the real one.
    let bin = s.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::write(
        bin.join("nix"),
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec /usr/bin/nix \"$@\"\n",
            s.join("calls").display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(bin.join("nix"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("PATH", path)
        .args([
            "release",
            "create",
            "--dry-run",
            "--hosts",
            "good-*",
            "--flake",
        ])
        .arg(s.join("flake")));
    assert!(out.status.success(), "{}", stderr(&out));
    let req: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(req["entries"].as_array().map(Vec::len), Some(2));
    let calls = std::fs::read_to_string(s.join("calls")).expect("calls");
    let evals: Vec<&str> = calls.lines().filter(|l| l.contains(" eval ")).collect();
    let builds: Vec<&str> = calls.lines().filter(|l| l.contains(" build ")).collect();
    assert_eq!(evals.len(), 1, "{calls}");
    assert!(evals[0].contains("#nixosConfigurations --apply"), "{calls}");
    assert_eq!(builds.len(), 1, "{calls}");
    assert_eq!(builds[0].matches(".drv").count(), 2, "{calls}");
}

#[test]
fn an_error_try_eval_cannot_catch_falls_back_to_evaluating_each_host_alone() {
    let s = Scratch::new("reltype");
    write_partial_flake(&s.join("flake"), &format!("t{}", std::process::id()));
    // A type error: builtins.tryEval does not catch it, so the one evaluation fails whole.
    let flake = std::fs::read_to_string(s.join("flake/flake.nix")).expect("flake");
    std::fs::write(
        s.join("flake/flake.nix"),
        flake.replace(
            "throw \"bad-eval is broken on purpose\"",
            "1 + \"bad-eval adds a string\"",
        ),
    )
    .expect("write flake");
    let out = release(&s, &["--dry-run", "--hosts", "good-1,bad-eval"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad-eval failed to evaluate:"), "{err}");
    assert!(err.contains("cannot add a string to an integer"), "{err}");
    let good = err
        .lines()
        .find(|l| l.starts_with("good-1 "))
        .unwrap_or_else(|| panic!("no row for good-1: {err}"));
    assert!(good.contains(" built "), "{err}");
    assert!(err.contains("1 of 2 host(s) failed: bad-eval"), "{err}");
}
