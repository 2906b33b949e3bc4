//! The replay tool on a data directory whose log retention compacted: `verify` proves the chain
//! through the compacted ranges and names them, `timeline` says its evidence may lack the
//! compacted reports, and `what-if` over a rollout whose reports were compacted refuses with one
//! line, run as the real `nixfleet` binary.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use nixfleet_core::ids::RolloutId;
use nixfleet_core::Command as Cmd;
use nixfleet_engine::log::retention::Retention;
use nixfleet_engine::log::{EventLog, LogOptions, SledLog};
use nixfleet_testkit::{Fleet, Report, Rollout};
use std::time::Duration;

const DAY: u64 = 86_400;

/// Rollout r-1 moves three web machines to generation 2 and is deleted; they report every
/// minute for 40 minutes, and again 31 days later. The log goes to `data/log`, in segments of
/// 64 records, and retention of 30 days is applied.
fn compacted_data_dir(s: &Scratch) -> std::path::PathBuf {
    let mut f = Fleet::default();
    let web = ["web-1", "web-2", "web-3"];
    for h in web {
        f.register(h, &["web"]);
        f.report(h, Report::on(1).healthy());
    }
    f.release("rel-2", &web.map(|h| (h, 2)));
    f.start("r-1", Rollout::of("rel-2").to_tags(&["web"]));
    for minute in 0..80 {
        if minute == 40 {
            f.ok(Cmd::DeleteRollout {
                rollout: RolloutId::parse("r-1").unwrap(),
            });
            f.advance(31 * DAY);
        }
        for h in web {
            f.report(h, Report::on(2).healthy());
        }
        f.advance(60);
    }
    let data = s.join("data");
    let log =
        SledLog::open_with(&data.join("log"), None, LogOptions::segments_of(64), |_| {}).unwrap();
    for e in &f.log {
        log.stage(e.at, &e.actor, std::slice::from_ref(&e.event))
            .unwrap();
    }
    log.wait_durable(log.last_seq()).unwrap();
    log.archive_due().unwrap();
    let removed = log
        .compact(
            &Retention::new(&f.state, f.now, Duration::from_secs(30 * DAY)),
            f.now.0,
        )
        .unwrap();
    assert!(removed > 0, "the old reports of the deleted rollout go");
    log.close().unwrap();
    data
}

#[test]
fn given_a_compacted_log_then_verify_passes_naming_the_ranges_and_what_if_refuses_in_one_line() {
    let s = Scratch::new("retention");
    let data = compacted_data_dir(&s);
    let dir = data.to_str().unwrap();
    let out = nf_ok(&s, &["verify", "--data-dir", dir]);
    assert!(out.starts_with("ok: "), "{out}");
    assert!(out.contains("compacted by retention"), "{out}");
    let timeline = nf_ok(&s, &["timeline", "--data-dir", dir, "r-1"]);
    assert!(
        timeline.contains("during this rollout, were compacted by retention"),
        "{timeline}"
    );
    let refused = nf(
        &s,
        &[
            "what-if",
            "--data-dir",
            dir,
            "r-1",
            "--health-timeout",
            "30",
        ],
    );
    assert_exit(&refused, 1);
    let err = stderr(&refused);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cannot re-run rollout r-1") && err.contains("compacted by retention"),
        "{err}"
    );
}
