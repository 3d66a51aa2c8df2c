//! Parsers for the flag values agx shares: durations with a unit, bounded. A bare number is
//! refused (is `500` milliseconds or seconds?) with the unit form shown; a value out of
//! range is refused with the range, never clamped.

use std::time::Duration;

use agenix_proto::Limits;
use agenix_proto::plan::MAX_LIFETIME_SECS;

/// Parses a duration with a unit (`500ms`, `30s`, `2m`, `24h`, `7days`) between `min` and
/// `max`, both included.
pub(crate) fn parse_duration_between(
    s: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let s = s.trim();
    let range = format!("{}..={}", show(min), show(max));
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // Suggest only the units that make it a value in range.
        let fits: Vec<String> = [("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
            .into_iter()
            .filter(|(_, ms)| {
                s.parse::<u64>().ok().and_then(|n| n.checked_mul(*ms)).is_some_and(|ms| {
                    let d = Duration::from_millis(ms);
                    min <= d && d <= max
                })
            })
            .map(|(unit, _)| format!("{s}{unit}"))
            .collect();
        return Err(match fits.as_slice() {
            [] => format!("{s:?} has no unit, and is outside {range} in any unit"),
            _ => format!("{s:?} has no unit: write it as {}", fits.join(" or ")),
        });
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write it as 500ms, 30s or 24h"))?;
    if d < min || d > max {
        return Err(format!("{s} is outside {range}"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s} is not a whole number of milliseconds"));
    }
    Ok(d)
}

/// A duration in the largest unit that shows it exactly: `366days`, `1h`, `90s`, `500ms`.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("days", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A task's wall-clock timeout: 1 ms up to the longest any task may have.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_between(
        s,
        Duration::from_millis(1),
        Duration::from_millis(Limits::ABSOLUTE.timeout_ms),
    )
}

/// How long a signature stays valid: a minute (less means nothing: verifiers allow clocks
/// two minutes apart) up to the longest a plan or action may be valid.
pub(crate) fn parse_lifetime(s: &str) -> Result<Duration, String> {
    parse_duration_between(s, Duration::from_secs(60), Duration::from_secs(MAX_LIFETIME_SECS))
}

/// How long a rotated-out key stays trusted beside its successor: none (`0s`) up to the
/// longest a plan or action may be valid, so whatever it signed before can finish.
pub(crate) fn parse_overlap(s: &str) -> Result<Duration, String> {
    parse_duration_between(s, Duration::ZERO, Duration::from_secs(MAX_LIFETIME_SECS))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

    use super::*;

    #[test]
    fn units_are_required_and_accepted() {
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_lifetime("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_lifetime("7days").unwrap(), Duration::from_secs(7 * 86_400));
        let bare = parse_timeout("500").unwrap_err();
        assert_eq!(bare, "\"500\" has no unit: write it as 500ms or 500s");
        assert_eq!(
            parse_timeout("0").unwrap_err(),
            "\"0\" has no unit, and is outside 1ms..=1h in any unit"
        );
        assert_eq!(parse_lifetime("5").unwrap_err(), "\"5\" has no unit: write it as 5m or 5h");
        let junk = parse_timeout("soon").unwrap_err();
        assert!(junk.contains("not a duration") && junk.contains("30s"), "{junk}");
    }

    #[test]
    fn values_out_of_range_are_refused_not_clamped() {
        assert_eq!(parse_timeout("1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(parse_timeout("1h").unwrap(), Duration::from_secs(3600));
        let over = parse_timeout("3600001ms").unwrap_err();
        assert_eq!(over, "3600001ms is outside 1ms..=1h");
        assert_eq!(parse_timeout("500us").unwrap_err(), "500us is outside 1ms..=1h");
        assert_eq!(
            parse_timeout("1500us").unwrap_err(),
            "1500us is not a whole number of milliseconds"
        );
        assert!(parse_timeout("0ms").unwrap_err().contains("outside"));
        let max = Duration::from_secs(MAX_LIFETIME_SECS);
        assert_eq!(parse_lifetime(&format!("{MAX_LIFETIME_SECS}s")).unwrap(), max);
        let past = parse_lifetime(&format!("{}s", MAX_LIFETIME_SECS + 1)).unwrap_err();
        assert!(past.contains("outside 1m..=366days"), "{past}");
        assert!(parse_lifetime("0s").is_err());
        assert_eq!(parse_lifetime("59s").unwrap_err(), "59s is outside 1m..=366days");
        assert_eq!(parse_lifetime("366days1s").unwrap_err(), "366days1s is outside 1m..=366days");
        assert_eq!(parse_lifetime("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_lifetime("500ms").is_err(), "a lifetime under a second is refused");
    }
}
