//! Logging: text (default) or JSON lines on stderr, journald-friendly under systemd, and
//! warnings and errors rate-limited so an outage does not flood the journal.
//!
//! - **journald.** When stderr is the journal (`$JOURNAL_STREAM` names stderr's device and
//!   inode, as systemd sets it), every line starts with a `<N>` syslog priority prefix, which
//!   journald turns into the entry's priority (`journalctl -p warning` works), and the text
//!   format leaves out the timestamp and colours (journald records its own time).
//! - **Rate limit.** A 503 storm or a long outage repeats the same warning; after
//!   [`BURST`] lines from one call site (and one account or URL) within [`WINDOW`], further
//!   ones are counted instead of written. [`report_suppressed`] logs one summary line per call
//!   site and minute saying how many were held back. Info and below are never limited.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::{FmtSpan, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Lines per call site (and account/URL) let through per [`WINDOW`].
pub const BURST: u32 = 5;
/// The rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Target of the summary lines (never limited themselves).
const SUMMARY_TARGET: &str = "rc_audit_hec::log_rate_limit";

/// The process-wide limiter used by [`init_logging`] and [`report_suppressed`].
static LIMITER: LazyLock<Arc<LogRateLimit>> =
    LazyLock::new(|| Arc::new(LogRateLimit::new(BURST, WINDOW)));

/// Installs the global tracing subscriber (stderr). `level` is an `EnvFilter` directive;
/// `RUST_LOG`, when set, wins. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal();
    let ansi = !journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = output_layer(format, journal, ansi, std::io::stderr, LIMITER.clone());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// The formatting layer, rate-limited; separate from [`init_logging`] so tests can capture it.
pub fn output_layer<S, W>(
    format: LogFormat,
    journal: bool,
    ansi: bool,
    writer: W,
    limiter: Arc<LogRateLimit>,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE);
    match (format, journal) {
        (LogFormat::Json, _) => base
            .json()
            .flatten_event(true)
            .map_event_format(|f| Prefixed { journal, inner: f })
            .with_filter(RateLimitFilter(limiter.clone()))
            .boxed(),
        (LogFormat::Text, true) => base
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .map_event_format(|f| Prefixed {
                journal: true,
                inner: f,
            })
            .with_filter(RateLimitFilter(limiter.clone()))
            .boxed(),
        (LogFormat::Text, false) => base
            .with_ansi(ansi)
            .with_target(false)
            .with_filter(RateLimitFilter(limiter.clone()))
            .boxed(),
    }
}

/// True when stderr is the journal stream systemd set up (`$JOURNAL_STREAM` = `dev:inode` of
/// stderr). Checked against stderr itself, so a redirected stderr is not mistaken for it.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Writes the `<N>` priority prefix before the wrapped format when `journal` is set.
struct Prefixed<F> {
    journal: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.journal {
            write!(writer, "<{}>", priority(event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Per-call-site rate limit for warnings and errors (see the module docs).
#[derive(Debug)]
pub struct LogRateLimit {
    burst: u32,
    window: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
}

/// Call site plus the `account` or `url` field, so one account's storm does not silence
/// another account's first warning.
type Key = (tracing::callsite::Identifier, String);

#[derive(Debug)]
struct Slot {
    window_start: Instant,
    written: u32,
    suppressed: u64,
    /// The message of the last suppressed line, for the summary.
    sample: String,
}

impl LogRateLimit {
    /// A limiter letting `burst` lines per key through per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        LogRateLimit {
            burst,
            window,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, event: &Event<'_>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || meta.target() == SUMMARY_TARGET {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let key = (meta.callsite(), fields.scope);
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(key).or_insert_with(|| Slot {
            window_start: now,
            written: 0,
            suppressed: 0,
            sample: String::new(),
        });
        if now.duration_since(slot.window_start) >= self.window {
            slot.window_start = now;
            slot.written = 0;
        }
        if slot.written < self.burst {
            slot.written += 1;
            true
        } else {
            slot.suppressed += 1;
            slot.sample = fields.message;
            false
        }
    }

    /// Takes the counts of suppressed lines: (a sample message, how many), one per key.
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        slots.retain(|_, slot| {
            if slot.suppressed > 0 {
                out.push((std::mem::take(&mut slot.sample), slot.suppressed));
                slot.suppressed = 0;
            }
            // Forget quiet keys so the map does not grow with every account and URL forever.
            slot.window_start.elapsed() < self.window * 2
        });
        out.sort();
        out
    }
}

/// [`LogRateLimit`] as a per-layer filter.
struct RateLimitFilter(Arc<LogRateLimit>);

impl<S> Filter<S> for RateLimitFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        self.0.admit(event)
    }
}

/// The fields the limiter looks at.
#[derive(Default)]
struct Fields {
    /// `account` or `url`, when the event has one.
    scope: String,
    message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "account" | "url" => self.scope = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "account" | "url" => self.scope = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

/// An error with its causes, `outer: cause: root cause`, so a log line or `check` says *why*
/// a request failed (connection refused, certificate not trusted), not just that it did.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Logs, once per [`WINDOW`], how many lines the rate limit held back, until `shutdown`.
pub async fn report_suppressed(shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WINDOW) => {}
            _ = shutdown.cancelled() => return,
        }
        log_suppressed(&LIMITER);
    }
}

fn log_suppressed(limiter: &LogRateLimit) {
    for (sample, n) in limiter.take_suppressed() {
        tracing::warn!(target: SUMMARY_TARGET, suppressed = n,
            "{n} more line(s) like this were not logged in the last minute (rate limit; the condition persists, see /healthz for its current state): {sample}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat, journal: bool, f: impl FnOnce(&LogRateLimit)) -> String {
        let buf = Buf::default();
        let limiter = Arc::new(LogRateLimit::new(3, Duration::from_secs(3600)));
        let subscriber = tracing_subscriber::registry().with(output_layer(
            format,
            journal,
            false,
            buf.clone(),
            limiter.clone(),
        ));
        tracing::subscriber::with_default(subscriber, || f(&limiter));
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_warning_storm_is_cut_to_a_burst_and_a_summary() {
        let out = capture(LogFormat::Text, false, |limiter| {
            for i in 0..100 {
                tracing::warn!(url = "https://a", attempt = i, "HEC busy: retrying");
            }
            // Another URL's warning from the same call site is not silenced by the first.
            for _ in 0..2 {
                tracing::warn!(url = "https://b", attempt = 0, "HEC busy: retrying");
            }
            tracing::info!("info is never limited");
            log_suppressed(limiter);
        });
        let busy = out.lines().filter(|l| l.contains("HEC busy")).count();
        assert_eq!(busy, 3 + 2 + 1, "burst per URL plus one summary:\n{out}");
        assert!(
            out.contains("97 more line(s) like this were not logged"),
            "{out}"
        );
        assert!(out.contains("info is never limited"));
    }

    #[test]
    fn journald_lines_carry_a_priority_prefix_and_no_timestamp() {
        let out = capture(LogFormat::Text, true, |_| {
            tracing::error!("spool unreadable: check the disk");
            tracing::warn!("a warning");
            tracing::info!("hello");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("<3>"), "{out}");
        assert!(lines[1].starts_with("<4>"), "{out}");
        assert!(lines[2].starts_with("<6>"), "{out}");
        assert!(
            !lines[2].contains(&chrono::Utc::now().format("%Y-%m-%d").to_string()),
            "journald adds the time itself: {out}"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_fields() {
        let out = capture(LogFormat::Json, false, |_| {
            tracing::warn!(account = "acme", "polling stopped");
        });
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["account"], "acme");
        assert_eq!(v["message"], "polling stopped");
    }

    #[test]
    fn stderr_is_not_the_journal_without_journal_stream() {
        // The test runner's stderr is a pipe or terminal; JOURNAL_STREAM is normally unset, and
        // when it is set (tests run under systemd) it does not name this pipe.
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(!stderr_is_journal());
        }
    }
}
