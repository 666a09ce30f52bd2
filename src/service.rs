//! The `run` service: one poll loop per account and one delivery loop per destination (HEC,
//! DynamoDB; each on its own outbox, so one that is down never delays the other) under the
//! [`watchdog`],
//! the admin endpoint, and the conversation with systemd (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `RELOADING=1`, `STOPPING=1`).
//!
//! # systemd protocol
//! - `READY=1` is sent once the config is loaded (credentials read), the spool is open (its lock
//!   held) and the loops and admin listener are started; `Type=notify` makes `systemctl start`
//!   wait for it, and `ExecStartPre=... check --offline` has already refused a bad config.
//! - `WATCHDOG=1` is sent every half `WatchdogSec=` **only while no loop is stalled**
//!   ([`watchdog`]). A stalled loop stops the pings, so systemd restarts the service.
//! - `STATUS=` every few seconds: spool depth, deliveries, the last delivery's age, problems.
//! - `STOPPING=1` at shutdown.
//!
//! # Reload (SIGHUP, `systemctl reload`)
//! The config file is read and validated again. If it is bad, the error is logged and the
//! service keeps running with the old config. Otherwise the poll loops are restarted with the new
//! accounts and poll settings (a window cut short is polled again; the spool's dedup absorbs
//! it; an account whose connection settings are unchanged keeps its rate-limit penalty, token
//! and clock skew, see [`crate::ringcentral::client::Session`]), and a destination's delivery loop is restarted only if its own settings changed (`hec.*`, `dynamodb.*`;
//! a destination added or removed starts or stops its loop). A HEC batch cut short is resent:
//! at most one batch may reach Splunk twice, as at shutdown; DynamoDB items resent overwrite
//! themselves. `spool.dir` and `log.*`
//! need a restart and say so; `admin.listen` is re-bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, HecConfig};
use crate::pipeline::{AppError, Pipeline};
use crate::telemetry::{Component, State, Stats};
use crate::watchdog::{self, Watchdog};

pub use crate::notify::Notifier;

/// Knobs of the `run` service that the commands do not expose but tests need.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// How long to wait for in-flight work at shutdown.
    pub shutdown_grace: Duration,
    /// How long a loop step may take before the watchdog calls the loop stalled; `None`: the
    /// longer of the HEC and RingCentral timeouts plus a minute (see [`crate::watchdog`]).
    pub stall_limit: Option<Duration>,
    /// systemd's `WatchdogSec=`; `None`: from `$WATCHDOG_USEC` (no pings when unset).
    pub watchdog_interval: Option<Duration>,
    /// Where `READY=1`, `STATUS=`, `WATCHDOG=1`... go.
    pub notifier: Notifier,
    /// How often `STATUS=` is checked (it is sent when it changed).
    pub status_interval: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            shutdown_grace: Duration::from_secs(10),
            stall_limit: None,
            watchdog_interval: None,
            notifier: Notifier::default(),
            status_interval: Duration::from_secs(1),
        }
    }
}

impl Pipeline {
    /// The service: every poller, the sink and the admin endpoint until `shutdown` (see
    /// [`run`]; this entry point does not reload). Defined here, not in [`crate::pipeline`], so the
    /// pipeline does not depend on the service that runs it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        run(self, ServiceOptions::default(), shutdown, None).await
    }

    /// [`Pipeline::run`] with the service's knobs.
    pub async fn run_with(
        self,
        options: ServiceOptions,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        run(self, options, shutdown, None).await
    }
}

/// How the service learns that its config should be reloaded.
pub struct Reload {
    /// One message per reload request (SIGHUP).
    pub requests: mpsc::Receiver<()>,
    /// Loads and validates the config again (the same file and environment as at start).
    pub load: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
}

/// The default stall limit: the longest bounded wait a loop step has (an HTTP request) plus a
/// minute for everything else (SQLite busy timeout, scheduling).
pub fn default_stall_limit(config: &Config, rc_timeout: Duration) -> Duration {
    config
        .hec
        .as_ref()
        .map_or(rc_timeout, |h| h.timeout.max(rc_timeout))
        + Duration::from_secs(60)
}

/// A group of loops that stop together.
struct Loops {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Loops {
    fn new(parent: &CancellationToken) -> Self {
        Loops {
            stop: parent.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Stops the loops and waits up to `grace` for them to finish.
    async fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                "some tasks did not stop within {grace:?}; nothing is lost (the spool stays consistent)"
            );
        }
    }
}

/// The running service's state.
struct Service {
    pipeline: Pipeline,
    options: ServiceOptions,
    /// The configured account names, for the admin endpoint (updated by reloads).
    accounts: Arc<std::sync::RwLock<Vec<String>>>,
    watchdog: Arc<Watchdog>,
    stall_limit: Duration,
    shutdown: CancellationToken,
    pollers: Loops,
    /// HEC's delivery loop (none without `[hec]`).
    sink: Loops,
    /// DynamoDB's delivery loop (none without `[dynamodb]`).
    dynamodb: Loops,
    admin: Loops,
}

impl Service {
    fn start_pollers(&self) -> Loops {
        let loops = Loops::new(&self.shutdown);
        for poller in self.pipeline.pollers(None) {
            let name = format!("poll:{}", poller.account());
            let hb = self.watchdog.register(&name, self.stall_limit);
            loops
                .tracker
                .spawn(watchdog::supervise(hb, poller.run(loops.stop.clone())));
        }
        // The heartbeat restarts with the pollers, so a reload gives it the new accounts,
        // host and interval.
        let p = &self.pipeline;
        let heartbeat = crate::heartbeat::Heartbeat::new(
            p.config.clone(),
            p.spool.clone(),
            p.stats.clone(),
            p.health.clone(),
        );
        loops.tracker.spawn(heartbeat.run(loops.stop.clone()));
        loops
    }

    fn start_sink(&self) -> Result<Loops, AppError> {
        Ok(match self.pipeline.config.hec {
            Some(_) => self.spawn_sink(self.pipeline.sink()?),
            None => Loops::new(&self.shutdown),
        })
    }

    /// Runs `sink` as HEC's delivery loop. Only one may run at a time: two would read the same
    /// batch from the head of the spool and send it twice.
    fn spawn_sink(&self, sink: crate::hec::Sink) -> Loops {
        let loops = Loops::new(&self.shutdown);
        let hb = self.watchdog.register("delivery", self.stall_limit);
        loops
            .tracker
            .spawn(watchdog::supervise(hb, sink.run(loops.stop.clone())));
        loops
    }

    async fn start_dynamodb(&self) -> Result<Loops, AppError> {
        Ok(match self.pipeline.dynamodb_sink().await? {
            Some(sink) => self.spawn_dynamodb(sink),
            None => Loops::new(&self.shutdown),
        })
    }

    /// Runs `sink` as DynamoDB's delivery loop (one at a time, like HEC's).
    fn spawn_dynamodb(&self, sink: crate::dynamodb::Sink) -> Loops {
        let loops = Loops::new(&self.shutdown);
        let hb = self
            .watchdog
            .register("delivery:dynamodb", self.stall_limit);
        loops
            .tracker
            .spawn(watchdog::supervise(hb, sink.run(loops.stop.clone())));
        loops
    }

    async fn start_admin(&self) -> Loops {
        let loops = Loops::new(&self.shutdown);
        let Some(addr) = self.pipeline.config.admin.listen else {
            return loops;
        };
        match crate::admin::bind(addr).await {
            Ok(listener) => {
                let state = crate::admin::AdminState {
                    spool: self.pipeline.spool.clone(),
                    stats: self.pipeline.stats.clone(),
                    health: self.pipeline.health.clone(),
                    accounts: self.accounts.clone(),
                    bound: listener.local_addr().ok(),
                };
                let serve = crate::admin::serve(listener, state, loops.stop.clone());
                loops.tracker.spawn(async move {
                    if let Err(e) = serve.await {
                        error!(%addr, "admin endpoint failed: {e}; /metrics and /healthz are unavailable until a restart");
                    }
                });
            }
            Err(e) => error!(%addr,
                "cannot listen for the admin endpoint: {e}; set admin.listen to a free address (or \"\" to turn it off) and reload"),
        }
        loops
    }

    /// Applies a reloaded config (see the module docs).
    async fn reload(&mut self, mut new: Config) {
        let old = &self.pipeline.config;
        if new.spool.dir != old.spool.dir {
            warn!(old = %old.spool.dir.display(), new = %new.spool.dir.display(),
                "spool.dir changed: moving the state directory needs a restart (see README, \"Moving the state directory\"); still using the old one");
            new.spool.dir = old.spool.dir.clone();
        }
        if new.log.format != old.log.format || new.log.level != old.log.level {
            warn!("log.format and log.level take effect at the next restart");
        }
        let hec_changed = hec_fingerprint(new.hec.as_ref()) != hec_fingerprint(old.hec.as_ref());
        let dynamodb_changed =
            toml::to_string(&new.dynamodb).ok() != toml::to_string(&old.dynamodb).ok();
        let admin_changed = new.admin.listen != old.admin.listen;
        let old_names: Vec<String> = old.accounts.iter().map(|a| a.name.clone()).collect();
        let new_names: Vec<String> = new.accounts.iter().map(|a| a.name.clone()).collect();
        self.pipeline
            .spool
            .set_min_free_bytes(new.spool.min_free_bytes);
        let old_config = std::mem::replace(&mut self.pipeline.config, new);
        // Build the new sink before stopping the old one: a new HEC setting that does not work
        // (an unreadable CA file) must not leave the service without delivery. It starts only
        // once the old one has stopped.
        let sink = if hec_changed {
            match self
                .pipeline
                .config
                .hec
                .as_ref()
                .map(|_| self.pipeline.sink())
                .transpose()
            {
                Ok(s) => Some(s),
                Err(e) => {
                    error!(
                        "reload: the new HEC settings cannot be used ({e}); keeping the previous hec.* settings. Fix them and reload again"
                    );
                    self.pipeline.config.hec = old_config.hec.clone();
                    None
                }
            }
        } else {
            None
        };
        let dynamodb = if dynamodb_changed {
            match self.pipeline.dynamodb_sink().await {
                Ok(s) => Some(s),
                Err(e) => {
                    error!(
                        "reload: the new DynamoDB settings cannot be used ({e}); keeping the previous dynamodb.* settings. Fix them and reload again"
                    );
                    self.pipeline.config.dynamodb = old_config.dynamodb.clone();
                    None
                }
            }
        } else {
            None
        };
        // Only now, with both sinks settled (a refused new setting reverted): records are
        // spooled for exactly the destinations that have a loop.
        self.pipeline
            .spool
            .set_destinations(&self.pipeline.config.destinations());
        let grace = self.options.shutdown_grace;
        // A longer hec.timeout lengthens what a loop step may take.
        self.stall_limit = self.options.stall_limit.unwrap_or_else(|| {
            default_stall_limit(&self.pipeline.config, self.pipeline.options().rc_timeout)
        });
        let pollers = std::mem::replace(&mut self.pollers, Loops::new(&self.shutdown));
        pollers.stop(grace).await;
        let health = self.pipeline.health.clone();
        if let Some(new_sink) = sink {
            let old_sink = std::mem::replace(&mut self.sink, Loops::new(&self.shutdown));
            old_sink.stop(grace).await;
            match new_sink {
                Some(new_sink) => self.sink = self.spawn_sink(new_sink),
                // HEC removed: its health no longer says anything about this service.
                None => {
                    for (c, _) in health.components() {
                        if matches!(c, Component::Hec | Component::HecUrl(_)) {
                            health.remove(&c);
                        }
                    }
                }
            }
        }
        if let Some(new_sink) = dynamodb {
            let old_sink = std::mem::replace(&mut self.dynamodb, Loops::new(&self.shutdown));
            old_sink.stop(grace).await;
            match new_sink {
                Some(new_sink) => self.dynamodb = self.spawn_dynamodb(new_sink),
                None => health.remove(&Component::DynamoDb),
            }
        }
        for gone in old_names.iter().filter(|n| !new_names.contains(n)) {
            let health = &self.pipeline.health;
            health.remove(&Component::Account(gone.clone()));
            health.remove(&Component::Clock(gone.clone()));
        }
        *self.accounts.write().unwrap_or_else(|p| p.into_inner()) = new_names.clone();
        let (spool, config) = (self.pipeline.spool.clone(), self.pipeline.config.clone());
        let adopted = spool
            .run(move |s| crate::pipeline::adopt_renamed_accounts(s, &config))
            .await;
        if let Err(e) = adopted {
            warn!(
                "reload: cannot check the spool for renamed accounts ({e}); a renamed account starts from its initial_lookback"
            );
        }
        self.pollers = self.start_pollers();
        if admin_changed {
            let admin = std::mem::replace(&mut self.admin, Loops::new(&self.shutdown));
            admin.stop(grace).await;
            self.admin = self.start_admin().await;
        }
        let added = new_names.iter().filter(|n| !old_names.contains(n)).count();
        let removed = old_names.iter().filter(|n| !new_names.contains(n)).count();
        info!(
            accounts = new_names.len(),
            added, removed, hec_changed, dynamodb_changed, admin_changed, "configuration reloaded"
        );
        self.options
            .notifier
            .notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// What decides whether the sink must be rebuilt: every `hec.*` value, the token, and the CA
/// file's contents (a renewed CA under the same path counts as a change).
fn hec_fingerprint(hec: Option<&HecConfig>) -> Option<(String, String, Option<Vec<u8>>)> {
    let hec = hec?;
    let shown = toml::to_string(hec).unwrap_or_default();
    let ca = hec.tls_ca_file.as_ref().and_then(|p| std::fs::read(p).ok());
    Some((shown, hec.token.expose().to_string(), ca))
}

/// Runs the service until `shutdown` (see the module docs). `reload` is `None` for callers that
/// do not reload (tests, the demo).
pub async fn run(
    pipeline: Pipeline,
    options: ServiceOptions,
    shutdown: CancellationToken,
    reload: Option<Reload>,
) -> Result<(), AppError> {
    let stall_limit = options
        .stall_limit
        .unwrap_or_else(|| default_stall_limit(&pipeline.config, pipeline.options().rc_timeout));
    let watchdog_interval = options
        .watchdog_interval
        .or_else(sd_notify::watchdog_enabled);
    let names = pipeline
        .config
        .accounts
        .iter()
        .map(|a| a.name.clone())
        .collect();
    let mut service = Service {
        accounts: Arc::new(std::sync::RwLock::new(names)),
        watchdog: Arc::new(Watchdog::default()),
        stall_limit,
        shutdown: shutdown.clone(),
        pollers: Loops::new(&shutdown),
        sink: Loops::new(&shutdown),
        dynamodb: Loops::new(&shutdown),
        admin: Loops::new(&shutdown),
        pipeline,
        options: options.clone(),
    };
    service.sink = service.start_sink()?;
    service.dynamodb = service.start_dynamodb().await?;
    service.admin = service.start_admin().await;
    service.pollers = service.start_pollers();
    let depth = service.pipeline.spool.run(|s| s.depth()).await.unwrap_or(0);
    info!(accounts = service.pipeline.config.accounts.len(), spooled = depth,
        spool = %service.pipeline.spool.path().display(),
        watchdog = %watchdog_interval.map_or_else(|| "off".to_string(),
            |d| humantime::format_duration(d).to_string()),
        "rc-audit-hec running");
    options.notifier.notify(&[sd_notify::NotifyState::Ready]);
    let helpers = TaskTracker::new();
    helpers.spawn(report_status(
        service.pipeline.spool.clone(),
        service.pipeline.stats.clone(),
        service.pipeline.health.clone(),
        service.watchdog.clone(),
        options.notifier.clone(),
        options.status_interval,
        shutdown.clone(),
    ));
    helpers.spawn(feed_watchdog(
        service.watchdog.clone(),
        service.pipeline.health.clone(),
        options.notifier.clone(),
        watchdog_interval,
        shutdown.clone(),
    ));
    helpers.spawn(crate::telemetry::logging::report_suppressed(
        shutdown.clone(),
    ));
    helpers.close();

    let mut reload = reload;
    loop {
        let request = async {
            match reload.as_mut() {
                Some(r) => r.requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            got = request => match got {
                Some(()) => {
                    // systemd 253+ (`Type=notify-reload`) matches RELOADING=1 to its reload
                    // request by the timestamp, and waits for READY=1: sent either way.
                    let mut reloading = vec![sd_notify::NotifyState::Reloading];
                    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                    options.notifier.notify(&reloading);
                    let loaded = reload.as_ref().map(|r| (r.load)());
                    match loaded {
                        Some(Ok(config)) => service.reload(config).await,
                        Some(Err(e)) => {
                            error!(
                                "configuration reload failed, still running the previous configuration; fix the file and reload again (systemctl reload rc-audit-hec): {e}"
                            );
                            let status = format!(
                                "reload refused, still running the previous configuration: {}",
                                e.to_string().lines().next().unwrap_or_default()
                            );
                            options.notifier.notify(&[
                                sd_notify::NotifyState::Status(&status),
                                sd_notify::NotifyState::Ready,
                            ]);
                        }
                        None => {}
                    }
                }
                None => reload = None,
            },
        }
    }
    info!("shutting down");
    options.notifier.notify(&[sd_notify::NotifyState::Stopping]);
    let grace = options.shutdown_grace;
    let Service {
        pollers,
        sink,
        dynamodb,
        admin,
        ..
    } = service;
    tokio::join!(
        pollers.stop(grace),
        sink.stop(grace),
        dynamodb.stop(grace),
        admin.stop(grace)
    );
    helpers.wait().await;
    Ok(())
}

/// Keeps systemd's `STATUS=` current: checks every `every` and sends when the text changed
/// (spool depth, deliveries, the last delivery's time, stalled loops). Also watches the spool
/// file (deleted or replaced under the service, damaged): failing in `/healthz` while it is.
async fn report_status(
    spool: crate::spool::Spool,
    stats: Arc<Stats>,
    health: Arc<crate::telemetry::Health>,
    watchdog: Arc<Watchdog>,
    notifier: Notifier,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last = String::new();
    let mut file_failing = false;
    loop {
        match spool.file_problem() {
            Some(problem) => {
                if health.set(&Component::Spool, State::Failing, Some(problem.clone())) {
                    error!("{problem}");
                }
                file_failing = true;
            }
            None if file_failing => {
                health.remove(&Component::Spool);
                info!(spool = %spool.path().display(), "the spool file is in place and readable again");
                file_failing = false;
            }
            None => {}
        }
        let depth = spool.run(|s| s.depth()).await.ok();
        let line = status_line(depth, &stats, &watchdog);
        if line != last {
            notifier.notify(&[sd_notify::NotifyState::Status(&line)]);
            last = line;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The `STATUS=` text, e.g.
/// `spooled 12, delivered 3400 (last at 2026-03-01T10:00:00Z), dead letters 0`.
pub fn status_line(depth: Option<u64>, stats: &Stats, watchdog: &Watchdog) -> String {
    let depth = depth.map_or_else(
        || "unknown (spool unreadable)".to_string(),
        |d| d.to_string(),
    );
    let last = stats
        .last_delivery_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let last = match chrono::DateTime::from_timestamp_millis(last).filter(|_| last > 0) {
        Some(t) => format!(
            "last at {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "none since start".to_string(),
    };
    let mut line = format!(
        "spooled {depth}, delivered {} ({last}), dead letters {}",
        Stats::get(&stats.events_delivered),
        Stats::get(&stats.events_dead_lettered)
    );
    let stalled = watchdog.stalled();
    if !stalled.is_empty() {
        let names: Vec<&str> = stalled.iter().map(|s| s.name.as_str()).collect();
        line.push_str(&format!("; STALLED: {}", names.join(", ")));
    }
    line
}

/// Checks the loops every half watchdog interval (every 5 s without a watchdog): pings systemd
/// while none is stalled, and reports stalls in `/healthz` and the log.
async fn feed_watchdog(
    watchdog: Arc<Watchdog>,
    health: Arc<crate::telemetry::Health>,
    notifier: Notifier,
    interval: Option<Duration>,
    shutdown: CancellationToken,
) {
    let every = interval.map_or(Duration::from_secs(5), |w| w / 2);
    let mut reported: Vec<String> = Vec::new();
    loop {
        let stalled = watchdog.stalled();
        if stalled.is_empty() && interval.is_some() {
            notifier.notify(&[sd_notify::NotifyState::Watchdog]);
        }
        let names: Vec<String> = stalled.iter().map(|s| s.name.clone()).collect();
        for s in &stalled {
            let reason = format!(
                "the {} loop has made no progress for {} past its deadline (stuck in an await); {}",
                s.name,
                humantime::format_duration(Duration::from_secs(s.overdue.as_secs())),
                if interval.is_some() {
                    "systemd's watchdog will restart the service; spooled records are safe"
                } else {
                    "restart the service; spooled records are safe"
                }
            );
            if health.set(
                &Component::Loop(s.name.clone()),
                State::Failing,
                Some(reason.clone()),
            ) && !reported.contains(&s.name)
            {
                error!("{reason}");
            }
        }
        for gone in reported.iter().filter(|n| !names.contains(n)) {
            health.remove(&Component::Loop(gone.clone()));
            info!(loop_name = %gone, "loop is making progress again");
        }
        reported = names;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
