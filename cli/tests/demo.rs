//! `nixfleet demo`, the real command with the real control plane and agents.
//!
//! Needs the binaries next to each other: `cargo build -p nixfleet-engine -p nixfleet-agent`
//! (or NIXFLEET_CP_BIN, whose directory must also hold nixfleet-agent).

mod common;
use common::agent::agent_bin;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory of the control plane and agent binaries.
fn bin_dir() -> PathBuf {
    agent_bin().parent().expect("a directory").to_path_buf()
}

/// Processes whose command line names `dir` (the demo's children all do).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

/// `nixfleet demo --dir dir --bin-dir <the built binaries>`, from the scratch directory.
fn demo_cmd(s: &Scratch, dir: &Path) -> std::process::Command {
    let mut cmd = nixfleet(s, &s.path);
    cmd.arg("demo")
        .arg("--dir")
        .arg(dir)
        .arg("--bin-dir")
        .arg(bin_dir());
    cmd
}

/// The demo with `--dir dir`, which must succeed within a minute; `path` replaces PATH when
/// given.
fn demo(s: &Scratch, dir: &Path, path: Option<&Path>) -> (std::process::Output, Duration) {
    let mut cmd = demo_cmd(s, dir);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let started = Instant::now();
    let out = run(&mut cmd);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    eprintln!("nixfleet demo took {:.1} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}, the demo promises under a minute"
    );
    (out, took)
}

/// The two `nixfleet timeline` outputs the demo prints: the canary's, then the db rollout's.
fn timelines(text: &str) -> (String, String) {
    let t: Vec<&str> = text.split("$ nixfleet timeline r-").skip(1).collect();
    assert_eq!(t.len(), 2, "{text}");
    (t[0].to_string(), t[1].to_string())
}

/// Asserts that `steps` appear in `text` in this order.
fn in_order(text: &str, steps: &[&str]) {
    let mut at = 0;
    for step in steps {
        at += text[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{text}"));
    }
}

/// A store path as the timeline shows it: the first 7 characters of the hash, then the name.
fn short(path: &str) -> String {
    let rest = path.trim_start_matches("/nix/store/");
    let (hash, name) = rest.split_once('-').expect("hash-name");
    format!("{}…-{name}", &hash[..7])
}

/// Where a link points.
fn target(link: &Path) -> String {
    std::fs::read_link(link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
        .display()
        .to_string()
}

/// The `was` path and the `asked to run` path of `machine` in a timeline.
fn was_and_asked(timeline: &str, machine: &str) -> (String, String) {
    let was_tag = format!("{machine} (was ");
    let was = timeline
        .find(&was_tag)
        .map(|i| &timeline[i + was_tag.len()..])
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{was_tag:?} missing from:\n{timeline}"));
    let asked_tag = format!("{machine} asked to run ");
    let asked = timeline
        .lines()
        .find_map(|l| l.split_once(&asked_tag).map(|x| x.1.trim()))
        .unwrap_or_else(|| panic!("{asked_tag:?} missing from:\n{timeline}"));
    (was.to_string(), asked.to_string())
}

/// What the demo leaves in common whichever way it ran, and that it left no process behind.
fn leaves_its_files_and_no_process(s: &Scratch, dir: &Path, text: &str) {
    // The offline command it prints works on the directory it left.
    let offline = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("nixfleet timeline --data-dir "))
        .unwrap_or_else(|| panic!("the offline timeline command is missing:\n{text}"));
    let (data_dir, id) = offline.split_once(' ').expect("dir and id");
    let story = run(nixfleet(s, &s.path).args(["timeline", "--data-dir", data_dir, id]));
    assert!(story.status.success(), "{}", stderr(&story));
    assert!(
        stdout(&story).contains("Status: completed"),
        "{}",
        stdout(&story)
    );
    let left = processes_under(&s.path);
    assert!(left.is_empty(), "left running: {left:#?}");
    for kept in [
        "cp",
        "logs/control-plane.log",
        "logs/db-01.log",
        "api-key",
        "pki/ca.pem",
    ] {
        assert!(dir.join(kept).exists(), "{kept} not left in the demo dir");
    }
}

#[test]
fn with_nix_the_demo_switches_machines_from_g1_to_g2_and_a_broken_g2_rolls_back_to_g1() {
    assert!(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join("nix-build").is_file()),
        "nix-build is not on PATH: install Debian's nix-bin"
    );
    let s = Scratch::new("demo-nix");
    let dir = s.join("demo");
    let (out, _) = demo(&s, &dir, None);
    let text = stdout(&out);
    let (canary, gated) = timelines(&text);

    // Each web machine was asked to run a path other than the one it ran: a real deploy.
    for m in ["web-01", "web-02", "web-03"] {
        let (was, asked) = was_and_asked(&canary, m);
        assert!(
            was.ends_with(&format!("-nixfleet-demo-{m}-g1"))
                && asked.ends_with(&format!("-nixfleet-demo-{m}-g2")),
            "{m} was {was} and was asked to run {asked}, not its G1 then its G2:\n{canary}"
        );
    }
    in_order(
        &canary,
        &[
            "batch 0 started (attempt 1): web-0",
            "batch 0 succeeded: 1 healthy",
            "batch 1 started (attempt 1): web-0",
            "batch 1 succeeded: 2 healthy",
            "Status: completed",
        ],
    );
    let (was, asked) = was_and_asked(&gated, "db-01");
    assert!(
        was.ends_with("-nixfleet-demo-db-01-g1")
            && asked.ends_with("-nixfleet-demo-db-01-g2-broken"),
        "db-01 was {was} and was asked to run {asked}:\n{gated}"
    );
    in_order(
        &gated,
        &[
            "batch 0 FAILED (unhealthy): 0 healthy, 1 unhealthy, threshold 0",
            "db-01 unhealthy by #",
            "rolled back: switch failed",
            "paused: batch 0 failed: 1 unhealthy, threshold 0",
            "Status: paused",
        ],
    );

    // The machines' own links moved: the web machines' current-system is their G2, db-01's is
    // its G1 again, and its profile shows the way there and back.
    let machines = dir.join("machines");
    for m in ["web-01", "web-02", "web-03"] {
        let md = machines.join(m);
        let (g1, g2) = (
            target(&md.join("system-profile-1-link")),
            target(&md.join("system-profile-2-link")),
        );
        assert!(g1.ends_with(&format!("-{m}-g1")), "{m} generation 1: {g1}");
        assert!(g2.ends_with(&format!("-{m}-g2")), "{m} generation 2: {g2}");
        assert_eq!(target(&md.join("current-system")), g2, "{m} runs its G2");
        assert!(
            Path::new(&g2).join("bin/switch-to-configuration").is_file(),
            "{g2} is a real store path"
        );
        assert!(
            text.contains(&format!("{m}: switched to {g2} (was {g1})")),
            "{m}'s switch is not shown:\n{text}"
        );
    }
    let db = machines.join("db-01");
    let (g1, broken, back) = (
        target(&db.join("system-profile-1-link")),
        target(&db.join("system-profile-2-link")),
        target(&db.join("system-profile-3-link")),
    );
    assert!(g1.ends_with("-db-01-g1"), "db-01 generation 1: {g1}");
    assert!(
        broken.ends_with("-db-01-g2-broken"),
        "db-01 generation 2: {broken}"
    );
    assert_eq!(back, g1, "db-01's profile generation 3 is its G1 again");
    assert_eq!(
        target(&db.join("current-system")),
        g1,
        "db-01 came back to its G1"
    );
    let came_back = format!(
        "db-01: switching to {} failed, rolled back to {g1}; machines/db-01/current-system -> {}",
        short(&broken),
        short(&g1)
    );
    assert!(
        text.contains(&came_back),
        "{came_back:?} missing from:\n{text}"
    );
    for expected in [
        "with nix-build",
        "3/4 hosts in sync",
        "Demo finished in",
        "stopped the control plane and 4 agents",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(
        !text.contains("dry"),
        "a real run says nothing of a dry one:\n{text}"
    );
    leaves_its_files_and_no_process(&s, &dir, &text);
}

#[test]
fn without_nix_the_demo_says_it_runs_dry_then_completes_a_canary_and_pauses_the_db_rollout() {
    let s = Scratch::new("demo-dry");
    let dir = s.join("demo");
    // A PATH with no Nix on it (and nothing else: the demo starts its children by full path).
    let no_nix = s.join("no-nix-bin");
    std::fs::create_dir_all(&no_nix).expect("mkdir");
    let (out, _) = demo(&s, &dir, Some(&no_nix));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.contains("runs dry") && first.contains("nix-build") && first.contains("nix-bin"),
        "the first line does not say plainly that the demo runs dry and why:\n{text}"
    );
    for expected in [
        "4 machines registered themselves",
        "Release rel-",
        "batch 0 started: ",
        "batch 1 succeeded: 2 healthy, 0 unhealthy, threshold 0",
        "completed",
        "db-01: health FAILED: http://127.0.0.1:",
        "batch 0 FAILED (unhealthy): 0 healthy, 1 unhealthy, threshold 0",
        "PAUSED: batch 0 failed: 1 unhealthy, threshold 0 (db-01: health checks failed: http://127.0.0.1:",
        "nixfleet rollout resume r-",
        "4/4 hosts in sync (4 machines)",
        "Demo finished in",
        "stopped the control plane and 4 agents",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    // The timelines, by `nixfleet timeline`: the canary's batches in order, then the end.
    let (canary, gated) = timelines(&text);
    in_order(
        &canary,
        &[
            "created: release rel-",
            "strategy canary, 2 batches (1+2)",
            "batch 0 started (attempt 1): web-0",
            "batch 0 succeeded: 1 healthy",
            "healthy by #",
            "batch 1 started (attempt 1): web-0",
            "batch 1 succeeded: 2 healthy",
            "completed",
            "Status: completed",
        ],
    );
    for expected in [
        "strategy all_at_once",
        "batch 0 FAILED (unhealthy): 0 healthy, 1 unhealthy, threshold 0",
        "db-01 unhealthy by #",
        "health checks failed: http://127.0.0.1:",
        "paused: batch 0 failed: 1 unhealthy, threshold 0",
        "Status: paused",
    ] {
        assert!(
            gated.contains(expected),
            "{expected:?} missing from:\n{gated}"
        );
    }
    leaves_its_files_and_no_process(&s, &dir, &text);

    // A second run replaces the first one's directory.
    let (again, _) = demo(&s, &dir, Some(&no_nix));
    assert!(
        stdout(&again).contains("(removed the previous demo found there)"),
        "{}",
        stdout(&again)
    );
    assert!(processes_under(&s.path).is_empty());
}

#[test]
fn a_failing_nix_build_is_one_line_naming_its_log_and_dry_run_still_works_there() {
    let s = Scratch::new("demo-nobuild");
    let dir = s.join("demo");
    // A store nix-build cannot reach (no daemon listens), as for a user who may not build.
    let out = run(demo_cmd(&s, &dir).env("NIX_REMOTE", "daemon"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: nix-build of the demo's generations failed")
            && err.contains("logs/nix-build.log")
            && err.contains("--dry-run"),
        "{err}"
    );
    assert!(processes_under(&s.path).is_empty());

    let out = run(demo_cmd(&s, &dir)
        .env("NIX_REMOTE", "daemon")
        .arg("--dry-run"));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let first = text.lines().next().unwrap_or("");
    assert!(first.contains("runs dry: --dry-run was given"), "{first}");
    assert!(
        text.contains("rollout r-") && text.contains(" PAUSED: "),
        "{text}"
    );
    assert!(processes_under(&s.path).is_empty());
}

#[test]
fn missing_binaries_are_one_line_naming_the_build_command_and_nothing_is_created() {
    let s = Scratch::new("demo-nobin");
    let empty = s.join("no-binaries-here");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = run(nixfleet(&s, &s.path)
        .args(["demo", "--dir", "d", "--bin-dir"])
        .arg(&empty));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: nixfleet-control-plane and nixfleet-agent not found in ")
            && err.contains("cargo build -p nixfleet-engine -p nixfleet-agent"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(!s.join("d").exists());
}

#[test]
fn a_directory_that_holds_something_else_is_refused_and_left_alone() {
    let s = Scratch::new("demo-busy");
    let dir = s.join("mine");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("notes.txt"), "keep me").expect("write");
    let out = run(&mut demo_cmd(&s, &dir));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not hold a previous demo"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).expect("still there"),
        "keep me"
    );
}

#[test]
fn ctrl_c_stops_every_process_exiting_0_with_keep_running_and_130_mid_run() {
    use std::io::{BufRead, BufReader};
    let s = Scratch::new("demo-sigint");
    // SIGINT to the demo once its stdout shows `until`: the line it waits at, or one mid-run.
    let interrupt = |dir: &str, args: &[&str], until: &str| {
        let mut child = demo_cmd(&s, &s.join(dir))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the demo");
        // Stdout is read to its end on a thread of its own: a test that stopped reading (closing
        // the pipe) would make the demo's next write fail, an error path of its own.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = String::new();
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(120)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(until) {
                break;
            }
        }
        assert!(seen.contains(until), "{seen}");
        let kill = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
        let out = child.wait_with_output().expect("wait");
        let left = processes_under(&s.path);
        assert!(left.is_empty(), "left running: {left:#?}");
        (out.status.code(), stderr(&out))
    };
    let (code, err) = interrupt(
        "kept",
        &["--dry-run", "--keep-running"],
        "press Ctrl-C to stop them",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Stopping: stopped 5 processes"), "{err}");
    let (code, err) = interrupt("mid", &["--dry-run"], "Rollout 1: canary");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("Interrupted: stopped 5 processes"), "{err}");
}
