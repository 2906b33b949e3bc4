//! A given/when/then harness over the pure core: decide, apply, and let the executor settle,
//! exactly as the engine does, but in memory with a fake clock.
#![allow(dead_code, clippy::unwrap_used)]

use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::plan::RolloutSpec;
use nixfleet_core::state::State;
use nixfleet_core::{decide, executor, Command, Rejection, ReportInput};

pub struct Fleet {
    pub state: State,
    pub log: Vec<Envelope>,
    pub now: Timestamp,
}

pub fn m(id: &str) -> MachineId {
    MachineId::parse(id).unwrap()
}
pub fn tag(t: &str) -> Tag {
    Tag::parse(t).unwrap()
}
/// A valid store path for system generation `n` of `host`.
pub fn path(host: &str, n: u32) -> StorePath {
    let h: u32 = host.bytes().map(u32::from).sum();
    StorePath::parse(&format!(
        "/nix/store/{:016}{:016}-nixos-system-{host}-{n}",
        h, n
    ))
    .unwrap()
}
pub fn admin() -> Actor {
    Actor::Key(KeyName::parse("test-admin").unwrap())
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            state: State::default(),
            log: Vec::new(),
            now: Timestamp(1_700_000_000_000),
        }
    }
}

impl Fleet {
    fn push(&mut self, actor: &Actor, events: &[Event], out: &mut Vec<Event>) {
        for event in events {
            let env = Envelope {
                seq: Seq(self.state.last_seq.0 + 1),
                at: self.now,
                actor: actor.clone(),
                event: event.clone(),
            };
            self.state.apply(&env);
            self.log.push(env);
            out.push(event.clone());
        }
    }

    /// Appends a group of events by `actor`, then lets the executor settle, as the engine does.
    pub fn append(&mut self, actor: Actor, events: Vec<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        self.push(&actor, &events, &mut out);
        self.settle(executor::ExecutorInput::Appended(&events), &mut out);
        out
    }

    fn settle(&mut self, input: executor::ExecutorInput<'_>, out: &mut Vec<Event>) {
        let now = self.now;
        let log = &mut self.log;
        executor::settle(&mut self.state, input, now, |st, evs| {
            for event in evs {
                let env = Envelope {
                    seq: Seq(st.last_seq.0 + 1),
                    at: now,
                    actor: Actor::Executor,
                    event,
                };
                st.apply(&env);
                out.push(env.event.clone());
                log.push(env);
            }
            Ok::<(), ()>(())
        })
        .expect("in-memory append cannot fail");
    }

    pub fn run(&mut self, actor: Actor, cmd: Command) -> Result<Vec<Event>, Rejection> {
        let events = decide(&self.state, &cmd, self.now)?;
        Ok(self.append(actor, events))
    }

    pub fn ok(&mut self, cmd: Command) -> Vec<Event> {
        self.run(admin(), cmd).expect("command accepted")
    }

    /// Moves the clock and fires due deadlines.
    pub fn advance(&mut self, secs: u64) -> Vec<Event> {
        self.now = self.now.plus_secs(secs);
        let mut out = Vec::new();
        self.settle(executor::ExecutorInput::Tick, &mut out);
        out
    }

    pub fn register(&mut self, id: &str, tags: &[&str]) {
        self.ok(Command::Register {
            machine: m(id),
            lifecycle: Lifecycle::Active,
            tags: tags.iter().map(|t| tag(t)).collect(),
        });
    }

    /// The machine reports running generation `n`, with health if given.
    pub fn report(
        &mut self,
        id: &str,
        generation: Option<StorePath>,
        success: bool,
        health: Option<bool>,
    ) -> Vec<Event> {
        let health = health.map(one_check);
        let message = if success { "up-to-date" } else { "failed" };
        self.report_full(id, report_input(generation, success, message, health))
    }

    pub fn report_full(&mut self, id: &str, report: ReportInput) -> Vec<Event> {
        self.run(
            Actor::Machine(m(id)),
            Command::Report {
                machine: m(id),
                report,
                auto_register: true,
            },
        )
        .expect("report accepted")
    }

    pub fn release(&mut self, id: &str, hosts: &[(&str, u32)]) {
        self.ok(Command::CreateRelease {
            release: ReleaseId::parse(id).unwrap(),
            flake_ref: None,
            flake_rev: None,
            cache_url: None,
            entries: hosts
                .iter()
                .map(|(h, n)| ReleaseEntry {
                    machine: m(h),
                    path: path(h, *n),
                    platform: "x86_64-linux".into(),
                    tags: vec![],
                })
                .collect(),
        });
    }

    pub fn spec(
        release: &str,
        strategy: &str,
        sizes: Option<&[&str]>,
        threshold: &str,
        on_failure: &str,
        timeout: u64,
        target: Target,
    ) -> RolloutSpec {
        RolloutSpec {
            release: ReleaseId::parse(release).unwrap(),
            strategy: strategy.into(),
            batch_sizes: sizes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            failure_threshold: Some(threshold.into()),
            on_failure: Some(on_failure.into()),
            health_timeout_secs: Some(timeout),
            target,
            cache_url: None,
        }
    }

    pub fn rollout(&mut self, id: &str, spec: RolloutSpec) -> Result<Vec<Event>, Rejection> {
        self.run(
            admin(),
            Command::CreateRollout {
                rollout: RolloutId::parse(id).unwrap(),
                spec,
                seed: 42,
            },
        )
    }

    pub fn status(&self, id: &str) -> RolloutStatus {
        self.state.rollouts[&RolloutId::parse(id).unwrap()].status
    }

    pub fn kinds(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind()).collect()
    }

    pub fn desired(&self, id: &str) -> Option<StorePath> {
        self.state.machines[&m(id)]
            .desired
            .as_ref()
            .map(|d| d.path.clone())
    }

    /// Replays the whole log into a fresh state.
    pub fn replayed(&self) -> State {
        let mut s = State::default();
        for e in &self.log {
            s.apply(e);
        }
        s
    }
}

/// A report of a machine running `generation`, with these health results.
pub fn report_input(
    generation: Option<StorePath>,
    success: bool,
    message: &str,
    health: Option<(Vec<CheckResult>, bool)>,
) -> ReportInput {
    ReportInput {
        generation,
        success,
        message: message.into(),
        tags: vec![],
        health,
        agent_version: "test".into(),
        uptime_secs: 1,
        dry_run: false,
        rolled_back_from: None,
    }
}

/// Health results of one check that passed (or failed).
pub fn one_check(passed: bool) -> (Vec<CheckResult>, bool) {
    (
        vec![CheckResult {
            name: "check".into(),
            passed,
            duration_ms: 1,
            message: if passed { "".into() } else { "down".into() },
        }],
        passed,
    )
}

pub fn tags(t: &[&str]) -> Target {
    Target::Tags(t.iter().map(|x| tag(x)).collect())
}
pub fn hosts(h: &[&str]) -> Target {
    Target::Hosts(h.iter().map(|x| m(x)).collect())
}
