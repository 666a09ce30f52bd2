//! Time as the forwarder writes and compares it, in one place: instants are UTC milliseconds
//! since the epoch (`i64`, what the spool stores and RingCentral's `eventTime` carries), and
//! they are shown as RFC 3339 UTC with milliseconds (what RingCentral's search takes and what
//! every report and log prints). A leaf: it imports nothing of the crate.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A time as RingCentral wants it in a search: RFC 3339 UTC with milliseconds.
pub fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds since the epoch as RFC 3339 ([`rfc3339_millis`]); `None` outside chrono's range.
pub fn ms_rfc3339(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(rfc3339_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_print_as_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            ms_rfc3339(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(ms_rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(ms_rfc3339(i64::MAX), None);
        let now = now_ms();
        let shown = ms_rfc3339(now).unwrap();
        let back = DateTime::parse_from_rfc3339(&shown)
            .unwrap()
            .timestamp_millis();
        assert_eq!(back, now);
    }
}
