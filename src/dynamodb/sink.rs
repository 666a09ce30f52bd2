//! The DynamoDB delivery loop: DynamoDB's outbox in the spool -> `BatchWriteItem`.
//!
//! It reads up to [`READ_ROWS`] rows, turns each into an item ([`super::item::build`]; a record
//! that cannot be one, e.g. over the 400 KB item limit even compressed, is dead-lettered with the
//! reason), writes them in requests of [`MAX_BATCH_ITEMS`] with [`CONCURRENCY`] requests at a time,
//! and settles the whole range in the spool once every item is written or dead-lettered: one
//! commit per read, not per request.
//!
//! | answer | what happens |
//! | --- | --- |
//! | written | done |
//! | `UnprocessedItems` | those items again after a backoff, forever |
//! | throttled, 5xx, no answer | the request again after a backoff (or the server's hint), forever |
//! | `ValidationException` | each item of the request alone (`PutItem`); the one refused is dead-lettered |
//! | missing table, access denied, bad credentials | paused: health `failing` with the reason, retried slowly, resumed when fixed |
//!
//! Before its first write, and before it dead-letters an item DynamoDB refused, the loop checks
//! the table's keys and index (`DescribeTable`): a table laid out differently refuses every
//! item, and that pauses delivery rather than dead-lettering the backlog.
//!
//! # Why resends are harmless here
//! An item's key is the account and `eventTime#id`, so a resend (after a crash, a shutdown, a
//! lost answer) overwrites the same item with the same content: DynamoDB holds each record
//! once, whatever happened on the way. Nothing is settled before DynamoDB wrote it.
//!
//! This loop never delays HEC's (its own outbox, its own task), and HEC never delays it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::client::Dynamo;
use super::item::{self, Item};
use super::write::{MAX_BATCH_ITEMS, WriteOutcome};
use crate::config::{Destination, DynamoDbConfig};
use crate::retry::{RetryPolicy, cap_retry_after};
use crate::spool::{DeadLetter, Spool, SpoolError};
use crate::telemetry::{Component, Health, State, Stats};
use crate::time::now_ms;

/// Rows read, written and settled together: 20 requests' worth, one spool commit.
pub const READ_ROWS: usize = 500;
/// Requests in flight at once.
pub const CONCURRENCY: usize = 4;
/// How long one request may take before the watchdog hears from the loop again (the client's
/// own timeouts end it sooner).
const REQUEST_BOUND: Duration = Duration::from_secs(120);
/// With nothing to send, look again after this long even without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Why the loop stopped (only ever the spool failing until shutdown; DynamoDB's failures are
/// retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing waiting.
    Idle,
    /// Rows were written and settled.
    Progress,
    /// Shutdown came first; what was not settled stays spooled (and is resent, harmlessly).
    Stopped,
}

/// Delivers DynamoDB's outbox.
pub struct Sink {
    dynamo: Dynamo,
    /// The table was found with the keys and index the items need (checked before the first
    /// write; until then nothing is sent).
    verified: bool,
    ttl: Option<Duration>,
    spool: Spool,
    retry: RetryPolicy,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

/// What the concurrent requests share.
struct Ctx {
    dynamo: Dynamo,
    retry: RetryPolicy,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

impl Sink {
    /// A loop writing `spool`'s DynamoDB outbox through `dynamo` (connected from `cfg`).
    pub fn new(
        dynamo: Dynamo,
        cfg: &DynamoDbConfig,
        spool: Spool,
        retry: RetryPolicy,
        stats: Arc<Stats>,
        health: Arc<Health>,
    ) -> Self {
        Sink {
            dynamo,
            verified: false,
            ttl: cfg.ttl,
            spool,
            retry,
            stats,
            health,
        }
    }

    /// Delivers until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            crate::watchdog::beat();
            match self.step(&shutdown).await {
                Ok(Step::Progress) => continue,
                Ok(Step::Stopped) => return,
                Ok(Step::Idle) => {
                    crate::watchdog::waiting(IDLE_RECHECK);
                    tokio::select! {
                        _ = self.spool.wait_for_data(Destination::DynamoDb) => {}
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    let reason = format!(
                        "delivery to DynamoDB paused: {e}; check free disk space and the state directory's permissions"
                    );
                    if self
                        .health
                        .set(&Component::DynamoDb, State::Failing, Some(reason.clone()))
                    {
                        error!("{reason}");
                    }
                    if sleep_or_stop(Duration::from_secs(2), &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Delivers until DynamoDB's outbox is empty (or `shutdown`); for `once` and tests.
    pub async fn drain(&mut self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        loop {
            match self.step(shutdown).await? {
                Step::Progress => {}
                Step::Idle | Step::Stopped => return Ok(()),
            }
        }
    }

    /// Reads the head of the outbox, writes it, settles it.
    pub async fn step(&mut self, shutdown: &CancellationToken) -> Result<Step, SinkError> {
        let rows = self
            .spool
            .run(|s| s.read_batch_after(Destination::DynamoDb, 0, READ_ROWS, usize::MAX))
            .await?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(Step::Idle);
        };
        let range = (first.seq, last.seq);
        if !self.verified {
            // A table laid out differently refuses every item (a ValidationException each):
            // without this check the backlog would be dead-lettered item by item.
            let mut backoff = self.retry.backoff();
            loop {
                match self.check_table(shutdown).await {
                    None => return Ok(Step::Stopped),
                    Some(Ok(())) => break,
                    Some(Err(problem)) => {
                        self.ctx().trouble(State::Failing, &problem);
                        if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                            return Ok(Step::Stopped);
                        }
                    }
                }
            }
            self.verified = true;
        }
        let mut dead = Vec::new();
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            match item::build(&row.account, &row.record_id, &row.event, self.ttl) {
                Ok(item) => items.push((row.seq, item)),
                Err(e) => {
                    warn!(account = %row.account, record_id = %row.record_id,
                        "record moved to DynamoDB's dead letters: {e}");
                    dead.push(DeadLetter {
                        seq: row.seq,
                        reason: format!("dynamodb: {e}"),
                        hec_code: None,
                    });
                }
            }
        }
        drop(rows);
        let mut written = items.len() as u64;
        let ctx = self.ctx();
        // Concurrent in this task (not spawned): the watchdog follows every request and sleep.
        let mut chunks = items.chunks(MAX_BATCH_ITEMS);
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < CONCURRENCY {
                let Some(chunk) = chunks.next() else { break };
                running.push(deliver_chunk(&ctx, chunk.to_vec(), shutdown));
            }
            match running.next().await {
                None => break,
                Some(Some(refused)) => {
                    written -= refused.len() as u64;
                    dead.extend(refused);
                }
                // Shutdown: the rest stays spooled; what was written is overwritten with the same
                // item on the next run.
                Some(None) => return Ok(Step::Stopped),
            }
        }
        drop(running);
        let n_dead = dead.len() as u64;
        if self.settle(range, dead, shutdown).await? {
            return Ok(Step::Stopped);
        }
        Stats::add(&self.stats.dynamodb_items_written, written);
        Stats::add(&self.stats.dynamodb_dead_lettered, n_dead);
        self.stats
            .dynamodb_last_delivery_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        Ok(Step::Progress)
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            dynamo: self.dynamo.clone(),
            retry: self.retry,
            stats: self.stats.clone(),
            health: self.health.clone(),
        }
    }

    /// `DescribeTable`: the table's keys and index; `None` when shutdown came first.
    async fn check_table(&self, shutdown: &CancellationToken) -> Option<Result<(), String>> {
        self.ctx().check_table(shutdown).await
    }

    /// Records the range as delivered (and the refused rows as dead letters), retrying until
    /// it sticks: DynamoDB has the items, and writing them again because the bookkeeping failed
    /// would only cost requests. True when shutdown came first.
    async fn settle(
        &self,
        range: (i64, i64),
        dead: Vec<DeadLetter>,
        shutdown: &CancellationToken,
    ) -> Result<bool, SinkError> {
        let mut backoff = self.retry.backoff();
        loop {
            let d = dead.clone();
            match self
                .spool
                .run(move |s| s.settle(Destination::DynamoDb, Some(range), &d))
                .await
            {
                Ok(()) => return Ok(false),
                Err(e) => {
                    let reason = format!(
                        "cannot record items DynamoDB wrote in the spool ({e}); retrying (if the process stops now, they are written again, harmlessly)"
                    );
                    if self
                        .health
                        .set(&Component::DynamoDb, State::Failing, Some(reason.clone()))
                    {
                        error!("{reason}");
                    }
                    if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

/// Writes one request's items until each is written or refused; the refused come back as dead
/// letters. `None` when shutdown came first.
async fn deliver_chunk(
    ctx: &Ctx,
    mut items: Vec<(i64, Item)>,
    shutdown: &CancellationToken,
) -> Option<Vec<DeadLetter>> {
    let mut backoff = ctx.retry.backoff();
    let mut dead = Vec::new();
    while !items.is_empty() {
        let batch: Vec<Item> = items.iter().map(|(_, i)| i.clone()).collect();
        let outcome = request(ctx, shutdown, ctx.dynamo.write_batch(&batch)).await?;
        match outcome {
            WriteOutcome::Written => {
                ctx.accepting();
                return Some(dead);
            }
            WriteOutcome::Unprocessed(left) => {
                // Progress, but DynamoDB asks us to slow down: keep only what it left.
                Stats::add(&ctx.stats.dynamodb_unprocessed, left.len() as u64);
                ctx.accepting();
                let mut keep = vec![false; items.len()];
                for i in left {
                    if let Some(k) = keep.get_mut(i) {
                        *k = true;
                    }
                }
                let mut flags = keep.into_iter();
                items.retain(|_| flags.next().unwrap_or(false));
                if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                    return None;
                }
            }
            WriteOutcome::Invalid { reason } => {
                warn!(
                    "DynamoDB refused a request ({reason}): writing its {} items one at a time to find the refused one",
                    items.len()
                );
                let mut refused = Vec::new();
                for (seq, item) in std::mem::take(&mut items) {
                    if let Some(refusal) = put_alone(ctx, shutdown, &item).await? {
                        refused.push((seq, item, refusal));
                    }
                }
                if refused.is_empty() {
                    return Some(dead);
                }
                // Before anything is dead-lettered: is it the items, or the table (keys or an
                // index changed under us)? The table's fault pauses and keeps them all.
                match ctx.check_table(shutdown).await? {
                    Ok(()) => {
                        dead.extend(refused.into_iter().map(|(seq, _, refusal)| DeadLetter {
                            seq,
                            reason: format!("dynamodb refused the item: {refusal}"),
                            hec_code: None,
                        }));
                        return Some(dead);
                    }
                    Err(problem) => {
                        ctx.trouble(State::Failing, &problem);
                        items = refused
                            .into_iter()
                            .map(|(seq, item, _)| (seq, item))
                            .collect();
                        if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                            return None;
                        }
                    }
                }
            }
            WriteOutcome::Retry {
                reason,
                retry_after,
            } => {
                ctx.trouble(State::Degraded, &reason);
                let hint = retry_after.map(|d| ctx.hint(d));
                if sleep_or_stop(backoff.next_delay(hint), shutdown).await {
                    return None;
                }
            }
            WriteOutcome::Pause { reason } => {
                ctx.trouble(State::Failing, &reason);
                if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                    return None;
                }
            }
        }
    }
    Some(dead)
}

/// One item alone (`PutItem`) until DynamoDB writes or refuses it: `Some(reason)` when refused.
/// `None` (outer) when shutdown came first.
async fn put_alone(ctx: &Ctx, shutdown: &CancellationToken, item: &Item) -> Option<Option<String>> {
    let mut backoff = ctx.retry.backoff();
    loop {
        match request(ctx, shutdown, ctx.dynamo.put_one(item)).await? {
            WriteOutcome::Written | WriteOutcome::Unprocessed(_) => {
                ctx.accepting();
                return Some(None);
            }
            WriteOutcome::Invalid { reason } => return Some(Some(reason)),
            WriteOutcome::Retry {
                reason,
                retry_after,
            } => {
                ctx.trouble(State::Degraded, &reason);
                let hint = retry_after.map(|d| ctx.hint(d));
                if sleep_or_stop(backoff.next_delay(hint), shutdown).await {
                    return None;
                }
            }
            WriteOutcome::Pause { reason } => {
                ctx.trouble(State::Failing, &reason);
                if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// One request, counted and announced to the watchdog; `None` when shutdown came first.
async fn request(
    ctx: &Ctx,
    shutdown: &CancellationToken,
    fut: impl Future<Output = WriteOutcome>,
) -> Option<WriteOutcome> {
    Stats::add(&ctx.stats.dynamodb_requests, 1);
    let outcome = tokio::select! {
        o = crate::watchdog::within(REQUEST_BOUND, fut) => o,
        _ = shutdown.cancelled() => return None,
    };
    if !matches!(outcome, WriteOutcome::Written) {
        Stats::add(&ctx.stats.dynamodb_failures, 1);
    }
    Some(outcome)
}

impl Ctx {
    /// A server's `Retry-After` (DynamoDB sends none; a proxy may), capped at the backoff's
    /// longest step: four requests share the loop's one watchdog deadline, and a long sleep in
    /// one would be cut short by another's progress and read as a stall.
    fn hint(&self, d: Duration) -> Duration {
        cap_retry_after(d, "DynamoDB").min(self.retry.max)
    }

    /// `DescribeTable`: `Ok` when the table has the keys and index the items need, else what is
    /// wrong and how to fix it; `None` when shutdown came first.
    async fn check_table(&self, shutdown: &CancellationToken) -> Option<Result<(), String>> {
        Stats::add(&self.stats.dynamodb_requests, 1);
        let checked = tokio::select! {
            r = crate::watchdog::within(REQUEST_BOUND, super::table::verify_keys(&self.dynamo)) => r,
            _ = shutdown.cancelled() => return None,
        };
        Some(checked.map_err(|e| e.to_string()))
    }

    /// DynamoDB took items: health ok (logged when it changes).
    fn accepting(&self) {
        if self.health.set(&Component::DynamoDb, State::Ok, None) {
            info!("DynamoDB accepting items");
        }
    }

    /// A failed request: health with the reason (logged when it changes).
    fn trouble(&self, state: State, reason: &str) {
        if self
            .health
            .set(&Component::DynamoDb, state, Some(reason.to_string()))
        {
            match state {
                State::Failing => error!(
                    "delivery to DynamoDB paused (records stay spooled, retried until fixed): {reason}"
                ),
                _ => warn!("DynamoDB did not take a request (retrying): {reason}"),
            }
        }
    }
}

/// Sleeps `d` unless `shutdown` comes first; true when it did.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    crate::watchdog::waiting(d);
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
