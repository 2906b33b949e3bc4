//! Human forms of the API's times: RFC 3339 shortened for tables, ages as "42s ago".

/// `2026-11-25T08:02:46.123Z` → `2026-11-25 08:02:46`.
pub fn short(rfc3339: &str) -> String {
    let s: String = rfc3339.chars().take(19).collect();
    s.replace('T', " ")
}

/// Seconds → "42s", "5m", "3h", "2d".
pub fn age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_short_and_ages_are_rounded_down() {
        assert_eq!(short("2026-11-25T08:02:46.123Z"), "2026-11-25 08:02:46");
        assert_eq!(age(42), "42s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(7200), "2h");
    }
}
