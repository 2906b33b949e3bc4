//! Where the records come from: a data directory (offline, read on a private copy) or the
//! events API (online, `GET /api/v1/events`, JSON lines turned back into the same records).

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::settings::Settings;
use nixfleet_eventlog::log::{LogError, Record};
use nixfleet_eventlog::postmortem;
use std::path::{Path, PathBuf};

/// Records per request (the API's largest page).
pub const PAGE: usize = 10_000;
/// Seconds one long poll of `--follow` waits; below the client's 30 s request timeout.
pub const FOLLOW_WAIT_SECS: u64 = 20;

/// A log to read.
pub enum Source {
    /// A control plane data directory (or a copy of it, or its `log/` directory).
    Dir(PathBuf),
    /// The events API of a control plane.
    Api(Box<Client>, String),
}

impl Source {
    /// The data directory when given, else the control plane of the settings.
    pub fn new(
        data_dir: Option<&Path>,
        settings: impl FnOnce() -> Result<Settings>,
    ) -> Result<Source> {
        match data_dir {
            Some(d) => Ok(Source::Dir(d.to_path_buf())),
            None => {
                let s = settings()?;
                let url = s.control_plane_url.clone();
                Ok(Source::Api(Box::new(Client::new(&s)?), url))
            }
        }
    }

    /// Where the records come from, for headers: the directory or the URL.
    pub fn name(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Api(_, url) => url.clone(),
        }
    }

    /// Every record, from 1. A damaged data directory is an error naming the first bad record.
    pub fn all(&self) -> Result<Vec<Record>> {
        match self {
            Source::Dir(d) => read_dir(d),
            Source::Api(..) => self.after(0, None),
        }
    }

    /// Records after `after` (of `stream` only, if given), up to the end of the log.
    pub fn after(&self, after: u64, stream: Option<&str>) -> Result<Vec<Record>> {
        match self {
            Source::Dir(d) => Ok(read_dir(d)?
                .into_iter()
                .filter(|r| r.seq.0 > after && stream.is_none_or(|s| r.stream == s))
                .collect()),
            Source::Api(client, _) => {
                let mut out: Vec<Record> = Vec::new();
                let mut from = after;
                loop {
                    let page = page(client, from, stream, 0, PAGE)?;
                    let Some(last) = page.last() else { break };
                    from = last.seq.0;
                    let full = page.len() >= PAGE;
                    out.extend(page);
                    if !full {
                        break;
                    }
                }
                Ok(out)
            }
        }
    }

    /// For `--follow`: records after `after`, waiting for some to arrive (a long poll online; a
    /// re-read every two seconds offline). May return none.
    pub fn wait_after(&self, after: u64, stream: Option<&str>) -> Result<Vec<Record>> {
        match self {
            Source::Dir(_) => {
                std::thread::sleep(std::time::Duration::from_secs(2));
                self.after(after, stream)
            }
            Source::Api(client, _) => page(client, after, stream, FOLLOW_WAIT_SECS, PAGE),
        }
    }
}

/// One page (up to `limit`, at most [`PAGE`]) of durable records after `after` from the events
/// API, turned back into the stored records; `wait` seconds of long poll for the first.
pub fn page(
    client: &Client,
    after: u64,
    stream: Option<&str>,
    wait: u64,
    limit: usize,
) -> Result<Vec<Record>> {
    let mut pairs = vec![("after", after.to_string()), ("limit", limit.to_string())];
    if let Some(s) = stream {
        pairs.push(("stream", s.to_string()));
    }
    if wait > 0 {
        pairs.push(("wait", wait.to_string()));
    }
    crate::events_client::read(client, &pairs)?
        .iter()
        .map(|w| {
            postmortem::record_from_wire(w).map_err(|e| {
                CliError::Server(format!(
                    "unreadable record from /api/v1/events: {e}; is the control plane the same version as this CLI ({})?",
                    env!("CARGO_PKG_VERSION")
                ))
            })
        })
        .collect()
}

/// Copies of a data directory read before a damage found in each is believed: a copy made while
/// a control plane writes can catch a write half done, a damaged log fails every time.
const COPIES: usize = 3;

/// Reads a data directory through [`postmortem::open_copy`], verifying it; a damage is reported
/// only when [`COPIES`] copies in a row show it.
pub fn read_copy(dir: &Path) -> Result<Vec<Record>, LogError> {
    with_copies(|| postmortem::open_copy(dir))
}

/// Runs `open`, which reads a copy of a data directory, again while it finds damage or a log
/// shorter than its acknowledged mark, up to [`COPIES`] times in all: sled's files copied while a
/// control plane writes fast can come back older than the mark copied before them.
pub fn with_copies<T>(mut open: impl FnMut() -> Result<T, LogError>) -> Result<T, LogError> {
    let mut attempt = 1;
    loop {
        match open() {
            Err(e) if attempt < COPIES && (is_damage(&e) || matches!(e, LogError::Lost { .. })) => {
                attempt += 1
            }
            other => return other,
        }
    }
}

/// Whether the log's content is bad (rather than the directory missing or unreadable).
pub fn is_damage(e: &LogError) -> bool {
    match e {
        LogError::Corrupt { .. } => true,
        // sled's own checksums failing.
        LogError::Io(m) => m.to_lowercase().contains("corrupt"),
        _ => false,
    }
}

/// Reads a data directory on a copy, verifying it; what is wrong becomes one line saying what to do.
fn read_dir(dir: &Path) -> Result<Vec<Record>> {
    read_copy(dir).map_err(|e| dir_error(dir, e))
}

/// A data directory's failure as the CLI reports it.
pub fn dir_error(dir: &Path, e: LogError) -> CliError {
    match e {
        LogError::Corrupt { seq, why } => CliError::failed(format!(
            "the event log in {} is damaged at record {seq}: {why}; run `nixfleet verify --data-dir {}` and restore the directory from a backup",
            dir.display(),
            dir.display()
        )),
        e if is_damage(&e) => CliError::failed(format!(
            "the event log in {} is damaged: {e}; restore the directory from a backup",
            dir.display()
        )),
        other => CliError::usage(format!(
            "cannot read {}: {other}; give --data-dir the control plane's data directory (its --data-dir, e.g. /var/lib/nixfleet-cp) or a copy of it",
            dir.display()
        )),
    }
}
