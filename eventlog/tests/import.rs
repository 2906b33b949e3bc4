//! `EventLog::import`: records copied from one log into another keep their sequence numbers,
//! times, actors and hash chain byte for byte (archive included), and a record that does not
//! continue the chain is refused.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Actor, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, Seq, Timestamp};
use nixfleet_eventlog::log::{EventLog, LogError, LogOptions, MemoryLog, Record, SledLog};
use std::path::Path;

fn registered(i: u64) -> Event {
    Event::MachineRegistered {
        machine: MachineId::parse(&format!("m-{}", i % 10)).unwrap(),
        lifecycle: Lifecycle::Active,
        tags: vec![],
        auto: i.is_multiple_of(2),
    }
}

/// 250 events in appends of ten, at distinct times, by two actors.
fn fill(log: &dyn EventLog) {
    for i in (1..=250).step_by(10) {
        let events: Vec<_> = (i..i + 10).map(registered).collect();
        let actor = if i % 20 == 1 {
            Actor::System
        } else {
            Actor::Machine(MachineId::parse("m-1").unwrap())
        };
        log.append(Timestamp(1_000 + i), &actor, &events).unwrap();
    }
}

fn all(log: &dyn EventLog) -> Vec<Record> {
    log.read_after(Seq(0), usize::MAX).unwrap()
}

fn hashes(log: &dyn EventLog) -> Vec<[u8; 32]> {
    (1..=log.last_seq().0)
        .map(|s| log.record_hash(Seq(s)).unwrap().unwrap())
        .collect()
}

fn open(dir: &Path) -> SledLog {
    SledLog::open_with(dir, None, LogOptions::segments_of(64), |_| {}).unwrap()
}

#[test]
fn a_sled_log_imported_into_another_is_the_same_log_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(&tmp.path().join("src"));
    fill(&src);
    src.archive_due().unwrap();
    let dst = open(&tmp.path().join("dst"));
    // In uneven chunks, across the archive's segment boundaries.
    let records = all(&src);
    for chunk in records.chunks(37) {
        let last = dst.import(chunk).unwrap();
        assert_eq!(last, chunk.last().unwrap().seq);
        assert_eq!(
            dst.durable_seq(),
            last,
            "import returned before it was durable"
        );
    }
    assert_eq!(all(&dst), records);
    assert_eq!(hashes(&dst), hashes(&src));
    assert!(dst.archive_due().unwrap() > 0, "the copy archives as usual");
    assert_eq!(hashes(&dst), hashes(&src));
    dst.close().unwrap();
    assert_eq!(SledLog::verify(&tmp.path().join("dst")).unwrap(), 250);
    // The copy takes appends after the imported records, chained to them.
    let dst = open(&tmp.path().join("dst"));
    dst.append(Timestamp(9_999), &Actor::System, &[registered(1)])
        .unwrap();
    assert_eq!(
        dst.read_after(Seq(250), 10).unwrap()[0].prev_hash,
        hashes(&src)[249]
    );
}

#[test]
fn a_memory_log_imports_what_a_sled_log_holds_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(&tmp.path().join("src"));
    fill(&src);
    let mem = MemoryLog::new();
    mem.import(&all(&src)).unwrap();
    assert_eq!(hashes(&mem), hashes(&src));
    let back = open(&tmp.path().join("back"));
    back.import(&all(&mem)).unwrap();
    assert_eq!(hashes(&back), hashes(&src));
}

#[test]
fn an_import_that_skips_a_record_or_breaks_the_chain_is_refused() {
    let src = MemoryLog::new();
    fill(&src);
    let records = all(&src);
    let tmp = tempfile::tempdir().unwrap();
    let sled = open(&tmp.path().join("dst"));
    let logs: [&dyn EventLog; 2] = [&MemoryLog::new(), &sled];
    for dst in logs {
        dst.import(&records[..10]).unwrap();
        let err = dst.import(&records[11..12]).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { seq: 11, why } if why.contains("the next must be 11")),
            "{err}"
        );
        let mut altered = records[10].clone();
        altered.prev_hash[0] ^= 1;
        let err = dst.import(&[altered]).unwrap_err();
        assert!(err.to_string().contains("hash chain broken"), "{err}");
        // A refused group leaves nothing behind.
        let err = dst
            .import(&[records[10].clone(), records[12].clone()])
            .unwrap_err();
        assert!(err.to_string().contains("the next must be 12"), "{err}");
        assert_eq!(dst.last_seq(), Seq(10));
        assert_eq!(dst.import(&records[10..]).unwrap(), Seq(250));
        assert_eq!(hashes(dst), hashes(&src));
    }
}
