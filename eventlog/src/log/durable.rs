//! What makes the log's bytes durable beyond sled's own flush, and the acknowledged mark.
//!
//! sled 0.34 "syncs" its data file with `sync_file_range`, which writes data pages only: not the
//! file's size and block map, not the disk's cache, and on some file systems (FUSE among them)
//! nothing at all. So after every `flush` the log calls `fdatasync` on sled's data file itself
//! ([`SyncedFiles::sync`]), and directory entries it creates are fsynced once ([`fsync_dir`]).
//!
//! The acknowledged mark (`log/acknowledged`) names a record that was durable and so may have been
//! acknowledged: its sequence number and hash, written atomically (temporary name, fsync,
//! rename, directory fsync) when the log first holds a durable record, about once a second while
//! it grows, and at close. A log that opens shorter than its mark, or with another record at the
//! mark's place, has lost acknowledged events; the open refuses it instead of coming back with a
//! shorter history (or, on an empty log, as a new control plane with the bootstrap open again).

use super::LogError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The mark's file name in the log directory.
pub const MARK_FILE: &str = "acknowledged";

fn io(path: &Path, e: std::io::Error) -> LogError {
    LogError::Io(format!("{}: {e}", path.display()))
}

/// fsyncs a directory, so the entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// sled's data file, kept open to be fdatasynced after each flush.
pub struct SyncedFiles {
    dir: PathBuf,
    data: File,
    /// sled's own snapshot files (`snap.*`) last seen: when they change, the directory is
    /// fsynced too (sled fsyncs their contents, not the rename).
    snapshots: Vec<std::ffi::OsString>,
}

impl SyncedFiles {
    /// Opens sled's data file in `dir` and makes everything sled created there durable: its
    /// configuration file, its directories, and the directory entries up to the data directory.
    pub fn open(dir: &Path) -> Result<SyncedFiles, LogError> {
        let data_path = dir.join("db");
        let data = File::open(&data_path).map_err(|e| io(&data_path, e))?;
        let conf = dir.join("conf");
        if conf.exists() {
            File::open(&conf)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&conf, e))?;
        }
        data.sync_all().map_err(|e| io(&data_path, e))?;
        let blobs = dir.join("blobs");
        if blobs.is_dir() {
            fsync_dir(&blobs)?;
        }
        fsync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        let mut files = SyncedFiles {
            dir: dir.to_path_buf(),
            data,
            snapshots: Vec::new(),
        };
        files.snapshots = files.snapshot_names();
        Ok(files)
    }

    fn snapshot_names(&self) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .filter(|n| n.to_string_lossy().starts_with("snap."))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Makes what sled wrote so far durable: `fdatasync` of its data file (one per group
    /// commit), and a directory fsync when sled renamed a snapshot file into place.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.data
            .sync_data()
            .map_err(|e| io(&self.dir.join("db"), e))?;
        let names = self.snapshot_names();
        if names != self.snapshots {
            fsync_dir(&self.dir)?;
            self.snapshots = names;
        }
        Ok(())
    }
}

/// A record known to have been durable: its sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The record's sequence number.
    pub seq: u64,
    /// SHA-256 of its stored bytes.
    pub hash: [u8; 32],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn body(m: &Mark) -> String {
    format!(
        "nixfleet acknowledged mark v1\nseq {}\nhash {}\n",
        m.seq,
        hex(&m.hash)
    )
}

impl Mark {
    /// Reads the mark of the log in `dir` (None when there is none). A mark that cannot be read
    /// is an error naming the file: it is only ever replaced whole, so it was damaged or edited.
    pub fn read(dir: &Path) -> Result<Option<Mark>, LogError> {
        let path = dir.join(MARK_FILE);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
            Ok(t) => t,
        };
        let bad = || {
            LogError::Io(format!(
            "{} is damaged; it names the last record known to be acknowledged, so the log cannot be checked against it (remove it only if you accept that events may have been lost)",
            path.display()
        ))
        };
        let (content, sum) = text.rsplit_once("sha256 ").ok_or_else(bad)?;
        if hex(&Sha256::digest(content.as_bytes())) != sum.trim_end() {
            return Err(bad());
        }
        let mut seq = None;
        let mut hash = None;
        for line in content.lines() {
            if let Some(v) = line.strip_prefix("seq ") {
                seq = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("hash ") {
                hash = unhex(v);
            }
        }
        match (seq, hash) {
            (Some(seq), Some(hash)) => Ok(Some(Mark { seq, hash })),
            _ => Err(bad()),
        }
    }

    /// Writes the mark atomically: temporary name, fsync, rename, directory fsync.
    pub fn write(&self, dir: &Path) -> Result<(), LogError> {
        use std::io::Write;
        let content = body(self);
        let sum = hex(&Sha256::digest(content.as_bytes()));
        let tmp = dir.join(format!("{MARK_FILE}.tmp"));
        let path = dir.join(MARK_FILE);
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(format!("{content}sha256 {sum}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        fsync_dir(dir)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_a_damaged_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Mark::read(dir.path()).unwrap(), None);
        let m = Mark {
            seq: 42,
            hash: [7; 32],
        };
        m.write(dir.path()).unwrap();
        assert_eq!(Mark::read(dir.path()).unwrap(), Some(m));
        let path = dir.path().join(MARK_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("seq 42", "seq 41")).unwrap();
        let e = Mark::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("acknowledged is damaged"), "{e}");
    }
}
