//! `spool status`, `spool dead-letters`, `spool requeue`, `spool ledger`: looking into the spool,
//! also while the service runs.
//!
//! These commands need only the state directory, not the whole configuration: an operator in a
//! shell usually lacks the service's credentials (`$CREDENTIALS_DIRECTORY`), and inspecting the
//! spool must not depend on them. The live health of a running service (why polling or delivery
//! is paused) comes from its admin endpoint when one is configured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Serialize;

use super::{Error, Report};
use crate::config::{Config, Destination, HecConfig, LoadEnv, RawEnv, parse_byte_size};
use crate::exit::{self, Code};
use crate::spool::reader::Reader;
use crate::spool::{Spool, SpoolError, Status};
use crate::telemetry::HealthDoc;
use crate::time::now_ms;
use crate::transform::Transformer;

/// What the inspection commands take from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The state directory.
    pub dir: PathBuf,
    /// The running service's admin endpoint, if configured.
    pub admin: Option<SocketAddr>,
    /// `spool.max_bytes`, when set.
    pub max_bytes: Option<u64>,
    /// Whether the directory was named (`--dir` or `spool.dir`) rather than defaulted.
    pub dir_given: bool,
    /// The destinations the config names (`[hec]`, `[dynamodb]`; HEC when it names none):
    /// `spool status` shows a line for each, and for any other that still holds rows.
    pub destinations: Vec<Destination>,
}

impl Settings {
    /// Reads `spool.dir`, `spool.max_bytes` and `admin.listen` from the config file (if it
    /// exists) and environment, without validating or resolving anything else.
    pub fn load(config: &Path, dir_override: Option<PathBuf>, env: &LoadEnv) -> Settings {
        let figment = Figment::new()
            .merge(Toml::file(config))
            .merge(RawEnv::from_process());
        let given = dir_override.or_else(|| figment.extract_inner::<PathBuf>("spool.dir").ok());
        let dir_given = given.is_some();
        let dir = given.unwrap_or_else(|| env.default_state_dir());
        let admin = match figment.extract_inner::<String>("admin.listen") {
            Ok(s) if s.is_empty() => None,
            Ok(s) => s.parse().ok(),
            Err(_) => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        };
        let max_bytes = figment
            .extract_inner::<String>("spool.max_bytes")
            .ok()
            .and_then(|s| parse_byte_size(&s))
            .or_else(|| figment.extract_inner_lossy::<u64>("spool.max_bytes").ok());
        let mut destinations: Vec<Destination> = Destination::ALL
            .into_iter()
            .filter(|d| figment.find_value(d.name()).is_ok())
            .collect();
        if destinations.is_empty() {
            destinations.push(Destination::Hec);
        }
        Settings {
            dir,
            admin,
            max_bytes,
            dir_given,
            destinations,
        }
    }

    /// When the directory was only defaulted, asks the running service (its `/livez` names its
    /// state directory): from an admin shell `$STATE_DIRECTORY` is unset, and guessing could
    /// inspect, or requeue into, some other spool.
    pub async fn locate_service_spool(mut self) -> Settings {
        if !self.dir_given
            && let Some(livez) = super::backfill::service_livez(self.admin).await
            && let Some(dir) = livez.state_dir
        {
            self.dir = dir;
        }
        self
    }
}

/// Renders requeued dead letters again with the current config (routes, index, sourcetype,
/// host): what made HEC refuse an event is usually its envelope, fixed in the config since.
pub struct Renderer {
    by_account: HashMap<String, Transformer>,
    hec: HecConfig,
}

impl Renderer {
    /// From a config loaded without secrets (they are not needed to render).
    pub fn new(config: &Config) -> Renderer {
        Renderer {
            by_account: config
                .accounts
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        Transformer::new(&config.envelope_settings(), a),
                    )
                })
                .collect(),
            hec: config.envelope_settings().into_owned(),
        }
    }

    /// The event to put back into the outbox for a stored one of `account` (an account no
    /// longer configured gets the `hec.*` defaults; bytes that are no envelope stay as they are).
    pub fn render(&self, account: &str, stored: &[u8]) -> Vec<u8> {
        let fallback;
        let t = match self.by_account.get(account) {
            Some(t) => t,
            None => {
                fallback = Transformer::for_account(&self.hec, account, None, None);
                &fallback
            }
        };
        t.rerender(stored).unwrap_or_else(|| stored.to_vec())
    }
}

/// `spool status` as a document (also the `--json` output).
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The database file.
    pub spool: PathBuf,
    /// Events waiting for delivery.
    pub depth: u64,
    /// Waiting events per account.
    pub depth_by_account: Vec<(String, u64)>,
    /// Bytes in use.
    pub used_bytes: u64,
    /// `spool.max_bytes`, when known.
    pub max_bytes: Option<u64>,
    /// Age of the oldest waiting event, in seconds.
    pub oldest_age_s: Option<i64>,
    /// Dead letters held.
    pub dead_letters: u64,
    /// Per destination: the configured ones, and any other still holding rows (the totals
    /// above are over all of them).
    pub destinations: Vec<DestinationReport>,
    /// Per account: the cursor and how far it lags behind now.
    pub cursors: Vec<CursorReport>,
    /// The running service's `/healthz`, or why it could not be read.
    pub service: serde_json::Value,
}

/// One destination's outbox and dead letters in `spool status`.
#[derive(Debug, Serialize)]
pub struct DestinationReport {
    /// hec or dynamodb.
    pub destination: Destination,
    /// Whether the config names it (rows wait for one that it does not until it does again).
    pub configured: bool,
    /// Events waiting for it.
    pub depth: u64,
    /// Age of its oldest waiting event, in seconds.
    pub oldest_age_s: Option<i64>,
    /// Its dead letters.
    pub dead_letters: u64,
}

/// One account's cursor.
#[derive(Debug, Serialize)]
pub struct CursorReport {
    /// Account name.
    pub account: String,
    /// The end of the last complete window.
    pub cursor: String,
    /// Seconds behind now.
    pub lag_s: i64,
}

fn time(ms: i64) -> String {
    crate::time::ms_rfc3339(ms).unwrap_or_else(|| ms.to_string())
}

/// Builds the status report, asking the running service for its health when possible.
pub async fn status(settings: &Settings) -> Result<StatusReport, SpoolError> {
    let dir = settings.dir.clone();
    let (path, st): (PathBuf, Status) = tokio::task::spawn_blocking(move || {
        let reader = Reader::open(&dir)?;
        Ok::<_, SpoolError>((reader.path().to_path_buf(), reader.status()?))
    })
    .await
    .map_err(|e| SpoolError::Dir {
        dir: settings.dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let now = now_ms();
    Ok(StatusReport {
        spool: path,
        depth: st.depth,
        depth_by_account: st.depth_by_account,
        used_bytes: st.used_bytes,
        max_bytes: settings.max_bytes,
        oldest_age_s: st.oldest_spooled_ms.map(|t| (now - t) / 1000),
        dead_letters: st.dead_letters,
        destinations: st
            .destinations
            .into_iter()
            .filter_map(|d| {
                let configured = settings.destinations.contains(&d.destination);
                (configured || !d.is_empty()).then(|| DestinationReport {
                    destination: d.destination,
                    configured,
                    depth: d.depth,
                    oldest_age_s: d.oldest_spooled_ms.map(|t| (now - t) / 1000),
                    dead_letters: d.dead_letters,
                })
            })
            .collect(),
        cursors: st
            .cursors
            .into_iter()
            .map(|(account, c)| CursorReport {
                account,
                cursor: time(c),
                lag_s: (now - c) / 1000,
            })
            .collect(),
        service: service_health(settings.admin).await,
    })
}

async fn service_health(admin: Option<SocketAddr>) -> serde_json::Value {
    let Some(addr) = admin else {
        return serde_json::json!({"reachable": false, "why": "admin.listen is off"});
    };
    let url = format!("http://{}/healthz", super::backfill::admin_addr(addr));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => return serde_json::json!({"reachable": false, "why": e.to_string()}),
    };
    match client.get(&url).send().await {
        Ok(resp) => match resp.json::<HealthDoc>().await {
            Ok(doc) => serde_json::json!({"reachable": true, "url": url, "health": doc}),
            Err(e) => serde_json::json!({"reachable": false, "url": url, "why": e.to_string()}),
        },
        Err(_) => {
            serde_json::json!({"reachable": false, "url": url, "why": "no answer: the service is not running (or listens elsewhere)"})
        }
    }
}

/// The status report for a person.
pub fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "spool: {}", r.spool.display());
    let per: Vec<String> = r
        .depth_by_account
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "  waiting events: {}{}",
        r.depth,
        if per.is_empty() {
            String::new()
        } else {
            format!(" ({})", per.join(", "))
        }
    );
    if let Some(age) = r.oldest_age_s {
        let _ = writeln!(
            out,
            "  oldest waiting: {} ago",
            humantime::format_duration(Duration::from_secs(age.max(0) as u64))
        );
    }
    let size = match r.max_bytes {
        Some(max) => {
            let full = if r.used_bytes >= max {
                ": FULL, polling is paused until delivery frees space"
            } else {
                ""
            };
            format!("{} of {} bytes{full}", r.used_bytes, max)
        }
        None => format!("{} bytes", r.used_bytes),
    };
    let _ = writeln!(out, "  size in use: {size}");
    let _ = writeln!(
        out,
        "  dead letters: {}{}",
        r.dead_letters,
        if r.dead_letters > 0 {
            " (rc-audit-hec spool dead-letters; requeue with spool requeue)"
        } else {
            ""
        }
    );
    if !r.destinations.is_empty() {
        let _ = writeln!(out, "  destinations:");
        for d in &r.destinations {
            let oldest = d
                .oldest_age_s
                .map(|age| {
                    format!(
                        ", oldest {} ago",
                        humantime::format_duration(Duration::from_secs(age.max(0) as u64))
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<20} waiting {}{oldest}, dead letters {}{}",
                d.destination.name(),
                d.depth,
                d.dead_letters,
                if d.configured {
                    ""
                } else {
                    " (not configured: its rows wait until it is again)"
                }
            );
        }
    }
    if !r.cursors.is_empty() {
        let _ = writeln!(out, "  cursors:");
        for c in &r.cursors {
            let _ = writeln!(
                out,
                "    {:<20} {} (lag {})",
                c.account,
                c.cursor,
                humantime::format_duration(Duration::from_secs(c.lag_s.max(0) as u64))
            );
        }
    }
    match r.service.get("health") {
        Some(h) => {
            let _ = writeln!(
                out,
                "  service: running, {}",
                h["status"].as_str().unwrap_or("?")
            );
            if let Some(components) = h["components"].as_object() {
                for (name, c) in components {
                    let state = c["state"].as_str().unwrap_or("?");
                    let reason = c["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    let _ = writeln!(out, "    {name:<28} {state}{reason}");
                }
            }
        }
        None => {
            let _ = writeln!(
                out,
                "  service: not reachable ({})",
                r.service["why"].as_str().unwrap_or("unknown")
            );
        }
    }
    out
}

/// `spool dead-letters` for a person: one line each.
pub fn render_dead_letters(rows: &[crate::spool::DeadLetterRow]) -> String {
    if rows.is_empty() {
        return "no dead letters\n".to_string();
    }
    let mut out = String::new();
    for d in rows {
        out.push_str(&format!(
            "#{} {} {} {} {}: {}\n",
            d.id,
            time(d.dead_at_ms),
            d.destination.name(),
            d.account,
            d.record_id,
            d.reason
        ));
    }
    out.push_str(
        "requeue with: rc-audit-hec spool requeue --id N (or --all [--destination NAME]) once the cause is fixed\n",
    );
    out
}

/// Which `spool` command.
#[derive(Debug, Clone)]
pub enum Action {
    /// `spool status [--json]`.
    Status {
        /// JSON instead of text.
        json: bool,
    },
    /// `spool dead-letters [--json] [--destination NAME]`.
    DeadLetters {
        /// JSON instead of text.
        json: bool,
        /// Only this destination's.
        destination: Option<Destination>,
    },
    /// `spool ledger [--account NAME] [--since T] [--json]`.
    Ledger {
        /// Only this account.
        account: Option<String>,
        /// `--since` as given (an age, a date or RFC 3339).
        since: String,
        /// JSON instead of text.
        json: bool,
    },
    /// `spool requeue (--all | --id N...) [--destination NAME]`.
    Requeue {
        /// Every dead letter.
        all: bool,
        /// These dead letters.
        id: Vec<i64>,
        /// Only this destination's.
        destination: Option<Destination>,
    },
}

/// What a `spool` command found or did.
#[derive(Debug)]
pub enum SpoolReport {
    /// The status, as text or JSON.
    Status {
        /// The report.
        report: StatusReport,
        /// JSON instead of text.
        json: bool,
    },
    /// The dead letters, as text or JSON.
    DeadLetters {
        /// The rows.
        rows: Vec<crate::spool::DeadLetterRow>,
        /// JSON instead of text.
        json: bool,
    },
    /// The ledger and the reconciliation results, as text or JSON.
    Ledger {
        /// What was found.
        ledger: Ledger,
        /// JSON instead of text.
        json: bool,
    },
    /// Dead letters moved back to the outbox.
    Requeued {
        /// How many.
        moved: usize,
    },
    /// Ids that are not dead letters (of `--destination`, when given): nothing was requeued
    /// (exit 1).
    Missing {
        /// The ids not found.
        ids: Vec<i64>,
        /// `--destination`, when given.
        destination: Option<Destination>,
    },
}

/// Runs a `spool` command; `config` is the config file (for `requeue`'s rendering settings).
pub async fn command(
    config: &Path,
    settings: &Settings,
    action: Action,
) -> Result<SpoolReport, Error> {
    let open = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || Spool::open_for_inspection(&dir))
            .await
            .map_err(|e| Error::Other(anyhow::Error::new(e).context("the spool task failed")))?
            .map_err(Error::Spool)
    };
    Ok(match action {
        Action::Status { json } => SpoolReport::Status {
            report: status(settings).await?,
            json,
        },
        Action::DeadLetters { json, destination } => {
            // Read-only, without the lock: works while the service runs.
            let dir = settings.dir.clone();
            let rows =
                tokio::task::spawn_blocking(move || Reader::open(&dir)?.dead_letters(destination))
                    .await
                    .map_err(|e| {
                        Error::Other(anyhow::Error::new(e).context("the spool task failed"))
                    })?
                    .map_err(Error::Spool)?;
            SpoolReport::DeadLetters { rows, json }
        }
        Action::Ledger {
            account,
            since,
            json,
        } => {
            let since_ms = crate::backfill::parse_time("--since", &since, chrono::Utc::now())?
                .timestamp_millis();
            // Read-only, without the lock: works while the service runs.
            let dir = settings.dir.clone();
            let ledger = tokio::task::spawn_blocking(move || {
                let reader = Reader::open(&dir)?;
                Ok::<_, SpoolError>(Ledger {
                    windows: reader.ledger(account.as_deref(), since_ms)?,
                    reconciliations: reader.reconciliations(account.as_deref(), since_ms)?,
                    account,
                    since_ms,
                })
            })
            .await
            .map_err(|e| Error::Other(anyhow::Error::new(e).context("the spool task failed")))?
            .map_err(Error::Spool)?;
            SpoolReport::Ledger { ledger, json }
        }
        Action::Requeue {
            all,
            id,
            destination,
        } => {
            // The current routes, index, sourcetype and host re-render each event; no secret
            // is needed for that.
            let renderer = Renderer::new(&Config::load_without_secrets(
                config,
                &LoadEnv::from_process(),
            )?);
            let spool = open(settings.dir.clone()).await?;
            let ids = (!all).then_some(id);
            let done = spool
                .run(move |s| s.requeue(destination, ids.as_deref(), &|a, e| renderer.render(a, e)))
                .await?;
            if done.missing.is_empty() {
                SpoolReport::Requeued { moved: done.moved }
            } else {
                SpoolReport::Missing {
                    ids: done.missing,
                    destination,
                }
            }
        }
    })
}

impl Code for SpoolReport {
    fn exit_code(&self) -> u8 {
        match self {
            SpoolReport::Missing { .. } => exit::FAILURE,
            _ => exit::OK,
        }
    }
}

impl Report for SpoolReport {
    fn print(&self) -> Result<(), Error> {
        match self {
            SpoolReport::Status { report, json: true } => println!("{}", pretty(report)?),
            SpoolReport::Status { report, .. } => print!("{}", render_status(report)),
            SpoolReport::DeadLetters { rows, json: true } => println!("{}", pretty(rows)?),
            SpoolReport::DeadLetters { rows, .. } => print!("{}", render_dead_letters(rows)),
            SpoolReport::Ledger { ledger, json: true } => {
                println!("{}", pretty(&ledger_json(ledger))?)
            }
            SpoolReport::Ledger { ledger, .. } => print!("{}", render_ledger(ledger)),
            SpoolReport::Requeued { moved } => println!(
                "requeued {moved} dead letter(s), rendered again with the current routes, index, sourcetype and host; the service delivers them on its next pass"
            ),
            SpoolReport::Missing { ids, destination } => {
                let list: Vec<String> = ids.iter().map(i64::to_string).collect();
                let of = destination
                    .map(|d| format!(" of destination {d}"))
                    .unwrap_or_default();
                eprintln!(
                    "error: no dead letter{of} with id {}: nothing was requeued (ids and their destinations come from `rc-audit-hec spool dead-letters`)",
                    list.join(", ")
                );
            }
        }
        Ok(())
    }
}

fn pretty(v: &impl Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.into()))
}

/// What `spool ledger` found.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// `--account`, when given.
    pub account: Option<String>,
    /// `--since` (ms).
    pub since_ms: i64,
    /// Completed windows, by account and start.
    pub windows: Vec<crate::spool::LedgerRow>,
    /// Reconciliation results, by account and period.
    pub reconciliations: Vec<crate::reconcile::Reconciliation>,
}

/// `spool ledger --json`: `{"since", "reconciliations": [...], "windows": [...]}`; each
/// reconciliation carries the same fields as its HEC event, plus `checked_at`.
pub fn ledger_json(l: &Ledger) -> serde_json::Value {
    let reconciliations: Vec<serde_json::Value> = l
        .reconciliations
        .iter()
        .map(|r| {
            let mut v = crate::reconcile::event_body(r);
            v["checked_at"] = time(r.checked_at_ms).into();
            v
        })
        .collect();
    let windows: Vec<serde_json::Value> = l
        .windows
        .iter()
        .map(|w| {
            serde_json::json!({
                "account": w.account,
                "kind": w.kind,
                "from": time(w.from_ms),
                "to": time(w.to_ms),
                "total_found": w.total_found,
                "pages": w.pages,
                "records": w.records,
                "new": w.inserted,
                "duplicates": w.duplicates,
                "windows": w.windows,
                "completed_at": time(w.at_ms),
            })
        })
        .collect();
    serde_json::json!({
        "since": time(l.since_ms),
        "reconciliations": reconciliations,
        "windows": windows,
    })
}

/// `spool ledger` for a person: per account, its reconciliation results, then its windows.
pub fn render_ledger(l: &Ledger) -> String {
    let mut accounts: Vec<&str> = l
        .windows
        .iter()
        .map(|w| w.account.as_str())
        .chain(l.reconciliations.iter().map(|r| r.account.as_str()))
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    let since = time(l.since_ms);
    if accounts.is_empty() {
        return match &l.account {
            Some(a) => format!("nothing recorded for account {a} since {since}\n"),
            None => format!("nothing recorded since {since}\n"),
        };
    }
    let mut out = format!("since {since}\n");
    for account in accounts {
        out.push_str(&format!("\naccount {account}\n"));
        let recs: Vec<_> = l
            .reconciliations
            .iter()
            .filter(|r| r.account == account)
            .collect();
        if recs.is_empty() {
            out.push_str("  reconciliation: no period reconciled yet\n");
        } else {
            out.push_str("  reconciliation (period: RingCentral's count, forwarded):\n");
            for r in recs {
                out.push_str(&format!(
                    "    {} .. {}  {:<8}  ringcentral {}  forwarded {}",
                    time(r.period.start_ms),
                    time(r.period.end_ms),
                    r.status.as_str(),
                    r.ringcentral_count,
                    r.forwarded_count
                ));
                if let Some(n) = r.recovered {
                    out.push_str(&format!("  recovered {n}"));
                }
                if let Some(why) = &r.reason {
                    out.push_str(&format!("  ({why})"));
                }
                out.push('\n');
            }
        }
        out.push_str("  windows (from .. to, kind, totalFound, pages, records, new, duplicates, completed; consecutive live windows with nothing new share a line):\n");
        for w in l.windows.iter().filter(|w| w.account == account) {
            let kind = if w.windows > 1 {
                format!("{} x{}", w.kind, w.windows)
            } else {
                w.kind.clone()
            };
            out.push_str(&format!(
                "    {} .. {}  {:<8}  totalFound {}  pages {}  records {}  new {}  duplicates {}  at {}\n",
                time(w.from_ms),
                time(w.to_ms),
                kind,
                w.total_found.map_or_else(|| "-".to_string(), |n| n.to_string()),
                w.pages,
                w.records,
                w.inserted,
                w.duplicates,
                time(w.at_ms)
            ));
        }
    }
    out
}
