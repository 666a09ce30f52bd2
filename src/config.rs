//! Configuration: TOML file plus `RC_AUDIT_HEC_*` environment overrides, validated before anything
//! starts.
//!
//! Loading is two steps. [figment] merges the file and the environment (`__` separates nesting,
//! so `RC_AUDIT_HEC_HEC__BATCH_MAX_BYTES` is `hec.batch_max_bytes`) into the `Raw*` structs, which
//! deny unknown keys; figment's errors already name the key and where it came from. Then
//! [`Config::from_figment`] checks every value and resolves secrets (inline or `*_file`, relative
//! paths looked up in `$CREDENTIALS_DIRECTORY`); its errors name the key and its origin too.
//!
//! Secrets live in [`Secret`] from here on: its `Debug` and `Serialize` print `[REDACTED]`, so the
//! `config` command, logs and error messages cannot show them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where `--config` points when it is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rc-audit-hec/config.toml";
/// Prefix of environment overrides; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "RC_AUDIT_HEC_";
/// RingCentral keeps 180 days of audit trail; asking for more is pointless.
pub const MAX_LOOKBACK: Duration = Duration::from_secs(180 * 24 * 3600);
/// The audit-trail search pages at most 1000 records.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The production RingCentral platform.
pub const DEFAULT_SERVER_URL: &str = "https://platform.ringcentral.com";
/// The sourcetype the Splunk app defines its knowledge for.
pub const DEFAULT_SOURCETYPE: &str = "ringcentral:audit";
/// Default of `spool.min_free_bytes`: free space polling leaves on the spool's filesystem
/// (the spool re-exports it as the limit it starts with).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;
/// The state directory of the documented systemd unit (`StateDirectory=rc-audit-hec`). A
/// command run from an admin shell has no `$STATE_DIRECTORY`, so it looks here before falling
/// back to `./state`: the service and the shell must agree on where the spool is.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/rc-audit-hec";

/// A configuration problem. Every variant names the key and where its value came from, and the
/// message says how to fix it. The process exits 78 (`EX_CONFIG`) on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file is not there.
    #[error(
        "config file {0} does not exist: create it (see examples/config.example.toml) or pass --config FILE"
    )]
    MissingFile(PathBuf),
    /// The file or the environment does not parse into the schema (unknown key, wrong type...).
    #[error("{0}")]
    Parse(String),
    /// Several problems, each on its own line.
    #[error("{} problems in the configuration:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    /// A value parsed but is not acceptable.
    #[error("{key} (from {origin}): {problem}")]
    Invalid {
        /// Dotted key, e.g. `hec.batch_max_events`.
        key: String,
        /// File or environment variable the value came from.
        origin: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// A secret (token, client secret, JWT). Cheap to clone, never printed.
#[derive(Clone)]
pub struct Secret(Arc<SecretString>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::new(SecretString::from(value.into())))
    }
    /// The secret itself: call only where a request header or body is built.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[REDACTED]")
    }
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// One entry per RingCentral account; names are unique.
    pub accounts: Vec<AccountConfig>,
    /// How and how often the audit trail is polled.
    pub poll: PollConfig,
    /// Splunk HEC delivery, when configured (`[hec]`; at least one of it and `dynamodb` is).
    pub hec: Option<HecConfig>,
    /// The durable buffer between poller and sink.
    pub spool: SpoolConfig,
    /// The admin HTTP endpoint.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// The periodic heartbeat event.
    pub heartbeat: HeartbeatConfig,
    /// Reconciliation: each closed period's count at RingCentral against the spool's.
    pub reconcile: ReconcileConfig,
    /// The AWS DynamoDB destination, when configured (beside or instead of HEC).
    pub dynamodb: Option<DynamoDbConfig>,
}

/// Where records are delivered. Each configured destination has its own outbox in the spool,
/// its own delivery loop, dead letters, metrics and health; a record is enqueued once per
/// destination in the transaction that spools it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// Splunk HTTP Event Collector (`[hec]`).
    Hec,
    /// AWS DynamoDB (`[dynamodb]`).
    DynamoDb,
}

impl Destination {
    /// Every destination, in a fixed order.
    pub const ALL: [Destination; 2] = [Destination::Hec, Destination::DynamoDb];

    /// The name used in the spool, logs, metrics labels and `--destination`.
    pub fn name(self) -> &'static str {
        match self {
            Destination::Hec => "hec",
            Destination::DynamoDb => "dynamodb",
        }
    }

    /// The destination called `name` (as written by [`Destination::name`]).
    pub fn from_name(name: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[dynamodb]`: AWS DynamoDB as a destination (see [`crate::dynamodb`]). Credentials are not
/// configured here: they come from the standard AWS chain (environment, shared profile, web
/// identity, instance metadata), read by the official SDK.
#[derive(Debug, Clone, Serialize)]
pub struct DynamoDbConfig {
    /// The table name.
    pub table: String,
    /// The AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Another endpoint than AWS's (a local DynamoDB, a VPC endpoint); plain http on loopback only.
    pub endpoint_url: Option<String>,
    /// When set, each item carries a TTL attribute ([`DYNAMODB_TTL_ATTRIBUTE`]) this long after
    /// the record's time, so DynamoDB expires it.
    #[serde(serialize_with = "ser_opt_duration")]
    pub ttl: Option<Duration>,
    /// Whether `rc-audit-hec dynamodb create-table` may create the table (false: the table is
    /// managed elsewhere, and the command refuses).
    pub create_table: bool,
}

/// The name of the TTL attribute (epoch seconds) written when `dynamodb.ttl` is set.
pub const DYNAMODB_TTL_ATTRIBUTE: &str = "expiresAt";

impl Config {
    /// The configured destinations, in [`Destination::ALL`] order.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut out = Vec::new();
        if self.hec.is_some() {
            out.push(Destination::Hec);
        }
        if self.dynamodb.is_some() {
            out.push(Destination::DynamoDb);
        }
        out
    }

    /// The settings every spooled event is rendered with (index, sourcetype, host, routes):
    /// `[hec]`'s, or the defaults when HEC is not configured. Every destination stores the same
    /// envelope (the DynamoDB sink reads the record and its time out of it), so a record is
    /// rendered once whichever destinations are configured.
    pub fn envelope_settings(&self) -> std::borrow::Cow<'_, HecConfig> {
        match &self.hec {
            Some(hec) => std::borrow::Cow::Borrowed(hec),
            None => std::borrow::Cow::Owned(HecConfig {
                urls: Vec::new(),
                token: Secret::new(""),
                index: None,
                sourcetype: DEFAULT_SOURCETYPE.to_string(),
                host: default_host(),
                gzip: true,
                batch_max_events: default_batch_events(),
                batch_max_bytes: default_batch_bytes().0 as usize,
                timeout: default_timeout(),
                use_ack: false,
                ack_timeout: default_ack_timeout(),
                tls_ca_file: None,
                tls_verify: true,
                routes: Vec::new(),
            }),
        }
    }
}

/// Reconciliation (see [`crate::reconcile`]): for each account and closed period, RingCentral's
/// count against the distinct record ids spooled, with a repair when RingCentral holds more.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileConfig {
    /// Off: no counts are asked for and no reconciliation events are sent.
    pub enabled: bool,
    /// Length of a period; periods are aligned to the Unix epoch, so `1d` is a UTC day.
    #[serde(serialize_with = "ser_duration")]
    pub period: Duration,
    /// How long after a period closes it is counted, so records RingCentral shows late are in.
    #[serde(serialize_with = "ser_duration")]
    pub delay: Duration,
    /// How far back closed periods are checked (at start, and after an outage).
    #[serde(serialize_with = "ser_duration")]
    pub lookback: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            enabled: true,
            period: Duration::from_secs(86_400),
            delay: Duration::from_secs(2 * 3600),
            lookback: Duration::from_secs(7 * 86_400),
        }
    }
}

/// `[heartbeat]`: the event the forwarder sends about itself, through the spool, so Splunk can
/// tell a quiet tenant from a silent forwarder.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatConfig {
    /// How often; zero turns the heartbeat off.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
}

/// The heartbeat's default interval: often enough for a "forwarder silent" alert within the
/// hour, rare enough to cost nothing (288 small events a day).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(300);

/// The shortest heartbeat interval accepted (other than zero, off).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// One RingCentral account to poll.
#[derive(Debug, Clone, Serialize)]
pub struct AccountConfig {
    /// Short unique name: in `source`, the `rc_account` field, logs and spool cursors.
    pub name: String,
    /// RingCentral platform base URL.
    pub server_url: String,
    /// `~` means the JWT user's own account.
    pub account_id: String,
    /// App client id (not secret, but not printed in full either is unnecessary).
    pub client_id: String,
    /// App client secret.
    pub client_secret: Secret,
    /// JWT credential of the (admin) user the app acts as.
    pub jwt: Secret,
    /// Overrides `hec.index` for this account's events.
    pub index: Option<String>,
    /// Overrides `hec.sourcetype` for this account's events.
    pub sourcetype: Option<String>,
}

impl AccountConfig {
    /// What makes two entries the same RingCentral account: the server and the account id; for
    /// `~` (the JWT user's account, unknown until a token is issued), the server, the app and
    /// the JWT, so two entries presenting the same JWT are the same account. (Two different JWTs
    /// of one user are not detected; give `account_id` explicitly to have them detected.)
    pub fn identity(&self) -> (&str, &str, Option<(&str, &str)>) {
        let jwt = (self.account_id == "~").then(|| (self.client_id.as_str(), self.jwt.expose()));
        (self.server_url.as_str(), self.account_id.as_str(), jwt)
    }

    /// [`Self::identity`] as a stable digest, to store in the spool (renames are detected by
    /// it; the JWT enters only hashed).
    pub fn identity_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let (server, account, jwt) = self.identity();
        let mut h = Sha256::new();
        for part in [
            server,
            account,
            jwt.map_or("", |j| j.0),
            jwt.map_or("", |j| j.1),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The identity for messages (never the JWT).
    fn identity_text(&self) -> String {
        if self.account_id == "~" {
            format!(
                "server_url {}, account_id \"~\" with the same client_id and JWT",
                self.server_url
            )
        } else {
            format!(
                "server_url {}, account_id {}",
                self.server_url, self.account_id
            )
        }
    }
}

/// Polling schedule and search options.
#[derive(Debug, Clone, Serialize)]
pub struct PollConfig {
    /// Pause between polls of one account.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// How far each window reaches back before the cursor, for records that become visible late.
    #[serde(serialize_with = "ser_duration")]
    pub overlap: Duration,
    /// How far behind "now" a window ends, so records still being written are not missed.
    #[serde(serialize_with = "ser_duration")]
    pub settle_delay: Duration,
    /// Records per page, 1..=1000.
    pub page_size: u32,
    /// Where the first poll of a new account starts (at most 180 days back).
    #[serde(serialize_with = "ser_duration")]
    pub initial_lookback: Duration,
    /// Sent as RingCentral's own sample does; not in the spec.
    pub include_admins: bool,
    /// Sent as RingCentral's own sample does; not in the spec.
    pub include_hidden: bool,
}

/// Splunk HEC delivery.
#[derive(Debug, Clone, Serialize)]
pub struct HecConfig {
    /// Base URLs (`https://host:8088`); the sink fails over between them.
    pub urls: Vec<String>,
    /// HEC token.
    pub token: Secret,
    /// Default index; `None` uses the token's default index.
    pub index: Option<String>,
    /// Default sourcetype.
    pub sourcetype: String,
    /// `host` of every event.
    pub host: String,
    /// Gzip request bodies.
    pub gzip: bool,
    /// Events per request at most.
    pub batch_max_events: usize,
    /// Uncompressed bytes per request at most (a single larger event is sent alone).
    pub batch_max_bytes: usize,
    /// Request timeout; generous so a loaded Splunk is not sent duplicates.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Indexer acknowledgement: a batch leaves the spool only when its ack reads true.
    pub use_ack: bool,
    /// With `use_ack`: resend a batch whose ack has not read true after this long (doubled per
    /// resend of the same batch, see [`crate::hec::ack`]).
    #[serde(serialize_with = "ser_duration")]
    pub ack_timeout: Duration,
    /// Extra PEM trust root for a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// Verify the server certificate (false only for testing, with a warning).
    pub tls_verify: bool,
    /// Index/sourcetype routing by `actionId` glob; first match wins.
    pub routes: Vec<Route>,
}

/// A routing rule.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Glob over `actionId` (`*` and `?`, ASCII case-insensitive).
    pub action_id: String,
    /// Index for matching events.
    pub index: Option<String>,
    /// Sourcetype for matching events.
    pub sourcetype: Option<String>,
}

/// The spool.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolConfig {
    /// State directory holding `spool.db`.
    pub dir: PathBuf,
    /// Polling pauses when the spool file reaches this size.
    pub max_bytes: u64,
    /// Polling pauses when the spool's filesystem has less than this free (plus the delivery
    /// reserve while it is used), so delivery keeps room to delete on a full disk.
    pub min_free_bytes: u64,
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    /// Listen address; `None` when configured as `""`.
    pub listen: Option<SocketAddr>,
}

/// Log output.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `rc_audit_hec=debug`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human readable, one line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Facts from the process environment that affect loading; separate so tests can set them.
#[derive(Debug, Clone, Default)]
pub struct LoadEnv {
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
    /// `$STATE_DIRECTORY` (systemd `StateDirectory=`).
    pub state_directory: Option<PathBuf>,
    /// [`SYSTEM_STATE_DIR`] when it exists on this machine.
    pub system_state_dir: Option<PathBuf>,
}

impl LoadEnv {
    /// Reads the variables from the process environment.
    pub fn from_process() -> Self {
        let dir = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        LoadEnv {
            credentials_directory: dir("CREDENTIALS_DIRECTORY"),
            // systemd may pass several colon-separated directories; the first is ours.
            state_directory: dir("STATE_DIRECTORY").map(|p| {
                let s = p.to_string_lossy().into_owned();
                PathBuf::from(s.split(':').next().unwrap_or_default())
            }),
            system_state_dir: Some(PathBuf::from(SYSTEM_STATE_DIR)).filter(|d| d.exists()),
        }
    }

    /// The state directory when `spool.dir` is not set: `$STATE_DIRECTORY`, else
    /// [`SYSTEM_STATE_DIR`] if it exists, else `./state`. The one place this rule lives.
    pub fn default_state_dir(&self) -> PathBuf {
        self.state_directory
            .clone()
            .or_else(|| self.system_state_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./state"))
    }
}

/// Whether [`Config`] loading reads the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read every secret (inline or `*_file`); a missing one is an error.
    Resolve,
    /// Leave them unread, as empty [`Secret`]s: for admin commands (`backfill` handing work to
    /// the running service, `spool requeue`) run from a shell that cannot read the service's
    /// credentials. Such a config must never build a RingCentral or HEC client.
    Skip,
}

impl Config {
    /// Loads `path` (which must exist) merged with `RC_AUDIT_HEC_*` environment variables.
    pub fn load(path: &Path, env: &LoadEnv) -> Result<Config, ConfigError> {
        let figment = Config::sources(path)?;
        Config::from_figment(&figment, env)
    }

    /// The file (which must exist) merged with the `RC_AUDIT_HEC_*` environment variables.
    fn sources(path: &Path) -> Result<Figment, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        Ok(Figment::new()
            .merge(Toml::file_exact(path))
            .merge(RawEnv::from_process()))
    }

    /// Like [`Config::load`], but without reading any secret (see [`Secrets::Skip`]).
    pub fn load_without_secrets(path: &Path, env: &LoadEnv) -> Result<Config, ConfigError> {
        let figment = Config::sources(path)?;
        Config::from_figment_with(&figment, env, Secrets::Skip)
    }

    /// Loads a TOML document given as a string (tests, the demo).
    pub fn from_toml_str(toml: &str, env: &LoadEnv) -> Result<Config, ConfigError> {
        Config::from_figment(&Figment::from(Toml::string(toml)), env)
    }

    /// Extracts and validates; see the module docs.
    pub fn from_figment(figment: &Figment, env: &LoadEnv) -> Result<Config, ConfigError> {
        Config::from_figment_with(figment, env, Secrets::Resolve)
    }

    /// [`Config::from_figment`], reading the secrets or not.
    pub fn from_figment_with(
        figment: &Figment,
        env: &LoadEnv,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        // Lossy: environment values are strings, and `"1000"` must still fill a number.
        let raw: RawConfig = figment.extract_lossy().map_err(|e| {
            ConfigError::Parse(
                e.into_iter()
                    .map(|e| describe_figment_error(&e))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        Validator {
            figment,
            env,
            secrets,
            problems: Default::default(),
        }
        .config(raw)
    }

    /// [`Config::load`], rendered for the `config` command: the effective configuration as TOML
    /// (secrets `[REDACTED]`), each value followed by where it came from: the file, the exact
    /// environment variable, or the default; for a secret read from a file, which file.
    pub fn load_annotated(path: &Path, env: &LoadEnv) -> Result<String, ConfigError> {
        let figment = Config::sources(path)?;
        let config = Config::from_figment(&figment, env)?;
        Ok(annotate(&config.to_redacted_toml(), &figment, env))
    }

    /// The effective configuration as TOML, secrets shown as `[REDACTED]`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `RC_AUDIT_HEC_*` variables as configuration, every value kept as the exact string it is.
///
/// figment's own `Env` provider parses values, so `007` (a numeric account id or secret) would
/// arrive as the number 7 and `1.5e3` as a float echoed in error messages. Here only values that
/// look like a TOML array or table (`["a","b"]`, for `hec.urls`) are parsed; extraction is lossy,
/// so a string still fills a number or boolean key.
pub struct RawEnv {
    vars: Vec<(String, String)>,
}

impl RawEnv {
    /// The process environment's variables with [`ENV_PREFIX`].
    pub fn from_process() -> Self {
        RawEnv::from_vars(std::env::vars())
    }

    /// The given variables with [`ENV_PREFIX`] (tests).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        RawEnv {
            vars: vars
                .into_iter()
                .filter_map(|(k, v)| {
                    let key = k
                        .strip_prefix(ENV_PREFIX)?
                        .to_lowercase()
                        .replace("__", ".");
                    (!key.is_empty()).then_some((key, v))
                })
                .collect(),
        }
    }
}

impl figment::Provider for RawEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        fn merge(into: &mut Dict, from: Dict) {
            for (k, v) in from {
                match (into.get_mut(&k), v) {
                    (Some(Value::Dict(_, a)), Value::Dict(_, b)) => merge(a, b),
                    (_, v) => {
                        into.insert(k, v);
                    }
                }
            }
        }
        let mut dict = Dict::new();
        for (key, value) in &self.vars {
            if key == "accounts" || key.starts_with("accounts.") {
                // `accounts` is a list in the file: an override would have to name an entry by
                // position, which silently changes meaning when the file is edited.
                return Err(figment::Error::from(format!(
                    "{}: accounts cannot be set or changed from the environment (they are a list, \
                     matched by position). Put every account in the config file; keep its secrets \
                     out of it with client_secret_file and jwt_file (systemd credentials, or \
                     root-only files)",
                    env_var_name(key)
                )));
            }
            let trimmed = value.trim_start();
            let parsed = if trimmed.starts_with('[') || trimmed.starts_with('{') {
                value
                    .parse::<Value>()
                    .unwrap_or_else(|_| Value::from(value.clone()))
            } else {
                Value::from(value.clone())
            };
            if let Value::Dict(_, nested) = figment::util::nest(key, parsed) {
                merge(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Where a value came from, for people. A file is named by the path it was loaded from:
/// figment's own display shortens it relative to the working directory when that is shorter
/// (`../.tmpX/config.toml` from `/tmp/ci`), which reads differently from every directory.
fn source_text(src: &figment::Source) -> String {
    match src {
        figment::Source::File(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

/// Figment's own message plus the exact environment variable when the value came from there.
fn describe_figment_error(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let origin = e.metadata.as_ref().map(|m| {
        if m.name.contains("environment") {
            format!("environment variable {}", env_var_name(&key))
        } else {
            match &m.source {
                Some(src) => source_text(src),
                None => m.name.to_string(),
            }
        }
    });
    let kind = &e.kind;
    match (key.is_empty(), origin) {
        (false, Some(origin)) => format!("{key} (from {origin}): {kind}"),
        (false, None) => format!("{key}: {kind}"),
        (true, Some(origin)) => format!("{origin}: {kind}"),
        (true, None) => format!("{kind}"),
    }
}

/// The value at a dotted key, with numeric segments indexing arrays (`accounts.0.name`).
fn find_value(figment: &Figment, key: &str) -> Option<figment::value::Value> {
    let mut parts = key.split('.');
    let mut value = figment.find_value(parts.next()?).ok()?;
    for part in parts {
        value = match (value, part.parse::<usize>()) {
            (figment::value::Value::Array(_, items), Ok(i)) => items.into_iter().nth(i)?,
            (figment::value::Value::Dict(_, mut dict), _) => dict.remove(part)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Where the value at `key` came from, for people: `file /etc/...`, `environment variable X`,
/// or `None` (not given: a default).
fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    let value = find_value(figment, key)?;
    let meta = figment.get_metadata(value.tag())?;
    Some(if meta.name.contains("environment") {
        format!("environment variable {}", env_var_name(key))
    } else {
        match &meta.source {
            Some(src) => format!("file {}", source_text(src)),
            None => meta.name.to_string(),
        }
    })
}

/// Appends `# from ...` to every `key = value` line of the rendered config (see
/// [`Config::load_annotated`]).
fn annotate(rendered: &str, figment: &Figment, env: &LoadEnv) -> String {
    let mut out = String::new();
    let mut table = String::new();
    let mut counters: std::collections::HashMap<String, usize> = Default::default();
    for line in rendered.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|t| t.strip_suffix("]]"))
        {
            let n = counters.entry(name.to_string()).or_default();
            table = format!("{name}.{n}");
            *n += 1;
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            table = name.to_string();
        }
        let Some((k, _)) = trimmed
            .split_once(" = ")
            .filter(|_| !trimmed.starts_with('#'))
        else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let key = if table.is_empty() {
            k.to_string()
        } else {
            format!("{table}.{k}")
        };
        let file_key = format!("{key}_file");
        let origin = if let Some(file) = find_value(figment, &file_key) {
            let path = PathBuf::from(file.as_str().unwrap_or_default());
            let read = match &env.credentials_directory {
                Some(dir) if path.is_relative() => dir.join(&path),
                _ => std::path::absolute(&path).unwrap_or(path),
            };
            let set_in = origin_of(figment, &file_key).unwrap_or_else(|| "?".into());
            format!("read from {} ({file_key} from {set_in})", read.display())
        } else {
            match origin_of(figment, &key) {
                Some(o) => format!("from {o}"),
                None if key == "spool.dir" => {
                    "default ($STATE_DIRECTORY, else /var/lib/rc-audit-hec if it exists, else ./state)".into()
                }
                None if key == "hec.host" => "default (this machine's hostname)".into(),
                None if key == "hec.urls" => origin_of(figment, "hec.url")
                    .map_or_else(|| "default".into(), |o| format!("from {o} (as hec.url)")),
                None => "default".into(),
            }
        };
        out.push_str(&format!("{line}  # {origin}\n"));
    }
    out
}

/// `hec.batch_max_bytes` -> `RC_AUDIT_HEC_HEC__BATCH_MAX_BYTES`.
fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"))
}

struct Validator<'a> {
    figment: &'a Figment,
    env: &'a LoadEnv,
    secrets: Secrets,
    /// Every problem found: all are reported at once, not only the first.
    problems: std::cell::RefCell<Vec<ConfigError>>,
}

impl Validator<'_> {
    fn origin(&self, key: &str) -> String {
        match self.figment.find_metadata(key) {
            Some(m) if m.name.contains("environment") => {
                format!("environment variable {}", env_var_name(key))
            }
            Some(m) => match &m.source {
                Some(src) => source_text(src),
                None => m.name.to_string(),
            },
            None => "default".to_string(),
        }
    }

    /// Notes a problem; validation goes on, so the operator sees every problem in one run.
    fn flag(&self, e: ConfigError) {
        self.problems.borrow_mut().push(e);
    }

    /// The value, or `fallback` after noting the problem.
    fn keep<T>(&self, r: Result<T, ConfigError>, fallback: T) -> T {
        r.unwrap_or_else(|e| {
            self.flag(e);
            fallback
        })
    }

    fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        // Point at the key's own origin; for a missing key, at its parent table's.
        let mut probe = key.to_string();
        let origin = loop {
            if self.figment.find_metadata(&probe).is_some() || !probe.contains('.') {
                break self.origin(&probe);
            }
            probe.truncate(probe.rfind('.').unwrap_or(0));
        };
        ConfigError::Invalid {
            key: key.to_string(),
            origin,
            problem: problem.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.accounts.is_empty() {
            self.flag(self.invalid(
                "accounts",
                "at least one [[accounts]] entry is required (name, client_id, client_secret, jwt)",
            ));
        }
        let mut names = HashSet::new();
        let mut accounts = Vec::with_capacity(raw.accounts.len());
        for (i, a) in raw.accounts.into_iter().enumerate() {
            let key = |k: &str| format!("accounts.{i}.{k}");
            let Some(name) = a.name else {
                self.flag(self.invalid(&key("name"), "missing: give every account a name"));
                continue;
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.flag(self.invalid(
                    &key("name"),
                    format!(
                        "{name:?} must be non-empty and use only letters, digits, '-', '_' and '.'"
                    ),
                ));
            }
            if !names.insert(name.clone()) {
                self.flag(self.invalid(
                    &key("name"),
                    format!("{name:?} is used by two accounts; names must be unique"),
                ));
            }
            let server_url = a
                .server_url
                .unwrap_or_else(|| DEFAULT_SERVER_URL.to_string());
            self.keep(self.check_url(&key("server_url"), &server_url), ());
            let client_id = a.client_id.unwrap_or_else(|| {
                self.flag(self.invalid(
                    &key("client_id"),
                    "missing: the app's client id from the RingCentral developer console",
                ));
                String::new()
            });
            accounts.push(AccountConfig {
                client_secret: self.keep(
                    self.secret(&key("client_secret"), a.client_secret, a.client_secret_file),
                    Secret::new(""),
                ),
                jwt: self.keep(self.secret(&key("jwt"), a.jwt, a.jwt_file), Secret::new("")),
                name,
                server_url: server_url.trim_end_matches('/').to_string(),
                account_id: a.account_id.unwrap_or_else(|| "~".to_string()),
                client_id,
                index: self.keep(self.opt_name(&key("index"), a.index), None),
                sourcetype: self.keep(self.opt_name(&key("sourcetype"), a.sourcetype), None),
            });
        }

        // By identity, not pairwise: 10,000 accounts compared pairwise cost 50 million
        // comparisons at every start and reload.
        let mut first_of = HashMap::new();
        for (i, a) in accounts.iter().enumerate() {
            // Same name is reported above; a different name for the same account is this.
            let first = *first_of.entry(a.identity()).or_insert(i);
            let b = &accounts[first];
            if first != i && b.name != a.name {
                self.flag(self.invalid(
                    &format!("accounts.{i}"),
                    format!(
                        "accounts {:?} and {:?} are the same RingCentral account ({}); polling it twice would deliver every record twice. Keep one of them",
                        b.name,
                        a.name,
                        a.identity_text()
                    ),
                ));
            }
        }

        let p = raw.poll;
        let day = Duration::from_secs(86_400);
        if p.interval.is_zero() || p.interval > day {
            self.flag(self.invalid(
                "poll.interval",
                "must be more than 0 and at most 24h, e.g. \"5m\"",
            ));
        }
        if p.overlap > MAX_LOOKBACK {
            self.flag(self.invalid(
                "poll.overlap",
                "must be at most 180d (RingCentral keeps no more)",
            ));
        }
        if p.settle_delay > day {
            self.flag(self.invalid("poll.settle_delay", "must be at most 24h, e.g. \"1m\""));
        }
        if p.initial_lookback <= p.settle_delay {
            self.flag(self.invalid(
                "poll.initial_lookback",
                "must be longer than poll.settle_delay, or the first window is empty and the account is never polled",
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&p.page_size) {
            self.flag(self.invalid(
                "poll.page_size",
                format!(
                    "{} is out of range: the API pages 1 to {MAX_PAGE_SIZE} records",
                    p.page_size
                ),
            ));
        }
        if p.initial_lookback > MAX_LOOKBACK {
            self.flag(self.invalid(
                "poll.initial_lookback",
                "RingCentral keeps 180 days of audit trail: use \"180d\" or less",
            ));
        }
        let poll = PollConfig {
            interval: p.interval,
            overlap: p.overlap,
            settle_delay: p.settle_delay,
            page_size: p.page_size,
            initial_lookback: p.initial_lookback,
            include_admins: p.include_admins,
            include_hidden: p.include_hidden,
        };

        let hec = raw.hec.map(|h| self.hec(h));
        if hec.is_none() && raw.dynamodb.is_none() {
            self.flag(self.invalid(
                "hec",
                "no destination: configure [hec] (Splunk HTTP Event Collector), [dynamodb] (AWS DynamoDB), or both",
            ));
        }

        let dir = raw
            .spool
            .dir
            .unwrap_or_else(|| self.env.default_state_dir());
        let max_bytes = raw.spool.max_bytes.0;
        // An empty spool takes about 1 MiB (a 64 KiB page per table and index, two outboxes):
        // less than twice that would leave no room to poll.
        if max_bytes < 2 << 20 {
            self.flag(self.invalid("spool.max_bytes", "must be at least 2MiB"));
        }
        let listen = match raw.admin.listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            Some("") => None,
            Some(s) => s
                .parse()
                .map_err(|_| {
                    self.flag(self.invalid(
                        "admin.listen",
                        format!(
                            "{s:?} is not an address like \"127.0.0.1:9464\" (use \"\" to turn it off)"
                        ),
                    ))
                })
                .ok(),
        };
        let beat = raw.heartbeat.interval;
        if !beat.is_zero() && beat < MIN_HEARTBEAT_INTERVAL {
            self.flag(self.invalid(
                "heartbeat.interval",
                "must be \"0s\" (off) or at least \"10s\"",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            self.flag(self.invalid(
                "log.level",
                format!(
                    "{:?}: {e}; use error, warn, info, debug or trace",
                    raw.log.level
                ),
            ));
        }

        let r = raw.reconcile;
        if r.period < Duration::from_secs(60) || r.period > Duration::from_secs(7 * 86_400) {
            self.flag(self.invalid(
                "reconcile.period",
                "must be between 1m and 7d, e.g. \"1d\" (a UTC day)",
            ));
        }
        if r.delay > Duration::from_secs(7 * 86_400) {
            self.flag(self.invalid("reconcile.delay", "must be at most 7d, e.g. \"2h\""));
        }
        if r.lookback < r.period || r.lookback > MAX_LOOKBACK {
            self.flag(self.invalid(
                "reconcile.lookback",
                "must be at least reconcile.period and at most 180d (RingCentral keeps no more), e.g. \"7d\"",
            ));
        }
        let reconcile = ReconcileConfig {
            enabled: r.enabled,
            period: r.period,
            delay: r.delay,
            lookback: r.lookback,
        };

        let dynamodb = raw.dynamodb.map(|d| self.dynamodb(d));

        let problems = self.problems.take();
        if problems.len() > 1 {
            return Err(ConfigError::Several(problems));
        }
        if let Some(one) = problems.into_iter().next() {
            return Err(one);
        }
        Ok(Config {
            accounts,
            poll,
            hec,
            spool: SpoolConfig {
                dir,
                max_bytes,
                min_free_bytes: raw
                    .spool
                    .min_free_bytes
                    .map_or(DEFAULT_MIN_FREE_BYTES, |b| b.0),
            },
            admin: AdminConfig { listen },
            log: LogConfig {
                format: raw.log.format,
                level: raw.log.level,
            },
            heartbeat: HeartbeatConfig {
                interval: raw.heartbeat.interval,
            },
            reconcile,
            dynamodb,
        })
    }

    /// `[hec]`: URLs, token, batching, TLS and the envelope settings (index, sourcetype, host,
    /// routes).
    fn hec(&self, h: RawHec) -> HecConfig {
        let urls = match (h.url, h.urls) {
            (Some(_), Some(_)) => {
                self.flag(self.invalid("hec.url", "set either hec.url or hec.urls, not both"));
                Vec::new()
            }
            (Some(u), None) => vec![u],
            (None, Some(us)) if us.is_empty() => {
                self.flag(self.invalid("hec.urls", "needs at least one URL"));
                us
            }
            (None, Some(us)) => us,
            (None, None) => {
                self.flag(self.invalid(
                    "hec.urls",
                    "missing: the Splunk HEC base URL(s), e.g. [\"https://splunk.example.com:8088\"]",
                ));
                Vec::new()
            }
        };
        let urls = urls
            .into_iter()
            .map(|u| {
                self.keep(self.check_url("hec.urls", &u), ());
                u.trim_end_matches('/').to_string()
            })
            .collect::<Vec<_>>();
        if h.batch_max_events == 0 {
            self.flag(self.invalid("hec.batch_max_events", "must be at least 1"));
        }
        let batch_max_bytes = usize::try_from(h.batch_max_bytes.0).unwrap_or(usize::MAX);
        if batch_max_bytes < 1024 {
            self.flag(self.invalid(
                "hec.batch_max_bytes",
                "must be at least 1024; Splunk's default request limit is about 1 MB (1000000)",
            ));
        }
        if h.timeout.is_zero() || h.timeout > Duration::from_secs(3600) {
            self.flag(self.invalid(
                "hec.timeout",
                "must be more than 0 and at most 1h, e.g. \"60s\"",
            ));
        }
        if h.ack_timeout < Duration::from_secs(1) || h.ack_timeout > Duration::from_secs(86_400) {
            self.flag(self.invalid(
                "hec.ack_timeout",
                "must be between 1s and 24h (Splunk's own default is 300s)",
            ));
        }
        let sourcetype = h
            .sourcetype
            .unwrap_or_else(|| DEFAULT_SOURCETYPE.to_string());
        if sourcetype.is_empty() {
            self.flag(self.invalid("hec.sourcetype", "must not be empty"));
        }
        let mut routes = Vec::with_capacity(h.routes.len());
        for (i, r) in h.routes.into_iter().enumerate() {
            let key = format!("hec.routes.{i}");
            if r.action_id.is_empty() {
                self.flag(self.invalid(&format!("{key}.action_id"), "must not be empty"));
            }
            if r.index.is_none() && r.sourcetype.is_none() {
                self.flag(self.invalid(&key, "a route needs an index or a sourcetype"));
            }
            routes.push(Route {
                action_id: r.action_id,
                index: self.keep(self.opt_name(&format!("{key}.index"), r.index), None),
                sourcetype: self.keep(
                    self.opt_name(&format!("{key}.sourcetype"), r.sourcetype),
                    None,
                ),
            });
        }
        if let Some(ca) = &h.tls_ca_file
            && !ca.is_file()
        {
            self.flag(self.invalid(
                "hec.tls_ca_file",
                format!(
                    "{} is not a readable file (a PEM CA certificate)",
                    ca.display()
                ),
            ));
        }
        let host = match h.host {
            Some(host) if !host.is_empty() => host,
            _ => default_host(),
        };
        HecConfig {
            token: self.keep(
                self.secret("hec.token", h.token, h.token_file),
                Secret::new(""),
            ),
            urls,
            index: self.keep(self.opt_name("hec.index", h.index), None),
            sourcetype,
            host,
            gzip: h.gzip,
            batch_max_events: h.batch_max_events,
            batch_max_bytes,
            timeout: h.timeout,
            use_ack: h.use_ack,
            ack_timeout: h.ack_timeout,
            tls_ca_file: h.tls_ca_file,
            tls_verify: h.tls_verify,
            routes,
        }
    }

    /// `[dynamodb]`: table and region are required; DynamoDB's own naming rules are checked here
    /// so a typo is a config error at start, not a paused destination later.
    fn dynamodb(&self, d: RawDynamoDb) -> DynamoDbConfig {
        let table = d.table.unwrap_or_default();
        let valid_name = (3..=255).contains(&table.len())
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !valid_name {
            self.flag(self.invalid(
                "dynamodb.table",
                format!(
                    "{table:?} is not a DynamoDB table name: 3 to 255 characters of letters, digits, '_', '-' and '.'"
                ),
            ));
        }
        let region = d.region.unwrap_or_default();
        let valid_region = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_region {
            self.flag(self.invalid(
                "dynamodb.region",
                format!("{region:?} is not an AWS region: set e.g. \"us-east-1\""),
            ));
        }
        if let Some(url) = &d.endpoint_url {
            self.keep(self.check_url("dynamodb.endpoint_url", url), ());
        }
        if d.ttl.is_some_and(|ttl| ttl < Duration::from_secs(86_400)) {
            self.flag(self.invalid(
                "dynamodb.ttl",
                "must be at least \"1d\" (leave it out to keep items forever), e.g. \"400d\"",
            ));
        }
        DynamoDbConfig {
            table,
            region,
            endpoint_url: d.endpoint_url,
            ttl: d.ttl,
            create_table: d.create_table,
        }
    }

    /// A base URL: `https://host[:port]` (plain http on loopback only), no credentials, no path.
    fn check_url(&self, key: &str, url: &str) -> Result<(), ConfigError> {
        check_base_url(url).map_err(|problem| self.invalid(key, problem))
    }

    fn opt_name(&self, key: &str, v: Option<String>) -> Result<Option<String>, ConfigError> {
        match v {
            Some(s) if s.is_empty() => {
                Err(self.invalid(key, "must not be empty (leave it out instead)"))
            }
            other => Ok(other),
        }
    }

    /// Exactly one of `key` (inline) and `key_file` (a path, relative to the credentials directory).
    fn secret(
        &self,
        key: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Secret, ConfigError> {
        let file_key = format!("{key}_file");
        match (inline, file) {
            (Some(_), Some(_)) => {
                Err(self.invalid(key, format!("set either {key} or {file_key}, not both")))
            }
            (None, None) => Err(self.invalid(
                key,
                format!("missing: set {key}, or {file_key} to a file holding it"),
            )),
            (Some(v), None) if v.is_empty() => Err(self.invalid(key, "must not be empty")),
            (Some(v), None) => Ok(Secret::new(v)),
            (None, Some(_)) if self.secrets == Secrets::Skip => Ok(Secret::new("")),
            (None, Some(path)) => {
                let path = match &self.env.credentials_directory {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path,
                };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    // The full path tried: a relative one depends on where the command runs.
                    let tried = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
                    let looked = match &self.env.credentials_directory {
                        Some(_) => "relative paths are looked up in $CREDENTIALS_DIRECTORY",
                        None => {
                            "$CREDENTIALS_DIRECTORY is not set, so relative paths are read from the working directory; under systemd they are credential names"
                        }
                    };
                    self.invalid(
                        &file_key,
                        format!("cannot read {}: {e} ({looked})", tried.display()),
                    )
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(self.invalid(&file_key, format!("{} is empty", path.display())));
                }
                Ok(Secret::new(value))
            }
        }
    }
}

/// Checks a base URL (a HEC URL or a RingCentral `server_url`); the error says what to write
/// instead and never shows a password written into the URL.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let shown = redact_userinfo(url);
    let example = "e.g. \"https://splunk.example.com:8088\"";
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!("{shown:?} is not a URL ({e}): write the scheme and host, {example}")
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{shown:?} carries a user name or password: remove it from the URL and put the \
             credential in the token setting (hec.token / hec.token_file for Splunk, \
             client_secret and jwt for RingCentral)"
        ));
    }
    let loopback = matches!(
        parsed.host_str(),
        Some("127.0.0.1") | Some("localhost") | Some("[::1]")
    );
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "{shown:?} must use https:// (plain http is accepted only on loopback)"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} has no host: {example}"));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        let mut base = parsed.clone();
        base.set_path("");
        base.set_query(None);
        base.set_fragment(None);
        return Err(format!(
            "{shown:?} has a path: give the base URL only, {:?} (the forwarder adds \
             /services/collector/event and the API paths itself)",
            base.as_str().trim_end_matches('/')
        ));
    }
    Ok(())
}

/// `https://user:pw@host` -> `https://***@host`, also for strings that do not parse as URLs.
pub fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

// ---- the raw schema (what the file and environment may contain) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    poll: RawPoll,
    #[serde(default)]
    hec: Option<RawHec>,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    heartbeat: RawHeartbeat,
    #[serde(default)]
    reconcile: RawReconcile,
    #[serde(default)]
    dynamodb: Option<RawDynamoDb>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDynamoDb {
    #[serde(default, deserialize_with = "de_opt_string")]
    table: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    region: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    endpoint_url: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    ttl: Option<Duration>,
    #[serde(default = "yes")]
    create_table: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReconcile {
    enabled: bool,
    #[serde(deserialize_with = "de_duration")]
    period: Duration,
    #[serde(deserialize_with = "de_duration")]
    delay: Duration,
    #[serde(deserialize_with = "de_duration")]
    lookback: Duration,
}

impl Default for RawReconcile {
    fn default() -> Self {
        let d = ReconcileConfig::default();
        RawReconcile {
            enabled: d.enabled,
            period: d.period,
            delay: d.delay,
            lookback: d.lookback,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    #[serde(default, deserialize_with = "de_opt_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    server_url: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    account_id: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "de_opt_secret")]
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_opt_secret")]
    jwt: Option<String>,
    jwt_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_opt_string")]
    index: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    sourcetype: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPoll {
    #[serde(deserialize_with = "de_duration")]
    interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    overlap: Duration,
    #[serde(deserialize_with = "de_duration")]
    settle_delay: Duration,
    page_size: u32,
    #[serde(deserialize_with = "de_duration")]
    initial_lookback: Duration,
    include_admins: bool,
    include_hidden: bool,
}

impl Default for RawPoll {
    fn default() -> Self {
        RawPoll {
            interval: Duration::from_secs(300),
            overlap: Duration::from_secs(600),
            settle_delay: Duration::from_secs(60),
            page_size: MAX_PAGE_SIZE,
            initial_lookback: Duration::from_secs(24 * 3600),
            include_admins: true,
            include_hidden: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHec {
    #[serde(default, deserialize_with = "de_opt_string")]
    url: Option<String>,
    urls: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_opt_secret")]
    token: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_opt_string")]
    index: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    sourcetype: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    host: Option<String>,
    #[serde(default = "yes")]
    gzip: bool,
    #[serde(default = "default_batch_events")]
    batch_max_events: usize,
    #[serde(default = "default_batch_bytes")]
    batch_max_bytes: ByteSize,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    timeout: Duration,
    #[serde(default)]
    use_ack: bool,
    #[serde(default = "default_ack_timeout", deserialize_with = "de_duration")]
    ack_timeout: Duration,
    tls_ca_file: Option<PathBuf>,
    #[serde(default = "yes")]
    tls_verify: bool,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

fn yes() -> bool {
    true
}
/// `host` of every event when `hec.host` is not set: this machine's name.
fn default_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
fn default_batch_events() -> usize {
    1000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(1_000_000)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(deserialize_with = "de_string")]
    action_id: String,
    #[serde(default, deserialize_with = "de_opt_string")]
    index: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    sourcetype: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<PathBuf>,
    #[serde(default)]
    max_bytes: ByteSize,
    #[serde(default)]
    min_free_bytes: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHeartbeat {
    #[serde(deserialize_with = "de_duration")]
    interval: Duration,
}

impl Default for RawHeartbeat {
    fn default() -> Self {
        RawHeartbeat {
            interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default, deserialize_with = "de_opt_string")]
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
    #[serde(deserialize_with = "de_string")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// A size such as `1GiB`, `500MB` or a plain number of bytes.
struct ByteSize(u64);

impl Default for ByteSize {
    fn default() -> Self {
        ByteSize(1 << 30)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(n) if n >= 0 => Ok(ByteSize(n as u64)),
            Scalar::Str(s) => parse_byte_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}: expected e.g. \"1GiB\", \"500MB\" or a number of bytes"
                ))
            }),
            other => Err(serde::de::Error::custom(format!(
                "invalid size {other}: expected e.g. \"1GiB\""
            ))),
        }
    }
}

/// Parses `1GiB`, `512 MiB`, `500MB`, `1000`.
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = num * mult as f64;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// A scalar as TOML or an environment variable may give it: `123` in the environment arrives
/// as an integer even where a string (an account id, a token) is meant.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Float(n) => write!(f, "{n}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn de_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Str(s) => Ok(s),
        Scalar::Int(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {other}"
        ))),
    }
}

/// Like [`de_string`], but an error never shows the value: it is a secret.
fn de_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Str(s) => Ok(Some(s)),
        Scalar::Int(n) => Ok(Some(n.to_string())),
        _ => Err(serde::de::Error::custom(
            "expected a string (the value is a secret and is not shown)",
        )),
    }
}

fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_string(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = de_string(d)?;
    // A bare number is ambiguous (seconds? milliseconds?): require a unit.
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}): expected e.g. \"90s\", \"5m\", \"24h\""
        ))
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[accounts]]
        name = "acme"
        client_id = "cid"
        client_secret = "s3cret-client"
        jwt = "eyJ.jwt.value"
        [hec]
        url = "https://splunk.example.com:8088"
        token = "hec-token-123"
    "#;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(toml, &LoadEnv::default())
    }

    fn err(toml: &str) -> String {
        match load(toml) {
            Ok(_) => panic!("config should have been rejected:\n{toml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.accounts[0].account_id, "~");
        assert_eq!(c.accounts[0].server_url, DEFAULT_SERVER_URL);
        assert_eq!(c.poll.interval, Duration::from_secs(300));
        assert_eq!(c.poll.overlap, Duration::from_secs(600));
        assert_eq!(c.poll.settle_delay, Duration::from_secs(60));
        assert_eq!(c.poll.page_size, 1000);
        assert_eq!(c.poll.initial_lookback, Duration::from_secs(86400));
        assert_eq!(
            c.hec.as_ref().unwrap().urls,
            vec!["https://splunk.example.com:8088"]
        );
        assert_eq!(c.hec.as_ref().unwrap().sourcetype, "ringcentral:audit");
        assert!(c.hec.as_ref().unwrap().gzip);
        assert_eq!(c.hec.as_ref().unwrap().batch_max_events, 1000);
        assert_eq!(c.hec.as_ref().unwrap().batch_max_bytes, 1_000_000);
        assert_eq!(c.hec.as_ref().unwrap().timeout, Duration::from_secs(60));
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.spool.min_free_bytes, 64 << 20);
        assert_eq!(c.spool.dir, PathBuf::from("./state"));
        assert_eq!(c.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.hec.as_ref().unwrap().token.expose(), "hec-token-123");
    }

    /// MINIMAL's account without `[hec]`.
    fn accounts_only() -> String {
        MINIMAL[..MINIMAL.find("[hec]").unwrap()].to_string()
    }

    #[test]
    fn dynamodb_alone_is_a_destination_and_events_keep_the_default_envelope() {
        let c = load(&format!(
            "{}\n[dynamodb]\ntable = \"rc-audit\"\nregion = \"eu-west-1\"\nttl = \"400d\"",
            accounts_only()
        ))
        .unwrap();
        assert!(c.hec.is_none());
        assert_eq!(c.destinations(), vec![Destination::DynamoDb]);
        let d = c.dynamodb.as_ref().unwrap();
        assert_eq!(
            (d.table.as_str(), d.region.as_str()),
            ("rc-audit", "eu-west-1")
        );
        assert_eq!(d.ttl, Some(Duration::from_secs(400 * 86_400)));
        assert!(
            d.create_table,
            "the default lets `dynamodb create-table` work"
        );
        assert_eq!(c.envelope_settings().sourcetype, DEFAULT_SOURCETYPE);
        let both = load(&format!(
            "{MINIMAL}\n[dynamodb]\ntable = \"rc-audit\"\nregion = \"eu-west-1\""
        ))
        .unwrap();
        assert_eq!(
            both.destinations(),
            vec![Destination::Hec, Destination::DynamoDb]
        );
    }

    #[test]
    fn a_config_without_any_destination_is_refused_by_name() {
        let e = err(&accounts_only());
        assert!(e.contains("no destination"), "{e}");
        assert!(e.contains("[hec]") && e.contains("[dynamodb]"), "{e}");
    }

    #[test]
    fn bad_dynamodb_values_name_the_key() {
        let cases = [
            ("table = \"a b\"\nregion = \"us-east-1\"", "dynamodb.table"),
            ("region = \"us-east-1\"", "dynamodb.table"),
            ("table = \"audit\"\nregion = \"US East\"", "dynamodb.region"),
            ("table = \"audit\"", "dynamodb.region"),
            (
                "table = \"audit\"\nregion = \"us-east-1\"\nttl = \"1h\"",
                "dynamodb.ttl",
            ),
            (
                "table = \"audit\"\nregion = \"us-east-1\"\nendpoint_url = \"http://dynamo.example.com:8000\"",
                "dynamodb.endpoint_url",
            ),
        ];
        for (body, key) in cases {
            let e = err(&format!("{MINIMAL}\n[dynamodb]\n{body}"));
            assert!(e.contains(key), "{body}: {e}");
        }
        let local = load(&format!(
            "{MINIMAL}\n[dynamodb]\ntable = \"audit\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:8000\"\ncreate_table = false"
        ))
        .unwrap();
        let d = local.dynamodb.unwrap();
        assert_eq!(d.endpoint_url.as_deref(), Some("http://127.0.0.1:8000"));
        assert!(!d.create_table);
    }

    #[test]
    fn unknown_key_is_named_with_its_file() {
        let e = err(&format!("{MINIMAL}\nbatch_size = 5"));
        assert!(e.contains("batch_size"), "{e}");
        let e = err(&MINIMAL.replace("token = ", "tokn = "));
        assert!(e.contains("tokn"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                MINIMAL.replace("[hec]", "[poll]\ninterval = \"5 fortnights\"\n[hec]"),
                "poll.interval",
            ),
            (
                MINIMAL.replace("[hec]", "[poll]\npage_size = 5000\n[hec]"),
                "poll.page_size",
            ),
            (
                MINIMAL.replace("[hec]", "[poll]\ninitial_lookback = \"200d\"\n[hec]"),
                "poll.initial_lookback",
            ),
            (
                MINIMAL.replace("https://splunk", "http://splunk"),
                "hec.urls",
            ),
            (
                format!("{MINIMAL}\nbatch_max_events = 0"),
                "hec.batch_max_events",
            ),
            (
                format!("{MINIMAL}\n[spool]\nmax_bytes = \"lots\""),
                "spool.max_bytes",
            ),
            (
                format!("{MINIMAL}\n[admin]\nlisten = \"nowhere\""),
                "admin.listen",
            ),
            (format!("{MINIMAL}\n[log]\nformat = \"xml\""), "log.format"),
            (
                format!("{MINIMAL}\n[[hec.routes]]\naction_id = \"*LOGIN*\""),
                "hec.routes.0",
            ),
            (format!("{MINIMAL}\ngzip = \"maybe\""), "hec.gzip"),
        ];
        for (toml, key) in cases {
            let e = err(&toml);
            assert!(e.contains(key), "expected {key} in: {e}");
        }
    }

    #[test]
    fn missing_required_keys_are_named() {
        assert!(err(&MINIMAL.replace("token = \"hec-token-123\"", "")).contains("hec.token"));
        assert!(err(&MINIMAL.replace("jwt = \"eyJ.jwt.value\"", "")).contains("accounts.0.jwt"));
        assert!(err(&MINIMAL.replace("client_id = \"cid\"", "")).contains("accounts.0.client_id"));
        assert!(err(&MINIMAL.replace("url = ", "x_url = ")).contains("x_url"));
        let no_accounts = "[hec]\nurl = \"https://h:8088\"\ntoken = \"t\"";
        assert!(err(no_accounts).contains("accounts"));
        assert!(err("").contains("hec"));
    }

    #[test]
    fn two_names_for_the_same_ringcentral_account_are_rejected() {
        let block = &MINIMAL[..MINIMAL.find("[hec]").unwrap()];
        let renamed = block.replacen("name = \"acme\"", "name = \"acme2\"", 1);
        assert_ne!(block, renamed, "the test renames the account");
        let e = err(&format!("{MINIMAL}\n{renamed}"));
        assert!(e.contains("\"acme\"") && e.contains("\"acme2\""), "{e}");
        assert!(e.contains("same RingCentral account"), "{e}");
        assert!(!e.contains("eyJ"), "no JWT in the message: {e}");
        let with_id = |name: &str, id: &str| {
            block.replacen(
                "name = \"acme\"",
                &format!("name = \"{name}\"\naccount_id = \"{id}\""),
                1,
            )
        };
        let e = err(&format!(
            "{MINIMAL}\n{}\n{}",
            with_id("a1", "111"),
            with_id("a2", "111")
        ));
        assert!(e.contains("account_id 111"), "{e}");
        let other_jwt = renamed.replace("eyJ.jwt.value", "eyJ.other.jwt");
        let ok = format!(
            "{MINIMAL}\n{other_jwt}\n{}\n{}",
            with_id("a1", "111"),
            with_id("a2", "222")
        );
        Config::from_toml_str(&ok, &LoadEnv::default()).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let toml = MINIMAL
            .replace(
                "[hec]",
                "[poll]\npage_size = 5000\ninterval = \"0s\"\n[hec]",
            )
            .replace("client_id = \"cid\"", "")
            + "\nbatch_max_events = 0\n[admin]\nlisten = \"nowhere\"";
        let e = err(&toml);
        for key in [
            "accounts.0.client_id",
            "poll.page_size",
            "poll.interval",
            "hec.batch_max_events",
            "admin.listen",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        assert!(e.starts_with("5 problems in the configuration:"), "{e}");
    }

    #[test]
    fn duplicate_account_names_are_rejected() {
        let twice = format!("{MINIMAL}\n{}", &MINIMAL[..MINIMAL.find("[hec]").unwrap()]);
        assert!(err(&twice).contains("unique"));
    }

    #[test]
    fn secret_files_resolve_against_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hec-token"), "from-file-token\n").unwrap();
        let toml = MINIMAL.replace("token = \"hec-token-123\"", "token_file = \"hec-token\"");
        let env = LoadEnv {
            credentials_directory: Some(dir.path().to_path_buf()),
            state_directory: Some(PathBuf::from("/var/lib/x")),
            system_state_dir: Some(PathBuf::from("/var/lib/rc-audit-hec")),
        };
        let c = Config::from_toml_str(&toml, &env).unwrap();
        assert_eq!(c.hec.as_ref().unwrap().token.expose(), "from-file-token");
        assert_eq!(c.spool.dir, PathBuf::from("/var/lib/x"));

        // Without the credentials directory the relative path does not resolve: named error.
        let e = Config::from_toml_str(&toml, &LoadEnv::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hec.token_file") && e.contains("CREDENTIALS_DIRECTORY"),
            "{e}"
        );
        let tried = std::env::current_dir().unwrap().join("hec-token");
        assert!(
            e.contains(&tried.display().to_string()) && e.contains("working directory"),
            "the full path tried: {e}"
        );
        // Both inline and file is ambiguous.
        let both = MINIMAL.replace(
            "token = \"hec-token-123\"",
            "token = \"a\"\ntoken_file = \"b\"",
        );
        assert!(err(&both).contains("not both"));
    }

    #[test]
    fn secrets_never_appear_in_debug_or_config_output() {
        let c = load(MINIMAL).unwrap();
        let shown = format!("{c:?}\n{}", c.to_redacted_toml());
        for secret in ["s3cret-client", "eyJ.jwt.value", "hec-token-123"] {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
        assert!(shown.contains("[REDACTED]"));
        // The rendered config is itself a readable TOML document.
        assert!(c.to_redacted_toml().contains("page_size = 1000"));
    }

    #[test]
    fn urls_with_credentials_paths_or_no_scheme_are_refused_with_what_to_write() {
        let hec = |url: &str| err(&MINIMAL.replace("https://splunk.example.com:8088", url));
        let e = hec("https://admin:hunter2@splunk.example.com:8088");
        assert!(e.contains("hec.urls") && e.contains("hec.token"), "{e}");
        assert!(
            !e.contains("hunter2") && !e.contains("admin:"),
            "no secret echoed: {e}"
        );
        let e = hec("https://splunk.example.com:8088/services/collector/event");
        assert!(
            e.contains("has a path") && e.contains("\"https://splunk.example.com:8088\""),
            "{e}"
        );
        let e = hec("splunk.example.com:8088");
        assert!(e.contains("https://"), "says what to write: {e}");
        let e = hec("user:pw@splunk.example.com");
        assert!(!e.contains("pw@"), "no secret echoed even unparsed: {e}");
        let rc = MINIMAL.replace(
            "client_id = \"cid\"",
            "client_id = \"cid\"\nserver_url = \"https://u:p@platform.ringcentral.com\"",
        );
        let e = err(&rc);
        assert!(
            e.contains("accounts.0.server_url") && !e.contains("u:p"),
            "{e}"
        );
        // Still fine: a trailing slash, loopback http.
        load(&MINIMAL.replace("8088\"", "8088/\"")).unwrap();
        load(&MINIMAL.replace("https://splunk.example.com:8088", "http://127.0.0.1:8088")).unwrap();
        assert_eq!(redact_userinfo("https://a:b@h/x@y"), "https://***@h/x@y");
    }

    #[test]
    fn the_default_state_directory_is_the_services_wherever_the_command_runs() {
        let env = |state: Option<&str>, system: Option<&str>| LoadEnv {
            credentials_directory: None,
            state_directory: state.map(PathBuf::from),
            system_state_dir: system.map(PathBuf::from),
        };
        let dir = |e: LoadEnv| Config::from_toml_str(MINIMAL, &e).unwrap().spool.dir;
        assert_eq!(
            dir(env(Some("/run/x"), Some(SYSTEM_STATE_DIR))),
            PathBuf::from("/run/x")
        );
        assert_eq!(
            dir(env(None, Some(SYSTEM_STATE_DIR))),
            PathBuf::from(SYSTEM_STATE_DIR)
        );
        assert_eq!(dir(env(None, None)), PathBuf::from("./state"));
    }

    #[test]
    fn without_secrets_the_config_loads_from_a_shell_without_the_credentials() {
        let toml = MINIMAL
            .replace("token = \"hec-token-123\"", "token_file = \"hec-token\"")
            .replace("jwt = \"eyJ.jwt.value\"", "jwt_file = \"acme-jwt\"");
        assert!(
            load(&toml).is_err(),
            "normally a missing credential stops the load"
        );
        let c = Config::from_figment_with(
            &Figment::from(Toml::string(&toml)),
            &LoadEnv::default(),
            Secrets::Skip,
        )
        .unwrap();
        assert_eq!(c.accounts[0].name, "acme");
        assert_eq!(c.hec.as_ref().unwrap().token.expose(), "", "never read");
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_byte_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_byte_size("500 MB"), Some(500_000_000));
        assert_eq!(parse_byte_size("1024"), Some(1024));
        assert_eq!(parse_byte_size("lots"), None);
    }

    fn with_env(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = RawEnv::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_figment(
            &Figment::from(Toml::string(toml)).merge(env),
            &LoadEnv::default(),
        )
    }

    #[test]
    fn environment_values_keep_their_exact_text() {
        let c = with_env(
            MINIMAL,
            &[
                ("RC_AUDIT_HEC_HEC__TOKEN", "007"),
                ("RC_AUDIT_HEC_HEC__BATCH_MAX_EVENTS", "250"),
                ("RC_AUDIT_HEC_HEC__GZIP", "false"),
                ("RC_AUDIT_HEC_HEC__URL", "https://a:8088"),
                ("RC_AUDIT_HEC_POLL__INTERVAL", "2m"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.hec.as_ref().unwrap().token.expose(),
            "007",
            "leading zeros survive"
        );
        assert_eq!(c.hec.as_ref().unwrap().batch_max_events, 250);
        assert!(!c.hec.as_ref().unwrap().gzip);
        assert_eq!(c.hec.as_ref().unwrap().urls, vec!["https://a:8088"]);
        assert_eq!(c.poll.interval, Duration::from_secs(120));
        let toml = MINIMAL.replace("url = \"https://splunk.example.com:8088\"", "");
        let c = with_env(
            &toml,
            &[(
                "RC_AUDIT_HEC_HEC__URLS",
                r#"["https://a:8088", "https://b:8088"]"#,
            )],
        )
        .unwrap();
        assert_eq!(
            c.hec.as_ref().unwrap().urls.len(),
            2,
            "a list in the environment"
        );
    }

    #[test]
    fn batch_max_bytes_takes_units_and_accounts_in_the_environment_are_refused_with_how() {
        let c = load(&format!("{MINIMAL}\nbatch_max_bytes = \"512KiB\"")).unwrap();
        assert_eq!(c.hec.as_ref().unwrap().batch_max_bytes, 512 * 1024);
        let c = with_env(MINIMAL, &[("RC_AUDIT_HEC_HEC__BATCH_MAX_BYTES", "1MB")]).unwrap();
        assert_eq!(c.hec.as_ref().unwrap().batch_max_bytes, 1_000_000);
        assert!(
            err(&format!("{MINIMAL}\nbatch_max_bytes = \"lots\"")).contains("hec.batch_max_bytes")
        );
        for var in [
            "RC_AUDIT_HEC_ACCOUNTS__ACME__JWT",
            "RC_AUDIT_HEC_ACCOUNTS__0__JWT",
        ] {
            let e = with_env(MINIMAL, &[(var, "x")]).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("jwt_file"), "{e}");
        }
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        let toml = MINIMAL.replace("token = \"hec-token-123\"", "token = 12.5e3");
        let e = err(&toml);
        assert!(e.contains("hec.token") && e.contains("not shown"), "{e}");
        assert!(!e.contains("12500") && !e.contains("12.5"), "{e}");
    }

    #[test]
    fn durations_that_would_never_poll_or_overflow_are_refused() {
        let poll = |k: &str| MINIMAL.replace("[hec]", &format!("[poll]\n{k}\n[hec]"));
        assert!(
            err(&poll("initial_lookback = \"30s\"\nsettle_delay = \"1m\""))
                .contains("poll.initial_lookback")
        );
        assert!(err(&poll("overlap = \"400d\"")).contains("poll.overlap"));
        assert!(err(&poll("settle_delay = \"9999d\"")).contains("poll.settle_delay"));
        assert!(err(&format!("{MINIMAL}\ntimeout = \"100000h\"")).contains("hec.timeout"));
    }
}
