//! Crash test: a child process appends to the sled log and is killed with SIGKILL at a random
//! moment; the parent reopens the log and checks that every acknowledged event survived and the
//! log is a gap-free, hash-chained prefix. The test re-executes its own binary as the child.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::{Actor, Event, Lifecycle};
use nixfleet_core::ids::{MachineId, Timestamp};
use nixfleet_engine::log::{EventLog, LogOptions, SledLog};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

const CHILD_ENV: &str = "NIXFLEET_CRASH_CHILD_DIR";
const ROUNDS: u64 = 20;

/// Small archive segments, so that kills also land while a segment is written or while its
/// records leave sled.
fn archiving() -> LogOptions {
    LogOptions::segments_of(64)
}

fn child(dir: &str) -> ! {
    let log =
        Arc::new(SledLog::open_with(std::path::Path::new(dir), None, archiving(), |_| {}).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (log, out) = (log.clone(), out.clone());
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let e = Event::MachineRegistered {
                        machine: MachineId::parse(&format!("m-{t}-{i}")).unwrap(),
                        lifecycle: Lifecycle::Active,
                        tags: vec![],
                        auto: false,
                    };
                    let seq = log.append(Timestamp(i), &Actor::System, &[e]).unwrap();
                    // Printed only after append returned: this event was acknowledged.
                    let mut o = out.lock().unwrap();
                    writeln!(o, "{}", seq.0).unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    std::process::exit(0)
}

#[test]
fn every_acknowledged_event_survives_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = nixfleet_core::plan::SplitMix64::new(
        std::env::var("NIXFLEET_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed),
    );
    let mut max_acked = 0u64;
    let mut archived = 0u64;
    for round in 1..=ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "every_acknowledged_event_survives_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it run for a random number of acknowledged appends, then kill it mid-flight.
        let target = 20 + rng.below(400) as u64;
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut acked_this_round = 0u64;
        let mut line = String::new();
        while acked_this_round < target {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Ok(seq) = line.trim().parse::<u64>() {
                max_acked = max_acked.max(seq);
                acked_this_round += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements printed before the kill but not yet read also count.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        for l in rest.lines() {
            if let Ok(seq) = l.trim().parse::<u64>() {
                max_acked = max_acked.max(seq);
            }
        }
        assert!(
            acked_this_round > 0,
            "round {round}: the child acknowledged nothing"
        );
        let mut seqs = Vec::new();
        let log = SledLog::open_with(dir.path(), None, archiving(), |r| seqs.push(r.seq.0))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let last = log.last_seq().0;
        assert!(
            last >= max_acked,
            "round {round}: acknowledged {max_acked} but only {last} recovered"
        );
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "round {round}: not a gap-free prefix"
        );
        archived = log.archived_seq();
        drop(log);
    }
    assert!(archived > 0, "the archive was never used");
    println!("crash test: {ROUNDS} rounds, {max_acked} acknowledged events, all recovered; {archived} archived");
}
