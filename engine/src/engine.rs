//! The engine: projections kept in step with the log, commands decided and appended, and the
//! rollout executor driven by appended events and one deadline timer.
//!
//! Write path, under the state lock: decide (pure) → stage in the log → apply → let the executor
//! settle (each decision staged and applied in turn). Outside the lock the caller waits until the
//! last staged sequence is durable, and only then answers. Projections may hold staged events up
//! to one group commit before they are durable, so readers wait too: the API answers a read only
//! once everything staged when it was made is durable ([`Engine::wait_staged_durable`]). A crash
//! thus loses only events nobody was told about, and their consequences.

use crate::log::{Checkpoint, EventLog, Follow, LogError, LogOptions, MemoryLog, SledLog};
use nixfleet_core::{
    decide, executor, Actor, Command, Event, ExecutorInput, Rejection, Seq, State, Timestamp,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Where the engine gets the time. The core never reads a clock; the engine reads this one.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the epoch.
    fn now(&self) -> Timestamp;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as u64)
    }
}

/// A clock that moves only when told (simulation and tests).
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(AtomicU64::new(start.0))
    }
    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Why a command did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The command was refused (a 4xx).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The log failed (a 500; the engine stops accepting writes).
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a command appended.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Sequence of the last event appended (the command's and the executor's).
    pub seq: Seq,
    /// The command's own events.
    pub events: Vec<Event>,
}

/// The engine.
pub struct Engine {
    log: Arc<dyn EventLog>,
    state: RwLock<State>,
    clock: Arc<dyn Clock>,
    wake: tokio::sync::Notify,
    poisoned: AtomicBool,
    /// The snapshot's checkpoint when the projections came from one: the records up to it were not
    /// read at start and are verified afterwards ([`Engine::verify_history`]).
    unverified: Option<Checkpoint>,
    /// Whether the log is shared with other control planes (PostgreSQL): then the projections
    /// catch up before each decision, a conflict is decided again, and a storage failure is not
    /// fatal (the engine answers 503 and recovers once the database answers).
    shared: bool,
    /// Whether this control plane held the executor's lease when it last looked.
    leading: AtomicBool,
}

impl Engine {
    /// An engine over `log` whose projections are `state` (already replayed from it).
    pub fn new(log: Arc<dyn EventLog>, state: State, clock: Arc<dyn Clock>) -> Self {
        debug_assert_eq!(
            state.last_seq,
            log.last_seq(),
            "projections must be caught up with the log"
        );
        Engine {
            state: RwLock::new(state),
            clock,
            wake: tokio::sync::Notify::new(),
            shared: log.changes().is_some(),
            log,
            poisoned: AtomicBool::new(false),
            unverified: None,
            leading: AtomicBool::new(false),
        }
    }

    /// Opens the data directory: the sled log in `data_dir/log`, verified, and the projections
    /// rebuilt from the snapshot (if it matches the log) plus the records after it, or else by
    /// replaying the whole log.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Engine, LogError> {
        Self::open_with(data_dir, clock, LogOptions::default())
    }

    /// Like [`Engine::open`], with `options` for how much of the log stays in sled (the rest is in
    /// the archive, `data_dir/log/archive`).
    pub fn open_with(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        options: LogOptions,
    ) -> Result<Engine, LogError> {
        let log_dir = data_dir.join("log");
        match crate::snapshot::load(data_dir) {
            Ok(Some((checkpoint, mut state))) => {
                match SledLog::open_with(&log_dir, Some(checkpoint), options, |r| {
                    state.apply(&r.into_envelope())
                }) {
                    Ok(log) => {
                        tracing::info!(
                            from = checkpoint.seq,
                            to = log.last_seq().0,
                            "projections loaded from the snapshot, the rest replayed"
                        );
                        let mut engine = Engine::new(Arc::new(log), state, clock);
                        engine.unverified = Some(checkpoint);
                        return Ok(engine);
                    }
                    Err(LogError::CheckpointMismatch { seq }) => {
                        tracing::warn!(
                            seq,
                            "the snapshot does not match the log; replaying the whole log"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(None) => {}
            Err(why) => tracing::warn!(%why, "ignoring the snapshot; replaying the whole log"),
        }
        let mut state = State::default();
        let log = SledLog::open_with(&log_dir, None, options, |r| state.apply(&r.into_envelope()))?;
        Ok(Engine::new(Arc::new(log), state, clock))
    }

    /// The snapshot checkpoint the engine started from, if any: the records up to it have not
    /// been verified by this process yet.
    pub fn unverified_history(&self) -> Option<Checkpoint> {
        self.unverified
    }

    /// An engine over a log shared with other control planes (PostgreSQL): the projections are
    /// rebuilt by reading the whole log (snapshots are the embedded log's).
    pub fn open_shared(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>) -> Result<Engine, LogError> {
        let mut state = State::default();
        log.follow(&mut |f| match f {
            Follow::Reset => state = State::default(),
            Follow::Record(r) => state.apply(&r.into_envelope()),
        })?;
        Ok(Engine::new(log, state, clock))
    }

    /// Verifies the records a start from a snapshot did not read (records 1 to the checkpoint),
    /// so that a damaged or altered record is refused even when a snapshot made start-up skip it.
    /// Returns how many records were verified (0 when the start read the whole log). On an error
    /// the engine stops accepting writes; the caller removes the snapshot and stops, so the next
    /// start replays, and refuses, the whole log.
    pub fn verify_history(&self) -> Result<u64, LogError> {
        let Some(c) = self.unverified else {
            return Ok(0);
        };
        self.log
            .verify_prefix(c)
            .inspect_err(|_| self.poisoned.store(true, Ordering::SeqCst))?;
        Ok(c.seq)
    }

    /// Writes a snapshot of the projections at the last durable sequence into `data_dir`.
    /// Returns the sequence it covers (None when the log is empty).
    pub fn write_snapshot(&self, data_dir: &Path) -> Result<Option<Seq>, String> {
        let state = self.read(|s| s.clone());
        let seq = state.last_seq;
        if seq.0 == 0 {
            return Ok(None);
        }
        self.log.wait_durable(seq).map_err(|e| e.to_string())?;
        let hash = self
            .log
            .record_hash(seq)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("record {} is missing", seq.0))?;
        let bytes = crate::snapshot::write(data_dir, &state, hash)
            .map_err(|e| format!("cannot write the snapshot: {e}"))?;
        tracing::info!(seq = seq.0, bytes, "snapshot written");
        Ok(Some(seq))
    }

    /// Applies the retention policy: report and health events older than `age` that the
    /// projections no longer show leave the sealed segments (`log::retention`). The policy is
    /// taken from the projections under the read lock; the segments are rewritten outside it.
    /// Returns how many records were removed.
    pub fn apply_retention(&self, age: std::time::Duration) -> Result<u64, LogError> {
        let now = self.clock.now();
        let policy = self.read(|s| crate::log::retention::Retention::new(s, now, age));
        self.log.compact(&policy, now.0)
    }

    /// An engine over an empty in-memory log.
    pub fn in_memory(clock: Arc<dyn Clock>) -> Engine {
        Engine::new(Arc::new(MemoryLog::new()), State::default(), clock)
    }

    /// The log.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// The clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Reads the projections.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self
            .state
            .read()
            .expect("state lock poisoned: the engine failed stop"))
    }

    /// Decides `cmd`, stages its events and the executor's consequences, and applies them.
    /// Not yet durable: call [`Engine::execute`] (async) or [`Engine::execute_blocking`].
    ///
    /// On a shared log the projections first catch up with what other control planes appended
    /// (the write turn holds the log's lock from there to the commit); a decision that lost the
    /// race anyway ([`LogError::Conflict`]) is made again on the caught-up projections.
    pub fn submit(&self, actor: Actor, cmd: &Command) -> Result<Submitted, EngineError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(LogError::Closed("an earlier append failed".into()).into());
        }
        let now = self.clock.now();
        let mut state = self
            .state
            .write()
            .expect("state lock poisoned: the engine failed stop");
        let mut attempt = 0;
        loop {
            let (leader, caught) = self.catch_up(&mut state, true)?;
            let events = decide(&state, cmd, now)?;
            if events.is_empty() {
                let seq = if leader && !caught.is_empty() {
                    self.settle_quietly(&mut state, &caught, now)?
                } else {
                    state.last_seq
                };
                return Ok(Submitted { seq, events });
            }
            let seq = match self.stage_apply(&mut state, now, &actor, &events) {
                Err(LogError::Conflict) if attempt < 8 => {
                    attempt += 1;
                    continue;
                }
                r => r?,
            };
            let seq = if !leader {
                seq
            } else if caught.is_empty() {
                self.settle_quietly(&mut state, &events, now)?.max(seq)
            } else {
                let mut all = caught;
                all.extend(events.iter().cloned());
                self.settle_quietly(&mut state, &all, now)?.max(seq)
            };
            drop(state);
            self.wake.notify_one();
            return Ok(Submitted { seq, events });
        }
    }

    /// Lets the executor settle after `appended`. On a shared log a failed executor append does
    /// not fail the command that woke it (already staged): it is logged, and the executor decides
    /// again at its next wake. On the embedded log a failure is fatal as before.
    fn settle_quietly(
        &self,
        state: &mut State,
        appended: &[Event],
        now: Timestamp,
    ) -> Result<Seq, LogError> {
        match self.settle(state, ExecutorInput::Appended(appended), now) {
            Ok(seq) => Ok(seq),
            Err(e) if self.shared => {
                tracing::warn!(error = %e, "executor decision not appended; retried at the next wake");
                self.wake.notify_one();
                Ok(state.last_seq)
            }
            Err(e) => Err(e),
        }
    }

    /// On a shared log, applies what other control planes appended since the projections last
    /// looked (`write`: in a write turn, holding the log's lock) and says whether this control
    /// plane holds the executor's lease, with the events caught up. A log of one process has
    /// nothing to catch up.
    fn catch_up(&self, state: &mut State, write: bool) -> Result<(bool, Vec<Event>), LogError> {
        let mut caught = Vec::new();
        if !self.shared {
            return Ok((true, caught));
        }
        let mut apply = |f: Follow| match f {
            Follow::Reset => {
                tracing::warn!("rebuilding the projections from the log after a failed commit");
                *state = State::default();
                caught.clear();
            }
            Follow::Record(r) => {
                let env = r.into_envelope();
                caught.push(env.event.clone());
                state.apply(&env);
            }
        };
        let leader = if write {
            self.log.begin_write(&mut apply)?
        } else {
            self.log.follow(&mut apply)?
        };
        if self.leading.swap(leader, Ordering::SeqCst) != leader {
            self.wake.notify_one();
        }
        Ok((leader, caught))
    }

    /// On a shared log: applies what other control planes appended, and, when this control plane
    /// holds the executor's lease, lets the executor decide on it (and on the clock, after it
    /// gained the lease). Returns the last staged sequence number.
    pub fn follow(&self) -> Result<Seq, LogError> {
        let now = self.clock.now();
        let mut state = self
            .state
            .write()
            .expect("state lock poisoned: the engine failed stop");
        let was_leading = self.leading.load(Ordering::SeqCst);
        let (leader, caught) = self.catch_up(&mut state, false)?;
        if !leader || (caught.is_empty() && was_leading) {
            return Ok(state.last_seq);
        }
        // Decide in a write turn (which may catch up a little more).
        let (leader, more) = self.catch_up(&mut state, true)?;
        if !leader {
            return Ok(state.last_seq);
        }
        let mut all = caught;
        all.extend(more);
        let seq = self.settle_quietly(&mut state, &all, now)?;
        Ok(self
            .settle(&mut state, ExecutorInput::Tick, now)
            .unwrap_or(seq)
            .max(seq))
    }

    /// Submits `cmd` and waits until everything it appended is durable.
    pub async fn execute(&self, actor: Actor, cmd: &Command) -> Result<Submitted, EngineError> {
        let s = if self.shared {
            // A write turn waits for the database (and for other control planes' turns).
            tokio::task::block_in_place(|| self.submit(actor, cmd))?
        } else {
            self.submit(actor, cmd)?
        };
        self.wait_durable(s.seq).await?;
        Ok(s)
    }

    /// Submits `cmd` and blocks until everything it appended is durable.
    pub fn execute_blocking(&self, actor: Actor, cmd: &Command) -> Result<Submitted, EngineError> {
        let s = self.submit(actor, cmd)?;
        self.log.wait_durable(s.seq)?;
        Ok(s)
    }

    /// Waits (async) until `seq` is durable.
    pub async fn wait_durable(&self, seq: Seq) -> Result<(), LogError> {
        if self.shared {
            // The log knows whether the commit of this very record failed (a sequence number
            // refused then may be staged again by a later turn).
            let log = self.log.clone();
            return tokio::task::spawn_blocking(move || log.wait_durable(seq))
                .await
                .map_err(|e| LogError::Io(format!("waiting for the commit: {e}")))?;
        }
        let mut rx = self.log.durable_watch();
        let res = rx.wait_for(|d| *d >= seq.0).await.map(|_| ());
        match res {
            Ok(()) => Ok(()),
            Err(_) => {
                // The flusher stopped: it failed. Ask the log for the reason.
                let r = self.log.wait_durable(seq);
                self.poisoned.store(true, Ordering::SeqCst);
                r.and(Err(LogError::Closed("flusher stopped".into())))
            }
        }
    }

    /// Waits (async) until everything staged so far is durable: an answer made from the
    /// projections or the log now shows nothing that a crash could take back once this returns.
    pub async fn wait_staged_durable(&self) -> Result<(), LogError> {
        let staged = self.log.last_seq();
        if self.log.durable_seq() >= staged {
            return Ok(());
        }
        self.wait_durable(staged).await
    }

    /// Fires due deadlines (the executor's timer calls this). Returns the last staged sequence.
    pub fn tick(&self) -> Result<Seq, LogError> {
        let now = self.clock.now();
        let mut state = self
            .state
            .write()
            .expect("state lock poisoned: the engine failed stop");
        let (leader, caught) = self.catch_up(&mut state, true)?;
        if !leader {
            return Ok(state.last_seq);
        }
        if !caught.is_empty() {
            self.settle(&mut state, ExecutorInput::Appended(&caught), now)?;
        }
        self.settle(&mut state, ExecutorInput::Tick, now)
    }

    /// The next health deadline, if any batch is waiting.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.read(executor::next_deadline)
    }

    /// Wakes the executor loop (an append may have moved the next deadline).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    fn stage_apply(
        &self,
        state: &mut State,
        now: Timestamp,
        actor: &Actor,
        events: &[Event],
    ) -> Result<Seq, LogError> {
        let first = state.last_seq.0 + 1;
        let seq = self.log.stage(now, actor, events).inspect_err(|e| {
            if !self.shared || !matches!(e, LogError::Conflict | LogError::Unavailable(_)) {
                self.poisoned.store(true, Ordering::SeqCst)
            }
        })?;
        debug_assert_eq!(
            seq.0,
            first + events.len() as u64 - 1,
            "log and projections disagree on sequence numbers"
        );
        for (i, event) in events.iter().enumerate() {
            state.apply(&nixfleet_core::Envelope {
                seq: Seq(first + i as u64),
                at: now,
                actor: actor.clone(),
                event: event.clone(),
            });
        }
        metrics::counter!("nixfleet_events_appended_total").increment(events.len() as u64);
        Ok(seq)
    }

    fn settle(
        &self,
        state: &mut State,
        input: ExecutorInput<'_>,
        now: Timestamp,
    ) -> Result<Seq, LogError> {
        let mut last = state.last_seq;
        executor::settle(state, input, now, |st, events| {
            for e in &events {
                log_decision(e);
            }
            last = self.stage_apply(st, now, &Actor::Executor, &events)?;
            Ok::<(), LogError>(())
        })?;
        Ok(last)
    }

    /// Runs the executor's deadline timer until `shutdown` resolves.
    pub async fn run_executor(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // A shared log also wakes the executor when another control plane appended or the lease
        // changed hands.
        let mut changes = self.log.changes();
        loop {
            // On a shared log only the lease holder decides on the clock; the others wait for
            // changes (an append elsewhere, or the lease coming their way).
            let deciding = !self.shared || self.leading.load(Ordering::SeqCst);
            let sleep = match self.next_deadline().filter(|_| deciding) {
                Some(t) => {
                    std::time::Duration::from_millis(t.0.saturating_sub(self.now().0).max(1))
                }
                None => std::time::Duration::from_secs(3600),
            };
            let changed = async {
                match changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let followed = tokio::select! {
                _ = &mut shutdown => return,
                _ = self.woken() => continue,
                ok = changed => {
                    if !ok {
                        changes = None;
                        continue;
                    }
                    true
                }
                _ = tokio::time::sleep(sleep) => false,
            };
            let run = || if followed { self.follow() } else { self.tick() };
            let res = if self.shared {
                tokio::task::block_in_place(run)
            } else {
                run()
            };
            match res {
                Ok(seq) => {
                    if let Err(e) = self.wait_durable(seq).await {
                        tracing::error!(error = %e, "executor append failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "executor append failed"),
            }
        }
    }
}

/// Logs an executor decision as `describe::log_line` words it (the v0.1 messages and fields).
fn log_decision(e: &Event) {
    use nixfleet_core::describe::{self, Level};
    let Some(l) = describe::log_line(e) else {
        return;
    };
    let rollout = l.rollout;
    match l.level {
        Level::Warn => tracing::warn!(
            %rollout,
            batch_index = l.batch_index,
            attempt = l.attempt,
            healthy = l.healthy,
            unhealthy = l.unhealthy,
            threshold = l.threshold,
            reason = l.reason.map(tracing::field::display),
            machines = l.machines,
            "{}",
            l.message
        ),
        Level::Info => tracing::info!(
            %rollout,
            batch_index = l.batch_index,
            attempt = l.attempt,
            healthy = l.healthy,
            unhealthy = l.unhealthy,
            threshold = l.threshold,
            reason = l.reason.map(tracing::field::display),
            machines = l.machines,
            "{}",
            l.message
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nixfleet_core::event::BatchFailReason;
    use nixfleet_core::RolloutId;
    use std::sync::{Arc, Mutex};

    /// What `log_decision` prints for each event, without times or colours.
    fn logged(events: &[Event]) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || events.iter().for_each(log_decision));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn executor_decisions_are_logged_with_the_v0_1_messages_and_their_fields() {
        let rollout = RolloutId::parse("r-1").unwrap();
        let failed = |reason| Event::BatchFailed {
            rollout: rollout.clone(),
            batch_index: 1,
            healthy: 0,
            unhealthy: 2,
            threshold: 0,
            reason,
        };
        let text = logged(&[
            failed(BatchFailReason::Timeout),
            failed(BatchFailReason::Unhealthy),
            Event::RolloutPaused {
                rollout: rollout.clone(),
                reason: "batch 1 failed".into(),
            },
            Event::RolloutCompleted {
                rollout: rollout.clone(),
            },
        ]);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "WARN Health timeout elapsed, treating pending machines as unhealthy rollout=r-1 batch_index=1 unhealthy=2 threshold=0",
                "WARN batch failed rollout=r-1 batch_index=1 unhealthy=2 threshold=0",
                "WARN rollout paused rollout=r-1 reason=batch 1 failed",
                "INFO rollout completed rollout=r-1",
            ]
        );
    }
}
