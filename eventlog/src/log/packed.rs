//! Version 2 of the segment format: records in zstd-compressed blocks, with compacted ranges.
//!
//! Sealed segments are written in this form since issue 16; version 1 segments (records stored
//! plainly, `NXFSEG01`) still read, through `archive::SegmentFile`. The header has the same
//! layout as version 1 with the magic `NXFSEG02` (the version marker); after it come blocks:
//! - a block: raw length and compressed length (u32 BE each), then one zstd frame of its entries:
//!   - a record: tag 0, varint `hash_at` (0: kept whole; `k`: the 32 bytes of the previous record's
//!     hash stood at offset `k - 1` and were taken out, since they are the SHA-256 of the record
//!     before it and the reader computes it anyway), varint length, the bytes;
//!   - a compacted range (see `retention`): tag 1, varint count, the SHA-256 of its last record;
//! - the index: bincode of [`PackedIndex`]: each block's first sequence number, offset and the
//!   hash of the record before it (so one block decodes alone), per stream the ordinals of its
//!   records, the compacted ranges;
//! - the trailer, as in version 1.
//!
//! The reader puts each record back byte for byte, so its hash, and the chain, are unchanged.

use super::{hash_bytes, LogError, RECORD_BYTES_MAX};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The version 2 magic.
pub const MAGIC_V2: &[u8; 8] = b"NXFSEG02";
/// Records per block: 1,024 reports are about 180 KB before compression.
pub const BLOCK_RECORDS: usize = 1024;
/// zstd's level: 3 (its default) compresses reports about as well as 9 at a third of the time.
const LEVEL: i32 = 3;
/// The previous record's hash is looked for in the envelope's head only (it follows the
/// sequence number, time, actor and stream).
const HASH_SEARCH: usize = 512;
/// Largest block accepted when reading (one largest record and its neighbours).
const BLOCK_RAW_MAX: u64 = 2 * RECORD_BYTES_MAX as u64;

/// One block of a version 2 segment, as the index lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockRef {
    /// Sequence number of its first entry.
    pub first: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Hash of record `first - 1`.
    pub prev_hash: [u8; 32],
}

/// A compacted range: its records were removed by the retention policy; the hash of its last
/// record is kept, so the chain still runs from record 1 to the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    /// First removed record.
    pub first: u64,
    /// Last removed record.
    pub last: u64,
    /// Hash of record `last`.
    pub last_hash: [u8; 32],
}

/// The index section of a version 2 segment.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PackedIndex {
    /// The blocks, in order.
    pub blocks: Vec<BlockRef>,
    /// Each stream with the ordinals (from the segment's first) of its kept records, by stream.
    pub streams: Vec<(String, Vec<u32>)>,
    /// Compacted ranges, in order.
    pub compacted: Vec<Compacted>,
    /// When retention last compacted this segment (ms since the epoch; 0: never).
    pub compacted_at_ms: u64,
    /// The rollouts open (created, not yet finished) after its last record, for retention to
    /// carry into the next segment (compacted segments only).
    pub open_rollouts: Vec<String>,
}

/// What a segment holds, in order: records (their stored bytes and stream) and compacted ranges.
#[derive(Clone, Copy)]
pub enum Entry<'a> {
    /// A record.
    Record(&'a [u8], &'a str),
    /// A compacted range of `count` records ending with one of this hash.
    Compacted(u64, [u8; 32]),
}

fn corrupt(seq: u64, why: impl Into<String>) -> LogError {
    LogError::Corrupt {
        seq,
        why: why.into(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Where in `bytes` (a stored record) the 32 bytes of `prev`, the hash of the record before it,
/// stand, if they do in its envelope: what a segment, and a group in sled, leave out.
pub(super) fn hash_at(bytes: &[u8], prev: &[u8; 32]) -> Option<usize> {
    let head = &bytes[..bytes.len().min(HASH_SEARCH)];
    head.windows(32).position(|w| w == prev)
}

/// Writes a version 2 segment of `entries` (starting at record `first`, the one after a record
/// hashing to `prev_hash`) to `tmp`, fsynced. Returns the last record's number and hash.
pub fn write(
    tmp: &Path,
    first: u64,
    prev_hash: [u8; 32],
    entries: &[Entry<'_>],
    compacted_at_ms: u64,
    open_rollouts: Vec<String>,
) -> std::io::Result<(u64, [u8; 32])> {
    let mut w = Writer::create(tmp, first, prev_hash, compacted_at_ms, open_rollouts)?;
    for e in entries {
        w.push(*e)?;
    }
    w.finish()
}

/// A version 2 segment being written, one entry at a time: only the current block is held in
/// memory (the archiver streams a segment of 65,536 records out of sled this way).
pub struct Writer {
    w: BufWriter<File>,
    index: PackedIndex,
    streams: std::collections::BTreeMap<String, Vec<u32>>,
    first: u64,
    prev_hash: [u8; 32],
    compacted_at_ms: u64,
    seq: u64,
    prev: [u8; 32],
    pos: u64,
    raw: Vec<u8>,
    in_block: usize,
    ctx: zstd::bulk::Compressor<'static>,
}

impl Writer {
    /// Starts a segment whose first entry is record `first`, the one after a record hashing to
    /// `prev_hash`, in `tmp`.
    pub fn create(
        tmp: &Path,
        first: u64,
        prev_hash: [u8; 32],
        compacted_at_ms: u64,
        open_rollouts: Vec<String>,
    ) -> std::io::Result<Writer> {
        // Blocks are written whole (20 to 40 KB compressed for reports): a small buffer does.
        let mut w = BufWriter::with_capacity(128 << 10, File::create(tmp)?);
        // The header's last and last-hash are known only at the end: written as zeros, then
        // patched.
        w.write_all(&[0u8; super::archive::HEADER_LEN_V2 as usize])?;
        Ok(Writer {
            w,
            index: PackedIndex {
                compacted_at_ms,
                open_rollouts,
                ..PackedIndex::default()
            },
            streams: Default::default(),
            first,
            prev_hash,
            compacted_at_ms,
            seq: first,
            prev: prev_hash,
            pos: super::archive::HEADER_LEN_V2,
            raw: Vec::with_capacity(256 << 10),
            in_block: 0,
            ctx: zstd::bulk::Compressor::new(LEVEL)?,
        })
    }

    /// The next entry's sequence number, and the hash of the record before it.
    pub fn next(&self) -> (u64, [u8; 32]) {
        (self.seq, self.prev)
    }

    /// Adds the next entry.
    pub fn push(&mut self, e: Entry<'_>) -> std::io::Result<()> {
        if self.in_block == 0 {
            self.index.blocks.push(BlockRef {
                first: self.seq,
                offset: self.pos,
                prev_hash: self.prev,
            });
            self.raw.clear();
        }
        let raw = &mut self.raw;
        match e {
            Entry::Record(bytes, stream) => {
                let ord = (self.seq - self.first) as u32;
                match self.streams.get_mut(stream) {
                    Some(v) => v.push(ord),
                    None => {
                        self.streams.insert(stream.to_owned(), vec![ord]);
                    }
                }
                raw.push(0);
                match hash_at(bytes, &self.prev) {
                    Some(at) => {
                        put_varint(raw, at as u64 + 1);
                        put_varint(raw, bytes.len() as u64 - 32);
                        raw.extend_from_slice(&bytes[..at]);
                        raw.extend_from_slice(&bytes[at + 32..]);
                    }
                    None => {
                        put_varint(raw, 0);
                        put_varint(raw, bytes.len() as u64);
                        raw.extend_from_slice(bytes);
                    }
                }
                self.prev = hash_bytes(bytes);
                self.seq += 1;
            }
            Entry::Compacted(count, hash) => {
                self.index.compacted.push(Compacted {
                    first: self.seq,
                    last: self.seq + count - 1,
                    last_hash: hash,
                });
                raw.push(1);
                put_varint(raw, count);
                raw.extend_from_slice(&hash);
                self.prev = hash;
                self.seq += count;
            }
        }
        self.in_block += 1;
        if self.in_block == BLOCK_RECORDS {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> std::io::Result<()> {
        let packed = self.ctx.compress(&self.raw)?;
        self.w.write_all(&(self.raw.len() as u32).to_be_bytes())?;
        self.w.write_all(&(packed.len() as u32).to_be_bytes())?;
        self.w.write_all(&packed)?;
        self.pos += 8 + packed.len() as u64;
        self.in_block = 0;
        Ok(())
    }

    /// Writes the last block, the index and the header, and fsyncs the file. Returns the last
    /// record's number and hash.
    pub fn finish(mut self) -> std::io::Result<(u64, [u8; 32])> {
        if self.in_block > 0 {
            self.end_block()?;
        }
        let last = self.seq - 1;
        self.index.streams = std::mem::take(&mut self.streams).into_iter().collect();
        super::archive::write_index(&mut self.w, self.pos, &self.index)?;
        let mut f = self.w.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(MAGIC_V2)?;
        f.write_all(&self.first.to_be_bytes())?;
        f.write_all(&last.to_be_bytes())?;
        f.write_all(&self.prev_hash)?;
        f.write_all(&self.prev)?;
        f.write_all(&self.compacted_at_ms.to_be_bytes())?;
        f.sync_all()?;
        Ok((last, self.prev))
    }
}

/// Records with their sequence numbers.
type Records = Vec<(u64, Vec<u8>)>;

/// An open version 2 segment: its index and the block last decoded.
pub struct PackedFile {
    path: PathBuf,
    first: u64,
    last: u64,
    file: File,
    index_offset: u64,
    /// The index.
    pub index: PackedIndex,
    /// The decoded block: its position in the index, and its records with their numbers.
    block: Option<(usize, Records)>,
}

impl PackedFile {
    /// Opens the segment at `path` (range `first..=last`), whose index section is
    /// `index_offset..` and was already checked against its hash (`raw`).
    pub fn open(
        path: &Path,
        file: File,
        first: u64,
        last: u64,
        index_offset: u64,
        raw: &[u8],
    ) -> Result<PackedFile, LogError> {
        let damaged = |why: &str| corrupt(first, format!("{}: {why}", path.display()));
        let (index, _): (PackedIndex, usize) =
            bincode::serde::decode_from_slice(raw, bincode::config::standard())
                .map_err(|e| damaged(&format!("the segment's index does not decode: {e}")))?;
        let in_order = index.blocks.windows(2).all(|w| w[0].first < w[1].first)
            && index.blocks.first().map(|b| b.first) == Some(first)
            && index.blocks.iter().all(|b| {
                b.first <= last && (super::archive::HEADER_LEN_V2..index_offset).contains(&b.offset)
            });
        if !in_order {
            return Err(damaged("the segment's index does not match its records"));
        }
        Ok(PackedFile {
            path: path.to_path_buf(),
            first,
            last,
            file,
            index_offset,
            index,
            block: None,
        })
    }

    /// The records of block `i`, decoded (and kept until another block is asked for).
    fn block(&mut self, i: usize) -> Result<&[(u64, Vec<u8>)], LogError> {
        if self.block.as_ref().map(|b| b.0) != Some(i) {
            let b = self.index.blocks[i].clone();
            let end = self
                .index
                .blocks
                .get(i + 1)
                .map_or(self.last, |n| n.first - 1);
            let records = self.decode(&b, end)?;
            self.block = Some((i, records));
        }
        Ok(&self.block.as_ref().expect("just decoded").1)
    }

    fn decode(&mut self, b: &BlockRef, end: u64) -> Result<Records, LogError> {
        let bad = |seq: u64, why: &str| corrupt(seq, format!("{}: {why}", self.path.display()));
        let mut lens = [0u8; 8];
        self.file
            .seek(SeekFrom::Start(b.offset))
            .and_then(|_| self.file.read_exact(&mut lens))
            .map_err(|_| bad(b.first, "the archived block is cut short"))?;
        let raw_len = u64::from(u32::from_be_bytes(lens[0..4].try_into().expect("4")));
        let packed_len = u64::from(u32::from_be_bytes(lens[4..8].try_into().expect("4")));
        if raw_len > BLOCK_RAW_MAX || b.offset + 8 + packed_len > self.index_offset {
            return Err(bad(b.first, "the archived block's length is damaged"));
        }
        let mut packed = vec![0u8; packed_len as usize];
        self.file
            .read_exact(&mut packed)
            .map_err(|_| bad(b.first, "the archived block is cut short"))?;
        let raw = zstd::bulk::decompress(&packed, raw_len as usize).map_err(|e| {
            bad(
                b.first,
                &format!("the archived block does not decompress: {e}"),
            )
        })?;
        let (mut at, mut seq, mut prev) = (0usize, b.first, b.prev_hash);
        let mut out = Vec::new();
        while at < raw.len() {
            if seq > end {
                return Err(bad(seq, "the archived block runs past its range"));
            }
            let tag = raw[at];
            at += 1;
            match tag {
                0 => {
                    let hash_at = get_varint(&raw, &mut at);
                    let len = get_varint(&raw, &mut at);
                    let (Some(hash_at), Some(len)) = (hash_at, len) else {
                        return Err(bad(seq, "the archived record is damaged"));
                    };
                    let stored = len.checked_add(if hash_at > 0 { 32 } else { 0 });
                    let Some(body) = at
                        .checked_add(len as usize)
                        .filter(|&e| {
                            e <= raw.len() && stored.is_some_and(|s| s as usize <= RECORD_BYTES_MAX)
                        })
                        .map(|e| &raw[at..e])
                    else {
                        return Err(bad(seq, "the archived record's length is damaged"));
                    };
                    at += len as usize;
                    let bytes = if hash_at == 0 {
                        body.to_vec()
                    } else {
                        let k = (hash_at - 1) as usize;
                        if k > body.len() {
                            return Err(bad(seq, "the archived record is damaged"));
                        }
                        let mut v = Vec::with_capacity(body.len() + 32);
                        v.extend_from_slice(&body[..k]);
                        v.extend_from_slice(&prev);
                        v.extend_from_slice(&body[k..]);
                        v
                    };
                    prev = hash_bytes(&bytes);
                    out.push((seq, bytes));
                    seq += 1;
                }
                1 => {
                    let count = get_varint(&raw, &mut at).filter(|&c| c > 0);
                    let hash = raw.get(at..at + 32);
                    let (Some(count), Some(hash)) = (count, hash) else {
                        return Err(bad(seq, "the archived compacted range is damaged"));
                    };
                    prev = hash.try_into().expect("32 bytes");
                    at += 32;
                    seq = seq.saturating_add(count);
                }
                _ => return Err(bad(seq, "the archived block is damaged")),
            }
        }
        if seq != end.saturating_add(1) {
            return Err(bad(seq, "the archived block ends before its range"));
        }
        Ok(out)
    }

    /// Hands the kept records `from ..= upto` (at most `limit`) to `out`. Returns how many.
    pub fn read(
        &mut self,
        from: u64,
        upto: u64,
        limit: usize,
        out: &mut dyn FnMut(u64, Vec<u8>),
    ) -> Result<usize, LogError> {
        let mut i = self
            .index
            .blocks
            .partition_point(|b| b.first <= from)
            .saturating_sub(1);
        let mut n = 0;
        while i < self.index.blocks.len() && n < limit {
            if self.index.blocks[i].first > upto {
                break;
            }
            for (seq, bytes) in self.block(i)? {
                if *seq >= from && *seq <= upto && n < limit {
                    out(*seq, bytes.clone());
                    n += 1;
                }
            }
            i += 1;
        }
        Ok(n)
    }

    /// The segment's range.
    pub fn range(&self) -> (u64, u64) {
        (self.first, self.last)
    }
}
