//! The table: `create-table` (on-demand, the keys, the `byAction` index, TTL) and `check`'s
//! verification (`DescribeTable`, `DescribeTimeToLive`).

use std::fmt;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};

use crate::config::{DYNAMODB_TTL_ATTRIBUTE, DynamoDbConfig};

use super::DynamoError;
use super::client::Dynamo;
use super::item::{ACTION_ID, PARTITION_KEY, SORT_KEY};
use super::write::{WriteOutcome, classify};

/// The global secondary index by `actionId` and time.
pub const INDEX_NAME: &str = "byAction";

/// How long `create-table` waits for the table and its index to become ACTIVE (DynamoDB takes
/// seconds for an empty table; an index on a large existing table can take much longer, and the
/// command can simply be run again).
pub const WAIT_ACTIVE: Duration = Duration::from_secs(10 * 60);
const POLL: Duration = Duration::from_millis(500);

/// What `create-table` and `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// The table name.
    pub table: String,
    /// The region.
    pub region: String,
    /// DynamoDB's status (`ACTIVE`, ...).
    pub status: String,
    /// Whether this call created the table.
    pub created: bool,
    /// The `byAction` index's projection (`ALL` when created here).
    pub index_projection: String,
    /// The attribute DynamoDB expires items by, when TTL is on (or being turned on).
    pub ttl_attribute: Option<String>,
    /// Whether this call turned TTL on.
    pub ttl_enabled_now: bool,
}

impl fmt::Display for TableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.created { "created" } else { "exists" };
        writeln!(
            f,
            "DynamoDB table {} in {}: {verb}, {}",
            self.table, self.region, self.status
        )?;
        writeln!(
            f,
            "  keys: {PARTITION_KEY} (S, partition), {SORT_KEY} (S, sort); index {INDEX_NAME}: {ACTION_ID} + {SORT_KEY}, projection {}",
            self.index_projection
        )?;
        match &self.ttl_attribute {
            Some(a) if self.ttl_enabled_now => write!(f, "  TTL: turned on ({a})"),
            Some(a) => write!(f, "  TTL: on ({a})"),
            None => write!(f, "  TTL: off"),
        }
    }
}

/// Creates the table for `cfg` (on-demand capacity, keys `account` HASH + `sk` RANGE, the
/// `byAction` index with projection ALL), waits until it and the index are ACTIVE, and turns
/// TTL on when `dynamodb.ttl` is set. A table that exists with the right keys is fine (the call
/// is idempotent); one with other keys is an error.
pub async fn create_table(d: &Dynamo, cfg: &DynamoDbConfig) -> Result<TableReport, DynamoError> {
    if !cfg.create_table {
        return Err(DynamoError::CreateRefused {
            table: d.table.clone(),
        });
    }
    let mut created = false;
    if describe(d).await?.is_none() {
        let sent = create_request(d)?.send().await;
        match sent {
            Ok(_) => created = true,
            // Created meanwhile by someone else: wait for it like for ours.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(request_error("CreateTable", &classify(&e, d))),
        }
    }
    let desc = wait_active(d).await?;
    check_schema(d, &desc)?;
    let mut ttl_enabled_now = false;
    if cfg.ttl.is_some() {
        let (status, attribute) = ttl_state(d).await?;
        let on = matches!(
            status,
            TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling
        );
        if on && attribute.as_deref() != Some(DYNAMODB_TTL_ATTRIBUTE) {
            return Err(ttl_error(d, &attribute));
        }
        if !on {
            let spec = TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(DYNAMODB_TTL_ATTRIBUTE)
                .build()
                .map_err(|e| DynamoError::Client(e.to_string()))?;
            d.client
                .update_time_to_live()
                .table_name(d.table.clone())
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(|e| request_error("UpdateTimeToLive", &classify(&e, d)))?;
            ttl_enabled_now = true;
        }
    }
    let mut report = verify_description(d, cfg, &desc).await?;
    report.created = created;
    report.ttl_enabled_now = ttl_enabled_now;
    Ok(report)
}

/// Checks the table for `cfg`: it exists, its keys are `account` (S, HASH) + `sk` (S, RANGE),
/// it has the `byAction` index, and when `dynamodb.ttl` is set, TTL is on for `expiresAt`.
/// Each problem is an error that names it and the fix.
pub async fn verify(d: &Dynamo, cfg: &DynamoDbConfig) -> Result<TableReport, DynamoError> {
    let desc = describe(d)
        .await?
        .ok_or_else(|| DynamoError::TableMissing {
            table: d.table.clone(),
            region: d.region.clone(),
        })?;
    check_schema(d, &desc)?;
    verify_description(d, cfg, &desc).await
}

/// The table exists with the keys and index the forwarder writes (`DescribeTable` only; TTL is
/// not the sink's concern). The sink asks this before its first write and before it
/// dead-letters an item DynamoDB refused, so a table laid out differently (every item refused)
/// pauses delivery instead of dead-lettering the backlog.
pub async fn verify_keys(d: &Dynamo) -> Result<(), DynamoError> {
    let desc = describe(d)
        .await?
        .ok_or_else(|| DynamoError::TableMissing {
            table: d.table.clone(),
            region: d.region.clone(),
        })?;
    check_schema(d, &desc)
}

async fn verify_description(
    d: &Dynamo,
    cfg: &DynamoDbConfig,
    desc: &TableDescription,
) -> Result<TableReport, DynamoError> {
    let (status, attribute) = ttl_state(d).await?;
    let on = matches!(
        status,
        TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling
    );
    if cfg.ttl.is_some() && (!on || attribute.as_deref() != Some(DYNAMODB_TTL_ATTRIBUTE)) {
        return Err(ttl_error(d, &attribute.filter(|_| on)));
    }
    let index_projection = desc
        .global_secondary_indexes()
        .iter()
        .find(|i| i.index_name() == Some(INDEX_NAME))
        .and_then(|i| i.projection())
        .and_then(|p| p.projection_type())
        .map_or_else(|| "?".to_owned(), |p| p.as_str().to_owned());
    Ok(TableReport {
        table: d.table.clone(),
        region: d.region.clone(),
        status: desc
            .table_status()
            .map_or_else(|| "?".to_owned(), |s| s.as_str().to_owned()),
        created: false,
        index_projection,
        ttl_attribute: attribute.filter(|_| on),
        ttl_enabled_now: false,
    })
}

fn ttl_error(d: &Dynamo, other: &Option<String>) -> DynamoError {
    DynamoError::Ttl {
        table: d.table.clone(),
        problem: match other {
            Some(a) => format!(
                "TTL is on for attribute {a:?}, and a table has one TTL attribute; the forwarder writes {DYNAMODB_TTL_ATTRIBUTE:?}: turn TTL off on the table (or leave dynamodb.ttl out)"
            ),
            None => format!(
                "dynamodb.ttl is set but TTL is off on the table: run `rc-audit-hec dynamodb create-table`, or `aws dynamodb update-time-to-live --table-name {} --time-to-live-specification Enabled=true,AttributeName={DYNAMODB_TTL_ATTRIBUTE}`",
                d.table
            ),
        },
    }
}

fn request_error(action: &'static str, outcome: &WriteOutcome) -> DynamoError {
    let reason = match outcome {
        WriteOutcome::Retry { reason, .. }
        | WriteOutcome::Invalid { reason }
        | WriteOutcome::Pause { reason } => reason.clone(),
        WriteOutcome::Written | WriteOutcome::Unprocessed(_) => "no error".to_owned(),
    };
    DynamoError::Request { action, reason }
}

/// `DescribeTable`: `None` when the table does not exist.
async fn describe(d: &Dynamo) -> Result<Option<TableDescription>, DynamoError> {
    match d
        .client
        .describe_table()
        .table_name(d.table.clone())
        .send()
        .await
    {
        Ok(out) => Ok(out.table().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(request_error("DescribeTable", &classify(&e, d))),
    }
}

/// The TTL status and attribute (`DescribeTimeToLive`).
async fn ttl_state(d: &Dynamo) -> Result<(TimeToLiveStatus, Option<String>), DynamoError> {
    let out = d
        .client
        .describe_time_to_live()
        .table_name(d.table.clone())
        .send()
        .await
        .map_err(|e| request_error("DescribeTimeToLive", &classify(&e, d)))?;
    let desc = out.time_to_live_description();
    Ok((
        desc.and_then(|t| t.time_to_live_status().cloned())
            .unwrap_or(TimeToLiveStatus::Disabled),
        desc.and_then(|t| t.attribute_name()).map(str::to_owned),
    ))
}

async fn wait_active(d: &Dynamo) -> Result<TableDescription, DynamoError> {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(desc) = describe(d).await? {
            let table_active = desc.table_status() == Some(&TableStatus::Active);
            let indexes_active = desc
                .global_secondary_indexes()
                .iter()
                .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
            if table_active && indexes_active {
                return Ok(desc);
            }
        }
        if start.elapsed() >= WAIT_ACTIVE {
            return Err(DynamoError::NotActive {
                table: d.table.clone(),
                waited: WAIT_ACTIVE,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, DynamoError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| DynamoError::Client(e.to_string()))
}

fn string_attribute(name: &str) -> Result<AttributeDefinition, DynamoError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| DynamoError::Client(e.to_string()))
}

fn create_request(
    d: &Dynamo,
) -> Result<
    aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
    DynamoError,
> {
    let index = GlobalSecondaryIndex::builder()
        .index_name(INDEX_NAME)
        .key_schema(key(ACTION_ID, KeyType::Hash)?)
        .key_schema(key(SORT_KEY, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| DynamoError::Client(e.to_string()))?;
    Ok(d.client
        .create_table()
        .table_name(d.table.clone())
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attribute(PARTITION_KEY)?)
        .attribute_definitions(string_attribute(SORT_KEY)?)
        .attribute_definitions(string_attribute(ACTION_ID)?)
        .key_schema(key(PARTITION_KEY, KeyType::Hash)?)
        .key_schema(key(SORT_KEY, KeyType::Range)?)
        .global_secondary_indexes(index))
}

/// The keys and the index the forwarder needs, or the first thing that differs.
fn check_schema(d: &Dynamo, desc: &TableDescription) -> Result<(), DynamoError> {
    let string_typed = |name: &str| {
        desc.attribute_definitions()
            .iter()
            .any(|a| a.attribute_name() == name && a.attribute_type() == &ScalarAttributeType::S)
    };
    let keys_are = |schema: &[KeySchemaElement], hash: &str, range: &str| {
        schema.len() == 2
            && schema
                .iter()
                .any(|k| k.attribute_name() == hash && k.key_type() == &KeyType::Hash)
            && schema
                .iter()
                .any(|k| k.attribute_name() == range && k.key_type() == &KeyType::Range)
            && string_typed(hash)
            && string_typed(range)
    };
    if !keys_are(desc.key_schema(), PARTITION_KEY, SORT_KEY) {
        let found: Vec<String> = desc
            .key_schema()
            .iter()
            .map(|k| format!("{} ({})", k.attribute_name(), k.key_type().as_str()))
            .collect();
        return Err(DynamoError::Schema {
            table: d.table.clone(),
            problem: format!(
                "its key is {}, the forwarder writes {PARTITION_KEY} (S, HASH) + {SORT_KEY} (S, RANGE); a key cannot be changed: set dynamodb.table to a new table and run `rc-audit-hec dynamodb create-table`",
                found.join(" + ")
            ),
        });
    }
    let index = desc
        .global_secondary_indexes()
        .iter()
        .find(|i| i.index_name() == Some(INDEX_NAME));
    match index {
        Some(i) if keys_are(i.key_schema(), ACTION_ID, SORT_KEY) => Ok(()),
        Some(_) => Err(DynamoError::Schema {
            table: d.table.clone(),
            problem: format!(
                "its index {INDEX_NAME} is not keyed {ACTION_ID} (S, HASH) + {SORT_KEY} (S, RANGE): delete the index and run `rc-audit-hec dynamodb create-table` again"
            ),
        }),
        None => Err(DynamoError::Schema {
            table: d.table.clone(),
            problem: format!(
                "it has no index {INDEX_NAME} ({ACTION_ID} + {SORT_KEY}), which queries by action use: add it with `aws dynamodb update-table --table-name {} --attribute-definitions AttributeName={ACTION_ID},AttributeType=S AttributeName={SORT_KEY},AttributeType=S --global-secondary-index-updates '[{{\"Create\":{{\"IndexName\":\"{INDEX_NAME}\",\"KeySchema\":[{{\"AttributeName\":\"{ACTION_ID}\",\"KeyType\":\"HASH\"}},{{\"AttributeName\":\"{SORT_KEY}\",\"KeyType\":\"RANGE\"}}],\"Projection\":{{\"ProjectionType\":\"ALL\"}}}}}}]'`",
                d.table
            ),
        }),
    }
}
