//! The one HEC response classifier: (HTTP status, body) -> what the sink does next.
//!
//! The table follows `shared/reference/splunk-hec.md`. Where the usual forwarders drop data
//! (401/403: a rotated token), we pause and keep buffering: a token is an operator problem and
//! the data is compliance data.

use std::time::Duration;

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
    /// A 200 whose body says nothing readable (empty, HTML from a proxy, truncated JSON, no
    /// numeric `code`, an unreadable `ackId`): HEC may have indexed the batch, or not. Like a
    /// timeout, the resend may duplicate; unlike a 5xx it must never be resent at once, or a
    /// HEC that indexes and answers garbage would receive the batch in a tight loop.
    Garbled {
        /// What came back (a snippet of the body), for logs.
        reason: String,
    },
    /// A configuration problem (token, URL): keep buffering, retry slowly, tell the operator.
    Pause {
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// The most of an unreadable body that goes into a log line.
const BODY_SNIPPET: usize = 200;

/// What the sink reads from a HEC answer's body. Parsed from a [`serde_json::Value`] field by
/// field rather than into a typed struct, so that a field of an unexpected type (`"text": 0`, a
/// string `ackId`) never hides the `code`, which alone decides.
#[derive(Default)]
struct Body {
    /// The body was JSON (an object).
    json: bool,
    text: Option<String>,
    code: Option<i64>,
    invalid_event_number: Option<i64>,
    /// `ackId`: `None` when absent; `Some(None)` when present but not a non-negative integer.
    ack_id: Option<Option<u64>>,
}

impl Body {
    fn parse(body: &[u8]) -> Body {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body)
        else {
            return Body::default();
        };
        // Numbers may come as JSON numbers or as strings of digits (`"7"`): both mean the same
        // number; anything else is unreadable.
        let int = |v: &serde_json::Value| match v {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        Body {
            json: true,
            text: m.get("text").map(|t| match t {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            code: m.get("code").and_then(int),
            invalid_event_number: m.get("invalid-event-number").and_then(int),
            ack_id: m
                .get("ackId")
                .map(|v| int(v).and_then(|n| u64::try_from(n).ok())),
        }
    }
}

/// The start of `body` as text for a log line: at most [`BODY_SNIPPET`] bytes, lossy UTF-8,
/// control characters escaped so one answer stays one log line.
pub fn snippet(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_string();
    }
    let cut = &body[..body.len().min(BODY_SNIPPET)];
    let mut s: String = String::from_utf8_lossy(cut).escape_debug().collect();
    if body.len() > BODY_SNIPPET {
        s.push_str(&format!("... ({} bytes)", body.len()));
    }
    s
}

/// HEC's `code` in a body, read as [`classify`] reads it (for metrics).
pub fn hec_code(body: &[u8]) -> Option<i64> {
    Body::parse(body).code
}

/// Classifies a HEC response to an event request.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let b = Body::parse(body);
    let code = b.code;
    let text = b.text.clone().unwrap_or_else(|| snippet(body));
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
        // An `ackId` that is there but unreadable cannot be confirmed later: the batch was
        // received (maybe indexed), yet nothing can ever settle it, so it counts as garbled.
        (200, Some(0 | 24 | 25)) if matches!(b.ack_id, Some(None)) => Outcome::Garbled {
            reason: format!("HTTP 200 with an unreadable ackId: {}", snippet(body)),
        },
        (200, Some(0 | 24 | 25)) => Outcome::Accepted {
            ack_id: b.ack_id.flatten(),
        },
        // A 200 means HEC took the request, so whatever else it says, the batch may be
        // indexed: never a fast retry.
        (200, Some(_)) => Outcome::Garbled {
            reason: format!("{said}: a 200 without code 0 is not an acceptance"),
        },
        (200, None) => Outcome::Garbled {
            reason: format!(
                "HTTP 200 without a readable HEC code ({}): {}",
                if b.json {
                    "JSON without a numeric code"
                } else {
                    "not JSON"
                },
                snippet(body)
            ),
        },
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
    }

    /// Issue 9 item 6: `code` alone decides; other fields of odd types never hide it.
    #[test]
    fn code_zero_is_acceptance_whatever_the_other_fields_types() {
        assert_eq!(
            c(200, r#"{"text":0,"code":0}"#),
            Outcome::Accepted { ack_id: None }
        );
        assert_eq!(
            c(200, r#"{"text":"Success","code":0,"ackId":"7"}"#),
            Outcome::Accepted { ack_id: Some(7) },
            "a string ackId of digits is that number"
        );
        assert_eq!(
            c(200, r#"{"text":null,"code":"0","extra":[1,{"a":2}]}"#),
            Outcome::Accepted { ack_id: None }
        );
        assert_eq!(
            c(400, r#"{"text":6,"code":6,"invalid-event-number":"3"}"#),
            Outcome::BadEvent {
                index: Some(3),
                code: 6,
                reason: "HTTP 400, code 6: 6".into()
            }
        );
    }

    /// Issue 9 item 6: a 200 that is not a readable acceptance is `Garbled` (resent only after
    /// a backoff, counted as a suspected duplicate), with the body in the reason.
    #[test]
    fn an_unreadable_200_is_garbled_with_the_body_in_the_reason() {
        for body in [
            "",
            "<html>proxy</html>",
            r#"{"text":"Success","co"#,
            r#"{"text":"Success"}"#,
            r#"{"text":"Success","code":0,"ackId":"seven"}"#,
            r#"{"text":"Success","code":0,"ackId":-1}"#,
            r#"{"text":"No data","code":5}"#,
            "[0]",
        ] {
            match c(200, body) {
                Outcome::Garbled { reason } => {
                    let shown = if body.is_empty() {
                        "(empty body)"
                    } else {
                        body
                    };
                    let shown = shown.escape_debug().to_string();
                    assert!(
                        reason.contains(&shown) || reason.contains("code 5"),
                        "{body:?}: {reason}"
                    );
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
        let long = format!(r#"{{"text":"{}""#, "x".repeat(5000));
        let Outcome::Garbled { reason } = c(200, &long) else {
            panic!()
        };
        assert!(
            reason.len() < 400 && reason.contains("5010 bytes"),
            "{reason}"
        );
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
