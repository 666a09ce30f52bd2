//! Writes: one attempt each, no sleeping inside (the sink owns backoff, shutdown and counting),
//! and the one classifier from SDK errors to what the sink does next.
//!
//! | what came back | outcome |
//! | --- | --- |
//! | success, nothing unprocessed | `Written` |
//! | success with `UnprocessedItems` | `Unprocessed` (their indexes) |
//! | `ProvisionedThroughputExceededException`, `ThrottlingException`, `RequestLimitExceeded`, `InternalServerError`, `ServiceUnavailable`, any 5xx or 429, a timeout, a connection failure, an unreadable 5xx | `Retry` |
//! | `ValidationException` | `Invalid` (an item is bad) |
//! | an unreadable 4xx (not 429): a web server or proxy at the endpoint | `Pause` |
//! | `ResourceNotFoundException` (no table), `AccessDeniedException`, `UnrecognizedClientException`, `ExpiredTokenException`, a bad signature, no credentials, any other 4xx, a request that cannot be built | `Pause` |
//!
//! Unknown 4xx codes pause rather than dead-letter: pausing keeps the data and tells the
//! operator; dead-lettering on a code we do not know could throw away good records.

use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};

use super::client::Dynamo;
use super::item::Item;

/// The most items one `BatchWriteItem` takes.
pub const MAX_BATCH_ITEMS: usize = 25;

/// What the sink does after one write attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Every item is written.
    Written,
    /// DynamoDB wrote the others and left these (indexes into the batch) in
    /// `UnprocessedItems`: resend only these, after backoff.
    Unprocessed(Vec<usize>),
    /// Nothing (or nothing known) was written; send the same again after backoff. Items are
    /// keyed, so a resend of an item that was written overwrites it with itself.
    Retry {
        /// For logs and metrics.
        reason: String,
        /// A `Retry-After` from the answer, when one came (DynamoDB sends none; a proxy may).
        retry_after: Option<Duration>,
    },
    /// An item is bad (`ValidationException`); in a batch, nothing was written. The sink
    /// isolates the item with [`Dynamo::put_one`] and dead-letters it.
    Invalid {
        /// DynamoDB's message.
        reason: String,
    },
    /// A configuration problem (no table, permissions, credentials, region or endpoint):
    /// keep the data, retry slowly, tell the operator. Never data loss.
    Pause {
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl Dynamo {
    /// One `BatchWriteItem` of `items` (1 to [`MAX_BATCH_ITEMS`], distinct keys: DynamoDB
    /// rejects a batch that puts one key twice with a `ValidationException`).
    pub async fn write_batch(&self, items: &[Item]) -> WriteOutcome {
        if items.is_empty() {
            return WriteOutcome::Written;
        }
        let mut requests = Vec::with_capacity(items.len());
        for item in items {
            let put = match PutRequest::builder()
                .set_item(Some(item.attributes().clone()))
                .build()
            {
                Ok(put) => put,
                Err(e) => return construction(&e.to_string()),
            };
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        let sent = self
            .client
            .batch_write_item()
            .request_items(self.table.clone(), requests)
            .send()
            .await;
        match sent {
            Ok(out) => {
                let unprocessed: Vec<_> = out
                    .unprocessed_items()
                    .map(|m| m.values().flatten().collect())
                    .unwrap_or_default();
                if unprocessed.is_empty() {
                    return WriteOutcome::Written;
                }
                let mut indexes = Vec::with_capacity(unprocessed.len());
                for request in unprocessed {
                    let found = request
                        .put_request()
                        .and_then(|p| items.iter().position(|item| item.has_key_of(p.item())));
                    match found {
                        Some(i) => indexes.push(i),
                        // Not one of ours: resend them all rather than guess (a resend of a
                        // written item overwrites it with itself).
                        None => return WriteOutcome::Unprocessed((0..items.len()).collect()),
                    }
                }
                indexes.sort_unstable();
                indexes.dedup();
                WriteOutcome::Unprocessed(indexes)
            }
            Err(e) => classify(&e, self),
        }
    }

    /// One `PutItem`: isolates the bad item of a batch that came back `Invalid`.
    pub async fn put_one(&self, item: &Item) -> WriteOutcome {
        let sent = self
            .client
            .put_item()
            .table_name(self.table.clone())
            .set_item(Some(item.attributes().clone()))
            .send()
            .await;
        match sent {
            Ok(_) => WriteOutcome::Written,
            Err(e) => classify(&e, self),
        }
    }
}

fn construction(detail: &str) -> WriteOutcome {
    WriteOutcome::Pause {
        reason: format!("cannot build the DynamoDB request: {detail}"),
    }
}

/// How a failed call failed, read from the SDK's error: what [`classify_failure`] decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request could not be built (bad endpoint URL, region).
    Construction(String),
    /// No answer in time.
    Timeout(String),
    /// Connecting or sending failed at the network level.
    Network(String),
    /// Before sending: no credentials, endpoint resolution, signing.
    Local(String),
    /// An answer that is not a readable DynamoDB answer.
    Unreadable {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// DynamoDB's error answer.
    Service {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
}

impl Failure {
    pub(crate) fn from_sdk<E, R>(err: &SdkError<E, R>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let detail = DisplayErrorContext(err).to_string();
        match err {
            SdkError::ConstructionFailure(_) => Failure::Construction(detail),
            SdkError::TimeoutError(_) => Failure::Timeout(detail),
            SdkError::DispatchFailure(d) => {
                if d.is_io() || d.is_timeout() {
                    Failure::Network(detail)
                } else {
                    Failure::Local(detail)
                }
            }
            SdkError::ResponseError(r) => Failure::Unreadable {
                status: r.raw().status(),
                retry_after: r.raw().retry_after(),
                detail,
            },
            SdkError::ServiceError(s) => Failure::Service {
                status: s.raw().status(),
                retry_after: s.raw().retry_after(),
                // `__type` may carry the namespace (`com.amazonaws.dynamodb.v20120810#...`).
                code: s
                    .err()
                    .code()
                    .map(|c| c.rsplit('#').next().unwrap_or(c).to_owned())
                    .unwrap_or_default(),
                message: s
                    .err()
                    .message()
                    .map(str::to_owned)
                    .or_else(|| s.err().source().map(|e| e.to_string()))
                    .unwrap_or_default(),
            },
            _ => Failure::Local(detail),
        }
    }
}

/// What the classifier reads from a raw answer (implemented for the SDK's `HttpResponse`).
pub(crate) trait HasStatus {
    fn status(&self) -> u16;
    fn retry_after(&self) -> Option<Duration>;
}

impl HasStatus for aws_sdk_dynamodb::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
    fn retry_after(&self) -> Option<Duration> {
        self.headers()
            .get("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// The one classifier: an SDK error from any DynamoDB call -> what the sink does next.
pub(crate) fn classify<E, R>(err: &SdkError<E, R>, d: &Dynamo) -> WriteOutcome
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    classify_failure(&Failure::from_sdk(err), &d.table, &d.region)
}

/// Codes that mean "too fast" or "DynamoDB is having trouble": the same request later is fine.
const RETRY_CODES: [&str; 7] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "ReplicatedWriteConflictException",
];

/// Codes that mean "the credentials or the signature are wrong".
const CREDENTIAL_CODES: [&str; 8] = [
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
];

pub(crate) fn classify_failure(f: &Failure, table: &str, region: &str) -> WriteOutcome {
    let retry = |reason: String, retry_after: Option<Duration>| WriteOutcome::Retry {
        reason,
        retry_after,
    };
    let pause = |reason: String| WriteOutcome::Pause { reason };
    match f {
        Failure::Construction(d) => construction(d),
        Failure::Timeout(d) => retry(format!("DynamoDB did not answer in time: {d}"), None),
        Failure::Network(d) => retry(format!("cannot reach DynamoDB: {d}"), None),
        Failure::Local(d) => pause(format!(
            "cannot send to DynamoDB in {region}: {d}; check the AWS credentials (environment, \
             profile, web identity or instance role) and dynamodb.region / dynamodb.endpoint_url"
        )),
        // Not DynamoDB answering a request it refuses (a web server or a proxy at the
        // endpoint): configuration, like an unknown 4xx below.
        Failure::Unreadable { status, detail, .. }
            if (400..500).contains(status) && *status != 429 =>
        {
            pause(format!(
                "the endpoint in {region} answered HTTP {status} with something that is not DynamoDB ({detail}): check dynamodb.endpoint_url and dynamodb.region"
            ))
        }
        Failure::Unreadable {
            status,
            detail,
            retry_after,
        } => retry(
            format!("unreadable DynamoDB answer (HTTP {status}): {detail}"),
            *retry_after,
        ),
        Failure::Service {
            status,
            code,
            message,
            retry_after,
        } => {
            let said = format!("{code} (HTTP {status}): {message}");
            let code = code.as_str();
            if RETRY_CODES.contains(&code) || *status >= 500 || *status == 429 {
                retry(format!("DynamoDB: {said}"), *retry_after)
            } else if code == "ValidationException" {
                WriteOutcome::Invalid {
                    reason: format!("DynamoDB rejected the item: {said}"),
                }
            } else if code == "ResourceNotFoundException" {
                pause(format!(
                    "DynamoDB table {table:?} not found in {region} ({said}): create it with \
                     `rc-audit-hec dynamodb create-table`, or fix dynamodb.table / dynamodb.region"
                ))
            } else if code == "AccessDeniedException" {
                pause(format!(
                    "DynamoDB denied access to table {table:?} ({said}): grant the identity \
                     dynamodb:BatchWriteItem, dynamodb:PutItem and dynamodb:DescribeTable on it"
                ))
            } else if CREDENTIAL_CODES.contains(&code) {
                pause(format!(
                    "DynamoDB did not accept the AWS credentials ({said}): check the access key, \
                     its expiry and the machine's clock, and dynamodb.region"
                ))
            } else {
                pause(format!(
                    "DynamoDB refused the request ({said}): check dynamodb.table, \
                     dynamodb.region and the identity's permissions"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError;

    fn raw(status: u16, retry_after: Option<&str>) -> HttpResponse {
        let mut r = HttpResponse::new(
            status.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::from("{}"),
        );
        if let Some(v) = retry_after {
            r.headers_mut().insert("retry-after", v.to_owned());
        }
        r
    }

    fn service(status: u16, code: &str) -> SdkError<BatchWriteItemError, HttpResponse> {
        let err = BatchWriteItemError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("the message")
                .build(),
        );
        SdkError::service_error(err, raw(status, None))
    }

    fn outcome(e: &SdkError<BatchWriteItemError, HttpResponse>) -> WriteOutcome {
        classify_failure(&Failure::from_sdk(e), "audit", "eu-west-1")
    }

    fn kind(o: &WriteOutcome) -> &'static str {
        match o {
            WriteOutcome::Written => "written",
            WriteOutcome::Unprocessed(_) => "unprocessed",
            WriteOutcome::Retry { .. } => "retry",
            WriteOutcome::Invalid { .. } => "invalid",
            WriteOutcome::Pause { .. } => "pause",
        }
    }

    #[test]
    fn throttling_and_server_errors_retry() {
        for code in [
            "ProvisionedThroughputExceededException",
            "com.amazonaws.dynamodb.v20120810#ThrottlingException",
            "RequestLimitExceeded",
            "InternalServerError",
            "ServiceUnavailable",
        ] {
            let status = if code.contains("Internal") { 500 } else { 400 };
            assert_eq!(kind(&outcome(&service(status, code))), "retry", "{code}");
        }
        // Any 5xx, whatever the code; 429 from a proxy.
        assert_eq!(kind(&outcome(&service(503, "Whatever"))), "retry");
        assert_eq!(kind(&outcome(&service(429, ""))), "retry");
        let o = outcome(&service(400, "ThrottlingException"));
        assert!(
            matches!(&o, WriteOutcome::Retry { reason, .. } if reason.contains("ThrottlingException")),
            "{o:?}"
        );
    }

    #[test]
    fn timeouts_connection_failures_and_unreadable_answers_retry() {
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::timeout_error("operation timed out");
        assert_eq!(kind(&outcome(&e)), "retry");
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert_eq!(kind(&outcome(&e)), "retry");
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timeout".into()));
        assert_eq!(kind(&outcome(&e)), "retry");
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::response_error("not json", raw(502, Some("7")));
        assert_eq!(
            outcome(&e),
            WriteOutcome::Retry {
                reason: outcome(&e).reason().to_owned(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
    }

    #[test]
    fn an_unreadable_4xx_pauses_and_an_unreadable_429_retries() {
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::response_error("<html>", raw(404, None));
        assert_eq!(kind(&outcome(&e)), "pause");
        assert!(outcome(&e).reason().contains("dynamodb.endpoint_url"));
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::response_error("<html>", raw(429, Some("3")));
        assert_eq!(
            outcome(&e),
            WriteOutcome::Retry {
                reason: outcome(&e).reason().to_owned(),
                retry_after: Some(Duration::from_secs(3)),
            }
        );
    }

    #[test]
    fn a_validation_error_is_an_invalid_item() {
        let o = outcome(&service(400, "ValidationException"));
        assert!(
            matches!(&o, WriteOutcome::Invalid { reason } if reason.contains("the message")),
            "{o:?}"
        );
    }

    #[test]
    fn configuration_problems_pause_and_name_the_fix() {
        let o = outcome(&service(400, "ResourceNotFoundException"));
        assert_eq!(kind(&o), "pause");
        assert!(o.reason().contains("\"audit\"") && o.reason().contains("eu-west-1"));
        assert!(o.reason().contains("dynamodb create-table"), "{o:?}");
        let o = outcome(&service(400, "AccessDeniedException"));
        assert!(o.reason().contains("dynamodb:BatchWriteItem"), "{o:?}");
        for code in [
            "UnrecognizedClientException",
            "ExpiredTokenException",
            "InvalidSignatureException",
            "MissingAuthenticationToken",
        ] {
            let o = outcome(&service(400, code));
            assert_eq!(kind(&o), "pause", "{code}");
            assert!(o.reason().contains("credentials"), "{o:?}");
        }
        // A 4xx we do not know keeps the data.
        assert_eq!(
            kind(&outcome(&service(400, "SomethingNewException"))),
            "pause"
        );
        // No credentials in the chain, a request that cannot be built.
        let e: SdkError<BatchWriteItemError, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::other("no credentials in the chain".into(), None),
        );
        assert!(outcome(&e).reason().contains("credentials"));
        assert_eq!(kind(&outcome(&e)), "pause");
        let e: SdkError<BatchWriteItemError, HttpResponse> =
            SdkError::construction_failure("bad endpoint");
        assert_eq!(kind(&outcome(&e)), "pause");
    }

    impl WriteOutcome {
        fn reason(&self) -> &str {
            match self {
                WriteOutcome::Retry { reason, .. }
                | WriteOutcome::Invalid { reason }
                | WriteOutcome::Pause { reason } => reason,
                _ => "",
            }
        }
    }
}
