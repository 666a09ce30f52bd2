//! Damage and recovery: the restartable salvage of a damaged `spool.db` (at start-up, or in
//! place after the background integrity check, which waits for the backlog to drain).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use tracing::{error, info};

use super::*;
use crate::config::Destination;

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

/// A salvage being written; an incomplete one is deleted and redone by the next start.
pub(super) const SALVAGE: &str = "spool.db.salvage";

/// A complete salvage waiting to replace the damaged `spool.db`; the next start finishes the swap.
pub(super) const SALVAGED: &str = "spool.db.salvaged";

/// **Test-only** (used by `tests/crash.rs`; not a setting): when set to `N`, the process aborts
/// at step `N` of spool recovery, as a SIGKILL or systemd's start timeout would stop it there.
/// Hidden rather than behind the `fault-injection` feature: `tests/crash.rs` needs it in the
/// real binary. Not under the `RC_AUDIT_HEC_` prefix, which the config loader reads (and
/// refuses unknown keys in) when the command loads a config.
#[doc(hidden)]
pub const ABORT_RECOVERY_ENV: &str = "TEST_RC_AUDIT_HEC_ABORT_RECOVERY_AT";

/// The test-only crash point `step` of recovery (see [`ABORT_RECOVERY_ENV`]).
pub(super) fn recovery_step(step: u32) {
    let at = std::env::var(ABORT_RECOVERY_ENV).ok();
    if at.and_then(|v| v.parse::<u32>().ok()) == Some(step) {
        eprintln!("{ABORT_RECOVERY_ENV}={step}: aborting during spool recovery (test)");
        std::process::abort();
    }
}

/// `path` with `suffix` appended to its file name (`spool.db` + `-wal`).
pub(super) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Makes renames and creations in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a database file and its `-wal`, `-shm` and `-journal`, if present.
pub(super) fn remove_db_files(path: &Path) -> std::io::Result<()> {
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
pub(super) fn set_aside(path: &Path) -> std::io::Result<Option<PathBuf>> {
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
pub(super) fn recover(path: &Path, detail: String) -> Result<Recovery, SpoolError> {
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
pub(super) fn finish_recovery(path: &Path) -> Result<PathBuf, SpoolError> {
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

/// Whether the attached old file's `table` has `column` (false when unreadable).
fn has_column(conn: &Connection, table: &str, column: &str) -> bool {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1, 'old') WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

/// Copies what can still be read from a damaged spool (of this version or an older one) into
/// the new one, in three transactions ordered so that a crash, or a table that cannot be read,
/// costs duplicates and never loss:
/// 1. every destination's outbox with the cursors (a cursor only ever arrives with the records
///    it covers);
/// 2. the dead letters;
/// 3. the remembered ids, only if 1 and 2 both came over: an id marked seen whose record was
///    not copied would never be polled again.
///
/// (SQLite may roll a whole transaction back on a corruption error, so each step is its own.)
pub(super) fn salvage(conn: &Connection, aside: &Path) -> Vec<(&'static str, Option<usize>)> {
    let uri = format!("file:{}?mode=ro", aside.display());
    if let Err(e) = conn.execute("ATTACH DATABASE ?1 AS old", [uri]) {
        error!("cannot read the damaged spool at all ({e}): nothing could be copied from it");
        return vec![
            ("outbox", None),
            ("cursors", None),
            ("seen", None),
            ("dead_letters", None),
            ("outbox_dynamodb", None),
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
    // Each destination's outbox that the old file has (a file older than v6 has HEC's only).
    // Rows its old `delivered` marker hides were delivered: not copied (a v3 file, or an
    // unreadable marker, copies everything: duplicates, never loss). The new file's markers
    // stay at 0, which hides nothing copied.
    let has_table = |name: &str| {
        conn.query_row(
            "SELECT count(*) FROM old.sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        // Unreadable: try to copy it anyway (a failure then counts as an unreadable outbox).
        .map_or(true, |n| n > 0)
    };
    let copies: Vec<(Destination, String)> = Destination::ALL
        .into_iter()
        .filter(|d| *d == Destination::Hec || has_table(tables(*d).outbox))
        .map(|d| {
            let upto: i64 = conn
                .query_row(
                    &sql(d, "SELECT upto_seq FROM old.{delivered} WHERE id = 1"),
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            // Same seq: a sink still holding a batch (recovery in place,
            // [`Spool::recover_in_place`]) settles exactly the rows it sent.
            let copy = sql(
                d,
                &format!(
                    "INSERT INTO main.{{outbox}}(seq, account, record_id, event, spooled_at_ms)
                     SELECT seq, account, record_id, event, spooled_at_ms FROM old.{{outbox}}
                     WHERE seq > {upto} ORDER BY seq"
                ),
            );
            (d, copy)
        })
        .collect();
    let recount = recount_tallies();
    let mut outbox_sqls: Vec<&str> = copies.iter().map(|(_, c)| c.as_str()).collect();
    // By name: a file older than v5 has no `since_ms` (it comes over with the ledger).
    outbox_sqls.push(
        "INSERT OR REPLACE INTO main.cursors(account, cursor_ms, updated_at_ms)
         SELECT account, cursor_ms, updated_at_ms FROM old.cursors",
    );
    outbox_sqls.extend(recount.iter().map(String::as_str));
    let outbox = tx(&outbox_sqls);
    let copied = |d: Destination| {
        let i = copies.iter().position(|(c, _)| *c == d)?;
        outbox.as_ref().map(|c| c[i])
    };
    // A file older than v6 has no `destination`: its dead letters are HEC's.
    let dead_copy = if has_column(conn, "dead_letters", "destination") {
        "INSERT INTO main.dead_letters(account, record_id, event, reason, hec_code, dead_at_ms, destination)
         SELECT account, record_id, event, reason, hec_code, dead_at_ms, destination FROM old.dead_letters"
    } else {
        "INSERT INTO main.dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
         SELECT account, record_id, event, reason, hec_code, dead_at_ms FROM old.dead_letters"
    };
    let mut dead_sqls = vec![dead_copy];
    dead_sqls.extend(recount.iter().map(String::as_str));
    let dead_letters = tx(&dead_sqls);
    // Best effort: each outbox's sequence continues where the old file's stopped, so no `seq`
    // is handed out twice (a sink may hold a batch, or an acknowledgement, by `seq`).
    for (d, _) in &copies {
        let _ = tx(&[
            &sql(
                *d,
                "INSERT INTO main.sqlite_sequence(name, seq) SELECT '{outbox}', 0
                 WHERE NOT EXISTS (SELECT 1 FROM main.sqlite_sequence WHERE name = '{outbox}')",
            ),
            &sql(
                *d,
                "UPDATE main.sqlite_sequence SET seq = max(seq,
                     coalesce((SELECT seq FROM old.sqlite_sequence WHERE name = '{outbox}'), 0))
                 WHERE name = '{outbox}'",
            ),
        ]);
    }
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
    // The completeness evidence (ledger, reconciliation results, coverage starts): lost, it
    // costs an auditor's history and reconciliation of the periods before the next live
    // window, never a record; a file older than the ledger has none.
    if tx(&[
        "INSERT INTO main.ledger SELECT * FROM old.ledger",
        "INSERT OR REPLACE INTO main.reconciliations SELECT * FROM old.reconciliations",
        "UPDATE main.cursors SET since_ms =
             (SELECT o.since_ms FROM old.cursors o WHERE o.account = main.cursors.account)",
    ])
    .is_none()
    {
        tracing::debug!("the damaged spool's ledger could not be copied (or it has none)");
    }
    // A file older than v5 (or whose cursors were unreadable) brought no coverage starts: cover
    // each account from its oldest record salvaged, as the v5 migration does, so the periods
    // before the damage are still reconciled.
    let _ = tx(&[super::ledger::COVER_FROM_OLDEST]);
    let _ = conn.execute("DETACH DATABASE old", []);
    vec![
        ("outbox", copied(Destination::Hec)),
        ("cursors", outbox.as_ref().map(|c| c[copies.len()])),
        ("seen", seen.map(|c| c[0])),
        ("dead_letters", dead_letters.map(|c| c[0])),
        ("outbox_dynamodb", copied(Destination::DynamoDb)),
    ]
}

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
pub(super) struct CheckGate {
    pub(super) state: Mutex<CheckState>,
    pub(super) wake: std::sync::Condvar,
}

impl CheckGate {
    pub(super) fn new() -> Arc<CheckGate> {
        Arc::new(CheckGate {
            state: Mutex::new(CheckState::NotScheduled),
            wake: std::sync::Condvar::new(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, CheckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, state: CheckState) {
        *self.lock() = state;
        self.wake.notify_all();
    }

    /// Wakes a check waiting for the drain (after a settle).
    pub(super) fn nudge(&self) {
        if matches!(*self.lock(), CheckState::Waiting { .. }) {
            self.wake.notify_all();
        }
    }
}

/// How long the waiting check sleeps before it looks at the depth again without a settle
/// (polling and requeues change it too).
pub(super) const CHECK_RECHECK: Duration = Duration::from_secs(5);

/// Events waiting for the configured destinations (a destination no longer configured, whose
/// rows wait until it is again, does not hold the check back); an unreadable count is no
/// reason to wait (it may be the damage the check is for).
fn waiting(c: &Connection, spool: &std::sync::Weak<Inner>) -> i64 {
    let Some(inner) = spool.upgrade() else {
        return 0;
    };
    let destinations = inner
        .destinations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    drop(inner);
    destinations
        .into_iter()
        .map(|d| {
            c.query_row(&sql(d, STATUS_QUERIES[0]), [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
        })
        .sum()
}

/// Runs `PRAGMA quick_check` on its own read-only connection once the outboxes are empty; damage
/// is logged loudly, kept for [`Spool::integrity_problem`] and repaired in place
/// ([`Spool::recover_in_place`]) while the loops wait on the spool. The marker is gone already,
/// so if the process dies first, the next start checks (and recovers) before anything else.
pub(super) fn check_in_background(
    spool: std::sync::Weak<Inner>,
    gate: Arc<CheckGate>,
    path: PathBuf,
) {
    gate.set(CheckState::Waiting { seen_backlog: 0 });
    let spawned = std::thread::Builder::new()
        .name("spool-check".into())
        .spawn(move || {
            let result = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    // Wait for the drain; an unreadable count is no reason to wait (it may be
                    // the damage the check is for).
                    while waiting(&c, &spool) > 0 {
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

impl Spool {
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
        for d in self.destinations() {
            self.notify(d);
        }
        Ok(recovered)
    }

    /// The background integrity check's verdict: `None` while it runs, when it found nothing,
    /// or once the damage was recovered in place; the problem otherwise.
    pub fn integrity_problem(&self) -> Option<String> {
        self.lock_field(&self.inner.background_check).clone()
    }

    /// What recovery did, when the spool had to be recovered (at start-up or in place).
    pub fn recovery(&self) -> Option<Recovery> {
        self.lock_field(&self.inner.recovery).clone()
    }
}
