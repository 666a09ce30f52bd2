//! Reconciliation (issue 12): each closed period's count at RingCentral against the distinct
//! records spooled, the repair of a period that is short, the count of a period above the
//! API's 10,000-record limit, a count RingCentral refuses for a while (paused time), and the
//! ledger an auditor reads while the service runs.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use rc_audit_hec::config::{Config, Destination, LoadEnv};
use rc_audit_hec::pipeline::Pipeline;
use rc_audit_hec::reconcile::{Reconciliation, Status};
use rc_audit_hec::spool::{LedgerEntry, NewRecord, WindowKind};
use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;

/// Yesterday, as a UTC day: the period reconciled first.
fn yesterday() -> (DateTime<Utc>, DateTime<Utc>) {
    let today = Utc::now().timestamp_millis().div_euclid(DAY_MS) * DAY_MS;
    (
        DateTime::from_timestamp_millis(today - DAY_MS).unwrap(),
        DateTime::from_timestamp_millis(today).unwrap(),
    )
}

/// `[poll]` extras for a world whose first live window starts an hour before yesterday (so
/// yesterday is the oldest closed period it covers whole, at any time of day: a fixed "50h"
/// made the day before yesterday the due one between midnight and 02:00), and reconciliation of
/// closed days without waiting two hours.
fn cover_yesterday() -> String {
    let since = Utc::now() - yesterday().0 + chrono::TimeDelta::hours(1);
    format!(
        "initial_lookback = \"{}s\"\n\n[reconcile]\ndelay = \"0s\"\nlookback = \"3d\"",
        since.num_seconds()
    )
}

fn reconciliation_events(w: &World) -> Vec<Value> {
    w.hec
        .events()
        .into_iter()
        .filter(|e| e["sourcetype"] == "ringcentral:audit:reconciliation")
        .collect()
}

fn counts(r: &Reconciliation) -> (Status, u64, u64, Option<u64>) {
    (
        r.status,
        r.ringcentral_count,
        r.forwarded_count,
        r.recovered,
    )
}

#[tokio::test]
async fn a_period_whose_counts_match_is_complete_and_reported_once() {
    let w = World::new(1).await;
    let (start, end) = yesterday();
    w.rc.generate(&w.accounts[0].account_id, 40, start, end, 120);
    let p = w.pipeline(&cover_yesterday(), "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    let r = poller
        .reconcile_next()
        .await
        .unwrap()
        .expect("yesterday is due");
    assert_eq!(r.period.start_ms, start.timestamp_millis());
    assert_eq!(r.period.end_ms, end.timestamp_millis());
    assert_eq!(counts(&r), (Status::Complete, 40, 40, None));
    // Stored: asking again does not redo it, nor does a restart (the spool opened again).
    assert!(poller.reconcile_next().await.unwrap().is_none());
    drop(poller);
    drain(&p).await;
    drop(p);
    let p = w.pipeline(&cover_yesterday(), "");
    let again = p.pollers(None).remove(0).reconcile_next().await.unwrap();
    assert!(again.is_none(), "{again:?}");
    drain(&p).await;
    let events = reconciliation_events(&w);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["source"], "rc-audit-hec", "{}", events[0]);
    assert_eq!(events[0]["fields"]["rc_account"], "acct0");
    // At the period's last millisecond: a Splunk search ending at the period's end (whose
    // `latest` is exclusive) still finds it, and `bin _time span=1d` files it under its day.
    assert_eq!(
        (events[0]["time"].as_f64().unwrap() * 1000.0).round() as i64,
        end.timestamp_millis() - 1,
        "filed at the period's last millisecond"
    );
    let e = &events[0]["event"];
    assert_eq!(e["account"], "acct0");
    assert_eq!(e["status"], "complete");
    assert_eq!(e["ringcentral_count"], 40);
    assert_eq!(e["forwarded_count"], 40);
    assert_eq!(
        e["period_start"],
        rc_audit_hec::time::rfc3339_millis(start).as_str()
    );
    assert_eq!(
        e["period_end"],
        rc_audit_hec::time::rfc3339_millis(end).as_str()
    );
    assert!(e.get("recovered").is_none(), "{e}");
    // Never counted as an audit record: every record once, the reconciliation event aside.
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_record_visible_later_than_the_overlap_is_found_and_repaired() {
    let w = World::new(1).await;
    let (start, end) = yesterday();
    let account = w.accounts[0].account_id.clone();
    w.rc.generate(&account, 30, start, end, 121);
    let p = w.pipeline(&cover_yesterday(), "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    let cursor = p.spool.cursor("acct0").unwrap();
    // RingCentral shows a record of yesterday only now: far behind the live overlap.
    let late = start + TimeDelta::hours(5);
    w.rc.add_records(
        &account,
        vec![json!({"id": "late-1", "eventTime": rc_audit_hec::time::rfc3339_millis(late), "actionId": "LOGIN"})],
    );
    poller.poll_window().await.unwrap();
    assert_eq!(
        w.rc.records(&account).len(),
        31,
        "the simulator holds the late record"
    );
    let r = poller.reconcile_next().await.unwrap().expect("due");
    assert_eq!(counts(&r), (Status::Repaired, 31, 31, Some(1)));
    assert!(
        p.spool.cursor("acct0").unwrap() >= cursor,
        "live cursor untouched by the repair"
    );
    drain(&p).await;
    assert_each_once(&w, &[0]);
    let events = reconciliation_events(&w);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["status"], "repaired");
    assert_eq!(events[0]["event"]["recovered"], 1);
    // The repair is in the ledger beside the live windows.
    drop(poller);
    let reader = rc_audit_hec::spool::reader::Reader::open(&w.dir.path().join("state")).unwrap();
    let kinds: Vec<String> = reader
        .ledger(Some("acct0"), 0)
        .unwrap()
        .into_iter()
        .map(|l| l.kind)
        .collect();
    assert!(kinds.contains(&"repair".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"live".to_string()), "{kinds:?}");
}

#[tokio::test]
async fn records_ringcentral_counts_but_never_returns_make_the_period_short_with_a_reason() {
    let w = World::new(1).await;
    let (start, end) = yesterday();
    w.rc.generate(&w.accounts[0].account_id, 20, start, end, 122);
    let p = w.pipeline(&cover_yesterday(), "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    w.rc.update_faults(|f| f.total_found_extra = 2);
    let r = poller.reconcile_next().await.unwrap().expect("due");
    assert_eq!(counts(&r), (Status::Short, 22, 20, Some(0)));
    let reason = r.reason.unwrap();
    assert!(reason.contains("counts 22 records"), "{reason}");
}

#[tokio::test]
async fn a_period_with_a_dead_lettered_record_is_short_not_complete() {
    let w = World::new(1).await;
    let (start, end) = yesterday();
    w.rc.generate(&w.accounts[0].account_id, 20, start, end, 123);
    let p = w.pipeline(&cover_yesterday(), "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    // HEC refuses one of the period's records for good: the sink's own settle of that answer.
    let head = p
        .spool
        .read_batch(Destination::Hec, 1, 1 << 20)
        .unwrap()
        .remove(0);
    p.spool
        .settle(
            Destination::Hec,
            None,
            &[rc_audit_hec::spool::DeadLetter {
                seq: head.seq,
                reason: "Invalid data format (HEC code 6)".into(),
                hec_code: Some(6),
            }],
        )
        .unwrap();
    let r = poller.reconcile_next().await.unwrap().expect("due");
    // Every id was spooled (so no repair), but one never reached Splunk.
    assert_eq!(counts(&r), (Status::Short, 20, 19, None));
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("1 of the period's records are in dead letters"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_repair_cut_short_by_a_stop_still_reports_everything_it_recovered() {
    let w = World::new(1).await;
    let (start, end) = yesterday();
    let account = w.accounts[0].account_id.clone();
    let p = w.pipeline(&cover_yesterday(), "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    // Three records of yesterday show up only now, far behind the live overlap; RingCentral
    // answers slowly and one record per page.
    let late: Vec<Value> = (1..=3)
        .map(|h| {
            json!({"id": format!("late-{h}"), "actionId": "LOGIN",
                   "eventTime": rc_audit_hec::time::rfc3339_millis(start + TimeDelta::hours(h))})
        })
        .collect();
    w.rc.add_records(&account, late);
    w.rc.update_faults(|f| {
        f.clamp_per_page = Some(1);
        f.slow = Duration::from_secs(10);
    });
    // Stopped during the repair: the count (10 s), two pages spooled (20 s, 30 s), the third in
    // flight.
    let cut = tokio::time::timeout(Duration::from_secs(35), poller.reconcile_next()).await;
    assert!(cut.is_err(), "the repair finished: {cut:?}");
    let (first, last) = (start.timestamp_millis(), end.timestamp_millis() - 1);
    assert_eq!(p.spool.forwarded_count("acct0", first, last).unwrap(), 2);
    drop(poller);
    // The next start repairs the rest, and reports all three as recovered: live polling had
    // missed them, whichever attempt brought them in.
    w.rc.update_faults(|f| {
        f.clamp_per_page = None;
        f.slow = Duration::ZERO;
    });
    let mut poller = p.pollers(None).remove(0);
    let r = poller.reconcile_next().await.unwrap().expect("due");
    assert_eq!(counts(&r), (Status::Repaired, 3, 3, Some(3)));
    assert!(poller.reconcile_next().await.unwrap().is_none());
    assert_eq!(p.spool.reconciliations(Some("acct0"), 0).unwrap().len(), 1);
}

#[tokio::test]
async fn a_period_above_the_10000_record_limit_is_counted_in_pieces() {
    let w = World::with(1, |c| {
        c.max_records_per_account = 25_000;
        c.rate_limits = false;
    })
    .await;
    let (start, end) = yesterday();
    w.rc.generate(&w.accounts[0].account_id, 25_000, start, end, 123);
    // RingCentral's count stops at the API's limit.
    w.rc.update_faults(|f| f.total_found_cap = Some(10_000));
    let p = w.pipeline(&cover_yesterday(), "");
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();
    let before = w.rc.requests().len();
    let r = poller.reconcile_next().await.unwrap().expect("due");
    assert_eq!(counts(&r), (Status::Complete, 25_000, 25_000, None));
    let counted: Vec<Value> = w.rc.requests()[before..]
        .iter()
        .filter_map(|r| r.body.clone())
        .collect();
    assert!(counted.iter().all(|b| b["perPage"] == 1), "{counted:?}");
    assert!(counted.len() >= 3, "counted in pieces: {}", counted.len());
}

/// One scripted answer: a status and an optional `Retry-After`.
type Answer = (u16, Option<&'static str>);

/// A fake RingCentral whose searches answer from a script (then a count of `count`), and that
/// notes the (paused) tokio time of each search.
#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<VecDeque<Answer>>>,
    count: u64,
    searches: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

async fn start_fake(fake: Fake) -> String {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    let token = || async {
        axum::Json(json!({"access_token": "t", "token_type": "bearer", "expires_in": 3600}))
    };
    let search = move |axum::extract::State(f): axum::extract::State<Fake>| async move {
        f.searches.lock().unwrap().push(tokio::time::Instant::now());
        let next = f.script.lock().unwrap().pop_front();
        match next {
            Some((status, retry_after)) => {
                let mut resp = (
                    StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({"errors": [{"errorCode": "CMN-301", "message": "busy"}]})),
                )
                    .into_response();
                if let Some(s) = retry_after {
                    resp.headers_mut().insert("retry-after", s.parse().unwrap());
                }
                resp
            }
            None => axum::Json(json!({
                "records": [],
                "paging": {"page": 1, "perPage": 1, "total": f.count, "totalFound": f.count}
            }))
            .into_response(),
        }
    };
    let app = axum::Router::new()
        .route("/restapi/oauth/token", post(token))
        .route(
            "/restapi/v1.0/account/{id}/audit-trail/search",
            post(search),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(start_paused = true)]
async fn a_count_refused_with_429_and_5xx_waits_out_the_penalty_and_is_not_lost() {
    let fake = Fake {
        count: 3,
        ..Fake::default()
    };
    fake.script
        .lock()
        .unwrap()
        .extend([(429, Some("40")), (503, None), (503, None)]);
    let url = start_fake(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[accounts]]\nname = \"acct0\"\nserver_url = \"{url}\"\nclient_id = \"c\"\nclient_secret = \"s\"\njwt = \"j\"\n\n\
         [hec]\nurl = \"http://127.0.0.1:9\"\ntoken = \"{HEC_TOKEN}\"\n\n\
         [spool]\ndir = {:?}\n\n[admin]\nlisten = \"\"\n\n[reconcile]\ndelay = \"0s\"\n",
        dir.path().join("state")
    );
    let config = Config::from_toml_str(&toml, &LoadEnv::default()).unwrap();
    let p = Pipeline::open(config, fast()).unwrap();
    // Yesterday was polled live (3 records) before: the cursor is past it.
    let (start, end) = yesterday();
    let records: Vec<NewRecord> = (0..3)
        .map(|i| NewRecord {
            record_id: format!("r{i}"),
            event_time_ms: start.timestamp_millis() + i * 1000,
            event: b"{\"event\":{}}".to_vec(),
            invalid: None,
        })
        .collect();
    let window = LedgerEntry {
        kind: WindowKind::Live,
        from_ms: start.timestamp_millis() - 60_000,
        to_ms: end.timestamp_millis() + 60_000,
        total_found: Some(3),
        pages: 1,
        records: 3,
        inserted: 0,
        duplicates: 0,
    };
    p.spool
        .enqueue_window_page("acct0", &records, Some(window.to_ms), Some(&window))
        .unwrap();
    // RingCentral refuses every count for a while: the reconciliation is abandoned (a
    // shutdown, a timeout) and nothing is stored, so it is still due afterwards.
    fake.script
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n((503, None), 1000));
    let mut poller = p.pollers(None).remove(0);
    let cut = tokio::time::timeout(Duration::from_secs(30), poller.reconcile_next()).await;
    assert!(cut.is_err(), "still retrying: {cut:?}");
    assert!(
        rc_audit_hec::spool::reader::Reader::open(&dir.path().join("state"))
            .unwrap()
            .reconciliations(None, 0)
            .unwrap()
            .is_empty(),
        "nothing stored for a count that failed"
    );
    // Then: one 429 with Retry-After 40 s, two 503s, then the count.
    {
        let mut s = fake.script.lock().unwrap();
        s.clear();
        s.extend([(429, Some("40")), (503, None), (503, None)]);
    }
    fake.searches.lock().unwrap().clear();
    let r = poller.reconcile_next().await.unwrap().expect("still due");
    assert_eq!(counts(&r), (Status::Complete, 3, 3, None));
    let at = fake.searches.lock().unwrap().clone();
    assert_eq!(at.len(), 4, "429, 503, 503, the count");
    assert!(
        at[1] - at[0] >= Duration::from_secs(40),
        "nothing sent during the 429 penalty: {:?}",
        at[1] - at[0]
    );
    assert!(
        poller.reconcile_next().await.unwrap().is_none(),
        "done once"
    );
}

#[tokio::test]
async fn the_ledger_command_shows_windows_and_reconciliations_while_the_service_runs() {
    let w = World::new(1).await;
    let (start, end) = yesterday();
    w.rc.generate(&w.accounts[0].account_id, 25, start, end, 124);
    let cfg = w.dir.path().join("config.toml");
    std::fs::write(&cfg, w.toml(&cover_yesterday(), "")).unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The service's own loop reconciles yesterday after its first live window.
    let reconciled = eventually(Duration::from_secs(15), || {
        !reconciliation_events(&w).is_empty()
    })
    .await;
    let ledger = |args: &[&str]| {
        let mut c = bin();
        c.arg("--config")
            .arg(&cfg)
            .args(["spool", "ledger"])
            .args(args);
        c
    };
    let out = output(ledger(&["--json"])).await;
    let json_text = text(&out);
    let text_out = output(ledger(&["--account", "acct0", "--since", "3d"])).await;
    let other = output(ledger(&["--account", "nobody"])).await;
    let bad = output(ledger(&["--since", "last tuesday"])).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(reconciled, "no reconciliation event reached HEC");
    assert_eq!(out.status.code(), Some(0), "{json_text}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &doc["reconciliations"][0];
    assert_eq!(r["account"], "acct0", "{doc}");
    assert_eq!(r["status"], "complete");
    assert_eq!(r["ringcentral_count"], 25);
    assert_eq!(r["forwarded_count"], 25);
    assert_eq!(
        r["period_start"],
        rc_audit_hec::time::rfc3339_millis(start).as_str()
    );
    let windows = doc["windows"].as_array().unwrap();
    let first = &windows[0];
    assert_eq!(first["kind"], "live", "{doc}");
    assert_eq!(first["total_found"], 25);
    assert_eq!(first["records"], 25);
    assert_eq!(first["new"], 25);
    assert!(first["pages"].as_u64().unwrap() >= 1);
    // The live windows after it found nothing new: they share one row however many ran.
    assert!(windows.len() <= 2, "{doc}");
    assert!(
        windows
            .iter()
            .skip(1)
            .all(|w| w["new"] == 0 && w["kind"] == "live" && w["windows"].as_u64() >= Some(1)),
        "{doc}"
    );
    let t = text(&text_out);
    assert_eq!(text_out.status.code(), Some(0), "{t}");
    assert!(t.contains("account acct0"), "{t}");
    assert!(
        t.contains("complete") && t.contains("ringcentral 25  forwarded 25"),
        "{t}"
    );
    assert!(t.contains("live") && t.contains("totalFound 25"), "{t}");
    assert!(
        text(&other).contains("nothing recorded for account nobody"),
        "{}",
        text(&other)
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}
