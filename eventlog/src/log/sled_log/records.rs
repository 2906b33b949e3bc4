//! The records in sled: one sled value per group of records, in one sled tree per chunk of
//! consecutive records.
//!
//! - Record `seq` belongs to the chunk (seq - 1) / size, whose tree is named `r` + chunk
//!   (big-endian u64). Once the archive holds a whole chunk, its tree is dropped (`drop_tree`:
//!   sled frees its pages, no per-record removes); only a chunk the archive's top cuts through
//!   loses its archived groups one remove at a time. The chunk size is chosen when the log is
//!   created (4,096 records, or the segment size when that is smaller, so every segment is whole
//!   chunks) and kept in the default tree under `c`: later opens use it whatever their options.
//! - Inside a chunk's tree, a *group* of records is one value under the key `g` + the last
//!   sequence number it holds (big-endian u64); the value is each record as its sequence number
//!   (8 bytes, big-endian), its length (4 bytes, big-endian) and its stored bytes, in order. The
//!   flusher writes everything staged since the last group commit as one group per chunk (split
//!   at [`GROUP_BYTES`]), so sled does one insert per group commit instead of one per record
//!   (issue 16: sled's per-key work was the largest part of the CPU per report). A record is
//!   found with one forward seek: the first group whose key is at or after `g` + seq.
//! - Records staged and not yet written by the flusher are in [`Records`]' tail, in memory; every
//!   read looks there first. A record leaves the tail only once its group is in sled, so a reader
//!   that snapshots the tail and then reads sled below the tail's first record misses nothing.
//!
//! Logs written before issue 16 hold one record per key, `e` + seq, in sled's default tree;
//! logs written by the first layout of issue 16 hold the same keys in the chunks' trees. The open
//! moves both ([`Records::migrate_legacy`]) into groups of [`MIGRATE_BLOCK`] aligned records (cut at
//! chunk bounds):
//! every group is written and made durable before any old key is removed, and a block is always
//! rewritten from the union of its old keys and its group, so a crash or a power loss at any
//! point leaves every record in one place or both, and the next open finishes the move.

use super::*;
use std::collections::{BTreeMap, VecDeque};

const CHUNK_KEY: &[u8] = b"c";
/// The chunk size of a new log whose segments are at least this long.
pub(super) const CHUNK_RECORDS_MAX: u64 = 4096;
/// A group's value is split before it grows past this (sled stores values over about 128 KiB as
/// files of their own).
pub(super) const GROUP_BYTES: usize = 64 << 10;
/// Records per group when an old log is moved (aligned: block k holds k*64+1 ..= k*64+64).
const MIGRATE_BLOCK: u64 = 64;
/// Per record in a group: its sequence number and its length.
const ENTRY_HEAD: usize = 12;
/// The first byte of a compressed group's value (a plain group's first byte is the high byte of
/// its first sequence number, 0 below 2^56).
const ZSTD_TAG: u8 = 1;
/// The first byte of a compressed group whose records (all but its first) were stored without
/// the previous record's hash, as sealed segments store them ([`super::super::packed`]): each entry
/// is its sequence number, its stored length, and `hash_at` (u16: 0 kept whole, `k`: the 32
/// bytes at offset `k - 1` were the hash of the record before, taken out). 32 of a report's 180
/// bytes are that hash, which zstd cannot compress; the reader hashes each record anyway.
const ZSTD_ELIDED_TAG: u8 = 2;
/// Per record in an elided group: its sequence number, stored length and `hash_at`.
const ELIDED_HEAD: usize = 14;
/// zstd's level for groups: 1, the fastest of the standard levels (the flusher compresses every
/// commit; sealed segments use 3).
const ZSTD_LEVEL: i32 = 1;

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

fn group_key(last: u64) -> [u8; 9] {
    let mut k = event_key(last);
    k[0] = b'g';
    k
}

fn read_chunk_size(db: &sled::Db) -> Result<Option<u64>, LogError> {
    Ok(db
        .get(CHUNK_KEY)?
        .and_then(|v| v[..].try_into().ok().map(u64::from_be_bytes))
        .filter(|&n| n > 0))
}

/// Appends `seq` and `bytes` to a group's value.
fn push_entry(value: &mut Vec<u8>, seq: u64, bytes: &[u8]) {
    value.extend_from_slice(&seq.to_be_bytes());
    value.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    value.extend_from_slice(bytes);
}

/// The records of a group's value, each sharing the value's memory. A value that does not parse
/// is [`LogError::Corrupt`] at `key`'s sequence number.
fn entries(key: u64, value: &sled::IVec) -> Result<Vec<(u64, sled::IVec)>, LogError> {
    let tag = value.first().copied();
    if tag == Some(ZSTD_TAG) || tag == Some(ZSTD_ELIDED_TAG) {
        let raw_len = value
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| bad_group(key))? as usize;
        if raw_len > 2 * GROUP_BYTES + RECORD_BYTES_MAX {
            return Err(bad_group(key));
        }
        let raw = ZSTD
            .with(|z| {
                let mut z = z.borrow_mut();
                let d = match &mut z.1 {
                    Some(d) => d,
                    d => d.insert(zstd::bulk::Decompressor::new()?),
                };
                d.decompress(&value[5..], raw_len)
            })
            .map_err(|_| bad_group(key))?;
        if raw.len() != raw_len {
            return Err(bad_group(key));
        }
        if tag == Some(ZSTD_ELIDED_TAG) {
            return elided_entries(key, &raw);
        }
        return plain_entries(key, &sled::IVec::from(raw));
    }
    plain_entries(key, value)
}

/// [`entries`] of a decompressed elided group: each record put back whole (the hash taken out of
/// it is the hash of the record before it in the group).
fn elided_entries(key: u64, raw: &[u8]) -> Result<Vec<(u64, sled::IVec)>, LogError> {
    let mut whole: Vec<u8> = Vec::with_capacity(raw.len() + raw.len() / 4);
    let mut spans: Vec<(u64, usize, usize)> = Vec::new();
    let mut at = 0usize;
    while at < raw.len() {
        let (seq, len, hash_at) = entry_head(key, raw, at, true)?;
        let stored = raw
            .get(at + ELIDED_HEAD..at + ELIDED_HEAD + len)
            .ok_or_else(|| bad_group(key))?;
        let start = whole.len();
        if hash_at == 0 {
            whole.extend_from_slice(stored);
        } else {
            let &(_, ps, pl) = spans.last().ok_or_else(|| bad_group(key))?;
            let prev = hash_bytes(&whole[ps..ps + pl]);
            let cut = (hash_at - 1).min(stored.len());
            whole.extend_from_slice(&stored[..cut]);
            whole.extend_from_slice(&prev);
            whole.extend_from_slice(&stored[cut..]);
        }
        spans.push((seq, start, whole.len() - start));
        at += ELIDED_HEAD + len;
    }
    let whole = sled::IVec::from(whole);
    Ok(spans
        .into_iter()
        .map(|(seq, s, l)| (seq, whole.subslice(s, l)))
        .collect())
}

/// The head of the entry at `at` of a group's plain entries (`elided`: of an elided group): its
/// sequence number, stored length and `hash_at` (0 in a plain group).
fn entry_head(
    key: u64,
    entries: &[u8],
    at: usize,
    elided: bool,
) -> Result<(u64, usize, usize), LogError> {
    let n = if elided { ELIDED_HEAD } else { ENTRY_HEAD };
    let head = entries.get(at..at + n).ok_or_else(|| bad_group(key))?;
    let word = |r: std::ops::Range<usize>| {
        head[r]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    let hash_at = if elided { word(12..14) as usize } else { 0 };
    Ok((word(0..8), word(8..12) as usize, hash_at))
}

/// [`entries`] of an uncompressed value.
fn plain_entries(key: u64, value: &sled::IVec) -> Result<Vec<(u64, sled::IVec)>, LogError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < value.len() {
        let (seq, len, _) = entry_head(key, value, at, false)?;
        let start = at + ENTRY_HEAD;
        if value.len() - start < len {
            return Err(bad_group(key));
        }
        out.push((seq, value.subslice(start, len)));
        at = start + len;
    }
    Ok(out)
}

/// Each thread's zstd contexts, made at its first use (making one per group cost about 2 % of the
/// control plane's CPU under load).
type Contexts = (
    Option<zstd::bulk::Compressor<'static>>,
    Option<zstd::bulk::Decompressor<'static>>,
);

thread_local! {
    static ZSTD: std::cell::RefCell<Contexts> = const { std::cell::RefCell::new((None, None)) };
}

/// A group's value from its plain entries: compressed ([`ZSTD_TAG`], the plain length, one zstd
/// frame). Reports compress about tenfold, and sled keeps what it holds in memory.
fn packed(plain: &[u8]) -> Result<Vec<u8>, LogError> {
    packed_as(ZSTD_TAG, plain)
}

/// [`packed`] with the tag of the entries' form.
fn packed_as(tag: u8, plain: &[u8]) -> Result<Vec<u8>, LogError> {
    let frame = ZSTD
        .with(|z| {
            let mut z = z.borrow_mut();
            let c = match &mut z.0 {
                Some(c) => c,
                c => c.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            };
            c.compress(plain)
        })
        .map_err(|e| LogError::Io(format!("compressing a group of records: {e}")))?;
    let mut v = Vec::with_capacity(5 + frame.len());
    v.push(tag);
    v.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    v.extend_from_slice(&frame);
    Ok(v)
}

fn bad_group(key: u64) -> LogError {
    LogError::Corrupt {
        seq: key,
        why: format!("the group of records ending at {key} in sled does not parse"),
    }
}

/// The chunk trees of one log, and the records staged but not yet written to them.
pub(super) struct Records {
    db: sled::Db,
    size: u64,
    trees: RwLock<BTreeMap<u64, sled::Tree>>,
    /// Staged records not yet in sled, in order.
    /// Each with its hash (the next record's group stores it without the hash it holds).
    tail: Mutex<VecDeque<(u64, sled::IVec, [u8; 32])>>,
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
            tail: Mutex::new(VecDeque::new()),
        })
    }

    fn chunk(&self, seq: u64) -> u64 {
        seq.saturating_sub(1) / self.size
    }

    fn tree(&self, seq: u64) -> Option<sled::Tree> {
        let c = self.chunk(seq);
        self.trees.read().expect("trees lock").get(&c).cloned()
    }

    fn tree_or_new(&self, seq: u64) -> Result<sled::Tree, LogError> {
        if let Some(t) = self.tree(seq) {
            return Ok(t);
        }
        let c = self.chunk(seq);
        let t = self.db.open_tree(tree_name(c))?;
        self.trees.write().expect("trees lock").insert(c, t.clone());
        Ok(t)
    }

    /// Adds a staged record to the tail (the flusher writes it to sled at its next commit).
    pub(super) fn stage(&self, seq: u64, bytes: sled::IVec, hash: [u8; 32]) {
        self.tail
            .lock()
            .expect("tail lock")
            .push_back((seq, bytes, hash));
    }

    /// Writes the staged records up to `upto` to sled, one group per chunk they fall in (split at
    /// [`GROUP_BYTES`]), then drops them from the tail. Returns how many groups were written.
    pub(super) fn write_staged(&self, upto: u64) -> Result<usize, LogError> {
        let batch: Vec<(u64, sled::IVec, [u8; 32])> = {
            let t = self.tail.lock().expect("tail lock");
            t.iter()
                .take_while(|(s, _, _)| *s <= upto)
                .cloned()
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let groups = self.write_elided(&batch)?;
        let mut t = self.tail.lock().expect("tail lock");
        while t.front().is_some_and(|(s, _, _)| *s <= upto) {
            t.pop_front();
        }
        Ok(groups)
    }

    /// Writes staged records (in order, none of them in sled yet, each with its hash) as elided
    /// groups ([`ZSTD_ELIDED_TAG`]).
    fn write_elided(&self, records: &[(u64, sled::IVec, [u8; 32])]) -> Result<usize, LogError> {
        let mut groups = 0;
        let mut value: Vec<u8> = Vec::new();
        let (mut last, mut prev) = (0u64, [0u8; 32]);
        for (seq, bytes, hash) in records {
            let full = value.len() + ELIDED_HEAD + bytes.len() > GROUP_BYTES;
            if !value.is_empty() && (self.chunk(*seq) != self.chunk(last) || full) {
                self.tree_or_new(last)?
                    .insert(group_key(last), packed_as(ZSTD_ELIDED_TAG, &value)?)?;
                groups += 1;
                value.clear();
            }
            let at = match value.is_empty() {
                true => None,
                false => super::super::packed::hash_at(bytes, &prev),
            };
            value.extend_from_slice(&seq.to_be_bytes());
            match at {
                Some(at) => {
                    value.extend_from_slice(&(bytes.len() as u32 - 32).to_be_bytes());
                    value.extend_from_slice(&(at as u16 + 1).to_be_bytes());
                    value.extend_from_slice(&bytes[..at]);
                    value.extend_from_slice(&bytes[at + 32..]);
                }
                None => {
                    value.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    value.extend_from_slice(&0u16.to_be_bytes());
                    value.extend_from_slice(bytes);
                }
            }
            (last, prev) = (*seq, *hash);
        }
        if !value.is_empty() {
            self.tree_or_new(last)?
                .insert(group_key(last), packed_as(ZSTD_ELIDED_TAG, &value)?)?;
            groups += 1;
        }
        Ok(groups)
    }

    /// The staged records in `from ..= to`, and the first record still staged (records below it
    /// are in sled).
    fn tail_window(&self, from: u64, to: u64) -> (Vec<(u64, sled::IVec)>, u64) {
        let t = self.tail.lock().expect("tail lock");
        let first = t.front().map_or(u64::MAX, |(s, _, _)| *s);
        let skip = t.partition_point(|(s, _, _)| *s < from);
        let recs = t
            .range(skip..)
            .take_while(|(s, _, _)| *s <= to)
            .map(|(s, v, _)| (*s, v.clone()))
            .collect();
        (recs, first)
    }

    /// The group holding `seq` in sled, as (its key's sequence number, its value).
    fn group_at(&self, seq: u64) -> Result<Option<(sled::Tree, u64, sled::IVec)>, LogError> {
        let Some(tree) = self.tree(seq) else {
            return Ok(None);
        };
        let found = tree
            .range(group_key(seq)..=group_key(u64::MAX))
            .next()
            .transpose()?;
        Ok(found.map(|(k, v)| (tree, key_seq(&k), v)))
    }

    pub(super) fn get(&self, seq: u64) -> Result<Option<sled::IVec>, LogError> {
        Ok(self.get_many(&[seq])?.pop().flatten())
    }

    /// Records `seqs` (ascending), each or `None`; a group is decoded once for all the records
    /// asked of it in a row.
    pub(super) fn get_many(&self, seqs: &[u64]) -> Result<Vec<Option<sled::IVec>>, LogError> {
        let mut out = Vec::with_capacity(seqs.len());
        let mut group: Option<(u64, Vec<(u64, sled::IVec)>)> = None;
        for &seq in seqs {
            if let Some((last, recs)) = &group {
                if recs.first().is_some_and(|(f, _)| *f <= seq) && seq <= *last {
                    out.push(recs.iter().find(|(s, _)| *s == seq).map(|(_, v)| v.clone()));
                    continue;
                }
            }
            let (staged, first) = self.tail_window(seq, seq);
            if seq >= first {
                out.push(staged.into_iter().next().map(|(_, v)| v));
                continue;
            }
            match self.group_at(seq)? {
                Some((_, key, value)) => {
                    let recs = entries(key, &value)?;
                    out.push(recs.iter().find(|(s, _)| *s == seq).map(|(_, v)| v.clone()));
                    group = Some((key, recs));
                }
                None => out.push(None),
            }
        }
        Ok(out)
    }

    /// Records `from ..= to` in order, as (seq, bytes): sled's, then the tail's.
    pub(super) fn range(
        &self,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), LogError>> {
        let (staged, first) = if from > to {
            (Vec::new(), u64::MAX)
        } else {
            self.tail_window(from, to)
        };
        let stored_to = to.min(first.saturating_sub(1));
        let trees: Vec<sled::Tree> = if from > stored_to {
            Vec::new()
        } else {
            let t = self.trees.read().expect("trees lock");
            t.range(self.chunk(from)..=self.chunk(stored_to))
                .map(|(_, t)| t.clone())
                .collect()
        };
        let stored = trees.into_iter().flat_map(move |t| {
            t.range(group_key(from)..=group_key(u64::MAX))
                .flat_map(move |item| {
                    let group = item
                        .map_err(LogError::from)
                        .and_then(|(k, v)| entries(key_seq(&k), &v));
                    match group {
                        Ok(recs) => recs.into_iter().map(Ok).collect::<Vec<_>>(),
                        Err(e) => vec![Err(e)],
                    }
                })
                .skip_while(move |r| matches!(r, Ok((s, _)) if *s < from))
                .take_while(move |r| !matches!(r, Ok((s, _)) if *s > stored_to))
        });
        stored.chain(staged.into_iter().map(Ok))
    }

    /// Rewrites the group at `key` in `tree` with only the records `keep` accepts (removed when
    /// none is left; under a new key when its last record goes).
    fn rewrite_group(
        tree: &sled::Tree,
        key: u64,
        value: &sled::IVec,
        keep: impl Fn(u64) -> bool,
    ) -> Result<(), LogError> {
        let recs = entries(key, value)?;
        let kept: Vec<_> = recs.iter().filter(|(s, _)| keep(*s)).collect();
        if kept.len() == recs.len() {
            return Ok(());
        }
        let mut v = Vec::new();
        for (s, b) in &kept {
            push_entry(&mut v, *s, b);
        }
        match kept.last() {
            Some((last, _)) if *last == key => {
                tree.insert(group_key(key), packed(&v)?)?;
            }
            Some((last, _)) => {
                tree.insert(group_key(*last), packed(&v)?)?;
                tree.remove(group_key(key))?;
            }
            None => {
                tree.remove(group_key(key))?;
            }
        }
        Ok(())
    }

    /// Removes record `seq` from sled (for tools and tests that damage a log on purpose).
    pub(super) fn remove(&self, seq: u64) -> Result<(), LogError> {
        if let Some((tree, key, value)) = self.group_at(seq)? {
            Self::rewrite_group(&tree, key, &value, |s| s != seq)?;
        }
        Ok(())
    }

    /// Sets record `seq` to `bytes` in sled, in the group that holds it or that it falls inside
    /// of, else in a group of its own (for tools and tests that edit a log on purpose).
    pub(super) fn put(&self, seq: u64, bytes: &[u8]) -> Result<(), LogError> {
        let tree = self.tree_or_new(seq)?;
        let mut recs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut key = seq;
        if let Some((_, k, value)) = self.group_at(seq)? {
            let es = entries(k, &value)?;
            if es.first().is_some_and(|(s, _)| *s <= seq) {
                key = k;
                recs.extend(es.into_iter().map(|(s, b)| (s, b.to_vec())));
            }
        }
        recs.insert(seq, bytes.to_vec());
        let mut v = Vec::new();
        for (s, b) in &recs {
            push_entry(&mut v, *s, b);
        }
        tree.insert(group_key(key), packed(&v)?)?;
        Ok(())
    }

    /// Removes every record at or below `upto`: whole chunks by dropping their trees, the chunk
    /// that `upto` cuts through group by group. Each step runs under `lock` (the archive's write
    /// lock: no reader holds a tree handle or looks for these records meanwhile).
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
        if upto == 0 || upto.is_multiple_of(self.size) {
            return Ok(());
        }
        let Some(tree) = self.tree(upto) else {
            return Ok(());
        };
        let _w = lock.write().expect("archive lock");
        let groups: Vec<(u64, sled::IVec)> = tree
            .range(group_key(0)..=group_key(u64::MAX))
            .map(|i| i.map(|(k, v)| (key_seq(&k), v)))
            .collect::<Result<_, _>>()?;
        for (key, value) in groups {
            if key <= upto {
                tree.remove(group_key(key))?;
            } else {
                Self::rewrite_group(&tree, key, &value, |s| s > upto)?;
                break;
            }
        }
        Ok(())
    }

    /// Removes every record above `after` from sled; returns how many there were.
    pub(super) fn remove_after(&self, after: u64) -> Result<u64, LogError> {
        let trees: Vec<sled::Tree> = {
            let t = self.trees.read().expect("trees lock");
            t.range(self.chunk(after.saturating_add(1))..)
                .map(|(_, t)| t.clone())
                .collect()
        };
        let mut n = 0u64;
        for tree in trees {
            let groups: Vec<(u64, sled::IVec)> = tree
                .range(group_key(after.saturating_add(1))..=group_key(u64::MAX))
                .map(|i| i.map(|(k, v)| (key_seq(&k), v)))
                .collect::<Result<_, _>>()?;
            for (key, value) in groups {
                n += entries(key, &value)?
                    .iter()
                    .filter(|(s, _)| *s > after)
                    .count() as u64;
                Self::rewrite_group(&tree, key, &value, |s| s <= after)?;
            }
        }
        Ok(n)
    }

    /// Moves the records of logs written before this layout (one `e` + seq key per record, in
    /// sled's default tree or in the chunks' trees) into groups (see the module's doc); `sync`
    /// makes sled's writes durable. Returns how many records were moved.
    pub(super) fn migrate_legacy(
        &self,
        sync: &mut dyn FnMut() -> Result<(), LogError>,
    ) -> Result<u64, LogError> {
        let legacy = |k: &[u8]| k.len() == 9 && k[0] == b'e';
        let mut sources: Vec<sled::Tree> = vec![(*self.db).clone()];
        sources.extend(self.trees.read().expect("trees lock").values().cloned());
        let mut n = 0u64;
        for src in &sources {
            // One aligned block at a time: its old keys, united with its group if an earlier
            // move wrote one, become that group again.
            let mut block: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for item in src.scan_prefix(b"e") {
                let (k, v) = item?;
                if !legacy(&k) {
                    continue;
                }
                let seq = key_seq(&k);
                if block
                    .keys()
                    .next()
                    .is_some_and(|&f| self.block(f) != self.block(seq))
                {
                    self.write_block(std::mem::take(&mut block))?;
                }
                block.insert(seq, v.to_vec());
                n += 1;
            }
            self.write_block(block)?;
        }
        if n == 0 {
            return Ok(0);
        }
        sync()?;
        for src in &sources {
            for k in src.scan_prefix(b"e").keys() {
                let k = k?;
                if legacy(&k) {
                    src.remove(k)?;
                }
            }
        }
        sync()?;
        Ok(n)
    }

    /// The aligned block of moved records `seq` is in, as its first and last sequence numbers:
    /// [`MIGRATE_BLOCK`] records, cut at its chunk's bounds.
    fn block(&self, seq: u64) -> (u64, u64) {
        let c = self.chunk(seq);
        let b = (seq - 1) / MIGRATE_BLOCK;
        (
            (c * self.size + 1).max(b * MIGRATE_BLOCK + 1),
            ((c + 1) * self.size).min(b * MIGRATE_BLOCK + MIGRATE_BLOCK),
        )
    }

    /// Writes one aligned block of moved records as its group, with what its group already holds.
    fn write_block(&self, mut block: BTreeMap<u64, Vec<u8>>) -> Result<(), LogError> {
        let Some(&first) = block.keys().next() else {
            return Ok(());
        };
        let (start, end) = self.block(first);
        let tree = self.tree_or_new(first)?;
        let old: Vec<(u64, sled::IVec)> = tree
            .range(group_key(start)..=group_key(end))
            .map(|i| i.map(|(k, v)| (key_seq(&k), v)))
            .collect::<Result<_, _>>()?;
        for (key, value) in &old {
            for (s, b) in entries(*key, value)? {
                block.entry(s).or_insert_with(|| b.to_vec());
            }
        }
        let last = *block.keys().next_back().expect("not empty");
        let mut v = Vec::new();
        for (s, b) in &block {
            push_entry(&mut v, *s, b);
        }
        tree.insert(group_key(last), packed(&v)?)?;
        // Groups of the block written otherwise (by a tool) are in the new one now.
        for (key, _) in old {
            if key != last {
                tree.remove(group_key(key))?;
            }
        }
        Ok(())
    }
}

/// sled's database of a log directory as stored, for tools and tests that read or edit raw
/// records: each record shows as an `e` + seq key (its bytes are in its group, in its chunk's
/// tree, see the module's doc), every other key is sled's default tree's. Reads over a range merge
/// both, in key order.
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
            Some(seq) => self.records.put(seq, value.as_ref()),
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
        for r in self.records.range(1, u64::MAX) {
            match r {
                Ok((seq, v)) => {
                    let k = event_key(seq);
                    if std::ops::RangeBounds::contains(&bounds, &k.to_vec()) {
                        all.push(Ok((sled::IVec::from(&k[..]), v)));
                    }
                }
                Err(e) => all.push(Err(e)),
            }
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
