//! The event log on PostgreSQL, shared by several control planes.
//!
//! The records are the embedded log's, byte for byte (`nixfleet_eventlog::log::encode_record`,
//! the same SHA-256 chain), one row each; see `schema.rs` for the tables. What PostgreSQL adds is
//! that several control planes append to one log, and the log survives the loss of a machine
//! through the database's own replication (a synchronous standby loses no committed row).
//!
//! Writes come in *turns* ([`EventLog::begin_write`]): a turn is one transaction that first locks
//! the head row (`SELECT … FOR UPDATE`), so turns of every control plane are serialized, then
//! hands the caller the records other control planes appended since it last looked, so its
//! decisions are made on projections that are up to date. Everything staged during the turn is
//! inserted and the head moved in one statement that is conditional on the head still naming the
//! record the turn started from, and, for executor decisions, on this control plane still
//! holding the executor's lease with the turn's epoch (the fencing token). The committer thread
//! commits a turn about a millisecond after it opened (group commit: every command and executor
//! decision staged meanwhile goes in the same transaction); `wait_durable` returns once the
//! commit returned, i.e. once the database made it durable (and, with synchronous replication,
//! replicated). A commit that fails refuses the whole turn: its waiters get an error (the API
//! answers 503), and the projections, which already hold the turn's records, are rebuilt from
//! the database ([`Follow::Reset`]).
//!
//! A stage outside a turn (the committer closed it meanwhile) opens a new one; if another
//! control plane appended in between, it is refused with [`LogError::Conflict`] so the caller
//! catches up and decides again, never appending on top of a head its decision did not see.

mod lease;
mod schema;
mod tls;
mod writer;

use nixfleet_core::{Actor, Event, Seq, Timestamp};
use nixfleet_eventlog::log::{
    decode_record, hash_bytes, Checkpoint, EventLog, Follow, LogError, Record,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a control plane uses the shared log.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// This control plane's name, recorded with every record it appends and in the lease.
    pub cp_id: String,
    /// How long the executor's lease lasts without renewal; it is renewed every third of it, and
    /// another control plane takes it over once it expired.
    pub lease: Duration,
    /// How long a turn gathers further stages before the committer commits it.
    pub commit_delay: Duration,
    /// Whether to take part in the executor's lease (the CLI's copy tool does not).
    pub executor: bool,
}

impl PgOptions {
    /// Defaults for a control plane named `cp_id`: a 6 s lease, 1 ms commit delay.
    pub fn new(cp_id: impl Into<String>) -> PgOptions {
        PgOptions {
            cp_id: cp_id.into(),
            lease: Duration::from_secs(6),
            commit_delay: Duration::from_millis(1),
            executor: true,
        }
    }
}

/// What the threads share.
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) opts: PgOptions,
    pub(crate) writer: Mutex<writer::Writer>,
    /// Signals the committer that a turn opened, and waiters that a commit ended.
    pub(crate) cond: Condvar,
    pub(crate) durable: tokio::sync::watch::Sender<u64>,
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    /// The lease's epoch this control plane holds (0: none) and until when it may act on it.
    pub(crate) lease: Mutex<(u64, Option<Instant>)>,
    pub(crate) stop: AtomicBool,
    pub(crate) staged: AtomicU64,
    pub(crate) committed: AtomicU64,
}

impl Shared {
    /// The lease epoch held now, if any.
    pub(crate) fn held_epoch(&self) -> Option<u64> {
        let (epoch, until) = *self.lease.lock().expect("lease lock");
        (epoch != 0 && until.is_some_and(|u| Instant::now() < u)).then_some(epoch)
    }
    pub(crate) fn bump_changes(&self) {
        self.changes.send_modify(|c| *c = c.wrapping_add(1));
    }
}

/// The event log in a PostgreSQL database.
pub struct PgLog {
    shared: Arc<Shared>,
    reader: Mutex<Option<postgres::Client>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Runs `f`, which uses the synchronous PostgreSQL client, off any tokio runtime: that client
/// drives its own small runtime, which cannot start inside another one, so a call from a runtime
/// thread (an API handler's read) runs on a scoped thread of its own. The write path calls in
/// from `block_in_place` or plain threads, but a handle may still be set there, so the check is
/// the conservative one.
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Connects to `url` (a libpq connection string or `postgres://` URL).
/// TLS is used when the string asks for it (`sslmode=require`, `verify-ca`, `verify-full`, with
/// `sslrootcert=FILE`; see [`tls`]).
pub(crate) fn connect(url: &str) -> Result<postgres::Client, LogError> {
    let (url, tls) = tls::split(url)?;
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| LogError::Io(format!("invalid PostgreSQL connection string: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(3));
    }
    config.keepalives_idle(Duration::from_secs(10));
    let mut client = match &tls {
        tls::Tls::Off => config.connect(postgres::NoTls),
        tls::Tls::Verify { root_cert } => config.connect(tls::connector(root_cert.as_deref())?),
    }
    .map_err(|e| match &tls {
        tls::Tls::Off => unavailable("connecting to PostgreSQL", &e),
        tls::Tls::Verify { root_cert } => unavailable(
            &format!(
                "connecting to PostgreSQL over TLS (server certificate checked against {})",
                root_cert.as_deref().unwrap_or("the webpki-roots CAs")
            ),
            &e,
        ),
    })?;
    // A turn left open by a paused or partitioned process must not hold the head's lock for
    // long: the server ends it (and so refuses its appends) after 3 s of silence.
    client
        .batch_execute(
            "SET idle_in_transaction_session_timeout = '3s'; SET statement_timeout = '20s';",
        )
        .map_err(|e| unavailable("setting up the session", &e))?;
    Ok(client)
}

pub(crate) fn unavailable(what: &str, e: &postgres::Error) -> LogError {
    match e.as_db_error() {
        Some(db) => LogError::Unavailable(format!("PostgreSQL: {what}: {}", db.message())),
        // The client's own text names only the kind ("error performing TLS handshake"); the
        // cause says what to fix (e.g. "invalid peer certificate: UnknownIssuer").
        None => match std::error::Error::source(e) {
            Some(cause) => LogError::Unavailable(format!("PostgreSQL: {what}: {e}: {cause}")),
            None => LogError::Unavailable(format!("PostgreSQL: {what}: {e}")),
        },
    }
}

/// Decodes a row's record and checks it against its hash column and the chain.
pub(crate) fn check_row(
    seq: i64,
    hash: &[u8],
    bytes: &[u8],
    prev: &[u8; 32],
) -> Result<Record, LogError> {
    let seq = seq as u64;
    let corrupt = |why: String| LogError::Corrupt { seq, why };
    let rec = decode_record(bytes).map_err(corrupt)?;
    if rec.seq.0 != seq {
        return Err(corrupt(format!("row {seq} holds record {}", rec.seq.0)));
    }
    if hash_bytes(bytes).as_slice() != hash {
        return Err(corrupt("the record does not match its hash".into()));
    }
    if &rec.prev_hash != prev {
        return Err(corrupt("hash chain broken".into()));
    }
    Ok(rec)
}

impl PgLog {
    /// Connects, creates the tables when missing, and starts the committer and (with
    /// `options.executor`) the lease and notification thread. The log starts unread: the caller
    /// replays it with [`EventLog::follow`] before deciding anything.
    pub fn open(url: &str, options: PgOptions) -> Result<PgLog, LogError> {
        let client = off_runtime(|| {
            let mut client = connect(url)?;
            schema::ensure(&mut client)?;
            Ok::<_, LogError>(client)
        })?;
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            opts: options,
            writer: Mutex::new(writer::Writer::new(client)),
            cond: Condvar::new(),
            durable: tokio::sync::watch::channel(0).0,
            changes: tokio::sync::watch::channel(0).0,
            lease: Mutex::new((0, None)),
            stop: AtomicBool::new(false),
            staged: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("pglog-commit".into())
                .spawn(move || writer::run_committer(&s))
                .map_err(|e| LogError::Io(format!("starting the committer: {e}")))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("pglog-lease".into())
                .spawn(move || lease::run(&s))
                .map_err(|e| LogError::Io(format!("starting the lease thread: {e}")))?,
        );
        Ok(PgLog {
            shared,
            reader: Mutex::new(None),
            threads: Mutex::new(threads),
        })
    }

    /// Replays every committed record into `apply` (the start of a control plane).
    pub fn replay(&self, apply: &mut dyn FnMut(Record)) -> Result<Seq, LogError> {
        self.follow(&mut |f| {
            if let Follow::Record(r) = f {
                apply(r)
            }
        })?;
        Ok(self.last_seq())
    }

    /// The lease epoch this control plane holds now, if any.
    pub fn lease_epoch(&self) -> Option<u64> {
        self.shared.held_epoch()
    }

    /// Runs `f` on the reading connection, connecting again once after a failure.
    fn with_reader<R: Send>(
        &self,
        f: impl Fn(&mut postgres::Client) -> Result<R, postgres::Error> + Send + Sync,
    ) -> Result<R, LogError> {
        off_runtime(|| self.with_reader_here(f))
    }

    fn with_reader_here<R>(
        &self,
        f: impl Fn(&mut postgres::Client) -> Result<R, postgres::Error> + Send + Sync,
    ) -> Result<R, LogError> {
        let mut guard = self.reader.lock().expect("reader lock");
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(connect(&self.shared.url)?);
            }
            let client = guard.as_mut().expect("connected above");
            match f(client) {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 && client.is_closed() => {
                    tracing::debug!(error = %e, "reconnecting the log's reader");
                    *guard = None;
                }
                Err(e) => {
                    if client.is_closed() {
                        *guard = None;
                    }
                    return Err(unavailable("reading the log", &e));
                }
            }
        }
        Err(LogError::Unavailable("PostgreSQL: reading the log".into()))
    }

    fn rows_to_records(rows: Vec<postgres::Row>) -> Result<Vec<Record>, LogError> {
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let bytes: &[u8] = row.get(1);
                decode_record(bytes).map_err(|why| LogError::Corrupt {
                    seq: seq as u64,
                    why,
                })
            })
            .collect()
    }

    /// Stops the threads after the open turn, if any, is committed.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cond.notify_all();
        for t in self.threads.lock().expect("threads lock").drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PgLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventLog for PgLog {
    fn stage(&self, at: Timestamp, actor: &Actor, events: &[Event]) -> Result<Seq, LogError> {
        writer::stage(&self.shared, at, actor, events)
    }

    fn wait_durable(&self, seq: Seq) -> Result<(), LogError> {
        writer::wait_durable(&self.shared, seq)
    }

    fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self.with_reader(|c| {
            c.query(
                "SELECT seq, record FROM nixfleet_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(after.0 as i64), &limit],
            )
        })?;
        Self::rows_to_records(rows)
    }

    fn read_stream(&self, stream: &str, after: Seq, limit: usize) -> Result<Vec<Record>, LogError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self.with_reader(|c| {
            c.query(
                "SELECT seq, record FROM nixfleet_log WHERE stream = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
                &[&stream, &(after.0 as i64), &limit],
            )
        })?;
        Self::rows_to_records(rows)
    }

    fn record_hash(&self, seq: Seq) -> Result<Option<[u8; 32]>, LogError> {
        let row = self.with_reader(|c| {
            c.query_opt(
                "SELECT hash FROM nixfleet_log WHERE seq = $1",
                &[&(seq.0 as i64)],
            )
        })?;
        Ok(row.and_then(|r| {
            let h: &[u8] = r.get(0);
            h.try_into().ok()
        }))
    }

    fn verify_prefix(&self, checkpoint: Checkpoint) -> Result<(), LogError> {
        let mut prev = [0u8; 32];
        let mut after = 0u64;
        while after < checkpoint.seq {
            let rows = self.with_reader(|c| {
                c.query(
                    "SELECT seq, hash, record FROM nixfleet_log WHERE seq > $1 AND seq <= $2 \
                     ORDER BY seq LIMIT 10000",
                    &[&(after as i64), &(checkpoint.seq as i64)],
                )
            })?;
            if rows.is_empty() {
                return Err(LogError::Corrupt {
                    seq: after + 1,
                    why: format!("record {} is missing", after + 1),
                });
            }
            for row in rows {
                let seq: i64 = row.get(0);
                if seq as u64 != after + 1 {
                    return Err(LogError::Corrupt {
                        seq: after + 1,
                        why: format!("record {} is missing", after + 1),
                    });
                }
                check_row(seq, row.get(1), row.get(2), &prev)?;
                prev = hash_bytes(row.get(2));
                after = seq as u64;
            }
        }
        if prev != checkpoint.hash {
            return Err(LogError::CheckpointMismatch {
                seq: checkpoint.seq,
            });
        }
        Ok(())
    }

    fn last_seq(&self) -> Seq {
        Seq(self.shared.staged.load(Ordering::SeqCst))
    }

    fn durable_seq(&self) -> Seq {
        Seq(self.shared.committed.load(Ordering::SeqCst))
    }

    fn import(&self, records: &[Record]) -> Result<Seq, LogError> {
        writer::import(&self.shared, records)
    }

    fn begin_write(&self, apply: &mut dyn FnMut(Follow)) -> Result<bool, LogError> {
        writer::begin_write(&self.shared, apply)
    }

    fn follow(&self, apply: &mut dyn FnMut(Follow)) -> Result<bool, LogError> {
        writer::follow(&self.shared, apply)
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.changes.subscribe())
    }
}
