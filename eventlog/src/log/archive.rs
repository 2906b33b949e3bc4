//! The archive: sealed segment files holding the records far behind the head.
//!
//! sled keeps memory in proportion to what it holds (about 55 MB per GB of log, whatever its cache
//! size; docs/reliability.md), so a log that keeps every report in sled makes the control plane
//! grow for as long as it runs. Once more than `keep + segment` durable records are in sled, the
//! archiver (in `sled_log`) writes the oldest `segment` of them, exactly as stored, to one segment
//! file here and then removes them from sled. The archive and sled together are the log: replay,
//! reads and verification go through both, and the hash chain runs across them unchanged.
//!
//! A segment file `archive/{first:020}-{last:020}.seg`:
//! - header ([`HEADER_LEN`] bytes): magic `NXFSEG01`, first and last sequence (u64 BE), the hash
//!   of record `first - 1` (zeros for record 1) and the hash of record `last`;
//! - the records: u32 BE length, then the record's bytes;
//! - the index: bincode of [`SegmentIndex`], the offset of every [`STRIDE`]th record and, per
//!   stream, the ordinals of its records (so a stream's history is found without decoding);
//! - the trailer ([`TRAILER_LEN`] bytes): index offset and length (u64 BE), SHA-256 of the index,
//!   magic `NXFSEGIX`.
//!
//! A segment is written under a temporary name, fsynced, renamed into place and the directory
//! fsynced; only then are its records removed from sled. A crash before the rename leaves sled
//! whole (the temporary file is removed at the next open); a crash after it leaves records in both
//! places, and the open removes the sled copies. Segments are never rewritten or deleted.
//!
//! Integrity: the open checks every header (names, contiguity from record 1, each segment's first
//! record chaining to the previous segment's last); the records themselves are checked by the same
//! chain walk as sled's when the log is replayed or verified. The index is checked against its hash
//! before it is decoded.

mod compaction;

use super::packed::{self, Compacted};
use super::{hash_bytes, LogError, RECORD_BYTES_MAX};
pub use compaction::Compaction;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NXFSEG01";
pub(super) const INDEX_MAGIC: &[u8; 8] = b"NXFSEGIX";
/// Header: magic, first, last, prev_hash, last_hash (version 2 adds `compacted_at_ms`, u64 BE).
pub const HEADER_LEN: u64 = 8 + 8 + 8 + 32 + 32;
/// The version 2 header: [`HEADER_LEN`] and when retention compacted the segment.
pub const HEADER_LEN_V2: u64 = HEADER_LEN + 8;
/// Trailer: index offset, index length, index hash, magic.
pub const TRAILER_LEN: u64 = 8 + 8 + 32 + 8;
/// Every STRIDE-th record's offset is in the index; a read skips at most STRIDE - 1 records.
pub const STRIDE: u64 = 256;
/// Largest index accepted (a segment of a million records with a thousand streams is ~10 MB).
const INDEX_BYTES_MAX: u64 = 256 << 20;

/// One sealed segment, as the open found it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its first record.
    pub first: u64,
    /// Its last record.
    pub last: u64,
    /// Hash of record `first - 1`.
    pub prev_hash: [u8; 32],
    /// Hash of record `last`.
    pub last_hash: [u8; 32],
    /// Version 2 (compressed blocks); false for a version 1 segment (records stored plainly).
    pub packed: bool,
    /// When retention compacted it (ms since the epoch; 0: never).
    pub compacted_at_ms: u64,
    path: PathBuf,
}

/// What a segment's index section holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Offset in the file of records 0, STRIDE, 2 × STRIDE, … (ordinals from `first`).
    pub offsets: Vec<u64>,
    /// Each stream with the ordinals of its records, sorted by stream.
    pub streams: Vec<(String, Vec<u32>)>,
}

/// The sealed segments of a log, in order.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    segments: Vec<Segment>,
}

fn corrupt(seq: u64, why: impl Into<String>) -> LogError {
    LogError::Corrupt {
        seq,
        why: why.into(),
    }
}

fn io(path: &Path, e: std::io::Error) -> LogError {
    LogError::Io(format!("{}: {e}", path.display()))
}

fn file_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.seg")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

impl Archive {
    /// Opens the archive directory `dir` (absent means empty): removes temporary files a crash
    /// left, reads every segment's header and checks that the segments run from record 1 without
    /// a gap and chain to each other. An error names the first record that is missing or wrong.
    pub fn open(dir: &Path) -> Result<Archive, LogError> {
        let mut found = Vec::new();
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(dir, e)),
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| io(dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".tmp") {
                        let _ = std::fs::remove_file(entry.path());
                        continue;
                    }
                    match parse_name(&name) {
                        Some((first, last)) => found.push((first, last, entry.path())),
                        None => {
                            return Err(LogError::Io(format!(
                            "{}: not a segment file of the archive (remove it, or move it away)",
                            entry.path().display()
                        )))
                        }
                    }
                }
            }
        }
        found.sort();
        let mut segments: Vec<Segment> = Vec::with_capacity(found.len());
        let mut expect = 1u64;
        let mut prev = [0u8; 32];
        for (first, last, path) in found {
            if first != expect {
                return Err(corrupt(
                    expect,
                    format!(
                        "record {expect} is missing: the archive's next segment starts at {first}"
                    ),
                ));
            }
            let seg = read_header(&path, first)?;
            if seg.first != first || seg.last != last || last < first {
                return Err(corrupt(
                    first,
                    format!("{}: its header does not match its name", path.display()),
                ));
            }
            if seg.prev_hash != prev {
                return Err(corrupt(
                    first,
                    "hash chain broken: this archived segment does not follow the one before it",
                ));
            }
            prev = seg.last_hash;
            expect = last + 1;
            segments.push(seg);
        }
        Ok(Archive {
            dir: dir.to_path_buf(),
            segments,
        })
    }

    /// The last archived record and its hash ((0, zeros) when the archive is empty).
    pub fn top(&self) -> (u64, [u8; 32]) {
        self.segments
            .last()
            .map(|s| (s.last, s.last_hash))
            .unwrap_or((0, [0u8; 32]))
    }

    /// How many segments there are.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether nothing is archived.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a segment that [`write_segment`] made durable. It must follow the top.
    pub fn push(&mut self, seg: Segment) {
        debug_assert_eq!(seg.first, self.top().0 + 1);
        self.segments.push(seg);
    }

    /// The ranges retention compacted away, in order (each with the hash of its last record).
    pub fn compacted(&self) -> Result<Vec<Compacted>, LogError> {
        let mut out = Vec::new();
        for seg in self.segments.iter().filter(|s| s.compacted_at_ms > 0) {
            out.extend_from_slice(Reader::open(seg)?.compacted());
        }
        Ok(out)
    }

    /// The compacted range holding record `seq`, if retention removed it.
    pub fn compacted_at(&self, seq: u64) -> Result<Option<Compacted>, LogError> {
        let Some(i) = self.position(seq) else {
            return Ok(None);
        };
        if self.segments[i].compacted_at_ms == 0 {
            return Ok(None);
        }
        let r = Reader::open(&self.segments[i])?;
        Ok(r.compacted()
            .iter()
            .find(|c| c.first <= seq && seq <= c.last)
            .copied())
    }

    fn position(&self, seq: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.last < seq);
        (i < self.segments.len() && self.segments[i].first <= seq).then_some(i)
    }

    /// Hands records `after + 1 ..= upto` (as far as the archive holds them, at most `limit`) to
    /// `out` in order, with their sequence numbers. Returns how many.
    pub fn read(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
        out: &mut dyn FnMut(u64, Vec<u8>),
    ) -> Result<usize, LogError> {
        let Some(mut i) = self.position(after.saturating_add(1)) else {
            return Ok(0);
        };
        let mut seq = after + 1;
        let mut n = 0;
        while i < self.segments.len() && n < limit && seq <= upto {
            let seg = &self.segments[i];
            n += Reader::open(seg)?.read(seq, upto, limit - n, out)?;
            seq = seg.last + 1;
            i += 1;
        }
        Ok(n)
    }

    /// The stored bytes of record `seq`, if archived.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        let mut found = None;
        self.read(seq.saturating_sub(1), seq, 1, &mut |_, b| found = Some(b))?;
        Ok(found)
    }

    /// Records of `stream` after `after`, at most `limit`, in order, found through the segments'
    /// indexes (only the segments from the one holding `after + 1` are opened).
    pub fn read_stream(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
        out: &mut dyn FnMut(u64, Vec<u8>),
    ) -> Result<usize, LogError> {
        let Some(mut i) = self.position(after.saturating_add(1)) else {
            return Ok(0);
        };
        let mut n = 0;
        while i < self.segments.len() && n < limit {
            let seg = &self.segments[i];
            let mut f = Reader::open(seg)?;
            for ord in f.take_stream(stream) {
                let seq = seg.first + u64::from(ord);
                if seq <= after || seq > seg.last {
                    continue;
                }
                if n == limit {
                    break;
                }
                if f.read(seq, seq, 1, out)? == 0 {
                    return Err(corrupt(seq, "the segment's index names a record it lacks"));
                }
                n += 1;
            }
            i += 1;
        }
        Ok(n)
    }
}

fn read_header(path: &Path, first: u64) -> Result<Segment, LogError> {
    let mut f = File::open(path).map_err(|e| io(path, e))?;
    let mut h = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut h).map_err(|_| {
        corrupt(
            first,
            format!("{}: the header is cut short", path.display()),
        )
    })?;
    let packed = &h[0..8] == packed::MAGIC_V2;
    if &h[0..8] != MAGIC && !packed {
        return Err(corrupt(
            first,
            format!("{}: not a nixfleet segment file", path.display()),
        ));
    }
    let mut compacted_at_ms = 0;
    if packed {
        let mut t = [0u8; 8];
        f.read_exact(&mut t).map_err(|_| {
            corrupt(
                first,
                format!("{}: the header is cut short", path.display()),
            )
        })?;
        compacted_at_ms = u64::from_be_bytes(t);
    }
    Ok(Segment {
        first: be_u64(&h[8..16]),
        last: be_u64(&h[16..24]),
        prev_hash: h[24..56].try_into().expect("32 bytes"),
        last_hash: h[56..88].try_into().expect("32 bytes"),
        packed,
        compacted_at_ms,
        path: path.to_path_buf(),
    })
}

/// An open segment: its index, and a reader positioned at some record.
struct SegmentFile<'a> {
    seg: &'a Segment,
    file: BufReader<File>,
    index: SegmentIndex,
    index_offset: u64,
    /// Where the reader is, and the record that starts there.
    pos: u64,
    at_seq: u64,
}

/// An open segment of either version.
enum Reader<'a> {
    Plain(SegmentFile<'a>),
    Packed(packed::PackedFile),
}

impl<'a> Reader<'a> {
    fn open(seg: &'a Segment) -> Result<Reader<'a>, LogError> {
        let (file, index_offset, raw) = read_index(seg)?;
        if seg.packed {
            packed::PackedFile::open(&seg.path, file, seg.first, seg.last, index_offset, &raw)
                .map(Reader::Packed)
        } else {
            SegmentFile::open(seg, file, index_offset, &raw).map(Reader::Plain)
        }
    }

    /// Hands the records `from ..= upto` it holds (at most `limit`) to `out`; returns how many.
    fn read(
        &mut self,
        from: u64,
        upto: u64,
        limit: usize,
        out: &mut dyn FnMut(u64, Vec<u8>),
    ) -> Result<usize, LogError> {
        match self {
            Reader::Packed(p) => p.read(from, upto, limit, out),
            Reader::Plain(f) => {
                let (mut seq, mut n) = (from, 0);
                let last = upto.min(f.seg.last);
                if seq > last || limit == 0 {
                    return Ok(0);
                }
                f.seek_to(seq)?;
                while seq <= last && n < limit {
                    out(seq, f.next_record(seq)?);
                    seq += 1;
                    n += 1;
                }
                Ok(n)
            }
        }
    }

    /// Takes the ordinals of `stream`'s records out of the index.
    fn take_stream(&mut self, stream: &str) -> Vec<u32> {
        let streams = match self {
            Reader::Packed(p) => &mut p.index.streams,
            Reader::Plain(f) => &mut f.index.streams,
        };
        match streams.binary_search_by(|(s, _)| s.as_str().cmp(stream)) {
            Ok(k) => std::mem::take(&mut streams[k].1),
            Err(_) => Vec::new(),
        }
    }

    fn compacted(&self) -> &[packed::Compacted] {
        match self {
            Reader::Packed(p) => &p.index.compacted,
            Reader::Plain(_) => &[],
        }
    }

    fn open_rollouts(&self) -> &[String] {
        match self {
            Reader::Packed(p) => &p.index.open_rollouts,
            Reader::Plain(_) => &[],
        }
    }
}

/// Opens a segment's file and reads its index section, checked against the trailer's hash.
fn read_index(seg: &Segment) -> Result<(File, u64, Vec<u8>), LogError> {
    let path = &seg.path;
    let damaged = |why: &str| corrupt(seg.first, format!("{}: {why}", path.display()));
    let header = if seg.packed {
        HEADER_LEN_V2
    } else {
        HEADER_LEN
    };
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    if len < header + TRAILER_LEN {
        return Err(damaged("the segment is cut short"));
    }
    let mut t = [0u8; TRAILER_LEN as usize];
    file.seek(SeekFrom::Start(len - TRAILER_LEN))
        .and_then(|_| file.read_exact(&mut t))
        .map_err(|e| io(path, e))?;
    if &t[48..56] != INDEX_MAGIC {
        return Err(damaged("the segment's trailer is missing (cut short?)"));
    }
    let (index_offset, index_len) = (be_u64(&t[0..8]), be_u64(&t[8..16]));
    if index_len > INDEX_BYTES_MAX
        || index_offset < header
        || index_offset.checked_add(index_len) != Some(len - TRAILER_LEN)
    {
        return Err(damaged("the segment's trailer is damaged"));
    }
    let mut raw = vec![0u8; index_len as usize];
    file.seek(SeekFrom::Start(index_offset))
        .and_then(|_| file.read_exact(&mut raw))
        .map_err(|e| io(path, e))?;
    if Sha256::digest(&raw)[..] != t[16..48] {
        return Err(damaged("the segment's index was altered"));
    }
    Ok((file, index_offset, raw))
}

impl<'a> SegmentFile<'a> {
    fn open(
        seg: &'a Segment,
        mut file: File,
        index_offset: u64,
        raw: &[u8],
    ) -> Result<SegmentFile<'a>, LogError> {
        let path = &seg.path;
        let damaged = |why: &str| corrupt(seg.first, format!("{}: {why}", path.display()));
        let (index, _): (SegmentIndex, usize) =
            bincode::serde::decode_from_slice(raw, bincode::config::standard())
                .map_err(|e| damaged(&format!("the segment's index does not decode: {e}")))?;
        let count = seg.last - seg.first + 1;
        if index.offsets.len() as u64 != count.div_ceil(STRIDE) {
            return Err(damaged("the segment's index does not match its records"));
        }
        file.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| io(path, e))?;
        Ok(SegmentFile {
            seg,
            file: BufReader::with_capacity(64 << 10, file),
            index,
            index_offset,
            pos: HEADER_LEN,
            at_seq: seg.first,
        })
    }

    /// Positions the reader at record `seq` (within this segment).
    fn seek_to(&mut self, seq: u64) -> Result<(), LogError> {
        let ord = seq - self.seg.first;
        let base = self.seg.first + ord / STRIDE * STRIDE;
        if !(self.at_seq <= seq && self.at_seq >= base) {
            let off = self.index.offsets[(ord / STRIDE) as usize];
            if !(HEADER_LEN..self.index_offset).contains(&off) {
                return Err(corrupt(
                    base,
                    "the segment's index points outside its records",
                ));
            }
            self.file
                .seek(SeekFrom::Start(off))
                .map_err(|e| io(&self.seg.path, e))?;
            self.pos = off;
            self.at_seq = base;
        }
        while self.at_seq < seq {
            let len = self.read_len(self.at_seq)?;
            self.file
                .seek_relative(len as i64)
                .map_err(|e| io(&self.seg.path, e))?;
            self.pos += 4 + len;
            self.at_seq += 1;
        }
        Ok(())
    }

    fn read_len(&mut self, seq: u64) -> Result<u64, LogError> {
        let mut l = [0u8; 4];
        self.file
            .read_exact(&mut l)
            .map_err(|_| corrupt(seq, "the archived record is cut short"))?;
        let len = u64::from(u32::from_be_bytes(l));
        if len as usize > RECORD_BYTES_MAX || self.pos + 4 + len > self.index_offset {
            return Err(corrupt(seq, "the archived record's length is damaged"));
        }
        Ok(len)
    }

    /// Reads the record the reader is at, which must be `seq`.
    fn next_record(&mut self, seq: u64) -> Result<Vec<u8>, LogError> {
        debug_assert_eq!(self.at_seq, seq);
        let len = self.read_len(seq)?;
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact(&mut buf)
            .map_err(|_| corrupt(seq, "the archived record is cut short"))?;
        self.pos += 4 + len;
        self.at_seq += 1;
        Ok(buf)
    }
}

/// Writes records `first ..` (`records`: each record's stored bytes and its stream) as one
/// segment (version 2, compressed) in `dir`: to a temporary file, fsynced, renamed, and the
/// directory fsynced. `prev_hash` is the hash of record `first - 1`. Returns the segment, to
/// [`Archive::push`].
pub fn write_segment(
    dir: &Path,
    first: u64,
    prev_hash: [u8; 32],
    records: &[(&[u8], &str)],
) -> Result<Segment, LogError> {
    assert!(!records.is_empty(), "an empty segment");
    let last = first + records.len() as u64 - 1;
    write_segment_with(dir, (first, last), prev_hash, |w| {
        for &(b, s) in records {
            w.push(packed::Entry::Record(b, s))
                .map_err(|e| io(dir, e))?;
        }
        Ok(())
    })
}

/// Like [`write_segment`], with the records `first ..= last` handed to the segment's writer one
/// at a time by `fill` (which may refuse, with an error: nothing is installed then), so that
/// only one block of them is in memory at once.
pub fn write_segment_with(
    dir: &Path,
    (first, last): (u64, u64),
    prev_hash: [u8; 32],
    fill: impl FnOnce(&mut packed::Writer) -> Result<(), LogError>,
) -> Result<Segment, LogError> {
    let mut refused: Option<LogError> = None;
    let mut last_hash = prev_hash;
    let written = install(dir, first, last, |tmp| {
        let mut w = packed::Writer::create(tmp, first, prev_hash, 0, Vec::new())?;
        let end = fill(&mut w).and_then(|()| match w.next().0 {
            n if n == last + 1 => Ok(()),
            n => Err(LogError::Corrupt {
                seq: n,
                why: format!(
                    "a segment of {first} to {last} was handed records up to {}",
                    n - 1
                ),
            }),
        });
        if let Err(e) = end {
            refused = Some(e);
            return Err(std::io::Error::other("the segment's records were refused"));
        }
        last_hash = w.finish()?.1;
        Ok(())
    });
    if let Some(e) = refused {
        return Err(e);
    }
    written?;
    Ok(Segment::new(
        dir,
        (first, last),
        (prev_hash, last_hash),
        true,
    ))
}

/// Makes `dir` (and its entry) durable, lets `write` fill a temporary file (fsynced), renames it
/// to the segment `first..=last` (replacing the one there) and fsyncs the directory.
fn install(
    dir: &Path,
    first: u64,
    last: u64,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), LogError> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // The archive directory's own entry must be durable before anything is moved into it.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            super::durable::fsync_dir(parent)?;
        }
    }
    let name = file_name(first, last);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let result = write(&tmp)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .and_then(|_| File::open(dir)?.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&path, e));
    }
    Ok(())
}

/// Writes a segment in the version 1 form (records stored plainly), as nixfleet did before
/// issue 16: for the tests that prove such archives still read.
pub fn write_segment_v1(
    dir: &Path,
    first: u64,
    prev_hash: [u8; 32],
    records: &[(&[u8], &str)],
) -> Result<Segment, LogError> {
    assert!(!records.is_empty(), "an empty segment");
    let last = first + records.len() as u64 - 1;
    let last_hash = hash_bytes(records.last().expect("not empty").0);
    install(dir, first, last, |tmp| {
        let mut index = SegmentIndex::default();
        let mut streams: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        let mut w = BufWriter::with_capacity(1 << 20, File::create(tmp)?);
        w.write_all(MAGIC)?;
        w.write_all(&first.to_be_bytes())?;
        w.write_all(&last.to_be_bytes())?;
        w.write_all(&prev_hash)?;
        w.write_all(&last_hash)?;
        let mut pos = HEADER_LEN;
        for (ord, (bytes, stream)) in records.iter().enumerate() {
            if (ord as u64).is_multiple_of(STRIDE) {
                index.offsets.push(pos);
            }
            streams.entry(stream).or_default().push(ord as u32);
            w.write_all(&(bytes.len() as u32).to_be_bytes())?;
            w.write_all(bytes)?;
            pos += 4 + bytes.len() as u64;
        }
        index.streams = stream_list(streams);
        write_index(&mut w, pos, &index)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    })?;
    Ok(Segment::new(
        dir,
        (first, last),
        (prev_hash, last_hash),
        false,
    ))
}

/// Each stream with the ordinals of its records, sorted by stream (for an index).
pub(super) fn stream_list(
    streams: std::collections::BTreeMap<&str, Vec<u32>>,
) -> Vec<(String, Vec<u32>)> {
    streams
        .into_iter()
        .map(|(s, o)| (s.to_owned(), o))
        .collect()
}

/// Writes `index` (bincode) at `pos`, then the trailer naming it: offset, length, SHA-256, magic.
pub(super) fn write_index(
    w: &mut impl Write,
    pos: u64,
    index: &impl Serialize,
) -> std::io::Result<()> {
    let raw = bincode::serde::encode_to_vec(index, bincode::config::standard())
        .map_err(std::io::Error::other)?;
    w.write_all(&raw)?;
    w.write_all(&pos.to_be_bytes())?;
    w.write_all(&(raw.len() as u64).to_be_bytes())?;
    w.write_all(&Sha256::digest(&raw))?;
    w.write_all(INDEX_MAGIC)
}

impl Segment {
    fn new(
        dir: &Path,
        (first, last): (u64, u64),
        (prev_hash, last_hash): ([u8; 32], [u8; 32]),
        packed: bool,
    ) -> Segment {
        Segment {
            first,
            last,
            prev_hash,
            last_hash,
            packed,
            compacted_at_ms: 0,
            path: dir.join(file_name(first, last)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn records(n: u64) -> Vec<(Vec<u8>, String)> {
        (1..=n)
            .map(|i| (format!("record {i}").into_bytes(), format!("s{}", i % 3)))
            .collect()
    }

    #[test]
    fn a_written_segment_reads_back_by_position_and_by_stream() {
        reads_back(write_segment);
    }

    #[test]
    fn a_version_1_segment_still_reads_back() {
        reads_back(write_segment_v1);
    }

    type Writer = fn(&Path, u64, [u8; 32], &[(&[u8], &str)]) -> Result<Segment, LogError>;

    fn reads_back(write_segment: Writer) {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(3000);
        let refs: Vec<(&[u8], &str)> = recs
            .iter()
            .map(|(b, s)| (b.as_slice(), s.as_str()))
            .collect();
        let seg = write_segment(dir.path(), 1, [0; 32], &refs[..600]).unwrap();
        let seg2 = write_segment(dir.path(), 601, seg.last_hash, &refs[600..1000]).unwrap();
        let mut a = Archive::open(dir.path()).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.top(), (1000, seg2.last_hash));
        let mut got = Vec::new();
        a.read(299, u64::MAX, 500, &mut |s, b| got.push((s, b)))
            .unwrap();
        assert_eq!(got.len(), 500);
        assert_eq!(got[0], (300, b"record 300".to_vec()));
        assert_eq!(got[499], (799, b"record 799".to_vec()));
        assert_eq!(a.get(1000).unwrap(), Some(b"record 1000".to_vec()));
        assert_eq!(a.get(1001).unwrap(), None);
        let mut s1 = Vec::new();
        a.read_stream("s1", 590, 10, &mut |s, _| s1.push(s))
            .unwrap();
        assert_eq!(s1, vec![592, 595, 598, 601, 604, 607, 610, 613, 616, 619]);
        // A segment of several blocks, read from inside its second block.
        a.push(write_segment(dir.path(), 1001, a.top().1, &refs[1000..]).unwrap());
        assert_eq!(a.top().0, 3000);
        let mut got = Vec::new();
        a.read(2099, 2102, 10, &mut |s, b| got.push((s, b)))
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (2100, b"record 2100".to_vec()));
        assert_eq!(a.get(3000).unwrap(), Some(b"record 3000".to_vec()));
    }

    #[test]
    fn a_segment_whose_records_are_refused_midway_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(3000);
        for short in [false, true] {
            let r = write_segment_with(dir.path(), (1, 3000), [0; 32], |w| {
                for (i, (b, s)) in recs.iter().enumerate() {
                    if i == 2500 {
                        if short {
                            break;
                        }
                        return Err(LogError::Corrupt {
                            seq: 2501,
                            why: "refused".into(),
                        });
                    }
                    w.push(packed::Entry::Record(b, s)).unwrap();
                }
                Ok(())
            });
            let e = r.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("2501"), "{e}");
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{left:?}");
        }
        let refs: Vec<(&[u8], &str)> = recs
            .iter()
            .map(|(b, s)| (b.as_slice(), s.as_str()))
            .collect();
        let seg = write_segment(dir.path(), 1, [0; 32], &refs).unwrap();
        assert_eq!(seg.last_hash, hash_bytes(&recs[2999].0));
    }

    /// Chained records of a real log, with record 5's link broken when `broken`.
    fn chained(n: u64, broken: bool) -> Vec<Vec<u8>> {
        use nixfleet_core::ids::{KeyName, Seq, Timestamp};
        let (mut prev, mut out) = ([0u8; 32], Vec::new());
        for i in 1..=n {
            let event = nixfleet_core::Event::ApiKeyRevoked {
                name: KeyName::parse(&format!("k{i}")).unwrap(),
            };
            let link = if broken && i == 5 { [7u8; 32] } else { prev };
            let actor = nixfleet_core::Actor::System;
            let bytes = super::super::encode_record(Seq(i), Timestamp(i), &actor, link, &event);
            prev = hash_bytes(&bytes);
            out.push(bytes);
        }
        out
    }

    #[test]
    fn a_segment_whose_chain_is_broken_is_not_compacted() {
        for broken in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let recs = chained(10, broken);
            let refs: Vec<(&[u8], &str)> = recs.iter().map(|b| (b.as_slice(), "key:k")).collect();
            let seg = write_segment(dir.path(), 1, [0; 32], &refs).unwrap();
            let before = std::fs::read(dir.path().join(file_name(1, 10))).unwrap();
            let all = |_: &super::super::Record, _: Option<&super::super::Record>| true;
            match Archive::prepare_compaction(&seg, 0, 1, Default::default(), &all) {
                Ok(c) => {
                    assert!(!broken, "a broken chain was compacted");
                    assert_eq!(c.removed, 10);
                }
                Err(LogError::Corrupt { seq, .. }) => assert!(broken && seq == 5, "{seq}"),
                Err(e) => panic!("{e}"),
            }
            let after = std::fs::read(dir.path().join(file_name(1, 10))).unwrap();
            assert_eq!(
                before, after,
                "the segment itself is untouched until installed"
            );
        }
    }
}
