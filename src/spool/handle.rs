//! The [`Spool`] handle: opening with the exclusive-use locks and the files' protection, the
//! one writer turn behind [`Spool::run`], and what the owner watches on its file.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use tracing::error;

use super::*;
use crate::config::Destination;

/// `dest`'s position in [`Destination::ALL`] (its wake-up).
pub(super) fn dest_index(dest: Destination) -> usize {
    Destination::ALL
        .iter()
        .position(|d| *d == dest)
        .expect("every destination is in Destination::ALL")
}

/// Files of the state directory besides `spool.db`.
pub(super) const LOCK_FILE: &str = "spool.lock";

/// `(device, inode)` of `path`, to notice `spool.db` deleted or replaced under the service.
pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Handle to the spool; cheap to clone, shared by pollers and the sink.
#[derive(Clone)]
pub struct Spool {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// Shared (weakly) with the purge, which deletes settled rows between jobs.
    pub(super) conn: Arc<Mutex<Connection>>,
    /// The one writer's turn and the purge ([`Spool::run`]).
    pub(super) writer: Option<writer::Writer>,
    pub(super) path: PathBuf,
    /// Held for the life of the spool: the exclusive-use locks, on the state directory itself
    /// and on `spool.lock` (none for inspection beside a running service).
    pub(super) _lock: Option<(File, File)>,
    /// What recovery did (at start-up, or in place after the background check found damage).
    pub(super) recovery: Mutex<Option<Recovery>>,
    /// One per destination ([`Destination::ALL`] order), woken when rows are added to its
    /// outbox, so each delivery loop waits without polling the database and none can take
    /// another's wake-up.
    pub(super) new_data: [tokio::sync::Notify; Destination::ALL.len()],
    /// The destinations records are enqueued for ([`Spool::set_destinations`]).
    pub(super) destinations: Mutex<Vec<Destination>>,
    /// What the background integrity check found (after a clean start) and recovery has not
    /// repaired yet.
    pub(super) background_check: Arc<Mutex<Option<String>>>,
    /// Where the background check is (it waits for the drain).
    pub(super) check_gate: Arc<CheckGate>,
    /// Written when the owning process closes the spool: the next start may skip the check.
    pub(super) marker: Option<PathBuf>,
    /// `(device, inode)` of the open `spool.db`, to notice it deleted or replaced.
    pub(super) file_id: Mutex<Option<(u64, u64)>>,
    /// Free space polling leaves on the filesystem (`spool.min_free_bytes`).
    pub(super) min_free_bytes: std::sync::atomic::AtomicU64,
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
pub(super) const CLEAN_MARKER: &str = "spool.clean";

/// The pid holding an `flock` on `dir`, from `/proc/locks` (Linux), for when `spool.lock` and
/// the pid in it were deleted.
pub(super) fn flock_holder(dir: &Path) -> Option<String> {
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

/// Audit records carry names and IP addresses: the state directory is created 0700 and its
/// files (`spool.db` with its `-wal`/`-shm`, the lock, the clean marker) are 0600, whatever the
/// umask. A missing `spool.db` is created empty (SQLite treats that as a new database) with
/// 0600 so it is never readable by others, not even for an instant; SQLite gives the `-wal` and
/// `-shm` files it creates later the database file's permissions. Existing files are tightened
/// (a spool from an older version); an existing directory is left as it is (it may be `.`).
pub(super) fn protect_state(dir: &Path) -> std::io::Result<()> {
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
                new_data: Default::default(),
                destinations: Mutex::new(vec![Destination::Hec]),
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

    pub(super) fn lock_field<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
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
                new_data: Default::default(),
                destinations: Mutex::new(vec![Destination::Hec]),
                recovery: Mutex::new(None),
                background_check: Arc::new(Mutex::new(None)),
                check_gate: CheckGate::new(),
                marker: None,
                min_free_bytes: std::sync::atomic::AtomicU64::new(0),
            }),
        })
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

    /// Waits until something is added to `dest`'s outbox (or returns at once if something was
    /// since its last wait). Each destination has its own wake-up (a permit is kept while its
    /// loop is busy), so every destination's loop wakes for a record enqueued for all of them.
    pub async fn wait_for_data(&self, dest: Destination) {
        self.inner.new_data[dest_index(dest)].notified().await;
    }

    /// Wakes `dest`'s delivery loop.
    pub(super) fn notify(&self, dest: Destination) {
        self.inner.new_data[dest_index(dest)].notify_one();
    }

    /// Sets the destinations new records are enqueued for (from the config: `[hec]`,
    /// `[dynamodb]`); until called, HEC alone. Rows already waiting for a destination left out
    /// stay in its outbox (and in [`Spool::status`]) until it is configured again.
    ///
    /// # Panics
    /// On an empty list: records would be marked seen and delivered nowhere (the config
    /// refuses a configuration without a destination before this is reached).
    pub fn set_destinations(&self, dests: &[Destination]) {
        assert!(
            !dests.is_empty(),
            "the spool needs at least one destination"
        );
        let mut sorted = dests.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        *self.lock_field(&self.inner.destinations) = sorted;
    }

    /// The destinations new records are enqueued for, in [`Destination::ALL`] order.
    pub fn destinations(&self) -> Vec<Destination> {
        self.lock_field(&self.inner.destinations).clone()
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (the transaction rolls
        // back on drop), so a poisoned mutex is still safe to use.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Depth, size, age, dead letters and cursors; cheap whatever the backlog (see
    /// [`STATUS_QUERIES`]), as `/metrics` calls it on every scrape.
    pub fn status(&self) -> Result<Status, SpoolError> {
        Ok(reader::status(&self.conn())?)
    }
}
