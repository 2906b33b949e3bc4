//! The sled-backed log (the embedded default), with group commit and an archive of sealed segments.
//!
//! Layout in one sled tree:
//! - `e` + seq (big-endian u64) → encoded record (one plain insert per event: sled batches are
//!   transactions and cost ten times more, see docs/benchmarks.md)
//! - `h` → seq (big-endian) + SHA-256 of that record: the head, written by the flusher just before
//!   each sync, so it always names the end of a group that the same sync makes durable. At open,
//!   records must reach the head (else the tail was truncated); records past it belong to a group
//!   that was never durable (never acknowledged), and are dropped, whole.
//! - `s` + stream + `0x00` + seq (big-endian) → empty: the per-stream index, inserted right after
//!   its record, so after a crash only the last record's entry can be missing (repaired at open).
//!
//! Records far behind the head move to the archive (`archive/` next to sled's files, see
//! [`super::archive`]): once more than `keep + segment` durable records are in sled, a background
//! thread writes the oldest `segment` of them to a sealed segment file, makes it durable, and only
//! then removes them (and their index entries) from sled. sled's memory grows with what it holds,
//! so this is what keeps the control plane's memory flat on a log that grows for ever. Readers see
//! one log: every read takes the archive's read lock, finds the archive's top under it and reads
//! what is at or below the top from the archive, the rest from sled; removals from sled take the
//! write lock, so no reader sees a record in neither place.
//!
//! sled "syncs" with `sync_file_range`, which is not enough to survive a power loss: each group
//! commit also `fdatasync`s sled's data file ([`super::durable`]), and the acknowledged mark
//! (`acknowledged` in the log directory) makes an open refuse a log that lost acknowledged records.
//!
//! Recovery relies on sled restoring a prefix of the writes after a crash; the SIGKILL test checks
//! that every acknowledged record survives and the log stays a gap-free chain, with archiving on.
//! A start from a snapshot checkpoint verifies the checkpoint record's hash and the chain after
//! it; `nixfleet verify` (and an open without checkpoint) verifies the whole chain, archive and sled.
//!
//! sled is pinned at 0.34.x (see ARCHITECTURE.md); it stays behind [`super::EventLog`].

use super::archive::{self, Archive};
use super::durable::{Mark, SyncedFiles, MARK_FILE};
use super::{
    decode_record, encode_record, hash_bytes, EventLog, LogError, Record, RECORD_BYTES_MAX,
};
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

const HEAD_KEY: &[u8] = b"h";
/// The archive's directory inside the log directory.
pub const ARCHIVE_DIR: &str = "archive";

fn stream_key(stream: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 10);
    k.push(b's');
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Where a verified scan may start: the sequence and hash of a record known to be good
/// (recorded in a projection snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The record's sequence number.
    pub seq: u64,
    /// SHA-256 of its bytes.
    pub hash: [u8; 32],
}

/// How much of the log stays in sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Records per archive segment (at least 1).
    pub segment_records: u64,
    /// Durable records always left in sled behind the head (at least 1), so that reads of the
    /// recent past, and a start from a recent snapshot, never open the archive.
    pub keep_records: u64,
}

impl LogOptions {
    /// The default segment size: 65,536 records, about 12 MB of reports; sled then holds 64 Ki to
    /// 128 Ki records. At 2,000 reports/s a segment fills in 16 s, at one report per machine per
    /// minute on 10,000 machines in 3.3 minutes.
    pub const DEFAULT_SEGMENT_RECORDS: u64 = 1 << 16;

    /// Never archive (for tools reading a copy of a log: the copy is thrown away).
    pub const NO_ARCHIVING: LogOptions = LogOptions {
        segment_records: u64::MAX / 2,
        keep_records: u64::MAX / 2,
    };

    /// Segments of `segment_records` records, keeping as many in sled.
    pub fn segments_of(segment_records: u64) -> LogOptions {
        LogOptions {
            segment_records: segment_records.max(1),
            keep_records: segment_records.max(1),
        }
    }
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions::segments_of(Self::DEFAULT_SEGMENT_RECORDS)
    }
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn key_seq(k: &[u8]) -> u64 {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A record's stored bytes, from sled or from a segment file.
enum Bytes {
    Sled(sled::IVec),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Sled(v) => v,
            Bytes::Owned(v) => v,
        }
    }
}

/// sled and the archive: the whole log as stored.
struct Store {
    db: sled::Db,
    archive: RwLock<Archive>,
    /// sled's data file, fdatasynced after each flush.
    files: Mutex<SyncedFiles>,
    /// The log directory.
    dir: PathBuf,
}

impl Store {
    fn open(path: &Path) -> Result<Store, LogError> {
        let db = open_config(SledLog::config(path))?;
        let mut files = SyncedFiles::open(path)?;
        // Records past the head belong to a group that was never made durable, so never
        // acknowledged; a crash may have kept any part of it. Dropping them all makes the log
        // end at a group boundary: a decision is in it whole or not at all.
        let dropped = drop_past_head(&db)?;
        if dropped > 0 {
            db.flush()?;
            files.sync()?;
            tracing::warn!(
                records = dropped,
                "dropped records past the log's head: a group that was never durable, so never acknowledged"
            );
        }
        let archive = Archive::open(&path.join(ARCHIVE_DIR))?;
        let top = archive.top().0;
        // A crash after a segment was made durable but before its records left sled: remove them
        // now (the segment holds them).
        if top > 0 {
            let mut leftovers = Vec::new();
            for item in db.range(event_key(1)..=event_key(top)) {
                let (k, v) = item?;
                leftovers.push((key_seq(&k), decode_record(&v).ok().map(|r| r.stream)));
            }
            for (seq, stream) in leftovers {
                if let Some(stream) = stream {
                    db.remove(stream_key(&stream, seq))?;
                }
                db.remove(event_key(seq))?;
            }
        }
        Ok(Store {
            db,
            archive: RwLock::new(archive),
            files: Mutex::new(files),
            dir: path.to_path_buf(),
        })
    }

    /// Flushes sled and makes what it wrote durable (the one sync of a group commit); returns
    /// the time spent in sled's flush and in the fdatasync.
    fn sync(&self) -> Result<(std::time::Duration, std::time::Duration), LogError> {
        let t = std::time::Instant::now();
        self.db.flush()?;
        let flushed = t.elapsed();
        self.files.lock().expect("files lock").sync()?;
        Ok((flushed, t.elapsed() - flushed))
    }

    /// Checks the log, which ends at `last`, against its acknowledged mark, and moves the mark
    /// to `last`. A log shorter than its mark, or with another record at the mark's place, has
    /// lost events that may have been acknowledged: an error naming what is missing.
    fn check_mark(&self, last: u64, last_hash: [u8; 32]) -> Result<(), LogError> {
        if let Some(m) = Mark::read(&self.dir)? {
            if m.seq > last {
                return Err(LogError::Lost {
                    acknowledged: m.seq,
                    present: last,
                    mark: self.dir.join(MARK_FILE),
                });
            }
            let at = self.get(m.seq)?.map(|b| hash_bytes(&b));
            if m.seq > 0 && at != Some(m.hash) {
                return Err(LogError::Corrupt {
                    seq: m.seq,
                    why: format!(
                        "this is not the record that was acknowledged here ({} names another): the log was replaced or rewritten",
                        self.dir.join(MARK_FILE).display()
                    ),
                });
            }
            if m.seq == last {
                return Ok(());
            }
        }
        if last > 0 {
            Mark {
                seq: last,
                hash: last_hash,
            }
            .write(&self.dir)?;
        }
        Ok(())
    }

    fn archive(&self) -> std::sync::RwLockReadGuard<'_, Archive> {
        self.archive.read().expect("archive lock")
    }

    /// Records `after + 1 ..= upto` as stored, at most `limit`: the archived ones, then sled's.
    /// Sequence numbers come from the keys, so a gap shows as a jump.
    fn window(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<(u64, Bytes)>, LogError> {
        let arch = self.archive();
        let top = arch.top().0;
        let mut out = Vec::new();
        if after < top {
            arch.read(after, upto.min(top), limit, &mut |s, b| {
                out.push((s, Bytes::Owned(b)))
            })?;
            if out.len() >= limit || upto <= top {
                return Ok(out);
            }
        }
        let from = after.max(top).saturating_add(1);
        if from > upto {
            return Ok(out);
        }
        for item in self
            .db
            .range(event_key(from)..=event_key(upto))
            .take(limit - out.len())
        {
            let (k, v) = item?;
            out.push((key_seq(&k), Bytes::Sled(v)));
        }
        Ok(out)
    }

    fn get(&self, seq: u64) -> Result<Option<Bytes>, LogError> {
        let arch = self.archive();
        if seq <= arch.top().0 {
            return Ok(arch.get(seq)?.map(Bytes::Owned));
        }
        Ok(self.db.get(event_key(seq))?.map(Bytes::Sled))
    }
}

struct Head {
    seq: u64,
    hash: [u8; 32],
}

struct Flush {
    staged: u64,
    staged_hash: [u8; 32],
    durable: u64,
    durable_hash: [u8; 32],
    failed: Option<String>,
    shutdown: bool,
}

struct Shared {
    store: Store,
    options: LogOptions,
    head: Mutex<Head>,
    flush: Mutex<Flush>,
    /// Wakes the flusher when something is staged.
    staged_cv: Condvar,
    /// Wakes appenders when the durable mark moves.
    durable_cv: Condvar,
    watch: tokio::sync::watch::Sender<u64>,
    /// The archive's top, for the flusher to decide whether to wake the archiver.
    archived: AtomicU64,
    /// Wakes the archiver (taken, and so closed, at shutdown).
    archiver_wake: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// One archiving step at a time (the thread's, or [`SledLog::archive_due`]'s).
    archiving: Mutex<()>,
    /// The sequence number the acknowledged mark names.
    marked: AtomicU64,
    /// Group commits done, and the time they spent in sled's flush and in our fdatasync.
    commits: AtomicU64,
    flush_ns: AtomicU64,
    sync_ns: AtomicU64,
    stopping: AtomicBool,
}

/// The sled log.
pub struct SledLog {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    archiver: Option<JoinHandle<()>>,
}

impl SledLog {
    /// Opens (or creates) the log at `path`, verifies every record and the head, and hands each
    /// record to `on_record` in order (to rebuild projections). A damaged log is an error that
    /// names the first bad sequence number; nothing is skipped.
    pub fn open(path: &Path, on_record: impl FnMut(Record)) -> Result<SledLog, LogError> {
        Self::open_with(path, None, LogOptions::default(), on_record)
    }

    /// Like [`SledLog::open`], but verifies and hands over only the records after `checkpoint`,
    /// after checking that the checkpoint's record is in the log with that hash. A checkpoint that
    /// does not match is [`LogError::CheckpointMismatch`]; the caller then replays from the start.
    pub fn open_from(
        path: &Path,
        checkpoint: Option<Checkpoint>,
        on_record: impl FnMut(Record),
    ) -> Result<SledLog, LogError> {
        Self::open_with(path, checkpoint, LogOptions::default(), on_record)
    }

    /// Like [`SledLog::open_from`], with `options` for how much of the log stays in sled.
    pub fn open_with(
        path: &Path,
        checkpoint: Option<Checkpoint>,
        options: LogOptions,
        mut on_record: impl FnMut(Record),
    ) -> Result<SledLog, LogError> {
        let store = Store::open(path)?;
        let start = match checkpoint {
            None => (0, [0u8; 32]),
            Some(c) => {
                let rec = store
                    .get(c.seq)?
                    .ok_or(LogError::CheckpointMismatch { seq: c.seq })?;
                if hash_bytes(&rec) != c.hash {
                    return Err(LogError::CheckpointMismatch { seq: c.seq });
                }
                (c.seq, c.hash)
            }
        };
        let (seq, hash) = Self::scan(&store, start, &mut on_record)?;
        store.check_mark(seq, hash)?;
        let archived = store.archive().top().0;
        // Repair the stream index entry of the last record, the only one a crash can lose.
        if seq > archived {
            if let Some(v) = store.db.get(event_key(seq))? {
                let rec = decode_record(&v).map_err(|why| LogError::Corrupt { seq, why })?;
                store.db.insert(stream_key(&rec.stream, seq), &[][..])?;
            }
        }
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            store,
            options: LogOptions {
                segment_records: options.segment_records.max(1),
                keep_records: options.keep_records.max(1),
            },
            head: Mutex::new(Head { seq, hash }),
            flush: Mutex::new(Flush {
                staged: seq,
                staged_hash: hash,
                durable: seq,
                durable_hash: hash,
                failed: None,
                shutdown: false,
            }),
            staged_cv: Condvar::new(),
            durable_cv: Condvar::new(),
            watch: tokio::sync::watch::channel(seq).0,
            archived: AtomicU64::new(archived),
            archiver_wake: Mutex::new(Some(wake_tx)),
            archiving: Mutex::new(()),
            marked: AtomicU64::new(seq),
            commits: AtomicU64::new(0),
            flush_ns: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("nixfleet-log-flush".into())
            .spawn(move || flush_loop(&s))
            .map_err(|e| LogError::Io(format!("cannot start the flusher thread: {e}")))?;
        let s = shared.clone();
        let archiver = std::thread::Builder::new()
            .name("nixfleet-log-archive".into())
            .spawn(move || archive_loop(&s, wake_rx))
            .map_err(|e| LogError::Io(format!("cannot start the archiver thread: {e}")))?;
        // A log that grew past the mark while archiving was off (or before a crash) catches up.
        shared.wake_archiver_if_due(seq);
        Ok(SledLog {
            shared,
            flusher: Some(flusher),
            archiver: Some(archiver),
        })
    }

    /// Verifies the log at `path` without keeping it open; returns the number of records.
    pub fn verify(path: &Path) -> Result<u64, LogError> {
        let store = Store::open(path)?;
        let (seq, hash) = Self::scan(&store, (0, [0u8; 32]), &mut |_| {})?;
        store.check_mark(seq, hash)?;
        Ok(seq)
    }

    fn config(path: &Path) -> sled::Config {
        // We fsync ourselves, once per group; sled's background flush would only add IO. The
        // cache serves the tail (appends and recent reads); 64 MiB is the bulk of the control
        // plane's resident memory at 10,000 machines (docs/reliability.md).
        sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(64 << 20)
    }

    /// Group commits so far, and the total time they spent in sled's flush and in the fdatasync
    /// of sled's data file (for benchmarks: the cost of a durable acknowledgement).
    pub fn commit_stats(&self) -> (u64, std::time::Duration, std::time::Duration) {
        let s = &self.shared;
        (
            s.commits.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(s.flush_ns.load(Ordering::Relaxed)),
            std::time::Duration::from_nanos(s.sync_ns.load(Ordering::Relaxed)),
        )
    }

    /// The last record moved to the archive (0 when none is).
    pub fn archived_seq(&self) -> u64 {
        self.shared.archived.load(Ordering::SeqCst)
    }

    /// Runs the archiver's work now, in this thread: seals segments while more than
    /// `keep + segment` durable records are in sled. Returns the archive's new top. The
    /// background thread does the same after flushes; this is for tests and tools.
    pub fn archive_due(&self) -> Result<u64, LogError> {
        archive_due(&self.shared)?;
        Ok(self.archived_seq())
    }

    /// Verifies records 1 to `checkpoint.seq` of this open log, the part a start from a snapshot
    /// did not read: each decodes, none is missing, each chains to the one before, and the last
    /// one is the checkpoint's record. An error names the first bad sequence number.
    pub fn verify_prefix(&self, checkpoint: Checkpoint) -> Result<(), LogError> {
        let (seq, hash) = Self::scan_range(
            &self.shared.store,
            (0, [0u8; 32]),
            checkpoint.seq,
            &mut |_| {},
        )?;
        if seq != checkpoint.seq {
            return Err(LogError::Corrupt {
                seq: seq + 1,
                why: format!("record {} is missing (the log ends at {seq})", seq + 1),
            });
        }
        if hash != checkpoint.hash {
            return Err(LogError::Corrupt {
                seq,
                why: "the chain up to this record does not lead to the snapshot's checkpoint"
                    .into(),
            });
        }
        Ok(())
    }

    fn scan(
        store: &Store,
        start: (u64, [u8; 32]),
        on_record: &mut dyn FnMut(Record),
    ) -> Result<(u64, [u8; 32]), LogError> {
        let (last, prev) = Self::scan_range(store, start, u64::MAX, on_record)?;
        Self::check_head(store, last)?;
        Ok((last, prev))
    }

    /// Walks records `start.0 + 1 ..= end` in order, checking sequence numbers and the chain from
    /// `start.1`; returns the last sequence number read and its hash.
    fn scan_range(
        store: &Store,
        start: (u64, [u8; 32]),
        end: u64,
        on_record: &mut dyn FnMut(Record),
    ) -> Result<(u64, [u8; 32]), LogError> {
        // Two-stage pipeline (the machine has two cores): a reader thread reads windows of the
        // log (each under the archive's read lock, so archiving can go on between them) and
        // hashes each record; this thread decodes, checks order and chain, and applies.
        const CHUNK: usize = 1024;
        // Records read per window: each window opens the segment it starts in again (its index
        // is read and checked), so windows are much larger than chunks.
        const WINDOW: usize = 16 * CHUNK;
        type Chunk = Vec<(u64, Bytes, [u8; 32])>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, LogError>>(8);
        let mut expect = start.0 + 1;
        let mut prev = start.1;
        let outcome = std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut cursor = start.0;
                while cursor < end {
                    let window = match store.window(cursor, end, WINDOW) {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let Some(&(last, _)) = window.last() else {
                        return;
                    };
                    // A damaged key could make the cursor go backwards; the checker stops at it.
                    let stuck = last <= cursor;
                    cursor = last;
                    let mut records = window.into_iter().peekable();
                    while records.peek().is_some() {
                        let chunk: Chunk = records
                            .by_ref()
                            .take(CHUNK)
                            .map(|(s, b)| {
                                let h = hash_bytes(&b);
                                (s, b, h)
                            })
                            .collect();
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    if stuck {
                        return;
                    }
                }
            });
            for chunk in rx {
                for (key_seq, v, h) in chunk? {
                    let rec =
                        decode_record(&v).map_err(|why| LogError::Corrupt { seq: expect, why })?;
                    if key_seq != expect || rec.seq.0 != expect {
                        return Err(LogError::Corrupt {
                            seq: expect,
                            why: format!("record {expect} is missing (found {key_seq} next)"),
                        });
                    }
                    if rec.prev_hash != prev {
                        return Err(LogError::Corrupt {
                            seq: expect,
                            why: "hash chain broken: this record or the one before it was altered"
                                .into(),
                        });
                    }
                    prev = h;
                    on_record(rec);
                    expect += 1;
                }
            }
            Ok(())
        });
        outcome?;
        Ok((expect - 1, prev))
    }

    /// The head names the last record made durable: it must be present and unaltered.
    fn check_head(store: &Store, last: u64) -> Result<(), LogError> {
        if let Some(h) = store.db.get(HEAD_KEY)? {
            let head_seq = h
                .get(0..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if head_seq > last {
                return Err(LogError::Corrupt {
                    seq: last + 1,
                    why: format!("log truncated: the head says record {head_seq} was durable, only {last} records are present"),
                });
            }
            if head_seq > 0 {
                let rec = store.get(head_seq)?.ok_or(LogError::Corrupt {
                    seq: head_seq,
                    why: "the head names a missing record".into(),
                })?;
                if h.get(8..40) != Some(&hash_bytes(&rec)[..]) {
                    return Err(LogError::Corrupt {
                        seq: head_seq,
                        why: "the record named by the head was altered".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Flushes and stops the flusher and the archiver.
    pub fn close(mut self) -> Result<(), LogError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), LogError> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut w) = self.shared.archiver_wake.lock() {
            w.take();
        }
        if let Some(h) = self.archiver.take() {
            let _ = h.join();
        }
        if let Ok(mut f) = self.shared.flush.lock() {
            f.shutdown = true;
        }
        self.shared.staged_cv.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        self.shared.store.sync()?;
        self.shared.write_mark()?;
        Ok(())
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How long an open waits for another handle's lock on the same directory to go away.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting up to [`LOCK_WAIT`] while the directory's lock is still held: a handle
/// that was just closed releases it only when sled's own background thread exits, a moment
/// later, so a reopen right after a close (a restart, a tool after a test) would otherwise fail.
fn open_config(config: sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Opens the sled database of a log directory as it is, without verifying or repairing
/// anything: for tools and tests that read or edit raw records. Waits like [`SledLog::open`]
/// for a lock that a closed handle has not released yet. Archived records are not in it.
pub fn open_raw(path: &Path) -> Result<sled::Db, LogError> {
    Ok(open_config(SledLog::config(path))?)
}

impl Shared {
    fn wake_archiver_if_due(&self, durable: u64) {
        let o = self.options;
        let archived = self.archived.load(Ordering::SeqCst);
        // The first durable record of a new log gets its mark at once: from then on, the log
        // can never come back empty (and the bootstrap open) without the open refusing it.
        let first_mark = self.marked.load(Ordering::SeqCst) == 0 && durable > 0;
        if first_mark || durable.saturating_sub(archived) >= o.keep_records + o.segment_records {
            if let Some(tx) = self.archiver_wake.lock().expect("wake lock").as_ref() {
                let _ = tx.try_send(());
            }
        }
    }
}

/// How often the acknowledged mark follows the durable head.
const MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn archive_loop(s: &Shared, wake: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match wake.recv_timeout(MARK_EVERY) {
            Ok(()) => {
                if let Err(e) = archive_due(s) {
                    // Nothing is lost: the records stay in sled, and the next wake tries again.
                    tracing::warn!(error = %e, "archiving old log records failed; they stay in sled");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = s.write_mark() {
            tracing::warn!(error = %e, "cannot move the acknowledged mark; it stays behind");
        }
    }
}

impl Shared {
    /// Moves the acknowledged mark to the durable head, when that moved.
    fn write_mark(&self) -> Result<(), LogError> {
        let (seq, hash) = {
            let f = self.flush.lock().expect("flush lock");
            (f.durable, f.durable_hash)
        };
        if seq <= self.marked.load(Ordering::SeqCst) {
            return Ok(());
        }
        Mark { seq, hash }.write(&self.store.dir)?;
        self.marked.store(seq, Ordering::SeqCst);
        Ok(())
    }
}

/// Removes the records past the head (and their stream index entries); returns how many.
fn drop_past_head(db: &sled::Db) -> Result<u64, LogError> {
    let head = db
        .get(HEAD_KEY)?
        .and_then(|h| {
            h.get(0..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        })
        .unwrap_or(0);
    let mut past = Vec::new();
    for item in db.range(event_key(head.saturating_add(1))..=event_key(u64::MAX)) {
        let (k, v) = item?;
        past.push((key_seq(&k), decode_record(&v).ok().map(|r| r.stream)));
    }
    for (seq, stream) in &past {
        if let Some(stream) = stream {
            db.remove(stream_key(stream, *seq))?;
        }
        db.remove(event_key(*seq))?;
    }
    Ok(past.len() as u64)
}

/// Seals segments while more than `keep + segment` durable records are in sled.
fn archive_due(s: &Shared) -> Result<(), LogError> {
    let _one = s.archiving.lock().expect("archiving lock");
    let o = s.options;
    loop {
        if s.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let durable = s.flush.lock().expect("flush lock").durable;
        let (top, top_hash) = s.store.archive().top();
        if durable.saturating_sub(top) < o.keep_records + o.segment_records {
            return Ok(());
        }
        archive_one(s, top, top_hash, o.segment_records)?;
    }
}

/// Moves records `top + 1 ..= top + n` (all durable) from sled to a new segment.
fn archive_one(s: &Shared, top: u64, top_hash: [u8; 32], n: u64) -> Result<(), LogError> {
    let db = &s.store.db;
    let (first, last) = (top + 1, top + n);
    // Read and check them: a segment only ever holds a gap-free chain.
    let mut recs: Vec<(sled::IVec, String)> = Vec::with_capacity(n as usize);
    let mut prev = top_hash;
    for item in db.range(event_key(first)..=event_key(last)) {
        let (k, v) = item?;
        let seq = first + recs.len() as u64;
        if key_seq(&k) != seq {
            return Err(LogError::Corrupt {
                seq,
                why: format!("record {seq} is missing (found {} next)", key_seq(&k)),
            });
        }
        let rec = decode_record(&v).map_err(|why| LogError::Corrupt { seq, why })?;
        if rec.seq.0 != seq || rec.prev_hash != prev {
            return Err(LogError::Corrupt {
                seq,
                why: "hash chain broken: this record or the one before it was altered".into(),
            });
        }
        prev = hash_bytes(&v);
        recs.push((v, rec.stream));
    }
    if recs.len() as u64 != n {
        return Err(LogError::Corrupt {
            seq: first + recs.len() as u64,
            why: "a durable record is missing from sled".into(),
        });
    }
    let dir = s.store.archive().dir().to_path_buf();
    let refs: Vec<(&[u8], &str)> = recs.iter().map(|(v, st)| (&v[..], st.as_str())).collect();
    let seg = archive::write_segment(&dir, first, top_hash, &refs)?;
    // From here the segment is durable and is the record of these events.
    s.store.archive.write().expect("archive lock").push(seg);
    s.archived.store(last, Ordering::SeqCst);
    metrics::counter!("nixfleet_log_archived_records_total").increment(n);
    for (i, chunk) in recs.chunks(4096).enumerate() {
        let _w = s.store.archive.write().expect("archive lock");
        for (j, (_, stream)) in chunk.iter().enumerate() {
            let seq = first + (i * 4096 + j) as u64;
            db.remove(stream_key(stream, seq))?;
            db.remove(event_key(seq))?;
        }
    }
    tracing::debug!(first, last, "log records archived");
    Ok(())
}

fn flush_loop(s: &Shared) {
    loop {
        let target = {
            let mut f = s.flush.lock().expect("flush lock");
            while f.staged <= f.durable && !f.shutdown {
                f = s.staged_cv.wait(f).expect("flush lock");
            }
            if f.staged <= f.durable {
                return;
            }
            (f.staged, f.staged_hash)
        };
        let (target, hash) = target;
        let mut h = Vec::with_capacity(40);
        h.extend_from_slice(&target.to_be_bytes());
        h.extend_from_slice(&hash);
        let result = s
            .store
            .db
            .insert(HEAD_KEY, h)
            .map_err(LogError::from)
            .and_then(|_| s.store.sync());
        let mut f = s.flush.lock().expect("flush lock");
        match result {
            Ok((flushed, synced)) => {
                s.commits.fetch_add(1, Ordering::Relaxed);
                s.flush_ns
                    .fetch_add(flushed.as_nanos() as u64, Ordering::Relaxed);
                s.sync_ns
                    .fetch_add(synced.as_nanos() as u64, Ordering::Relaxed);
                metrics::histogram!("nixfleet_log_sync_seconds").record(synced.as_secs_f64());
                if target > f.durable {
                    f.durable = target;
                    f.durable_hash = hash;
                }
                s.watch.send_replace(f.durable);
            }
            Err(e) => {
                // Fail-stop: nothing staged after this point may ever be acknowledged.
                f.failed = Some(e.to_string());
                s.durable_cv.notify_all();
                return;
            }
        }
        let durable = f.durable;
        drop(f);
        s.durable_cv.notify_all();
        s.wake_archiver_if_due(durable);
    }
}

impl EventLog for SledLog {
    fn stage(&self, at: Timestamp, actor: &Actor, events: &[Event]) -> Result<Seq, LogError> {
        let mut head = self.shared.head.lock().expect("head lock");
        if events.is_empty() {
            return Ok(Seq(head.seq));
        }
        if let Some(e) = &self.shared.flush.lock().expect("flush lock").failed {
            return Err(LogError::Closed(e.clone()));
        }
        let (mut seq, mut hash) = (head.seq, head.hash);
        // Encode everything first: a record too large to be read back is refused before any of
        // the group is written (no event can reach that size through the API's 1 MiB bodies).
        let mut encoded = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let bytes = encode_record(Seq(seq), at, actor, hash, e);
            if bytes.len() > RECORD_BYTES_MAX {
                return Err(LogError::Io(format!(
                    "a {} event of {} bytes is over the {RECORD_BYTES_MAX}-byte record cap",
                    e.kind(),
                    bytes.len()
                )));
            }
            hash = hash_bytes(&bytes);
            encoded.push((seq, e.stream(), bytes));
        }
        let db = &self.shared.store.db;
        for (seq, stream, bytes) in encoded {
            db.insert(event_key(seq), bytes)?;
            db.insert(stream_key(&stream, seq), &[][..])?;
        }
        head.seq = seq;
        head.hash = hash;
        let mut f = self.shared.flush.lock().expect("flush lock");
        f.staged = seq;
        f.staged_hash = hash;
        drop(f);
        self.shared.staged_cv.notify_one();
        Ok(Seq(seq))
    }

    fn wait_durable(&self, seq: Seq) -> Result<(), LogError> {
        let mut f = self.shared.flush.lock().expect("flush lock");
        loop {
            if f.durable >= seq.0 {
                return Ok(());
            }
            if let Some(e) = &f.failed {
                return Err(LogError::Closed(e.clone()));
            }
            f = self.shared.durable_cv.wait(f).expect("flush lock");
        }
    }

    fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.watch.subscribe()
    }

    fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let window = self.shared.store.window(after.0, u64::MAX, limit)?;
        window
            .into_iter()
            .map(|(seq, v)| decode_record(&v).map_err(|why| LogError::Corrupt { seq, why }))
            .collect()
    }

    fn read_stream(&self, stream: &str, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let store = &self.shared.store;
        let arch = store.archive();
        let top = arch.top().0;
        let mut stored: Vec<(u64, Bytes)> = Vec::new();
        if after.0 < top {
            arch.read_stream(stream, after.0, limit, &mut |seq, b| {
                stored.push((seq, Bytes::Owned(b)))
            })?;
        }
        if stored.len() < limit {
            let start = stream_key(stream, after.0.max(top).saturating_add(1));
            let end = stream_key(stream, u64::MAX);
            for item in store.db.range(start..=end).take(limit - stored.len()) {
                let (k, _) = item?;
                let seq = k
                    .get(k.len() - 8..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let v = store.db.get(event_key(seq))?.ok_or(LogError::Corrupt {
                    seq,
                    why: "indexed record is missing".into(),
                })?;
                stored.push((seq, Bytes::Sled(v)));
            }
        }
        drop(arch);
        stored
            .into_iter()
            .map(|(seq, v)| decode_record(&v).map_err(|why| LogError::Corrupt { seq, why }))
            .collect()
    }

    fn record_hash(&self, seq: Seq) -> Result<Option<[u8; 32]>, LogError> {
        Ok(self.shared.store.get(seq.0)?.map(|v| hash_bytes(&v)))
    }

    fn verify_prefix(&self, checkpoint: Checkpoint) -> Result<(), LogError> {
        SledLog::verify_prefix(self, checkpoint)
    }

    fn last_seq(&self) -> Seq {
        Seq(self.shared.head.lock().expect("head lock").seq)
    }

    fn durable_seq(&self) -> Seq {
        Seq(self.shared.flush.lock().expect("flush lock").durable)
    }
}
