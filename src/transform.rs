//! Record -> HEC event: pure functions, no I/O.
//!
//! The `event` of every HEC envelope is the record's bytes exactly as RingCentral sent them
//! (unknown fields kept, key order kept). The envelope adds `time` (the record's `eventTime` as
//! epoch seconds with a millisecond fraction, written from integer milliseconds so no float
//! rounding can creep in), `host`, `source`, `sourcetype`, optional `index`, and the indexed
//! `fields` `rc_account` and `rc_action_id`.
//!
//! Every field of a record is optional. A record without an `id` gets one derived from a hash of
//! its bytes (stable, so a re-poll of the same record dedups); a record without a parseable
//! `eventTime` gets the time of the poll that fetched it. Neither is dropped.
//!
//! The forwarder also sends events of its own (heartbeats, reconciliation results):
//! [`internal_event`]. They carry `source` [`INTERNAL_SOURCE`] and their own sourcetype, and
//! [`Transformer::rerender`] recognises them by that source, so a requeued one never turns into
//! an audit record (or takes a route meant for records).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::{AccountConfig, HecConfig, Route};

/// What the pipeline needs to know about a record, read without touching its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// The RingCentral record id, or `sha256:<hex>` of the record bytes when it has none.
    pub id: String,
    /// `eventTime` in milliseconds since the epoch, when present and valid RFC 3339.
    pub event_time_ms: Option<i64>,
    /// `actionId`, when present and a string.
    pub action_id: Option<String>,
}

/// The three fields we read; anything of another type counts as absent.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "eventTime")]
    event_time: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "actionId")]
    action_id: Option<&'a RawValue>,
}

fn raw_string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// Reads id, eventTime and actionId from a record. Never fails: a record that is not even an
/// object still gets a derived id and is forwarded.
pub fn inspect_record(raw: &RawValue) -> RecordMeta {
    // Only objects have fields (serde would map an array onto the struct by position).
    let peek = if raw.get().starts_with('{') {
        serde_json::from_str::<Peek>(raw.get()).ok()
    } else {
        None
    };
    let (id, time, action) = match &peek {
        Some(p) => (p.id, p.event_time, p.action_id),
        None => (None, None, None),
    };
    let id = match id {
        Some(r) => match serde_json::from_str::<String>(r.get()) {
            Ok(s) if !s.is_empty() => Some(s),
            Ok(_) => None,
            // A number or other non-string id: its JSON text, typed so that `42` and `"42"`
            // stay two records.
            Err(_) if r.get() != "null" => Some(format!("json:{}", r.get())),
            Err(_) => None,
        },
        None => None,
    };
    RecordMeta {
        id: id.unwrap_or_else(|| derived_id(raw.get().as_bytes())),
        event_time_ms: raw_string(time).and_then(|t| parse_event_time(&t)),
        action_id: raw_string(action),
    }
}

/// A stable id for a record that has none: the first 128 bits of SHA-256 of its bytes.
pub fn derived_id(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 32);
    s.push_str("sha256:");
    for b in &digest[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// RFC 3339 -> milliseconds since the epoch (sub-millisecond digits are truncated).
pub fn parse_event_time(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// Milliseconds -> the HEC `time` number, e.g. `1722941419442` -> `1722941419.442`.
/// Built from integers: `time` is exact to the millisecond for every representable instant.
pub fn hec_time(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// The inverse of [`hec_time`]: `"1722941419.442"` -> ms (integer arithmetic, no float rounding).
pub fn parse_hec_time(text: &str) -> Option<i64> {
    let (neg, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let frac = format!("{frac:0<3}");
    let millis: i64 = frac.get(..3)?.parse().ok()?;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    Some(if neg { -ms } else { ms })
}

/// Glob over ASCII, case-insensitive: `*` any run, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// `source` of every event the forwarder makes itself (never of a RingCentral record, whose
/// source is `ringcentral:audit-trail:<account>`): what marks an envelope as internal.
pub const INTERNAL_SOURCE: &str = "rc-audit-hec";

/// Sourcetype of the periodic heartbeat (`[heartbeat]`).
pub const HEARTBEAT_SOURCETYPE: &str = "ringcentral:audit:heartbeat";

/// Sourcetype of a reconciliation result (one per account and period).
pub const RECONCILIATION_SOURCETYPE: &str = "ringcentral:audit:reconciliation";

/// The serialized HEC envelope of an event the forwarder makes itself: `event` as given,
/// `sourcetype` as given (never routed), `source` [`INTERNAL_SOURCE`], `host` from `hec.host`,
/// and the index the account's records get by default (its `index`, else `hec.index`; no
/// route applies, routes are for action ids). With `account`, the indexed field `rc_account`
/// names it, so searches by account find its internal events beside its records. Spool it with
/// [`crate::spool::Spool::enqueue_internal`].
pub fn internal_event(
    hec: &HecConfig,
    account: Option<&AccountConfig>,
    sourcetype: &str,
    time_ms: i64,
    event: &serde_json::Value,
) -> Vec<u8> {
    let t = match account {
        Some(a) => Transformer::new(hec, a),
        None => Transformer::for_account(hec, "", None, None),
    };
    let event = serde_json::value::to_raw_value(event)
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("valid JSON"));
    t.internal(
        sourcetype,
        time_ms,
        &event,
        account.map(|a| a.name.as_str()),
    )
}

/// Builds the HEC envelopes for one account.
#[derive(Debug, Clone)]
pub struct Transformer {
    /// Value of `rc_account` and the tail of `source`.
    account: String,
    /// `ringcentral:audit-trail:<account>`.
    source: String,
    host: String,
    index: Option<String>,
    sourcetype: String,
    routes: Vec<Route>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    time: &'a RawValue,
    host: &'a str,
    source: &'a str,
    sourcetype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a str>,
    event: &'a RawValue,
    #[serde(skip_serializing_if = "Fields::is_empty")]
    fields: Fields<'a>,
}

#[derive(Serialize)]
struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    rc_account: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rc_action_id: Option<&'a str>,
}

impl Fields<'_> {
    fn is_empty(&self) -> bool {
        self.rc_account.is_none() && self.rc_action_id.is_none()
    }
}

impl Transformer {
    /// The transformer for `account`'s records under the HEC settings `hec`.
    pub fn new(hec: &HecConfig, account: &AccountConfig) -> Self {
        Transformer::for_account(
            hec,
            &account.name,
            account.index.as_deref(),
            account.sourcetype.as_deref(),
        )
    }

    /// The transformer for an account by name and overrides (also for one no longer in the
    /// config, whose dead letters are requeued with the `hec.*` defaults).
    pub fn for_account(
        hec: &HecConfig,
        name: &str,
        index: Option<&str>,
        sourcetype: Option<&str>,
    ) -> Self {
        Transformer {
            account: name.to_string(),
            source: format!("ringcentral:audit-trail:{name}"),
            host: hec.host.clone(),
            index: index.map(str::to_string).or_else(|| hec.index.clone()),
            sourcetype: sourcetype.unwrap_or(&hec.sourcetype).to_string(),
            routes: hec.routes.clone(),
        }
    }

    /// Renders a stored envelope again under the current settings (routes, index, sourcetype,
    /// host), through [`Transformer::event`]: the record is the envelope's `event`, verbatim,
    /// and a record without a usable `eventTime` keeps the time it was first given. `None` when
    /// the bytes are not an envelope with an `event` (then the caller keeps them as they are).
    ///
    /// An internal event ([`internal_event`], recognised by its `source`) keeps its sourcetype,
    /// time, event and `rc_account`; only `host` and the index follow the current settings.
    pub fn rerender(&self, envelope: &[u8]) -> Option<Vec<u8>> {
        #[derive(Deserialize)]
        struct Stored<'a> {
            #[serde(borrow)]
            event: &'a RawValue,
            #[serde(borrow, default)]
            time: Option<&'a RawValue>,
            #[serde(default)]
            source: Option<String>,
            #[serde(default)]
            sourcetype: Option<String>,
            #[serde(default)]
            fields: Option<StoredFields>,
        }
        #[derive(Deserialize)]
        struct StoredFields {
            #[serde(default)]
            rc_account: Option<String>,
        }
        let stored: Stored = serde_json::from_slice(envelope).ok()?;
        let stored_ms = stored
            .time
            .and_then(|t| parse_hec_time(t.get()))
            .unwrap_or_else(|| Utc::now().timestamp_millis());
        if stored.source.as_deref() == Some(INTERNAL_SOURCE) {
            let sourcetype = stored.sourcetype.as_deref().unwrap_or(&self.sourcetype);
            let account = stored.fields.and_then(|f| f.rc_account);
            return Some(self.internal(sourcetype, stored_ms, stored.event, account.as_deref()));
        }
        let meta = inspect_record(stored.event);
        Some(self.event(stored.event, &meta, stored_ms))
    }

    /// An internal event's envelope with this transformer's host and default index (the
    /// poller's reconciliation events use its account's transformer).
    pub fn internal(
        &self,
        sourcetype: &str,
        time_ms: i64,
        event: &RawValue,
        account: Option<&str>,
    ) -> Vec<u8> {
        let time_text = hec_time(time_ms);
        // The time text is digits and one dot: always a valid JSON number.
        let time: &RawValue = serde_json::from_str(&time_text).unwrap_or(event);
        let env = Envelope {
            time,
            host: &self.host,
            source: INTERNAL_SOURCE,
            sourcetype,
            index: self.index.as_deref(),
            event,
            fields: Fields {
                rc_account: account,
                rc_action_id: None,
            },
        };
        let mut out = Vec::with_capacity(event.get().len() + 256);
        // Serializing borrowed strings and raw JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &env);
        out
    }

    /// `(index, sourcetype)` for an action id: the first matching route, else the defaults.
    pub fn route(&self, action_id: Option<&str>) -> (Option<&str>, &str) {
        let matched =
            action_id.and_then(|a| self.routes.iter().find(|r| glob_match(&r.action_id, a)));
        let index = matched
            .and_then(|r| r.index.as_deref())
            .or(self.index.as_deref());
        let sourcetype = matched
            .and_then(|r| r.sourcetype.as_deref())
            .unwrap_or(&self.sourcetype);
        (index, sourcetype)
    }

    /// The serialized HEC event for one record. `fallback_ms` stands in for a missing or
    /// unparseable `eventTime` (the poll time).
    pub fn event(&self, raw: &RawValue, meta: &RecordMeta, fallback_ms: i64) -> Vec<u8> {
        let time_text = hec_time(meta.event_time_ms.unwrap_or(fallback_ms));
        let (index, sourcetype) = self.route(meta.action_id.as_deref());
        let mut out = Vec::with_capacity(raw.get().len() + 256);
        // The time text is digits and one dot: always a valid JSON number.
        let time: &RawValue = serde_json::from_str(&time_text).unwrap_or(raw);
        let env = Envelope {
            time,
            host: &self.host,
            source: &self.source,
            sourcetype,
            index,
            event: raw,
            fields: Fields {
                rc_account: Some(&self.account),
                rc_action_id: meta.action_id.as_deref(),
            },
        };
        // Serializing borrowed strings and raw JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &env);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadEnv};

    fn config(extra: &str) -> Config {
        let toml = format!(
            r#"
            [[accounts]]
            name = "acme"
            client_id = "c"
            client_secret = "s"
            jwt = "j"
            [hec]
            url = "https://h:8088"
            token = "t"
            host = "fwd1"
            {extra}
            "#
        );
        Config::from_toml_str(&toml, &LoadEnv::default()).unwrap()
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn event_json(t: &Transformer, record: &str) -> serde_json::Value {
        let r = raw(record);
        let meta = inspect_record(&r);
        serde_json::from_slice(&t.event(&r, &meta, 1_700_000_000_123)).unwrap()
    }

    #[test]
    fn time_keeps_milliseconds_exactly() {
        assert_eq!(
            parse_event_time("2024-08-06T10:50:19.442Z"),
            Some(1_722_941_419_442)
        );
        assert_eq!(hec_time(1_722_941_419_442), "1722941419.442");
        assert_eq!(hec_time(1_722_941_419_000), "1722941419.000");
        assert_eq!(hec_time(5), "0.005");
        assert_eq!(hec_time(-1), "-0.001");
        assert_eq!(hec_time(-1500), "-1.500");
        // Offsets are converted to UTC; micro/nanoseconds truncate to the millisecond.
        assert_eq!(
            parse_event_time("2024-08-06T12:50:19.442+02:00"),
            Some(1_722_941_419_442)
        );
        assert_eq!(
            parse_event_time("2024-08-06T10:50:19.442999Z"),
            Some(1_722_941_419_442)
        );
        assert_eq!(parse_event_time("yesterday"), None);
        // Every millisecond of a day round-trips through the envelope text without drift.
        for ms in (1_722_941_419_000..1_722_941_420_000).step_by(7) {
            let text = hec_time(ms);
            let (s, f) = text.split_once('.').unwrap();
            assert_eq!(
                s.parse::<i64>().unwrap() * 1000 + f.parse::<i64>().unwrap(),
                ms
            );
        }
    }

    #[test]
    fn envelope_has_the_contract_fields_and_the_record_verbatim() {
        let c = config("index = \"ringcentral\"");
        let t = Transformer::new(&c.envelope_settings(), &c.accounts[0]);
        let record = r#"{"id":"r1","eventTime":"2024-08-06T10:50:19.442Z","actionId":"CHANGE_USER_ROLE","zz_unknown":{"a":[1,2]},"eventType":"Create"}"#;
        let r = raw(record);
        let bytes = t.event(&r, &inspect_record(&r), 0);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(&format!("\"event\":{record}")),
            "record not verbatim: {text}"
        );
        assert!(text.starts_with("{\"time\":1722941419.442,"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["host"], "fwd1");
        assert_eq!(v["source"], "ringcentral:audit-trail:acme");
        assert_eq!(v["sourcetype"], "ringcentral:audit");
        assert_eq!(v["index"], "ringcentral");
        assert_eq!(
            v["fields"],
            serde_json::json!({"rc_account": "acme", "rc_action_id": "CHANGE_USER_ROLE"})
        );
    }

    #[test]
    fn records_with_missing_or_bad_fields_are_still_events() {
        let c = config("");
        let t = Transformer::new(&c.envelope_settings(), &c.accounts[0]);
        let v = event_json(&t, r#"{"eventTime":"not a time"}"#);
        assert_eq!(
            v["time"].to_string(),
            "1700000000.123",
            "falls back to the poll time"
        );
        assert!(
            v.get("index").is_none(),
            "no index configured: the token's default"
        );
        assert_eq!(v["fields"], serde_json::json!({"rc_account": "acme"}));
        let v = event_json(&t, "{}");
        assert_eq!(v["event"], serde_json::json!({}));
        // Missing ids are derived from the bytes: stable, and distinct for distinct records.
        let a = inspect_record(&raw(r#"{"actionId":"X"}"#));
        let b = inspect_record(&raw(r#"{"actionId":"X"}"#));
        let c2 = inspect_record(&raw(r#"{"actionId":"Y"}"#));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c2.id);
        assert!(a.id.starts_with("sha256:"));
        // Wrong types count as absent, a numeric id keeps its text.
        let m = inspect_record(&raw(r#"{"id":42,"eventTime":7,"actionId":["A"]}"#));
        assert_eq!(
            (m.id.as_str(), m.event_time_ms, m.action_id),
            ("json:42", None, None)
        );
        // Not even an object: still gets an identity.
        assert!(inspect_record(&raw("[1,2]")).id.starts_with("sha256:"));
    }

    #[test]
    fn a_rerendered_envelope_takes_the_current_routes_and_keeps_record_and_time() {
        let old = Transformer::new(
            &config("index = \"old\"").envelope_settings(),
            &config("").accounts[0],
        );
        let with_time =
            r#"{"id":"r1","actionId":"LOGIN","eventTime":"2024-08-06T10:50:19.442Z","x":[1, 2]}"#;
        let no_time = r#"{"id":"r2","actionId":"LOGIN"}"#;
        let current = config(
            "index = \"main\"\n[[hec.routes]]\naction_id = \"LOG*\"\nindex = \"security\"\nsourcetype = \"rc:login\"",
        );
        let new = Transformer::new(&current.envelope_settings(), &current.accounts[0]);
        for record in [with_time, no_time] {
            let r = raw(record);
            let stored = old.event(&r, &inspect_record(&r), 1_700_000_000_123);
            let again = new.rerender(&stored).expect("an envelope");
            let text = String::from_utf8(again.clone()).unwrap();
            assert!(text.contains(record), "the record stays verbatim: {text}");
            let doc: serde_json::Value = serde_json::from_slice(&again).unwrap();
            assert_eq!(doc["index"], "security");
            assert_eq!(doc["sourcetype"], "rc:login");
            let want = if record == with_time {
                1_722_941_419_442
            } else {
                1_700_000_000_123
            };
            assert_eq!(doc["time"].to_string(), hec_time(want));
        }
        assert_eq!(new.rerender(b"not json"), None);
        assert_eq!(parse_hec_time("1722941419.442"), Some(1_722_941_419_442));
        assert_eq!(parse_hec_time("-0.001"), Some(-1));
        assert_eq!(parse_hec_time("17"), Some(17_000));
    }

    #[test]
    fn an_internal_event_keeps_its_sourcetype_through_a_rerender_under_routes() {
        // A route that would catch anything, and an account with its own index.
        let c = config(
            "index = \"main\"\n[[hec.routes]]\naction_id = \"*\"\nindex = \"security\"\nsourcetype = \"rc:routed\"",
        );
        let body = serde_json::json!({"id": "looks-like-a-record", "actionId": "LOGIN", "n": 1});
        let hb = internal_event(
            &c.envelope_settings(),
            None,
            HEARTBEAT_SOURCETYPE,
            1_700_000_000_123,
            &body,
        );
        let doc: serde_json::Value = serde_json::from_slice(&hb).unwrap();
        assert_eq!(doc["sourcetype"], HEARTBEAT_SOURCETYPE);
        assert_eq!(doc["source"], INTERNAL_SOURCE);
        assert_eq!(doc["host"], "fwd1");
        assert_eq!(doc["index"], "main", "the default index, no route");
        assert_eq!(doc["event"], body);
        assert_eq!(doc["time"].to_string(), "1700000000.123");
        assert!(doc.get("fields").is_none(), "no account, no fields: {doc}");

        let mut acct = c.accounts[0].clone();
        acct.index = Some("acme_idx".into());
        let rec = internal_event(
            &c.envelope_settings(),
            Some(&acct),
            RECONCILIATION_SOURCETYPE,
            5,
            &body,
        );
        let doc: serde_json::Value = serde_json::from_slice(&rec).unwrap();
        assert_eq!(doc["index"], "acme_idx", "the account's index");
        assert_eq!(doc["fields"], serde_json::json!({"rc_account": "acme"}));

        // Requeued (a dead letter rendered again) under a changed config: still internal, same
        // sourcetype, time and event; host and index follow the config.
        let mut now = config(
            "index = \"fixed\"\n[[hec.routes]]\naction_id = \"*\"\nsourcetype = \"rc:routed\"",
        );
        now.hec.as_mut().unwrap().host = "fwd2".into();
        let t = Transformer::new(&now.envelope_settings(), &now.accounts[0]);
        for (stored, st, account) in [
            (&hb, HEARTBEAT_SOURCETYPE, None),
            (&rec, RECONCILIATION_SOURCETYPE, Some("acme")),
        ] {
            let again: serde_json::Value =
                serde_json::from_slice(&t.rerender(stored).unwrap()).unwrap();
            assert_eq!(again["sourcetype"], st, "{again}");
            assert_eq!(again["source"], INTERNAL_SOURCE);
            assert_eq!(again["event"], body);
            assert_eq!(again["index"], "fixed");
            assert_eq!(again["host"], "fwd2");
            assert_eq!(again["fields"]["rc_account"].as_str(), account);
            assert!(again["fields"].get("rc_action_id").is_none());
        }
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&t.rerender(&hb).unwrap()).unwrap()["time"]
                .to_string(),
            "1700000000.123"
        );
    }

    #[test]
    fn routes_pick_index_and_sourcetype_by_action_id_glob_first_match_wins() {
        let c = config(
            r#"index = "ringcentral"
            [[hec.routes]]
            action_id = "*login*"
            index = "security"
            [[hec.routes]]
            action_id = "LOGIN_SUCCESSFULLY"
            index = "never"
            [[hec.routes]]
            action_id = "CHANGE_?SER_ROLE"
            sourcetype = "ringcentral:audit:roles"
            "#,
        );
        let t = Transformer::new(&c.envelope_settings(), &c.accounts[0]);
        assert_eq!(
            t.route(Some("LOGIN_SUCCESSFULLY")),
            (Some("security"), "ringcentral:audit")
        );
        assert_eq!(
            t.route(Some("FAILED_LOGIN")),
            (Some("security"), "ringcentral:audit")
        );
        assert_eq!(
            t.route(Some("CHANGE_USER_ROLE")),
            (Some("ringcentral"), "ringcentral:audit:roles")
        );
        assert_eq!(
            t.route(Some("CHANGE_USER_INFO")),
            (Some("ringcentral"), "ringcentral:audit")
        );
        assert_eq!(t.route(None), (Some("ringcentral"), "ringcentral:audit"));
    }

    #[test]
    fn glob_semantics() {
        assert!(glob_match("*", ""));
        assert!(glob_match("A*B*C", "AxxBxxC"));
        assert!(!glob_match("A*B*C", "AxxBxx"));
        assert!(glob_match("a?c", "ABC"));
        assert!(!glob_match("abc", "abcd"));
    }
}
