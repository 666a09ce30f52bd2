//! `backfill`: a past range through the same spool, dedup and rate limits, without moving the
//! live cursor; resumable; plain progress lines when stderr is not a terminal.

mod common;

use common::{bin, output, text};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{World, assert_each_once, eventually};
use rc_audit_hec::backfill::Range;
use rc_audit_hec::commands::backfill::{self, Progress};
use rc_audit_hec::ringcentral::poller::WindowOutcome;
use tokio_util::sync::CancellationToken;

const DAY: i64 = 86_400_000;

fn days_ago(d: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::days(d)
}

/// Both ends from one reading of the clock: two readings can straddle a millisecond, and the
/// range then needs a sixth piece of 1 ms (seen once in a full run).
fn range(from_days: i64, to_days: i64) -> Range {
    let now = Utc::now();
    Range {
        from: now - TimeDelta::days(from_days),
        to: now - TimeDelta::days(to_days),
        clamped: false,
    }
}

fn quiet(total: u64, accounts: usize) -> Progress {
    Progress::new(total, accounts, false)
}

/// The (from, to) of every search the simulator received, in ms.
fn searched(w: &World) -> Vec<(i64, i64)> {
    w.rc.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/search") && r.status == 200)
        .filter_map(|r| {
            let b = r.body?;
            let t = |k: &str| {
                DateTime::parse_from_rfc3339(b[k].as_str()?)
                    .ok()
                    .map(|t| t.timestamp_millis())
            };
            Some((t("eventTimeFrom")?, t("eventTimeTo")?))
        })
        .collect()
}

#[tokio::test]
async fn backfill_polls_a_past_range_in_day_pieces_without_moving_the_live_cursor() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 40, days_ago(5), days_ago(2), 100);
    let p = w.pipeline("", "");
    let r = range(6, 1);
    let report = backfill::run(
        &p,
        r,
        &[World::name(0)],
        Duration::from_secs(10),
        quiet,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.remaining, 0);
    assert!(!report.interrupted);
    let a = &report.accounts[0];
    assert_eq!((a.records, a.inserted, a.error.clone()), (40, 40, None));
    assert_each_once(&w, &[0]);
    assert_eq!(
        p.spool.cursor(&World::name(0)).unwrap(),
        None,
        "the live cursor is untouched"
    );
    let pieces = searched(&w);
    assert_eq!(pieces.len(), 5, "{pieces:?}");
    for (from, to) in &pieces {
        assert!(to - from <= DAY && *from >= r.from.timestamp_millis() - 1);
        assert!(*to <= r.to.timestamp_millis() + 1);
    }
    assert_eq!(
        p.spool.backfill_done(&World::name(0)).unwrap().len(),
        1,
        "the pieces merge into one done interval"
    );

    // Live polling afterwards starts where it would have (first run: the last 24 hours) and a
    // second backfill over the same range has nothing left to do.
    let mut poller = p.pollers(None).remove(0);
    let live = poller.poll_window().await.unwrap();
    let WindowOutcome::Polled { from_ms, .. } = live else {
        panic!("{live:?}")
    };
    assert!(
        from_ms > days_ago(1).timestamp_millis() - 60_000,
        "{live:?}"
    );
    let before = searched(&w).len();
    let again = backfill::run(
        &p,
        r,
        &[World::name(0)],
        Duration::from_secs(5),
        quiet,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.accounts[0].polled_ms, 0);
    assert_eq!(searched(&w).len(), before, "nothing is polled twice");
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn records_live_polling_already_spooled_are_not_sent_again() {
    let w = World::new(1).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        20,
        Utc::now() - TimeDelta::hours(20),
        Utc::now() - TimeDelta::hours(2),
        101,
    );
    let p = w.pipeline("", "");
    p.pollers(None).remove(0).poll_window().await.unwrap();
    common::drain(&p).await;
    let report = backfill::run(
        &p,
        range(3, 0),
        &[World::name(0)],
        Duration::from_secs(5),
        quiet,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.accounts[0].records, 20);
    assert_eq!(report.accounts[0].inserted, 0, "dedup with live polling");
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn an_interrupted_backfill_resumes_where_it_stopped_without_duplicates() {
    // One search per 600 ms: six day-pieces take a few seconds, time enough to interrupt.
    let w = World::with(1, |c| {
        c.heavy_limit = 1;
        c.heavy_window = Duration::from_millis(600);
    })
    .await;
    w.rc.generate(&w.accounts[0].account_id, 60, days_ago(7), days_ago(1), 102);
    let r = range(7, 1);
    // HEC is down while the first run is interrupted: a batch in flight at the interruption
    // would otherwise be accepted and resent (the documented one-batch duplicate), which is not
    // what this test is about (re-polling done pieces). The rerun delivers everything.
    w.hec.set_down(true).await;
    {
        let p = w.pipeline("", "");
        let stop = CancellationToken::new();
        let run = {
            let stop = stop.clone();
            let names = [World::name(0)];
            let p = &p;
            async move { backfill::run(p, r, &names, Duration::from_secs(5), quiet, stop).await }
        };
        let spool = p.spool.clone();
        let interrupt = async {
            // Stop once two pieces are recorded as done.
            while spool
                .backfill_done(&World::name(0))
                .unwrap()
                .first()
                .is_none_or(|(a, b)| b - a < 2 * DAY)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.cancel();
        };
        let (report, ()) = tokio::join!(run, interrupt);
        let report = report.unwrap();
        assert!(report.interrupted);
        assert!(report.accounts[0].polled_ms < 6 * DAY, "{report:?}");
    }
    let done_before = searched(&w).len();
    w.hec.set_down(false).await;
    let resume_at = {
        let p = w.pipeline("", "");
        let done = p.spool.backfill_done(&World::name(0)).unwrap();
        let report = backfill::run(
            &p,
            r,
            &[World::name(0)],
            Duration::from_secs(10),
            quiet,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(!report.interrupted);
        assert!(report.accounts[0].already_done_ms >= 2 * DAY, "{report:?}");
        assert_eq!(report.remaining, 0);
        done[0].1
    };
    // The rerun started where the first stopped.
    for (from, _) in &searched(&w)[done_before..] {
        assert!(*from >= resume_at, "re-polled a done piece");
    }
    assert_each_once(&w, &[0]);
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

#[tokio::test]
async fn the_backfill_command_prints_plain_progress_and_refuses_bad_arguments() {
    let w = World::new(2).await;
    w.rc.generate(&w.accounts[0].account_id, 15, days_ago(4), days_ago(2), 103);
    w.rc.generate(&w.accounts[1].account_id, 15, days_ago(4), days_ago(2), 104);
    let cfg = write_config(w.dir.path(), &w.toml("", ""));

    // backfill never starts a spool (a second one beside the service's would send everything
    // again): it says to run `once` (or the service) first, and creates nothing.
    let backfill_acct0 = || {
        let mut cmd = bin();
        cmd.arg("--config").arg(&cfg).args([
            "backfill",
            "--from",
            "5d",
            "--to",
            "1d",
            "--account",
            "acct0",
        ]);
        cmd
    };
    let out = output(backfill_acct0()).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("run `rc-audit-hec once`"),
        "{}",
        text(&out)
    );
    assert!(!w.dir.path().join("state").exists());
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    assert_eq!(output(cmd).await.status.code(), Some(0));

    let out = output(backfill_acct0()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("backfill: 100% (4.0 of 4.0 days, 15 new records, 1/1 accounts done)"),
        "{t}"
    );
    assert!(t.contains("backfill: account acct0: done"), "{t}");
    assert!(
        !t.contains('\r'),
        "no progress bar when stderr is not a terminal"
    );
    assert_each_once(&w, &[0]);

    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "5d", "--account", "nope"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("configured accounts: acct0, acct1"),
        "{}",
        text(&out)
    );

    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "400d", "--to", "200d"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("180 days"), "{}", text(&out));

    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "yesterday-ish"]);
    assert_eq!(output(cmd).await.status.code(), Some(2));

    // Older than RingCentral keeps: moved up, with a note.
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "400d", "--to", "175d"]);
    let out = output(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("RingCentral keeps 180 days; starting at"), "{t}");
    // Both accounts; acct0's range is already done, so only acct1's records are new.
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "5d", "--to", "1d"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("backfill: 2 account(s), 15 new record(s) spooled, 0 still spooled"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("(4.0 of 4.0 days,"),
        "days of the range, not account-days: {}",
        text(&out)
    );
    assert_each_once(&w, &[0, 1]);

    // While the service holds the spool, backfill says what to do.
    let mut service = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = w.dir.path().join("state").join("spool.lock");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&lock)
            .is_ok_and(|pid| pid.trim() == service.id().to_string()))
        .await
    );
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "2d"]);
    let out = output(cmd).await;
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("systemctl stop rc-audit-hec"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_running_service_takes_over_the_backfill_between_live_windows() {
    let w = World::new(2).await;
    for i in 0..2 {
        w.rc.generate(
            &w.accounts[i].account_id,
            12,
            days_ago(4),
            days_ago(2),
            105 + i as u64,
        );
        w.seed(i, 5, 107 + i as u64);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = w
        .toml("", "")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    let cfg = write_config(w.dir.path(), &toml);
    let mut service = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Live polling delivers the last day (initial lookback 24 h).
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 10).await);

    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).args([
        "backfill",
        "--from",
        "5d",
        "--to",
        "1d",
        "--account",
        "acct1",
    ]);
    let out = output(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("the service is running, so it does the backfill itself"),
        "{t}"
    );
    assert!(t.contains("backfill: 100% (4.0 of 4.0 days)"), "{t}");
    assert!(
        eventually(Duration::from_secs(10), || w.hec.accepted() >= 22).await,
        "acct1's history delivered by the service"
    );

    // Live polling goes on beside it: a new record is delivered.
    w.rc.generate(
        &w.accounts[0].account_id,
        1,
        Utc::now() - TimeDelta::minutes(3),
        Utc::now() - TimeDelta::minutes(2),
        109,
    );
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 23).await);

    // The service shows no backfill left; a request from the endpoint is checked.
    let left: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/backfill"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(left["jobs"], serde_json::json!([]), "{left}");
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/backfill"))
        .json(&serde_json::json!({"from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let _ = service.kill();
    let _ = service.wait();

    // Each record once: all of acct1, and of acct0 only the live ones (its history was not
    // asked for).
    let got = w.received();
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    for id in w.generated(1) {
        assert_eq!(got.get(&id), Some(&1), "{id}");
    }
    assert_eq!(got.len(), 17 + 6);
}

/// The README's production layout: secrets as systemd credentials, `spool.dir` unset (the unit's
/// `StateDirectory=` applies). From an admin shell (no `$CREDENTIALS_DIRECTORY`, no
/// `$STATE_DIRECTORY`, another working directory), `backfill` must reach the running service
/// and hand the range over, and `spool status` must show the service's spool; neither may start
/// a second spool (which once sent the whole range to Splunk a second time).
#[tokio::test]
async fn from_an_admin_shell_without_credentials_backfill_and_spool_status_find_the_service() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 12, days_ago(4), days_ago(2), 121);
    w.seed(0, 5, 122);
    let root = w.dir.path();
    let (creds, state, service_cwd, shell) = (
        root.join("creds"),
        root.join("state-dir"),
        root.join("service-cwd"),
        root.join("shell"),
    );
    for d in [&creds, &state, &service_cwd, &shell] {
        std::fs::create_dir_all(d).unwrap();
    }
    let a = &w.accounts[0];
    std::fs::write(creds.join("acct0-client-secret"), &a.client_secret).unwrap();
    std::fs::write(creds.join("acct0-jwt"), &a.jwt).unwrap();
    std::fs::write(creds.join("hec-token"), common::HEC_TOKEN).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "[[accounts]]\nname = \"acct0\"\nserver_url = \"{}\"\nclient_id = \"{}\"\n\
         client_secret_file = \"acct0-client-secret\"\njwt_file = \"acct0-jwt\"\n\n\
         [poll]\ninterval = \"200ms\"\nsettle_delay = \"0s\"\n\n\
         [hec]\nurl = \"{}\"\ntoken_file = \"hec-token\"\nhost = \"test\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\n",
        w.rc.url(),
        a.client_id,
        w.hec.url(),
    );
    let cfg = write_config(root, &toml);
    let mut service = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("STATE_DIRECTORY", &state)
        .current_dir(&service_cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 5).await);

    let shell_cmd = |args: &[&str]| {
        let mut c = bin();
        c.arg("--config").arg(&cfg).args(args).current_dir(&shell);
        c
    };
    let out = output(shell_cmd(&["spool", "status"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&state.join("spool.db").display().to_string()),
        "the service's spool: {t}"
    );

    let out = output(shell_cmd(&["backfill", "--from", "5d", "--to", "1d"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("the service is running, so it does the backfill itself"),
        "{t}"
    );
    // The original report: with the credentials readable, the shell's backfill started its own
    // spool. It must hand over just the same.
    let mut cmd = shell_cmd(&["backfill", "--from", "5d", "--to", "1d"]);
    cmd.env("CREDENTIALS_DIRECTORY", &creds);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 17).await);
    let _ = service.kill();
    let _ = service.wait();

    // With the service stopped, a backfill from the shell finds no spool where it looks and
    // refuses to start one.
    let mut cmd = shell_cmd(&["backfill", "--from", "5d", "--to", "1d"]);
    cmd.env("CREDENTIALS_DIRECTORY", &creds);
    let out = output(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("never starts a new one"), "{t}");

    let left: Vec<_> = std::fs::read_dir(&shell).unwrap().collect();
    assert!(
        left.is_empty(),
        "no second spool in the shell's directory: {left:?}"
    );
    assert_each_once(&w, &[0]);
}
