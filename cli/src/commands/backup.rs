//! `nixfleet backup`, `nixfleet restore` and `nixfleet log copy`: the event log copied record by
//! record, exactly (same sequence numbers, times, actors, streams and hash chain), into a new
//! log through `EventLog::import`, which refuses any record that does not continue the chain.
//!
//! - `backup --to DIR` reads a running control plane's log over the events API, which serves
//!   only durable records, up to the durable head found when it starts (`Reader::head`: the
//!   end of a page shorter than asked for, always the end of a group), so the backup ends at
//!   the end of a group the control plane had made durable: a consistent cut at a decision
//!   boundary, however fast records keep coming meanwhile. With
//!   `--data-dir LIVE` it reads a data directory through the post-mortem copy reader instead
//!   (the same cut: the copy opens as a crash would, at the last durable group).
//! - `restore --from DIR --data-dir TARGET` (control plane stopped) verifies the backup,
//!   writes it as TARGET's log, and removes TARGET's snapshot, which could only be ignored.
//! - `log copy --from SRC --to DST`, each a data directory or a `postgres://` URL.
//!
//! A new log is written under `log.partial` and renamed to `log` only once complete and
//! verified, so an interrupted run never leaves something that looks like a data directory.

use crate::error::{CliError, Result};
use crate::replay::source;
use crate::settings::{GlobalArgs, Settings};
use clap::{Args, Subcommand};
use nixfleet_eventlog::log::{EventLog, LogError, LogOptions, Record, SledLog};
use nixfleet_eventlog::postmortem::{self, LogCopy};
use std::path::{Path, PathBuf};

/// Records per page read from the source and imported at once (one durable write each): the
/// events API's largest page.
const PAGE: usize = source::PAGE;
/// The staging name of a log being written.
const PARTIAL: &str = "log.partial";

/// `nixfleet backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory to write the backup into, as a new data directory (`DIR/log`); it must
    /// not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Read this data directory (through a private copy, so a running control plane is not
    /// disturbed) instead of the control plane's events API.
    #[arg(long, value_name = "LIVE")]
    pub data_dir: Option<PathBuf>,
}

/// `nixfleet restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup (a directory `nixfleet backup` wrote, or any data directory).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The control plane's data directory to restore into (the control plane stopped).
    #[arg(long, value_name = "TARGET")]
    pub data_dir: PathBuf,
    /// Replace the log (and snapshot) of a TARGET that already holds one.
    #[arg(long)]
    pub force: bool,
}

/// `nixfleet log …`.
#[derive(Debug, Subcommand)]
pub enum LogCmd {
    /// Copy a log record by record into a new one, between data directories and PostgreSQL
    /// (`postgres://…`); every record and hash comes out identical.
    Copy(CopyArgs),
}

/// `nixfleet log copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// A data directory (read through a private copy) or a `postgres://` URL.
    #[arg(long, value_name = "SRC")]
    pub from: String,
    /// A new data directory, or a `postgres://` URL of a database whose log is empty.
    #[arg(long, value_name = "DST")]
    pub to: String,
}

/// Runs `nixfleet backup`.
pub fn backup(global: &GlobalArgs, args: BackupArgs) -> Result<()> {
    let from = match &args.data_dir {
        Some(d) => Reader::dir(d)?,
        None => {
            let s = Settings::resolve(global)?;
            let name = s.control_plane_url.clone();
            Reader::Api(Box::new(crate::client::Client::new(&s)?), name)
        }
    };
    let to = Place::Dir(args.to.clone());
    let copied = copy(&from, &to, None)?;
    report(global, "backed up", &from.name(), &to, copied)
}

/// Runs `nixfleet restore`.
pub fn restore(global: &GlobalArgs, args: RestoreArgs) -> Result<()> {
    let from = Reader::dir(&args.from)?;
    let to = Place::Dir(args.data_dir.clone());
    let copied = copy(&from, &to, Some(args.force))?;
    // A snapshot of the replaced log is at best a match of a prefix, at worst ignored with a
    // warning at every start: it goes, and the first start replays the restored log.
    let snapshot = nixfleet_eventlog::snapshot::path(&args.data_dir);
    if snapshot.exists() {
        std::fs::remove_file(&snapshot)
            .map_err(|e| CliError::failed(format!("cannot remove {}: {e}", snapshot.display())))?;
    }
    report(global, "restored", &from.name(), &to, copied)
}

/// Runs `nixfleet log …`.
pub fn log(global: &GlobalArgs, cmd: LogCmd) -> Result<()> {
    match cmd {
        LogCmd::Copy(a) => {
            let from = Reader::open(&Place::parse(&a.from))?;
            let to = Place::parse(&a.to);
            let copied = copy(&from, &to, None)?;
            report(global, "copied", &from.name(), &to, copied)
        }
    }
}

/// What a copy did: the last record and its hash.
struct Copied {
    last: u64,
    hash: [u8; 32],
}

fn report(global: &GlobalArgs, what: &str, from: &str, to: &Place, c: Copied) -> Result<()> {
    let hash = postmortem::hex(&c.hash);
    if global.json {
        return crate::output::json(&serde_json::json!({
            "from": from, "to": to.name(), "records": c.last, "last_hash": hash,
        }));
    }
    crate::output::line(format!(
        "{what} records 1 to {} from {from} to {} (last record's hash {hash}); the chain verified",
        c.last,
        to.name()
    ))
}

/// A log's place: a data directory (or its `log/`) or a PostgreSQL database.
enum Place {
    Dir(PathBuf),
    Postgres(String),
}

impl Place {
    fn parse(s: &str) -> Place {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Place::Postgres(s.to_owned())
        } else {
            Place::Dir(PathBuf::from(s))
        }
    }

    fn name(&self) -> String {
        match self {
            Place::Dir(d) => d.display().to_string(),
            Place::Postgres(url) => redact(url),
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Where records are read from, page by page.
enum Reader {
    /// A control plane's events API (durable records only).
    Api(Box<crate::client::Client>, String),
    /// A data directory, opened on a private copy (verified at open).
    Copy(Box<LogCopy>, String),
    /// A log opened in place (PostgreSQL).
    Log(Box<dyn EventLog>, String),
}

impl Reader {
    fn dir(d: &Path) -> Result<Reader> {
        let copy = source::with_copies(|| postmortem::open_copy_with(d, |_| {})).map_err(|e| {
            match e {
                LogError::Lost { .. } => CliError::failed(format!(
                    "{e}; if a control plane is writing to {}, its files were copied at different moments: back up over the events API instead (without --data-dir), or try again",
                    d.display()
                )),
                e => source::dir_error(d, e),
            }
        })?;
        Ok(Reader::Copy(Box::new(copy), d.display().to_string()))
    }

    fn open(place: &Place) -> Result<Reader> {
        match place {
            Place::Dir(d) => Reader::dir(d),
            Place::Postgres(url) => Ok(Reader::Log(pg_open(url)?, place.name())),
        }
    }

    fn name(&self) -> String {
        match self {
            Reader::Api(_, n) | Reader::Copy(_, n) | Reader::Log(_, n) => n.clone(),
        }
    }

    /// Up to `limit` (at most [`PAGE`]) records after `after`.
    fn page(&self, after: u64, limit: usize) -> Result<Vec<Record>> {
        let log: &dyn EventLog = match self {
            Reader::Api(client, _) => return source::page(client, after, None, 0, limit),
            Reader::Copy(c, _) => c.log(),
            Reader::Log(l, _) => l.as_ref(),
        };
        log.read_after(nixfleet_core::ids::Seq(after), limit)
            .map_err(|e| CliError::failed(format!("reading {}: {e}", self.name())))
    }

    /// Whether record `seq` is there (durable, for the events API).
    fn has(&self, seq: u64) -> Result<bool> {
        Ok(!self.page(seq - 1, 1)?.is_empty())
    }

    /// The last record now, at the end of a group: where the copy stops, however fast records
    /// keep coming. A page shorter than asked for ends at the source's durable (committed)
    /// head of that moment, which is always the end of a group (the events API serves nothing
    /// past it; PostgreSQL commits a group in one transaction); the page is asked for from
    /// half a page before the last record, found by a search of single-record reads.
    fn head(&self) -> Result<u64> {
        if !self.has(1)? {
            return Ok(0);
        }
        let (mut lo, mut hi) = (1u64, 2u64);
        while self.has(hi)? {
            (lo, hi) = (hi, hi.saturating_mul(2));
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.has(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        loop {
            let page = self.page(lo.saturating_sub(PAGE as u64 / 2), PAGE)?;
            let Some(last) = page.last() else {
                return Ok(lo);
            };
            if page.len() < PAGE {
                return Ok(last.seq.0);
            }
            // More than half a page came meanwhile: again from the new end.
            lo = last.seq.0;
        }
    }
}

/// Opens the PostgreSQL log at `url` for copying (no executor lease).
fn pg_open(url: &str) -> Result<Box<dyn EventLog>> {
    let mut options = nixfleet_pglog::PgOptions::new("nixfleet-log-copy");
    options.executor = false;
    let log = nixfleet_pglog::PgLog::open(url, options).map_err(|e| {
        CliError::failed(format!("cannot open the event log at {}: {e}", redact(url)))
    })?;
    Ok(Box::new(log))
}

/// Copies every record of `from` into a new log at `to`; returns the last one copied. `force`
/// is `Some` for a restore (whose `--force` replaces a log), `None` for a new log.
fn copy(from: &Reader, to: &Place, force: Option<bool>) -> Result<Copied> {
    let target = Target::create(to, force)?;
    match copy_into(from, to, target.log()) {
        Ok(last) => {
            target.finish(last.last)?;
            Ok(last)
        }
        Err(e) => {
            target.abandon();
            Err(e)
        }
    }
}

fn copy_into(from: &Reader, to: &Place, log: &dyn EventLog) -> Result<Copied> {
    let head = from.head()?;
    let mut last = Copied {
        last: 0,
        hash: [0; 32],
    };
    while last.last < head {
        let want = PAGE.min((head - last.last) as usize);
        let page = from.page(last.last, want)?;
        let Some(end) = page.last() else {
            return Err(CliError::failed(format!(
                "{} ended at record {} while reading up to {head}",
                from.name(),
                last.last
            )));
        };
        let end = end.seq.0;
        if let Some(r) = page.iter().find(|r| r.stream != r.event.stream()) {
            return Err(broken(from, r.seq.0, "its stream does not match its event"));
        }
        log.import(&page).map_err(|e| match e {
            LogError::Corrupt { seq, why } => broken(from, seq, &why),
            e => CliError::failed(format!("writing to {}: {e}", to.name())),
        })?;
        last.last = end;
    }
    if last.last == 0 {
        return Err(CliError::failed(format!(
            "the event log of {} is empty: nothing to copy",
            from.name()
        )));
    }
    last.hash = log
        .record_hash(nixfleet_core::ids::Seq(last.last))
        .map_err(|e| CliError::failed(format!("reading back {}: {e}", to.name())))?
        .ok_or_else(|| CliError::failed(format!("{} lost record {}", to.name(), last.last)))?;
    Ok(last)
}

fn broken(from: &Reader, seq: u64, why: &str) -> CliError {
    CliError::failed(format!(
        "the log read from {} does not continue its hash chain at record {seq}: {why}; the copy was abandoned",
        from.name()
    ))
}

/// The new log being written.
enum Target {
    /// A data directory's `log.partial`, renamed to `log` by [`Target::finish`].
    Dir {
        dir: PathBuf,
        log: SledLog,
    },
    Postgres(Box<dyn EventLog>),
}

impl Target {
    fn create(place: &Place, force: Option<bool>) -> Result<Target> {
        match place {
            Place::Dir(dir) => {
                let hint = match force {
                    Some(_) => "pass --force to replace the log it holds (the control plane stopped), or restore into a new directory",
                    None => "write into a new directory",
                };
                prepare_dir(dir, force.unwrap_or(false), hint)?;
                let partial = dir.join(PARTIAL);
                let log = SledLog::open_with(&partial, None, LogOptions::default(), |_| {})
                    .map_err(|e| {
                        CliError::failed(format!("cannot create {}: {e}", partial.display()))
                    })?;
                Ok(Target::Dir {
                    dir: dir.clone(),
                    log,
                })
            }
            Place::Postgres(url) => {
                let log = pg_open(url)?;
                let first = log
                    .read_after(nixfleet_core::ids::Seq(0), 1)
                    .map_err(|e| CliError::failed(format!("reading {}: {e}", place.name())))?;
                if !first.is_empty() {
                    return Err(CliError::usage(format!(
                        "the database at {} already holds an event log: copy into an empty database",
                        place.name()
                    )));
                }
                Ok(Target::Postgres(log))
            }
        }
    }

    /// Throws away a data directory's unfinished log (records already imported into PostgreSQL
    /// stay: the database is not emptied behind the operator's back).
    fn abandon(self) {
        if let Target::Dir { dir, log } = self {
            drop(log);
            let _ = std::fs::remove_dir_all(dir.join(PARTIAL));
        }
    }

    fn log(&self) -> &dyn EventLog {
        match self {
            Target::Dir { log, .. } => log,
            Target::Postgres(log) => log.as_ref(),
        }
    }

    /// Closes the new log, verifies it whole (a data directory: every record, the chain, the
    /// head and the acknowledged mark) and puts it in place.
    fn finish(self, last: u64) -> Result<()> {
        let Target::Dir { dir, log } = self else {
            return Ok(());
        };
        let partial = dir.join(PARTIAL);
        let fail = |e: &dyn std::fmt::Display| {
            CliError::failed(format!("writing {}: {e}", partial.display()))
        };
        log.close().map_err(|e| fail(&e))?;
        let n = SledLog::verify(&partial).map_err(|e| fail(&e))?;
        if n != last {
            return Err(fail(&format!("{n} records verified, {last} copied")));
        }
        let final_log = dir.join("log");
        std::fs::rename(&partial, &final_log).map_err(|e| fail(&e))?;
        nixfleet_eventlog::log::durable::fsync_dir(&dir).map_err(|e| fail(&e))?;
        Ok(())
    }
}

/// Makes `dir` ready for a new log: created if missing; refused if it holds anything but an
/// interrupted run's `log.partial`, unless `force`, which removes its log (a control plane
/// holding it is refused) and the partial one. `hint` says what to do instead.
fn prepare_dir(dir: &Path, force: bool, hint: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != PARTIAL)
        .collect();
    if !entries.is_empty() && !force {
        return Err(CliError::usage(format!(
            "{} is not empty: {hint}",
            dir.display()
        )));
    }
    let log = dir.join("log");
    if force && log.exists() {
        // sled's lock: a control plane holding this log keeps it, and the open fails. Any other
        // failure is a damaged log, which is what a restore is for.
        match nixfleet_eventlog::log::open_raw(&log) {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                return Err(CliError::usage(format!(
                    "{} is in use ({e}): stop the control plane that uses it first",
                    log.display()
                )));
            }
            Ok(_) | Err(_) => {}
        }
        std::fs::remove_dir_all(&log)
            .map_err(|e| CliError::failed(format!("cannot remove {}: {e}", log.display())))?;
    }
    let partial = dir.join(PARTIAL);
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .map_err(|e| CliError::failed(format!("cannot remove {}: {e}", partial.display())))?;
    }
    Ok(())
}
