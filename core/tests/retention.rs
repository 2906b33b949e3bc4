//! History in the projections is bounded: however long machines keep reporting, each keeps one
//! last report and its last `HEALTH_HISTORY_MAX` health results, and the audit its newest
//! `AUDIT_MAX` rows. The log keeps everything; these are what memory and snapshots hold.
#![allow(clippy::unwrap_used)]

use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::state::{AUDIT_MAX, HEALTH_HISTORY_MAX};
use nixfleet_core::{Envelope, State};
use nixfleet_testkit::*;

/// Size of the projections as serialized (what a snapshot holds).
fn size(s: &State) -> usize {
    serde_json::to_vec(s).unwrap().len()
}

#[test]
fn a_machine_keeps_one_last_report_and_its_newest_health_results_however_often_it_reports() {
    // Given a registered machine
    let mut f = Fleet::default();
    f.register("web-01", &["web"]);
    // When it reports with health 1,000 times
    for i in 0..1000 {
        f.report("web-01", Report::on(i % 3).health(one_check(i % 2 == 0)));
    }
    // Then it keeps exactly the newest HEALTH_HISTORY_MAX health results, in order
    let mach = &f.state.machines[&m("web-01")];
    assert_eq!(mach.health.len(), HEALTH_HISTORY_MAX);
    let seqs: Vec<u64> = mach.health.iter().map(|h| h.seq.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), f.state.last_seq.0);
    // And one last report, the newest
    let last = mach.last_report.as_ref().unwrap();
    assert_eq!(
        last.seq.0 + 1,
        f.state.last_seq.0,
        "the report precedes its health result"
    );
    // And reports and health results add no audit rows (the log has them)
    assert!(f.state.audit.len() < 5, "{}", f.state.audit.len());
}

#[test]
fn the_projections_stop_growing_once_every_machine_has_filled_its_history() {
    // Given 50 machines that each reported HEALTH_HISTORY_MAX times
    let mut f = Fleet::default();
    let hosts: Vec<String> = (0..50).map(|i| format!("web-{i:02}")).collect();
    let round = |f: &mut Fleet, n: u64| {
        for h in &hosts {
            f.report(h, Report::on(n % 3).healthy());
        }
    };
    for n in 0..HEALTH_HISTORY_MAX as u64 {
        round(&mut f, n);
    }
    let full = size(&f.state);
    // When each reports 200 times more
    for n in 0..200 {
        round(&mut f, n);
    }
    // Then the projections are the same size, give or take the digits of larger numbers
    let later = size(&f.state);
    assert!(
        later <= full + full / 50,
        "{full} bytes after filling the history, {later} after 10,000 more reports"
    );
    // And a replay from the log gives the same bounded state
    assert_eq!(f.replayed(), f.state);
}

#[test]
fn the_audit_keeps_its_newest_rows_only() {
    // Given projections that received AUDIT_MAX + 10 audited events
    let mut s = State::default();
    let machine = m("web-01");
    for i in 0..AUDIT_MAX as u64 + 10 {
        s.apply(&Envelope {
            seq: Seq(i + 1),
            at: Timestamp(i),
            actor: Actor::System,
            event: Event::TagsSet {
                machine: machine.clone(),
                tags: vec![tag("web")],
                source: TagSource::Register,
            },
        });
    }
    // Then the audit holds AUDIT_MAX rows, the oldest 10 dropped
    assert_eq!(s.audit.len(), AUDIT_MAX);
    assert_eq!(s.audit.front().unwrap().seq, Seq(11));
    assert_eq!(s.audit.back().unwrap().seq, Seq(AUDIT_MAX as u64 + 10));
}
