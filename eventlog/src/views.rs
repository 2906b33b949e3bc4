//! Projections rendered as the v0.1 wire types. Pure functions of the state, the log records
//! and `now`; no handler logic lives here.

use crate::log::Record;
use nixfleet_core::event::*;
use nixfleet_core::ids::Timestamp;
use nixfleet_core::state::{
    ApiKey, Batch, BatchStatus, Desired, Machine, MachineHealth, Release, Rollout, State,
};
use nixfleet_proto::api::v1 as wire;
use serde_json::json;

/// RFC 3339 with milliseconds.
pub fn rfc3339(t: Timestamp) -> String {
    nixfleet_core::describe::rfc3339(t)
}

/// A machine row.
pub fn machine(m: &Machine, now: Timestamp) -> wire::MachineStatus {
    let r = m.last_report.as_ref();
    wire::MachineStatus {
        machine_id: m.id.to_string(),
        current_generation: m
            .current_generation()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        desired_generation: m.desired.as_ref().map(|d| d.path.to_string()),
        agent_version: r.map(|r| r.agent_version.clone()).unwrap_or_default(),
        system_state: match r {
            None => "unknown",
            Some(r) if r.success => "ok",
            Some(_) => "error",
        }
        .into(),
        uptime_seconds: r.map(|r| r.uptime_secs).unwrap_or(0),
        last_report: r.map(|r| rfc3339(r.at)),
        lifecycle: m.lifecycle.to_string(),
        tags: m.tags.iter().map(|t| t.to_string()).collect(),
        seconds_since_last_report: r.map(|r| now.secs_since(r.at)),
        health: match m.latest_health() {
            None => "unknown",
            Some(h) if h.all_passed => "healthy",
            Some(_) => "unhealthy",
        }
        .into(),
        quarantined: m.quarantined.keys().map(|p| p.to_string()).collect(),
        reboot_needed: m.reboot_needed.clone(),
        last_switch: m.last_switch.as_ref().map(|s| wire::SwitchReport {
            path: s.path.to_string(),
            activation: s.activation.to_string(),
            outcome: s.outcome.to_string(),
            exit_code: s.exit_code,
            failed_units: s.failed_units,
        }),
    }
}

/// How the agent should activate its desired generation: the options of the rollout that set it
/// (a batch or a revert); `None` (the default, switch) otherwise or when it is switch.
pub fn activation_of(state: &State, d: &Desired) -> Option<Activation> {
    match &d.cause {
        DesiredCause::Batch { rollout, .. } | DesiredCause::Revert { rollout } => state
            .rollouts
            .get(rollout)
            .map(|r| r.options.activation)
            .filter(|a| *a != Activation::Switch),
        DesiredCause::Notify | DesiredCause::Operator => None,
    }
}

/// A release.
pub fn release(r: &Release) -> wire::Release {
    wire::Release {
        id: r.id.to_string(),
        flake_ref: r.flake_ref.clone(),
        flake_rev: r.flake_rev.clone(),
        cache_url: r.cache_url.clone(),
        host_count: r.entries.len(),
        entries: r
            .entries
            .values()
            .map(|e| wire::ReleaseEntry {
                hostname: e.machine.to_string(),
                store_path: e.path.to_string(),
                platform: e.platform.clone(),
                tags: e.tags.iter().map(|t| t.to_string()).collect(),
            })
            .collect(),
        created_at: rfc3339(r.created_at),
        created_by: r.created_by.to_string(),
    }
}

/// An API key as `GET /api/v1/keys` lists it (never its hash).
pub fn api_key(k: &ApiKey) -> wire::ApiKeyInfo {
    wire::ApiKeyInfo {
        name: k.name.to_string(),
        role: k.role.to_string(),
        created_at: rfc3339(k.created_at),
        created_by: k.created_by.to_string(),
        revoked_at: k.revoked_at.map(rfc3339),
    }
}

/// The status of a batch as v0.1 names it; an active batch is `deploying` until every machine
/// reports the release path, then `waiting_health`.
pub fn batch_status(state: &State, b: &Batch) -> &'static str {
    match b.status {
        BatchStatus::Pending => "pending",
        BatchStatus::Succeeded => "succeeded",
        BatchStatus::Failed => "failed",
        BatchStatus::Active => {
            let all_there = b.machines.iter().all(|(m, p)| {
                state.machines.get(m).and_then(|mm| mm.current_generation()) == Some(p)
            });
            if all_there {
                "waiting_health"
            } else {
                "deploying"
            }
        }
    }
}

fn health(h: &MachineHealth) -> wire::MachineHealth {
    match h {
        MachineHealth::Pending => wire::MachineHealth::Pending,
        MachineHealth::Healthy(_) => wire::MachineHealth::Healthy,
        MachineHealth::Unhealthy(_, why) => wire::MachineHealth::Unhealthy(why.clone()),
    }
}

/// A rollout; `timeline` holds the rollout stream's records (empty in lists).
pub fn rollout(state: &State, r: &Rollout, timeline: &[Record]) -> wire::RolloutDetail {
    wire::RolloutDetail {
        id: r.id.to_string(),
        status: r.status.to_string(),
        strategy: r.plan.strategy.to_string(),
        release_id: r.plan.release.to_string(),
        on_failure: r.plan.on_failure.to_string(),
        failure_threshold: r.plan.failure_threshold.to_string(),
        health_timeout: r.plan.health_timeout_secs,
        batches: r
            .batches
            .iter()
            .map(|b| wire::BatchDetail {
                batch_index: b.index as usize,
                machine_ids: b.machines.iter().map(|(m, _)| m.to_string()).collect(),
                status: batch_status(state, b).into(),
                machine_health: b
                    .machines
                    .iter()
                    .map(|(m, _)| {
                        (
                            m.to_string(),
                            b.health
                                .get(m)
                                .map(health)
                                .unwrap_or(wire::MachineHealth::Pending),
                        )
                    })
                    .collect(),
                started_at: b.started_at.map(rfc3339),
                completed_at: b.completed_at.map(rfc3339),
                previous_generations: b
                    .previous
                    .iter()
                    .map(|(m, p)| (m.to_string(), p.as_ref().map(|p| p.to_string())))
                    .collect(),
            })
            .collect(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        created_by: r.created_by.to_string(),
        events: timeline.iter().filter_map(timeline_entry).collect(),
        reason: r.reason.clone(),
        activation: r.options.activation.to_string(),
        allow_failed_units: r.options.allow_failed_units,
    }
}

/// One record of a rollout stream as a v0.1 `rollout_events` row (detail is compact JSON text).
pub fn timeline_entry(rec: &Record) -> Option<wire::RolloutEvent> {
    let (rollout, event_type, detail) = match &rec.event {
        Event::RolloutCreated { rollout, plan } => (
            rollout,
            "status_change",
            json!({"from": "created", "to": "running", "strategy": plan.strategy.as_str(), "batches": plan.batches.len(), "seed": plan.seed}),
        ),
        Event::BatchStarted {
            rollout,
            batch_index,
            attempt,
            previous,
        } => (
            rollout,
            "batch_started",
            json!({"batch_index": batch_index, "attempt": attempt, "machines": previous.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>()}),
        ),
        Event::BatchSucceeded {
            rollout,
            batch_index,
            healthy,
            unhealthy,
            threshold,
        } => (
            rollout,
            "batch_completed",
            json!({"batch_index": batch_index, "healthy": healthy, "unhealthy": unhealthy, "threshold": threshold}),
        ),
        Event::BatchFailed {
            rollout,
            batch_index,
            healthy,
            unhealthy,
            threshold,
            reason,
        } => (
            rollout,
            "batch_failed",
            json!({"batch_index": batch_index, "healthy": healthy, "unhealthy": unhealthy, "threshold": threshold, "reason": reason.as_str()}),
        ),
        Event::RolloutPaused { rollout, reason } => (
            rollout,
            "status_change",
            json!({"from": "running", "to": "paused", "reason": reason}),
        ),
        Event::RolloutResumed { rollout } => (
            rollout,
            "status_change",
            json!({"from": "paused", "to": "running"}),
        ),
        Event::RolloutCancelled { rollout } => {
            (rollout, "status_change", json!({"to": "cancelled"}))
        }
        Event::RolloutCompleted { rollout } => (
            rollout,
            "status_change",
            json!({"from": "running", "to": "completed"}),
        ),
        Event::RolloutFailed { rollout, reason } => (
            rollout,
            "status_change",
            json!({"from": "running", "to": "failed", "reason": reason}),
        ),
        Event::RolloutReverted { rollout, restored } => (
            rollout,
            "status_change",
            json!({"from": "failed", "to": "reverted", "restored": restored.iter().map(|(m, p)| (m.to_string(), p.as_ref().map(|p| p.to_string()))).collect::<std::collections::BTreeMap<_, _>>()}),
        ),
        Event::RolloutOptionsSet {
            rollout,
            activation,
            allow_failed_units,
        } => (
            rollout,
            "options",
            json!({"activation": activation.as_str(), "allow_failed_units": allow_failed_units}),
        ),
        _ => return None,
    };
    Some(wire::RolloutEvent {
        id: rec.seq.0,
        rollout_id: rollout.to_string(),
        event_type: event_type.into(),
        detail: detail.to_string(),
        actor: rec.actor.to_string(),
        created_at: rfc3339(rec.at),
    })
}

/// The fields of event kinds that hold a SHA-256 (`[u8; 32]`): the events API shows them as
/// 64 lowercase hex digits, not as the 32 numbers serde gives (the stored form is unchanged).
pub const HASH_FIELDS: &[(&str, &str)] = &[("ApiKeyCreated", "hash")];

/// One raw event for the events API.
pub fn event_record(rec: &Record) -> wire::EventRecord {
    let mut data = match serde_json::to_value(&rec.event) {
        Ok(serde_json::Value::Object(mut o)) if o.len() == 1 => o
            .remove(rec.event.kind())
            .unwrap_or(serde_json::Value::Null),
        Ok(v) => v,
        Err(_) => serde_json::Value::Null,
    };
    for field in hash_fields(rec.event.kind()) {
        if let Some(v) = data.get_mut(field) {
            if let Some(hex) = hex_of_bytes(v) {
                *v = serde_json::Value::String(hex);
            }
        }
    }
    wire::EventRecord {
        seq: rec.seq.0,
        at_ms: rec.at.0,
        at: rfc3339(rec.at),
        actor: rec.actor.to_string(),
        stream: rec.stream.clone(),
        kind: rec.event.kind().into(),
        data,
        prev_hash: crate::postmortem::hex(&rec.prev_hash),
    }
}

fn hash_fields(kind: &str) -> impl Iterator<Item = &'static str> + '_ {
    HASH_FIELDS
        .iter()
        .filter(move |(k, _)| *k == kind)
        .map(|(_, f)| *f)
}

/// `[103, 106, …]` (32 numbers) as lowercase hex; `None` for anything else.
fn hex_of_bytes(v: &serde_json::Value) -> Option<String> {
    let bytes = v.as_array().filter(|a| a.len() == 32)?;
    bytes
        .iter()
        .map(|b| b.as_u64().filter(|b| *b <= 255).map(|b| format!("{b:02x}")))
        .collect()
}

/// The inverse of the events API's hash rendering: each hash field of `data` given as 64 hex
/// digits becomes the 32 numbers the event's serde form has again (the array form of control
/// planes before 0.2 is left as it is). An error names the field.
pub fn unhex_hash_fields(kind: &str, data: &mut serde_json::Value) -> Result<(), String> {
    for field in hash_fields(kind) {
        let Some(v) = data.get_mut(field) else {
            continue;
        };
        let Some(hex) = v.as_str() else {
            continue;
        };
        let bytes =
            parse_hex32(hex).ok_or_else(|| format!("{field} is not 64 hex digits: {hex:?}"))?;
        *v = serde_json::Value::from(bytes.to_vec());
    }
    Ok(())
}

/// 64 hex digits as 32 bytes.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?;
        *b = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}
