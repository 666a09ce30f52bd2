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
//! - `seen(account, event_time_ms, record_id, seen_at_ms)`: every record id ever enqueued, kept for
//!   [`SEEN_RETENTION`] after it was first seen, so overlapping windows and re-polls after a crash
//!   enqueue a record once. Pruning goes by when we saw an id, not by its `eventTime`: a record
//!   seen more than 181 days ago is older than RingCentral's 180 days and cannot come back, while
//!   a record with a bogus `eventTime` (say 1970) would otherwise be pruned and re-enqueued by
//!   every overlapping poll.
//! - `cursors(account, cursor_ms)`: the end of the last complete window per account.
//! - `dead_letters(...)`: events HEC refused permanently, with the reason; never deleted by us.
//! - `backfill_done(account, from_ms, to_ms)`: past ranges `backfill` has completed
//!   ([`backfill`]; created on first use).
//! - `delivered(id = 1, upto_seq)` (v4): every outbox row with `seq <= upto_seq` is settled
//!   (delivered) and invisible to every reader, status, depth and tally, whether or not it has
//!   been deleted yet. It only moves when no unsettled row lies below the settled range, so it
//!   never hides a waiting event.
//!
//! # Durability (the policy: [`durability`], applied by every connection that writes)
//! WAL with `synchronous=FULL`: a committed transaction survives power loss. Commits are per page
//! of records (the poller) and per batch (the sink), never per record. A settled batch costs one
//! small commit: it moves the `delivered` marker; the rows it hides are deleted later, in
//! bounded chunks, by the spool's writer thread when no other work waits
//! ([`Spool::purge_delivered`]); those deletes need no fsync of their own (the marker already
//! hides the rows, a purge lost to a power cut is simply redone). The WAL is checkpointed at
//! [`durability::WAL_CHECKPOINT_BYTES`].
//!
//! # Invariants enforced here
//! 1. *Cursor after records*: [`Spool::enqueue_page`] stores a page of records and, when given, the
//!    window's cursor in one transaction; a cursor never moves without its records.
//! 2. *Delete after acceptance*: only [`Spool::settle`] removes outbox rows from view (the
//!    `delivered` marker, or a delete when the batch is not at the head), and the sink calls it
//!    only for what HEC accepted (or dead-lettered); [`Spool::purge_delivered`] deletes only rows
//!    the marker already hides.
//! 4. *The marker hides only settled rows*: it moves to a settled range's end only when no
//!    unsettled row lies below the range, and new rows always get a higher `seq` (AUTOINCREMENT).
//! 3. *Once per record id*: an id already in `seen` is not enqueued again.
//!
//! The sink is the only reader and reads from the head, one batch at a time, so a batch is always
//! a contiguous range of `seq` and can be settled by range.
//!
//! # One writer
//! [`Spool::run`] queues its closures for the spool's one writer thread (`writer.rs`), which runs
//! them in order and, between them, purges settled rows in chunks. Reads for inspection use
//! [`reader::Reader`]: read-only, no lock, one rule for a missing file and the schema version.
//!
//! # Exclusive use
//! The state directory itself (which cannot be deleted while the service runs in it) and
//! `spool.lock` (holding the pid) are locked (`flock`) for the life of the process; a second
//! instance on the same directory refuses to start and names the holder's pid, even when
//! `spool.lock` was deleted. The OS drops the locks when a process dies, so a killed process
//! never leaves a stale lock behind.
//!
//! # Damage and recovery
//! A damaged `spool.db` (found at start-up, or by the background check after a clean start,
//! which then recovers it in place) is recovered in restartable steps ([`recover`]): what is
//! readable is copied into `spool.db.salvage`, renamed `spool.db.salvaged` once complete, then
//! swapped in; the damaged file is kept as `spool.db.damaged-<time>`. A kill at any step leaves
//! either the damaged file in place (recovered again) or the complete salvage (swapped in).
//!
//! # Full disk
//! `spool.reserve` (a few MiB of real blocks) is released when a settle fails on a full
//! filesystem, so delivered events can always be removed; polling pauses before the filesystem
//! runs short ([`Spool::room_to_poll`], `spool.min_free_bytes`) and the reserve is re-created
//! when space returns. The WAL is bounded (`journal_size_limit`, checkpoints at 16 MiB).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tracing::{error, info};

pub mod backfill;
pub mod durability;
pub mod identity;
pub mod reader;
mod writer;

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 4;
use durability::WAL_CHECKPOINT_BYTES;
/// Default of `spool.min_free_bytes`: free space polling leaves on the spool's filesystem.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;
/// How long a record id is remembered: longer than the 180 days RingCentral keeps.
pub const SEEN_RETENTION: Duration = Duration::from_secs(181 * 24 * 3600);

/// Schema steps: a database at version `v` runs every step numbered above `v`, in one
/// transaction, then records [`SCHEMA_VERSION`]. Steps are never edited once released; a change
/// is a new step. (0 is a new, empty file.)
const MIGRATIONS: &[(i64, &str)] = &[
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
];

/// The settled marker (see `delivered` in the module docs).
const DELIVERED_UPTO: &str = "SELECT upto_seq FROM delivered WHERE id = 1";

/// `delivered.upto_seq`: every outbox row at or below it is settled.
fn delivered_upto(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(DELIVERED_UPTO)?
        .query_row([], |r| r.get(0))
}

/// Creates (if needed) and recomputes `tallies` from the rows: the v3 migration, and salvage.
const RECOUNT_TALLIES: &str = "CREATE TABLE IF NOT EXISTS tallies(
         kind TEXT NOT NULL,
         account TEXT NOT NULL,
         n INTEGER NOT NULL,
         PRIMARY KEY(kind, account)) WITHOUT ROWID;
     DELETE FROM tallies;
     INSERT INTO tallies SELECT 'outbox', account, count(*) FROM outbox GROUP BY account;
     INSERT INTO tallies SELECT 'dead', '', count(*) FROM dead_letters;";

/// Adds `?3` to the tally `(?1, ?2)` (`'outbox'` per account, `'dead'` with account `''`).
const ADD_TALLY: &str = "INSERT INTO tallies(kind, account, n) VALUES (?1, ?2, ?3)
     ON CONFLICT(kind, account) DO UPDATE SET n = n + excluded.n";

/// Applies per-account changes of the outbox count and a change of the dead-letter count, in
/// the caller's transaction.
fn add_tallies(
    conn: &Connection,
    outbox: &std::collections::HashMap<String, i64>,
    dead: i64,
) -> rusqlite::Result<()> {
    let mut add = conn.prepare_cached(ADD_TALLY)?;
    for (account, n) in outbox.iter().filter(|(_, n)| **n != 0) {
        add.execute(params!["outbox", account, n])?;
    }
    if dead != 0 {
        add.execute(params!["dead", "", dead])?;
    }
    Ok(())
}

/// The queries behind [`Spool::status`] (and so `/metrics` and `STATUS=`): none of them reads
/// more than a few rows whatever the backlog (`tallies`, the head of the outbox by `seq`),
/// which `status_queries_never_scan_the_outbox` checks with `EXPLAIN QUERY PLAN`.
const STATUS_QUERIES: [&str; 4] = [
    "SELECT coalesce(sum(n), 0) FROM tallies WHERE kind = 'outbox'",
    "SELECT spooled_at_ms FROM outbox WHERE seq > (SELECT upto_seq FROM delivered WHERE id = 1)
     ORDER BY seq LIMIT 1",
    "SELECT coalesce(sum(n), 0) FROM tallies WHERE kind = 'dead'",
    "SELECT account, n FROM tallies WHERE kind = 'outbox' AND n > 0 ORDER BY account",
];

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
    /// `spool status` and friends found no spool in the directory.
    #[error("there is no spool at {0}: check spool.dir (or the --config it comes from)")]
    Missing(PathBuf),
    /// `spool` commands beside a running service of another version.
    #[error(
        "the spool {path} has schema version {found}, this program expects {SCHEMA_VERSION}: use the rc-audit-hec that runs the service (or stop it; this program then migrates the spool)"
    )]
    SchemaMismatch {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRow {
    /// Its id, for `spool requeue --id`.
    pub id: i64,
    /// When it was dead-lettered (ms since epoch).
    pub dead_at_ms: i64,
    /// Account name.
    pub account: String,
    /// Record id.
    pub record_id: String,
    /// Why HEC (or local validation) refused it.
    pub reason: String,
    /// HEC code, when HEC said it.
    pub hec_code: Option<i64>,
    /// The serialized HEC event, as it was spooled.
    #[serde(serialize_with = "as_json")]
    pub event: Vec<u8>,
}

/// Writes spooled event bytes as the JSON they are (or as a string if they are not JSON).
fn as_json<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match serde_json::from_slice::<&serde_json::value::RawValue>(bytes) {
        Ok(raw) => raw.serialize(s),
        Err(_) => String::from_utf8_lossy(bytes).serialize(s),
    }
}

/// Spool contents at a glance.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Events waiting for delivery.
    pub depth: u64,
    /// Bytes the database uses (excluding free pages).
    pub used_bytes: u64,
    /// When the event at the head of the outbox (the oldest waiting) was spooled (ms since
    /// epoch).
    pub oldest_spooled_ms: Option<i64>,
    /// Dead letters held.
    pub dead_letters: u64,
    /// `(account, cursor_ms)` per account.
    pub cursors: Vec<(String, i64)>,
    /// `(account, events waiting)` per account with any.
    pub depth_by_account: Vec<(String, u64)>,
}

/// What start-up did with a damaged spool.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Where the damaged file was moved.
    pub aside: PathBuf,
    /// What was wrong with it.
    pub detail: String,
    /// Rows copied into the new spool, per table (`None`: the table could not be read).
    pub salvaged: Vec<(&'static str, Option<usize>)>,
}

enum OpenProblem {
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
fn open_checked(path: &Path, full_check: bool) -> Result<Connection, OpenProblem> {
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

/// Files of the state directory besides `spool.db`.
const LOCK_FILE: &str = "spool.lock";
/// A salvage being written; an incomplete one is deleted and redone by the next start.
const SALVAGE: &str = "spool.db.salvage";
/// A complete salvage waiting to replace the damaged `spool.db`; the next start finishes the swap.
const SALVAGED: &str = "spool.db.salvaged";
/// Space held back for delivery on a full filesystem (see [`Spool::settle`]).
const RESERVE: &str = "spool.reserve";
/// Size of `spool.reserve`: what a checkpoint may need to grow the database by (the WAL is
/// checkpointed at [`WAL_CHECKPOINT_BYTES`]) plus room for the delete's own WAL frames.
pub const RESERVE_BYTES: u64 = WAL_CHECKPOINT_BYTES as u64 + (4 << 20);

/// **Test-only** (used by `tests/crash.rs`; not a setting): when set to `N`, the process aborts
/// at step `N` of spool recovery, as a SIGKILL or systemd's start timeout would stop it there.
/// Hidden rather than behind the `fault-injection` feature: `tests/crash.rs` needs it in the
/// real binary. Not under the `RC_AUDIT_HEC_` prefix, which the config loader reads (and
/// refuses unknown keys in) when the command loads a config.
#[doc(hidden)]
pub const ABORT_RECOVERY_ENV: &str = "TEST_RC_AUDIT_HEC_ABORT_RECOVERY_AT";

/// The test-only crash point `step` of recovery (see [`ABORT_RECOVERY_ENV`]).
fn recovery_step(step: u32) {
    let at = std::env::var(ABORT_RECOVERY_ENV).ok();
    if at.and_then(|v| v.parse::<u32>().ok()) == Some(step) {
        eprintln!("{ABORT_RECOVERY_ENV}={step}: aborting during spool recovery (test)");
        std::process::abort();
    }
}

/// `path` with `suffix` appended to its file name (`spool.db` + `-wal`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a database file and its `-wal`, `-shm` and `-journal`, if present.
fn remove_db_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["-wal", "-shm", "-journal", ""] {
        match std::fs::remove_file(suffixed(path, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Renames `spool.db` (and its `-wal`/`-shm`) to `spool.db.damaged-<time>`; never deletes.
/// `None` when there was nothing left to move.
fn set_aside(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let aside = path.with_file_name(format!("spool.db.damaged-{stamp}"));
    let mut moved = false;
    for suffix in ["", "-wal", "-shm"] {
        let from = suffixed(path, suffix);
        if from.exists() {
            std::fs::rename(&from, suffixed(&aside, suffix))?;
            moved = true;
        }
    }
    Ok(moved.then_some(aside))
}

/// Recovers the damaged `path` so that a kill at any step loses nothing:
/// 1. an interrupted salvage (`spool.db.salvage`) is deleted: the damaged file is untouched;
/// 2. what is readable is copied into a new `spool.db.salvage` (WAL folded in, synced);
/// 3. it is renamed `spool.db.salvaged`: complete (the next start finishes from here,
///    [`finish_recovery`]);
/// 4. the damaged files are renamed aside (kept, never deleted);
/// 5. `spool.db.salvaged` becomes `spool.db`.
///
/// Until step 3 the damaged `spool.db` is in place and the next start recovers it again; from
/// step 3 on the salvage is complete and the next start only finishes the swap. The directory is
/// synced after each rename.
fn recover(path: &Path, detail: String) -> Result<Recovery, SpoolError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_err = |source| SpoolError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let salvage_path = dir.join(SALVAGE);
    remove_db_files(&salvage_path).map_err(dir_err)?;
    recovery_step(1);
    let salvaged = {
        let conn = open_checked(&salvage_path, true).map_err(|p| match p {
            OpenProblem::Fatal(e) => e,
            OpenProblem::Damaged(d) => SpoolError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("a new spool is damaged too: {d}")),
            )),
        })?;
        let salvaged = salvage(&conn, path);
        recovery_step(2);
        // One self-contained file: the WAL is folded in, so the rename carries everything.
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        salvaged
    };
    std::fs::rename(&salvage_path, dir.join(SALVAGED)).map_err(dir_err)?;
    sync_dir(dir).map_err(dir_err)?;
    error!(spool = %path.display(), ?salvaged, "records salvaged from the damaged spool");
    recovery_step(3);
    let aside = finish_recovery(path)?;
    Ok(Recovery {
        aside,
        detail,
        salvaged,
    })
}

/// Steps 4 and 5 of [`recover`]: the damaged files go aside, the complete salvage takes their
/// place. Also what a start does when it finds `spool.db.salvaged` (a recovery killed after its
/// salvage was complete). Returns where the damaged file went (the directory when an earlier,
/// interrupted run had moved it already).
fn finish_recovery(path: &Path) -> Result<PathBuf, SpoolError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_err = |source| SpoolError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    // A stale `-wal` must never meet the new file: SQLite would replay it onto it.
    let aside = set_aside(path).map_err(dir_err)?;
    sync_dir(dir).map_err(dir_err)?;
    recovery_step(4);
    std::fs::rename(dir.join(SALVAGED), path).map_err(dir_err)?;
    sync_dir(dir).map_err(dir_err)?;
    if let Some(aside) = &aside {
        error!(spool = %path.display(), moved_to = %aside.display(),
            "the damaged spool was kept aside and replaced by what could be read from it; keep the old file until you have checked nothing is missing");
    }
    Ok(aside.unwrap_or_else(|| dir.to_path_buf()))
}

/// Deletes `<dir>/spool.reserve`; true when there was one.
fn release_reserve(dir: &Path) -> bool {
    let released = std::fs::remove_file(dir.join(RESERVE)).is_ok();
    if released {
        error!(
            "the filesystem of {} is full: released the spool's delivery reserve ({RESERVE_BYTES} bytes) so delivered events can be removed; polling stays paused until there is space again",
            dir.display()
        );
    }
    released
}

/// See [`Spool::purge_delivered`]; a free function so the writer thread can purge without
/// holding the spool itself (a handle held there would keep the state directory locked after
/// the owner dropped its last one).
fn purge_delivered(
    conn: &Mutex<Connection>,
    reserve_dir: Option<&Path>,
    max_rows: usize,
) -> Result<usize, SpoolError> {
    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let once = |conn: &Connection| -> rusqlite::Result<usize> {
        let upto = delivered_upto(conn)?;
        let head: Option<i64> = conn
            .prepare_cached("SELECT min(seq) FROM outbox")?
            .query_row([], |r| r.get(0))?;
        let Some(head) = head.filter(|h| *h <= upto) else {
            return Ok(0);
        };
        let end = upto.min(head.saturating_add(max_rows.max(1) as i64 - 1));
        durability::relaxed(conn, |c| {
            c.prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")?
                .execute(params![head, end])
        })
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

/// Rows one purge step deletes at most: about one batch, a few milliseconds, so a job that
/// arrives meanwhile waits little.
const PURGE_CHUNK: usize = 1000;

/// Below this much free space a start releases the reserve first: SQLite needs room for its
/// WAL index (`-shm`) and WAL before it can delete anything.
const START_ROOM: u64 = 1 << 20;

/// `(device, inode)` of `path`, to notice `spool.db` deleted or replaced under the service.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Bytes available to this user on the filesystem holding `dir`.
fn fs_available(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Writes `spool.reserve` with real blocks (bytes written, not a sparse `set_len`), synced.
/// A failed attempt (no space) leaves no partial file behind.
fn make_reserve(path: &Path) -> std::io::Result<()> {
    let result = write_filler(path, RESERVE_BYTES);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Allocated blocks (`fallocate`, cheap), else written random bytes: not zeros, which a
/// filesystem that compresses (btrfs, ZFS) would store in no space at all.
fn write_filler(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, bytes).is_ok() {
        return f.sync_all();
    }
    let mut chunk = vec![0u8; 1 << 20];
    fastrand::fill(&mut chunk);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Copies what can still be read from a damaged spool into the new one, in three transactions
/// ordered so that a crash, or a table that cannot be read, costs duplicates and never loss:
/// 1. the outbox with the cursors (a cursor only ever arrives with the records it covers);
/// 2. the dead letters;
/// 3. the remembered ids, only if 1 and 2 both came over: an id marked seen whose record was
///    not copied would never be polled again.
///
/// (SQLite may roll a whole transaction back on a corruption error, so each step is its own.)
fn salvage(conn: &Connection, aside: &Path) -> Vec<(&'static str, Option<usize>)> {
    let uri = format!("file:{}?mode=ro", aside.display());
    if let Err(e) = conn.execute("ATTACH DATABASE ?1 AS old", [uri]) {
        error!("cannot read the damaged spool at all ({e}): nothing could be copied from it");
        return vec![
            ("outbox", None),
            ("cursors", None),
            ("seen", None),
            ("dead_letters", None),
        ];
    }
    let tx = |sqls: &[&str]| -> Option<Vec<usize>> {
        conn.execute_batch("BEGIN IMMEDIATE").ok()?;
        let mut counts = Vec::with_capacity(sqls.len());
        for sql in sqls {
            match conn.execute(sql, []) {
                Ok(n) => counts.push(n),
                Err(_) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return None;
                }
            }
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => Some(counts),
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK");
                None
            }
        }
    };
    // Rows the old `delivered` marker hides were delivered: not copied (a v3 file, or an
    // unreadable marker, copies everything: duplicates, never loss).
    let upto: i64 = conn
        .query_row("SELECT upto_seq FROM old.delivered WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap_or(0);
    let copy_outbox = format!(
        "INSERT INTO main.outbox(seq, account, record_id, event, spooled_at_ms)
         SELECT seq, account, record_id, event, spooled_at_ms FROM old.outbox WHERE seq > {upto}
         ORDER BY seq"
    );
    let outbox = tx(&[
        // Same seq: a sink still holding a batch (recovery in place, [`Spool::recover_in_place`])
        // settles exactly the rows it sent.
        &copy_outbox,
        "INSERT OR REPLACE INTO main.cursors SELECT * FROM old.cursors",
        "DELETE FROM main.tallies",
        "INSERT INTO main.tallies SELECT 'outbox', account, count(*) FROM main.outbox GROUP BY account",
        "INSERT INTO main.tallies SELECT 'dead', '', count(*) FROM main.dead_letters",
    ]);
    let dead_letters = tx(&[
        "INSERT INTO main.dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
         SELECT account, record_id, event, reason, hec_code, dead_at_ms FROM old.dead_letters",
        "DELETE FROM main.tallies",
        "INSERT INTO main.tallies SELECT 'outbox', account, count(*) FROM main.outbox GROUP BY account",
        "INSERT INTO main.tallies SELECT 'dead', '', count(*) FROM main.dead_letters",
    ]);
    let seen = if outbox.is_some() && dead_letters.is_some() {
        tx(&["INSERT OR IGNORE INTO main.seen SELECT * FROM old.seen"])
    } else {
        error!(
            "the damaged spool's outbox or dead letters are unreadable: remembered ids are not carried over{}",
            if outbox.is_none() {
                ", nor cursors, so every account re-polls from poll.initial_lookback; records older than that which were still undelivered are only in the set-aside file (raise poll.initial_lookback, up to 180d, before the next start to fetch them again)"
            } else {
                " (expect some duplicates in Splunk)"
            }
        );
        None
    };
    let _ = conn.execute("DETACH DATABASE old", []);
    vec![
        ("outbox", outbox.as_ref().map(|c| c[0])),
        ("cursors", outbox.as_ref().map(|c| c[1])),
        ("seen", seen.map(|c| c[0])),
        ("dead_letters", dead_letters.map(|c| c[0])),
    ]
}

/// Handle to the spool; cheap to clone, shared by pollers and the sink.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the writer thread, which purges settled rows between jobs.
    conn: Arc<Mutex<Connection>>,
    /// The one writer's turn and the purge ([`Spool::run`]).
    writer: Option<writer::Writer>,
    path: PathBuf,
    /// Held for the life of the spool: the exclusive-use locks, on the state directory itself
    /// and on `spool.lock` (none for inspection beside a running service).
    _lock: Option<(File, File)>,
    /// What recovery did (at start-up, or in place after the background check found damage).
    recovery: Mutex<Option<Recovery>>,
    /// Woken when records are enqueued, so the sink need not poll the database.
    new_data: tokio::sync::Notify,
    /// What the background integrity check found (after a clean start) and recovery has not
    /// repaired yet.
    background_check: Arc<Mutex<Option<String>>>,
    /// Where the background check is (it waits for the drain).
    check_gate: Arc<CheckGate>,
    /// Written when the owning process closes the spool: the next start may skip the check.
    marker: Option<PathBuf>,
    /// `(device, inode)` of the open `spool.db`, to notice it deleted or replaced.
    file_id: Mutex<Option<(u64, u64)>>,
    /// Free space polling leaves on the filesystem (`spool.min_free_bytes`).
    min_free_bytes: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The purge first (a chunk in progress finishes), so the connection closes with the
        // last field, before the locks go.
        drop(self.writer.take());
        // Only the process that owns the directory (holds the lock) says it closed cleanly, and
        // never over damage the background check found: the next start must recover it.
        let damaged = self
            .background_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if let (Some(marker), Some(_), false) = (&self.marker, &self._lock, damaged) {
            let _ = std::fs::write(marker, b"closed cleanly\n");
        }
    }
}

/// Marks a spool closed by its owner (see [`Spool::open`]).
const CLEAN_MARKER: &str = "spool.clean";

/// Where the background integrity check is; it waits for the backlog to drain first, as a
/// `quick_check` of a large spool competes with the drain for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckState {
    /// No check was scheduled (a start after a crash checks before opening).
    NotScheduled,
    /// Waiting for the outbox to be empty; `seen_backlog` counts the times it found events
    /// waiting.
    Waiting {
        /// Times the check found events waiting and went back to sleep.
        seen_backlog: u32,
    },
    /// `PRAGMA quick_check` is running.
    Running,
    /// Finished (whatever it found).
    Done,
}

/// The background check's state and the condition it sleeps on; [`Spool::settle`] wakes it.
struct CheckGate {
    state: Mutex<CheckState>,
    wake: std::sync::Condvar,
}

impl CheckGate {
    fn new() -> Arc<CheckGate> {
        Arc::new(CheckGate {
            state: Mutex::new(CheckState::NotScheduled),
            wake: std::sync::Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CheckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: CheckState) {
        *self.lock() = state;
        self.wake.notify_all();
    }

    /// Wakes a check waiting for the drain (after a settle).
    fn nudge(&self) {
        if matches!(*self.lock(), CheckState::Waiting { .. }) {
            self.wake.notify_all();
        }
    }
}

/// How long the waiting check sleeps before it looks at the depth again without a settle
/// (polling and requeues change it too).
const CHECK_RECHECK: Duration = Duration::from_secs(5);

/// Runs `PRAGMA quick_check` on its own read-only connection once the outbox is empty; damage
/// is logged loudly, kept for [`Spool::integrity_problem`] and repaired in place
/// ([`Spool::recover_in_place`]) while the loops wait on the spool. The marker is gone already,
/// so if the process dies first, the next start checks (and recovers) before anything else.
fn check_in_background(spool: std::sync::Weak<Inner>, gate: Arc<CheckGate>, path: PathBuf) {
    gate.set(CheckState::Waiting { seen_backlog: 0 });
    let spawned = std::thread::Builder::new()
        .name("spool-check".into())
        .spawn(move || {
            let result = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    // Wait for the drain; an unreadable count is no reason to wait (it may be
                    // the damage the check is for).
                    while c.query_row(STATUS_QUERIES[0], [], |r| r.get::<_, i64>(0)).unwrap_or(0) > 0 {
                        if spool.strong_count() == 0 {
                            return Ok("ok".to_string());
                        }
                        let mut state = gate.lock();
                        if let CheckState::Waiting { seen_backlog } = &mut *state {
                            *seen_backlog += 1;
                        }
                        gate.wake.notify_all();
                        drop(gate.wake.wait_timeout(state, CHECK_RECHECK));
                    }
                    gate.set(CheckState::Running);
                    c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
                });
            gate.set(CheckState::Done);
            let problem = match result {
                Ok(ok) if ok == "ok" => return,
                Ok(detail) => format!("integrity check: {detail}"),
                Err(e) => e.to_string(),
            };
            let Some(inner) = spool.upgrade() else { return };
            let spool = Spool { inner };
            error!(spool = %path.display(),
                "the spool is damaged ({problem}): recovering it now (the damaged file is kept aside, what is readable is copied into a new spool; delivery and polling wait meanwhile)");
            *spool.inner.background_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem.clone());
            match spool.recover_in_place(problem) {
                Ok(r) => info!(spool = %path.display(), salvaged = ?r.salvaged, "spool recovered without a restart"),
                Err(e) => error!(spool = %path.display(),
                    "the spool could not be recovered in place ({e}): restart the service; the next start recovers it before anything else"),
            }
        });
    if let Err(e) = spawned {
        error!("cannot start the spool integrity check: {e}");
    }
}

/// The pid holding an `flock` on `dir`, from `/proc/locks` (Linux), for when `spool.lock` and
/// the pid in it were deleted.
fn flock_holder(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(dir).ok()?.ino().to_string();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:123456 0 EOF"
        let (kind, pid, id) = (f.get(1)?, f.get(4)?, f.get(5)?);
        (*kind == "FLOCK" && id.rsplit(':').next() == Some(ino.as_str())).then(|| pid.to_string())
    })
}

/// Why [`Spool::room_to_poll`] says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom(pub String);

/// Audit records carry names and IP addresses: the state directory is created 0700 and its
/// files (`spool.db` with its `-wal`/`-shm`, the lock, the clean marker) are 0600, whatever the
/// umask. A missing `spool.db` is created empty (SQLite treats that as a new database) with
/// 0600 so it is never readable by others, not even for an instant; SQLite gives the `-wal` and
/// `-shm` files it creates later the database file's permissions. Existing files are tightened
/// (a spool from an older version); an existing directory is left as it is (it may be `.`).
fn protect_state(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("spool.db"))?;
    for name in [
        "spool.db",
        "spool.db-wal",
        "spool.db-shm",
        "spool.lock",
        CLEAN_MARKER,
    ] {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Spool {
    /// Opens (creating if needed) `<dir>/spool.db`, taking the directory's lock.
    ///
    /// The lock is an `flock` on the state directory itself, which cannot be deleted while the
    /// service runs in it (deleting `spool.lock` once let a second instance start beside the
    /// first), plus one on `spool.lock`, which holds the pid for the refusal message.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let dir_err = |source| SpoolError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        protect_state(dir).map_err(dir_err)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(dir_err)?;
        let dir_lock = File::open(dir).map_err(dir_err)?;
        for held in [&dir_lock, &lock] {
            match held.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let pid = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap_or_default();
                    let pid = Some(pid.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .or_else(|| flock_holder(dir));
                    return Err(SpoolError::Locked {
                        dir: dir.to_path_buf(),
                        holder: pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(dir_err(e)),
            }
        }
        // Best effort: the pid only improves the message a second instance prints.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "{}", std::process::id());

        let path = dir.join("spool.db");
        // A recovery killed after its salvage was complete is finished first; an incomplete
        // salvage is dropped (the damaged file is still in place and is recovered below).
        let mut resumed = None;
        if dir.join(SALVAGED).exists() {
            error!(spool = %path.display(), "finishing a spool recovery that was interrupted");
            resumed = Some(Recovery {
                aside: finish_recovery(&path)?,
                detail: "a recovery interrupted by a restart was completed".into(),
                salvaged: Vec::new(),
            });
        }
        remove_db_files(&dir.join(SALVAGE)).map_err(dir_err)?;
        // After a clean exit the integrity check runs in the background, so a large spool does
        // not delay READY; after a crash (no marker) it runs first, as recovery needs it.
        if fs_available(dir).is_ok_and(|a| a < START_ROOM) {
            release_reserve(dir);
        }
        let marker = dir.join(CLEAN_MARKER);
        let was_clean = std::fs::remove_file(&marker).is_ok();
        let (conn, recovery) = match open_checked(&path, !was_clean) {
            Ok(conn) => (conn, resumed),
            Err(OpenProblem::Fatal(e)) => return Err(e),
            Err(OpenProblem::Damaged(detail)) => {
                error!(spool = %path.display(),
                    "the spool is damaged ({detail}): copying what is readable into a new spool; the damaged file is kept aside");
                let recovery = recover(&path, detail)?;
                let conn = open_checked(&path, false).map_err(|p| match p {
                    OpenProblem::Fatal(e) => e,
                    OpenProblem::Damaged(d) => SpoolError::Sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                        Some(format!("the recovered spool is damaged too: {d}")),
                    )),
                })?;
                (conn, Some(recovery))
            }
        };
        // A salvage made a new spool.db: it gets the same protection.
        protect_state(dir).map_err(dir_err)?;
        let conn = Arc::new(Mutex::new(conn));
        let spool = Spool {
            inner: Arc::new(Inner {
                writer: Some(writer::Writer::new(&conn, Some(dir.to_path_buf()))),
                conn,
                file_id: Mutex::new(file_id(&path)),
                path: path.clone(),
                _lock: Some((dir_lock, lock)),
                new_data: tokio::sync::Notify::new(),
                recovery: Mutex::new(recovery),
                background_check: Arc::new(Mutex::new(None)),
                check_gate: CheckGate::new(),
                marker: Some(marker),
                min_free_bytes: std::sync::atomic::AtomicU64::new(DEFAULT_MIN_FREE_BYTES),
            }),
        };
        spool.keep_reserve();
        if was_clean {
            check_in_background(
                Arc::downgrade(&spool.inner),
                spool.inner.check_gate.clone(),
                path,
            );
        }
        Ok(spool)
    }

    /// Recovers the damaged spool without a restart: the same restartable steps as at start-up
    /// ([`recover`]), under the spool's mutex, so pollers and the sink simply wait. Outbox rows
    /// keep their `seq`, so a batch the sink holds settles the same rows afterwards.
    pub fn recover_in_place(&self, detail: String) -> Result<Recovery, SpoolError> {
        let mut conn = self.conn();
        // Close the damaged file (its WAL is folded in, as at any close) before moving it.
        let old = std::mem::replace(&mut *conn, Connection::open_in_memory()?);
        if let Err((_, e)) = old.close() {
            error!("closing the damaged spool: {e}");
        }
        let recovered = recover(&self.inner.path, detail);
        // Whatever happened, open what is at the path now: the recovered spool, or the damaged
        // one if recovery failed before the swap (the next start tries again).
        match open_checked(&self.inner.path, false) {
            Ok(c) => *conn = c,
            Err(OpenProblem::Fatal(e)) => return Err(e),
            Err(OpenProblem::Damaged(d)) => {
                return Err(SpoolError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(d),
                )));
            }
        }
        drop(conn);
        *self.lock_field(&self.inner.file_id) = file_id(&self.inner.path);
        let recovered = recovered?;
        *self.lock_field(&self.inner.background_check) = None;
        *self.lock_field(&self.inner.recovery) = Some(recovered.clone());
        self.inner.new_data.notify_one();
        Ok(recovered)
    }

    fn lock_field<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The background integrity check's verdict: `None` while it runs, when it found nothing,
    /// or once the damage was recovered in place; the problem otherwise.
    pub fn integrity_problem(&self) -> Option<String> {
        self.lock_field(&self.inner.background_check).clone()
    }

    /// What is wrong with the spool file itself, for `/healthz`: deleted or replaced under the
    /// running service, or damaged and not (yet) recovered. The service does not recreate a
    /// deleted file: the open one keeps working (delivery drains it, polling is paused by
    /// [`Spool::room_to_poll`] since records written into it vanish at exit), and a new empty
    /// spool would lose its cursors; the operator restores the file or restarts.
    pub fn file_problem(&self) -> Option<String> {
        // Only the owner watches the file (inspection beside the service does not).
        self.inner._lock.as_ref()?;
        let open = *self.lock_field(&self.inner.file_id);
        let now = file_id(&self.inner.path);
        if open.is_some() && now != open {
            let what = if now.is_none() {
                "deleted"
            } else {
                "replaced by another file"
            };
            return Some(format!(
                "{} was {what} while the service runs: polling is paused (records written now would vanish at exit) and delivery drains what the open file holds; restore the file (e.g. from the process: cp /proc/{}/fd/<n> while it runs) or restart the service, which then starts a new spool and re-polls from poll.initial_lookback",
                self.inner.path.display(),
                std::process::id()
            ));
        }
        self.integrity_problem()
            .map(|p| format!("the spool is damaged ({p}); recovering it"))
    }

    /// Sets the free space polling must leave on the spool's filesystem (`spool.min_free_bytes`).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.inner
            .min_free_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a poller may add records: no when the spool holds `max_bytes`, when the
    /// filesystem (counting the database's own free pages, which enqueues reuse) has less than
    /// `spool.min_free_bytes` left (plus the reserve, when it had to be released and waits to be
    /// re-created), or when `spool.db` is gone. This keeps the headroom delivery needs: deletes
    /// write WAL frames, and a checkpoint may grow the database. Also re-creates the reserve
    /// once space returned.
    pub fn room_to_poll(&self, max_bytes: u64) -> Result<Option<NoRoom>, SpoolError> {
        let (pages, free, size) = self.page_counts()?;
        let used = (pages - free).max(0) as u64 * size;
        if used >= max_bytes {
            return Ok(Some(NoRoom(format!(
                "spool full ({used} bytes in use, spool.max_bytes {max_bytes})"
            ))));
        }
        if let Some(p) = self
            .file_problem()
            .filter(|_| self.integrity_problem().is_none())
        {
            return Ok(Some(NoRoom(p)));
        }
        let dir = self.inner.path.parent().unwrap_or(Path::new("."));
        let Ok(avail) = fs_available(dir) else {
            return Ok(None);
        };
        let reserve_missing = !self.keep_reserve();
        let min_free = self
            .inner
            .min_free_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            + if reserve_missing { RESERVE_BYTES } else { 0 };
        let room = avail + free.max(0) as u64 * size;
        if room < min_free {
            return Ok(Some(NoRoom(format!(
                "little disk space left for the spool ({avail} bytes free on the filesystem of {}, {} free inside the database; polling needs {min_free}: spool.min_free_bytes{}); free disk space or move spool.dir",
                dir.display(),
                free.max(0) as u64 * size,
                if reserve_missing {
                    " plus the delivery reserve, which was used and is re-created first"
                } else {
                    ""
                }
            ))));
        }
        Ok(None)
    }

    /// Makes sure `spool.reserve` exists (re-creating it once there is room for it and as much
    /// again); true when it does.
    fn keep_reserve(&self) -> bool {
        if self.inner._lock.is_none() {
            return true;
        }
        let dir = self.inner.path.parent().unwrap_or(Path::new("."));
        let path = dir.join(RESERVE);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            return true;
        }
        if fs_available(dir).is_ok_and(|a| a >= 2 * RESERVE_BYTES) {
            match make_reserve(&path) {
                Ok(()) => {
                    info!(reserve = %path.display(), bytes = RESERVE_BYTES, "spool delivery reserve in place");
                    return true;
                }
                Err(e) => {
                    error!(reserve = %path.display(), "cannot create the spool's delivery reserve: {e}")
                }
            }
        }
        false
    }

    /// Deletes `spool.reserve`, giving its space to the deletes and checkpoint of a settle on a
    /// full filesystem; true when there was one.
    fn release_reserve(&self) -> bool {
        self.inner._lock.is_some()
            && release_reserve(self.inner.path.parent().unwrap_or(Path::new(".")))
    }

    /// Opens the spool in `dir` to write beside a running service: `spool requeue`, the one
    /// command that writes (reading commands use [`reader::Reader`]). When no service holds the
    /// directory this is [`Spool::open`]; while one runs, the database is opened beside it
    /// without the lock (SQLite's own locking keeps concurrent writes safe), after the same
    /// checks as [`reader::Reader::open`] (missing file, schema version), and without migrations
    /// or recovery, which are the running service's job.
    pub fn open_for_inspection(dir: &Path) -> Result<Spool, SpoolError> {
        let path = dir.join("spool.db");
        // A recovery interrupted after its salvage leaves only `spool.db.salvaged`.
        if !path.exists() && !dir.join(SALVAGED).exists() {
            return Err(SpoolError::Missing(dir.to_path_buf()));
        }
        match Spool::open(dir) {
            Err(SpoolError::Locked { .. }) => {}
            other => return other,
        }
        drop(reader::Reader::open(dir)?);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        durability::apply(&conn)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Spool {
            inner: Arc::new(Inner {
                writer: Some(writer::Writer::new(&conn, None)),
                conn,
                file_id: Mutex::new(None),
                path,
                _lock: None,
                new_data: tokio::sync::Notify::new(),
                recovery: Mutex::new(None),
                background_check: Arc::new(Mutex::new(None)),
                check_gate: CheckGate::new(),
                marker: None,
                min_free_bytes: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// What recovery did, when the spool had to be recovered (at start-up or in place).
    pub fn recovery(&self) -> Option<Recovery> {
        self.lock_field(&self.inner.recovery).clone()
    }

    /// The database's page size in bytes (for [`Spool::set_max_page_count`]).
    pub fn page_size(&self) -> Result<u64, SpoolError> {
        Ok(self
            .conn()
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Fault injection for tests (feature `fault-injection`, which only the crate's own tests
    /// enable): makes every write fail (as on a filesystem remounted read-only) until switched
    /// off.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn set_read_only(&self, on: bool) -> Result<(), SpoolError> {
        self.conn().pragma_update(None, "query_only", on)?;
        Ok(())
    }

    /// Fault injection for tests (feature `fault-injection`): caps the database at `pages`
    /// pages, so writes past it fail with "database or disk is full" exactly as on a full disk.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn set_max_page_count(&self, pages: u64) -> Result<(), SpoolError> {
        self.conn()
            .pragma_update(None, "max_page_count", pages as i64)?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs blocking spool work off the async runtime, one closure at a time (`spool/writer.rs`):
    /// callers wait for their turn as tasks, not threads, however many call at once. A panic in
    /// `f` is resumed in the caller; `f` runs even if the caller stops waiting. Called from a
    /// closure that is itself a spool job, `f` runs inline.
    pub async fn run<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&Spool) -> R + Send + 'static,
        R: Send + 'static,
    {
        if writer::in_job() {
            return f(self);
        }
        let this = self.clone();
        let job = tokio::spawn(async move {
            let turn = match &this.inner.writer {
                Some(w) => Some(w.turn().await),
                None => None,
            };
            let spool = this.clone();
            let result = tokio::task::spawn_blocking(move || writer::as_job(|| f(&spool))).await;
            drop(turn);
            if let Some(w) = &this.inner.writer {
                w.purge_when_idle();
            }
            result
        });
        match job.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) | Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("a spool job did not run: {e} (the runtime is shutting down)"),
            },
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
                "INSERT OR IGNORE INTO seen(account, event_time_ms, record_id, seen_at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut outbox = tx.prepare_cached(
                "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut dead = tx.prepare_cached(
                "INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            )?;
            for r in records {
                if seen.execute(params![account, r.event_time_ms, r.record_id, now])? == 1 {
                    match &r.invalid {
                        None => {
                            outbox.execute(params![account, r.record_id, r.event, now])?;
                            done.inserted += 1;
                        }
                        Some(reason) => {
                            let reason = format!("failed local validation: {reason}");
                            dead.execute(params![account, r.record_id, r.event, reason, now])?;
                            done.dead_lettered += 1;
                        }
                    }
                } else {
                    done.duplicates += 1;
                }
            }
        }
        let added = std::collections::HashMap::from([(account.to_string(), done.inserted as i64)]);
        add_tallies(&tx, &added, done.dead_lettered as i64)?;
        if let Some(cursor) = cursor_ms {
            tx.execute(
                "INSERT INTO cursors(account, cursor_ms, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(account) DO UPDATE SET cursor_ms = excluded.cursor_ms, updated_at_ms = excluded.updated_at_ms",
                params![account, cursor, now],
            )?;
            let horizon = now - SEEN_RETENTION.as_millis() as i64;
            tx.execute(
                "DELETE FROM seen WHERE seen_at_ms < ?2 AND account = ?1",
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
        self.read_batch_after(0, max_events, max_bytes)
    }

    /// Like [`Spool::read_batch`], but only events after `after_seq` (batches already in flight
    /// awaiting acknowledgement come before it).
    pub fn read_batch_after(
        &self,
        after_seq: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.conn();
        // Rows at or below the `delivered` marker are settled, whether deleted yet or not.
        let after_seq = after_seq.max(delivered_upto(&conn)?);
        let mut stmt = conn.prepare_cached(
            "SELECT seq, account, record_id, event FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
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

    /// The events still spooled with `first <= seq <= last` (a batch to send again).
    pub fn read_range(&self, first: i64, last: i64) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.conn();
        let first = first.max(delivered_upto(&conn)? + 1);
        let mut stmt = conn.prepare_cached(
            "SELECT seq, account, record_id, event FROM outbox WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )?;
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

    /// Settles the outcome of a delivery in one transaction: deletes the events HEC accepted
    /// (`accepted`, an inclusive `seq` range at the head) and moves `dead` events to the
    /// dead-letter table with their reason.
    ///
    /// On a full filesystem (`SQLITE_FULL`: the deletes need WAL frames, a checkpoint may grow
    /// the database) the reserve (`spool.reserve`) is released and the settle retried, then the
    /// WAL checkpointed and truncated, so delivery always makes progress; [`Spool::room_to_poll`]
    /// keeps polling paused until the reserve could be re-created.
    pub fn settle(
        &self,
        accepted: Option<(i64, i64)>,
        dead: &[DeadLetter],
    ) -> Result<(), SpoolError> {
        let settled = match self.settle_once(accepted, dead) {
            Err(SpoolError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                    && self.release_reserve() =>
            {
                self.settle_once(accepted, dead)?;
                let conn = self.conn();
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                Ok(())
            }
            other => other,
        };
        self.inner.check_gate.nudge();
        settled
    }

    fn settle_once(
        &self,
        accepted: Option<(i64, i64)>,
        dead: &[DeadLetter],
    ) -> Result<(), SpoolError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let upto = delivered_upto(&tx)?;
        let mut removed: std::collections::HashMap<String, i64> = Default::default();
        let mut dead_added = 0;
        for d in dead.iter().filter(|d| d.seq > upto) {
            dead_added += tx.execute(
                "INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
                 SELECT account, record_id, event, ?2, ?3, ?4 FROM outbox WHERE seq = ?1",
                params![d.seq, d.reason, d.hec_code, now],
            )? as i64;
            let mut del =
                tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING account")?;
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
                    let mut accounts = tx.prepare_cached(
                        "SELECT account FROM outbox WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
                    )?;
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
                    .prepare_cached(
                        "SELECT EXISTS(SELECT 1 FROM outbox WHERE seq > ?1 AND seq < ?2)",
                    )?
                    .query_row(params![upto, first], |r| r.get(0))?;
                if below {
                    tx.prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")?
                        .execute(params![first, last])?;
                } else {
                    tx.prepare_cached("UPDATE delivered SET upto_seq = ?1 WHERE id = 1")?
                        .execute([last])?;
                }
            }
        }
        add_tallies(&tx, &removed, dead_added)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes up to `max_rows` of the settled rows the `delivered` marker hides, oldest first,
    /// without waiting for the disk ([`durability::relaxed`]); returns how many went. The
    /// spool's writer thread calls it between jobs while none waits, so the bulk deletes of a
    /// drain stay off the sink's critical path; on a full filesystem it releases the reserve
    /// like [`Spool::settle`].
    pub fn purge_delivered(&self, max_rows: usize) -> Result<usize, SpoolError> {
        purge_delivered(&self.inner.conn, self.reserve_dir(), max_rows)
    }

    /// The state directory when this handle owns it (and so its delivery reserve).
    fn reserve_dir(&self) -> Option<&Path> {
        self.inner
            ._lock
            .as_ref()
            .map(|_| self.inner.path.parent().unwrap_or(Path::new(".")))
    }

    /// Events waiting for delivery (a running count: O(1) in the backlog).
    pub fn depth(&self) -> Result<u64, SpoolError> {
        Ok(self
            .conn()
            .query_row(STATUS_QUERIES[0], [], |r| r.get::<_, i64>(0))?
            .max(0) as u64)
    }

    /// Bytes in use in the database (pages minus free pages); compared with `spool.max_bytes`.
    pub fn used_bytes(&self) -> Result<u64, SpoolError> {
        let (pages, free, size) = self.page_counts()?;
        Ok((pages - free).max(0) as u64 * size)
    }

    /// `(page_count, freelist_count, page_size)`.
    fn page_counts(&self) -> Result<(i64, i64, u64), SpoolError> {
        Ok(reader::page_counts(&self.conn())?)
    }

    /// Depth, size, age, dead letters and cursors; cheap whatever the backlog (see
    /// [`STATUS_QUERIES`]), as `/metrics` calls it on every scrape.
    pub fn status(&self) -> Result<Status, SpoolError> {
        Ok(reader::status(&self.conn())?)
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, SpoolError> {
        Ok(reader::dead_letters(&self.conn())?)
    }

    /// Moves dead letters back to the end of the outbox (all of them, or those with the given
    /// ids), in one transaction, each event passed through `render(account, stored_event)` on
    /// the way: the cause of a dead letter is usually the envelope (an index HEC refuses), so the
    /// requeued event is rendered again with the current routes rather than resent as stored.
    /// An id that is not a dead letter moves nothing at all (the operator mistyped, or another
    /// requeue came first), and is reported in [`Requeued::missing`].
    pub fn requeue(
        &self,
        ids: Option<&[i64]>,
        render: &dyn Fn(&str, &[u8]) -> Vec<u8>,
    ) -> Result<Requeued, SpoolError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let rows: Vec<(i64, String, String, Vec<u8>)> = {
            let mut stmt = tx.prepare(
                "SELECT id, account, record_id, event FROM dead_letters
                 WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
            )?;
            let mut read = |id: Option<i64>| {
                stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<Vec<_>, _>>()
            };
            match ids {
                None => read(None)?,
                Some(ids) => {
                    // An id named twice moves once.
                    let ids: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
                    let mut rows = Vec::with_capacity(ids.len());
                    for id in ids {
                        rows.extend(read(Some(id))?);
                    }
                    rows
                }
            }
        };
        let missing: Vec<i64> = ids
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|id| !rows.iter().any(|r| r.0 == *id))
            .collect();
        if !missing.is_empty() {
            return Ok(Requeued { moved: 0, missing });
        }
        // What moves, per account, for the running counts.
        let mut by_account: std::collections::HashMap<String, i64> = Default::default();
        for (id, account, record_id, event) in &rows {
            tx.execute(
                "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![account, record_id, render(account, event), now],
            )?;
            tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
            *by_account.entry(account.clone()).or_default() += 1;
        }
        let moving: i64 = by_account.values().sum();
        add_tallies(&tx, &by_account, -moving)?;
        tx.commit()?;
        drop(conn);
        if !rows.is_empty() {
            self.inner.new_data.notify_one();
        }
        Ok(Requeued {
            moved: rows.len(),
            missing,
        })
    }
}

/// What [`Spool::requeue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    /// Dead letters moved back to the outbox.
    pub moved: usize,
    /// Requested ids that are not dead letters (then nothing moved).
    pub missing: Vec<i64>,
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
            invalid: None,
            event_time_ms: 0,
            record_id: id.to_string(),
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
                duplicates: 1,
                dead_lettered: 0,
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

    fn ids(s: &Spool) -> Vec<String> {
        s.read_batch(10_000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.record_id)
            .collect()
    }

    #[test]
    fn a_file_that_is_not_a_database_is_set_aside_and_a_fresh_spool_starts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("spool.db"),
            b"this is not sqlite at all, just garbage bytes....",
        )
        .unwrap();
        let s = Spool::open(dir.path()).expect("starts anyway");
        let r = s.recovery().expect("recovery reported");
        assert!(r.aside.exists(), "the damaged file is kept");
        assert!(
            r.aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("spool.db.damaged-")
        );
        assert_eq!(
            std::fs::read(&r.aside).unwrap(),
            b"this is not sqlite at all, just garbage bytes...."
        );
        s.enqueue_page("acme", &[rec("a")], Some(1)).unwrap();
        drop(s);
        // The next start finds a healthy spool: no further recovery, no crash loop.
        let s = Spool::open(dir.path()).unwrap();
        assert!(s.recovery().is_none());
        assert_eq!(ids(&s), ["a"]);
    }

    #[test]
    fn a_corrupted_page_is_detected_and_readable_rows_are_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let index_page = {
            let s = Spool::open(dir.path()).unwrap();
            let recs: Vec<_> = (0..50).map(|i| rec(&format!("r{i}"))).collect();
            s.enqueue_page("acme", &recs, Some(77)).unwrap();
            // Delivered: the background check waits for an empty backlog.
            let batch = s.read_batch(50, usize::MAX).unwrap();
            s.settle(Some((batch[0].seq, batch[49].seq)), &[]).unwrap();
            // Checkpoint so the data lives in the main file, then damage an index page.
            s.conn()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            s.conn()
                .query_row(
                    "SELECT rootpage FROM sqlite_master WHERE name = 'seen_by_seen_at'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap() as usize
        };
        let path = dir.path().join("spool.db");
        let mut bytes = std::fs::read(&path).unwrap();
        // The page size is in the header (bytes 16-17, big-endian; 1 means 65536).
        let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
            1 => 65536,
            n => n as usize,
        };
        // Scribble over an index page of `seen`, keeping the page header intact.
        let last = (index_page - 1) * page;
        for b in &mut bytes[last + 8..last + 200] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        // The spool was closed cleanly, so this start checks in the background, finds the
        // damage and recovers it in place: no restart needed.
        let s = Spool::open(dir.path()).unwrap();
        let recovered = (0..500).find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            s.recovery()
        });
        let r = recovered.expect("damage found and recovered without a restart");
        assert!(
            r.detail.contains("integrity") || r.detail.contains("malformed"),
            "{}",
            r.detail
        );
        // Whatever was readable came over; what did not is in the kept file, never deleted.
        assert!(r.aside.exists());
        // Delivered rows (hidden by the marker, maybe not yet purged) stay behind.
        assert_eq!(r.salvaged[0], ("outbox", Some(0)), "{:?}", r.salvaged);
        assert!(s.integrity_problem().is_none());
        assert!(s.file_problem().is_none(), "{:?}", s.file_problem());
        assert!(ids(&s).is_empty());
        assert_eq!(s.depth().unwrap(), 0);
        assert_eq!(s.cursor("acme").unwrap(), Some(77));
        s.enqueue_page("acme", &[rec("new")], Some(78)).unwrap();
        drop(s);
        let s = Spool::open(dir.path()).unwrap();
        assert!(s.recovery().is_none(), "healthy after the recovery");
        assert_eq!(ids(&s), ["new"]);
        assert_eq!(s.cursor("acme").unwrap(), Some(78));
    }

    #[test]
    fn a_recovery_interrupted_after_its_salvage_is_finished_by_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path()).unwrap();
            s.enqueue_page("acme", &[rec("a"), rec("b")], Some(5))
                .unwrap();
        }
        // As a kill between steps 3 and 5 leaves it: the complete salvage beside the damaged
        // file (here, a copy of the good one stands for the salvage).
        std::fs::copy(dir.path().join("spool.db"), dir.path().join(SALVAGED)).unwrap();
        std::fs::write(dir.path().join("spool.db"), b"garbage, not a database").unwrap();
        std::fs::write(dir.path().join("spool.db-wal"), b"stale wal").unwrap();
        // An interrupted salvage from an earlier attempt is dropped.
        std::fs::write(dir.path().join(SALVAGE), b"half a salvage").unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert!(s.recovery().is_some());
        assert_eq!(ids(&s), ["a", "b"]);
        assert_eq!(s.cursor("acme").unwrap(), Some(5));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("spool.db.salv")),
            "{names:?}"
        );
        let kept = names
            .iter()
            .find(|n| n.starts_with("spool.db.damaged-") && !n.ends_with("-wal"))
            .expect("damaged file kept");
        assert_eq!(
            std::fs::read(dir.path().join(kept)).unwrap(),
            b"garbage, not a database"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("spool.db.damaged-") && n.ends_with("-wal"))
        );
    }

    #[test]
    fn status_queries_never_scan_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let steps = |s: &Spool| -> Vec<i32> {
            let conn = s.conn();
            STATUS_QUERIES
                .iter()
                .map(|sql| {
                    let mut stmt = conn.prepare(sql).unwrap();
                    let mut rows = stmt.query([]).unwrap();
                    while rows.next().unwrap().is_some() {}
                    drop(rows);
                    stmt.get_status(rusqlite::StatementStatus::VmStep)
                })
                .collect()
        };
        for account in ["acme", "beta"] {
            let recs: Vec<_> = (0..2000).map(|i| rec(&format!("{account}{i}"))).collect();
            s.enqueue_page(account, &recs, None).unwrap();
        }
        for sql in STATUS_QUERIES {
            let conn = s.conn();
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map([], |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                !plan.iter().any(|p| p.starts_with("SCAN")),
                "{sql}: {plan:?}"
            );
        }
        let few = steps(&s);
        let recs: Vec<_> = (0..20_000).map(|i| rec(&format!("more{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let many = steps(&s);
        // The same work for 4,000 or 24,000 events (a count over the outbox takes a VM step
        // per row).
        assert_eq!(few, many, "status work grows with the backlog");
        assert!(many.iter().all(|&n| n < 100), "{many:?}");
    }

    #[test]
    fn running_counts_stay_right_across_enqueue_settle_dead_letter_requeue_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let truth = |s: &Spool| -> (u64, u64, Vec<(String, u64)>, Option<i64>) {
            let conn = s.conn();
            let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
            let mut stmt = conn
                .prepare(
                    "SELECT account, count(*) FROM outbox
                     WHERE seq > (SELECT upto_seq FROM delivered) GROUP BY account ORDER BY account",
                )
                .unwrap();
            let by = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            // The head of the outbox (what the sink sends next).
            let oldest = conn
                .query_row(
                    "SELECT spooled_at_ms FROM outbox
                     WHERE seq > (SELECT upto_seq FROM delivered) ORDER BY seq LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            (
                // What waits: rows the `delivered` marker hides are settled.
                n("SELECT count(*) FROM outbox WHERE seq > (SELECT upto_seq FROM delivered)"),
                n("SELECT count(*) FROM dead_letters"),
                by,
                oldest,
            )
        };
        let check = |s: &Spool, what: &str| {
            let st = s.status().unwrap();
            let t = truth(s);
            assert_eq!(
                (
                    st.depth,
                    st.dead_letters,
                    st.depth_by_account,
                    st.oldest_spooled_ms
                ),
                t,
                "after {what}"
            );
            assert_eq!(s.depth().unwrap(), t.0);
        };
        let s = Spool::open(dir.path()).unwrap();
        check(&s, "open");
        let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, Some(1)).unwrap();
        s.enqueue_page("beta", &recs[..3], None).unwrap();
        s.enqueue_page("acme", &recs, None).unwrap(); // duplicates only
        check(&s, "enqueue");
        let batch = s.read_batch(5, usize::MAX).unwrap();
        s.settle(
            Some((batch[0].seq, batch[2].seq)),
            &[DeadLetter {
                seq: batch[3].seq,
                reason: "bad".into(),
                hec_code: Some(6),
            }],
        )
        .unwrap();
        check(&s, "settle with a dead letter");
        let invalid = NewRecord {
            invalid: Some("empty".into()),
            ..rec("inv")
        };
        s.enqueue_page("beta", &[invalid], None).unwrap();
        check(&s, "a locally invalid record");
        assert_eq!(s.requeue(None, &|_, e| e.to_vec()).unwrap().moved, 2);
        check(&s, "requeue");
        // Another process (`spool requeue` beside the service) writes through its own
        // connection: the counts follow, as they live in the database.
        let dl = s.read_batch(1, usize::MAX).unwrap();
        s.settle(
            None,
            &[DeadLetter {
                seq: dl[0].seq,
                reason: "again".into(),
                hec_code: None,
            }],
        )
        .unwrap();
        check(&s, "another dead letter");
        let other = Spool::open_for_inspection(dir.path()).unwrap();
        let id = other.dead_letters().unwrap()[0].id;
        assert_eq!(
            other
                .requeue(Some(&[id, id]), &|_, e| e.to_vec())
                .unwrap()
                .moved,
            1
        );
        check(&s, "a write by another connection");
        drop(s);
        let s = Spool::open(dir.path()).unwrap();
        check(&s, "reopen");
        let all = s.read_batch(1000, usize::MAX).unwrap();
        s.settle(Some((all[0].seq, all[all.len() - 1].seq)), &[])
            .unwrap();
        check(&s, "draining everything");
        assert_eq!(s.status().unwrap().depth_by_account, vec![]);
    }

    #[test]
    fn a_version_2_spool_gets_its_counts_from_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("spool.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0].1).unwrap();
            conn.execute_batch(MIGRATIONS[1].1).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 2;
                 INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES
                     ('acme', 'a', x'7b7d', 5), ('acme', 'b', x'7b7d', 6), ('beta', 'c', x'7b7d', 7);
                 INSERT INTO dead_letters(account, record_id, event, reason, dead_at_ms)
                     VALUES ('acme', 'd', x'7b7d', 'bad', 1);",
            )
            .unwrap();
        }
        let s = Spool::open(dir.path()).unwrap();
        let st = s.status().unwrap();
        assert_eq!(
            (st.depth, st.dead_letters, st.oldest_spooled_ms),
            (3, 1, Some(5))
        );
        assert_eq!(
            st.depth_by_account,
            vec![("acme".to_string(), 2), ("beta".to_string(), 1)]
        );
    }

    #[test]
    fn deleting_spool_lock_does_not_let_a_second_instance_in() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let e = Spool::open(dir.path())
            .err()
            .expect("second open must fail");
        let msg = e.to_string();
        assert!(msg.contains("in use by another rc-audit-hec"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "the holder is named from /proc/locks: {msg}"
        );
        drop(first);
        Spool::open(dir.path()).expect("lock is released with the spool");
    }

    #[test]
    fn a_deleted_spool_file_is_noticed_and_pauses_polling() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.set_min_free_bytes(0);
        assert_eq!(s.room_to_poll(u64::MAX).unwrap(), None);
        assert!(s.file_problem().is_none());
        std::fs::remove_file(dir.path().join("spool.db")).unwrap();
        let p = s.file_problem().expect("noticed");
        assert!(p.contains("deleted"), "{p}");
        let no = s.room_to_poll(u64::MAX).unwrap().expect("polling paused");
        assert!(no.0.contains("deleted"), "{}", no.0);
        // The open file still serves delivery.
        s.enqueue_page("acme", &[rec("a")], None).unwrap();
        assert_eq!(ids(&s), ["a"]);
    }

    #[test]
    fn the_delivery_reserve_is_real_blocks_and_polling_leaves_min_free_bytes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let reserve = dir.path().join(RESERVE);
        let m = std::fs::metadata(&reserve).expect("reserve created at open");
        assert_eq!(m.len(), RESERVE_BYTES);
        assert!(
            m.blocks() * 512 >= RESERVE_BYTES,
            "not sparse: {} blocks",
            m.blocks()
        );
        s.set_min_free_bytes(u64::MAX / 4);
        let no = s.room_to_poll(u64::MAX).unwrap().expect("no room");
        assert!(no.0.contains("spool.min_free_bytes"), "{}", no.0);
        s.set_min_free_bytes(0);
        assert_eq!(s.room_to_poll(u64::MAX).unwrap(), None);
        assert!(s.release_reserve());
        assert!(!reserve.exists());
        // Re-created on the next check, as there is room again.
        assert_eq!(s.room_to_poll(u64::MAX).unwrap(), None);
        assert!(reserve.exists());
    }

    #[test]
    fn without_a_readable_outbox_no_cursor_or_seen_id_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.db");
        {
            let conn = Connection::open(&old).unwrap();
            conn.execute_batch(MIGRATIONS[0].1).unwrap();
            conn.execute_batch(
                "INSERT INTO cursors VALUES ('acme', 42, 1);
                 INSERT INTO seen VALUES ('acme', 'gone', 1);
                 DROP TABLE outbox;",
            )
            .unwrap();
        }
        let s = Spool::open(&dir.path().join("new")).unwrap();
        let salvaged = salvage(&s.conn(), &old);
        assert_eq!(
            &salvaged[..3],
            &[("outbox", None), ("cursors", None), ("seen", None)]
        );
        // The account re-polls from scratch, so the record whose outbox row was lost comes back.
        assert_eq!(s.cursor("acme").unwrap(), None);
        assert_eq!(
            s.enqueue_page("acme", &[rec("gone")], None)
                .unwrap()
                .inserted,
            1
        );
    }

    #[test]
    fn a_torn_wal_tail_loses_only_the_uncommitted_transaction() {
        let live = tempfile::tempdir().unwrap();
        let s = Spool::open(live.path()).unwrap();
        s.enqueue_page("acme", &[rec("a"), rec("b")], Some(10))
            .unwrap();
        s.enqueue_page("acme", &[rec("c")], Some(20)).unwrap();
        // Snapshot the files while the process "runs" (as a crash would leave them)...
        let crashed = tempfile::tempdir().unwrap();
        for f in ["spool.db", "spool.db-wal"] {
            std::fs::copy(live.path().join(f), crashed.path().join(f)).unwrap();
        }
        // ...and tear the last transaction's frames: its commit never reached the disk.
        let wal = crashed.path().join("spool.db-wal");
        let len = std::fs::metadata(&wal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let s2 = Spool::open(crashed.path()).unwrap();
        assert!(
            s2.recovery().is_none(),
            "a torn tail is normal crash recovery, not damage"
        );
        assert_eq!(ids(&s2), ["a", "b"]);
        assert_eq!(
            s2.cursor("acme").unwrap(),
            Some(10),
            "cursor and records agree"
        );
    }

    #[test]
    fn a_version_1_spool_is_migrated_with_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("spool.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0].1).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES ('acme', 'old', x'7b7d', 1);
                 INSERT INTO seen VALUES ('acme', 'old', 1);
                 INSERT INTO cursors VALUES ('acme', 42, 1);",
            )
            .unwrap();
        }
        let s = Spool::open(dir.path()).unwrap();
        let v: i64 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(ids(&s), ["old"]);
        assert_eq!(s.cursor("acme").unwrap(), Some(42));
        assert_eq!(
            s.status().unwrap().depth_by_account,
            vec![("acme".to_string(), 1)]
        );
        // Re-polled, the record comes with the event time v1 stored for it: still a duplicate.
        let old = NewRecord {
            event_time_ms: 1,
            ..rec("old")
        };
        assert_eq!(s.enqueue_page("acme", &[old], None).unwrap().inserted, 0);
    }

    #[test]
    fn a_spool_from_a_newer_version_is_refused_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("spool.db")).unwrap();
            conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        }
        let e = Spool::open(dir.path()).err().unwrap();
        assert!(
            matches!(e, SpoolError::NewerSchema { found: 99, .. }),
            "{e}"
        );
        assert!(
            !std::fs::read_dir(dir.path()).unwrap().any(|f| f
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("damaged"))
        );
    }

    #[test]
    fn a_stale_lock_file_from_a_killed_process_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spool.lock"), "999999\n").unwrap();
        Spool::open(dir.path()).expect("only a held lock blocks");
    }

    #[test]
    fn inspection_works_beside_a_running_instance() {
        let dir = tempfile::tempdir().unwrap();
        let running = Spool::open(dir.path()).unwrap();
        running
            .enqueue_page("acme", &[rec("a"), rec("b")], None)
            .unwrap();
        let batch = running.read_batch(1, usize::MAX).unwrap();
        running
            .settle(
                None,
                &[DeadLetter {
                    seq: batch[0].seq,
                    reason: "code 7".into(),
                    hec_code: Some(7),
                }],
            )
            .unwrap();
        let inspect = Spool::open_for_inspection(dir.path()).unwrap();
        assert_eq!(inspect.status().unwrap().depth, 1);
        let dead = inspect.dead_letters().unwrap();
        assert_eq!(dead[0].record_id, "a");
        let keep = |_: &str, e: &[u8]| e.to_vec();
        assert_eq!(
            inspect.requeue(Some(&[dead[0].id + 1]), &keep).unwrap(),
            Requeued {
                moved: 0,
                missing: vec![dead[0].id + 1]
            },
            "an unknown id moves nothing"
        );
        assert_eq!(
            inspect.requeue(Some(&[dead[0].id]), &keep).unwrap().moved,
            1
        );
        assert_eq!(
            ids(&running),
            ["b", "a"],
            "the running instance sees the requeued event"
        );
        assert!(running.dead_letters().unwrap().is_empty());
        let missing = tempfile::tempdir().unwrap();
        assert!(matches!(
            Spool::open_for_inspection(missing.path()),
            Err(SpoolError::Missing(_))
        ));
    }

    #[test]
    fn a_full_disk_fails_the_page_and_leaves_cursor_and_records_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.enqueue_page("acme", &[rec("a")], Some(5)).unwrap();
        let pages: i64 = s
            .conn()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        s.set_max_page_count(pages as u64).unwrap();
        let big: Vec<_> = (0..200)
            .map(|i| NewRecord {
                invalid: None,
                event_time_ms: 0,
                record_id: format!("big{i}"),
                event: vec![b'x'; 2000],
            })
            .collect();
        let e = s.enqueue_page("acme", &big, Some(6)).unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        assert_eq!(s.cursor("acme").unwrap(), Some(5));
        assert_eq!(ids(&s), ["a"]);
        s.set_max_page_count(1 << 30).unwrap();
        assert_eq!(
            s.enqueue_page("acme", &big, Some(6)).unwrap().inserted,
            200,
            "recovers when space returns"
        );
    }

    #[test]
    fn an_event_that_fails_local_validation_goes_straight_to_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let bad = NewRecord {
            invalid: Some("`event` is null or empty (HEC code 13)".into()),
            ..rec("bad")
        };
        let e = s
            .enqueue_page("acme", &[rec("a"), bad.clone()], Some(7))
            .unwrap();
        assert_eq!((e.inserted, e.dead_lettered), (1, 1));
        assert_eq!(ids(&s), ["a"], "never in the outbox");
        let dead = s.dead_letters().unwrap();
        assert_eq!(dead[0].record_id, "bad");
        assert!(dead[0].reason.contains("code 13"), "{}", dead[0].reason);
        // Seen like any other: a re-poll does not dead-letter it twice.
        assert_eq!(s.enqueue_page("acme", &[bad], None).unwrap().duplicates, 1);
        assert_eq!(s.dead_letters().unwrap().len(), 1);
    }

    /// Rows physically in the outbox, hidden or not.
    fn stored(s: &Spool) -> i64 {
        s.conn()
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .unwrap()
    }

    fn upto(s: &Spool) -> i64 {
        delivered_upto(&s.conn()).unwrap()
    }

    #[test]
    fn a_settle_moves_the_marker_and_settled_rows_vanish_for_readers_before_they_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let batch = s.read_batch(4, 1 << 20).unwrap();
        s.settle(Some((batch[0].seq, batch[3].seq)), &[]).unwrap();
        assert_eq!(upto(&s), batch[3].seq, "one marker update");
        assert_eq!(stored(&s), 10, "the settle itself deletes nothing");
        assert_eq!(ids(&s), ["r4", "r5", "r6", "r7", "r8", "r9"]);
        assert!(s.read_range(batch[0].seq, batch[3].seq).unwrap().is_empty());
        let st = s.status().unwrap();
        assert_eq!(st.depth, 6);
        assert_eq!(st.depth_by_account, vec![("acme".to_string(), 6)]);
        // Settling the same range again (a late ack for a resent copy) changes nothing.
        s.settle(Some((batch[0].seq, batch[3].seq)), &[]).unwrap();
        assert_eq!(s.depth().unwrap(), 6);
        // The purge deletes the hidden rows in chunks, and only those.
        assert_eq!(s.purge_delivered(3).unwrap(), 3);
        assert_eq!(s.purge_delivered(3).unwrap(), 1);
        assert_eq!(s.purge_delivered(3).unwrap(), 0);
        assert_eq!(stored(&s), 6);
        assert_eq!(ids(&s), ["r4", "r5", "r6", "r7", "r8", "r9"]);
        assert_eq!(s.depth().unwrap(), 6);
    }

    #[test]
    fn a_batch_settled_before_an_older_one_is_deleted_and_the_marker_hides_nothing_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let all = s.read_batch(10, 1 << 20).unwrap();
        // With acks, the second batch can be confirmed first.
        s.settle(Some((all[5].seq, all[9].seq)), &[]).unwrap();
        assert_eq!(
            upto(&s),
            0,
            "r0..r4 still wait: the marker must not pass them"
        );
        assert_eq!(ids(&s), ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(s.depth().unwrap(), 5);
        s.settle(Some((all[0].seq, all[4].seq)), &[]).unwrap();
        assert_eq!(upto(&s), all[4].seq);
        assert!(ids(&s).is_empty());
        assert_eq!(s.depth().unwrap(), 0);
        // New records come after the marker (AUTOINCREMENT never reuses a seq).
        s.enqueue_page("acme", &[rec("new")], None).unwrap();
        assert_eq!(ids(&s), ["new"]);
    }

    #[test]
    fn a_400_settles_the_head_dead_letters_one_event_and_keeps_the_rest_visible() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..6).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let all = s.read_batch(6, 1 << 20).unwrap();
        let dead = DeadLetter {
            seq: all[2].seq,
            reason: "bad".into(),
            hec_code: Some(6),
        };
        s.settle(Some((all[0].seq, all[1].seq)), &[dead]).unwrap();
        assert_eq!(ids(&s), ["r3", "r4", "r5"]);
        assert_eq!(s.dead_letters().unwrap()[0].record_id, "r2");
        let st = s.status().unwrap();
        assert_eq!((st.depth, st.dead_letters), (3, 1));
        // The rest settles by the marker across the dead letter's gap.
        s.settle(Some((all[3].seq, all[5].seq)), &[]).unwrap();
        assert_eq!(upto(&s), all[5].seq);
        assert_eq!(s.depth().unwrap(), 0);
        assert_eq!(s.dead_letters().unwrap().len(), 1, "the dead letter stays");
    }

    #[test]
    fn a_crash_between_the_marker_and_the_purge_resends_nothing_and_loses_nothing() {
        let live = tempfile::tempdir().unwrap();
        let s = Spool::open(live.path()).unwrap();
        let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, Some(7)).unwrap();
        let batch = s.read_batch(6, 1 << 20).unwrap();
        s.settle(Some((batch[0].seq, batch[5].seq)), &[]).unwrap();
        assert_eq!(stored(&s), 10, "the purge has not run");
        // The files as a SIGKILL right after the marker's commit leaves them.
        let crashed = tempfile::tempdir().unwrap();
        for f in ["spool.db", "spool.db-wal"] {
            std::fs::copy(live.path().join(f), crashed.path().join(f)).unwrap();
        }
        let s2 = Spool::open(crashed.path()).unwrap();
        assert_eq!(
            ids(&s2),
            ["r6", "r7", "r8", "r9"],
            "nothing resent, nothing lost"
        );
        assert_eq!(s2.depth().unwrap(), 4);
        assert_eq!(s2.cursor("acme").unwrap(), Some(7));
        // The next start's purge finishes the deletes.
        while s2.purge_delivered(4).unwrap() > 0 {}
        assert_eq!(stored(&s2), 4);
        assert_eq!(ids(&s2), ["r6", "r7", "r8", "r9"]);
        assert_eq!(s2.depth().unwrap(), 4);
    }

    #[test]
    fn recovery_does_not_bring_back_delivered_rows_the_marker_hides() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..8).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let batch = s.read_batch(5, 1 << 20).unwrap();
        s.settle(Some((batch[0].seq, batch[4].seq)), &[]).unwrap();
        s.recover_in_place("test".into()).unwrap();
        assert_eq!(ids(&s), ["r5", "r6", "r7"]);
        assert_eq!(s.depth().unwrap(), 3);
        assert_eq!(stored(&s), 3);
    }

    #[test]
    fn a_version_3_spool_is_migrated_to_the_marker_and_keeps_its_outbox() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("spool.db")).unwrap();
            for (_, sql) in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES
                     ('acme', 'a', x'7b7d', 1), ('acme', 'b', x'7b7d', 2), ('beta', 'c', x'7b7d', 3);
                 DELETE FROM outbox WHERE record_id = 'a';",
            )
            .unwrap();
            conn.execute_batch(RECOUNT_TALLIES).unwrap();
            conn.execute_batch("PRAGMA user_version = 3").unwrap();
        }
        let s = Spool::open(dir.path()).unwrap();
        let v: i64 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 4);
        assert_eq!(upto(&s), 0);
        assert_eq!(ids(&s), ["b", "c"]);
        assert_eq!(s.depth().unwrap(), 2);
        let batch = s.read_batch(1, 1 << 20).unwrap();
        s.settle(Some((batch[0].seq, batch[0].seq)), &[]).unwrap();
        assert_eq!(ids(&s), ["c"]);
        assert_eq!(
            s.status().unwrap().depth_by_account,
            vec![("beta".to_string(), 1)]
        );
    }

    /// Threads of this process named `name` (other tests run threads in the same process).
    fn threads(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[test]
    fn five_hundred_concurrent_runs_use_a_handful_of_threads() {
        // Every thread of this runtime, workers and blocking pool, carries this name.
        const NAME: &str = "spool-500";
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(NAME)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let before = threads(NAME);
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..500 {
                let (s, most) = (s.clone(), most.clone());
                tasks.push(tokio::spawn(async move {
                    s.run(move |s| {
                        // Slow enough that the calls pile up.
                        std::thread::sleep(Duration::from_micros(200));
                        most.fetch_max(threads(NAME), std::sync::atomic::Ordering::Relaxed);
                        s.enqueue_page("acme", &[rec(&format!("r{i}"))], None)
                    })
                    .await
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap().inserted, 1);
            }
        });
        let most = most.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            most <= before + 4,
            "{most} threads during 500 concurrent calls, {before} before"
        );
        assert_eq!(s.depth().unwrap(), 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_keeps_order_survives_a_panic_and_a_nested_run_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let order = order.clone();
                s.run(move |_| order.lock().unwrap().push(i))
            })
            .collect();
        for c in calls {
            c.await;
        }
        assert_eq!(*order.lock().unwrap(), (0..50).collect::<Vec<_>>());
        let panicked = tokio::spawn({
            let s = s.clone();
            async move { s.run(|_| -> () { panic!("boom in a spool job") }).await }
        })
        .await
        .expect_err("the panic reaches the caller");
        assert!(panicked.is_panic());
        // The writer survives it, and a closure that runs `run` again (blocking on it) is served
        // inline instead of waiting for itself.
        let handle = tokio::runtime::Handle::current();
        let nested = s
            .run(move |s| {
                let s = s.clone();
                handle.block_on(async move { s.run(|s| s.depth()).await })
            })
            .await
            .unwrap();
        assert_eq!(nested, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_purge_settled_rows_between_jobs_and_the_directory_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..2500).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
        let batch = s.run(|s| s.read_batch(2500, usize::MAX)).await.unwrap();
        let (first, last) = (batch[0].seq, batch[2499].seq);
        s.run(move |s| s.settle(Some((first, last)), &[]))
            .await
            .unwrap();
        // The purge runs between jobs, a chunk at a time.
        for _ in 0..10_000 {
            if stored(&s) == 0 {
                break;
            }
            s.run(|_| ()).await;
        }
        assert_eq!(stored(&s), 0);
        drop(s);
        Spool::open(dir.path()).expect("the writer thread holds no lock");
    }

    #[test]
    fn the_background_check_waits_until_the_backlog_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path()).unwrap();
            let recs: Vec<_> = (0..3).map(|i| rec(&format!("r{i}"))).collect();
            s.enqueue_page("acme", &recs, None).unwrap();
        }
        // A clean start: the check runs in the background, once nothing waits.
        let s = Spool::open(dir.path()).unwrap();
        let gate = s.inner.check_gate.clone();
        let wait_for = |done: &dyn Fn(CheckState) -> bool| {
            let mut state = gate.lock();
            while !done(*state) {
                let (next, timeout) = gate
                    .wake
                    .wait_timeout(state, Duration::from_secs(30))
                    .unwrap();
                assert!(!timeout.timed_out(), "stuck at {:?}", *next);
                state = next;
            }
            *state
        };
        // It looked, found events waiting, and went back to sleep without checking.
        let state = wait_for(&|s| !matches!(s, CheckState::Waiting { seen_backlog: 0 }));
        assert!(
            matches!(state, CheckState::Waiting { .. }),
            "checked with a backlog: {state:?}"
        );
        let batch = s.read_batch(3, 1 << 20).unwrap();
        s.settle(Some((batch[0].seq, batch[1].seq)), &[]).unwrap();
        let state = wait_for(&|s| matches!(s, CheckState::Waiting { seen_backlog: n } if n >= 2));
        assert!(matches!(state, CheckState::Waiting { .. }), "{state:?}");
        // The last settle drains it: the check runs and finds nothing wrong.
        s.settle(Some((batch[2].seq, batch[2].seq)), &[]).unwrap();
        assert_eq!(wait_for(&|s| s == CheckState::Done), CheckState::Done);
        assert!(s.integrity_problem().is_none());
    }
}
