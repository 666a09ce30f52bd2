//! Command-line interface: the clap definitions and the dispatch to [`crate::commands`]; the
//! exit code of every outcome comes from [`crate::exit`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::commands::spool::{Action, Settings};
use crate::commands::{self, Done, Error, finish};
use crate::config::{DEFAULT_CONFIG_PATH, Destination, LoadEnv};
use crate::exit::{self, Code};
use crate::signals::cancel_on_signals;

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
    Actions(crate::commands::actions::ActionsArgs),
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
    /// The DynamoDB destination's table.
    Dynamodb {
        /// What to do.
        #[command(subcommand)]
        command: DynamodbCommand,
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
        #[arg(long, default_value = crate::commands::healthcheck::DEFAULT_URL)]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// `dynamodb` subcommands.
#[derive(Debug, Subcommand)]
pub enum DynamodbCommand {
    /// Create the table named by dynamodb.table (on-demand capacity; keys `account` and `sk`,
    /// the `byAction` index, TTL when dynamodb.ttl is set) and wait until it is active. A table
    /// that already has this layout is left as it is. Needs dynamodb:CreateTable,
    /// DescribeTable and UpdateTimeToLive (the service itself needs neither Create nor Update).
    CreateTable,
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
    /// Events a destination refused permanently, with the reason and the destination.
    DeadLetters {
        /// Print JSON (with each event) instead of one line per dead letter.
        #[arg(long)]
        json: bool,
        /// Only this destination's dead letters: hec or dynamodb (default: all).
        #[arg(long, value_name = "NAME", value_parser = parse_destination)]
        destination: Option<Destination>,
    },
    /// Every completed poll window (live, backfill, repair) with RingCentral's totalFound,
    /// pages, records, new records and duplicates absorbed, and beside them each reconciliation
    /// result (RingCentral's count against the forwarded, per account and period): the
    /// evidence for an auditor. Works while the service runs.
    Ledger {
        /// Only this account.
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// Windows and periods ending after this: an age (7d, 12h), a date or RFC 3339.
        #[arg(long, default_value = "7d", value_name = "T")]
        since: String,
        /// Print JSON instead of text.
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
        /// Only this destination's dead letters (hec or dynamodb; default: all), each back into
        /// its own destination's outbox.
        #[arg(long, value_name = "NAME", value_parser = parse_destination)]
        destination: Option<Destination>,
    },
}

fn parse_destination(s: &str) -> Result<Destination, String> {
    Destination::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Destination::ALL.iter().map(|d| d.name()).collect();
        format!(
            "no destination called {s:?}: use one of {}",
            names.join(", ")
        )
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. \"30s\", \"5m\")"))
}

/// Runs a parsed command: dispatch to [`crate::commands`], print its report, return its exit
/// code.
pub async fn execute(cli: Cli) -> Result<u8, Error> {
    let path = cli.config.as_path();
    match cli.command {
        Command::Demo {
            dir,
            records,
            serve: true,
            ..
        } => {
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            commands::demo::serve(dir, records, shutdown).await?;
            finish(&Done)
        }
        Command::Demo {
            dir,
            records,
            outage,
            serve: false,
        } => finish(
            &commands::demo::run(commands::demo::DemoOptions {
                dir,
                records,
                outage,
            })
            .await?,
        ),
        Command::Config => finish(&commands::config::command(path)?),
        Command::Run => finish(&commands::run::command(path).await?),
        Command::Once {
            dry_run: true,
            max_wait: _,
        } => finish(&commands::dry_run::command(path).await?),
        Command::Once {
            max_wait,
            dry_run: false,
        } => finish(&commands::once::command(path, max_wait).await?),
        Command::Backfill {
            from,
            to,
            account,
            max_wait,
            again,
        } => finish(
            &commands::backfill::command(path, &from, to.as_deref(), &account, max_wait, again)
                .await?,
        ),
        Command::Actions(args) => finish(&commands::actions::command(path, &args).await?),
        Command::Spool { dir, command } => {
            let settings = Settings::load(path, dir, &LoadEnv::from_process())
                .locate_service_spool()
                .await;
            let action = match command {
                SpoolCommand::Status { json } => Action::Status { json },
                SpoolCommand::DeadLetters { json, destination } => {
                    Action::DeadLetters { json, destination }
                }
                SpoolCommand::Requeue {
                    all,
                    id,
                    destination,
                } => Action::Requeue {
                    all,
                    id,
                    destination,
                },
                SpoolCommand::Ledger {
                    account,
                    since,
                    json,
                } => Action::Ledger {
                    account,
                    since,
                    json,
                },
            };
            finish(&commands::spool::command(path, &settings, action).await?)
        }
        Command::Completions { shell } => finish(&commands::packaging::completions_command(
            shell,
            Cli::command(),
        )),
        Command::Man { dir } => finish(&commands::packaging::man_command(
            Cli::command(),
            dir.as_deref(),
        )?),
        Command::Healthcheck { url, timeout } => {
            finish(&commands::healthcheck::command(&url, timeout).await?)
        }
        Command::Dynamodb {
            command: DynamodbCommand::CreateTable,
        } => finish(&commands::dynamodb::create_table_command(path).await?),
        Command::Check { offline } => finish(&commands::check::command(path, offline).await?),
    }
}

/// Entry point used by `main`: parse, run, map errors to exit codes.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match crate::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
