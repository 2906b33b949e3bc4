//! What runs beside the append path: sled's open (waiting for a just-closed handle's lock), the
//! flusher thread (group commit: head, flush, fdatasync, durable mark), and the archiver thread
//! (sealing old records into segments, then removing them from sled; the acknowledged mark).

use super::*;

/// How long an open waits for another handle's lock on the same directory to go away.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting up to [`LOCK_WAIT`] while the directory's lock is still held: a handle
/// that was just closed releases it only when sled's own background thread exits, a moment
/// later, so a reopen right after a close (a restart, a tool after a test) would otherwise fail.
pub(super) fn open_config(config: sled::Config) -> Result<sled::Db, sled::Error> {
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
pub fn open_raw(path: &Path) -> Result<RawDb, LogError> {
    RawDb::new(open_config(SledLog::config(path))?)
}

impl Shared {
    pub(super) fn wake_archiver_if_due(&self, durable: u64) {
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
pub(super) const MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn archive_loop(s: &Shared, wake: std::sync::mpsc::Receiver<()>) {
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
    pub(super) fn write_mark(&self) -> Result<(), LogError> {
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

/// Removes the records past the head; returns how many.
pub(super) fn drop_past_head(db: &sled::Db, records: &Records) -> Result<u64, LogError> {
    let head = db
        .get(HEAD_KEY)?
        .and_then(|h| {
            h.get(0..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        })
        .unwrap_or(0);
    records.remove_after(head)
}

/// Seals segments while more than `keep + segment` durable records are in sled.
pub(super) fn archive_due(s: &Shared) -> Result<(), LogError> {
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
pub(super) fn archive_one(
    s: &Shared,
    top: u64,
    top_hash: [u8; 32],
    n: u64,
) -> Result<(), LogError> {
    let (first, last) = (top + 1, top + n);
    let dir = s.store.archive().dir().to_path_buf();
    // Read, check and write them one at a time (a segment only ever holds a gap-free chain;
    // only the writer's current block is in memory).
    let seg = archive::write_segment_with(&dir, (first, last), top_hash, |w| {
        for item in s.store.records.range(first, last) {
            let (k, v) = item?;
            let (seq, prev) = w.next();
            if k != seq {
                return Err(LogError::Corrupt {
                    seq,
                    why: format!("record {seq} is missing (found {k} next)"),
                });
            }
            // The envelope alone: the chain check and the stream need nothing of the event.
            let rec = super::super::codec::decode_record_head(&v)
                .map_err(|why| LogError::Corrupt { seq, why })?;
            if rec.seq != seq || rec.prev_hash != prev {
                return Err(LogError::Corrupt {
                    seq,
                    why: "hash chain broken: this record or the one before it was altered".into(),
                });
            }
            w.push(super::super::packed::Entry::Record(&v, &rec.stream))
                .map_err(|e| LogError::Io(format!("writing a segment: {e}")))?;
        }
        if w.next().0 <= last {
            return Err(LogError::Corrupt {
                seq: w.next().0,
                why: "a durable record is missing from sled".into(),
            });
        }
        Ok(())
    })?;
    // From here the segment is durable and is the record of these events.
    s.store.archive.write().expect("archive lock").push(seg);
    s.archived.store(last, Ordering::SeqCst);
    // Readers look in sled only above the archive's top: these entries are never asked for again.
    s.index.forget_upto(last);
    metrics::counter!("nixfleet_log_archived_records_total").increment(n);
    // Whole chunks go by dropping their trees; a chunk the top cuts through loses its archived
    // records one plain remove each (a `sled::Batch` does the same per-key work plus a
    // transaction, and its first use switches all of sled's reads and writes to a global lock:
    // it doubled the control plane's CPU per report, docs/benchmarks.md, issue 16).
    s.store.records.remove_upto(last, &s.store.archive)?;
    tracing::debug!(first, last, "log records archived");
    Ok(())
}

/// The least time from the start of one group commit to the start of the next. Flat out, commits
/// came every 0.5 ms (one `fdatasync` each, and a wake of sled's 7 IO threads); 1 ms took about
/// 10 % off the CPU per report and nothing off latency (docs/benchmarks.md). A commit after a
/// quiet spell, or after a commit of fewer than [`BUSY`] records, starts at once.
pub(super) const COMMIT_SPACING: std::time::Duration = std::time::Duration::from_millis(1);
/// Records a commit carries from which the next one is spaced.
const BUSY: u64 = 8;

pub(super) fn flush_loop(s: &Shared) {
    let mut last_start: Option<(std::time::Instant, u64)> = None;
    loop {
        let target = {
            let mut f = s.flush.lock().expect("flush lock");
            while f.staged <= f.durable && !f.shutdown {
                f = s.staged_cv.wait(f).expect("flush lock");
            }
            if f.staged <= f.durable {
                return;
            }
            // Under load (the last commit carried BUSY records or more), a commit starts at least
            // COMMIT_SPACING after the one before: what is staged meanwhile joins it (each of
            // sled's flushes wakes its whole IO thread pool). One appender at a time never waits.
            if let Some(due) = last_start.map(|(t, n)| t + COMMIT_SPACING * u32::from(n >= BUSY)) {
                while !f.shutdown {
                    let now = std::time::Instant::now();
                    if now >= due {
                        break;
                    }
                    f = s
                        .staged_cv
                        .wait_timeout(f, due - now)
                        .expect("flush lock")
                        .0;
                }
            }
            (f.staged, f.staged_hash)
        };
        let carried = target.0 - s.flush.lock().expect("flush lock").durable;
        last_start = Some((std::time::Instant::now(), carried));
        let (target, hash) = target;
        let mut h = Vec::with_capacity(40);
        h.extend_from_slice(&target.to_be_bytes());
        h.extend_from_slice(&hash);
        // The group's records as one sled value per chunk, then the head naming its end: the
        // same flush and fdatasync make both durable.
        let result = s
            .store
            .records
            .write_staged(target)
            .and_then(|_| s.store.db.insert(HEAD_KEY, h).map_err(LogError::from))
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
