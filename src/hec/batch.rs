//! Local validation of spooled events and the request body of a batch.
//!
//! Validating every event before it is batched means HEC's "event k is bad, 0..k-1 were indexed"
//! case should not happen; the sink still handles it when it does.

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The envelope fields HEC checks.
#[derive(Deserialize)]
struct Check<'a> {
    /// `null` must read as present-but-null (code 13), not as absent (code 12).
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    fields: Option<HashMap<&'a str, &'a RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Checks one serialized event against HEC's envelope rules; `Err` says why it would be refused.
pub fn validate_event(bytes: &[u8]) -> Result<(), String> {
    if bytes.first() != Some(&b'{') {
        return Err("not a JSON object (HEC code 6)".into());
    }
    let check: Check = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JSON object HEC can parse: {e}"))?;
    match check.event.map(RawValue::get) {
        None => return Err("no `event` field (HEC code 12)".into()),
        Some("null" | "\"\"") => return Err("`event` is null or empty (HEC code 13)".into()),
        Some(_) => {}
    }
    for (key, value) in check.fields.unwrap_or_default() {
        let v = value.get();
        let flat = v.starts_with('"')
            || (v.starts_with('[') && serde_json::from_str::<Vec<String>>(v).is_ok());
        if !flat {
            return Err(format!(
                "indexed field `{key}` is not a string or list of strings (HEC code 15)"
            ));
        }
    }
    Ok(())
}

/// Joins events into one request body (newline separated), gzipped when asked.
pub fn build_body<'a>(
    events: impl IntoIterator<Item = &'a [u8]>,
    gzip: bool,
) -> std::io::Result<Vec<u8>> {
    if gzip {
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(GZIP_LEVEL));
        for e in events {
            enc.write_all(e)?;
            enc.write_all(b"\n")?;
        }
        enc.finish()
    } else {
        let mut out = Vec::new();
        for e in events {
            out.extend_from_slice(e);
            out.push(b'\n');
        }
        Ok(out)
    }
}

/// Gzip level: fast levels compress audit JSON almost as well as the default at a fraction of
/// the CPU.
pub const GZIP_LEVEL: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn validation_catches_what_hec_would_refuse() {
        assert!(
            validate_event(br#"{"time":1.5,"event":{"a":1},"fields":{"k":"v","l":["a","b"]}}"#)
                .is_ok()
        );
        assert!(
            validate_event(br#"{"time":1.5}"#)
                .unwrap_err()
                .contains("12")
        );
        assert!(
            validate_event(br#"{"event":null}"#)
                .unwrap_err()
                .contains("13")
        );
        assert!(
            validate_event(br#"{"event":""}"#)
                .unwrap_err()
                .contains("13")
        );
        assert!(
            validate_event(br#"{"event":1,"fields":{"k":{"n":1}}}"#)
                .unwrap_err()
                .contains("15")
        );
        assert!(
            validate_event(br#"{"event":1,"fields":{"k":[1]}}"#)
                .unwrap_err()
                .contains("15")
        );
        assert!(validate_event(b"{not json").is_err());
    }

    #[test]
    fn bodies_concatenate_and_gzip() {
        let events: [&[u8]; 2] = [br#"{"event":1}"#, br#"{"event":2}"#];
        let plain = build_body(events, false).unwrap();
        assert_eq!(plain, b"{\"event\":1}\n{\"event\":2}\n");
        let gz = build_body(events, true).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
    }
}
