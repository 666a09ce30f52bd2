//! The one backoff helper: exponential with jitter (backon's generator), never giving up, with
//! the server's `Retry-After` taking precedence when it gives one.
//!
//! Both the RingCentral client and the HEC sink use it. There is deliberately no "max attempts":
//! a retry budget silently drops data during a long outage, and buffered audit data waits forever.
//! Callers that must return (the `once` command) bound the *time* they wait instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The longest `Retry-After` honoured. A server asking for more (10^9 seconds was seen) would
/// otherwise stop that side for a day or more; a quarter of an hour is longer than any real
/// rate-limit penalty or maintenance hint, and a retry after it is harmless. Callers log when
/// they cap.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// Backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay.
    pub min: Duration,
    /// Largest delay before jitter (jitter adds up to the same again).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A fresh backoff sequence.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            iter: self.builder().build(),
            attempts: 0,
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }
}

/// One failure streak's delays.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    iter: ExponentialBackoff,
    attempts: u32,
}

impl Backoff {
    /// The delay before the next attempt: the server's `Retry-After` when given, else the next
    /// exponential step.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        let step = self.iter.next().unwrap_or(self.policy.max);
        // A `Retry-After: 0` must not turn into a tight loop.
        retry_after.map_or(step, |ra| ra.max(self.policy.min))
    }

    /// Failures in this streak so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        *self = self.policy.backoff();
    }
}

/// A server's `Retry-After`, capped at [`MAX_RETRY_AFTER`]; says so in the log when it caps
/// (`server` names the side, e.g. `HEC`).
pub fn cap_retry_after(d: Duration, server: &str) -> Duration {
    if d > MAX_RETRY_AFTER {
        tracing::warn!(
            requested_s = d.as_secs(),
            honoured_s = MAX_RETRY_AFTER.as_secs(),
            "{server} asked to wait {}: waiting {} instead (the cap for Retry-After)",
            humantime::format_duration(d),
            humantime::format_duration(MAX_RETRY_AFTER)
        );
        MAX_RETRY_AFTER
    } else {
        d
    }
}

/// Parses a `Retry-After` (or `X-Rate-Limit-Window`) value in seconds. Decimal values are
/// accepted (the simulators scale time down); HTTP dates are not used by either service.
pub fn parse_seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_never_end_and_honour_retry_after() {
        let p = RetryPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut b = p.backoff();
        let delays: Vec<_> = (0..50).map(|_| b.next_delay(None)).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "max plus jitter"
        );
        assert!(
            delays[49] >= Duration::from_secs(2),
            "still retrying after 50 attempts"
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.next_delay(Some(Duration::ZERO)),
            p.min,
            "Retry-After: 0 is no tight loop"
        );
        b.reset();
        assert!(b.next_delay(None) <= Duration::from_millis(200));
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn retry_after_is_capped() {
        assert_eq!(
            cap_retry_after(Duration::from_secs(1_000_000_000), "HEC"),
            MAX_RETRY_AFTER
        );
        assert_eq!(
            cap_retry_after(Duration::from_secs(40), "HEC"),
            Duration::from_secs(40)
        );
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_seconds(" 0.25 "), Some(Duration::from_millis(250)));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
