//! Backfill progress: which past ranges of each account's audit trail have been polled into the
//! spool by `backfill`, so an interrupted backfill resumes where it stopped.
//!
//! Table `backfill_done(account, from_ms, to_ms)`: disjoint, merged intervals per account,
//! created on first use (older programs ignore it). An interval is recorded only after every
//! record of it is committed (records first, progress second, like the live cursor), so a crash
//! in between re-polls that piece and the `seen` dedup absorbs the repeats. It never touches the
//! live `cursors`.

use rusqlite::params;

use super::{Spool, SpoolError};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backfill_done(
    account TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    PRIMARY KEY(account, from_ms)) WITHOUT ROWID";

impl Spool {
    /// The intervals of `account` already backfilled, sorted and disjoint.
    pub fn backfill_done(&self, account: &str) -> Result<Vec<(i64, i64)>, SpoolError> {
        let conn = self.conn();
        conn.execute_batch(SCHEMA)?;
        let mut stmt = conn.prepare_cached(
            "SELECT from_ms, to_ms FROM backfill_done WHERE account = ?1 ORDER BY from_ms",
        )?;
        let rows = stmt
            .query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records `[from_ms, to_ms]` of `account` as backfilled, merged with any interval it
    /// overlaps or touches, in one transaction.
    pub fn backfill_mark(&self, account: &str, from_ms: i64, to_ms: i64) -> Result<(), SpoolError> {
        let mut conn = self.conn();
        conn.execute_batch(SCHEMA)?;
        let tx = conn.transaction()?;
        let (lo, hi): (Option<i64>, Option<i64>) = tx.query_row(
            "SELECT min(from_ms), max(to_ms) FROM backfill_done
             WHERE account = ?1 AND from_ms <= ?3 AND to_ms >= ?2",
            params![account, from_ms, to_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (lo, hi) = (
            lo.map_or(from_ms, |l| l.min(from_ms)),
            hi.map_or(to_ms, |h| h.max(to_ms)),
        );
        tx.execute(
            "DELETE FROM backfill_done WHERE account = ?1 AND from_ms <= ?3 AND to_ms >= ?2",
            params![account, from_ms, to_ms],
        )?;
        tx.execute(
            "INSERT INTO backfill_done(account, from_ms, to_ms) VALUES (?1, ?2, ?3)",
            params![account, lo, hi],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// The parts of `[from, to]` not covered by `done` (sorted, disjoint), in order.
pub fn gaps(from: i64, to: i64, done: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = from;
    for &(lo, hi) in done {
        if hi < at {
            continue;
        }
        if lo > to {
            break;
        }
        if lo > at {
            out.push((at, lo.min(to)));
        }
        at = at.max(hi);
        if at >= to {
            return out;
        }
    }
    if at < to {
        out.push((at, to));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_merge_and_gaps_are_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert!(s.backfill_done("acme").unwrap().is_empty());
        s.backfill_mark("acme", 0, 10).unwrap();
        s.backfill_mark("acme", 20, 30).unwrap();
        s.backfill_mark("other", 0, 100).unwrap();
        assert_eq!(s.backfill_done("acme").unwrap(), vec![(0, 10), (20, 30)]);
        assert_eq!(
            gaps(0, 40, &s.backfill_done("acme").unwrap()),
            vec![(10, 20), (30, 40)]
        );
        // A piece that touches both neighbours merges all three.
        s.backfill_mark("acme", 10, 20).unwrap();
        assert_eq!(s.backfill_done("acme").unwrap(), vec![(0, 30)]);
        assert_eq!(gaps(5, 25, &s.backfill_done("acme").unwrap()), vec![]);
        assert_eq!(gaps(-5, 35, &[(0, 30)]), vec![(-5, 0), (30, 35)]);
        assert_eq!(gaps(0, 10, &[]), vec![(0, 10)]);
        assert_eq!(gaps(50, 60, &[(0, 30)]), vec![(50, 60)]);
        // The live cursor is not a backfill concern.
        assert_eq!(s.cursor("acme").unwrap(), None);
    }

    #[test]
    fn progress_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        Spool::open(dir.path())
            .unwrap()
            .backfill_mark("acme", 1, 2)
            .unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.backfill_done("acme").unwrap(), vec![(1, 2)]);
    }
}
