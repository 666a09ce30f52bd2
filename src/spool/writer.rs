//! The spool's one writer: [`super::Spool::run`] runs its closures one at a time, in the order
//! they got their turn, on a blocking thread, and callers wait for their turn as async tasks,
//! not as threads. SQLite serialises writers anyway; before, `spawn_blocking` per call kept one
//! OS thread per waiting caller (515 threads for 2,000 accounts). Now one blocking thread at a
//! time works for the spool (tokio's pool reuses it), however many accounts wait.
//!
//! The turn is a fair (FIFO) one-permit semaphore rather than a hand-made thread with a channel
//! so that tokio knows a blocking job is running: with paused time (the tests) it does not jump
//! the clock while the spool works, exactly as with `spawn_blocking` before.
//!
//! When a job ends and nobody waits for the turn, settled rows are deleted in bounded chunks
//! ([`super::Spool::purge_delivered`]), each chunk taking the turn like a job, so the bulk
//! deletes of a drain run while the sink waits for HEC rather than before its next request.
//!
//! No caller can deadlock: a closure that calls `run` again runs inline (it holds the turn);
//! the purge holds only a weak reference to the connection, and the spool's drop waits for a
//! chunk in progress, so the connection is closed (its WAL folded in) when the last handle goes;
//! a panicking closure is resumed in its caller, as with `spawn_blocking`.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

thread_local! {
    /// True while this thread runs a spool job, where `run` executes its closure inline.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is running a spool job.
pub(super) fn in_job() -> bool {
    IN_JOB.with(Cell::get)
}

/// Runs `f` marked as a spool job (nested `run` calls execute inline).
pub(super) fn as_job<R>(f: impl FnOnce() -> R) -> R {
    IN_JOB.with(|j| j.set(true));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_JOB.with(|j| j.set(false));
        }
    }
    let _reset = Reset;
    f()
}

/// The turn, and the purge's state.
pub(super) struct Writer {
    turn: Arc<Semaphore>,
    purge: Arc<Purge>,
}

struct Purge {
    conn: Weak<Mutex<Connection>>,
    reserve_dir: Option<PathBuf>,
    /// Set by the spool's drop: no further chunk starts.
    closed: AtomicBool,
    /// Held while a chunk runs; the spool's drop takes it to wait for one in progress.
    running: Mutex<()>,
    /// Only the first failure of a series is logged.
    failing: AtomicBool,
    /// A purge loop is scheduled or running.
    scheduled: AtomicBool,
}

impl Writer {
    pub(super) fn new(conn: &Arc<Mutex<Connection>>, reserve_dir: Option<PathBuf>) -> Writer {
        Writer {
            turn: Arc::new(Semaphore::new(1)),
            purge: Arc::new(Purge {
                conn: Arc::downgrade(conn),
                reserve_dir,
                closed: AtomicBool::new(false),
                running: Mutex::new(()),
                failing: AtomicBool::new(false),
                scheduled: AtomicBool::new(false),
            }),
        }
    }

    /// Waits for the turn (FIFO).
    pub(super) async fn turn(&self) -> OwnedSemaphorePermit {
        self.turn
            .clone()
            .acquire_owned()
            .await
            .expect("the spool's turn semaphore is never closed")
    }

    /// After a job: purges settled rows, a chunk per free turn, on a blocking thread, until
    /// none is left or a job is waiting.
    pub(super) fn purge_when_idle(&self) {
        if self.purge.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(permit) = self.turn.clone().try_acquire_owned() else {
            self.purge.scheduled.store(false, Ordering::Release);
            return;
        };
        let (turn, purge) = (self.turn.clone(), self.purge.clone());
        tokio::task::spawn_blocking(move || {
            let mut permit = Some(permit);
            while permit.is_some() && purge.chunk() {
                drop(permit.take());
                // A waiting job gets the turn first (the semaphore hands it over on release).
                permit = turn.clone().try_acquire_owned().ok();
            }
            purge.scheduled.store(false, Ordering::Release);
        });
    }
}

impl Purge {
    /// One chunk; true when rows were deleted (so there may be more).
    fn chunk(&self) -> bool {
        let _running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let Some(conn) = self.conn.upgrade() else {
            return false;
        };
        match super::purge_delivered(&conn, self.reserve_dir.as_deref(), super::PURGE_CHUNK) {
            Ok(0) => false,
            Ok(_) => {
                self.failing.store(false, Ordering::Relaxed);
                true
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "cannot delete delivered events from the spool yet ({e}): they stay hidden and are deleted later; the spool file does not shrink meanwhile"
                    );
                }
                false
            }
        }
    }
}

impl Drop for Writer {
    /// Stops the purge and waits for a chunk in progress, so the connection closes with the
    /// spool.
    fn drop(&mut self) {
        self.purge.closed.store(true, Ordering::Release);
        drop(self.purge.running.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
