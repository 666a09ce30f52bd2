//! The heartbeat through the running service (`service::run`): spooled every interval, delivered
//! by the sink like a record, and, after a HEC outage, the heartbeats of the outage arrive late
//! and say that the forwarder was alive but cut off. Paused tokio time: 16 minutes of the
//! service's clock in a moment, against the HEC simulator.

mod common;

use std::time::Duration;

use common::{World, eventually};
use rc_audit_hec::config::{Config, LoadEnv};
use rc_audit_hec::pipeline::{Options, Pipeline};
use rc_audit_hec::service::ServiceOptions;
use rc_audit_hec::transform::{HEARTBEAT_SOURCETYPE, INTERNAL_SOURCE};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn heartbeats(w: &World) -> Vec<Value> {
    w.hec
        .events()
        .into_iter()
        .filter(|e| e["sourcetype"] == HEARTBEAT_SOURCETYPE)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn heartbeats_of_a_hec_outage_arrive_after_it_and_tell_the_forwarder_was_cut_off() {
    let w = World::new(1).await;
    w.seed(0, 5, 7);
    w.hec.set_down(true).await;
    let toml = w
        .toml("", "")
        .replace("interval = \"200ms\"", "interval = \"60s\"")
        .replace("[admin]", "[heartbeat]\ninterval = \"5m\"\n\n[admin]");
    let config = Config::from_toml_str(&toml, &LoadEnv::default()).unwrap();
    let p = Pipeline::open(config, Options::default()).unwrap();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run_with(ServiceOptions::default(), shutdown.clone()));

    // HEC down for 11 minutes: two heartbeats (5 and 10 minutes) wait in the spool.
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    assert_eq!(w.hec.accepted(), 0);
    w.hec.set_down(false).await;
    assert!(
        eventually(Duration::from_secs(120), || heartbeats(&w).len() >= 2).await,
        "the outage's heartbeats are delivered once HEC is back: {:?}",
        heartbeats(&w)
    );
    let late = heartbeats(&w);
    assert_eq!(late.len(), 2, "one per interval, none at start: {late:?}");
    for hb in &late {
        assert_eq!(hb["source"], INTERNAL_SOURCE);
        assert_eq!(hb["host"], "test");
        assert!(hb.get("fields").is_none(), "not a record: {hb}");
        let e = &hb["event"];
        assert_eq!(e["forwarder_host"], "test");
        assert_eq!(e["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(e["interval_s"], 300);
        assert_ne!(
            e["delivery_state"], "ok",
            "written while HEC was down, and says so: {e}"
        );
        assert!(e["delivery_reason"].is_string(), "{e}");
        assert_eq!(e["last_delivery"], Value::Null, "nothing delivered yet");
        assert!(
            e["spool_depth"].as_u64().unwrap() >= 5,
            "the records wait too: {e}"
        );
        assert!(e["spool_oldest_age_s"].is_number(), "{e}");
        let acct = &e["accounts"][0];
        assert_eq!(acct["account"], "acct0");
        assert_eq!(acct["state"], "ok", "RingCentral was fine: {e}");
        assert!(
            acct["cursor"].is_string() && acct["last_poll"].is_string(),
            "{e}"
        );
    }
    // The records arrived too, each once, beside the heartbeats (which carry no record id).
    let mut ids: Vec<String> = w
        .hec
        .events()
        .iter()
        .filter(|e| e["sourcetype"] != HEARTBEAT_SOURCETYPE)
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut generated = w.generated(0);
    generated.sort();
    assert_eq!(ids, generated);
    assert_eq!(w.hec.accepted(), 5 + 2);

    // Back to normal: the next heartbeat says so.
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert!(eventually(Duration::from_secs(60), || heartbeats(&w).len() >= 3).await);
    let now = &heartbeats(&w)[2]["event"];
    assert_eq!(now["delivery_state"], "ok", "{now}");
    assert!(now["last_delivery"].is_string(), "{now}");
    shutdown.cancel();
    service.await.unwrap().unwrap();
}
