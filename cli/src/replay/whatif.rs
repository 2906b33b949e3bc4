//! `nixfleet what-if ROLLOUT`: the rollout's recorded reports re-run through the executor's rules
//! with another health timeout, failure threshold or batch sizes, and the decisions shown as a
//! diff against the recorded ones (`-` only in the log, `+` only with the new parameters).

use super::source::Source;
use super::text::{elapsed, rfc3339, utc};
use super::{rollout_id, SourceArgs};
use crate::error::{CliError, Result};
use crate::output;
use clap::Args;
use nixfleet_core::event::{Event, RolloutPlan};
use nixfleet_core::ids::Timestamp;
use nixfleet_eventlog::log::retention;
use nixfleet_eventlog::postmortem::{what_if, Decision, WhatIf};

/// `nixfleet what-if`.
#[derive(Debug, Args)]
pub struct WhatIfArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The rollout (r-…).
    pub rollout: String,
    /// Another health timeout, in seconds.
    #[arg(long, value_name = "SECS")]
    pub health_timeout: Option<u64>,
    /// Another failure threshold: N machines or P% of each batch.
    #[arg(long, value_name = "N|P%")]
    pub failure_threshold: Option<String>,
    /// Other batch sizes, e.g. 1,25%,100% (the recorded seed orders the same machines).
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    pub batch_size: Vec<String>,
}

/// One row of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Both,
    Recorded,
    WhatIf,
}

/// Whether two decisions are the same decision: same time, same words but for the threshold a
/// batch was judged against (a what-if with another threshold quotes its own).
fn same(a: &Decision, b: &Decision) -> bool {
    fn key(t: &str) -> &str {
        t.rfind(", threshold ").map_or(t, |i| &t[..i])
    }
    a.at == b.at && key(&a.text) == key(&b.text)
}

/// Aligns the two decision lists on their longest common subsequence, so that equal decisions
/// pair up (shown with the what-if's words) and the rest show on one side only.
fn diff<'a>(a: &'a [Decision], b: &'a [Decision]) -> Vec<(Side, &'a Decision)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if same(&a[i], &b[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        let recorded = if i < n && j < m && same(&a[i], &b[j]) {
            out.push((Side::Both, &b[j]));
            i += 1;
            j += 1;
            continue;
        } else if j == m || i == n {
            j == m
        } else {
            // Either side keeps the common subsequence as long: show the earlier one first.
            let (skip_a, skip_b) = (lcs[i + 1][j], lcs[i][j + 1]);
            skip_a > skip_b || (skip_a == skip_b && a[i].at <= b[j].at)
        };
        if recorded {
            out.push((Side::Recorded, &a[i]));
            i += 1;
        } else {
            out.push((Side::WhatIf, &b[j]));
            j += 1;
        }
    }
    out
}

fn changes(plan: &RolloutPlan, args: &WhatIfArgs) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = args.health_timeout {
        out.push(format!(
            "health timeout {t}s (recorded {}s)",
            plan.health_timeout_secs
        ));
    }
    if let Some(t) = &args.failure_threshold {
        out.push(format!(
            "failure threshold {t} (recorded {})",
            plan.failure_threshold
        ));
    }
    if !args.batch_size.is_empty() {
        out.push(format!(
            "batch sizes {} (recorded {}: {})",
            args.batch_size.join(","),
            plan.batch_sizes
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            plan.batches
                .iter()
                .map(|b| b.len().to_string())
                .collect::<Vec<_>>()
                .join("+")
        ));
    }
    out
}

/// Runs `nixfleet what-if`.
pub fn run(source: &Source, json: bool, args: &WhatIfArgs) -> Result<()> {
    let id = rollout_id(&args.rollout)?;
    let records = source.all()?;
    if let Some((a, b)) = retention::compacted_during(&records, &format!("rollout:{id}")) {
        return Err(CliError::failed(format!(
            "cannot re-run rollout {id}: records {a}-{b} of its time were compacted by retention (its reports are gone); run what-if on a backup of the data directory from before"
        )));
    }
    let params = WhatIf {
        health_timeout_secs: args.health_timeout,
        failure_threshold: args.failure_threshold.clone(),
        batch_sizes: (!args.batch_size.is_empty()).then(|| args.batch_size.clone()),
    };
    let out = what_if(&records, &id, &params).map_err(|e| {
        CliError::usage(if e.contains("does not appear") {
            format!(
                "{e} (read from {}); list rollouts with `nixfleet events --kind RolloutCreated`",
                source.name()
            )
        } else {
            format!("{e}; give --failure-threshold as N or P% and --batch-size as counts or percentages, e.g. 1,25%,100%")
        })
    })?;
    let plan = records
        .iter()
        .find_map(|r| match &r.event {
            Event::RolloutCreated { rollout, plan } if *rollout == id => Some((r.at, plan)),
            _ => None,
        })
        .expect("what_if found the rollout's creation");
    let (start, plan) = plan;
    let rows = diff(&out.recorded, &out.simulated);
    let differing = rows.iter().filter(|(s, _)| *s != Side::Both).count();
    let changed = changes(plan, args);
    if json {
        let list = |d: &[Decision]| {
            d.iter()
                .map(|x| serde_json::json!({"at": rfc3339(x.at), "text": x.text}))
                .collect::<Vec<_>>()
        };
        return output::json(&serde_json::json!({
            "rollout": id.to_string(),
            "parameters": {
                "health_timeout": args.health_timeout,
                "failure_threshold": args.failure_threshold,
                "batch_sizes": (!args.batch_size.is_empty()).then_some(&args.batch_size),
            },
            "recorded": list(&out.recorded),
            "simulated": list(&out.simulated),
            "recorded_status": out.recorded_status,
            "simulated_status": out.simulated_status,
            "differs": differing > 0 || out.recorded_status != out.simulated_status,
            "diff": rows.iter().map(|(s, d)| serde_json::json!({
                "side": match s { Side::Both => "both", Side::Recorded => "recorded", Side::WhatIf => "what-if" },
                "at": rfc3339(d.at),
                "text": d.text,
            })).collect::<Vec<_>>(),
        }));
    }
    let with = if changed.is_empty() {
        "the recorded parameters".to_string()
    } else {
        changed.join(", ")
    };
    output::line(format!("What if rollout {id} had run with {with}?"))?;
    output::line(
        "The recorded reports arrive at their recorded times; operators' resumes and cancels too. Only this rollout's decisions are made again.",
    )?;
    output::line("")?;
    let el_w = rows
        .iter()
        .map(|(_, d)| elapsed(start, d.at).len())
        .max()
        .unwrap_or(3)
        .max(5);
    output::line(format!(
        "   {:<19}  {:<el_w$}  DECISION",
        "TIME (UTC)", "AFTER"
    ))?;
    for (side, d) in &rows {
        let mark = match side {
            Side::Both => ' ',
            Side::Recorded => '-',
            Side::WhatIf => '+',
        };
        output::line(format!(
            "{mark}  {:<19}  {:<el_w$}  {}",
            utc(d.at),
            elapsed(start, d.at),
            d.text
        ))?;
    }
    output::line("")?;
    output::line(summary(
        &rows,
        differing,
        &out.recorded_status,
        &out.simulated_status,
        start,
    ))
}

fn summary(
    rows: &[(Side, &Decision)],
    differing: usize,
    recorded: &str,
    simulated: &str,
    start: Timestamp,
) -> String {
    if differing == 0 && recorded == simulated {
        return format!("Same decisions as recorded; the rollout ends {simulated} either way.");
    }
    let first = rows
        .iter()
        .find(|(s, _)| *s != Side::Both)
        .map(|(s, d)| {
            format!(
                " The first difference is at {} UTC ({}): {} \"{}\".",
                utc(d.at),
                elapsed(start, d.at),
                if *s == Side::Recorded {
                    "the log has"
                } else {
                    "the what-if has"
                },
                d.text
            )
        })
        .unwrap_or_default();
    let end = if recorded == simulated {
        format!("the rollout ends {simulated} either way")
    } else {
        format!("recorded: {recorded}; with these parameters: {simulated}")
    };
    format!(
        "{differing} decision{} differ (- only in the log, + only with these parameters); {end}.{first}",
        if differing == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(at: u64, text: &str) -> Decision {
        Decision {
            at: Timestamp(at),
            text: text.into(),
        }
    }

    #[test]
    fn equal_decisions_pair_up_and_the_rest_show_on_their_side() {
        let a = [
            d(0, "start"),
            d(5, "failed"),
            d(5, "paused"),
            d(9, "done, threshold 0"),
        ];
        let b = [d(0, "start"), d(5, "succeeded"), d(9, "done, threshold 1")];
        let sides: Vec<(Side, &str)> = diff(&a, &b)
            .into_iter()
            .map(|(s, x)| (s, x.text.as_str()))
            .collect();
        assert_eq!(
            sides,
            vec![
                (Side::Both, "start"),
                (Side::Recorded, "failed"),
                (Side::Recorded, "paused"),
                (Side::WhatIf, "succeeded"),
                (Side::Both, "done, threshold 1"),
            ]
        );
    }
}
