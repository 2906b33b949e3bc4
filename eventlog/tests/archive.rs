//! The archive: records far behind the head move from sled to sealed segment files, and the log
//! stays one log: every read, replay and verification sees records 1 to the head, a crash at any
//! step loses nothing, and damage to a segment is refused naming the record.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Actor, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, Seq, Timestamp};
use nixfleet_eventlog::log::{
    Checkpoint, EventLog, LogError, LogOptions, Record, SledLog, ARCHIVE_DIR,
};
use std::path::{Path, PathBuf};

const SEGMENT: u64 = 100;

fn opts() -> LogOptions {
    LogOptions::segments_of(SEGMENT)
}

fn registered(i: u64) -> Event {
    Event::MachineRegistered {
        machine: MachineId::parse(&format!("m-{}", i % 10)).unwrap(),
        lifecycle: Lifecycle::Active,
        tags: vec![],
        auto: false,
    }
}

/// `n` events in appends of ten, with archiving of `options`.
fn fill(dir: &Path, n: u64, options: LogOptions) {
    let log = SledLog::open_with(dir, None, options, |_| {}).unwrap();
    for i in (1..=n).step_by(10) {
        let events: Vec<_> = (i..i + 10).map(registered).collect();
        log.append(Timestamp(i), &Actor::System, &events).unwrap();
    }
    log.close().unwrap();
}

/// Opens with small segments, archives what is due, closes; returns the archive's top.
fn archive(dir: &Path) -> u64 {
    let log = SledLog::open_with(dir, None, opts(), |_| {}).unwrap();
    let top = log.archive_due().unwrap();
    log.close().unwrap();
    top
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(ARCHIVE_DIR))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn seqs_in_sled(dir: &Path) -> Vec<u64> {
    let db = nixfleet_eventlog::log::open_raw(dir).unwrap();
    db.scan_prefix(b"e")
        .map(|kv| u64::from_be_bytes(kv.unwrap().0[1..9].try_into().unwrap()))
        .collect()
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq.0).collect()
}

fn replayed(dir: &Path) -> Vec<u64> {
    let mut seen = Vec::new();
    SledLog::open_with(dir, None, opts(), |r| seen.push(r.seq.0))
        .unwrap()
        .close()
        .unwrap();
    seen
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn given_a_log_past_the_mark_when_it_is_archived_then_sled_keeps_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    assert_eq!(seqs_in_sled(dir.path()).len(), 1000);

    // keep 100 + segment 100: segments are sealed while 200 or more durable records are in sled.
    assert_eq!(archive(dir.path()), 900);

    assert_eq!(segments(dir.path()).len(), 9);
    assert_eq!(seqs_in_sled(dir.path()), (901..=1000).collect::<Vec<_>>());
    let db = nixfleet_eventlog::log::open_raw(dir.path()).unwrap();
    assert_eq!(
        db.scan_prefix(b"s").count(),
        0,
        "the stream index is kept in memory, not in sled"
    );
}

#[test]
fn given_an_archived_log_then_reads_replay_and_verify_see_one_log() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    let before = SledLog::open(dir.path(), |_| {}).unwrap();
    let all_before = before.read_after(Seq(0), 10_000).unwrap();
    let hash_5 = before.record_hash(Seq(5)).unwrap();
    let stream_before = before.read_stream("machine:m-7", Seq(0), 1000).unwrap();
    before.close().unwrap();
    archive(dir.path());

    let log = SledLog::open_with(dir.path(), None, opts(), |_| {}).unwrap();
    assert_eq!(log.archived_seq(), 900);
    assert_eq!(log.read_after(Seq(0), 10_000).unwrap(), all_before);
    assert_eq!(
        seqs(&log.read_after(Seq(850), 100).unwrap()),
        (851..=950).collect::<Vec<_>>()
    );
    assert_eq!(log.record_hash(Seq(5)).unwrap(), hash_5);
    assert_eq!(log.record_hash(Seq(1001)).unwrap(), None);
    assert_eq!(
        log.read_stream("machine:m-7", Seq(0), 1000).unwrap(),
        stream_before
    );
    let from_895: Vec<u64> = log
        .read_stream("machine:m-7", Seq(880), 3)
        .unwrap()
        .iter()
        .map(|r| r.seq.0)
        .collect();
    assert_eq!(
        from_895,
        vec![887, 897, 907],
        "a stream read crosses the archive's top"
    );
    log.close().unwrap();

    assert_eq!(replayed(dir.path()), (1..=1000).collect::<Vec<_>>());
    assert_eq!(SledLog::verify(dir.path()).unwrap(), 1000);
}

#[test]
fn given_an_archived_log_when_appending_goes_on_then_the_background_archiver_keeps_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open_with(dir.path(), None, LogOptions::segments_of(50), |_| {}).unwrap();
    for i in 1..=600 {
        log.append(Timestamp(i), &Actor::System, &[registered(i)])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.archived_seq() < 500 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        log.archived_seq(),
        500,
        "600 durable, keep 50: sealed up to 500"
    );
    assert_eq!(
        seqs(&log.read_after(Seq(0), 1000).unwrap()),
        (1..=600).collect::<Vec<_>>()
    );
    log.close().unwrap();
    assert_eq!(SledLog::verify(dir.path()).unwrap(), 600);
}

#[test]
fn given_a_crash_after_a_segment_was_sealed_but_before_sled_let_go_then_nothing_is_doubled() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fill(a.path(), 1000, LogOptions::default());
    copy_dir(a.path(), b.path());
    archive(a.path());
    // b: every record still in sled, and the segments already in place.
    copy_dir(&a.path().join(ARCHIVE_DIR), &b.path().join(ARCHIVE_DIR));
    assert_eq!(seqs_in_sled(b.path()).len(), 1000);

    assert_eq!(replayed(b.path()), (1..=1000).collect::<Vec<_>>());
    assert_eq!(seqs_in_sled(b.path()), (901..=1000).collect::<Vec<_>>());
}

#[test]
fn given_a_crash_while_a_segment_was_written_then_the_temporary_file_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    let arch = dir.path().join(ARCHIVE_DIR);
    std::fs::create_dir_all(&arch).unwrap();
    let tmp = arch.join("00000000000000000001-00000000000000000100.seg.tmp");
    std::fs::write(&tmp, b"half a segment").unwrap();

    assert_eq!(replayed(dir.path()), (1..=1000).collect::<Vec<_>>());
    assert!(!tmp.exists());
}

#[test]
fn given_a_snapshot_checkpoint_inside_the_archive_then_only_the_records_after_it_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    let log = SledLog::open(dir.path(), |_| {}).unwrap();
    let checkpoint = Checkpoint {
        seq: 500,
        hash: log.record_hash(Seq(500)).unwrap().unwrap(),
    };
    log.close().unwrap();
    archive(dir.path());

    let mut seen = Vec::new();
    let log =
        SledLog::open_with(dir.path(), Some(checkpoint), opts(), |r| seen.push(r.seq.0)).unwrap();
    assert_eq!(seen, (501..=1000).collect::<Vec<_>>());
    log.verify_prefix(checkpoint).unwrap();
    let wrong = Checkpoint {
        seq: 500,
        hash: [7; 32],
    };
    log.close().unwrap();
    assert!(matches!(
        SledLog::open_with(dir.path(), Some(wrong), opts(), |_| {}),
        Err(LogError::CheckpointMismatch { seq: 500 })
    ));
}

fn corrupt_seq(r: Result<u64, LogError>) -> (u64, String) {
    match r {
        Err(LogError::Corrupt { seq, why }) => (seq, why),
        other => panic!("expected a corrupt log, got {other:?}"),
    }
}

#[test]
fn given_an_altered_archived_record_then_open_and_verify_refuse_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    archive(dir.path());
    let seg = &segments(dir.path())[2]; // records 201 to 300
    let mut bytes = std::fs::read(seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(seg, bytes).unwrap();

    let (seq, why) = corrupt_seq(SledLog::verify(dir.path()));
    assert!((201..=301).contains(&seq), "named {seq}: {why}");
    let (seq2, _) = corrupt_seq(SledLog::open_with(dir.path(), None, opts(), |_| {}).map(|_| 0));
    assert_eq!(seq, seq2);
}

#[test]
fn given_a_missing_segment_then_the_open_names_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    archive(dir.path());
    std::fs::remove_file(&segments(dir.path())[1]).unwrap();

    let (seq, why) = corrupt_seq(SledLog::verify(dir.path()));
    assert_eq!(seq, 101, "{why}");
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn given_a_truncated_segment_then_reading_it_names_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    archive(dir.path());
    let last = segments(dir.path()).pop().unwrap(); // records 801 to 900
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let (seq, why) = corrupt_seq(SledLog::verify(dir.path()));
    assert_eq!(seq, 801, "{why}");
}

#[test]
fn given_a_stray_file_in_the_archive_then_the_open_says_which() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 300, LogOptions::default());
    archive(dir.path());
    std::fs::write(dir.path().join(ARCHIVE_DIR).join("notes.txt"), "hi").unwrap();
    match SledLog::open_with(dir.path(), None, opts(), |_| {}) {
        Err(LogError::Io(why)) => assert!(why.contains("notes.txt"), "{why}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a stray file was accepted"),
    }
}

/// A log written before issue 16 kept its stream index in sled: `s` + stream + `0x00` + seq.
fn add_legacy_index(dir: &Path) -> usize {
    let db = nixfleet_eventlog::log::open_raw(dir).unwrap();
    let records: Vec<_> = db.scan_prefix(b"e").map(|kv| kv.unwrap().1).collect();
    for v in &records {
        let r = nixfleet_eventlog::log::decode_record(v).unwrap();
        let mut k = vec![b's'];
        k.extend_from_slice(r.stream.as_bytes());
        k.push(0);
        k.extend_from_slice(&r.seq.0.to_be_bytes());
        db.insert(k, &[][..]).unwrap();
    }
    db.flush().unwrap();
    records.len()
}

fn stream_seqs(log: &SledLog, stream: &str, after: u64, limit: usize) -> Vec<u64> {
    seqs(&log.read_stream(stream, Seq(after), limit).unwrap())
}

#[test]
fn given_a_log_with_the_stream_index_in_sled_then_the_open_removes_it_and_stream_reads_stay_right()
{
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    archive(dir.path());
    assert_eq!(add_legacy_index(dir.path()), 100);

    let log = SledLog::open_with(dir.path(), None, opts(), |_| {}).unwrap();
    let m7: Vec<u64> = (1..=100).map(|i| i * 10 - 3).collect();
    assert_eq!(stream_seqs(&log, "machine:m-7", 0, 1000), m7);
    assert_eq!(
        stream_seqs(&log, "machine:m-7", 895, 3),
        vec![897, 907, 917]
    );
    log.close().unwrap();
    let db = nixfleet_eventlog::log::open_raw(dir.path()).unwrap();
    assert_eq!(
        db.scan_prefix(b"s").count(),
        0,
        "the stream index kept in sled before issue 16 is removed at open"
    );
    drop(db);
    assert_eq!(replayed(dir.path()), (1..=1000).collect::<Vec<_>>());
}

#[test]
fn given_a_checkpoint_in_sleds_part_then_stream_reads_still_see_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000, LogOptions::default());
    archive(dir.path());
    let log = SledLog::open_with(dir.path(), None, opts(), |_| {}).unwrap();
    let hash = log.record_hash(Seq(950)).unwrap().unwrap();
    log.close().unwrap();

    let mut replayed = Vec::new();
    let checkpoint = Some(Checkpoint { seq: 950, hash });
    let log =
        SledLog::open_with(dir.path(), checkpoint, opts(), |r| replayed.push(r.seq.0)).unwrap();
    assert_eq!(replayed, (951..=1000).collect::<Vec<_>>());
    let m7: Vec<u64> = (1..=100).map(|i| i * 10 - 3).collect();
    assert_eq!(stream_seqs(&log, "machine:m-7", 0, 1000), m7);
    // Records appended after the open are indexed too, and archived ones leave the index.
    for i in 1001..=1200 {
        log.append(Timestamp(i), &Actor::System, &[registered(i)])
            .unwrap();
    }
    assert_eq!(log.archive_due().unwrap(), 1100);
    let m7: Vec<u64> = (1..=120).map(|i| i * 10 - 3).collect();
    assert_eq!(stream_seqs(&log, "machine:m-7", 0, 1000), m7);
    assert_eq!(stream_seqs(&log, "machine:m-7", 1090, 2), vec![1097, 1107]);
    log.close().unwrap();
}

/// The chunk trees sled holds (their numbers), from their names: `r` + chunk (big-endian).
fn chunk_trees(dir: &Path) -> Vec<u64> {
    let raw = nixfleet_eventlog::log::open_raw(dir).unwrap();
    let mut v: Vec<u64> = raw
        .default_tree()
        .tree_names()
        .iter()
        .filter(|n| n.len() == 9 && n[0] == b'r')
        .map(|n| u64::from_be_bytes(n[1..].try_into().unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn given_sealed_segments_then_sled_drops_their_records_trees_whole() {
    let dir = tempfile::tempdir().unwrap();
    // Created with segments of 100 records: chunks of 100, each segment one chunk.
    fill(dir.path(), 1000, opts());
    assert_eq!(archive(dir.path()), 900);
    assert_eq!(seqs_in_sled(dir.path()), (901..=1000).collect::<Vec<_>>());
    assert_eq!(
        chunk_trees(dir.path()),
        vec![9],
        "the trees of archived chunks are dropped, not emptied record by record"
    );
    assert_eq!(replayed(dir.path()), (1..=1000).collect::<Vec<_>>());
}

/// A copy of a log directory written by the control plane before issue 16 (records and the
/// stream index in sled's default tree; five sealed segments of 64 records), made with the
/// release build of commit d7e6f92 (`nixfleet-loadgen --agents 10 --rate 100 --duration 2`,
/// `NIXFLEET_CP_LOG_SEGMENT_RECORDS=64`).
fn pre_issue_16_log() -> (tempfile::TempDir, PathBuf) {
    fixture_log("pre-issue-16.tar.gz")
}

/// A copy of a log directory written by the first layout of issue 16 (one sled key per record,
/// `e` + seq, in the chunks' trees; chunks and segments of 64 records), made with the release
/// build of commit 3adc38c (`nixfleet-loadgen --agents 10 --rate 100 --duration 2`,
/// `NIXFLEET_CP_LOG_SEGMENT_RECORDS=64`).
fn issue_16_chunks_log() -> (tempfile::TempDir, PathBuf) {
    fixture_log("issue-16-chunks.tar.gz")
}

fn fixture_log(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/logs")
        .join(name);
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tar -xzf {}", fixture.display());
    let log = dir.path().join("log");
    (dir, log)
}

fn legacy_keys(dir: &Path, prefix: &[u8]) -> usize {
    let raw = nixfleet_eventlog::log::open_raw(dir).unwrap();
    raw.default_tree().scan_prefix(prefix).count()
}

/// Opens the log, checks it is records 1 to `n` in order and that every stream read agrees with
/// the whole log; returns `n`.
fn check_whole(dir: &Path) -> u64 {
    let mut replayed = Vec::new();
    let log =
        SledLog::open_with(dir, None, LogOptions::segments_of(64), |r| replayed.push(r)).unwrap();
    let n = replayed.len() as u64;
    assert_eq!(seqs(&replayed), (1..=n).collect::<Vec<_>>());
    assert_eq!(log.read_after(Seq(0), 100_000).unwrap(), replayed);
    let streams: std::collections::BTreeSet<String> =
        replayed.iter().map(|r| r.stream.clone()).collect();
    for s in &streams {
        let want: Vec<_> = replayed
            .iter()
            .filter(|r| &r.stream == s)
            .cloned()
            .collect();
        assert_eq!(&log.read_stream(s, Seq(0), 100_000).unwrap(), &want, "{s}");
    }
    log.close().unwrap();
    n
}

#[test]
fn given_a_log_written_before_issue_16_then_its_records_move_to_chunk_trees_and_read_the_same() {
    let (_tmp, dir) = pre_issue_16_log();
    let in_default_tree = legacy_keys(&dir, b"e");
    assert!(in_default_tree > 0 && legacy_keys(&dir, b"s") == in_default_tree);

    let n = check_whole(&dir);
    assert_eq!(
        n,
        320 + in_default_tree as u64,
        "five segments and sled's records"
    );
    assert_eq!(
        legacy_keys(&dir, b"e"),
        0,
        "no record is left in the default tree"
    );
    assert_eq!(legacy_keys(&dir, b"s"), 0);
    let top = replayed_top(&dir);
    assert_eq!(seqs_in_sled(&dir), (top + 1..=n).collect::<Vec<_>>());
    assert_eq!(check_whole(&dir), n, "a second open reads the same");
    assert_eq!(SledLog::verify(&dir).unwrap(), n);
}

fn replayed_top(dir: &Path) -> u64 {
    let log = SledLog::open_with(dir, None, LogOptions::segments_of(64), |_| {}).unwrap();
    let top = log.archived_seq();
    log.close().unwrap();
    top
}

#[test]
fn given_a_crash_while_an_old_log_was_moved_then_the_next_open_finishes_the_move() {
    let (_tmp, dir) = pre_issue_16_log();
    // As a crash after the copies were made durable and before the old keys went: every record
    // in both places.
    let raw = nixfleet_eventlog::log::open_raw(&dir).unwrap();
    let old: Vec<_> = raw
        .default_tree()
        .scan_prefix(b"e")
        .map(|kv| kv.unwrap())
        .collect();
    raw.default_tree()
        .insert(b"c", &64u64.to_be_bytes()[..])
        .unwrap();
    drop(raw);
    let raw = nixfleet_eventlog::log::open_raw(&dir).unwrap();
    for (k, v) in &old {
        raw.insert(k, v).unwrap();
    }
    raw.flush().unwrap();
    drop(raw);
    assert_eq!(legacy_keys(&dir, b"e"), old.len());

    let n = check_whole(&dir);
    assert_eq!(n, 320 + old.len() as u64);
    assert_eq!(legacy_keys(&dir, b"e"), 0);
    assert_eq!(SledLog::verify(&dir).unwrap(), n);
}

/// sled's keys with `prefix` in the chunks' trees, as stored (not as `RawDb` shows records).
fn keys_in_chunk_trees(dir: &Path, prefix: &[u8]) -> Vec<u64> {
    let raw = nixfleet_eventlog::log::open_raw(dir).unwrap();
    let mut v = Vec::new();
    for name in raw.default_tree().tree_names() {
        if name.len() == 9 && name[0] == b'r' {
            let t = raw.default_tree().open_tree(&name).unwrap();
            for k in t.scan_prefix(prefix).keys() {
                v.push(u64::from_be_bytes(k.unwrap()[1..9].try_into().unwrap()));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn given_a_log_with_a_key_per_record_then_the_open_moves_them_into_groups_and_reads_the_same() {
    let (_tmp, dir) = issue_16_chunks_log();
    let old = keys_in_chunk_trees(&dir, b"e");
    assert!(old.len() > 64, "the fixture has records in sled: {old:?}");
    assert!(keys_in_chunk_trees(&dir, b"g").is_empty());

    let n = check_whole(&dir);
    assert!(n >= *old.last().unwrap());
    assert_eq!(keys_in_chunk_trees(&dir, b"e"), Vec::<u64>::new());
    let groups = keys_in_chunk_trees(&dir, b"g");
    assert!(
        !groups.is_empty() && groups.len() * 8 <= old.len(),
        "{} records in {} groups",
        old.len(),
        groups.len()
    );
    let top = replayed_top(&dir);
    assert_eq!(seqs_in_sled(&dir), (top + 1..=n).collect::<Vec<_>>());
    assert_eq!(check_whole(&dir), n, "a second open reads the same");
    assert_eq!(SledLog::verify(&dir).unwrap(), n);
}

#[test]
fn given_a_crash_while_records_were_moved_into_groups_then_the_next_open_unites_both_halves() {
    let (_tmp, dir) = issue_16_chunks_log();
    let old = keys_in_chunk_trees(&dir, b"e");
    // As a crash in the middle of the removals: the first half of the records only in groups
    // (written here one group per record, as a tool would), the rest only as their old keys.
    let raw = nixfleet_eventlog::log::open_raw(&dir).unwrap();
    let half = &old[..old.len() / 2];
    for &seq in half {
        let mut k = vec![b'e'];
        k.extend_from_slice(&seq.to_be_bytes());
        let mut v = None;
        for name in raw.default_tree().tree_names() {
            if name.len() == 9 && name[0] == b'r' {
                let t = raw.default_tree().open_tree(&name).unwrap();
                v = v.or(t.remove(&k).unwrap());
            }
        }
        raw.insert(&k, v.unwrap()).unwrap();
    }
    raw.flush().unwrap();
    drop(raw);
    assert_eq!(keys_in_chunk_trees(&dir, b"g"), half.to_vec());

    let n = check_whole(&dir);
    assert_eq!(keys_in_chunk_trees(&dir, b"e"), Vec::<u64>::new());
    assert!(keys_in_chunk_trees(&dir, b"g").len() < half.len());
    assert_eq!(SledLog::verify(&dir).unwrap(), n);
}
