//! The Splunk side: the delivery loop ([`Sink`]), the HTTP client, batching and the one response
//! classifier.
//!
//! The sink streams from the spool: it holds one batch in memory, sends it until HEC decides,
//! and settles the outcome in the spool before reading the next. What each outcome does:
//!
//! | outcome | spool |
//! | --- | --- |
//! | accepted | batch deleted (the only way a record leaves the outbox) |
//! | bad event k | events before k deleted (HEC indexed them), k dead-lettered, the rest resent |
//! | bad event, index unknown | the batch is resent one event at a time to find it |
//! | 413 too large | the batch is split in halves; a single over-size event is dead-lettered |
//! | retry (5xx, 429, timeout, down) | same batch again after backoff or `Retry-After`, forever |
//! | pause (token, URL) | same batch again, slowly; health says why; resumes when fixed |
//!
//! A batch abandoned by shutdown or a crash stays in the spool and is sent again on restart: the
//! one way a duplicate can reach Splunk (at most one batch per such event).

pub mod batch;
pub mod client;
mod observe;
pub mod response;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::batch::{build_body, validate_event};
use self::client::HecClient;
use self::response::Outcome;
use crate::config::HecConfig;
use crate::retry::RetryPolicy;
use crate::spool::{DeadLetter, Spool, SpoolError, Spooled};
use crate::telemetry::{Health, State, Stats};

pub use self::client::HecError;

/// The health component name of the sink.
pub const COMPONENT: &str = "hec";

/// Why the sink stopped (only ever shutdown; delivery failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The spool failed in a way retries did not fix before shutdown.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Delivers spooled events to HEC.
pub struct Sink {
    client: HecClient,
    spool: Spool,
    max_events: usize,
    max_bytes: usize,
    gzip: bool,
    retry: RetryPolicy,
    stats: Arc<Stats>,
    health: Arc<Health>,
    /// Current events-per-batch limit: halved on 413, grows back on success.
    limit: usize,
    /// Events still to send one by one to find a bad event HEC did not name.
    isolate: usize,
}

/// What one delivery step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The spool was empty.
    Idle,
    /// A batch was settled (accepted, dead-lettered or split).
    Progress,
    /// Shutdown was requested while a batch was in flight; it stays spooled.
    Stopped,
}

impl Sink {
    /// A sink delivering from `spool` with the settings in `cfg`.
    pub fn new(
        cfg: &HecConfig,
        spool: Spool,
        retry: RetryPolicy,
        stats: Arc<Stats>,
        health: Arc<Health>,
    ) -> Result<Sink, HecError> {
        Ok(Sink {
            client: HecClient::new(cfg)?,
            spool,
            max_events: cfg.batch_max_events,
            max_bytes: cfg.batch_max_bytes,
            gzip: cfg.gzip,
            retry,
            stats,
            health,
            limit: cfg.batch_max_events,
            isolate: 0,
        })
    }

    /// Checks every HEC URL's health endpoint with the token and logs the result.
    pub async fn log_health(&self) {
        for (url, result) in self.client.health().await {
            match result {
                Ok(()) => info!(%url, "HEC is healthy and accepts the token"),
                Err(reason) => {
                    warn!(%url, "HEC health check failed (delivery will retry): {reason}")
                }
            }
        }
    }

    /// Delivers continuously until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.log_health().await;
        loop {
            crate::watchdog::beat();
            match self.step(&shutdown).await {
                Ok(Step::Progress) => continue,
                Ok(Step::Stopped) => return,
                Ok(Step::Idle) => {
                    tokio::select! {
                        _ = self.spool.wait_for_data() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    if self
                        .health
                        .set(COMPONENT, State::Failing, Some(e.to_string()))
                    {
                        error!(
                            "delivery paused: {e}; check free disk space and the state directory's permissions"
                        );
                    }
                    if sleep_or_stop(Duration::from_secs(2), &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Delivers until the spool is empty (or `shutdown`); for `once` and tests.
    pub async fn drain(&mut self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        loop {
            match self.step(shutdown).await? {
                Step::Progress => {}
                Step::Idle | Step::Stopped => return Ok(()),
            }
        }
    }

    /// Reads the next batch and keeps at it until HEC decides its fate.
    pub async fn step(&mut self, shutdown: &CancellationToken) -> Result<Step, SinkError> {
        let limit = if self.isolate > 0 { 1 } else { self.limit };
        let max_bytes = self.max_bytes;
        let batch = self
            .spool
            .run(move |s| s.read_batch(limit, max_bytes))
            .await?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        // Local validation: what HEC would refuse goes to dead letters now, with the reason.
        let (good, bad): (Vec<Spooled>, Vec<Spooled>) = batch
            .into_iter()
            .partition(|e| validate_event(&e.event).is_ok());
        if !bad.is_empty() {
            let dead: Vec<DeadLetter> = bad
                .iter()
                .map(|e| DeadLetter {
                    seq: e.seq,
                    reason: format!(
                        "failed local validation: {}",
                        validate_event(&e.event).err().unwrap_or_default()
                    ),
                    hec_code: None,
                })
                .collect();
            self.dead_letter(&bad, dead).await?;
            return Ok(Step::Progress);
        }
        let body = match build_body(good.iter().map(|e| e.event.as_slice()), self.gzip) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                // Only an allocation failure can get here; retrying is all we can do.
                warn!("cannot build a request body: {e}; retrying (check the host's free memory)");
                return Ok(Step::Progress);
            }
        };
        let mut backoff = self.retry.backoff();
        loop {
            crate::watchdog::beat();
            Stats::add(&self.stats.hec_requests, 1);
            let (url, outcome) = tokio::select! {
                r = self.client.send(body.clone()) => r,
                _ = shutdown.cancelled() => return Ok(Step::Stopped),
            };
            self.observe(&url, &outcome, good.len());
            let (first, last) = (good[0].seq, good[good.len() - 1].seq);
            match outcome {
                Outcome::Accepted => {
                    self.spool
                        .run(move |s| s.settle(Some((first, last)), &[]))
                        .await?;
                    Stats::add(&self.stats.events_delivered, good.len() as u64);
                    if self.health.set(COMPONENT, State::Ok, None) {
                        info!(%url, "HEC accepting events");
                    }
                    self.limit = (self.limit * 2).min(self.max_events);
                    self.isolate = self.isolate.saturating_sub(good.len());
                    return Ok(Step::Progress);
                }
                Outcome::BadEvent {
                    index,
                    code,
                    reason,
                } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    match index.filter(|k| *k < good.len()) {
                        Some(k) => {
                            // HEC indexed 0..k; k is bad; k+1.. are resent by the next step.
                            let accepted = (k > 0).then(|| (first, good[k - 1].seq));
                            let dead = DeadLetter {
                                seq: good[k].seq,
                                reason: reason.clone(),
                                hec_code: Some(code),
                            };
                            self.spool.run(move |s| s.settle(accepted, &[dead])).await?;
                            Stats::add(&self.stats.events_delivered, k as u64);
                            Stats::add(&self.stats.events_dead_lettered, 1);
                            warn!(%url, record_id = %good[k].record_id, account = %good[k].account,
                                "HEC refused one event; moved it to dead letters (see `rc-audit-hec spool dead-letters`): {reason}");
                            self.isolate = self.isolate.saturating_sub(k + 1);
                        }
                        None if good.len() == 1 => {
                            let dead = vec![DeadLetter {
                                seq: first,
                                reason,
                                hec_code: Some(code),
                            }];
                            self.dead_letter(&good, dead).await?;
                            self.isolate = self.isolate.saturating_sub(1);
                        }
                        None => {
                            warn!(%url, events = good.len(),
                                "HEC refused an event without saying which (code {code}); resending this batch one event at a time to find it");
                            self.isolate = good.len();
                        }
                    }
                    return Ok(Step::Progress);
                }
                Outcome::TooLarge => {
                    Stats::add(&self.stats.hec_failures, 1);
                    if good.len() == 1 {
                        let dead = vec![DeadLetter {
                            seq: first,
                            reason: format!(
                                "HTTP 413: a single event of {} bytes is larger than HEC's max_content_length",
                                good[0].event.len()
                            ),
                            hec_code: None,
                        }];
                        self.dead_letter(&good, dead).await?;
                    } else {
                        self.limit = (good.len() / 2).max(1);
                        warn!(%url, events = good.len(), "HEC says the request is too large (413): splitting; lower hec.batch_max_bytes to match Splunk's max_content_length");
                    }
                    return Ok(Step::Progress);
                }
                Outcome::Retry {
                    retry_after,
                    reason,
                } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    let delay = backoff.next_delay(retry_after);
                    if self
                        .health
                        .set(COMPONENT, State::Degraded, Some(reason.clone()))
                        || backoff.attempts().is_multiple_of(20)
                    {
                        warn!(%url, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64,
                            "HEC delivery failed, will retry (events stay spooled): {reason}");
                    }
                    if sleep_or_stop(delay, shutdown).await {
                        return Ok(Step::Stopped);
                    }
                }
                Outcome::Pause { reason } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    let delay = backoff.next_delay(None);
                    if self
                        .health
                        .set(COMPONENT, State::Failing, Some(reason.clone()))
                    {
                        error!(%url, "HEC delivery paused, events stay spooled: {reason}");
                    }
                    if sleep_or_stop(delay, shutdown).await {
                        return Ok(Step::Stopped);
                    }
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        events: &[Spooled],
        dead: Vec<DeadLetter>,
    ) -> Result<(), SinkError> {
        for (e, d) in events.iter().zip(&dead) {
            warn!(record_id = %e.record_id, account = %e.account, "event moved to dead letters: {}", d.reason);
        }
        let n = dead.len() as u64;
        self.spool.run(move |s| s.settle(None, &dead)).await?;
        Stats::add(&self.stats.events_dead_lettered, n);
        Ok(())
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
