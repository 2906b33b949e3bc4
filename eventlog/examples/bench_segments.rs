//! Rewrites the sealed segments of an archive directory in today's segment form (zstd blocks)
//! and prints the bytes per record before and after, the time to write and to read back, and
//! checks every record reads back byte for byte.
//!
//! `cargo run --release -p nixfleet-eventlog --example bench_segments -- DATA_DIR/log/archive`

use nixfleet_eventlog::log::archive::{write_segment, Archive};
use nixfleet_eventlog::log::decode_record;
use std::time::Instant;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let Some(src) = std::env::args().nth(1) else {
        eprintln!("usage: bench_segments ARCHIVE_DIR (a control plane's DATA_DIR/log/archive)");
        std::process::exit(2);
    };
    let src = std::path::PathBuf::from(src);
    let archive = match Archive::open(&src) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            eprintln!("{}: no segments", src.display());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{}: {e}", src.display());
            std::process::exit(1);
        }
    };
    let out = tempfile::tempdir().expect("temporary directory");
    let (top, _) = archive.top();
    let t = Instant::now();
    let mut records: Vec<(u64, Vec<u8>)> = Vec::with_capacity(top as usize);
    archive
        .read(0, top, usize::MAX, &mut |s, b| records.push((s, b)))
        .expect("read the archive");
    let read_src = t.elapsed();
    let streams: Vec<String> = records
        .iter()
        .map(|(s, b)| {
            decode_record(b)
                .unwrap_or_else(|e| panic!("record {s}: {e}"))
                .stream
        })
        .collect();
    let (mut write_t, mut prev, mut at) = (std::time::Duration::ZERO, [0u8; 32], 0usize);
    let mut arch = Archive::open(out.path()).expect("empty archive");
    let per = records
        .iter()
        .zip(records.iter().skip(1))
        .position(|(a, b)| b.0 != a.0 + 1)
        .map_or(65_536, |p| p + 1)
        .min(65_536);
    while at < records.len() {
        let end = (at + per).min(records.len());
        let refs: Vec<(&[u8], &str)> = records[at..end]
            .iter()
            .zip(&streams[at..end])
            .map(|((_, b), s)| (b.as_slice(), s.as_str()))
            .collect();
        let t = Instant::now();
        let seg = write_segment(out.path(), records[at].0, prev, &refs).expect("write");
        write_t += t.elapsed();
        prev = seg.last_hash;
        arch.push(seg);
        at = end;
    }
    let t = Instant::now();
    let mut n = 0usize;
    arch.read(0, top, usize::MAX, &mut |s, b| {
        assert_eq!(
            (s, &b),
            (records[n].0, &records[n].1),
            "record {s} reads back"
        );
        n += 1;
    })
    .expect("read back");
    let read_t = t.elapsed();
    assert_eq!(n, records.len());
    let (before, after) = (dir_bytes(&src), dir_bytes(out.path()));
    let stored: usize = records.iter().map(|(_, b)| b.len()).sum();
    let rn = records.len() as f64;
    println!("records: {} in {} segments", records.len(), arch.len());
    println!("encoded records: {:.1} B per record", stored as f64 / rn);
    println!(
        "segments before: {before} B, {:.1} B per record (read in {:.2} s)",
        before as f64 / rn,
        read_src.as_secs_f64()
    );
    println!(
        "segments after (zstd blocks): {after} B, {:.1} B per record, {:.1}x smaller",
        after as f64 / rn,
        before as f64 / after as f64
    );
    println!(
        "write: {:.2} s ({:.0} records/s); read back: {:.2} s ({:.0} records/s)",
        write_t.as_secs_f64(),
        rn / write_t.as_secs_f64(),
        read_t.as_secs_f64(),
        rn / read_t.as_secs_f64()
    );
    // Retention at its limit: every report and health event removable (each machine's later ones
    // replaced them); what stays is the other events and one kept hash per removed run.
    let (mut open, mut kept_bytes) = (std::collections::BTreeSet::new(), 0u64);
    let t = Instant::now();
    for (i, seg) in arch.segments().to_vec().iter().enumerate() {
        let c = Archive::prepare_compaction(seg, i, 1, open.clone(), &|r, _| {
            matches!(
                r.event,
                nixfleet_core::Event::ReportReceived { .. }
                    | nixfleet_core::Event::HealthReported { .. }
                    | nixfleet_core::Event::HealthMeasured { .. }
            )
        })
        .expect("compact");
        arch.install(c).expect("install");
        open = arch
            .open_rollouts_before(i + 1)
            .expect("open rollouts")
            .unwrap_or_default()
            .into_iter()
            .collect();
    }
    let compact_t = t.elapsed();
    kept_bytes += dir_bytes(out.path());
    println!(
        "compacted (every report and health event removed): {kept_bytes} B, {:.0} B per segment of {per} records ({} compacted ranges) in {:.2} s",
        kept_bytes as f64 / arch.len() as f64,
        arch.compacted().expect("ranges").len(),
        compact_t.as_secs_f64()
    );
    // 10,000 machines reporting once a minute: two events per report.
    let per_day = 10_000.0 * 1440.0 * 2.0;
    println!(
        "log growth for 10,000 machines at one report a minute: before {:.2} GiB/day, after {:.3} GiB/day",
        before as f64 / rn * per_day / f64::from(1u32 << 30),
        after as f64 / rn * per_day / f64::from(1u32 << 30)
    );
}
