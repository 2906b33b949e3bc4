//! An in-memory log with the same encoding and hash chain as the sled log, for tests and the
//! deterministic simulation. Everything staged is durable at once.

use super::{decode_record, encode_record, hash_bytes, Checkpoint, EventLog, LogError, Record};
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use std::sync::Mutex;

/// A log in a `Vec`.
pub struct MemoryLog {
    inner: Mutex<Vec<Vec<u8>>>,
    durable: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog {
            inner: Mutex::new(Vec::new()),
            durable: tokio::sync::watch::channel(0).0,
        }
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
    /// The encoded records, e.g. to write a fixture.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.inner.lock().expect("memory log lock").clone()
    }
}

impl EventLog for MemoryLog {
    fn stage(&self, at: Timestamp, actor: &Actor, events: &[Event]) -> Result<Seq, LogError> {
        let mut v = self.inner.lock().expect("memory log lock");
        let mut prev = v.last().map(|b| hash_bytes(b)).unwrap_or([0; 32]);
        for e in events {
            let seq = Seq(v.len() as u64 + 1);
            let bytes = encode_record(seq, at, actor, prev, e);
            prev = hash_bytes(&bytes);
            v.push(bytes);
        }
        let last = v.len() as u64;
        self.durable.send_replace(last);
        Ok(Seq(last))
    }
    fn wait_durable(&self, _seq: Seq) -> Result<(), LogError> {
        Ok(())
    }
    fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }
    fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let v = self.inner.lock().expect("memory log lock");
        v.iter()
            .skip(after.0 as usize)
            .take(limit)
            .enumerate()
            .map(|(i, b)| {
                decode_record(b).map_err(|why| LogError::Corrupt {
                    seq: after.0 + i as u64 + 1,
                    why,
                })
            })
            .collect()
    }
    fn read_stream(&self, stream: &str, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let all = self.read_after(after, usize::MAX)?;
        Ok(all
            .into_iter()
            .filter(|r| r.stream == stream)
            .take(limit)
            .collect())
    }
    fn record_hash(&self, seq: Seq) -> Result<Option<[u8; 32]>, LogError> {
        let v = self.inner.lock().expect("memory log lock");
        Ok(seq
            .0
            .checked_sub(1)
            .and_then(|i| v.get(i as usize))
            .map(|b| hash_bytes(b)))
    }
    fn verify_prefix(&self, checkpoint: Checkpoint) -> Result<(), LogError> {
        let v = self.inner.lock().expect("memory log lock");
        let mut prev = [0u8; 32];
        for seq in 1..=checkpoint.seq {
            let corrupt = |why: String| LogError::Corrupt { seq, why };
            let bytes = v
                .get(seq as usize - 1)
                .ok_or_else(|| corrupt(format!("record {seq} is missing")))?;
            let rec = decode_record(bytes).map_err(corrupt)?;
            if rec.seq.0 != seq || rec.prev_hash != prev {
                return Err(corrupt("hash chain broken".into()));
            }
            prev = hash_bytes(bytes);
        }
        if prev != checkpoint.hash {
            return Err(LogError::Corrupt {
                seq: checkpoint.seq,
                why: "the chain does not lead to the checkpoint".into(),
            });
        }
        Ok(())
    }
    fn last_seq(&self) -> Seq {
        Seq(self.inner.lock().expect("memory log lock").len() as u64)
    }
    fn durable_seq(&self) -> Seq {
        self.last_seq()
    }
    fn import(&self, records: &[Record]) -> Result<Seq, LogError> {
        let mut v = self.inner.lock().expect("memory log lock");
        let mut staged = Vec::with_capacity(records.len());
        let mut prev = v.last().map(|b| hash_bytes(b)).unwrap_or([0; 32]);
        for r in records {
            super::sled_log::check_import(r, (v.len() + staged.len()) as u64, prev)?;
            let bytes = super::encode_stored(r);
            prev = hash_bytes(&bytes);
            staged.push(bytes);
        }
        v.extend(staged);
        let last = v.len() as u64;
        self.durable.send_replace(last);
        Ok(Seq(last))
    }
}
