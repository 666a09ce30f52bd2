//! Delivery guarantees under HEC faults: indexer acknowledgement, several URLs, timeouts.

mod common;

use std::time::Duration;

use common::{World, assert_each_once, eventually};
use rc_audit_hec::app::Pipeline;
use rc_audit_hec::sim::hec::{HecSim, HecSimConfig};
use rc_audit_hec::telemetry::Stats;
use tokio_util::sync::CancellationToken;

async fn spooled(w: &World, n: usize, hec: &str) -> Pipeline {
    w.seed(0, n, 7);
    let p = w.pipeline("", hec);
    p.pollers(None).remove(0).poll_window().await.unwrap();
    assert_eq!(p.spool.depth().unwrap(), n as u64);
    p
}

/// A second HEC simulator and a config listing both URLs.
async fn two_hecs(w: &World, hec: &str) -> (HecSim, rc_audit_hec::config::Config) {
    let second = HecSim::start(HecSimConfig::new(common::HEC_TOKEN))
        .await
        .unwrap();
    let urls = format!("urls = [\"{}\", \"{}\"]", w.hec.url(), second.url());
    let toml = w
        .toml("", hec)
        .replace(&format!("url = \"{}\"", w.hec.url()), &urls);
    let config = rc_audit_hec::config::Config::from_toml_str(&toml, &Default::default()).unwrap();
    (second, config)
}

async fn ack_world() -> World {
    let mut w = World::new(1).await;
    let mut cfg = HecSimConfig::new(common::HEC_TOKEN);
    cfg.ack = true;
    w.hec = HecSim::start(cfg).await.unwrap();
    w
}

#[tokio::test]
async fn with_use_ack_a_batch_leaves_the_spool_only_when_its_ack_reads_true() {
    let w = ack_world().await;
    w.hec
        .update_faults(|f| f.ack_delay = Duration::from_millis(1500));
    let p = spooled(&w, 60, "use_ack = true\nbatch_max_events = 20").await;
    let mut sink = p.sink().unwrap();
    let drain = tokio::spawn(async move { sink.drain(&CancellationToken::new()).await });
    assert!(eventually(Duration::from_secs(5), || w.hec.accepted() == 60).await);
    assert_eq!(
        p.spool.depth().unwrap(),
        60,
        "received is not indexed: nothing deleted before the ack"
    );
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.spool.depth().unwrap(), 0);
    assert_each_once(&w, &[0]);
    let acks = w
        .hec
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/ack"))
        .count();
    assert!(acks >= 2, "acks were polled ({acks})");
    assert!(
        w.hec.requests().iter().all(|r| r.channel.is_some()),
        "every request carries the channel"
    );
}

#[tokio::test]
async fn a_lost_ack_is_resent_after_the_ack_deadline() {
    let w = ack_world().await;
    w.hec.update_faults(|f| f.lose_acks = true);
    let p = spooled(&w, 10, "use_ack = true\nack_timeout = \"2s\"").await;
    let stats = p.stats.clone();
    let mut sink = p.sink().unwrap();
    let drain = tokio::spawn(async move { sink.drain(&CancellationToken::new()).await });
    assert!(eventually(Duration::from_secs(5), || w.hec.accepted() == 10).await);
    w.hec.update_faults(|f| f.lose_acks = false);
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(Stats::get(&stats.ack_resends), 1);
    assert_eq!(p.spool.depth().unwrap(), 0);
    // The resend is the documented duplicate: every record twice, none lost.
    let got = w.received();
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|n| *n == 2), "{got:?}");
}

#[tokio::test]
async fn use_ack_against_a_token_without_ack_falls_back_to_plain_delivery() {
    let w = World::new(1).await;
    let p = spooled(&w, 15, "use_ack = true").await;
    common::drain(&p).await;
    assert_each_once(&w, &[0]);
    assert_eq!(p.spool.depth().unwrap(), 0);
}

#[tokio::test]
async fn requests_rotate_over_urls_and_fail_over_when_one_is_down() {
    let w = World::new(1).await;
    let (second, config) = two_hecs(&w, "batch_max_events = 10").await;
    w.seed(0, 100, 8);
    let p = Pipeline::open(config, common::fast()).unwrap();
    let mut poller = p.pollers(None).remove(0);
    poller.poll_window().await.unwrap();

    // Both healthy: round-robin.
    let mut sink = p.sink().unwrap();
    let stop = CancellationToken::new();
    for _ in 0..4 {
        sink.step(&stop).await.unwrap();
    }
    assert_eq!((w.hec.accepted(), second.accepted()), (20, 20));

    // The first goes down: everything goes to the second, nothing is lost.
    w.hec.set_down(true).await;
    for _ in 0..3 {
        sink.step(&stop).await.unwrap();
    }
    assert_eq!((w.hec.accepted(), second.accepted()), (20, 50));
    assert_eq!(
        p.health.snapshot()[&format!("hec:{}", w.hec.url())].state,
        rc_audit_hec::telemetry::State::Degraded
    );

    // Back up: after its probe interval the health check returns it to the rotation.
    w.hec.set_down(false).await;
    tokio::time::sleep(rc_audit_hec::hec::client::PROBE_INTERVAL + Duration::from_millis(200))
        .await;
    sink.drain(&stop).await.unwrap();
    assert!(
        w.hec.accepted() > 20,
        "the recovered endpoint gets traffic again"
    );
    let total = w.hec.accepted() + second.accepted();
    assert_eq!(total, 100, "each event delivered exactly once across both");
}

#[tokio::test]
async fn a_busy_endpoint_is_skipped_for_a_healthy_one() {
    let w = World::new(1).await;
    let (second, config) = two_hecs(&w, "").await;
    // 503 with a long Retry-After: that endpoint waits, the delivery does not.
    w.hec.update_faults(|f| {
        f.busy = true;
        f.retry_after = Some(Duration::from_secs(60));
    });
    w.seed(0, 30, 9);
    let p = Pipeline::open(config, common::fast()).unwrap();
    p.pollers(None).remove(0).poll_window().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), common::drain(&p))
        .await
        .expect("failed over without waiting out Retry-After");
    assert_eq!(second.accepted(), 30);
    assert_eq!(
        w.hec.requests().iter().filter(|r| r.status == 503).count(),
        1,
        "one failure, then failover"
    );
}

#[tokio::test]
async fn a_hec_answering_after_the_timeout_gets_at_most_one_duplicate_batch() {
    let w = World::new(1).await;
    let p = spooled(&w, 10, "timeout = \"1s\"").await;
    w.hec
        .update_faults(|f| f.slow = Duration::from_millis(1500));
    let stats = p.stats.clone();
    tokio::time::timeout(Duration::from_secs(30), common::drain(&p))
        .await
        .expect("no endless resend loop");
    let requests = w
        .hec
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/event"))
        .count();
    assert_eq!(
        requests, 2,
        "the first attempt timed out, the second waited long enough"
    );
    assert_eq!(Stats::get(&stats.hec_timeouts), 1);
    let got = w.received();
    assert_eq!(got.len(), 10);
    assert!(
        got.values().all(|n| *n == 2),
        "exactly one duplicate batch: {got:?}"
    );
    assert_eq!(p.spool.depth().unwrap(), 0);
}

#[tokio::test]
async fn ack_switched_off_on_the_token_falls_back_to_plain_mode_without_loss() {
    let w = ack_world().await;
    w.hec.update_faults(|f| f.lose_acks = true);
    let p = spooled(&w, 30, "use_ack = true\nbatch_max_events = 10").await;
    let mut sink = p.sink().unwrap();
    let drain = tokio::spawn(async move { sink.drain(&CancellationToken::new()).await });
    assert!(eventually(Duration::from_secs(5), || w.hec.accepted() == 30).await);
    assert_eq!(p.spool.depth().unwrap(), 30, "awaiting acks");
    // The Splunk admin turns acknowledgement off: the ack endpoint now answers code 14.
    w.hec.set_ack(false);
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.spool.depth().unwrap(), 0);
    assert_each_once(&w, &[0]);
    assert!(
        w.hec
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/ack") && r.code == 14)
    );
}

#[tokio::test]
async fn the_simulator_acks_read_true_once() {
    let w = ack_world().await;
    let http = reqwest::Client::new();
    let channel = uuid::Uuid::new_v4().to_string();
    let auth = format!("Splunk {}", common::HEC_TOKEN);
    let sent: serde_json::Value = http
        .post(format!("{}/services/collector/event", w.hec.url()))
        .header("Authorization", &auth)
        .header("X-Splunk-Request-Channel", &channel)
        .body(r#"{"event":{"id":"a"}}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = sent["ackId"].as_u64().expect("an ackId");
    let ask = || async {
        http.post(format!(
            "{}/services/collector/ack?channel={channel}",
            w.hec.url()
        ))
        .header("Authorization", &auth)
        .json(&serde_json::json!({ "acks": [id] }))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()
    };
    assert_eq!(ask().await["acks"][id.to_string()], true);
    assert_eq!(
        ask().await["acks"][id.to_string()],
        false,
        "Splunk forgets an id once it read true"
    );
    // Without a channel, an ack-enabled token refuses events (code 10).
    let status = http
        .post(format!("{}/services/collector/event", w.hec.url()))
        .header("Authorization", &auth)
        .body(r#"{"event":1}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn with_use_ack_a_refused_event_is_dead_lettered_and_the_rest_confirmed_by_ack() {
    let w = ack_world().await;
    let p = spooled(&w, 30, "use_ack = true\nbatch_max_events = 10").await;
    let bad = w.generated(0)[13].clone();
    w.hec.update_faults(|f| {
        f.reject_event_ids.insert(bad.clone());
    });
    tokio::time::timeout(Duration::from_secs(15), common::drain(&p))
        .await
        .unwrap();
    // Nothing was deleted on a 400's word: every good record got an ack (some twice, allowed).
    let got = w.received();
    assert_eq!(got.len(), 29);
    assert!(!got.contains_key(&bad));
    assert_eq!(p.spool.depth().unwrap(), 0);
    let dead = p.spool.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record_id, bad);
}

#[tokio::test]
async fn a_failed_settle_after_acceptance_is_retried_not_resent() {
    let w = World::new(1).await;
    let p = spooled(&w, 10, "").await;
    p.spool.set_read_only(true).unwrap();
    let stop = CancellationToken::new();
    let mut sink = p.sink().unwrap();
    let drain = {
        let stop = stop.clone();
        tokio::spawn(async move { sink.drain(&stop).await })
    };
    assert!(eventually(Duration::from_secs(5), || w.hec.accepted() == 10).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        w.hec.requests().len(),
        1,
        "HEC has the batch: it is not sent again"
    );
    assert_eq!(
        p.health.snapshot()["hec"].state,
        rc_audit_hec::telemetry::State::Failing
    );
    p.spool.set_read_only(false).unwrap();
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.spool.depth().unwrap(), 0);
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_url_refusing_the_token_is_skipped_for_one_that_accepts_it() {
    let w = World::new(1).await;
    let (second, config) = two_hecs(&w, "").await;
    w.hec.set_token("this-indexer-has-another-token");
    w.seed(0, 20, 10);
    let p = Pipeline::open(config, common::fast()).unwrap();
    p.pollers(None).remove(0).poll_window().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), common::drain(&p))
        .await
        .expect("no backoff while a URL works");
    assert_eq!(second.accepted(), 20);
}
