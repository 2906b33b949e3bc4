//! `nixfleet replay [--until SEQ|TIME]`: the projected tables as they were after a record or
//! at a time, folded by the same reducer as the control plane. `--json` prints the API's own
//! objects (machines, releases, rollouts with batches, keys) as they would have been served then.

use super::source::Source;
use super::text::{parse_time, utc};
use super::SourceArgs;
use crate::error::{CliError, Result};
use crate::output::{self, or_dash, short_path, Table};
use clap::Args;
use nixfleet_core::ids::{Seq, Timestamp};
use nixfleet_core::state::{MachineHealth, State};
use nixfleet_eventlog::log::retention;
use nixfleet_eventlog::log::Record;
use nixfleet_eventlog::postmortem::{replay_until, Until};
use nixfleet_eventlog::views;
use nixfleet_proto::api::v1 as wire;

/// `nixfleet replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Stop after this record (a sequence number) or at this time (UTC, e.g. 2025-11-24T16:00:05Z)
    /// [default: the end of the log].
    #[arg(long, value_name = "SEQ|TIME")]
    pub until: Option<String>,
}

fn parse_until(s: &str) -> Result<Until> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let seq = s.parse::<u64>().map_err(|_| {
            CliError::usage(format!("--until {s}: too large for a sequence number"))
        })?;
        return Ok(Until::Seq(Seq(seq)));
    }
    parse_time("--until", s).map_err(|_| {
        CliError::usage(format!(
            "--until {s:?}: not a sequence number or a time; use e.g. 42 or 2025-11-24T16:00:05Z (UTC)"
        ))
    })
    .map(Until::Time)
}

/// The state and the last record folded into it.
fn fold(records: &[Record], until: Option<Until>) -> Result<(State, Option<&Record>)> {
    if let Some(Until::Seq(q)) = until {
        let end = records.last().map(|r| r.seq.0).unwrap_or(0);
        if q.0 > end {
            return Err(CliError::usage(format!(
                "--until {}: the log ends at record {end}; give a smaller sequence number",
                q.0
            )));
        }
    }
    let state = replay_until(records, until);
    let last = records
        .iter()
        .take_while(|r| r.seq <= state.last_seq)
        .last();
    Ok((state, last))
}

/// Runs `nixfleet replay`.
pub fn run(source: &Source, json: bool, args: &ReplayArgs) -> Result<()> {
    let until = args.until.as_deref().map(parse_until).transpose()?;
    let records = source.all()?;
    let (state, last) = fold(&records, until)?;
    // Ages ("seconds since last report") are measured from the replayed moment.
    let now = match until {
        Some(Until::Time(t)) => t,
        _ => last.map(|r| r.at).unwrap_or(Timestamp(0)),
    };
    if json {
        return output::json(&serde_json::json!({
            "source": source.name(),
            "as_of": last.map(|r| serde_json::json!({
                "seq": r.seq.0,
                "at": views::rfc3339(r.at),
                "actor": r.actor.to_string(),
                "kind": r.event.kind(),
            })),
            "log_records": records.len(),
            "machines": state.machines.values().map(|m| views::machine(m, now)).collect::<Vec<_>>(),
            "releases": state.releases.values().map(views::release).collect::<Vec<_>>(),
            "rollouts": state.rollouts.values().map(|r| {
                let stream = format!("rollout:{}", r.id);
                let mine: Vec<Record> = records
                    .iter()
                    .filter(|x| x.seq <= state.last_seq && x.stream == stream)
                    .cloned()
                    .collect();
                views::rollout(&state, r, &mine)
            }).collect::<Vec<_>>(),
            "api_keys": keys(&state),
        }));
    }
    output::line(header(&records, last, until))?;
    let below: Vec<(u64, u64)> = retention::gaps(&records)
        .into_iter()
        .filter(|&(a, _)| a <= state.last_seq.0)
        .collect();
    if let Some(note) = retention::describe_gaps(&below) {
        output::line(format!(
            "{note}; a machine's last report and health history at an earlier moment may be missing here (at the head they are whole)."
        ))?;
    }
    print_tables(&state, now)
}

fn header(records: &[Record], last: Option<&Record>, until: Option<Until>) -> String {
    let total = records.len();
    match (last, until) {
        (None, Some(Until::Time(t))) => format!(
            "As of {} UTC: before the first record (the log has {total}); every table is empty.",
            utc(t)
        ),
        (None, _) => "The log is empty; every table is empty.".to_string(),
        (Some(r), u) => {
            let at = match u {
                Some(Until::Time(t)) => format!("as of {} UTC, ", utc(t)),
                _ => String::new(),
            };
            format!(
                "State after record {} of {total} ({at}{} UTC, {} by {}).",
                r.seq.0,
                utc(r.at),
                r.event.kind(),
                r.actor
            )
        }
    }
}

fn keys(state: &State) -> Vec<wire::ApiKeyInfo> {
    state.api_keys.values().map(views::api_key).collect()
}

fn section(title: &str, t: &Table, empty: bool) -> Result<()> {
    output::line("")?;
    output::line(title)?;
    if empty {
        output::line("(none)")
    } else {
        t.print()
    }
}

fn print_tables(state: &State, now: Timestamp) -> Result<()> {
    let mut m = Table::new(&[
        "MACHINE",
        "LIFECYCLE",
        "TAGS",
        "RUNS",
        "DESIRED",
        "HEALTH",
        "LAST REPORT",
        "QUARANTINED",
    ]);
    for x in state.machines.values() {
        let row = views::machine(x, now);
        let report = match (&x.last_report, row.seconds_since_last_report) {
            (Some(r), Some(age)) => format!(
                "{} ({} earlier), {}",
                utc(r.at),
                crate::commands::time::age(age),
                if r.success { "ok" } else { "failed" }
            ),
            _ => "—".into(),
        };
        m.row(vec![
            row.machine_id,
            row.lifecycle,
            or_dash(Some(&row.tags.join(","))),
            or_dash(Some(&short_path(&row.current_generation))),
            or_dash(row.desired_generation.as_deref().map(short_path).as_deref()),
            row.health,
            report,
            or_dash(Some(
                &row.quarantined
                    .iter()
                    .map(|p| short_path(p))
                    .collect::<Vec<_>>()
                    .join(","),
            )),
        ]);
    }
    section("Machines", &m, state.machines.is_empty())?;

    let mut r = Table::new(&["RELEASE", "HOSTS", "FLAKE", "CREATED (UTC)", "BY"]);
    for x in state.releases.values() {
        let flake = match (&x.flake_ref, &x.flake_rev) {
            (Some(f), Some(rev)) => format!("{f} at {rev}"),
            (Some(f), None) => f.clone(),
            _ => "—".into(),
        };
        r.row(vec![
            x.id.to_string(),
            x.entries.len().to_string(),
            flake,
            utc(x.created_at),
            x.created_by.to_string(),
        ]);
    }
    section("Releases", &r, state.releases.is_empty())?;

    let mut ro = Table::new(&[
        "ROLLOUT",
        "STATUS",
        "RELEASE",
        "STRATEGY",
        "THRESHOLD",
        "TIMEOUT",
        "CREATED (UTC)",
        "BY",
        "REASON",
    ]);
    let mut b = Table::new(&[
        "ROLLOUT",
        "BATCH",
        "STATUS",
        "ATTEMPT",
        "STARTED (UTC)",
        "MACHINES",
    ]);
    let mut batches = 0;
    for x in state.rollouts.values() {
        ro.row(vec![
            x.id.to_string(),
            x.status.to_string(),
            x.plan.release.to_string(),
            x.plan.strategy.to_string(),
            x.plan.failure_threshold.to_string(),
            format!("{}s", x.plan.health_timeout_secs),
            utc(x.created_at),
            x.created_by.to_string(),
            or_dash(x.reason.as_deref()),
        ]);
        for batch in &x.batches {
            batches += 1;
            let machines = batch
                .machines
                .iter()
                .map(|(id, _)| {
                    let h = match batch.health.get(id) {
                        Some(MachineHealth::Healthy(_)) => "healthy",
                        Some(MachineHealth::Unhealthy(Some(_), _)) => "unhealthy",
                        Some(MachineHealth::Unhealthy(None, _)) => "silent",
                        Some(MachineHealth::Pending) | None => "pending",
                    };
                    format!("{id} ({h})")
                })
                .collect::<Vec<_>>()
                .join(", ");
            b.row(vec![
                x.id.to_string(),
                batch.index.to_string(),
                views::batch_status(state, batch).to_string(),
                batch.attempt.to_string(),
                or_dash(batch.started_at.map(utc).as_deref()),
                machines,
            ]);
        }
    }
    section("Rollouts", &ro, state.rollouts.is_empty())?;
    section("Batches", &b, batches == 0)?;

    let mut k = Table::new(&["KEY", "ROLE", "CREATED (UTC)", "BY", "REVOKED (UTC)"]);
    for x in state.api_keys.values() {
        k.row(vec![
            x.name.to_string(),
            x.role.to_string(),
            utc(x.created_at),
            x.created_by.to_string(),
            or_dash(x.revoked_at.map(utc).as_deref()),
        ]);
    }
    section("API keys", &k, state.api_keys.is_empty())
}
