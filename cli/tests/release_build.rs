//! `release create` up to the point of posting: host discovery, one evaluation for all hosts,
//! the build, and the push to a real `file://` binary cache, checked with `nix path-info`.

mod common;
use common::sshd::{write_flake, NIX_CONFIG};
use common::*;
use std::process::Command;

fn release_dry_run(s: &Scratch, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = run(nixfleet(s, &s.path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["release", "create", "--dry-run", "--flake"])
        .arg(s.join("flake"))
        .args(extra));
    assert!(out.status.success(), "{}", stderr(&out));
    let req = serde_json::from_str(&stdout(&out)).expect("dry run prints the release as JSON");
    (out, req)
}

#[test]
fn an_eval_only_release_names_every_host_with_its_path_and_platform_and_builds_nothing() {
    let s = Scratch::new("releval");
    write_flake(&s.join("flake"), "e1", &s.join("marker"));
    let (_, req) = release_dry_run(&s, &["--eval-only"]);
    let entries = req["entries"].as_array().expect("entries");
    let hosts: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["hostname"].as_str())
        .collect();
    assert_eq!(hosts, vec!["broken", "target"]);
    for e in entries {
        assert_eq!(e["platform"], "x86_64-linux");
        assert_eq!(e["tags"], serde_json::json!([]));
        let path = e["store_path"].as_str().expect("path");
        assert!(
            path.starts_with("/nix/store/") && path.ends_with("-e1"),
            "{path}"
        );
        // Evaluated, not built.
        assert!(!std::path::Path::new(path).exists(), "{path} was built");
    }
}

#[test]
fn a_release_is_built_and_pushed_to_a_binary_cache_once_per_closure() {
    let s = Scratch::new("relpush");
    write_flake(&s.join("flake"), "p1", &s.join("marker"));
    let cache = format!("file://{}", s.join("cache").display());
    let (out, req) = release_dry_run(
        &s,
        &[
            "--hosts",
            "tar*",
            "--push-to",
            &cache,
            "--cache-url",
            "http://cache.test:5000",
        ],
    );
    assert!(
        stderr(&out).contains("Pushing 1 closure(s)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(req["cache_url"], "http://cache.test:5000");
    let entries = req["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1);
    let path = entries[0]["store_path"].as_str().expect("path");
    assert!(std::path::Path::new(path).exists(), "built locally");
    // The cache has the closure: the path and its dependency.
    let info = Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["path-info", "-r", "--store", &cache, path])
        .output()
        .expect("nix path-info");
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let listed = String::from_utf8_lossy(&info.stdout);
    assert!(
        listed.lines().any(|l| l.ends_with("-nfcli-dep")),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l == path), "{listed}");
}

#[test]
fn rollout_parameters_are_checked_before_anything_is_sent() {
    let s = Scratch::new("rollargs");
    // Port 9 on loopback: nothing may be sent, so nothing listening is needed.
    let base = [
        "--control-plane-url",
        "https://127.0.0.1:9",
        "rollout",
        "create",
        "--release",
        "rel-1",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tags", "web", "--batch-size", "0"], "--batch-size"),
        (
            vec!["--tags", "web", "--failure-threshold", "150%"],
            "--failure-threshold",
        ),
        (
            vec!["--tags", "web", "--on-failure", "explode"],
            "--on-failure",
        ),
        (vec!["--tags", "web", "--strategy", "yolo"], "--strategy"),
        (
            vec!["--tags", "web", "--strategy", "canary", "--batch-size", "2"],
            "only applies to --strategy staged",
        ),
        (vec!["--hosts", "web-01;x"], "--hosts"),
        (
            vec!["--tags", "web", "--health-timeout", "0"],
            "--health-timeout",
        ),
    ];
    for (extra, expect) in cases {
        let out = run(nixfleet(&s, &s.path).args(base).args(&extra));
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{extra:?}: {}", stderr(&out));
    }
    // Neither --tags nor --hosts: clap's usage error.
    let out = run(nixfleet(&s, &s.path).args(base));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_cache_hook_of_the_project_file_pushes_each_closure_and_names_the_cache() {
    let s = Scratch::new("relhook");
    write_flake(&s.join("flake"), "h1", &s.join("marker"));
    let cache = s.join("hook-cache");
    std::fs::write(
        s.join(".nixfleet.toml"),
        format!(
            "[cache.hook]\nurl = \"http://hook.test:5000\"\npush-cmd = \"nix copy --to file://{} {{}} && echo {{}} >> {}\"\n",
            cache.display(),
            s.join("hook.log").display()
        ),
    )
    .expect("write settings");
    let (_, req) = release_dry_run(&s, &["--hosts", "target", "--hook"]);
    assert_eq!(req["cache_url"], "http://hook.test:5000");
    let path = req["entries"][0]["store_path"].as_str().expect("path");
    let log = std::fs::read_to_string(s.join("hook.log")).expect("hook ran");
    assert_eq!(log.trim(), path);
    assert!(
        cache.join(format!("{}.narinfo", &path[11..43])).exists(),
        "pushed by the hook"
    );

    // Without push-cmd, --hook is a usage error.
    std::fs::write(
        s.join(".nixfleet.toml"),
        "[cache.hook]\nurl = \"http://x\"\n",
    )
    .expect("write");
    let out = run(nixfleet(&s, &s.path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["release", "create", "--dry-run", "--hook", "--flake"])
        .arg(s.join("flake")));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("push-cmd"), "{}", stderr(&out));
}
