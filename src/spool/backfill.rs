//! Backfill progress: which past ranges of each account's audit trail have been polled into the
//! spool by `backfill`, so an interrupted backfill resumes where it stopped, and the backfills
//! the running service was asked to do.
//!
//! - `backfill_done(account, from_ms, to_ms)`: disjoint, merged intervals per account. An
//!   interval is recorded only after every record of it is committed (records first, progress
//!   second, like the live cursor), so a crash in between re-polls that piece and the `seen`
//!   dedup absorbs the repeats. It never touches the live `cursors`.
//! - `backfill_jobs(account, from_ms, to_ms, requested_at_ms)`: ranges the service still has to
//!   backfill (handed over by `backfill` while the service runs); a job is removed once
//!   `backfill_done` covers it.
//!
//! Both tables are created on first use (older programs ignore them).

use rusqlite::params;

use super::{Spool, SpoolError};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backfill_done(
    account TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    PRIMARY KEY(account, from_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS backfill_jobs(
    account TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    PRIMARY KEY(account, from_ms, to_ms)) WITHOUT ROWID";

/// A backfill the service still has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Account name.
    pub account: String,
    /// Range start (ms).
    pub from_ms: i64,
    /// Range end (ms).
    pub to_ms: i64,
    /// Milliseconds of the range not yet done.
    pub remaining_ms: i64,
}

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

impl Spool {
    /// Forgets that `[from_ms, to_ms]` of `account` was backfilled, so the next backfill of it
    /// polls it again (`backfill --again`: a re-sweep for records RingCentral showed late).
    /// Intervals reaching outside the range keep their outside parts.
    pub fn backfill_forget(
        &self,
        account: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(), SpoolError> {
        let mut conn = self.conn();
        conn.execute_batch(SCHEMA)?;
        let tx = conn.transaction()?;
        let overlapping: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT from_ms, to_ms FROM backfill_done
                 WHERE account = ?1 AND from_ms < ?3 AND to_ms > ?2",
            )?;
            stmt.query_map(params![account, from_ms, to_ms], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?
        };
        for (lo, hi) in overlapping {
            tx.execute(
                "DELETE FROM backfill_done WHERE account = ?1 AND from_ms = ?2",
                params![account, lo],
            )?;
            for (a, b) in [(lo, from_ms.min(hi)), (to_ms.max(lo), hi)] {
                if a < b {
                    tx.execute(
                        "INSERT INTO backfill_done(account, from_ms, to_ms) VALUES (?1, ?2, ?3)",
                        params![account, a, b],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Asks the service to backfill `[from_ms, to_ms]` of `account` (a no-op if the same job is
    /// already waiting).
    pub fn backfill_request(
        &self,
        account: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(), SpoolError> {
        let conn = self.conn();
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR IGNORE INTO backfill_jobs(account, from_ms, to_ms, requested_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![account, from_ms, to_ms, crate::time::now_ms()],
        )?;
        Ok(())
    }

    /// The waiting jobs with what is left of each, oldest request first; jobs already covered
    /// are removed on the way.
    pub fn backfill_jobs(&self) -> Result<Vec<Job>, SpoolError> {
        let rows: Vec<(String, i64, i64)> = {
            let conn = self.conn();
            conn.execute_batch(SCHEMA)?;
            let mut stmt = conn.prepare_cached(
                "SELECT account, from_ms, to_ms FROM backfill_jobs ORDER BY requested_at_ms, account",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut jobs = Vec::new();
        for (account, from_ms, to_ms) in rows {
            let done = self.backfill_done(&account)?;
            let remaining_ms: i64 = gaps(from_ms, to_ms, &done).iter().map(|(a, b)| b - a).sum();
            if remaining_ms == 0 {
                self.conn().execute(
                    "DELETE FROM backfill_jobs WHERE account = ?1 AND from_ms = ?2 AND to_ms = ?3",
                    params![account, from_ms, to_ms],
                )?;
            } else {
                jobs.push(Job {
                    account,
                    from_ms,
                    to_ms,
                    remaining_ms,
                });
            }
        }
        Ok(jobs)
    }

    /// The next piece (at most `chunk_ms` long, oldest first) the service should backfill for
    /// `account`, if it has a waiting job.
    pub fn backfill_next(
        &self,
        account: &str,
        chunk_ms: i64,
    ) -> Result<Option<(i64, i64)>, SpoolError> {
        for job in self
            .backfill_jobs()?
            .into_iter()
            .filter(|j| j.account == account)
        {
            let done = self.backfill_done(account)?;
            if let Some(&(a, b)) = gaps(job.from_ms, job.to_ms, &done).first() {
                return Ok(Some((a, b.min(a.saturating_add(chunk_ms.max(1))))));
            }
        }
        Ok(None)
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
    fn jobs_hand_out_pieces_oldest_first_and_disappear_when_covered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.backfill_next("acme", 10).unwrap(), None);
        s.backfill_request("acme", 0, 25).unwrap();
        s.backfill_request("acme", 0, 25).unwrap();
        assert_eq!(s.backfill_jobs().unwrap().len(), 1, "the same job once");
        assert_eq!(s.backfill_next("acme", 10).unwrap(), Some((0, 10)));
        assert_eq!(s.backfill_next("other", 10).unwrap(), None);
        s.backfill_mark("acme", 0, 10).unwrap();
        assert_eq!(s.backfill_next("acme", 10).unwrap(), Some((10, 20)));
        assert_eq!(s.backfill_jobs().unwrap()[0].remaining_ms, 15);
        s.backfill_mark("acme", 10, 25).unwrap();
        assert_eq!(s.backfill_next("acme", 10).unwrap(), None);
        assert!(s.backfill_jobs().unwrap().is_empty());
    }

    #[test]
    fn forgetting_a_range_keeps_what_lies_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.backfill_mark("acme", 0, 100).unwrap();
        s.backfill_mark("acme", 200, 300).unwrap();
        s.backfill_mark("other", 0, 300).unwrap();
        s.backfill_forget("acme", 50, 250).unwrap();
        assert_eq!(s.backfill_done("acme").unwrap(), vec![(0, 50), (250, 300)]);
        assert_eq!(s.backfill_done("other").unwrap(), vec![(0, 300)]);
        s.backfill_forget("acme", -10, 400).unwrap();
        assert!(s.backfill_done("acme").unwrap().is_empty());
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
