//! `once`: one poll cycle for every account, then delivery for at most `--max-wait`. Exit 75
//! when records remain spooled (HEC did not take them all in time).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Error, Report, load_config};
use crate::pipeline::{OnceReport, Options, Pipeline};
use crate::signals::{cancel_on_signals, ignore_sighup};

/// Runs `once` with the config at `path`.
pub async fn command(path: &Path, max_wait: Duration) -> Result<OnceReport, Error> {
    let config = load_config(path)?;
    ignore_sighup("once");
    let pipeline = Pipeline::open(config, Options::default())?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    Ok(pipeline.once(max_wait, shutdown).await?)
}

impl Report for OnceReport {
    /// The summary and each problem, on stderr.
    fn print(&self) -> Result<(), Error> {
        eprintln!(
            "once: {} account(s) polled, {} record(s) spooled, {} delivered, {} still spooled",
            self.accounts_polled, self.spooled, self.delivered, self.remaining
        );
        for e in &self.account_errors {
            eprintln!("once: account {}: {}", e.account, e.reason);
        }
        if self.dead_lettered > 0 {
            eprintln!(
                "once: {} event(s) refused by HEC for good and moved to dead letters: see `rc-audit-hec spool dead-letters`, fix the cause, then `spool requeue`",
                self.dead_lettered
            );
        }
        if let Some(why) = &self.hec_config_error {
            eprintln!("once: HEC refused the configuration, not just this attempt: {why}");
        }
        if self.dynamodb_written > 0 || self.dynamodb_dead_lettered > 0 {
            eprintln!("once: DynamoDB wrote {} item(s)", self.dynamodb_written);
        }
        if self.dynamodb_dead_lettered > 0 {
            eprintln!(
                "once: {} record(s) DynamoDB cannot take moved to dead letters: see `rc-audit-hec spool dead-letters --destination dynamodb`",
                self.dynamodb_dead_lettered
            );
        }
        if let Some(why) = &self.dynamodb_config_error {
            eprintln!("once: DynamoDB delivery is paused by a configuration problem: {why}");
        }
        Ok(())
    }
}
