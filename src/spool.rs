//! The spool: a SQLite database that is the only channel between pollers and the sink.
//!
//! # Why it exists
//! A record fetched from RingCentral must survive a crash, a full Splunk outage and a restart.
//! Every record therefore goes through this file, whether HEC is up or down; nothing lives only in
//! memory once its page is fetched.
//!
//! # On-disk format (`<state dir>/spool.db`, `PRAGMA user_version` = [`SCHEMA_VERSION`])
//! - `outbox(seq, account, record_id, event, spooled_at_ms)`: serialized HEC events waiting for
//!   delivery, in `seq` order (AUTOINCREMENT, so a seq is never reused).
//! - `seen(account, record_id, event_time_ms)`: every record id ever enqueued, kept for
//!   [`SEEN_RETENTION`] (longer than RingCentral keeps records), so overlapping windows and
//!   re-polls after a crash enqueue a record once.
//! - `cursors(account, cursor_ms)`: the end of the last complete window per account.
//! - `dead_letters(...)`: events HEC refused permanently, with the reason; never deleted by us.
//! - `backfill_done(account, from_ms, to_ms)`: past ranges `backfill` has completed
//!   ([`backfill`]; created on first use).
//!
//! # Durability
//! WAL with `synchronous=FULL`: a committed transaction survives power loss. Commits are per page
//! of records (the poller) and per batch (the sink), never per record.
//!
//! # Invariants enforced here
//! 1. *Cursor after records*: [`Spool::enqueue_page`] stores a page of records and, when given, the
//!    window's cursor in one transaction; a cursor never moves without its records.
//! 2. *Delete after acceptance*: only [`Spool::settle`] removes outbox rows, and the sink calls it
//!    only for what HEC accepted (or dead-lettered).
//! 3. *Once per record id*: an id already in `seen` is not enqueued again.
//!
//! The sink is the only reader and reads from the head, one batch at a time, so a batch is always
//! a contiguous range of `seq` and can be settled by range.
//!
//! # Exclusive use
//! `spool.lock` beside the database is locked (`flock`) for the life of the process; a second
//! instance on the same directory refuses to start and names the holder's pid. The OS drops the
//! lock when a process dies, so a killed process never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

pub mod backfill;
pub mod peek;

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// How long a record id is remembered: longer than the 180 days RingCentral keeps.
pub const SEEN_RETENTION: Duration = Duration::from_secs(181 * 24 * 3600);

/// Spool failures. All of them leave the database consistent: a failed transaction is rolled back.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the state directory.
    #[error(
        "the state directory {dir} is in use by another rc-audit-hec process{holder}: stop it first, or give this one its own spool.dir"
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// " (pid N)" when the holder wrote its pid.
        holder: String,
    },
    /// The state directory or lock file cannot be created or opened.
    #[error(
        "cannot use the state directory {dir}: {source} (check that it exists and is writable by this user)"
    )]
    Dir {
        /// The state directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A SQLite error (disk full, I/O error, corruption...).
    #[error("spool database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer version of this program.
    #[error(
        "the spool {path} has schema version {found}, newer than this program's {SCHEMA_VERSION}: run the newer rc-audit-hec, or move the file aside"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
}

/// One record to enqueue.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// RingCentral record id (or derived id); the dedup key within an account.
    pub record_id: String,
    /// Event time, for pruning `seen`.
    pub event_time_ms: i64,
    /// The serialized HEC event.
    pub event: Vec<u8>,
}

/// What [`Spool::enqueue_page`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Records new to the spool.
    pub inserted: usize,
    /// Records already seen (overlap or re-poll).
    pub duplicates: usize,
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

/// An event that HEC refused permanently.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The outbox row.
    pub seq: i64,
    /// Why (HEC's text and code, or the local validation failure).
    pub reason: String,
    /// HEC code, when HEC said it.
    pub hec_code: Option<i64>,
}

/// A stored dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    /// Account name.
    pub account: String,
    /// Record id.
    pub record_id: String,
    /// Why HEC (or local validation) refused it.
    pub reason: String,
    /// HEC code, when HEC said it.
    pub hec_code: Option<i64>,
    /// The serialized HEC event, as it was spooled.
    pub event: Vec<u8>,
}

/// Spool contents at a glance.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Events waiting for delivery.
    pub depth: u64,
    /// Bytes the database uses (excluding free pages).
    pub used_bytes: u64,
    /// When the oldest waiting event was spooled (ms since epoch).
    pub oldest_spooled_ms: Option<i64>,
    /// Dead letters held.
    pub dead_letters: u64,
    /// `(account, cursor_ms)` per account.
    pub cursors: Vec<(String, i64)>,
}

/// Handle to the spool; cheap to clone, shared by pollers and the sink.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Held for the life of the spool: the exclusive-use lock.
    _lock: File,
    /// Woken when records are enqueued, so the sink need not poll the database.
    new_data: tokio::sync::Notify,
}

impl Spool {
    /// Opens (creating if needed) `<dir>/spool.db`, taking the directory's lock.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let dir_err = |source| SpoolError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("spool.lock"))
            .map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(SpoolError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        // Best effort: the pid only improves the message a second instance prints.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "{}", std::process::id());

        let path = dir.join("spool.db");
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::NewerSchema {
                path,
                found: version,
            });
        }
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS outbox(
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
                 dead_at_ms INTEGER NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
        Ok(Spool {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
                _lock: lock,
                new_data: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs blocking spool work off the async runtime.
    pub async fn run<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&Spool) -> R + Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || f(&this)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Waits until something is enqueued (or returns at once if it was since the last wait).
    pub async fn wait_for_data(&self) {
        self.inner.new_data.notified().await;
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (the transaction rolls
        // back on drop), so a poisoned mutex is still safe to use.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Enqueues a page of records for `account`, skipping ids already seen, and, when `cursor_ms`
    /// is given (the last page of a window), moves the account's cursor, all in one transaction.
    pub fn enqueue_page(
        &self,
        account: &str,
        records: &[NewRecord],
        cursor_ms: Option<i64>,
    ) -> Result<Enqueued, SpoolError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut done = Enqueued::default();
        {
            let mut seen = tx.prepare_cached(
                "INSERT OR IGNORE INTO seen(account, record_id, event_time_ms) VALUES (?1, ?2, ?3)",
            )?;
            let mut outbox = tx.prepare_cached(
                "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                if seen.execute(params![account, r.record_id, r.event_time_ms])? == 1 {
                    outbox.execute(params![account, r.record_id, r.event, now])?;
                    done.inserted += 1;
                } else {
                    done.duplicates += 1;
                }
            }
        }
        if let Some(cursor) = cursor_ms {
            tx.execute(
                "INSERT INTO cursors(account, cursor_ms, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(account) DO UPDATE SET cursor_ms = excluded.cursor_ms, updated_at_ms = excluded.updated_at_ms",
                params![account, cursor, now],
            )?;
            let horizon = now - SEEN_RETENTION.as_millis() as i64;
            tx.execute(
                "DELETE FROM seen WHERE account = ?1 AND event_time_ms < ?2",
                params![account, horizon],
            )?;
        }
        tx.commit()?;
        drop(conn);
        if done.inserted > 0 {
            self.inner.new_data.notify_one();
        }
        Ok(done)
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

    /// The oldest waiting events, at most `max_events` of them and at most `max_bytes` in total
    /// (but always at least one, so an over-size event is still attempted).
    pub fn read_batch(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, account, record_id, event FROM outbox ORDER BY seq LIMIT ?1",
        )?;
        let mut rows = stmt.query([max_events as i64])?;
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

    /// Settles the outcome of a delivery in one transaction: deletes the events HEC accepted
    /// (`accepted`, an inclusive `seq` range at the head) and moves `dead` events to the
    /// dead-letter table with their reason.
    pub fn settle(
        &self,
        accepted: Option<(i64, i64)>,
        dead: &[DeadLetter],
    ) -> Result<(), SpoolError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some((first, last)) = accepted {
            tx.execute(
                "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2",
                params![first, last],
            )?;
        }
        for d in dead {
            tx.execute(
                "INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
                 SELECT account, record_id, event, ?2, ?3, ?4 FROM outbox WHERE seq = ?1",
                params![d.seq, d.reason, d.hec_code, now],
            )?;
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [d.seq])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Events waiting for delivery.
    pub fn depth(&self) -> Result<u64, SpoolError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Bytes in use in the database (pages minus free pages); compared with `spool.max_bytes`.
    pub fn used_bytes(&self) -> Result<u64, SpoolError> {
        let conn = self.conn();
        let get = |p: &str| conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
        let used = (get("page_count")? - get("freelist_count")?) * get("page_size")?;
        Ok(used.max(0) as u64)
    }

    /// Depth, size, age, dead letters and cursors.
    pub fn status(&self) -> Result<Status, SpoolError> {
        let used_bytes = self.used_bytes()?;
        let conn = self.conn();
        let (depth, oldest): (i64, Option<i64>) =
            conn.query_row("SELECT count(*), min(spooled_at_ms) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let dead: i64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
        let mut stmt = conn.prepare("SELECT account, cursor_ms FROM cursors ORDER BY account")?;
        let cursors = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Status {
            depth: depth as u64,
            used_bytes,
            oldest_spooled_ms: oldest,
            dead_letters: dead as u64,
            cursors,
        })
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, SpoolError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT account, record_id, reason, hec_code, event FROM dead_letters ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeadLetterRow {
                    account: r.get(0)?,
                    record_id: r.get(1)?,
                    reason: r.get(2)?,
                    hec_code: r.get(3)?,
                    event: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> NewRecord {
        NewRecord {
            record_id: id.to_string(),
            event_time_ms: now_ms(),
            event: format!("{{\"event\":{{\"id\":\"{id}\"}}}}").into_bytes(),
        }
    }

    #[test]
    fn a_second_instance_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path()).unwrap();
        let e = Spool::open(dir.path())
            .err()
            .expect("second open must fail");
        let msg = e.to_string();
        assert!(msg.contains("in use by another rc-audit-hec"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        Spool::open(dir.path()).expect("lock is released with the spool");
    }

    #[test]
    fn records_and_cursor_commit_together_and_dedup_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let page1 = [rec("a"), rec("b")];
        assert_eq!(s.enqueue_page("acme", &page1, None).unwrap().inserted, 2);
        assert_eq!(
            s.cursor("acme").unwrap(),
            None,
            "no cursor before the window ends"
        );
        let page2 = [rec("b"), rec("c")];
        let e = s.enqueue_page("acme", &page2, Some(1234)).unwrap();
        assert_eq!(
            e,
            Enqueued {
                inserted: 1,
                duplicates: 1
            }
        );
        assert_eq!(s.cursor("acme").unwrap(), Some(1234));
        // The same id in another account is another record.
        assert_eq!(
            s.enqueue_page("other", &[rec("a")], None).unwrap().inserted,
            1
        );
        let ids: Vec<_> = s
            .read_batch(100, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|r| r.record_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c", "a"]);
    }

    #[test]
    fn a_failed_transaction_moves_neither_records_nor_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.enqueue_page("acme", &[rec("a")], Some(1)).unwrap();
        // Make the outbox insert fail after `seen` accepted the id.
        s.conn()
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.record_id = 'bad'
                 BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END;",
            )
            .unwrap();
        let err = s.enqueue_page("acme", &[rec("b"), rec("bad")], Some(2));
        assert!(err.is_err());
        assert_eq!(s.cursor("acme").unwrap(), Some(1), "cursor must not move");
        assert_eq!(s.depth().unwrap(), 1, "no record of the failed page stays");
        s.conn().execute_batch("DROP TRIGGER boom").unwrap();
        // The ids were not remembered either: the retry enqueues them.
        assert_eq!(
            s.enqueue_page("acme", &[rec("b"), rec("bad")], Some(2))
                .unwrap()
                .inserted,
            2
        );
    }

    #[test]
    fn batches_respect_limits_and_settle_deletes_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let size = recs[0].event.len();
        assert_eq!(s.read_batch(4, 1 << 20).unwrap().len(), 4);
        assert_eq!(s.read_batch(100, size * 3).unwrap().len(), 3);
        assert_eq!(
            s.read_batch(100, 1).unwrap().len(),
            1,
            "an over-size event goes alone"
        );
        let batch = s.read_batch(5, 1 << 20).unwrap();
        s.settle(
            Some((batch[0].seq, batch[2].seq)),
            &[DeadLetter {
                seq: batch[3].seq,
                reason: "bad".into(),
                hec_code: Some(6),
            }],
        )
        .unwrap();
        let rest: Vec<_> = s
            .read_batch(100, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|r| r.record_id)
            .collect();
        assert_eq!(rest, ["r4", "r5", "r6", "r7", "r8", "r9"]);
        let dl = s.dead_letters().unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!(
            (dl[0].record_id.as_str(), dl[0].reason.as_str()),
            ("r3", "bad")
        );
        assert_eq!(dl[0].hec_code, Some(6));
        let st = s.status().unwrap();
        assert_eq!((st.depth, st.dead_letters), (6, 1));
    }

    #[test]
    fn contents_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path()).unwrap();
            s.enqueue_page("acme", &[rec("a")], Some(99)).unwrap();
        }
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.depth().unwrap(), 1);
        assert_eq!(s.cursor("acme").unwrap(), Some(99));
        assert_eq!(
            s.enqueue_page("acme", &[rec("a")], None).unwrap().inserted,
            0
        );
    }
}
