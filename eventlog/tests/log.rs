//! The sled log keeps its durability contract and detects damage, naming the first bad record.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Actor, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, Seq, Timestamp};
use nixfleet_eventlog::log::{EventLog, LogError, SledLog};
use std::path::Path;
use std::sync::Arc;

fn registered(i: u64) -> Event {
    Event::MachineRegistered {
        machine: MachineId::parse(&format!("m-{i}")).unwrap(),
        lifecycle: Lifecycle::Active,
        tags: vec![],
        auto: false,
    }
}

fn fill(dir: &Path, n: u64) {
    let log = SledLog::open(dir, |_| {}).unwrap();
    for i in 1..=n {
        assert_eq!(
            log.append(Timestamp(i), &Actor::System, &[registered(i)])
                .unwrap(),
            Seq(i)
        );
    }
    log.close().unwrap();
}

/// Opens the raw sled database under the log, to damage it as a disk or an attacker would.
fn raw(dir: &Path) -> nixfleet_eventlog::log::RawDb {
    nixfleet_eventlog::log::open_raw(dir).unwrap()
}

fn key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[test]
fn appended_events_are_replayed_in_order_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 50);
    let mut seen = Vec::new();
    let log = SledLog::open(dir.path(), |r| seen.push(r.seq.0)).unwrap();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    assert_eq!(log.last_seq(), Seq(50));
    assert_eq!(log.durable_seq(), Seq(50));
}

#[test]
fn a_stream_can_be_read_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    let log = SledLog::open(dir.path(), |_| {}).unwrap();
    let recs = log.read_stream("machine:m-7", Seq(0), 100).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].seq, Seq(7));
    assert!(log
        .read_stream("machine:m-7", Seq(7), 100)
        .unwrap()
        .is_empty());
    let after = log.read_after(Seq(8), 100).unwrap();
    assert_eq!(
        after.iter().map(|r| r.seq.0).collect::<Vec<_>>(),
        vec![9, 10]
    );
}

#[test]
fn concurrent_appenders_share_flushes_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SledLog::open(dir.path(), |_| {}).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        log.append(Timestamp(1), &Actor::System, &[registered(t * 1000 + i)])
                            .unwrap()
                            .0
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort();
    assert_eq!(
        acked,
        (1..=800).collect::<Vec<_>>(),
        "every append got its own sequence number"
    );
    drop(log);
    assert_eq!(SledLog::verify(dir.path()).unwrap(), 800);
}

#[test]
fn an_altered_record_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 20);
    {
        let db = raw(dir.path());
        let mut v = db.get(key(12)).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        db.insert(key(12), v).unwrap();
        db.flush().unwrap();
    }
    match SledLog::open(dir.path(), |_| {}) {
        Err(LogError::Corrupt { seq, .. }) => assert!(seq == 12 || seq == 13, "names record {seq}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a tampered log was accepted"),
    }
}

#[test]
fn a_missing_record_in_the_middle_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 20);
    {
        let db = raw(dir.path());
        db.remove(key(5)).unwrap();
        db.flush().unwrap();
    }
    match SledLog::verify(dir.path()) {
        Err(LogError::Corrupt { seq, why }) => {
            assert_eq!(seq, 5);
            assert!(why.contains("missing"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_truncated_tail_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 20);
    {
        let db = raw(dir.path());
        for s in 18..=20 {
            db.remove(key(s)).unwrap();
        }
        db.flush().unwrap();
    }
    let err = SledLog::verify(dir.path()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { seq: 18, why } if why.contains("truncated")),
        "{err}"
    );
}

#[test]
fn an_undecodable_record_is_an_error_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    {
        let db = raw(dir.path());
        db.insert(key(2), vec![1u8, 0xff, 0xff]).unwrap();
        db.flush().unwrap();
    }
    let err = SledLog::verify(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { seq: 2, .. }), "{err}");
}

/// The values in sled's chunk trees (groups of records), as stored.
fn groups_in_sled(dir: &Path) -> usize {
    let db = raw(dir);
    let db = db.default_tree();
    db.tree_names()
        .iter()
        .filter(|n| n.len() == 9 && n[0] == b'r')
        .map(|n| db.open_tree(n).unwrap().len())
        .sum()
}

#[test]
fn a_group_commit_is_one_sled_value() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path(), |_| {}).unwrap();
    let events: Vec<Event> = (1..=300).map(registered).collect();
    log.append(Timestamp(1), &Actor::System, &events).unwrap();
    assert_eq!(log.commit_stats().0, 1);
    let stored: usize = log
        .read_after(Seq(0), 1000)
        .unwrap()
        .iter()
        .map(|r| nixfleet_eventlog::log::encode_stored(r).len())
        .sum();
    log.close().unwrap();
    assert_eq!(groups_in_sled(dir.path()), 1);
    // Stored compressed, and without the 32-byte hash of the record before in all but the first
    // record (tag 2): the open below puts each back and checks the whole chain.
    let value = {
        let db = raw(dir.path());
        let db = db.default_tree();
        let name = db.tree_names().into_iter().find(|n| n[0] == b'r').unwrap();
        db.open_tree(name)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .unwrap()
            .1
    };
    assert_eq!(value[0], 2, "an elided, compressed group");
    assert!(
        value.len() * 4 < stored,
        "{} bytes for {stored}",
        value.len()
    );
    let mut seen = Vec::new();
    let log = SledLog::open(dir.path(), |r| seen.push(r.seq.0)).unwrap();
    assert_eq!(seen, (1..=300).collect::<Vec<_>>());
    assert_eq!(
        log.read_stream("machine:m-150", Seq(0), 10).unwrap().len(),
        1
    );
}

#[test]
fn readers_see_staged_records_without_gaps_while_the_flusher_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SledLog::open(dir.path(), |_| {}).unwrap());
    let events: Vec<Event> = (1..=300).map(registered).collect();
    log.append(Timestamp(1), &Actor::System, &events).unwrap();
    // A record is read whether the flusher has written it to sled yet or not: a reader running
    // beside the stages always sees records 251 to n, never a gap at the hand-over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let seqs: Vec<u64> = log
                    .read_after(Seq(250), 100_000)
                    .unwrap()
                    .iter()
                    .map(|r| r.seq.0)
                    .collect();
                let n = seqs.len() as u64;
                assert_eq!(seqs, (251..251 + n).collect::<Vec<_>>());
                let last = log.last_seq().0;
                let one = log.read_stream(&format!("machine:m-{last}"), Seq(0), 10);
                assert_eq!(one.unwrap().len(), 1, "record {last} by its stream");
                reads += 1;
            }
            reads
        })
    };
    for i in 301..=20_000 {
        log.stage(Timestamp(i), &Actor::System, &[registered(i)])
            .unwrap();
    }
    log.wait_durable(Seq(20_000)).unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    let commits = log.commit_stats().0;
    drop(log);
    // One value per commit, one more for each chunk of 4,096 records a commit spans (4), and
    // one for each 64 KiB of records (2.2 MB here): values follow commits, not records.
    let groups = groups_in_sled(dir.path());
    assert!(
        groups <= commits as usize + 40,
        "{groups} values, {commits} commits"
    );
    let mut seen = Vec::new();
    let _log = SledLog::open(dir.path(), |r| seen.push(r.seq.0)).unwrap();
    assert_eq!(seen, (1..=20_000).collect::<Vec<_>>());
}
