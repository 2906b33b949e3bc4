//! The sled-backed log (the embedded default), with group commit.
//!
//! Layout in one sled tree:
//! - `e` + seq (big-endian u64) → encoded record (one plain insert per event: sled batches are
//!   transactions and cost ten times more, see docs/benchmarks.md)
//! - `h` → seq (big-endian) + SHA-256 of that record: the head, written by the flusher just before
//!   each fsync, so it always names a record that the same fsync makes durable. At open, records
//!   must reach the head (else the tail was truncated); records past it were staged after the head
//!   was written and are kept when their hashes chain.
//!
//! - `s` + stream + `0x00` + seq (big-endian) → empty: the per-stream index, inserted right after
//!   its record, so after a crash only the last record's entry can be missing (repaired at open).
//!
//! Recovery relies on sled restoring a prefix of the writes after a crash; the SIGKILL test checks
//! that every acknowledged record survives and the log stays a gap-free chain.
//! A start from a snapshot checkpoint verifies the checkpoint record's hash and the chain after
//! it; `nixfleet verify` (and an open without checkpoint) verifies the whole chain.
//!
//! sled is pinned at 0.34.x (see ARCHITECTURE.md); it stays behind [`super::EventLog`].

use super::{
    decode_record, encode_record, hash_bytes, EventLog, LogError, Record, RECORD_BYTES_MAX,
};
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

const HEAD_KEY: &[u8] = b"h";

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

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

struct Head {
    seq: u64,
    hash: [u8; 32],
}

struct Flush {
    staged: u64,
    staged_hash: [u8; 32],
    durable: u64,
    failed: Option<String>,
    shutdown: bool,
}

struct Shared {
    db: sled::Db,
    head: Mutex<Head>,
    flush: Mutex<Flush>,
    /// Wakes the flusher when something is staged.
    staged_cv: Condvar,
    /// Wakes appenders when the durable mark moves.
    durable_cv: Condvar,
    watch: tokio::sync::watch::Sender<u64>,
}

/// The sled log.
pub struct SledLog {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl SledLog {
    /// Opens (or creates) the log at `path`, verifies every record and the head, and hands each
    /// record to `on_record` in order (to rebuild projections). A damaged log is an error that
    /// names the first bad sequence number; nothing is skipped.
    pub fn open(path: &Path, on_record: impl FnMut(Record)) -> Result<SledLog, LogError> {
        Self::open_from(path, None, on_record)
    }

    /// Like [`SledLog::open`], but verifies and hands over only the records after `checkpoint`,
    /// after checking that the checkpoint's record is in the log with that hash. A checkpoint that
    /// does not match is [`LogError::CheckpointMismatch`]; the caller then replays from the start.
    pub fn open_from(
        path: &Path,
        checkpoint: Option<Checkpoint>,
        mut on_record: impl FnMut(Record),
    ) -> Result<SledLog, LogError> {
        let db = open_config(Self::config(path))?;
        let start = match checkpoint {
            None => (0, [0u8; 32]),
            Some(c) => {
                let rec = db
                    .get(event_key(c.seq))?
                    .ok_or(LogError::CheckpointMismatch { seq: c.seq })?;
                if hash_bytes(&rec) != c.hash {
                    return Err(LogError::CheckpointMismatch { seq: c.seq });
                }
                (c.seq, c.hash)
            }
        };
        let (seq, hash) = Self::scan(&db, start, &mut on_record)?;
        // Repair the stream index entry of the last record, the only one a crash can lose.
        if seq > 0 {
            if let Some(v) = db.get(event_key(seq))? {
                let rec = decode_record(&v).map_err(|why| LogError::Corrupt { seq, why })?;
                db.insert(stream_key(&rec.stream, seq), &[][..])?;
            }
        }
        let shared = Arc::new(Shared {
            db,
            head: Mutex::new(Head { seq, hash }),
            flush: Mutex::new(Flush {
                staged: seq,
                staged_hash: hash,
                durable: seq,
                failed: None,
                shutdown: false,
            }),
            staged_cv: Condvar::new(),
            durable_cv: Condvar::new(),
            watch: tokio::sync::watch::channel(seq).0,
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("nixfleet-log-flush".into())
            .spawn(move || flush_loop(&s))
            .map_err(|e| LogError::Io(format!("cannot start the flusher thread: {e}")))?;
        Ok(SledLog {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Verifies the log at `path` without keeping it open; returns the number of records.
    pub fn verify(path: &Path) -> Result<u64, LogError> {
        let db = open_config(Self::config(path))?;
        let (seq, _) = Self::scan(&db, (0, [0u8; 32]), &mut |_| {})?;
        Ok(seq)
    }

    fn config(path: &Path) -> sled::Config {
        // We fsync ourselves, once per group; sled's background flush would only add IO.
        sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(256 << 20)
    }

    /// Verifies records 1 to `checkpoint.seq` of this open log, the part a start from a snapshot
    /// did not read: each decodes, none is missing, each chains to the one before, and the last
    /// one is the checkpoint's record. An error names the first bad sequence number.
    pub fn verify_prefix(&self, checkpoint: Checkpoint) -> Result<(), LogError> {
        let (seq, hash) =
            Self::scan_range(&self.shared.db, (0, [0u8; 32]), checkpoint.seq, &mut |_| {})?;
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
        db: &sled::Db,
        start: (u64, [u8; 32]),
        on_record: &mut dyn FnMut(Record),
    ) -> Result<(u64, [u8; 32]), LogError> {
        let (last, prev) = Self::scan_range(db, start, u64::MAX, on_record)?;
        Self::check_head(db, last)?;
        Ok((last, prev))
    }

    /// Walks records `start.0 + 1 ..= end` in order, checking sequence numbers and the chain from
    /// `start.1`; returns the last sequence number read and its hash.
    fn scan_range(
        db: &sled::Db,
        start: (u64, [u8; 32]),
        end: u64,
        on_record: &mut dyn FnMut(Record),
    ) -> Result<(u64, [u8; 32]), LogError> {
        // Two-stage pipeline (the machine has two cores): a reader thread walks sled and hashes
        // each record; this thread decodes, checks order and chain, and applies.
        const CHUNK: usize = 1024;
        type Chunk = Vec<(Option<u64>, sled::IVec, [u8; 32])>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, LogError>>(8);
        let mut expect = start.0 + 1;
        let mut prev = start.1;
        let outcome = std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut chunk = Vec::with_capacity(CHUNK);
                for item in db.range(event_key(start.0 + 1)..=event_key(end)) {
                    match item {
                        Ok((k, v)) => {
                            let key_seq = k
                                .get(1..9)
                                .and_then(|b| b.try_into().ok())
                                .map(u64::from_be_bytes);
                            let h = hash_bytes(&v);
                            chunk.push((key_seq, v, h));
                            if chunk.len() == CHUNK
                                && tx
                                    .send(Ok(std::mem::replace(
                                        &mut chunk,
                                        Vec::with_capacity(CHUNK),
                                    )))
                                    .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(chunk));
            });
            for chunk in rx {
                for (key_seq, v, h) in chunk? {
                    let rec =
                        decode_record(&v).map_err(|why| LogError::Corrupt { seq: expect, why })?;
                    if key_seq != Some(expect) || rec.seq.0 != expect {
                        return Err(LogError::Corrupt {
                            seq: expect,
                            why: format!(
                                "record {expect} is missing (found {} next)",
                                key_seq.unwrap_or(0)
                            ),
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
    fn check_head(db: &sled::Db, last: u64) -> Result<(), LogError> {
        if let Some(h) = db.get(HEAD_KEY)? {
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
                let rec = db.get(event_key(head_seq))?.ok_or(LogError::Corrupt {
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

    /// Flushes and stops the flusher.
    pub fn close(mut self) -> Result<(), LogError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), LogError> {
        if let Ok(mut f) = self.shared.flush.lock() {
            f.shutdown = true;
        }
        self.shared.staged_cv.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        self.shared.db.flush()?;
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
/// for a lock that a closed handle has not released yet.
pub fn open_raw(path: &Path) -> Result<sled::Db, LogError> {
    Ok(open_config(SledLog::config(path))?)
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
        let result = s.db.insert(HEAD_KEY, h).and_then(|_| s.db.flush());
        let mut f = s.flush.lock().expect("flush lock");
        match result {
            Ok(_) => {
                f.durable = f.durable.max(target);
                s.watch.send_replace(f.durable);
            }
            Err(e) => {
                // Fail-stop: nothing staged after this point may ever be acknowledged.
                f.failed = Some(e.to_string());
                s.durable_cv.notify_all();
                return;
            }
        }
        s.durable_cv.notify_all();
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
        for (seq, stream, bytes) in encoded {
            self.shared.db.insert(event_key(seq), bytes)?;
            self.shared.db.insert(stream_key(&stream, seq), &[][..])?;
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
        let mut out = Vec::new();
        for item in self
            .shared
            .db
            .range(event_key(after.0.saturating_add(1))..=event_key(u64::MAX))
            .take(limit)
        {
            let (_, v) = item?;
            let rec = decode_record(&v).map_err(|why| LogError::Corrupt {
                seq: after.0 + out.len() as u64 + 1,
                why,
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    fn read_stream(&self, stream: &str, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let start = stream_key(stream, after.0.saturating_add(1));
        let end = stream_key(stream, u64::MAX);
        let mut out = Vec::new();
        for item in self.shared.db.range(start..=end).take(limit) {
            let (k, _) = item?;
            let seq = k
                .get(k.len() - 8..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let v = self
                .shared
                .db
                .get(event_key(seq))?
                .ok_or(LogError::Corrupt {
                    seq,
                    why: "indexed record is missing".into(),
                })?;
            out.push(decode_record(&v).map_err(|why| LogError::Corrupt { seq, why })?);
        }
        Ok(out)
    }

    fn record_hash(&self, seq: Seq) -> Result<Option<[u8; 32]>, LogError> {
        Ok(self
            .shared
            .db
            .get(event_key(seq.0))?
            .map(|v| hash_bytes(&v)))
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
