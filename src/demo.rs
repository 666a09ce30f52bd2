//! `rc-audit-hec demo`: the real pipeline (real HTTP, real spool) against the built-in
//! simulators on loopback, with a scripted HEC outage, ending in a summary a newcomer can read.
//!
//! Script: two simulated accounts hold a day of audit records; the forwarder polls and delivers
//! them; then HEC goes down while new records keep arriving (they wait in the spool), a token
//! expires, and one record shows up late (its `eventTime` already behind the last poll); then HEC
//! comes back and the backlog drains. The demo counts every record id the simulator generated
//! against what HEC received: lost and duplicated must both be 0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::{Options, Pipeline};
use crate::config::{Config, LoadEnv, LogFormat};
use crate::retry::RetryPolicy;
use crate::sim::hec::{HecSim, HecSimConfig};
use crate::sim::records::generate_records;
use crate::sim::ringcentral::{RcSim, RcSimConfig, SimAccount};
use crate::telemetry::{Stats, init_logging};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep the spool and the received events; a new temp directory when `None`.
    pub dir: Option<PathBuf>,
    /// Records in the simulated accounts before the forwarder starts.
    pub records: usize,
    /// Length of the HEC outage.
    pub outage: Duration,
}

/// What the demo observed.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Records the RingCentral simulator holds (all of them should reach HEC).
    pub generated: usize,
    /// Records the forwarder received from RingCentral (overlapping windows re-read some).
    pub polled: u64,
    /// Largest spool depth while HEC was down.
    pub spooled_during_outage: u64,
    /// Distinct records HEC received.
    pub delivered: usize,
    /// Generated records HEC never received.
    pub lost: usize,
    /// Extra copies HEC received.
    pub duplicated: usize,
    /// The JSONL file of received events.
    pub received_path: PathBuf,
    /// The spool database.
    pub spool_path: PathBuf,
}

const LIVE_RECORDS: usize = 400;
const HEC_TOKEN: &str = "00000000-demo-demo-demo-000000000000";

/// Runs the demo and prints its story and summary on stdout.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    init_logging(LogFormat::Text, "warn");
    let started = Instant::now();
    let dir = match opts.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "rc-audit-hec-demo-{}-{}",
            std::process::id(),
            Utc::now().format("%Y%m%d%H%M%S")
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let received_path = dir.join("hec-received.jsonl");
    let _ = std::fs::remove_file(&received_path);

    let accounts = [
        SimAccount::new("400100001", "Acme Corp"),
        SimAccount::new("400100002", "Globex Inc"),
    ];
    let rc = RcSim::start(RcSimConfig {
        accounts: accounts.to_vec(),
        token_ttl: Duration::from_secs(6),
        heavy_limit: 10,
        heavy_window: Duration::from_secs(2),
        auth_limit: 5,
        auth_window: Duration::from_secs(2),
        penalty: Duration::from_secs(1),
        rate_limits: true,
    })
    .await
    .context("starting the RingCentral simulator")?;
    let mut hec_cfg = HecSimConfig::new(HEC_TOKEN);
    hec_cfg.output = Some(received_path.clone());
    let hec = HecSim::start(hec_cfg)
        .await
        .context("starting the HEC simulator")?;

    let now = Utc::now();
    let per_account = opts.records / accounts.len();
    for (i, a) in accounts.iter().enumerate() {
        let n = per_account
            + if i == 0 {
                opts.records % accounts.len()
            } else {
                0
            };
        rc.generate(
            &a.account_id,
            n,
            now - TimeDelta::hours(23),
            now - TimeDelta::seconds(30),
            42 + i as u64,
        );
    }
    println!(
        "rc-audit-hec demo: the real forwarder against simulated RingCentral and Splunk HEC on loopback"
    );
    println!(
        "  RingCentral simulator {} : 2 accounts, {} audit records over the last day",
        rc.url(),
        opts.records
    );
    println!(
        "  HEC simulator         {} : writes what it accepts to {}",
        hec.url(),
        received_path.display()
    );

    let config = demo_config(&rc, &hec, &accounts, &dir)?;
    let pipeline = Pipeline::open(
        config,
        Options {
            retry: RetryPolicy {
                min: Duration::from_millis(200),
                max: Duration::from_secs(1),
            },
            ..Options::default()
        },
    )?;
    let spool = pipeline.spool.clone();
    let stats = pipeline.stats.clone();
    let spool_path = spool.path().to_path_buf();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(pipeline.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(50);

    println!(
        "\n1. Backfilling the last 24 hours (pages of 1000, paced by the simulator's rate limits)..."
    );
    let initial = opts.records;
    wait_until(deadline, || hec.accepted() >= initial).await;
    println!(
        "   {} events delivered to HEC ({:.1}s)",
        hec.accepted(),
        started.elapsed().as_secs_f64()
    );

    println!(
        "\n2. HEC outage for {}s while new audit records keep arriving...",
        opts.outage.as_secs()
    );
    hec.set_down(true).await;
    let outage_end = Instant::now() + opts.outage;
    let mut live_added = 0;
    let mut max_depth = 0;
    let mut late_added = false;
    let mut seed = 1000;
    while Instant::now() < outage_end {
        if live_added < LIVE_RECORDS {
            let n = (LIVE_RECORDS / 8).min(LIVE_RECORDS - live_added);
            let t = Utc::now();
            for a in &accounts {
                seed += 1;
                let recs = generate_records(
                    seed,
                    &a.account_id,
                    &a.account_name,
                    n / 2,
                    t - TimeDelta::seconds(4),
                    t - TimeDelta::seconds(2),
                );
                live_added += recs.len();
                rc.add_records(&a.account_id, recs);
            }
        }
        if !late_added && Instant::now() + opts.outage / 2 > outage_end {
            // A record whose eventTime is already behind the last poll: the window overlap catches it.
            let t = Utc::now() - TimeDelta::minutes(3);
            let a = &accounts[0];
            let recs = generate_records(
                7,
                &a.account_id,
                &a.account_name,
                1,
                t,
                t + TimeDelta::milliseconds(1),
            );
            rc.add_records(&a.account_id, recs);
            live_added += 1;
            late_added = true;
            rc.expire_tokens();
            println!(
                "   (a record 3 minutes late became visible, and RingCentral expired every access token)"
            );
        }
        let depth = spool.run(|s| s.depth()).await.unwrap_or(0);
        max_depth = max_depth.max(depth);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let depth = spool.run(|s| s.depth()).await.unwrap_or(0);
    max_depth = max_depth.max(depth);
    println!(
        "   {live_added} new records arrived; {max_depth} waited in the spool ({})",
        spool_path.display()
    );

    println!("\n3. HEC is back: draining the spool...");
    hec.set_down(false).await;
    let generated: usize = accounts
        .iter()
        .map(|a| rc.records(&a.account_id).len())
        .sum();
    wait_until(deadline, || hec.accepted() >= generated).await;
    // Let the pollers make one more pass so any straggler would show up as a duplicate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    service.await.context("the forwarder task panicked")??;

    let mut received: HashMap<String, usize> = HashMap::new();
    for e in hec.events() {
        if let Some(id) = e.pointer("/event/id").and_then(|v| v.as_str()) {
            *received.entry(id.to_string()).or_default() += 1;
        }
    }
    let mut lost = 0;
    for a in &accounts {
        for r in rc.records(&a.account_id) {
            let id = r.get("id").and_then(|v| v.as_str()).unwrap_or_default();
            if !received.contains_key(id) {
                lost += 1;
            }
        }
    }
    let total_received: usize = received.values().sum();
    let summary = DemoSummary {
        generated,
        polled: Stats::get(&stats.records_polled),
        spooled_during_outage: max_depth,
        delivered: received.len(),
        lost,
        duplicated: total_received - received.len(),
        received_path,
        spool_path,
    };
    print_summary(&summary, started.elapsed());
    Ok(summary)
}

fn demo_config(
    rc: &RcSim,
    hec: &HecSim,
    accounts: &[SimAccount],
    dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let mut toml = String::new();
    for a in accounts {
        toml.push_str(&format!(
            "[[accounts]]\nname = {:?}\nserver_url = {:?}\nclient_id = {:?}\nclient_secret = {:?}\njwt = {:?}\n\n",
            a.account_name.to_lowercase().replace(' ', "-"),
            rc.url(),
            a.client_id,
            a.client_secret,
            a.jwt
        ));
    }
    toml.push_str(&format!(
        r#"[poll]
interval = "1s"
overlap = "10m"
settle_delay = "1s"
initial_lookback = "24h"

[hec]
url = {:?}
token = {:?}
index = "ringcentral"
host = "demo-forwarder"
batch_max_events = 250

[spool]
dir = {:?}

[admin]
listen = ""
"#,
        hec.url(),
        HEC_TOKEN,
        dir.join("state"),
    ));
    Ok(Config::from_toml_str(&toml, &LoadEnv::default())?)
}

async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_summary(s: &DemoSummary, took: Duration) {
    println!("\nSummary ({:.1}s)", took.as_secs_f64());
    println!(
        "  records generated by RingCentral        {:>7}",
        s.generated
    );
    println!("  records polled (overlaps re-read some)  {:>7}", s.polled);
    println!(
        "  spooled during the HEC outage           {:>7}",
        s.spooled_during_outage
    );
    println!(
        "  delivered to HEC                        {:>7}",
        s.delivered
    );
    println!("  lost                                    {:>7}", s.lost);
    println!(
        "  duplicated                              {:>7}",
        s.duplicated
    );
    println!("  received events: {}", s.received_path.display());
    println!("  spool:           {}", s.spool_path.display());
    if s.lost == 0 {
        println!(
            "\nNothing lost. Next: cp examples/config.example.toml config.toml, fill in your accounts and HEC token, then `rc-audit-hec --config config.toml check`."
        );
    } else {
        println!(
            "\n{} record(s) LOST: this is a bug, please report it.",
            s.lost
        );
    }
}
