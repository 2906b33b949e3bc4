//! Projection snapshots: an accelerator for start-up, never a source of truth.
//!
//! A snapshot is the whole projected `State` at a durable sequence number, with the hash of that
//! record (a checkpoint). At start the engine loads it, checks the checkpoint against the log, and
//! replays only the records after it. A snapshot that is missing, unreadable, from another build,
//! or does not match the log is ignored with a warning and the log is replayed from the start:
//! deleting a snapshot changes nothing but start-up time (a test checks it).
//!
//! The file is written to a temporary name, fsynced and renamed, so a crash leaves the old one.
//! It starts with the SHA-256 of the rest, checked before anything is decoded: a damaged length
//! prefix inside the state could otherwise ask for an allocation of exabytes and abort the start
//! that the snapshot was only meant to speed up (the `decode_record` fuzz target found that for log
//! records).

use crate::log::Checkpoint;
use nixfleet_core::State;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The snapshot file inside the data directory.
pub const FILE: &str = "snapshot.bin";
/// Bumped whenever the projections change shape (4: `Machine::last_switch` and `reboot_needed`,
/// `Rollout::options`, `State::health_measured`), so a snapshot of the same build version written
/// before is refused by name instead of decoded into the wrong fields.
const FORMAT: u16 = 5;

#[derive(Serialize)]
struct Header<'a> {
    format: u16,
    build: &'a str,
    seq: u64,
    hash: [u8; 32],
    state: &'a State,
}

#[derive(Deserialize)]
struct Loaded {
    format: u16,
    build: String,
    seq: u64,
    hash: [u8; 32],
    state: State,
}

/// The snapshot path of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Writes `state` (whose last event is the record with `hash`) atomically.
pub fn write(data_dir: &Path, state: &State, hash: [u8; 32]) -> std::io::Result<u64> {
    let bytes = bincode::serde::encode_to_vec(
        Header {
            format: FORMAT,
            build: env!("CARGO_PKG_VERSION"),
            seq: state.last_seq.0,
            hash,
            state,
        },
        bincode::config::standard(),
    )
    .map_err(std::io::Error::other)?;
    let sum = crate::log::hash_bytes(&bytes);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&sum)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(sum.len() as u64 + bytes.len() as u64)
}

/// Loads the snapshot: `Ok(None)` when there is none, `Err` (with why) when it is unusable.
pub fn load(data_dir: &Path) -> Result<Option<(Checkpoint, State)>, String> {
    let p = path(data_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    let (sum, bytes) = bytes
        .split_at_checked(32)
        .ok_or_else(|| format!("{} is truncated", p.display()))?;
    if crate::log::hash_bytes(bytes) != sum {
        return Err(format!("{} is damaged (checksum mismatch)", p.display()));
    }
    let (s, used): (Loaded, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| format!("{} is unreadable: {e}", p.display()))?;
    if used != bytes.len() || s.format != FORMAT || s.build != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "{} was written by another build ({}, format {})",
            p.display(),
            s.build,
            s.format
        ));
    }
    if s.state.last_seq.0 != s.seq {
        return Err(format!("{} is inconsistent", p.display()));
    }
    Ok(Some((
        Checkpoint {
            seq: s.seq,
            hash: s.hash,
        },
        s.state,
    )))
}
