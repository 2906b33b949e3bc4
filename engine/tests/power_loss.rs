//! Power loss: the real control plane keeps its data directory on LazyFS, a FUSE file system that
//! holds every byte not yet fsynced and drops them on command, as a power failure would. Agents
//! report, rollouts run, the log archives segments and the control plane writes snapshots; the
//! control plane is killed at random moments (during reports and decisions, during its shutdown
//! snapshot), the unsynced data is dropped, and it restarts on what is left. Every acknowledged
//! event must be there, the chain must verify, and no group may be half there.
//!
//! LazyFS is built from `../shared/lazyfs` by `scripts/lazyfs-build` (which `scripts/test-all`
//! runs); `NIXFLEET_LAZYFS` names the binary, else the build's default place is used.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nixfleet_core::event::{Event, RolloutStatus};
use nixfleet_core::ids::Seq;
use nixfleet_engine::log::{EventLog, Record, SledLog};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HOSTS: [&str; 4] = ["web-01", "web-02", "web-03", "web-04"];

fn lazyfs_bin() -> PathBuf {
    let p = std::env::var_os("NIXFLEET_LAZYFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/nixfleet-lazyfs/lazyfs/lazyfs/build/lazyfs".into());
    assert!(
        p.exists(),
        "LazyFS is not built at {}: run scripts/lazyfs-build (needs apt-get install cmake g++ libfuse3-dev fuse3)",
        p.display()
    );
    p
}

/// A LazyFS mount: `mnt` shows `root`, with unsynced writes held in LazyFS's cache.
struct LazyFs {
    child: Child,
    mnt: PathBuf,
    fifo: PathBuf,
    done: std::fs::File,
}

impl LazyFs {
    fn mount(base: &Path) -> LazyFs {
        let (root, mnt) = (base.join("root"), base.join("mnt"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let (fifo, done) = (base.join("faults.fifo"), base.join("faults-done.fifo"));
        for f in [&fifo, &done] {
            assert!(Command::new("mkfifo").arg(f).status().unwrap().success());
        }
        let cfg = base.join("lazyfs.toml");
        std::fs::write(
            &cfg,
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size=\"512mb\"\nblocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"{}\"\n",
                fifo.display(),
                done.display(),
                base.join("lazyfs.log").display()
            ),
        )
        .unwrap();
        let child = Command::new(lazyfs_bin())
            .arg(&mnt)
            .arg("--config-path")
            .arg(&cfg)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(base.join("lazyfs.stderr")).unwrap())
            .spawn()
            .unwrap();
        let m = mnt.to_string_lossy().into_owned();
        wait_until("the LazyFS mount", 20, || {
            std::fs::read_to_string("/proc/mounts")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(m.as_str()))
        });
        // LazyFS's fault worker waits for a reader of the completion FIFO before it reports.
        let done = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&done)
            .unwrap();
        LazyFs {
            child,
            mnt,
            fifo,
            done,
        }
    }

    /// Drops every byte that was not fsynced, as a power failure would.
    fn power_loss(&mut self) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.fifo)
            .unwrap()
            .write_all(b"lazyfs::clear-cache\n")
            .unwrap();
        let mut seen = String::new();
        wait_until("LazyFS to drop its unsynced data", 30, || {
            let mut buf = [0u8; 256];
            if let Ok(n) = self.done.read(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            seen.contains("finished::clear-cache")
        });
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        self.custom_flags(O_NONBLOCK)
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the control plane acknowledged: reports (machine, uptime), release and rollout ids.
#[derive(Default)]
struct Acked {
    reports: BTreeSet<(String, u64)>,
    ids: Vec<String>,
}

fn report_body(h: &str, path: &str, n: u64) -> String {
    let mut v: Value = serde_json::from_str(&report(h, path, true, Some(true), &["web"])).unwrap();
    v["uptime_seconds"] = n.into();
    v.to_string()
}

/// Agents report as fast as they are answered, each following its desired generation, until
/// `stop`; every 200 is recorded.
fn agents(
    cp_port: u16,
    pki_dir: &Path,
    round: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> Vec<std::thread::JoinHandle<()>> {
    HOSTS
        .iter()
        .map(|h| {
            let (h, pki_dir, stop, acked) = (
                h.to_string(),
                pki_dir.to_path_buf(),
                stop.clone(),
                acked.clone(),
            );
            std::thread::spawn(move || {
                let c = Client::new(cp_port, &pki_dir, Some(&h), None);
                for i in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let path = match c.try_call(
                        "GET",
                        &format!("/api/v1/machines/{h}/desired-generation"),
                        None,
                    ) {
                        Ok((200, t)) => serde_json::from_str::<Value>(&t).unwrap()["hash"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                        Ok(_) => gen(&h, 1),
                        Err(_) => return,
                    };
                    let n = round * 1_000_000 + i;
                    match c.try_call(
                        "POST",
                        &format!("/api/v1/machines/{h}/report"),
                        Some(&report_body(&h, &path, n)),
                    ) {
                        Ok((200, _)) => {
                            acked.lock().unwrap().reports.insert((h.clone(), n));
                        }
                        Ok((s, t)) => panic!("report answered {s}: {t}"),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

fn read_log(data: &Path) -> Vec<Record> {
    SledLog::verify(&data.join("log"))
        .unwrap_or_else(|e| panic!("the log does not verify after the power loss: {e}"));
    let log = SledLog::open(&data.join("log"), |_| {}).unwrap();
    let records = log.read_after(Seq(0), usize::MAX).unwrap();
    log.close().unwrap();
    records
}

/// Every acknowledged thing is in the log; no group is half there; the rollouts keep their rules.
fn check(records: &[Record], acked: &Acked, round: u64) {
    let mut reports = BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        if let Event::ReportReceived {
            machine,
            uptime_secs,
            ..
        } = &r.event
        {
            reports.insert((machine.to_string(), *uptime_secs));
            assert!(
                matches!(records.get(i + 1).map(|n| &n.event), Some(Event::HealthReported { machine: m, .. }) if m == machine),
                "round {round}: record {} (a report) lost the health event of its group",
                r.seq.0
            );
        }
    }
    let missing: Vec<_> = acked.reports.difference(&reports).collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} of {} acknowledged reports are gone after the power loss, e.g. {:?}",
        missing.len(),
        acked.reports.len(),
        missing.first()
    );
    let text: String = records.iter().map(|r| format!("{:?}\n", r.event)).collect();
    for id in &acked.ids {
        assert!(
            text.contains(id.as_str()),
            "round {round}: acknowledged {id} is gone"
        );
    }
    // Rollout rules: no batch starts after a failed one without a resume in between.
    let mut failed = BTreeSet::new();
    for r in records {
        match &r.event {
            Event::BatchFailed { rollout, .. } => {
                failed.insert(rollout.clone());
            }
            Event::RolloutResumed { rollout } => {
                failed.remove(rollout);
            }
            Event::BatchStarted { rollout, batch_index, .. } => assert!(
                !failed.contains(rollout),
                "round {round}: batch {batch_index} of {rollout} started after a failed batch without a resume"
            ),
            _ => {}
        }
    }
    let mut state = nixfleet_core::state::State::default();
    for r in records {
        state.apply(&r.envelope());
    }
    for r in state.rollouts.values() {
        if r.status == RolloutStatus::Running {
            assert!(
                r.batches
                    .iter()
                    .all(|b| b.status != nixfleet_core::state::BatchStatus::Failed),
                "round {round}: rollout {} is running with a failed batch",
                r.id
            );
        }
    }
}

/// Rounds of: the control plane starts, agents report and follow their desired generations, a
/// release and a staged rollout are created, then at a random moment (or, every third round,
/// during the shutdown and its snapshot) the control plane is killed; with `fs`, the unsynced
/// data is then dropped. It restarts on what is left and every round checks what survived.
fn kill_rounds(rounds: u64, data: &Path, pki: &Pki, mut fs: Option<&mut LazyFs>, max_ms: usize) {
    let env = [("NIXFLEET_CP_LOG_SEGMENT_RECORDS", "16")];
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = nixfleet_core::plan::SplitMix64::new(
        std::env::var("NIXFLEET_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x9051),
    );
    let mut key = String::new();
    for round in 1..=rounds {
        let mut cp = Cp::start_env(data.to_path_buf(), pki, free_port(), &env);
        if round == 1 {
            key = bootstrap(&cp);
            acked.lock().unwrap().ids.push("test-admin".into());
        }
        let op = cp.client("operator", Some(&key));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = agents(cp.port, &pki.dir, round, stop.clone(), acked.clone());
        // A release and a staged rollout to the next generation, decided by the agents' reports.
        std::thread::sleep(Duration::from_millis(50));
        let rel = create_release(&op, &HOSTS, round as u32 + 1);
        acked.lock().unwrap().ids.push(rel.clone());
        let (s, t) = op.post("/api/v1/rollouts", &serde_json::json!({"release_id": rel, "strategy": "staged", "batch_sizes": ["1", "1", "100%"], "target": {"tags": ["web"]}, "health_timeout": 3600}).to_string());
        if s == 201 {
            let id = serde_json::from_str::<Value>(&t).unwrap()["rollout_id"]
                .as_str()
                .unwrap()
                .to_owned();
            acked.lock().unwrap().ids.push(id);
        } else {
            assert_eq!(s, 409, "{t}");
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(max_ms) as u64));
        if round % 3 == 0 {
            // Killed during the shutdown, while the snapshot is being written.
            let _ = Command::new("kill")
                .args(["-TERM", &cp.child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(rng.below(40) as u64));
        }
        cp.kill9();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        if let Some(fs) = fs.as_deref_mut() {
            fs.power_loss();
        }
        // The control plane restarts on what is left, and knows its admin key.
        let mut after = Cp::start_env(data.to_path_buf(), pki, free_port(), &env);
        assert_eq!(
            after
                .client("operator", None)
                .post("/api/v1/keys/bootstrap", r#"{"name":"again"}"#)
                .0,
            409,
            "round {round}: the control plane came back new, the bootstrap open again"
        );
        after.kill9();
        let records = read_log(data);
        check(&records, &acked.lock().unwrap(), round);
        eprintln!(
            "round {round}: {} records after the kill, {} acknowledged reports, archive segments {}",
            records.len(),
            acked.lock().unwrap().reports.len(),
            std::fs::read_dir(data.join("log/archive")).map(|d| d.count()).unwrap_or(0)
        );
    }
    let segments = std::fs::read_dir(data.join("log/archive"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(segments > 0, "the archive was exercised");
}

#[test]
fn every_acknowledged_event_survives_power_loss() {
    let base = tempfile::tempdir().unwrap();
    let mut fs = LazyFs::mount(base.path());
    let pki = fleet_pki(base.path(), &HOSTS);
    let data = fs.mnt.join("data");
    kill_rounds(6, &data, &pki, Some(&mut fs), 1500);
}

/// The SIGKILL crash test of the whole control plane (`crash.rs` kills the log alone): 20 rounds
/// with rollouts deciding, the rollout rules checked after each.
#[test]
fn every_acknowledged_event_and_the_rollout_rules_survive_sigkill() {
    let base = tempfile::tempdir().unwrap();
    let pki = fleet_pki(base.path(), &HOSTS);
    kill_rounds(20, &base.path().join("data"), &pki, None, 600);
}

#[test]
fn a_data_directory_that_had_a_log_refuses_to_start_on_a_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &["web-01"]);
    let data = dir.path().join("data");
    let mut cp = Cp::start_at(data.clone(), &pki, free_port());
    let _key = bootstrap(&cp);
    let (s, t) = cp.client("web-01", None).post(
        "/api/v1/machines/web-01/report",
        &report("web-01", &gen("web-01", 1), true, Some(true), &["web"]),
    );
    assert_eq!(s, 200, "{t}");
    std::thread::sleep(Duration::from_millis(1500)); // the mark follows the head within a second
    cp.kill9();
    // sled's files are lost (a new disk, a lost file system); the mark next to them stays.
    for entry in std::fs::read_dir(data.join("log")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name == "acknowledged" {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let log = dir.path().join("refused.log");
    let mut child = spawn_cp(&data, &pki, free_port(), &log);
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "it must not start: {text}");
    assert!(
        text.contains("lost acknowledged events: it ends at record 0, but record 5 was durable"),
        "names what is missing: {text}"
    );
}
