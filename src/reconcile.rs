//! Reconciliation: for each account and closed period, how many records RingCentral holds
//! against how many distinct record ids the spool has for it, and what the forwarder did about a
//! difference. This file is the arithmetic and the vocabulary (which period is due, the verdict,
//! the event Splunk receives); the poller does the I/O between its live windows, through the
//! account's own client, so the rate limiter and a 429 penalty apply to the counts as to every
//! search ([`crate::ringcentral::poller::Poller::reconcile_next`]); the spool stores each result
//! ([`crate::spool::Spool::store_reconciliation`]) with its event, in one transaction.
//!
//! # What is due
//! A period `[start, end)` (aligned to the Unix epoch: with `period = "1d"` a UTC day) is due for
//! an account when
//! - it closed at least `delay` ago (records RingCentral shows late are in by then),
//! - it started no more than `lookback` ago (and within the 180 days RingCentral keeps),
//! - the live cursor has passed its end (live polling is done with it; before that, a
//!   difference is only live polling not being there yet),
//! - it starts at or after the account's coverage start (the first live window's start, or for
//!   a spool older than the ledger its earliest record): a period the forwarder was never asked
//!   to cover is not a gap,
//! - and no result is stored for it. Results are kept, so a restart neither redoes nor loses
//!   one; a count that fails (429, 5xx, a timeout) stores nothing, so the period stays due.
//!
//! The oldest due period goes first; after an outage the missed periods come one per gap
//! between live windows.

use serde::Serialize;

use crate::config::ReconcileConfig;
use crate::time::ms_rfc3339;

/// RingCentral keeps 180 days; a period starting earlier (plus a margin so the API does not
/// refuse the bound) cannot be counted.
const RETENTION_MS: i64 = 180 * 86_400_000 - 5 * 60_000;

/// One period of one account, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Start, inclusive (ms since the epoch).
    pub start_ms: i64,
    /// End, exclusive (ms).
    pub end_ms: i64,
}

impl Period {
    /// The period's last millisecond: the search's `eventTimeTo` (RingCentral's range is
    /// inclusive at both ends, so the next period's first record is not counted twice).
    pub fn last_ms(&self) -> i64 {
        self.end_ms - 1
    }
}

/// What the spool knows about an account for [`due`].
#[derive(Debug, Clone, Default)]
pub struct AccountState {
    /// The live cursor (end of the last complete live window).
    pub cursor_ms: Option<i64>,
    /// Where the forwarder's coverage of the account starts (see the module docs); `None`:
    /// no live window completed yet.
    pub since_ms: Option<i64>,
    /// `(start, end)` of the periods with a stored result, within the lookback. Both ends: a
    /// result for a day does not stand for the first hour of that day after `reconcile.period`
    /// changed from "1d" to "1h".
    pub done: Vec<(i64, i64)>,
}

/// The oldest period of an account due for reconciliation at `now_ms`, if any.
pub fn due(cfg: &ReconcileConfig, now_ms: i64, state: &AccountState) -> Option<Period> {
    if !cfg.enabled {
        return None;
    }
    let (Some(cursor), Some(since)) = (state.cursor_ms, state.since_ms) else {
        return None;
    };
    let len = i64::try_from(cfg.period.as_millis()).ok()?.max(1);
    let delay = i64::try_from(cfg.delay.as_millis()).unwrap_or(i64::MAX);
    let lookback = i64::try_from(cfg.lookback.as_millis()).unwrap_or(i64::MAX);
    let oldest = now_ms
        .saturating_sub(lookback)
        .max(now_ms - RETENTION_MS)
        .max(since);
    // The first aligned start at or after `oldest`.
    let mut start = oldest.div_euclid(len) * len;
    if start < oldest {
        start += len;
    }
    loop {
        let end = start + len;
        if end.saturating_add(delay) > now_ms || end > cursor {
            return None;
        }
        if !state.done.contains(&(start, end)) {
            return Some(Period {
                start_ms: start,
                end_ms: end,
            });
        }
        start = end;
    }
}

/// The range of period starts [`due`] may return at `now_ms` (for the spool's query of
/// results already stored).
pub fn lookback_range(cfg: &ReconcileConfig, now_ms: i64) -> (i64, i64) {
    let lookback = i64::try_from(cfg.lookback.as_millis()).unwrap_or(i64::MAX);
    (
        now_ms.saturating_sub(lookback).max(now_ms - RETENTION_MS),
        now_ms,
    )
}

/// The verdict on a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The spool had at least as many distinct records as RingCentral counted.
    Complete,
    /// It had fewer; a backfill of the period brought it up to RingCentral's count.
    Repaired,
    /// It still has fewer after the backfill: RingCentral counts records it does not return.
    Short,
}

impl Status {
    /// The name in events, the ledger and the spool.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Repaired => "repaired",
            Status::Short => "short",
        }
    }

    /// The inverse of [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "complete" => Some(Status::Complete),
            "repaired" => Some(Status::Repaired),
            "short" => Some(Status::Short),
            _ => None,
        }
    }
}

/// One account's result for one period, as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Account name.
    pub account: String,
    /// The period.
    pub period: Period,
    /// Records RingCentral counted in the period.
    pub ringcentral_count: u64,
    /// Distinct record ids the spool has for the period (after any repair).
    pub forwarded_count: u64,
    /// The verdict.
    pub status: Status,
    /// Records the repair brought in (`repaired`, and `short` when it brought some).
    pub recovered: Option<u64>,
    /// Why the period is `short` (or what was odd about the count).
    pub reason: Option<String>,
    /// When it was decided (ms).
    pub checked_at_ms: i64,
}

/// A count of RingCentral's records in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Records counted.
    pub total: u64,
    /// Some piece still reported the API's cap at its smallest size: the count is a floor.
    pub capped: bool,
}

/// The verdict when the spool had `before` records and RingCentral counted `count`; `after` is
/// what the spool had after the repair (`None`: no repair was needed); `dead` of the period's
/// spooled records are in dead letters (so not in Splunk).
///
/// Only a count that is not a floor and that the records Splunk was sent reach proves the
/// period: a capped count or a dead letter makes it `short`, whatever else matched.
pub fn verdict(
    account: &str,
    period: Period,
    count: Count,
    before: u64,
    after: Option<u64>,
    dead: u64,
    now_ms: i64,
) -> Reconciliation {
    let spooled = after.unwrap_or(before).max(before);
    let forwarded = spooled.saturating_sub(dead);
    let recovered = after.map(|a| a.saturating_sub(before));
    let mut why = Vec::new();
    if spooled < count.total {
        why.push(format!(
            "RingCentral counts {} records in the period but returned {} distinct ones when the \
             forwarder asked for all of them again; the rest cannot be had through the API",
            count.total, spooled
        ));
    }
    if dead > 0 {
        why.push(format!(
            "{dead} of the period's records are in dead letters (HEC refused them, or they were \
             invalid): `rc-audit-hec spool dead-letters` lists them, `spool requeue` sends them \
             again once the cause is fixed"
        ));
    }
    if count.capped {
        why.push(
            "RingCentral's count reached the 10,000-record limit even in one-second pieces, so it \
             is a floor and cannot prove the period complete"
                .to_string(),
        );
    }
    let status = if !why.is_empty() {
        Status::Short
    } else if after.is_some() {
        Status::Repaired
    } else {
        Status::Complete
    };
    if status == Status::Complete && spooled > count.total {
        why.push(format!(
            "RingCentral counts fewer records ({}) than the forwarder holds for the period ({}): \
             it no longer returns some of them (past its retention or its newest 10,000), so its \
             count confirms only that many",
            count.total, spooled
        ));
    }
    Reconciliation {
        account: account.to_string(),
        period,
        ringcentral_count: count.total,
        forwarded_count: forwarded,
        status,
        recovered: recovered.filter(|_| status != Status::Complete),
        reason: (!why.is_empty()).then(|| why.join("; ")),
        checked_at_ms: now_ms,
    }
}

/// The `event` of the reconciliation event (sourcetype
/// `ringcentral:audit:reconciliation`): the names the Splunk app's searches read.
pub fn event_body(r: &Reconciliation) -> serde_json::Value {
    let mut e = serde_json::json!({
        "account": r.account,
        "period_start": ms_rfc3339(r.period.start_ms).unwrap_or_default(),
        "period_end": ms_rfc3339(r.period.end_ms).unwrap_or_default(),
        "ringcentral_count": r.ringcentral_count,
        "forwarded_count": r.forwarded_count,
        "status": r.status.as_str(),
        "checked_at": ms_rfc3339(r.checked_at_ms).unwrap_or_default(),
    });
    if let Some(n) = r.recovered {
        e["recovered"] = n.into();
    }
    if let Some(why) = &r.reason {
        e["reason"] = why.clone().into();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: i64 = 86_400_000;
    const H: i64 = 3_600_000;

    fn cfg() -> ReconcileConfig {
        ReconcileConfig::default()
    }

    #[test]
    fn the_oldest_closed_period_the_cursor_passed_is_due_once() {
        let now = 100 * DAY + 3 * H; // 03:00 UTC on day 100
        let mut st = AccountState {
            cursor_ms: Some(now - 60_000),
            since_ms: Some(0),
            done: vec![],
        };
        // Lookback 7d: periods starting at day 93 (the first aligned start after now - 7d).
        assert_eq!(due(&cfg(), now, &st).unwrap().start_ms, 94 * DAY);
        st.done = (94..99).map(|d| (d * DAY, (d + 1) * DAY)).collect();
        let p = due(&cfg(), now, &st).unwrap();
        assert_eq!(
            (p.start_ms, p.end_ms, p.last_ms()),
            (99 * DAY, 100 * DAY, 100 * DAY - 1)
        );
        st.done.push((99 * DAY, 100 * DAY));
        assert_eq!(due(&cfg(), now, &st), None, "today has not closed");
        // Not before `delay` after the period closed.
        st.done.pop();
        assert_eq!(due(&cfg(), 100 * DAY + H, &st), None);
        // Not before the live cursor passed its end.
        st.cursor_ms = Some(100 * DAY - 1);
        assert_eq!(due(&cfg(), now, &st), None);
        // Not before the account's coverage starts, nor when it is unknown.
        st.cursor_ms = Some(now);
        st.since_ms = Some(99 * DAY + 1);
        assert_eq!(due(&cfg(), now, &st), None);
        st.since_ms = None;
        assert_eq!(due(&cfg(), now, &st), None);
        // Off is off.
        let off = ReconcileConfig {
            enabled: false,
            ..cfg()
        };
        st.since_ms = Some(0);
        assert_eq!(due(&off, now, &st), None);
        // Hourly periods align to the hour.
        let hourly = ReconcileConfig {
            period: Duration::from_secs(3600),
            delay: Duration::ZERO,
            lookback: Duration::from_secs(3 * 3600),
            enabled: true,
        };
        st.done.clear();
        assert_eq!(
            due(&hourly, now + 60_000, &st).unwrap().start_ms,
            now - 2 * H
        );
        // A day's result does not stand for that day's first hour after the period changed.
        let hourly = ReconcileConfig {
            lookback: Duration::from_secs(4 * 3600),
            ..hourly
        };
        st.done = vec![(100 * DAY, 101 * DAY)];
        assert_eq!(due(&hourly, now + 60_000, &st).unwrap().start_ms, 100 * DAY);
    }

    #[test]
    fn verdicts_say_complete_repaired_or_short_with_why() {
        let p = Period {
            start_ms: 0,
            end_ms: DAY,
        };
        let c = |total| Count {
            total,
            capped: false,
        };
        let r = verdict("acme", p, c(5), 5, None, 0, 1);
        assert_eq!(
            (r.status, r.recovered, r.reason.clone()),
            (Status::Complete, None, None)
        );
        let r = verdict("acme", p, c(5), 4, Some(5), 0, 1);
        assert_eq!(
            (r.status, r.recovered, r.forwarded_count),
            (Status::Repaired, Some(1), 5)
        );
        let r = verdict("acme", p, c(7), 4, Some(5), 0, 1);
        assert_eq!(
            (r.status, r.recovered, r.forwarded_count),
            (Status::Short, Some(1), 5)
        );
        assert!(r.reason.as_deref().unwrap().contains("counts 7 records"));
        let e = event_body(&r);
        assert_eq!(e["period_start"], "1970-01-01T00:00:00.000Z");
        assert_eq!(e["period_end"], "1970-01-02T00:00:00.000Z");
        assert_eq!(e["status"], "short");
        assert_eq!(e["ringcentral_count"], 7);
        assert_eq!(e["forwarded_count"], 5);
        assert_eq!(e["recovered"], 1);
        assert!(e["reason"].is_string());
        let e = event_body(&verdict("acme", p, c(5), 5, None, 0, 1));
        assert!(
            e.get("recovered").is_none() && e.get("reason").is_none(),
            "{e}"
        );
        assert_eq!(e["checked_at"], "1970-01-01T00:00:00.001Z");
        // More held than RingCentral counts: complete, and the event says the count is partial.
        let r = verdict("acme", p, c(5), 6, None, 0, 1);
        assert_eq!(r.status, Status::Complete);
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("counts fewer records (5)")
        );
        // Every id spooled, but one is a dead letter: not in Splunk, so not complete.
        let r = verdict("acme", p, c(5), 5, None, 1, 1);
        assert_eq!((r.status, r.forwarded_count), (Status::Short, 4));
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("1 of the period's records are in dead letters")
        );
        // A count that is only a floor proves nothing, even when the spool matches it.
        let capped = Count {
            total: 5,
            capped: true,
        };
        let r = verdict("acme", p, capped, 5, None, 0, 1);
        assert_eq!(r.status, Status::Short);
        assert!(r.reason.as_deref().unwrap().contains("floor"));
        assert_eq!(Status::parse("repaired"), Some(Status::Repaired));
    }
}
