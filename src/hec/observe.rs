//! What the sink learns from each HEC answer besides what to do next: answers by URL, status and
//! code, per-URL health for `/healthz`, the time of the last delivery, and events that may
//! have reached Splunk twice (a request that timed out, or a 200 that could not be read, may
//! still have been indexed).
//!
//! Kept apart from the decision logic ([`super::response`]) and the delivery loop so that those
//! stay about delivery; the loop calls [`Sink::observe`] once per answer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::Sink;
use super::response::{Outcome, classify};
use crate::telemetry::{Component, State, Stats};

/// What came back from one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Observed {
    /// Nothing sent yet.
    #[default]
    Nothing,
    /// An HTTP answer, with HEC's `code` when the body had one.
    Response {
        /// HTTP status.
        status: u16,
        /// HEC `code`.
        code: Option<i64>,
    },
    /// No answer within `hec.timeout`: HEC may have indexed the batch anyway.
    Timeout,
    /// No connection (refused, DNS, TLS): nothing was indexed.
    Unreachable,
}

impl Observed {
    /// From the result of sending (the body, and so the code, is not read yet).
    pub fn of(sent: &Result<reqwest::Response, reqwest::Error>) -> Self {
        match sent {
            Ok(resp) => Observed::Response {
                status: resp.status().as_u16(),
                code: None,
            },
            // A connect timeout never sent anything: nothing can be indexed twice.
            Err(e) if e.is_connect() => Observed::Unreachable,
            Err(e) if e.is_timeout() => Observed::Timeout,
            Err(_) => Observed::Unreachable,
        }
    }
}

/// Why a request got no answer, with the error's causes and, for a certificate problem, the fix.
pub fn unreachable_reason(e: reqwest::Error) -> String {
    let chain = crate::telemetry::logging::error_chain(&e.without_url());
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        format!(
            "cannot reach HEC: {chain} (TLS trust: set hec.tls_ca_file to the CA that signed Splunk's certificate, or to the certificate itself when it is self-signed, and check the certificate names the host in hec.urls)"
        )
    } else {
        format!("cannot reach HEC: {chain} (check hec.urls, the network path and firewalls)")
    }
}

/// [`classify`], noting HEC's `code` from the body in `observed` on the way.
pub fn classify_observed(
    observed: &mut Observed,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Outcome {
    let code = super::response::hec_code(body);
    *observed = Observed::Response { status, code };
    classify(status, retry_after, body)
}

impl Sink {
    /// Records what the answer from `url` to a batch of `events` says (see the module docs).
    pub(super) fn observe(&self, url: &str, outcome: &Outcome, events: usize) {
        match self.client.observed {
            Observed::Response { status, code } => self.stats.hec_response(url, status, code),
            Observed::Timeout | Observed::Unreachable => self.stats.hec_response(url, 0, None),
            Observed::Nothing => {}
        }
        if self.client.observed != Observed::Nothing {
            self.stats.hec_request_seconds.observe(self.client.elapsed);
        }
        // No answer, or a 200 that cannot be read: HEC may hold the batch, which is resent.
        if self.client.observed == Observed::Timeout || matches!(outcome, Outcome::Garbled { .. }) {
            Stats::add(&self.stats.events_duplicate_suspected, events as u64);
        }
        let delivered = match outcome {
            Outcome::Accepted { .. } => true,
            Outcome::BadEvent { index, .. } => index.is_some_and(|k| k > 0 && k < events),
            _ => false,
        };
        if delivered {
            self.stats
                .last_delivery_ms
                .store(crate::time::now_ms(), Ordering::Relaxed);
        }
        let component = Component::HecUrl(url.to_string());
        let (state, reason) = match outcome {
            // HEC answered and judged the events: the endpoint itself works.
            Outcome::Accepted { .. } | Outcome::BadEvent { .. } | Outcome::TooLarge => {
                (State::Ok, None)
            }
            Outcome::Retry { reason, .. } | Outcome::Garbled { reason } => {
                (State::Degraded, Some(reason.clone()))
            }
            Outcome::TimedOut => (
                State::Degraded,
                Some("no answer within hec.timeout (the batch may be indexed; it is resent once with a longer timeout)".to_string()),
            ),
            Outcome::Pause { reason } => (State::Failing, Some(reason.clone())),
        };
        if self.health.set(&component, state, reason.clone()) {
            match state {
                State::Ok => info!(%url, "HEC URL working"),
                State::Failing => warn!(%url,
                    "HEC URL failing, delivery to it paused (events stay spooled): {}", reason.unwrap_or_default()),
                State::Degraded => warn!(%url,
                    "HEC URL degraded, retrying with backoff (events stay spooled; if it persists, check Splunk's HEC and indexer health): {}",
                    reason.unwrap_or_default()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hec_code_is_read_from_the_body() {
        let mut o = Observed::Nothing;
        let outcome =
            classify_observed(&mut o, 503, None, br#"{"text":"Server is busy","code":9}"#);
        assert_eq!(
            o,
            Observed::Response {
                status: 503,
                code: Some(9)
            }
        );
        assert!(matches!(outcome, Outcome::Retry { .. }));
        classify_observed(&mut o, 502, None, b"<html>bad gateway</html>");
        assert_eq!(
            o,
            Observed::Response {
                status: 502,
                code: None
            }
        );
    }
}
