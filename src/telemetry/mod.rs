//! How a telemetry reading and its times are shown to people: one line
//! format that `sub`, `quickstart` and `sink stats` share, so a reading
//! looks the same wherever it is printed, and escaping for every string a
//! device chose (its id, its status), so that a device cannot write ESC, CR
//! or LF to an operator's terminal. `dummy` generates readings; it lives
//! here, not under `flows`, so that `pub` and `bench` share it without one
//! command module depending on another.

pub mod dummy;

use std::fmt;

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::proto::v1::telemetry::Status;
use crate::proto::Telemetry;

/// RFC 3339 in UTC with all nine digits: the machine-readable `time` in JSON.
const NANOS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
/// RFC 3339 in UTC with milliseconds: what people read.
const MILLIS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

fn format_ns(ns: i128, format: &[BorrowedFormatItem<'_>]) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()?
        .format(format)
        .ok()
}

/// Nanoseconds since the Unix epoch as RFC 3339 with nanoseconds, or `None`
/// when the year is outside what RFC 3339 can write.
pub fn rfc3339_nanos(ns: i128) -> Option<String> {
    format_ns(ns, NANOS)
}

/// Nanoseconds since the Unix epoch as a human time (RFC 3339, milliseconds);
/// a time that cannot be written as a date shows as `t=NS`.
pub struct HumanTime(pub i128);

impl fmt::Display for HumanTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match format_ns(self.0, MILLIS) {
            Some(s) => f.write_str(&s),
            None => write!(f, "t={}", self.0),
        }
    }
}

/// A string a device or a peer chose, with control characters, quotes and
/// backslashes escaped (`str::escape_debug`), for terminals and logs.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain ids (the common case) are written as they are.
        if self.0.chars().all(|c| c.is_ascii_graphic() && c != '\\') {
            return f.write_str(self.0);
        }
        write!(f, "{}", self.0.escape_debug())
    }
}

/// The status without its `STATUS_` prefix: OK, WARNING, ERROR, UNSPECIFIED.
pub fn status_name(status: i32) -> &'static str {
    Status::try_from(status)
        .unwrap_or(Status::Unspecified)
        .as_str_name()
        .trim_start_matches("STATUS_")
}

/// One telemetry reading as one line for people:
/// `device-001 seq=0 2026-11-25T20:54:54.918Z temp=18.71C hum=45.9% press=1019.0hPa batt=3.983V rssi=-60dBm OK`.
pub struct HumanLine<'a> {
    /// Who sent it: the topic's device (the broker vouches for it), else the payload's.
    pub device: &'a str,
    pub telemetry: &'a Telemetry,
}

impl fmt::Display for HumanLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.telemetry;
        write!(
            f,
            "{} seq={} {} temp={:.2}C hum={:.1}% press={:.1}hPa batt={:.3}V rssi={}dBm {}",
            Escaped(self.device),
            t.seq,
            HumanTime(t.time_unix_nano as i128),
            t.temperature_c,
            t.humidity_pct,
            t.pressure_hpa,
            t.battery_v,
            t.rssi_dbm,
            status_name(t.status),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let ns = 1_700_000_000_123_456_789;
        assert_eq!(HumanTime(ns).to_string(), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            rfc3339_nanos(ns).as_deref(),
            Some("2023-11-14T22:13:20.123456789Z")
        );
        assert_eq!(
            rfc3339_nanos(0).as_deref(),
            Some("1970-01-01T00:00:00.000000000Z")
        );
        assert_eq!(HumanTime(i128::MAX).to_string(), format!("t={}", i128::MAX));
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(Escaped("device-001").to_string(), "device-001");
        let e = Escaped("dev\u{1b}[2J\r\nx\\").to_string();
        assert_eq!(e, "dev\\u{1b}[2J\\r\\nx\\\\");
        assert!(!e.chars().any(char::is_control));
    }

    #[test]
    fn one_line_for_a_reading() {
        let t = Telemetry {
            device_id: "ignored".into(),
            seq: 3,
            time_unix_nano: 1_700_000_000_123_456_789,
            temperature_c: 21.5,
            humidity_pct: 50.0,
            pressure_hpa: 1013.25,
            battery_v: 3.7,
            rssi_dbm: -60,
            status: Status::Ok as i32,
        };
        let line = HumanLine {
            device: "d\n1",
            telemetry: &t,
        }
        .to_string();
        assert_eq!(
            line,
            "d\\n1 seq=3 2023-11-14T22:13:20.123Z temp=21.50C hum=50.0% press=1013.2hPa batt=3.700V rssi=-60dBm OK"
        );
    }
}
