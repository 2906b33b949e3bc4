//! The stream index of the records still in sled, kept in memory (issue 16).
//!
//! Until issue 16 each record had a second sled key, `s` + stream + `0x00` + seq, inserted right
//! after it and removed with it when it was archived: half of sled's inserts and removes, and
//! sled was about half of the control plane's CPU per report (docs/benchmarks.md). The index
//! holds only what sled holds (at most `keep + 2 × segment` records, each a `u64` here), and is
//! rebuilt at open from the records the open reads anyway; the archive has its own per-segment
//! stream lists. Logs written before keep their `s` keys until the first open, which removes them.

use super::*;
use std::collections::{HashMap, VecDeque};

/// Per stream, the sequence numbers of its records in sled, in order.
#[derive(Default)]
pub(super) struct StreamIndex {
    streams: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl StreamIndex {
    /// Adds `seq`, the newest record, to `stream`. A number at or below the stream's last one
    /// (a group staged again after a failed insert) replaces what was there from it on.
    pub(super) fn push(&self, stream: &str, seq: u64) {
        let mut m = self.streams.lock().expect("stream index lock");
        let q = match m.get_mut(stream) {
            Some(q) => q,
            None => m.entry(stream.to_owned()).or_default(),
        };
        while q.back().is_some_and(|&b| b >= seq) {
            q.pop_back();
        }
        q.push_back(seq);
    }

    /// Forgets every record at or below `upto` (archived, or dropped from sled).
    pub(super) fn forget_upto(&self, upto: u64) {
        let mut m = self.streams.lock().expect("stream index lock");
        m.retain(|_, q| {
            while q.front().is_some_and(|&f| f <= upto) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// The sequence numbers of `stream`'s records above `after`, at most `limit`, in order.
    pub(super) fn after(&self, stream: &str, after: u64, limit: usize) -> Vec<u64> {
        let m = self.streams.lock().expect("stream index lock");
        let Some(q) = m.get(stream) else {
            return Vec::new();
        };
        let from = q.partition_point(|&s| s <= after);
        q.range(from..).take(limit).copied().collect()
    }

    /// Rebuilds the index from sled's records `from ..`, reading only each record's envelope.
    pub(super) fn load(&self, records: &Records, from: u64, upto: u64) -> Result<(), LogError> {
        for item in records.range(from, upto) {
            let (seq, v) = item?;
            let head = super::super::codec::decode_record_head(&v)
                .map_err(|why| LogError::Corrupt { seq, why })?;
            self.push(&head.stream, seq);
        }
        Ok(())
    }
}

/// Removes the stream index keys of logs written before issue 16 (`s` + stream + `0x00` + seq):
/// the index is in memory now. Returns how many there were. Nothing reads them any more, so a
/// crash part-way leaves only keys the next open removes.
pub(super) fn remove_legacy_index(db: &sled::Db) -> Result<u64, LogError> {
    let mut n = 0u64;
    let mut batch = Vec::with_capacity(4096);
    loop {
        batch.clear();
        for k in db.scan_prefix(b"s").keys().take(4096) {
            batch.push(k?);
        }
        if batch.is_empty() {
            return Ok(n);
        }
        for k in &batch {
            db.remove(k)?;
        }
        n += batch.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_answers_in_order_and_forgets_what_left_sled() {
        let ix = StreamIndex::default();
        for (s, seq) in [("a", 1), ("b", 2), ("a", 3), ("a", 5), ("b", 6), ("a", 7)] {
            ix.push(s, seq);
        }
        assert_eq!(ix.after("a", 0, 10), vec![1, 3, 5, 7]);
        assert_eq!(ix.after("a", 3, 2), vec![5, 7]);
        assert_eq!(ix.after("a", 4, 1), vec![5]);
        assert_eq!(ix.after("c", 0, 10), Vec::<u64>::new());
        ix.forget_upto(5);
        assert_eq!(ix.after("a", 0, 10), vec![7]);
        assert_eq!(ix.after("b", 0, 10), vec![6]);
        // A group staged again over the same numbers replaces the old entries.
        ix.push("b", 8);
        ix.push("b", 8);
        ix.push("b", 7);
        assert_eq!(ix.after("b", 0, 10), vec![6, 7]);
    }
}
