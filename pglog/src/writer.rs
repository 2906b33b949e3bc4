//! Write turns, the committer and catching up (see the crate's documentation).

use crate::{check_row, connect, unavailable, Shared};
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use nixfleet_eventlog::log::{encode_record, hash_bytes, Follow, LogError, Record};
use postgres::{Client, SimpleQueryMessage, Statement};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A record's sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: [u8; 32],
}

impl Head {
    const ZERO: Head = Head {
        seq: 0,
        hash: [0; 32],
    };
}

/// An open transaction that holds the head row's lock.
struct Turn {
    /// The lease's epoch read at the turn's start (recorded with its records).
    epoch: u64,
    /// Whether this control plane holds the lease with that epoch.
    leader: bool,
    /// The database's head when the turn started.
    head: Head,
    opened: Instant,
}

/// A staged record of the open turn.
struct Pending {
    seq: u64,
    stream: String,
    hash: [u8; 32],
    bytes: Vec<u8>,
    executor: bool,
}

/// The writing connection and what this process knows of the log.
pub(crate) struct Writer {
    client: Option<Client>,
    insert: Option<Statement>,
    turn: Option<Turn>,
    pending: Vec<Pending>,
    /// The last record staged or seen.
    last: Head,
    /// The last record known committed.
    committed: Head,
    /// The projections hold records whose commit failed: start them over.
    reset: bool,
    /// Failed commits so far.
    failures: u64,
    /// Whether the last failure happened with the COMMIT on the way (its outcome is unknown).
    uncertain: bool,
}

impl Writer {
    pub(crate) fn new(client: Client) -> Writer {
        Writer {
            client: Some(client),
            insert: None,
            turn: None,
            pending: Vec::new(),
            last: Head::ZERO,
            committed: Head::ZERO,
            reset: false,
            failures: 0,
            uncertain: false,
        }
    }

    fn client(&mut self, url: &str) -> Result<&mut Client, LogError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.insert = None;
            self.client = Some(connect(url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Forgets the connection (and with it any open transaction, which the server rolls back).
    fn drop_connection(&mut self) {
        self.client = None;
        self.insert = None;
        self.turn = None;
    }
}

const INSERT: &str = "WITH moved AS (
        UPDATE nixfleet_head SET seq = $1, hash = $2
        WHERE id = 1 AND seq = $3 AND ($4 = false OR EXISTS (
            SELECT 1 FROM nixfleet_lease
            WHERE id = 1 AND holder = $5 AND epoch = $6 AND expires > clock_timestamp()))
        RETURNING 1)
    INSERT INTO nixfleet_log (seq, stream, hash, record, cp, epoch)
    SELECT s, st, h, r, $5, $6
    FROM unnest($7::bigint[], $8::text[], $9::bytea[], $10::bytea[]) AS t(s, st, h, r)
    WHERE EXISTS (SELECT 1 FROM moved)";

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Takes a pending reset: this process's view of the log starts over from record 1. The
/// projections are told ([`Follow::Reset`]) only once the database answered the first read, so
/// while it cannot be reached they keep serving what they hold rather than nothing.
fn take_reset(w: &mut Writer, s: &Shared) -> bool {
    let reset = std::mem::take(&mut w.reset);
    if reset {
        w.last = Head::ZERO;
        w.committed = Head::ZERO;
        s.staged.store(0, Ordering::SeqCst);
    }
    reset
}

/// Opens a turn: BEGIN, lock the head, read the lease.
fn open_turn(w: &mut Writer, s: &Shared) -> Result<(), LogError> {
    let cp = s.opts.cp_id.clone();
    let client = w.client(&s.url)?;
    let msgs = match client.simple_query(
        "BEGIN; \
         SELECT seq, encode(hash, 'hex') FROM nixfleet_head WHERE id = 1 FOR UPDATE; \
         SELECT holder, epoch, (expires > clock_timestamp())::text FROM nixfleet_lease WHERE id = 1",
    ) {
        Ok(m) => m,
        Err(e) => {
            w.drop_connection();
            return Err(unavailable("starting a write", &e));
        }
    };
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let parsed = (|| {
        let head = rows.first()?;
        let lease = rows.get(1)?;
        let head = Head {
            seq: head.get(0)?.parse().ok()?,
            hash: parse_hash(head.get(1)?)?,
        };
        let holder = lease.get(0)?;
        let epoch: u64 = lease.get(1)?.parse().ok()?;
        let valid = lease.get(2)? == "true";
        Some((head, holder == cp && valid, epoch))
    })();
    let Some((head, holds, epoch)) = parsed else {
        w.drop_connection();
        return Err(LogError::Io(
            "PostgreSQL: the head or lease row is missing or malformed".into(),
        ));
    };
    if head.seq < w.committed.seq || (head.seq == w.committed.seq && head != w.committed) {
        w.drop_connection();
        return Err(LogError::Corrupt {
            seq: head.seq + 1,
            why: format!(
                "the database's log ends at record {}, but this control plane had seen record {} \
                 committed: committed records are gone (an older copy of the database, or a \
                 standby that was not synchronous)",
                head.seq, w.committed.seq
            ),
        });
    }
    let leader = holds && s.held_epoch() == Some(epoch);
    w.turn = Some(Turn {
        epoch,
        leader,
        head,
        opened: Instant::now(),
    });
    s.cond.notify_all();
    Ok(())
}

/// Reads committed records after `w.last` (up to `to`, inside the open turn, or all), checks
/// them and hands them to `apply`.
fn read_committed(
    w: &mut Writer,
    s: &Shared,
    to: Option<u64>,
    reset: &mut bool,
    apply: &mut dyn FnMut(Follow),
) -> Result<(), LogError> {
    let start_over = |reset: &mut bool, apply: &mut dyn FnMut(Follow)| {
        if std::mem::take(reset) {
            apply(Follow::Reset);
        }
    };
    loop {
        if to.is_some_and(|t| w.last.seq >= t) {
            start_over(reset, apply);
            return Ok(());
        }
        let after = w.last.seq as i64;
        let upto = to.map_or(i64::MAX, |t| t as i64);
        let wr = &mut *w;
        let fetched = crate::off_runtime(|| {
            let client = wr.client(&s.url)?;
            client
                .query(
                    "SELECT seq, hash, record FROM nixfleet_log WHERE seq > $1 AND seq <= $2 \
                     ORDER BY seq LIMIT 10000",
                    &[&after, &upto],
                )
                .map_err(|e| unavailable("reading the log", &e))
        });
        let rows = match fetched {
            Ok(r) => r,
            Err(e) => {
                w.drop_connection();
                return Err(e);
            }
        };
        start_over(reset, apply);
        if rows.is_empty() {
            return match to {
                Some(t) => Err(LogError::Corrupt {
                    seq: w.last.seq + 1,
                    why: format!("the head names record {t}, but the record is missing"),
                }),
                None => Ok(()),
            };
        }
        for row in rows {
            let seq: i64 = row.get(0);
            if seq as u64 != w.last.seq + 1 {
                return Err(LogError::Corrupt {
                    seq: w.last.seq + 1,
                    why: format!("record {} is missing", w.last.seq + 1),
                });
            }
            let bytes: &[u8] = row.get(2);
            let rec = check_row(seq, row.get(1), bytes, &w.last.hash)?;
            w.last = Head {
                seq: seq as u64,
                hash: hash_bytes(bytes),
            };
            w.committed = w.last;
            apply(Follow::Record(rec));
        }
        s.staged.store(w.last.seq, Ordering::SeqCst);
        s.committed.store(w.last.seq, Ordering::SeqCst);
        s.durable.send_replace(w.last.seq);
    }
}

pub(crate) fn begin_write(s: &Shared, apply: &mut dyn FnMut(Follow)) -> Result<bool, LogError> {
    let mut w = s.writer.lock().expect("writer lock");
    let mut reset = take_reset(&mut w, s);
    if w.turn.is_none() {
        let wr = &mut *w;
        if let Err(e) = crate::off_runtime(|| open_turn(wr, s)) {
            w.reset |= reset;
            return Err(e);
        }
    }
    let (to, leader) = w
        .turn
        .as_ref()
        .map(|t| (t.head.seq, t.leader))
        .expect("a turn is open");
    if let Err(e) = read_committed(&mut w, s, Some(to), &mut reset, apply) {
        w.reset |= reset;
        w.drop_connection();
        return Err(e);
    }
    Ok(leader)
}

pub(crate) fn follow(s: &Shared, apply: &mut dyn FnMut(Follow)) -> Result<bool, LogError> {
    let mut w = s.writer.lock().expect("writer lock");
    if let Some(t) = &w.turn {
        // This process holds the head's lock: nothing can have been appended elsewhere.
        return Ok(t.leader);
    }
    let mut reset = take_reset(&mut w, s);
    if let Err(e) = read_committed(&mut w, s, None, &mut reset, apply) {
        w.reset |= reset;
        return Err(e);
    }
    Ok(s.held_epoch().is_some())
}

pub(crate) fn stage(
    s: &Shared,
    at: Timestamp,
    actor: &Actor,
    events: &[Event],
) -> Result<Seq, LogError> {
    let mut w = s.writer.lock().expect("writer lock");
    if events.is_empty() {
        return Ok(Seq(w.last.seq));
    }
    if w.reset {
        return Err(LogError::Conflict);
    }
    if w.turn.is_none() {
        {
            let w = &mut *w;
            crate::off_runtime(|| open_turn(w, s))?;
        }
    }
    let turn = w.turn.as_ref().expect("a turn is open");
    if turn.head.seq > w.committed.seq {
        // Another control plane appended after the projections this decision read.
        return Err(LogError::Conflict);
    }
    let executor = matches!(actor, Actor::Executor);
    if executor && !turn.leader {
        return Err(LogError::Unavailable(
            "this control plane does not hold the executor's lease".into(),
        ));
    }
    let mut head = w.last;
    for e in events {
        let seq = head.seq + 1;
        let bytes = encode_record(Seq(seq), at, actor, head.hash, e);
        head = Head {
            seq,
            hash: hash_bytes(&bytes),
        };
        w.pending.push(Pending {
            seq,
            stream: e.stream(),
            hash: head.hash,
            bytes,
            executor,
        });
    }
    w.last = head;
    s.staged.store(head.seq, Ordering::SeqCst);
    Ok(Seq(head.seq))
}

/// Inserts the pending records and commits the open turn. A failure of the COMMIT itself is
/// [`LogError::Uncertain`]: the server may have committed before the connection broke.
fn commit_turn(w: &mut Writer, s: &Shared) -> Result<(), LogError> {
    let turn = w.turn.take().expect("a turn is open");
    let pending = std::mem::take(&mut w.pending);
    let cp = s.opts.cp_id.as_str();
    let client = w
        .client
        .as_mut()
        .ok_or_else(|| LogError::Unavailable("PostgreSQL: connection lost".into()))?;
    if pending.is_empty() {
        return client
            .batch_execute("COMMIT")
            .map_err(|e| unavailable("committing", &e));
    }
    if w.insert.is_none() {
        w.insert = Some(
            client
                .prepare(INSERT)
                .map_err(|e| unavailable("preparing the append", &e))?,
        );
    }
    let stmt = w.insert.as_ref().expect("prepared above");
    let last = pending.last().map(|p| (p.seq, p.hash)).expect("not empty");
    let executor = pending.iter().any(|p| p.executor);
    let seqs: Vec<i64> = pending.iter().map(|p| p.seq as i64).collect();
    let streams: Vec<&str> = pending.iter().map(|p| p.stream.as_str()).collect();
    let hashes: Vec<&[u8]> = pending.iter().map(|p| p.hash.as_slice()).collect();
    let records: Vec<&[u8]> = pending.iter().map(|p| p.bytes.as_slice()).collect();
    let n = client
        .execute(
            stmt,
            &[
                &(last.0 as i64),
                &last.1.as_slice(),
                &(turn.head.seq as i64),
                &executor,
                &cp,
                &(turn.epoch as i64),
                &seqs,
                &streams,
                &hashes,
                &records,
            ],
        )
        .map_err(|e| unavailable("appending", &e))?;
    if n != pending.len() as u64 {
        return Err(LogError::Unavailable(
            "PostgreSQL refused the append: the head moved or the executor's lease was lost".into(),
        ));
    }
    let notify = format!("NOTIFY nixfleet_log, '{}'; COMMIT", cp.replace('\'', "''"));
    client
        .batch_execute(&notify)
        .map_err(|e| LogError::Uncertain(format!("PostgreSQL: committing: {e}")))
}

/// Commits the open turn and records the outcome.
fn commit(w: &mut Writer, s: &Shared) {
    let staged = !w.pending.is_empty();
    match commit_turn(w, s) {
        Ok(()) => {
            w.committed = w.last;
            s.committed.store(w.last.seq, Ordering::SeqCst);
            s.durable.send_replace(w.last.seq);
        }
        Err(e) => {
            tracing::error!(error = %e, "a write turn was not committed; its requests fail");
            w.drop_connection();
            w.failures += 1;
            w.uncertain = matches!(e, LogError::Uncertain(_));
            if staged {
                w.last = w.committed;
                w.reset = true;
                s.staged.store(w.last.seq, Ordering::SeqCst);
            }
            s.bump_changes();
        }
    }
    s.cond.notify_all();
}

/// The committer thread: commits each turn `commit_delay` after it opened.
pub(crate) fn run_committer(s: &Shared) {
    loop {
        let mut w = s.writer.lock().expect("writer lock");
        while w.turn.is_none() {
            if s.stop.load(Ordering::SeqCst) {
                return;
            }
            w = s
                .cond
                .wait_timeout(w, Duration::from_millis(100))
                .expect("writer lock")
                .0;
        }
        let opened = w.turn.as_ref().map(|t| t.opened).expect("a turn is open");
        drop(w);
        let wait = s.opts.commit_delay.saturating_sub(opened.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut w = s.writer.lock().expect("writer lock");
        if w.turn.is_some() {
            commit(&mut w, s);
        }
    }
}

pub(crate) fn wait_durable(s: &Shared, seq: Seq) -> Result<(), LogError> {
    let mut w = s.writer.lock().expect("writer lock");
    let failures = w.failures;
    loop {
        if w.failures != failures {
            return Err(if w.uncertain {
                LogError::Uncertain("the connection to PostgreSQL broke during the commit".into())
            } else {
                LogError::Unavailable(
                    "PostgreSQL: the commit failed; nothing of the request was recorded".into(),
                )
            });
        }
        if w.committed.seq >= seq.0 {
            return Ok(());
        }
        if w.turn.is_none() && w.last.seq < seq.0 {
            return Err(LogError::Unavailable(
                "PostgreSQL: the commit failed; nothing of the request was acknowledged".into(),
            ));
        }
        w = s
            .cond
            .wait_timeout(w, Duration::from_millis(200))
            .expect("writer lock")
            .0;
    }
}

/// Appends `records` as they are, in one transaction (see `EventLog::import`).
pub(crate) fn import(s: &Shared, records: &[Record]) -> Result<Seq, LogError> {
    let mut w = s.writer.lock().expect("writer lock");
    if records.is_empty() {
        return Ok(Seq(w.last.seq));
    }
    if w.turn.is_some() {
        return Err(LogError::Io("cannot import during a write turn".into()));
    }
    {
        let w = &mut *w;
        crate::off_runtime(|| open_turn(w, s))?;
    }
    let head = w.turn.as_ref().map(|t| t.head).expect("a turn is open");
    if head != w.last {
        w.drop_connection();
        return Err(LogError::Io(format!(
            "the database's log ends at record {} and this process has read up to {}: read it first",
            head.seq, w.last.seq
        )));
    }
    let mut last = w.last;
    for r in records {
        if r.seq.0 != last.seq + 1 || r.prev_hash != last.hash {
            w.pending.clear();
            w.drop_connection();
            return Err(LogError::Corrupt {
                seq: r.seq.0,
                why: format!(
                    "record {} does not follow record {} of the log it is imported into",
                    r.seq.0, last.seq
                ),
            });
        }
        let bytes = encode_record(r.seq, r.at, &r.actor, r.prev_hash, &r.event);
        last = Head {
            seq: r.seq.0,
            hash: hash_bytes(&bytes),
        };
        w.pending.push(Pending {
            seq: r.seq.0,
            stream: r.stream.clone(),
            hash: last.hash,
            bytes,
            executor: false,
        });
    }
    w.last = last;
    let failures = w.failures;
    {
        let w = &mut *w;
        crate::off_runtime(|| commit(w, s));
    }
    if w.failures != failures {
        w.reset = false;
        return Err(LogError::Unavailable(
            "PostgreSQL: the import's commit failed".into(),
        ));
    }
    Ok(Seq(w.committed.seq))
}
