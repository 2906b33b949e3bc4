//! Start-up time on a large log, with and without a projection snapshot.
//! Run: `cargo run --release -p nixfleet-engine --example bench_start [-- EVENTS]` (default 10,000,000).
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Actor, CheckResult, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, StorePath, Timestamp};
use nixfleet_engine::engine::{Engine, SystemClock};
use nixfleet_engine::log::{EventLog, SledLog};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let base = std::env::var("NIXFLEET_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(&base).unwrap();
    let machines = 10_000u64;
    let start = Instant::now();
    {
        let log = SledLog::open(&dir.path().join("log"), |_| {}).unwrap();
        let reg: Vec<Event> = (0..machines)
            .map(|m| Event::MachineRegistered { machine: MachineId::parse(&format!("m-{m:05}")).unwrap(), lifecycle: Lifecycle::Active, tags: vec![], auto: true })
            .collect();
        log.stage(Timestamp(0), &Actor::System, &reg).unwrap();
        let mut i = machines;
        let mut batch = Vec::with_capacity(2000);
        while i < n {
            batch.clear();
            for _ in 0..1000 {
                let m = MachineId::parse(&format!("m-{:05}", i % machines)).unwrap();
                let g = Some(StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{m}", i % 7)).unwrap());
                batch.push(Event::ReportReceived { machine: m.clone(), generation: g.clone(), success: true, message: "up-to-date".into(), agent_version: "0.2.0".into(), uptime_secs: i, dry_run: false, rolled_back_from: None });
                batch.push(Event::HealthReported { machine: m, generation: g, results: vec![CheckResult { name: "http".into(), passed: true, duration_ms: 2, message: String::new() }], all_passed: true });
                i += 2;
            }
            log.stage(Timestamp(i), &Actor::System, &batch).unwrap();
        }
        let last = log.last_seq();
        log.wait_durable(last).unwrap();
        println!("wrote {} events for {machines} machines in {:.0}s", last.0, start.elapsed().as_secs_f64());
        log.close().unwrap();
    }
    let t = Instant::now();
    let e = Engine::open(dir.path(), Arc::new(SystemClock)).unwrap();
    let full = t.elapsed().as_secs_f64();
    let seq = e.log().last_seq().0;
    println!("start without snapshot (verify + replay {seq} events): {full:.2}s");
    let t = Instant::now();
    e.write_snapshot(dir.path()).unwrap();
    let size = std::fs::metadata(nixfleet_engine::snapshot::path(dir.path())).unwrap().len();
    println!("snapshot written in {:.2}s, {:.1} MiB", t.elapsed().as_secs_f64(), size as f64 / 1048576.0);
    drop(e);
    let t = Instant::now();
    let e = Engine::open(dir.path(), Arc::new(SystemClock)).unwrap();
    println!("start with snapshot at the head: {:.2}s (ready: projections at {})", t.elapsed().as_secs_f64(), e.read(|s| s.last_seq.0));
}
