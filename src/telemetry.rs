//! Logging setup, counters, and the health state of each account and of the sink.
//!
//! Counters are plain atomics so the hot paths pay almost nothing; the `demo` summary, the
//! `once` report and the admin endpoint (`/metrics`, rendered by `admin::metrics`) read them.
//! Per-account counters live in [`AccountStats`], so with dozens of accounts each one's
//! traffic, errors and lag can be told apart. Logging ([`logging`]) is text, JSON, or
//! journald-friendly text, with warnings and errors rate-limited per call site.

pub mod logging;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use self::logging::init_logging;
pub use self::metrics::{AccountStats, Histogram, LATENCY_BUCKETS};

/// A HEC answer as counted: (URL, HTTP status, HEC code).
pub type HecAnswer = (String, u16, Option<i64>);

/// Pipeline counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent to RingCentral (token and search).
    pub rc_requests: AtomicU64,
    /// RingCentral 429 responses.
    pub rc_rate_limited: AtomicU64,
    /// Records received from RingCentral (including re-polled ones).
    pub records_polled: AtomicU64,
    /// Records newly written to the spool.
    pub records_spooled: AtomicU64,
    /// Records skipped because their id was already spooled (window overlap).
    pub records_duplicate: AtomicU64,
    /// Windows completed (cursor committed).
    pub windows_completed: AtomicU64,
    /// Windows whose `totalFound` was near the API's 10,000-record limit (records may be lost
    /// upstream: poll more often).
    pub windows_near_limit: AtomicU64,
    /// HEC requests sent.
    pub hec_requests: AtomicU64,
    /// HEC requests that failed (any non-success outcome).
    pub hec_failures: AtomicU64,
    /// Events HEC accepted (deleted from the spool).
    pub events_delivered: AtomicU64,
    /// Events moved to the dead-letter table.
    pub events_dead_lettered: AtomicU64,
    /// HEC requests that got no answer within `hec.timeout` (each may duplicate a batch).
    pub hec_timeouts: AtomicU64,
    /// Batches resent because their indexer acknowledgement did not arrive in time.
    pub ack_resends: AtomicU64,
    /// Events in requests whose fate HEC never told us (timeout): they are resent, so Splunk
    /// may hold them twice.
    pub events_duplicate_suspected: AtomicU64,
    /// When HEC last accepted events (ms since the epoch; 0 = not since start).
    pub last_delivery_ms: AtomicI64,
    /// DynamoDB requests sent (BatchWriteItem, and PutItem to isolate a refused item).
    pub dynamodb_requests: AtomicU64,
    /// DynamoDB requests that did not write every item (throttled, 5xx, no answer, paused).
    pub dynamodb_failures: AtomicU64,
    /// Items DynamoDB handed back as `UnprocessedItems` (resent after a backoff).
    pub dynamodb_unprocessed: AtomicU64,
    /// Items DynamoDB wrote (their rows leave DynamoDB's outbox).
    pub dynamodb_items_written: AtomicU64,
    /// Records moved to the dead letters for DynamoDB (over the item size limit, refused).
    pub dynamodb_dead_lettered: AtomicU64,
    /// When DynamoDB last wrote items (ms since the epoch; 0 = not since start).
    pub dynamodb_last_delivery_ms: AtomicI64,
    /// HEC answers by (URL, HTTP status, HEC code); status 0 = no answer (timeout, refused).
    pub hec_responses: Mutex<BTreeMap<HecAnswer, u64>>,
    /// Per-account counters, created on first use.
    pub accounts: Mutex<BTreeMap<String, Arc<AccountStats>>>,
    /// How long HEC requests took, until the answer was read (timeouts included).
    pub hec_request_seconds: Histogram,
    /// How long RingCentral requests (token and search) took until the status arrived.
    pub rc_request_seconds: Histogram,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The counters of `account` (created on first use, then shared).
    pub fn account(&self, account: &str) -> Arc<AccountStats> {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(account.to_string())
            .or_default()
            .clone()
    }

    /// Counts one HEC answer.
    pub fn hec_response(&self, url: &str, status: u16, code: Option<i64>) {
        *self
            .hec_responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((url.to_string(), status, code))
            .or_default() += 1;
    }
}

/// Health of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Working.
    Ok,
    /// Retrying a transient failure.
    Degraded,
    /// Stopped by a problem an operator must fix (credentials, permission, token, disk).
    Failing,
}

/// A component's state and the reason for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentHealth {
    /// The state.
    pub state: State,
    /// Why, when not ok.
    pub reason: Option<String>,
}

/// A health component: what `/healthz`, `/metrics` (`component="..."`) and the logs report a
/// state for. Its [`Display`](std::fmt::Display) form is the wire name (`account:acme`), and
/// [`FromStr`](std::str::FromStr) reads it back, so no caller builds or takes apart the string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// Delivery as a whole (`hec`).
    Hec,
    /// Delivery to DynamoDB (`dynamodb`).
    DynamoDb,
    /// One HEC URL (`hec:<url>`).
    HecUrl(String),
    /// One account's polling (`account:<name>`).
    Account(String),
    /// This host's clock against an account's RingCentral server (`clock:<account>`).
    Clock(String),
    /// A loop the watchdog saw stall (`loop:<name>`).
    Loop(String),
    /// The spool file itself (`spool`).
    Spool,
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Hec => f.write_str("hec"),
            Component::DynamoDb => f.write_str("dynamodb"),
            Component::HecUrl(url) => write!(f, "hec:{url}"),
            Component::Account(name) => write!(f, "account:{name}"),
            Component::Clock(account) => write!(f, "clock:{account}"),
            Component::Loop(name) => write!(f, "loop:{name}"),
            Component::Spool => f.write_str("spool"),
        }
    }
}

/// A component name that is not one of [`Component`]'s wire forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown health component {0:?} (expected hec, hec:<url>, dynamodb, account:<name>, clock:<account>, loop:<name> or spool)"
)]
pub struct UnknownComponent(pub String);

impl std::str::FromStr for Component {
    type Err = UnknownComponent;

    fn from_str(s: &str) -> Result<Component, UnknownComponent> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let rest = rest.to_string();
        match (kind, s.contains(':')) {
            ("hec", false) => Ok(Component::Hec),
            ("spool", false) => Ok(Component::Spool),
            ("dynamodb", false) => Ok(Component::DynamoDb),
            ("hec", true) => Ok(Component::HecUrl(rest)),
            ("account", true) => Ok(Component::Account(rest)),
            ("clock", true) => Ok(Component::Clock(rest)),
            ("loop", true) => Ok(Component::Loop(rest)),
            _ => Err(UnknownComponent(s.to_string())),
        }
    }
}

/// Health per [`Component`].
#[derive(Debug, Default)]
pub struct Health {
    components: Mutex<BTreeMap<Component, ComponentHealth>>,
}

impl Health {
    /// Sets a component's state; returns true when it changed (callers log transitions once).
    pub fn set(&self, component: &Component, state: State, reason: Option<String>) -> bool {
        let mut map = self.components.lock().unwrap_or_else(|p| p.into_inner());
        let new = ComponentHealth { state, reason };
        let changed = map
            .get(component)
            .is_none_or(|old| old.state != new.state || old.reason != new.reason);
        map.insert(component.clone(), new);
        changed
    }

    /// Forgets a component (an account removed by a reload).
    pub fn remove(&self, component: &Component) {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(component);
    }

    /// A copy of every component's health.
    pub fn components(&self) -> BTreeMap<Component, ComponentHealth> {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A copy of every component's health by wire name (`account:acme`), in name order.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentHealth> {
        self.components()
            .into_iter()
            .map(|(c, h)| (c.to_string(), h))
            .collect()
    }
}

/// The `/healthz` document: the worst state overall, every component with its reason, and the
/// same grouped for people and monitors: `accounts` by name, `hec` by URL (`"*"` for delivery
/// as a whole), `loops` by name, `clocks` by account. The admin endpoint writes it and
/// `spool status` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthDoc {
    /// The worst state of any component.
    pub status: State,
    /// `account:<name>` by name.
    pub accounts: BTreeMap<String, ComponentHealth>,
    /// `hec` (as `*`) and `hec:<url>` by URL.
    pub hec: BTreeMap<String, ComponentHealth>,
    /// `loop:<name>` by name.
    pub loops: BTreeMap<String, ComponentHealth>,
    /// `clock:<account>` by account.
    pub clocks: BTreeMap<String, ComponentHealth>,
    /// Every component by its wire name.
    pub components: BTreeMap<String, ComponentHealth>,
}

impl HealthDoc {
    /// The document of `health` now.
    pub fn of(health: &Health) -> HealthDoc {
        let components = health.components();
        let status = components
            .values()
            .map(|c| c.state)
            .max_by_key(|s| match s {
                State::Ok => 0,
                State::Degraded => 1,
                State::Failing => 2,
            })
            .unwrap_or(State::Ok);
        let mut doc = HealthDoc {
            status,
            accounts: BTreeMap::new(),
            hec: BTreeMap::new(),
            loops: BTreeMap::new(),
            clocks: BTreeMap::new(),
            components: BTreeMap::new(),
        };
        for (component, h) in components {
            let (group, key) = match &component {
                Component::Account(name) => (&mut doc.accounts, name.clone()),
                Component::Hec => (&mut doc.hec, "*".to_string()),
                Component::HecUrl(url) => (&mut doc.hec, url.clone()),
                Component::Loop(name) => (&mut doc.loops, name.clone()),
                Component::Clock(account) => (&mut doc.clocks, account.clone()),
                Component::Spool | Component::DynamoDb => {
                    doc.components.insert(component.to_string(), h);
                    continue;
                }
            };
            group.insert(key, h.clone());
            doc.components.insert(component.to_string(), h);
        }
        doc
    }
}

/// The `/healthz` document ([`HealthDoc`]) as JSON, and its overall state.
pub fn render_health(health: &Health) -> (State, serde_json::Value) {
    let doc = HealthDoc::of(health);
    (doc.status, serde_json::to_value(&doc).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_print_and_parse_as_their_wire_names() {
        let all = [
            (Component::Hec, "hec"),
            (
                Component::HecUrl("https://h:8088".into()),
                "hec:https://h:8088",
            ),
            (Component::Account("acme:eu".into()), "account:acme:eu"),
            (Component::Clock("acme".into()), "clock:acme"),
            (Component::Loop("poll:acme".into()), "loop:poll:acme"),
            (Component::Spool, "spool"),
            (Component::DynamoDb, "dynamodb"),
        ];
        for (component, wire) in all {
            assert_eq!(component.to_string(), wire);
            assert_eq!(wire.parse::<Component>(), Ok(component));
        }
        assert!("accounts:acme".parse::<Component>().is_err());
        assert!("spool:x".parse::<Component>().is_err());
    }

    #[test]
    fn healthz_groups_components_by_kind() {
        let health = Health::default();
        health.set(
            &Component::Account("acme".into()),
            State::Failing,
            Some("403".into()),
        );
        health.set(&Component::HecUrl("https://h".into()), State::Ok, None);
        health.set(&Component::Hec, State::Degraded, Some("503".into()));
        health.set(&Component::Loop("sink".into()), State::Failing, None);
        health.set(&Component::Clock("acme".into()), State::Degraded, None);
        health.set(&Component::Spool, State::Ok, None);
        let (worst, doc) = render_health(&health);
        assert_eq!(worst, State::Failing);
        assert_eq!(doc["accounts"]["acme"]["reason"], "403");
        assert_eq!(doc["hec"]["*"]["state"], "degraded");
        assert_eq!(doc["hec"]["https://h"]["state"], "ok");
        assert_eq!(doc["loops"]["sink"]["state"], "failing");
        assert_eq!(doc["clocks"]["acme"]["state"], "degraded");
        assert_eq!(doc["components"]["spool"]["state"], "ok");
        assert_eq!(doc["components"]["account:acme"]["state"], "failing");
    }
}
