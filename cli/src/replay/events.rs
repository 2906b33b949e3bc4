//! `nixfleet events`: the log's records, filtered, one line each; `--follow` keeps printing.
//!
//! The stream filter is passed to the API (it has an index); kind, actor and time are applied
//! here, so both sources filter alike. `--json` prints the API's own objects, one per line.

use super::source::Source;
use super::text::{parse_time, utc};
use super::SourceArgs;
use crate::error::{CliError, Result};
use crate::output;
use clap::Args;
use nixfleet_core::event::{Actor, Event};
use nixfleet_core::ids::Seq;
use nixfleet_eventlog::log::Record;
use nixfleet_eventlog::postmortem::Filter;
use nixfleet_eventlog::views::event_record;

/// `nixfleet events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this stream: machine:ID, rollout:ID, release:ID or key:NAME.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    /// Only this kind of event, e.g. BatchFailed or ReportReceived.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events caused by: apikey:NAME, machine:ID, executor, system or system:bootstrap.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events at or after this time (UTC, e.g. 2025-11-24T16:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events at or before this time (UTC).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only records after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Keep printing events as they are appended (stop with Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
}

impl EventsArgs {
    fn filter(&self) -> Result<Filter> {
        if let Some(k) = &self.kind {
            if !Event::KINDS.contains(&k.as_str()) {
                return Err(CliError::usage(format!(
                    "--kind {k}: no such event kind; use one of {}",
                    Event::KINDS.join(", ")
                )));
            }
        }
        if let Some(a) = &self.actor {
            if Actor::parse(a).is_none() {
                return Err(CliError::usage(format!(
                    "--actor {a}: use apikey:NAME, machine:ID, executor, system or system:bootstrap"
                )));
            }
        }
        if let Some(s) = &self.stream {
            let ok = ["machine:", "rollout:", "release:", "key:"]
                .iter()
                .any(|p| s.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
            if !ok {
                return Err(CliError::usage(format!(
                    "--stream {s}: use machine:ID, rollout:ID, release:ID or key:NAME"
                )));
            }
        }
        Ok(Filter {
            stream: self.stream.clone(),
            kind: self.kind.clone(),
            actor: self.actor.clone(),
            since: self
                .since
                .as_deref()
                .map(|t| parse_time("--since", t))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|t| parse_time("--until", t))
                .transpose()?,
            after: self.after.map(Seq),
        })
    }
}

/// Column widths of the event lines: at least these, wider when the first records need it;
/// followed lines keep them.
struct Columns {
    seq: usize,
    actor: usize,
    stream: usize,
    kind: usize,
}

impl Columns {
    fn fit(records: &[&Record]) -> Columns {
        let mut c = Columns {
            seq: 5,
            actor: 14,
            stream: 14,
            kind: 20,
        };
        for r in records {
            c.seq = c.seq.max(r.seq.0.to_string().len());
            c.actor = c.actor.max(r.actor.to_string().chars().count());
            c.stream = c.stream.max(r.stream.chars().count());
            c.kind = c.kind.max(r.event.kind().len());
        }
        c
    }

    fn header(&self) -> String {
        self.line("SEQ", "TIME (UTC)", "ACTOR", "STREAM", "EVENT", "WHAT")
    }

    fn record(&self, r: &Record) -> String {
        self.line(
            &r.seq.0.to_string(),
            &utc(r.at),
            &r.actor.to_string(),
            &r.stream,
            r.event.kind(),
            &nixfleet_core::describe::line(&r.event),
        )
    }

    fn line(
        &self,
        seq: &str,
        at: &str,
        actor: &str,
        stream: &str,
        kind: &str,
        what: &str,
    ) -> String {
        format!(
            "{seq:>sw$}  {at:<19}  {actor:<aw$}  {stream:<stw$}  {kind:<kw$}  {what}",
            sw = self.seq,
            aw = self.actor,
            stw = self.stream,
            kw = self.kind
        )
    }
}

fn print(records: &[&Record], cols: &Columns, json: bool) -> Result<()> {
    for r in records {
        if json {
            let line =
                serde_json::to_string(&event_record(r)).expect("event records always serialize");
            output::line(line)?;
        } else {
            output::line(cols.record(r))?;
        }
    }
    Ok(())
}

/// Runs `nixfleet events`.
pub fn run(source: &Source, json: bool, args: &EventsArgs) -> Result<()> {
    let filter = args.filter()?;
    let after = args.after.unwrap_or(0);
    let stream = args.stream.as_deref();
    let records = source.after(after, stream)?;
    let mut last = records.last().map(|r| r.seq.0).unwrap_or(after);
    let shown: Vec<&Record> = records.iter().filter(|r| filter.matches(r)).collect();
    let cols = Columns::fit(&shown);
    if !json {
        output::line(cols.header())?;
    }
    print(&shown, &cols, json)?;
    if !args.follow {
        if shown.is_empty() {
            eprintln!(
                "no events match (the log has {} records after {after}{})",
                records.len(),
                stream.map(|s| format!(" in {s}")).unwrap_or_default()
            );
        }
        return Ok(());
    }
    loop {
        let more = source.wait_after(last, stream)?;
        if let Some(r) = more.last() {
            last = r.seq.0;
        }
        let shown: Vec<&Record> = more.iter().filter(|r| filter.matches(r)).collect();
        print(&shown, &cols, json)?;
    }
}
