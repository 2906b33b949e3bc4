//! The append-only event log: the only source of truth of the control plane.
//!
//! Only this module knows sled. Records are encoded with bincode as a versioned envelope and
//! chained by SHA-256: each record carries the hash of the previous one, and a head entry written
//! atomically with every append carries the hash of the last, so tampering, gaps and truncation
//! are all detected when the log is opened or verified.
//!
//! Append steps (the durability contract):
//! 1. `stage` assigns the next sequence numbers, chains the hashes and inserts the group's
//!    records (one plain sled insert each, into the sled tree of the record's chunk; the stream
//!    index is in memory since issue 16). Nothing is durable yet, and the head does not name
//!    them yet.
//! 2. The flusher thread takes the last staged group's end, writes the head (its sequence number
//!    and hash), flushes sled and `fdatasync`s sled's data file: one sync for every group staged
//!    so far (group commit). The head only ever names the end of a group.
//! 3. `wait_durable(seq)` returns once the durable mark reaches `seq`.
//!
//! When [`EventLog::append`] (stage + wait) returns `Ok(seq)`, the events are on stable storage
//! (fdatasync) and will be replayed after a crash or a power loss. At open, records past the
//! head are dropped: they belong to a group that was never made durable, so never acknowledged,
//! and a crash may have kept any part of it; the log thus always ends at a group boundary. The
//! HTTP front end never answers 2xx, and never answers a read, before step 3 covers what it saw.

pub mod archive;
mod codec;
pub mod durable;
mod memory;
pub mod packed;
pub mod retention;
mod sled_log;

pub use codec::{
    decode_record, encode_record, encode_stored, hash_bytes, Record, StoredEnvelope,
    RECORD_BYTES_MAX, SCHEMA_VERSION,
};
pub use memory::MemoryLog;
pub use sled_log::{check_import, open_raw, Checkpoint, LogOptions, RawDb, SledLog, ARCHIVE_DIR};

use nixfleet_core::{Actor, Event, Seq, Timestamp};

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The storage failed.
    #[error("event log storage error: {0}")]
    Io(String),
    /// A record is damaged, missing or out of order; names the first bad sequence number.
    #[error("event log is corrupt at sequence {seq}: {why}")]
    Corrupt {
        /// The first bad record.
        seq: u64,
        /// What is wrong.
        why: String,
    },
    /// A snapshot's checkpoint does not match this log (the snapshot is stale or from elsewhere).
    #[error("the snapshot's checkpoint record {seq} is not in this log with the recorded hash")]
    CheckpointMismatch {
        /// The checkpoint's sequence number.
        seq: u64,
    },
    /// The log is shorter than its acknowledged mark: events that may have been acknowledged
    /// are gone (a lost or truncated data file, a restored older copy).
    #[error("the event log lost acknowledged events: it ends at record {present}, but record {acknowledged} was durable and may have been acknowledged ({mark}); restore the data directory from a backup, or remove that file to start anyway with the shorter log", mark = .mark.display())]
    Lost {
        /// The last record known to have been durable.
        acknowledged: u64,
        /// The last record present.
        present: u64,
        /// The mark file.
        mark: std::path::PathBuf,
    },
    /// The storage cannot be reached now (a shared log's database is down): nothing was
    /// appended, and a later attempt may succeed (the API answers 503).
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// A shared log's connection was lost while its commit was on the way: the records may or may
    /// not be in the log (the API answers 503 saying so, and clients do not resend a write).
    #[error("commit outcome unknown: {0}")]
    Uncertain(String),
    /// Another control plane appended to a shared log after this decision's projections were
    /// read: nothing was appended; catch up ([`EventLog::begin_write`]) and decide again.
    #[error("another control plane appended first; catch up and decide again")]
    Conflict,
    /// The log was closed after a fatal storage error.
    #[error("event log is closed after a storage failure: {0}")]
    Closed(String),
}

impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Io(e.to_string())
    }
}

/// An append-only, hash-chained, durable log of events.
pub trait EventLog: Send + Sync + 'static {
    /// Assigns sequence numbers to `events` and writes them atomically; not yet durable.
    /// Returns the sequence of the last one (or the current last sequence if `events` is empty).
    fn stage(&self, at: Timestamp, actor: &Actor, events: &[Event]) -> Result<Seq, LogError>;

    /// Blocks until every record up to `seq` is durable.
    fn wait_durable(&self, seq: Seq) -> Result<(), LogError>;

    /// A watch of the durable mark, for async waiters.
    fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Appends `events` durably.
    ///
    /// When this returns `Ok(seq)`, the events are fsynced and will be replayed after a crash.
    fn append(&self, at: Timestamp, actor: &Actor, events: &[Event]) -> Result<Seq, LogError> {
        let seq = self.stage(at, actor, events)?;
        self.wait_durable(seq)?;
        Ok(seq)
    }

    /// Records with sequence greater than `after`, at most `limit`, in order.
    fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Record>, LogError>;

    /// Records of one stream with sequence greater than `after`, at most `limit`, in order.
    fn read_stream(&self, stream: &str, after: Seq, limit: usize) -> Result<Vec<Record>, LogError>;

    /// SHA-256 of the stored record `seq`, if it exists.
    fn record_hash(&self, seq: Seq) -> Result<Option<[u8; 32]>, LogError>;

    /// Verifies records 1 to `checkpoint.seq` (the part a start from a snapshot did not read):
    /// they decode, none is missing, they chain, and the last is the checkpoint's record.
    fn verify_prefix(&self, checkpoint: Checkpoint) -> Result<(), LogError>;

    /// The last staged sequence number.
    fn last_seq(&self) -> Seq;

    /// The last durable sequence number.
    fn durable_seq(&self) -> Seq;

    /// Applies the retention policy to the sealed part of the log (see [`retention`]); returns
    /// how many records it removed. A log without an archive removes nothing.
    fn compact(&self, _retention: &retention::Retention, _now_ms: u64) -> Result<u64, LogError> {
        Ok(0)
    }

    /// The ranges retention removed, in order (each with the hash of its last record).
    fn compacted(&self) -> Result<Vec<packed::Compacted>, LogError> {
        Ok(Vec::new())
    }

    /// Appends `records` exactly as they are (same seq, at, actor, stream, prev_hash, event), for
    /// a backup, a restore or a copy between backends. Refuses a record whose seq is not the
    /// last one plus 1 or whose `prev_hash` is not the hash of the current last record, so the
    /// copy's hash chain is the source's, byte for byte.
    ///
    /// When this returns `Ok(seq)` (the last sequence number, or the current last if `records` is
    /// empty), the records are durable.
    fn import(&self, _records: &[Record]) -> Result<Seq, LogError> {
        Err(LogError::Io("this log cannot import".into()))
    }

    /// Starts a write turn for a log that several control planes share (PostgreSQL): takes the
    /// log's write lock (held until the turn's records are committed, so no other control plane
    /// appends in between), hands `apply` every record appended elsewhere since this process last
    /// saw the log (after a [`Follow::Reset`] when its projections hold records that were never
    /// committed and must be rebuilt), and says whether this control plane holds the executor's
    /// lease for the turn, i.e. may stage executor decisions. A log of one process has nothing to
    /// catch up and always holds the lease.
    fn begin_write(&self, _apply: &mut dyn FnMut(Follow)) -> Result<bool, LogError> {
        Ok(true)
    }

    /// Hands `apply` the records other control planes appended since this process last saw the
    /// log (see [`EventLog::begin_write`]), without taking the write lock. Returns whether this
    /// control plane holds the executor's lease.
    fn follow(&self, _apply: &mut dyn FnMut(Follow)) -> Result<bool, LogError> {
        Ok(true)
    }

    /// For a shared log: a watch that changes when another control plane may have appended, or
    /// when this one gained or lost the executor's lease. `None` for a log of one process.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// What catching up with a shared log hands the projections.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // `Reset` is rare; boxing every record would cost more.
pub enum Follow {
    /// Start over from empty projections: the ones held include records that were staged here
    /// but never committed (their commit failed), so they are rebuilt from record 1.
    Reset,
    /// The next committed record.
    Record(Record),
}
