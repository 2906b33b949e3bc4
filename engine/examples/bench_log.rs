//! Benchmark of the event log: durable appends/s (1 and 64 appenders), replay speed, bytes per
//! report event. Run: `cargo run --release -p nixfleet-engine --example bench_log [-- EVENTS]`.
#![allow(clippy::unwrap_used)]

mod common;

use nixfleet_core::event::{Actor, Event};
use nixfleet_core::ids::{MachineId, Seq, StorePath, Timestamp};
use nixfleet_core::State;
use nixfleet_engine::log::{encode_record, EventLog, SledLog};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Machine `i % 1000` and the generation it runs.
fn machine(i: u64) -> (MachineId, Option<StorePath>) {
    let m = i % 1000;
    let machine = MachineId::parse(&format!("web-{m:04}")).unwrap();
    let path = StorePath::parse(&format!("/nix/store/{m:032}-nixos-system-web-{m:04}-24.05"));
    (machine, Some(path.unwrap()))
}

fn report(i: u64) -> Event {
    let (m, g) = machine(i);
    common::report(m, g, i)
}

fn health(i: u64) -> Event {
    let (m, g) = machine(i);
    common::health(m, g, "nginx", 3)
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    if let Ok(dir) = std::env::var("NIXFLEET_BENCH_REPLAY_DIR") {
        let start = Instant::now();
        let mut state = State::default();
        let log = SledLog::open(std::path::Path::new(&dir), |r| {
            state.apply(&r.into_envelope())
        })
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "replay of {dir}: {} events in {secs:.2}s = {:.0} events/s",
            log.last_seq().0,
            log.last_seq().0 as f64 / secs
        );
        return;
    }
    let replay_events: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var("NIXFLEET_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let one = encode_record(
        Seq(123_456),
        Timestamp(1_764_000_000_000),
        &Actor::Machine(MachineId::parse("web-0001").unwrap()),
        [7; 32],
        &report(1),
    );
    println!("bytes per report event (encoded record): {}", one.len());
    let h = encode_record(
        Seq(123_457),
        Timestamp(1_764_000_000_000),
        &Actor::Machine(MachineId::parse("web-0001").unwrap()),
        [7; 32],
        &health(1),
    );
    println!(
        "bytes per health event (encoded record, one check): {}",
        h.len()
    );

    for appenders in [1usize, 64] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let log = Arc::new(SledLog::open(dir.path(), |_| {}).unwrap());
        let per = if appenders == 1 { 2000 } else { 1000 };
        let start = Instant::now();
        let threads: Vec<_> = (0..appenders)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        log.append(
                            Timestamp(1),
                            &Actor::System,
                            &[report((t * per + i) as u64)],
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let n = appenders * per;
        println!("durable appends/s with {appenders:>2} appender(s): {:>9.0}  ({n} appends in {secs:.2}s)", n as f64 / secs);
        let (commits, flush, sync) = log.commit_stats();
        let c = commits.max(1) as f64;
        println!(
            "  {commits} group commits, {:.1} appends each; per commit: sled flush {:.0} µs + fdatasync {:.0} µs",
            n as f64 / c,
            flush.as_secs_f64() * 1e6 / c,
            sync.as_secs_f64() * 1e6 / c
        );
    }

    let dir = tempfile::tempdir_in(&base).unwrap();
    {
        let log = SledLog::open(dir.path(), |_| {}).unwrap();
        let machines = common::registered((0..1000).map(|i| machine(i).0), false);
        log.stage(Timestamp(0), &Actor::System, &machines).unwrap();
        let start = Instant::now();
        let mut i = 0u64;
        let mut batch = Vec::with_capacity(1000);
        let mut next_sample = 1_000_000;
        while i * 2 < replay_events - 1000 {
            if i * 2 >= next_sample {
                let (rss, _) = rss_mib();
                println!(
                    "  {:>9} events written: RSS {rss:.0} MiB, {:.0} MiB on disk, {} archived",
                    i * 2,
                    common::du(dir.path()) as f64 / 1048576.0,
                    log.archived_seq()
                );
                next_sample += 1_000_000;
            }
            batch.clear();
            for _ in 0..500 {
                batch.push(report(i));
                batch.push(health(i));
                i += 1;
            }
            log.stage(Timestamp(i), &Actor::System, &batch).unwrap();
        }
        let last = log.last_seq();
        log.wait_durable(last).unwrap();
        let (rss, hwm) = rss_mib();
        println!(
            "wrote {} events in {:.1}s; RSS {rss:.0} MiB (peak {hwm:.0} MiB); {} archived",
            last.0,
            start.elapsed().as_secs_f64(),
            log.archived_seq()
        );
        log.close().unwrap();
    }
    let archive = dir.path().join(nixfleet_engine::log::ARCHIVE_DIR);
    let archived = if archive.exists() {
        common::du(&archive)
    } else {
        0
    };
    println!(
        "log size on disk: {:.1} MiB ({:.1} MiB in archive segments, {:.1} MiB in sled)",
        common::du(dir.path()) as f64 / 1048576.0,
        archived as f64 / 1048576.0,
        (common::du(dir.path()) - archived) as f64 / 1048576.0
    );
    if std::env::var("NIXFLEET_BENCH_KEEP").is_ok() {
        println!("kept log at {}", dir.keep().display());
        return;
    }
    for label in [
        "first open after writing (includes sled's own recovery)",
        "warm reopen",
    ] {
        let start = Instant::now();
        let mut state = State::default();
        let log = SledLog::open(dir.path(), |r| state.apply(&r.into_envelope())).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let n = log.last_seq().0;
        println!("replay, {label}: verify chain + decode + rebuild all projections: {n} events in {secs:.2}s = {:.0} events/s", n as f64 / secs);
        assert_eq!(state.machines.len(), 1000);
    }
}
