//! Value parsers for flags that take a duration or a byte size, so people can
//! write `--timeout 30s`, `--duration 1m30s` or `--payload 1KiB`. A bare
//! number keeps the unit the flag always had (seconds for most durations),
//! so scripts written before units were accepted keep working.

use std::time::Duration;

/// A duration in humantime's syntax ("30s", "1m30s", "500ms"); a bare number
/// ("30", "0.5") is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_bare(s, 1.0)
}

/// As [`parse_duration`], but a bare number is milliseconds (flags named `-ms`).
pub fn parse_duration_ms(s: &str) -> Result<Duration, String> {
    parse_duration_bare(s, 0.001)
}

/// `bare_unit_s`: how many seconds a bare number counts for.
fn parse_duration_bare(s: &str, bare_unit_s: f64) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return match Duration::try_from_secs_f64(n * bare_unit_s) {
            Ok(d) if n.is_finite() => Ok(d),
            _ => Err(format!(
                "'{s}' is not a duration; use a non-negative number, or a unit: 30s, 1m30s, 500ms"
            )),
        };
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("'{s}' is not a duration ({e}); use e.g. 30s, 1m30s, 500ms or a bare number")
    })
}

/// A positive duration (a wait that must be able to end in something).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("'{s}' is zero; use a positive duration, e.g. 10s")),
        d => Ok(d),
    }
}

/// A byte count: a bare number is bytes; SI units are powers of 1000
/// (`1KB` = 1000, `1MB` = 1000000) and IEC units powers of 1024 (`1KiB` =
/// 1024, `1MiB` = 1048576). Case and a space before the unit do not matter.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            format!(
                "'{s}' is not a size ({e}); use bytes (256), KB = 1000 bytes or KiB = 1024 bytes"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 0 "), Ok(Duration::ZERO));
    }

    #[test]
    fn units_are_humantime() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 2m"), Ok(Duration::from_secs(3720)));
    }

    #[test]
    fn ms_flags_take_bare_milliseconds() {
        assert_eq!(parse_duration_ms("200"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration_ms("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn bad_durations_name_the_value_and_the_fix() {
        for bad in ["-1", "ten", "10 parsecs", "", "inf", "NaN"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.starts_with(&format!("'{}'", bad.trim())), "{err}");
            assert!(err.contains("30s"), "{err}");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("1"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn sizes_si_and_iec() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1kb"), Ok(1000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2 MiB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_size("1.5KB"), Ok(1500));
    }

    #[test]
    fn bad_sizes_name_the_value() {
        for bad in ["-5", "lots", "5 parsecs"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.starts_with(&format!("'{bad}'")), "{err}");
        }
    }
}
