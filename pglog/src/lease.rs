//! The executor's lease and the notifications of other control planes' appends.
//!
//! One thread per control plane, on its own connection: it LISTENs on `nixfleet_log` (every
//! commit notifies it, with the appending control plane's name), and every third of the lease it
//! renews the lease if it holds it or takes it over if it expired, by the database's clock. The
//! epoch goes up whenever the lease changes hands or lapsed, so a control plane that was paused
//! past its lease comes back with an epoch no append accepts. It counts as the holder only until
//! two thirds of the lease after the renewal's start, by its own monotonic clock, so it stops
//! deciding before anyone else may start.

use crate::{connect, Shared};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const TAKE: &str = "UPDATE nixfleet_lease
    SET holder = $1,
        epoch = CASE WHEN holder = $1 AND expires > clock_timestamp() THEN epoch ELSE epoch + 1 END,
        expires = clock_timestamp() + make_interval(secs => $2)
    WHERE id = 1 AND (holder = $1 OR expires <= clock_timestamp())
    RETURNING epoch";

fn renew(client: &mut Client, s: &Shared) -> Result<Option<u64>, postgres::Error> {
    let secs = s.opts.lease.as_secs_f64();
    let row = client.query_opt(TAKE, &[&s.opts.cp_id, &secs])?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

fn set_lease(s: &Shared, epoch: Option<u64>, started: Instant) {
    let mut l = s.lease.lock().expect("lease lock");
    let before = l.0;
    *l = match epoch {
        Some(e) => (e, Some(started + s.opts.lease * 2 / 3)),
        None => (0, None),
    };
    let after = l.0;
    drop(l);
    if before != after {
        match epoch {
            Some(e) => tracing::info!(epoch = e, "this control plane now runs the executor"),
            None if before != 0 => {
                tracing::warn!(
                    epoch = before,
                    "this control plane lost the executor's lease"
                )
            }
            None => {}
        }
        s.bump_changes();
    }
}

/// Runs until the log is closed.
pub(crate) fn run(s: &Shared) {
    let period = s.opts.lease / 3;
    let mut client: Option<Client> = None;
    while !s.stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(&s.url)
                .ok()
                .and_then(|mut c| c.batch_execute("LISTEN nixfleet_log").ok().map(|()| c));
        }
        let Some(c) = client.as_mut() else {
            set_lease(s, None, Instant::now());
            s.bump_changes();
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        let started = Instant::now();
        if s.opts.executor {
            match renew(c, s) {
                Ok(epoch) => set_lease(s, epoch, started),
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the executor's lease");
                    client = None;
                    continue;
                }
            }
        }
        // Wait for other control planes' appends until the next renewal.
        let deadline = started + period;
        let mut others = false;
        let mut lost = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || s.stop.load(Ordering::SeqCst) {
                break;
            }
            let next = {
                let mut notes = c.notifications();
                let mut it = notes.timeout_iter(left.min(Duration::from_millis(250)));
                it.next().map(|n| n.map(|n| n.payload() != s.opts.cp_id))
            };
            match next {
                Ok(Some(true)) => {
                    others = true;
                    s.bump_changes();
                }
                Ok(Some(false)) => {}
                Ok(None) if !c.is_closed() => {}
                Ok(None) | Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            client = None;
        }
        if !others {
            // No notification: look anyway once a period (a notification can be lost with its
            // connection).
            s.bump_changes();
        }
    }
}
