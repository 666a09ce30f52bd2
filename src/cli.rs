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
use crate::inspect::{self, Settings};
use crate::spool::Spool;
use crate::telemetry::init_logging;
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

/// The version and the git commit it was built from (`, dirty` with uncommitted changes).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RCAH_BUILD_DESCRIPTION"),
    ")"
);

/// Forward the RingCentral Audit Trail into Splunk HEC, durably.
///
/// Every record is kept in a local SQLite spool until Splunk has accepted it. Try it without any
/// account: `rc-audit-hec demo`.
#[derive(Debug, Parser)]
#[command(name = "rc-audit-hec", version = VERSION, about, long_about)]
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
    /// scripted HEC outage. Needs no config and no account. With --serve: only start the
    /// simulators and write a ready config, to try every command by hand.
    Demo {
        /// Keep the spool, received events (and with --serve the config) here; an earlier
        /// demo's spool in it is removed (default: a temporary directory, removed at the end).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Audit records the simulated accounts hold (RingCentral keeps at most 10,000 each).
        #[arg(long, default_value_t = 3000)]
        records: usize,
        /// Start the simulators, write DIR/config.toml (secrets as files), print the commands to
        /// try and how to switch faults (HEC down, 503s, 429s), and run until Ctrl-C.
        #[arg(long)]
        serve: bool,
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
        /// Poll, and print the HEC events that would be sent as JSON lines on stdout; send
        /// nothing, spool nothing, move no cursor (works while the service runs).
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the config, get a token for every account, try a small search, and check HEC
    /// health with the token. Says what is wrong and how to fix it.
    Check {
        /// Only validate the config (no network): for systemd's ExecStartPre.
        #[arg(long)]
        offline: bool,
    },
    /// Print the effective configuration (file + environment + defaults), secrets redacted, each
    /// value with where it came from.
    Config,
    /// Poll a past range (at most 180 days back) into the spool and deliver it, without moving
    /// the live cursor. Interrupted and run again, it resumes where it stopped. While the service
    /// runs, the range is handed to it (through the admin endpoint) and polled between live
    /// windows, within the same rate limits.
    Backfill {
        /// Start: RFC 3339 (2026-01-31T08:00:00Z), a date (2026-01-31, midnight UTC) or an age
        /// (30d).
        #[arg(long, value_name = "T")]
        from: String,
        /// End (default: now minus poll.settle_delay); same formats as --from.
        #[arg(long, value_name = "T")]
        to: Option<String>,
        /// Only this account (repeat for several; default: every account).
        #[arg(long, value_name = "NAME")]
        account: Vec<String>,
        /// How long to keep delivering after the last piece is polled.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        max_wait: Duration,
        /// Poll the range again even where an earlier backfill did: a re-sweep for records
        /// RingCentral showed later than poll.overlap (already delivered ones are not resent).
        #[arg(long)]
        again: bool,
    },
    /// List the account's recent actionIds with counts, an example's eventType and parameters,
    /// and the Splunk app's category for each (flagging ids it files as unknown). Read-only.
    Actions(crate::actions::ActionsArgs),
    /// Inspect the spool: depth, cursors, dead letters; requeue dead letters. Works while the
    /// service runs, and needs no credentials.
    Spool {
        /// The state directory (default: spool.dir from the config, else the running service's,
        /// else $STATE_DIRECTORY, else /var/lib/rc-audit-hec if it exists, else ./state).
        #[arg(long, global = true, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// What to show or do.
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Print the shell completion script on stdout, e.g.
    /// `rc-audit-hec completions bash > /etc/bash_completion.d/rc-audit-hec`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one page per command into --dir.
    #[command(hide = true)]
    Man {
        /// Write rc-audit-hec.1 and a page per subcommand here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// GET the admin endpoint's liveness route; exit 0 on a 2xx answer, else 1 with the
    /// reason (for container HEALTHCHECKs: the image has no curl).
    Healthcheck {
        /// The URL to GET.
        #[arg(long, default_value = crate::healthcheck::DEFAULT_URL)]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
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

/// Whether an error is a state directory this user cannot write (permissions, a read-only
/// file system): a setup problem (78, so systemd's `RestartPreventExitStatus=78` stops
/// retrying), not a passing failure.
fn state_dir_unusable(e: &(dyn std::error::Error + 'static)) -> bool {
    use crate::spool::SpoolError;
    let spool = e.downcast_ref::<SpoolError>().or(match e.downcast_ref() {
        Some(crate::app::AppError::Spool(s)) => Some(s),
        _ => None,
    });
    match spool {
        Some(SpoolError::Dir { source, .. }) => matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::NotADirectory
        ),
        Some(SpoolError::Sqlite(rusqlite::Error::SqliteFailure(f, _))) => matches!(
            f.code,
            rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen
        ),
        _ => false,
    }
}

/// The exit code for an error that ended a command.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(state_dir_unusable) {
        exit::CONFIG
    } else if err
        .chain()
        .any(|e| e.downcast_ref::<crate::backfill::BackfillError>().is_some())
    {
        exit::USAGE
    } else if err
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
            serve: true,
            ..
        } => {
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            crate::demo::serve(dir, records, shutdown).await?;
            Ok(exit::OK)
        }
        Command::Demo {
            dir,
            records,
            outage,
            serve: false,
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
            print!(
                "{}",
                Config::load_annotated(&cli.config, &LoadEnv::from_process())?
            );
            Ok(exit::OK)
        }
        Command::Run => {
            let config = load_config(&cli.config)?;
            let pipeline = Pipeline::open(config, Options::default())?;
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            let path = cli.config.clone();
            let reload = crate::service::Reload {
                requests: crate::service::sighup_requests(),
                load: Box::new(move || Config::load(&path, &LoadEnv::from_process())),
            };
            crate::service::run(pipeline, shutdown, Some(reload)).await?;
            Ok(exit::OK)
        }
        Command::Once {
            dry_run: true,
            max_wait: _,
        } => {
            let config = load_config(&cli.config)?;
            crate::service::ignore_sighup("once --dry-run");
            dry_run(&config).await
        }
        Command::Backfill {
            from,
            to,
            account,
            max_wait,
            again,
        } => {
            // Without secrets first: from an admin shell the service's credentials are out of
            // reach, and handing the range to the running service does not need them.
            let config = Config::load_without_secrets(&cli.config, &LoadEnv::from_process())?;
            init_logging(config.log.format, &config.log.level);
            crate::service::ignore_sighup("backfill");
            backfill(
                &cli.config,
                config,
                &from,
                to.as_deref(),
                &account,
                max_wait,
                again,
            )
            .await
        }
        Command::Once {
            max_wait,
            dry_run: false,
        } => {
            let config = load_config(&cli.config)?;
            crate::service::ignore_sighup("once");
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
            if report.dead_lettered > 0 {
                eprintln!(
                    "once: {} event(s) refused by HEC for good and moved to dead letters: see `rc-audit-hec spool dead-letters`, fix the cause, then `spool requeue`",
                    report.dead_lettered
                );
            }
            if let Some(why) = &report.hec_config_error {
                eprintln!("once: HEC refused the configuration, not just this attempt: {why}");
            }
            Ok(
                if report.account_errors.iter().any(|(_, _, config)| *config)
                    || report.hec_config_error.is_some()
                {
                    exit::CONFIG
                } else if !report.account_errors.is_empty() || report.dead_lettered > 0 {
                    exit::FAILURE
                } else if report.remaining > 0 {
                    exit::TEMPFAIL
                } else {
                    exit::OK
                },
            )
        }
        Command::Actions(args) => crate::actions::command(&load_config(&cli.config)?, &args).await,
        Command::Spool { dir, command } => {
            let settings = Settings::load(&cli.config, dir, &LoadEnv::from_process())
                .locate_service_spool()
                .await;
            spool_command(&cli.config, &settings, command).await
        }
        Command::Completions { shell } => {
            crate::packaging::completions(shell, &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { dir: None } => {
            crate::packaging::man(&mut std::io::stdout())?;
            Ok(exit::OK)
        }
        Command::Man { dir: Some(dir) } => {
            crate::packaging::man_pages(&dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            Ok(exit::OK)
        }
        Command::Healthcheck { url, timeout } => {
            println!("{}", crate::healthcheck::check(&url, timeout).await?);
            Ok(exit::OK)
        }
        Command::Check { offline } => {
            let config = load_config(&cli.config)?;
            if offline {
                println!(
                    "config: ok ({} account(s), HEC {})",
                    config.accounts.len(),
                    config.hec.urls.join(", ")
                );
                let rows = crate::check::local_rows(&config);
                print!("{}", crate::check::render(&rows));
                return Ok(crate::check::exit_code(&rows));
            }
            let rows = crate::check::run(&config).await?;
            print!("{}", crate::check::render(&rows));
            Ok(crate::check::exit_code(&rows))
        }
    }
}

async fn spool_command(
    config: &std::path::Path,
    settings: &Settings,
    command: SpoolCommand,
) -> anyhow::Result<u8> {
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
            let dir = settings.dir.clone();
            let rows = tokio::task::spawn_blocking(move || {
                crate::spool::reader::Reader::open(&dir)?.dead_letters()
            })
            .await
            .context("the spool task failed")??;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", inspect::render_dead_letters(&rows));
            }
        }
        SpoolCommand::Requeue { all, id } => {
            // The current routes, index, sourcetype and host re-render each event; no secret
            // is needed for that.
            let renderer = inspect::Renderer::new(&Config::load_without_secrets(
                config,
                &LoadEnv::from_process(),
            )?);
            let spool = open(settings.dir.clone()).await?;
            let ids = (!all).then_some(id);
            let done = spool
                .run(move |s| s.requeue(ids.as_deref(), &|a, e| renderer.render(a, e)))
                .await?;
            if !done.missing.is_empty() {
                let list: Vec<String> = done.missing.iter().map(i64::to_string).collect();
                eprintln!(
                    "error: no dead letter with id {}: nothing was requeued (ids come from `rc-audit-hec spool dead-letters`)",
                    list.join(", ")
                );
                return Ok(exit::FAILURE);
            }
            println!(
                "requeued {} dead letter(s), rendered again with the current routes, index, sourcetype and host; the service delivers them on its next pass",
                done.moved
            );
        }
    }
    Ok(exit::OK)
}

/// `once --dry-run`: events on stdout, the summary on stderr.
async fn dry_run(config: &Config) -> anyhow::Result<u8> {
    let report =
        crate::dryrun::run(config, &Options::default(), Box::new(std::io::stdout())).await?;
    eprintln!(
        "dry run: {} account(s) polled, {} event(s) printed (what would be sent), {} record(s) already spooled or delivered (not printed); nothing was sent and no cursor moved",
        report.accounts_polled, report.printed, report.already_spooled
    );
    for (id, why) in &report.invalid {
        eprintln!("dry run: record {id} would go to dead letters: {why}");
    }
    for (name, reason, _) in &report.account_errors {
        eprintln!("dry run: account {name}: {reason}");
    }
    Ok(
        if report.account_errors.iter().any(|(_, _, config)| *config) {
            exit::CONFIG
        } else if !report.account_errors.is_empty() {
            exit::FAILURE
        } else {
            exit::OK
        },
    )
}

/// `backfill`: plan; hand the range to the running service when one answers on the admin
/// endpoint; otherwise run it here (only on an existing spool) with progress, and report. Exit
/// 0, 1 (interrupted or failed), 75 (records left spooled) or 78 (an account's credentials or
/// permission).
async fn backfill(
    path: &std::path::Path,
    config: Config,
    from: &str,
    to: Option<&str>,
    accounts: &[String],
    max_wait: Duration,
    again: bool,
) -> anyhow::Result<u8> {
    use crate::backfill::{Progress, parse_time, plan_range, select_accounts};
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
    if crate::backfill::service_answers(listen).await {
        let names = select_accounts(&known, accounts)?;
        cancel_on_signals(shutdown.clone());
        crate::backfill::hand_to_service(
            listen,
            range,
            &names,
            accounts.is_empty(),
            again,
            shutdown,
        )
        .await?;
        return Ok(exit::OK);
    }
    if !config.spool.dir.join("spool.db").exists() {
        return Err(crate::backfill::HandOverError::NoSpool {
            dir: std::path::absolute(&config.spool.dir).unwrap_or(config.spool.dir),
            admin: listen.map_or_else(
                || "admin.listen (off)".to_string(),
                |a| crate::backfill::admin_addr(a).to_string(),
            ),
        }
        .into());
    }
    // Running it here: now the secrets are needed.
    let config = load_config(path)?;
    let pipeline = match Pipeline::open(config, Options::default()) {
        Err(crate::app::AppError::Spool(crate::spool::SpoolError::Locked { .. })) => {
            let names = select_accounts(&known, accounts)?;
            cancel_on_signals(shutdown.clone());
            let all = accounts.is_empty();
            crate::backfill::hand_to_service(listen, range, &names, all, again, shutdown).await?;
            return Ok(exit::OK);
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
    let report = crate::backfill::run(
        &pipeline,
        range,
        &names,
        max_wait,
        Progress::for_stderr,
        shutdown,
    )
    .await?;
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
    let errors: Vec<&(String, bool)> = report
        .accounts
        .iter()
        .filter_map(|a| a.error.as_ref())
        .collect();
    Ok(if errors.iter().any(|(_, config)| *config) {
        exit::CONFIG
    } else if report.interrupted || !errors.is_empty() {
        exit::FAILURE
    } else if report.remaining > 0 {
        exit::TEMPFAIL
    } else {
        exit::OK
    })
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
