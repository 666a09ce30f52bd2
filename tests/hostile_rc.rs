//! RingCentral answering in ways its own documentation does not rule out, and a host whose
//! clock is wrong: every case here once lost records or flooded RingCentral (issue 9). The
//! simulator's faults control the bytes of each answer.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::*;
use rc_audit_hec::pipeline::{Options, Pipeline};
use rc_audit_hec::ringcentral::RcError;
use rc_audit_hec::ringcentral::clock::LocalClock;
use rc_audit_hec::ringcentral::poller::{PollError, WindowOutcome};
use rc_audit_hec::telemetry::{State, Stats};
use tokio_util::sync::CancellationToken;

fn searches(w: &World) -> Vec<rc_audit_hec::sim::ringcentral::RcRequest> {
    w.rc.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/search"))
        .collect()
}

fn records_of(o: &WindowOutcome) -> usize {
    match o {
        WindowOutcome::Polled { records, .. } => *records,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_200_without_a_records_array_is_retried_never_an_empty_window() {
    let w = World::new(1).await;
    w.seed(0, 300, 80);
    w.rc.update_faults(|f| {
        for body in [
            &b"{}"[..],
            br#"{"errors":[{"errorCode":"CMN-201","message":"Service temporary unavailable"}]}"#,
            b"null",
            br#"{"records":"none","paging":{"page":1}}"#,
        ] {
            f.raw_search_replies.push_back((200, body.to_vec()));
        }
    });
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert_eq!(records_of(&outcome), 300, "{outcome:?}");
    let acct = p.stats.account(&World::name(0));
    assert_eq!(Stats::get(&acct.rc_malformed), 4, "each bad answer counted");
    assert_eq!(searches(&w).len(), 5, "four bad answers, then the page");
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn an_empty_page_in_the_middle_is_asked_again_before_the_window_ends() {
    let w = World::new(1).await;
    w.seed(0, 300, 81);
    w.rc.update_faults(|f| {
        f.omit_total_found = true;
        f.empty_pages = 1;
    });
    let p = w.pipeline("page_size = 100", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert_eq!(records_of(&outcome), 300, "{outcome:?}");
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_window_whose_pages_keep_contradicting_paging_stays_open() {
    let w = World::new(1).await;
    w.seed(0, 300, 82);
    w.rc.update_faults(|f| {
        f.omit_total_found = true;
        f.empty_pages = 1000;
    });
    let p = w.pipeline("page_size = 100", "");
    let mut poller = p.pollers(None).remove(0);
    let err = poller.poll_window().await.unwrap_err();
    assert!(
        matches!(err, PollError::RingCentral(RcError::Inconsistent { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("page 2 of 3 was empty"), "{err}");
    assert_eq!(
        p.spool.cursor(&World::name(0)).unwrap(),
        None,
        "an unproven window moves no cursor"
    );
    let acct = p.stats.account(&World::name(0));
    assert_eq!(Stats::get(&acct.windows_unproven), 1);
    // RingCentral recovers: the same window is polled again and nothing is missing.
    w.rc.update_faults(|f| f.empty_pages = 0);
    let outcome = poller.poll_window().await.unwrap();
    assert_eq!(records_of(&outcome), 300);
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_total_found_one_too_high_commits_the_window_within_the_rate_budget() {
    total_found_too_high_by(1).await;
}

#[tokio::test]
async fn a_total_found_far_above_the_api_limit_with_a_short_page_splits_nothing() {
    total_found_too_high_by(20_000).await;
}

async fn total_found_too_high_by(extra: u64) {
    let w = World::new(1).await;
    w.seed(0, 300, 83);
    w.rc.update_faults(|f| f.total_found_extra = extra);
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    // Splitting down to 1 ms made >1,000 searches; a bounded pager is done in a few.
    let outcome = tokio::time::timeout(Duration::from_secs(30), poller.poll_window())
        .await
        .expect("the window was split without bound")
        .unwrap();
    let WindowOutcome::Polled { to_ms, records, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(records, 300);
    assert_eq!(p.spool.cursor(&World::name(0)).unwrap(), Some(to_ms));
    let n = searches(&w).len();
    assert!(n <= 3, "{n} searches for one window of 300 records");
    let acct = p.stats.account(&World::name(0));
    assert_eq!(Stats::get(&acct.windows_count_mismatch), 1);
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_page_too_large_to_hold_is_refused_and_asked_again_in_smaller_pages() {
    let w = World::new(1).await;
    w.seed(0, 300, 84);
    // 33 MiB of padding in a page that would otherwise read as "no records".
    let mut huge = br#"{"records":[],"pad":""#.to_vec();
    huge.resize(huge.len() + (33 << 20), b'x');
    huge.extend_from_slice(br#""}"#);
    w.rc.update_faults(|f| f.raw_search_replies.push_back((200, huge)));
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert_eq!(records_of(&outcome), 300, "{outcome:?}");
    let acct = p.stats.account(&World::name(0));
    assert_eq!(Stats::get(&acct.rc_too_large), 1);
    let sizes: Vec<u64> = searches(&w)
        .iter()
        .filter_map(|r| r.body.as_ref()?.get("perPage")?.as_u64())
        .collect();
    assert_eq!(
        sizes,
        vec![1000, 500],
        "asked again with half the page size"
    );
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

fn pipeline_with_clock(w: &World, clock: &LocalClock) -> Pipeline {
    let options = Options {
        clock: clock.clone(),
        ..fast()
    };
    Pipeline::open(w.config("", ""), options).unwrap()
}

#[tokio::test]
async fn a_local_clock_15_minutes_fast_loses_no_live_record() {
    let w = World::new(1).await;
    w.seed(0, 50, 85);
    let clock = LocalClock::default();
    clock.set_offset(TimeDelta::minutes(15));
    let p = pipeline_with_clock(&w, &clock);
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    let cursor = p.spool.cursor(&World::name(0)).unwrap().unwrap();
    assert!(
        cursor <= Utc::now().timestamp_millis(),
        "cursor committed {} ms past RingCentral's now",
        cursor - Utc::now().timestamp_millis()
    );
    // Live records appear after that poll, stamped with RingCentral's (the true) time, a few
    // seconds old (the `Date` header has whole seconds, so the corrected clock may lag by one).
    let now = Utc::now();
    w.rc.generate(
        &w.accounts[0].account_id,
        20,
        now - TimeDelta::seconds(5),
        now - TimeDelta::seconds(2),
        86,
    );
    poller.poll_window().await.unwrap();
    drain(&p).await;
    assert_each_once(&w, &[0]);
    // The skew is visible: a metric, and /healthz degraded.
    let acct = p.stats.account(&World::name(0));
    let skew_s = acct
        .clock_skew_ms
        .load(std::sync::atomic::Ordering::Relaxed)
        / 1000;
    assert!((898..=901).contains(&skew_s), "skew {skew_s}s");
    let clock_health = p.health.snapshot().get("clock:acct0").cloned();
    assert!(
        clock_health
            .as_ref()
            .is_some_and(|h| h.state == State::Degraded
                && h.reason.as_deref().is_some_and(|r| r.contains("ahead of"))),
        "{clock_health:?}"
    );
    let (_, doc) = rc_audit_hec::telemetry::render_health(&p.health);
    assert_eq!(doc["status"], "degraded", "{doc}");
}

#[tokio::test]
async fn a_cursor_left_in_the_future_by_a_clock_jump_is_pulled_back() {
    let w = World::new(1).await;
    let clock = LocalClock::default();
    let p = pipeline_with_clock(&w, &clock);
    // A clock 15 minutes fast committed this cursor; the clock has been corrected since.
    let future = (Utc::now() + TimeDelta::minutes(15)).timestamp_millis();
    p.spool
        .enqueue_page(&World::name(0), &[], Some(future))
        .unwrap();
    let now = Utc::now();
    w.rc.generate(
        &w.accounts[0].account_id,
        20,
        now - TimeDelta::minutes(2),
        now - TimeDelta::seconds(1),
        87,
    );
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    drain(&p).await;
    assert_each_once(&w, &[0]);
    let acct = p.stats.account(&World::name(0));
    assert_eq!(Stats::get(&acct.cursors_pulled_back), 1);
    assert!(p.spool.cursor(&World::name(0)).unwrap().unwrap() <= Utc::now().timestamp_millis());
}

#[tokio::test]
async fn a_reload_during_a_429_penalty_keeps_the_penalty() {
    let penalty = Duration::from_secs(3);
    let w = World::with(1, |c| c.penalty = penalty).await;
    w.seed(0, 20, 88);
    w.rc.update_faults(|f| f.force_429 = 1);
    let config = w.config("", "");
    let p = Pipeline::open(config.clone(), fast()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let reload = rc_audit_hec::service::Reload {
        requests: rx,
        load: Box::new(move || Ok(config.clone())),
    };
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(rc_audit_hec::service::run(
        p,
        rc_audit_hec::service::ServiceOptions::default(),
        shutdown.clone(),
        Some(reload),
    ));
    assert!(
        eventually(Duration::from_secs(10), || w
            .rc
            .requests()
            .iter()
            .any(|r| r.status == 429))
        .await
    );
    tx.send(()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || {
            let log = w.rc.requests();
            let i = log.iter().position(|r| r.status == 429).unwrap();
            log[i + 1..]
                .iter()
                .any(|r| r.path.ends_with("/search") && r.status == 200)
        })
        .await,
        "polling resumed after the penalty"
    );
    let want = w.generated(0).len();
    assert!(eventually(Duration::from_secs(10), || w.received().len() >= want).await);
    shutdown.cancel();
    service.await.unwrap().unwrap();
    // The simulator's own arrival times: nothing reached it during the penalty (a request then
    // would have drawn a second 429 and restarted the penalty).
    let log = w.rc.requests();
    let i = log.iter().position(|r| r.status == 429).unwrap();
    assert_eq!(
        log.iter().filter(|r| r.status == 429).count(),
        1,
        "{log:#?}"
    );
    let next = &log[i + 1];
    assert!(
        next.at.duration_since(log[i].at) >= penalty,
        "a request {:?} after the 429",
        next.at.duration_since(log[i].at)
    );
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn two_names_for_one_ringcentral_account_are_a_config_error() {
    let w = World::new(1).await;
    let toml = w.toml("", "");
    let second =
        toml[..toml.find("[poll]").unwrap()].replace("name = \"acct0\"", "name = \"renamed\"");
    let path = w.dir.path().join("config.toml");
    std::fs::write(&path, format!("{second}{toml}")).unwrap();
    let mut cmd = bin();
    cmd.arg("--config").arg(&path).args(["check", "--offline"]);
    let out = output(cmd).await;
    let text = text(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("\"renamed\"") && text.contains("\"acct0\""),
        "{text}"
    );
    assert!(
        !text.contains(&w.accounts[0].jwt),
        "no secret in the message"
    );
}

#[tokio::test]
async fn renaming_an_account_delivers_nothing_twice() {
    let w = World::new(1).await;
    w.seed(0, 40, 89);
    {
        let p = w.pipeline("", "");
        p.pollers(None).remove(0).poll_window().await.unwrap();
        drain(&p).await;
    }
    let renamed = w
        .toml("", "")
        .replace("name = \"acct0\"", "name = \"acct0-eu\"");
    let config =
        rc_audit_hec::config::Config::from_toml_str(&renamed, &Default::default()).unwrap();
    let p = Pipeline::open(config, fast()).unwrap();
    assert!(
        p.spool.cursor("acct0-eu").unwrap().is_some(),
        "cursor adopted"
    );
    p.pollers(None).remove(0).poll_window().await.unwrap();
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_record_visible_later_than_the_overlap_is_caught_by_backfill_again() {
    let w = World::new(1).await;
    let now = Utc::now();
    w.rc.generate(
        &w.accounts[0].account_id,
        10,
        now - TimeDelta::hours(30),
        now - TimeDelta::hours(26),
        90,
    );
    let cfg = w.dir.path().join("config.toml");
    std::fs::write(&cfg, w.toml("", "")).unwrap();
    // `backfill` adds to an existing spool only (it never starts a second one): create it.
    drop(w.pipeline("", ""));
    let backfill = |again: bool| {
        let mut cmd = bin();
        cmd.arg("--config")
            .arg(&cfg)
            .args(["backfill", "--from", "2d", "--max-wait", "10s"]);
        if again {
            cmd.arg("--again");
        }
        cmd
    };
    let out = output(backfill(false)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // RingCentral shows a record from a day ago only now: far behind the live overlap, and in
    // a range the first backfill recorded as done.
    w.rc.generate(
        &w.accounts[0].account_id,
        1,
        now - TimeDelta::hours(25),
        now - TimeDelta::hours(24),
        91,
    );
    let out = output(backfill(false)).await;
    assert!(text(&out).contains("0 new record(s)"), "{}", text(&out));
    let out = output(backfill(true)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains(" 1 new record(s)"), "{}", text(&out));
    assert_each_once(&w, &[0]);
}
