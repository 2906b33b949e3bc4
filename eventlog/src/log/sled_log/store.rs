//! The whole log as stored: sled (records, head) and the archive's sealed
//! segments, read as one; the keys of sled's tree; the stored bytes of a record.

use super::*;

pub(super) fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn key_seq(k: &[u8]) -> u64 {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A record's stored bytes, from sled or from a segment file.
pub(super) enum Bytes {
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
pub(super) struct Store {
    pub(super) db: sled::Db,
    /// The records, in their chunks' trees.
    pub(super) records: Records,
    pub(super) archive: RwLock<Archive>,
    /// sled's data file, fdatasynced after each flush.
    pub(super) files: Mutex<SyncedFiles>,
    /// The log directory.
    pub(super) dir: PathBuf,
}

impl Store {
    /// Opens the store at `path`; a new log gets chunks of `chunk` records (see [`Records`]).
    pub(super) fn open(path: &Path, chunk: u64) -> Result<Store, LogError> {
        let db = open_config(SledLog::config(path))?;
        let mut files = SyncedFiles::open(path)?;
        let records = Records::open(&db, chunk)?;
        let moved = records.migrate_legacy(&mut || {
            db.flush()?;
            files.sync()
        })?;
        if moved > 0 {
            tracing::info!(
                records = moved,
                "moved the log's records to one sled tree per chunk (the layout since issue 16)"
            );
        }
        let legacy = remove_legacy_index(&db)?;
        if legacy > 0 {
            tracing::info!(
                entries = legacy,
                "removed the stream index kept in sled before issue 16 (it is kept in memory now)"
            );
        }
        // Records past the head belong to a group that was never made durable, so never
        // acknowledged; a crash may have kept any part of it. Dropping them all makes the log
        // end at a group boundary: a decision is in it whole or not at all.
        let dropped = drop_past_head(&db, &records)?;
        if dropped > 0 {
            db.flush()?;
            files.sync()?;
            tracing::warn!(
                records = dropped,
                "dropped records past the log's head: a group that was never durable, so never acknowledged"
            );
        }
        let archive = RwLock::new(Archive::open(&path.join(ARCHIVE_DIR))?);
        let top = archive.read().expect("archive lock").top().0;
        // A crash after a segment was made durable but before its records left sled: remove them
        // now (the segment holds them).
        records.remove_upto(top, &archive)?;
        Ok(Store {
            db,
            records,
            archive,
            files: Mutex::new(files),
            dir: path.to_path_buf(),
        })
    }

    /// Flushes sled and makes what it wrote durable (the one sync of a group commit); returns
    /// the time spent in sled's flush and in the fdatasync.
    pub(super) fn sync(&self) -> Result<(std::time::Duration, std::time::Duration), LogError> {
        let t = std::time::Instant::now();
        self.db.flush()?;
        let flushed = t.elapsed();
        self.files.lock().expect("files lock").sync()?;
        Ok((flushed, t.elapsed() - flushed))
    }

    /// Checks the log, which ends at `last`, against its acknowledged mark, and moves the mark
    /// to `last`. A log shorter than its mark, or with another record at the mark's place, has
    /// lost events that may have been acknowledged: an error naming what is missing.
    pub(super) fn check_mark(&self, last: u64, last_hash: [u8; 32]) -> Result<(), LogError> {
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

    pub(super) fn archive(&self) -> std::sync::RwLockReadGuard<'_, Archive> {
        self.archive.read().expect("archive lock")
    }

    /// Records `after + 1 ..= upto` as stored, at most `limit`: the archived ones, then sled's.
    /// Sequence numbers come from the keys, so a gap shows as a jump.
    pub(super) fn window(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, LogError> {
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
        for item in self.records.range(from, upto).take(limit - out.len()) {
            let (seq, v) = item?;
            out.push((seq, Bytes::Sled(v)));
        }
        Ok(out)
    }

    pub(super) fn get(&self, seq: u64) -> Result<Option<Bytes>, LogError> {
        let arch = self.archive();
        if seq <= arch.top().0 {
            return Ok(arch.get(seq)?.map(Bytes::Owned));
        }
        Ok(self.records.get(seq)?.map(Bytes::Sled))
    }
}
