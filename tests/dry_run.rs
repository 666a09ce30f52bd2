//! `once --dry-run`: prints exactly the HEC events the next `once` would send, sends nothing,
//! moves no cursor, and works while the service holds the spool.

mod common;

use common::{bin, output};

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{World, eventually};
use serde_json::Value;

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

async fn dry_run(cfg: &Path) -> (Output, Vec<Value>) {
    let mut cmd = bin();
    cmd.arg("--config").arg(cfg).args(["once", "--dry-run"]);
    let out = output(cmd).await;
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out, events)
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|e| e.to_string());
    v
}

#[tokio::test]
async fn dry_run_prints_what_once_would_send_and_changes_nothing() {
    let w = World::new(2).await;
    for i in 0..2 {
        w.rc.generate(
            &w.accounts[i].account_id,
            12,
            Utc::now() - TimeDelta::hours(5),
            Utc::now() - TimeDelta::hours(1),
            110 + i as u64,
        );
    }
    let cfg = write_config(w.dir.path(), &w.toml("", "index = \"ringcentral\""));

    let (out, printed) = dry_run(&cfg).await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(printed.len(), 24, "{stderr}");
    assert!(stderr.contains("24 event(s) printed"), "{stderr}");
    assert!(
        stderr.contains("nothing was sent and no cursor moved"),
        "{stderr}"
    );
    assert_eq!(w.hec.requests().len(), 0, "nothing sent to HEC");
    assert!(
        !w.dir.path().join("state").join("spool.db").exists(),
        "no spool was created, so no cursor can have moved"
    );
    let e = &printed[0];
    assert!(e["event"]["id"].is_string() && e["time"].is_number(), "{e}");
    assert_eq!(e["sourcetype"], "ringcentral:audit");
    assert_eq!(e["index"], "ringcentral");
    assert!(
        e["source"]
            .as_str()
            .unwrap()
            .starts_with("ringcentral:audit-trail:acct")
    );

    // What once then sends is exactly what the dry run printed.
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let once = output(cmd).await;
    assert_eq!(once.status.code(), Some(0));
    assert_eq!(sorted(w.hec.events()), sorted(printed));

    // Records inside the next window's overlap that `once` already delivered are counted, not
    // printed: the next `once` would not send them again.
    w.rc.generate(
        &w.accounts[0].account_id,
        4,
        Utc::now() - TimeDelta::minutes(5),
        Utc::now() - TimeDelta::minutes(1),
        114,
    );
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    assert_eq!(output(cmd).await.status.code(), Some(0));
    assert_eq!(w.hec.accepted(), 28);
    let (out, printed) = dry_run(&cfg).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(printed.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0 event(s) printed")
            && stderr.contains("4 record(s) already spooled or delivered"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dry_run_works_while_the_service_holds_the_spool() {
    let w = World::new(1).await;
    let a = w.accounts[0].account_id.clone();
    w.rc.generate(
        &a,
        10,
        Utc::now() - TimeDelta::hours(5),
        Utc::now() - TimeDelta::hours(1),
        112,
    );
    // The service polls once, then not again for an hour.
    let toml = w
        .toml("", "")
        .replace("interval = \"200ms\"", "interval = \"1h\"");
    let cfg = write_config(w.dir.path(), &toml);
    let mut service = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 10).await);
    // New records inside the next window's overlap.
    w.rc.generate(
        &a,
        3,
        Utc::now() - TimeDelta::minutes(4),
        Utc::now() - TimeDelta::minutes(1),
        113,
    );
    let (out, printed) = dry_run(&cfg).await;
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        printed.len(),
        3,
        "only the records the service has not spooled"
    );
    assert_eq!(w.hec.accepted(), 10, "the dry run sent nothing");
}

#[tokio::test]
async fn dry_run_reports_a_permission_problem_with_exit_78() {
    let w = World::new(1).await;
    w.rc.update_faults(|f| {
        f.forbidden_accounts
            .insert(w.accounts[0].account_id.clone());
    });
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let (out, printed) = dry_run(&cfg).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(printed.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ReadAuditTrail"));
}
