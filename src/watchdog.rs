//! Per-loop heartbeats, so the systemd watchdog is fed only while the work really progresses.
//!
//! # Why not just ping on a timer
//! A timer task keeps running when the poll loop of an account or the delivery loop is wedged
//! (a lost wake-up, a deadlock, an await that never completes), so systemd would never notice.
//! Instead every long-running loop runs under a [`Heartbeat`] and says, at each step, by when it
//! will be heard from again:
//! - [`beat`]: "I am working; expect me again within the stall limit" (before a request, at the
//!   top of an iteration). The stall limit is longer than any single bounded operation (HTTP
//!   timeouts, SQLite busy timeout), so a healthy loop always comes back in time.
//! - [`waiting`]: "I am deliberately idle for `d`" (the poll interval, a backoff, a rate-limit
//!   penalty); the deadline moves to `d` plus the stall limit. Idle waiting counts as alive.
//! - [`within`]: "this await ends by itself within `d`" (a request whose timeout is longer than
//!   a usual step, e.g. HEC's resend after a timeout with 10x `hec.timeout`): the promise is
//!   derived from the wait about to happen, at the one place that starts it, so no fixed stall
//!   limit has to guess the longest wait of every loop.
//!
//! A loop whose deadline has passed is *stalled*: it is stuck in an await it did not announce.
//! The supervisor ([`crate::service`]) then stops sending `WATCHDOG=1`, so systemd kills and
//! restarts the service after `WatchdogSec=`; nothing is lost, because every fetched record is
//! already in the spool. The stall is also reported in `/healthz` and the log.
//!
//! The calls are free functions that find the current loop through a task-local, so the code of
//! the loops only gains one-line calls and works unchanged (as a no-op) outside a supervised task,
//! e.g. in `once`, `backfill` and tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Arc<LoopState>;
}

/// The registry of supervised loops.
#[derive(Debug)]
pub struct Watchdog {
    /// Time zero for the deadlines (tokio's clock, so tests can pause it).
    epoch: Instant,
    /// Live loops by registration id.
    loops: Mutex<BTreeMap<u64, Arc<LoopState>>>,
    /// Next registration id.
    next_id: AtomicU64,
}

/// One loop's promise: "you will hear from me before `deadline`".
#[derive(Debug)]
struct LoopState {
    /// Shown in logs and `/healthz` (`poll:acme`, `delivery`).
    name: String,
    /// Same as [`Watchdog::epoch`].
    epoch: Instant,
    /// How long a step may take without announcing a wait.
    stall_limit: Duration,
    /// Milliseconds after `epoch`.
    deadline_ms: AtomicU64,
}

impl LoopState {
    fn promise(&self, within: Duration) {
        let at = Instant::now().saturating_duration_since(self.epoch) + within;
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        self.deadline_ms.store(ms, Ordering::Relaxed);
    }
}

/// A registered loop; unregisters itself when dropped (the loop ended or was replaced).
#[derive(Debug)]
pub struct Heartbeat {
    watchdog: Arc<Watchdog>,
    id: u64,
    state: Arc<LoopState>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let mut loops = self
            .watchdog
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if std::thread::panicking() {
            // The loop died. Leaving it registered, overdue since the epoch, stops WATCHDOG=1
            // (systemd restarts the service) and shows the loop as stalled in /healthz; removing
            // it would let the service run on without that account or without delivery.
            if let Some(state) = loops.get(&self.id) {
                state.deadline_ms.store(0, Ordering::Relaxed);
                tracing::error!(loop_name = %state.name,
                    "a loop panicked and stopped: the watchdog is withheld so systemd restarts the service (please report this as a bug)");
            }
        } else {
            loops.remove(&self.id);
        }
    }
}

/// A loop that missed its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// The loop's name.
    pub name: String,
    /// How long past its deadline it is.
    pub overdue: Duration,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            epoch: Instant::now(),
            loops: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Watchdog {
    /// Registers a loop named `name` that promises to beat at least every `stall_limit`.
    pub fn register(self: &Arc<Self>, name: &str, stall_limit: Duration) -> Heartbeat {
        let state = Arc::new(LoopState {
            name: name.to_string(),
            epoch: self.epoch,
            stall_limit,
            deadline_ms: AtomicU64::new(0),
        });
        state.promise(stall_limit);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, state.clone());
        Heartbeat {
            watchdog: self.clone(),
            id,
            state,
        }
    }

    /// Loops past their deadline, most overdue first; empty when everything progresses.
    pub fn stalled(&self) -> Vec<Stall> {
        let now = Instant::now().saturating_duration_since(self.epoch);
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let mut out: Vec<Stall> = self
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|s| {
                let deadline = s.deadline_ms.load(Ordering::Relaxed);
                (now_ms > deadline).then(|| Stall {
                    name: s.name.clone(),
                    overdue: Duration::from_millis(now_ms - deadline),
                })
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.overdue));
        out
    }

    /// Names of the registered loops (for tests and the status line).
    pub fn loops(&self) -> Vec<String> {
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.name.clone())
            .collect()
    }
}

/// Runs `fut` as the loop of `heartbeat`: [`beat`] and [`waiting`] inside it report for it.
/// The loop is unregistered when `fut` ends.
pub async fn supervise<F: Future>(heartbeat: Heartbeat, fut: F) -> F::Output {
    let state = heartbeat.state.clone();
    let out = CURRENT.scope(state, fut).await;
    drop(heartbeat);
    out
}

/// The current loop is working and will be heard from again within its stall limit.
/// A no-op outside a supervised task.
pub fn beat() {
    let _ = CURRENT.try_with(|s| s.promise(s.stall_limit));
}

/// The current loop is about to wait `d` on purpose (interval, backoff, rate limit): alive
/// until `d` plus its stall limit. A no-op outside a supervised task.
pub fn waiting(d: Duration) {
    let _ = CURRENT.try_with(|s| s.promise(d.saturating_add(s.stall_limit)));
}

/// Awaits `fut`, which ends by itself within `d` (its own timeout), as a step of the current
/// loop: alive until `d` plus the stall limit, then working again ([`beat`]). A no-op wrapper
/// outside a supervised task.
pub async fn within<F: Future>(d: Duration, fut: F) -> F::Output {
    waiting(d);
    let out = fut.await;
    beat();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_beats_is_never_stalled() {
        let wd = Arc::new(Watchdog::default());
        let hb = wd.register("poll:acme", LIMIT);
        let task = tokio::spawn(supervise(hb, async {
            for _ in 0..20 {
                beat();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
        for _ in 0..19 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(wd.stalled().is_empty());
        }
        task.await.unwrap();
        assert!(wd.loops().is_empty(), "unregistered when the loop ends");
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_wait_counts_as_alive_but_a_silent_stuck_await_does_not() {
        let wd = Arc::new(Watchdog::default());
        let idle = wd.register("poll:idle", LIMIT);
        let stuck = wd.register("delivery", LIMIT);
        let _idle = tokio::spawn(supervise(idle, async {
            waiting(Duration::from_secs(300));
            tokio::time::sleep(Duration::from_secs(300)).await;
        }));
        let _stuck = tokio::spawn(supervise(stuck, async {
            beat();
            std::future::pending::<()>().await;
        }));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(wd.stalled().is_empty());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stalled = wd.stalled();
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(stalled[0].name, "delivery");
        assert!(stalled[0].overdue >= Duration::from_secs(1));
        // The idle loop is still fine long after the stall limit.
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(wd.stalled().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_await_longer_than_the_stall_limit_is_alive_until_its_bound() {
        let wd = Arc::new(Watchdog::default());
        let hb = wd.register("delivery", LIMIT);
        let _task = tokio::spawn(supervise(hb, async {
            within(
                Duration::from_secs(100),
                tokio::time::sleep(Duration::from_secs(100)),
            )
            .await;
            std::future::pending::<()>().await;
        }));
        tokio::time::sleep(Duration::from_secs(105)).await;
        assert!(wd.stalled().is_empty(), "a wait it announced");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(wd.stalled().len(), 1, "back to the stall limit after it");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_outside_a_supervised_task_do_nothing() {
        beat();
        waiting(Duration::from_secs(1));
        let wd = Arc::new(Watchdog::default());
        let hb = wd.register("x", LIMIT);
        drop(hb);
        assert!(wd.loops().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_panics_stays_stalled_instead_of_vanishing() {
        let wd = Arc::new(Watchdog::default());
        let hb = wd.register("poll:acme", LIMIT);
        let task = tokio::spawn(supervise(hb, async {
            beat();
            panic!("bug in a loop");
        }));
        assert!(task.await.is_err(), "the task panicked");
        tokio::time::advance(Duration::from_millis(10)).await;
        let stalled = wd.stalled();
        assert_eq!(stalled.len(), 1, "a dead loop must not look healthy");
        assert_eq!(stalled[0].name, "poll:acme");
    }
}
