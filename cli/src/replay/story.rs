//! `nixfleet timeline ROLLOUT`: the rollout's story, one line per step (when, how long after the
//! start, which record, who, what), and under each batch decision the report per machine that
//! decided it.

use super::source::Source;
use super::text::{duration, elapsed, rfc3339, utc};
use super::{rollout_id, SourceArgs};
use crate::error::{CliError, Result};
use crate::output;
use clap::Args;
use nixfleet_core::event::Event;
use nixfleet_eventlog::log::retention;
use nixfleet_eventlog::postmortem::{replay_until, timeline, StoryLine};

/// `nixfleet timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The rollout (r-…).
    pub rollout: String,
}

/// Runs `nixfleet timeline`.
pub fn run(source: &Source, json: bool, args: &TimelineArgs) -> Result<()> {
    let id = rollout_id(&args.rollout)?;
    let records = source.all()?;
    let story = timeline(&records, &id).map_err(|e| {
        CliError::usage(format!(
            "{e} (read from {}); list rollouts with `nixfleet events --kind RolloutCreated`",
            source.name()
        ))
    })?;
    let status = replay_until(&records, None)
        .rollouts
        .get(&id)
        .map(|r| r.status.to_string())
        .unwrap_or_else(|| "deleted".into());
    if json {
        let lines: Vec<_> = story
            .iter()
            .map(|l| {
                serde_json::json!({
                    "seq": l.seq.0,
                    "at": rfc3339(l.at),
                    "actor": l.actor,
                    "text": l.text.trim_start(),
                    "evidence": l.evidence.iter().map(|e| serde_json::json!({
                        "machine": e.machine.to_string(),
                        "verdict": e.verdict,
                        "seq": e.seq.map(|s| s.0),
                        "at": e.at.map(rfc3339),
                        "detail": e.detail,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return output::json(&serde_json::json!({
            "rollout": id.to_string(),
            "status": status,
            "lines": lines,
        }));
    }
    let start = story.first().map(|l| l.at).unwrap_or_default();
    let created = records.iter().find_map(|r| match &r.event {
        Event::RolloutCreated { rollout, plan } if *rollout == id => Some((r, plan)),
        _ => None,
    });
    if let Some((r, p)) = created {
        output::line(format!(
            "Rollout {id} of release {}, created {} UTC by {}; now {status}.",
            p.release,
            utc(r.at),
            r.actor,
        ))?;
    }
    if let Some((a, b)) = retention::compacted_during(&records, &format!("rollout:{id}")) {
        output::line(format!(
            "Records {a}-{b}, during this rollout, were compacted by retention: the reports among them are gone, so the evidence below may lack some."
        ))?;
    }
    output::line("")?;
    let seq_w = story
        .iter()
        .map(|l| l.seq.0.to_string().len() + 1)
        .max()
        .unwrap_or(2);
    let actor_w = story
        .iter()
        .map(|l| l.actor.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let el_w = story
        .iter()
        .map(|l| elapsed(start, l.at).len())
        .max()
        .unwrap_or(3)
        .max(5);
    output::line(format!(
        "{:<19}  {:<el_w$}  {:>seq_w$}  {:<actor_w$}  WHAT",
        "TIME (UTC)", "AFTER", "SEQ", "WHO"
    ))?;
    let indent = 19 + 2 + el_w + 2 + seq_w + 2 + actor_w + 2;
    for l in &story {
        output::line(format!(
            "{:<19}  {:<el_w$}  {:>seq_w$}  {:<actor_w$}  {}",
            utc(l.at),
            elapsed(start, l.at),
            format!("#{}", l.seq.0),
            l.actor,
            l.text
        ))?;
        for e in &l.evidence {
            output::line(format!("{:indent$}    {}", "", evidence_line(e, start)))?;
        }
    }
    output::line("")?;
    output::line(outcome(&story, &status))
}

fn evidence_line(
    e: &nixfleet_eventlog::postmortem::Evidence,
    start: nixfleet_core::ids::Timestamp,
) -> String {
    let by = match (e.seq, e.at) {
        (Some(s), Some(at)) => format!(" by #{} at {} ({})", s.0, utc(at), elapsed(start, at)),
        (Some(s), None) => format!(" by #{}", s.0),
        _ => String::new(),
    };
    let detail = if e.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", e.detail)
    };
    format!("└ {} {}{by}{detail}", e.machine, e.verdict)
}

fn outcome(story: &[StoryLine], status: &str) -> String {
    let (Some(first), Some(last)) = (story.first(), story.last()) else {
        return format!("Status: {status}.");
    };
    let batches_failed = story.iter().filter(|l| l.text.contains(" FAILED")).count();
    let resumes: Vec<&str> = story
        .iter()
        .filter(|l| l.text == "resumed")
        .map(|l| l.actor.as_str())
        .collect();
    let mut s = format!(
        "Status: {status}; {} from the first to the last step",
        duration(first.at, last.at)
    );
    if batches_failed > 0 {
        s.push_str(&format!(
            "; {batches_failed} batch decision{} failed",
            if batches_failed == 1 { "" } else { "s" }
        ));
    }
    if !resumes.is_empty() {
        s.push_str(&format!("; resumed by {}", resumes.join(", ")));
    }
    s.push('.');
    s
}
