//! The spool: a SQLite database that is the only channel between pollers and the sink.
//!
//! # Why it exists
//! A record fetched from RingCentral must survive a crash, a full Splunk outage and a restart.
//! Every record therefore goes through this file, whether HEC is up or down; nothing lives only in
//! memory once its page is fetched.
//!
//! # On-disk format (`<state dir>/spool.db`, `PRAGMA user_version` = [`SCHEMA_VERSION`])
//! - One outbox per destination ([`Destination`]; v6): `outbox` is HEC's (the only one before
//!   v6, so an older spool's rows stay HEC's and nothing is copied), `outbox_dynamodb` is
//!   DynamoDB's, with the same columns `(seq, account, record_id, event, spooled_at_ms)`:
//!   serialized HEC events waiting for that destination, in `seq` order (AUTOINCREMENT, so a
//!   seq is never reused; each outbox numbers its own). The event bytes are the same HEC
//!   envelope for every destination (DynamoDB's sink reads the record out of it). Besides
//!   records, the forwarder's own events (heartbeats, reconciliation results) wait in HEC's
//!   outbox, and only there ([`Spool::enqueue_internal`]): they pass no dedup and move no
//!   cursor. The destination is the table, not a column: HEC's reads and settles stay rowid
//!   ranges of one table. One function maps a destination to its table, marker and tally
//!   names (`tables` in `schema.rs`), and every per-destination query is one template.
//! - `seen(account, event_time_ms, record_id, seen_at_ms)`: every record id ever enqueued, kept for
//!   [`SEEN_RETENTION`] after it was first seen, so overlapping windows and re-polls after a crash
//!   enqueue a record once. Pruning goes by when we saw an id, not by its `eventTime`: a record
//!   seen more than 181 days ago is older than RingCentral's 180 days and cannot come back, while
//!   a record with a bogus `eventTime` (say 1970) would otherwise be pruned and re-enqueued by
//!   every overlapping poll.
//! - `cursors(account, cursor_ms, updated_at_ms, since_ms)`: the end of the last complete window per
//!   account.
//! - `dead_letters(..., destination)`: events a destination refused permanently, with the
//!   reason and the destination (`'hec'` for rows older than v6); never deleted by us. A
//!   requeue puts one back into its own destination's outbox.
//! - `backfill_done(account, from_ms, to_ms)`: past ranges `backfill` has completed
//!   ([`backfill`]; created on first use).
//! - `ledger(...)`, `reconciliations(...)`, `cursors.since_ms` (v5): every completed window
//!   (live, backfill, repair) with its counts, each reconciliation result, and where each
//!   account's coverage starts ([`ledger`]); pruned with `seen`.
//! - `delivered(id = 1, upto_seq)` (v4; HEC's), `delivered_dynamodb` (v6): per destination,
//!   every row of its outbox with `seq <= upto_seq` is settled (delivered) and invisible to
//!   every reader, status, depth and tally, whether or not it has been deleted yet. It only
//!   moves when no unsettled row lies below the settled range, so it never hides a waiting
//!   event.
//! - `tallies(kind, account, n)` (v3): running counts per destination (`'outbox'` and `'dead'`
//!   for HEC, `'outbox_dynamodb'` and `'dead_dynamodb'` for DynamoDB), so [`Spool::status`]
//!   reads a few rows whatever the backlog.
//!
//! # Durability (the policy: [`durability`], applied by every connection that writes)
//! WAL with `synchronous=FULL`: a committed transaction survives power loss. Commits are per page
//! of records (the poller) and per batch (the sink), never per record. A settled batch costs one
//! small commit: it moves the `delivered` marker; the rows it hides are deleted later, in
//! bounded chunks, whenever the spool's one writer turn is free
//! ([`Spool::purge_delivered`]); those deletes need no fsync of their own (the marker already
//! hides the rows, a purge lost to a power cut is simply redone). The WAL is checkpointed at
//! [`durability::WAL_CHECKPOINT_BYTES`].
//!
//! # Invariants enforced here
//! 1. *Cursor after records*: [`Spool::enqueue_page`] stores a page of records, one outbox row
//!    per configured destination ([`Spool::set_destinations`]), and, when given, the window's
//!    cursor in one transaction; a cursor never moves without its records, and a record is
//!    spooled for every destination or for none.
//! 2. *Delete after acceptance*: only [`Spool::settle`] removes outbox rows from view (the
//!    destination's `delivered` marker, or a delete when the batch is not at the head), and a
//!    sink calls it only for what its destination accepted (or dead-lettered), and only for its
//!    own outbox; [`Spool::purge_delivered`] deletes only rows a marker already hides.
//! 3. *Once per record id*: an id already in `seen` is not enqueued again (for any
//!    destination: `seen` is shared, so a destination added later gets new records only).
//! 4. *The marker hides only settled rows*: it moves to a settled range's end only when no
//!    unsettled row lies below the range, and new rows always get a higher `seq` (AUTOINCREMENT;
//!    salvage carries each outbox's sequence over).
//!
//! Each destination's sink is the only reader of its outbox and reads from the head, one batch
//! at a time, so a batch is always a contiguous range of that outbox's `seq` and can be settled
//! by range. [`Spool::wait_for_data`] has one wake-up per destination, so every sink wakes for a
//! record enqueued for all of them.
//!
//! # One writer
//! [`Spool::run`] runs its closures one at a time, in the order they get the turn (`writer.rs`):
//! callers wait as tasks, not threads; when the turn is free, settled rows are purged in chunks. Reads for inspection use
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
//! readable (every destination's outbox, of this version or an older one) is copied into
//! `spool.db.salvage`, renamed `spool.db.salvaged` once complete, then
//! swapped in; the damaged file is kept as `spool.db.damaged-<time>`. A kill at any step leaves
//! either the damaged file in place (recovered again) or the complete salvage (swapped in).
//!
//! # Full disk
//! `spool.reserve` (a few MiB of real blocks) is released when a settle fails on a full
//! filesystem, so delivered events can always be removed; polling pauses before the filesystem
//! runs short ([`Spool::room_to_poll`], `spool.min_free_bytes`) and the reserve is re-created
//! when space returns. The WAL is bounded (`journal_size_limit`, checkpoints at 16 MiB).

use std::path::PathBuf;

use crate::config::Destination;

pub mod backfill;
mod dead_letters;
pub mod durability;
mod handle;
pub mod identity;
pub mod ledger;
mod outbox;
pub mod reader;
mod recovery;
mod schema;
mod space;
#[cfg(test)]
mod tests;
mod writer;

pub use dead_letters::{DeadLetter, DeadLetterRow, Requeued};
pub use handle::Spool;
pub use ledger::{LedgerEntry, LedgerRow, WindowKind};
pub use outbox::{Enqueued, INTERNAL_ACCOUNT, NewRecord, SEEN_RETENTION, Spooled};
pub use recovery::ABORT_RECOVERY_ENV;
pub use recovery::Recovery;
pub use schema::SCHEMA_VERSION;
pub use space::{DEFAULT_MIN_FREE_BYTES, NoRoom, RESERVE_BYTES};

// Within the spool, every file sees the others' crate-private items.
#[allow(unused_imports)]
use {dead_letters::*, handle::*, outbox::*, recovery::*, schema::*, space::*};

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

/// Spool contents at a glance. The totals are over every destination's outbox: a record
/// waiting for two destinations counts twice in `depth` (it is two deliveries to make);
/// [`Status::destinations`] has each destination's own figures.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Events waiting for delivery, summed over the destinations.
    pub depth: u64,
    /// Bytes the database uses (excluding free pages).
    pub used_bytes: u64,
    /// When the oldest event waiting for any destination was spooled (ms since epoch).
    pub oldest_spooled_ms: Option<i64>,
    /// Dead letters held, of every destination.
    pub dead_letters: u64,
    /// `(account, cursor_ms)` per account.
    pub cursors: Vec<(String, i64)>,
    /// `(account, events waiting)` per account with any, summed over the destinations.
    pub depth_by_account: Vec<(String, u64)>,
    /// Per destination, in [`Destination::ALL`] order: every destination, configured or not
    /// (rows may still wait for one no longer configured). Empty in a `Status` built by hand.
    pub destinations: Vec<DestinationStatus>,
}

/// One destination's outbox and dead letters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DestinationStatus {
    /// Which destination.
    pub destination: Destination,
    /// Events waiting for it.
    pub depth: u64,
    /// When its oldest waiting event was spooled (ms since epoch).
    pub oldest_spooled_ms: Option<i64>,
    /// Its dead letters.
    pub dead_letters: u64,
}

impl DestinationStatus {
    /// Nothing waits for it and it holds no dead letter.
    pub fn is_empty(&self) -> bool {
        self.depth == 0 && self.dead_letters == 0
    }
}
