//! The Prometheus text rendering of everything `/metrics` shows (the counters it reads are
//! [`crate::telemetry`]'s; this module sits above the spool, whose status it renders).
//!
//! Rendering is a plain function of a snapshot ([`MetricsInput`]), so it is tested without a
//! server. Counters come from [`Stats`] (since start); gauges about the backlog (depth, bytes,
//! oldest record, cursor lag) are read from the spool at scrape time, so they are right even
//! just after a restart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::spool::Status;
use crate::telemetry::{AccountStats, Health, Histogram, LATENCY_BUCKETS, State, Stats};

/// One histogram in Prometheus text format.
fn render_histogram(out: &mut String, h: &Histogram, name: &str, help: &str) {
    family(out, name, help, "histogram");
    let (cumulative, sum) = h.read();
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        let le = bound.to_string();
        sample(
            out,
            &format!("{name}_bucket"),
            &[("le", &le)],
            cumulative[i] as f64,
        );
    }
    let count = cumulative[LATENCY_BUCKETS.len()];
    sample(
        out,
        &format!("{name}_bucket"),
        &[("le", "+Inf")],
        count as f64,
    );
    sample(out, &format!("{name}_sum"), &[], sum);
    sample(out, &format!("{name}_count"), &[], count as f64);
}

/// The process's own figures, read from `/proc/self` (Linux), as Prometheus client libraries
/// name them, but under this program's prefix like every other metric.
fn render_process(out: &mut String) {
    family(
        out,
        "build_info",
        "The running version (value always 1).",
        "gauge",
    );
    sample(
        out,
        "build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    static STARTED: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    family(
        out,
        "process_start_time_seconds",
        "When the metrics started counting (Unix time), about the process start.",
        "gauge",
    );
    sample(out, "process_start_time_seconds", &[], *STARTED);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    if let Some(rss) = kb("VmRSS:") {
        family(
            out,
            "process_resident_memory_bytes",
            "Resident memory.",
            "gauge",
        );
        sample(out, "process_resident_memory_bytes", &[], rss * 1024.0);
    }
    // utime and stime, fields 14 and 15, in USER_HZ ticks: 100 per second on Linux (a fixed
    // ABI value for /proc, whatever the kernel's HZ).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or_else(Vec::new, |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
        family(
            out,
            "process_cpu_seconds_total",
            "User and system CPU time.",
            "counter",
        );
        sample(
            out,
            "process_cpu_seconds_total",
            &[],
            (user + system) / 100.0,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(out, "process_open_fds", "Open file descriptors.", "gauge");
        sample(out, "process_open_fds", &[], fds.count() as f64);
    }
}

/// What one scrape renders.
pub struct MetricsInput<'a> {
    /// Counters.
    pub stats: &'a Stats,
    /// Component health.
    pub health: &'a Health,
    /// The spool at scrape time; `None` when it could not be read (the gauges are left out,
    /// and `rc_audit_hec_spool_readable` says 0).
    pub spool: Option<&'a Status>,
    /// Backfills the service still has to do.
    pub backfill: &'a [crate::spool::backfill::Job],
    /// Now, in ms since the epoch (a parameter so tests are exact).
    pub now_ms: i64,
}

/// A global counter's metric name, help text and accessor.
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
        "Records skipped because their id was already spooled (window overlap, re-poll).",
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
        "events_dead_lettered_total",
        "Events moved to the dead-letter table.",
        |s| &s.events_dead_lettered,
    ),
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
        "dynamodb_requests_total",
        "DynamoDB requests sent (BatchWriteItem, and PutItem to isolate a refused item).",
        |s| &s.dynamodb_requests,
    ),
    (
        "dynamodb_failures_total",
        "DynamoDB requests that did not write every item (throttled, 5xx, no answer, paused).",
        |s| &s.dynamodb_failures,
    ),
    (
        "dynamodb_unprocessed_items_total",
        "Items DynamoDB handed back as UnprocessedItems (resent after a backoff).",
        |s| &s.dynamodb_unprocessed,
    ),
    (
        "dynamodb_items_written_total",
        "Items DynamoDB wrote.",
        |s| &s.dynamodb_items_written,
    ),
    (
        "dynamodb_dead_lettered_total",
        "Records moved to the dead letters for DynamoDB (over the item size limit, refused).",
        |s| &s.dynamodb_dead_lettered,
    ),
    (
        "events_duplicate_suspected_total",
        "Events resent after HEC gave no answer in time; Splunk may hold them twice.",
        |s| &s.events_duplicate_suspected,
    ),
];

/// A per-destination gauge: (metric name, help, value from the destination's status and now).
type DestinationGauge = (
    &'static str,
    &'static str,
    fn(&crate::spool::DestinationStatus, i64) -> f64,
);

/// Per-account counters: (metric name, help, accessor).
type AccountCounter = (&'static str, &'static str, fn(&AccountStats) -> &AtomicU64);

const ACCOUNT_COUNTERS: &[AccountCounter] = &[
    (
        "account_records_polled_total",
        "Records received from RingCentral per account.",
        |a| &a.records_polled,
    ),
    (
        "account_records_spooled_total",
        "Records newly spooled per account.",
        |a| &a.records_spooled,
    ),
    (
        "account_records_duplicate_total",
        "Records skipped as already spooled, per account.",
        |a| &a.records_duplicate,
    ),
    (
        "account_windows_completed_total",
        "Live poll windows completed per account.",
        |a| &a.windows_completed,
    ),
    (
        "rc_malformed_responses_total",
        "RingCentral 200 answers that were not a usable page (no records array, wrong types), retried.",
        |a| &a.rc_malformed,
    ),
    (
        "rc_responses_too_large_total",
        "RingCentral answers larger than the size limit, not read (asked again with smaller pages).",
        |a| &a.rc_too_large,
    ),
    (
        "windows_unproven_total",
        "Windows left open (cursor not moved) because pages contradicted RingCentral's paging.",
        |a| &a.windows_unproven,
    ),
    (
        "windows_count_mismatch_total",
        "Windows committed with complete pages although totalFound disagreed with the records.",
        |a| &a.windows_count_mismatch,
    ),
    (
        "cursors_pulled_back_total",
        "Cursors found ahead of RingCentral's clock and pulled back.",
        |a| &a.cursors_pulled_back,
    ),
    (
        "rc_rate_limit_waits_total",
        "Requests that waited for the account's RingCentral rate limit (spent budget or 429 penalty).",
        |a| &a.rate_limit_waits,
    ),
];

/// Renders everything in the Prometheus text exposition format (version 0.0.4).
pub fn render_metrics(input: &MetricsInput<'_>) -> String {
    let mut out = String::new();
    let stats = input.stats;
    for (name, help, get) in COUNTERS {
        family(&mut out, name, help, "counter");
        sample(&mut out, name, &[], Stats::get(get(stats)) as f64);
    }

    let hec = stats
        .hec_responses
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    family(
        &mut out,
        "hec_responses_total",
        "HEC answers by URL, HTTP status and HEC code (status 0: no answer).",
        "counter",
    );
    for ((url, status, code), n) in &hec {
        let code = code.map_or_else(String::new, |c| c.to_string());
        let status = status.to_string();
        sample(
            &mut out,
            "hec_responses_total",
            &[("url", url), ("status", &status), ("code", &code)],
            *n as f64,
        );
    }

    let accounts = stats
        .accounts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, help, get) in ACCOUNT_COUNTERS {
        family(&mut out, name, help, "counter");
        for (account, a) in &accounts {
            sample(
                &mut out,
                name,
                &[("account", account)],
                Stats::get(get(a)) as f64,
            );
        }
    }
    family(
        &mut out,
        "rc_rate_limit_wait_seconds_total",
        "Seconds spent waiting for the account's RingCentral rate limit.",
        "counter",
    );
    for (account, a) in &accounts {
        let ms = Stats::get(&a.rate_limit_wait_ms);
        sample(
            &mut out,
            "rc_rate_limit_wait_seconds_total",
            &[("account", account)],
            ms as f64 / 1000.0,
        );
    }
    family(
        &mut out,
        "rc_responses_total",
        "RingCentral answers by account and HTTP status (status 0: no answer).",
        "counter",
    );
    for (account, a) in &accounts {
        let by_status = a
            .rc_responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (status, n) in by_status {
            let status = status.to_string();
            sample(
                &mut out,
                "rc_responses_total",
                &[("account", account), ("status", &status)],
                n as f64,
            );
        }
    }
    family(
        &mut out,
        "clock_skew_seconds",
        "This host's clock minus RingCentral's (Date header of the last answer); absent until measured.",
        "gauge",
    );
    for (account, a) in &accounts {
        if a.clock_skew_seen.load(Ordering::Relaxed) {
            let ms = a.clock_skew_ms.load(Ordering::Relaxed);
            sample(
                &mut out,
                "clock_skew_seconds",
                &[("account", account)],
                ms as f64 / 1000.0,
            );
        }
    }
    family(
        &mut out,
        "last_poll_timestamp_seconds",
        "When the account's last live poll window completed (Unix time; absent until one did).",
        "gauge",
    );
    for (account, a) in &accounts {
        let ms = a.last_poll_ms.load(Ordering::Relaxed);
        if ms > 0 {
            sample(
                &mut out,
                "last_poll_timestamp_seconds",
                &[("account", account)],
                ms as f64 / 1000.0,
            );
        }
    }
    family(
        &mut out,
        "last_delivery_timestamp_seconds",
        "When HEC last accepted events (Unix time; absent until it did since start).",
        "gauge",
    );
    let last = stats.last_delivery_ms.load(Ordering::Relaxed);
    if last > 0 {
        sample(
            &mut out,
            "last_delivery_timestamp_seconds",
            &[],
            last as f64 / 1000.0,
        );
    }
    family(
        &mut out,
        "dynamodb_last_delivery_timestamp_seconds",
        "When DynamoDB last wrote items (Unix time; absent until it did since start).",
        "gauge",
    );
    let last = stats.dynamodb_last_delivery_ms.load(Ordering::Relaxed);
    if last > 0 {
        sample(
            &mut out,
            "dynamodb_last_delivery_timestamp_seconds",
            &[],
            last as f64 / 1000.0,
        );
    }

    family(
        &mut out,
        "spool_readable",
        "1 when the spool could be read for this scrape.",
        "gauge",
    );
    sample(
        &mut out,
        "spool_readable",
        &[],
        f64::from(u8::from(input.spool.is_some())),
    );
    if let Some(spool) = input.spool {
        let gauges: [(&str, &str, f64); 3] = [
            (
                "spool_depth",
                "Events waiting in the spool for delivery.",
                spool.depth as f64,
            ),
            (
                "spool_bytes",
                "Bytes the spool database uses (compare with spool.max_bytes).",
                spool.used_bytes as f64,
            ),
            (
                "dead_letters",
                "Events in the dead-letter table.",
                spool.dead_letters as f64,
            ),
        ];
        for (name, help, value) in gauges {
            family(&mut out, name, help, "gauge");
            sample(&mut out, name, &[], value);
        }
        family(
            &mut out,
            "spool_oldest_record_age_seconds",
            "Age of the oldest event waiting for delivery (0 when the spool is empty).",
            "gauge",
        );
        let age = spool
            .oldest_spooled_ms
            .map_or(0, |t| (input.now_ms - t).max(0));
        sample(
            &mut out,
            "spool_oldest_record_age_seconds",
            &[],
            age as f64 / 1000.0,
        );
        // Per destination: each has its own outbox, so one that is down shows here while the
        // other's figures stay flat.
        let per_destination: [DestinationGauge; 3] = [
            (
                "destination_depth",
                "Events waiting for the destination.",
                |d, _| d.depth as f64,
            ),
            (
                "destination_oldest_record_age_seconds",
                "Age of the oldest event waiting for the destination (0 when none waits).",
                |d, now| d.oldest_spooled_ms.map_or(0, |t| (now - t).max(0)) as f64 / 1000.0,
            ),
            (
                "destination_dead_letters",
                "Dead letters of the destination.",
                |d, _| d.dead_letters as f64,
            ),
        ];
        for (name, help, value) in per_destination {
            family(&mut out, name, help, "gauge");
            for d in &spool.destinations {
                sample(
                    &mut out,
                    name,
                    &[("destination", d.destination.name())],
                    value(d, input.now_ms),
                );
            }
        }
        family(
            &mut out,
            "cursor_lag_seconds",
            "How far the account's cursor (end of its last complete window) is behind now.",
            "gauge",
        );
        for (account, cursor) in &spool.cursors {
            let lag = (input.now_ms - cursor).max(0);
            sample(
                &mut out,
                "cursor_lag_seconds",
                &[("account", account)],
                lag as f64 / 1000.0,
            );
        }
    }

    family(
        &mut out,
        "backfill_remaining_seconds",
        "History the service still has to backfill, per account (absent when none is waiting).",
        "gauge",
    );
    let mut remaining: BTreeMap<&str, i64> = BTreeMap::new();
    for job in input.backfill {
        *remaining.entry(job.account.as_str()).or_default() += job.remaining_ms;
    }
    for (account, ms) in remaining {
        sample(
            &mut out,
            "backfill_remaining_seconds",
            &[("account", account)],
            ms as f64 / 1000.0,
        );
    }

    render_histogram(
        &mut out,
        &stats.hec_request_seconds,
        "hec_request_duration_seconds",
        "HEC requests by how long the answer took (timeouts count at hec.timeout).",
    );
    render_histogram(
        &mut out,
        &stats.rc_request_seconds,
        "rc_request_duration_seconds",
        "RingCentral requests (token and search) by how long the answer took.",
    );
    render_process(&mut out);

    family(
        &mut out,
        "component_up",
        "1 when the component is ok, 0 when degraded or failing (see /healthz for why).",
        "gauge",
    );
    for (component, h) in input.health.snapshot() {
        let up = u8::from(h.state == State::Ok);
        sample(
            &mut out,
            "component_up",
            &[("component", &component)],
            f64::from(up),
        );
    }
    out
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP rc_audit_hec_{name} {help}\n# TYPE rc_audit_hec_{name} {kind}"
    );
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let _ = write!(out, "rc_audit_hec_{name}");
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape `\`, `"` and newlines (the text format's rule).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every line is a comment or `name{labels} value` with a parseable value, and every sample
    /// belongs to a family declared just before it.
    fn assert_valid_exposition(text: &str) {
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "undeclared family: {line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
        }
    }

    #[test]
    fn metrics_cover_counters_accounts_spool_and_health() {
        let stats = Stats::default();
        Stats::add(&stats.events_delivered, 7);
        stats.hec_response("https://a:8088", 503, Some(9));
        stats.hec_response("https://a:8088", 503, Some(9));
        let acme = stats.account("acme");
        acme.rc_response(200);
        acme.rc_response(429);
        acme.rate_limit_wait(Duration::from_millis(1500));
        acme.last_poll_ms
            .store(1_700_000_000_000, Ordering::Relaxed);
        stats.hec_request_seconds.observe(Duration::from_millis(30));
        stats
            .hec_request_seconds
            .observe(Duration::from_millis(700));
        stats.hec_request_seconds.observe(Duration::from_secs(90));
        stats
            .last_delivery_ms
            .store(1_700_000_001_000, Ordering::Relaxed);
        let health = Health::default();
        health.set(
            &crate::telemetry::Component::Account("acme".into()),
            State::Failing,
            Some("403".into()),
        );
        let spool = Status {
            depth: 3,
            used_bytes: 4096,
            oldest_spooled_ms: Some(1_700_000_000_000),
            dead_letters: 1,
            cursors: vec![("acme".into(), 1_699_999_940_000)],
            depth_by_account: vec![("acme".into(), 3)],
            destinations: vec![
                crate::spool::DestinationStatus {
                    destination: crate::config::Destination::Hec,
                    depth: 1,
                    oldest_spooled_ms: Some(1_700_000_030_000),
                    dead_letters: 1,
                },
                crate::spool::DestinationStatus {
                    destination: crate::config::Destination::DynamoDb,
                    depth: 2,
                    oldest_spooled_ms: Some(1_700_000_000_000),
                    dead_letters: 0,
                },
            ],
        };
        let text = render_metrics(&MetricsInput {
            stats: &stats,
            health: &health,
            spool: Some(&spool),
            backfill: &[crate::spool::backfill::Job {
                account: "acme".into(),
                from_ms: 0,
                to_ms: 86_400_000,
                remaining_ms: 43_200_000,
            }],
            now_ms: 1_700_000_060_000,
        });
        assert_valid_exposition(&text);
        for expected in [
            "rc_audit_hec_events_delivered_total 7",
            "rc_audit_hec_hec_responses_total{url=\"https://a:8088\",status=\"503\",code=\"9\"} 2",
            "rc_audit_hec_rc_responses_total{account=\"acme\",status=\"429\"} 1",
            "rc_audit_hec_rc_rate_limit_waits_total{account=\"acme\"} 1",
            "rc_audit_hec_rc_rate_limit_wait_seconds_total{account=\"acme\"} 1.5",
            "rc_audit_hec_last_poll_timestamp_seconds{account=\"acme\"} 1700000000",
            "rc_audit_hec_last_delivery_timestamp_seconds 1700000001",
            "rc_audit_hec_spool_depth 3",
            "rc_audit_hec_spool_bytes 4096",
            "rc_audit_hec_dead_letters 1",
            "rc_audit_hec_spool_oldest_record_age_seconds 60",
            "rc_audit_hec_destination_depth{destination=\"hec\"} 1",
            "rc_audit_hec_destination_depth{destination=\"dynamodb\"} 2",
            "rc_audit_hec_destination_oldest_record_age_seconds{destination=\"hec\"} 30",
            "rc_audit_hec_destination_oldest_record_age_seconds{destination=\"dynamodb\"} 60",
            "rc_audit_hec_destination_dead_letters{destination=\"hec\"} 1",
            "rc_audit_hec_cursor_lag_seconds{account=\"acme\"} 120",
            "rc_audit_hec_component_up{component=\"account:acme\"} 0",
            "rc_audit_hec_spool_readable 1",
            "rc_audit_hec_backfill_remaining_seconds{account=\"acme\"} 43200",
            "rc_audit_hec_hec_request_duration_seconds_bucket{le=\"0.01\"} 0",
            "rc_audit_hec_hec_request_duration_seconds_bucket{le=\"0.05\"} 1",
            "rc_audit_hec_hec_request_duration_seconds_bucket{le=\"1\"} 2",
            "rc_audit_hec_hec_request_duration_seconds_bucket{le=\"60\"} 2",
            "rc_audit_hec_hec_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "rc_audit_hec_hec_request_duration_seconds_sum 90.73",
            "rc_audit_hec_hec_request_duration_seconds_count 3",
            "rc_audit_hec_rc_request_duration_seconds_count 0",
            concat!(
                "rc_audit_hec_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "rc_audit_hec_process_resident_memory_bytes ",
            "rc_audit_hec_process_cpu_seconds_total ",
            "rc_audit_hec_process_open_fds ",
            "rc_audit_hec_process_start_time_seconds ",
        ] {
            assert!(text.contains(expected), "missing {expected}:\n{text}");
        }
    }

    #[test]
    fn an_unreadable_spool_is_said_not_hidden() {
        let text = render_metrics(&MetricsInput {
            stats: &Stats::default(),
            health: &Health::default(),
            spool: None,
            backfill: &[],
            now_ms: 0,
        });
        assert_valid_exposition(&text);
        assert!(text.contains("rc_audit_hec_spool_readable 0"));
        assert!(!text.contains("rc_audit_hec_spool_depth "));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
