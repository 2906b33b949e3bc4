//! The simulated fleet: commands go through `decide`, the events are appended to an in-memory
//! log and applied, and the executor settles, exactly as the engine runs them, at a clock the
//! test moves.

use crate::names::{admin, create_release, m, path};
use crate::report::Report;
use crate::rollout::Rollout;
use nixfleet_core::event::{Actor, Envelope, Event, Lifecycle, RolloutStatus};
use nixfleet_core::ids::{RolloutId, Seq, StorePath, Timestamp};
use nixfleet_core::state::{Batch, MachineHealth, Rollout as RolloutState, State};
use nixfleet_core::{decide, executor, Command, Rejection, ReportInput};
use std::ops::Deref;

/// A fleet in memory: the projections, the log that built them, and the clock.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The projections, applied incrementally.
    pub state: State,
    /// Every event appended so far, in order.
    pub log: Vec<Envelope>,
    /// The clock: every event appended now is stamped with it; [`Fleet::advance`] moves it.
    pub now: Timestamp,
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

/// The events one step appended, in order: the command's, then the executor's.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome(pub Vec<Event>);

impl Deref for Outcome {
    type Target = [Event];
    fn deref(&self) -> &[Event] {
        &self.0
    }
}

impl Outcome {
    /// The kinds of the events (`BatchStarted`, …).
    pub fn kinds(&self) -> Vec<&'static str> {
        self.0.iter().map(Event::kind).collect()
    }

    /// Asserts the events are exactly of these kinds, in this order.
    #[track_caller]
    pub fn assert_kinds(&self, kinds: &[&str]) {
        assert_eq!(self.kinds(), kinds, "{:?}", self.0);
    }

    /// Asserts the last events are of these kinds, in this order.
    #[track_caller]
    pub fn assert_ends_with(&self, kinds: &[&str]) {
        assert!(
            self.kinds().ends_with(kinds),
            "expected the events to end with {kinds:?}, got {:?}",
            self.kinds()
        );
    }

    /// Asserts an event of this kind was appended.
    #[track_caller]
    pub fn assert_has(&self, kind: &str) {
        assert!(
            self.kinds().contains(&kind),
            "expected a {kind}, got {:?}",
            self.kinds()
        );
    }

    /// Asserts no event of this kind was appended.
    #[track_caller]
    pub fn assert_lacks(&self, kind: &str) {
        assert!(
            !self.kinds().contains(&kind),
            "expected no {kind}, got {:?}",
            self.kinds()
        );
    }
}

impl Fleet {
    /// Appends a group of events by `actor`, then lets the executor settle, as the engine does.
    pub fn append(&mut self, actor: Actor, events: Vec<Event>) -> Outcome {
        let mut out = Vec::new();
        for event in &events {
            self.push(actor.clone(), event.clone(), &mut out);
        }
        self.settle(executor::ExecutorInput::Appended(&events), &mut out);
        Outcome(out)
    }

    fn push(&mut self, actor: Actor, event: Event, out: &mut Vec<Event>) {
        push_onto(&mut self.state, &mut self.log, self.now, actor, event, out);
    }

    fn settle(&mut self, input: executor::ExecutorInput<'_>, out: &mut Vec<Event>) {
        let now = self.now;
        let log = &mut self.log;
        executor::settle(&mut self.state, input, now, |st, events| {
            for event in events {
                push_onto(st, log, now, Actor::Executor, event, out);
            }
            Ok::<(), ()>(())
        })
        .expect("the in-memory append cannot fail");
    }

    /// decide → append → apply → settle, as `Engine::submit` does.
    pub fn run(&mut self, actor: Actor, cmd: Command) -> Result<Outcome, Rejection> {
        let events = decide(&self.state, &cmd, self.now)?;
        Ok(self.append(actor, events))
    }

    /// Runs `cmd` as the operator; panics if it is rejected.
    #[track_caller]
    pub fn ok(&mut self, cmd: Command) -> Outcome {
        accepted(self.run(admin(), cmd), format_args!("command"))
    }

    /// Runs `cmd` as the operator and returns why it was rejected; panics if it was accepted.
    #[track_caller]
    pub fn rejected(&mut self, cmd: Command) -> Rejection {
        match self.run(admin(), cmd) {
            Ok(out) => panic!("command accepted, expected a rejection: {:?}", out.kinds()),
            Err(why) => why,
        }
    }

    /// Moves the clock `secs` seconds on and fires the deadlines that fell due.
    pub fn advance(&mut self, secs: u64) -> Outcome {
        self.now = self.now.plus_secs(secs);
        let mut out = Vec::new();
        self.settle(executor::ExecutorInput::Tick, &mut out);
        Outcome(out)
    }

    /// The operator registers machine `id`, active, with these tags.
    pub fn register(&mut self, id: &str, tags: &[&str]) {
        self.ok(Command::Register {
            machine: m(id),
            lifecycle: Lifecycle::Active,
            tags: tags.iter().map(|t| crate::names::tag(t)).collect(),
        });
    }

    /// Machine `id` reports (registering itself if it is new); panics if the report is rejected.
    #[track_caller]
    pub fn report(&mut self, id: &str, report: Report) -> Outcome {
        accepted(self.try_report(id, report), format_args!("report of {id}"))
    }

    /// Machine `id` reports (registering itself if it is new); the report may be rejected.
    pub fn try_report(&mut self, id: &str, report: Report) -> Result<Outcome, Rejection> {
        let input = report.input(id);
        let cmd = match report.measured_at() {
            None => Command::Report {
                machine: m(id),
                report: input,
                auto_register: true,
            },
            Some(measured) => {
                let sent = self.now.plus_secs(measured.clock_ahead_secs);
                Command::ReportMeasured {
                    machine: m(id),
                    report: input,
                    auto_register: true,
                    health_timestamp: Timestamp(sent.0 - measured.age_secs * 1000),
                    report_timestamp: Some(sent),
                }
            }
        };
        self.run(Actor::Machine(m(id)), cmd)
    }

    /// Machine `id` sends this report, exactly as given.
    #[track_caller]
    pub fn report_full(&mut self, id: &str, report: ReportInput) -> Outcome {
        self.run_as_machine(
            id,
            Command::Report {
                machine: m(id),
                report,
                auto_register: true,
            },
        )
    }

    /// Machine `id` sends `cmd`; panics if it is rejected.
    #[track_caller]
    pub fn run_as_machine(&mut self, id: &str, cmd: Command) -> Outcome {
        accepted(
            self.run(Actor::Machine(m(id)), cmd),
            format_args!("report of {id}"),
        )
    }

    /// The operator creates release `id`: each machine with its system generation.
    pub fn release(&mut self, id: &str, generations: &[(&str, u64)]) {
        self.ok(create_release(
            id,
            generations.iter().map(|(h, n)| (m(h), path(h, *n))),
        ));
    }

    /// The operator creates rollout `id`; panics if it is rejected.
    #[track_caller]
    pub fn start(&mut self, id: &str, rollout: Rollout) -> Outcome {
        accepted(self.try_start(id, rollout), format_args!("rollout {id}"))
    }

    /// The operator creates rollout `id`, which may be rejected.
    pub fn try_start(&mut self, id: &str, rollout: Rollout) -> Result<Outcome, Rejection> {
        self.run(admin(), rollout.create(id))
    }

    /// The operator resumes rollout `id`; panics if it is rejected.
    #[track_caller]
    pub fn resume(&mut self, id: &str) -> Outcome {
        self.ok(Command::ResumeRollout { rollout: rid(id) })
    }

    /// The operator cancels rollout `id`; panics if it is rejected.
    #[track_caller]
    pub fn cancel(&mut self, id: &str) -> Outcome {
        self.ok(Command::CancelRollout { rollout: rid(id) })
    }

    /// Rollout `id` as the projections hold it.
    #[track_caller]
    pub fn rollout(&self, id: &str) -> &RolloutState {
        self.state
            .rollouts
            .get(&rid(id))
            .unwrap_or_else(|| panic!("no rollout {id}"))
    }

    /// The status of rollout `id`.
    #[track_caller]
    pub fn status(&self, id: &str) -> RolloutStatus {
        self.rollout(id).status
    }

    /// Batch `index` (0-based) of rollout `id`.
    #[track_caller]
    pub fn batch(&self, id: &str, index: usize) -> &Batch {
        &self.rollout(id).batches[index]
    }

    /// The machines of batch `index` of rollout `id`, in plan order.
    #[track_caller]
    pub fn machines_of_batch(&self, id: &str, index: usize) -> Vec<String> {
        let batch = self.batch(id, index);
        batch
            .machines
            .iter()
            .map(|(mm, _)| mm.to_string())
            .collect()
    }

    /// How the current attempt of batch `index` of rollout `id` judges `machine`.
    #[track_caller]
    pub fn health(&self, id: &str, index: usize, machine: &str) -> MachineHealth {
        self.batch(id, index).health[&m(machine)].clone()
    }

    /// The generation machine `id` is told to run.
    #[track_caller]
    pub fn desired(&self, id: &str) -> Option<StorePath> {
        self.state.machines[&m(id)]
            .desired
            .as_ref()
            .map(|d| d.path.clone())
    }

    /// Replays the whole log into a fresh state.
    pub fn replayed(&self) -> State {
        crate::checks::replay(&self.log)
    }
}

/// The events of an accepted step; panics naming `what` if it was rejected.
#[track_caller]
fn accepted(result: Result<Outcome, Rejection>, what: std::fmt::Arguments<'_>) -> Outcome {
    match result {
        Ok(out) => out,
        Err(why) => panic!("{what} rejected: {why:?}"),
    }
}

fn rid(id: &str) -> RolloutId {
    RolloutId::parse(id).unwrap_or_else(|e| panic!("rollout id {id:?}: {e:?}"))
}

fn push_onto(
    state: &mut State,
    log: &mut Vec<Envelope>,
    at: Timestamp,
    actor: Actor,
    event: Event,
    out: &mut Vec<Event>,
) {
    let env = Envelope {
        seq: Seq(state.last_seq.0 + 1),
        at,
        actor,
        event,
    };
    state.apply(&env);
    out.push(env.event.clone());
    log.push(env);
}
