//! The shared log's promises checked against a real PostgreSQL: the chain is the embedded log's,
//! two writers never append on top of a head they did not see, and executor decisions are fenced
//! by the lease's epoch.
#![allow(clippy::unwrap_used)]

use nixfleet_core::ids::KeyName;
use nixfleet_core::{Actor, Event, Seq, Timestamp};
use nixfleet_eventlog::log::{encode_record, hash_bytes, EventLog, Follow, LogError, MemoryLog};
use nixfleet_pglog::{PgLog, PgOptions};
use nixfleet_testkit::postgres::PgServer;
use std::time::{Duration, Instant};

fn key_event(i: u32) -> Event {
    Event::ApiKeyRevoked {
        name: KeyName::parse(&format!("k{i}")).unwrap(),
    }
}

fn open(pg: &PgServer, cp: &str, lease_ms: u64, delay_ms: u64) -> PgLog {
    let mut o = PgOptions::new(cp);
    o.lease = Duration::from_millis(lease_ms);
    o.commit_delay = Duration::from_millis(delay_ms);
    PgLog::open(&pg.url(), o).unwrap()
}

fn wait_leader(log: &PgLog) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = log.lease_epoch() {
            return e;
        }
        assert!(Instant::now() < deadline, "no lease taken");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn catch_up(log: &PgLog) -> u64 {
    let mut n = 0;
    log.follow(&mut |f| {
        if let Follow::Record(_) = f {
            n += 1
        }
    })
    .unwrap();
    n
}

#[test]
fn records_and_hashes_are_the_embedded_logs_and_writers_take_turns() {
    let pg = PgServer::start();
    let a = open(&pg, "a", 6000, 1);
    let b = open(&pg, "b", 6000, 1);
    let mem = MemoryLog::new();
    let at = Timestamp(1_700_000_000_000);
    // a appends, then b, which must catch up first: a stage on stale projections is refused.
    assert!(a.begin_write(&mut |_| {}).is_ok());
    let s = a
        .append(at, &Actor::System, &[key_event(1), key_event(2)])
        .unwrap();
    assert_eq!(s, Seq(2));
    mem.append(at, &Actor::System, &[key_event(1), key_event(2)])
        .unwrap();
    let err = b.append(at, &Actor::System, &[key_event(3)]).unwrap_err();
    assert!(
        matches!(err, LogError::Conflict),
        "stale writer appended: {err:?}"
    );
    let mut caught = Vec::new();
    b.begin_write(&mut |f| {
        if let Follow::Record(r) = f {
            caught.push(r.seq.0)
        }
    })
    .unwrap();
    assert_eq!(caught, vec![1, 2], "b catches up a's records in its turn");
    assert_eq!(
        b.append(at, &Actor::System, &[key_event(3)]).unwrap(),
        Seq(3)
    );
    mem.append(at, &Actor::System, &[key_event(3)]).unwrap();
    // Byte for byte the embedded log's records.
    let raw = mem.raw();
    for (i, bytes) in raw.iter().enumerate() {
        let seq = Seq(i as u64 + 1);
        assert_eq!(
            b.record_hash(seq).unwrap(),
            Some(hash_bytes(bytes)),
            "record {}",
            seq.0
        );
    }
    let r = b.read_after(Seq(0), 10).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        encode_record(r[2].seq, r[2].at, &r[2].actor, r[2].prev_hash, &r[2].event),
        raw[2]
    );
    let cps = pg.psql(
        "nixfleet",
        "SELECT string_agg(cp, ',' ORDER BY seq) FROM nixfleet_log",
    );
    assert_eq!(
        cps.trim(),
        "a,a,b",
        "every record says which control plane appended it"
    );
}

#[test]
fn an_executor_decision_is_refused_once_the_lease_moved_during_its_turn() {
    let pg = PgServer::start();
    // A long commit delay keeps the turn open while the lease moves, as a pause would.
    let a = open(&pg, "a", 60_000, 1500);
    let epoch = wait_leader(&a);
    assert!(a.begin_write(&mut |_| {}).unwrap(), "a holds the lease");
    let seq = a
        .stage(Timestamp(1), &Actor::Executor, &[key_event(1)])
        .unwrap();
    // Another control plane takes the lease over (as after a's lease lapsed in a pause).
    pg.psql(
        "nixfleet",
        "UPDATE nixfleet_lease SET holder = 'b', epoch = epoch + 1, expires = now() + interval '1 hour'",
    );
    let err = a.wait_durable(seq).unwrap_err();
    assert!(
        matches!(err, LogError::Unavailable(_)),
        "the fenced decision failed with {err:?}"
    );
    assert_eq!(
        pg.psql("nixfleet", "SELECT count(*) FROM nixfleet_log")
            .trim(),
        "0",
        "a decision of epoch {epoch} was appended after the lease moved to epoch {}",
        epoch + 1
    );
    // The projections that applied it are rebuilt: the next catch-up starts over.
    let mut reset = false;
    a.follow(&mut |f| reset |= matches!(f, Follow::Reset))
        .unwrap();
    assert!(
        reset,
        "the failed turn asks for its projections to be rebuilt"
    );
    // A command (not an executor decision) still goes in.
    assert!(
        !a.begin_write(&mut |_| {}).unwrap(),
        "a no longer holds the lease"
    );
    a.append(Timestamp(2), &Actor::System, &[key_event(2)])
        .unwrap();
    assert_eq!(catch_up(&a), 0);
}

#[test]
fn after_a_failed_commit_the_projections_start_over_only_once_the_database_answers() {
    let mut pg = PgServer::start();
    let a = open(&pg, "a", 60_000, 1500);
    a.append(Timestamp(1), &Actor::System, &[key_event(1)])
        .unwrap();
    assert!(a.begin_write(&mut |_| {}).is_ok());
    let seq = a
        .stage(Timestamp(2), &Actor::System, &[key_event(2)])
        .unwrap();
    // The database goes away with the turn open: its commit fails.
    pg.stop();
    assert!(
        a.wait_durable(seq).is_err(),
        "the commit cannot have succeeded"
    );
    // While the database cannot be reached, the projections are not told to start over (they
    // would serve nothing meanwhile).
    let mut told = Vec::new();
    assert!(a.follow(&mut |f| told.push(format!("{f:?}"))).is_err());
    assert!(told.is_empty(), "told {told:?} without a database");
    pg.start_again();
    let mut reset = false;
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a
        .follow(&mut |f| match f {
            Follow::Reset => reset = true,
            Follow::Record(r) => records.push(r.seq.0),
        })
        .is_err()
    {
        assert!(Instant::now() < deadline, "the database did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        reset,
        "the projections start over once the database answers"
    );
    assert_eq!(
        records,
        vec![1],
        "then get the committed record, not the failed one"
    );
}
