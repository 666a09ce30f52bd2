//! Command-line interface: clap definitions and the command handlers (the `anyhow` edge).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{Options, Pipeline, cancel_on_signals};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LoadEnv};
use crate::hec::client::HecClient;
use crate::inspect::{self, Settings};
use crate::ringcentral::RcClient;
use crate::ringcentral::model::SearchRequest;
use crate::spool::Spool;
use crate::telemetry::{Stats, init_logging};
use crate::transform::rfc3339_millis;

/// Exit codes of the contract.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Runtime failure.
    pub const FAILURE: u8 = 1;
    /// Usage error (clap's own).
    pub const USAGE: u8 = 2;
    /// `once` finished but records remain spooled (`EX_TEMPFAIL`).
    pub const TEMPFAIL: u8 = 75;
    /// Bad configuration (`EX_CONFIG`).
    pub const CONFIG: u8 = 78;
}

/// Forward the RingCentral Audit Trail into Splunk HEC, durably.
///
/// Every record is kept in a local SQLite spool until Splunk has accepted it. Try it without any
/// account: `rc-audit-hec demo`.
#[derive(Debug, Parser)]
#[command(name = "rc-audit-hec", version, about, long_about)]
#[command(
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 usage error, \
75 records remain spooled after `once`, 78 bad configuration.\n\
Every config key can be set by environment: RC_AUDIT_HEC_<SECTION>__<KEY>, e.g. RC_AUDIT_HEC_HEC__TOKEN."
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(long, short = 'c', global = true, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline against built-in RingCentral and HEC simulators on loopback, with a
    /// scripted HEC outage. Needs no config and no account.
    Demo {
        /// Keep the spool and received events here (default: a new temporary directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Audit records the simulated account holds.
        #[arg(long, default_value_t = 3000)]
        records: usize,
        /// Length of the scripted HEC outage.
        #[arg(long, default_value = "6s", value_parser = parse_duration)]
        outage: Duration,
    },
    /// Run the service: poll every account and deliver continuously until SIGTERM/SIGINT.
    Run,
    /// One poll cycle for every account, then deliver the spool and exit (for timers and cron).
    /// Exits 75 when records remain spooled because HEC did not accept them within --max-wait.
    Once {
        /// How long delivery may take before giving up (records stay spooled for the next run).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        max_wait: Duration,
    },
    /// Validate the config, get a token for every account, try a small search, and check HEC
    /// health with the token. Says what is wrong and how to fix it.
    Check {
        /// Only validate the config (no network): for systemd's ExecStartPre.
        #[arg(long)]
        offline: bool,
    },
    /// Print the effective configuration (file + environment + defaults), secrets redacted.
    Config,
    /// Inspect the spool: depth, cursors, dead letters; requeue dead letters. Works while the
    /// service runs, and needs only spool.dir from the config (no credentials).
    Spool {
        /// The state directory (default: spool.dir from the config, else $STATE_DIRECTORY, else ./state).
        #[arg(long, global = true, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// What to show or do.
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

/// `spool` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Depth (per account), size, oldest waiting event, cursors, dead letters, and the running
    /// service's health (why polling or delivery is paused).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Events HEC refused permanently, with the reason.
    DeadLetters {
        /// Print JSON (with each event) instead of one line per dead letter.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into the outbox (after fixing the cause, e.g. an index route).
    Requeue {
        /// Every dead letter.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// The dead letter with this id (repeatable); ids come from `spool dead-letters`.
        #[arg(long, value_name = "N")]
        id: Vec<i64>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. \"30s\", \"5m\")"))
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path, &LoadEnv::from_process())?;
    init_logging(config.log.format, &config.log.level);
    Ok(config)
}

/// The exit code for an error that ended a command.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(|e| e.downcast_ref::<ConfigError>().is_some())
    {
        exit::CONFIG
    } else {
        exit::FAILURE
    }
}

/// Runs a parsed command; returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo {
            dir,
            records,
            outage,
        } => {
            let summary = crate::demo::run(crate::demo::DemoOptions {
                dir,
                records,
                outage,
            })
            .await?;
            Ok(if summary.lost == 0 {
                exit::OK
            } else {
                exit::FAILURE
            })
        }
        Command::Config => {
            let config = load_config(&cli.config)?;
            print!("{}", config.to_redacted_toml());
            Ok(exit::OK)
        }
        Command::Run => {
            let config = load_config(&cli.config)?;
            let pipeline = Pipeline::open(config, Options::default())?;
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            pipeline.run(shutdown).await?;
            Ok(exit::OK)
        }
        Command::Once { max_wait } => {
            let config = load_config(&cli.config)?;
            let pipeline = Pipeline::open(config, Options::default())?;
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            let report = pipeline.once(max_wait, shutdown).await?;
            eprintln!(
                "once: {} account(s) polled, {} record(s) spooled, {} delivered, {} still spooled",
                report.accounts_polled, report.spooled, report.delivered, report.remaining
            );
            for (name, reason, _) in &report.account_errors {
                eprintln!("once: account {name}: {reason}");
            }
            Ok(
                if report.account_errors.iter().any(|(_, _, config)| *config) {
                    exit::CONFIG
                } else if !report.account_errors.is_empty() {
                    exit::FAILURE
                } else if report.remaining > 0 {
                    exit::TEMPFAIL
                } else {
                    exit::OK
                },
            )
        }
        Command::Spool { dir, command } => {
            let settings = Settings::load(&cli.config, dir, &LoadEnv::from_process());
            spool_command(&settings, command).await
        }
        Command::Check { offline } => {
            let config = load_config(&cli.config)?;
            println!(
                "config: ok ({} account(s), HEC {})",
                config.accounts.len(),
                config.hec.urls.join(", ")
            );
            if offline {
                return Ok(exit::OK);
            }
            check_online(&config).await
        }
    }
}

async fn spool_command(settings: &Settings, command: SpoolCommand) -> anyhow::Result<u8> {
    let open = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || Spool::open_for_inspection(&dir))
            .await
            .context("the spool task failed")?
            .map_err(anyhow::Error::from)
    };
    match command {
        SpoolCommand::Status { json } => {
            let report = inspect::status(settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render_status(&report));
            }
        }
        SpoolCommand::DeadLetters { json } => {
            let spool = open(settings.dir.clone()).await?;
            let rows = spool.run(|s| s.dead_letters()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", inspect::render_dead_letters(&rows));
            }
        }
        SpoolCommand::Requeue { all, id } => {
            let spool = open(settings.dir.clone()).await?;
            let ids = (!all).then_some(id);
            let moved = spool.run(move |s| s.requeue(ids.as_deref())).await?;
            println!("requeued {moved} dead letter(s); the service delivers them on its next pass");
        }
    }
    Ok(exit::OK)
}

/// `check` without `--offline`: token, a one-record search, HEC health; a line per check.
async fn check_online(config: &Config) -> anyhow::Result<u8> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let stats = std::sync::Arc::new(Stats::default());
    let mut worst = exit::OK;
    for account in &config.accounts {
        let mut client = RcClient::new(http.clone(), account, Default::default(), stats.clone())
            .with_max_attempts(Some(2));
        let now = Utc::now();
        let req = SearchRequest {
            event_time_from: rfc3339_millis(now - chrono::TimeDelta::hours(1)),
            event_time_to: rfc3339_millis(now),
            page: 1,
            per_page: 1,
            include_admins: config.poll.include_admins,
            include_hidden: config.poll.include_hidden,
        };
        let result = match client.authenticate().await {
            Ok(()) => client.search(&req).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => println!(
                "account {}: ok (token and audit-trail search work)",
                account.name
            ),
            Err(e) => {
                println!("account {}: FAILED: {e}", account.name);
                worst = worst.max(if e.is_config() {
                    exit::CONFIG
                } else {
                    exit::FAILURE
                });
            }
        }
    }
    let hec = HecClient::new(&config.hec)?;
    for (url, result) in hec.health().await {
        match result {
            Ok(()) => println!("hec {url}: ok (healthy, token accepted)"),
            Err(reason) => {
                println!("hec {url}: FAILED: {reason}");
                worst = worst.max(exit::FAILURE);
            }
        }
    }
    Ok(worst)
}

/// Entry point used by `main`: parse, run, map errors to exit codes.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code_for(&e))
        }
    }
}
