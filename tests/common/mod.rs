//! Shared harness: simulators on loopback, a config pointing at them, fast retries.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rc_audit_hec::config::{Config, LoadEnv};
use rc_audit_hec::pipeline::{Options, Pipeline};
use rc_audit_hec::retry::RetryPolicy;
use rc_audit_hec::sim::hec::{HecSim, HecSimConfig};
use rc_audit_hec::sim::ringcentral::{RcSim, RcSimConfig, SimAccount};

/// The real binary, with none of the caller's environment that would change what it does:
/// config overrides, the log filter, systemd's variables (tests that need one set it after).
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rc-audit-hec"));
    for (k, _) in std::env::vars() {
        let systemd = [
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
        ];
        if k.starts_with("RC_AUDIT_HEC_") || k == "RUST_LOG" || systemd.contains(&k.as_str()) {
            c.env_remove(k);
        }
    }
    c
}

/// Runs a command off the async runtime (the simulators live on it) and collects its output.
pub async fn output(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Stdout and stderr together.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub const HEC_TOKEN: &str = "11111111-2222-3333-4444-555555555555";

pub struct World {
    pub rc: RcSim,
    pub hec: HecSim,
    pub accounts: Vec<SimAccount>,
    pub dir: tempfile::TempDir,
}

impl World {
    /// `n` accounts, rate limits scaled down (10 searches per 1 s window, 0.5 s penalty).
    pub async fn new(n: usize) -> World {
        Self::with(n, |_| {}).await
    }

    pub async fn with(n: usize, tweak: impl FnOnce(&mut RcSimConfig)) -> World {
        let accounts: Vec<SimAccount> = (0..n)
            .map(|i| SimAccount::new(&format!("40010000{i}"), &format!("Account {i}")))
            .collect();
        let mut cfg = RcSimConfig {
            accounts: accounts.clone(),
            heavy_limit: 10,
            heavy_window: Duration::from_secs(1),
            auth_limit: 5,
            auth_window: Duration::from_secs(1),
            penalty: Duration::from_millis(500),
            ..RcSimConfig::default()
        };
        tweak(&mut cfg);
        let rc = RcSim::start(cfg).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut hec_cfg = HecSimConfig::new(HEC_TOKEN);
        hec_cfg.output = Some(dir.path().join("received.jsonl"));
        let hec = HecSim::start(hec_cfg).await.unwrap();
        World {
            rc,
            hec,
            accounts,
            dir,
        }
    }

    /// Account `i`'s name in the forwarder's config.
    pub fn name(i: usize) -> String {
        format!("acct{i}")
    }

    /// The TOML config for this world; `extra` is appended (e.g. `[poll]` keys via `poll`).
    pub fn toml(&self, poll: &str, hec: &str) -> String {
        let mut t = String::new();
        for (i, a) in self.accounts.iter().enumerate() {
            t.push_str(&format!(
                "[[accounts]]\nname = \"{}\"\nserver_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\njwt = \"{}\"\n\n",
                Self::name(i), self.rc.url(), a.client_id, a.client_secret, a.jwt
            ));
        }
        t.push_str(&format!(
            "[poll]\ninterval = \"200ms\"\noverlap = \"10m\"\nsettle_delay = \"0s\"\n{poll}\n\n\
             [hec]\nurl = \"{}\"\ntoken = \"{HEC_TOKEN}\"\nhost = \"test\"\n{hec}\n\n\
             [spool]\ndir = {:?}\n\n[admin]\nlisten = \"\"\n",
            self.hec.url(),
            self.dir.path().join("state"),
        ));
        t
    }

    pub fn config(&self, poll: &str, hec: &str) -> Config {
        Config::from_toml_str(&self.toml(poll, hec), &LoadEnv::default()).unwrap()
    }

    pub fn pipeline(&self, poll: &str, hec: &str) -> Pipeline {
        Pipeline::open(self.config(poll, hec), fast()).unwrap()
    }

    /// Record ids HEC received, with how often each arrived (the forwarder's own events,
    /// heartbeats and reconciliation results, are not records and are left out).
    pub fn received(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for e in self.hec.events() {
            if e["source"] == rc_audit_hec::transform::INTERNAL_SOURCE {
                continue;
            }
            let id = e
                .pointer("/event/id")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string();
            *m.entry(id).or_insert(0) += 1;
        }
        m
    }

    /// Gives account `i` `n` generated records from 3 h to 1 h ago (inside every test window).
    pub fn seed(&self, i: usize, n: usize, seed: u64) {
        let now = chrono::Utc::now();
        self.rc.generate(
            &self.accounts[i].account_id,
            n,
            now - chrono::TimeDelta::hours(3),
            now - chrono::TimeDelta::hours(1),
            seed,
        );
    }

    /// Ids the RingCentral simulator holds for account `i`.
    pub fn generated(&self, i: usize) -> Vec<String> {
        self.rc
            .records(&self.accounts[i].account_id)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Delivers the whole spool (HEC must be up, or this waits).
pub async fn drain(p: &Pipeline) {
    p.sink()
        .unwrap()
        .drain(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
}

pub fn fast() -> Options {
    Options {
        retry: RetryPolicy {
            min: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        ..Options::default()
    }
}

/// Polls `cond` every 20 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Asserts every generated id of the given accounts reached HEC exactly once.
pub fn assert_each_once(w: &World, accounts: &[usize]) {
    let got = w.received();
    let mut expected = 0;
    for &i in accounts {
        for id in w.generated(i) {
            expected += 1;
            assert_eq!(
                got.get(&id).copied(),
                Some(1),
                "record {id} of account {i}: received {:?} times",
                got.get(&id)
            );
        }
    }
    assert_eq!(
        got.values().sum::<usize>(),
        expected,
        "HEC received extra events"
    );
}
