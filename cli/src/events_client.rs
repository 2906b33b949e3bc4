//! A client of the events API (`GET /api/v1/events`): one page of records, and a cursor that
//! follows the log with long polls.

use crate::client::{query, Client, Method};
use crate::error::{CliError, Result};
use nixfleet_proto::api::v1::EventRecord;

/// Page size of the cursor's requests.
pub const LIMIT: usize = 1000;

/// `GET /api/v1/events` with these query pairs (`after`, `limit`, `stream`, `wait`), one JSON
/// record per line.
pub fn read(client: &Client, pairs: &[(&str, String)]) -> Result<Vec<EventRecord>> {
    let path = format!("/api/v1/events{}", query(pairs));
    let (_, text) = client.send(Method::Get, &path, None)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                CliError::Server(format!("unexpected line from {path}: {e}; is the control plane the same version as this CLI?"))
            })
        })
        .collect()
}

/// A cursor over the whole log.
pub struct Events<'a> {
    client: &'a Client,
    after: u64,
}

impl<'a> Events<'a> {
    /// A cursor at the start of the log.
    pub fn new(client: &'a Client) -> Self {
        Events { client, after: 0 }
    }

    /// Events after the cursor, waiting up to `wait_secs` for the first; moves the cursor.
    pub fn poll(&mut self, wait_secs: u64) -> Result<Vec<EventRecord>> {
        let records = read(
            self.client,
            &[
                ("after", self.after.to_string()),
                ("wait", wait_secs.to_string()),
                ("limit", LIMIT.to_string()),
            ],
        )?;
        if let Some(last) = records.last() {
            self.after = last.seq;
        }
        Ok(records)
    }

    /// Moves the cursor to the end of the log.
    pub fn skip_to_end(&mut self) -> Result<()> {
        while self.poll(0)?.len() == LIMIT {}
        Ok(())
    }
}
