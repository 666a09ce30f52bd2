//! `once --dry-run`: what the next `once` would send to Splunk, printed instead of sent.
//!
//! For every account it computes the window the next poll would use (from the account's cursor,
//! read from the spool **read-only and without its lock**, so it works while the service runs),
//! polls it with the same pager, rate limiting and transform as live polling, and writes each
//! HEC event that would be sent as one JSON line, byte for byte what the sink would put in a
//! request. Records the spool already holds (and so would not send again) are counted, not
//! printed; so are events HEC would refuse (they would go to dead letters). Nothing is sent,
//! nothing is written: no cursor moves, no record is spooled.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::task::JoinSet;
use tracing::{error, warn};

use super::{Error, Report, load_config};
use crate::config::Config;
use crate::hec::batch::validate_event;
use crate::pipeline::{AccountError, AppError, Options, ringcentral_http};
use crate::ringcentral::RcClient;
use crate::ringcentral::poller::{Pager, PollError, new_records, next_window};
use crate::spool::SpoolError;
use crate::spool::reader::Reader;
use crate::telemetry::Stats;
use crate::transform::Transformer;

/// What the dry run did.
#[derive(Debug, Default, Clone)]
pub struct DryRunReport {
    /// Accounts polled completely.
    pub accounts_polled: usize,
    /// Events printed (what would be sent).
    pub printed: u64,
    /// Records skipped because the spool already has them.
    pub already_spooled: u64,
    /// Events HEC would refuse (local validation), with the reason.
    pub invalid: Vec<(String, String)>,
    /// Accounts that could not be polled.
    pub account_errors: Vec<AccountError>,
}

impl crate::exit::Code for DryRunReport {
    /// 78 when an account's configuration was refused, 1 when an account failed, else 0.
    fn exit_code(&self) -> u8 {
        crate::exit::Outcome::worst(self.account_errors.iter().map(AccountError::outcome))
            .exit_code()
    }
}

/// `once --dry-run` with the config at `path`: events on stdout as they come.
pub async fn command(path: &std::path::Path) -> Result<DryRunReport, Error> {
    let config = load_config(path)?;
    crate::signals::ignore_sighup("once --dry-run");
    Ok(run(&config, &Options::default(), Box::new(std::io::stdout())).await?)
}

impl Report for DryRunReport {
    /// The summary and each problem, on stderr (the events went to stdout).
    fn print(&self) -> Result<(), Error> {
        eprintln!(
            "dry run: {} account(s) polled, {} event(s) printed (what would be sent), {} record(s) already spooled or delivered (not printed); nothing was sent and no cursor moved",
            self.accounts_polled, self.printed, self.already_spooled
        );
        for (id, why) in &self.invalid {
            eprintln!("dry run: record {id} would go to dead letters: {why}");
        }
        for e in &self.account_errors {
            eprintln!("dry run: account {}: {}", e.account, e.reason);
        }
        Ok(())
    }
}

/// Failures that stop the whole dry run.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// The spool exists but cannot be read.
    #[error(
        "cannot read the cursors in the spool ({0}); run the dry run as the service's user, or point spool.dir at a readable copy"
    )]
    Spool(#[from] SpoolError),
    /// The HTTP client cannot be built.
    #[error(transparent)]
    App(#[from] AppError),
}

/// Runs the dry run, writing events to `out`.
pub async fn run(
    config: &Config,
    options: &Options,
    out: Box<dyn Write + Send>,
) -> Result<DryRunReport, DryRunError> {
    // No spool yet (first run): no cursor, nothing seen.
    let peek = match Reader::open(&config.spool.dir) {
        Ok(reader) => Some(reader),
        Err(SpoolError::Missing(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let peek = Arc::new(Mutex::new(peek));
    let http = ringcentral_http(options.rc_timeout)?;
    let out = Arc::new(Mutex::new(out));
    let stats = Arc::new(Stats::default());
    let mut tasks = JoinSet::new();
    for account in &config.accounts {
        let client = RcClient::new(http.clone(), account, options.retry, stats.clone())
            .with_max_attempts(Some(5));
        let job = Job {
            name: account.name.clone(),
            client,
            transformer: Transformer::new(&config.envelope_settings(), account),
            config: config.clone(),
            peek: peek.clone(),
            out: out.clone(),
            stats: stats.clone(),
        };
        tasks.spawn(job.run());
    }
    let mut report = DryRunReport::default();
    while let Some(joined) = tasks.join_next().await {
        let Ok((name, result)) = joined else { continue };
        match result {
            Ok(r) => {
                report.accounts_polled += 1;
                report.printed += r.printed;
                report.already_spooled += r.already_spooled;
                report.invalid.extend(r.invalid);
            }
            Err(PollError::RingCentral(e)) => {
                error!(account = %name, "dry run: poll failed: {e}");
                report.account_errors.push(AccountError {
                    account: name,
                    reason: e.to_string(),
                    config: e.is_config(),
                });
            }
            Err(PollError::Spool(e)) => return Err(DryRunError::Spool(e)),
        }
    }
    if let Ok(mut out) = out.lock() {
        let _ = out.flush();
    }
    Ok(report)
}

/// One account's part.
struct Job {
    name: String,
    client: RcClient,
    transformer: Transformer,
    config: Config,
    peek: Arc<Mutex<Option<Reader>>>,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    stats: Arc<Stats>,
}

impl Job {
    async fn run(mut self) -> (String, Result<DryRunReport, PollError>) {
        let name = self.name.clone();
        let result = self.poll().await;
        (name, result)
    }

    async fn poll(&mut self) -> Result<DryRunReport, PollError> {
        let mut report = DryRunReport::default();
        let cursor = match &*self.lock_peek() {
            Some(reader) => reader.cursor(&self.name)?,
            None => None,
        };
        let Some((from, to)) = next_window(cursor, Utc::now(), &self.config.poll) else {
            return Ok(report);
        };
        let mut pager = Pager::new(&self.name, from, to, &self.config.poll);
        let mut printed_ids = HashSet::new();
        while let Some((page, _last)) = pager.next(&mut self.client, &self.stats).await? {
            let mut buf = Vec::new();
            for r in new_records(&self.transformer, &page) {
                if printed_ids.contains(&r.record_id)
                    || match &*self.lock_peek() {
                        Some(reader) => reader.seen(&self.name, r.event_time_ms, &r.record_id)?,
                        None => false,
                    }
                {
                    report.already_spooled += 1;
                    continue;
                }
                if let Err(why) = validate_event(&r.event) {
                    report.invalid.push((r.record_id.clone(), why));
                    continue;
                }
                buf.extend_from_slice(&r.event);
                buf.push(b'\n');
                report.printed += 1;
                printed_ids.insert(r.record_id);
            }
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = out.write_all(&buf) {
                warn!(
                    "dry run: cannot write to stdout: {e} (was the output pipe closed? write to a file instead)"
                );
            }
        }
        Ok(report)
    }

    fn lock_peek(&self) -> std::sync::MutexGuard<'_, Option<Reader>> {
        self.peek.lock().unwrap_or_else(|p| p.into_inner())
    }
}
