//! The one lock-free, read-only way into a spool: `spool status`, `spool dead-letters` and
//! `once --dry-run` use it while the service runs (or not), and it can change nothing.
//!
//! SQLite's WAL mode lets a reader see the last committed state while another process writes;
//! the connection is opened read-only and takes no `flock`, so it never waits for, or blocks,
//! the service. It does not migrate or recover (the owner's job), so it has one rule for what
//! it finds:
//! - no `spool.db` (or an empty one, which a start creates before its first commit):
//!   [`SpoolError::Missing`]; a caller to whom that means "no state yet" (the dry run) says so;
//! - a schema version other than this program's: [`SpoolError::SchemaMismatch`] or
//!   [`SpoolError::NewerSchema`], naming the file and what to run instead.
//!
//! The queries are the ones [`super::Spool`] answers with (the functions below), so a row the
//! `delivered` marker hides is as invisible here as to the sink.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    DeadLetterRow, DestinationStatus, SCHEMA_VERSION, STATUS_QUERIES, SpoolError, Status, sql,
};
use crate::config::Destination;

/// Read-only access to `<dir>/spool.db`, without the directory's lock.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    /// Opens `<dir>/spool.db` read-only: [`SpoolError::Missing`] when there is no spool, a
    /// schema error when it is not this program's version.
    pub fn open(dir: &Path) -> Result<Reader, SpoolError> {
        let path = dir.join("spool.db");
        if !std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            return Err(SpoolError::Missing(dir.to_path_buf()));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::NewerSchema {
                path,
                found: version,
            });
        }
        if version != SCHEMA_VERSION {
            return Err(SpoolError::SchemaMismatch {
                path,
                found: version,
            });
        }
        Ok(Reader { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The account's cursor, as the next live poll would use it.
    pub fn cursor(&self, account: &str) -> Result<Option<i64>, SpoolError> {
        Ok(self
            .conn
            .query_row(
                "SELECT cursor_ms FROM cursors WHERE account = ?1",
                [account],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether the record (`record_id` with its event time) of `account` was already spooled
    /// (and so would not be sent again).
    pub fn seen(
        &self,
        account: &str,
        event_time_ms: i64,
        record_id: &str,
    ) -> Result<bool, SpoolError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM seen WHERE account = ?1 AND event_time_ms = ?2 AND record_id = ?3",
                params![account, event_time_ms, record_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Depth, size, age, dead letters and cursors (as [`super::Spool::status`]).
    pub fn status(&self) -> Result<Status, SpoolError> {
        Ok(status(&self.conn)?)
    }

    /// Dead letters of `dest` (every destination when `None`), oldest first.
    pub fn dead_letters(
        &self,
        dest: Option<Destination>,
    ) -> Result<Vec<DeadLetterRow>, SpoolError> {
        Ok(dead_letters(&self.conn, dest)?)
    }

    /// The ledger (see [`super::ledger`]): completed windows of `account` (every account when
    /// `None`) ending at or after `since_ms`, by account and start.
    pub fn ledger(
        &self,
        account: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<super::LedgerRow>, SpoolError> {
        Ok(super::ledger::ledger_rows(&self.conn, account, since_ms)?)
    }

    /// Reconciliation results of `account` (every account when `None`) for periods ending
    /// after `since_ms`, by account and period.
    pub fn reconciliations(
        &self,
        account: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<crate::reconcile::Reconciliation>, SpoolError> {
        Ok(super::ledger::reconciliation_rows(
            &self.conn, account, since_ms,
        )?)
    }
}

/// `(page_count, freelist_count, page_size)`.
pub(super) fn page_counts(conn: &Connection) -> rusqlite::Result<(i64, i64, u64)> {
    let get = |p: &str| conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
    Ok((
        get("page_count")?,
        get("freelist_count")?,
        get("page_size")?.max(0) as u64,
    ))
}

/// See [`super::Spool::status`]: cheap whatever the backlog ([`STATUS_QUERIES`], run for each
/// destination).
pub(super) fn status(conn: &Connection) -> rusqlite::Result<Status> {
    let (pages, free, size) = page_counts(conn)?;
    // Cached: `/metrics` runs these on every scrape.
    let count = |sql: &str| {
        conn.prepare_cached(sql)?
            .query_row([], |r| r.get::<_, i64>(0))
    };
    let mut st = Status {
        used_bytes: (pages - free).max(0) as u64 * size,
        ..Status::default()
    };
    let mut by_account: std::collections::BTreeMap<String, u64> = Default::default();
    for d in Destination::ALL {
        let q = |i: usize| sql(d, STATUS_QUERIES[i]);
        let depth = count(&q(0))?.max(0) as u64;
        let oldest: Option<i64> = conn
            .prepare_cached(&q(1))?
            .query_row([], |r| r.get(0))
            .optional()?;
        let dead = count(&q(2))?.max(0) as u64;
        let mut stmt = conn.prepare_cached(&q(3))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (account, n) = row?;
            *by_account.entry(account).or_default() += n.max(0) as u64;
        }
        st.depth += depth;
        st.dead_letters += dead;
        st.oldest_spooled_ms = match (st.oldest_spooled_ms, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        st.destinations.push(DestinationStatus {
            destination: d,
            depth,
            oldest_spooled_ms: oldest,
            dead_letters: dead,
        });
    }
    st.depth_by_account = by_account.into_iter().collect();
    let mut stmt =
        conn.prepare_cached("SELECT account, cursor_ms FROM cursors ORDER BY account")?;
    st.cursors = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(st)
}

/// The [`Destination`] stored in column `i` (`dead_letters.destination`).
pub(super) fn destination(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Destination> {
    let name: String = row.get(i)?;
    Destination::from_name(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown destination {name:?} (written by a newer rc-audit-hec?)").into(),
        )
    })
}

/// Dead letters of `dest` (all when `None`), oldest first.
pub(super) fn dead_letters(
    conn: &Connection,
    dest: Option<Destination>,
) -> rusqlite::Result<Vec<DeadLetterRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, dead_at_ms, account, record_id, reason, hec_code, event, destination
         FROM dead_letters WHERE ?1 IS NULL OR destination = ?1 ORDER BY id",
    )?;
    stmt.query_map([dest.map(Destination::name)], |r| {
        Ok(DeadLetterRow {
            id: r.get(0)?,
            dead_at_ms: r.get(1)?,
            account: r.get(2)?,
            record_id: r.get(3)?,
            reason: r.get(4)?,
            hec_code: r.get(5)?,
            event: r.get(6)?,
            destination: destination(r, 7)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{DeadLetter, NewRecord, Spool};
    use super::*;
    use crate::config::Destination;

    fn rec(id: &str) -> NewRecord {
        NewRecord::new(id, b"{}".to_vec())
    }

    #[test]
    fn reads_while_the_owner_holds_the_lock_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.enqueue_page("acme", &[rec("r1"), rec("r2"), rec("r3")], Some(42))
            .unwrap();
        let batch = s.read_batch(Destination::Hec, 1, 1 << 20).unwrap();
        let dead = DeadLetter {
            seq: batch[0].seq + 1,
            reason: "bad".into(),
            hec_code: Some(6),
        };
        s.settle(
            Destination::Hec,
            Some((batch[0].seq, batch[0].seq)),
            &[dead],
        )
        .unwrap();
        let reader = Reader::open(dir.path()).expect("no lock needed");
        assert_eq!(reader.cursor("acme").unwrap(), Some(42));
        assert!(reader.seen("acme", 0, "r1").unwrap());
        assert!(!reader.seen("acme", 0, "r9").unwrap());
        assert!(!reader.seen("other", 0, "r1").unwrap());
        let st = reader.status().unwrap();
        assert_eq!(
            (st.depth, st.dead_letters),
            (1, 1),
            "settled rows are invisible"
        );
        assert_eq!(reader.dead_letters(None).unwrap()[0].record_id, "r2");
        drop(reader);
        assert_eq!(s.depth().unwrap(), 1);
        assert!(Spool::open(dir.path()).is_err(), "the owner still holds it");
    }

    #[test]
    fn a_missing_or_empty_spool_is_missing_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let e = Reader::open(dir.path()).err().expect("no spool");
        assert!(matches!(e, SpoolError::Missing(_)), "{e}");
        assert!(e.to_string().contains("there is no spool at"), "{e}");
        assert!(!dir.path().join("spool.db").exists(), "nothing created");
        std::fs::write(dir.path().join("spool.db"), b"").unwrap();
        assert!(matches!(
            Reader::open(dir.path()),
            Err(SpoolError::Missing(_))
        ));
    }

    #[test]
    fn another_schema_version_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path()).unwrap());
        let path = dir.path().join("spool.db");
        for (version, says) in [
            (
                SCHEMA_VERSION - 1,
                "use the rc-audit-hec that runs the service",
            ),
            (SCHEMA_VERSION + 1, "newer than this program's"),
        ] {
            Connection::open(&path)
                .unwrap()
                .pragma_update(None, "user_version", version)
                .unwrap();
            let e = Reader::open(dir.path()).err().expect("refused");
            let msg = e.to_string();
            assert!(msg.contains(&format!("schema version {version}")), "{msg}");
            assert!(msg.contains(says), "{msg}");
        }
    }
}
