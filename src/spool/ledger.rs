//! Completeness evidence kept in the spool (schema v5), for an auditor (`spool ledger`) and for
//! reconciliation ([`crate::reconcile`]):
//! - `ledger`: every completed window, live, backfill or repair: its range, RingCentral's
//!   `totalFound`, pages, records received, new records and duplicates absorbed, and when. A
//!   window's row is written in the transaction of its last page (with the live cursor), so a
//!   window is in the ledger exactly when its records are in the spool. Consecutive live
//!   windows that brought nothing new share one row (`windows` counts them, the counts add
//!   up, `totalFound` is the largest): a quiet account polled every 5 minutes would otherwise
//!   write 52,000 rows in the 181 days they are kept, for nothing an auditor needs apart.
//! - `reconciliations`: one result per account and period ([`Reconciliation`]), stored in the
//!   transaction that spools its event, so a restart neither redoes nor loses one.
//! - `cursors.since_ms`: where the forwarder's coverage of an account starts (the first live
//!   window's start, kept with the cursor); reconciliation looks no earlier.
//!
//! The ledger and the results are pruned like `seen` (by when they were written, after
//! [`super::SEEN_RETENTION`]), in the same transaction.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Spool, SpoolError};
use crate::reconcile::{AccountState, Period, Reconciliation, Status};

/// The text of [`COVER_FROM_OLDEST`], a macro so [`MIGRATION`] can `concat!` it.
macro_rules! cover_from_oldest {
    () => {
        "UPDATE cursors SET since_ms = coalesce(
            (SELECT min(s.event_time_ms) FROM seen s
             WHERE s.account = cursors.account AND s.event_time_ms > 0),
            cursor_ms) WHERE since_ms IS NULL;"
    };
}

/// Where coverage starts for an account that has a cursor but no `since_ms` (a spool from
/// before v5, migrated or salvaged): its earliest record the spool remembers, else its cursor.
/// The end of [`MIGRATION`], and a step of salvage on its own.
pub(super) const COVER_FROM_OLDEST: &str = cover_from_oldest!();

/// The v5 schema step. Two b-trees and a column, no more: each b-tree costs a 64 KiB page
/// even empty ([`super::durability`]), and an empty spool must stay well below the smallest
/// `spool.max_bytes` (1 MiB), or polling would pause at once. The ledger is keyed by account
/// and completion time, so pruning and the reading by account walk the key.
pub(super) const MIGRATION: &str = concat!(
    "CREATE TABLE IF NOT EXISTS ledger(
        account TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        from_ms INTEGER NOT NULL,
        to_ms INTEGER NOT NULL,
        total_found INTEGER,
        pages INTEGER NOT NULL,
        records INTEGER NOT NULL,
        inserted INTEGER NOT NULL,
        duplicates INTEGER NOT NULL,
        windows INTEGER NOT NULL,
        PRIMARY KEY(account, at_ms, kind, from_ms, to_ms)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS reconciliations(
        account TEXT NOT NULL,
        period_start_ms INTEGER NOT NULL,
        period_end_ms INTEGER NOT NULL,
        ringcentral_count INTEGER NOT NULL,
        forwarded_count INTEGER NOT NULL,
        status TEXT NOT NULL,
        recovered INTEGER,
        reason TEXT,
        checked_at_ms INTEGER NOT NULL,
        PRIMARY KEY(account, period_start_ms, period_end_ms)) WITHOUT ROWID;
    ALTER TABLE cursors ADD COLUMN since_ms INTEGER;",
    cover_from_oldest!()
);

/// Which path completed a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Live polling (moved the cursor).
    Live,
    /// A backfill (`backfill`, or handed to the service).
    Backfill,
    /// Reconciliation's repair of a period.
    Repair,
}

impl WindowKind {
    /// The name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Live => "live",
            WindowKind::Backfill => "backfill",
            WindowKind::Repair => "repair",
        }
    }
}

/// A completed window, as the poller reports it with its last page. `inserted` and
/// `duplicates` are the earlier pages' counts; the last page's are added in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Which path completed it.
    pub kind: WindowKind,
    /// Window start (ms).
    pub from_ms: i64,
    /// Window end (ms).
    pub to_ms: i64,
    /// RingCentral's `totalFound` for the window, when it said.
    pub total_found: Option<u64>,
    /// Pages fetched.
    pub pages: u32,
    /// Records received (all pages).
    pub records: u64,
    /// Records new to the spool in the earlier pages (dead-lettered ones included).
    pub inserted: u64,
    /// Records already spooled, in the earlier pages.
    pub duplicates: u64,
}

/// A ledger row, as `spool ledger` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerRow {
    /// Account name.
    pub account: String,
    /// `live`, `backfill` or `repair`.
    pub kind: String,
    /// Window start (ms).
    pub from_ms: i64,
    /// Window end (ms).
    pub to_ms: i64,
    /// RingCentral's `totalFound`.
    pub total_found: Option<u64>,
    /// Pages fetched.
    pub pages: u32,
    /// Records received.
    pub records: u64,
    /// New records.
    pub inserted: u64,
    /// Duplicates absorbed.
    pub duplicates: u64,
    /// Windows in this row: consecutive live windows that brought nothing new share one.
    pub windows: u32,
    /// When the (last) window completed (ms).
    pub at_ms: i64,
}

/// Writes `entry` (with the last page's counts added) in the last page's transaction (a live
/// window's coverage start goes with its cursor, see [`super::Spool::enqueue_window_page`]).
pub(super) fn record_window(
    tx: &Transaction<'_>,
    account: &str,
    entry: &LedgerEntry,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let mut row = LedgerRow {
        account: account.to_string(),
        kind: entry.kind.as_str().to_string(),
        from_ms: entry.from_ms,
        to_ms: entry.to_ms,
        total_found: entry.total_found,
        pages: entry.pages,
        records: entry.records,
        inserted: entry.inserted,
        duplicates: entry.duplicates,
        windows: 1,
        at_ms: now_ms,
    };
    if entry.kind == WindowKind::Live && entry.inserted == 0 {
        // The account's latest row, if it is a live stretch with nothing new that this window
        // continues: this window joins it.
        let last = tx
            .prepare_cached(
                "SELECT kind, inserted, from_ms, to_ms, total_found, pages, records, duplicates, windows, at_ms
                 FROM ledger WHERE account = ?1 ORDER BY at_ms DESC LIMIT 1",
            )?
            .query_row([account], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    (r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, u32>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })
            .optional()?;
        if let Some((kind, 0, (from, to), found, pages, records, dups, windows, at)) = last
            && kind == WindowKind::Live.as_str()
            && from <= entry.from_ms
            && to >= entry.from_ms
        {
            tx.prepare_cached("DELETE FROM ledger WHERE account = ?1 AND at_ms = ?2 AND kind = 'live' AND from_ms = ?3 AND to_ms = ?4")?
                .execute(params![account, at, from, to])?;
            row.from_ms = from;
            row.to_ms = row.to_ms.max(to);
            row.total_found = match (found, entry.total_found) {
                (Some(a), Some(b)) => Some((a.max(0) as u64).max(b)),
                (a, b) => a.map(|n| n.max(0) as u64).or(b),
            };
            row.pages += pages;
            row.records += records.max(0) as u64;
            row.duplicates += dups.max(0) as u64;
            row.windows += windows;
        }
    }
    // OR REPLACE: the same window completed twice in one millisecond is one row, and a
    // ledger row must never fail the page it rides with.
    tx.prepare_cached(
        "INSERT OR REPLACE INTO ledger(account, kind, from_ms, to_ms, total_found, pages, records, inserted, duplicates, windows, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        account,
        row.kind,
        row.from_ms,
        row.to_ms,
        row.total_found.map(|n| n as i64),
        row.pages,
        row.records as i64,
        row.inserted as i64,
        row.duplicates as i64,
        row.windows,
        row.at_ms
    ])?;
    Ok(())
}

/// Drops the account's ledger rows and results written before `horizon_ms` (with `seen`).
pub(super) fn prune(tx: &Transaction<'_>, account: &str, horizon_ms: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM ledger WHERE account = ?1 AND at_ms < ?2")?
        .execute(params![account, horizon_ms])?;
    tx.prepare_cached("DELETE FROM reconciliations WHERE account = ?1 AND checked_at_ms < ?2")?
        .execute(params![account, horizon_ms])?;
    Ok(())
}

/// Distinct record ids of `account` with an event time in `[first_ms, last_ms]`.
pub(super) fn forwarded_count(
    conn: &Connection,
    account: &str,
    first_ms: i64,
    last_ms: i64,
) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM seen WHERE account = ?1 AND event_time_ms BETWEEN ?2 AND ?3",
    )?
    .query_row(params![account, first_ms, last_ms], |r| r.get::<_, i64>(0))
    .map(|n| n.max(0) as u64)
}

/// Of those ids, the ones held in dead letters (HEC refused them, or they were invalid when
/// spooled): spooled, but not in Splunk.
pub(super) fn dead_lettered_count(
    conn: &Connection,
    account: &str,
    first_ms: i64,
    last_ms: i64,
) -> rusqlite::Result<u64> {
    // One pass over the period's ids against the account's dead letters (usually none).
    conn.prepare_cached(
        "SELECT count(*) FROM seen WHERE account = ?1 AND event_time_ms BETWEEN ?2 AND ?3
         AND record_id IN (SELECT record_id FROM dead_letters WHERE account = ?1)",
    )?
    .query_row(params![account, first_ms, last_ms], |r| r.get::<_, i64>(0))
    .map(|n| n.max(0) as u64)
}

impl Spool {
    /// Of [`Spool::forwarded_count`]'s ids, those held in dead letters: they never reached
    /// Splunk, so a period holding any is not complete.
    pub fn dead_lettered_count(
        &self,
        account: &str,
        first_ms: i64,
        last_ms: i64,
    ) -> Result<u64, SpoolError> {
        Ok(dead_lettered_count(
            &self.conn(),
            account,
            first_ms,
            last_ms,
        )?)
    }

    /// Distinct record ids the spool has for `account` with an event time in
    /// `[first_ms, last_ms]` (delivered, waiting or dead-lettered alike).
    pub fn forwarded_count(
        &self,
        account: &str,
        first_ms: i64,
        last_ms: i64,
    ) -> Result<u64, SpoolError> {
        Ok(forwarded_count(&self.conn(), account, first_ms, last_ms)?)
    }

    /// What [`crate::reconcile::due`] needs for `account`: its cursor, its coverage start and
    /// the results stored for periods starting in `[from_ms, to_ms]`.
    pub fn reconcile_state(
        &self,
        account: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<AccountState, SpoolError> {
        let conn = self.conn();
        let cursor_ms = conn
            .query_row(
                "SELECT cursor_ms FROM cursors WHERE account = ?1",
                [account],
                |r| r.get(0),
            )
            .optional()?;
        let since_ms = conn
            .query_row(
                "SELECT since_ms FROM cursors WHERE account = ?1",
                [account],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten();
        let done = conn
            .prepare_cached(
                "SELECT period_start_ms, period_end_ms FROM reconciliations
                 WHERE account = ?1 AND period_start_ms BETWEEN ?2 AND ?3
                 AND status != 'repairing'",
            )?
            .query_map(params![account, from_ms, to_ms], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<Vec<(i64, i64)>, _>>()?;
        Ok(AccountState {
            cursor_ms,
            since_ms,
            done,
        })
    }

    /// Reconciliation results of `account` (every account when `None`) for periods ending
    /// after `since_ms`, by account and period (the demo's summary; commands use the reader).
    pub fn reconciliations(
        &self,
        account: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<Reconciliation>, SpoolError> {
        Ok(reconciliation_rows(&self.conn(), account, since_ms)?)
    }

    /// Records that a repair of `period` starts while the spool holds `before` of its records,
    /// unless one was recorded already (an earlier repair that a stop or crash interrupted):
    /// the result then reports what the whole repair recovered, not only its last attempt. The
    /// row (status `repairing`) counts as no result; [`Spool::store_reconciliation`] replaces
    /// it. Returns the `before` of the first attempt.
    pub fn begin_repair(
        &self,
        account: &str,
        period: Period,
        ringcentral_count: u64,
        before: u64,
    ) -> Result<u64, SpoolError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO reconciliations(account, period_start_ms, period_end_ms,
                 ringcentral_count, forwarded_count, status, checked_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'repairing', ?6)",
            params![
                account,
                period.start_ms,
                period.end_ms,
                ringcentral_count as i64,
                before as i64,
                crate::time::now_ms()
            ],
        )?;
        Ok(repair_started(&conn, account, period)?.unwrap_or(before))
    }

    /// `before` of a repair of `period` that started and has no result yet (see
    /// [`Spool::begin_repair`]).
    pub fn repair_started(&self, account: &str, period: Period) -> Result<Option<u64>, SpoolError> {
        Ok(repair_started(&self.conn(), account, period)?)
    }

    /// Stores a reconciliation result, and spools `event` (its HEC event, already rendered by
    /// [`crate::transform::Transformer::internal`]; an internal event, see
    /// [`Spool::enqueue_internal`]) in the same transaction: either both are kept or neither (a period without a stored result
    /// is reconciled again).
    pub fn store_reconciliation(
        &self,
        r: &Reconciliation,
        event: Option<Vec<u8>>,
    ) -> Result<(), SpoolError> {
        let destinations = self.destinations();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO reconciliations(account, period_start_ms, period_end_ms,
                 ringcentral_count, forwarded_count, status, recovered, reason, checked_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.account,
                r.period.start_ms,
                r.period.end_ms,
                r.ringcentral_count as i64,
                r.forwarded_count as i64,
                r.status.as_str(),
                r.recovered.map(|n| n as i64),
                r.reason,
                r.checked_at_ms
            ],
        )?;
        let mut queued = false;
        if let Some(event) = event {
            let id = format!(
                "reconciliation:{}",
                crate::time::ms_rfc3339(r.period.start_ms).unwrap_or_default()
            );
            queued = super::outbox::insert_internal(&tx, &destinations, &r.account, &id, event)?;
        }
        tx.commit()?;
        drop(conn);
        if queued {
            self.notify(crate::config::Destination::Hec);
        }
        Ok(())
    }
}

fn repair_started(
    conn: &Connection,
    account: &str,
    period: Period,
) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached(
        "SELECT forwarded_count FROM reconciliations WHERE account = ?1
         AND period_start_ms = ?2 AND period_end_ms = ?3 AND status = 'repairing'",
    )?
    .query_row(params![account, period.start_ms, period.end_ms], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|n| n.map(|n| n.max(0) as u64))
}

/// Ledger rows of `account` (all accounts when `None`) whose window ends at or after
/// `since_ms`, oldest first.
pub(super) fn ledger_rows(
    conn: &Connection,
    account: Option<&str>,
    since_ms: i64,
) -> rusqlite::Result<Vec<LedgerRow>> {
    let mut stmt = conn.prepare(
        "SELECT account, kind, from_ms, to_ms, total_found, pages, records, inserted, duplicates, windows, at_ms
         FROM ledger WHERE (?1 IS NULL OR account = ?1) AND to_ms >= ?2
         ORDER BY account, from_ms, at_ms",
    )?;
    stmt.query_map(params![account, since_ms], |r| {
        Ok(LedgerRow {
            account: r.get(0)?,
            kind: r.get(1)?,
            from_ms: r.get(2)?,
            to_ms: r.get(3)?,
            total_found: r.get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
            pages: r.get(5)?,
            records: r.get::<_, i64>(6)?.max(0) as u64,
            inserted: r.get::<_, i64>(7)?.max(0) as u64,
            duplicates: r.get::<_, i64>(8)?.max(0) as u64,
            windows: r.get(9)?,
            at_ms: r.get(10)?,
        })
    })?
    .collect()
}

/// Reconciliation results of `account` (all when `None`) for periods ending after `since_ms`,
/// oldest first.
pub(super) fn reconciliation_rows(
    conn: &Connection,
    account: Option<&str>,
    since_ms: i64,
) -> rusqlite::Result<Vec<Reconciliation>> {
    let mut stmt = conn.prepare(
        "SELECT account, period_start_ms, period_end_ms, ringcentral_count, forwarded_count,
                status, recovered, reason, checked_at_ms
         FROM reconciliations WHERE (?1 IS NULL OR account = ?1) AND period_end_ms > ?2
         AND status != 'repairing'
         ORDER BY account, period_start_ms",
    )?;
    stmt.query_map(params![account, since_ms], |r| {
        let status: String = r.get(5)?;
        Ok(Reconciliation {
            account: r.get(0)?,
            period: Period {
                start_ms: r.get(1)?,
                end_ms: r.get(2)?,
            },
            ringcentral_count: r.get::<_, i64>(3)?.max(0) as u64,
            forwarded_count: r.get::<_, i64>(4)?.max(0) as u64,
            status: Status::parse(&status).unwrap_or(Status::Short),
            recovered: r.get::<_, Option<i64>>(6)?.map(|n| n.max(0) as u64),
            reason: r.get(7)?,
            checked_at_ms: r.get(8)?,
        })
    })?
    .collect()
}
