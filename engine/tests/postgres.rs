//! Several real control planes on one real PostgreSQL log (issue 17): they serve agents and
//! operators alike, one of them runs the executor under a lease, and the log keeps every
//! acknowledged event through the death of a control plane, a paused leader, a promoted standby
//! and an unreachable database.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nixfleet_core::{Event, Seq};
use nixfleet_eventlog::log::{EventLog, Follow, Record};
use nixfleet_pglog::{PgLog, PgOptions};
use nixfleet_testkit::postgres::PgServer;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOSTS: [&str; 6] = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"];

fn start_cp(root: &Path, pki: &Pki, url: &str, name: &str) -> Cp {
    let env = [
        ("NIXFLEET_CP_LOG_BACKEND", "postgres"),
        ("NIXFLEET_CP_LOG_POSTGRES_URL", url),
        ("NIXFLEET_CP_ID", name),
        ("NIXFLEET_CP_EXECUTOR_LEASE_SECS", "2"),
    ];
    Cp::start_env(root.join(name), pki, free_port(), &env)
}

/// Every record, read and chain-checked by a reader of the log (not a control plane).
fn records(url: &str) -> Vec<Record> {
    let mut o = PgOptions::new("test-reader");
    o.executor = false;
    let log = PgLog::open(url, o).unwrap();
    let mut out = Vec::new();
    log.follow(&mut |f| {
        if let Follow::Record(r) = f {
            out.push(r)
        }
    })
    .unwrap_or_else(|e| panic!("the shared log does not verify: {e}"));
    assert_eq!(log.last_seq(), Seq(out.len() as u64));
    out
}

/// Which control plane and lease epoch appended each record.
fn origins(pg: &PgServer) -> BTreeMap<u64, (String, u64)> {
    pg.psql(
        "nixfleet",
        "SELECT seq || '|' || cp || '|' || epoch FROM nixfleet_log ORDER BY seq",
    )
    .lines()
    .map(|l| {
        let mut p = l.split('|');
        let seq = p.next().unwrap().parse().unwrap();
        let cp = p.next().unwrap().to_owned();
        (seq, (cp, p.next().unwrap().parse().unwrap()))
    })
    .collect()
}

fn lease(pg: &PgServer) -> (String, u64) {
    let out = pg.psql(
        "nixfleet",
        "SELECT holder || '|' || epoch FROM nixfleet_lease",
    );
    let (h, e) = out.trim().split_once('|').unwrap();
    (h.to_owned(), e.parse().unwrap())
}

fn wait_lease(pg: &PgServer, not: Option<&str>) -> (String, u64) {
    let mut got = None;
    wait_until("a control plane holding the executor's lease", 30, || {
        let l = lease(pg);
        let ok = !l.0.is_empty() && Some(l.0.as_str()) != not;
        got = Some(l);
        ok
    });
    got.unwrap()
}

#[derive(Default)]
struct Acked {
    reports: BTreeSet<(String, u64)>,
    refused: u64,
}

/// Agents that report as fast as they are answered, each to the control planes in turn (the next
/// one when a connection fails), following their desired generations, until `stop`. Every 200
/// is recorded; a 503 (no database) is counted and retried.
fn agents(
    ports: Arc<Mutex<Vec<u16>>>,
    pki_dir: &Path,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> Vec<std::thread::JoinHandle<()>> {
    gated_agents(ports, pki_dir, stop, acked, Arc::new(AtomicBool::new(true)))
}

/// [`agents`] that move to their desired generation only once `switch` is set.
fn gated_agents(
    ports: Arc<Mutex<Vec<u16>>>,
    pki_dir: &Path,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    switch: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    HOSTS
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let (h, pki_dir, stop, acked, ports, switch) = (
                h.to_string(),
                pki_dir.to_path_buf(),
                stop.clone(),
                acked.clone(),
                ports.clone(),
                switch.clone(),
            );
            std::thread::spawn(move || {
                let mut current = gen(&h, 1);
                let mut i = 0u64;
                let mut turn = k;
                while !stop.load(Ordering::SeqCst) {
                    let list = ports.lock().unwrap().clone();
                    let port = list[turn % list.len()];
                    turn += 1;
                    let c = Client::new(port, &pki_dir, Some(&h), None);
                    if let Ok((200, t)) = c.try_call(
                        "GET",
                        &format!("/api/v1/machines/{h}/desired-generation"),
                        None,
                    ) {
                        if let Some(p) = serde_json::from_str::<Value>(&t).unwrap()["hash"].as_str()
                        {
                            if switch.load(Ordering::SeqCst) {
                                current = p.to_owned();
                            }
                        }
                    }
                    i += 1;
                    let mut body: Value =
                        serde_json::from_str(&report(&h, &current, true, Some(true), &["web"]))
                            .unwrap();
                    body["uptime_seconds"] = i.into();
                    match c.try_call(
                        "POST",
                        &format!("/api/v1/machines/{h}/report"),
                        Some(&body.to_string()),
                    ) {
                        Ok((200, _)) => {
                            acked.lock().unwrap().reports.insert((h.clone(), i));
                        }
                        Ok((503, _)) | Err(_) => {
                            acked.lock().unwrap().refused += 1;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Ok((s, t)) => panic!("report answered {s}: {t}"),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect()
}

fn reported(records: &[Record]) -> BTreeSet<(String, u64)> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::ReportReceived {
                machine,
                uptime_secs,
                ..
            } => Some((machine.to_string(), *uptime_secs)),
            _ => None,
        })
        .collect()
}

fn assert_all_acked_kept(records: &[Record], acked: &Acked, when: &str) {
    let kept = reported(records);
    let missing: Vec<_> = acked.reports.difference(&kept).collect();
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged reports are not in the log, e.g. {:?}",
        missing.len(),
        acked.reports.len(),
        missing.first()
    );
}

/// No batch of a rollout is started (per attempt), succeeded or failed twice.
fn assert_no_batch_decided_twice(records: &[Record]) {
    let mut seen = BTreeSet::new();
    for r in records {
        let key = match &r.event {
            Event::BatchStarted {
                rollout,
                batch_index,
                attempt,
                ..
            } => (
                rollout.to_string(),
                *batch_index,
                format!("started (attempt {attempt})"),
            ),
            Event::BatchSucceeded {
                rollout,
                batch_index,
                ..
            } => (rollout.to_string(), *batch_index, "succeeded".into()),
            Event::BatchFailed {
                rollout,
                batch_index,
                ..
            } => (rollout.to_string(), *batch_index, "failed".into()),
            _ => continue,
        };
        assert!(
            seen.insert(key.clone()),
            "record {}: batch {} of {} {} twice",
            r.seq.0,
            key.1,
            key.0,
            key.2
        );
    }
}

struct Fleet {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pki: Pki,
    key: String,
}

fn fleet() -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let pki = fleet_pki(&root, &HOSTS);
    Fleet {
        _tmp: tmp,
        root,
        pki,
        key: String::new(),
    }
}

/// A release of generation 2 for every host and a staged rollout of it, created on `cp`.
fn roll_out(cp: &Cp, key: &str) -> String {
    roll_out_with(cp, key, 60)
}

/// [`roll_out`] with a health timeout of `timeout` seconds (on failure: pause).
fn roll_out_with(cp: &Cp, key: &str, timeout: u64) -> String {
    let op = cp.client("operator", Some(key));
    let rel = create_release(&op, &HOSTS, 2);
    op.json(
        "POST",
        "/api/v1/rollouts",
        Some(&serde_json::json!({"release_id": rel, "strategy": "staged", "batch_sizes": ["2", "2", "100%"], "target": {"tags": ["web"]}, "health_timeout": timeout, "on_failure": "pause"}).to_string()),
        201,
    )["rollout_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until `cp` shows the six machines.
fn wait_machines(cp: &Cp, key: &str) {
    let op = cp.client("operator", Some(key));
    wait_until("the six machines", 30, || {
        let (s, t) = op.get("/api/v1/machines");
        s == 200
            && serde_json::from_str::<Value>(&t)
                .unwrap()
                .as_array()
                .map(Vec::len)
                == Some(6)
    });
}

fn rollout_status(cp: &Cp, key: &str, id: &str) -> String {
    let (s, t) = cp
        .client("operator", Some(key))
        .get(&format!("/api/v1/rollouts/{id}"));
    if s != 200 {
        return format!("http {s}");
    }
    serde_json::from_str::<Value>(&t).unwrap()["status"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn three_control_planes_serve_one_log_and_the_rollout_survives_the_leaders_death() {
    let pg = PgServer::start();
    let url = pg.url();
    let mut f = fleet();
    let mut cps: Vec<Option<Cp>> = ["cp-a", "cp-b", "cp-c"]
        .iter()
        .map(|n| Some(start_cp(&f.root, &f.pki, &url, n)))
        .collect();
    let name = |i: usize| ["cp-a", "cp-b", "cp-c"][i];
    f.key = bootstrap(cps[0].as_ref().unwrap());
    let ports = Arc::new(Mutex::new(
        cps.iter()
            .map(|c| c.as_ref().unwrap().port)
            .collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    // The machines move to the release only after the leader's death, so the rollout started by
    // the old leader is decided by the new one.
    let switch = Arc::new(AtomicBool::new(false));
    let threads = gated_agents(
        ports.clone(),
        &f.pki.dir,
        stop.clone(),
        acked.clone(),
        switch.clone(),
    );
    // Every control plane sees every machine, whichever one it reported to.
    for cp in cps.iter().flatten() {
        wait_machines(cp, &f.key);
    }
    let (leader, epoch) = wait_lease(&pg, None);
    let li = (0..3).find(|i| name(*i) == leader).unwrap();
    let other = (li + 1) % 3;
    // The rollout is created on a control plane that does not run the executor.
    let id = roll_out(cps[other].as_ref().unwrap(), &f.key);
    wait_until("the first batch to start", 60, || {
        records(&url).iter().any(|r| {
            matches!(&r.event, Event::BatchStarted { rollout, batch_index: 0, .. } if rollout.to_string() == id)
        })
    });
    // SIGKILL the leader mid-rollout.
    let killed_at = nixfleet_core::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    cps[li].as_mut().unwrap().kill9();
    cps[li] = None;
    ports
        .lock()
        .unwrap()
        .retain(|p| cps.iter().flatten().any(|c| c.port == *p));
    switch.store(true, Ordering::SeqCst);
    let (new_leader, new_epoch) = wait_lease(&pg, Some(&leader));
    assert!(
        new_epoch > epoch,
        "the lease changed hands without a new epoch"
    );
    let live = cps.iter().flatten().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rollout_status(live, &f.key, &id) != "completed" {
        assert!(
            Instant::now() < deadline,
            "the rollout did not complete under the new leader; the live control planes' logs:\n{}",
            cps.iter()
                .flatten()
                .map(|c| c.log_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let all = records(&url);
    assert_all_acked_kept(&all, &acked.lock().unwrap(), "after the leader's death");
    assert_no_batch_decided_twice(&all);
    // Who appended what: all three served writes; executor decisions only from the lease holder
    // of their epoch, and after the death only from the new one.
    let by = origins(&pg);
    let writers: BTreeSet<&str> = by.values().map(|(cp, _)| cp.as_str()).collect();
    assert_eq!(
        writers.len(),
        3,
        "every control plane appended: {writers:?}"
    );
    let mut first_after = None;
    for r in &all {
        if r.actor == nixfleet_core::Actor::Executor {
            let (cp, e) = &by[&r.seq.0];
            if r.at > killed_at {
                assert_eq!(
                    (cp.as_str(), *e),
                    (new_leader.as_str(), new_epoch),
                    "record {}: an executor decision after the leader's death by another",
                    r.seq.0
                );
                first_after.get_or_insert(r.at.0 - killed_at.0);
            } else {
                assert_eq!(
                    cp, &leader,
                    "record {}: an executor decision by a non-leader",
                    r.seq.0
                );
            }
        }
    }
    let done = acked.lock().unwrap();
    eprintln!(
        "figure: leader SIGKILLed -> next executor decision by {new_leader} (epoch {new_epoch}) after {} ms (lease 2 s); {} acknowledged reports, {} refused or unanswered",
        first_after.expect("the new leader decided"),
        done.reports.len(),
        done.refused
    );
}

#[test]
fn a_leader_paused_past_its_lease_decides_nothing_after_it_resumes() {
    let pg = PgServer::start();
    let url = pg.url();
    let mut f = fleet();
    let cps: Vec<Cp> = ["cp-a", "cp-b"]
        .iter()
        .map(|n| start_cp(&f.root, &f.pki, &url, n))
        .collect();
    f.key = bootstrap(&cps[0]);
    let (leader, epoch) = wait_lease(&pg, None);
    let li = cps
        .iter()
        .position(|c| c.log_text().contains("now runs the executor"))
        .unwrap();
    let follower = &cps[1 - li];
    let ports = Arc::new(Mutex::new(vec![follower.port]));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let threads = agents(ports, &f.pki.dir, stop.clone(), acked.clone());
    wait_machines(follower, &f.key);
    // Pause the leader, let its lease lapse, start a rollout meanwhile, then resume it.
    let pid = cps[li].child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let (new_leader, new_epoch) = wait_lease(&pg, Some(&leader));
    let id = roll_out(follower, &f.key);
    wait_until("the first batch to complete", 60, || {
        records(&url).iter().any(|r| matches!(&r.event, Event::BatchSucceeded { rollout, batch_index: 0, .. } if rollout.to_string() == id))
    });
    let resumed_at = records(&url).len() as u64;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    wait_until("the rollout to complete", 60, || {
        rollout_status(follower, &f.key, &id) == "completed"
    });
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let all = records(&url);
    assert_all_acked_kept(&all, &acked.lock().unwrap(), "after the pause");
    assert_no_batch_decided_twice(&all);
    let by = origins(&pg);
    for r in &all {
        if r.actor == nixfleet_core::Actor::Executor && r.seq.0 > resumed_at {
            assert_eq!(
                by[&r.seq.0],
                (new_leader.clone(), new_epoch),
                "record {}: the resumed former leader (epoch {epoch}) appended a decision",
                r.seq.0
            );
        }
    }
    let text = cps[li].log_text();
    assert!(
        text.contains("lost the executor's lease") || !text.contains("executor decision"),
        "the resumed leader did not notice it lost the lease:\n{text}"
    );
}

#[test]
fn a_synchronous_standby_promoted_while_reports_flow_keeps_every_acknowledged_report() {
    let mut primary = PgServer::start();
    let mut standby = PgServer::start_standby(&primary);
    // libpq's multi-host form: the control plane connects to whichever accepts writes.
    let url = format!(
        "postgres://nixfleet@127.0.0.1:{},127.0.0.1:{}/nixfleet?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let mut f = fleet();
    let cp = start_cp(&f.root, &f.pki, &url, "cp-a");
    f.key = bootstrap(&cp);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let threads = agents(
        Arc::new(Mutex::new(vec![cp.port])),
        &f.pki.dir,
        stop.clone(),
        acked.clone(),
    );
    wait_until("some reports", 30, || {
        acked.lock().unwrap().reports.len() > 50
    });
    primary.kill();
    let before = acked.lock().unwrap().reports.len();
    standby.promote();
    wait_until(
        "reports to be acknowledged again, by the promoted standby",
        60,
        || acked.lock().unwrap().reports.len() > before + 50,
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let all = records(&standby.url());
    assert_all_acked_kept(&all, &acked.lock().unwrap(), "after the promotion");
    let done = acked.lock().unwrap();
    eprintln!(
        "figure: {} reports acknowledged across the failover, {} refused or unanswered during it",
        done.reports.len(),
        done.refused
    );
}

#[test]
fn an_unreachable_database_refuses_writes_serves_reads_and_recovers_by_itself() {
    let mut pg = PgServer::start();
    let url = pg.url();
    let mut f = fleet();
    let cp = start_cp(&f.root, &f.pki, &url, "cp-a");
    f.key = bootstrap(&cp);
    let agent = cp.client("web-1", None);
    let op = cp.client("operator", Some(&f.key));
    let body = report("web-1", &gen("web-1", 1), true, Some(true), &["web"]);
    assert_eq!(agent.post("/api/v1/machines/web-1/report", &body).0, 200);
    pg.stop();
    let (s, t) = agent.post("/api/v1/machines/web-1/report", &body);
    assert_eq!(s, 503, "a write without the database: {t}");
    assert!(t.contains("unavailable"), "{t}");
    let (s, t) = op.get("/api/v1/machines");
    assert_eq!(s, 200, "a read without the database: {t}");
    assert!(t.contains("web-1"), "{t}");
    pg.start_again();
    let started = Instant::now();
    wait_until("writes to succeed again without a restart", 30, || {
        agent.post("/api/v1/machines/web-1/report", &body).0 == 200
    });
    eprintln!(
        "figure: writes accepted again {} ms after the database came back",
        started.elapsed().as_millis()
    );
    let n = records(&url)
        .iter()
        .filter(|r| matches!(r.event, Event::ReportReceived { .. }))
        .count();
    assert_eq!(n, 2, "exactly the two acknowledged reports are in the log");
}

#[test]
fn the_new_leader_decides_a_health_timeout_the_old_one_had_armed() {
    let pg = PgServer::start();
    let url = pg.url();
    let mut f = fleet();
    let mut cps: Vec<Option<Cp>> = ["cp-a", "cp-b"]
        .iter()
        .map(|n| Some(start_cp(&f.root, &f.pki, &url, n)))
        .collect();
    f.key = bootstrap(cps[0].as_ref().unwrap());
    let (leader, _) = wait_lease(&pg, None);
    let li = if leader == "cp-a" { 0 } else { 1 };
    let follower_port = cps[1 - li].as_ref().unwrap().port;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    // The machines never move to the release: the first batch can only time out.
    let threads = gated_agents(
        Arc::new(Mutex::new(vec![follower_port])),
        &f.pki.dir,
        stop.clone(),
        acked.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    let follower = cps[1 - li].as_ref().unwrap();
    wait_machines(follower, &f.key);
    let id = roll_out_with(follower, &f.key, 4);
    wait_until("the first batch to start", 30, || {
        records(&url).iter().any(|r| matches!(&r.event, Event::BatchStarted { rollout, .. } if rollout.to_string() == id))
    });
    cps[li].as_mut().unwrap().kill9();
    let follower = cps[1 - li].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rollout_status(follower, &f.key, &id) != "paused" {
        assert!(
            Instant::now() < deadline,
            "the new leader did not pause the rollout on its timeout; its log:\n{}",
            follower.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let all = records(&url);
    assert_no_batch_decided_twice(&all);
    let by = origins(&pg);
    let failed: Vec<_> = all
        .iter()
        .filter(|r| matches!(r.event, Event::BatchFailed { .. }))
        .map(|r| by[&r.seq.0].0.clone())
        .collect();
    assert_eq!(
        failed,
        vec![["cp-a", "cp-b"][1 - li].to_owned()],
        "the timeout was decided once, by the new leader"
    );
}
