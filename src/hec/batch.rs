//! Local validation of spooled events and the request body of a batch.
//!
//! Validating every event before it is batched means HEC's "event k is bad, 0..k-1 were indexed"
//! case should not happen; the sink still handles it when it does.

use std::collections::HashMap;

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
    if !gzip {
        let mut plain = Vec::new();
        join(&mut plain, events);
        return Ok(plain);
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch {
            compressor,
            plain,
            out,
        } = &mut *scratch;
        join(plain, events);
        let compressor = compressor.get_or_insert_with(|| {
            libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(GZIP_LEVEL)
                    .unwrap_or(libdeflater::CompressionLvl::fastest()),
            )
        });
        // Audit JSON compresses about 7x: a third of the input is room enough, and the pages of
        // a worst-case bound (the input's size) are touched only for data that does not compress.
        let bound = compressor.gzip_compress_bound(plain.len());
        out.resize((plain.len() / 3 + 4096).min(bound), 0);
        let n = match compressor.gzip_compress(plain, out) {
            Err(libdeflater::CompressionError::InsufficientSpace) => {
                out.resize(bound, 0);
                compressor.gzip_compress(plain, out)
            }
            n => n,
        }
        .map_err(|e| std::io::Error::other(format!("gzip: {e}")))?;
        let body = out[..n].to_vec();
        // A batch is about 1 MB: keep that much per thread for the next one, not more (an
        // isolated over-size event must not pin its size for the life of the process).
        for buf in [plain, out] {
            buf.clear();
            buf.shrink_to(SCRATCH_KEEP);
        }
        Ok(body)
    })
}

fn join<'a>(plain: &mut Vec<u8>, events: impl IntoIterator<Item = &'a [u8]>) {
    plain.clear();
    for e in events {
        plain.extend_from_slice(e);
        plain.push(b'\n');
    }
}

/// Why libdeflate and not a streaming zlib: a batch is built whole anyway, and on real batches
/// of audit events libdeflate's level 1 compresses as tightly as zlib's level 3 (7.1x against
/// 7.0x) in 0.76 of its time (`bench gzip`); compression is the largest part of the drain's
/// CPU. The compressor (its match-finder tables) and the two buffers are kept per thread, so a
/// batch allocates only its compressed body.
#[derive(Default)]
struct Scratch {
    compressor: Option<libdeflater::Compressor>,
    plain: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// What a thread's scratch buffers keep between batches: a little over a default batch
/// (`hec.max_batch_bytes`, 1 MB).
const SCRATCH_KEEP: usize = 5 << 18;

/// libdeflate's compression level (1 to 12). Level 1 matches zlib level 3's size on audit JSON
/// at 1.3x its speed; higher levels buy a few percent of bytes for much more CPU (`bench gzip`
/// prints the table).
pub const GZIP_LEVEL: i32 = 1;

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
    fn a_body_that_does_not_compress_still_gzips_whole() {
        // Random bytes do not fit the first, smaller output buffer: the retry must take the
        // worst-case bound and still produce the whole body.
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..300_000).map(|_| rng.u8(..)).collect();
        let gz = build_body([noise.as_slice()], true).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), noise.len() + 1);
        assert_eq!(&out[..noise.len()], noise.as_slice());
        // And the next, ordinary body on the same thread is unaffected.
        let small = build_body([br#"{"event":1}"#.as_slice()], true).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&small[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"{\"event\":1}\n");
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
