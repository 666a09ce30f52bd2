//! DynamoDB as a destination, end to end, against dynalite (a real DynamoDB implementation on
//! loopback; tests/common/dynamo.rs): the delivery loop over the spool's DynamoDB outbox, and
//! the real binary with both destinations, one of them down, and killed with SIGKILL.

mod common;
#[path = "common/dynamo.rs"]
mod dynamo_harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::Select;
use common::{World, eventually};
use dynamo_harness::{Dynalite, Fault, FaultProxy, dynamo, dynamo_config};
use rc_audit_hec::config::Destination;
use rc_audit_hec::dynamodb::{Dynamo, Sink, create_table};
use rc_audit_hec::retry::RetryPolicy;
use rc_audit_hec::spool::{NewRecord, Spool};
use rc_audit_hec::telemetry::{Component, Health, State, Stats};
use rc_audit_hec::transform::hec_time;
use tokio_util::sync::CancellationToken;

/// 2026-11-30T22:00:00.000Z.
const T0: i64 = 1_796_076_000_000;

/// A record in the HEC envelope the spool stores for every destination.
fn envelope(id: &str, time_ms: i64, extra: &str) -> Vec<u8> {
    let time = rc_audit_hec::time::ms_rfc3339(time_ms).unwrap();
    format!(
        r#"{{"time":{},"host":"h","source":"ringcentral:audit-trail:main","sourcetype":"ringcentral:audit","event":{{"id":"{id}","eventTime":"{time}","actionId":"LOGIN_FAILED","eventType":"LOGIN"{extra}}}}}"#,
        hec_time(time_ms)
    )
    .into_bytes()
}

/// A spool in `dir` that delivers to DynamoDB only, holding `n` records of account "main".
fn spool_with(dir: &Path, n: usize) -> Spool {
    let spool = Spool::open(dir).unwrap();
    spool.set_destinations(&[Destination::DynamoDb]);
    let records: Vec<NewRecord> = (0..n)
        .map(|i| {
            let id = format!("r{i:05}");
            let mut r = NewRecord::new(&id, envelope(&id, T0 + i as i64, ""));
            r.event_time_ms = T0 + i as i64;
            r
        })
        .collect();
    for page in records.chunks(1000) {
        spool.enqueue_page("main", page, None).unwrap();
    }
    spool
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        min: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

fn sink(d: &Dynamo, spool: &Spool, stats: &Arc<Stats>, health: &Arc<Health>) -> Sink {
    let cfg = dynamo_config("http://unused", d.table());
    Sink::new(
        d.clone(),
        &cfg,
        spool.clone(),
        fast(),
        stats.clone(),
        health.clone(),
    )
}

/// Every item's (account, record id), in key order; panics on a duplicate key (there cannot
/// be one in DynamoDB, so it would mean the scan is wrong).
async fn items(d: &Dynamo) -> Vec<(String, String)> {
    let pages: Vec<_> = d
        .sdk()
        .scan()
        .table_name(d.table())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    let mut out: Vec<(String, String)> = pages
        .iter()
        .map(|item| {
            let account = item["account"].as_s().unwrap().clone();
            let sk = item["sk"].as_s().unwrap();
            (account, sk.split_once('#').unwrap().1.to_string())
        })
        .collect();
    out.sort();
    out
}

/// Items in the table, over every page of the scan (one page stops at 1 MB); -1 while the
/// table does not exist.
async fn count(d: &Dynamo) -> i32 {
    let pages: Result<Vec<_>, _> = d
        .sdk()
        .scan()
        .table_name(d.table())
        .select(Select::Count)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect();
    pages.map_or(-1, |p| p.iter().map(|o| o.count()).sum())
}

fn depth(spool: &Spool, dest: Destination) -> u64 {
    spool
        .status()
        .unwrap()
        .destinations
        .iter()
        .find(|d| d.destination == dest)
        .map_or(0, |d| d.depth)
}

#[tokio::test]
async fn a_backlog_is_written_once_and_an_oversized_record_is_dead_lettered_not_cut() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "audit");
    let d = dynamo(&cfg).await;
    create_table(&d, &cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // More than two reads' worth (500 rows each), so settles of several ranges are covered.
    let spool = spool_with(dir.path(), 1_030);
    // Random bytes, base64: about 6 bits of entropy per character, so ~800 KB stays above
    // DynamoDB's 400 KB item limit even gzip-compressed.
    let noise: String = (0..800_000)
        .map(|_| {
            let c = fastrand::u8(0..64);
            (match c {
                0..26 => b'A' + c,
                26..52 => b'a' + c - 26,
                52..62 => b'0' + c - 52,
                62 => b'+',
                _ => b'/',
            }) as char
        })
        .collect();
    let big = NewRecord::new(
        "huge",
        envelope("huge", T0 + 5_000, &format!(r#","note":"{noise}""#)),
    );
    spool.enqueue_page("main", &[big], None).unwrap();
    let (stats, health) = (Arc::new(Stats::default()), Arc::new(Health::default()));
    let mut s = sink(&d, &spool, &stats, &health);
    s.drain(&CancellationToken::new()).await.unwrap();

    let got = items(&d).await;
    assert_eq!(
        got.len(),
        1_030,
        "every record once, the oversized one not at all"
    );
    let want: Vec<(String, String)> = (0..1_030)
        .map(|i| ("main".to_string(), format!("r{i:05}")))
        .collect();
    assert_eq!(got, want);
    assert_eq!(depth(&spool, Destination::DynamoDb), 0);
    let dead = spool.dead_letters().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].destination, Destination::DynamoDb);
    assert_eq!(dead[0].record_id, "huge");
    assert!(dead[0].reason.contains("limit"), "{}", dead[0].reason);
    assert_eq!(Stats::get(&stats.dynamodb_items_written), 1_030);
    assert_eq!(Stats::get(&stats.dynamodb_dead_lettered), 1);

    // The same records sent again, as after a crash before the settle: the same items, no more.
    let again = spool_with(tempfile::tempdir().unwrap().path(), 1_030);
    let mut s = sink(&d, &again, &stats, &health);
    s.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(items(&d).await, want, "a resend overwrites, never adds");
}

#[tokio::test]
async fn throttling_500s_and_unprocessed_items_are_retried_until_every_item_is_written() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let proxy = FaultProxy::start(&db.url()).await;
    let cfg = dynamo_config(&proxy.url(), "audit");
    let d = dynamo(&cfg).await;
    create_table(&d, &cfg).await.unwrap();
    proxy.push("BatchWriteItem", Fault::throttle());
    proxy.push("BatchWriteItem", Fault::internal());
    proxy.push(
        "BatchWriteItem",
        Fault::Partial {
            apply: (0..10).collect(),
        },
    );
    proxy.push("BatchWriteItem", Fault::throttling());
    proxy.push("BatchWriteItem", Fault::Partial { apply: vec![3] });
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 120);
    let (stats, health) = (Arc::new(Stats::default()), Arc::new(Health::default()));
    let mut s = sink(&d, &spool, &stats, &health);
    s.drain(&CancellationToken::new()).await.unwrap();

    assert_eq!(count(&d).await, 120);
    assert_eq!(depth(&spool, Destination::DynamoDb), 0);
    assert!(spool.dead_letters().unwrap().is_empty());
    // Which request meets which fault depends on four concurrent requests' timing; the first
    // partial answer applies 10 of 25 items, the second 1 of at least 4.
    assert!(
        Stats::get(&stats.dynamodb_unprocessed) >= 15 + 3,
        "two partial batches: {}",
        Stats::get(&stats.dynamodb_unprocessed)
    );
    assert!(Stats::get(&stats.dynamodb_failures) >= 5);
    let batches = proxy
        .seen()
        .iter()
        .filter(|(op, _)| op == "BatchWriteItem")
        .count();
    assert!(batches >= 5 + 5, "{batches} BatchWriteItem requests");
    assert_eq!(
        health.components()[&Component::DynamoDb].state,
        State::Ok,
        "healthy again once DynamoDB takes items"
    );
}

#[tokio::test]
async fn a_refused_item_is_dead_lettered_and_the_rest_of_its_request_written() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let proxy = FaultProxy::start(&db.url()).await;
    let cfg = dynamo_config(&proxy.url(), "audit");
    let d = dynamo(&cfg).await;
    create_table(&d, &cfg).await.unwrap();
    let validation = || Fault::Error {
        status: 400,
        code: "ValidationException",
        message: "One or more parameter values were invalid: item too wide",
    };
    proxy.push("BatchWriteItem", validation());
    // The first item of the refused request, written alone, is the one refused (which of the
    // two concurrent requests meets the fault is timing).
    proxy.push("PutItem", validation());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 40);
    let (stats, health) = (Arc::new(Stats::default()), Arc::new(Health::default()));
    let mut s = sink(&d, &spool, &stats, &health);
    s.drain(&CancellationToken::new()).await.unwrap();

    assert_eq!(count(&d).await, 39);
    let dead = spool.dead_letters().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        ["r00000", "r00025"].contains(&dead[0].record_id.as_str()),
        "{}",
        dead[0].record_id
    );
    assert_eq!(dead[0].destination, Destination::DynamoDb);
    assert!(
        dead[0].reason.contains("item too wide"),
        "{}",
        dead[0].reason
    );
    assert_eq!(depth(&spool, Destination::DynamoDb), 0);
}

#[tokio::test]
async fn a_table_with_other_keys_pauses_delivery_instead_of_dead_lettering_the_backlog() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "audit");
    let d = dynamo(&cfg).await;
    // A table managed elsewhere (create_table = false), keyed differently: DynamoDB would
    // refuse every item with a ValidationException.
    d.sdk()
        .create_table()
        .table_name("audit")
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // Until it is ACTIVE, dynalite answers "not found"; the point is a table that takes writes.
    let mut active = false;
    for _ in 0..100 {
        let desc = d
            .sdk()
            .describe_table()
            .table_name("audit")
            .send()
            .await
            .unwrap();
        if desc
            .table()
            .and_then(|t| t.table_status())
            .map(|s| s.as_str())
            == Some("ACTIVE")
        {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 60);
    let (stats, health) = (Arc::new(Stats::default()), Arc::new(Health::default()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink(&d, &spool, &stats, &health).run(stop.clone()));
    let paused = eventually(Duration::from_secs(20), || {
        health
            .components()
            .get(&Component::DynamoDb)
            .is_some_and(|h| h.state == State::Failing)
    })
    .await;
    assert!(paused, "a table with other keys pauses DynamoDB's delivery");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reason = health.components()[&Component::DynamoDb].reason.clone();
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("key")),
        "the reason says what is wrong: {reason:?}"
    );
    assert!(
        spool.dead_letters().unwrap().is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(depth(&spool, Destination::DynamoDb), 60, "nothing settled");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_missing_table_pauses_delivery_and_it_resumes_once_the_table_exists() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "audit");
    let d = dynamo(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), 60);
    let (stats, health) = (Arc::new(Stats::default()), Arc::new(Health::default()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink(&d, &spool, &stats, &health).run(stop.clone()));
    let paused = eventually(Duration::from_secs(20), || {
        health
            .components()
            .get(&Component::DynamoDb)
            .is_some_and(|h| h.state == State::Failing)
    })
    .await;
    assert!(paused, "a missing table is a paused destination");
    let reason = health.components()[&Component::DynamoDb].reason.clone();
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("audit")),
        "the reason names the table: {reason:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(depth(&spool, Destination::DynamoDb), 60, "nothing settled");
    assert!(spool.dead_letters().unwrap().is_empty(), "nothing lost");

    create_table(&d, &cfg).await.unwrap();
    let done = eventually(Duration::from_secs(60), || {
        depth(&spool, Destination::DynamoDb) == 0
    })
    .await;
    assert!(done, "delivery resumes by itself once the table exists");
    assert_eq!(count(&d).await, 60);
    assert_eq!(health.components()[&Component::DynamoDb].state, State::Ok);
    stop.cancel();
    task.await.unwrap();
}

// ---- the real binary ----

/// The forwarder with fake AWS credentials in its environment (never real ones, no instance
/// metadata lookups), logging into `log`.
fn spawn(config: &Path, log: &Path) -> Child {
    let mut c = aws_bin();
    c.args(["--config"])
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    c.spawn().expect("start rc-audit-hec")
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The world's config with `[dynamodb]` on `url` and the admin endpoint on `admin`.
fn both(w: &World, url: &str, admin: &str) -> String {
    w.toml("", "batch_max_events = 50")
        .replace("listen = \"\"", &format!("listen = \"{admin}\""))
        + &format!(
            "\n[dynamodb]\ntable = \"audit\"\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n"
        )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: String) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_down_never_delays_dynamodb_and_a_paused_dynamodb_never_delays_hec() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = dynamo(&dynamo_config(&db.url(), "audit")).await;
    let w = World::new(1).await;
    w.seed(0, 300, 7);
    let generated: BTreeSet<String> = w.generated(0).into_iter().collect();
    let port = free_port();
    let config = w.dir.path().join("config.toml");
    std::fs::write(&config, both(&w, &db.url(), &format!("127.0.0.1:{port}"))).unwrap();
    let log = w.dir.path().join("run.log");

    // 1. The table does not exist yet: DynamoDB is paused (a configuration problem), HEC is up.
    let child = spawn(&config, &log);
    let hec_done = eventually(Duration::from_secs(60), || {
        w.received().len() == generated.len()
    })
    .await;
    assert!(hec_done, "HEC got everything while DynamoDB was paused");
    common::assert_each_once(&w, &[0]);
    let healthz = get(format!("http://127.0.0.1:{port}/healthz")).await;
    let doc: serde_json::Value = serde_json::from_str(&healthz).unwrap();
    assert_eq!(
        doc["components"]["dynamodb"]["state"], "failing",
        "{healthz}"
    );
    let metrics = get(format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        metrics.contains("rc_audit_hec_component_up{component=\"dynamodb\"} 0"),
        "{metrics}"
    );

    // 2. The table is created: DynamoDB catches up by itself.
    create_table(&d, &dynamo_config(&db.url(), "audit"))
        .await
        .unwrap();
    let mut caught_up = false;
    for _ in 0..300 {
        if count(&d).await == generated.len() as i32 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(caught_up, "DynamoDB resumed once the table existed");

    // 3. HEC goes down; new records reach DynamoDB anyway.
    w.hec.update_faults(|f| f.busy = true);
    let before = w.received().len();
    let now = chrono::Utc::now();
    w.rc.generate(
        &w.accounts[0].account_id,
        200,
        now - chrono::TimeDelta::minutes(5),
        now,
        8,
    );
    let all: BTreeSet<String> = w.generated(0).into_iter().collect();
    let mut flowed = false;
    for _ in 0..300 {
        if count(&d).await == all.len() as i32 {
            flowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(flowed, "DynamoDB kept flowing while HEC was down");
    assert_eq!(w.received().len(), before, "HEC was down meanwhile");
    w.hec.update_faults(|f| f.busy = false);
    let hec_done = eventually(Duration::from_secs(60), || w.received().len() == all.len()).await;
    assert!(hec_done, "HEC caught up once back");
    stop(child);

    let in_table: BTreeSet<String> = items(&d).await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(in_table, all, "DynamoDB holds every record, once");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("delivery to DynamoDB paused") && text.contains("audit"),
        "the pause is in the log, with the table: {text}"
    );
    assert!(
        !text.contains("test-secret-not-a-real-one"),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_delivery_leave_dynamodb_with_every_record_exactly_once() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "audit");
    let d = dynamo(&cfg).await;
    create_table(&d, &cfg).await.unwrap();
    let w = World::new(2).await;
    w.seed(0, 1_500, 11);
    w.seed(1, 1_500, 12);
    let config = w.dir.path().join("config.toml");
    std::fs::write(&config, both(&w, &db.url(), "")).unwrap();
    let log = w.dir.path().join("run.log");
    let mut at_kills = Vec::new();
    for _ in 0..6 {
        let mut child = spawn(&config, &log);
        tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(0..500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        at_kills.push(count(&d).await);
    }
    eprintln!("items in DynamoDB after each kill: {at_kills:?}");
    assert!(
        at_kills.iter().any(|&n| n > 0 && n < 3_000),
        "at least one kill landed while DynamoDB was being written: {at_kills:?}"
    );
    let child = spawn(&config, &log);
    let want: BTreeSet<(String, String)> = [0, 1]
        .iter()
        .flat_map(|&i| {
            w.generated(i)
                .into_iter()
                .map(move |id| (World::name(i), id))
        })
        .collect();
    let at_hec = || {
        let got = w.received();
        want.iter().all(|(_, id)| got.contains_key(id))
    };
    let mut done = false;
    for _ in 0..600 {
        if count(&d).await == want.len() as i32 && at_hec() {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(child);
    assert!(
        done,
        "every record reached DynamoDB and HEC after the kills: {} of {} in DynamoDB, {} at HEC; log:\n{}",
        count(&d).await,
        want.len(),
        w.received().len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let got = items(&d).await;
    let distinct: BTreeSet<(String, String)> = got.iter().cloned().collect();
    assert_eq!(got.len(), distinct.len());
    assert_eq!(
        distinct, want,
        "each record exactly once, under its own account"
    );
}

/// `bin()` with fake AWS credentials and no AWS files or instance metadata.
fn aws_bin() -> std::process::Command {
    let mut c = common::bin();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTESTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-not-a-real-one")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_table_and_create_table_makes_it_pass() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let w = World::new(1).await;
    let dir = w.dir.path();
    let config = dir.join("config.toml");
    // DynamoDB only: no [hec] at all.
    let toml = both(&w, &db.url(), "");
    let start = toml.find("[hec]").unwrap();
    let end = toml[start..].find("[spool]").unwrap() + start;
    std::fs::write(&config, format!("{}{}", &toml[..start], &toml[end..])).unwrap();
    let run = |args: &'static [&'static str]| {
        let mut c = aws_bin();
        c.arg("--config").arg(&config).args(args);
        common::output(c)
    };

    let before = run(&["check"]).await;
    let text = common::text(&before);
    assert_eq!(before.status.code(), Some(78), "{text}");
    assert!(text.contains("dynamodb table audit"), "{text}");
    assert!(
        text.contains("dynamodb create-table"),
        "the fix is named: {text}"
    );
    assert!(!text.contains("HEC "), "no HEC configured: {text}");

    let created = run(&["dynamodb", "create-table"]).await;
    let text = common::text(&created);
    assert_eq!(created.status.code(), Some(0), "{text}");
    assert!(text.contains("created"), "{text}");
    let again = run(&["dynamodb", "create-table"]).await;
    let text = common::text(&again);
    assert_eq!(again.status.code(), Some(0), "a second run is fine: {text}");
    assert!(text.contains("exists"), "{text}");

    let after = run(&["check"]).await;
    let text = common::text(&after);
    assert_eq!(after.status.code(), Some(0), "{text}");
    assert!(!text.contains("test-secret-not-a-real-one"), "{text}");

    // A table managed elsewhere: the command refuses, as a configuration matter.
    let managed = std::fs::read_to_string(&config).unwrap() + "create_table = false\n";
    std::fs::write(&config, managed).unwrap();
    let refused = run(&["dynamodb", "create-table"]).await;
    let text = common::text(&refused);
    assert_eq!(refused.status.code(), Some(78), "{text}");
    assert!(text.contains("create_table = false"), "{text}");
}

#[tokio::test]
async fn a_config_with_no_destination_exits_78_naming_both_sections() {
    let w = World::new(1).await;
    let toml = w.toml("", "");
    let start = toml.find("[hec]").unwrap();
    let end = toml[start..].find("[spool]").unwrap() + start;
    let config = w.dir.path().join("config.toml");
    std::fs::write(&config, format!("{}{}", &toml[..start], &toml[end..])).unwrap();
    let mut c = aws_bin();
    c.arg("--config").arg(&config).args(["check", "--offline"]);
    let out = common::output(c).await;
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("no destination") && text.contains("[dynamodb]"),
        "{text}"
    );
}
