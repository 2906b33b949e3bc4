//! The event replay tool for post-mortems: `events`, `replay`, `timeline`, `verify`, `what-if`.
//!
//! Online, records come from the events API with the usual settings; offline (`--data-dir`),
//! from a control plane's data directory or a copy of it, read through a private copy so that a
//! live control plane's files are never written. Both give the same records, and every analysis
//! is `nixfleet_eventlog::postmortem`; this module parses flags, picks the source and prints.

mod events;
pub mod source;
mod story;
mod tables;
mod text;
mod verify;
mod whatif;

use crate::error::Result;
use crate::settings::GlobalArgs;
use crate::settings::Settings;
use clap::{Args, Subcommand};
use source::Source;
use std::path::PathBuf;

/// The replay tool's commands, flattened into the top level (`nixfleet events`, …).
#[derive(Debug, Subcommand)]
pub enum ReplayCmd {
    /// Events of the log, filtered by stream, kind, actor and time; --follow waits for more.
    Events(events::EventsArgs),
    /// The tables (machines, releases, rollouts and batches, API keys) as they were then.
    Replay(tables::ReplayArgs),
    /// A rollout's story: who did what when, and the reports that decided each batch.
    Timeline(story::TimelineArgs),
    /// Check the log's sequence and hash chain; names the first bad record (exit 1).
    Verify(verify::VerifyArgs),
    /// Re-run a rollout's recorded reports with other parameters; shows where decisions differ.
    WhatIf(whatif::WhatIfArgs),
}

/// Where to read the log: the events API (default) or a data directory.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Read this control plane data directory (or a copy of it) instead of the events API.
    /// Read-only: it is copied first, so a running control plane is not disturbed.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl SourceArgs {
    fn open(&self, global: &GlobalArgs) -> Result<Source> {
        Source::new(self.data_dir.as_deref(), || Settings::resolve(global))
    }
}

/// Runs one replay command. Settings are resolved only online, so a broken .nixfleet.toml does
/// not stop a post-mortem on a data directory.
pub fn run(global: &GlobalArgs, cmd: ReplayCmd) -> Result<()> {
    let json = global.json;
    match cmd {
        ReplayCmd::Events(a) => events::run(&a.source.open(global)?, json, &a),
        ReplayCmd::Replay(a) => tables::run(&a.source.open(global)?, json, &a),
        ReplayCmd::Timeline(a) => story::run(&a.source.open(global)?, json, &a),
        ReplayCmd::Verify(a) => verify::run(&a.source.open(global)?, json),
        ReplayCmd::WhatIf(a) => whatif::run(&a.source.open(global)?, json, &a),
    }
}

/// `nixfleet timeline ROLLOUT` on the events API of the control plane of `settings` (for
/// `nixfleet demo`, which holds its own settings).
pub fn timeline(settings: &Settings, rollout: &str) -> Result<()> {
    let source = Source::Api(
        Box::new(crate::client::Client::new(settings)?),
        settings.control_plane_url.clone(),
    );
    let args = story::TimelineArgs {
        source: SourceArgs { data_dir: None },
        rollout: rollout.to_string(),
    };
    story::run(&source, false, &args)
}

/// Checks a rollout id given on the command line.
fn rollout_id(s: &str) -> Result<nixfleet_core::ids::RolloutId> {
    nixfleet_core::ids::RolloutId::parse(s).map_err(|e| {
        crate::error::CliError::usage(format!(
            "{e}; rollout ids look like r-…, see `nixfleet events --kind RolloutCreated`"
        ))
    })
}
