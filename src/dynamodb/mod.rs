//! AWS DynamoDB as a destination: the SDK client, one record -> one item, writes and their
//! classification, the table.
//!
//! ## Item layout
//!
//! One item per audit record, in one table:
//!
//! | attribute | type | what |
//! | --- | --- | --- |
//! | `account` | S, partition key | the account's name in the config (`rc_account` in Splunk) |
//! | `sk` | S, sort key | `<time>#<record id>`: the record's `eventTime` as RFC 3339 UTC with milliseconds (`2026-11-30T22:00:00.123Z`; the poll time when the record has none), `#`, the record's `id` (or the derived `sha256:...` id, as in Splunk) |
//! | `actionId` | S | the record's `actionId`; absent when the record has none, so the index holds only records with one |
//! | `eventType` | S | `eventType` |
//! | `initiatorName`, `initiatorId` | S | `initiator.name`, `initiator.extensionId` |
//! | `targetName`, `targetId` | S | `target.name`, `target.objectId` |
//! | `clientIp` | S | `clientIp`, when present |
//! | `record` | S | the record verbatim (RingCentral's JSON, byte for byte), up to 4 KB |
//! | `recordGz` | B | instead of `record` above 4 KB: the same bytes, gzip-compressed |
//! | `expiresAt` | N | with `dynamodb.ttl`: epoch seconds of the record's time plus the TTL |
//!
//! Global secondary index `byAction`: partition key `actionId`, sort key `sk`, projection ALL.
//!
//! Why this layout:
//! - **Exactly once.** The key is made of the record's account, time and id, which never change
//!   across resends (the time comes from the spooled event, not from the clock at sending). A
//!   resend after a timeout, a crash or a partial batch overwrites the same item with the same
//!   attributes, so the table holds each record once whatever happened on the way.
//! - **Queries users make.** "Everything of an account in a period" is one `Query` on the
//!   partition with `sk BETWEEN`: RFC 3339 UTC with fixed milliseconds sorts as time does.
//!   "All lockouts (one `actionId`) in a period" is one `Query` on `byAction`, the same way.
//!   Records without `actionId` stay out of the index (a sparse index costs nothing for them).
//! - **Never cut.** Large records are compressed rather than truncated (see
//!   [`item::COMPRESS_ABOVE`] for the threshold and why); a record over DynamoDB's 400 KB item
//!   limit even compressed is an [`item::ItemError::TooLarge`], which the sink dead-letters with
//!   the record kept in the spool.
//! - **Cheap.** On-demand capacity (no idle cost); the copied attributes make the item
//!   readable and filterable without parsing `record`; TTL lets DynamoDB delete old items for
//!   free.
//!
//! ## Writes
//! [`write::WriteOutcome`] is what the sink acts on; `write`'s module docs hold the table from
//! SDK errors to outcomes (the one classifier). The SDK's own retries are off: the sink retries
//! with [`crate::retry`] and counts every attempt.

pub mod client;
pub mod item;
pub mod sink;
pub mod table;
pub mod write;

pub use client::{Dynamo, connect, connect_with};
pub use item::{Item, ItemError, build};
pub use sink::Sink;
pub use table::{TableReport, create_table, verify};
pub use write::WriteOutcome;

use std::time::Duration;

/// What went wrong with the client or the table. Messages name the fix; none carries a secret
/// (the SDK's errors name credential providers, never keys).
#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
    /// The SDK client or a request could not be built.
    #[error("cannot build the DynamoDB client: {0}")]
    Client(String),
    /// The table does not exist.
    #[error(
        "DynamoDB table {table:?} does not exist in {region}: run `rc-audit-hec dynamodb create-table`, or fix dynamodb.table / dynamodb.region"
    )]
    TableMissing {
        /// The table name.
        table: String,
        /// The region.
        region: String,
    },
    /// The table's keys or index differ from what the forwarder writes.
    #[error("DynamoDB table {table:?}: {problem}")]
    Schema {
        /// The table name.
        table: String,
        /// What differs and the fix.
        problem: String,
    },
    /// `dynamodb.ttl` is set and the table's TTL setting does not match.
    #[error("DynamoDB table {table:?}: {problem}")]
    Ttl {
        /// The table name.
        table: String,
        /// What differs and the fix.
        problem: String,
    },
    /// `create-table` with `dynamodb.create_table = false`.
    #[error(
        "dynamodb.create_table is false: the table {table:?} is managed elsewhere, so the forwarder does not create it (remove the setting to let it)"
    )]
    CreateRefused {
        /// The table name.
        table: String,
    },
    /// The table did not become ACTIVE in time.
    #[error(
        "DynamoDB table {table:?} is not ACTIVE after {waited:?}: run the command again later (an index on a large table takes a while)"
    )]
    NotActive {
        /// The table name.
        table: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A call failed; `reason` is the classifier's text, which names the fix.
    #[error("DynamoDB {action} failed: {reason}")]
    Request {
        /// The API action.
        action: &'static str,
        /// Why, and the fix.
        reason: String,
    },
}
