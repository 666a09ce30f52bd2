//! Per-account counters and the latency histogram: the plain data the loops count into (atomics
//! and a mutex-guarded map, so the hot paths pay almost nothing). The admin endpoint renders
//! them (`admin::metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// One account's counters since start.
#[derive(Debug, Default)]
pub struct AccountStats {
    /// Records received from RingCentral (overlap re-reads included).
    pub records_polled: AtomicU64,
    /// Records newly written to the spool.
    pub records_spooled: AtomicU64,
    /// Records skipped because their id was already spooled.
    pub records_duplicate: AtomicU64,
    /// Live poll windows completed (cursor committed).
    pub windows_completed: AtomicU64,
    /// Times a request waited for the account's rate limit (budget spent or 429 penalty).
    pub rate_limit_waits: AtomicU64,
    /// Milliseconds spent in those waits.
    pub rate_limit_wait_ms: AtomicU64,
    /// When a live poll window last completed (ms since the epoch; 0 = not since start).
    pub last_poll_ms: AtomicI64,
    /// RingCentral answers by HTTP status (0 = no answer: timeout, refused, TLS).
    pub rc_responses: Mutex<BTreeMap<u16, u64>>,
    /// 200 answers that were not a usable page or token (no `records` array...), retried.
    pub rc_malformed: AtomicU64,
    /// Answers larger than the response size limit, not read.
    pub rc_too_large: AtomicU64,
    /// Windows left open because their pages contradicted `paging` (cursor not moved).
    pub windows_unproven: AtomicU64,
    /// Windows committed although `totalFound` disagreed with the records the complete pages
    /// held.
    pub windows_count_mismatch: AtomicU64,
    /// Cursors found ahead of RingCentral's clock and pulled back.
    pub cursors_pulled_back: AtomicU64,
    /// Local clock minus RingCentral's (`Date` header), from the last answer, in ms.
    pub clock_skew_ms: AtomicI64,
    /// Whether `clock_skew_ms` has been measured.
    pub clock_skew_seen: AtomicBool,
}

impl AccountStats {
    /// Counts one RingCentral answer.
    pub fn rc_response(&self, status: u16) {
        *self
            .rc_responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    /// Counts one wait for the rate limit.
    pub fn rate_limit_wait(&self, waited: Duration) {
        self.rate_limit_waits.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        self.rate_limit_wait_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) of the request-latency buckets: from a fast LAN answer to
/// `hec.timeout`'s default (60 s).
pub const LATENCY_BUCKETS: [f64; 11] =
    [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus histogram over [`LATENCY_BUCKETS`], lock-free (atomics, like the counters).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last is above every bound).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far: the cumulative count per bucket of [`LATENCY_BUCKETS`] then `+Inf`
    /// (the last is the total count), and the sum in seconds.
    pub fn read(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut cumulative = [0; LATENCY_BUCKETS.len() + 1];
        let mut running = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            running += bucket.load(Ordering::Relaxed);
            cumulative[i] = running;
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (cumulative, sum)
    }
}
