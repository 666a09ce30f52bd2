//! The outbox: enqueueing pages (with dedup and the window's cursor), reading batches,
//! settling them (the `delivered` marker) and purging the rows the marker hides.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::*;
use crate::config::Destination;
use crate::time::now_ms;

/// How long a record id is remembered: longer than the 180 days RingCentral keeps.
pub const SEEN_RETENTION: Duration = Duration::from_secs(181 * 24 * 3600);

/// The outbox `account` of internal events that belong to no account (the heartbeat): a name
/// no configured account can have (names are letters, digits, '-', '_' and '.').
pub const INTERNAL_ACCOUNT: &str = "(forwarder)";

/// One record to enqueue.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// RingCentral record id (or derived id); with the event time, the dedup key within an
    /// account.
    pub record_id: String,
    /// The record's `eventTime` (ms), or 0 when it has none: part of the dedup key, so it must
    /// be a property of the record (never the poll time).
    pub event_time_ms: i64,
    /// The serialized HEC event.
    pub event: Vec<u8>,
    /// Why HEC would refuse the event, when local validation says so: it goes straight to the
    /// dead letters (checked once, when spooled, so the drain after an outage does not parse
    /// every event again).
    pub invalid: Option<String>,
}

impl NewRecord {
    /// A record to enqueue, valid.
    pub fn new(record_id: impl Into<String>, event: Vec<u8>) -> Self {
        NewRecord {
            record_id: record_id.into(),
            event_time_ms: 0,
            event,
            invalid: None,
        }
    }
}

/// What [`Spool::enqueue_page`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Records new to the spool.
    pub inserted: usize,
    /// Records already seen (overlap or re-poll).
    pub duplicates: usize,
    /// New records that failed local validation and went to the dead letters.
    pub dead_lettered: usize,
}

/// A spooled event read for delivery.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Position in the outbox.
    pub seq: i64,
    /// Account name.
    pub account: String,
    /// Record id.
    pub record_id: String,
    /// Serialized HEC event.
    pub event: Vec<u8>,
}

/// A row into a destination's outbox (records, internal events, requeued dead letters).
pub(super) const INSERT_OUTBOX: &str =
    "INSERT INTO {outbox}(account, record_id, event, spooled_at_ms) VALUES (?1, ?2, ?3, ?4)";

/// A dead letter of a destination, from the values (local validation) or, in
/// [`SETTLE_DEAD`], from its outbox row.
const INSERT_DEAD: &str =
    "INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms, destination)
     VALUES (?1, ?2, ?3, ?4, NULL, ?5, '{destination}')";

/// See [`Spool::purge_delivered`]; a free function so the background purge can run without
/// holding the spool itself (a handle held there would keep the state directory locked after
/// the owner dropped its last one). Each destination's outbox in turn: a chunk goes to the
/// first one with settled rows left.
pub(super) fn purge_delivered(
    conn: &Mutex<Connection>,
    reserve_dir: Option<&Path>,
    max_rows: usize,
) -> Result<usize, SpoolError> {
    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let once = |conn: &Connection| -> rusqlite::Result<usize> {
        for d in Destination::ALL {
            let upto = delivered_upto(conn, d)?;
            let head: Option<i64> = conn
                .prepare_cached(&sql(d, "SELECT min(seq) FROM {outbox}"))?
                .query_row([], |r| r.get(0))?;
            let Some(head) = head.filter(|h| *h <= upto) else {
                continue;
            };
            let end = upto.min(head.saturating_add(max_rows.max(1) as i64 - 1));
            return durability::relaxed(conn, |c| {
                c.prepare_cached(&sql(d, "DELETE FROM {outbox} WHERE seq BETWEEN ?1 AND ?2"))?
                    .execute(params![head, end])
            });
        }
        Ok(0)
    };
    match once(&conn) {
        Err(e)
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                && reserve_dir.is_some_and(release_reserve) =>
        {
            let n = once(&conn)?;
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            Ok(n)
        }
        other => Ok(other?),
    }
}

/// [`Spool::enqueue_internal`] within the caller's transaction (a reconciliation result is
/// stored with its event: [`Spool::store_reconciliation`]). The forwarder's own events are
/// Splunk monitoring events: they go to HEC's outbox only, and nowhere when HEC is not among
/// `destinations`. True when the event was spooled (HEC's loop is then to be woken).
pub(super) fn insert_internal(
    tx: &rusqlite::Transaction<'_>,
    destinations: &[Destination],
    account: &str,
    record_id: &str,
    event: Vec<u8>,
) -> rusqlite::Result<bool> {
    let d = Destination::Hec;
    if !destinations.contains(&d) {
        return Ok(false);
    }
    tx.prepare_cached(&sql(d, INSERT_OUTBOX))?.execute(params![
        account,
        record_id,
        event,
        now_ms()
    ])?;
    let added = std::collections::HashMap::from([(account.to_string(), 1)]);
    add_tallies(tx, d, &added, 0)?;
    Ok(true)
}

/// Rows one purge step deletes at most: about one batch, a few milliseconds, so a job that
/// arrives meanwhile waits little.
pub(super) const PURGE_CHUNK: usize = 1000;

impl Spool {
    /// Enqueues a page of records for `account`, skipping ids already seen, and, when `cursor_ms`
    /// is given (the last page of a window), moves the account's cursor, all in one transaction.
    pub fn enqueue_page(
        &self,
        account: &str,
        records: &[NewRecord],
        cursor_ms: Option<i64>,
    ) -> Result<Enqueued, SpoolError> {
        self.enqueue_window_page(account, records, cursor_ms, None)
    }

    /// [`Spool::enqueue_page`] for a window's pages: with `window` (its last page), the
    /// window's ledger row is written in the same transaction, with this page's counts added
    /// ([`super::ledger`]), so a window is in the ledger exactly when its records are spooled.
    ///
    /// A new record gets one outbox row per configured destination ([`Spool::set_destinations`]),
    /// all in this transaction: either every destination will deliver it or none knows it (and
    /// its id is not marked seen). A record HEC's local validation refused
    /// ([`NewRecord::invalid`]) is dead-lettered for HEC only; the other destinations get it
    /// like any record (they check their own limits when delivering). In [`Enqueued`] each new
    /// record counts once: `dead_lettered` when HEC is configured and refused it, else
    /// `inserted`.
    pub fn enqueue_window_page(
        &self,
        account: &str,
        records: &[NewRecord],
        cursor_ms: Option<i64>,
        window: Option<&LedgerEntry>,
    ) -> Result<Enqueued, SpoolError> {
        let now = now_ms();
        let destinations = self.destinations();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut done = Enqueued::default();
        // Rows added per destination: (outbox rows, dead letters).
        let mut added = vec![(0i64, 0i64); destinations.len()];
        {
            let mut seen = tx.prepare_cached(
                "INSERT OR IGNORE INTO seen(account, event_time_ms, record_id, seen_at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut outboxes = Vec::with_capacity(destinations.len());
            for d in &destinations {
                outboxes.push((
                    *d,
                    tx.prepare_cached(&sql(*d, INSERT_OUTBOX))?,
                    tx.prepare_cached(&sql(*d, INSERT_DEAD))?,
                ));
            }
            for r in records {
                if seen.execute(params![account, r.event_time_ms, r.record_id, now])? != 1 {
                    done.duplicates += 1;
                    continue;
                }
                let mut refused = false;
                for ((d, outbox, dead), added) in outboxes.iter_mut().zip(added.iter_mut()) {
                    match (&r.invalid, *d) {
                        (Some(reason), Destination::Hec) => {
                            let reason = format!("failed local validation: {reason}");
                            dead.execute(params![account, r.record_id, r.event, reason, now])?;
                            added.1 += 1;
                            refused = true;
                        }
                        _ => {
                            outbox.execute(params![account, r.record_id, r.event, now])?;
                            added.0 += 1;
                        }
                    }
                }
                if refused {
                    done.dead_lettered += 1;
                } else {
                    done.inserted += 1;
                }
            }
        }
        for (d, (rows, dead)) in destinations.iter().zip(&added) {
            let by_account = std::collections::HashMap::from([(account.to_string(), *rows)]);
            add_tallies(&tx, *d, &by_account, *dead)?;
        }
        if let Some(w) = window {
            let entry = LedgerEntry {
                inserted: w.inserted + (done.inserted + done.dead_lettered) as u64,
                duplicates: w.duplicates + done.duplicates as u64,
                ..*w
            };
            super::ledger::record_window(&tx, account, &entry, now)?;
        }
        if let Some(cursor) = cursor_ms {
            // A live window's start is where the account's coverage begins, if nothing
            // said so before (reconciliation looks no earlier; see [`super::ledger`]).
            let since = window
                .filter(|w| w.kind == WindowKind::Live)
                .map(|w| w.from_ms);
            tx.execute(
                "INSERT INTO cursors(account, cursor_ms, updated_at_ms, since_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(account) DO UPDATE SET cursor_ms = excluded.cursor_ms, updated_at_ms = excluded.updated_at_ms,
                     since_ms = coalesce(cursors.since_ms, excluded.since_ms)",
                params![account, cursor, now, since],
            )?;
            let horizon = now - SEEN_RETENTION.as_millis() as i64;
            tx.execute(
                "DELETE FROM seen WHERE seen_at_ms < ?2 AND account = ?1",
                params![account, horizon],
            )?;
            super::ledger::prune(&tx, account, horizon)?;
        }
        tx.commit()?;
        drop(conn);
        for (d, (rows, _)) in destinations.iter().zip(&added) {
            if *rows > 0 {
                self.notify(*d);
            }
        }
        Ok(done)
    }

    /// Enqueues an event the forwarder made itself (a heartbeat, a reconciliation result: see
    /// [`crate::transform::internal_event`]) for delivery like any record, under `account` (an
    /// account's name, or [`INTERNAL_ACCOUNT`] for the forwarder as a whole). It is no record:
    /// `seen` (dedup) and the cursors are not touched, so it can neither hide a record nor be
    /// hidden as a duplicate. `record_id` names it in logs and the dead letters. It is a Splunk
    /// monitoring event: HEC's outbox only, and nothing at all when HEC is not configured.
    pub fn enqueue_internal(
        &self,
        account: &str,
        record_id: &str,
        event: Vec<u8>,
    ) -> Result<(), SpoolError> {
        let destinations = self.destinations();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let queued = insert_internal(&tx, &destinations, account, record_id, event)?;
        tx.commit()?;
        drop(conn);
        if queued {
            self.notify(Destination::Hec);
        }
        Ok(())
    }

    /// The account's cursor (end of its last complete window), if it has one.
    pub fn cursor(&self, account: &str) -> Result<Option<i64>, SpoolError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT cursor_ms FROM cursors WHERE account = ?1",
                [account],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The oldest events waiting for `dest`, at most `max_events` of them and at most
    /// `max_bytes` in total (but always at least one, so an over-size event is still attempted).
    pub fn read_batch(
        &self,
        dest: Destination,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        self.read_batch_after(dest, 0, max_events, max_bytes)
    }

    /// Like [`Spool::read_batch`], but only events after `after_seq` (batches already in flight
    /// awaiting acknowledgement come before it). A `seq` belongs to one destination's outbox:
    /// each destination numbers its own.
    pub fn read_batch_after(
        &self,
        dest: Destination,
        after_seq: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.conn();
        // Rows at or below the `delivered` marker are settled, whether deleted yet or not.
        let after_seq = after_seq.max(delivered_upto(&conn, dest)?);
        let mut stmt = conn.prepare_cached(&sql(
            dest,
            "SELECT seq, account, record_id, event FROM {outbox} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        ))?;
        let mut rows = stmt.query(params![after_seq, max_events as i64])?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let event: Vec<u8> = row.get(3)?;
            if !out.is_empty() && bytes + event.len() > max_bytes {
                break;
            }
            bytes += event.len();
            out.push(Spooled {
                seq: row.get(0)?,
                account: row.get(1)?,
                record_id: row.get(2)?,
                event,
            });
        }
        Ok(out)
    }

    /// The events still waiting for `dest` with `first <= seq <= last` (a batch to send again).
    pub fn read_range(
        &self,
        dest: Destination,
        first: i64,
        last: i64,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.conn();
        let first = first.max(delivered_upto(&conn, dest)? + 1);
        let mut stmt = conn.prepare_cached(&sql(
            dest,
            "SELECT seq, account, record_id, event FROM {outbox} WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        ))?;
        let rows = stmt
            .query_map(params![first, last], |row| {
                Ok(Spooled {
                    seq: row.get(0)?,
                    account: row.get(1)?,
                    record_id: row.get(2)?,
                    event: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Settles the outcome of a delivery to `dest` in one transaction: removes the events it
    /// accepted (`accepted`, an inclusive `seq` range of its outbox at the head) and moves
    /// `dead` events to the dead-letter table with their reason and `dest`. Other
    /// destinations' rows are untouched: each has its own outbox and marker.
    ///
    /// On a full filesystem (`SQLITE_FULL`: the deletes need WAL frames, a checkpoint may grow
    /// the database) the reserve (`spool.reserve`) is released and the settle retried, then the
    /// WAL checkpointed and truncated, so delivery always makes progress; [`Spool::room_to_poll`]
    /// keeps polling paused until the reserve could be re-created.
    pub fn settle(
        &self,
        dest: Destination,
        accepted: Option<(i64, i64)>,
        dead: &[DeadLetter],
    ) -> Result<(), SpoolError> {
        let settled = match self.settle_once(dest, accepted, dead) {
            Err(SpoolError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                    && self.release_reserve() =>
            {
                self.settle_once(dest, accepted, dead)?;
                let conn = self.conn();
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                Ok(())
            }
            other => other,
        };
        self.inner.check_gate.nudge();
        settled
    }

    pub(super) fn settle_once(
        &self,
        dest: Destination,
        accepted: Option<(i64, i64)>,
        dead: &[DeadLetter],
    ) -> Result<(), SpoolError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let upto = delivered_upto(&tx, dest)?;
        let mut removed: std::collections::HashMap<String, i64> = Default::default();
        let mut dead_added = 0;
        for d in dead.iter().filter(|d| d.seq > upto) {
            dead_added += tx
                .prepare_cached(&sql(
                    dest,
                    "INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms, destination)
                     SELECT account, record_id, event, ?2, ?3, ?4, '{destination}' FROM {outbox} WHERE seq = ?1",
                ))?
                .execute(params![d.seq, d.reason, d.hec_code, now])? as i64;
            let mut del = tx.prepare_cached(&sql(
                dest,
                "DELETE FROM {outbox} WHERE seq = ?1 RETURNING account",
            ))?;
            let mut rows = del.query([d.seq])?;
            while let Some(row) = rows.next()? {
                *removed.entry(row.get(0)?).or_default() -= 1;
            }
        }
        if let Some((first, last)) = accepted {
            // Rows at or below the marker were settled already (a late ack for a resent copy).
            let first = first.max(upto + 1);
            if first <= last {
                {
                    // By rowid range (never the account index): the rows the batch just read.
                    let mut accounts = tx.prepare_cached(&sql(
                        dest,
                        "SELECT account FROM {outbox} WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
                    ))?;
                    let mut rows = accounts.query(params![first, last])?;
                    let mut run: Option<(String, i64)> = None;
                    while let Some(row) = rows.next()? {
                        let account = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
                        match &mut run {
                            Some((a, n)) if a == account => *n += 1,
                            _ => {
                                if let Some((a, n)) = run.take() {
                                    *removed.entry(a).or_default() -= n;
                                }
                                run = Some((account.to_string(), 1));
                            }
                        }
                    }
                    if let Some((a, n)) = run {
                        *removed.entry(a).or_default() -= n;
                    }
                }
                // The marker may only cover the range when nothing unsettled lies below it
                // (with acks, batches can be confirmed out of order): otherwise the range's
                // rows are deleted now, as before the marker existed.
                let below: bool = tx
                    .prepare_cached(&sql(
                        dest,
                        "SELECT EXISTS(SELECT 1 FROM {outbox} WHERE seq > ?1 AND seq < ?2)",
                    ))?
                    .query_row(params![upto, first], |r| r.get(0))?;
                if below {
                    tx.prepare_cached(&sql(
                        dest,
                        "DELETE FROM {outbox} WHERE seq BETWEEN ?1 AND ?2",
                    ))?
                    .execute(params![first, last])?;
                } else {
                    tx.prepare_cached(&sql(
                        dest,
                        "UPDATE {delivered} SET upto_seq = ?1 WHERE id = 1",
                    ))?
                    .execute([last])?;
                }
            }
        }
        add_tallies(&tx, dest, &removed, dead_added)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes up to `max_rows` of the settled rows the `delivered` markers hide, oldest first,
    /// without waiting for the disk ([`durability::relaxed`]); returns how many went. The
    /// spool's writer runs it between jobs while none waits (`writer.rs`), so the bulk deletes of a
    /// drain stay off the sink's critical path; on a full filesystem it releases the reserve
    /// like [`Spool::settle`].
    pub fn purge_delivered(&self, max_rows: usize) -> Result<usize, SpoolError> {
        purge_delivered(&self.inner.conn, self.reserve_dir(), max_rows)
    }

    /// The state directory when this handle owns it (and so its delivery reserve).
    pub(super) fn reserve_dir(&self) -> Option<&Path> {
        self.inner
            ._lock
            .as_ref()
            .map(|_| self.inner.path.parent().unwrap_or(Path::new(".")))
    }

    /// Events waiting for delivery, summed over every destination's outbox (a record waiting
    /// for two destinations counts twice); a running count, O(1) in the backlog.
    pub fn depth(&self) -> Result<u64, SpoolError> {
        let conn = self.conn();
        let mut total = 0;
        for d in Destination::ALL {
            total += conn
                .prepare_cached(&sql(d, STATUS_QUERIES[0]))?
                .query_row([], |r| r.get::<_, i64>(0))?
                .max(0) as u64;
        }
        Ok(total)
    }
}
