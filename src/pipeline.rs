//! The pipeline: opens the spool, builds one poller per account and the sink, and runs them for
//! one cycle (`once`); the `run` service ([`crate::service`]) runs them until shutdown.
//!
//! Shutdown is a [`CancellationToken`] parameter, so tests drive it. On shutdown every poller stops
//! where it is (a page not yet committed is simply polled again next time: its window's cursor
//! has not moved) and the sink abandons its in-flight request (the batch stays spooled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{AccountConfig, Config};
use crate::exit::Outcome;
use crate::hec::{HecError, Sink};
use crate::retry::RetryPolicy;
use crate::ringcentral::client::Session;
use crate::ringcentral::clock::LocalClock;
use crate::ringcentral::http::RcHttp;
use crate::ringcentral::poller::{PollError, WindowOutcome};
use crate::ringcentral::{Poller, RcClient};
use crate::spool::{Spool, SpoolError};
use crate::telemetry::{Component, Health, State, Stats};
use crate::transform::Transformer;

/// Failures that stop a command before or while it starts.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The HEC client cannot be built (TLS settings).
    #[error(transparent)]
    Hec(#[from] HecError),
    /// The RingCentral HTTP client cannot be built.
    #[error("cannot build the RingCentral HTTP client: {0}")]
    Http(String),
    /// The DynamoDB client cannot be set up.
    #[error(transparent)]
    DynamoDb(#[from] crate::dynamodb::DynamoError),
}

/// Knobs of the pipeline the commands do not expose but tests and the demo need (the service's
/// own knobs are [`crate::service::ServiceOptions`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// Backoff for HEC and RingCentral retries.
    pub retry: RetryPolicy,
    /// Timeout of RingCentral requests.
    pub rc_timeout: Duration,
    /// The local clock (tests shift it to play a host whose clock is wrong).
    pub clock: LocalClock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retry: RetryPolicy::default(),
            rc_timeout: Duration::from_secs(60),
            clock: LocalClock::default(),
        }
    }
}

/// The wired pipeline.
pub struct Pipeline {
    /// The validated configuration.
    pub config: Config,
    /// The open spool (holds the state directory's lock).
    pub spool: Spool,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Health per component.
    pub health: Arc<Health>,
    options: Options,
    /// One HTTP client per RingCentral server, shared by its accounts (see
    /// [`crate::ringcentral::http`]); kept across reloads.
    rc_http: RcHttp,
    /// Each account's RingCentral session (rate limiter, token, clock skew) by connection
    /// settings, so clients rebuilt by a reload continue it: a 429 penalty forgotten on SIGHUP
    /// let searches follow within 3 s of a `Retry-After: 40`, restarting the penalty.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// An account a command could not poll (completely), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountError {
    /// The account's name in the config.
    pub account: String,
    /// What went wrong, for the operator.
    pub reason: String,
    /// A configuration problem (credentials, app permission): exit 78, as trying again will
    /// not fix it; otherwise a runtime failure (exit 1).
    pub config: bool,
}

impl AccountError {
    /// A runtime failure of `account` (trying again may work).
    pub fn failed(account: impl Into<String>, reason: impl Into<String>) -> AccountError {
        AccountError {
            account: account.into(),
            reason: reason.into(),
            config: false,
        }
    }

    /// What this error means for the command's exit code.
    pub fn outcome(&self) -> Outcome {
        if self.config {
            Outcome::Config
        } else {
            Outcome::Failed
        }
    }
}

/// What `once` did.
#[derive(Debug, Default)]
pub struct OnceReport {
    /// Accounts polled completely.
    pub accounts_polled: usize,
    /// Accounts that could not be polled.
    pub account_errors: Vec<AccountError>,
    /// Records newly spooled.
    pub spooled: u64,
    /// Events delivered.
    pub delivered: u64,
    /// Events still spooled at the end (HEC did not accept them in time).
    pub remaining: u64,
    /// Events HEC refused for good during this run (now in the dead-letter table).
    pub dead_lettered: u64,
    /// Why HEC refused the setup itself (a rejected token, a wrong URL) when that is what left
    /// records spooled: a configuration error (exit 78), which trying later will not fix.
    pub hec_config_error: Option<String>,
    /// Items DynamoDB wrote.
    pub dynamodb_written: u64,
    /// Records dead-lettered for DynamoDB during this run.
    pub dynamodb_dead_lettered: u64,
    /// Why DynamoDB delivery was paused (a missing table, denied access, no credentials) when
    /// records were left spooled: a configuration error (exit 78).
    pub dynamodb_config_error: Option<String>,
}

impl crate::exit::Code for OnceReport {
    /// 78 when an account's or HEC's configuration is refused, 1 when an account failed or
    /// events were dead-lettered, 75 when records remain spooled, else 0.
    fn exit_code(&self) -> u8 {
        let accounts = self.account_errors.iter().map(AccountError::outcome);
        let hec = (self.hec_config_error.iter())
            .chain(&self.dynamodb_config_error)
            .map(|_| Outcome::Config);
        let dead =
            (self.dead_lettered + self.dynamodb_dead_lettered > 0).then_some(Outcome::Failed);
        let remaining = (self.remaining > 0).then_some(Outcome::RecordsRemain);
        Outcome::worst(accounts.chain(hec).chain(dead).chain(remaining)).exit_code()
    }
}

impl Pipeline {
    /// Opens the spool in `config.spool.dir` and prepares the clients.
    pub fn open(config: Config, options: Options) -> Result<Pipeline, AppError> {
        let dir = &config.spool.dir;
        if !dir.join("spool.db").exists() {
            // Never silently: a spool in the wrong place means a second cursor and duplicates.
            let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            warn!(
                state_dir = %shown.display(),
                "no spool in the state directory: creating a new one there (each account starts at poll.initial_lookback); if the service keeps its spool elsewhere, stop and set spool.dir"
            );
        }
        let spool = Spool::open(dir)?;
        if let Err(e) = adopt_renamed_accounts(&spool, &config) {
            warn!(
                "cannot check the spool for renamed accounts ({e}); a renamed account starts from its initial_lookback (check free disk space)"
            );
        }
        spool.set_min_free_bytes(config.spool.min_free_bytes);
        spool.set_destinations(&config.destinations());
        let rc_http = RcHttp::new(options.rc_timeout).map_err(|e| AppError::Http(e.to_string()))?;
        Ok(Pipeline {
            config,
            spool,
            stats: Arc::new(Stats::default()),
            health: Arc::new(Health::default()),
            options,
            rc_http,
            sessions: Mutex::default(),
        })
    }

    /// The RingCentral session of `account`: the same one as long as its connection settings
    /// (server, account id, client id and credentials) are the same.
    fn session(&self, account: &AccountConfig) -> Arc<Session> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(connection_key(account))
            .or_default()
            .clone()
    }

    /// A RingCentral client for account `i`.
    pub fn rc_client(&self, i: usize, max_attempts: Option<u32>) -> RcClient {
        let account = &self.config.accounts[i];
        let server = self.rc_http.server(&account.server_url);
        RcClient::new(
            server.client.clone(),
            account,
            self.options.retry,
            self.stats.clone(),
        )
        .with_server(server)
        .with_session(self.session(account))
        .with_clock(self.options.clock.clone())
        .with_max_attempts(max_attempts)
    }

    /// One poller per configured account.
    pub fn pollers(&self, max_attempts: Option<u32>) -> Vec<Poller> {
        self.config
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Poller::new(
                    &a.name,
                    self.rc_client(i, max_attempts),
                    self.spool.clone(),
                    Transformer::new(&self.config.envelope_settings(), a),
                    self.config.poll.clone(),
                    self.config.reconcile.clone(),
                    self.config.spool.max_bytes,
                    self.stats.clone(),
                    self.health.clone(),
                )
            })
            .collect()
    }

    /// The HEC sink ([`HecError::NotConfigured`] without `[hec]`).
    pub fn sink(&self) -> Result<Sink, HecError> {
        Sink::new(
            self.config.hec.as_ref().ok_or(HecError::NotConfigured)?,
            self.spool.clone(),
            self.options.retry,
            self.stats.clone(),
            self.health.clone(),
        )
    }

    /// The DynamoDB sink, when `[dynamodb]` is configured (connects the SDK client: reads the
    /// AWS credential chain's settings, sends nothing yet).
    pub async fn dynamodb_sink(&self) -> Result<Option<crate::dynamodb::Sink>, AppError> {
        let Some(cfg) = &self.config.dynamodb else {
            return Ok(None);
        };
        let dynamo = crate::dynamodb::client::connect(cfg).await?;
        Ok(Some(crate::dynamodb::Sink::new(
            dynamo,
            cfg,
            self.spool.clone(),
            self.options.retry,
            self.stats.clone(),
            self.health.clone(),
        )))
    }

    /// How many RingCentral HTTP clients this pipeline built: one per distinct server, however
    /// many accounts use it.
    pub fn rc_clients_built(&self) -> usize {
        self.rc_http.clients_built()
    }

    /// The knobs this pipeline was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// One poll cycle for every account, then delivery for at most `max_wait`.
    pub async fn once(
        self,
        max_wait: Duration,
        shutdown: CancellationToken,
    ) -> Result<OnceReport, AppError> {
        let mut sink = match self.config.hec {
            Some(_) => Some(self.sink()?),
            None => None,
        };
        let mut dynamodb = self.dynamodb_sink().await?;
        let mut report = OnceReport::default();
        let mut polls = JoinSet::new();
        for mut poller in self.pollers(Some(5)) {
            let stop = shutdown.clone();
            polls.spawn(async move {
                let name = poller.account().to_string();
                tokio::select! {
                    r = poller.poll_window() => (name, Some(r)),
                    _ = stop.cancelled() => (name, None),
                }
            });
        }
        while let Some(joined) = polls.join_next().await {
            let Ok((name, result)) = joined else { continue };
            match result {
                None => report
                    .account_errors
                    .push(AccountError::failed(name, "interrupted")),
                Some(Ok(WindowOutcome::SpoolFull { reason })) => report
                    .account_errors
                    .push(AccountError::failed(name, format!("{reason}: not polled"))),
                Some(Ok(_)) => report.accounts_polled += 1,
                Some(Err(e)) => {
                    let config = matches!(&e, PollError::RingCentral(rc) if rc.is_config());
                    error!(account = %name, "poll failed: {e}");
                    report.account_errors.push(AccountError {
                        account: name,
                        reason: e.to_string(),
                        config,
                    });
                }
            }
        }
        report.spooled = Stats::get(&self.stats.records_spooled);
        if let Some(sink) = &sink {
            sink.log_health().await;
        }
        let deadline = shutdown.child_token();
        let timer = {
            let deadline = deadline.clone();
            tokio::spawn(async move {
                tokio::time::sleep(max_wait).await;
                deadline.cancel();
            })
        };
        // Both destinations at once: one that is down never holds up the other.
        let hec = async {
            if let Some(sink) = sink.as_mut()
                && let Err(e) = sink.drain(&deadline).await
            {
                error!(
                    "delivery to HEC stopped: {e}; check free disk space and the state directory's permissions"
                );
            }
        };
        let dynamo = async {
            if let Some(sink) = dynamodb.as_mut()
                && let Err(e) = sink.drain(&deadline).await
            {
                error!(
                    "delivery to DynamoDB stopped: {e}; check free disk space and the state directory's permissions"
                );
            }
        };
        tokio::join!(hec, dynamo);
        timer.abort();
        report.delivered = Stats::get(&self.stats.events_delivered);
        report.dead_lettered = Stats::get(&self.stats.events_dead_lettered);
        report.dynamodb_written = Stats::get(&self.stats.dynamodb_items_written);
        report.dynamodb_dead_lettered = Stats::get(&self.stats.dynamodb_dead_lettered);
        // What waits for the configured destinations; rows kept for one no longer configured
        // are no reason to run again (they are named in the log and `spool status`).
        let status = self.spool.run(|s| s.status()).await?;
        let configured = self.config.destinations();
        for d in status.destinations.iter() {
            if !configured.contains(&d.destination) && d.depth > 0 {
                warn!(
                    destination = %d.destination,
                    waiting = d.depth,
                    "events wait for a destination that is no longer configured: add its section back to deliver them (see `spool status`)"
                );
            }
        }
        report.remaining = status
            .destinations
            .iter()
            .filter(|d| configured.contains(&d.destination))
            .map(|d| d.depth)
            .sum();
        if report.remaining > 0 {
            report.dynamodb_config_error = self
                .health
                .components()
                .get(&Component::DynamoDb)
                .filter(|h| h.state == State::Failing)
                .and_then(|h| h.reason.clone());
            // Every URL answered, and refused the setup (Pause): none worked, at least one
            // paused. A URL that is merely down would be degraded, which trying later fixes.
            let components = self.health.components();
            let urls: Vec<_> = components
                .iter()
                .filter(|(c, _)| matches!(c, Component::HecUrl(_)))
                .map(|(_, h)| h)
                .collect();
            if !urls.iter().any(|h| h.state == State::Ok) {
                report.hec_config_error = urls
                    .iter()
                    .find(|h| h.state == State::Failing)
                    .and_then(|h| h.reason.clone());
            }
            let reason = components
                .get(&Component::Hec)
                .and_then(|h| h.reason.clone())
                .unwrap_or_else(|| "delivery did not finish in time".into());
            warn!(
                remaining = report.remaining,
                "records remain spooled after --max-wait ({reason}); the next run delivers them"
            );
        }
        Ok(report)
    }
}

/// Lets each configured account continue the cursor and dedup of a name it was renamed from
/// (same RingCentral account, name no longer configured; see [`crate::spool::identity`]).
/// Runs before any poller of the config starts: at open and at each reload.
pub fn adopt_renamed_accounts(spool: &Spool, config: &Config) -> Result<(), SpoolError> {
    let names: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
    for a in &config.accounts {
        if let Some(old) = spool.adopt_account(&a.name, &a.identity_digest(), &names)? {
            info!(account = %a.name, renamed_from = %old,
                "account renamed in the config (same RingCentral account): it continues the old name's cursor and dedup");
        }
    }
    Ok(())
}

/// What identifies an account's RingCentral session: everything a token and a rate limit are
/// tied to. Credentials enter as a digest (the key is never printed, but need not hold them).
fn connection_key(a: &AccountConfig) -> String {
    let mut h = Sha256::new();
    h.update(a.client_secret.expose().as_bytes());
    h.update([0]);
    h.update(a.jwt.expose().as_bytes());
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}\n{}\n{}\n{digest}",
        a.server_url, a.account_id, a.client_id
    )
}

/// An HTTP client for RingCentral requests (one-off commands; the pipeline keeps one per
/// server, see [`crate::ringcentral::http`]).
pub fn ringcentral_http(timeout: Duration) -> Result<reqwest::Client, AppError> {
    crate::ringcentral::http::build_client(timeout).map_err(|e| AppError::Http(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Code;

    #[test]
    fn once_exits_78_before_1_before_75() {
        let config = AccountError {
            account: "acme".into(),
            reason: "403".into(),
            config: true,
        };
        let remaining = OnceReport {
            remaining: 3,
            ..OnceReport::default()
        };
        assert_eq!(OnceReport::default().exit_code(), crate::exit::OK);
        assert_eq!(remaining.exit_code(), crate::exit::TEMPFAIL);
        let dead = OnceReport {
            dead_lettered: 1,
            ..remaining
        };
        assert_eq!(dead.exit_code(), crate::exit::FAILURE);
        let failed = OnceReport {
            account_errors: vec![AccountError::failed("other", "interrupted")],
            ..OnceReport::default()
        };
        assert_eq!(failed.exit_code(), crate::exit::FAILURE);
        let refused = OnceReport {
            account_errors: vec![AccountError::failed("other", "timeout"), config],
            remaining: 3,
            ..OnceReport::default()
        };
        assert_eq!(refused.exit_code(), crate::exit::CONFIG);
        let hec = OnceReport {
            hec_config_error: Some("token rejected".into()),
            remaining: 3,
            ..OnceReport::default()
        };
        assert_eq!(hec.exit_code(), crate::exit::CONFIG);
    }
}
