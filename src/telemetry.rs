//! Logging setup, counters, and the health state of each account and of the sink.
//!
//! Counters are plain atomics so the hot paths pay almost nothing; the `demo` summary, the
//! `once` report and the admin endpoint (`/metrics`, rendered by `admin::metrics`) read them.
//! Per-account counters live in [`AccountStats`], so with dozens of accounts each one's
//! traffic, errors and lag can be told apart. Logging ([`logging`]) is text, JSON, or
//! journald-friendly text, with warnings and errors rate-limited per call site.

pub mod logging;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use self::logging::init_logging;
pub use self::metrics::{AccountStats, Histogram, LATENCY_BUCKETS};

/// A HEC answer as counted: (URL, HTTP status, HEC code).
pub type HecAnswer = (String, u16, Option<i64>);

/// Pipeline counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent to RingCentral (token and search).
    pub rc_requests: AtomicU64,
    /// RingCentral 429 responses.
    pub rc_rate_limited: AtomicU64,
    /// Records received from RingCentral (including re-polled ones).
    pub records_polled: AtomicU64,
    /// Records newly written to the spool.
    pub records_spooled: AtomicU64,
    /// Records skipped because their id was already spooled (window overlap).
    pub records_duplicate: AtomicU64,
    /// Windows completed (cursor committed).
    pub windows_completed: AtomicU64,
    /// Windows whose `totalFound` was near the API's 10,000-record limit (records may be lost
    /// upstream: poll more often).
    pub windows_near_limit: AtomicU64,
    /// HEC requests sent.
    pub hec_requests: AtomicU64,
    /// HEC requests that failed (any non-success outcome).
    pub hec_failures: AtomicU64,
    /// Events HEC accepted (deleted from the spool).
    pub events_delivered: AtomicU64,
    /// Events moved to the dead-letter table.
    pub events_dead_lettered: AtomicU64,
    /// HEC requests that got no answer within `hec.timeout` (each may duplicate a batch).
    pub hec_timeouts: AtomicU64,
    /// Batches resent because their indexer acknowledgement did not arrive in time.
    pub ack_resends: AtomicU64,
    /// Events in requests whose fate HEC never told us (timeout): they are resent, so Splunk
    /// may hold them twice.
    pub events_duplicate_suspected: AtomicU64,
    /// When HEC last accepted events (ms since the epoch; 0 = not since start).
    pub last_delivery_ms: AtomicI64,
    /// HEC answers by (URL, HTTP status, HEC code); status 0 = no answer (timeout, refused).
    pub hec_responses: Mutex<BTreeMap<HecAnswer, u64>>,
    /// Per-account counters, created on first use.
    pub accounts: Mutex<BTreeMap<String, Arc<AccountStats>>>,
    /// How long HEC requests took, until the answer was read (timeouts included).
    pub hec_request_seconds: Histogram,
    /// How long RingCentral requests (token and search) took until the status arrived.
    pub rc_request_seconds: Histogram,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The counters of `account` (created on first use, then shared).
    pub fn account(&self, account: &str) -> Arc<AccountStats> {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(account.to_string())
            .or_default()
            .clone()
    }

    /// Counts one HEC answer.
    pub fn hec_response(&self, url: &str, status: u16, code: Option<i64>) {
        *self
            .hec_responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((url.to_string(), status, code))
            .or_default() += 1;
    }
}

/// Health of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Working.
    Ok,
    /// Retrying a transient failure.
    Degraded,
    /// Stopped by a problem an operator must fix (credentials, permission, token, disk).
    Failing,
}

/// A component's state and the reason for it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentHealth {
    /// The state.
    pub state: State,
    /// Why, when not ok.
    pub reason: Option<String>,
}

/// Health per component: `account:<name>`, `hec` (delivery as a whole), `hec:<url>` (each HEC
/// URL), `loop:<name>` (a loop the watchdog saw stall) and `clock:<account>` (this host's clock
/// far from RingCentral's).
#[derive(Debug, Default)]
pub struct Health {
    components: Mutex<BTreeMap<String, ComponentHealth>>,
}

impl Health {
    /// Sets a component's state; returns true when it changed (callers log transitions once).
    pub fn set(&self, component: &str, state: State, reason: Option<String>) -> bool {
        let mut map = self.components.lock().unwrap_or_else(|p| p.into_inner());
        let new = ComponentHealth { state, reason };
        let changed = map
            .get(component)
            .is_none_or(|old| old.state != new.state || old.reason != new.reason);
        map.insert(component.to_string(), new);
        changed
    }

    /// Forgets a component (an account removed by a reload).
    pub fn remove(&self, component: &str) {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(component);
    }

    /// A copy of every component's health.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentHealth> {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The `/healthz` document: the worst state overall, every component with its reason, and the
/// same grouped for people and monitors: `accounts` by name, `hec` by URL (`"*"` for delivery
/// as a whole), `loops` by name.
pub fn render_health(health: &Health) -> (State, serde_json::Value) {
    let components = health.snapshot();
    let worst = components
        .values()
        .map(|c| c.state)
        .max_by_key(|s| match s {
            State::Ok => 0,
            State::Degraded => 1,
            State::Failing => 2,
        })
        .unwrap_or(State::Ok);
    let mut accounts = serde_json::Map::new();
    let mut hec = serde_json::Map::new();
    let mut loops = serde_json::Map::new();
    let mut clocks = serde_json::Map::new();
    for (name, h) in &components {
        let value = serde_json::json!(h);
        if let Some(account) = name.strip_prefix("account:") {
            accounts.insert(account.to_string(), value);
        } else if name == "hec" {
            hec.insert("*".to_string(), value);
        } else if let Some(url) = name.strip_prefix("hec:") {
            hec.insert(url.to_string(), value);
        } else if let Some(l) = name.strip_prefix("loop:") {
            loops.insert(l.to_string(), value);
        } else if let Some(a) = name.strip_prefix("clock:") {
            clocks.insert(a.to_string(), value);
        }
    }
    (
        worst,
        serde_json::json!({
            "status": worst,
            "accounts": accounts,
            "hec": hec,
            "loops": loops,
            "clocks": clocks,
            "components": components,
        }),
    )
}
