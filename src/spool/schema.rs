//! The schema: its versioned migration steps, the running tallies and the `delivered`
//! marker they all read, and opening a connection with the durability policy, integrity check
//! and migrations ([`open_checked`]).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};
use tracing::info;

use super::*;
use crate::config::Destination;

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 6;

/// Schema steps: a database at version `v` runs every step numbered above `v`, in one
/// transaction, then records [`SCHEMA_VERSION`]. Steps are never edited once released; a change
/// is a new step. (0 is a new, empty file.)
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS outbox(
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             account TEXT NOT NULL,
             record_id TEXT NOT NULL,
             event BLOB NOT NULL,
             spooled_at_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS seen(
             account TEXT NOT NULL,
             record_id TEXT NOT NULL,
             event_time_ms INTEGER NOT NULL,
             PRIMARY KEY(account, record_id)) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS seen_by_time ON seen(account, event_time_ms);
         CREATE TABLE IF NOT EXISTS cursors(
             account TEXT PRIMARY KEY,
             cursor_ms INTEGER NOT NULL,
             updated_at_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS dead_letters(
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             account TEXT NOT NULL,
             record_id TEXT NOT NULL,
             event BLOB NOT NULL,
             reason TEXT NOT NULL,
             hec_code INTEGER,
             dead_at_ms INTEGER NOT NULL);",
    ),
    // v2: per-account depth for `spool status` without a full scan. `seen` is keyed by
    // (account, eventTime, id): a record's eventTime never changes, so a re-poll finds its key,
    // and the records of one window share a time range, so a page's inserts land on a few
    // neighbouring pages (keyed by random UUIDs alone they touched hundreds per commit, 4x
    // slower). It is pruned by when an id was seen (`seen_at_ms`), not by eventTime, which a
    // bogus record could set to 1970; v1 ids count as seen now.
    (
        2,
        "CREATE INDEX IF NOT EXISTS outbox_by_account ON outbox(account);
         CREATE TABLE seen_v2(
             account TEXT NOT NULL,
             event_time_ms INTEGER NOT NULL,
             record_id TEXT NOT NULL,
             seen_at_ms INTEGER NOT NULL,
             PRIMARY KEY(account, event_time_ms, record_id)) WITHOUT ROWID;
         INSERT OR IGNORE INTO seen_v2
             SELECT account, event_time_ms, record_id, CAST(strftime('%s','now') AS INTEGER) * 1000
             FROM seen;
         DROP TABLE seen;
         ALTER TABLE seen_v2 RENAME TO seen;
         CREATE INDEX IF NOT EXISTS seen_by_seen_at ON seen(seen_at_ms);",
    ),
    // v3: running counts, so `/metrics` and `STATUS=` cost the same with 10 or 10 million
    // events waiting (counting the outbox took 0.2 s on an 831 MiB spool, under the spool's
    // mutex, and three scrapers cut the drain threefold). Updated by every write of the outbox
    // or the dead letters, in its own transaction (once per page or batch: per-row triggers
    // halved the enqueue rate), so they survive crashes like the rows they count.
    (3, RECOUNT_TALLIES),
    // v4: settling a batch moves this marker (one small row, one fsync) instead of deleting
    // ~1 MB of rows on the sink's critical path; the rows it hides are deleted later in chunks
    // ([`Spool::purge_delivered`]). 0: nothing hidden, as in a v3 file.
    (
        4,
        "CREATE TABLE IF NOT EXISTS delivered(
             id INTEGER PRIMARY KEY CHECK (id = 1),
             upto_seq INTEGER NOT NULL);
         INSERT OR IGNORE INTO delivered(id, upto_seq) VALUES (1, 0);",
    ),
    // v5: completeness evidence ([`super::ledger`]): every completed window, each
    // reconciliation result, and where each account's coverage starts. An account polled
    // before the ledger existed is covered from its earliest record the spool remembers (or
    // its cursor), so its recent periods are reconciled too.
    (5, super::ledger::MIGRATION),
    // v6: one outbox per destination ([`tables`]). HEC keeps `outbox`, its marker `delivered`
    // and its tallies (`'outbox'`, `'dead'`), so every existing row stays HEC's and nothing is
    // copied; DynamoDB gets `outbox_dynamodb` (same columns, no account index: nothing reads
    // it by account) and `delivered_dynamodb`. Dead letters name their destination; the
    // existing ones are HEC's.
    (
        6,
        "CREATE TABLE IF NOT EXISTS outbox_dynamodb(
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             account TEXT NOT NULL,
             record_id TEXT NOT NULL,
             event BLOB NOT NULL,
             spooled_at_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS delivered_dynamodb(
             id INTEGER PRIMARY KEY CHECK (id = 1),
             upto_seq INTEGER NOT NULL);
         INSERT OR IGNORE INTO delivered_dynamodb(id, upto_seq) VALUES (1, 0);
         ALTER TABLE dead_letters ADD COLUMN destination TEXT NOT NULL DEFAULT 'hec';",
    ),
];

/// Where one destination's rows live: its outbox table, its `delivered` marker table and its
/// two tally kinds. HEC has the names it had before there were destinations (v5 and older
/// files need no copy); the others carry their name as a suffix. Every query that touches a
/// destination's rows is written once, as a template ([`sql`]), never once per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tables {
    /// The outbox table (`seq`, `account`, `record_id`, `event`, `spooled_at_ms`).
    pub outbox: &'static str,
    /// The marker table (`id = 1`, `upto_seq`).
    pub delivered: &'static str,
    /// `tallies.kind` of the per-account waiting count.
    pub outbox_tally: &'static str,
    /// `tallies.kind` of the dead-letter count (account `''`).
    pub dead_tally: &'static str,
}

/// The one mapping from a destination to its tables and tally kinds.
pub(super) const fn tables(d: Destination) -> Tables {
    match d {
        Destination::Hec => Tables {
            outbox: "outbox",
            delivered: "delivered",
            outbox_tally: "outbox",
            dead_tally: "dead",
        },
        Destination::DynamoDb => Tables {
            outbox: "outbox_dynamodb",
            delivered: "delivered_dynamodb",
            outbox_tally: "outbox_dynamodb",
            dead_tally: "dead_dynamodb",
        },
    }
}

/// `template` for destination `d`: `{outbox}`, `{delivered}`, `{outbox_tally}`, `{dead_tally}`
/// and `{destination}` (the name stored in `dead_letters.destination`) replaced. Table names
/// cannot be bound parameters; these come from [`tables`], never from input.
/// One pass and one allocation: it runs for every statement of the delivery hot path.
///
/// # Panics
/// On a placeholder it does not know (a typo in a template, caught by any test running it).
pub(super) fn sql(d: Destination, template: &str) -> String {
    let t = tables(d);
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("a template's { is closed");
        out.push_str(match &rest[open + 1..close] {
            "outbox" => t.outbox,
            "delivered" => t.delivered,
            "outbox_tally" => t.outbox_tally,
            "dead_tally" => t.dead_tally,
            "destination" => d.name(),
            other => panic!("unknown placeholder {{{other}}} in a spool query template"),
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The settled marker of a destination (see `delivered` in the module docs).
pub(super) const DELIVERED_UPTO: &str = "SELECT upto_seq FROM {delivered} WHERE id = 1";

/// The destination's `upto_seq`: every row of its outbox at or below it is settled.
pub(super) fn delivered_upto(conn: &Connection, d: Destination) -> rusqlite::Result<i64> {
    conn.prepare_cached(&sql(d, DELIVERED_UPTO))?
        .query_row([], |r| r.get(0))
}

/// Creates `tallies` and computes it from the rows: the v3 migration (released: HEC's outbox
/// only, as it was then). Salvage recomputes with [`recount_tallies`].
pub(super) const RECOUNT_TALLIES: &str = "CREATE TABLE IF NOT EXISTS tallies(
         kind TEXT NOT NULL,
         account TEXT NOT NULL,
         n INTEGER NOT NULL,
         PRIMARY KEY(kind, account)) WITHOUT ROWID;
     DELETE FROM tallies;
     INSERT INTO tallies SELECT 'outbox', account, count(*) FROM outbox GROUP BY account;
     INSERT INTO tallies SELECT 'dead', '', count(*) FROM dead_letters;";

/// One destination's tallies recomputed from its rows (salvage; the caller empties `tallies`
/// first).
pub(super) const RECOUNT_DESTINATION: &str = "
     INSERT INTO tallies SELECT '{outbox_tally}', account, count(*) FROM {outbox}
         WHERE seq > (SELECT upto_seq FROM {delivered} WHERE id = 1) GROUP BY account;
     INSERT INTO tallies SELECT '{dead_tally}', '', count(*) FROM dead_letters
         WHERE destination = '{destination}';";

/// Empties `tallies` and recomputes every destination's from the rows (salvage), one
/// statement per entry.
pub(super) fn recount_tallies() -> Vec<String> {
    let mut out = vec!["DELETE FROM tallies".to_string()];
    for d in Destination::ALL {
        out.extend(
            sql(d, RECOUNT_DESTINATION)
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    out
}

/// Adds `?3` to the tally `(?1, ?2)` (a destination's outbox kind per account, its dead kind
/// with account `''`: see [`Tables`]).
pub(super) const ADD_TALLY: &str = "INSERT INTO tallies(kind, account, n) VALUES (?1, ?2, ?3)
     ON CONFLICT(kind, account) DO UPDATE SET n = n + excluded.n";

/// Applies per-account changes of destination `d`'s outbox count and a change of its
/// dead-letter count, in the caller's transaction.
pub(super) fn add_tallies(
    conn: &Connection,
    d: Destination,
    outbox: &std::collections::HashMap<String, i64>,
    dead: i64,
) -> rusqlite::Result<()> {
    let t = tables(d);
    let mut add = conn.prepare_cached(ADD_TALLY)?;
    for (account, n) in outbox.iter().filter(|(_, n)| **n != 0) {
        add.execute(params![t.outbox_tally, account, n])?;
    }
    if dead != 0 {
        add.execute(params![t.dead_tally, "", dead])?;
    }
    Ok(())
}

/// The queries behind [`Spool::status`] (and so `/metrics` and `STATUS=`), templates run for
/// each destination ([`sql`]): none of them reads more than a few rows whatever the backlog
/// (`tallies`, the head of the outbox by `seq`), which `status_queries_never_scan_the_outbox`
/// checks with `EXPLAIN QUERY PLAN`.
pub(super) const STATUS_QUERIES: [&str; 4] = [
    "SELECT coalesce(sum(n), 0) FROM tallies WHERE kind = '{outbox_tally}'",
    "SELECT spooled_at_ms FROM {outbox} WHERE seq > (SELECT upto_seq FROM {delivered} WHERE id = 1)
     ORDER BY seq LIMIT 1",
    "SELECT coalesce(sum(n), 0) FROM tallies WHERE kind = '{dead_tally}'",
    "SELECT account, n FROM tallies WHERE kind = '{outbox_tally}' AND n > 0 ORDER BY account",
];

pub(super) enum OpenProblem {
    /// Not the file's fault (permissions, newer schema, I/O): stop and report.
    Fatal(SpoolError),
    /// The file is not a database or fails its integrity check: set it aside.
    Damaged(String),
}

impl From<rusqlite::Error> for OpenProblem {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match e.sqlite_error_code() {
            Some(DatabaseCorrupt | NotADatabase) => OpenProblem::Damaged(e.to_string()),
            _ => OpenProblem::Fatal(SpoolError::Sqlite(e)),
        }
    }
}

/// Opens `path`, sets WAL and `synchronous=FULL`, checks integrity (`PRAGMA quick_check`) and
/// brings the schema up to date. SQLite itself discards a torn WAL tail (a transaction whose
/// commit frame never reached the disk) while opening.
pub(super) fn open_checked(path: &Path, full_check: bool) -> Result<Connection, OpenProblem> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    durability::apply(&conn)?;
    if full_check {
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(OpenProblem::Damaged(format!("integrity check: {check}")));
        }
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(OpenProblem::Fatal(SpoolError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        }));
    }
    if version < SCHEMA_VERSION {
        let tx = conn.transaction()?;
        for (step, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
            tx.execute_batch(sql)?;
            if version > 0 {
                info!(spool = %path.display(), step, "spool schema migrated");
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(conn)
}
