//! One outbox row -> one DynamoDB item (pure functions, no I/O). The layout and its reasons are
//! in the module docs of [`crate::dynamodb`].

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::DYNAMODB_TTL_ATTRIBUTE;
use crate::time::ms_rfc3339;
use crate::transform::parse_hec_time;

/// Partition key: the account's name as configured (`rc_account` in HEC).
pub const PARTITION_KEY: &str = "account";
/// Sort key: `<eventTime, RFC 3339 UTC with ms>#<record id>`.
pub const SORT_KEY: &str = "sk";
/// The record verbatim, as a JSON string.
pub const RECORD: &str = "record";
/// The record verbatim, gzip-compressed (instead of [`RECORD`] above [`COMPRESS_ABOVE`]).
pub const RECORD_GZ: &str = "recordGz";
/// The partition key of the `byAction` index (present only when the record has an `actionId`).
pub const ACTION_ID: &str = "actionId";

/// Records longer than this many bytes are stored gzip-compressed in [`RECORD_GZ`].
///
/// Audit records are typically 0.5 to 2 KB: below 4 KB the record stays a readable string (the
/// console, `aws dynamodb query` and a `contains(record, ...)` filter all see it) and gzip
/// would save at most three of DynamoDB's 1 KB write units. Above it, a record is one of the
/// rare large ones (bulk changes with long `details`), JSON compresses 5 to 10 times, and that
/// divides its write units and storage by the same factor and keeps it well under the item
/// limit. Readers tell the two apart by the attribute name.
pub const COMPRESS_ABOVE: usize = 4096;

/// DynamoDB's maximum item size (400 KB: attribute names plus values, in bytes).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// A DynamoDB item built from one record, ready for `PutItem` or a `PutRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    attributes: HashMap<String, AttributeValue>,
    sort_key: String,
    size: usize,
}

impl Item {
    /// The item's attributes (keys included).
    pub fn attributes(&self) -> &HashMap<String, AttributeValue> {
        &self.attributes
    }

    /// The sort key (`<time>#<id>`), for logs and dead-letter reasons.
    pub fn sort_key(&self) -> &str {
        &self.sort_key
    }

    /// The item's size as DynamoDB counts it (an upper bound for numbers), in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether `attributes` has this item's primary key (how `UnprocessedItems` are matched
    /// back to the batch).
    pub(crate) fn has_key_of(&self, attributes: &HashMap<String, AttributeValue>) -> bool {
        [PARTITION_KEY, SORT_KEY]
            .iter()
            .all(|k| attributes.get(*k) == self.attributes.get(*k))
    }
}

/// Why a row cannot become an item. The sink dead-letters the row with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// The stored envelope is not a HEC event with a `time` and an `event` (a damaged row).
    #[error("the spooled event is not a HEC envelope with time and event: {0}")]
    Envelope(String),
    /// Over DynamoDB's item limit even with the record compressed.
    #[error(
        "the item is {size} bytes with the record gzip-compressed ({record_bytes} bytes uncompressed), over DynamoDB's limit of {limit} bytes; it is kept here, never cut (the record is in the dead letter)"
    )]
    TooLarge {
        /// The item's size with the record compressed.
        size: usize,
        /// The record's own size.
        record_bytes: usize,
        /// [`MAX_ITEM_BYTES`].
        limit: usize,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
}

/// The record's fields copied into attributes; anything of another type counts as absent.
#[derive(Deserialize, Default)]
struct Fields {
    #[serde(default, rename = "actionId")]
    action_id: Option<serde_json::Value>,
    #[serde(default, rename = "eventType")]
    event_type: Option<serde_json::Value>,
    #[serde(default, rename = "clientIp")]
    client_ip: Option<serde_json::Value>,
    #[serde(default)]
    initiator: Option<Party>,
    #[serde(default)]
    target: Option<Party>,
}

/// `initiator` is `{extensionId, name, ...}`, `target` is `{objectId, name, ...}`.
#[derive(Deserialize, Default)]
struct Party {
    #[serde(default)]
    name: Option<serde_json::Value>,
    #[serde(default, rename = "extensionId")]
    extension_id: Option<serde_json::Value>,
    #[serde(default, rename = "objectId")]
    object_id: Option<serde_json::Value>,
}

/// A non-empty string, or a number as its JSON text (ids are strings in the API, numbers in
/// some exports); DynamoDB rejects an empty string in an index key, and an empty attribute
/// says nothing.
fn text(v: &Option<serde_json::Value>) -> Option<String> {
    match v.as_ref()? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds the item for one outbox row: `account` and `record_id` as the spool has them (the
/// record's id or its derived id), `envelope` the HEC event the spool stores, `ttl` from
/// `dynamodb.ttl`. The same row always gives the same item, so a resend overwrites it.
pub fn build(
    account: &str,
    record_id: &str,
    envelope: &[u8],
    ttl: Option<Duration>,
) -> Result<Item, ItemError> {
    let env: Envelope =
        serde_json::from_slice(envelope).map_err(|e| ItemError::Envelope(e.to_string()))?;
    let time_ms = env
        .time
        .and_then(|t| parse_hec_time(t.get()))
        .ok_or_else(|| ItemError::Envelope("no numeric time".into()))?;
    let record = env
        .event
        .ok_or_else(|| ItemError::Envelope("no event".into()))?
        .get();
    let time = ms_rfc3339(time_ms)
        .ok_or_else(|| ItemError::Envelope(format!("time {time_ms} ms is out of range")))?;
    let sort_key = format!("{time}#{record_id}");

    let mut attributes = HashMap::new();
    let mut put = |name: &str, value: AttributeValue| {
        attributes.insert(name.to_owned(), value);
    };
    put(PARTITION_KEY, AttributeValue::S(account.to_owned()));
    put(SORT_KEY, AttributeValue::S(sort_key.clone()));

    let fields: Fields = if record.starts_with('{') {
        serde_json::from_str(record).unwrap_or_default()
    } else {
        Fields::default()
    };
    let initiator = fields.initiator.unwrap_or_default();
    let target = fields.target.unwrap_or_default();
    for (name, value) in [
        (ACTION_ID, text(&fields.action_id)),
        ("eventType", text(&fields.event_type)),
        ("initiatorName", text(&initiator.name)),
        ("initiatorId", text(&initiator.extension_id)),
        ("targetName", text(&target.name)),
        ("targetId", text(&target.object_id)),
        ("clientIp", text(&fields.client_ip)),
    ] {
        if let Some(v) = value {
            put(name, AttributeValue::S(v));
        }
    }
    if let Some(ttl) = ttl {
        let expires = time_ms
            .div_euclid(1000)
            .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        put(
            DYNAMODB_TTL_ATTRIBUTE,
            AttributeValue::N(expires.to_string()),
        );
    }
    if record.len() > COMPRESS_ABOVE {
        put(
            RECORD_GZ,
            AttributeValue::B(Blob::new(gzip(record.as_bytes()))),
        );
    } else {
        put(RECORD, AttributeValue::S(record.to_owned()));
    }

    let size = item_size(&attributes);
    if size > MAX_ITEM_BYTES {
        return Err(ItemError::TooLarge {
            size,
            record_bytes: record.len(),
            limit: MAX_ITEM_BYTES,
        });
    }
    Ok(Item {
        attributes,
        sort_key,
        size,
    })
}

/// gzip with a zero mtime, so the same record always compresses to the same bytes.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// The size DynamoDB counts: each attribute's name plus its value (strings and binaries by
/// their bytes; a number by its text, an upper bound of DynamoDB's 1 + digits/2).
fn item_size(attributes: &HashMap<String, AttributeValue>) -> usize {
    attributes
        .iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                    AttributeValue::B(b) => b.as_ref().len(),
                    // Only the three above are built here.
                    _ => 0,
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn envelope(time: &str, event: &str) -> Vec<u8> {
        format!(r#"{{"time":{time},"host":"h","source":"s","sourcetype":"st","event":{event},"fields":{{"rc_account":"main"}}}}"#).into_bytes()
    }

    fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
        item.attributes()
            .get(name)
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
    }

    const RECORD_JSON: &str = r#"{"id":"r1","eventTime":"2026-11-30T22:00:00.123Z","actionId":"LOGIN_FAILED","eventType":"UPDATE","initiator":{"extensionId":"111","name":"Alice Smith","role":"x"},"target":{"objectId":"222","objectType":"Extension","name":"Bob"},"clientIp":"10.0.0.1","details":{"a":1}}"#;

    #[test]
    fn keys_and_attributes_follow_the_layout() {
        let item = build("main", "r1", &envelope("1796076000.123", RECORD_JSON), None).unwrap();
        assert_eq!(s(&item, "account"), Some("main"));
        assert_eq!(s(&item, "sk"), Some("2026-11-30T22:00:00.123Z#r1"));
        assert_eq!(item.sort_key(), "2026-11-30T22:00:00.123Z#r1");
        assert_eq!(s(&item, "actionId"), Some("LOGIN_FAILED"));
        assert_eq!(s(&item, "eventType"), Some("UPDATE"));
        assert_eq!(s(&item, "initiatorName"), Some("Alice Smith"));
        assert_eq!(s(&item, "initiatorId"), Some("111"));
        assert_eq!(s(&item, "targetName"), Some("Bob"));
        assert_eq!(s(&item, "targetId"), Some("222"));
        assert_eq!(s(&item, "clientIp"), Some("10.0.0.1"));
        // The record verbatim: the same bytes, key order and all.
        assert_eq!(s(&item, "record"), Some(RECORD_JSON));
        assert!(!item.attributes().contains_key(RECORD_GZ));
        assert!(!item.attributes().contains_key(DYNAMODB_TTL_ATTRIBUTE));
        assert_eq!(item.attributes().len(), 10);
    }

    #[test]
    fn absent_fields_are_absent_attributes_so_the_index_is_sparse() {
        let rec = r#"{"eventTime":"2026-11-30T22:00:00.000Z","actionId":"","initiator":{"name":7},"clientIp":null}"#;
        let item = build("main", "sha256:abc", &envelope("1796076000.000", rec), None).unwrap();
        // A record without an id is keyed by the derived id the spool passes in.
        assert_eq!(s(&item, "sk"), Some("2026-11-30T22:00:00.000Z#sha256:abc"));
        for absent in [
            "actionId",
            "eventType",
            "targetName",
            "targetId",
            "clientIp",
            "initiatorId",
        ] {
            assert!(!item.attributes().contains_key(absent), "{absent}");
        }
        // A number is kept as its text.
        assert_eq!(s(&item, "initiatorName"), Some("7"));
        // Not an object at all: keys and the record only.
        let item = build("main", "sha256:def", &envelope("1.5", "[1,2]"), None).unwrap();
        assert_eq!(item.attributes().len(), 3);
        assert_eq!(s(&item, "sk"), Some("1970-01-01T00:00:01.500Z#sha256:def"));
    }

    #[test]
    fn ttl_is_record_time_plus_ttl_in_epoch_seconds() {
        let ttl = Duration::from_secs(400 * 86_400);
        let item = build(
            "main",
            "r1",
            &envelope("1796076000.999", RECORD_JSON),
            Some(ttl),
        )
        .unwrap();
        let n = item.attributes()[DYNAMODB_TTL_ATTRIBUTE].as_n().unwrap();
        assert_eq!(n, &(1_796_076_000_i64 + 400 * 86_400).to_string());
    }

    #[test]
    fn large_records_are_gzip_compressed_and_round_trip() {
        let pad = "x".repeat(COMPRESS_ABOVE);
        let at_limit = &format!(r#"{{"p":"{}"}}"#, &pad[..COMPRESS_ABOVE - 8]);
        assert_eq!(at_limit.len(), COMPRESS_ABOVE);
        let item = build("main", "r", &envelope("1", at_limit), None).unwrap();
        assert_eq!(s(&item, "record"), Some(at_limit.as_str()));

        let over = &format!(r#"{{"actionId":"A","p":"{pad}"}}"#);
        let item = build("main", "r", &envelope("1", over), None).unwrap();
        assert!(!item.attributes().contains_key(RECORD));
        assert_eq!(s(&item, "actionId"), Some("A"));
        let gz = item.attributes()[RECORD_GZ]
            .as_b()
            .unwrap()
            .as_ref()
            .to_vec();
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(&back, over);
        assert!(item.size() < 200);
        // The same record compresses to the same bytes: a resend writes an identical item.
        assert_eq!(
            build("main", "r", &envelope("1", over), None).unwrap(),
            item
        );
    }

    #[test]
    fn over_the_item_limit_even_compressed_is_too_large_never_cut() {
        // Hex of pseudo-random bytes: gzip halves it at best, so 900 KB stays over 400 KB.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: String = (0..900 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_digit((x % 16) as u32, 16).unwrap()
            })
            .collect();
        let rec = format!(r#"{{"p":"{noise}"}}"#);
        match build("main", "r", &envelope("1", &rec), None) {
            Err(ItemError::TooLarge {
                size,
                record_bytes,
                limit,
            }) => {
                assert!(size > limit);
                assert_eq!(record_bytes, rec.len());
                assert_eq!(limit, 409_600);
            }
            other => panic!("{:?}", other.map(|i| i.size())),
        }
        // Just under the limit uncompressed but compressible: fine.
        let big = format!(r#"{{"p":"{}"}}"#, "ab".repeat(300 * 1024));
        assert!(build("main", "r", &envelope("1", &big), None).is_ok());
    }

    #[test]
    fn a_damaged_envelope_is_an_error_not_an_item() {
        for bad in [
            &b"not json"[..],
            br#"{"event":{}}"#,
            br#"{"time":"x","event":{}}"#,
            br#"{"time":1}"#,
        ] {
            assert!(
                matches!(build("a", "r", bad, None), Err(ItemError::Envelope(_))),
                "{bad:?}"
            );
        }
    }
}
