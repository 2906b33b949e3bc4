//! Retention: old report and health events leave the sealed segments, the projections a full
//! replay builds do not change, every other event stays, and the chain still verifies from
//! record 1 to the head through the compacted ranges (whose kept hashes an alteration breaks).
#![allow(clippy::unwrap_used)]

use nixfleet_core::ids::Timestamp;
use nixfleet_core::State;
use nixfleet_eventlog::log::archive::Archive;
use nixfleet_eventlog::log::packed::{self, Entry};
use nixfleet_eventlog::log::retention::Retention;
use nixfleet_eventlog::log::{decode_record, EventLog, LogError, LogOptions, SledLog, ARCHIVE_DIR};
use nixfleet_eventlog::postmortem;
use nixfleet_testkit::{Fleet, Report, Rollout};
use std::path::Path;
use std::time::Duration;

const DAY: u64 = 86_400;
const REPORT_KINDS: [&str; 3] = ["ReportReceived", "HealthReported", "HealthMeasured"];

/// Four web machines report with health for a day (one of them fails once), a rollout moves them
/// to generation 2 while they report, a quiet machine reports once and never again; 31 days
/// later the web machines report again.
fn story() -> Fleet {
    let mut f = Fleet::default();
    let web = ["web-1", "web-2", "web-3", "web-4"];
    for h in web {
        f.register(h, &["web"]);
    }
    f.report("quiet", Report::on(1).healthy());
    f.release("rel-2", &web.map(|h| (h, 2)));
    for round in 0..40 {
        for h in web {
            let r = if round == 7 && h == "web-2" {
                Report::on(1).unhealthy()
            } else {
                Report::on(1).healthy()
            };
            f.report(h, r);
        }
        f.advance(60);
    }
    f.start("r-1", Rollout::of("rel-2").to_tags(&["web"]));
    for h in web {
        f.report(h, Report::on(2).healthy());
    }
    for _ in 0..40 {
        for h in web {
            f.report(h, Report::on(2).healthy());
        }
        f.advance(60);
    }
    f.advance(31 * DAY);
    for _ in 0..40 {
        for h in web {
            f.report(h, Report::on(2).healthy());
        }
        f.advance(60);
    }
    f
}

/// Writes the fleet's log to a sled log in `dir` (segments of 64 records, all archived that can
/// be), applies retention of 30 days at the fleet's clock, and returns how many records went.
fn write_and_compact(f: &Fleet, dir: &Path) -> u64 {
    let log = SledLog::open_with(dir, None, LogOptions::segments_of(64), |_| {}).unwrap();
    for env in &f.log {
        log.stage(env.at, &env.actor, std::slice::from_ref(&env.event))
            .unwrap();
    }
    log.wait_durable(log.last_seq()).unwrap();
    log.archive_due().unwrap();
    let policy = Retention::new(&f.state, f.now, Duration::from_secs(30 * DAY));
    let removed = log.compact(&policy, f.now.0).unwrap();
    log.close().unwrap();
    removed
}

fn replay(dir: &Path) -> (State, Vec<nixfleet_eventlog::log::Record>) {
    let records = postmortem::open_copy(dir).unwrap();
    let mut s = State::default();
    for r in &records {
        s.apply(&r.envelope());
    }
    (s, records)
}

#[test]
fn given_old_reports_when_retention_compacts_then_a_full_replay_builds_the_same_projections() {
    let f = story();
    let dir = tempfile::tempdir().unwrap();
    let removed = write_and_compact(&f, dir.path());
    assert!(
        removed > 100,
        "old superseded reports go: {removed} removed"
    );
    let (state, records) = replay(dir.path());
    assert_eq!(
        state, f.state,
        "a full replay of the compacted log == the projections"
    );
    let total = f.log.len() as u64;
    assert_eq!(records.len() as u64 + removed, total);
    // Every other event stays, and nothing younger than 30 days goes.
    let kept = |e: &&nixfleet_core::Envelope| {
        !REPORT_KINDS.contains(&e.event.kind()) || e.at.0 >= f.now.0 - 30 * DAY * 1000
    };
    let must: Vec<u64> = f.log.iter().filter(kept).map(|e| e.seq.0).collect();
    let have: std::collections::BTreeSet<u64> = records.iter().map(|r| r.seq.0).collect();
    assert!(must.iter().all(|s| have.contains(s)), "a kept event went");
    // The chain verifies from record 1 to the head, through the compacted ranges.
    assert_eq!(SledLog::verify(dir.path()).unwrap(), total);
    let log = SledLog::open_with(dir.path(), None, LogOptions::NO_ARCHIVING, |_| {}).unwrap();
    let ranges = log.compacted().unwrap();
    assert_eq!(
        ranges.iter().map(|c| c.last - c.first + 1).sum::<u64>(),
        removed
    );
    // A second pass removes nothing more: each segment is compacted once.
    let policy = Retention::new(&f.state, f.now, Duration::from_secs(30 * DAY));
    assert_eq!(log.compact(&policy, f.now.0).unwrap(), 0);
}

#[test]
fn given_a_compacted_range_whose_kept_hash_was_altered_then_verify_refuses_naming_a_record() {
    let f = story();
    let dir = tempfile::tempdir().unwrap();
    write_and_compact(&f, dir.path());
    let arch_dir = dir.path().join(ARCHIVE_DIR);
    let archive = Archive::open(&arch_dir).unwrap();
    let target = archive.compacted().unwrap()[0];
    let seg = archive
        .segments()
        .iter()
        .find(|s| s.first <= target.first && target.last <= s.last)
        .unwrap()
        .clone();
    // The same segment written again with that range's kept hash altered.
    let mut stored = Vec::new();
    archive
        .read(seg.first - 1, seg.last, usize::MAX, &mut |s, b| {
            stored.push((s, b))
        })
        .unwrap();
    let streams: Vec<String> = stored
        .iter()
        .map(|(_, b)| decode_record(b).unwrap().stream)
        .collect();
    let ranges: Vec<_> = archive
        .compacted()
        .unwrap()
        .into_iter()
        .filter(|c| seg.first <= c.first && c.last <= seg.last)
        .collect();
    let (mut entries, mut seq, mut k, mut g) = (Vec::new(), seg.first, 0, 0);
    while seq <= seg.last {
        if let Some(c) = ranges.get(g).filter(|c| c.first == seq) {
            let mut h = c.last_hash;
            if c.first == target.first {
                h[0] ^= 1;
            }
            entries.push(Entry::Compacted(c.last - c.first + 1, h));
            (seq, g) = (c.last + 1, g + 1);
        } else {
            entries.push(Entry::Record(&stored[k].1, &streams[k]));
            (seq, k) = (seq + 1, k + 1);
        }
    }
    let name = std::fs::read_dir(&arch_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{:020}-", seg.first))
        })
        .unwrap();
    packed::write(&name, seg.first, seg.prev_hash, &entries, 1, Vec::new()).unwrap();
    drop(archive);
    match SledLog::verify(dir.path()) {
        Err(LogError::Corrupt { seq, why }) => {
            assert!(
                seq > target.last && seq <= seg.last + 1,
                "names the record after the altered range: {seq} ({why})"
            );
        }
        other => panic!("an altered kept hash must fail verification: {other:?}"),
    }
}

#[test]
fn given_no_old_records_then_retention_removes_nothing() {
    let mut f = story();
    // The same log seen 31 days earlier: nothing is older than the age yet.
    f.now = Timestamp(f.now.0 - 31 * DAY * 1000);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(write_and_compact(&f, dir.path()), 0);
}
