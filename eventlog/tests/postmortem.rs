//! The post-mortem tools on the committed golden stream (fixtures/events/v1.bin).
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Actor, Event};
use nixfleet_core::ids::{RolloutId, Seq, Timestamp};
use nixfleet_eventlog::log::{decode_record, EventLog, LogError, Record, SledLog};
use nixfleet_eventlog::postmortem::*;
use std::path::Path;

fn golden() -> Vec<Record> {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/events/v1.bin"))
            .unwrap();
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        out.push(decode_record(&tail[..len]).unwrap());
        rest = &tail[len..];
    }
    out
}

/// Writes the golden stream into a real data directory.
fn golden_dir(root: &Path) -> std::path::PathBuf {
    let data = root.join("data");
    let log = SledLog::open(&data.join("log"), |_| {}).unwrap();
    for r in golden() {
        log.append(r.at, &r.actor, &[r.event]).unwrap();
    }
    log.close().unwrap();
    data
}

fn r(id: &str) -> RolloutId {
    RolloutId::parse(id).unwrap()
}

#[test]
fn a_data_directory_is_read_on_a_copy_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let data = golden_dir(dir.path());
    let records = open_copy(&data).unwrap();
    assert_eq!(
        records,
        golden(),
        "the copy holds exactly the golden stream"
    );
    assert_eq!(verify_dir(&data).unwrap(), golden().len() as u64);
}

#[test]
fn verify_rejects_a_tampered_log_and_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = golden_dir(dir.path());
    {
        let db = nixfleet_eventlog::log::open_raw(&data.join("log")).unwrap();
        let mut k = vec![b'e'];
        k.extend_from_slice(&10u64.to_be_bytes());
        let mut v = db.get(&k).unwrap().unwrap().to_vec();
        let n = v.len();
        v[n - 3] ^= 0x20;
        db.insert(k, v).unwrap();
        db.flush().unwrap();
    }
    match verify_dir(&data) {
        Err(LogError::Corrupt { seq, .. }) => assert!(seq == 10 || seq == 11, "names record {seq}"),
        other => panic!("a tampered log passed: {other:?}"),
    }
}

#[test]
fn replay_until_shows_the_tables_as_they_were() {
    let records = golden();
    let paused_at = records
        .iter()
        .find(|x| matches!(x.event, Event::RolloutPaused { .. }))
        .unwrap()
        .seq;
    let then = replay_until(&records, Some(Until::Seq(paused_at)));
    assert_eq!(then.rollouts[&r("r-1")].status.as_str(), "paused");
    assert!(
        then.machines.values().any(|m| !m.quarantined.is_empty()),
        "the quarantine was in force then"
    );
    let now = replay_until(&records, None);
    assert_eq!(now.rollouts[&r("r-1")].status.as_str(), "completed");
    let by_time = replay_until(&records, Some(Until::Time(Timestamp(0))));
    assert_eq!(by_time.last_seq, Seq(0));
}

#[test]
fn the_timeline_names_the_reports_that_decided_each_batch() {
    let story = timeline(&golden(), &r("r-1")).unwrap();
    let texts: Vec<&str> = story.iter().map(|l| l.text.as_str()).collect();
    assert!(
        texts[0].starts_with("created: release rel-2, strategy canary, 2 batches (1+1)"),
        "{texts:?}"
    );
    let failed = story.iter().find(|l| l.text.contains("FAILED")).unwrap();
    assert_eq!(failed.evidence.len(), 1);
    assert_eq!(failed.evidence[0].verdict, "unhealthy");
    assert!(
        failed.evidence[0].detail.contains("rolled back"),
        "{:?}",
        failed.evidence
    );
    assert!(failed.evidence[0].seq.is_some());
    assert!(texts.contains(&"resumed"));
    assert_eq!(*texts.last().unwrap(), "completed");
    let resumed = story.iter().find(|l| l.text == "resumed").unwrap();
    assert_eq!(resumed.actor, "apikey:ops");
    let revert = timeline(&golden(), &r("r-2")).unwrap();
    let silent = revert
        .iter()
        .find(|l| l.text.contains("FAILED (timeout)"))
        .unwrap();
    assert!(
        silent.evidence.iter().all(|e| e.verdict == "silent"),
        "{:?}",
        silent.evidence
    );
    assert!(revert.iter().any(|l| l.text.contains("sent back to")));
    assert!(timeline(&golden(), &r("r-404")).is_err());
}

#[test]
fn what_if_shows_where_other_parameters_would_have_decided_differently() {
    let records = golden();
    // r-2 timed out after 30 s and was reverted; with a one-hour timeout nothing would have been decided yet.
    let out = what_if(
        &records,
        &r("r-2"),
        &WhatIf {
            health_timeout_secs: Some(3600),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(out.recorded_status, "deleted");
    assert!(out
        .recorded
        .iter()
        .any(|d| d.text.starts_with("batch 0 failed (timeout)")));
    assert!(
        !out.simulated.iter().any(|d| d.text.contains("failed")),
        "{:?}",
        out.simulated
    );
    assert_eq!(out.simulated_status, "running");
    // The same parameters reproduce the recorded decisions exactly.
    let same = what_if(&records, &r("r-1"), &WhatIf::default()).unwrap();
    assert_eq!(same.recorded, same.simulated);
    assert_eq!(same.simulated_status, "completed");
    // A threshold of one would have let the rolled-back canary through.
    let lenient = what_if(
        &records,
        &r("r-1"),
        &WhatIf {
            failure_threshold: Some("1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        !lenient.simulated.iter().any(|d| d.text.contains("failed")),
        "{:?}",
        lenient.simulated
    );
    assert!(what_if(
        &records,
        &r("r-1"),
        &WhatIf {
            failure_threshold: Some("lots".into()),
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn filters_select_by_stream_kind_actor_and_time() {
    let records = golden();
    let f = Filter {
        kind: Some("BatchFailed".into()),
        ..Default::default()
    };
    assert_eq!(records.iter().filter(|x| f.matches(x)).count(), 2);
    let f = Filter {
        actor: Some(Actor::Executor.to_string()),
        stream: Some("rollout:r-1".into()),
        ..Default::default()
    };
    assert!(records
        .iter()
        .filter(|x| f.matches(x))
        .all(|x| x.actor == Actor::Executor && x.stream == "rollout:r-1"));
    assert!(verify_order(&records).is_ok());
    assert!(verify_order(&records[1..]).is_err());
}

#[test]
fn records_from_the_events_api_round_trip_and_their_hash_chain_verifies() {
    let records = golden();
    let served: Vec<Record> = records
        .iter()
        .map(|r| record_from_wire(&nixfleet_eventlog::views::event_record(r)).unwrap())
        .collect();
    assert_eq!(
        served, records,
        "the API's JSON loses nothing a record holds"
    );
    assert!(verify_chain(&served).is_ok());
    // An altered event breaks the chain at the next record.
    let mut altered = served.clone();
    if let Event::ReportReceived { message, .. } = &mut altered[21].event {
        *message = "deployed".into();
    } else {
        panic!("record 22 is a report: {:?}", altered[21].event);
    }
    match verify_chain(&altered) {
        Err(LogError::Corrupt { seq, .. }) => assert_eq!(seq, 23),
        other => panic!("an altered record passed: {other:?}"),
    }
    // A record served out of order or missing is named.
    let mut gap = served.clone();
    gap.remove(4);
    match verify_chain(&gap) {
        Err(LogError::Corrupt { seq, .. }) => assert_eq!(seq, 5),
        other => panic!("a gap passed: {other:?}"),
    }
    let bad_actor = nixfleet_proto::api::v1::EventRecord {
        actor: "someone".into(),
        ..nixfleet_eventlog::views::event_record(&records[0])
    };
    assert!(record_from_wire(&bad_actor)
        .unwrap_err()
        .contains("unknown actor"));
}
