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
