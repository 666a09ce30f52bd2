//! Wire types of the audit-trail search and the error bodies.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Body of `POST /restapi/v1.0/account/{id}/audit-trail/search`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    /// Window start, RFC 3339 UTC with milliseconds (always sent: the defaults are vague).
    pub event_time_from: String,
    /// Window end, same format.
    pub event_time_to: String,
    /// 1-based page.
    pub page: u32,
    /// Page size, at most 1000.
    pub per_page: u32,
    /// Not in the spec; RingCentral's own sample sends it.
    pub include_admins: bool,
    /// Not in the spec; RingCentral's own sample sends it.
    pub include_hidden: bool,
}

/// One page of search results. Records stay raw: they are forwarded byte for byte.
///
/// `records` is required and must be an array: a 200 without it (`{}`, `{"errors":[...]}`,
/// `null`, a wrong type) does not parse, so it is a failed request (retried), never "no
/// records". Reading such an answer as an empty page once moved a cursor over a day of records.
#[derive(Debug, Deserialize)]
pub struct SearchPage {
    /// The records of this page (possibly empty, but present).
    pub records: Vec<Box<RawValue>>,
    /// Paging information; may be missing.
    #[serde(default)]
    pub paging: Option<Paging>,
}

/// `paging` of a search response. Every field may be missing.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paging {
    /// Current page.
    pub page: Option<u64>,
    /// Page size.
    pub per_page: Option<u64>,
    /// Number of pages.
    pub total: Option<u64>,
    /// Number of records in the whole window (the API stops at 10,000).
    pub total_found: Option<u64>,
}

/// A RingCentral error body: `errors[]` with `errorCode`, and on the token endpoint an OAuth
/// `error`. We branch on codes, never on messages.
#[derive(Debug, Default, Deserialize)]
pub struct ApiError {
    /// Top-level `errorCode` (some responses have it).
    #[serde(default, rename = "errorCode")]
    pub error_code: Option<String>,
    /// Top-level `message`.
    #[serde(default)]
    pub message: Option<String>,
    /// The error list.
    #[serde(default)]
    pub errors: Vec<ApiErrorItem>,
    /// OAuth error (`invalid_grant`, `invalid_client`...).
    #[serde(default)]
    pub error: Option<String>,
    /// OAuth error description.
    #[serde(default)]
    pub error_description: Option<String>,
}

/// One entry of `errors`.
#[derive(Debug, Default, Deserialize)]
pub struct ApiErrorItem {
    /// E.g. `CMN-401`.
    #[serde(default, rename = "errorCode")]
    pub error_code: Option<String>,
    /// Human text.
    #[serde(default)]
    pub message: Option<String>,
    /// On permission errors, the permission missing.
    #[serde(default, rename = "permissionName")]
    pub permission_name: Option<String>,
}

impl ApiError {
    /// Parses an error body; anything unparseable is an empty error.
    pub fn parse(body: &[u8]) -> ApiError {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The first error code found.
    pub fn code(&self) -> Option<&str> {
        self.errors
            .iter()
            .find_map(|e| e.error_code.as_deref())
            .or(self.error_code.as_deref())
    }

    /// A short description: code and message, for logs.
    pub fn describe(&self) -> String {
        let message = self
            .errors
            .iter()
            .find_map(|e| e.message.as_deref())
            .or(self.message.as_deref())
            .or(self.error_description.as_deref())
            .unwrap_or("no message");
        match (self.code(), self.error.as_deref()) {
            (Some(c), Some(e)) => format!("{c} {e}: {message}"),
            (Some(c), None) => format!("{c}: {message}"),
            (None, Some(e)) => format!("{e}: {message}"),
            (None, None) => message.to_string(),
        }
    }

    /// The permission named by a permission error, if any.
    pub fn permission(&self) -> Option<&str> {
        self.errors
            .iter()
            .find_map(|e| e.permission_name.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_records_verbatim_and_tolerate_missing_paging() {
        let body = br#"{"records":[{"id":"a","x": [1, 2]},{}],"paging":{"page":1,"totalFound":2}}"#;
        let p: SearchPage = serde_json::from_slice(body).unwrap();
        assert_eq!(p.records[0].get(), r#"{"id":"a","x": [1, 2]}"#);
        assert_eq!(p.paging.unwrap().total_found, Some(2));
        let p: SearchPage = serde_json::from_slice(br#"{"records":[]}"#).unwrap();
        assert!(p.records.is_empty() && p.paging.is_none());
    }

    #[test]
    fn an_answer_without_a_records_array_is_not_a_page() {
        for body in [
            &b"{}"[..],
            br#"{"errors":[{"errorCode":"CMN-201","message":"later"}]}"#,
            br#"{"records":null}"#,
            br#"{"records":{}}"#,
            br#"{"records":"x","paging":{}}"#,
            b"null",
            br#"{"records":[],"paging":{"totalFound":"many"}}"#,
        ] {
            assert!(
                serde_json::from_slice::<SearchPage>(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_bodies_expose_codes() {
        let e = ApiError::parse(br#"{"errorCode":"CMN-401","message":"need it","errors":[{"errorCode":"CMN-401","message":"need it","permissionName":"ReadAuditTrail"}]}"#);
        assert_eq!(e.code(), Some("CMN-401"));
        assert_eq!(e.permission(), Some("ReadAuditTrail"));
        let e = ApiError::parse(br#"{"error":"invalid_grant","error_description":"bad jwt","errors":[{"errorCode":"OAU-140"}]}"#);
        assert_eq!(e.describe(), "OAU-140 invalid_grant: bad jwt");
        assert_eq!(ApiError::parse(b"<html>").code(), None);
    }
}
