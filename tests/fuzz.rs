//! Fuzzing with proptest: nothing that arrives from the network can panic the process.
//!
//! Arbitrary bytes go into every parser that sees a RingCentral or HEC response; arbitrary JSON
//! records go through the whole record path (inspection, transform, local validation), and the
//! event that comes out must still be valid JSON carrying the record verbatim.

use proptest::prelude::*;
use rc_audit_hec::config::{Config, LoadEnv};
use rc_audit_hec::hec::batch::validate_event;
use rc_audit_hec::hec::response::classify;
use rc_audit_hec::ringcentral::model::{ApiError, SearchPage};
use rc_audit_hec::transform::{Transformer, inspect_record, parse_event_time};
use serde_json::Value;
use serde_json::value::RawValue;

fn transformer() -> Transformer {
    let c = Config::from_toml_str(
        r#"
        [[accounts]]
        name = "fuzz"
        client_id = "c"
        client_secret = "s"
        jwt = "j"
        [hec]
        url = "https://h:8088"
        token = "t"
        host = "h"
        [[hec.routes]]
        action_id = "*LOG?N*"
        index = "security"
        "#,
        &LoadEnv::default(),
    )
    .unwrap();
    Transformer::new(&c.envelope_settings(), &c.accounts[0])
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2024-08-06T10:50:19.442Z"),
            Just("9999-12-31T23:59:59.999Z"),
            Just("0000-01-01T00:00:00Z")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("eventTime".to_string()),
                    Just("actionId".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn response_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), status in 100u16..600) {
        let _ = serde_json::from_slice::<SearchPage>(&bytes);
        let _ = ApiError::parse(&bytes).describe();
        let _ = classify(status, None, &bytes);
        let _ = validate_event(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_event_time(text);
        }
    }

    #[test]
    fn hec_json_answers_never_panic(code in any::<i64>(), k in any::<i64>(), ack in any::<i64>(), status in 100u16..600) {
        let body = format!(r#"{{"text":"x","code":{code},"invalid-event-number":{k},"ackId":{ack}}}"#);
        let _ = classify(status, None, body.as_bytes());
    }

    #[test]
    fn any_record_becomes_a_valid_event_with_the_record_verbatim(record in json_value(), poll_ms in any::<i64>()) {
        let t = transformer();
        let text = record.to_string();
        let raw = RawValue::from_string(text.clone()).unwrap();
        let meta = inspect_record(&raw);
        prop_assert!(!meta.id.is_empty());
        let event = t.event(&raw, &meta, poll_ms.clamp(-1_000_000_000_000, 10_000_000_000_000));
        let parsed: Value = serde_json::from_slice(&event).expect("the envelope is valid JSON");
        prop_assert!(parsed["time"].is_number());
        // Byte for byte, not via a parsed value (float parsing is not exact).
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            event: &'a RawValue,
        }
        let envelope: Envelope = serde_json::from_slice(&event).unwrap();
        prop_assert_eq!(envelope.event.get(), text.as_str());
        // Local validation agrees with HEC's rule: only a null or empty event is refused.
        let refused = record.is_null() || record.as_str() == Some("");
        prop_assert_eq!(validate_event(&event).is_err(), refused);
    }

    #[test]
    fn search_pages_of_arbitrary_records_parse_and_transform(records in prop::collection::vec(json_value(), 0..5)) {
        let body = serde_json::json!({"records": records, "paging": {"page": 1}}).to_string();
        let page: SearchPage = serde_json::from_str(&body).unwrap();
        let t = transformer();
        for raw in &page.records {
            let event = t.event(raw, &inspect_record(raw), 0);
            prop_assert!(serde_json::from_slice::<Value>(&event).is_ok());
        }
    }
}
