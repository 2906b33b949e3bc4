//! The one event describer as the wire and the replay tool use it.

use nixfleet_core::describe::rfc3339;
use nixfleet_core::Timestamp;
use std::time::{Duration, UNIX_EPOCH};

#[test]
fn rfc3339_matches_humantime_across_centuries_and_leap_days() {
    let humantime = |ms: u64| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    };
    // Every day from 1970 to 2100 at an odd time of day, and the edges of leap days.
    let day = 86_400_000u64;
    for d in 0..(131 * 366) {
        let ms = d * day + 45_296_789;
        assert_eq!(rfc3339(Timestamp(ms)), humantime(ms), "day {d}");
    }
    for ms in [
        0,
        951_782_400_000,
        951_868_799_999,
        1_709_164_800_000,
        4_107_542_399_999,
    ] {
        assert_eq!(rfc3339(Timestamp(ms)), humantime(ms), "{ms}");
    }
    assert_eq!(
        rfc3339(Timestamp(1_764_000_005_123)),
        "2025-11-24T16:00:05.123Z"
    );
}

/// Every kind in the fixture that holds one of each (fixtures/events/v1.bin).
fn every_kind() -> Vec<nixfleet_core::Event> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/events/v1.bin");
    let bytes = std::fs::read(path).expect("fixture");
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        out.push(
            nixfleet_eventlog::log::decode_record(&tail[..len])
                .expect("fixture decodes")
                .event,
        );
        rest = &tail[len..];
    }
    out
}

#[test]
fn every_event_kind_has_its_own_line_and_reports_alone_are_not_audited() {
    use nixfleet_core::describe::{audit, line};
    let events = every_kind();
    assert!(events.len() >= 30, "{} events in the fixture", events.len());
    for e in &events {
        let text = line(e);
        assert!(
            !text.is_empty() && text != e.kind(),
            "{} has no line of its own in core::describe::line",
            e.kind()
        );
        let reported = matches!(
            e.kind(),
            "ReportReceived"
                | "HealthReported"
                | "HealthMeasured"
                | "SwitchReported"
                | "RebootNeededSet"
        );
        assert_eq!(
            audit(e).is_none(),
            reported,
            "{}: only what agents report is left out of the audit",
            e.kind()
        );
    }
}
