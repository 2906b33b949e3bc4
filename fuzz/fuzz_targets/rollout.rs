//! The rollout planner and gate: arbitrary sequences of commands (registrations, reports with and
//! without health, releases, rollouts with arbitrary batch sizes and thresholds, resume, cancel,
//! delete, lifecycle changes, notify, the clock moving) go through `decide`, `State::apply` and
//! `executor::settle` exactly as the engine runs them, with a fake clock. Nothing panics, the
//! invariants hold after every step, and replaying the log from zero gives the incremental state.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nixfleet_core::event::{Actor, Envelope, Event, Lifecycle, ReleaseEntry, Target};
use nixfleet_core::ids::{KeyName, MachineId, ReleaseId, RolloutId, StorePath, Tag, Timestamp};
use nixfleet_core::plan::RolloutSpec;
use nixfleet_core::state::State;
use nixfleet_core::{decide, executor, Command, ExecutorInput, ReportInput, Seq};
use nixfleet_fuzz::{check_invariants, replay};
use std::collections::{BTreeMap, BTreeSet};

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
    StorePath::parse(&format!("/nix/store/{:032}-nixos-system-{host}-{n}", n % 8))
        .expect("generated store paths are valid")
}

fn nth<K: Clone, V>(map: &BTreeMap<K, V>, i: u8) -> Option<K> {
    map.keys().nth(i as usize % map.len().max(1)).cloned()
}

struct Fleet {
    state: State,
    log: Vec<Envelope>,
    now: Timestamp,
    minted: u32,
}

impl Fleet {
    fn push(&mut self, actor: &Actor, events: Vec<Event>) {
        for event in events {
            let env = Envelope {
                seq: Seq(self.state.last_seq.0 + 1),
                at: self.now,
                actor: actor.clone(),
                event,
            };
            self.state.apply(&env);
            self.log.push(env);
        }
    }

    fn settle(&mut self, input: ExecutorInput<'_>) {
        let now = self.now;
        let mut out = Vec::new();
        executor::settle(&mut self.state, input, now, |st, events| {
            for event in events {
                let env = Envelope {
                    seq: Seq(st.last_seq.0 + 1),
                    at: now,
                    actor: Actor::Executor,
                    event,
                };
                st.apply(&env);
                out.push(env);
            }
            Ok::<(), ()>(())
        })
        .expect("the in-memory append cannot fail");
        self.log.extend(out);
    }

    /// decide → append → apply → settle, as `Engine::submit` does.
    fn run(&mut self, actor: Actor, cmd: Command) {
        let Ok(events) = decide(&self.state, &cmd, self.now) else {
            return;
        };
        if events.is_empty() {
            return;
        }
        self.push(&actor, events.clone());
        self.settle(ExecutorInput::Appended(&events));
    }

    fn step(&mut self, op: &Op) {
        let admin = Actor::Key(KeyName::parse("fuzz-admin").expect("valid"));
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
                let report = ReportInput {
                    generation: generation.map(|g| path(&id, g)),
                    success: *success,
                    message: if *success { "deployed".into() } else { "failed".into() },
                    tags: tags(*t),
                    health: health.map(|ok| (Vec::new(), ok)),
                    agent_version: "fuzz".into(),
                    uptime_secs: 1,
                    dry_run: false,
                    rolled_back_from: rolled_back_from.map(|g| path(&id, g)),
                };
                self.run(
                    Actor::Machine(id.clone()),
                    Command::Report { machine: id, report, auto_register: *auto_register },
                )
            }
            Op::Release { hosts: mask, generation } => {
                self.minted += 1;
                let entries = hosts(*mask)
                    .into_iter()
                    .map(|h| ReleaseEntry {
                        path: path(&h, *generation),
                        machine: h,
                        platform: "x86_64-linux".into(),
                        tags: Vec::new(),
                    })
                    .collect();
                self.run(
                    admin,
                    Command::CreateRelease {
                        release: ReleaseId::parse(&format!("rel-{}", self.minted)).expect("valid"),
                        flake_ref: None,
                        flake_rev: None,
                        cache_url: None,
                        entries,
                    },
                )
            }
            Op::Rollout {
                release, strategy, batch_sizes, threshold, on_failure,
                health_timeout_secs, by_tags, tags: t, hosts: h, seed,
            } => {
                let Some(release) = nth(&self.state.releases, *release) else {
                    return;
                };
                self.minted += 1;
                let spec = RolloutSpec {
                    release,
                    strategy: ["canary", "staged", "all_at_once", "bogus"][*strategy as usize % 4].into(),
                    batch_sizes: batch_sizes.as_ref().map(|v| v.iter().take(70).map(AmountText::text).collect()),
                    failure_threshold: threshold.as_ref().map(AmountText::text),
                    on_failure: match on_failure % 4 {
                        0 => None,
                        1 => Some("pause".into()),
                        2 => Some("revert".into()),
                        _ => Some("explode".into()),
                    },
                    health_timeout_secs: health_timeout_secs.map(u64::from),
                    target: if *by_tags { Target::Tags(tags(*t)) } else { Target::Hosts(hosts(*h)) },
                    cache_url: None,
                };
                self.run(
                    admin,
                    Command::CreateRollout {
                        rollout: RolloutId::parse(&format!("r-{}", self.minted)).expect("valid"),
                        spec,
                        seed: *seed,
                    },
                )
            }
            Op::Resume(i) | Op::Cancel(i) | Op::DeleteRollout(i) => {
                let Some(rollout) = nth(&self.state.rollouts, *i) else {
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
                let Some(release) = nth(&self.state.releases, *i) else {
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
                self.now = self.now.plus_secs(u64::from(*secs));
                self.settle(ExecutorInput::Tick);
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut f = Fleet {
        state: State::default(),
        log: Vec::new(),
        now: Timestamp(1_700_000_000_000),
        minted: 0,
    };
    for op in ops.iter().take(200) {
        f.step(op);
        check_invariants(&f.state);
        // The executor has settled: no running rollout has a transition left at this instant.
        for r in f.state.rollouts.values() {
            assert!(
                executor::evaluate(&f.state, r, f.now).is_empty(),
                "rollout {} has an undecided transition after settle",
                r.id
            );
        }
    }
    assert_eq!(replay(&f.log), f.state, "replay from zero differs from the incremental state");
    // Sequence numbers are 1, 2, 3, … and no batch attempt is decided twice.
    let mut decided = BTreeSet::new();
    let mut attempt = BTreeMap::new();
    for (i, e) in f.log.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1));
        match &e.event {
            Event::BatchStarted { rollout, batch_index, attempt: a, .. } => {
                attempt.insert((rollout.clone(), *batch_index), *a);
            }
            Event::BatchSucceeded { rollout, batch_index, .. }
            | Event::BatchFailed { rollout, batch_index, .. } => {
                let a = attempt
                    .get(&(rollout.clone(), *batch_index))
                    .unwrap_or_else(|| panic!("batch {batch_index} of {rollout} decided before it started"));
                assert!(
                    decided.insert((rollout.clone(), *batch_index, *a)),
                    "batch {batch_index} of {rollout} decided twice in attempt {a}"
                );
            }
            _ => {}
        }
    }
});
