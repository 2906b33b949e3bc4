//! The story's sentences made from the events API's records: batch decisions, health reports,
//! how a rollout ended.

use nixfleet_proto::api::v1::{EventRecord, MachineHealth, RolloutDetail};

/// The string at `key` of an event's data, or "".
pub fn str_at(data: &serde_json::Value, key: &str) -> String {
    data.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

/// The number at `key` of an event's data, or 0.
pub fn num_at(data: &serde_json::Value, key: &str) -> u64 {
    data.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

/// The machines of a BatchStarted event (its `previous` pairs).
pub fn batch_machines(data: &serde_json::Value) -> Vec<String> {
    data.get("previous")
        .and_then(|p| p.as_array())
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|pair| pair.get(0)?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// "batch 0 succeeded: 1 healthy, 0 unhealthy, threshold 0".
pub fn batch_decision(r: &EventRecord) -> String {
    let reason = match r.data.get("reason").and_then(|v| v.as_str()) {
        Some(why) => format!(" ({})", why.to_lowercase()),
        None => String::new(),
    };
    format!(
        "batch {} {}{reason}: {} healthy, {} unhealthy, threshold {}",
        num_at(&r.data, "batch_index"),
        if r.kind == "BatchSucceeded" {
            "succeeded"
        } else {
            "FAILED"
        },
        num_at(&r.data, "healthy"),
        num_at(&r.data, "unhealthy"),
        num_at(&r.data, "threshold")
    )
}

/// How a rollout ended, in one word of the story.
pub fn end_word(kind: &str) -> &'static str {
    match kind {
        "RolloutCompleted" => "completed",
        "RolloutCancelled" => "cancelled",
        "RolloutPaused" => "PAUSED",
        "RolloutFailed" => "FAILED",
        "RolloutReverted" => "REVERTED",
        _ => "ended",
    }
}

/// "health passed (app)" or "health FAILED: http://…: GET … failed: …".
pub fn health_summary(data: &serde_json::Value) -> String {
    let results = data
        .get("results")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let passed = |r: &serde_json::Value| r.get("passed").and_then(|p| p.as_bool()) == Some(true);
    if data.get("all_passed").and_then(|a| a.as_bool()) == Some(true) {
        let names: Vec<String> = results.iter().map(|r| str_at(r, "name")).collect();
        format!("health passed ({})", names.join(", "))
    } else {
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !passed(r))
            .map(|r| format!("{}: {}", str_at(r, "name"), str_at(r, "message")))
            .collect();
        format!("health FAILED: {}", failed.join("; "))
    }
}

/// " (db-01: health checks failed: …)" for each unhealthy machine of the rollout.
pub fn unhealthy_reasons(d: &RolloutDetail) -> String {
    let why: Vec<String> = d
        .batches
        .iter()
        .flat_map(|b| b.machine_health.iter())
        .filter_map(|(m, h)| match h {
            MachineHealth::Unhealthy(why) => Some(format!("{m}: {why}")),
            _ => None,
        })
        .collect();
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join("; "))
    }
}
