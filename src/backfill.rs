//! Backfill planning: the time arguments (`--from`, `--to`, `--since`), the range a backfill may
//! cover (RingCentral keeps 180 days), the account selection, and the piece size.
//!
//! Shared by the `backfill` command ([`crate::commands::backfill`], which polls the range), the
//! admin endpoint's `POST /backfill` (which hands it to the running service) and `actions`.
//!
//! # Limits
//! RingCentral keeps 180 days (and at most the newest 10,000 records per account): an older
//! `--from` is moved up to 180 days ago (minus five minutes of margin) with a note, and a range
//! entirely older than that is refused.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use crate::config::MAX_LOOKBACK;

pub use crate::ringcentral::poller::BACKFILL_CHUNK as CHUNK;
/// A day in milliseconds (progress is counted in days).
pub const DAY_MS: f64 = 86_400_000.0;

/// Problems with the arguments (usage errors: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// A time argument does not parse.
    #[error(
        "{arg} {value:?} is not a time: use RFC 3339 (2026-01-31T08:00:00Z), a date (2026-01-31, midnight UTC) or an age (30d, 12h)"
    )]
    BadTime {
        /// `--from` or `--to`.
        arg: &'static str,
        /// What was given.
        value: String,
    },
    /// The range is empty.
    #[error("the range is empty: --from {from} is not before --to {to}")]
    Empty {
        /// Start.
        from: String,
        /// End.
        to: String,
    },
    /// The whole range is older than RingCentral keeps.
    #[error(
        "--to {to} is more than 180 days ago: RingCentral keeps 180 days of audit trail, so there is nothing to backfill"
    )]
    TooOld {
        /// End.
        to: String,
    },
    /// `--account` names no configured account.
    #[error("--account {name:?} is not in the config; configured accounts: {known}")]
    UnknownAccount {
        /// The name given.
        name: String,
        /// The configured names.
        known: String,
    },
}

/// Parses a time argument: RFC 3339, a date (midnight UTC), `now`, or an age (`30d`, `12h`).
pub fn parse_time(
    arg: &'static str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, BackfillError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    if let Ok(age) = humantime::parse_duration(v)
        && let Ok(age) = TimeDelta::from_std(age)
    {
        return Ok(now - age);
    }
    Err(BackfillError::BadTime {
        arg,
        value: value.to_string(),
    })
}

/// The range to backfill, after applying RingCentral's 180-day limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (inclusive).
    pub to: DateTime<Utc>,
    /// `--from` was older than RingCentral keeps and was moved up.
    pub clamped: bool,
}

/// Checks and clamps `[from, to]` (`to` defaults to `now - settle_delay`; a future `to` is now).
pub fn plan_range(
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    settle_delay: Duration,
) -> Result<Range, BackfillError> {
    let settle = TimeDelta::from_std(settle_delay).unwrap_or(TimeDelta::zero());
    let oldest =
        now - TimeDelta::from_std(MAX_LOOKBACK).unwrap_or(TimeDelta::MAX) + TimeDelta::minutes(5);
    let to = to.unwrap_or(now - settle).min(now);
    if to <= oldest {
        return Err(BackfillError::TooOld {
            to: crate::time::rfc3339_millis(to),
        });
    }
    let clamped = from < oldest;
    let from = from.max(oldest);
    if from >= to {
        return Err(BackfillError::Empty {
            from: crate::time::rfc3339_millis(from),
            to: crate::time::rfc3339_millis(to),
        });
    }
    Ok(Range { from, to, clamped })
}

/// Checks `--account` names against the config; empty means every account.
pub fn select_accounts(known: &[String], names: &[String]) -> Result<Vec<String>, BackfillError> {
    if names.is_empty() {
        return Ok(known.to_vec());
    }
    for n in names {
        if !known.contains(n) {
            return Err(BackfillError::UnknownAccount {
                name: n.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(known
        .iter()
        .filter(|k| names.contains(k))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn times_parse_as_rfc3339_dates_ages_and_now() {
        let now = t("2026-03-01T12:00:00Z");
        assert_eq!(
            parse_time("--from", "2026-02-01T08:30:00+01:00", now).unwrap(),
            t("2026-02-01T07:30:00Z")
        );
        assert_eq!(
            parse_time("--from", "2026-02-01", now).unwrap(),
            t("2026-02-01T00:00:00Z")
        );
        assert_eq!(
            parse_time("--from", "30d", now).unwrap(),
            t("2026-01-30T12:00:00Z")
        );
        assert_eq!(parse_time("--to", "now", now).unwrap(), now);
        let e = parse_time("--from", "last tuesday", now).unwrap_err();
        assert!(e.to_string().contains("--from \"last tuesday\""), "{e}");
    }

    #[test]
    fn ranges_are_capped_at_180_days_and_must_not_be_empty() {
        let now = t("2026-07-01T00:00:00Z");
        let settle = Duration::from_secs(60);
        let r = plan_range(now - TimeDelta::days(400), None, now, settle).unwrap();
        assert!(r.clamped);
        assert!(r.from > now - TimeDelta::days(180));
        assert_eq!(r.to, now - TimeDelta::seconds(60));
        let r = plan_range(
            now - TimeDelta::days(3),
            Some(now + TimeDelta::days(1)),
            now,
            settle,
        )
        .unwrap();
        assert!(!r.clamped);
        assert_eq!(r.to, now, "a future end is now");
        assert!(matches!(
            plan_range(
                now - TimeDelta::days(300),
                Some(now - TimeDelta::days(200)),
                now,
                settle
            ),
            Err(BackfillError::TooOld { .. })
        ));
        assert!(matches!(
            plan_range(
                now - TimeDelta::days(1),
                Some(now - TimeDelta::days(2)),
                now,
                settle
            ),
            Err(BackfillError::Empty { .. })
        ));
    }
}
