//! The forwarder's clock and RingCentral's, and the skew between them.
//!
//! Windows end at "now minus `settle_delay`". If "now" is the local clock and it runs ahead of
//! RingCentral's (a VM resumed, an NTP step), a window reaches into RingCentral's future, the
//! cursor is committed there, and records that appear later fall before the next window: lost
//! without a word. So "now" is RingCentral's: every response's `Date` header gives the skew
//! (local minus RingCentral), and a local clock ahead by more than [`SKEW_TOLERANCE`] is
//! corrected by it. A local clock *behind* RingCentral's is left alone: windows then end a little
//! early, which delays records but loses none.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{DATE, HeaderMap};

/// Skew below this is noise: `Date` has whole seconds and the answer took some time to arrive.
pub const SKEW_TOLERANCE: TimeDelta = TimeDelta::seconds(2);
/// Skew (either way) above this marks the account degraded in `/healthz`: the host's time
/// service needs a look, even though windows are corrected.
pub const SKEW_DEGRADED: TimeDelta = TimeDelta::seconds(30);

/// The local wall clock, with an offset tests can set to play a clock that is wrong or jumps.
/// Every poller and RingCentral client of a pipeline reads the same one.
#[derive(Debug, Clone, Default)]
pub struct LocalClock {
    offset_ms: Arc<AtomicI64>,
}

impl LocalClock {
    /// Now, by this host's clock (plus the test offset).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Shifts this clock by `offset` from the system clock (tests: a clock ahead or behind).
    pub fn set_offset(&self, offset: TimeDelta) {
        self.offset_ms
            .store(offset.num_milliseconds(), Ordering::Relaxed);
    }
}

/// RingCentral's time from a response's `Date` header (RFC 7231 IMF-fixdate, whole seconds).
pub fn server_date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let text = headers.get(DATE)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// RingCentral's now given the local `now` and the last measured `skew` (local minus
/// RingCentral): corrected only when the local clock is ahead by more than the tolerance.
pub fn rc_now(now: DateTime<Utc>, skew: Option<TimeDelta>) -> DateTime<Utc> {
    match skew {
        Some(s) if s > SKEW_TOLERANCE => now - s,
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_and_only_a_clock_ahead_is_corrected() {
        let mut h = HeaderMap::new();
        h.insert(DATE, "Mon, 30 Nov 2026 14:31:14 GMT".parse().unwrap());
        let d = server_date(&h).unwrap();
        assert_eq!(d.to_rfc3339(), "2026-11-30T14:31:14+00:00");
        let now = d + TimeDelta::minutes(15);
        assert_eq!(rc_now(now, Some(TimeDelta::minutes(15))), d);
        assert_eq!(rc_now(now, Some(TimeDelta::seconds(1))), now, "noise");
        assert_eq!(rc_now(now, Some(TimeDelta::minutes(-15))), now, "behind");
        assert_eq!(rc_now(now, None), now);
        h.insert(DATE, "yesterday".parse().unwrap());
        assert_eq!(server_date(&h), None);
    }
}
