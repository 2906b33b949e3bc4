//! Durable reads: the real control plane runs under strace, which delays each `fdatasync` (the
//! sync of a group commit) by a second. While a report or a rollout's batch start is staged but
//! not yet synced, an operator's and an agent's reads must wait for the sync: an answer sent
//! earlier could show a desired generation or a report that a crash then takes back.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const SYNC_DELAY_US: u64 = 1_000_000;

fn under_slow_sync() -> Vec<String> {
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs strace: apt-get install strace"
    );
    [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fdatasync",
        "-e",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("inject=fdatasync:delay_exit={SYNC_DELAY_US}")])
    .collect()
}

/// Kills the control plane traced by strace `.0` when dropped (strace 6.1 has no
/// `--kill-on-exit`, and a killed strace leaves its tracee running).
struct Traced(u32);

impl Drop for Traced {
    fn drop(&mut self) {
        let children = format!("/proc/{0}/task/{0}/children", self.0);
        for pid in std::fs::read_to_string(children)
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
}

/// An answer (status, body) and how long it took.
type Timed = ((u16, String), Duration);

/// Runs `write` in a thread; 250 ms later (the write is staged, its sync still going on) runs
/// each read; returns each read's answer and how long it took, and the write's answer.
fn reads_during_a_write(
    write: impl FnOnce() -> (u16, String) + Send + 'static,
    reads: Vec<Box<dyn FnOnce() -> (u16, String) + Send>>,
) -> (Vec<Timed>, (u16, String)) {
    let writer = std::thread::spawn(write);
    std::thread::sleep(Duration::from_millis(250));
    let readers: Vec<_> = reads
        .into_iter()
        .map(|r| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let a = r();
                (a, t.elapsed())
            })
        })
        .collect();
    let answers = readers.into_iter().map(|h| h.join().unwrap()).collect();
    (answers, writer.join().unwrap())
}

#[test]
fn reads_wait_until_what_they_show_is_on_stable_storage() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &["web-01"]);
    let wrapper = under_slow_sync();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let cp = Cp::start_under(&wrapper, dir.path().join("data"), &pki, free_port(), &[]);
    let _traced = Traced(cp.child.id());
    let key = bootstrap(&cp);
    let (port, pki_dir) = (cp.port, pki.dir.clone());
    let agent = move || Client::new(port, &pki_dir, Some("web-01"), None);
    let pki_dir = pki.dir.clone();
    let op = {
        let key = key.clone();
        move || Client::new(port, &pki_dir, Some("operator"), Some(&key))
    };
    let (s, t) = agent().post(
        "/api/v1/machines/web-01/report",
        &report("web-01", &gen("web-01", 1), true, Some(true), &["web"]),
    );
    assert_eq!(s, 200, "{t}");

    // A report is staged; the operator's reads of the machine and of the log wait for its sync.
    let (a, o1, o2) = (agent.clone(), op.clone(), op.clone());
    let (answers, written) = reads_during_a_write(
        move || {
            a().post(
                "/api/v1/machines/web-01/report",
                &report("web-01", &gen("web-01", 2), true, Some(true), &["web"]),
            )
        },
        vec![
            Box::new(move || o1().get("/api/v1/machines/web-01")),
            Box::new(move || o2().get("/api/v1/events?after=0&stream=machine:web-01")),
        ],
    );
    assert_eq!(written.0, 200, "{}", written.1);
    let ((status, body), _) = &answers[0];
    assert_eq!(*status, 200, "{body}");
    assert!(
        body.contains(&gen("web-01", 2)),
        "the machine's read shows the staged report: {body}"
    );
    // The events API may also answer at once without it (it serves durable records only).
    for ((status, body), took) in answers
        .iter()
        .filter(|a| a.0 .1.contains(&gen("web-01", 2)))
    {
        assert_eq!(*status, 200, "{body}");
        assert!(
            *took >= Duration::from_micros(SYNC_DELAY_US / 2),
            "a read showing a staged report was answered after {took:?}, before its sync (about {} ms) was done",
            SYNC_DELAY_US / 1000
        );
    }

    // A rollout starts its batch; the agent's poll for its desired generation waits for the
    // sync too (else it could run a generation that a crash makes the log never have asked for).
    let entries = serde_json::json!({"entries": [{"hostname": "web-01", "store_path": gen("web-01", 3), "platform": "x86_64-linux"}]});
    let rel = op().json("POST", "/api/v1/releases", Some(&entries.to_string()), 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (o, a2, o3) = (op.clone(), agent.clone(), op.clone());
    let (answers, written) = reads_during_a_write(
        move || {
            o().post(
                "/api/v1/rollouts",
                &serde_json::json!({"release_id": rel, "strategy": "all_at_once", "target": {"hosts": ["web-01"]}, "health_timeout": 60}).to_string(),
            )
        },
        vec![
            Box::new(move || a2().get("/api/v1/machines/web-01/desired-generation")),
            Box::new(move || o3().get("/metrics")),
        ],
    );
    assert_eq!(written.0, 201, "{}", written.1);
    let ((status, body), _) = &answers[0];
    assert_eq!(*status, 200, "{body}");
    assert!(body.contains(&gen("web-01", 3)), "{body}");
    let showing: Vec<_> = answers
        .iter()
        .filter(|a| a.0 .1.contains(&gen("web-01", 3)) || a.0 .1.contains("nixfleet_rollouts"))
        .collect();
    assert_eq!(showing.len(), 2, "the poll and the metrics answered");
    for ((_, body), took) in showing {
        assert!(
            *took >= Duration::from_micros(SYNC_DELAY_US / 2),
            "answered after {took:?}, before the batch start's sync was done: {}",
            body.chars().take(200).collect::<String>()
        );
    }
}
