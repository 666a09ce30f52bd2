//! The Splunk side: the delivery loop ([`Sink`]), the HTTP client, batching, indexer
//! acknowledgement and the one response classifier.
//!
//! The sink streams from the spool: it holds one batch body in memory, sends it until HEC
//! decides, and settles the outcome in the spool before reading on. What each outcome does:
//!
//! | outcome | spool |
//! | --- | --- |
//! | accepted (200, code 0) | batch deleted (the only way a record leaves the outbox) |
//! | accepted with `ackId` (`use_ack`) | batch kept until its ack reads true, then deleted; resent after `ack_timeout` |
//! | bad event k | events before k deleted (HEC indexed them; in ack mode too), k dead-lettered, the rest resent |
//! | bad event, index unknown | the batch is resent one event at a time to find it |
//! | 413 too large | the batch is split in halves; a single over-size event is dead-lettered |
//! | retry (5xx, 429, down) | same batch on the next healthy URL at once, else after backoff or `Retry-After`, forever |
//! | timed out | same batch again once with a 10x longer timeout (see below) |
//! | garbled 200 (unreadable body) | same batch again after a backoff, never at once; counted as a suspected duplicate |
//! | pause (token, URL) | same batch again, slowly; health says why; resumes when fixed |
//!
//! # Duplicates
//! A batch whose acceptance is not recorded is sent again: after a crash or shutdown mid-request
//! (at most the batches in flight), and after a timeout. A HEC that accepts but answers late
//! would, with a fixed timeout, receive the same batch over and over; so after a timeout the
//! batch is resent with [`TIMEOUT_FACTOR`] times the timeout, which a merely slow HEC answers:
//! one duplicate batch, not an endless loop. A 200 whose body cannot be read may also have been
//! indexed: it is resent only after a growing backoff, so no answer, however broken, can make
//! the sink resend at an unbounded rate.
//!
//! # Watchdog
//! Every wait of the loop is announced with the wait's own bound ([`crate::watchdog::within`]
//! around each request, [`crate::watchdog::waiting`] before each sleep), so the resend with a
//! 10x timeout against a HEC that never answers is a promised wait, not a stall.

pub mod ack;
pub mod batch;
pub mod client;
mod observe;
pub mod response;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::ack::{AckTracker, MAX_IN_FLIGHT, Pending};
use self::batch::build_body;
use self::client::{AckError, HecClient};
use self::response::Outcome;
use crate::config::{Destination, HecConfig};
use crate::retry::RetryPolicy;
use crate::spool::{DeadLetter, Spool, SpoolError, Spooled};
use crate::telemetry::{Component, Health, State, Stats};

pub use self::client::HecError;

/// After a timeout, the resend waits this many times `hec.timeout` for its answer.
pub const TIMEOUT_FACTOR: u32 = 10;
/// With nothing to send, the sink looks again after this long even without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Why the sink stopped (only ever shutdown; delivery failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The spool failed in a way retries did not fix before shutdown.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A request body could not be built (out of memory).
    #[error("cannot build a request body: {0}")]
    Body(std::io::Error),
}

/// Delivers spooled events to HEC.
pub struct Sink {
    client: HecClient,
    spool: Spool,
    max_events: usize,
    max_bytes: usize,
    gzip: bool,
    timeout: Duration,
    retry: RetryPolicy,
    stats: Arc<Stats>,
    health: Arc<Health>,
    /// Current events-per-batch limit: halved on 413, grows back on success.
    limit: usize,
    /// Events still to send one by one to find a bad event HEC did not name.
    isolate: usize,
    /// The smallest batch HEC refused as too large (413): batches grow back only below it.
    too_large_at: Option<usize>,
    /// Batches awaiting indexer acknowledgement; `None` in plain mode.
    acks: Option<AckTracker>,
    /// The next batch and its body, read and compressed while the previous request was in
    /// flight (plain mode only; see [`Sink::deliver`]).
    prefetched: Option<(Vec<Spooled>, Bytes)>,
    next_ack_poll: Instant,
}

/// What one delivery step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send and nothing awaiting acknowledgement.
    Idle,
    /// A batch was settled, sent, or acks were processed.
    Progress,
    /// Shutdown was requested; unsettled batches stay spooled.
    Stopped,
}

/// How one batch's delivery ended.
enum Delivered {
    /// Every row of the batch is settled (accepted) or awaiting its acknowledgement.
    Done,
    /// Rows of the batch are still to send (after a bad event, a split or an isolation).
    Partial,
    /// Shutdown came first.
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
            timeout: cfg.timeout,
            retry,
            stats,
            health,
            limit: cfg.batch_max_events,
            isolate: 0,
            too_large_at: None,
            acks: cfg.use_ack.then(|| AckTracker::new(cfg.ack_timeout)),
            prefetched: None,
            next_ack_poll: Instant::now(),
        })
    }

    /// Checks every HEC URL's health endpoint with the token and logs the result.
    pub async fn log_health(&self) {
        let checks = crate::watchdog::within(self.client.health_bound(), self.client.health());
        for (url, result) in checks.await {
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
                    crate::watchdog::waiting(IDLE_RECHECK);
                    tokio::select! {
                        _ = self.spool.wait_for_data(Destination::Hec) => {}
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    if self
                        .health
                        .set(&Component::Hec, State::Failing, Some(e.to_string()))
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

    /// Delivers until the spool is empty and every ack is in (or `shutdown`); for `once` and
    /// tests.
    pub async fn drain(&mut self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        loop {
            match self.step(shutdown).await? {
                Step::Progress => {}
                Step::Idle | Step::Stopped => return Ok(()),
            }
        }
    }

    /// One step: process acks when due, then send the next batch if there is room.
    pub async fn step(&mut self, shutdown: &CancellationToken) -> Result<Step, SinkError> {
        if self.acks.as_ref().is_some_and(|a| !a.is_empty()) && Instant::now() >= self.next_ack_poll
        {
            if self.ack_round(shutdown).await? == Step::Stopped {
                return Ok(Step::Stopped);
            }
            return Ok(Step::Progress);
        }
        let in_flight = self.acks.as_ref().map_or(0, AckTracker::len);
        if in_flight >= MAX_IN_FLIGHT {
            return Ok(self.wait_for_acks(shutdown).await);
        }
        let after = self
            .acks
            .as_ref()
            .and_then(AckTracker::last_seq)
            .unwrap_or(0);
        let limit = if self.isolate > 0 { 1 } else { self.limit };
        let max_bytes = self.max_bytes;
        let (batch, body) = match self.prefetched.take() {
            Some((rows, body)) if self.acks.is_none() && self.isolate == 0 => (rows, Some(body)),
            _ => (
                self.spool
                    .run(move |s| s.read_batch_after(Destination::Hec, after, limit, max_bytes))
                    .await?,
                None,
            ),
        };
        if batch.is_empty() {
            return Ok(if in_flight > 0 {
                self.wait_for_acks(shutdown).await
            } else {
                Step::Idle
            });
        }
        // Events were validated when spooled (what HEC would refuse went to dead letters then),
        // so the drain does not parse them again.
        let good = batch;
        let (first, last) = (good[0].seq, good[good.len() - 1].seq);
        // The batch just read is the range's first chunk: send it; only a bad event or a split
        // leaves rows of it behind to send.
        match self.deliver_prebuilt(&good, body, shutdown).await? {
            Delivered::Stopped => Ok(Step::Stopped),
            Delivered::Done => Ok(Step::Progress),
            Delivered::Partial => self.deliver_range(first, last, shutdown).await,
        }
    }

    /// Sends the rows of `first..=last` that are neither settled nor awaiting an ack, a
    /// contiguous chunk at a time, until none is left. A bad event, a split, or an ack resend
    /// therefore never strands the rest of a range behind newer batches.
    async fn deliver_range(
        &mut self,
        first: i64,
        last: i64,
        shutdown: &CancellationToken,
    ) -> Result<Step, SinkError> {
        loop {
            let rows = self
                .spool
                .run(move |s| s.read_range(Destination::Hec, first, last))
                .await?;
            let covered = |seq: i64| self.acks.as_ref().is_some_and(|t| t.covers(seq));
            let limit = if self.isolate > 0 { 1 } else { self.limit };
            // A chunk is a run of untracked rows with no tracked row inside it: it is settled by
            // range, and a range must never take a batch that awaits its ack with it.
            let mut chunk: Vec<Spooled> = Vec::new();
            let mut bytes = 0;
            for row in rows {
                if covered(row.seq) {
                    if chunk.is_empty() {
                        continue;
                    }
                    break;
                }
                if chunk.len() >= limit
                    || (!chunk.is_empty() && bytes + row.event.len() > self.max_bytes)
                {
                    break;
                }
                bytes += row.event.len();
                chunk.push(row);
            }
            if chunk.is_empty() {
                return Ok(Step::Progress);
            }
            if let Delivered::Stopped = self.deliver(&chunk, shutdown).await? {
                return Ok(Step::Stopped);
            }
        }
    }

    async fn wait_for_acks(&mut self, shutdown: &CancellationToken) -> Step {
        let wait = self.next_ack_poll.saturating_duration_since(Instant::now());
        if sleep_or_stop(wait, shutdown).await {
            Step::Stopped
        } else {
            Step::Progress
        }
    }

    /// Queries pending acks per endpoint, settles confirmed batches, resends expired ones.
    async fn ack_round(&mut self, shutdown: &CancellationToken) -> Result<Step, SinkError> {
        let Some(tracker) = self.acks.as_ref() else {
            return Ok(Step::Progress);
        };
        let mut confirmed_any = false;
        for (endpoint, ids) in tracker.ids_by_endpoint() {
            let query = self.client.query_acks(endpoint, &ids);
            let answer = tokio::select! {
                r = crate::watchdog::within(self.timeout, query) => r,
                _ = shutdown.cancelled() => return Ok(Step::Stopped),
            };
            match answer {
                Ok(answer) => {
                    let done = self
                        .acks
                        .as_mut()
                        .map(|t| t.confirm(endpoint, &answer))
                        .unwrap_or_default();
                    confirmed_any |= !done.is_empty();
                    for c in done {
                        if c.late {
                            info!(
                                first_seq = c.first,
                                last_seq = c.last,
                                "a late acknowledgement of an earlier copy settled a resent batch (the resend's own ack is ignored)"
                            );
                        }
                        if self
                            .settle(Some((c.first, c.last)), c.events, Vec::new(), shutdown)
                            .await?
                        {
                            return Ok(Step::Stopped);
                        }
                    }
                }
                Err(AckError::Disabled) => {
                    self.fall_back_to_plain(
                        "the ack endpoint says acknowledgement is disabled on the token (code 14)",
                        shutdown,
                    )
                    .await?;
                    return Ok(Step::Progress);
                }
                Err(AckError::Failed(reason)) => {
                    warn!("cannot query HEC acknowledgements (will ask again): {reason}");
                }
            }
        }
        let Some(tracker) = self.acks.as_mut() else {
            return Ok(Step::Progress);
        };
        self.next_ack_poll = Instant::now() + tracker.next_poll(confirmed_any);
        let expired = tracker.take_expired(Instant::now());
        for p in expired {
            Stats::add(&self.stats.ack_resends, 1);
            let next = self
                .acks
                .as_ref()
                .map_or(p.deadline, |t| t.deadline_for(p.attempt + 1));
            warn!(
                ack_id = p.ack_id,
                events = p.events,
                resends = p.attempt + 1,
                waited_s = p.deadline.as_secs(),
                next_deadline_s = next.as_secs(),
                "no indexer acknowledgement within its deadline (hec.ack_timeout, doubled per resend): resending the batch (it may be indexed twice); the earlier ack id stays valid, a late true still settles it"
            );
            if self.deliver_range(p.first, p.last, shutdown).await? == Step::Stopped {
                return Ok(Step::Stopped);
            }
        }
        Ok(Step::Progress)
    }

    /// Ack mode turns out to be unavailable: treat what HEC received (200, code 0) as delivered,
    /// as plain mode does, and carry on without acks.
    async fn fall_back_to_plain(
        &mut self,
        why: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), SinkError> {
        warn!(
            "{why}: falling back to plain mode (a 200 with code 0 counts as delivered); set hec.use_ack = false to silence this"
        );
        if let Some(mut tracker) = self.acks.take() {
            // Batches with a reused ack id stay spooled: plain mode sends them again.
            let (received, _resend) = tracker.take_all();
            for p in received {
                if self
                    .settle(Some((p.first, p.last)), p.events, Vec::new(), shutdown)
                    .await?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Records a delivery outcome in the spool, retrying until it sticks: HEC already has the
    /// events, and sending them again because the bookkeeping failed would only duplicate them.
    /// Returns true when shutdown came first.
    async fn settle(
        &mut self,
        accepted: Option<(i64, i64)>,
        delivered: usize,
        dead: Vec<DeadLetter>,
        shutdown: &CancellationToken,
    ) -> Result<bool, SinkError> {
        let mut backoff = self.retry.backoff();
        let n_dead = dead.len() as u64;
        loop {
            let d = dead.clone();
            match self
                .spool
                .run(move |s| s.settle(Destination::Hec, accepted, &d))
                .await
            {
                Ok(()) => {
                    Stats::add(&self.stats.events_delivered, delivered as u64);
                    Stats::add(&self.stats.events_dead_lettered, n_dead);
                    return Ok(false);
                }
                Err(e) => {
                    let reason = format!(
                        "cannot record delivered events in the spool ({e}); retrying, nothing else is sent meanwhile (if the process stops now, that batch is sent once more)"
                    );
                    if self
                        .health
                        .set(&Component::Hec, State::Failing, Some(reason.clone()))
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

    /// Sends one batch (contiguous in the outbox) until HEC decides its fate.
    async fn deliver(
        &mut self,
        good: &[Spooled],
        shutdown: &CancellationToken,
    ) -> Result<Delivered, SinkError> {
        self.deliver_prebuilt(good, None, shutdown).await
    }

    /// [`Sink::deliver`] with the body already built (a prefetched batch).
    ///
    /// In plain mode the first attempt overlaps with reading and compressing the next batch
    /// (the rows after this one: nothing but the sink deletes rows, and new rows only append),
    /// so the forwarder's CPU work runs while HEC handles the request. The prefetched batch is
    /// used only if this one was accepted whole; any other outcome drops it.
    async fn deliver_prebuilt(
        &mut self,
        good: &[Spooled],
        body: Option<Bytes>,
        shutdown: &CancellationToken,
    ) -> Result<Delivered, SinkError> {
        let body = match body {
            Some(b) => b,
            None => build_body(good.iter().map(|e| e.event.as_slice()), self.gzip)
                .map(Bytes::from)
                .map_err(SinkError::Body)?,
        };
        let (first, last) = (good[0].seq, good[good.len() - 1].seq);
        let mut backoff = self.retry.backoff();
        let mut timeout = self.timeout;
        let mut timed_out = false;
        let mut prefetch = self.acks.is_none() && self.isolate == 0;
        loop {
            crate::watchdog::beat();
            Stats::add(&self.stats.hec_requests, 1);
            let next = prefetch.then(|| {
                let (limit, max_bytes, gzip) = (self.limit, self.max_bytes, self.gzip);
                self.spool.run(move |s| {
                    let rows = s
                        .read_batch_after(Destination::Hec, last, limit, max_bytes)
                        .ok()?;
                    let body = build_body(rows.iter().map(|e| e.event.as_slice()), gzip).ok()?;
                    (!rows.is_empty()).then(|| (rows, Bytes::from(body)))
                })
            });
            prefetch = false;
            let bound = self.client.send_bound(timeout);
            let send = crate::watchdog::within(bound, self.client.send(body.clone(), timeout));
            let (sent, next) = tokio::select! {
                r = async {
                    match next {
                        Some(next) => {
                            let (sent, next) = tokio::join!(send, next);
                            (sent, next)
                        }
                        None => (send.await, None),
                    }
                } => r,
                _ = shutdown.cancelled() => return Ok(Delivered::Stopped),
            };
            let accepted_plain =
                matches!(sent.outcome, Outcome::Accepted { ack_id: None }) && self.acks.is_none();
            self.prefetched = if accepted_plain { next } else { None };
            self.observe(&sent.url, &sent.outcome, good.len());
            let url = sent.url;
            match sent.outcome {
                Outcome::Accepted { ack_id } => {
                    if self.health.set(&Component::Hec, State::Ok, None) {
                        info!(%url, "HEC accepting events");
                    }
                    let cap = self
                        .too_large_at
                        .map_or(self.max_events, |n| n.saturating_sub(1).max(1));
                    self.limit = (self.limit * 2).min(self.max_events).min(cap);
                    self.isolate = self.isolate.saturating_sub(good.len());
                    match (self.acks.as_mut(), ack_id) {
                        (Some(tracker), Some(ack_id)) => {
                            let soon = tracker.push(Pending::new(
                                ack_id,
                                sent.endpoint,
                                first,
                                last,
                                good.len(),
                            ));
                            self.next_ack_poll = self.next_ack_poll.min(Instant::now() + soon);
                            return Ok(Delivered::Done);
                        }
                        (Some(_), None) => {
                            self.fall_back_to_plain(
                                "HEC accepted a batch without an ackId: the token has no indexer acknowledgement",
                                shutdown,
                            )
                            .await?;
                        }
                        (None, _) => {}
                    }
                    if self
                        .settle(Some((first, last)), good.len(), Vec::new(), shutdown)
                        .await?
                    {
                        return Ok(Delivered::Stopped);
                    }
                    return Ok(Delivered::Done);
                }
                Outcome::BadEvent {
                    index,
                    code,
                    reason,
                } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    match index.filter(|k| *k < good.len()) {
                        Some(k) => {
                            // HEC indexed 0..k and refused k (reference/splunk-hec.md). With
                            // acks on too: a 400 carries no ackId, so no later answer can
                            // confirm 0..k any better than this one does, and sending them
                            // again would index them twice. Both modes settle them.
                            let accepted = (k > 0).then(|| (first, good[k - 1].seq));
                            let dead = DeadLetter {
                                seq: good[k].seq,
                                reason: reason.clone(),
                                hec_code: Some(code),
                            };
                            warn!(%url, record_id = %good[k].record_id, account = %good[k].account,
                                "HEC refused one event; moved it to dead letters (see `rc-audit-hec spool dead-letters`): {reason}");
                            if self.settle(accepted, k, vec![dead], shutdown).await? {
                                return Ok(Delivered::Stopped);
                            }
                            self.isolate = self.isolate.saturating_sub(k + 1);
                        }
                        None if good.len() == 1 => {
                            let dead = vec![DeadLetter {
                                seq: first,
                                reason,
                                hec_code: Some(code),
                            }];
                            self.dead_letter(good, dead).await?;
                            self.isolate = self.isolate.saturating_sub(1);
                        }
                        None => {
                            warn!(%url, events = good.len(),
                                "HEC refused an event without saying which (code {code}); resending this batch one event at a time to find it");
                            self.isolate = good.len();
                        }
                    }
                    return Ok(Delivered::Partial);
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
                        self.dead_letter(good, dead).await?;
                    } else {
                        self.too_large_at =
                            Some(self.too_large_at.map_or(good.len(), |n| n.min(good.len())));
                        self.limit = (good.len() / 2).max(1);
                        warn!(%url, events = good.len(), "HEC says the request is too large (413): splitting; lower hec.batch_max_bytes to match Splunk's max_content_length");
                    }
                    return Ok(Delivered::Partial);
                }
                Outcome::TimedOut => {
                    Stats::add(&self.stats.hec_failures, 1);
                    Stats::add(&self.stats.hec_timeouts, 1);
                    let reason = format!(
                        "no answer within {}; HEC may still index the batch, so it is resent with a {}x longer timeout (expect one duplicate batch); raise hec.timeout if Splunk is this slow",
                        humantime::format_duration(self.timeout),
                        TIMEOUT_FACTOR
                    );
                    self.health
                        .set(&Component::Hec, State::Degraded, Some(reason.clone()));
                    warn!(%url, "{reason}");
                    timeout = self.timeout.saturating_mul(TIMEOUT_FACTOR);
                    // The first timeout may fail over at once; after that, back off like any
                    // other failure, so a HEC that never answers is not fed a batch a second.
                    let immediate = !timed_out && self.client.any_healthy();
                    timed_out = true;
                    if !immediate && sleep_or_stop(backoff.next_delay(None), shutdown).await {
                        return Ok(Delivered::Stopped);
                    }
                }
                Outcome::Garbled { reason } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    // Another URL may be healthy, but this batch may be indexed already: a
                    // fast failover would let a HEC that indexes and answers garbage take it
                    // again and again. Always back off.
                    let delay = backoff.next_delay(None);
                    let reason = format!(
                        "{reason}; HEC may have indexed the batch, so it is resent after a backoff (it may be indexed twice); a proxy or load balancer in front of Splunk may be answering instead of HEC"
                    );
                    self.health
                        .set(&Component::Hec, State::Degraded, Some(reason.clone()));
                    warn!(%url, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64,
                        events = good.len(), "{reason}");
                    if sleep_or_stop(delay, shutdown).await {
                        return Ok(Delivered::Stopped);
                    }
                }
                Outcome::Retry {
                    retry_after,
                    reason,
                } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    if self.client.any_healthy() {
                        // Another endpoint is up: fail over at once (Retry-After keeps the
                        // busy one out of the rotation for that long).
                        continue;
                    }
                    let delay = backoff.next_delay(retry_after);
                    if self
                        .health
                        .set(&Component::Hec, State::Degraded, Some(reason.clone()))
                        || backoff.attempts().is_multiple_of(20)
                    {
                        warn!(%url, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64,
                            "HEC delivery failed, will retry (events stay spooled): {reason}");
                    }
                    if sleep_or_stop(delay, shutdown).await {
                        return Ok(Delivered::Stopped);
                    }
                }
                Outcome::Pause { reason } => {
                    Stats::add(&self.stats.hec_failures, 1);
                    if self
                        .health
                        .set(&Component::Hec, State::Failing, Some(reason.clone()))
                    {
                        error!(%url, "HEC delivery paused, events stay spooled: {reason}");
                    }
                    if self.client.any_healthy() {
                        // This URL is misconfigured or refuses the token; another may not.
                        continue;
                    }
                    if sleep_or_stop(backoff.next_delay(None), shutdown).await {
                        return Ok(Delivered::Stopped);
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
        self.spool
            .run(move |s| s.settle(Destination::Hec, None, &dead))
            .await?;
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
