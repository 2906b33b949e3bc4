//! Memory per machine of the projections, without connections: folds the events of N machines
//! (registered by their first report, then reporting with one health check, as `nixfleet-agent`
//! does) into `State` with the control plane's allocator, and prints the process' RSS growth per
//! machine after the first report and once the health histories are full, and the snapshot size.
//!
//! `cargo run --release -p nixfleet-engine --example bench_projections -- [MACHINES] [ROUNDS]`
//! (default 100,000 machines, 32 rounds: a full health history).

use nixfleet_core::event::{Actor, CheckResult, Envelope, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, Seq, StorePath, Tag, Timestamp};
use nixfleet_core::State;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let mut state = State::default();
    let (mut seq, mut at) = (0u64, 1_764_000_000_000u64);
    let mut apply = |state: &mut State, actor: &Actor, event: Event| {
        seq += 1;
        at += 1;
        state.apply(&Envelope {
            seq: Seq(seq),
            at: Timestamp(at),
            actor: actor.clone(),
            event,
        });
    };
    let path = |i: u64| {
        StorePath::parse(&format!(
            "/nix/store/{:032}-nixos-system-host-{i:06}-25.11.20251124.abcdef0",
            i % 7
        ))
        .expect("store path")
    };
    let before = rss_bytes();
    let t = std::time::Instant::now();
    let mut after_first = 0;
    for round in 0..rounds.max(1) {
        for i in 0..n {
            let machine = MachineId::parse(&format!("host-{i:06}")).expect("machine id");
            let actor = Actor::Machine(machine.clone());
            if round == 0 {
                apply(
                    &mut state,
                    &actor,
                    Event::MachineRegistered {
                        machine: machine.clone(),
                        lifecycle: Lifecycle::Active,
                        tags: vec![Tag::parse("web").expect("tag")],
                        auto: true,
                    },
                );
            }
            apply(
                &mut state,
                &actor,
                Event::ReportReceived {
                    machine: machine.clone(),
                    generation: Some(path(i)),
                    success: true,
                    message: "up-to-date".into(),
                    agent_version: "0.2.0".into(),
                    uptime_secs: 3600 + round * 60,
                    dry_run: false,
                    rolled_back_from: None,
                },
            );
            apply(
                &mut state,
                &actor,
                Event::HealthMeasured {
                    machine: machine.clone(),
                    measured_at: Timestamp(1_764_000_000_000 + round),
                },
            );
            apply(
                &mut state,
                &actor,
                Event::HealthReported {
                    machine,
                    generation: Some(path(i)),
                    results: vec![CheckResult {
                        name: "http".into(),
                        passed: true,
                        // Durations vary, as measured ones do: only the texts repeat.
                        duration_ms: 5 + (i + round) % 20,
                        message: String::new(),
                    }],
                    all_passed: true,
                },
            );
        }
        if round == 0 {
            after_first = rss_bytes();
        }
    }
    let after = rss_bytes();
    let elapsed = t.elapsed();
    let snap = bincode::serde::encode_to_vec(&state, bincode::config::standard())
        .expect("encode")
        .len();
    println!(
        "{n} machines, {rounds} reports each with one health check ({} events applied in {:.2} s)",
        seq,
        elapsed.as_secs_f64()
    );
    println!(
        "RSS: {:.1} MiB before, {:.1} MiB after the first report, {:.1} MiB after {rounds}",
        before as f64 / 1048576.0,
        after_first as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "per machine: {:.0} B after its first report, {:.0} B with {} health results kept",
        (after_first - before) as f64 / n as f64,
        (after - before) as f64 / n as f64,
        state.machines.values().next().map_or(0, |m| m.health.len())
    );
    println!(
        "snapshot (the projections encoded): {:.1} MiB, {:.0} B per machine",
        snap as f64 / 1048576.0,
        snap as f64 / n as f64
    );
}
