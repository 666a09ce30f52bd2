//! `rc-audit-hec demo`: the real pipeline (real HTTP, real spool) against the built-in
//! simulators on loopback, with a scripted HEC outage, ending in a summary a newcomer can read.
//!
//! Script: two simulated accounts hold a day of audit records; the forwarder polls and delivers
//! them; then HEC goes down while new records keep arriving (they wait in the spool), a token
//! expires, one record shows up late but inside the poll overlap (live polling catches it), and
//! one shows up later than the overlap (live polling has moved past it: reconciliation finds
//! its period one short and repairs it); then HEC comes back and the backlog drains. The demo
//! counts every record id the simulator generated against what HEC received: lost and
//! duplicated must both be 0. Its clock runs in seconds: a 5 s poll overlap and reconciliation
//! of 5 s periods 15 s after they close (a day, two hours after, in production).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::config::{Config, ConfigError, LoadEnv, LogFormat};
use crate::pipeline::{Options, Pipeline};
use crate::retry::RetryPolicy;
use crate::sim::hec::{HecSim, HecSimConfig};
use crate::sim::records::generate_records;
use crate::sim::ringcentral::{MAX_RECORDS_PER_ACCOUNT, RcSim, RcSimConfig, SimAccount};
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
    /// Records asked for with `--records` beyond what RingCentral keeps (the newest 10,000 per
    /// account): dropped by the simulator as by the API, so not counted as lost.
    pub beyond_cap: usize,
    /// Whether the directory was temporary (removed when the demo ends).
    pub temporary: bool,
    /// Poll windows that came near RingCentral's 10,000-record cap.
    pub near_limit: u64,
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
    /// Reconciliation results, per account and period.
    pub reconciliations: Vec<crate::reconcile::Reconciliation>,
    /// The JSONL file of received events.
    pub received_path: PathBuf,
    /// The spool database.
    pub spool_path: PathBuf,
}

impl crate::exit::Code for DemoSummary {
    /// 1 when a generated record never reached HEC (the demo's whole point), else 0.
    fn exit_code(&self) -> u8 {
        if self.lost == 0 {
            crate::exit::OK
        } else {
            crate::exit::FAILURE
        }
    }
}

impl super::Report for DemoSummary {
    /// Nothing more: [`run`] told the story and the summary as it went.
    fn print(&self) -> Result<(), super::Error> {
        Ok(())
    }
}

const LIVE_RECORDS: usize = 400;
/// The demo's reconciliation period (a day in production).
const RECONCILE_PERIOD: Duration = Duration::from_secs(5);
const HEC_TOKEN: &str = "00000000-demo-demo-demo-000000000000";

/// Runs the demo and prints its story and summary on stdout.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, Error> {
    init_logging(LogFormat::Text, "warn");
    let started = Instant::now();
    let (dir, _cleanup) = match opts.dir {
        Some(d) => (d, None),
        None => {
            let d = std::env::temp_dir().join(format!(
                "rc-audit-hec-demo-{}-{}",
                std::process::id(),
                Utc::now().format("%Y%m%d%H%M%S")
            ));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let received_path = dir.join("hec-received.jsonl");
    if remove_previous_run(&dir).with_context(|| format!("cleaning {}", dir.display()))? {
        println!(
            "(removed the previous demo's spool and received events from {}: every demo starts fresh)",
            dir.display()
        );
    }

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
        ..RcSimConfig::default()
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
    let held: usize = accounts
        .iter()
        .map(|a| rc.records(&a.account_id).len())
        .sum();
    println!(
        "rc-audit-hec demo: the real forwarder against simulated RingCentral and Splunk HEC on loopback"
    );
    println!(
        "  RingCentral simulator {} : 2 accounts, {held} audit records over the last day",
        rc.url(),
    );
    if held < opts.records {
        println!(
            "  (asked for {}, but RingCentral keeps at most the newest {} records per account, and so \
             does the simulator: the oldest {} are out of reach of any client. The forwarder cannot \
             recover them; it warns and counts rc_audit_hec_windows_near_limit_total when a window \
             reaches 9,000 records, so polling more often keeps a real account below the cap)",
            opts.records,
            MAX_RECORDS_PER_ACCOUNT,
            opts.records - held
        );
    }
    println!(
        "  HEC simulator         {} : writes what it accepts to {}",
        hec.url(),
        received_path.display()
    );

    let mut config = demo_config(&rc, &hec, &accounts, &dir)?;
    // Scaled down past what the config accepts (periods of at least a minute): the demo's few
    // seconds hold a dozen periods, each closed for `delay` before it is counted.
    config.reconcile.period = RECONCILE_PERIOD;
    config.reconcile.delay = Duration::from_secs(15);
    config.reconcile.lookback = Duration::from_secs(30);
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
    let initial = held;
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
            let t = Utc::now() - TimeDelta::seconds(3);
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
            // And one whose eventTime is further back than the overlap: live polling never
            // sees it; reconciliation finds its period short and repairs it.
            let t = Utc::now() - TimeDelta::seconds(10);
            let recs = generate_records(
                8,
                &a.account_id,
                &a.account_name,
                1,
                t,
                t + TimeDelta::milliseconds(1),
            );
            rc.add_records(&a.account_id, recs);
            live_added += 2;
            late_added = true;
            rc.expire_tokens();
            println!(
                "   (a record 3 s late became visible, inside the 5 s poll overlap; one 10 s late, behind it; and RingCentral expired every access token)"
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
    // Until every record RingCentral holds arrived (counting would not do: the record shown
    // late arrives only once reconciliation repaired its period, and records beyond the
    // simulator's cap may arrive too).
    let missing = || {
        let received: std::collections::HashSet<String> = hec
            .events()
            .iter()
            .filter_map(|e| e.pointer("/event/id")?.as_str().map(str::to_string))
            .collect();
        accounts
            .iter()
            .flat_map(|a| rc.records(&a.account_id))
            .filter(|r| {
                r.get("id")
                    .and_then(|v| v.as_str())
                    .is_some_and(|id| !received.contains(id))
            })
            .count()
    };
    wait_until(deadline, || missing() == 0).await;
    // Let the pollers make one more pass so any straggler would show up as a duplicate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reconciliations = spool
        .run(|s| s.reconciliations(None, 0))
        .await
        .unwrap_or_default();
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
        beyond_cap: opts.records.saturating_sub(held),
        temporary: _cleanup.is_some(),
        near_limit: Stats::get(&stats.windows_near_limit),
        generated,
        polled: Stats::get(&stats.records_polled),
        spooled_during_outage: max_depth,
        delivered: received.len(),
        lost,
        duplicated: total_received - received.len(),
        reconciliations,
        received_path,
        spool_path,
    };
    print_summary(&summary, started.elapsed());
    Ok(summary)
}

/// Removes what an earlier demo left in `dir` (its spool files and received events), so a demo
/// run again in the same directory starts with a fresh simulator *and* a fresh spool: an old
/// cursor against a new simulator would skip its records. Only the demo's own files are
/// touched. Returns whether there was anything.
fn remove_previous_run(dir: &Path) -> std::io::Result<bool> {
    let state = dir.join("state");
    let mut removed = false;
    let files = [
        "spool.db",
        "spool.db-wal",
        "spool.db-shm",
        "spool.lock",
        "spool.clean",
    ];
    for path in files
        .iter()
        .map(|f| state.join(f))
        .chain([dir.join("hec-received.jsonl")])
    {
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The demo's temporary directory (no `--dir`): removed when the demo ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn demo_config(
    rc: &RcSim,
    hec: &HecSim,
    accounts: &[SimAccount],
    dir: &std::path::Path,
) -> Result<Config, ConfigError> {
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
overlap = "5s"
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
    Config::from_toml_str(&toml, &LoadEnv::default())
}

async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_summary(s: &DemoSummary, took: Duration) {
    println!("\nSummary ({:.1}s)", took.as_secs_f64());
    if s.beyond_cap > 0 {
        println!(
            "  asked for, beyond RingCentral's cap     {:>7}  (never retrievable, by any client)",
            s.beyond_cap
        );
    }
    println!(
        "  records held by RingCentral             {:>7}",
        s.generated
    );
    if s.near_limit > 0 {
        println!(
            "  windows near the 10,000-record cap      {:>7}  (warned; poll more often)",
            s.near_limit
        );
    }
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
    print_reconciliations(&s.reconciliations);
    if s.temporary {
        println!(
            "  received events and spool were in a temporary directory, removed now (--dir DIR keeps them)"
        );
    } else {
        println!("  received events: {}", s.received_path.display());
        println!("  spool:           {}", s.spool_path.display());
    }
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

/// The reconciliation lines of the summary: how many periods were complete, repaired and
/// short (RingCentral's count against the forwarded), and each one that was not complete.
fn print_reconciliations(rs: &[crate::reconcile::Reconciliation]) {
    use crate::reconcile::Status;
    let n = |st: Status| rs.iter().filter(|r| r.status == st).count();
    let recovered: u64 = rs.iter().filter_map(|r| r.recovered).sum();
    println!(
        "  reconciled periods ({}s, RingCentral's count vs forwarded, per account):",
        RECONCILE_PERIOD.as_secs()
    );
    println!(
        "    complete                              {:>7}",
        n(Status::Complete)
    );
    println!(
        "    repaired                              {:>7}  ({recovered} record(s) recovered)",
        n(Status::Repaired)
    );
    println!(
        "    short                                 {:>7}",
        n(Status::Short)
    );
    for r in rs.iter().filter(|r| r.status != Status::Complete) {
        let at = crate::time::ms_rfc3339(r.period.start_ms).unwrap_or_default();
        println!(
            "    {} {at}: {}, RingCentral {} / forwarded {}{}",
            r.account,
            r.status.as_str(),
            r.ringcentral_count,
            r.forwarded_count,
            r.recovered
                .map(|n| format!(", {n} recovered by polling the period again"))
                .unwrap_or_default()
        );
    }
}

/// A fault switched from the second shell.
async fn control(
    rc: &RcSim,
    hec: &HecSim,
    ids: Vec<String>,
    fault: String,
) -> (axum::http::StatusCode, String) {
    match fault.as_str() {
        "hec-down" => hec.set_down(true).await,
        "hec-up" => hec.set_down(false).await,
        "hec-503" => hec.update_faults(|f| f.busy = true),
        "hec-429" => hec.update_faults(|f| f.queue_full_429 = true),
        "hec-ok" => hec.update_faults(|f| {
            f.busy = false;
            f.queue_full_429 = false;
        }),
        "rc-429" => rc.update_faults(|f| f.throttled_accounts.extend(ids)),
        "rc-ok" => rc.update_faults(|f| f.throttled_accounts.clear()),
        _ => {
            return (
                axum::http::StatusCode::NOT_FOUND,
                "faults: hec-down hec-up hec-503 hec-429 hec-ok rc-429 rc-ok\n".to_string(),
            );
        }
    }
    println!("fault control: {fault}");
    (axum::http::StatusCode::OK, format!("{fault}: done\n"))
}

/// `demo --serve`: the simulators on loopback for trying every command by hand, until Ctrl-C.
///
/// Writes into `dir` a ready `config.toml` (its first line names the fault-control URL) with the
/// secrets as files under `secrets/` (as systemd credentials would be), the spool under `state/`,
/// and the events HEC accepts to `hec-received.jsonl`. New audit records keep arriving (a few
/// every 5 seconds). Faults are switched from another shell with
/// `curl -X POST <control>/<fault>`: `hec-down`, `hec-up`, `hec-503`, `hec-429`, `hec-ok`,
/// `rc-429`, `rc-ok`.
pub async fn serve(
    dir: Option<PathBuf>,
    records: usize,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    init_logging(LogFormat::Text, "warn");
    let (dir, _cleanup) = match dir {
        Some(d) => (d, None),
        None => {
            let d = std::env::temp_dir().join(format!("rc-audit-hec-demo-{}", std::process::id()));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    std::fs::create_dir_all(dir.join("secrets"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    if remove_previous_run(&dir).with_context(|| format!("cleaning {}", dir.display()))? {
        println!(
            "(removed the previous demo's spool and received events from {})",
            dir.display()
        );
    }
    let accounts = [
        SimAccount::new("400100001", "Acme Corp"),
        SimAccount::new("400100002", "Globex Inc"),
    ];
    let rc = std::sync::Arc::new(
        RcSim::start(RcSimConfig {
            accounts: accounts.to_vec(),
            heavy_window: Duration::from_secs(10),
            auth_window: Duration::from_secs(10),
            penalty: Duration::from_secs(10),
            ..RcSimConfig::default()
        })
        .await
        .context("starting the RingCentral simulator")?,
    );
    let mut hec_cfg = HecSimConfig::new(HEC_TOKEN);
    hec_cfg.output = Some(dir.join("hec-received.jsonl"));
    let hec = std::sync::Arc::new(
        HecSim::start(hec_cfg)
            .await
            .context("starting the HEC simulator")?,
    );
    let now = Utc::now();
    for (i, a) in accounts.iter().enumerate() {
        rc.generate(
            &a.account_id,
            records / accounts.len(),
            now - TimeDelta::days(3),
            now - TimeDelta::seconds(30),
            42 + i as u64,
        );
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the fault-control port")?;
    let control_url = format!(
        "http://{}",
        listener
            .local_addr()
            .context("binding the fault-control port")?
    );
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the admin endpoint")?
        .port();
    let secret = |name: &str, value: &str| -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("secrets").join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?
            .write_all(value.as_bytes())?;
        Ok(path)
    };
    let mut toml = format!(
        "# rc-audit-hec demo --serve: simulators on loopback. Fault control: {control_url}\n\
         # The secrets are files, as systemd credentials would be.\n\n"
    );
    for a in &accounts {
        let name = a.account_name.to_lowercase().replace(' ', "-");
        toml.push_str(&format!(
            "[[accounts]]\nname = {name:?}\nserver_url = {:?}\nclient_id = {:?}\nclient_secret_file = {:?}\njwt_file = {:?}\n\n",
            rc.url(),
            a.client_id,
            secret(&format!("{name}-client-secret"), &a.client_secret)?,
            secret(&format!("{name}-jwt"), &a.jwt)?,
        ));
    }
    toml.push_str(&format!(
        "[poll]\ninterval = \"10s\"\nsettle_delay = \"2s\"\ninitial_lookback = \"24h\"\n\n\
         [hec]\nurl = {:?}\ntoken_file = {:?}\nindex = \"ringcentral\"\n\n\
         [spool]\ndir = {:?}\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        hec.url(),
        secret("hec-token", HEC_TOKEN)?,
        dir.join("state"),
    ));
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, &toml)
        .with_context(|| format!("writing {}", config_path.display()))?;
    // The demo's own config: a problem here is a configuration error like any other (78).
    Config::load(&config_path, &LoadEnv::default())?;

    let c = format!("rc-audit-hec --config {}", config_path.display());
    println!(
        "rc-audit-hec demo --serve: simulated RingCentral and Splunk HEC on loopback, until Ctrl-C"
    );
    println!(
        "  RingCentral {} : 2 accounts, {records} records over 3 days, a few new ones every 5s",
        rc.url()
    );
    println!(
        "  HEC         {} : accepted events go to {}",
        hec.url(),
        dir.join("hec-received.jsonl").display()
    );
    println!("  config      {}", config_path.display());
    println!("\nTry, from another shell:");
    for (cmd, what) in [
        ("check", "every account and HEC, with causes and fixes"),
        (
            "once",
            "one poll and delivery (exit 0, or 75 with HEC down)",
        ),
        (
            "run",
            "the service (Ctrl-C stops it); admin endpoint on 127.0.0.1:{admin_port}",
        ),
        (
            "backfill --from 3d",
            "the older history (hands over to `run` while it runs)",
        ),
        (
            "spool status",
            "depth, cursors, dead letters, the service's health",
        ),
        ("spool dead-letters", "events HEC refused"),
        ("once --dry-run | head", "what would be sent"),
        ("config", "the effective config"),
    ] {
        println!(
            "  {c} {cmd:<22} # {}",
            what.replace("{admin_port}", &admin_port.to_string())
        );
    }
    println!("\nFaults (curl -X POST {control_url}/<fault>):");
    println!("  hec-down, hec-up     HEC unreachable, and back");
    println!(
        "  hec-503, hec-429     HEC busy (503 code 9) or queue full (429); hec-ok clears both"
    );
    println!("  rc-429, rc-ok        RingCentral rate-limits every search, and stops");

    let ids: Vec<String> = accounts.iter().map(|a| a.account_id.clone()).collect();
    let router = axum::Router::new().route(
        "/{fault}",
        axum::routing::post({
            let (rc, hec) = (rc.clone(), hec.clone());
            move |axum::extract::Path(fault): axum::extract::Path<String>| {
                let (rc, hec, ids) = (rc.clone(), hec.clone(), ids.clone());
                async move { control(&rc, &hec, ids, fault).await }
            }
        }),
    );
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let mut seed = 5000;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let t = Utc::now();
                for a in &accounts {
                    seed += 1;
                    let recs = generate_records(seed, &a.account_id, &a.account_name, 3,
                        t - TimeDelta::seconds(3), t - TimeDelta::seconds(1));
                    rc.add_records(&a.account_id, recs);
                }
            }
        }
    }
    let _ = server.await;
    println!(
        "demo --serve: stopped{}",
        if _cleanup.is_some() {
            " (its temporary directory is removed; --dir DIR keeps it)"
        } else {
            ""
        }
    );
    Ok(())
}
