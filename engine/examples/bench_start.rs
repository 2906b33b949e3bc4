//! Start-up time on a large log, with and without a projection snapshot (docs/benchmarks.md).
//! Run: `cargo run --release -p nixfleet-engine --example bench_start [-- EVENTS]` (default
//! 10,000,000; `NIXFLEET_BENCH_DIR=DIR` puts the temporary log under DIR).
//!
//! Writes a log of 10,000 machines' reports and health results, then measures: a start without
//! snapshot (verify and replay everything); a start from a snapshot at the head; a start from a
//! snapshot 100,000 events behind the head (the control plane writes one every 100,000 events);
//! the background verification of the records under the snapshot; and checks that each start
//! gives the projections of a full replay (deleting the snapshot changes nothing but the time).
#![allow(clippy::unwrap_used)]

mod common;

use nixfleet_core::event::Actor;
use nixfleet_core::ids::{MachineId, StorePath, Timestamp};
use nixfleet_engine::engine::{Engine, SystemClock};
use nixfleet_engine::log::{EventLog, SledLog};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MACHINES: u64 = 10_000;

/// Appends reports and health results of the machines until the log holds `until` records.
fn write(log: &SledLog, until: u64) {
    let mut i = log.last_seq().0;
    let mut batch = Vec::with_capacity(2000);
    while i < until {
        batch.clear();
        for _ in 0..1000 {
            let m = MachineId::parse(&format!("m-{:05}", i % MACHINES)).unwrap();
            let g = Some(
                StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{m}", i % 7)).unwrap(),
            );
            batch.push(common::report(m.clone(), g.clone(), i));
            batch.push(common::health(m, g, "http", 2));
            i += 2;
        }
        log.stage(Timestamp(i), &Actor::System, &batch).unwrap();
    }
    log.wait_durable(log.last_seq()).unwrap();
}

fn open(dir: &Path) -> (Engine, f64) {
    let t = Instant::now();
    let e = Engine::open(dir, Arc::new(SystemClock)).unwrap();
    (e, t.elapsed().as_secs_f64())
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let base = std::env::var("NIXFLEET_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(&base).unwrap();
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench_start: {n} events, {MACHINES} machines; load average {}",
        loadavg().trim()
    );
    let start = Instant::now();
    {
        let log = SledLog::open(&dir.path().join("log"), |_| {}).unwrap();
        let reg = common::registered(
            (0..MACHINES).map(|m| MachineId::parse(&format!("m-{m:05}")).unwrap()),
            true,
        );
        log.stage(Timestamp(0), &Actor::System, &reg).unwrap();
        write(&log, n);
        println!(
            "wrote {} events in {:.0} s; log {:.0} MiB on disk",
            log.last_seq().0,
            start.elapsed().as_secs_f64(),
            common::du(&dir.path().join("log")) as f64 / 1048576.0
        );
        // The writer outruns the archiver (about 100,000 events/s against a control plane's few
        // thousand); let it catch up, as it does under any real load, so that what follows
        // measures starts, not archiving.
        let t = Instant::now();
        let archived = log.archive_due().unwrap();
        println!(
            "archive caught up in {:.1} s: {archived} records in segments, {} in sled",
            t.elapsed().as_secs_f64(),
            log.last_seq().0 - archived
        );
        log.close().unwrap();
    }
    let snap = nixfleet_engine::snapshot::path(dir.path());

    let (e, full) = open(dir.path());
    let seq = e.log().last_seq().0;
    let replayed = e.read(|s| s.clone());
    println!("start without snapshot (verify and replay {seq} events): {full:.2} s");
    let t = Instant::now();
    e.write_snapshot(dir.path()).unwrap();
    println!(
        "snapshot written in {:.2} s, {:.1} MiB",
        t.elapsed().as_secs_f64(),
        common::du(&snap) as f64 / 1048576.0
    );
    drop(e);

    let (e, head) = open(dir.path());
    assert_eq!(e.read(|s| s.clone()), replayed, "snapshot start == replay");
    println!("start with a snapshot at the head: {head:.2} s");
    drop(e);

    {
        let log = SledLog::open_from(&dir.path().join("log"), None, |_| {}).unwrap();
        write(&log, seq + 100_000);
        log.close().unwrap();
    }
    let (e, behind) = open(dir.path());
    let tail = e.read(|s| s.last_seq.0) - seq;
    println!("start with a snapshot {tail} events behind the head: {behind:.2} s");
    let t = Instant::now();
    let verified = e.verify_history().unwrap();
    println!(
        "background verification of the {verified} records under the snapshot: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let from_snapshot = e.read(|s| s.clone());
    drop(e);
    std::fs::remove_file(&snap).unwrap();
    let (e, full) = open(dir.path());
    assert_eq!(
        e.read(|s| s.clone()),
        from_snapshot,
        "deleting the snapshot changes nothing but start-up time"
    );
    println!("start after deleting the snapshot: {full:.2} s (same projections)");
    println!("load average {}", loadavg().trim());
}
