//! The async runtime every command runs on, with its threads bounded.
//!
//! Tokio's defaults are one worker per core and up to 512 blocking threads. The blocking pool
//! is where every spool call runs (SQLite is synchronous), and one connection behind one mutex
//! serves them all: with an account per poller, hundreds of blocking threads were started only
//! to wait on that mutex (515 threads for 2,000 accounts). So:
//! - workers: one per core, at most [`MAX_WORKERS`] (the work is I/O-bound; past that, more
//!   workers only add context switches and memory);
//! - blocking threads: at most [`MAX_BLOCKING_THREADS`]; more spool calls queue in tokio (they
//!   would queue on the connection's mutex anyway), and an idle one exits after
//!   [`BLOCKING_KEEP_ALIVE`].
//!
//! So the process has at most `1 + MAX_WORKERS + MAX_BLOCKING_THREADS` threads (plus the
//! spool's short-lived integrity-check thread), whatever the number of accounts or cores.

use std::time::Duration;

/// Worker threads at most (fewer on machines with fewer cores).
pub const MAX_WORKERS: usize = 8;
/// Threads for blocking work (spool calls) at most.
pub const MAX_BLOCKING_THREADS: usize = 8;
/// How long an idle blocking thread waits for work before it exits.
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Workers for a machine with `cores` cores: `min(cores, MAX_WORKERS)`, at least one.
pub fn workers(cores: usize) -> usize {
    cores.clamp(1, MAX_WORKERS)
}

/// The multi-threaded runtime with bounded workers and blocking threads.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers(cores))
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .thread_name("rc-audit-hec")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_follow_the_cores_up_to_the_cap() {
        assert_eq!(workers(0), 1);
        assert_eq!(workers(2), 2);
        assert_eq!(workers(MAX_WORKERS), MAX_WORKERS);
        assert_eq!(workers(96), MAX_WORKERS);
    }

    #[test]
    fn many_blocking_calls_use_at_most_the_blocking_cap() {
        let rt = build().unwrap();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let (peak, now) = (peak.clone(), now.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let n = now.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(n, SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    now.fetch_sub(1, SeqCst);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            peak <= MAX_BLOCKING_THREADS,
            "{peak} blocking calls ran at once"
        );
    }
}
