//! Crash safety, proven on the real binary: `rc-audit-hec run` is killed with SIGKILL at random
//! moments (mid-poll, mid-commit, mid-request, mid-ack-wait) and restarted, many times, while the
//! simulated RingCentral keeps producing records and the simulated HEC goes down and throws 503
//! storms. At the end every generated record must have reached HEC, and duplicates must stay
//! within one batch per interruption (a kill, or HEC cutting a connection it had already indexed)
//! in plain mode, and within the in-flight window per interruption with indexer acknowledgement.
//!
//! Seeded: a failure prints its seed; `CRASH_TEST_SEED=<seed>` replays it. `CRASH_TEST_KILLS=<n>`
//! sets the number of kills (default 12, enough for CI; try 200 by hand).

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{World, eventually};
use rc_audit_hec::sim::hec::{HecSim, HecSimConfig};
use rc_audit_hec::sim::records::generate_records;

const BATCH: usize = 50;

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rc-audit-hec"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RC_AUDIT_HEC_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("start rc-audit-hec")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn crash_run(use_ack: bool) {
    let kills = setting("CRASH_TEST_KILLS", 12) as usize;
    let seed = setting(
        "CRASH_TEST_SEED",
        Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64,
    );
    eprintln!(
        "crash test (use_ack={use_ack}): seed {seed}, {kills} kills (CRASH_TEST_SEED / CRASH_TEST_KILLS to change)"
    );
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut w = World::with(2, |c| {
        c.heavy_limit = 50;
        c.heavy_window = Duration::from_secs(1);
        c.auth_limit = 50;
    })
    .await;
    let mut hec_cfg = HecSimConfig::new(common::HEC_TOKEN);
    hec_cfg.ack = use_ack;
    w.hec = HecSim::start(hec_cfg).await.unwrap();
    // Slow answers widen the windows in which a kill lands mid-request.
    w.rc.update_faults(|f| f.slow = Duration::from_millis(15));
    w.hec.update_faults(|f| {
        f.slow = Duration::from_millis(10);
        f.ack_delay = Duration::from_millis(300);
    });
    let now = Utc::now();
    for (i, a) in w.accounts.iter().enumerate() {
        w.rc.generate(
            &a.account_id,
            1500,
            now - TimeDelta::hours(6),
            now - TimeDelta::seconds(5),
            seed ^ i as u64,
        );
    }
    let hec_extra =
        format!("batch_max_events = {BATCH}\nuse_ack = {use_ack}\nack_timeout = \"3s\"");
    let config = w.dir.path().join("config.toml");
    std::fs::write(&config, w.toml("", &hec_extra)).unwrap();
    let log = w.dir.path().join("forwarder.log");

    let mut interruptions = 0;
    for round in 0..kills {
        let child = spawn(&config, &log);
        // Chaos while it runs: new records, HEC outages, 503 storms.
        let live = rng.usize(0..3);
        for _ in 0..live {
            let a = &w.accounts[rng.usize(0..2)];
            let t = Utc::now();
            let recs = generate_records(
                rng.u64(..),
                &a.account_id,
                &a.account_name,
                30,
                t - TimeDelta::seconds(3),
                t,
            );
            w.rc.add_records(&a.account_id, recs);
        }
        match rng.u8(0..10) {
            0..=1 => {
                w.hec.set_down(true).await;
                interruptions += 1; // an outage cuts requests HEC may already have indexed
            }
            2..=3 => w.hec.update_faults(|f| {
                f.busy = true;
                f.retry_after = None;
            }),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(40..700))).await;
        w.hec.set_down(false).await;
        w.hec.update_faults(|f| f.busy = false);
        tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
        signal(&child, "-KILL");
        let mut child = child;
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        interruptions += 1;
        if round % 5 == 4 {
            eprintln!(
                "  {} kills so far, {} events at HEC",
                round + 1,
                w.hec.accepted()
            );
        }
    }

    // Last start, healthy HEC: everything must arrive.
    let child = spawn(&config, &log);
    let generated: Vec<String> = (0..2).flat_map(|i| w.generated(i)).collect();
    let all_in = eventually(Duration::from_secs(90), || {
        let got = w.received();
        generated.iter().all(|id| got.contains_key(id))
    })
    .await;
    signal(&child, "-TERM");
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();

    let got: HashMap<String, usize> = w.received();
    let missing: Vec<&String> = generated
        .iter()
        .filter(|id| !got.contains_key(*id))
        .collect();
    let total: usize = got.values().sum();
    let duplicates = total - got.len();
    let in_flight = if use_ack {
        rc_audit_hec::hec::ack::MAX_IN_FLIGHT
    } else {
        1
    };
    let bound = interruptions * in_flight * BATCH;
    eprintln!(
        "crash test (use_ack={use_ack}, seed {seed}): generated {}, received {} distinct, missing {}, duplicates {duplicates} (bound {bound}: {interruptions} interruptions x {in_flight} batch(es) in flight x {BATCH})",
        generated.len(),
        got.len(),
        missing.len()
    );
    if !(all_in && missing.is_empty()) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        eprintln!(
            "last forwarder log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        all_in && missing.is_empty(),
        "seed {seed}: {} records never reached HEC, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert!(
        duplicates <= bound,
        "seed {seed}: {duplicates} duplicates exceed {bound}"
    );
    assert_eq!(status.code(), Some(0), "graceful stop after the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    crash_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_with_indexer_ack() {
    crash_run(true).await;
}

/// Start-up recovery of a damaged spool, killed at each of its steps in turn (the real binary,
/// stopped by the test-only hook `TEST_RC_AUDIT_HEC_ABORT_RECOVERY_AT`, as SIGKILL or systemd's
/// start timeout would stop it), then started cleanly: every event is delivered once and the
/// cursor is kept. (Recovery used to set the damaged file aside first and salvage afterwards:
/// a kill in between left an empty spool, and the next start forgot the set-aside file.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_killed_at_every_step_loses_nothing() {
    use rc_audit_hec::spool::{ABORT_RECOVERY_ENV, NewRecord, Spool};
    let w = World::new(1).await;
    let state = w.dir.path().join("state");
    let cfg = w.dir.path().join("config.toml");
    std::fs::write(&cfg, w.toml("", "")).unwrap();
    let ids: Vec<String> = (0..400).map(|i| format!("rec-{i:04}")).collect();
    let cursor = (Utc::now() - TimeDelta::minutes(30)).timestamp_millis();
    {
        let s = Spool::open(&state).unwrap();
        let recs: Vec<NewRecord> = ids
            .iter()
            .map(|id| NewRecord {
                event_time_ms: 1,
                ..NewRecord::new(
                    id.clone(),
                    serde_json::to_vec(&serde_json::json!({"event": {"id": id}})).unwrap(),
                )
            })
            .collect();
        s.enqueue_page("acct0", &recs, Some(cursor)).unwrap();
    }
    // Damage an index of the closed spool (its rows stay readable), and remove the clean-exit
    // marker, as a crash would: the next start checks before anything else.
    let db = state.join("spool.db");
    let (root, page) = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let root: i64 = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'seen_by_seen_at'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        (root as usize, page as usize)
    };
    assert!(
        !state.join("spool.db-wal").exists(),
        "closed spool is one file"
    );
    let mut bytes = std::fs::read(&db).unwrap();
    let at = (root - 1) * page;
    bytes[at + 8..at + 300].fill(0xA5);
    std::fs::write(&db, &bytes).unwrap();
    std::fs::remove_file(state.join("spool.clean")).unwrap();

    // `spool requeue` opens the spool as its owner when no service runs (and so recovers it);
    // `spool status` only reads (spool::reader), and recovers nothing.
    let status = |abort_at: Option<u32>| {
        let mut c = common::bin();
        c.arg("--config")
            .arg(&cfg)
            .arg("spool")
            .arg("--dir")
            .arg(&state);
        c.args(["requeue", "--all"]);
        if let Some(n) = abort_at {
            c.env(ABORT_RECOVERY_ENV, n.to_string());
        }
        c
    };
    for step in 1..=4 {
        let out = common::output(status(Some(step))).await;
        assert_eq!(
            out.status.code(),
            None,
            "step {step}: killed, not exited: {}",
            common::text(&out)
        );
        let salvaged = state.join("spool.db.salvaged").exists();
        assert_eq!(salvaged, step >= 3, "step {step}: complete salvage waiting");
    }
    let out = common::output(status(None)).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    {
        let s = Spool::open(&state).unwrap();
        assert!(s.recovery().is_none(), "recovered once, healthy since");
        assert_eq!(s.depth().unwrap(), ids.len() as u64, "every event kept");
        assert_eq!(s.cursor("acct0").unwrap(), Some(cursor), "cursor kept");
    }
    let kept = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("spool.db.damaged-")
        })
        .count();
    assert!(kept >= 1, "the damaged file is kept");

    let mut once = common::bin();
    once.arg("--config").arg(&cfg).arg("once");
    let out = common::output(once).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    let got = w.received();
    for id in &ids {
        assert_eq!(got.get(id), Some(&1), "{id}");
    }
}
