//! Disk space: `spool.max_bytes`, `spool.min_free_bytes` and the delivery reserve that lets
//! settles and purges finish on a full filesystem.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use tracing::{error, info};

use super::*;
use durability::WAL_CHECKPOINT_BYTES;

/// Default of `spool.min_free_bytes` (a setting, so it lives with the config).
pub use crate::config::DEFAULT_MIN_FREE_BYTES;

/// Space held back for delivery on a full filesystem (see [`Spool::settle`]).
pub(super) const RESERVE: &str = "spool.reserve";

/// Size of `spool.reserve`: what a checkpoint may need to grow the database by (the WAL is
/// checkpointed at [`WAL_CHECKPOINT_BYTES`]) plus room for the delete's own WAL frames.
pub const RESERVE_BYTES: u64 = WAL_CHECKPOINT_BYTES as u64 + (4 << 20);

/// Deletes `<dir>/spool.reserve`; true when there was one.
pub(super) fn release_reserve(dir: &Path) -> bool {
    let released = std::fs::remove_file(dir.join(RESERVE)).is_ok();
    if released {
        error!(
            "the filesystem of {} is full: released the spool's delivery reserve ({RESERVE_BYTES} bytes) so delivered events can be removed; polling stays paused until there is space again",
            dir.display()
        );
    }
    released
}

/// Below this much free space a start releases the reserve first: SQLite needs room for its
/// WAL index (`-shm`) and WAL before it can delete anything.
pub(super) const START_ROOM: u64 = 1 << 20;

/// Bytes available to this user on the filesystem holding `dir`.
pub(super) fn fs_available(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Writes `spool.reserve` with real blocks (bytes written, not a sparse `set_len`), synced.
/// A failed attempt (no space) leaves no partial file behind.
pub(super) fn make_reserve(path: &Path) -> std::io::Result<()> {
    let result = write_filler(path, RESERVE_BYTES);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Allocated blocks (`fallocate`, cheap), else written random bytes: not zeros, which a
/// filesystem that compresses (btrfs, ZFS) would store in no space at all.
pub(super) fn write_filler(path: &Path, bytes: u64) -> std::io::Result<()> {
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

/// Why [`Spool::room_to_poll`] says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom(pub String);

impl Spool {
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
    pub(super) fn keep_reserve(&self) -> bool {
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
    pub(super) fn release_reserve(&self) -> bool {
        self.inner._lock.is_some()
            && release_reserve(self.inner.path.parent().unwrap_or(Path::new(".")))
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

    /// Bytes in use in the database (pages minus free pages); compared with `spool.max_bytes`.
    pub fn used_bytes(&self) -> Result<u64, SpoolError> {
        let (pages, free, size) = self.page_counts()?;
        Ok((pages - free).max(0) as u64 * size)
    }

    /// `(page_count, freelist_count, page_size)`.
    pub(super) fn page_counts(&self) -> Result<(i64, i64, u64), SpoolError> {
        Ok(reader::page_counts(&self.conn())?)
    }
}
