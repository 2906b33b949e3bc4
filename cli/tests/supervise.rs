//! The process supervisor the demo and the CLI's tests run their children under.

use nixfleet_cli::supervise::Supervisor;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A second stop made while the first is still waiting for a slow child (the signal thread's,
/// while the main thread stops on an error) must not return before the child is gone: the
/// signal thread exits the process right after it, and a child still alive then is left behind.
#[test]
fn a_stop_during_a_stop_returns_only_once_every_child_is_gone() {
    let dir = std::env::temp_dir().join(format!("nfcli-supervise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sup = Arc::new(Supervisor::default());
    let mut cmd = Command::new("sh");
    // Ignores the first second after SIGTERM, then exits.
    cmd.args([
        "-c",
        "trap 'sleep 1; exit 0' TERM; echo up; while :; do sleep 0.05; done",
    ]);
    sup.spawn("slow", cmd, &dir.join("slow.log"))
        .expect("spawn");
    let log = dir.join("slow.log");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("up")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the child never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = {
        let sup = Arc::clone(&sup);
        std::thread::spawn(move || sup.stop())
    };
    std::thread::sleep(Duration::from_millis(200));
    let second = sup.stop();
    let waited = t0.elapsed();
    let alive = std::process::Command::new("pgrep")
        .args(["-f", "trap 'sleep 1; exit 0' TERM"])
        .output()
        .expect("pgrep");
    assert_eq!(
        String::from_utf8_lossy(&alive.stdout).trim(),
        "",
        "the second stop returned (after {waited:?}) while the child still ran"
    );
    assert_eq!(
        second, 1,
        "the count covers the child the first stop stopped"
    );
    assert_eq!(first.join().expect("first stop"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
