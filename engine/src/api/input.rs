//! Wire → domain: request bodies and query values turned into the core's validated types and
//! commands. Every refusal is a 400 naming the field and what it may be.

use super::error::ApiError;
use nixfleet_core::decide::{Command, ReportInput, SwitchInput};
use nixfleet_core::event::{
    Activation, CheckResult, Lifecycle, ReleaseEntry, Role, RolloutOptions, RolloutStatus,
    SwitchOutcome, Target,
};
use nixfleet_core::ids::*;
use nixfleet_core::plan::RolloutSpec;
use nixfleet_proto::api::v1 as wire;
use std::fmt::Display;

/// `parsed`, or a 400 saying that `field` `s` is not one of `choices`.
fn one_of<T>(
    parsed: Option<T>,
    field: &str,
    s: &str,
    choices: impl Display,
) -> Result<T, ApiError> {
    parsed.ok_or_else(|| ApiError::bad_request(format!("{field} {s:?} is not one of: {choices}")))
}

/// An activation name (`switch`, `boot`, `test`) of `field`.
pub fn activation(s: &str, field: &str) -> Result<Activation, ApiError> {
    one_of(Activation::parse(s), field, s, Activation::choices())
}

/// A lifecycle name.
pub fn lifecycle(s: &str) -> Result<Lifecycle, ApiError> {
    one_of(Lifecycle::parse(s), "lifecycle", s, Lifecycle::choices())
}

/// A role name.
pub fn role(s: &str) -> Result<Role, ApiError> {
    one_of(Role::parse(s), "role", s, Role::choices())
}

/// A rollout status name.
pub fn rollout_status(s: &str) -> Result<RolloutStatus, ApiError> {
    one_of(
        RolloutStatus::parse(s),
        "status",
        s,
        RolloutStatus::choices(),
    )
}

/// Tags, each validated.
pub fn tags(v: &[String]) -> Result<Vec<Tag>, ApiError> {
    v.iter()
        .map(|t| Tag::parse(t).map_err(ApiError::from))
        .collect()
}

/// An RFC 3339 time from an agent, in milliseconds (times before 1970 as 0); `None` if unreadable.
/// Accepts `Z` and numeric offsets (`+00:00`, as v0.1's chrono writes them).
pub fn wire_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let (base, offset_secs) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((base, off))
            if matches!(off.as_bytes(), [b'+' | b'-', _, _, b':', _, _]) && base.contains('T') =>
        {
            let h: i64 = off[1..3].parse().ok()?;
            let m: i64 = off[4..6].parse().ok()?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (base.to_owned() + "Z", sign * (h * 3600 + m * 60))
        }
        _ => (s.to_owned(), 0),
    };
    let t = humantime::parse_rfc3339_weak(&base).ok()?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Some(Timestamp(
        u64::try_from(ms - offset_secs * 1000).unwrap_or(0),
    ))
}

/// A report's `switch` object, checked: a store path and known activation and outcome names.
fn switch_input(s: &wire::SwitchReport) -> Result<SwitchInput, ApiError> {
    Ok(SwitchInput {
        path: StorePath::parse(&s.path)?,
        activation: activation(&s.activation, "switch.activation")?,
        outcome: one_of(
            SwitchOutcome::parse(&s.outcome),
            "switch.outcome",
            &s.outcome,
            SwitchOutcome::choices(),
        )?,
        exit_code: s.exit_code,
        failed_units: s.failed_units,
    })
}

/// A health check result as the core keeps it.
fn check_result(c: wire::HealthCheckResult) -> CheckResult {
    match c {
        wire::HealthCheckResult::Pass {
            check_name,
            duration_ms,
        } => CheckResult {
            name: check_name,
            passed: true,
            duration_ms,
            message: String::new(),
        },
        wire::HealthCheckResult::Fail {
            check_name,
            duration_ms,
            message,
        } => CheckResult {
            name: check_name,
            passed: false,
            duration_ms,
            message,
        },
    }
}

/// The command of an agent's report for machine `id` (whose CN was already checked).
pub fn report(id: &MachineId, r: wire::Report, auto_register: bool) -> Result<Command, ApiError> {
    if r.machine_id != id.as_str() {
        return Err(ApiError::forbidden(format!(
            "report body is for machine {:?}, the path for {id}",
            r.machine_id
        )));
    }
    if r.current_generation.len() > 512 {
        return Err(ApiError::bad_request(
            "current_generation is longer than 512 characters",
        ));
    }
    let generation = match r.current_generation.as_str() {
        "" => None,
        g => Some(StorePath::parse(g)?),
    };
    // When the checks ran (the agent's clock); "" (a client that sends none) leaves the
    // results to count as measured when appended. The report's own time is only used for
    // the results' age, so an unreadable one is ignored as before.
    let health_timestamp = match r.health.as_ref().map(|h| h.timestamp.as_str()) {
        None | Some("") => None,
        Some(t) => Some(wire_time(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "health.timestamp {t:?} is not an RFC 3339 time (e.g. 2026-01-01T00:00:00.000Z)"
            ))
        })?),
    };
    let report_timestamp = wire_time(&r.timestamp);
    let report = ReportInput {
        generation,
        success: r.success,
        message: r.message,
        tags: tags(&r.tags)?,
        health: r.health.map(|h| {
            let results = h.results.into_iter().map(check_result).collect();
            (results, h.all_passed)
        }),
        agent_version: r.agent_version.chars().take(64).collect(),
        uptime_secs: r.uptime_seconds,
        dry_run: r.dry_run,
        rolled_back_from: r
            .rolled_back_from
            .as_deref()
            .map(StorePath::parse)
            .transpose()?,
    };
    let cmd = match health_timestamp {
        Some(health_timestamp) => Command::ReportMeasured {
            machine: id.clone(),
            report,
            auto_register,
            health_timestamp,
            report_timestamp,
        },
        None => Command::Report {
            machine: id.clone(),
            report,
            auto_register,
        },
    };
    Ok(Command::ReportActivation {
        report: Box::new(cmd),
        machine: id.clone(),
        switch: r.switch.as_ref().map(switch_input).transpose()?,
        reboot_needed: r.reboot_needed,
    })
}

/// A release's entries, one per host.
pub fn release_entries(entries: &[wire::ReleaseEntry]) -> Result<Vec<ReleaseEntry>, ApiError> {
    entries
        .iter()
        .map(|e| {
            Ok(ReleaseEntry {
                machine: MachineId::parse(&e.hostname)?,
                path: StorePath::parse(&e.store_path)?,
                platform: e.platform.chars().take(64).collect(),
                tags: tags(&e.tags)?,
            })
        })
        .collect()
}

/// A rollout request as the planner's spec and the rollout's options (switch, failed units
/// fail, unless the request says otherwise).
pub fn rollout(req: wire::CreateRolloutRequest) -> Result<(RolloutSpec, RolloutOptions), ApiError> {
    let spec = RolloutSpec {
        release: ReleaseId::parse(&req.release_id)?,
        strategy: req.strategy,
        batch_sizes: req.batch_sizes,
        failure_threshold: req.failure_threshold,
        on_failure: req.on_failure,
        health_timeout_secs: req.health_timeout,
        target: match req.target {
            wire::RolloutTarget::Tags(t) => Target::Tags(tags(&t)?),
            wire::RolloutTarget::Hosts(h) => Target::Hosts(
                h.iter()
                    .map(|x| MachineId::parse(x))
                    .collect::<Result<_, _>>()?,
            ),
        },
        cache_url: req.cache_url,
    };
    let options = RolloutOptions {
        activation: req
            .activation
            .as_deref()
            .map(|a| activation(a, "activation"))
            .transpose()?
            .unwrap_or(Activation::Switch),
        allow_failed_units: req.allow_failed_units.unwrap_or(false),
    };
    Ok((spec, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_times_are_read_with_any_offset_to_the_millisecond() {
        let utc = Some(Timestamp(1_767_225_600_123));
        assert_eq!(wire_time("2026-01-01T00:00:00.123Z"), utc);
        assert_eq!(wire_time("2026-01-01T00:00:00.123456789+00:00"), utc);
        assert_eq!(wire_time("2026-01-01T02:00:00.123+02:00"), utc);
        assert_eq!(wire_time("2025-12-31T23:30:00.123-00:30"), utc);
        assert_eq!(
            wire_time("2026-01-01T00:00:00Z"),
            Some(Timestamp(1_767_225_600_000))
        );
        assert_eq!(wire_time("yesterday"), None);
        assert_eq!(wire_time(""), None);
    }
}
