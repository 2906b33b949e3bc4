//! The rollout planner and gate: arbitrary sequences of commands (registrations, reports with and
//! without health, releases, rollouts with arbitrary batch sizes and thresholds, resume, cancel,
//! delete, lifecycle changes, notify, the clock moving) go through `decide`, `State::apply` and
//! `executor::settle` exactly as the engine runs them, with a fake clock. Nothing panics, the
//! invariants hold after every step, and replaying the log from zero gives the incremental state.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nixfleet_core::event::{Actor, Lifecycle, Target};
use nixfleet_core::ids::{MachineId, StorePath, Tag};
use nixfleet_core::{executor, Command, Seq};
use nixfleet_testkit::{
    admin, check_decided_once, check_invariants, create_release, replay, report_input, Fleet,
    Rollout,
};
use std::collections::BTreeMap;

const HOSTS: [&str; 8] = [
    "web-01", "web-02", "web-03", "web-04", "db-01", "db-02", "edge-01", "edge-02",
];
const TAGS: [&str; 3] = ["web", "db", "eu-west"];
const AMOUNTS: [&str; 12] = [
    "0", "1", "2", "3", "0%", "1%", "25%", "50%", "100%", "101%", "-1", "4294967296",
];

/// A batch size or threshold: mostly from a list of interesting values, sometimes raw text.
#[derive(Arbitrary, Debug)]
enum AmountText {
    Known(u8),
    Raw(String),
}

impl AmountText {
    fn text(&self) -> String {
        match self {
            AmountText::Known(i) => AMOUNTS[*i as usize % AMOUNTS.len()].to_owned(),
            AmountText::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Register { host: u8, lifecycle: u8, tags: u8 },
    Report {
        host: u8,
        generation: Option<u8>,
        success: bool,
        health: Option<bool>,
        rolled_back_from: Option<u8>,
        tags: u8,
        auto_register: bool,
    },
    Release { hosts: u8, generation: u8 },
    Rollout {
        release: u8,
        strategy: u8,
        batch_sizes: Option<Vec<AmountText>>,
        threshold: Option<AmountText>,
        on_failure: u8,
        health_timeout_secs: Option<u16>,
        by_tags: bool,
        tags: u8,
        hosts: u8,
        seed: u64,
    },
    Resume(u8),
    Cancel(u8),
    DeleteRollout(u8),
    DeleteRelease(u8),
    SetLifecycle { host: u8, to: u8 },
    ClearDesired(u8),
    ClearQuarantine(u8),
    NotifyDeploy { host: u8, generation: u8 },
    Advance(u16),
}

fn m(i: u8) -> MachineId {
    MachineId::parse(HOSTS[i as usize % HOSTS.len()]).expect("static ids are valid")
}

fn tags(mask: u8) -> Vec<Tag> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| Tag::parse(t).expect("static tags are valid"))
        .collect()
}

fn hosts(mask: u8) -> Vec<MachineId> {
    (0..8u8).filter(|i| mask & (1 << i) != 0).map(m).collect()
}

/// A valid store path for system generation `n` of `host`.
fn path(host: &MachineId, n: u8) -> StorePath {
    nixfleet_testkit::path(host.as_str(), u64::from(n))
}

fn nth<K: Clone, V>(map: &BTreeMap<K, V>, i: u8) -> Option<K> {
    map.keys().nth(i as usize % map.len().max(1)).cloned()
}

/// The simulated fleet of the test kit, and a counter for fresh release and rollout ids.
#[derive(Default)]
struct Fuzzed {
    fleet: Fleet,
    minted: u32,
}

impl Fuzzed {
    /// decide → append → apply → settle, as `Engine::submit` does; rejections change nothing.
    fn run(&mut self, actor: Actor, cmd: Command) {
        let _ = self.fleet.run(actor, cmd);
    }

    fn step(&mut self, op: &Op) {
        let admin = admin();
        match op {
            Op::Register { host, lifecycle, tags: t } => self.run(
                admin,
                Command::Register {
                    machine: m(*host),
                    lifecycle: Lifecycle::ALL[*lifecycle as usize % Lifecycle::ALL.len()],
                    tags: tags(*t),
                },
            ),
            Op::Report { host, generation, success, health, rolled_back_from, tags: t, auto_register } => {
                let id = m(*host);
                let report = nixfleet_core::ReportInput {
                    tags: tags(*t),
                    rolled_back_from: rolled_back_from.map(|g| path(&id, g)),
                    ..report_input(
                        generation.map(|g| path(&id, g)),
                        *success,
                        if *success { "deployed" } else { "failed" },
                        health.map(|ok| (Vec::new(), ok)),
                    )
                };
                self.run(
                    Actor::Machine(id.clone()),
                    Command::Report { machine: id, report, auto_register: *auto_register },
                )
            }
            Op::Release { hosts: mask, generation } => {
                self.minted += 1;
                let entries = hosts(*mask).into_iter().map(|h| (h.clone(), path(&h, *generation)));
                self.run(admin, create_release(&format!("rel-{}", self.minted), entries))
            }
            Op::Rollout {
                release, strategy, batch_sizes, threshold, on_failure,
                health_timeout_secs, by_tags, tags: t, hosts: h, seed,
            } => {
                let Some(release) = nth(&self.fleet.state.releases, *release) else {
                    return;
                };
                self.minted += 1;
                let strategy = ["canary", "staged", "all_at_once", "bogus"][*strategy as usize % 4];
                let mut spec = Rollout::of(release.as_str()).strategy(strategy).spec();
                // Every parameter may be missing, out of range or unknown, as an API client sends it.
                spec.batch_sizes = batch_sizes
                    .as_ref()
                    .map(|v| v.iter().take(70).map(AmountText::text).collect());
                spec.failure_threshold = threshold.as_ref().map(AmountText::text);
                spec.on_failure = match on_failure % 4 {
                    0 => None,
                    1 => Some("pause".into()),
                    2 => Some("revert".into()),
                    _ => Some("explode".into()),
                };
                spec.health_timeout_secs = health_timeout_secs.map(u64::from);
                spec.target = if *by_tags { Target::Tags(tags(*t)) } else { Target::Hosts(hosts(*h)) };
                self.run(
                    admin,
                    Command::CreateRollout {
                        rollout: nixfleet_core::RolloutId::parse(&format!("r-{}", self.minted))
                            .expect("valid"),
                        spec,
                        seed: *seed,
                    },
                )
            }
            Op::Resume(i) | Op::Cancel(i) | Op::DeleteRollout(i) => {
                let Some(rollout) = nth(&self.fleet.state.rollouts, *i) else {
                    return;
                };
                let cmd = match op {
                    Op::Resume(_) => Command::ResumeRollout { rollout },
                    Op::Cancel(_) => Command::CancelRollout { rollout },
                    _ => Command::DeleteRollout { rollout },
                };
                self.run(admin, cmd)
            }
            Op::DeleteRelease(i) => {
                let Some(release) = nth(&self.fleet.state.releases, *i) else {
                    return;
                };
                self.run(admin, Command::DeleteRelease { release })
            }
            Op::SetLifecycle { host, to } => self.run(
                admin,
                Command::SetLifecycle {
                    machine: m(*host),
                    to: Lifecycle::ALL[*to as usize % Lifecycle::ALL.len()],
                },
            ),
            Op::ClearDesired(h) => self.run(admin, Command::ClearDesired { machine: m(*h) }),
            Op::ClearQuarantine(h) => self.run(admin, Command::ClearQuarantine { machine: m(*h) }),
            Op::NotifyDeploy { host, generation } => {
                let id = m(*host);
                let p = path(&id, *generation);
                self.run(admin, Command::NotifyDeploy { machine: id, path: p })
            }
            Op::Advance(secs) => {
                self.fleet.advance(u64::from(*secs));
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut f = Fuzzed::default();
    for op in ops.iter().take(200) {
        f.step(op);
        let (state, now) = (&f.fleet.state, f.fleet.now);
        check_invariants(state);
        // The executor has settled: no running rollout has a transition left at this instant.
        for r in state.rollouts.values() {
            assert!(
                executor::evaluate(state, r, now).is_empty(),
                "rollout {} has an undecided transition after settle",
                r.id
            );
        }
    }
    let log = &f.fleet.log;
    assert_eq!(replay(log), f.fleet.state, "replay from zero differs from the incremental state");
    // Sequence numbers are 1, 2, 3, … and no batch attempt is decided twice.
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1));
    }
    check_decided_once(log.iter().map(|e| &e.event));
});
