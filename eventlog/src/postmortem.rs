//! Post-mortem analysis over a recorded log: filter events, fold the projections as they were at
//! any point, tell a rollout's story with the reports that decided each batch, verify the chain,
//! and re-run a rollout's recorded reports through the rules with other parameters (what-if).
//!
//! Works on records from a data directory (opened on a private copy, so the original is never
//! written) or from the events API. Everything here but [`open_copy`] is pure.

use crate::log::{LogError, LogOptions, Record, SledLog};
use nixfleet_core::event::*;
use nixfleet_core::ids::*;
use nixfleet_core::plan::{batch_lengths, seeded_order, RolloutSpec};
use nixfleet_core::state::{MachineHealth, State};
use nixfleet_core::{decide, describe, executor, Command};
use std::path::Path;

/// Copies `data_dir/log` (or `data_dir` itself if it is the log) to a temporary directory (the
/// archive's sealed segments are hard-linked when they can be) and reads every record from the
/// copy, verifying the chain. The original is never opened by sled,
/// so this works on a live control plane's directory and never changes it.
pub fn open_copy(data_dir: &Path) -> Result<Vec<Record>, LogError> {
    let mut records = Vec::new();
    open_copy_with(data_dir, |r| records.push(r)).map(|_| records)
}

/// A log opened on a private copy of a data directory (see [`open_copy`]), for reading it page
/// by page (`read_after`) rather than all at once. The copy is removed when this is dropped.
pub struct LogCopy {
    log: Option<SledLog>,
    dir: std::path::PathBuf,
}

impl LogCopy {
    /// The copy's log: verified at open (every record, the chain, the head and the mark).
    pub fn log(&self) -> &SledLog {
        self.log.as_ref().expect("the log is open until drop")
    }
}

impl Drop for LogCopy {
    fn drop(&mut self) {
        drop(self.log.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Like [`open_copy`], but keeps the copy open, handing each record to `on_record` as the open
/// verifies it.
pub fn open_copy_with(data_dir: &Path, on_record: impl FnMut(Record)) -> Result<LogCopy, LogError> {
    let src =
        if data_dir.join("log").join("conf").exists() || data_dir.join("log").join("db").exists() {
            data_dir.join("log")
        } else {
            data_dir.to_path_buf()
        };
    if !src.join("db").exists() && !src.join("conf").exists() {
        return Err(LogError::Io(format!(
            "{} holds no nixfleet event log (expected a control plane data directory)",
            data_dir.display()
        )));
    }
    let tmp = std::env::temp_dir().join(format!(
        "nixfleet-postmortem-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut copy = LogCopy {
        log: None,
        dir: tmp.clone(),
    };
    copy_dir(&src, &tmp)
        .map_err(|e| LogError::Io(format!("cannot copy {}: {e}", src.display())))?;
    copy.log = Some(SledLog::open_with(
        &tmp,
        None,
        LogOptions::NO_ARCHIVING,
        on_record,
    )?);
    Ok(copy)
}

/// Verifies a data directory (on a copy): the number of records, or the first bad one.
pub fn verify_dir(data_dir: &Path) -> Result<u64, LogError> {
    open_copy(data_dir).map(|r| r.len() as u64)
}

fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    // The archive last: a live control plane removes records from sled only after their segment
    // is in place, so sled copied first and the archive after holds every record at least once
    // (the open drops the doubles). The acknowledged mark first: it names a record that was
    // durable when it was written, so sled's files copied after it hold that record.
    let mut entries = std::fs::read_dir(src)?.collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| {
        (
            e.file_name() == crate::log::ARCHIVE_DIR,
            e.file_name() != crate::log::durable::MARK_FILE,
        )
    });
    for e in entries {
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else if src.file_name() == Some(std::ffi::OsStr::new(crate::log::ARCHIVE_DIR))
            && std::fs::hard_link(e.path(), &to).is_ok()
        {
            // Sealed segments are never written again: a link is as good as a copy.
        } else {
            std::fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// Checks the order of records obtained from the events API: sequence numbers must run 1, 2, 3…
/// without gaps. [`verify_chain`] also checks the hashes.
pub fn verify_order(records: &[Record]) -> Result<(), LogError> {
    for (i, r) in records.iter().enumerate() {
        let want = i as u64 + 1;
        if r.seq.0 != want {
            return Err(LogError::Corrupt {
                seq: want,
                why: format!("found record {} where {want} should be", r.seq.0),
            });
        }
    }
    Ok(())
}

/// Checks records obtained from the events API: the order (as [`verify_order`]) and the hash
/// chain. The API does not send the stored bytes, but the storage form is a deterministic
/// encoding of what it sends, so each record is re-encoded and hashed, and the next record's
/// `prev_hash` must be that hash. Returns the hash of the last record.
///
/// Unlike [`verify_dir`], nothing anchors the last record (the head is not served): a log cut
/// short before it was served looks whole here.
pub fn verify_chain(records: &[Record]) -> Result<[u8; 32], LogError> {
    verify_order(records)?;
    let mut prev = [0u8; 32];
    for r in records {
        if r.prev_hash != prev {
            return Err(LogError::Corrupt {
                seq: r.seq.0,
                why: "hash chain broken: this record or the one before it was altered".into(),
            });
        }
        if r.stream != r.event.stream() {
            return Err(LogError::Corrupt {
                seq: r.seq.0,
                why: format!(
                    "stream {} does not match its event (stream {})",
                    r.stream,
                    r.event.stream()
                ),
            });
        }
        prev = crate::log::hash_bytes(&crate::log::encode_record(
            r.seq,
            r.at,
            &r.actor,
            r.prev_hash,
            &r.event,
        ));
    }
    Ok(prev)
}

/// The record behind one line of the events API (the inverse of the API's rendering).
pub fn record_from_wire(w: &nixfleet_proto::api::v1::EventRecord) -> Result<Record, String> {
    let actor = Actor::parse(&w.actor)
        .ok_or_else(|| format!("record {}: unknown actor {:?}", w.seq, w.actor))?;
    let mut data = w.data.clone();
    crate::views::unhex_hash_fields(&w.kind, &mut data)
        .map_err(|e| format!("record {}: {e}", w.seq))?;
    let event: Event = serde_json::from_value(serde_json::json!({ w.kind.clone(): data }))
        .map_err(|e| format!("record {}: unreadable {} event: {e}", w.seq, w.kind))?;
    let prev_hash = crate::views::parse_hex32(&w.prev_hash)
        .ok_or_else(|| format!("record {}: prev_hash is not 64 hex digits", w.seq))?;
    Ok(Record {
        seq: Seq(w.seq),
        at: Timestamp(w.at_ms),
        actor,
        stream: w.stream.clone(),
        prev_hash,
        event,
    })
}

/// Hex of a hash.
pub fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A filter over events.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Exact stream, e.g. `machine:web-01`.
    pub stream: Option<String>,
    /// Event kind, e.g. `BatchFailed`.
    pub kind: Option<String>,
    /// Actor as displayed, e.g. `apikey:ops`.
    pub actor: Option<String>,
    /// At or after (ms).
    pub since: Option<Timestamp>,
    /// At or before (ms).
    pub until: Option<Timestamp>,
    /// Sequence greater than.
    pub after: Option<Seq>,
}

impl Filter {
    /// Whether `r` passes.
    pub fn matches(&self, r: &Record) -> bool {
        self.stream.as_ref().is_none_or(|s| &r.stream == s)
            && self.kind.as_ref().is_none_or(|k| r.event.kind() == k)
            && self
                .actor
                .as_ref()
                .is_none_or(|a| &r.actor.to_string() == a)
            && self.since.is_none_or(|t| r.at >= t)
            && self.until.is_none_or(|t| r.at <= t)
            && self.after.is_none_or(|s| r.seq > s)
    }
}

/// Where to stop a replay.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Up to and including this sequence number.
    Seq(Seq),
    /// Up to and including this time.
    Time(Timestamp),
}

/// The projections as they were at `until`.
pub fn replay_until(records: &[Record], until: Option<Until>) -> State {
    let mut s = State::default();
    for r in records {
        let stop = match until {
            Some(Until::Seq(q)) => r.seq > q,
            Some(Until::Time(t)) => r.at > t,
            None => false,
        };
        if stop {
            break;
        }
        s.apply(&r.envelope());
    }
    s
}

/// One line of a rollout's story.
#[derive(Debug, Clone, PartialEq)]
pub struct StoryLine {
    /// Sequence of the event.
    pub seq: Seq,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// What happened, in words.
    pub text: String,
    /// For batch decisions: the report per machine that decided it.
    pub evidence: Vec<Evidence>,
}

/// The report that decided a machine's health in a batch decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The machine.
    pub machine: MachineId,
    /// healthy / unhealthy / silent.
    pub verdict: String,
    /// The deciding record, if any (None: silent past the timeout).
    pub seq: Option<Seq>,
    /// When it was appended.
    pub at: Option<Timestamp>,
    /// What it said.
    pub detail: String,
}

/// The story of one rollout: who did what and when, and for each batch decision the reports
/// that decided it.
pub fn timeline(records: &[Record], rollout: &RolloutId) -> Result<Vec<StoryLine>, String> {
    let stream = format!("rollout:{rollout}");
    if !records.iter().any(|r| r.stream == stream) {
        return Err(format!("rollout {rollout} does not appear in the log"));
    }
    let mut state = State::default();
    let mut out = Vec::new();
    for r in records {
        state.apply(&r.envelope());
        let mine = r.stream == stream
            || matches!(&r.event, Event::DesiredGenerationSet { cause: DesiredCause::Batch { rollout: x, .. } | DesiredCause::Revert { rollout: x }, .. } if x == rollout);
        if !mine {
            continue;
        }
        let evidence = match &r.event {
            Event::BatchSucceeded { batch_index, .. } | Event::BatchFailed { batch_index, .. } => {
                batch_evidence(&state, records, rollout, *batch_index)
            }
            _ => Vec::new(),
        };
        out.push(StoryLine {
            seq: r.seq,
            at: r.at,
            actor: r.actor.to_string(),
            text: describe::story(&r.event),
            evidence,
        });
    }
    Ok(out)
}

/// For a batch decision: the report per machine that decided it.
fn batch_evidence(
    state: &State,
    records: &[Record],
    rollout: &RolloutId,
    batch_index: u32,
) -> Vec<Evidence> {
    let Some(b) = state
        .rollouts
        .get(rollout)
        .and_then(|ro| ro.batches.get(batch_index as usize))
    else {
        return Vec::new();
    };
    b.machines
        .iter()
        .map(|(m, _)| {
            let h = b.health.get(m).cloned().unwrap_or(MachineHealth::Pending);
            let (verdict, seq, detail) = match &h {
                MachineHealth::Healthy(s) => (
                    "healthy",
                    Some(*s),
                    "passing health report on the release path".to_string(),
                ),
                MachineHealth::Unhealthy(Some(s), why) => ("unhealthy", Some(*s), why.clone()),
                MachineHealth::Unhealthy(None, why) => ("silent", None, why.clone()),
                MachineHealth::Pending => ("pending", None, String::new()),
            };
            let at = seq
                .and_then(|s| records.get(s.0 as usize - 1))
                .map(|x| x.at);
            Evidence {
                machine: m.clone(),
                verdict: verdict.into(),
                seq,
                at,
                detail,
            }
        })
        .collect()
}

/// Other parameters for a what-if run.
#[derive(Debug, Clone, Default)]
pub struct WhatIf {
    /// Another health timeout.
    pub health_timeout_secs: Option<u64>,
    /// Another failure threshold ("N" or "P%").
    pub failure_threshold: Option<String>,
    /// Other batch sizes (the recorded seed orders the machines).
    pub batch_sizes: Option<Vec<String>>,
}

/// One decision of the executor, recorded or re-computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// When.
    pub at: Timestamp,
    /// What, e.g. "batch 0 failed (timeout): 0 healthy, 1 unhealthy".
    pub text: String,
}

/// Appends events to a what-if state and records the decisions among them.
type Push<'a> = dyn FnMut(&mut State, Actor, Timestamp, Vec<Event>, &mut Vec<Decision>) + 'a;

/// Recorded decisions and re-computed ones.
#[derive(Debug, Clone)]
pub struct WhatIfOutcome {
    /// The decisions in the log.
    pub recorded: Vec<Decision>,
    /// The decisions the rules make with the other parameters, from the same reports.
    pub simulated: Vec<Decision>,
    /// Final status in the log.
    pub recorded_status: String,
    /// Final status with the other parameters.
    pub simulated_status: String,
}

/// The recorded plan with the what-if parameters: another health timeout or threshold, or the
/// same machines re-cut with the recorded seed into other batch sizes.
fn plan_with(plan: &RolloutPlan, params: &WhatIf) -> Result<RolloutPlan, String> {
    let mut plan = plan.clone();
    if let Some(t) = params.health_timeout_secs {
        plan.health_timeout_secs = t;
    }
    if let Some(th) = &params.failure_threshold {
        plan.failure_threshold =
            nixfleet_core::plan::parse_threshold(th).map_err(|e| e.to_string())?;
    }
    if let Some(sizes) = &params.batch_sizes {
        // Re-cut the same machines with the same seed into the new sizes.
        let spec = RolloutSpec {
            release: plan.release.clone(),
            strategy: "staged".into(),
            batch_sizes: Some(sizes.clone()),
            failure_threshold: None,
            on_failure: None,
            health_timeout_secs: None,
            target: plan.target.clone(),
            cache_url: None,
        };
        let amounts = spec.batch_sizes.as_ref().map(|v| {
            v.iter()
                .map(|s| nixfleet_core::plan::parse_batch_size(s))
                .collect::<Result<Vec<_>, _>>()
        });
        let amounts = amounts
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let machines: Vec<(MachineId, StorePath)> =
            plan.batches.iter().flatten().cloned().collect();
        let ordered = seeded_order(machines, plan.seed);
        let mut it = ordered.into_iter();
        plan.batches = batch_lengths(it.len(), &amounts)
            .into_iter()
            .map(|n| it.by_ref().take(n).collect())
            .collect();
        plan.batch_sizes = amounts;
        plan.strategy = Strategy::Staged;
    }
    Ok(plan)
}

/// Re-runs the recorded reports of a rollout through the rules with other parameters.
///
/// The reports arrive at their recorded times; operator resumes and cancels are replayed at
/// theirs. It cannot know how agents would have behaved had they been told different things
/// (for example a machine moved to a later batch still reports when it did).
pub fn what_if(
    records: &[Record],
    rollout: &RolloutId,
    params: &WhatIf,
) -> Result<WhatIfOutcome, String> {
    let created = records
        .iter()
        .position(|r| matches!(&r.event, Event::RolloutCreated { rollout: x, .. } if x == rollout))
        .ok_or_else(|| format!("rollout {rollout} does not appear in the log"))?;
    let Event::RolloutCreated { plan, .. } = &records[created].event else {
        unreachable!("found by position")
    };
    let plan = plan_with(plan, params)?;
    let recorded: Vec<Decision> = records[created..]
        .iter()
        .filter(|r| r.stream == format!("rollout:{rollout}"))
        .filter_map(|r| describe::decision(&r.event).map(|text| Decision { at: r.at, text }))
        .collect();
    let recorded_status = replay_until(records, None)
        .rollouts
        .get(rollout)
        .map(|r| r.status.to_string())
        .unwrap_or_else(|| "deleted".into());

    let mut state = State::default();
    for r in &records[..created] {
        state.apply(&r.envelope());
    }
    let mut simulated = Vec::new();
    let mut seq = state.last_seq.0;
    let ours = format!("rollout:{rollout}");
    let mut push = |state: &mut State,
                    actor: Actor,
                    at: Timestamp,
                    events: Vec<Event>,
                    out: &mut Vec<Decision>| {
        for e in events {
            seq += 1;
            if let Some(text) = describe::decision(&e).filter(|_| e.stream() == ours) {
                out.push(Decision { at, text });
            }
            state.apply(&Envelope {
                seq: Seq(seq),
                at,
                actor: actor.clone(),
                event: e,
            });
        }
    };
    let first = Event::RolloutCreated {
        rollout: rollout.clone(),
        plan,
    };
    let at0 = records[created].at;
    push(
        &mut state,
        records[created].actor.clone(),
        at0,
        vec![first],
        &mut simulated,
    );
    // Only the rollout under study is re-decided; every other event is replayed as recorded.
    let drive =
        |state: &mut State, now: Timestamp, out: &mut Vec<Decision>, push: &mut Push<'_>| {
            for _ in 0..10_000 {
                let events = match state.rollouts.get(rollout) {
                    Some(r) => executor::evaluate(state, r, now),
                    None => Vec::new(),
                };
                if events.is_empty() {
                    return;
                }
                push(state, Actor::Executor, now, events, out);
            }
        };
    let deadline = |state: &State| state.rollouts.get(rollout).and_then(executor::deadline_of);
    drive(&mut state, at0, &mut simulated, &mut push);
    let stream = format!("rollout:{rollout}");
    for r in &records[created + 1..] {
        while let Some(d) = deadline(&state).filter(|d| *d <= r.at) {
            drive(&mut state, d, &mut simulated, &mut push);
            if deadline(&state) == Some(d) {
                break;
            }
        }
        let ours_by_executor = r.actor == Actor::Executor
            && (r.stream == stream
                || matches!(&r.event, Event::DesiredGenerationSet { cause: DesiredCause::Batch { rollout: x, .. } | DesiredCause::Revert { rollout: x }, .. } | Event::DesiredGenerationCleared { cause: DesiredCause::Revert { rollout: x }, .. } if x == rollout));
        if ours_by_executor {
            continue;
        }
        let events = match &r.event {
            Event::RolloutResumed { rollout: x } if x == rollout => {
                decide(&state, &Command::ResumeRollout { rollout: x.clone() }, r.at)
                    .unwrap_or_default()
            }
            Event::RolloutCancelled { rollout: x } if x == rollout => {
                decide(&state, &Command::CancelRollout { rollout: x.clone() }, r.at)
                    .unwrap_or_default()
            }
            _ if r.stream == stream => continue,
            other => vec![other.clone()],
        };
        push(&mut state, r.actor.clone(), r.at, events, &mut simulated);
        drive(&mut state, r.at, &mut simulated, &mut push);
    }
    // Deadlines up to the end of the recording.
    let end = records.last().map(|r| r.at).unwrap_or(at0);
    while let Some(d) = deadline(&state).filter(|d| *d <= end) {
        drive(&mut state, d, &mut simulated, &mut push);
        if deadline(&state) == Some(d) {
            break;
        }
    }
    let simulated_status = state
        .rollouts
        .get(rollout)
        .map(|r| r.status.to_string())
        .unwrap_or_default();
    Ok(WhatIfOutcome {
        recorded,
        simulated,
        recorded_status,
        simulated_status,
    })
}
