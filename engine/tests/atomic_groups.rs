//! A crash can keep any part of a group that was never made durable: here a real log is cut
//! after each record of multi-record decisions (a batch start, a pause, a revert), with the head
//! left at the group before, as a crash between two group commits leaves it. The log must open
//! at the group boundary (the state equals the one without the whole group), and the real
//! control plane, restarted on it, must decide the same thing again.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nixfleet_core::event::Event;
use nixfleet_core::ids::Seq;
use nixfleet_core::state::State;
use nixfleet_engine::log::durable::Mark;
use nixfleet_engine::log::{decode_record, hash_bytes, open_raw, EventLog, Record, SledLog};
use serde_json::Value;
use std::path::Path;

const HOSTS: [&str; 4] = ["web-01", "web-02", "web-03", "web-04"];

/// A control plane whose rollout (batches of 1, 1 and 2 machines) has its middle batch fail with
/// `on_failure`; returns the stopped control plane's directory and its records.
fn failed_rollout(on_failure: &str) -> (tempfile::TempDir, Pki, Vec<Record>) {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &HOSTS);
    let mut cp = Cp::start_at(dir.path().join("data"), &pki, free_port());
    let key = bootstrap(&cp);
    for h in HOSTS {
        let (s, t) = cp.client(h, None).post(
            &format!("/api/v1/machines/{h}/report"),
            &report(h, &gen(h, 1), true, Some(true), &["web"]),
        );
        assert_eq!(s, 200, "{t}");
    }
    let entries: Vec<Value> = HOSTS.iter().map(|h| serde_json::json!({"hostname": h, "store_path": gen(h, 2), "platform": "x86_64-linux"})).collect();
    let op = cp.client("operator", Some(&key));
    let rel = op.json(
        "POST",
        "/api/v1/releases",
        Some(&serde_json::json!({ "entries": entries }).to_string()),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = op.json("POST", "/api/v1/rollouts", Some(&serde_json::json!({"release_id": rel, "strategy": "staged", "batch_sizes": ["1", "1", "100%"], "failure_threshold": "0", "on_failure": on_failure, "target": {"tags": ["web"]}, "health_timeout": 3600, "seed": 3}).to_string()), 201)["rollout_id"].as_str().unwrap().to_owned();
    let batch_machine = |b: usize| {
        let d = op.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200);
        d["batches"][b]["machine_ids"][0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Batch 0 succeeds, batch 1 starts and its machine fails on the release.
    let h0 = batch_machine(0);
    cp.client(&h0, None).post(
        &format!("/api/v1/machines/{h0}/report"),
        &report(&h0, &gen(&h0, 2), true, Some(true), &["web"]),
    );
    wait_until("batch 1 to start", 20, || {
        op.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200)["batches"][1]["status"]
            != "pending"
    });
    let h1 = batch_machine(1);
    cp.client(&h1, None).post(
        &format!("/api/v1/machines/{h1}/report"),
        &report(&h1, &gen(&h1, 2), false, Some(false), &["web"]),
    );
    let want = if on_failure == "pause" {
        "paused"
    } else {
        "reverted"
    };
    wait_until("the rollout to stop", 20, || {
        op.json("GET", &format!("/api/v1/rollouts/{id}"), None, 200)["status"] == want
    });
    cp.kill9();
    let records = read_all(&dir.path().join("data"));
    (dir, pki, records)
}

fn read_all(data: &Path) -> Vec<Record> {
    let log = SledLog::open(&data.join("log"), |_| {}).unwrap();
    let records = log.read_after(Seq(0), usize::MAX).unwrap();
    log.close().unwrap();
    records
}

/// The executor's group that starts with the record matching `first` (its records share the
/// actor and the time of the first).
fn group(records: &[Record], first: impl Fn(&Event) -> bool) -> std::ops::Range<usize> {
    let start = records.iter().position(|r| first(&r.event)).unwrap();
    let end = (start..records.len())
        .take_while(|&i| {
            records[i].actor == records[start].actor && records[i].at == records[start].at
        })
        .last()
        .unwrap()
        + 1;
    start..end
}

fn replay(records: &[Record]) -> State {
    let mut s = State::default();
    for r in records {
        s.apply(&r.envelope());
    }
    s
}

/// Copies the data directory and makes it look like a crash left records `..keep` (0-based),
/// with the head and the acknowledged mark at record `durable` (the group before).
fn crashed_copy(data: &Path, to: &Path, records: &[Record], durable: usize, keep: usize) {
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(data)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_file(nixfleet_engine::snapshot::path(to));
    let db = open_raw(&to.join("log")).unwrap();
    // Everything after record `keep` goes, as a crash that kept only part of the group.
    let cut = records[keep - 1].seq.0;
    let mut first = vec![b'e'];
    first.extend_from_slice(&(cut + 1).to_be_bytes());
    let past: Vec<_> = db.range(first..vec![b'f']).map(|kv| kv.unwrap()).collect();
    for (k, v) in past {
        let r = decode_record(&v).unwrap();
        let mut s = vec![b's'];
        s.extend_from_slice(r.stream.as_bytes());
        s.push(0);
        s.extend_from_slice(&r.seq.0.to_be_bytes());
        db.remove(s).unwrap();
        db.remove(k).unwrap();
    }
    let head = &records[durable - 1];
    let bytes = db.get(&{
        let mut k = vec![b'e'];
        k.extend_from_slice(&head.seq.0.to_be_bytes());
        k
    });
    let hash = hash_bytes(&bytes.unwrap().unwrap());
    let mut h = head.seq.0.to_be_bytes().to_vec();
    h.extend_from_slice(&hash);
    db.insert(b"h", h).unwrap();
    db.flush().unwrap();
    drop(db);
    Mark {
        seq: head.seq.0,
        hash,
    }
    .write(&to.join("log"))
    .unwrap();
}

/// For each cut inside `g`: the log opens without any of `g`, and the restarted control plane
/// appends the same group again.
fn check_cuts(dir: &Path, pki: &Pki, records: &[Record], g: std::ops::Range<usize>, what: &str) {
    assert!(
        g.len() >= 2,
        "{what}: a multi-record group, got {}",
        g.len()
    );
    let before = replay(&records[..g.start]);
    for keep in g.start + 1..g.end {
        let copy = dir.join(format!("cut-{what}-{keep}"));
        crashed_copy(&dir.join("data"), &copy, records, g.start, keep);
        let mut opened = State::default();
        let log = SledLog::open(&copy.join("log"), |r| opened.apply(&r.into_envelope())).unwrap();
        log.close().unwrap();
        assert_eq!(
            opened,
            before,
            "{what}: cut after record {} of {}: the log must open at the group boundary (without any of the group)",
            keep - g.start,
            g.len()
        );
        let mut cp = Cp::start_at(copy.clone(), pki, free_port());
        // The start tick decides again; the decision is durable before the control plane serves.
        wait_until("the control plane to decide again", 20, || {
            cp.client("operator", None).get("/health").0 == 200
        });
        cp.kill9();
        let again = read_all(&copy);
        let redecided: Vec<&Event> = again[g.clone()].iter().map(|r| &r.event).collect();
        let original: Vec<&Event> = records[g.clone()].iter().map(|r| &r.event).collect();
        assert_eq!(
            redecided,
            original,
            "{what}: after the cut at {}, the restarted control plane decides the same group",
            keep - g.start
        );
        assert_eq!(
            again.len(),
            g.end,
            "{what}: nothing else is decided (no batch starts after a failed one)"
        );
    }
}

#[test]
fn a_crash_inside_a_batch_start_or_a_pause_leaves_the_log_at_the_group_before_it() {
    let (dir, pki, records) = failed_rollout("pause");
    let start1 = group(&records, |e| {
        matches!(e, Event::BatchStarted { batch_index: 1, .. })
    });
    assert!(
        records[start1.clone()]
            .iter()
            .skip(1)
            .all(|r| matches!(r.event, Event::DesiredGenerationSet { .. })),
        "a batch start is its BatchStarted and the machines' desired generations"
    );
    let pause = group(&records, |e| matches!(e, Event::BatchFailed { .. }));
    assert!(matches!(
        records[pause.end - 1].event,
        Event::RolloutPaused { .. }
    ));
    check_cuts(dir.path(), &pki, &records, pause, "pause");
    // The batch start: cut there, the restarted control plane starts batch 1 again (the rest of
    // the log is gone with the cut, so the story ends there).
    let truncated = &records[..start1.end];
    check_cuts(dir.path(), &pki, truncated, start1, "batch-start");
}

#[test]
fn a_crash_inside_a_revert_leaves_the_log_at_the_group_before_it() {
    let (dir, pki, records) = failed_rollout("revert");
    let revert = group(&records, |e| matches!(e, Event::BatchFailed { .. }));
    let kinds: Vec<&str> = records[revert.clone()]
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(kinds.first(), Some(&"BatchFailed"));
    assert_eq!(kinds.get(1), Some(&"RolloutFailed"));
    assert_eq!(kinds.last(), Some(&"RolloutReverted"));
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "DesiredGenerationSet")
            .count()
            >= 2,
        "both started batches' machines are sent back: {kinds:?}"
    );
    check_cuts(dir.path(), &pki, &records, revert, "revert");
}
