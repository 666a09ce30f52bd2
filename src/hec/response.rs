//! The one HEC response classifier: (HTTP status, body) -> what the sink does next.
//!
//! The table follows `shared/reference/splunk-hec.md`. Where the usual forwarders drop data
//! (401/403: a rotated token), we pause and keep buffering: a token is an operator problem and
//! the data is compliance data.

use std::time::Duration;

use serde::Deserialize;

/// What the sink does with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// HTTP 200 with code 0 (or 24/25, "approaching capacity"): the batch is indexed, or with
    /// indexer acknowledgement on, received and pending under `ack_id`.
    Accepted {
        /// The `ackId` HEC gave the request, when the token has acknowledgement on.
        ack_id: Option<u64>,
    },
    /// Event `index` of the batch is bad; HEC indexed the events before it. `None` when HEC did
    /// not say which event.
    BadEvent {
        /// 0-based position in the batch.
        index: Option<usize>,
        /// HEC code.
        code: i64,
        /// HEC's text, for the dead-letter reason.
        reason: String,
    },
    /// 413: the request is too large; split it, never resend it as is.
    TooLarge,
    /// Try the same batch again later.
    Retry {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
        /// For logs.
        reason: String,
    },
    /// No answer within the timeout. HEC may have indexed the batch, so a resend can duplicate
    /// it; the sink resends once with a much longer timeout rather than looping.
    TimedOut,
    /// A configuration problem (token, URL): keep buffering, retry slowly, tell the operator.
    Pause {
        /// What is wrong and how to fix it.
        reason: String,
    },
}

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default, rename = "invalid-event-number")]
    invalid_event_number: Option<i64>,
    #[serde(default, rename = "ackId")]
    ack_id: Option<u64>,
}

/// Classifies a HEC response to an event request.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let b = parsed.unwrap_or_default();
    let code = b.code;
    let text = b
        .text
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let said = format!(
        "HTTP {status}, code {}: {text}",
        code.map_or("-".to_string(), |c| c.to_string())
    );
    let retry = |reason: String| Outcome::Retry {
        retry_after,
        reason,
    };
    let pause = |fix: &str| Outcome::Pause {
        reason: format!("{said}; {fix}"),
    };
    match (status, code) {
        (200, Some(0 | 24 | 25)) => Outcome::Accepted { ack_id: b.ack_id },
        (200, _) => retry(format!("{said}: a 200 without code 0 is not an acceptance")),
        (400, Some(c @ (6 | 7 | 12 | 13 | 15))) => Outcome::BadEvent {
            index: b.invalid_event_number.and_then(|n| usize::try_from(n).ok()),
            code: c,
            reason: match c {
                7 => format!(
                    "{said} (the index does not exist or the token may not write to it: check hec.index, the routes and the token's allowed indexes)"
                ),
                _ => said,
            },
        },
        (400, _) if b.invalid_event_number.is_some() => Outcome::BadEvent {
            index: b.invalid_event_number.and_then(|n| usize::try_from(n).ok()),
            code: code.unwrap_or(-1),
            reason: said,
        },
        (401 | 403, _) => pause(
            "the HEC token is missing, invalid or disabled: fix hec.token (delivery resumes by itself, records stay spooled)",
        ),
        (400, Some(10 | 11)) => pause(
            "HEC says the data channel is missing or invalid, yet one is always sent: report this as a bug (a proxy may strip X-Splunk-Request-Channel)",
        ),
        (400, Some(14)) => {
            pause("acknowledgement is disabled on the token: set hec.use_ack = false")
        }
        (400, _) => pause("HEC rejected the request as a whole: report this as a bug"),
        (404, _) => pause(
            "wrong HEC URL: hec.urls should be the base URL, e.g. https://splunk:8088, with HEC enabled",
        ),
        (413, _) => Outcome::TooLarge,
        (415, _) => pause("HEC does not accept the content encoding: set hec.gzip = false"),
        (408 | 429, _) | (500..=599, _) => retry(said),
        _ => pause("unexpected response from HEC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: u16, body: &str) -> Outcome {
        classify(status, None, body.as_bytes())
    }

    #[test]
    fn success_codes_are_acceptance_and_nothing_else_is() {
        assert_eq!(
            c(200, r#"{"text":"Success","code":0}"#),
            Outcome::Accepted { ack_id: None }
        );
        assert_eq!(
            c(200, r#"{"text":"Success","code":0,"ackId":7}"#),
            Outcome::Accepted { ack_id: Some(7) }
        );
        assert_eq!(
            c(200, r#"{"text":"queue approaching capacity","code":24}"#),
            Outcome::Accepted { ack_id: None }
        );
        assert!(matches!(
            c(200, "<html>proxy</html>"),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn token_problems_pause_and_keep_data() {
        for (s, code) in [(403, 1), (401, 2), (401, 3), (403, 4)] {
            let o = c(s, &format!(r#"{{"text":"x","code":{code}}}"#));
            assert!(
                matches!(&o, Outcome::Pause { reason } if reason.contains("hec.token")),
                "{o:?}"
            );
        }
    }

    #[test]
    fn bad_events_name_their_index() {
        let o = c(
            400,
            r#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#,
        );
        assert!(matches!(
            o,
            Outcome::BadEvent {
                index: Some(3),
                code: 6,
                ..
            }
        ));
        let o = c(
            400,
            r#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#,
        );
        assert!(
            matches!(&o, Outcome::BadEvent { index: Some(0), code: 7, reason } if reason.contains("hec.index"))
        );
        assert!(matches!(
            c(400, r#"{"text":"Event field is required","code":12}"#),
            Outcome::BadEvent { index: None, .. }
        ));
    }

    #[test]
    fn overload_and_server_errors_retry_with_retry_after() {
        let o = classify(
            503,
            Some(Duration::from_secs(5)),
            br#"{"text":"Server is busy","code":9}"#,
        );
        assert_eq!(
            o,
            Outcome::Retry {
                retry_after: Some(Duration::from_secs(5)),
                reason: "HTTP 503, code 9: Server is busy".into()
            }
        );
        for s in [429, 500, 502, 503, 504, 408] {
            assert!(matches!(c(s, ""), Outcome::Retry { .. }), "{s}");
        }
    }

    #[test]
    fn size_and_path_problems() {
        assert_eq!(c(413, ""), Outcome::TooLarge);
        assert!(
            matches!(&c(404, "not found"), Outcome::Pause { reason } if reason.contains("wrong HEC URL"))
        );
        assert!(matches!(c(415, ""), Outcome::Pause { .. }));
        assert!(matches!(
            c(400, r#"{"text":"No data","code":5}"#),
            Outcome::Pause { .. }
        ));
    }
}
