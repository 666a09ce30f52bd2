//! `rc-audit-hec actions`: the real binary against the RingCentral simulator lists every distinct
//! actionId with its count, an example's eventType and parameters, and the app lookup's category,
//! flags the unknown ones, touches no spool, and exits like the other commands.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{TimeDelta, Utc};
use common::{World, bin, output, text};
use serde_json::{Value, json};

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// A record shaped like the simulator's, with `action_id` and one parameter.
fn record(n: usize, action_id: &str, event_type: &str, param: &str) -> Value {
    let t = Utc::now() - TimeDelta::minutes(90) + TimeDelta::seconds(n as i64);
    json!({
        "id": format!("rec-{action_id}-{n}"),
        "eventTime": t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "actionId": action_id,
        "eventType": event_type,
        "accountId": "400100000",
        "initiator": {"extensionId": "1", "name": "Ann Admin"},
        "target": {"objectId": "2", "objectType": "Extension", "name": "Bob User"},
        "clientIp": "203.0.113.7",
        "details": {"parameters": [{"key": param, "value": "v"}]}
    })
}

async fn actions(cfg: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = bin();
    cmd.arg("--config").arg(cfg).arg("actions").args(args);
    output(cmd).await
}

#[tokio::test]
async fn actions_lists_every_id_with_its_count_example_and_app_category() {
    let w = World::new(1).await;
    w.seed(0, 400, 7);
    let extra: Vec<Value> = (0..3)
        .map(|n| record(n, "LOGIN_UNSUCCESSFULLY", "Create", "reason"))
        .chain((0..2).map(|n| record(10 + n, "USER_SUSPENDED", "Update", "suspendedBy")))
        .chain([record(20, "CHANGE_LOCKOUT_POLICY", "UPDATE", "maxAttempts")])
        .collect();
    let account_id = w.accounts[0].account_id.clone();
    w.rc.add_records(&account_id, extra);
    let cfg = write_config(w.dir.path(), &w.toml("", ""));

    let out = actions(&cfg, &["--since", "1d", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let inv = &report["accounts"][0];
    assert_eq!(inv["account"], "acct0");
    assert_eq!(inv["complete"], true);

    // Counts agree with what the account holds, id by id.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for r in w.rc.records(&account_id) {
        *expected
            .entry(r["actionId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let listed: BTreeMap<String, &Value> = inv["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action_id"].as_str().unwrap().to_string(), a))
        .collect();
    let counts: BTreeMap<String, u64> = listed
        .iter()
        .map(|(k, a)| (k.clone(), a["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, expected);
    assert_eq!(inv["records"], expected.values().sum::<u64>());

    // The app's categories (its lookup, embedded), the example, and the unknown flag.
    let a = listed["LOGIN_UNSUCCESSFULLY"];
    assert_eq!(
        (a["category"].as_str(), a["unmapped"].as_bool()),
        (Some("authentication"), Some(false))
    );
    assert_eq!(a["event_type"], "Create");
    assert_eq!(a["parameters"], json!(["reason"]));
    assert_eq!(a["signature"], "Failed login");
    let s = listed["USER_SUSPENDED"];
    assert_eq!(
        (
            s["category"].as_str(),
            s["row_kind"].as_str(),
            s["unmapped"].as_bool()
        ),
        (Some("unknown"), Some("catch_all"), Some(true))
    );
    assert_eq!(listed["CHANGE_LOCKOUT_POLICY"]["category"], "configuration");
    assert_eq!(listed["LOGIN_SUCCESSFULLY"]["row_kind"], "exact");
    assert_eq!(listed["LOGOUT"]["category"], "session");
    assert_eq!(listed["ACCOUNT_LOCKED"]["category"], "lockout");

    // Read-only: no spool, nothing sent.
    assert!(
        !w.dir.path().join("state").exists(),
        "no state directory was created"
    );
    assert_eq!(w.hec.requests().len(), 0);

    // The table flags the unknown id and says what to do.
    let out = actions(&cfg, &["--since", "1d", "--account", "acct0"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.contains("USER_SUSPENDED"))
        .expect(&table);
    assert!(
        line.contains("unknown UNMAPPED") && line.contains("suspendedBy"),
        "{line}"
    );
    assert!(table.contains("fall through to `unknown`"), "{table}");
    assert!(table.contains("USER_SUSPENDED"), "{table}");
    assert!(
        !table
            .lines()
            .any(|l| l.contains("LOGIN_SUCCESSFULLY") && l.contains("UNMAPPED"))
    );
}

#[tokio::test]
async fn actions_classifies_with_an_extended_lookup_given_with_lookup() {
    let w = World::new(1).await;
    let account_id = w.accounts[0].account_id.clone();
    w.rc.add_records(
        &account_id,
        vec![record(0, "USER_SUSPENDED", "Update", "by")],
    );
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let local = w.dir.path().join("ringcentral_audit_actions_local.csv");
    let shipped = rc_audit_hec::commands::actions::SHIPPED_LOOKUP;
    let (header, rows) = shipped.split_once('\n').unwrap();
    std::fs::write(
        &local,
        format!("{header}\nUSER_SUSPENDED,lockout,exact,modified,success,lockout,AAA,user,Account suspended\n{rows}"),
    )
    .unwrap();
    let out = actions(
        &cfg,
        &[
            "--since",
            "1d",
            "--json",
            "--lookup",
            local.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &report["accounts"][0]["actions"][0];
    assert_eq!(
        (
            a["action_id"].as_str(),
            a["category"].as_str(),
            a["unmapped"].as_bool()
        ),
        (Some("USER_SUSPENDED"), Some("lockout"), Some(false))
    );

    std::fs::write(&local, "vendor_action,rc_category\nX,y\n").unwrap();
    let out = actions(&cfg, &["--lookup", local.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no column rc_match"), "{}", text(&out));
}

#[tokio::test]
async fn actions_exits_2_on_usage_78_on_config_and_credentials_1_when_unavailable() {
    let w = World::new(1).await;
    let cfg = write_config(w.dir.path(), &w.toml("", ""));

    let out = actions(&cfg, &["--account", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nope"), "{}", text(&out));
    let out = actions(&cfg, &["--since", "yesterday-ish"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--since"), "{}", text(&out));
    let out = actions(&cfg, &["--bogus"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let bad = w.dir.path().join("bad.toml");
    std::fs::write(&bad, "[hec]\nurl = \"nope\"\n").unwrap();
    let out = actions(&bad, &[]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));

    // The account's JWT user is locked: a credentials problem, exit 78, and the reason said.
    let account_id = w.accounts[0].account_id.clone();
    w.rc.update_faults(|f| {
        f.locked_accounts.insert(account_id.clone());
    });
    let out = actions(&cfg, &[]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("acct0"), "{}", text(&out));
    w.rc.update_faults(|f| {
        f.locked_accounts.clear();
        f.unavailable_accounts.insert(account_id.clone());
    });
    let out = actions(&cfg, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        !text(&out).contains(&w.accounts[0].client_secret),
        "no secret in output"
    );
}

/// A RingCentral whose every window longer than six hours holds "more records than one search
/// returns" (`totalFound` 20,000, first page only), like an account with busy days; shorter
/// windows are answered truthfully, bounds inclusive. Returns its URL and the windows searched.
async fn busy_rc(records: Vec<Value>) -> (String, Arc<Mutex<Vec<(i64, i64)>>>) {
    use axum::extract::State;
    use axum::routing::post;
    use axum::{Json, Router};
    type Shared = (Arc<Vec<Value>>, Arc<Mutex<Vec<(i64, i64)>>>);
    async fn search(State((records, seen)): State<Shared>, Json(req): Json<Value>) -> Json<Value> {
        let ms = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(req[k].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        let (from, to) = (ms("eventTimeFrom"), ms("eventTimeTo"));
        seen.lock().unwrap().push((from, to));
        let page = req["page"].as_u64().unwrap();
        let per_page = req["perPage"].as_u64().unwrap();
        let matching: Vec<&Value> = records
            .iter()
            .filter(|r| {
                let t = chrono::DateTime::parse_from_rfc3339(r["eventTime"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis();
                from <= t && t <= to
            })
            .collect();
        let found = if to - from > 6 * 3_600_000 {
            20_000
        } else {
            matching.len() as u64
        };
        let start = ((page - 1) * per_page) as usize;
        let page_records: Vec<&Value> = matching
            .into_iter()
            .skip(start)
            .take(per_page as usize)
            .collect();
        Json(json!({
            "records": page_records,
            "paging": {"page": page, "perPage": per_page, "totalFound": found, "total": found.div_ceil(per_page)}
        }))
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/restapi/oauth/token",
            post(|| async {
                Json(json!({"access_token": "t", "token_type": "bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/restapi/v1.0/account/{id}/audit-trail/search",
            post(search),
        )
        .with_state((Arc::new(records), seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn actions_splits_windows_that_hold_more_than_one_search_returns_and_counts_each_record_once()
{
    let records: Vec<Value> = (0..40)
        .map(|n| {
            let mut r = record(
                n,
                if n % 4 == 0 {
                    "LOGIN_FAILED"
                } else {
                    "LOGIN_SUCCESSFULLY"
                },
                "Create",
                "appName",
            );
            let t = Utc::now() - TimeDelta::hours(20) + TimeDelta::minutes(28 * n as i64);
            r["eventTime"] = json!(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
            r
        })
        .collect();
    let (url, windows) = busy_rc(records).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[[accounts]]\nname = \"busy\"\nserver_url = \"{url}\"\nclient_id = \"c\"\nclient_secret = \"s\"\njwt = \"j\"\n\n\
             [poll]\nsettle_delay = \"0s\"\n\n[hec]\nurl = \"http://127.0.0.1:9\"\ntoken = \"{}\"\n\n\
             [spool]\ndir = {:?}\n\n[admin]\nlisten = \"\"\n",
            common::HEC_TOKEN,
            dir.path().join("state")
        ),
    );
    let out = actions(&cfg, &["--since", "1d", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let inv = &report["accounts"][0];
    assert_eq!(inv["records"], 40, "{inv}");
    assert_eq!(inv["complete"], true);
    let counts: BTreeMap<&str, u64> = inv["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action_id"].as_str().unwrap(),
                a["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([("LOGIN_FAILED", 10), ("LOGIN_SUCCESSFULLY", 30)])
    );
    let windows = windows.lock().unwrap().clone();
    assert!(
        windows.iter().any(|(a, b)| b - a > 6 * 3_600_000),
        "it started with day windows"
    );
    assert!(
        windows.iter().any(|(a, b)| b - a <= 6 * 3_600_000),
        "and split them: {windows:?}"
    );
}
