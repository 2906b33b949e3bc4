//! The records in sled: one sled tree per chunk of consecutive records (issue 16).
//!
//! Record `seq` lives in the tree named `r` + chunk (big-endian u64), chunk = (seq - 1) / size,
//! under the key `e` + seq as before. Once the archive holds a whole chunk, its tree is dropped
//! (`drop_tree`: sled frees its pages, no per-record removes; those were about a quarter of the
//! control plane's CPU per report); only a chunk the archive's top cuts through loses its
//! archived records one remove at a time. The chunk size is chosen when the log is created
//! (4,096 records, or the segment size when that is smaller, so every segment is whole chunks)
//! and kept in the default tree under `c`: later opens use it whatever their options.
//!
//! Logs written before issue 16 hold their records in sled's default tree; the open moves them
//! ([`Records::migrate_legacy`]): every one is copied into its chunk's tree and made durable
//! before any is removed from the default tree, so a crash or a power loss at any point leaves
//! every record in one place or both (the next open finishes the move; the copies are the same
//! bytes).

use super::*;
use std::collections::BTreeMap;

const CHUNK_KEY: &[u8] = b"c";
/// The chunk size of a new log whose segments are at least this long.
pub(super) const CHUNK_RECORDS_MAX: u64 = 4096;

fn tree_name(chunk: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'r';
    k[1..].copy_from_slice(&chunk.to_be_bytes());
    k
}

fn chunk_of_name(name: &[u8]) -> Option<u64> {
    if name.len() != 9 || name[0] != b'r' {
        return None;
    }
    name[1..].try_into().ok().map(u64::from_be_bytes)
}

fn read_chunk_size(db: &sled::Db) -> Result<Option<u64>, LogError> {
    Ok(db
        .get(CHUNK_KEY)?
        .and_then(|v| v[..].try_into().ok().map(u64::from_be_bytes))
        .filter(|&n| n > 0))
}

/// The chunk trees of one log.
pub(super) struct Records {
    db: sled::Db,
    size: u64,
    trees: RwLock<BTreeMap<u64, sled::Tree>>,
}

impl Records {
    /// The chunk trees of `db`; a log without a chunk size yet gets `size`.
    pub(super) fn open(db: &sled::Db, size: u64) -> Result<Records, LogError> {
        let size = match read_chunk_size(db)? {
            Some(n) => n,
            None => {
                db.insert(CHUNK_KEY, &size.max(1).to_be_bytes()[..])?;
                size.max(1)
            }
        };
        Self::with_size(db, size)
    }

    fn with_size(db: &sled::Db, size: u64) -> Result<Records, LogError> {
        let mut trees = BTreeMap::new();
        for name in db.tree_names() {
            if let Some(c) = chunk_of_name(&name) {
                trees.insert(c, db.open_tree(&name)?);
            }
        }
        Ok(Records {
            db: db.clone(),
            size,
            trees: RwLock::new(trees),
        })
    }

    fn chunk(&self, seq: u64) -> u64 {
        seq.saturating_sub(1) / self.size
    }

    fn tree(&self, seq: u64) -> Option<sled::Tree> {
        let c = self.chunk(seq);
        self.trees.read().expect("trees lock").get(&c).cloned()
    }

    pub(super) fn get(&self, seq: u64) -> Result<Option<sled::IVec>, LogError> {
        match self.tree(seq) {
            Some(t) => Ok(t.get(event_key(seq))?),
            None => Ok(None),
        }
    }

    pub(super) fn insert(&self, seq: u64, bytes: &[u8]) -> Result<(), LogError> {
        let tree = match self.tree(seq) {
            Some(t) => t,
            None => {
                let c = self.chunk(seq);
                let t = self.db.open_tree(tree_name(c))?;
                self.trees.write().expect("trees lock").insert(c, t.clone());
                t
            }
        };
        tree.insert(event_key(seq), bytes)?;
        Ok(())
    }

    pub(super) fn remove(&self, seq: u64) -> Result<(), LogError> {
        if let Some(t) = self.tree(seq) {
            t.remove(event_key(seq))?;
        }
        Ok(())
    }

    /// Records `from ..= to` in order, as (seq from the key, bytes).
    pub(super) fn range(
        &self,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), LogError>> {
        let trees: Vec<sled::Tree> = if from > to {
            Vec::new()
        } else {
            let t = self.trees.read().expect("trees lock");
            t.range(self.chunk(from)..=self.chunk(to))
                .map(|(_, t)| t.clone())
                .collect()
        };
        trees.into_iter().flat_map(move |t| {
            t.range(event_key(from)..=event_key(to)).map(|item| {
                let (k, v) = item?;
                Ok((key_seq(&k), v))
            })
        })
    }

    /// Removes every record at or below `upto`: whole chunks by dropping their trees, the chunk
    /// that `upto` cuts through record by record. Each step runs under `lock` (the archive's
    /// write lock: no reader holds a tree handle or looks for these records meanwhile).
    pub(super) fn remove_upto(&self, upto: u64, lock: &RwLock<Archive>) -> Result<(), LogError> {
        let whole: Vec<u64> = {
            let t = self.trees.read().expect("trees lock");
            t.keys()
                .copied()
                .take_while(|&c| (c + 1).saturating_mul(self.size) <= upto)
                .collect()
        };
        for c in whole {
            let _w = lock.write().expect("archive lock");
            self.trees.write().expect("trees lock").remove(&c);
            self.db.drop_tree(tree_name(c))?;
        }
        let mut from = upto - upto % self.size + 1;
        while from <= upto {
            let to = upto.min(from + 4095);
            let _w = lock.write().expect("archive lock");
            for seq in from..=to {
                self.remove(seq)?;
            }
            from = to + 1;
        }
        Ok(())
    }

    /// Removes every record above `after`; returns how many there were.
    pub(super) fn remove_after(&self, after: u64) -> Result<u64, LogError> {
        let past: Vec<u64> = self
            .range(after.saturating_add(1), u64::MAX)
            .map(|r| r.map(|(s, _)| s))
            .collect::<Result<_, _>>()?;
        for &seq in &past {
            self.remove(seq)?;
        }
        Ok(past.len() as u64)
    }

    /// Moves the records of a log written before issue 16 from sled's default tree to their
    /// chunks' trees (see the module's doc); `sync` makes sled's writes durable. Returns how
    /// many records were moved.
    pub(super) fn migrate_legacy(
        &self,
        sync: &mut dyn FnMut() -> Result<(), LogError>,
    ) -> Result<u64, LogError> {
        let legacy = |k: &[u8]| k.len() == 9 && k[0] == b'e';
        let mut n = 0u64;
        for item in self.db.scan_prefix(b"e") {
            let (k, v) = item?;
            if legacy(&k) {
                self.insert(key_seq(&k), &v)?;
                n += 1;
            }
        }
        if n == 0 {
            return Ok(0);
        }
        sync()?;
        for k in self.db.scan_prefix(b"e").keys() {
            let k = k?;
            if legacy(&k) {
                self.db.remove(k)?;
            }
        }
        sync()?;
        Ok(n)
    }
}

/// sled's database of a log directory as stored, for tools and tests that read or edit raw
/// records: `e` + seq keys are routed to their chunk's tree (as the log stores them), every other
/// key to sled's default tree. Reads over a range merge both, in key order.
pub struct RawDb {
    db: sled::Db,
    records: Records,
}

impl RawDb {
    pub(super) fn new(db: sled::Db) -> Result<RawDb, LogError> {
        let size = read_chunk_size(&db)?.unwrap_or(CHUNK_RECORDS_MAX);
        let records = Records::with_size(&db, size)?;
        Ok(RawDb { db, records })
    }

    fn record_seq(key: &[u8]) -> Option<u64> {
        (key.len() == 9 && key[0] == b'e').then(|| key_seq(key))
    }

    /// sled's default tree (the head, the chunk size; the records of a log written before
    /// issue 16).
    pub fn default_tree(&self) -> &sled::Db {
        &self.db
    }

    /// The value at `key`.
    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> Result<Option<sled::IVec>, LogError> {
        match Self::record_seq(key.as_ref()) {
            Some(seq) => self.records.get(seq),
            None => Ok(self.db.get(key)?),
        }
    }

    /// Sets `key` to `value`.
    pub fn insert<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, key: K, value: V) -> Result<(), LogError> {
        match Self::record_seq(key.as_ref()) {
            Some(seq) => self.records.insert(seq, value.as_ref()),
            None => {
                self.db.insert(key.as_ref(), value.as_ref())?;
                Ok(())
            }
        }
    }

    /// Removes `key`.
    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> Result<(), LogError> {
        match Self::record_seq(key.as_ref()) {
            Some(seq) => self.records.remove(seq),
            None => {
                self.db.remove(key)?;
                Ok(())
            }
        }
    }

    /// Every entry whose key is in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(
        &self,
        range: R,
    ) -> std::vec::IntoIter<Result<(sled::IVec, sled::IVec), LogError>> {
        let mut all: Vec<Result<(sled::IVec, sled::IVec), LogError>> = Vec::new();
        let bounds = (
            range.start_bound().map(|k| k.as_ref().to_vec()),
            range.end_bound().map(|k| k.as_ref().to_vec()),
        );
        all.extend(self.db.range(bounds.clone()).map(|i| i.map_err(Into::into)));
        for t in self.records.trees.read().expect("trees lock").values() {
            all.extend(t.range(bounds.clone()).map(|i| i.map_err(Into::into)));
        }
        all.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.0.cmp(&b.0),
            (Err(_), Ok(_)) => std::cmp::Ordering::Less,
            (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        all.into_iter()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix<P: AsRef<[u8]>>(
        &self,
        prefix: P,
    ) -> std::vec::IntoIter<Result<(sled::IVec, sled::IVec), LogError>> {
        let p = prefix.as_ref().to_vec();
        self.range::<Vec<u8>, _>(p.clone()..)
            .filter(|i| !matches!(i, Ok((k, _)) if !k.starts_with(&p)))
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Writes sled's buffers to its files.
    pub fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }
}
