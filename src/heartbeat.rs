//! The heartbeat: every `[heartbeat] interval` one event about the forwarder itself, sourcetype
//! [`HEARTBEAT_SOURCETYPE`], through the spool like every record.
//!
//! # Why
//! A "forwarder silent" alert built on audit records cannot tell a quiet tenant from a broken
//! forwarder. The heartbeat can: it arrives whether or not the tenant did anything, and carries
//! each account's state and reason, so Splunk sees *why* records stopped. Because it goes
//! through the spool, a heartbeat written during a HEC outage arrives late, with its own `time`:
//! Splunk then sees when the forwarder was alive but cut off.
//!
//! # What it says (one source of truth)
//! Everything is read from what `/healthz`, `/metrics` and `spool status` already read: the
//! [`Health`] components (account and delivery states and reasons), the [`Stats`] counters (last
//! successful poll per account, last delivery) and [`crate::spool::Spool::status`] (depth,
//! oldest waiting event, dead letters, cursors). The heartbeat computes nothing of its own.
//!
//! The first heartbeat goes one interval after start, and one interval after a reload (the
//! service restarts it with the pollers, so it takes the new accounts, host and interval): a
//! restart shows in Splunk as a gap of the downtime plus one interval, and a run shorter than
//! one interval sends none. Reloads more often than the interval would hold it back.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::spool::{INTERNAL_ACCOUNT, Spool, Status};
use crate::telemetry::{ComponentHealth, Health, HealthDoc, State, Stats};
use crate::time::{ms_rfc3339, now_ms};
use crate::transform::{HEARTBEAT_SOURCETYPE, internal_event};

/// The `event` of a heartbeat. Field names are the Splunk app's (its searches read them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Beat {
    /// The forwarder's version.
    pub version: String,
    /// `hec.host`, the envelope's `host` too: which forwarder this is (not named `host`, which
    /// Splunk's own `host` field would shadow).
    pub forwarder_host: String,
    /// The worst state of any health component (`ok`, `degraded`, `failing`), as `/healthz`.
    pub status: State,
    /// The configured interval in seconds (a search can tell a missed heartbeat from a slow one).
    pub interval_s: u64,
    /// Delivery as a whole (`hec` in `/healthz`); `ok` until it reports otherwise.
    pub delivery_state: State,
    /// Why delivery is not ok.
    pub delivery_reason: Option<String>,
    /// When HEC last accepted events (RFC 3339), `None` when not since start.
    pub last_delivery: Option<String>,
    /// Events waiting in the spool.
    pub spool_depth: u64,
    /// Age of the oldest waiting event in seconds, `None` when none waits.
    pub spool_oldest_age_s: Option<i64>,
    /// Dead letters held.
    pub dead_letters: u64,
    /// One entry per configured account.
    pub accounts: Vec<AccountBeat>,
}

/// One account in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountBeat {
    /// The account's name (`rc_account` of its records).
    pub account: String,
    /// `ok`, `degraded`, `failing`, or `starting` before its first poll reported.
    pub state: String,
    /// Why, when not ok.
    pub reason: Option<String>,
    /// The end of the last complete window (RFC 3339), `None` before the first.
    pub cursor: Option<String>,
    /// Seconds from the cursor to now, `None` before the first window.
    pub cursor_lag_s: Option<i64>,
    /// When a live poll window last completed (RFC 3339), `None` when not since start.
    pub last_poll: Option<String>,
}

/// The state word of a component, as `/healthz` writes it.
fn state_word(h: Option<&ComponentHealth>) -> (String, Option<String>) {
    match h {
        Some(h) => (
            serde_json::to_value(h.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            h.reason.clone(),
        ),
        None => ("starting".to_string(), None),
    }
}

/// RFC 3339 of a counter holding ms since the epoch, 0 meaning never.
fn stamp(ms: i64) -> Option<String> {
    (ms > 0).then(|| ms_rfc3339(ms)).flatten()
}

/// The heartbeat of `config`'s forwarder at `now` (ms) from the telemetry and a spool status.
pub fn beat(config: &Config, stats: &Stats, health: &Health, status: &Status, now: i64) -> Beat {
    let doc = HealthDoc::of(health);
    let accounts = config
        .accounts
        .iter()
        .map(|a| {
            let (state, reason) = state_word(doc.accounts.get(&a.name));
            let cursor = status
                .cursors
                .iter()
                .find(|(name, _)| *name == a.name)
                .map(|(_, c)| *c);
            AccountBeat {
                account: a.name.clone(),
                state,
                reason,
                cursor: cursor.and_then(ms_rfc3339),
                cursor_lag_s: cursor.map(|c| (now - c).max(0) / 1000),
                last_poll: stamp(stats.account(&a.name).last_poll_ms.load(Ordering::Relaxed)),
            }
        })
        .collect();
    let hec = doc.hec.get("*");
    Beat {
        version: env!("CARGO_PKG_VERSION").to_string(),
        forwarder_host: config.envelope_settings().host.clone(),
        status: doc.status,
        interval_s: config.heartbeat.interval.as_secs(),
        delivery_state: hec.map_or(State::Ok, |h| h.state),
        delivery_reason: hec.and_then(|h| h.reason.clone()),
        last_delivery: stamp(stats.last_delivery_ms.load(Ordering::Relaxed)),
        spool_depth: status.depth,
        spool_oldest_age_s: status.oldest_spooled_ms.map(|t| (now - t).max(0) / 1000),
        dead_letters: status.dead_letters,
        accounts,
    }
}

/// The heartbeat loop of one configuration (restarted with the pollers on a reload).
pub struct Heartbeat {
    config: Config,
    spool: Spool,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

impl Heartbeat {
    /// The heartbeat of `config` over the pipeline's spool and telemetry.
    pub fn new(config: Config, spool: Spool, stats: Arc<Stats>, health: Arc<Health>) -> Self {
        Heartbeat {
            config,
            spool,
            stats,
            health,
        }
    }

    /// Spools one heartbeat now.
    pub async fn send(&self) -> Result<(), crate::spool::SpoolError> {
        let status = self.spool.run(|s| s.status()).await?;
        let now = now_ms();
        let beat = beat(&self.config, &self.stats, &self.health, &status, now);
        let event = serde_json::to_value(&beat).unwrap_or_default();
        let envelope = internal_event(
            &self.config.envelope_settings(),
            None,
            HEARTBEAT_SOURCETYPE,
            now,
            &event,
        );
        let id = format!("heartbeat:{now}");
        self.spool
            .run(move |s| s.enqueue_internal(INTERNAL_ACCOUNT, &id, envelope))
            .await
    }

    /// Sends a heartbeat every interval (the first one interval after start) until `stop`;
    /// returns at once when the interval is zero (off). A heartbeat the spool cannot take is
    /// logged and skipped: the next one says the same, and the spool's own health reports why.
    pub async fn run(self, stop: CancellationToken) {
        let every = self.config.heartbeat.interval;
        // A Splunk event (the "forwarder silent" alert reads it): nothing to send it to
        // without HEC.
        if every.is_zero() || self.config.hec.is_none() {
            return;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // After a stall (a suspended host), one heartbeat, not a burst of them.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.send().await {
                warn!(
                    "cannot spool the heartbeat: {e}; Splunk's \"forwarder silent\" alert will see the gap"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Destination, LoadEnv};
    use crate::spool::NewRecord;
    use crate::telemetry::Component;
    use std::time::Duration;

    fn config(heartbeat: &str) -> Config {
        let toml = format!(
            r#"
            [[accounts]]
            name = "acme"
            client_id = "c"
            client_secret = "s"
            jwt = "j"
            [[accounts]]
            name = "beta"
            client_id = "c2"
            client_secret = "s"
            jwt = "j"
            index = "beta_idx"
            [hec]
            url = "https://h:8088"
            token = "t"
            host = "fwd1"
            index = "audit"
            {heartbeat}
            "#
        );
        Config::from_toml_str(&toml, &LoadEnv::default()).unwrap()
    }

    /// Every heartbeat in the outbox, as (outbox account, envelope).
    async fn spooled(spool: &Spool) -> Vec<(String, serde_json::Value)> {
        spool
            .run(|s| s.read_batch(Destination::Hec, 1000, usize::MAX))
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.account, serde_json::from_slice(&r.event).unwrap()))
            .filter(|(_, e): &(String, serde_json::Value)| e["sourcetype"] == HEARTBEAT_SOURCETYPE)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_every_interval_says_what_telemetry_and_the_spool_say() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let c = config("[heartbeat]\ninterval = \"5m\"");
        let (stats, health) = (Arc::new(Stats::default()), Arc::new(Health::default()));
        // acme polled and stored a window; beta fails; delivery retries; one event waits.
        let now = now_ms();
        let cursor = now - 90_000;
        let rec = NewRecord::new("r1", b"{\"event\":{}}".to_vec());
        spool.enqueue_page("acme", &[rec], Some(cursor)).unwrap();
        stats
            .account("acme")
            .last_poll_ms
            .store(now - 1_000, Ordering::Relaxed);
        stats.last_delivery_ms.store(now - 2_000, Ordering::Relaxed);
        health.set(&Component::Account("acme".into()), State::Ok, None);
        health.set(
            &Component::Account("beta".into()),
            State::Failing,
            Some("RingCentral refused the credentials (401)".into()),
        );
        health.set(
            &Component::Hec,
            State::Degraded,
            Some("HEC answered 503".into()),
        );

        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Heartbeat::new(c.clone(), spool.clone(), stats.clone(), health.clone())
                .run(stop.clone()),
        );
        // Nothing at start, one per interval after.
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert_eq!(
            spooled(&spool).await.len(),
            0,
            "the first comes after one interval"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(spooled(&spool).await.len(), 1);
        tokio::time::sleep(Duration::from_secs(300 * 3)).await;
        let beats = spooled(&spool).await;
        assert_eq!(beats.len(), 4, "one every 5 minutes: 5, 10, 15, 20");
        stop.cancel();
        task.await.unwrap();

        let (account, env) = &beats[0];
        assert_eq!(account, INTERNAL_ACCOUNT, "in the outbox under no account");
        assert_eq!(env["source"], crate::transform::INTERNAL_SOURCE);
        assert_eq!(env["host"], "fwd1");
        assert_eq!(env["index"], "audit");
        assert!(env.get("fields").is_none(), "no rc_account: not a record");
        let e = &env["event"];
        assert_eq!(e["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(e["forwarder_host"], "fwd1");
        assert_eq!(e["status"], "failing");
        assert_eq!(e["interval_s"], 300);
        assert_eq!(e["delivery_state"], "degraded");
        assert_eq!(e["delivery_reason"], "HEC answered 503");
        assert_eq!(e["last_delivery"], ms_rfc3339(now - 2_000).unwrap());
        assert_eq!(
            e["spool_depth"], 1,
            "the record (the heartbeat counts after it)"
        );
        assert!(e["spool_oldest_age_s"].as_i64().unwrap() >= 0);
        assert_eq!(e["dead_letters"], 0);
        let acme = &e["accounts"][0];
        assert_eq!(acme["account"], "acme");
        assert_eq!(acme["state"], "ok");
        assert_eq!(acme["reason"], serde_json::Value::Null);
        assert_eq!(acme["cursor"], ms_rfc3339(cursor).unwrap());
        assert!(acme["cursor_lag_s"].as_i64().unwrap() >= 90);
        assert_eq!(acme["last_poll"], ms_rfc3339(now - 1_000).unwrap());
        let beta = &e["accounts"][1];
        assert_eq!(beta["account"], "beta");
        assert_eq!(beta["state"], "failing");
        assert_eq!(beta["reason"], "RingCentral refused the credentials (401)");
        assert_eq!(beta["cursor"], serde_json::Value::Null);
        assert_eq!(beta["last_poll"], serde_json::Value::Null);
        assert_eq!(e["accounts"].as_array().unwrap().len(), 2);
        // Later heartbeats count the earlier ones waiting in the spool.
        assert_eq!(beats[3].1["event"]["spool_depth"], 4);
        // No record id was remembered, no cursor moved.
        let status = spool.run(|s| s.status()).await.unwrap();
        assert_eq!(status.cursors, vec![("acme".to_string(), cursor)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_of_zero_sends_none() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let c = config("[heartbeat]\ninterval = \"0s\"");
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Heartbeat::new(c, spool.clone(), Default::default(), Default::default())
                .run(stop.clone()),
        );
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert!(task.is_finished(), "off: the loop does not even run");
        assert_eq!(spool.run(|s| s.depth()).await.unwrap(), 0);
    }

    #[test]
    fn the_interval_defaults_to_five_minutes_and_refuses_a_flood() {
        assert_eq!(config("").heartbeat.interval, Duration::from_secs(300));
        let toml = |v: &str| {
            format!(
                "[[accounts]]\nname = \"a\"\nclient_id = \"c\"\nclient_secret = \"s\"\njwt = \"j\"\n\
                 [hec]\nurl = \"https://h:8088\"\ntoken = \"t\"\n[heartbeat]\ninterval = \"{v}\"\n"
            )
        };
        let e = Config::from_toml_str(&toml("1s"), &LoadEnv::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("heartbeat.interval"), "{e}");
        assert!(Config::from_toml_str(&toml("10s"), &LoadEnv::default()).is_ok());
        assert!(Config::from_toml_str(&toml("0s"), &LoadEnv::default()).is_ok());
    }
}
