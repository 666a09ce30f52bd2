//! The spool's durability policy, in one place: every connection that writes the spool is set
//! up by [`apply`], and the only exception (the chunked deletes of rows the `delivered` marker
//! already hides) is [`relaxed`].
//!
//! - **WAL** (`journal_mode=WAL`): readers (`spool status`, the dry run, the integrity check)
//!   never block the writer, and a commit appends to one file.
//! - **`synchronous=FULL`**: a commit returns only once its WAL frames are on disk, so a
//!   committed page of records, a moved cursor or a settled batch survives a power cut.
//! - **Commit granularity**: one transaction per page of records (the poller, with the window's
//!   cursor on its last page) and one per delivered batch (the sink: the `delivered` marker, the
//!   running tallies and the batch's dead letters), never per record.
//! - **WAL bound**: checkpointed at about [`WAL_CHECKPOINT_BYTES`] and truncated to that size
//!   afterwards (`journal_size_limit`), which is also what `spool.reserve` must cover.

use rusqlite::Connection;

/// SQLite page size of new spools: 64 KiB pages took enqueue from about 108k to 179k records/s
/// and read + delete from 204k to 363k against 4 KiB (`cargo run --release --example bench --
/// spool`): audit events are about 1 KB, and bigger pages mean fewer page writes and splits.
pub const PAGE_SIZE: i64 = 65536;
/// The WAL is checkpointed at about this size (SQLite's default is 1000 pages, 64 MiB here).
pub const WAL_CHECKPOINT_BYTES: i64 = 16 << 20;
/// Journal mode of every spool connection.
pub const JOURNAL_MODE: &str = "WAL";
/// `synchronous` of every commit that matters: durable on return.
pub const SYNCHRONOUS: &str = "FULL";
/// `synchronous` while purging rows the durable `delivered` marker already hides: losing such
/// a delete to a power cut costs nothing (the rows stay hidden and are purged again), and a later
/// `FULL` commit syncs its frames anyway.
const PURGE_SYNCHRONOUS: &str = "NORMAL";

/// Prepared statements each spool connection keeps: every per-destination query is its own
/// statement, and the hot path's (enqueue, read, settle and purge, for each destination) are
/// more than rusqlite's default of 16, which would prepare some of them again on every batch.
pub const STATEMENT_CACHE: usize = 64;

/// Sets the policy on a connection that writes the spool (the page size only takes effect on a
/// new, empty file, before WAL mode is set), and its statement cache ([`STATEMENT_CACHE`]).
pub fn apply(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", JOURNAL_MODE)?;
    conn.pragma_update(None, "synchronous", SYNCHRONOUS)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        (WAL_CHECKPOINT_BYTES / page_size).max(16),
    )?;
    conn.pragma_update(None, "journal_size_limit", WAL_CHECKPOINT_BYTES)?;
    Ok(())
}

/// Runs `f` (the purge of hidden rows) with commits that do not wait for the disk, then puts
/// `synchronous` back to [`SYNCHRONOUS`] whatever `f` returned.
pub fn relaxed<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.pragma_update(None, "synchronous", PURGE_SYNCHRONOUS)?;
    let result = f(conn);
    let restored = conn.pragma_update(None, "synchronous", SYNCHRONOUS);
    let value = result?;
    restored?;
    Ok(value)
}
