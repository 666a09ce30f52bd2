//! The pipeline end to end against the simulators, through the library's public API.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{World, assert_each_once, drain, eventually};
use rc_audit_hec::ringcentral::poller::WindowOutcome;
use rc_audit_hec::sim::records::generate_records;
use rc_audit_hec::telemetry::{State, Stats};
use tokio_util::sync::CancellationToken;

fn hours_ago(h: i64) -> chrono::DateTime<Utc> {
    Utc::now() - TimeDelta::hours(h)
}

#[tokio::test]
async fn paging_over_several_pages_collects_every_record_in_any_order() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 35, hours_ago(5), hours_ago(1), 1);
    let p = w.pipeline("page_size = 10", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert!(
        matches!(
            outcome,
            WindowOutcome::Polled {
                pages: 4,
                records: 35,
                inserted: 35,
                ..
            }
        ),
        "{outcome:?}"
    );
    // Every page asked for the same window, with both bounds in RFC 3339 UTC milliseconds.
    let searches: Vec<_> =
        w.rc.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/search"))
            .collect();
    assert_eq!(searches.len(), 4);
    for (i, s) in searches.iter().enumerate() {
        let body = s.body.as_ref().unwrap();
        assert_eq!(body["page"], i as u64 + 1);
        assert_eq!(body["perPage"], 10);
        assert_eq!(
            body["eventTimeFrom"],
            searches[0].body.as_ref().unwrap()["eventTimeFrom"]
        );
        let from = body["eventTimeFrom"].as_str().unwrap();
        assert!(
            from.ends_with('Z') && from.len() == "2024-08-06T10:50:19.442Z".len(),
            "{from}"
        );
    }
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn overlapping_windows_deliver_each_record_once() {
    let w = World::new(1).await;
    // Records in the last few minutes fall inside every window's 10-minute overlap.
    let now = Utc::now();
    w.rc.generate(
        &w.accounts[0].account_id,
        40,
        now - TimeDelta::minutes(5),
        now - TimeDelta::seconds(1),
        2,
    );
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    for _ in 0..3 {
        assert!(matches!(
            poller.poll_window().await.unwrap(),
            WindowOutcome::Polled { .. }
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        Stats::get(&p.stats.records_polled),
        120,
        "each window re-read the overlap"
    );
    assert_eq!(Stats::get(&p.stats.records_duplicate), 80);
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_record_visible_late_inside_the_overlap_is_still_delivered() {
    let w = World::new(1).await;
    let a = w.accounts[0].clone();
    w.rc.generate(&a.account_id, 10, hours_ago(3), hours_ago(2), 3);
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    // Now a record appears whose eventTime is already behind the cursor, but within overlap.
    let t = Utc::now() - TimeDelta::minutes(4);
    w.rc.add_records(
        &a.account_id,
        generate_records(
            9,
            &a.account_id,
            &a.account_name,
            1,
            t,
            t + TimeDelta::milliseconds(1),
        ),
    );
    poller.poll_window().await.unwrap();
    drain(&p).await;
    assert_each_once(&w, &[0]);
    assert_eq!(w.received().len(), 11);
}

#[tokio::test]
async fn a_token_expiring_mid_run_is_renewed() {
    let w = World::with(1, |c| c.token_ttl = Duration::from_secs(1)).await;
    w.rc.generate(&w.accounts[0].account_id, 5, hours_ago(2), hours_ago(1), 4);
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    // Past expires_in: the client must renew before searching, not after a 401.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    poller.poll_window().await.unwrap();
    // Revoked early (expire_tokens): the 401 leads to one renewal and a retry.
    w.rc.expire_tokens();
    poller.poll_window().await.unwrap();
    let log: Vec<(String, u16)> =
        w.rc.requests()
            .into_iter()
            .map(|r| (r.path, r.status))
            .collect();
    let tokens = log
        .iter()
        .filter(|(p, _)| p.ends_with("/oauth/token"))
        .count();
    let unauthorized = log.iter().filter(|(_, s)| *s == 401).count();
    assert_eq!(
        tokens, 3,
        "initial, renewal before expiry, renewal after 401: {log:?}"
    );
    assert_eq!(unauthorized, 1, "{log:?}");
    assert!(
        log.last()
            .is_some_and(|(p, s)| p.ends_with("/search") && *s == 200)
    );
}

#[tokio::test]
async fn a_429_is_honoured_and_nothing_is_sent_during_the_penalty() {
    let penalty = Duration::from_millis(600);
    let w = World::with(1, |c| c.penalty = penalty).await;
    w.rc.generate(&w.accounts[0].account_id, 5, hours_ago(2), hours_ago(1), 5);
    w.rc.update_faults(|f| f.force_429 = 1);
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    // A client that ignored the penalty would restart it forever: fail instead of hanging.
    tokio::time::timeout(Duration::from_secs(10), poller.poll_window())
        .await
        .expect("locked out by its own retries")
        .unwrap();
    let log = w.rc.requests();
    let i = log.iter().position(|r| r.status == 429).expect("one 429");
    let next = &log[i + 1];
    assert!(
        next.at.duration_since(log[i].at) >= penalty,
        "request {:?} after the 429",
        next.at.duration_since(log[i].at)
    );
    assert_eq!(
        log.iter().filter(|r| r.status == 429).count(),
        1,
        "a request during the penalty would have drawn another 429"
    );
    assert_eq!(Stats::get(&p.stats.rc_rate_limited), 1);
    assert!(log.last().is_some_and(|r| r.status == 200));
}

#[tokio::test]
async fn rate_limit_headers_pace_requests_without_any_429() {
    // 3 searches per window: 6 pages need pacing, and pacing means no penalty at all.
    let w = World::with(1, |c| {
        c.heavy_limit = 3;
        c.heavy_window = Duration::from_millis(700);
        c.penalty = Duration::from_secs(5);
    })
    .await;
    w.rc.generate(&w.accounts[0].account_id, 55, hours_ago(2), hours_ago(1), 6);
    let p = w.pipeline("page_size = 10", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert!(
        matches!(
            outcome,
            WindowOutcome::Polled {
                pages: 6,
                records: 55,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(
        w.rc.requests().iter().all(|r| r.status != 429),
        "paced client drew a 429"
    );
}

#[tokio::test]
async fn ringcentral_5xx_is_retried_with_backoff() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 5, hours_ago(2), hours_ago(1), 7);
    w.rc.update_faults(|f| f.server_errors = 3);
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    assert!(matches!(
        poller.poll_window().await.unwrap(),
        WindowOutcome::Polled { records: 5, .. }
    ));
    assert_eq!(
        w.rc.requests().iter().filter(|r| r.status == 503).count(),
        3
    );
}

#[tokio::test]
async fn hec_down_then_up_delivers_everything_once() {
    let w = World::new(1).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        120,
        hours_ago(2),
        hours_ago(1),
        8,
    );
    let p = w.pipeline("", "batch_max_events = 25");
    p.pollers(None).remove(0).poll_window().await.unwrap();
    w.hec.set_down(true).await;
    let mut sink = p.sink().unwrap();
    let drain = tokio::spawn(async move { sink.drain(&CancellationToken::new()).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.hec.accepted(), 0);
    assert_eq!(
        p.spool.depth().unwrap(),
        120,
        "everything waits in the spool"
    );
    assert_eq!(p.health.snapshot()["hec"].state, State::Degraded);
    w.hec.set_down(false).await;
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_each_once(&w, &[0]);
    assert_eq!(p.spool.depth().unwrap(), 0);
}

#[tokio::test]
async fn hec_busy_503_honours_retry_after() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 10, hours_ago(2), hours_ago(1), 9);
    let p = w.pipeline("", "");
    p.pollers(None).remove(0).poll_window().await.unwrap();
    w.hec.update_faults(|f| {
        f.busy = true;
        f.retry_after = Some(Duration::from_millis(400));
    });
    let mut sink = p.sink().unwrap();
    let drain = tokio::spawn(async move { sink.drain(&CancellationToken::new()).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    w.hec.update_faults(|f| f.busy = false);
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let busy: Vec<_> = w
        .hec
        .requests()
        .into_iter()
        .filter(|r| r.status == 503)
        .collect();
    assert!(busy.len() >= 2);
    for pair in busy.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(400),
            "retried before Retry-After"
        );
    }
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn hec_400_for_one_event_dead_letters_it_and_delivers_the_rest() {
    let w = World::new(1).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        30,
        hours_ago(2),
        hours_ago(1),
        10,
    );
    let bad = w.generated(0)[17].clone();
    w.hec.update_faults(|f| {
        f.reject_event_ids.insert(bad.clone());
    });
    let p = w.pipeline("", "");
    p.pollers(None).remove(0).poll_window().await.unwrap();
    drain(&p).await;
    let got = w.received();
    assert_eq!(got.len(), 29);
    assert!(
        got.values().all(|n| *n == 1),
        "events before the bad one were not resent"
    );
    assert!(!got.contains_key(&bad));
    let dead = p.spool.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record_id, bad);
    assert_eq!(dead[0].hec_code, Some(6));
    assert!(dead[0].reason.contains("code 6"), "{}", dead[0].reason);
    assert_eq!(Stats::get(&p.stats.events_dead_lettered), 1);
    assert_eq!(p.spool.depth().unwrap(), 0);
}

#[tokio::test]
async fn an_event_hec_refuses_without_naming_it_is_isolated() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 8, hours_ago(2), hours_ago(1), 11);
    let p = w.pipeline("", "");
    p.pollers(None).remove(0).poll_window().await.unwrap();
    // A 400 code 12 without invalid-event-number for the whole batch, then normal service.
    w.hec.update_faults(|f| f.scripted.push_back((400, 12)));
    drain(&p).await;
    // The batch is resent one event at a time: nothing is lost or dead-lettered wrongly.
    assert_each_once(&w, &[0]);
    assert!(p.spool.dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn hec_token_rejected_keeps_records_until_the_token_is_fixed() {
    let w = World::new(1).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        20,
        hours_ago(2),
        hours_ago(1),
        12,
    );
    let p = w.pipeline("", "");
    p.pollers(None).remove(0).poll_window().await.unwrap();
    w.hec.set_token("rotated-by-the-splunk-admin");
    let mut sink = p.sink().unwrap();
    let drain = tokio::spawn(async move { sink.drain(&CancellationToken::new()).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(w.hec.accepted(), 0);
    assert_eq!(p.spool.depth().unwrap(), 20, "nothing dropped on 403");
    let h = &p.health.snapshot()["hec"];
    assert_eq!(h.state, State::Failing);
    assert!(
        h.reason.as_deref().unwrap_or("").contains("hec.token"),
        "{h:?}"
    );
    w.hec.set_token(common::HEC_TOKEN);
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn ringcentral_403_is_a_permission_problem_and_other_accounts_keep_flowing() {
    let w = World::new(2).await;
    for i in 0..2 {
        w.rc.generate(
            &w.accounts[i].account_id,
            15,
            hours_ago(2),
            hours_ago(1),
            20 + i as u64,
        );
    }
    w.rc.update_faults(|f| {
        f.forbidden_accounts
            .insert(w.accounts[0].account_id.clone());
    });
    let p = w.pipeline("", "");
    let health = p.health.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 15).await);
    let forbidden = format!("account:{}", World::name(0));
    assert!(
        eventually(Duration::from_secs(5), || health
            .snapshot()
            .contains_key(&forbidden))
        .await
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    let h = &health.snapshot()[&forbidden];
    assert_eq!(h.state, State::Failing);
    let reason = h.reason.as_deref().unwrap();
    assert!(
        reason.contains("ReadAuditTrail") && reason.contains("CMN-401"),
        "{reason}"
    );
    assert_eq!(
        health.snapshot()[&format!("account:{}", World::name(1))].state,
        State::Ok
    );
    assert_each_once(&w, &[1]);
}

#[tokio::test]
async fn a_full_spool_pauses_polling_without_moving_the_cursor() {
    let w = World::new(1).await;
    w.rc.generate(&w.accounts[0].account_id, 5, hours_ago(2), hours_ago(1), 30);
    let p = w.pipeline("", "");
    // Fill the spool past a 2 MiB limit with another account's undelivered events (an empty
    // spool takes 15 pages of 64 KiB, one per table and index: 960 KiB since schema v6 gave
    // DynamoDB its outbox and marker, so 1 MiB left it room for one page).
    let padding = "x".repeat(4000);
    let big: Vec<_> = (0..400)
        .map(|i| rc_audit_hec::spool::NewRecord {
            invalid: None,
            event_time_ms: 0,
            record_id: format!("x{i}"),
            event: format!(r#"{{"event":{{"id":"x{i}","pad":"{padding}"}}}}"#).into_bytes(),
        })
        .collect();
    p.spool.enqueue_page("filler", &big, None).unwrap();
    let mut cfg = w.config("", "");
    cfg.spool.max_bytes = 2 << 20;
    drop(p);
    let p = rc_audit_hec::pipeline::Pipeline::open(cfg, common::fast()).unwrap();
    let mut poller = p.pollers(None).remove(0);
    assert!(matches!(
        poller.poll_window().await.unwrap(),
        WindowOutcome::SpoolFull { .. }
    ));
    assert_eq!(p.spool.cursor(&World::name(0)).unwrap(), None);
    assert!(w.rc.requests().is_empty(), "nothing polled while full");
    // Delivery continues while polling is paused, and frees the space: polling resumes.
    drain(&p).await;
    assert_eq!(w.hec.accepted(), 400);
    assert!(matches!(
        poller.poll_window().await.unwrap(),
        WindowOutcome::Polled { records: 5, .. }
    ));
    assert!(p.spool.cursor(&World::name(0)).unwrap().is_some());
}

#[tokio::test]
async fn the_demo_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let summary = rc_audit_hec::commands::demo::run(rc_audit_hec::commands::demo::DemoOptions {
        dir: Some(dir.path().to_path_buf()),
        records: 600,
        outage: Duration::from_secs(2),
    })
    .await
    .unwrap();
    assert_eq!(summary.lost, 0);
    // The record shown later than the overlap came in through reconciliation's repair.
    let repaired: Vec<_> = summary
        .reconciliations
        .iter()
        .filter(|r| r.status == rc_audit_hec::reconcile::Status::Repaired)
        .collect();
    assert_eq!(repaired.len(), 1, "{:?}", summary.reconciliations);
    assert_eq!(repaired[0].recovered, Some(1));
    assert_eq!(summary.duplicated, 0);
    assert_eq!(summary.delivered, summary.generated);
    assert!(
        summary.spooled_during_outage > 0,
        "the outage left records in the spool"
    );
    assert!(summary.received_path.exists());
}

#[tokio::test]
async fn a_window_interrupted_between_pages_keeps_its_records_but_not_the_cursor() {
    // One search per 1.5 s window: page 2 must wait, and we "crash" (drop the poll) meanwhile.
    let w = World::with(1, |c| {
        c.heavy_limit = 1;
        c.heavy_window = Duration::from_millis(1500);
    })
    .await;
    w.rc.generate(
        &w.accounts[0].account_id,
        25,
        hours_ago(3),
        hours_ago(1),
        40,
    );
    let p = w.pipeline("page_size = 10", "");
    let mut poller = p.pollers(None).remove(0);
    let interrupted = tokio::time::timeout(Duration::from_millis(700), poller.poll_window()).await;
    assert!(
        interrupted.is_err(),
        "the window should still be waiting for page 2"
    );
    assert_eq!(p.spool.depth().unwrap(), 10, "page 1 is durable");
    assert_eq!(
        p.spool.cursor(&World::name(0)).unwrap(),
        None,
        "the cursor waits for the whole window"
    );
    drop(poller);
    drop(p);
    // Restart with a fresh pipeline on the same spool and no rate limit: the window is re-polled.
    let p = w.pipeline("page_size = 10", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = tokio::time::timeout(Duration::from_secs(20), poller.poll_window())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            outcome,
            WindowOutcome::Polled {
                records: 25,
                inserted: 15,
                ..
            }
        ),
        "{outcome:?}"
    );
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_window_near_the_10000_record_limit_is_flagged() {
    let w = World::with(1, |c| c.heavy_limit = 20).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        9_500,
        hours_ago(20),
        hours_ago(1),
        50,
    );
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert!(
        matches!(
            outcome,
            WindowOutcome::Polled {
                records: 9_500,
                pages: 10,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(Stats::get(&p.stats.windows_near_limit), 1);
    // A normal window is not flagged.
    poller.poll_window().await.unwrap();
    assert_eq!(Stats::get(&p.stats.windows_near_limit), 1);
}

#[tokio::test]
async fn records_without_an_id_are_forwarded_once_with_unknown_fields_kept() {
    let w = World::new(1).await;
    let a = w.accounts[0].account_id.clone();
    let t =
        (Utc::now() - TimeDelta::minutes(30)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    w.rc.add_records(&a, vec![
        serde_json::json!({"eventTime": t, "actionId": "CHANGE_USER_INFO", "note": "no id"}),
        serde_json::json!({"id": "with-extras", "eventTime": t, "actionId": "X", "extra": {"kept": [1, 2]}}),
    ]);
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    poller.poll_window().await.unwrap(); // the overlap re-reads both: still enqueued once
    drain(&p).await;
    let events = w.hec.events();
    assert_eq!(events.len(), 2, "{events:?}");
    let no_id = events
        .iter()
        .find(|e| e["event"]["note"] == "no id")
        .unwrap();
    assert_eq!(no_id["fields"]["rc_action_id"], "CHANGE_USER_INFO");
    let other = events
        .iter()
        .find(|e| e["event"]["id"] == "with-extras")
        .unwrap();
    assert_eq!(
        other["event"]["extra"],
        serde_json::json!({"kept": [1, 2]}),
        "unknown fields kept"
    );
}

#[tokio::test]
async fn a_full_disk_pauses_polling_with_a_reason_and_recovers_without_a_restart() {
    let w = World::new(1).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        400,
        hours_ago(2),
        hours_ago(1),
        60,
    );
    let p = w.pipeline("", "");
    let (spool, health) = (p.spool.clone(), p.health.clone());
    let pages = spool.used_bytes().unwrap() / spool.page_size().unwrap();
    spool.set_max_page_count(pages).unwrap();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));
    let component = format!("account:{}", World::name(0));
    let failing = || {
        health.snapshot().get(&component).is_some_and(|h| {
            h.state == State::Failing && h.reason.as_deref().unwrap_or("").contains("full")
        })
    };
    assert!(
        eventually(Duration::from_secs(5), failing).await,
        "{:?}",
        health.snapshot()
    );
    assert_eq!(
        spool.cursor(&World::name(0)).unwrap(),
        None,
        "no cursor without its records"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !service.is_finished(),
        "a full disk never stops the process"
    );
    // Space comes back: polling resumes by itself.
    spool.set_max_page_count(1 << 30).unwrap();
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() == 400).await);
    assert!(
        eventually(Duration::from_secs(5), || health.snapshot()[&component]
            .state
            == State::Ok)
        .await
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_short_page_is_not_the_end_when_paging_says_more_follow() {
    let w = World::new(1).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        250,
        hours_ago(3),
        hours_ago(1),
        70,
    );
    // The server serves 100 per page although 1000 were asked for.
    w.rc.update_faults(|f| f.clamp_per_page = Some(100));
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    assert!(
        matches!(
            outcome,
            WindowOutcome::Polled {
                records: 250,
                pages: 3,
                ..
            }
        ),
        "{outcome:?}"
    );
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_window_holding_more_than_its_pages_can_return_is_split_not_committed() {
    let w = World::with(1, |c| c.heavy_limit = 100).await;
    w.rc.generate(
        &w.accounts[0].account_id,
        3000,
        hours_ago(20),
        hours_ago(1),
        71,
    );
    // 100 per page: the pager's budget (12 pages) reaches 1200 records of the window's 3000.
    w.rc.update_faults(|f| f.clamp_per_page = Some(100));
    let p = w.pipeline("", "");
    let mut poller = p.pollers(None).remove(0);
    let outcome = poller.poll_window().await.unwrap();
    let WindowOutcome::Polled {
        to_ms, inserted, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(inserted, 3000);
    assert_eq!(p.spool.cursor(&World::name(0)).unwrap(), Some(to_ms));
    drain(&p).await;
    assert_each_once(&w, &[0]);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` (with a message saying why the test is skipped) when not root or mount fails.
    fn mount(at: &std::path::Path, mib: u64) -> Option<Tmpfs> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            eprintln!(
                "SKIPPED: mounting a size-limited tmpfs needs root (CI runs as root); the disk-full path is also covered by a_full_disk_pauses_polling_with_a_reason_and_recovers_without_a_restart"
            );
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); run as root with CAP_SYS_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    /// Fills the filesystem to the last byte (another program eating the disk).
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        for size in [1 << 20, 4096, 1] {
            let chunk = vec![7u8; size];
            while f.write_all(&chunk).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// On a real filesystem filled to the last byte (a tmpfs; needs root, as in CI, else skipped
/// with a message): HEC down while the spool fills, the disk filled by something else, HEC back.
/// Every event is delivered once, with the service running and again across a clean restart on
/// the full filesystem. (Before the delivery reserve, deletes needed WAL space that was gone:
/// every settle failed with "database or disk is full" and each restart resent the first
/// batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_never_stops_delivery_even_across_a_restart() {
    use rc_audit_hec::config::{Config, LoadEnv};
    use rc_audit_hec::pipeline::Pipeline;
    const FS_MIB: u64 = 96;
    let w = World::new(1).await;
    let mnt = w.dir.path().join("small");
    let Some(fs) = Tmpfs::mount(&mnt, FS_MIB) else {
        return;
    };
    let state = mnt.join("state");
    let toml = w
        .toml("", "")
        .replace(
            &format!("{:?}", w.dir.path().join("state")),
            &format!("{state:?}"),
        )
        .replace("[spool]\n", "[spool]\nmin_free_bytes = \"2MiB\"\n");
    assert!(toml.contains("small"), "{toml}");
    let open = || {
        Pipeline::open(
            Config::from_toml_str(&toml, &LoadEnv::default()).unwrap(),
            common::fast(),
        )
        .unwrap()
    };
    let (n1, n2) = (3000, 2000);
    let account = &w.accounts[0].account_id;

    // 1. HEC down, records spooled, the disk filled, HEC back: delivered without a restart.
    w.rc.generate(account, n1, hours_ago(3), hours_ago(1), 71);
    w.hec.update_faults(|f| f.server_error = true);
    let p = open();
    let spool = p.spool.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));
    assert!(
        eventually(Duration::from_secs(60), || spool.depth().unwrap()
            == n1 as u64)
        .await,
        "spooled"
    );
    assert!(state.join("spool.reserve").exists(), "reserve in place");
    let filler = fs.fill();
    w.hec.update_faults(|f| f.server_error = false);
    assert!(
        eventually(Duration::from_secs(60), || w.received().len() == n1).await,
        "delivered on the full filesystem: {} of {n1}",
        w.received().len()
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    drop(spool);

    // 2. Space back (the reserve is re-created), HEC down, more records spooled, the disk
    //    filled again, a clean stop; then a start on the full filesystem with HEC back.
    std::fs::remove_file(&filler).unwrap();
    w.rc.generate(
        account,
        n2,
        Utc::now() - TimeDelta::minutes(5),
        Utc::now() - TimeDelta::seconds(30),
        72,
    );
    w.hec.update_faults(|f| f.server_error = true);
    let p = open();
    let spool = p.spool.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));
    assert!(
        eventually(Duration::from_secs(60), || spool.depth().unwrap()
            == n2 as u64)
        .await,
        "spooled: {}",
        spool.depth().unwrap()
    );
    assert!(
        eventually(Duration::from_secs(10), || state
            .join("spool.reserve")
            .exists())
        .await,
        "reserve re-created once space returned"
    );
    fs.fill();
    shutdown.cancel();
    service.await.unwrap().unwrap();
    drop(spool);
    w.hec.update_faults(|f| f.server_error = false);
    let p = open();
    let spool = p.spool.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));
    assert!(
        eventually(Duration::from_secs(60), || w.received().len() == n1 + n2).await,
        "delivered after a restart on the full filesystem: {} of {}",
        w.received().len(),
        n1 + n2
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    drop(spool);
    eprintln!(
        "full filesystem: {FS_MIB} MiB tmpfs, {} events spooled, {} delivered, {} requests to HEC",
        n1 + n2,
        w.received().len(),
        w.hec.requests().len()
    );
    assert_each_once(&w, &[0]);
}
