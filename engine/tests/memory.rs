//! The control plane's memory, through the real binary: its allocator asks for no transparent
//! huge pages. With THP in madvise mode (Debian's default) mimalloc's default did, and every
//! 2 MiB region it touched stayed resident whole: 39 MiB of a 47 MiB RSS at idle, 70 – 120 MiB
//! more at 1,000 machines (docs/benchmarks.md, "Memory"). Where THP is off, this passes trivially.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

/// The process' anonymous memory held in transparent huge pages, in KiB.
fn huge_pages_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

#[test]
fn the_control_plane_holds_no_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &["web-01"]);
    let cp = Cp::start(dir.path(), &pki);
    let agent = cp.client("web-01", None);
    for n in 1..=200 {
        let (s, t) = agent.post(
            "/api/v1/machines/web-01/report",
            &report("web-01", &gen("web-01", n), true, Some(true), &["web"]),
        );
        assert_eq!(s, 200, "{t}");
    }
    assert_eq!(
        huge_pages_kib(cp.child.id()),
        0,
        "AnonHugePages of the control plane, in KiB"
    );
}
