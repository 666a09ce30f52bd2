//! The SDK client, built from `[dynamodb]`: region, optional endpoint, the standard credential
//! chain, the SDK's own retries off.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{Credentials, ProvideCredentials, Region};

use crate::config::DynamoDbConfig;

use super::DynamoError;

/// Connecting: a DNS name that does not answer or a firewall that drops packets shows within
/// this; the sink's backoff then takes over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, answer included. A `BatchWriteItem` carries at most 25 items of 400 KB (10 MB);
/// DynamoDB answers in milliseconds, so a minute only ever runs out on a broken path.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The client and the table it writes to. Cheap to clone (the SDK client is reference-counted).
#[derive(Debug, Clone)]
pub struct Dynamo {
    pub(crate) client: aws_sdk_dynamodb::Client,
    pub(crate) table: String,
    pub(crate) region: String,
}

impl Dynamo {
    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The region, as configured.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The SDK client, for calls this module does not wrap.
    pub fn sdk(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }
}

/// The client for `cfg`, with credentials from the standard AWS chain: the environment
/// (`AWS_ACCESS_KEY_ID`, ...), the shared profile (`AWS_PROFILE`, `~/.aws`), web identity
/// (`AWS_WEB_IDENTITY_TOKEN_FILE`, EKS), the ECS container endpoint and EC2 instance metadata.
/// Credentials are resolved on the first request, not here, so a missing one shows as a paused
/// destination (and in `check`), not as a failed start.
pub async fn connect(cfg: &DynamoDbConfig) -> Result<Dynamo, DynamoError> {
    connect_with(cfg, None::<Credentials>).await
}

/// [`connect`] with the given credentials provider instead of the chain (tests against a local
/// DynamoDB, which takes any key).
pub async fn connect_with(
    cfg: &DynamoDbConfig,
    credentials: Option<impl ProvideCredentials + 'static>,
) -> Result<Dynamo, DynamoError> {
    // The SDK's retries are off: the sink retries with the project's one backoff helper, and
    // counts and reports every attempt; two retry layers would multiply each other's waits and
    // hide throttling from the metrics.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(OPERATION_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(DynamoError::Client(
            "no AWS region: set dynamodb.region".into(),
        ));
    }
    Ok(Dynamo {
        client: aws_sdk_dynamodb::Client::new(&shared),
        table: cfg.table.clone(),
        region: cfg.region.clone(),
    })
}
