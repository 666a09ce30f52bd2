//! Logging setup, counters, and the health state of each account and of the sink.
//!
//! Counters are plain atomics so the hot paths pay almost nothing; the `demo` summary and the
//! `once` report read them, and so will the admin endpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

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

/// Health per component: `account:<name>` and `hec`.
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

    /// A copy of every component's health.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentHealth> {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Installs the global tracing subscriber (stderr). `level` is an `EnvFilter` directive;
/// `RUST_LOG`, when set, wins. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Counters exported on `/metrics`: (name, help, accessor).
/// A counter's metric name, help text and accessor.
type Counter = (&'static str, &'static str, fn(&Stats) -> &AtomicU64);

const COUNTERS: &[Counter] = &[
    (
        "rc_requests_total",
        "Requests sent to RingCentral (token and search).",
        |s| &s.rc_requests,
    ),
    ("rc_rate_limited_total", "RingCentral 429 responses.", |s| {
        &s.rc_rate_limited
    }),
    (
        "records_polled_total",
        "Records received from RingCentral, overlap re-reads included.",
        |s| &s.records_polled,
    ),
    (
        "records_spooled_total",
        "Records newly written to the spool.",
        |s| &s.records_spooled,
    ),
    (
        "records_duplicate_total",
        "Records skipped because their id was already spooled.",
        |s| &s.records_duplicate,
    ),
    (
        "windows_completed_total",
        "Poll windows completed (cursor committed).",
        |s| &s.windows_completed,
    ),
    (
        "windows_near_limit_total",
        "Poll windows whose totalFound neared the API's 10,000-record limit.",
        |s| &s.windows_near_limit,
    ),
    ("hec_requests_total", "HEC requests sent.", |s| {
        &s.hec_requests
    }),
    (
        "hec_failures_total",
        "HEC requests that did not end in acceptance.",
        |s| &s.hec_failures,
    ),
    ("events_delivered_total", "Events HEC accepted.", |s| {
        &s.events_delivered
    }),
    (
        "hec_timeouts_total",
        "HEC requests with no answer within hec.timeout (each may duplicate a batch).",
        |s| &s.hec_timeouts,
    ),
    (
        "ack_resends_total",
        "Batches resent after hec.ack_timeout without an acknowledgement.",
        |s| &s.ack_resends,
    ),
    (
        "events_dead_lettered_total",
        "Events moved to the dead-letter table.",
        |s| &s.events_dead_lettered,
    ),
];

/// Renders the counters and the spool depth in the Prometheus text format.
pub fn render_metrics(stats: &Stats, spool_depth: Option<u64>, health: &Health) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (name, help, get) in COUNTERS {
        let _ = writeln!(
            out,
            "# HELP rc_audit_hec_{name} {help}\n# TYPE rc_audit_hec_{name} counter\nrc_audit_hec_{name} {}",
            Stats::get(get(stats))
        );
    }
    if let Some(depth) = spool_depth {
        let _ = writeln!(
            out,
            "# HELP rc_audit_hec_spool_depth Events waiting in the spool.\n# TYPE rc_audit_hec_spool_depth gauge\nrc_audit_hec_spool_depth {depth}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP rc_audit_hec_component_up 1 when the component is ok, 0 when degraded or failing.\n# TYPE rc_audit_hec_component_up gauge"
    );
    for (component, h) in health.snapshot() {
        let up = u8::from(h.state == State::Ok);
        let _ = writeln!(
            out,
            "rc_audit_hec_component_up{{component=\"{component}\"}} {up}"
        );
    }
    out
}

/// The `/healthz` document: the worst state overall plus every component with its reason.
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
    (
        worst,
        serde_json::json!({ "status": worst, "components": components }),
    )
}
