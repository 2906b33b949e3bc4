//! The sled-backed log (the embedded default), with group commit and an archive of sealed segments.
//!
//! Layout:
//! - the records, in groups: each group commit's records are one sled value, in the sled tree of
//!   their chunk of consecutive records ([`records`]: `g` + the group's last seq → each record's
//!   seq, length and stored bytes). Until issue 16's second change every record was a sled key
//!   of its own, inserted by the appender under the state lock; now the appender only stages the
//!   record in memory and the flusher writes the group, so sled's per-key work is done once per
//!   commit (docs/benchmarks.md, "One sled value per group commit")
//! - in sled's default tree, `c` → the chunk size, and `h` → seq (big-endian) + SHA-256 of that record: the head, written by the flusher after
//!   the group's values and just before each sync, so it always names the end of a group that the
//!   same sync makes durable. At open, records must reach the head (else the tail was truncated);
//!   records past it belong to a group that was never durable (never acknowledged), and are
//!   dropped, whole.
//!
//! The per-stream index of the records in sled is kept in memory ([`index`]), rebuilt at open
//! from the records the open reads; logs written before issue 16 had it in sled as `s` + stream
//! + `0x00` + seq keys, which the first open removes.
//!
//! Records far behind the head move to the archive (`archive/` next to sled's files, see
//! [`super::archive`]): once more than `keep + segment` durable records are in sled, a background
//! thread writes the oldest `segment` of them to a sealed segment file, makes it durable, and only
//! then removes them from sled (dropping whole chunks' trees). sled's memory (and the stream index's) grows with what it holds,
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
use super::{decode_record, hash_bytes, EventLog, LogError, Record, RECORD_BYTES_MAX};
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

mod background;
mod index;
mod records;
mod store;

pub use background::open_raw;
use background::*;
use index::*;
pub use records::RawDb;
use records::*;
use store::*;

const HEAD_KEY: &[u8] = b"h";
/// The archive's directory inside the log directory.
pub const ARCHIVE_DIR: &str = "archive";

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
    /// The default segment size: 65,536 records, about 12 MB of reports; sled then holds 16 Ki to
    /// 80 Ki records. At 2,000 reports/s a segment fills in 16 s, at one report per machine per
    /// minute on 10,000 machines in 3.3 minutes.
    pub const DEFAULT_SEGMENT_RECORDS: u64 = 1 << 16;

    /// Never archive (for tools reading a copy of a log: the copy is thrown away).
    pub const NO_ARCHIVING: LogOptions = LogOptions {
        segment_records: u64::MAX / 2,
        keep_records: u64::MAX / 2,
    };

    /// Durable records sled keeps behind the head at least, by default: a start from a recent
    /// snapshot and reads of the recent past find them there. Was the segment size (65,536)
    /// before issue 16; sled keeps what it holds in memory (about 95 B a record), and the archive
    /// reads the rest quickly (docs/benchmarks.md, "A lean control plane").
    pub const DEFAULT_KEEP_RECORDS: u64 = 1 << 14;

    /// Segments of `segment_records` records, keeping as many in sled, but no more than
    /// [`Self::DEFAULT_KEEP_RECORDS`].
    pub fn segments_of(segment_records: u64) -> LogOptions {
        LogOptions {
            segment_records: segment_records.max(1),
            keep_records: segment_records.clamp(1, Self::DEFAULT_KEEP_RECORDS),
        }
    }
}

impl LogOptions {
    /// The records per sled tree of a log created with these options: segments are whole
    /// chunks, so the archiver drops trees instead of removing records (see [`records`]).
    fn chunk_records(&self) -> u64 {
        self.segment_records.clamp(1, CHUNK_RECORDS_MAX)
    }
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions::segments_of(Self::DEFAULT_SEGMENT_RECORDS)
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
    /// The stream index of the records in sled.
    index: StreamIndex,
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
    /// One retention pass at a time.
    compacting: Mutex<()>,
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
        let store = Store::open(path, options.chunk_records())?;
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
        // The stream index of sled's records: those before a checkpoint read here (envelopes
        // only), the others as the scan hands them over.
        let archived = store.archive().top().0;
        let index = StreamIndex::default();
        index.load(&store.records, archived + 1, start.0)?;
        let (seq, hash) = Self::scan(&store, start, &mut |r: Record| {
            if r.seq.0 > archived {
                index.push(&r.stream, r.seq.0);
            }
            on_record(r)
        })?;
        store.check_mark(seq, hash)?;
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            store,
            index,
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
            compacting: Mutex::new(()),
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
        let store = Store::open(path, LogOptions::default().chunk_records())?;
        let (seq, hash) = Self::scan(&store, (0, [0u8; 32]), &mut |_| {})?;
        store.check_mark(seq, hash)?;
        Ok(seq)
    }

    fn config(path: &Path) -> sled::Config {
        // We fsync ourselves, once per group; sled's background flush would only add IO. The
        // cache serves the tail (appends and recent reads): 16 MiB (64 MiB before issue 16) left
        // reports/s flat out unchanged and took 41 MiB off the control plane's RSS at 1,000
        // machines (docs/benchmarks.md, "A lean control plane").
        sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(16 << 20)
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

    /// Applies `retention` to the sealed segments, oldest first: each segment not compacted yet
    /// whose last record is older than the cutoff is written again without the records the policy
    /// lets go (see [`super::retention`]). Returns how many records were removed.
    pub fn compact(
        &self,
        retention: &super::retention::Retention,
        now_ms: u64,
    ) -> Result<u64, LogError> {
        let _one = self.shared.compacting.lock().expect("compacting lock");
        let store = &self.shared.store;
        let segments: Vec<archive::Segment> = store.archive().segments().to_vec();
        let mut removed = 0;
        for (i, seg) in segments.iter().enumerate() {
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            if seg.compacted_at_ms > 0 {
                continue;
            }
            let last = store.archive().get(seg.last)?.ok_or(LogError::Corrupt {
                seq: seg.last,
                why: "an archived record is missing".into(),
            })?;
            let at = decode_record(&last)
                .map_err(|why| LogError::Corrupt { seq: seg.last, why })?
                .at;
            if at >= retention.cutoff {
                break;
            }
            let Some(open) = store.archive().open_rollouts_before(i)? else {
                break;
            };
            let open = open.into_iter().collect();
            let c = Archive::prepare_compaction(seg, i, now_ms, open, &|r, next| {
                retention.removable(r, next)
            })?;
            let n = c.removed;
            store.archive.write().expect("archive lock").install(c)?;
            removed += n;
            metrics::counter!("nixfleet_log_compacted_records_total").increment(n);
            tracing::info!(
                first = seg.first,
                last = seg.last,
                "log segment compacted by retention"
            );
        }
        Ok(removed)
    }

    /// The ranges retention compacted away, in order.
    pub fn compacted(&self) -> Result<Vec<super::packed::Compacted>, LogError> {
        self.shared.store.archive().compacted()
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
                    if key_seq > expect && rec.seq.0 == key_seq {
                        // Ranges retention compacted (one per segment): the chain runs on through
                        // the hash of each one's last record, kept in the segment (`retention`).
                        let (mut at, mut hash) = (expect, prev);
                        while let Some(c) = store.archive().compacted_at(at)? {
                            (at, hash) = (c.last + 1, c.last_hash);
                        }
                        if at == key_seq {
                            (expect, prev) = (at, hash);
                        }
                    }
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
            let stream = e.stream();
            let bytes = super::codec::encode_record_of(Seq(seq), at, actor, &stream, hash, e);
            if bytes.len() > RECORD_BYTES_MAX {
                return Err(LogError::Io(format!(
                    "a {} event of {} bytes is over the {RECORD_BYTES_MAX}-byte record cap",
                    e.kind(),
                    bytes.len()
                )));
            }
            hash = hash_bytes(&bytes);
            encoded.push((seq, stream, bytes, hash));
        }
        self.shared.insert_staged(&mut head, encoded, hash)
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
            let index = &self.shared.index;
            let seqs = index.after(stream, after.0.max(top), limit - stored.len());
            for (&seq, v) in seqs.iter().zip(store.records.get_many(&seqs)?) {
                let v = v.ok_or(LogError::Corrupt {
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

    fn compact(
        &self,
        retention: &super::retention::Retention,
        now_ms: u64,
    ) -> Result<u64, LogError> {
        SledLog::compact(self, retention, now_ms)
    }

    fn compacted(&self) -> Result<Vec<super::packed::Compacted>, LogError> {
        SledLog::compacted(self)
    }

    fn import(&self, records: &[Record]) -> Result<Seq, LogError> {
        let mut head = self.shared.head.lock().expect("head lock");
        if records.is_empty() {
            return Ok(Seq(head.seq));
        }
        if let Some(e) = &self.shared.flush.lock().expect("flush lock").failed {
            return Err(LogError::Closed(e.clone()));
        }
        let (mut seq, mut hash) = (head.seq, head.hash);
        let mut encoded = Vec::with_capacity(records.len());
        for r in records {
            check_import(r, seq, hash)?;
            seq += 1;
            let bytes = super::encode_stored(r);
            if bytes.len() > RECORD_BYTES_MAX {
                return Err(LogError::Io(format!(
                    "record {seq} of {} bytes is over the {RECORD_BYTES_MAX}-byte record cap",
                    bytes.len()
                )));
            }
            hash = hash_bytes(&bytes);
            encoded.push((seq, r.stream.clone(), bytes, hash));
        }
        let last = self.shared.insert_staged(&mut head, encoded, hash)?;
        drop(head);
        self.wait_durable(last)?;
        Ok(last)
    }
}

/// Checks that `r` may follow the record `last` whose hash is `last_hash` (an import copies a
/// chain, it never starts or mends one).
pub fn check_import(r: &Record, last: u64, last_hash: [u8; 32]) -> Result<(), LogError> {
    let seq = last + 1;
    if r.seq.0 != seq {
        return Err(LogError::Corrupt {
            seq,
            why: format!(
                "cannot import record {} here: the log ends at {last}, so the next must be {seq}",
                r.seq.0
            ),
        });
    }
    if r.prev_hash != last_hash {
        return Err(LogError::Corrupt {
            seq,
            why: format!(
                "cannot import record {seq}: its previous hash is not the hash of record {last} (hash chain broken)"
            ),
        });
    }
    Ok(())
}

impl Shared {
    /// Stages a group's encoded records (in memory, for the flusher to write to sled as one
    /// value at its next commit) and their stream index entries, moves the head to the last one
    /// (`hash` is its hash) and wakes the flusher.
    fn insert_staged(
        &self,
        head: &mut Head,
        encoded: Vec<(u64, String, Vec<u8>, [u8; 32])>,
        hash: [u8; 32],
    ) -> Result<Seq, LogError> {
        let Some(&(seq, _, _, _)) = encoded.last() else {
            return Ok(Seq(head.seq));
        };
        for (seq, stream, bytes, h) in encoded {
            // The record first, so that a reader finding it in the index finds it.
            self.store.records.stage(seq, sled::IVec::from(bytes), h);
            self.index.push(&stream, seq);
        }
        head.seq = seq;
        head.hash = hash;
        let mut f = self.flush.lock().expect("flush lock");
        f.staged = seq;
        f.staged_hash = hash;
        drop(f);
        self.staged_cv.notify_one();
        Ok(Seq(seq))
    }
}
