//! Client-side pacing from RingCentral's `X-Rate-Limit-*` headers and 429 penalties.
//!
//! RingCentral restarts a penalty when a request arrives during it, so a client that retries
//! blindly can lock itself out for good. The limiter therefore blocks *every* request of the
//! account until `Retry-After` (30 s when absent) has passed after a 429, and blocks a group once
//! its `X-Rate-Limit-Remaining` reaches 0 until a full `X-Rate-Limit-Window` has passed.
//! A `Retry-After` above [`MAX_RETRY_AFTER`] (15 minutes) is capped to it.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::retry::{MAX_RETRY_AFTER, parse_seconds};

/// The penalty assumed when a 429 carries no `Retry-After`.
pub const DEFAULT_PENALTY: Duration = Duration::from_secs(30);
/// The shortest penalty honoured: a `Retry-After: 0` must not turn into a request storm that
/// restarts the penalty.
pub const MIN_PENALTY: Duration = Duration::from_millis(100);
/// The window assumed when `Remaining` hits 0 without a `Window` header.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// RingCentral's rate-limit groups the forwarder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The token endpoint (5 a minute by default).
    Auth,
    /// Audit-trail search (10 a minute by default).
    Heavy,
}

/// Per-account limiter state.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// No request at all before this (429 penalty).
    penalty_until: Option<Instant>,
    /// Per group: the group's budget is spent until this.
    auth_until: Option<Instant>,
    heavy_until: Option<Instant>,
}

/// What a response told the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing to wait for.
    Clear,
    /// The group's budget is spent; the next request of the group waits this long.
    Exhausted(Duration),
    /// 429: the account is in a penalty for this long.
    Penalty(Duration),
}

impl RateLimiter {
    fn slot(&mut self, group: Group) -> &mut Option<Instant> {
        match group {
            Group::Auth => &mut self.auth_until,
            Group::Heavy => &mut self.heavy_until,
        }
    }

    /// How long a request of `group` must wait from now.
    pub fn delay(&mut self, group: Group) -> Duration {
        let now = Instant::now();
        let until = [self.penalty_until, *self.slot(group)]
            .into_iter()
            .flatten()
            .max();
        until.map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    /// Sleeps until a request of `group` may be sent.
    pub async fn wait(&mut self, group: Group) -> Duration {
        let d = self.delay(group);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        d
    }

    /// Records what a response's status and headers say about future requests.
    pub fn observe(&mut self, group: Group, status: StatusCode, headers: &HeaderMap) -> Observed {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_seconds)
        };
        let now = Instant::now();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let penalty = header("retry-after")
                .unwrap_or(DEFAULT_PENALTY)
                .clamp(MIN_PENALTY, MAX_RETRY_AFTER);
            self.penalty_until = Some(now + penalty);
            return Observed::Penalty(penalty);
        }
        let remaining = headers
            .get("x-rate-limit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        if remaining.is_some_and(|r| r <= 0) {
            let window = header("x-rate-limit-window").unwrap_or(DEFAULT_WINDOW);
            *self.slot(group) = Some(now + window);
            return Observed::Exhausted(window);
        }
        Observed::Clear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn penalty_blocks_every_group_for_retry_after_or_30s() {
        let mut l = RateLimiter::default();
        let o = l.observe(
            Group::Heavy,
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "12")]),
        );
        assert_eq!(o, Observed::Penalty(Duration::from_secs(12)));
        assert_eq!(l.delay(Group::Auth), Duration::from_secs(12));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.delay(Group::Heavy), Duration::from_secs(7));
        l.observe(
            Group::Heavy,
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
        );
        assert_eq!(l.delay(Group::Heavy), DEFAULT_PENALTY);
        let o = l.observe(
            Group::Heavy,
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "1000000000")]),
        );
        assert_eq!(
            o,
            Observed::Penalty(MAX_RETRY_AFTER),
            "a silly Retry-After is capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn spent_budget_blocks_only_its_group_for_a_window() {
        let mut l = RateLimiter::default();
        let h = headers(&[
            ("x-rate-limit-remaining", "0"),
            ("x-rate-limit-window", "60"),
        ]);
        assert_eq!(
            l.observe(Group::Heavy, StatusCode::OK, &h),
            Observed::Exhausted(Duration::from_secs(60))
        );
        assert_eq!(l.delay(Group::Heavy), Duration::from_secs(60));
        assert_eq!(l.delay(Group::Auth), Duration::ZERO);
        let h = headers(&[("x-rate-limit-remaining", "3")]);
        assert_eq!(l.observe(Group::Auth, StatusCode::OK, &h), Observed::Clear);
        let waited = l.wait(Group::Heavy).await;
        assert_eq!(waited, Duration::from_secs(60));
        assert_eq!(l.delay(Group::Heavy), Duration::ZERO);
    }
}
