//! `nixfleet verify`: the log's sequence and hash chain, checked; exit 1 naming the first bad
//! record.
//!
//! Offline, the data directory is opened (on a copy) the way the control plane opens it at
//! start: every record decoded, numbered 1, 2, 3… and chained, and the head (the last durable
//! record and its hash) matched, so tampering, gaps and truncation are all found; a damage counts
//! only when three copies in a row show it, since a copy of a directory that a running control
//! plane writes to can catch a write half done. Online, the served records are re-encoded and
//! hashed to check the same chain; the head is not served, so a log cut short after its last
//! served record cannot be told from a whole one.

use super::source::Source;
use super::text::utc;
use crate::error::{CliError, Result};
use crate::output;
use nixfleet_eventlog::log::retention;
use nixfleet_eventlog::log::{encode_record, hash_bytes, LogError, Record};
use nixfleet_eventlog::postmortem::{self, hex};

/// `nixfleet verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: super::SourceArgs,
}

fn last_hash(records: &[Record]) -> Option<String> {
    records.last().map(|r| {
        hex(&hash_bytes(&encode_record(
            r.seq,
            r.at,
            &r.actor,
            r.prev_hash,
            &r.event,
        )))
    })
}

/// Runs `nixfleet verify`.
pub fn run(source: &Source, json: bool) -> Result<()> {
    let (outcome, head_checked) = match source {
        Source::Dir(dir) => match super::source::read_copy(dir) {
            Ok(records) => (Ok(records), true),
            Err(e @ LogError::Corrupt { .. }) => (Err(e), true),
            Err(other) => return Err(super::source::dir_error(dir, other)),
        },
        Source::Api(..) => {
            let records = source.all()?;
            (postmortem::verify_chain(&records).map(|_| records), false)
        }
    };
    match outcome {
        Ok(records) => {
            let n = records.len();
            if json {
                return output::json(&serde_json::json!({
                    "ok": true,
                    "source": source.name(),
                    "records": n,
                    "last_seq": records.last().map(|r| r.seq.0),
                    "last_hash": last_hash(&records),
                    "head_checked": head_checked,
                    "compacted": retention::gaps(&records),
                }));
            }
            let last = records.last().map_or(0, |r| r.seq.0);
            let what = match retention::describe_gaps(&retention::gaps(&records)) {
                _ if n == 0 => "the log is empty".to_string(),
                // Only a data directory's open accepts compacted ranges (their kept hashes chain).
                Some(g) => {
                    format!("records 1..{last} in order, each chained to the one before; {g}")
                }
                None => {
                    format!("records 1..{n} in order, without gaps, each chained to the one before")
                }
            };
            output::line(format!("ok: {} records from {}: {what}.", n, source.name()))?;
            if let Some(r) = records.last() {
                output::line(format!(
                    "last record {} ({}, {} UTC), hash {}",
                    r.seq.0,
                    r.event.kind(),
                    utc(r.at),
                    last_hash(&records).unwrap_or_default()
                ))?;
            }
            output::line(if head_checked {
                "The head (the last durable record and its hash) matches: nothing was cut off the end."
            } else {
                "Not checked online: the head (the API does not serve it), so a log cut short after the last served record would look whole; `nixfleet verify --data-dir` on the control plane's host checks it."
            })
        }
        Err(LogError::Corrupt { seq, why }) => {
            if json {
                output::json(&serde_json::json!({
                    "ok": false,
                    "source": source.name(),
                    "first_bad_seq": seq,
                    "why": why,
                }))?;
            }
            let before = match seq {
                0 | 1 => String::new(),
                2 => " (record 1 before it is intact)".to_string(),
                _ => format!(" (records 1 to {} chain correctly)", seq - 1),
            };
            Err(CliError::failed(format!(
                "the event log from {} fails verification at record {seq}: {why}{before}; keep a copy for the post-mortem and restore the control plane's data directory from a backup",
                source.name(),
            )))
        }
        Err(other) => Err(CliError::failed(format!(
            "cannot verify the event log from {}: {other}",
            source.name()
        ))),
    }
}
