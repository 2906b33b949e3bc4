//! The tables, created at open when missing.
//!
//! - `nixfleet_log`: one row per record: `seq` (the primary key, gap-free), `stream`, `hash`
//!   (SHA-256 of `record`), `record` (the record's bytes, exactly the sled log's storage form),
//!   `cp` and `epoch` (which control plane appended it, and the executor lease's epoch it saw).
//! - `nixfleet_head`: one row, the last record's sequence number and hash. Every write turn
//!   locks it (`FOR UPDATE`), so turns of all control planes are serialized, and a turn's
//!   append is conditional on it still naming what the turn's decisions saw.
//! - `nixfleet_lease`: one row, the executor's lease: holder, epoch (the fencing token) and
//!   expiry, by the database's clock.

use nixfleet_eventlog::log::LogError;
use postgres::Client;

/// Creates what is missing. Several control planes may start at once: an advisory lock makes
/// them take turns.
pub(crate) fn ensure(client: &mut Client) -> Result<(), LogError> {
    // Three statements, so the tables are committed before the lock is let go.
    let err = |e: postgres::Error| crate::unavailable("creating the tables", &e);
    client
        .batch_execute("SELECT pg_advisory_lock(7254011)")
        .map_err(err)?;
    let created = client.batch_execute(
        "CREATE TABLE IF NOT EXISTS nixfleet_log (
                 seq bigint PRIMARY KEY,
                 stream text NOT NULL,
                 hash bytea NOT NULL,
                 record bytea NOT NULL,
                 cp text NOT NULL,
                 epoch bigint NOT NULL
             );
             CREATE INDEX IF NOT EXISTS nixfleet_log_stream ON nixfleet_log (stream, seq);
             CREATE TABLE IF NOT EXISTS nixfleet_head (
                 id int PRIMARY KEY CHECK (id = 1),
                 seq bigint NOT NULL,
                 hash bytea NOT NULL
             );
             INSERT INTO nixfleet_head VALUES (1, 0, decode(repeat('00', 32), 'hex'))
                 ON CONFLICT DO NOTHING;
             CREATE TABLE IF NOT EXISTS nixfleet_lease (
                 id int PRIMARY KEY CHECK (id = 1),
                 holder text NOT NULL,
                 epoch bigint NOT NULL,
                 expires timestamptz NOT NULL
             );
             INSERT INTO nixfleet_lease VALUES (1, '', 0, 'epoch') ON CONFLICT DO NOTHING;",
    );
    client
        .batch_execute("SELECT pg_advisory_unlock(7254011)")
        .map_err(err)?;
    created.map_err(err)
}
