//! One account's poller: windows, pages, spool commits.
//!
//! Each poll covers `[cursor - overlap, now - settle_delay]` (the first from
//! `now - initial_lookback`, never more than 180 days back), fetched page by page until a short or
//! empty page. Record order is undocumented (the simulator returns newest first), so a window is
//! complete only when all its pages are in: every page's records are committed as they arrive,
//! and the cursor moves to the window's end only in the same transaction as the last page. A crash
//! mid-window re-polls the window; the spool's id dedup absorbs the repeats. The overlap catches
//! records that become visible after a poll whose window already covered their `eventTime`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::client::{RcClient, RcError};
use super::model::SearchRequest;
use crate::config::{MAX_LOOKBACK, PollConfig};
use crate::spool::{NewRecord, Spool, SpoolError};
use crate::telemetry::{Health, State, Stats};
use crate::transform::{Transformer, inspect_record, rfc3339_millis};

/// `totalFound` at or above this draws a warning: the API returns at most 10,000 records.
pub const TOTAL_FOUND_WARNING: u64 = 9_000;
/// The API holds at most this many records per account.
pub const API_RECORD_LIMIT: u64 = 10_000;

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// RingCentral refused or is unavailable.
    #[error(transparent)]
    RingCentral(#[from] RcError),
    /// The spool could not store the page (disk full, I/O error); the cursor did not move.
    #[error(
        "cannot store records in the spool (the cursor did not move; the window will be polled again): {0}"
    )]
    Spool(#[from] SpoolError),
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowOutcome {
    /// A window was polled completely and its cursor committed.
    Polled {
        /// Window start (ms).
        from_ms: i64,
        /// Window end (ms), the new cursor.
        to_ms: i64,
        /// Pages fetched.
        pages: u32,
        /// Records received.
        records: usize,
        /// Records new to the spool.
        inserted: usize,
    },
    /// The window would be empty (polled too recently).
    NotDue,
    /// Polling is paused because the spool reached `spool.max_bytes`.
    SpoolFull {
        /// Bytes in use.
        used: u64,
    },
}

/// Polls one account into the spool.
pub struct Poller {
    client: RcClient,
    spool: Spool,
    transformer: Transformer,
    /// Account name: spool key and log field.
    account: String,
    poll: PollConfig,
    max_spool_bytes: u64,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

impl Poller {
    /// A poller for `account` writing to `spool`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account: &str,
        client: RcClient,
        spool: Spool,
        transformer: Transformer,
        poll: PollConfig,
        max_spool_bytes: u64,
        stats: Arc<Stats>,
        health: Arc<Health>,
    ) -> Self {
        Poller {
            client,
            spool,
            transformer,
            account: account.to_string(),
            poll,
            max_spool_bytes,
            stats,
            health,
        }
    }

    /// The health component name of this account.
    pub fn component(&self) -> String {
        format!("account:{}", self.account)
    }

    /// Polls the next window completely.
    pub async fn poll_window(&mut self) -> Result<WindowOutcome, PollError> {
        let used = self.spool.run(|s| s.used_bytes()).await?;
        if used >= self.max_spool_bytes {
            return Ok(WindowOutcome::SpoolFull { used });
        }
        let now = Utc::now();
        let account = self.account.clone();
        let cursor = self.spool.run(move |s| s.cursor(&account)).await?;
        let oldest = now - delta(MAX_LOOKBACK) + TimeDelta::minutes(5);
        let from = match cursor.and_then(DateTime::<Utc>::from_timestamp_millis) {
            Some(c) => c - delta(self.poll.overlap),
            None => now - delta(self.poll.initial_lookback),
        }
        .max(oldest);
        let to = now - delta(self.poll.settle_delay);
        if from >= to {
            return Ok(WindowOutcome::NotDue);
        }
        self.poll_range(from, to).await
    }

    /// Polls `[from, to]` completely and moves the cursor to `to`.
    pub async fn poll_range(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<WindowOutcome, PollError> {
        let page_size = self.poll.page_size;
        let max_pages = (API_RECORD_LIMIT / page_size as u64) as u32 + 2;
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        let mut req = SearchRequest {
            event_time_from: rfc3339_millis(from),
            event_time_to: rfc3339_millis(to),
            page: 1,
            per_page: page_size,
            include_admins: self.poll.include_admins,
            include_hidden: self.poll.include_hidden,
        };
        let (mut records, mut inserted) = (0usize, 0usize);
        loop {
            let page = self.client.search(&req).await?;
            if req.page == 1 {
                let found = page.paging.as_ref().and_then(|p| p.total_found);
                if let Some(found) = found.filter(|f| *f >= TOTAL_FOUND_WARNING) {
                    Stats::add(&self.stats.windows_near_limit, 1);
                    warn!(account = %self.account, total_found = found, from = %req.event_time_from, to = %req.event_time_to,
                        "a poll window holds {found} records; the API returns at most {API_RECORD_LIMIT} and may have lost records upstream: lower poll.interval");
                }
            }
            let n = page.records.len();
            let last = n < page_size as usize || req.page >= max_pages;
            if last && n >= page_size as usize {
                warn!(account = %self.account, pages = req.page,
                    "RingCentral kept returning full pages past its {API_RECORD_LIMIT}-record limit; treating this page as the last");
            }
            let poll_ms = Utc::now().timestamp_millis();
            let batch: Vec<NewRecord> = page
                .records
                .iter()
                .map(|raw| {
                    let meta = inspect_record(raw);
                    NewRecord {
                        event: self.transformer.event(raw, &meta, poll_ms),
                        record_id: meta.id,
                    }
                })
                .collect();
            let account = self.account.clone();
            let cursor = last.then_some(to_ms);
            let done = self
                .spool
                .run(move |s| s.enqueue_page(&account, &batch, cursor))
                .await?;
            records += n;
            inserted += done.inserted;
            Stats::add(&self.stats.records_polled, n as u64);
            Stats::add(&self.stats.records_spooled, done.inserted as u64);
            Stats::add(&self.stats.records_duplicate, done.duplicates as u64);
            if last {
                Stats::add(&self.stats.windows_completed, 1);
                return Ok(WindowOutcome::Polled {
                    from_ms,
                    to_ms,
                    pages: req.page,
                    records,
                    inserted,
                });
            }
            req.page += 1;
        }
    }

    /// Polls every `poll.interval` until `shutdown`. Never returns early: configuration problems
    /// are reported and retried at the poll interval, spool errors with a short pause.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let component = self.component();
        loop {
            let outcome = tokio::select! {
                r = self.poll_window() => r,
                _ = shutdown.cancelled() => return,
            };
            let wait = match outcome {
                Ok(WindowOutcome::Polled {
                    records,
                    inserted,
                    pages,
                    from_ms,
                    to_ms,
                }) => {
                    if self.health.set(&component, State::Ok, None) {
                        info!(account = %self.account, "polling ok");
                    }
                    info!(account = %self.account, records, new = inserted, pages,
                        window_s = (to_ms - from_ms) / 1000, "poll window complete");
                    self.poll.interval
                }
                Ok(WindowOutcome::NotDue) => self.poll.interval.min(Duration::from_secs(5)),
                Ok(WindowOutcome::SpoolFull { used }) => {
                    let reason = format!(
                        "spool full ({used} bytes in use, spool.max_bytes {}): polling paused until delivery frees space; RingCentral keeps 180 days, so nothing is lost",
                        self.max_spool_bytes
                    );
                    if self
                        .health
                        .set(&component, State::Degraded, Some(reason.clone()))
                    {
                        warn!(account = %self.account, "{reason}");
                    }
                    self.poll.interval.min(Duration::from_secs(5))
                }
                Err(PollError::RingCentral(e)) => {
                    let state = if e.is_config() {
                        State::Failing
                    } else {
                        State::Degraded
                    };
                    if self.health.set(&component, state, Some(e.to_string())) {
                        error!(account = %self.account, "polling stopped for this account: {e}; retrying every {}", humantime::format_duration(self.poll.interval));
                    }
                    self.poll.interval
                }
                Err(e @ PollError::Spool(_)) => {
                    if self
                        .health
                        .set(&component, State::Failing, Some(e.to_string()))
                    {
                        error!(account = %self.account, "{e}");
                    }
                    self.poll.interval.min(Duration::from_secs(10))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
