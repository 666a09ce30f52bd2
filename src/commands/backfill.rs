//! `backfill --from T [--to T] [--account NAME]`: polls a past range into the spool, with a
//! progress bar on a terminal, or hands the range to the running service (planning:
//! [`crate::backfill`]).
//!
//! # What it shares with live polling, and what it does not touch
//! Every piece goes through the account's own [`Poller`] (so the same RingCentral client, token
//! and rate limiter, the same transform, the same spool and its per-record-id dedup) via
//! [`Poller::backfill_range`], which never moves the live cursor: the service's next live
//! window is exactly what it would have been. Records the live poller already spooled are
//! skipped by the dedup, so a backfill over a range the service already covered sends nothing
//! twice.
//!
//! # Pieces, progress and resuming
//! The range is cut into pieces of at most [`CHUNK`] (a day). After every record of a piece is
//! committed, the piece is recorded in the spool ([`crate::spool::backfill`]); an interrupted
//! backfill (Ctrl-C, SIGTERM, a crash, an account that failed) run again with an overlapping
//! range polls only what is missing. Each piece is one search (more pages when it holds more
//! than `page_size` records), paced by the rate limiter: with RingCentral's default of 10
//! searches a minute, 180 days take at least 18 minutes per account; accounts run in parallel,
//! each with its own limit.
//!
//! # Limits
//! RingCentral keeps 180 days (and at most the newest 10,000 records per account): an older
//! `--from` is moved up to 180 days ago (minus five minutes of margin) with a note, and a range
//! entirely older than that is refused.
//!
//! The command delivers while it polls (the sink runs alongside) and, once every account is
//! done, keeps delivering for at most `--max-wait`, like `once`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Error, Report, load_config};
use crate::admin::wire::{BackfillJobs, BackfillRequest, ErrorDoc, Livez};
use crate::backfill::{CHUNK, DAY_MS, Range, parse_time, plan_range, select_accounts};
use crate::config::{Config, LoadEnv};
use crate::exit::Code;
use crate::pipeline::{AccountError, AppError, Options, Pipeline};
use crate::ringcentral::Poller;
use crate::ringcentral::poller::{PollError, WindowOutcome};
use crate::signals::cancel_on_signals;
use crate::spool::SpoolError;
use crate::spool::backfill::gaps;
use crate::time::rfc3339_millis;

/// One account's result.
#[derive(Debug, Clone, Default)]
pub struct AccountReport {
    /// Account name.
    pub name: String,
    /// Milliseconds of the range that earlier runs had already done.
    pub already_done_ms: i64,
    /// Milliseconds polled by this run.
    pub polled_ms: i64,
    /// Records received.
    pub records: u64,
    /// Records new to the spool.
    pub inserted: u64,
    /// Why it stopped early.
    pub error: Option<AccountError>,
}

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    /// Per account, in config order.
    pub accounts: Vec<AccountReport>,
    /// Stopped by Ctrl-C or SIGTERM (progress is kept; run the command again to resume).
    pub interrupted: bool,
    /// Events still spooled at the end (HEC did not take them all within `--max-wait`).
    pub remaining: u64,
}

impl crate::exit::Code for BackfillReport {
    /// 78 when an account's configuration was refused, 1 when interrupted or an account
    /// failed, 75 when records remain spooled, else 0.
    fn exit_code(&self) -> u8 {
        use crate::exit::Outcome;
        let accounts = self.accounts.iter().filter_map(|a| a.error.as_ref());
        let interrupted = self.interrupted.then_some(Outcome::Failed);
        let remaining = (self.remaining > 0).then_some(Outcome::RecordsRemain);
        Outcome::worst(
            accounts
                .map(AccountError::outcome)
                .chain(interrupted)
                .chain(remaining),
        )
        .exit_code()
    }
}

/// Progress for a person: an indicatif bar when stderr is a terminal, plain lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    total_ms: u64,
    done_ms: AtomicU64,
    records: AtomicU64,
    accounts: usize,
    accounts_done: AtomicUsize,
    /// When the last plain line was written (lines at most every `line_every`).
    last_line: Mutex<Option<Instant>>,
    line_every: Duration,
    /// False when following the service's backfill, which does not report record counts.
    count_records: bool,
}

impl Progress {
    /// Progress over `total_ms` of history across `accounts` accounts; a bar only if `terminal`.
    pub fn new(total_ms: u64, accounts: usize, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(total_ms.max(1));
            bar.set_style(
                ProgressStyle::with_template(
                    "backfill [{bar:40}] {percent:>3}% {msg} ({elapsed}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            total_ms,
            done_ms: AtomicU64::new(0),
            records: AtomicU64::new(0),
            accounts,
            accounts_done: AtomicUsize::new(0),
            last_line: Mutex::new(None),
            line_every: Duration::from_secs(5),
            count_records: true,
        }
    }

    /// Progress of a backfill the service does (days only: the service reports no records).
    pub fn following(total_ms: u64, accounts: usize) -> Self {
        Progress {
            count_records: false,
            ..Self::for_stderr(total_ms, accounts)
        }
    }

    /// A bar if stderr is a terminal, else plain lines.
    pub fn for_stderr(total_ms: u64, accounts: usize) -> Self {
        Self::new(total_ms, accounts, std::io::stderr().is_terminal())
    }

    /// The summary text: `12.0 of 30.0 days, 4711 new records, 1/3 accounts done`. Days of the
    /// range, not account-days: the history polled is spread over the accounts (30 days of 3
    /// accounts show as 30 days, and 10.0 once one account is through).
    pub fn text(&self) -> String {
        let per_account = DAY_MS * self.accounts.max(1) as f64;
        let days = format!(
            "{:.1} of {:.1} days",
            self.done_ms.load(Ordering::Relaxed) as f64 / per_account,
            self.total_ms as f64 / per_account
        );
        if !self.count_records {
            return days;
        }
        format!(
            "{days}, {} new records, {}/{} accounts done",
            self.records.load(Ordering::Relaxed),
            self.accounts_done.load(Ordering::Relaxed),
            self.accounts
        )
    }

    /// Sets the amount done (when following the service).
    pub fn set_done(&self, done_ms: u64) {
        let before = self.done_ms.load(Ordering::Relaxed);
        if done_ms > before {
            self.advance(done_ms - before, 0);
        }
    }

    fn advance(&self, ms: u64, inserted: u64) {
        let done = self.done_ms.fetch_add(ms, Ordering::Relaxed) + ms;
        self.records.fetch_add(inserted, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(self.text());
            }
            None => self.line(false),
        }
    }

    fn account_done(&self, name: &str, what: &str) {
        self.accounts_done.fetch_add(1, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => {
                bar.println(format!("backfill: account {name}: {what}"));
                bar.set_message(self.text());
            }
            None => {
                eprintln!("backfill: account {name}: {what}");
                self.line(true);
            }
        }
    }

    fn line(&self, force: bool) {
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        if force || last.is_none_or(|t| t.elapsed() >= self.line_every) {
            let pct = if self.total_ms == 0 {
                100.0
            } else {
                self.done_ms.load(Ordering::Relaxed) as f64 * 100.0 / self.total_ms as f64
            };
            eprintln!("backfill: {pct:.0}% ({})", self.text());
            *last = Some(Instant::now());
        }
    }

    /// Ends the bar (or writes the last line).
    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(self.text()),
            None => self.line(true),
        }
    }
}

/// Why a backfill could not be handed to the running service.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// The admin endpoint is off, so there is no way to reach the service.
    #[error(
        "the running service holds the spool, and its admin endpoint is off (admin.listen = \"\"): turn admin.listen on and reload the service (systemctl reload rc-audit-hec), or stop it (systemctl stop rc-audit-hec), run backfill, and start it again"
    )]
    NoAdmin,
    /// The endpoint did not answer.
    #[error(
        "cannot reach the running service's admin endpoint at {url}: {detail}; check admin.listen, or stop the service (systemctl stop rc-audit-hec), run backfill, and start it again"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        detail: String,
    },
    /// The service answered with an error.
    #[error("the running service refused the backfill: {0}")]
    Refused(String),
    /// No service answers and there is no spool: a backfill would start a second spool (with
    /// its own cursors) beside the service's, and send duplicates.
    #[error(
        "no rc-audit-hec service answers at {admin} and there is no spool in {dir}: backfill adds to an existing spool and never starts a new one. If the service runs, check admin.listen (it finds the service) and spool.dir; otherwise run `rc-audit-hec once` (or start the service) first"
    )]
    NoSpool {
        /// The state directory looked at.
        dir: std::path::PathBuf,
        /// The admin address tried, or "admin.listen (off)".
        admin: String,
    },
}

/// The address to reach the admin endpoint bound to `listen` from this machine (a wildcard
/// bind is reached on loopback).
pub fn admin_addr(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

/// Whether a running service answers on its admin endpoint (`GET /livez`): how `backfill` and
/// the `spool` commands find the service without its credentials or its `$STATE_DIRECTORY`.
pub async fn service_answers(listen: Option<std::net::SocketAddr>) -> bool {
    service_livez(listen).await.is_some()
}

/// The running service's `/livez` document (its version and state directory), or `None` when
/// nothing answers.
pub async fn service_livez(listen: Option<std::net::SocketAddr>) -> Option<Livez> {
    let url = format!("http://{}/livez", admin_addr(listen?));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let resp = http.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let doc: Livez = resp.json().await.ok()?;
    (doc.status == "alive").then_some(doc)
}

/// While the service runs (it holds the spool), `backfill` hands the range to it through
/// `POST /backfill` on the admin endpoint; the service polls it between live windows within the
/// same rate limits. Then follows the progress (`GET /backfill`) until the service has no
/// backfill left for `accounts`. Returns false when `shutdown` came first (the service carries
/// on regardless).
pub async fn hand_to_service(
    listen: Option<std::net::SocketAddr>,
    range: Range,
    accounts: &[String],
    all_accounts: bool,
    again: bool,
    shutdown: CancellationToken,
) -> Result<bool, HandOverError> {
    let addr = listen.ok_or(HandOverError::NoAdmin)?;
    let url = format!("http://{}/backfill", admin_addr(addr));
    let unreachable = |e: reqwest::Error| HandOverError::Unreachable {
        url: url.clone(),
        detail: crate::telemetry::logging::error_chain(&e.without_url()),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(unreachable)?;
    let body = BackfillRequest {
        from: rfc3339_millis(range.from),
        to: rfc3339_millis(range.to),
        accounts: if all_accounts {
            Vec::new()
        } else {
            accounts.to_vec()
        },
        again,
    };
    let resp = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    let doc: serde_json::Value = resp.json().await.map_err(unreachable)?;
    if !status.is_success() {
        let why = serde_json::from_value::<ErrorDoc>(doc)
            .map_or_else(|_| format!("HTTP {status}"), |d| d.error);
        return Err(HandOverError::Refused(why));
    }
    let remaining = |doc: serde_json::Value| -> u64 {
        serde_json::from_value::<BackfillJobs>(doc)
            .unwrap_or_default()
            .remaining_ms(accounts)
    };
    let total = remaining(doc);
    eprintln!(
        "backfill: the service is running, so it does the backfill itself, between live windows and within the same rate limits; following its progress (Ctrl-C stops following, not the backfill)"
    );
    let progress = Progress::following(total, accounts.len());
    loop {
        let left = match http.get(&url).send().await {
            Ok(r) => match r.json::<serde_json::Value>().await {
                Ok(doc) => Some(remaining(doc)),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if let Some(left) = left {
            progress.set_done(total.saturating_sub(left));
            if left == 0 {
                progress.finish();
                return Ok(true);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {
                eprintln!("backfill: stopped following; the service carries on (GET {url} shows what is left)");
                return Ok(false);
            }
        }
    }
}

/// Backfills `range` for `accounts` (see the module docs) and delivers for at most
/// `max_wait` afterwards.
pub async fn run(
    pipeline: &Pipeline,
    range: Range,
    accounts: &[String],
    max_wait: Duration,
    make_progress: impl FnOnce(u64, usize) -> Progress,
    shutdown: CancellationToken,
) -> Result<BackfillReport, AppError> {
    let (from_ms, to_ms) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let mut plans = Vec::new();
    for name in accounts {
        let n = name.clone();
        let done = pipeline.spool.run(move |s| s.backfill_done(&n)).await?;
        let todo = gaps(from_ms, to_ms, &done);
        let todo_ms: i64 = todo.iter().map(|(a, b)| b - a).sum();
        plans.push((name.clone(), todo, (to_ms - from_ms) - todo_ms));
    }
    // The whole range for every account, with what earlier runs did counted as done: the
    // progress shows days of the range (see [`Progress::text`]), not just what is left.
    let total = (to_ms - from_ms) * plans.len() as i64;
    let already: i64 = plans.iter().map(|(_, _, done)| done).sum();
    let progress = Arc::new(make_progress(
        u64::try_from(total).unwrap_or(0),
        plans.len(),
    ));
    progress.set_done(u64::try_from(already).unwrap_or(0));
    info!(from = %crate::time::rfc3339_millis(range.from), to = %crate::time::rfc3339_millis(range.to),
        accounts = plans.len(), "backfill starting");

    let sink = pipeline.sink()?;
    let stop_sink = shutdown.child_token();
    let sink_task = tokio::spawn(sink.run(stop_sink.clone()));

    let mut pollers: Vec<Poller> = pipeline.pollers(Some(5));
    let mut tasks = JoinSet::new();
    for (name, todo, already_done_ms) in plans {
        let Some(i) = pollers.iter().position(|p| p.account() == name) else {
            continue;
        };
        let poller = pollers.swap_remove(i);
        let report = AccountReport {
            name: name.clone(),
            already_done_ms,
            ..AccountReport::default()
        };
        tasks.spawn(backfill_account(
            poller,
            todo,
            report,
            pipeline.spool.clone(),
            progress.clone(),
            shutdown.clone(),
        ));
    }
    let mut report = BackfillReport::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(account) = joined {
            report.accounts.push(account);
        }
    }
    let order: Vec<&str> = accounts.iter().map(String::as_str).collect();
    report
        .accounts
        .sort_by_key(|a| order.iter().position(|n| *n == a.name));
    progress.finish();
    report.interrupted = shutdown.is_cancelled();

    // Deliver what is spooled, for at most max_wait (not after an interruption: the user asked
    // to stop; the service or the next run delivers it).
    let deadline = Instant::now() + max_wait;
    while !report.interrupted && Instant::now() < deadline {
        if pipeline.spool.run(|s| s.depth()).await? == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    stop_sink.cancel();
    let _ = sink_task.await;
    report.remaining = pipeline.spool.run(|s| s.depth()).await?;
    Ok(report)
}

/// Polls one account's missing pieces in order, recording each when done.
async fn backfill_account(
    mut poller: Poller,
    todo: Vec<(i64, i64)>,
    mut report: AccountReport,
    spool: crate::spool::Spool,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> AccountReport {
    let chunk = i64::try_from(CHUNK.as_millis()).unwrap_or(i64::MAX);
    let mut full_logged = false;
    for (a, b) in todo {
        let mut at = a;
        while at < b {
            let end = (at.saturating_add(chunk)).min(b);
            let (Some(from), Some(to)) = (
                DateTime::<Utc>::from_timestamp_millis(at),
                DateTime::<Utc>::from_timestamp_millis(end),
            ) else {
                report.error = Some(AccountError::failed(&report.name, "time out of range"));
                return report;
            };
            let outcome = tokio::select! {
                r = poller.backfill_range(from, to) => r,
                _ = shutdown.cancelled() => {
                    progress.account_done(&report.name, "interrupted; run the same command again to resume");
                    return report;
                }
            };
            match outcome {
                Ok(WindowOutcome::Polled {
                    records, inserted, ..
                }) => {
                    let name = report.name.clone();
                    if let Err(e) = spool.run(move |s| s.backfill_mark(&name, at, end)).await {
                        // The records are spooled; only the progress note is missing, so a
                        // rerun polls this piece again and the dedup absorbs it.
                        warn!(account = %report.name, "cannot record backfill progress ({e}); a rerun re-polls this piece (no duplicates reach Splunk)");
                    }
                    report.polled_ms += end - at;
                    report.records += records as u64;
                    report.inserted += inserted as u64;
                    progress.advance(u64::try_from(end - at).unwrap_or(0), inserted as u64);
                    at = end;
                }
                Ok(WindowOutcome::SpoolFull { reason }) => {
                    if !full_logged {
                        warn!(account = %report.name,
                            "{reason}: backfill waits for delivery to free space (raise spool.max_bytes, or check that HEC accepts events)");
                        full_logged = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Ok(WindowOutcome::NotDue) => at = end,
                Err(e) => {
                    let config = matches!(&e, PollError::RingCentral(rc) if rc.is_config());
                    let text = e.to_string();
                    progress.account_done(
                        &report.name,
                        &format!(
                            "stopped: {text}; fix it and run the same command again to resume"
                        ),
                    );
                    report.error = Some(AccountError {
                        account: report.name.clone(),
                        reason: text,
                        config,
                    });
                    return report;
                }
            }
        }
    }
    let days = (report.polled_ms as f64 + report.already_done_ms as f64) / DAY_MS;
    progress.account_done(
        &report.name,
        &format!(
            "done ({days:.1} days, {} records, {} new)",
            report.records, report.inserted
        ),
    );
    report
}

/// What the `backfill` command did.
#[derive(Debug)]
pub enum BackfillOutcome {
    /// The running service took the range (it reports progress itself).
    HandedOver,
    /// Polled here.
    Ran(BackfillReport),
}

/// `backfill`: plan; hand the range to the running service when one answers on the admin
/// endpoint; otherwise run it here (only on an existing spool) with progress. Exit 0, 1
/// (interrupted or failed), 75 (records left spooled) or 78 (an account's credentials or
/// permission).
pub async fn command(
    path: &std::path::Path,
    from: &str,
    to: Option<&str>,
    accounts: &[String],
    max_wait: Duration,
    again: bool,
) -> Result<BackfillOutcome, Error> {
    // Without secrets first: from an admin shell the service's credentials are out of
    // reach, and handing the range to the running service does not need them.
    let config = Config::load_without_secrets(path, &LoadEnv::from_process())?;
    crate::telemetry::init_logging(config.log.format, &config.log.level);
    crate::signals::ignore_sighup("backfill");
    let now = Utc::now();
    let from = parse_time("--from", from, now)?;
    let to = to.map(|t| parse_time("--to", t, now)).transpose()?;
    let range = plan_range(from, to, now, config.poll.settle_delay)?;
    if range.clamped {
        eprintln!(
            "backfill: RingCentral keeps 180 days; starting at {} instead",
            rfc3339_millis(range.from)
        );
    }
    let listen = config.admin.listen;
    let known: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
    let shutdown = CancellationToken::new();
    let other = |e: HandOverError| Error::Other(e.into());
    if service_answers(listen).await {
        let names = select_accounts(&known, accounts)?;
        cancel_on_signals(shutdown.clone());
        hand_to_service(listen, range, &names, accounts.is_empty(), again, shutdown)
            .await
            .map_err(other)?;
        return Ok(BackfillOutcome::HandedOver);
    }
    if !config.spool.dir.join("spool.db").exists() {
        return Err(other(HandOverError::NoSpool {
            dir: std::path::absolute(&config.spool.dir).unwrap_or(config.spool.dir),
            admin: listen.map_or_else(
                || "admin.listen (off)".to_string(),
                |a| admin_addr(a).to_string(),
            ),
        }));
    }
    // Running it here: now the secrets are needed.
    let config = load_config(path)?;
    let pipeline = match Pipeline::open(config, Options::default()) {
        Err(AppError::Spool(SpoolError::Locked { .. })) => {
            let names = select_accounts(&known, accounts)?;
            cancel_on_signals(shutdown.clone());
            let all = accounts.is_empty();
            hand_to_service(listen, range, &names, all, again, shutdown)
                .await
                .map_err(other)?;
            return Ok(BackfillOutcome::HandedOver);
        }
        other => other?,
    };
    let names = select_accounts(&known, accounts)?;
    if again {
        let (from_ms, to_ms) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        for name in &names {
            pipeline.spool.backfill_forget(name, from_ms, to_ms)?;
        }
    }
    cancel_on_signals(shutdown.clone());
    let report = run(
        &pipeline,
        range,
        &names,
        max_wait,
        Progress::for_stderr,
        shutdown,
    )
    .await?;
    Ok(BackfillOutcome::Ran(report))
}

impl Code for BackfillOutcome {
    fn exit_code(&self) -> u8 {
        match self {
            BackfillOutcome::HandedOver => crate::exit::OK,
            BackfillOutcome::Ran(report) => report.exit_code(),
        }
    }
}

impl Report for BackfillOutcome {
    /// The summary of a backfill run here, on stderr (the progress went there too).
    fn print(&self) -> Result<(), Error> {
        let BackfillOutcome::Ran(report) = self else {
            return Ok(());
        };
        let new: u64 = report.accounts.iter().map(|a| a.inserted).sum();
        eprintln!(
            "backfill: {} account(s), {new} new record(s) spooled, {} still spooled{}",
            report.accounts.len(),
            report.remaining,
            if report.interrupted {
                "; interrupted: run the same command again to resume"
            } else {
                ""
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_follows_progress_and_following_mode_counts_days_only() {
        let p = Progress::new(2 * 86_400_000, 1, true);
        p.advance(86_400_000, 3);
        assert_eq!(p.bar.as_ref().map(ProgressBar::position), Some(86_400_000));
        p.account_done("acme", "done");
        p.finish();
        assert!(p.bar.as_ref().is_some_and(ProgressBar::is_finished));
        let f = Progress {
            count_records: false,
            ..Progress::new(86_400_000, 1, false)
        };
        f.set_done(43_200_000);
        f.set_done(10);
        assert_eq!(f.text(), "0.5 of 1.0 days", "progress never goes back");
    }

    #[test]
    fn plain_progress_text_counts_days_records_and_accounts() {
        // Two accounts, three days each: days of the range, not account-days.
        let p = Progress::new(2 * 3 * 86_400_000, 2, false);
        p.advance(2 * 86_400_000, 10);
        assert_eq!(
            p.text(),
            "1.0 of 3.0 days, 10 new records, 0/2 accounts done"
        );
        p.account_done("acme", "done");
        assert!(p.text().ends_with("1/2 accounts done"));
    }
}
