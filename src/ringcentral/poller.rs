//! One account's poller: windows, pages, spool commits.
//!
//! Each poll covers `[cursor - overlap, now - settle_delay]` (the first from
//! `now - initial_lookback`, never more than 180 days back), fetched page by page until the
//! paging information says the window is done. "Now" is RingCentral's clock (see
//! [`super::clock`]): a cursor is never committed past it, and one found ahead of it (left by a
//! clock that jumped) is pulled back.
//!
//! A window is complete only when its pages prove it: an empty page while `paging` says more
//! pages follow is asked again, then the window is left open (cursor not moved) with a warning.
//! A window whose pages are complete but hold fewer records than `totalFound` says is committed
//! with a warning (RingCentral's count can be off by one); only a window holding more than one
//! search can return is split, and never below [`MIN_SPLIT`].
//!
//! Record order is undocumented (the simulator returns newest first), so a window is complete
//! only when all its pages are in: every page's records are committed as they arrive,
//! and the cursor moves to the window's end only in the same transaction as the last page. A crash
//! mid-window re-polls the window; the spool's id dedup absorbs the repeats. The overlap catches
//! records that become visible after a poll whose window already covered their `eventTime`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::client::{RcClient, RcError};
use super::clock::{SKEW_DEGRADED, rc_now};
use super::model::{SearchPage, SearchRequest};
use crate::config::{MAX_LOOKBACK, PollConfig, ReconcileConfig};
use crate::reconcile::{Count, Period, Reconciliation};
use crate::spool::{LedgerEntry, NewRecord, Spool, SpoolError, WindowKind};
use crate::telemetry::{AccountStats, Component, Health, State, Stats};
use crate::time::rfc3339_millis;
use crate::transform::{Transformer, inspect_record};

/// The largest backfill piece polled (and recorded as done) at a time, by the service's pollers
/// and by the `backfill` command alike (re-exported as `backfill::CHUNK`): a piece interrupted
/// costs at most this much polling again.
pub const BACKFILL_CHUNK: Duration = Duration::from_secs(24 * 3600);

/// `totalFound` at or above this draws a warning: the API returns at most 10,000 records.
pub const TOTAL_FOUND_WARNING: u64 = 9_000;
/// The API holds at most this many records per account.
pub const API_RECORD_LIMIT: u64 = 10_000;
/// The shortest window split in two: a window of a second holding more than 10,000 records is
/// not a real account, and halving down to a millisecond cost 1,029 searches in 40 s once.
pub const MIN_SPLIT: TimeDelta = TimeDelta::seconds(1);
/// How often an empty page that `paging` contradicts is asked again before the window is left
/// open.
pub const PAGE_RECHECKS: u32 = 2;

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// RingCentral refused or is unavailable.
    #[error(transparent)]
    RingCentral(#[from] RcError),
    /// The spool could not store the page (disk full, I/O error); the cursor did not move.
    #[error(
        "cannot store records in the spool (the cursor did not move; the window will be polled again): {0}; check free disk space and the state directory's permissions"
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
    /// Polling is paused: the spool reached `spool.max_bytes`, its filesystem is short of
    /// `spool.min_free_bytes`, or its file is gone ([`crate::spool::Spool::room_to_poll`]).
    SpoolFull {
        /// Why, with what to do.
        reason: String,
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
    /// Reconciliation of closed periods, between live windows.
    reconcile: ReconcileConfig,
    /// No reconciliation is tried before this: after one failed (the live poll reports the
    /// account's problems) or found nothing due, it waits a poll interval.
    reconcile_after: Instant,
    max_spool_bytes: u64,
    stats: Arc<Stats>,
    /// This account's share of the counters (per-account metrics).
    acct: Arc<AccountStats>,
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
        reconcile: ReconcileConfig,
        max_spool_bytes: u64,
        stats: Arc<Stats>,
        health: Arc<Health>,
    ) -> Self {
        Poller {
            client: client.with_health(health.clone(), Component::Account(account.to_string())),
            spool,
            transformer,
            account: account.to_string(),
            poll,
            reconcile,
            reconcile_after: Instant::now(),
            max_spool_bytes,
            acct: stats.account(account),
            stats,
            health,
        }
    }

    /// The health component of this account.
    pub fn component(&self) -> Component {
        Component::Account(self.account.clone())
    }

    /// Polls the next window completely.
    pub async fn poll_window(&mut self) -> Result<WindowOutcome, PollError> {
        let max = self.max_spool_bytes;
        if let Some(full) = self.spool.run(move |s| s.room_to_poll(max)).await? {
            return Ok(WindowOutcome::SpoolFull { reason: full.0 });
        }
        let account = self.account.clone();
        let cursor = self.spool.run(move |s| s.cursor(&account)).await?;
        // RingCentral's clock bounds the window; before its first answer, get a token (whose
        // answer carries a `Date`) so even the first window is measured.
        if self.client.skew().is_none() {
            self.client.authenticate().await?;
        }
        self.report_skew();
        let now = self.rc_now();
        let cursor = cursor.map(|c| self.pull_back(c, now));
        match next_window(cursor, now, &self.poll) {
            Some((from, to)) => self.poll_range(from, to).await,
            None => Ok(WindowOutcome::NotDue),
        }
    }

    /// RingCentral's now, by the local clock corrected for the measured skew.
    fn rc_now(&self) -> DateTime<Utc> {
        rc_now(self.client.clock().now(), self.client.skew())
    }

    /// A cursor ahead of RingCentral's clock (left by a local clock that ran ahead and was
    /// corrected) would skip every record until RingCentral's clock caught up: pull it back to
    /// where a window would end now, so the next window (with its overlap) covers the records.
    fn pull_back(&self, cursor: i64, now: DateTime<Utc>) -> i64 {
        let end = (now - delta(self.poll.settle_delay)).timestamp_millis();
        if cursor <= end {
            return cursor;
        }
        Stats::add(&self.acct.cursors_pulled_back, 1);
        warn!(account = %self.account, cursor = %crate::time::ms_rfc3339(cursor).unwrap_or_default(), ringcentral_now = %rfc3339_millis(now),
            "the cursor is {}s ahead of RingCentral's clock (this host's clock was ahead when it was saved); pulling it back so no record is skipped",
            (cursor - end) / 1000);
        end
    }

    /// Polls `[from, to]` completely and moves the cursor to `to`.
    pub async fn poll_range(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<WindowOutcome, PollError> {
        self.fetch(from, to, WindowKind::Live).await
    }

    /// Polls the past range `[from, to]` completely into the spool **without touching the
    /// cursor** (backfill): same client (so the same rate limiter), same transform, same spool
    /// dedup as live polling. Pauses like live polling when the spool is full.
    pub async fn backfill_range(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<WindowOutcome, PollError> {
        let max = self.max_spool_bytes;
        if let Some(full) = self.spool.run(move |s| s.room_to_poll(max)).await? {
            return Ok(WindowOutcome::SpoolFull { reason: full.0 });
        }
        self.fetch(from, to, WindowKind::Backfill).await
    }

    /// The account's name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Fetches every page of `[from, to]` into the spool; a live window moves the cursor to
    /// `to` with the last page, and every window is recorded in the ledger with it.
    async fn fetch(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        kind: WindowKind,
    ) -> Result<WindowOutcome, PollError> {
        let live = kind == WindowKind::Live;
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        let mut pager = Pager::new(&self.account, from, to, &self.poll);
        let (mut records, mut inserted, mut duplicates) = (0usize, 0usize, 0usize);
        // New to the spool, dead-lettered ones included (the ledger's "new").
        let mut fresh = 0usize;
        loop {
            let next = match pager.next(&mut self.client, &self.stats).await {
                Ok(next) => next,
                Err(e @ RcError::Inconsistent { .. }) => {
                    Stats::add(&self.acct.windows_unproven, 1);
                    warn!(account = %self.account, from = %rfc3339_millis(from), to = %rfc3339_millis(to),
                        "window left open, its cursor not moved: {e}");
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            let Some((page, last)) = next else { break };
            // Too many records for one search (`totalFound` above the limit, or the page budget
            // spent with records left): halve the window (each half commits its own end) rather
            // than move the cursor past records never fetched. Not below `MIN_SPLIT`.
            let splittable = to - from >= MIN_SPLIT;
            if pager.needs_split() && splittable {
                info!(account = %self.account, total_found = pager.found, fetched = pager.fetched,
                    "a poll window holds more than one search can return: splitting it in two");
                return self.fetch_split(from, to, kind, (records, inserted)).await;
            }
            if last && pager.needs_split() {
                warn!(account = %self.account, total_found = pager.found, fetched = pager.fetched,
                    "RingCentral reported more records than one search returns for a window too short to split: some may be missing; lower poll.interval");
            } else if last && pager.count_mismatch() {
                Stats::add(&self.acct.windows_count_mismatch, 1);
                warn!(account = %self.account, total_found = pager.found, fetched = pager.fetched,
                    from = %rfc3339_millis(from), to = %rfc3339_millis(to),
                    "RingCentral's pages for this window are complete but hold fewer records than its totalFound; committing the window (its count can be off). If this repeats, compare with RingCentral's admin portal");
            }
            let n = page.records.len();
            let batch = new_records(&self.transformer, &page);
            let account = self.account.clone();
            // Never past RingCentral's now (the window was bounded by it; this guards the
            // first window, measured while it ran).
            let cursor = (last && live).then(|| to_ms.min(self.rc_now().timestamp_millis()));
            let window = last.then(|| LedgerEntry {
                kind,
                from_ms,
                to_ms: cursor.unwrap_or(to_ms),
                total_found: pager.found,
                pages: pager.pages(),
                records: (records + n) as u64,
                inserted: fresh as u64,
                duplicates: duplicates as u64,
            });
            let done = self
                .spool
                .run(move |s| s.enqueue_window_page(&account, &batch, cursor, window.as_ref()))
                .await?;
            records += n;
            inserted += done.inserted;
            fresh += done.inserted + done.dead_lettered;
            duplicates += done.duplicates;
            Stats::add(&self.stats.records_polled, n as u64);
            Stats::add(&self.stats.records_spooled, done.inserted as u64);
            Stats::add(&self.stats.records_duplicate, done.duplicates as u64);
            if done.dead_lettered > 0 {
                Stats::add(&self.stats.events_dead_lettered, done.dead_lettered as u64);
                warn!(account = %self.account, count = done.dead_lettered,
                    "records HEC would refuse (see `rc-audit-hec spool dead-letters`) went to the dead letters when spooled");
            }
            Stats::add(&self.acct.records_polled, n as u64);
            Stats::add(&self.acct.records_spooled, done.inserted as u64);
            Stats::add(&self.acct.records_duplicate, done.duplicates as u64);
            if last {
                if live {
                    Stats::add(&self.stats.windows_completed, 1);
                    Stats::add(&self.acct.windows_completed, 1);
                    self.acct
                        .last_poll_ms
                        .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
                }
                return Ok(WindowOutcome::Polled {
                    from_ms,
                    to_ms,
                    pages: pager.pages(),
                    records,
                    inserted,
                });
            }
        }
        // `Pager::next` only ends after a last page, which returned above.
        Ok(WindowOutcome::Polled {
            from_ms,
            to_ms,
            pages: pager.pages(),
            records,
            inserted,
        })
    }

    /// Fetches `[from, mid]` then `[mid, to]`: the earlier half first, so a live cursor only
    /// ever moves over records stored.
    /// `so_far` carries what the incomplete pass already stored, so the outcome counts it.
    fn fetch_split<'a>(
        &'a mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        kind: WindowKind,
        so_far: (usize, usize),
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<WindowOutcome, PollError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let mid = from + (to - from) / 2;
            let first = self.fetch(from, mid, kind).await?;
            let second = self.fetch(mid, to, kind).await?;
            Ok(match (first, second) {
                (
                    WindowOutcome::Polled {
                        from_ms,
                        pages: p1,
                        records: r1,
                        inserted: i1,
                        ..
                    },
                    WindowOutcome::Polled {
                        to_ms,
                        pages: p2,
                        records: r2,
                        inserted: i2,
                        ..
                    },
                ) => WindowOutcome::Polled {
                    from_ms,
                    to_ms,
                    pages: p1 + p2,
                    records: so_far.0 + r1 + r2,
                    inserted: so_far.1 + i1 + i2,
                },
                (_, other) => other,
            })
        })
    }

    /// Polls every `poll.interval` until `shutdown`. Never returns early: configuration problems
    /// are reported and retried at the poll interval, spool errors with a short pause.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let component = self.component();
        let mut next_live = Instant::now();
        loop {
            crate::watchdog::beat();
            if Instant::now() >= next_live {
                // Boxed: the poll's state (about 3 kB) exists only while an account polls, not
                // while 10,000 idle pollers wait for their next window.
                let wait = Box::pin(self.live_step(&component, &shutdown)).await;
                let Some(wait) = wait else { return };
                next_live = Instant::now() + wait;
            }
            // Between live windows: one piece of a backfill the service was asked to do, through
            // this same client (so within the same rate limits).
            let did_piece = tokio::select! {
                r = Box::pin(self.backfill_step()) => r,
                _ = shutdown.cancelled() => return,
            };
            if did_piece {
                continue;
            }
            // Then one closed period's reconciliation, if one is due.
            let did_period = tokio::select! {
                r = Box::pin(self.reconcile_step()) => r,
                _ = shutdown.cancelled() => return,
            };
            if did_period {
                continue;
            }
            let wait = next_live
                .saturating_duration_since(Instant::now())
                .min(BACKFILL_CHECK);
            crate::watchdog::waiting(wait);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Polls the next live window and reports the outcome; returns how long to wait before the
    /// next one, or `None` on shutdown.
    async fn live_step(
        &mut self,
        component: &Component,
        shutdown: &CancellationToken,
    ) -> Option<Duration> {
        let outcome = tokio::select! {
            r = self.poll_window() => r,
            _ = shutdown.cancelled() => return None,
        };
        let wait = match outcome {
            Ok(WindowOutcome::Polled {
                records,
                inserted,
                pages,
                from_ms,
                to_ms,
            }) => {
                if self.health.set(component, State::Ok, None) {
                    info!(account = %self.account, "polling ok");
                }
                info!(account = %self.account, records, new = inserted, pages,
                    window_s = (to_ms - from_ms) / 1000, "poll window complete");
                self.poll.interval
            }
            Ok(WindowOutcome::NotDue) => self.poll.interval.min(Duration::from_secs(5)),
            Ok(WindowOutcome::SpoolFull { reason }) => {
                let reason = format!(
                    "{reason}: polling paused until delivery frees space; RingCentral keeps 180 days, so nothing is lost"
                );
                if self
                    .health
                    .set(component, State::Degraded, Some(reason.clone()))
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
                if self.health.set(component, state, Some(e.to_string())) {
                    error!(account = %self.account, "polling stopped for this account: {e}; retrying every {}", humantime::format_duration(self.poll.interval));
                }
                self.poll.interval
            }
            Err(e @ PollError::Spool(_)) => {
                if self
                    .health
                    .set(component, State::Failing, Some(e.to_string()))
                {
                    error!(account = %self.account, "{e}");
                }
                self.poll.interval.min(Duration::from_secs(10))
            }
        };
        Some(wait)
    }

    /// Shows a clock skew above [`SKEW_DEGRADED`] as a degraded `clock:<account>` in
    /// `/healthz` (windows are corrected, but the host's time service needs a look).
    fn report_skew(&self) {
        let component = Component::Clock(self.account.clone());
        match self.client.skew() {
            Some(s) if s.abs() > SKEW_DEGRADED => {
                let reason = format!(
                    "this host's clock is {}s {} RingCentral's (its Date header): poll windows follow RingCentral's clock, but fix the host's time service (chrony, systemd-timesyncd)",
                    s.num_seconds().abs(),
                    if s > TimeDelta::zero() {
                        "ahead of"
                    } else {
                        "behind"
                    }
                );
                self.health.set(&component, State::Degraded, Some(reason));
            }
            _ => self.health.remove(&component),
        }
    }

    /// Polls one piece of this account's oldest waiting backfill job (see
    /// [`crate::spool::backfill`]); true when a piece was done (so the caller asks again).
    /// Failures are left for the next round: the live poll reports the account's problems.
    async fn backfill_step(&mut self) -> bool {
        let account = self.account.clone();
        let chunk = i64::try_from(BACKFILL_CHUNK.as_millis()).unwrap_or(i64::MAX);
        let next = self
            .spool
            .run(move |s| s.backfill_next(&account, chunk))
            .await;
        let (a, b) = match next {
            Ok(Some(piece)) => piece,
            Ok(None) => return false,
            Err(e) => {
                warn!(account = %self.account, "cannot read the backfill jobs: {e}; check the disk holding the state directory");
                return false;
            }
        };
        let (Some(from), Some(to)) = (
            DateTime::<Utc>::from_timestamp_millis(a),
            DateTime::<Utc>::from_timestamp_millis(b),
        ) else {
            return false;
        };
        match self.backfill_range(from, to).await {
            Ok(WindowOutcome::Polled {
                records, inserted, ..
            }) => {
                let account = self.account.clone();
                let marked = self
                    .spool
                    .run(move |s| {
                        s.backfill_mark(&account, a, b)?;
                        s.backfill_next(&account, chunk)
                    })
                    .await;
                debug!(account = %self.account, from = %rfc3339_millis(from), to = %rfc3339_millis(to),
                    records, new = inserted, "backfill piece done");
                match marked {
                    Ok(None) => info!(account = %self.account, "backfill complete"),
                    Ok(Some(_)) => {}
                    Err(e) => warn!(account = %self.account,
                        "cannot record backfill progress ({e}); the piece will be polled again (no duplicates reach Splunk); check the disk holding the state directory"),
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(account = %self.account, "backfill piece failed, trying again after the next live window: {e}");
                false
            }
        }
    }

    /// How many records RingCentral holds in `[first, last]` (both inclusive): searches with
    /// `perPage=1`, read from `totalFound` (or, without it, `paging.total`, the page count),
    /// through this account's client, so the rate limiter and a 429 penalty apply. A range
    /// whose count reaches the API's 10,000-record limit is counted again in halves (the count
    /// may stop at the limit), down to [`MIN_SPLIT`]; a piece that still reaches it marks the
    /// count as a floor.
    pub async fn count(
        &mut self,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Result<Count, RcError> {
        let mut total = Count {
            total: 0,
            capped: false,
        };
        let mut pieces = vec![(first, last)];
        while let Some((a, b)) = pieces.pop() {
            let req = SearchRequest {
                event_time_from: rfc3339_millis(a),
                event_time_to: rfc3339_millis(b),
                page: 1,
                per_page: 1,
                include_admins: self.poll.include_admins,
                include_hidden: self.poll.include_hidden,
            };
            let page = self.client.search(&req).await?;
            let paging = page.paging.as_ref();
            let n = match (
                paging.and_then(|p| p.total_found),
                paging.and_then(|p| p.total),
            ) {
                (Some(found), _) => found,
                (None, Some(pages)) => pages,
                (None, None) if page.records.is_empty() => 0,
                (None, None) => {
                    return Err(RcError::Inconsistent {
                        detail: "a count search returned records but neither totalFound nor paging.total, so the period cannot be counted".into(),
                    });
                }
            };
            if n >= API_RECORD_LIMIT && b - a >= MIN_SPLIT * 2 {
                let mid = a + (b - a) / 2;
                debug!(account = %self.account, from = %rfc3339_millis(a), to = %rfc3339_millis(b), count = n,
                    "a count reached the API's limit: counting the range again in halves");
                pieces.push((mid + TimeDelta::milliseconds(1), b));
                pieces.push((a, mid));
                continue;
            }
            total.capped |= n >= API_RECORD_LIMIT;
            total.total += n;
        }
        Ok(total)
    }

    /// Reconciles this account's oldest due period, if one is due (see [`crate::reconcile`]):
    /// RingCentral's count against the distinct ids spooled; when RingCentral holds more, the
    /// period is polled again (the backfill path: the spool's dedup, the live cursor untouched,
    /// a `repair` row in the ledger) and the spool counted again. The result and its event are
    /// stored in one transaction. `Ok(None)`: nothing due (or the spool is full: polling
    /// pauses, and so does this). An error stores nothing, so the period stays due.
    pub async fn reconcile_next(&mut self) -> Result<Option<Reconciliation>, PollError> {
        if !self.reconcile.enabled {
            return Ok(None);
        }
        if self.client.skew().is_none() {
            self.client.authenticate().await?;
        }
        let now = self.rc_now().timestamp_millis();
        let (lo, hi) = crate::reconcile::lookback_range(&self.reconcile, now);
        let account = self.account.clone();
        let state = self
            .spool
            .run(move |s| s.reconcile_state(&account, lo, hi))
            .await?;
        let Some(period) = crate::reconcile::due(&self.reconcile, now, &state) else {
            return Ok(None);
        };
        let (Some(first), Some(last)) = (
            DateTime::<Utc>::from_timestamp_millis(period.start_ms),
            DateTime::<Utc>::from_timestamp_millis(period.last_ms()),
        ) else {
            return Ok(None);
        };
        let count = self.count(first, last).await?;
        let forwarded = |spool: &Spool, account: String, p: Period| {
            let spool = spool.clone();
            async move {
                spool
                    .run(move |s| s.forwarded_count(&account, p.start_ms, p.last_ms()))
                    .await
            }
        };
        let held = forwarded(&self.spool, self.account.clone(), period).await?;
        let account = self.account.clone();
        // A repair a stop or crash interrupted: what the spool held before it began.
        let earlier = self
            .spool
            .run(move |s| s.repair_started(&account, period))
            .await?;
        let mut before = earlier.map_or(held, |e| e.min(held));
        let after = if count.total > held {
            info!(account = %self.account, period_start = %rfc3339_millis(first), ringcentral = count.total, spooled = held,
                "RingCentral holds more records for this period than the spool: polling the period again");
            let max = self.max_spool_bytes;
            if let Some(full) = self.spool.run(move |s| s.room_to_poll(max)).await? {
                debug!(account = %self.account, "reconciliation's repair waits: {}", full.0);
                return Ok(None);
            }
            let (account, total) = (self.account.clone(), count.total);
            before = self
                .spool
                .run(move |s| s.begin_repair(&account, period, total, held))
                .await?;
            self.fetch(first, last, WindowKind::Repair).await?;
            Some(forwarded(&self.spool, self.account.clone(), period).await?)
        } else {
            // An interrupted repair had already brought everything in.
            earlier.map(|_| held)
        };
        let account = self.account.clone();
        let dead = self
            .spool
            .run(move |s| s.dead_lettered_count(&account, period.start_ms, period.last_ms()))
            .await?;
        let result = crate::reconcile::verdict(
            &self.account,
            period,
            count,
            before,
            after,
            dead,
            crate::time::now_ms(),
        );
        let body = serde_json::value::RawValue::from_string(
            crate::reconcile::event_body(&result).to_string(),
        )
        .expect("a JSON value's text is JSON");
        // Timed at the period's last millisecond: Splunk files it with the period it speaks
        // for (its end is the next period's first instant, outside a search ending there).
        let event = self.transformer.internal(
            crate::transform::RECONCILIATION_SOURCETYPE,
            period.last_ms(),
            &body,
            Some(&self.account),
        );
        let stored = result.clone();
        self.spool
            .run(move |s| s.store_reconciliation(&stored, Some(event)))
            .await?;
        Ok(Some(result))
    }

    /// One reconciliation between live windows, logged; true when a period was done (so the
    /// caller asks again). A failure waits a poll interval (the live poll reports the
    /// account's problems); the period stays due.
    async fn reconcile_step(&mut self) -> bool {
        if !self.reconcile.enabled || Instant::now() < self.reconcile_after {
            return false;
        }
        match self.reconcile_next().await {
            Ok(Some(r)) => {
                let start = crate::time::ms_rfc3339(r.period.start_ms).unwrap_or_default();
                match r.status {
                    crate::reconcile::Status::Short => {
                        warn!(account = %self.account, period_start = %start,
                        ringcentral = r.ringcentral_count, forwarded = r.forwarded_count,
                        "reconciliation: period short: {}", r.reason.as_deref().unwrap_or_default())
                    }
                    status => info!(account = %self.account, period_start = %start,
                        ringcentral = r.ringcentral_count, forwarded = r.forwarded_count,
                        recovered = r.recovered.unwrap_or(0), "reconciliation: period {}", status.as_str()),
                }
                true
            }
            Ok(None) => {
                // A period becomes due as time passes or the cursor moves: look again after a
                // poll interval (or a period, if shorter), not at every turn of the loop.
                self.reconcile_after =
                    Instant::now() + self.poll.interval.min(self.reconcile.period);
                false
            }
            Err(e) => {
                warn!(account = %self.account, "reconciliation failed, trying again in {}: {e}",
                    humantime::format_duration(self.poll.interval));
                self.reconcile_after = Instant::now() + self.poll.interval;
                false
            }
        }
    }
}

/// How often a poller idle between live windows looks for new backfill jobs.
const BACKFILL_CHECK: Duration = Duration::from_secs(10);

/// The next live window for an account whose cursor is `cursor`: `[cursor - overlap,
/// now - settle_delay]`, or from `now - initial_lookback` on the first run, never starting more
/// than 180 days back (minus a margin so the API does not refuse the bound). `None` when the
/// window would be empty (polled too recently).
pub fn next_window(
    cursor: Option<i64>,
    now: DateTime<Utc>,
    poll: &PollConfig,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let oldest = now - delta(MAX_LOOKBACK) + TimeDelta::minutes(5);
    let from = match cursor.and_then(DateTime::<Utc>::from_timestamp_millis) {
        Some(c) => c - delta(poll.overlap),
        None => now - delta(poll.initial_lookback),
    }
    .max(oldest);
    let to = now - delta(poll.settle_delay);
    (from < to).then_some((from, to))
}

/// Pages through one search window: page 1, 2, ... until the paging information says the
/// window is done (or the most pages the API's 10,000-record limit allows). Shared by live
/// polling, backfill and the dry run, so all three see the same records the same way.
///
/// What ends a window: an empty page that nothing contradicts; a short page when neither
/// `paging.total` nor `totalFound` says more follow; the page budget. An empty page while
/// `paging.total` (or, without it, `totalFound` after a full page) says more follow is asked
/// again ([`PAGE_RECHECKS`] times, backing off); still empty, it is [`RcError::Inconsistent`]
/// and the window stays open. An answer too large to read is asked again with pages half the
/// size, from the same record on.
pub struct Pager {
    account: String,
    req: SearchRequest,
    page_size: u32,
    max_pages: u32,
    done: bool,
    /// `totalFound` of page 1, when RingCentral said it.
    found: Option<u64>,
    /// Records received so far.
    fetched: u64,
    /// The last page was taken because the page budget ran out, not because paging said so.
    budget_spent: bool,
    /// Page 1 was full: with `totalFound` above the API's limit, the window really is too big.
    first_full: bool,
    /// The previous page was full (true before page 1): without `paging.total`, an empty page
    /// after a full one contradicts a `totalFound` not yet reached; after a short one it is the
    /// end, and `totalFound` is just off.
    prev_full: bool,
}

impl Pager {
    /// A pager over `[from, to]` with the search options in `poll`.
    pub fn new(account: &str, from: DateTime<Utc>, to: DateTime<Utc>, poll: &PollConfig) -> Self {
        let page_size = poll.page_size.max(1);
        Pager {
            account: account.to_string(),
            req: SearchRequest {
                event_time_from: rfc3339_millis(from),
                event_time_to: rfc3339_millis(to),
                page: 1,
                per_page: page_size,
                include_admins: poll.include_admins,
                include_hidden: poll.include_hidden,
            },
            page_size,
            max_pages: max_pages(page_size),
            done: false,
            found: None,
            fetched: 0,
            budget_spent: false,
            first_full: false,
            prev_full: true,
        }
    }

    /// True when the window holds more records than one search can return: `totalFound` at or
    /// above the API's limit with a full first page (a count may stop at the limit: 25,000
    /// records reported as 10,000 once committed a window with 12,000 of them), or the page
    /// budget spent with records left. Such a window is split. (A `totalFound` that is merely off never splits a window: halving
    /// down to a millisecond once made 1,029 searches in 40 s.)
    pub fn needs_split(&self) -> bool {
        self.found.is_some_and(|f| {
            (f >= API_RECORD_LIMIT && self.first_full)
                || (self.done && self.budget_spent && self.fetched < f)
        })
    }

    /// True when paging ended (proven by the pages) with fewer records than `totalFound`.
    pub fn count_mismatch(&self) -> bool {
        self.done && !self.needs_split() && self.found.is_some_and(|f| self.fetched < f)
    }

    /// Pages fetched so far (the page number of the last one).
    pub fn pages(&self) -> u32 {
        if self.done {
            self.req.page
        } else {
            self.req.page - 1
        }
    }

    /// Halves the page size after an answer too large to read, keeping the position: the next
    /// page starts at or before the first record of the refused one.
    fn shrink(&mut self) {
        let offset = u64::from(self.req.page - 1) * u64::from(self.req.per_page);
        let size = (self.req.per_page / 2).max(1);
        self.req.per_page = size;
        self.page_size = size;
        self.req.page = u32::try_from(offset / u64::from(size) + 1).unwrap_or(u32::MAX);
        self.max_pages = max_pages(size);
    }

    /// The next page and whether it is the window's last; `None` once the last was returned.
    pub async fn next(
        &mut self,
        client: &mut RcClient,
        stats: &Stats,
    ) -> Result<Option<(SearchPage, bool)>, RcError> {
        if self.done {
            return Ok(None);
        }
        let mut recheck = client.retry_policy().backoff();
        let page = loop {
            let page = match client.search(&self.req).await {
                Err(RcError::TooLarge { .. }) if self.req.per_page > 1 => {
                    self.shrink();
                    continue;
                }
                other => other?,
            };
            let paging = page.paging.as_ref();
            let total = paging.and_then(|p| p.total);
            let found = if self.req.page == 1 {
                paging.and_then(|p| p.total_found)
            } else {
                self.found
            };
            let pages_left = total.is_some_and(|t| u64::from(self.req.page) < t);
            let records_left = found.is_some_and(|f| self.fetched < f);
            let contradicts = pages_left || (total.is_none() && records_left && self.prev_full);
            if page.records.is_empty() && contradicts {
                let what = format!(
                    "page {} of {} was empty, totalFound {}, {} records received before it",
                    self.req.page,
                    total.map_or_else(|| "?".into(), |t| t.to_string()),
                    found.map_or_else(|| "absent".into(), |f| f.to_string()),
                    self.fetched
                );
                if recheck.attempts() < PAGE_RECHECKS {
                    let delay = recheck.next_delay(None);
                    warn!(account = %self.account, from = %self.req.event_time_from, to = %self.req.event_time_to,
                        "RingCentral's page contradicts its paging ({what}); asking again");
                    crate::watchdog::waiting(delay);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                return Err(RcError::Inconsistent {
                    detail: format!("{what}, {} times", PAGE_RECHECKS + 1),
                });
            }
            break page;
        };
        if self.req.page == 1 {
            let found = page.paging.as_ref().and_then(|p| p.total_found);
            if let Some(found) = found.filter(|f| *f >= TOTAL_FOUND_WARNING) {
                Stats::add(&stats.windows_near_limit, 1);
                warn!(account = %self.account, total_found = found, from = %self.req.event_time_from, to = %self.req.event_time_to,
                    "a poll window holds {found} records; the API returns at most {API_RECORD_LIMIT} and may have lost records upstream: lower poll.interval");
            }
            self.found = found;
        }
        let n = page.records.len();
        self.fetched += n as u64;
        self.prev_full = n >= self.page_size as usize;
        if self.req.page == 1 {
            self.first_full = self.prev_full;
        }
        // A short page ends the window only if `paging` agrees: RingCentral may serve fewer
        // records per page than asked (that it clamps `perPage` is undocumented), and stopping
        // there would leave the window's later pages unread while its cursor moves on.
        let pages_left = page
            .paging
            .as_ref()
            .and_then(|p| p.total)
            .is_some_and(|total| u64::from(self.req.page) < total);
        let records_left = self.found.is_some_and(|f| self.fetched < f);
        self.budget_spent = self.req.page >= self.max_pages;
        let last = n == 0
            || (n < self.page_size as usize && !pages_left && !records_left)
            || self.budget_spent;
        if last && self.budget_spent && n >= self.page_size as usize {
            warn!(account = %self.account, pages = self.req.page,
                "RingCentral kept returning full pages past its {API_RECORD_LIMIT}-record limit; treating this page as the last. Lower poll.interval so windows hold fewer records");
        }
        if last {
            self.done = true;
        } else {
            self.req.page += 1;
        }
        Ok(Some((page, last)))
    }
}

/// The most pages one search window may take: the API's limit in pages, plus two.
fn max_pages(page_size: u32) -> u32 {
    u32::try_from(API_RECORD_LIMIT / u64::from(page_size.max(1))).unwrap_or(u32::MAX) + 2
}

/// A page's records as spool rows: each transformed into its HEC event (a record without a
/// usable `eventTime` gets the poll time as HEC `time`).
pub fn new_records(transformer: &Transformer, page: &SearchPage) -> Vec<NewRecord> {
    let poll_ms = Utc::now().timestamp_millis();
    page.records
        .iter()
        .map(|raw| {
            let meta = inspect_record(raw);
            let event = transformer.event(raw, &meta, poll_ms);
            NewRecord {
                invalid: crate::hec::batch::validate_event(&event).err(),
                event_time_ms: meta.event_time_ms.unwrap_or(0),
                event,
                record_id: meta.id,
            }
        })
        .collect()
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
