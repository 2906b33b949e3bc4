//! The event replay tool (`events`, `replay`, `timeline`, `verify`, `what-if`), run as the real
//! `nixfleet` binary on sled data directories built from the golden logs in fixtures/events, and
//! online against the real control plane over mutual TLS serving the same log.
//!
//! `fixtures/events/story.bin` is one staged rollout told in full (five machines, a batch that
//! times out on a slow machine, a pause, a resume, completion); `story-tampered.bin` is the same
//! log with one record altered after the fact. Both are written by `story()` below; regenerate
//! with `NIXFLEET_UPDATE_FIXTURES=1 cargo test -p nixfleet-cli --test replay`.
#![allow(clippy::unwrap_used)]

mod common;
use common::cp::*;
use common::*;
use nixfleet_core::decide::{Command as Cmd, ReportInput};
use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::plan::RolloutSpec;
use nixfleet_core::State;
use nixfleet_engine::engine::{Engine, ManualClock};
use nixfleet_engine::log::{
    decode_record, encode_record, hash_bytes, EventLog, MemoryLog, SledLog,
};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

// For testing only — don't actually do this: API keys whose secrets are in the source, so that a
// control plane serving the story log can be asked questions.
const ALICE_KEY: &str = "nfk-a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const BOB_KEY: &str = "nfk-b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
/// 2025-11-24 16:00:00 UTC.
const T0: u64 = 1_764_000_000_000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/events")
        .join(name)
}

fn read_raw(name: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    out
}

fn p(host: &str, n: u32) -> StorePath {
    StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{host}-{n}", n)).unwrap()
}

fn healthy_report(path: StorePath) -> ReportInput {
    ReportInput {
        generation: Some(path),
        success: true,
        message: "deployed".into(),
        tags: vec![Tag::parse("web").unwrap()],
        health: Some((
            vec![CheckResult {
                name: "http://localhost/health".into(),
                passed: true,
                duration_ms: 3,
                message: String::new(),
            }],
            true,
        )),
        agent_version: "0.2.0".into(),
        uptime_secs: 600,
        dry_run: false,
        rolled_back_from: None,
    }
}

/// The story: five web machines register by reporting; bob rolls rel-7 out in batches of 1, 2
/// and the rest with a 120 s health timeout; batch 1's second machine is slow, so the batch
/// times out and the rollout pauses; it reports healthy later, bob resumes, and the rollout
/// completes.
fn story() -> Vec<Vec<u8>> {
    let clock = Arc::new(ManualClock::new(Timestamp(T0)));
    let log = Arc::new(MemoryLog::new());
    let e = Engine::new(log.clone(), State::default(), clock.clone());
    // Moves the clock to T0 + secs.
    let at = |secs: u64| {
        use nixfleet_engine::engine::Clock;
        let now = clock.now().0;
        assert!(T0 + secs * 1000 >= now, "the story goes forward in time");
        clock.advance_ms(T0 + secs * 1000 - now);
    };
    let ok = |actor: &Actor, c: Cmd| {
        e.execute_blocking(actor.clone(), &c)
            .unwrap_or_else(|err| panic!("{c:?}: {err}"));
    };
    let m = |s: &str| MachineId::parse(s).unwrap();
    let key = |s: &str| KeyName::parse(s).unwrap();
    let alice = Actor::Key(key("alice"));
    let bob = Actor::Key(key("bob"));
    let report = |host: &MachineId, n: u32| {
        ok(
            &Actor::Machine(host.clone()),
            Cmd::Report {
                machine: host.clone(),
                report: healthy_report(p(host.as_str(), n)),
                auto_register: true,
            },
        )
    };
    ok(
        &Actor::Bootstrap,
        Cmd::Bootstrap {
            name: key("alice"),
            hash: hash_bytes(ALICE_KEY.as_bytes()),
        },
    );
    at(5);
    ok(
        &alice,
        Cmd::CreateKey {
            name: key("bob"),
            role: Role::Deploy,
            hash: hash_bytes(BOB_KEY.as_bytes()),
        },
    );
    let hosts: Vec<MachineId> = (1..=5).map(|i| m(&format!("web-0{i}"))).collect();
    for (i, h) in hosts.iter().enumerate() {
        at(10 + i as u64);
        report(h, 1);
    }
    at(60);
    ok(
        &bob,
        Cmd::CreateRelease {
            release: ReleaseId::parse("rel-7").unwrap(),
            flake_ref: Some("github:example/fleet".into()),
            flake_rev: Some("7e1f2a9".into()),
            cache_url: Some("http://cache:5000".into()),
            entries: hosts
                .iter()
                .map(|h| ReleaseEntry {
                    machine: h.clone(),
                    path: p(h.as_str(), 7),
                    platform: "x86_64-linux".into(),
                    tags: vec![],
                })
                .collect(),
        },
    );
    at(70);
    let rid = RolloutId::parse("r-web").unwrap();
    ok(
        &bob,
        Cmd::CreateRollout {
            rollout: rid.clone(),
            spec: RolloutSpec {
                release: ReleaseId::parse("rel-7").unwrap(),
                strategy: "staged".into(),
                batch_sizes: Some(vec!["1".into(), "2".into(), "100%".into()]),
                failure_threshold: Some("0".into()),
                on_failure: Some("pause".into()),
                health_timeout_secs: Some(120),
                target: Target::Tags(vec![Tag::parse("web").unwrap()]),
                cache_url: None,
            },
            seed: 7,
        },
    );
    let batch = |i: usize| e.read(|s| s.rollouts[&rid].plan.batches[i].clone());
    let (b0, b1, b2) = (batch(0), batch(1), batch(2));
    assert_eq!((b0.len(), b1.len(), b2.len()), (1, 2, 2));
    at(115);
    report(&b0[0].0, 7);
    at(155);
    report(&b1[0].0, 7);
    // The second machine of batch 1 is silent past the timeout (115 + 120 s).
    at(235);
    e.tick().unwrap();
    assert_eq!(
        e.read(|s| s.rollouts[&rid].status),
        RolloutStatus::Paused,
        "batch 1 timed out"
    );
    at(265);
    report(&b1[1].0, 7);
    at(400);
    ok(
        &bob,
        Cmd::ResumeRollout {
            rollout: rid.clone(),
        },
    );
    at(430);
    report(&b1[0].0, 7);
    at(445);
    report(&b1[1].0, 7);
    at(480);
    report(&b2[0].0, 7);
    at(490);
    report(&b2[1].0, 7);
    assert_eq!(
        e.read(|s| s.rollouts[&rid].status),
        RolloutStatus::Completed
    );
    log.raw()
}

/// The story with one record altered after the fact: the resume is attributed to alice instead
/// of bob. The record itself still decodes and keeps its `prev_hash`, so only the chain (the
/// next record's `prev_hash`) shows it.
fn tampered(raw: &[Vec<u8>]) -> (Vec<Vec<u8>>, u64) {
    let mut out = raw.to_vec();
    let i = raw
        .iter()
        .position(|b| {
            matches!(
                decode_record(b).unwrap().event,
                Event::RolloutResumed { .. }
            )
        })
        .unwrap();
    let r = decode_record(&raw[i]).unwrap();
    out[i] = encode_record(
        r.seq,
        r.at,
        &Actor::Key(KeyName::parse("alice").unwrap()),
        r.prev_hash,
        &r.event,
    );
    (out, r.seq.0)
}

fn write_fixture(name: &str, raw: &[Vec<u8>]) {
    let mut out = Vec::new();
    let mut text = String::new();
    for r in raw {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
        let rec = decode_record(r).unwrap();
        text.push_str(&format!(
            "{:>3} {:>6} {:<24} {:<16} {:?}\n",
            rec.seq.0,
            format!("+{}s", (rec.at.0 - T0) / 1000),
            rec.event.kind(),
            rec.actor.to_string(),
            rec.event
        ));
    }
    std::fs::write(fixture(name), out).unwrap();
    std::fs::write(fixture(name).with_extension("txt"), text).unwrap();
}

#[test]
fn the_story_fixtures_are_reproducible() {
    let raw = story();
    let (bad, _) = tampered(&raw);
    if std::env::var_os("NIXFLEET_UPDATE_FIXTURES").is_some() {
        write_fixture("story.bin", &raw);
        write_fixture("story-tampered.bin", &bad);
    }
    assert_eq!(
        read_raw("story.bin"),
        raw,
        "story() and fixtures/events/story.bin differ: regenerate (see the module doc)"
    );
    assert_eq!(read_raw("story-tampered.bin"), bad);
}

fn event_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A real data directory holding the fixture `name`: written through the control plane's own
/// log (`SledLog::append`, record by record at the recorded times), then any record the write
/// path did not reproduce byte for byte is put in as the fixture has it, with the head (`h`:
/// last sequence number, big-endian, and the SHA-256 of that record, see
/// engine/src/log/sled_log.rs) naming the fixture's last record, as an attacker editing one
/// record in place would leave it. Returns the directory and how many records needed that (the
/// tampered one's successors: the write path re-chains them, the fixture does not).
fn data_dir(s: &Scratch, name: &str, dir: &str) -> (PathBuf, usize) {
    let raw = read_raw(name);
    let data = s.join(dir);
    let log = SledLog::open(&data.join("log"), |_| {}).unwrap();
    for bytes in &raw {
        let r = decode_record(bytes).unwrap();
        log.append(r.at, &r.actor, &[r.event]).unwrap();
    }
    log.close().unwrap();
    let db = nixfleet_engine::log::open_raw(&data.join("log")).unwrap();
    let mut altered = 0;
    for (i, bytes) in raw.iter().enumerate() {
        let k = event_key(i as u64 + 1);
        if db.get(&k).unwrap().as_deref() != Some(&bytes[..]) {
            db.insert(k, bytes.clone()).unwrap();
            altered += 1;
        }
    }
    if altered > 0 {
        let last = raw.last().unwrap();
        let mut head = (raw.len() as u64).to_be_bytes().to_vec();
        head.extend_from_slice(&hash_bytes(last));
        db.insert(b"h", head).unwrap();
    }
    db.flush().unwrap();
    (data, altered)
}

fn nf(s: &Scratch, args: &[&str]) -> Output {
    run(nixfleet(s, &s.path).args(args))
}

/// Runs, expects exit 0, returns stdout.
fn nf_ok(s: &Scratch, args: &[&str]) -> String {
    let out = nf(s, args);
    assert!(
        out.status.success(),
        "nixfleet {args:?} failed ({:?}): {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs, expects exit `code` and exactly one line on stderr, returns it.
fn nf_fails(s: &Scratch, args: &[&str], code: i32) -> String {
    let out = nf(s, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "nixfleet {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sequence number of the first record of `kind` in a fixture.
fn seq_of(name: &str, kind: &str) -> u64 {
    read_raw(name)
        .iter()
        .map(|b| decode_record(b).unwrap())
        .find(|r| r.event.kind() == kind)
        .unwrap()
        .seq
        .0
}

#[test]
fn verify_passes_on_the_golden_logs_and_names_the_tampered_record() {
    let s = Scratch::new("rverify");
    let (story, n) = data_dir(&s, "story.bin", "story");
    assert_eq!(n, 0, "the write path reproduces the fixture byte for byte");
    let total = read_raw("story.bin").len();
    let out = nf_ok(&s, &["verify", "--data-dir", d(&story)]);
    assert!(
        out.starts_with(&format!("ok: {total} records from {}", story.display())),
        "{out}"
    );
    assert!(out.contains("without gaps, each chained"), "{out}");
    assert!(
        out.contains(&format!("last record {total} (RolloutCompleted")),
        "{out}"
    );
    assert!(out.contains("The head"), "{out}");
    let (v1, _) = data_dir(&s, "v1.bin", "v1");
    let v1_total = read_raw("v1.bin").len();
    assert!(nf_ok(&s, &["verify", "--data-dir", d(&v1)])
        .starts_with(&format!("ok: {v1_total} records")));

    let (bad, altered) = data_dir(&s, "story-tampered.bin", "tampered");
    let (_, resumed) = tampered(&read_raw("story.bin"));
    assert_eq!(
        altered,
        total - resumed as usize,
        "the records after the tampered one"
    );
    let err = nf_fails(&s, &["verify", "--data-dir", d(&bad)], 1);
    assert!(
        err.contains(&format!("fails verification at record {}", resumed + 1)),
        "{err}"
    );
    assert!(
        err.contains("hash chain broken: this record or the one before it was altered"),
        "{err}"
    );
    assert!(
        err.contains(&format!("(records 1 to {resumed} chain correctly)")),
        "{err}"
    );
    let out = nf(&s, &["--json", "verify", "--data-dir", d(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], resumed + 1);
    // The other commands refuse a damaged log rather than tell a story from it.
    let err = nf_fails(&s, &["timeline", "r-web", "--data-dir", d(&bad)], 1);
    assert!(err.contains("damaged at record"), "{err}");
}

#[test]
fn verify_names_the_first_missing_record_of_a_truncated_or_gapped_log() {
    let s = Scratch::new("rtrunc");
    let total = read_raw("story.bin").len() as u64;
    let (cut, _) = data_dir(&s, "story.bin", "cut");
    {
        let db = nixfleet_engine::log::open_raw(&cut.join("log")).unwrap();
        db.remove(event_key(total)).unwrap();
        db.remove(event_key(total - 1)).unwrap();
        db.flush().unwrap();
    }
    let err = nf_fails(&s, &["verify", "--data-dir", d(&cut)], 1);
    assert!(
        err.contains(&format!("at record {}: log truncated", total - 1)),
        "{err}"
    );
    let (gap, _) = data_dir(&s, "story.bin", "gap");
    {
        let db = nixfleet_engine::log::open_raw(&gap.join("log")).unwrap();
        db.remove(event_key(12)).unwrap();
        db.flush().unwrap();
    }
    let err = nf_fails(&s, &["verify", "--data-dir", d(&gap)], 1);
    assert!(
        err.contains("at record 12: record 12 is missing (found 13 next)"),
        "{err}"
    );
    let err = nf_fails(&s, &["verify", "--data-dir", d(&s.join("nothing"))], 2);
    assert!(err.contains("holds no nixfleet event log"), "{err}");
    assert!(
        err.contains("give --data-dir the control plane's data directory"),
        "{err}"
    );
}

#[test]
fn the_tools_read_a_log_whose_oldest_records_are_in_the_archive_as_one_log() {
    let s = Scratch::new("rarchive");
    let (plain, _) = data_dir(&s, "story.bin", "plain");
    let (archived, _) = data_dir(&s, "story.bin", "archived");
    let total = read_raw("story.bin").len() as u64;
    let log = SledLog::open_with(
        &archived.join("log"),
        None,
        nixfleet_engine::log::LogOptions::segments_of(8),
        |_| {},
    )
    .unwrap();
    let top = log.archive_due().unwrap();
    log.close().unwrap();
    assert!(top >= total - 16 && top > 0, "archived to {top} of {total}");
    for args in [
        vec!["verify"],
        vec!["events"],
        vec!["replay"],
        vec!["timeline", "r-web"],
    ] {
        let run = |dir: &Path| {
            let mut all = args.clone();
            all.extend(["--data-dir", d(dir)]);
            nf_ok(&s, &all).replace(d(dir), "DIR")
        };
        assert_eq!(run(&archived), run(&plain), "nixfleet {args:?}");
    }
    // A damaged segment is named like a damaged sled record.
    let seg = std::fs::read_dir(archived.join("log/archive"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let err = nf_fails(&s, &["verify", "--data-dir", d(&archived)], 1);
    assert!(err.contains("fails verification at record"), "{err}");
}

#[test]
fn reading_a_data_directory_never_changes_it() {
    let s = Scratch::new("rreadonly");
    let (story, _) = data_dir(&s, "story.bin", "story");
    let snapshot = |dir: &Path| {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push((e.path(), std::fs::read(e.path()).unwrap()));
                }
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&story);
    for args in [
        vec!["verify"],
        vec!["events"],
        vec!["replay"],
        vec!["timeline", "r-web"],
        vec!["what-if", "r-web", "--health-timeout", "300"],
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", d(&story)]);
        nf_ok(&s, &all);
    }
    assert!(before == snapshot(&story), "the data directory changed");
}

#[test]
fn replay_until_prints_the_tables_as_they_were_then() {
    let s = Scratch::new("rreplay");
    let (story, _) = data_dir(&s, "story.bin", "story");
    let paused = seq_of("story.bin", "RolloutPaused");
    let out = nf_ok(
        &s,
        &[
            "replay",
            "--until",
            &paused.to_string(),
            "--data-dir",
            d(&story),
        ],
    );
    let total = read_raw("story.bin").len();
    assert!(
        out.starts_with(&format!(
            "State after record {paused} of {total} (2025-11-24 16:03:55 UTC, RolloutPaused by executor)."
        )),
        "{out}"
    );
    for section in [
        "\nMachines\n",
        "\nReleases\n",
        "\nRollouts\n",
        "\nBatches\n",
        "\nAPI keys\n",
    ] {
        assert!(out.contains(section), "{section:?} in {out}");
    }
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in {out}"))
            .to_string()
    };
    let rollout = line("r-web ");
    assert!(
        rollout.contains("paused") && rollout.contains("rel-7") && rollout.contains("staged"),
        "{rollout}"
    );
    assert!(
        rollout.contains("batch 1 failed"),
        "the pause reason: {rollout}"
    );
    let batch1 = out
        .lines()
        .find(|l| l.starts_with("r-web") && l.split_whitespace().nth(1) == Some("1"))
        .unwrap();
    assert!(
        batch1.contains("failed") && batch1.contains("(healthy)") && batch1.contains("(silent)"),
        "{batch1}"
    );
    assert!(line("bob ").contains("deploy"), "{out}");
    assert!(
        line("rel-7 ").contains("github:example/fleet at 7e1f2a9"),
        "{out}"
    );

    // By time: before the rollout existed, and the end of the log.
    let early = nf_ok(
        &s,
        &[
            "replay",
            "--until",
            "2025-11-24 16:00:30",
            "--data-dir",
            d(&story),
        ],
    );
    assert!(early.contains("as of 2025-11-24 16:00:30 UTC"), "{early}");
    assert!(early.contains("Rollouts\n(none)"), "{early}");
    assert!(
        early.contains("web-05"),
        "the machines had registered: {early}"
    );
    let end = nf_ok(&s, &["replay", "--data-dir", d(&story)]);
    assert!(line_in(&end, "r-web ").contains("completed"), "{end}");
    let before = nf_ok(
        &s,
        &[
            "replay",
            "--until",
            "2025-11-24T15:00:00Z",
            "--data-dir",
            d(&story),
        ],
    );
    assert!(before.contains("before the first record"), "{before}");

    let v: serde_json::Value = serde_json::from_str(&nf_ok(
        &s,
        &[
            "--json",
            "replay",
            "--until",
            &paused.to_string(),
            "--data-dir",
            d(&story),
        ],
    ))
    .unwrap();
    assert_eq!(v["as_of"]["seq"], paused);
    assert_eq!(v["machines"].as_array().unwrap().len(), 5);
    assert_eq!(v["rollouts"][0]["status"], "paused");
    assert_eq!(v["rollouts"][0]["batches"][1]["status"], "failed");
    assert_eq!(v["api_keys"].as_array().unwrap().len(), 2);

    let err = nf_fails(
        &s,
        &["replay", "--until", "9999", "--data-dir", d(&story)],
        2,
    );
    assert!(
        err.contains(&format!("the log ends at record {total}")),
        "{err}"
    );
    let err = nf_fails(
        &s,
        &["replay", "--until", "lunchtime", "--data-dir", d(&story)],
        2,
    );
    assert!(err.contains("not a sequence number or a time"), "{err}");
}

fn line_in(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {text}"))
        .to_string()
}

#[test]
fn the_timeline_tells_who_did_what_and_which_reports_decided_each_batch() {
    let s = Scratch::new("rtimeline");
    let (story, _) = data_dir(&s, "story.bin", "story");
    let out = nf_ok(&s, &["timeline", "r-web", "--data-dir", d(&story)]);
    assert!(
        out.starts_with("Rollout r-web of release rel-7, created 2025-11-24 16:01:10 UTC by apikey:bob; now completed."),
        "{out}"
    );
    let created = line_in(&out, "2025-11-24 16:01:10  +0s");
    assert!(created.contains("apikey:bob") && created.contains("created: release rel-7, strategy staged, 3 batches (1+2+2), threshold 0, on failure pause, health timeout 120s, seed 7"), "{created}");
    let failed = out
        .lines()
        .position(|l| l.contains("batch 1 FAILED (timeout): 1 healthy, 1 unhealthy, threshold 0"))
        .unwrap_or_else(|| panic!("{out}"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[failed].starts_with("2025-11-24 16:03:55  +2m45s"),
        "{}",
        lines[failed]
    );
    assert!(lines[failed].contains("executor"), "{}", lines[failed]);
    let evidence = [lines[failed + 1].trim(), lines[failed + 2].trim()];
    assert!(
        evidence.iter().any(|l| l.starts_with("└ web-")
            && l.contains(" healthy by #")
            && l.contains("at 2025-11-24 16:02:35 (+1m25s)")),
        "{evidence:?}"
    );
    assert!(
        evidence
            .iter()
            .any(|l| l.starts_with("└ web-") && l.contains(" silent")),
        "{evidence:?}"
    );
    assert!(
        lines[failed + 3].starts_with("2025-11-24 16:03:55  +2m45s")
            && lines[failed + 3].ends_with("paused: batch 1 failed: 1 unhealthy (of them 1 silent past the 120s health timeout), threshold 0"),
        "{out}"
    );
    let resumed = out.lines().find(|l| l.ends_with("  resumed")).unwrap();
    assert!(
        resumed.contains("apikey:bob") && resumed.contains("+5m30s"),
        "{resumed}"
    );
    assert!(out.contains("batch 1 started (attempt 2)"), "{out}");
    assert!(
        out.trim_end().ends_with("Status: completed; 7m00s from the first to the last step; 1 batch decision failed; resumed by apikey:bob."),
        "{out}"
    );

    // The golden v1 log: a canary that rolled back, with the report that said so.
    let (v1, _) = data_dir(&s, "v1.bin", "v1");
    let out = nf_ok(&s, &["timeline", "r-1", "--data-dir", d(&v1)]);
    let failed = out
        .lines()
        .position(|l| l.contains("batch 0 FAILED (unhealthy)"))
        .unwrap();
    let ev = out.lines().nth(failed + 1).unwrap();
    assert!(
        ev.contains("└ web-01 unhealthy by #") && ev.contains("rolled back"),
        "{ev}"
    );
    let out = nf_ok(&s, &["timeline", "r-2", "--data-dir", d(&v1)]);
    assert!(out.contains("now deleted"), "{out}");
    assert!(out.contains("sent back to"), "{out}");

    let v: serde_json::Value = serde_json::from_str(&nf_ok(
        &s,
        &["--json", "timeline", "r-web", "--data-dir", d(&story)],
    ))
    .unwrap();
    assert_eq!(v["status"], "completed");
    let decided = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["text"].as_str().unwrap().contains("FAILED"))
        .unwrap();
    assert_eq!(decided["evidence"].as_array().unwrap().len(), 2);

    let err = nf_fails(&s, &["timeline", "r-nope", "--data-dir", d(&story)], 2);
    assert!(
        err.contains("rollout r-nope does not appear in the log"),
        "{err}"
    );
    let err = nf_fails(&s, &["timeline", "r web", "--data-dir", d(&story)], 2);
    assert!(err.contains("rollout ids look like r-"), "{err}");
}

#[test]
fn what_if_shows_where_other_parameters_would_have_decided_differently() {
    let s = Scratch::new("rwhatif");
    let (story, _) = data_dir(&s, "story.bin", "story");
    // A 300 s timeout would have waited for the slow machine: no pause, no resume.
    let patient = [
        "what-if",
        "r-web",
        "--health-timeout",
        "300",
        "--data-dir",
        d(&story),
    ];
    let out = nf_ok(&s, &patient);
    assert!(
        out.starts_with("What if rollout r-web had run with health timeout 300s (recorded 120s)?"),
        "{out}"
    );
    let row = |mark: &str, text: &str| {
        out.lines()
            .find(|l| l.starts_with(mark) && l.ends_with(text))
            .unwrap_or_else(|| panic!("no {mark} {text:?} in {out}"))
            .to_string()
    };
    assert!(row(
        "-",
        "batch 1 failed (timeout): 1 healthy, 1 unhealthy, threshold 0"
    )
    .contains("2025-11-24 16:03:55  +2m45s"));
    row("-", "rollout paused");
    row("-", "rollout resumed (operator)");
    assert!(row(
        "+",
        "batch 1 succeeded: 2 healthy, 0 unhealthy, threshold 0"
    )
    .contains("16:04:25  +3m15s"));
    row(
        " ",
        "batch 0 succeeded: 1 healthy, 0 unhealthy, threshold 0",
    );
    row(" ", "rollout completed");
    assert!(
        out.contains("the rollout ends completed either way. The first difference is at 2025-11-24 16:03:55 UTC (+2m45s): the log has \"batch 1 failed (timeout)"),
        "{out}"
    );
    // A threshold of one would have let batch 1 through at the timeout.
    let out = nf_ok(
        &s,
        &[
            "what-if",
            "r-web",
            "--failure-threshold",
            "1",
            "--data-dir",
            d(&story),
        ],
    );
    assert!(
        out.lines().any(|l| l.starts_with('+')
            && l.contains("16:03:55")
            && l.ends_with("batch 1 succeeded: 1 healthy, 1 unhealthy, threshold 1")),
        "{out}"
    );
    // One batch of everything: the machines asked late are silent, so it fails at once.
    let out = nf_ok(
        &s,
        &[
            "what-if",
            "r-web",
            "--batch-size",
            "100%",
            "--data-dir",
            d(&story),
        ],
    );
    assert!(
        out.contains("batch sizes 100% (recorded 1,2,100%: 1+2+2)"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with('+')
            && l.ends_with("batch 0 failed (timeout): 2 healthy, 3 unhealthy, threshold 0")),
        "{out}"
    );
    // The recorded parameters reproduce the recorded decisions.
    let same = nf_ok(&s, &["what-if", "r-web", "--data-dir", d(&story)]);
    assert!(
        same.trim_end()
            .ends_with("Same decisions as recorded; the rollout ends completed either way."),
        "{same}"
    );
    assert!(
        !same
            .lines()
            .any(|l| l.starts_with('+') || l.starts_with('-')),
        "{same}"
    );

    let v = json(&s, &patient);
    assert_eq!(v["differs"], true);
    assert_eq!(v["simulated_status"], "completed");
    assert!(v["diff"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["side"] == "recorded" && r["text"] == "rollout paused"));

    let err = nf_fails(
        &s,
        &[
            "what-if",
            "r-web",
            "--failure-threshold",
            "lots",
            "--data-dir",
            d(&story),
        ],
        2,
    );
    assert!(err.contains("lots"), "{err}");
}

#[test]
fn events_are_filtered_by_stream_kind_actor_and_time() {
    let s = Scratch::new("revents");
    let (story, _) = data_dir(&s, "story.bin", "story");
    let total = read_raw("story.bin").len();
    let all = nf_ok(&s, &["events", "--data-dir", d(&story)]);
    let mut lines = all.lines();
    let header = lines.next().unwrap();
    assert!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["SEQ", "TIME", "(UTC)", "ACTOR", "STREAM", "EVENT", "WHAT"],
        "{header}"
    );
    assert_eq!(lines.count(), total);
    let first = all.lines().nth(1).unwrap();
    assert!(
        first.contains("2025-11-24 16:00:00  system:bootstrap")
            && first.contains("key:alice")
            && first.contains("ApiKeyCreated")
            && first.ends_with("key alice created, role admin"),
        "{first}"
    );

    let failed = nf_ok(
        &s,
        &["events", "--kind", "BatchFailed", "--data-dir", d(&story)],
    );
    assert_eq!(failed.lines().count(), 2, "{failed}");
    assert!(failed
        .lines()
        .nth(1)
        .unwrap()
        .ends_with("r-web batch 1 FAILED (timeout): 1 healthy, 1 unhealthy, threshold 0"));

    let bob = nf_ok(
        &s,
        &["events", "--actor", "apikey:bob", "--data-dir", d(&story)],
    );
    let kinds: Vec<&str> = bob
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(5).unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ReleaseCreated", "RolloutCreated", "RolloutResumed"],
        "{bob}"
    );

    let web3 = nf_ok(
        &s,
        &[
            "events",
            "--stream",
            "machine:web-03",
            "--data-dir",
            d(&story),
        ],
    );
    assert!(
        web3.lines().skip(1).all(|l| l.contains("machine:web-03")),
        "{web3}"
    );
    assert!(
        web3.contains("web-03 registered by its first report, active, tags web"),
        "{web3}"
    );
    assert!(
        web3.contains("web-03 health ok on 00000000…-nixos-system-web-03-7: 1/1 checks passed"),
        "{web3}"
    );

    let window = nf_ok(
        &s,
        &[
            "events",
            "--since",
            "2025-11-24 16:03:55",
            "--until",
            "2025-11-24T16:03:55Z",
            "--data-dir",
            d(&story),
        ],
    );
    let kinds: Vec<&str> = window
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(5).unwrap())
        .collect();
    assert_eq!(kinds, ["BatchFailed", "RolloutPaused"], "{window}");

    let json = nf_ok(
        &s,
        &[
            "--json",
            "events",
            "--kind",
            "RolloutCreated",
            "--data-dir",
            d(&story),
        ],
    );
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["kind"], "RolloutCreated");
    assert_eq!(rows[0]["stream"], "rollout:r-web");
    assert_eq!(rows[0]["data"]["plan"]["health_timeout_secs"], 120);
    assert_eq!(rows[0]["prev_hash"].as_str().unwrap().len(), 64);

    let err = nf_fails(
        &s,
        &["events", "--kind", "Exploded", "--data-dir", d(&story)],
        2,
    );
    assert!(err.contains("use one of MachineRegistered"), "{err}");
    let err = nf_fails(
        &s,
        &["events", "--stream", "web-01", "--data-dir", d(&story)],
        2,
    );
    assert!(err.contains("use machine:ID"), "{err}");
    let err = nf_fails(
        &s,
        &["events", "--actor", "bob", "--data-dir", d(&story)],
        2,
    );
    assert!(err.contains("apikey:NAME"), "{err}");
}

#[test]
fn online_the_same_log_tells_the_same_story_and_follow_prints_new_events() {
    let s = Scratch::new("ronline");
    // The control plane serves the story: its data directory is built from the fixture.
    let (data, _) = data_dir(&s, "story.bin", "cp-data");
    let (copy, _) = data_dir(&s, "story.bin", "offline");
    let _cp = start(&s);
    let total = read_raw("story.bin").len();
    let k = ["--api-key", ALICE_KEY];
    let online = |args: &[&str]| {
        let mut all = k.to_vec();
        all.extend_from_slice(args);
        nf_ok(&s, &all)
    };
    let offline = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", d(&copy)]);
        nf_ok(&s, &all)
    };
    let out = online(&["verify"]);
    assert!(
        out.starts_with(&format!("ok: {total} records from https://127.0.0.1:")),
        "{out}"
    );
    assert!(out.contains("Not checked online: the head"), "{out}");
    for args in [
        vec!["timeline", "r-web"],
        vec!["what-if", "r-web", "--health-timeout", "300"],
        vec!["replay", "--until", "30"],
        vec!["events", "--stream", "rollout:r-web"],
        vec![
            "events",
            "--kind",
            "HealthReported",
            "--actor",
            "machine:web-02",
        ],
    ] {
        assert_eq!(online(&args), offline(&args), "{args:?} online and offline");
    }

    // --follow: a new event is printed as it is appended.
    let mut follow = nixfleet(&s, &s.path)
        .args(k)
        .args(["events", "--follow", "--stream", "machine:web-09"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let header = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(header.starts_with("  SEQ  TIME (UTC)"), "{header}");
    std::thread::sleep(Duration::from_millis(300));
    online(&["machines", "register", "web-09", "--tags", "db"]);
    let line = rx.recv_timeout(Duration::from_secs(25)).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(line.contains(&format!("{}", total + 1)), "{line}");
    assert!(
        line.contains("apikey:alice") && line.ends_with("web-09 registered, active, tags db"),
        "{line}"
    );
    let out = online(&["verify"]);
    assert!(
        out.starts_with(&format!("ok: {} records", total + 1)),
        "{out}"
    );
    // Offline on the live control plane's own directory: it is read on a copy.
    let out = nf_ok(&s, &["verify", "--data-dir", d(&data)]);
    assert!(
        out.starts_with(&format!("ok: {} records", total + 1)),
        "{out}"
    );
    // The API's answer needs a key: the error says which setting to fix.
    let err = nf_fails(&s, &["timeline", "r-web"], 4);
    assert!(err.contains("401"), "{err}");
}
