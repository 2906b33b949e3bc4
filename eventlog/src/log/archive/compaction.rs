//! Retention's side of the archive: a sealed segment rewritten without the records retention
//! drops ([`Archive::prepare_compaction`]), made durable under a temporary name, then renamed
//! over the original ([`Archive::install`]).

use super::*;

/// A segment rewritten by retention, durable under a temporary name until
/// [`Archive::install`] renames it over the original.
#[derive(Debug)]
pub struct Compaction {
    index: usize,
    seg: Segment,
    tmp: PathBuf,
    /// Records removed by this compaction.
    pub removed: u64,
}

impl Archive {
    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The rollouts open before segment `index` (created, not finished), as retention recorded
    /// them when it compacted the segment before; None when it has not (`index` then waits).
    pub fn open_rollouts_before(&self, index: usize) -> Result<Option<Vec<String>>, LogError> {
        let Some(prev) = index.checked_sub(1) else {
            return Ok(Some(Vec::new()));
        };
        let seg = &self.segments[prev];
        if seg.compacted_at_ms == 0 {
            return Ok(None);
        }
        Ok(Some(Reader::open(seg)?.open_rollouts().to_vec()))
    }

    /// Writes segment `index` again without the records `removable` lets go (given each record
    /// and the one after it), as a compacted segment stamped `now_ms`, under a temporary name.
    /// Nothing is removed while a rollout is open (from its `RolloutCreated` to its end): the
    /// gates judged those reports, and a replay must judge them again. `open` are the rollouts
    /// open before the segment ([`Archive::open_rollouts_before`]).
    /// Reads no lock: segments change only by [`Archive::install`], and one compaction runs at a
    /// time. The segment's chain is checked first: a damaged segment is an error, never compacted.
    pub fn prepare_compaction(
        seg: &Segment,
        index: usize,
        now_ms: u64,
        mut open: std::collections::BTreeSet<String>,
        removable: &dyn Fn(&crate::log::Record, Option<&crate::log::Record>) -> bool,
    ) -> Result<Compaction, LogError> {
        let mut reader = Reader::open(seg)?;
        let gaps = reader.compacted().to_vec();
        let mut stored: Vec<(u64, Vec<u8>)> = Vec::new();
        reader.read(seg.first, seg.last, usize::MAX, &mut |s, b| {
            stored.push((s, b))
        })?;
        let mut records = Vec::with_capacity(stored.len());
        for (seq, bytes) in &stored {
            let r = crate::log::decode_record(bytes).map_err(|why| corrupt(*seq, why))?;
            records.push(r);
        }
        // Walk the segment in order: records and the ranges compacted before.
        let (mut seq, mut prev) = (seg.first, seg.prev_hash);
        let (mut g, mut k) = (0, 0);
        let mut entries: Vec<packed::Entry<'_>> = Vec::new();
        let mut run: Option<(u64, [u8; 32])> = None;
        let mut removed = 0;
        while seq <= seg.last {
            if let Some(c) = gaps.get(g).filter(|c| c.first == seq) {
                let n = run.map_or(0, |r| r.0);
                run = Some((n + c.last - c.first + 1, c.last_hash));
                (seq, prev, g) = (c.last + 1, c.last_hash, g + 1);
                continue;
            }
            let (Some((at, bytes)), Some(rec)) = (stored.get(k), records.get(k)) else {
                return Err(corrupt(
                    seq,
                    format!("record {seq} is missing from its segment"),
                ));
            };
            if *at != seq || rec.seq.0 != seq || rec.prev_hash != prev {
                return Err(corrupt(
                    seq,
                    "hash chain broken: this record or the one before it was altered",
                ));
            }
            prev = hash_bytes(bytes);
            track_rollouts(&mut open, rec);
            if open.is_empty() && removable(rec, records.get(k + 1)) {
                let n = run.map_or(0, |r| r.0);
                run = Some((n + 1, prev));
                removed += 1;
            } else {
                if let Some((n, h)) = run.take() {
                    entries.push(packed::Entry::Compacted(n, h));
                }
                entries.push(packed::Entry::Record(bytes, &rec.stream));
            }
            (seq, k) = (seq + 1, k + 1);
        }
        if let Some((n, h)) = run.take() {
            entries.push(packed::Entry::Compacted(n, h));
        }
        if prev != seg.last_hash {
            return Err(corrupt(
                seg.last,
                "hash chain broken: the segment's last record is not the one its header names",
            ));
        }
        let stamp = now_ms.max(1);
        let tmp = seg
            .path
            .with_file_name(format!("{}.tmp", file_name(seg.first, seg.last)));
        let open = open.into_iter().collect();
        let written = packed::write(&tmp, seg.first, seg.prev_hash, &entries, stamp, open);
        match written {
            Ok((last, h)) if last == seg.last && h == seg.last_hash => {}
            Ok(_) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(corrupt(
                    seg.first,
                    "a compacted segment does not match its original",
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(&tmp, e));
            }
        }
        Ok(Compaction {
            index,
            seg: Segment {
                packed: true,
                compacted_at_ms: stamp,
                ..seg.clone()
            },
            tmp,
            removed,
        })
    }

    /// Renames a prepared compaction over its segment (the directory fsynced): readers see the
    /// whole segment or the compacted one, never a mix. The caller holds the archive's write lock.
    pub fn install(&mut self, c: Compaction) -> Result<(), LogError> {
        let at = &self.segments[c.index];
        debug_assert_eq!((at.first, at.last), (c.seg.first, c.seg.last));
        std::fs::rename(&c.tmp, &c.seg.path)
            .and_then(|_| File::open(&self.dir)?.sync_all())
            .map_err(|e| io(&c.seg.path, e))?;
        self.segments[c.index] = c.seg;
        Ok(())
    }
}

/// Keeps `open` (rollout streams created and not finished) up to date with `rec`.
fn track_rollouts(open: &mut std::collections::BTreeSet<String>, rec: &crate::log::Record) {
    use nixfleet_core::Event;
    match &rec.event {
        Event::RolloutCreated { .. } => {
            open.insert(rec.stream.clone());
        }
        Event::RolloutCompleted { .. }
        | Event::RolloutCancelled { .. }
        | Event::RolloutFailed { .. }
        | Event::RolloutReverted { .. }
        | Event::RolloutDeleted { .. } => {
            open.remove(&rec.stream);
        }
        _ => {}
    }
}
