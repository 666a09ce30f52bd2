//! `rc-audit-hec actions`: the real binary against the RingCentral simulator lists every distinct
//! actionId with its count, an example's eventType and parameters, and the app lookup's category,
//! flags the unknown ones, touches no spool, and exits like the other commands.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let shipped = rc_audit_hec::actions::SHIPPED_LOOKUP;
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
