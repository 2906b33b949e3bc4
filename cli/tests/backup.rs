//! `nixfleet backup`, `restore` and `log copy` with the real binaries: a backup of a running
//! control plane (real mTLS) taken while writes flow in is a verified prefix of its log with the
//! same hashes, and a control plane starts on its restore; copies between data directories and a
//! real PostgreSQL keep every record's hash.
//!
//! Needs the control plane binary: `cargo build -p nixfleet-engine` (or NIXFLEET_CP_BIN), and
//! PostgreSQL (`apt-get install postgresql`) for the copy through it.
#![allow(clippy::unwrap_used)]

mod common;

use common::cp::*;
use common::*;
use nixfleet_eventlog::log::{encode_record, hash_bytes, Record};
use nixfleet_eventlog::postmortem;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A control plane with small archive segments, so backups read across sealed segments and
/// sled, and its first admin key.
fn start_small(s: &Scratch) -> (ControlPlane, String) {
    let cp = start_with_env(s, &[("NIXFLEET_CP_LOG_SEGMENT_RECORDS", "16")]);
    let key = nf_ok(s, &["bootstrap", "--name", "admin"])
        .trim()
        .to_owned();
    (cp, key)
}

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn hashes(records: &[Record]) -> Vec<[u8; 32]> {
    records
        .iter()
        .map(|r| hash_bytes(&encode_record(r.seq, r.at, &r.actor, r.prev_hash, &r.event)))
        .collect()
}

/// The N of "… records 1 to N …".
fn last_of(out: &str) -> usize {
    out.split("records 1 to ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {out:?}"))
}

/// Registers machines `lg-0`, `lg-1`, … one request at a time until `stop`; counts them.
fn writes(s: &Scratch, key: &str, stop: &AtomicBool, done: &AtomicUsize) {
    while !stop.load(Ordering::SeqCst) {
        let i = done.load(Ordering::SeqCst);
        nf_ok(
            s,
            &[
                "--api-key",
                key,
                "machines",
                "register",
                &format!("lg-{i}"),
                "--tags",
                "load",
            ],
        );
        done.fetch_add(1, Ordering::SeqCst);
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn wait_for_writes(done: &AtomicUsize, n: usize) {
    for _ in 0..600 {
        if done.load(Ordering::SeqCst) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the writer did not reach {n} writes");
}

#[test]
fn a_backup_taken_under_load_is_a_verified_prefix_and_a_control_plane_starts_on_its_restore() {
    let s = Scratch::new("backup");
    let (cp, key) = start_small(&s);
    let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    let (online, offline) = std::thread::scope(|scope| {
        scope.spawn(|| writes(&s, &key, &stop, &done));
        // The writer stops however this ends (a failed assertion too), so the scope can end.
        let _stop = StopOnDrop(&stop);
        wait_for_writes(&done, 60);
        // Both backups while the writes go on: over the events API, and through the copy reader
        // of the live data directory.
        let online = nf_ok(
            &s,
            &["--api-key", &key, "backup", "--to", d(&s.join("backup"))],
        );
        let offline = nf_ok(
            &s,
            &[
                "backup",
                "--data-dir",
                d(&s.join("cp-data")),
                "--to",
                d(&s.join("backup-dir")),
            ],
        );
        let at_backups = done.load(Ordering::SeqCst);
        wait_for_writes(&done, at_backups + 10);
        stop.store(true, Ordering::SeqCst);
        (online, offline)
    });
    assert!(
        online.starts_with("backed up records 1 to ") && online.contains("the chain verified"),
        "{online}"
    );
    let live = postmortem::open_copy(&s.join("cp-data")).unwrap();
    assert!(
        s.join("cp-data/log/archive").read_dir().unwrap().count() > 0,
        "the live log has sealed segments"
    );
    for (out, dir) in [(&online, "backup"), (&offline, "backup-dir")] {
        let n = last_of(out);
        assert!(n > 60 && n < live.len(), "{n} of {}: {out}", live.len());
        let verified = nf_ok(&s, &["verify", "--data-dir", d(&s.join(dir))]);
        assert!(
            verified.starts_with(&format!("ok: {n} records")),
            "{verified}"
        );
        let backup = postmortem::open_copy(&s.join(dir)).unwrap();
        assert_eq!(backup, live[..n], "{dir} is a prefix of the live log");
        assert_eq!(
            hashes(&backup),
            hashes(&live[..n]),
            "{dir}: the same hashes"
        );
    }
    drop(cp);

    // Restore into a new data directory and start the real control plane on it.
    let s2 = Scratch::new("restored");
    let out = nf_ok(
        &s2,
        &[
            "restore",
            "--from",
            d(&s.join("backup")),
            "--data-dir",
            d(&s2.join("cp-data")),
        ],
    );
    assert!(out.starts_with("restored records 1 to "), "{out}");
    let n = last_of(&online);
    let _cp2 = start(&s2);
    let verified = nf_ok(&s2, &["--api-key", &key, "verify"]);
    assert!(
        verified.starts_with(&format!("ok: {n} records")),
        "{verified}"
    );
    // The restored control plane takes writes chained after the restored records.
    nf_ok(
        &s2,
        &["--api-key", &key, "machines", "register", "after-restore"],
    );
    let after = postmortem::open_copy(&s2.join("cp-data")).unwrap();
    assert_eq!(after[..n], live[..n]);
    assert!(after.len() > n);
    let verified = nf_ok(&s2, &["verify", "--data-dir", d(&s2.join("cp-data"))]);
    assert!(verified.starts_with("ok: "), "{verified}");
}

#[test]
fn restore_refuses_a_data_directory_in_use_or_not_empty_and_a_damaged_backup() {
    let s = Scratch::new("restore-refuses");
    let (cp, key) = start_small(&s);
    for i in 0..5 {
        nf_ok(
            &s,
            &["--api-key", &key, "machines", "register", &format!("m-{i}")],
        );
    }
    nf_ok(&s, &["--api-key", &key, "backup", "--to", d(&s.join("b"))]);
    let b = s.join("b");
    let restore = |target: &str, force: bool| {
        let mut args = vec!["restore", "--from", d(&b), "--data-dir", target];
        if force {
            args.push("--force");
        }
        nf(&s, &args)
    };
    let live = s.join("cp-data");
    let out = restore(d(&live), false);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: {} is not empty: pass --force to replace the log it holds (the control plane stopped), or restore into a new directory",
            live.display()
        )
    );
    let out = restore(d(&live), true);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("stop the control plane that uses it first"),
        "{}",
        stderr(&out)
    );
    // The backup directory itself is not written over either.
    let out = nf(&s, &["--api-key", &key, "backup", "--to", d(&s.join("b"))]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("is not empty: write into a new directory"));
    drop(cp);
    // Stopped: --force replaces the log and removes the snapshot of the old one.
    assert!(nixfleet_eventlog::snapshot::path(&live).exists());
    let out = restore(d(&live), true);
    assert_exit(&out, 0);
    assert!(!nixfleet_eventlog::snapshot::path(&live).exists());
    // A damaged log is replaced too (that is what a restore is for).
    let garbage = s.join("garbage");
    std::fs::create_dir_all(garbage.join("log")).unwrap();
    std::fs::write(garbage.join("log/db"), [0x5a; 4096]).unwrap();
    std::fs::write(garbage.join("log/conf"), "not sled's").unwrap();
    assert_exit(&restore(d(&garbage), true), 0);
    let verified = nf_ok(&s, &["verify", "--data-dir", d(&garbage)]);
    assert!(verified.starts_with("ok: 7 records"), "{verified}");
    // A damaged backup is refused before anything is written.
    let damaged = s.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    let out = nf(
        &s,
        &[
            "restore",
            "--from",
            d(&damaged),
            "--data-dir",
            d(&s.join("t")),
        ],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("holds no nixfleet event log"),
        "{}",
        stderr(&out)
    );
    assert!(!s.join("t").exists());
    // So is one shorter than its acknowledged mark says it was (three copies tried).
    nixfleet_eventlog::log::durable::Mark {
        seq: 1000,
        hash: [7; 32],
    }
    .write(&b.join("log"))
    .unwrap();
    let out = nf(
        &s,
        &["restore", "--from", d(&b), "--data-dir", d(&s.join("t"))],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("lost acknowledged events: it ends at record 7, but record 1000"),
        "{}",
        stderr(&out)
    );
    assert!(!s.join("t").exists());
}

#[test]
fn a_log_copied_to_postgresql_and_back_keeps_every_hash() {
    use nixfleet_testkit::postgres::PgServer;
    let s = Scratch::new("logcopy");
    let (cp, key) = start_small(&s);
    for i in 0..40 {
        nf_ok(
            &s,
            &["--api-key", &key, "machines", "register", &format!("m-{i}")],
        );
    }
    drop(cp);
    let live = postmortem::open_copy(&s.join("cp-data")).unwrap();
    let pg = PgServer::start();
    let copy = |from: &str, to: &str| nf(&s, &["log", "copy", "--from", from, "--to", to]);
    let copied = format!("copied records 1 to {}", live.len());
    let out = copy(d(&s.join("cp-data")), &pg.url());
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with(&copied), "{}", stdout(&out));
    // Into a database that holds a log already: refused.
    let out = copy(d(&s.join("cp-data")), &pg.url());
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("already holds an event log"),
        "{}",
        stderr(&out)
    );
    let out = copy(&pg.url(), d(&s.join("back")));
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with(&copied), "{}", stdout(&out));
    // And data directory to data directory, with the summary as JSON.
    let out = json(
        &s,
        &[
            "log",
            "copy",
            "--from",
            d(&s.join("back")),
            "--to",
            d(&s.join("back2")),
        ],
    );
    assert_eq!(out["records"], live.len() as u64);
    let last = postmortem::hex(hashes(&live).last().unwrap());
    assert_eq!(out["last_hash"], last.as_str());
    let back = postmortem::open_copy(&s.join("back")).unwrap();
    assert_eq!(back, live);
    assert_eq!(hashes(&back), hashes(&live));
    assert_eq!(postmortem::open_copy(&s.join("back2")).unwrap(), live);
    for dir in ["cp-data", "back", "back2"] {
        let out = nf_ok(&s, &["verify", "--data-dir", d(&s.join(dir))]);
        assert!(
            out.starts_with(&format!("ok: {} records", live.len())),
            "{out}"
        );
    }
}

#[test]
fn the_replay_tool_works_unchanged_on_a_control_plane_whose_log_is_in_postgresql() {
    use nixfleet_testkit::postgres::PgServer;
    let s = Scratch::new("pgreplay");
    let pg = PgServer::start();
    let url = pg.url();
    let _cp = start_with_env(
        &s,
        &[
            ("NIXFLEET_CP_LOG_BACKEND", "postgres"),
            ("NIXFLEET_CP_LOG_POSTGRES_URL", &url),
            ("NIXFLEET_CP_ID", "cp-1"),
        ],
    );
    let key = nf_ok(&s, &["bootstrap", "--name", "admin"])
        .trim()
        .to_owned();
    for i in 0..12 {
        nf_ok(
            &s,
            &["--api-key", &key, "machines", "register", &format!("m-{i}")],
        );
    }
    // Online, over the events API of the control plane on PostgreSQL.
    let online = nf_ok(&s, &["--api-key", &key, "verify"]);
    assert!(online.starts_with("ok: 14 records"), "{online}");
    let replayed = nf_ok(&s, &["--api-key", &key, "replay"]);
    assert!(replayed.contains("m-11"), "{replayed}");
    // The same records offline, copied out of the database.
    nf_ok(
        &s,
        &["log", "copy", "--from", &url, "--to", d(&s.join("out"))],
    );
    let offline = nf_ok(&s, &["verify", "--data-dir", d(&s.join("out"))]);
    assert!(offline.starts_with("ok: 14 records"), "{offline}");
    // A record altered in the database (one bit of its time) breaks the chain the tool checks.
    pg.psql(
        "nixfleet",
        "UPDATE nixfleet_log SET record = set_byte(record, 3, get_byte(record, 3) # 1) WHERE seq = 5",
    );
    let out = nf(&s, &["--api-key", &key, "verify"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("fails verification at record 6: hash chain broken"),
        "{}",
        stderr(&out)
    );
}
