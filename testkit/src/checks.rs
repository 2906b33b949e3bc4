//! The invariants every test that drives the core checks after each step: the property tests, the
//! fuzz target (a failed check is a fuzzer crash) and the engine simulation.

use nixfleet_core::event::{Envelope, Event};
use nixfleet_core::state::{BatchStatus, State};
use std::collections::{BTreeMap, BTreeSet};

/// Panics when `s` breaks an invariant of ARCHITECTURE.md:
/// a machine is in at most one running or paused rollout and `active_rollout_of` says which;
/// a rollout judges at most one batch at a time; every batch's healthy + unhealthy + pending
/// equals its machine count.
pub fn check_invariants(s: &State) {
    let mut seen = BTreeMap::new();
    for r in s.rollouts.values().filter(|r| r.status.is_active()) {
        for (m, _) in r.plan.batches.iter().flatten() {
            if let Some(other) = seen.insert(m.clone(), r.id.clone()) {
                panic!(
                    "machine {m} is in two active rollouts: {other} and {}",
                    r.id
                );
            }
            assert_eq!(
                s.active_rollout_of.get(m),
                Some(&r.id),
                "active_rollout_of disagrees for {m}"
            );
        }
    }
    assert_eq!(
        seen.len(),
        s.active_rollout_of.len(),
        "active_rollout_of lists only the machines of active rollouts"
    );
    for r in s.rollouts.values() {
        let judged = r
            .batches
            .iter()
            .filter(|b| b.status == BatchStatus::Active)
            .count();
        assert!(
            judged <= 1,
            "rollout {} judges {judged} batches at once",
            r.id
        );
        for b in &r.batches {
            let (h, u) = (b.healthy as usize, b.unhealthy as usize);
            assert!(
                h + u <= b.machines.len(),
                "rollout {} batch {}: {h} healthy + {u} unhealthy > {} machines",
                r.id,
                b.index,
                b.machines.len()
            );
            assert_eq!(
                h + u + b.pending() as usize,
                b.machines.len(),
                "rollout {} batch {}: healthy + unhealthy + pending != machines",
                r.id,
                b.index
            );
        }
    }
}

/// Panics when a log decides a batch before it started, or decides one attempt of a batch twice
/// (a `BatchSucceeded` or `BatchFailed` after the attempt was already decided).
pub fn check_decided_once<'a>(log: impl IntoIterator<Item = &'a Event>) {
    let mut decided = BTreeSet::new();
    let mut attempt = BTreeMap::new();
    for event in log {
        match event {
            Event::BatchStarted {
                rollout,
                batch_index,
                attempt: a,
                ..
            } => {
                attempt.insert((rollout.clone(), *batch_index), *a);
            }
            Event::BatchSucceeded {
                rollout,
                batch_index,
                ..
            }
            | Event::BatchFailed {
                rollout,
                batch_index,
                ..
            } => {
                let a = attempt
                    .get(&(rollout.clone(), *batch_index))
                    .unwrap_or_else(|| {
                        panic!("batch {batch_index} of {rollout} decided before it started")
                    });
                assert!(
                    decided.insert((rollout.clone(), *batch_index, *a)),
                    "batch {batch_index} of {rollout} decided twice in attempt {a}"
                );
            }
            _ => {}
        }
    }
}

/// Folds `log` from sequence 1 into fresh projections (replay from zero).
pub fn replay<'a>(log: impl IntoIterator<Item = &'a Envelope>) -> State {
    let mut s = State::default();
    for e in log {
        s.apply(e);
    }
    s
}
