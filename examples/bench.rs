//! Benchmarks for the moments that matter: a big backfill, a backlog drain after an outage, many
//! accounts. Run them in release mode:
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench -- all --runs 3
//! cargo run --release --example bench -- drain --records 1000000 --runs 3
//! cargo run --release --example bench -- accounts --accounts 500,2000,10000 --runs 3
//! ```
//!
//! `--help` lists the subcommands and options. Drain, footprint and accounts run the real
//! release binary (`target/release/rc-audit-hec`) as a child process, so its CPU time, peak RSS,
//! threads and time to READY are its own, read from `/proc`. Output is Markdown rows for
//! BENCHMARKS.md.
//! `drain` options `--baseline-bin` (drain the same backlog with an older binary too, alternating
//! per run) and `--hec-latency-ms` (a receiver slower than the forwarder) are described in `--help`.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use clap::{Parser, Subcommand};
use rc_audit_hec::config::{Config, Destination, DynamoDbConfig, LoadEnv};
use rc_audit_hec::hec::batch::build_body;
use rc_audit_hec::ringcentral::model::SearchPage;
use rc_audit_hec::sim::hec::{HecSim, HecSimConfig};
use rc_audit_hec::sim::records::generate_records;
use rc_audit_hec::sim::ringcentral::{RcSim, RcSimConfig, SimAccount};
use rc_audit_hec::spool::{NewRecord, Spool};
use rc_audit_hec::transform::{Transformer, inspect_record};

const TOKEN: &str = "00000000-0000-4000-8000-000000000000";

/// Benchmarks of rc-audit-hec. Build the release binary first (`cargo build --release`): the
/// drain, footprint and accounts benchmarks run it as a child process. Each measure is repeated
/// `--runs` times; rows give the median, min and max, as Markdown for BENCHMARKS.md.
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    /// What to measure (all of them when left out).
    #[command(subcommand)]
    what: Option<What>,
    /// How often each measure is repeated (median, min and max are reported).
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Backlog size, in events, of the drain benchmarks.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    records: usize,
    /// Account counts of the accounts benchmark, comma-separated (one process each).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_values_t = [500, 2_000, 10_000]
    )]
    accounts: Vec<usize>,
    /// accounts: the forwarder binary to measure (default: target/release/rc-audit-hec).
    #[arg(long, global = true, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// drain, accounts: a second forwarder binary measured side by side with the release
    /// binary, run for run (e.g. the main branch's release build, to compare before and after;
    /// the drain hands it the same backlog).
    #[arg(long, global = true, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// drain: the HEC simulator takes this long per request (a receiver slower than the
    /// forwarder, as a real indexer that parses and writes every event is), so the drain is
    /// bound by the receiver and the forwarder's serial work per batch shows.
    #[arg(long, global = true, value_name = "MS")]
    hec_latency_ms: Option<u64>,
    /// accounts: `poll.interval` of every account, in seconds. Each run lasts until every
    /// account has polled twice (or 3 intervals and 2 minutes have passed).
    #[arg(long, global = true, default_value_t = 60)]
    interval: u64,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum What {
    /// Transform: records per second against a serde_json parse-and-reserialize floor.
    Transform,
    /// Spool: enqueue (pages of 1000, cursor commit) and read + delete rates, scrape cost.
    Spool,
    /// Gzip levels 1, 3 and 6 on real batches: speed and ratio.
    Gzip,
    /// Poll: records per second from the RingCentral simulator into the spool (no limits).
    Poll,
    /// Drain: `rc-audit-hec once` delivering a spooled backlog of `--records` events to the
    /// HEC simulator: rate, CPU, peak RSS, and the simulator's own capacity.
    Drain,
    /// Drain in plain mode and with `hec.use_ack`, alternating per run: the ratio.
    DrainAck,
    /// DynamoDB drain: `rc-audit-hec once` writing a spooled backlog of `--records` events into
    /// dynalite (DynamoDB on Node.js, from `.ci/node` or `$DYNALITE_DIR`; not part of
    /// `all`): items per second, the forwarder's CPU and peak RSS. dynalite is far slower than
    /// DynamoDB, so the rate bounds the test setup, and the CPU per item is the forwarder's cost.
    DrainDynamodb,
    /// Footprint: binary size, time to READY (empty and full spool), idle RSS.
    Footprint,
    /// Many accounts: `rc-audit-hec run` with `--accounts` accounts against the RingCentral
    /// simulator (RingCentral's default rate limits, one record per account): peak RSS
    /// (VmHWM), peak threads, and how many accounts polled twice, each within its interval,
    /// with no 429. With `--baseline`, the same for that binary, run for run.
    Accounts,
    /// Everything above, in that order.
    All,
}

struct Opts {
    runs: usize,
    records: usize,
    /// `--baseline`: an older binary measured side by side (drain, accounts).
    baseline: Option<PathBuf>,
    /// `--hec-latency-ms`: the HEC simulator's time per request in the drain.
    hec_latency: Option<Duration>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let what = cli.what.unwrap_or(What::All);
    let opts = Opts {
        runs: cli.runs.max(1),
        records: cli.records,
        baseline: cli.baseline.clone(),
        hec_latency: cli.hec_latency_ms.map(Duration::from_millis),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("| measure | median | min | max | unit |\n| --- | --- | --- | --- | --- |");
    let all = what == What::All;
    if all || what == What::Transform {
        transform(&opts)?;
    }
    if all || what == What::Spool {
        spool(&opts)?;
    }
    if all || what == What::Gzip {
        gzip_levels(&opts)?;
    }
    if all || what == What::Poll {
        rt.block_on(poll(&opts))?;
    }
    if all || what == What::Drain || what == What::Footprint {
        rt.block_on(drain_and_footprint(
            &opts,
            all || what == What::Drain,
            all || what == What::Footprint,
        ))?;
    }
    if all || what == What::DrainAck {
        rt.block_on(drain_ack(&opts))?;
    }
    if what == What::DrainDynamodb {
        rt.block_on(drain_dynamodb(&opts))?;
    }
    if all || what == What::Accounts {
        rt.block_on(accounts(&opts, &cli))?;
    }
    Ok(())
}

fn row(name: &str, unit: &str, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = samples[samples.len() / 2];
    let fmt = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    println!(
        "| {name} | {} | {} | {} | {unit} |",
        fmt(median),
        fmt(samples[0]),
        fmt(samples[samples.len() - 1])
    );
    let _ = std::io::stdout().flush();
}

fn config_toml(
    rc_url: &str,
    account: &SimAccount,
    hec_url: &str,
    dir: &Path,
    extra_hec: &str,
) -> String {
    format!(
        r#"[[accounts]]
name = "bench"
server_url = "{rc_url}"
client_id = "{}"
client_secret = "{}"
jwt = "{}"
[poll]
interval = "1h"
settle_delay = "0s"
[hec]
url = "{hec_url}"
token = "{TOKEN}"
host = "bench"
{extra_hec}
[spool]
dir = {:?}
max_bytes = "100GiB"
[admin]
listen = ""
"#,
        account.client_id, account.client_secret, account.jwt, dir
    )
}

fn transformer() -> anyhow::Result<Transformer> {
    let acct = SimAccount::new("400100001", "Acme Corp");
    let c = Config::from_toml_str(
        &config_toml(
            "http://127.0.0.1:1",
            &acct,
            "http://127.0.0.1:1",
            Path::new("/tmp"),
            "",
        ),
        &LoadEnv::default(),
    )?;
    Ok(Transformer::new(&c.envelope_settings(), &c.accounts[0]))
}

/// Pages of 1000 realistic records as RingCentral would send them.
fn pages(n_pages: usize) -> Vec<String> {
    let now = Utc::now();
    (0..n_pages)
        .map(|p| {
            let records = generate_records(
                p as u64,
                "400100001",
                "Acme Corp",
                1000,
                now - TimeDelta::days(30),
                now,
            );
            serde_json::json!({"records": records, "paging": {"page": 1, "perPage": 1000}})
                .to_string()
        })
        .collect()
}

fn transform(opts: &Opts) -> anyhow::Result<()> {
    let pages = pages(20);
    let bytes: usize = pages.iter().map(String::len).sum();
    let n = pages.len() * 1000;
    let t = transformer()?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs.max(3) {
        // Floor: serde_json parses each page into values and writes each record out again.
        let start = Instant::now();
        for p in &pages {
            let v: serde_json::Value = serde_json::from_str(p)?;
            for r in v["records"].as_array().into_iter().flatten() {
                black_box(serde_json::to_vec(r)?);
            }
        }
        floor.push(n as f64 / start.elapsed().as_secs_f64());
        // Ours: what the poller does with a page.
        let start = Instant::now();
        for p in &pages {
            let page: SearchPage = serde_json::from_str(p)?;
            for raw in &page.records {
                let meta = inspect_record(raw);
                black_box(t.event(raw, &meta, 0));
            }
        }
        ours.push(n as f64 / start.elapsed().as_secs_f64());
    }
    let mb = bytes as f64 / n as f64 / 1e6;
    row(
        "transform (records -> HEC events)",
        "records/s",
        ours.clone(),
    );
    row("transform", "MB/s", ours.iter().map(|r| r * mb).collect());
    row(
        "floor: serde_json parse + reserialize",
        "records/s",
        floor.clone(),
    );
    row(
        "transform time / floor time (target <= 1.5)",
        "ratio",
        floor.iter().zip(&ours).map(|(f, o)| f / o).collect(),
    );
    Ok(())
}

/// Compression speed and ratio on real batches of 1000 events: zlib (flate2 on zlib-rs,
/// streaming) at three levels against libdeflate (whole buffers, what the sink uses) at three.
fn gzip_levels(opts: &Opts) -> anyhow::Result<()> {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let pool = events(10_000)?;
    let raw: usize = pool.iter().map(|e| e.len() + 1).sum();
    let bodies: Vec<Vec<u8>> = pool
        .chunks(1000)
        .map(|c| build_body(c.iter().map(Vec::as_slice), false))
        .collect::<Result<_, _>>()?;
    let zlib = |level: u32, body: &[u8]| -> anyhow::Result<usize> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
        enc.write_all(body)?;
        Ok(enc.finish()?.len())
    };
    let libdeflate = |level: i32, body: &[u8]| -> anyhow::Result<usize> {
        let lvl = libdeflater::CompressionLvl::new(level).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut c = libdeflater::Compressor::new(lvl);
        let mut out = vec![0; c.gzip_compress_bound(body.len())];
        Ok(c.gzip_compress(body, &mut out)?)
    };
    let cases: [(&str, i32); 6] = [
        ("zlib-rs", 1),
        ("zlib-rs", 3),
        ("zlib-rs", 6),
        ("libdeflate", 1),
        ("libdeflate", 4),
        ("libdeflate", 6),
    ];
    for (lib, level) in cases {
        let (mut speed, mut ratio) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs.max(3) {
            let start = Instant::now();
            let mut compressed = 0;
            for body in &bodies {
                compressed += if lib == "zlib-rs" {
                    zlib(level as u32, body)?
                } else {
                    libdeflate(level, body)?
                };
            }
            speed.push(raw as f64 / start.elapsed().as_secs_f64() / 1e6);
            ratio.push(raw as f64 / compressed as f64);
        }
        row(
            &format!("gzip {lib} level {level}: compression speed"),
            "MB/s",
            speed,
        );
        row(&format!("gzip {lib} level {level}: ratio"), "x", ratio);
    }
    Ok(())
}

fn events(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let t = transformer()?;
    let mut out = Vec::with_capacity(n);
    for p in pages(n.div_ceil(1000)) {
        let page: SearchPage = serde_json::from_str(&p)?;
        for raw in &page.records {
            out.push(t.event(raw, &inspect_record(raw), 0));
        }
    }
    out.truncate(n);
    Ok(out)
}

fn bench_dir(name: &str) -> anyhow::Result<PathBuf> {
    // On disk (not tmpfs), so fsync costs what it costs.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Fills a spool with `n` events: bodies cycle over 10,000 realistic events, ids are random
/// UUIDs like RingCentral's (so dedup inserts land all over its index, as in production).
fn fill(spool: &Spool, n: usize, pool: &[Vec<u8>]) -> anyhow::Result<()> {
    // Event times a few ms apart, as in a busy account's audit trail.
    let start = rc_audit_hec::time::now_ms() - n as i64 * 7;
    let mut i = 0;
    while i < n {
        let page: Vec<NewRecord> = (i..(i + 1000).min(n))
            .map(|k| NewRecord {
                invalid: None,
                event_time_ms: start + k as i64 * 7,
                record_id: uuid::Uuid::new_v4().to_string(),
                event: pool[k % pool.len()].clone(),
            })
            .collect();
        i += page.len();
        spool.enqueue_page("bench", &page, Some(i as i64))?;
    }
    Ok(())
}

fn spool(opts: &Opts) -> anyhow::Result<()> {
    let pool = events(10_000)?;
    let (mut enq, mut drain) = (Vec::new(), Vec::new());
    let (mut scrape_small, mut scrape_full) = (Vec::new(), Vec::new());
    // What a `/metrics` scrape costs the spool (its mutex is held meanwhile), per scrape.
    let scrape = |s: &Spool| -> anyhow::Result<f64> {
        let start = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(s.status()?);
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / 100.0)
    };
    for _ in 0..opts.runs {
        let dir = bench_dir("spool")?;
        let s = Spool::open(&dir)?;
        let n = 200_000;
        fill(&s, 1000, &pool)?;
        scrape_small.push(scrape(&s)?);
        let start = Instant::now();
        fill(&s, n - 1000, &pool)?;
        enq.push((n - 1000) as f64 / start.elapsed().as_secs_f64());
        scrape_full.push(scrape(&s)?);
        let start = Instant::now();
        loop {
            let batch = s.read_batch(Destination::Hec, 1000, usize::MAX)?;
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                break;
            };
            s.settle(Destination::Hec, Some((first.seq, last.seq)), &[])?;
        }
        drain.push(n as f64 / start.elapsed().as_secs_f64());
    }
    row(
        "spool enqueue (pages of 1000, cursor commit, synchronous=FULL)",
        "records/s",
        enq,
    );
    row("spool read + delete (batches of 1000)", "records/s", drain);
    row(
        "spool status (a /metrics scrape), 1,000 waiting",
        "µs",
        scrape_small,
    );
    row(
        "spool status (a /metrics scrape), 200,000 waiting",
        "µs",
        scrape_full,
    );
    Ok(())
}

async fn poll(opts: &Opts) -> anyhow::Result<()> {
    let acct = SimAccount::new("400100001", "Acme Corp");
    let rc = RcSim::start(RcSimConfig {
        accounts: vec![acct.clone()],
        rate_limits: false,
        ..RcSimConfig::default()
    })
    .await?;
    let n = 10_000; // the API's own per-search maximum
    let now = Utc::now();
    rc.generate(
        &acct.account_id,
        n,
        now - TimeDelta::days(10),
        now - TimeDelta::minutes(1),
        1,
    );
    let mut rates = Vec::new();
    for _ in 0..opts.runs.max(3) {
        let dir = bench_dir("poll")?;
        let toml = config_toml(&rc.url(), &acct, "http://127.0.0.1:1", &dir, "");
        let mut cfg = Config::from_toml_str(&toml, &LoadEnv::default())?;
        cfg.poll.initial_lookback = Duration::from_secs(11 * 86400);
        let p = rc_audit_hec::pipeline::Pipeline::open(cfg, Default::default())?;
        let mut poller = p.pollers(None).remove(0);
        let start = Instant::now();
        poller.poll_window().await?;
        rates.push(n as f64 / start.elapsed().as_secs_f64());
        anyhow::ensure!(p.spool.depth()? == n as u64, "poll stored everything");
    }
    row(
        "poll (simulator -> spool, pages of 1000, no rate limits)",
        "records/s",
        rates,
    );
    Ok(())
}

/// Reads a `/proc/<pid>/status` field in kB.
fn proc_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process in seconds (clock ticks of 100 Hz, the Linux default).
fn proc_cpu(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn binary() -> anyhow::Result<PathBuf> {
    let b = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/rc-audit-hec");
    anyhow::ensure!(
        b.exists(),
        "build the release binary first: cargo build --release"
    );
    Ok(b)
}

/// Starts `run` with a notify socket and returns the time until it says READY=1.
fn time_to_ready(config: &Path, dir: &Path) -> anyhow::Result<Duration> {
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let start = Instant::now();
    let mut child = Command::new(binary()?)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 4096];
    let ready = loop {
        let n = sock.recv(&mut buf).context("no READY=1 within 30 s")?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break start.elapsed();
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    Ok(ready)
}

async fn drain_and_footprint(
    opts: &Opts,
    do_drain: bool,
    do_footprint: bool,
) -> anyhow::Result<()> {
    let bin = binary()?;
    let acct = SimAccount::new("400100001", "Acme Corp");
    let rc = RcSim::start(RcSimConfig {
        accounts: vec![acct.clone()],
        rate_limits: false,
        ..RcSimConfig::default()
    })
    .await?;
    let mut hec_cfg = HecSimConfig::new(TOKEN);
    hec_cfg.fast = true;
    // `--hec-latency-ms`: the receiver takes that long per request.
    hec_cfg.fast_latency = opts.hec_latency;
    if let Some(l) = hec_cfg.fast_latency {
        eprintln!("HEC simulator: {} ms per request", l.as_millis());
    }
    let hec = HecSim::start(hec_cfg).await?;
    let pool = events(10_000)?;

    if do_footprint {
        let size = std::fs::metadata(&bin)?.len() as f64 / 1e6;
        row("release binary size (stripped)", "MB", vec![size]);
        let (mut ready_empty, mut idle) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let dir = bench_dir("ready-empty")?;
            let cfg = dir.join("config.toml");
            std::fs::write(
                &cfg,
                config_toml(&rc.url(), &acct, &hec.url(), &dir.join("state"), ""),
            )?;
            ready_empty.push(time_to_ready(&cfg, &dir)?.as_secs_f64() * 1000.0);
            // Idle RSS: running, nothing to do.
            let mut child = Command::new(&bin)
                .arg("--config")
                .arg(&cfg)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            idle.push(proc_kb(child.id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0);
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        row("start to READY, empty spool", "ms", ready_empty);
        row("RSS idle (run, nothing to do)", "MB", idle);
    }

    // Before/after in one run: `--baseline <an older release binary>` drains the same backlog
    // with it too, alternating per run (its spool is handed over as schema 3).
    let baseline = opts.baseline.clone();
    let mut now = DrainSamples::default();
    let mut before = DrainSamples::default();
    let mut ready_full = Vec::new();
    let mut capacity = Vec::new();
    let avg = pool.iter().map(Vec::len).sum::<usize>() as f64 / pool.len() as f64;
    // The ideal sender's batches: the forwarder's (default `batch_max_events` 1000,
    // `batch_max_bytes` 1 MB) over the same events in the same order, built beforehand.
    let bodies = ideal_batches(&pool, opts.records)?;
    for run in 0..opts.runs {
        let dir = bench_dir("drain")?;
        {
            let spool = Spool::open(&dir.join("state"))?;
            eprintln!(
                "run {}: filling the spool with {} events...",
                run + 1,
                opts.records
            );
            fill(&spool, opts.records, &pool)?;
        }
        let cfg = dir.join("config.toml");
        if do_footprint {
            // READY with the backlog, HEC unreachable so nothing drains meanwhile.
            std::fs::write(
                &cfg,
                config_toml(
                    &rc.url(),
                    &acct,
                    "http://127.0.0.1:9",
                    &dir.join("state"),
                    "",
                ),
            )?;
            ready_full.push(time_to_ready(&cfg, &dir)?.as_secs_f64() * 1000.0);
        }
        if !do_drain {
            continue;
        }
        std::fs::write(
            &cfg,
            config_toml(&rc.url(), &acct, &hec.url(), &dir.join("state"), ""),
        )?;
        if let Some(old) = &baseline {
            // The same backlog for the older binary, as the schema-3 file it knows.
            let old_dir = bench_dir("drain-baseline")?;
            std::fs::create_dir_all(old_dir.join("state"))?;
            std::fs::copy(dir.join("state/spool.db"), old_dir.join("state/spool.db"))?;
            let conn = rusqlite::Connection::open(old_dir.join("state/spool.db"))?;
            conn.execute_batch("DROP TABLE IF EXISTS delivered; PRAGMA user_version = 3;")?;
            drop(conn);
            let old_cfg = old_dir.join("config.toml");
            std::fs::write(
                &old_cfg,
                config_toml(&rc.url(), &acct, &hec.url(), &old_dir.join("state"), ""),
            )?;
            before.push(drain_once(old, &old_cfg, &hec, opts.records, avg).await?);
        }
        now.push(drain_once(&bin, &cfg, &hec, opts.records, avg).await?);
        capacity.push(ideal_sender(&hec, &bodies).await?);
    }
    if do_footprint {
        row(
            &format!("start to READY, {} spooled", opts.records),
            "ms",
            ready_full,
        );
    }
    if do_drain {
        row(
            "HEC simulator alone (the same batches, prebuilt, 1 in flight, no spool)",
            "events/s",
            capacity.clone(),
        );
        if baseline.is_some() {
            before.rows("before", opts.records, &capacity);
        }
        now.rows(
            if baseline.is_some() { "after" } else { "" },
            opts.records,
            &capacity,
        );
    }
    Ok(())
}

/// One binary's drain measurements, one sample per run.
#[derive(Default)]
struct DrainSamples {
    rate: Vec<f64>,
    mbps: Vec<f64>,
    cpu_s: Vec<f64>,
    cpu_us_per_event: Vec<f64>,
    rss_mb: Vec<f64>,
}

impl DrainSamples {
    fn push(&mut self, d: DrainSample) {
        self.rate.push(d.rate);
        self.mbps.push(d.mbps);
        self.cpu_s.push(d.cpu_s);
        self.cpu_us_per_event.push(d.cpu_us_per_event);
        self.rss_mb.push(d.rss_mb);
    }

    fn rows(&self, label: &str, records: usize, capacity: &[f64]) {
        let l = if label.is_empty() {
            String::new()
        } else {
            format!(" ({label})")
        };
        row(
            &format!("drain {records} events, gzip on{l}"),
            "events/s",
            self.rate.clone(),
        );
        row(
            &format!("drain throughput (uncompressed){l}"),
            "MB/s",
            self.mbps.clone(),
        );
        row(
            &format!("drain CPU time of the forwarder{l}"),
            "s",
            self.cpu_s.clone(),
        );
        row(
            &format!("drain CPU per event (target <= 5){l}"),
            "us",
            self.cpu_us_per_event.clone(),
        );
        row(
            &format!("drain peak RSS of the forwarder{l}"),
            "MB",
            self.rss_mb.clone(),
        );
        row(
            &format!("drain / receiver capacity (target >= 0.9){l}"),
            "ratio",
            self.rate.iter().zip(capacity).map(|(d, c)| d / c).collect(),
        );
    }
}

/// One drain by one binary.
struct DrainSample {
    rate: f64,
    mbps: f64,
    cpu_s: f64,
    cpu_us_per_event: f64,
    rss_mb: f64,
}

/// Drains the spool of `cfg` with `bin once` into `hec`, watching its CPU and peak RSS.
async fn drain_once(
    bin: &Path,
    cfg: &Path,
    hec: &HecSim,
    records: usize,
    avg_event: f64,
) -> anyhow::Result<DrainSample> {
    let before = hec.accepted();
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(cfg);
    let (secs, cpu_s, peak) = watch_once(cmd).await?;
    let delivered = hec.accepted() - before;
    anyhow::ensure!(delivered == records, "delivered {delivered} of {records}");
    Ok(DrainSample {
        rate: delivered as f64 / secs,
        mbps: delivered as f64 * avg_event / secs / 1e6,
        cpu_s,
        cpu_us_per_event: cpu_s * 1e6 / delivered as f64,
        rss_mb: peak as f64 / 1024.0,
    })
}

/// Runs `cmd once --max-wait 30m` to its end, which must be a success (nothing left spooled),
/// sampling its CPU time and peak RSS: (seconds, CPU seconds, peak RSS in KiB).
async fn watch_once(mut cmd: Command) -> anyhow::Result<(f64, f64, u64)> {
    let start = Instant::now();
    let mut child = cmd
        .args(["once", "--max-wait", "30m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let (mut peak, mut cpu_s) = (0u64, 0.0f64);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "the drain exited with {status}");
            break;
        }
        peak = peak.max(proc_kb(pid, "VmHWM:").unwrap_or(0));
        cpu_s = proc_cpu(pid).unwrap_or(cpu_s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((start.elapsed().as_secs_f64(), cpu_s, peak))
}

/// dynalite on a free loopback port, in memory; killed on drop.
struct Dynalite(std::process::Child, u16);

impl Dynalite {
    fn start() -> anyhow::Result<Dynalite> {
        let dir = std::env::var_os("DYNALITE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/node/node_modules/dynalite")
            });
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("node")
            .arg(dir.join("cli.js"))
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start dynalite (needs Node.js and `npm ci --prefix .ci/node`)")?;
        let d = Dynalite(child, port);
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < until, "dynalite did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }
}

impl Drop for Dynalite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--records` spooled events written into a fresh dynalite table by `rc-audit-hec once`.
async fn drain_dynamodb(opts: &Opts) -> anyhow::Result<()> {
    let bin = binary()?;
    let acct = SimAccount::new("400100001", "Acme Corp");
    let rc = RcSim::start(RcSimConfig {
        accounts: vec![acct.clone()],
        rate_limits: false,
        ..RcSimConfig::default()
    })
    .await?;
    let pool = events(10_000)?;
    let avg = pool.iter().map(Vec::len).sum::<usize>() as f64 / pool.len() as f64;
    let mut s = DrainSamples::default();
    for _ in 0..opts.runs {
        let db = Dynalite::start()?;
        let url = format!("http://127.0.0.1:{}", db.1);
        let table = DynamoDbConfig {
            table: "bench".into(),
            region: "us-east-1".into(),
            endpoint_url: Some(url.clone()),
            ttl: None,
            create_table: true,
        };
        let creds =
            aws_sdk_dynamodb::config::Credentials::new("AKIDBENCH", "bench", None, None, "bench");
        let d = rc_audit_hec::dynamodb::connect_with(&table, Some(creds)).await?;
        rc_audit_hec::dynamodb::create_table(&d, &table).await?;
        let dir = bench_dir("drain-dynamodb")?;
        let spool = Spool::open(&dir.join("state"))?;
        spool.set_destinations(&[Destination::DynamoDb]);
        fill(&spool, opts.records, &pool)?;
        drop(spool);
        let hec_less = config_toml(&rc.url(), &acct, "http://unused", &dir.join("state"), "");
        let start = hec_less.find("[hec]").context("config has [hec]")?;
        let end = hec_less.find("[spool]").context("config has [spool]")?;
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "{}{}\n[dynamodb]\ntable = \"bench\"\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n",
                &hec_less[..start],
                &hec_less[end..]
            ),
        )?;
        let mut cmd = Command::new(&bin);
        cmd.env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("--config")
            .arg(&cfg);
        let (secs, cpu_s, peak) = watch_once(cmd).await?;
        let n = opts.records as f64;
        s.push(DrainSample {
            rate: n / secs,
            mbps: n * avg / secs / 1e6,
            cpu_s,
            cpu_us_per_event: cpu_s * 1e6 / n,
            rss_mb: peak as f64 / 1024.0,
        });
    }
    let r = opts.records;
    row(
        &format!("dynamodb drain {r} events into dynalite"),
        "items/s",
        s.rate,
    );
    row(
        "dynamodb drain CPU per item (forwarder)",
        "us",
        s.cpu_us_per_event,
    );
    row("dynamodb drain peak RSS (forwarder)", "MB", s.rss_mb);
    Ok(())
}

/// The drain's batches, gzipped beforehand: the spooled events in spool order (`fill` cycles
/// over `pool`), cut as the sink cuts them (at most 1000 events and 1 MB of events, at least
/// one).
fn ideal_batches(pool: &[Vec<u8>], records: usize) -> anyhow::Result<Vec<bytes::Bytes>> {
    let mut bodies = Vec::new();
    let mut batch: Vec<&[u8]> = Vec::new();
    let mut bytes = 0;
    for k in 0..records {
        let e = pool[k % pool.len()].as_slice();
        if batch.len() == 1000 || (!batch.is_empty() && bytes + e.len() > 1_000_000) {
            bodies.push(bytes::Bytes::from(build_body(batch.drain(..), true)?));
            bytes = 0;
        }
        bytes += e.len();
        batch.push(e);
    }
    if !batch.is_empty() {
        bodies.push(bytes::Bytes::from(build_body(batch.drain(..), true)?));
    }
    Ok(bodies)
}

/// The receiver's capacity: every batch of the drain sent by an ideal sender (one request in
/// flight, bodies built beforehand, no spool); events per second.
async fn ideal_sender(hec: &HecSim, bodies: &[bytes::Bytes]) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let url = format!("{}/services/collector/event", hec.url());
    let before = hec.accepted();
    let start = Instant::now();
    for body in bodies {
        let resp = http
            .post(&url)
            .header("Authorization", format!("Splunk {TOKEN}"))
            .header("Content-Encoding", "gzip")
            .body(body.clone())
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "simulator refused a batch");
        resp.bytes().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((hec.accepted() - before) as f64 / secs)
}

/// Drains `records` spooled events with the release binary's `once` against `hec_url`; events
/// per second.
async fn drain_rate(
    bin: &Path,
    rc: &RcSim,
    acct: &SimAccount,
    hec: &HecSim,
    extra_hec: &str,
    records: usize,
    pool: &[Vec<u8>],
) -> anyhow::Result<f64> {
    let dir = bench_dir("drain-ack")?;
    fill(&Spool::open(&dir.join("state"))?, records, pool)?;
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        config_toml(&rc.url(), acct, &hec.url(), &dir.join("state"), extra_hec),
    )?;
    let before = hec.accepted();
    let start = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&cfg)
        .args(["once", "--max-wait", "30m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "the drain exited with {status}");
    let delivered = hec.accepted() - before;
    anyhow::ensure!(delivered == records, "delivered {delivered} of {records}");
    Ok(delivered as f64 / secs)
}

/// Ack mode against plain mode: the same backlog, the same receiver (the simulator's fast path;
/// with ack on it acknowledges every id at the first query), runs alternating so both see the
/// same machine load.
async fn drain_ack(opts: &Opts) -> anyhow::Result<()> {
    let bin = binary()?;
    let acct = SimAccount::new("400100001", "Acme Corp");
    let rc = RcSim::start(RcSimConfig {
        accounts: vec![acct.clone()],
        rate_limits: false,
        ..RcSimConfig::default()
    })
    .await?;
    let mut plain_cfg = HecSimConfig::new(TOKEN);
    plain_cfg.fast = true;
    let mut ack_cfg = plain_cfg.clone();
    ack_cfg.ack = true;
    let (plain_hec, ack_hec) = (
        HecSim::start(plain_cfg).await?,
        HecSim::start(ack_cfg).await?,
    );
    let pool = events(10_000)?;
    let (mut plain, mut acked) = (Vec::new(), Vec::new());
    for run in 0..opts.runs {
        eprintln!(
            "run {}: plain and ack drains of {} events...",
            run + 1,
            opts.records
        );
        plain.push(drain_rate(&bin, &rc, &acct, &plain_hec, "", opts.records, &pool).await?);
        acked.push(
            drain_rate(
                &bin,
                &rc,
                &acct,
                &ack_hec,
                "use_ack = true",
                opts.records,
                &pool,
            )
            .await?,
        );
    }
    let ratio = acked.iter().zip(&plain).map(|(a, p)| a / p).collect();
    row(
        &format!("drain {} events, plain", opts.records),
        "events/s",
        plain,
    );
    row(
        &format!("drain {} events, use_ack (acks at once)", opts.records),
        "events/s",
        acked,
    );
    row("ack / plain drain", "ratio", ratio);
    Ok(())
}

/// What one `run` with many accounts did.
struct AccountsRun {
    /// Peak RSS (VmHWM), MB.
    rss_mb: f64,
    /// Peak of `Threads:` sampled every 100 ms.
    threads: u64,
    /// Accounts that polled at least twice, the first within one interval of the start and each
    /// next within 1.25 intervals of the one before, and never got a 429.
    on_time: usize,
    /// Accounts that polled at least twice at all.
    polled_twice: usize,
    /// 429 answers (searches over an account's own rate budget).
    limited: usize,
    /// Events HEC received (one record per account).
    delivered: usize,
    /// CPU time of the forwarder, s.
    cpu_s: f64,
    /// The latest first search of any account, s after the start.
    first_max_s: f64,
    /// The longest time between two searches of one account, s.
    gap_max_s: f64,
    /// TCP connections the forwarder opened to the RingCentral simulator.
    connections: u64,
}

/// The config of `n` accounts on one simulator: inline secrets, as a config file holds them
/// (`*_file` works the same, one file per secret), and an explicit `account_id`, so the
/// simulator refuses a search whose token belongs to another account.
fn accounts_toml(
    rc_url: &str,
    hec_url: &str,
    accounts: &[SimAccount],
    interval: u64,
    dir: &Path,
) -> String {
    let mut t = String::with_capacity(accounts.len() * 700);
    for (i, a) in accounts.iter().enumerate() {
        t.push_str(&format!(
            "[[accounts]]\nname = \"a{i}\"\nserver_url = \"{rc_url}\"\naccount_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\njwt = \"{}\"\n",
            a.account_id, a.client_id, a.client_secret, a.jwt
        ));
    }
    t.push_str(&format!(
        "[poll]\ninterval = \"{interval}s\"\nsettle_delay = \"0s\"\ninitial_lookback = \"3h\"\n\
         [hec]\nurl = \"{hec_url}\"\ntoken = \"{TOKEN}\"\nhost = \"bench\"\n\
         [spool]\ndir = {:?}\n[admin]\nlisten = \"\"\n",
        dir.join("state")
    ));
    t
}

/// One `run` of `bin` with `n` accounts until every account has polled twice.
async fn accounts_run(bin: &Path, n: usize, interval: u64) -> anyhow::Result<AccountsRun> {
    let accounts: Vec<SimAccount> = (0..n)
        .map(|i| SimAccount::new(&format!("5{i:09}"), &format!("Account {i}")))
        .collect();
    // RingCentral's own default limits (10 searches and 5 tokens a minute per account).
    let rc = RcSim::start(RcSimConfig {
        accounts: accounts.clone(),
        ..RcSimConfig::default()
    })
    .await?;
    let now = Utc::now();
    for (i, a) in accounts.iter().enumerate() {
        rc.generate(
            &a.account_id,
            1,
            now - TimeDelta::hours(2),
            now - TimeDelta::hours(1),
            i as u64,
        );
    }
    let mut hec_cfg = HecSimConfig::new(TOKEN);
    hec_cfg.fast = true;
    let hec = HecSim::start(hec_cfg).await?;
    let dir = bench_dir(&format!("accounts-{n}"))?;
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        accounts_toml(&rc.url(), &hec.url(), &accounts, interval, &dir),
    )?;
    let start = tokio::time::Instant::now();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let every = Duration::from_secs(interval);
    let deadline = start + every * 3 + Duration::from_secs(120);
    let (mut threads, mut rss_kb, mut cpu_s) = (0u64, 0u64, 0.0f64);
    let mut checked = tokio::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the forwarder exited with {status} (n = {n})");
        }
        threads = threads.max(proc_kb(pid, "Threads:").unwrap_or(0));
        rss_kb = rss_kb.max(proc_kb(pid, "VmHWM:").unwrap_or(0));
        cpu_s = proc_cpu(pid).unwrap_or(cpu_s);
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = tokio::time::Instant::now();
            let mut searches = std::collections::HashMap::<String, usize>::new();
            for r in rc.requests() {
                if r.status == 200 && r.path.ends_with("/search") {
                    *searches
                        .entry(r.account_id.unwrap_or_default())
                        .or_default() += 1;
                }
            }
            let twice = searches.values().filter(|&&c| c >= 2).count();
            if twice == n || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let mut by_account = std::collections::HashMap::<String, Vec<tokio::time::Instant>>::new();
    let mut limited_accounts = std::collections::HashSet::new();
    let mut limited = 0;
    for r in rc.requests() {
        let account = r.account_id.unwrap_or_default();
        if r.status == 429 {
            limited += 1;
            limited_accounts.insert(account.clone());
        }
        if r.status == 200 && r.path.ends_with("/search") {
            by_account.entry(account).or_default().push(r.at.into());
        }
    }
    let late = every + every / 4;
    let (mut on_time, mut polled_twice) = (0, 0);
    let (mut first_max, mut gap_max) = (Duration::ZERO, Duration::ZERO);
    for (account, mut at) in by_account {
        at.sort();
        first_max = first_max.max(at[0].duration_since(start));
        for w in at.windows(2) {
            gap_max = gap_max.max(w[1].duration_since(w[0]));
        }
        if at.len() < 2 {
            continue;
        }
        polled_twice += 1;
        let first_in_time = at[0].duration_since(start) <= every;
        let gaps_in_time = at.windows(2).all(|w| w[1].duration_since(w[0]) <= late);
        if first_in_time && gaps_in_time && !limited_accounts.contains(&account) {
            on_time += 1;
        }
    }
    Ok(AccountsRun {
        rss_mb: rss_kb as f64 / 1024.0,
        threads,
        on_time,
        polled_twice,
        limited,
        delivered: hec.accepted(),
        cpu_s,
        first_max_s: first_max.as_secs_f64(),
        gap_max_s: gap_max.as_secs_f64(),
        connections: rc.connections(),
    })
}

/// Many accounts in one process: the release binary (and `--baseline`, run for run).
async fn accounts(opts: &Opts, cli: &Cli) -> anyhow::Result<()> {
    let bin = match &cli.binary {
        Some(b) => b.clone(),
        None => binary()?,
    };
    let mut bins = vec![("now".to_string(), bin)];
    if let Some(b) = &cli.baseline {
        anyhow::ensure!(b.exists(), "--baseline {}: no such file", b.display());
        bins.insert(0, ("baseline".to_string(), b.clone()));
    }
    for &n in &cli.accounts {
        let mut results: Vec<Vec<AccountsRun>> = bins.iter().map(|_| Vec::new()).collect();
        for run in 0..opts.runs {
            for (k, (label, bin)) in bins.iter().enumerate() {
                eprintln!("accounts {n}, run {}, {label}...", run + 1);
                let r = accounts_run(bin, n, cli.interval).await?;
                eprintln!(
                    "  RSS {:.1} MB, {} threads, {} of {n} on time ({} polled twice; latest first poll {:.1} s, longest gap {:.1} s), {} 429s, {} delivered, CPU {:.1} s, {} connections",
                    r.rss_mb,
                    r.threads,
                    r.on_time,
                    r.polled_twice,
                    r.first_max_s,
                    r.gap_max_s,
                    r.limited,
                    r.delivered,
                    r.cpu_s,
                    r.connections
                );
                results[k].push(r);
            }
        }
        for ((label, _), rs) in bins.iter().zip(&results) {
            let name = |m: &str| format!("{n} accounts, {label}: {m}");
            row(
                &name("peak RSS (VmHWM)"),
                "MB",
                rs.iter().map(|r| r.rss_mb).collect(),
            );
            row(
                &name("peak threads"),
                "threads",
                rs.iter().map(|r| r.threads as f64).collect(),
            );
            row(
                &name("accounts polled twice, each within its interval, no 429"),
                "accounts",
                rs.iter().map(|r| r.on_time as f64).collect(),
            );
            row(
                &name("429 answers"),
                "requests",
                rs.iter().map(|r| r.limited as f64).collect(),
            );
            row(
                &name("latest first poll after start"),
                "s",
                rs.iter().map(|r| r.first_max_s).collect(),
            );
            row(
                &name("longest time between two polls of one account"),
                "s",
                rs.iter().map(|r| r.gap_max_s).collect(),
            );
            row(
                &name("connections opened to RingCentral"),
                "connections",
                rs.iter().map(|r| r.connections as f64).collect(),
            );
            row(
                &name("CPU time of the forwarder"),
                "s",
                rs.iter().map(|r| r.cpu_s).collect(),
            );
        }
    }
    Ok(())
}
