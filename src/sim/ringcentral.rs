//! A RingCentral Audit Trail simulator: the JWT token endpoint and the audit-trail search, with
//! RingCentral's rate limits and error bodies, real HTTP on loopback, and faults on demand.
//!
//! What it mimics (facts from `reference/ringcentral-audit-trail.md`):
//! - `POST /restapi/oauth/token`: Basic client auth, JWT bearer grant, single-use refresh tokens,
//!   tokens that expire after `token_ttl`. `POST /restapi/oauth/revoke` ends a session.
//! - `POST /restapi/v1.0/account/{accountId}/audit-trail/search`: bearer auth, inclusive
//!   millisecond time range, `actionIds` / `excludeActionIds`, 1-based paging with `perPage` up to
//!   1000, records **newest first** (the real order is undocumented, so clients must not assume
//!   ascending), at most the newest 10,000 records per account.
//! - Rate limits per account and group (`heavy` for search, `auth` for the token endpoint): a fixed
//!   window that starts at its first request; over the limit the answer is 429 `CMN-301` with
//!   `Retry-After` and a penalty, and **every request during the penalty restarts it**, as the
//!   real service does. Every response carries the `X-Rate-Limit-*` headers.
//!
//! Decisions where the reference is silent (kept simple, documented here):
//! - Search without an `Authorization: Bearer` header: 401 `AGW-401` "Authorization header is not
//!   specified"; unknown token: 401 `OAU-149`; expired token: 401 `OAU-128`.
//! - Searching an explicit account id other than the token's: 403 `CMN-102` "Resource for
//!   parameter [accountId] is not found".
//! - `eventTimeFrom` and `eventTimeTo` are required here (400 `CMN-101` when missing or not
//!   RFC 3339): the forwarder always sends both, and the real defaults are vague.
//! - `perPage` outside 1..=1000 and `page` < 1 are rejected with 400 `CMN-101`.
//! - `initiatorIds`, `targetIds`, `siteId`, `searchString`, `includeAdmins`, `includeHidden` and
//!   `searchParameters` are accepted and ignored; records whose `eventTime` does not parse are
//!   stored but never match a time range. The 180-day limit is not simulated.
//! - Unknown client credentials, or requests without a valid token, are not counted against any
//!   rate limit (there is no account to count them against); their rate-limit headers show a
//!   full window.
//! - A bad or reused refresh token: 400 `invalid_grant` `OAU-211` "Token not found".
//! - Unknown paths and wrong methods: 404 `CMN-102` "Resource not found".
//! - Order of checks for a search: bearer token, rate limit (and penalty), `force_429` and
//!   `throttled_accounts`, `server_errors` and `unavailable_accounts`, `forbidden_accounts`,
//!   account id, body.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::sim::records::{generate_records, stable_hash};
use crate::sim::server::{DownableServer, format_secs, parse_form};

/// The most records the API keeps (and this simulator stores) per account.
pub const MAX_RECORDS_PER_ACCOUNT: usize = 10_000;
/// The largest `perPage` the search accepts.
pub const MAX_PER_PAGE: u64 = 1000;
/// Refresh token lifetime in the token response (7 days, as RingCentral issues).
const REFRESH_TTL: Duration = Duration::from_secs(604_800);
/// The JWT bearer grant type.
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// One RingCentral account the simulator serves, with the app credentials and JWT that get a
/// token for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAccount {
    /// The account id (as in records' `accountId` and the search path).
    pub account_id: String,
    /// The company name (records' `accountName`).
    pub account_name: String,
    /// The app's client id, sent in Basic auth to the token endpoint.
    pub client_id: String,
    /// The app's client secret, sent in Basic auth to the token endpoint.
    pub client_secret: String,
    /// The JWT credential, sent as `assertion`.
    pub jwt: String,
}

impl SimAccount {
    /// An account whose credentials are derived from its id, so tests and the demo can build the
    /// matching forwarder config without sharing state with the simulator.
    pub fn new(account_id: &str, account_name: &str) -> Self {
        let bytes = |label: &str, n: usize| -> Vec<u8> {
            (0..n.div_ceil(8))
                .flat_map(|i| stable_hash(&format!("{label}:{i}:{account_id}")).to_be_bytes())
                .take(n)
                .collect()
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"sim"}"#);
        let payload = URL_SAFE_NO_PAD.encode(
            json!({
                "aud": "https://platform.ringcentral.com/restapi/oauth/token",
                "iss": "https://platform.ringcentral.com",
                "sub": owner_id(account_id),
                "iat": 1_722_900_000,
                "exp": 3_799_999_999u64,
                "jti": URL_SAFE_NO_PAD.encode(bytes("jti", 16)),
            })
            .to_string(),
        );
        let signature = URL_SAFE_NO_PAD.encode(bytes("signature", 64));
        Self {
            account_id: account_id.to_owned(),
            account_name: account_name.to_owned(),
            client_id: URL_SAFE_NO_PAD.encode(bytes("client", 16)),
            client_secret: URL_SAFE_NO_PAD.encode(bytes("secret", 32)),
            jwt: format!("{header}.{payload}.{signature}"),
        }
    }
}

/// The extension id of the JWT user of an account (`owner_id` in token responses).
fn owner_id(account_id: &str) -> String {
    format!(
        "{}",
        400_000_000_000 + stable_hash(account_id) % 10_000_000_000
    )
}

/// How the simulator behaves; time limits are configurable so tests run in milliseconds.
#[derive(Debug, Clone)]
pub struct RcSimConfig {
    /// Accounts served; their credentials are the only ones the token endpoint accepts.
    pub accounts: Vec<SimAccount>,
    /// Access token lifetime (`expires_in`, at least 1 in the response).
    pub token_ttl: Duration,
    /// Heavy group (audit search) requests allowed per window and account.
    pub heavy_limit: u32,
    /// Heavy group window.
    pub heavy_window: Duration,
    /// Auth group (token endpoint) requests allowed per window and account.
    pub auth_limit: u32,
    /// Auth group window.
    pub auth_window: Duration,
    /// Penalty after exceeding a limit (`Retry-After`); restarted by any request during it.
    pub penalty: Duration,
    /// `false` turns rate limiting off (benchmarks); headers are still sent, always full.
    pub rate_limits: bool,
    /// Records kept per account (the newest): RingCentral's 10,000 by default; more lets a
    /// test hold a period with more records than one search can count.
    pub max_records_per_account: usize,
}

impl Default for RcSimConfig {
    /// RingCentral's default limits, one-hour tokens, no accounts.
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            token_ttl: Duration::from_secs(3600),
            heavy_limit: 10,
            heavy_window: Duration::from_secs(60),
            auth_limit: 5,
            auth_window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
            rate_limits: true,
            max_records_per_account: MAX_RECORDS_PER_ACCOUNT,
        }
    }
}

/// Misbehaviour on demand; change it with [`RcSim::update_faults`].
#[derive(Debug, Clone, Default)]
pub struct RcFaults {
    /// Account ids whose searches answer 403 `CMN-401` (the app lacks `ReadAuditTrail`).
    pub forbidden_accounts: HashSet<String>,
    /// Account ids whose JWT user is locked: the token endpoint answers 400 `invalid_grant`
    /// `OAU-147` for their (otherwise valid) JWT and refresh grants.
    pub locked_accounts: HashSet<String>,
    /// Answer the next N searches with 503 `CMN-201` (counts down).
    pub server_errors: u32,
    /// Answer the next N searches with 429 `CMN-301` and `Retry-After` = penalty, starting a
    /// penalty as a real limit would (counts down).
    pub force_429: u32,
    /// Delay every response by this much (slow upstream; client timeouts).
    pub slow: Duration,
    /// Account ids whose every search answers 429 `CMN-301` and (re)starts a penalty, as long
    /// as they are listed: one account stuck in rate limiting.
    pub throttled_accounts: HashSet<String>,
    /// Account ids whose searches are accepted and never answered (the connection stays open,
    /// silent) while they are listed: one account's searches hang. Logged on arrival.
    pub hanging_accounts: HashSet<String>,
    /// Account ids whose every search answers 503 `CMN-201`, as long as they are listed.
    pub unavailable_accounts: HashSet<String>,
    /// Serve at most this many records per page whatever `perPage` asks, with `paging` telling
    /// the truth: whether the real API clamps or rejects a large `perPage` is undocumented.
    pub clamp_per_page: Option<u64>,
    /// Answer the next searches (that pass the token and rate-limit checks) with exactly these
    /// statuses and bytes, one each, in order: `200 {}`, `200 {"errors":[...]}`, a huge body.
    pub raw_search_replies: std::collections::VecDeque<(u16, Vec<u8>)>,
    /// Answer the next N searches for page 2 or later with no records while `paging` still
    /// tells the truth about the window (counts down): a page lost in the middle.
    pub empty_pages: u32,
    /// Leave `totalFound` out of `paging` (the API allows it).
    pub omit_total_found: bool,
    /// Report this many more records in `totalFound` than the window holds (`total`, the page
    /// count, follows the real count).
    pub total_found_extra: u64,
    /// Report at most this many in `totalFound` (a count that stops at the API's 10,000-record
    /// limit; `total`, the page count, follows the real count).
    pub total_found_cap: Option<u64>,
}

/// One request the simulator received, for tests to assert on what a client did.
#[derive(Debug, Clone)]
pub struct RcRequest {
    /// When it arrived (monotonic, to measure pacing).
    pub at: Instant,
    /// When it arrived (wall clock, to compare with search ranges).
    pub at_utc: DateTime<Utc>,
    /// The request path.
    pub path: String,
    /// The account it was for, when known (token's account, client's account or path id).
    pub account_id: Option<String>,
    /// The HTTP status answered (0: never answered, see [`RcFaults::hanging_accounts`]).
    pub status: u16,
    /// The search body, when it was JSON.
    pub body: Option<Value>,
}

/// A running RingCentral simulator on `127.0.0.1`. Dropping it stops the server.
pub struct RcSim {
    /// The HTTP server, which can go down and up on the same port.
    server: DownableServer,
    /// State shared with the handlers.
    shared: Arc<Shared>,
}

impl RcSim {
    /// Starts the simulator on a free loopback port.
    pub async fn start(config: RcSimConfig) -> std::io::Result<RcSim> {
        let by_client = config
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.client_id.clone(), i))
            .collect();
        let shared = Arc::new(Shared {
            by_client,
            config,
            state: Mutex::new(SimState::default()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/restapi/oauth/token", any(token))
            .route("/restapi/oauth/revoke", any(revoke))
            .route(
                "/restapi/v1.0/account/{account_id}/audit-trail/search",
                any(search),
            )
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                count_in_flight,
            ))
            .with_state(Arc::clone(&shared));
        let server = DownableServer::start(router).await?;
        tracing::debug!(url = %server.url(), "RingCentral simulator started");
        Ok(RcSim { server, shared })
    }

    /// The base URL (`http://127.0.0.1:PORT`), the forwarder's `server_url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stores records for an account; they are searchable from now on. Keeps only the newest
    /// [`RcSimConfig::max_records_per_account`] ([`MAX_RECORDS_PER_ACCOUNT`], like the API).
    /// A record added with an `eventTime` in the past is one RingCentral made visible late:
    /// a live poll whose overlap no longer reaches back to it never sees it.
    pub fn add_records(&self, account_id: &str, records: Vec<Value>) {
        let mut stored: Vec<Stored> = records.iter().filter_map(Stored::new).collect();
        let mut state = self.shared.lock();
        let list = state.records.entry(account_id.to_owned()).or_default();
        list.append(&mut stored);
        // Stable: equal times keep insertion order. Unparseable times sort last.
        list.sort_by_key(|r| std::cmp::Reverse(r.time_ms.unwrap_or(i64::MIN)));
        list.truncate(self.shared.config.max_records_per_account);
    }

    /// Adds `n` generated records with `eventTime`s in `[from, to)` (see
    /// [`generate_records`]); returns `n`.
    pub fn generate(
        &self,
        account_id: &str,
        n: usize,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        seed: u64,
    ) -> usize {
        let name = self
            .shared
            .config
            .accounts
            .iter()
            .find(|a| a.account_id == account_id)
            .map_or(account_id, |a| a.account_name.as_str());
        let records = generate_records(seed, account_id, name, n, from, to);
        self.add_records(account_id, records);
        n
    }

    /// Everything stored for an account, newest first (the order searches return).
    pub fn records(&self, account_id: &str) -> Vec<Value> {
        let state = self.shared.lock();
        state
            .records
            .get(account_id)
            .map(|list| {
                list.iter()
                    .filter_map(|r| serde_json::from_str(r.raw.get()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes every access token issued so far answer 401 `OAU-128` (tokens issued later work).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        for token in state.tokens.values_mut() {
            token.expires_at = now;
        }
    }

    /// Changes the faults; they apply to the next request.
    pub fn update_faults(&self, f: impl FnOnce(&mut RcFaults)) {
        f(&mut self.shared.lock().faults);
    }

    /// Stops listening (connections refused, open ones closed) or starts again, same port.
    pub async fn set_down(&self, down: bool) {
        self.server.set_down(down).await;
    }

    /// TCP connections clients opened to the simulator so far.
    pub fn connections(&self) -> u64 {
        self.server.connections_accepted()
    }

    /// The most requests the simulator was handling at the same time so far.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order, including those answered with errors.
    pub fn requests(&self) -> Vec<RcRequest> {
        self.shared.lock().requests.clone()
    }
}

/// State shared by the handle and the handlers.
/// Counts a request as in flight from its arrival until its response is ready (a hanging
/// search stays counted until the client gives up).
async fn count_in_flight(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let _leave = Leave(&shared.in_flight);
    next.run(request).await
}

struct Shared {
    /// Fixed configuration.
    config: RcSimConfig,
    /// Index of `config.accounts` by client id (10,000 accounts must not mean a scan per token).
    by_client: HashMap<String, usize>,
    /// Everything that changes.
    state: Mutex<SimState>,
    /// Requests being handled now, and the most at once so far: what a client's bound on
    /// requests in flight is measured by (connections opened are not: a pooled connection can
    /// come back a moment after its slot is freed, so a new one may be opened meanwhile).
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .expect("RingCentral simulator state poisoned")
    }

    fn account_by_client(&self, client_id: &str, secret: &str) -> Option<&SimAccount> {
        // Client ids are derived from account ids; two accounts sharing one fall back to a scan.
        let indexed = self
            .by_client
            .get(client_id)
            .map(|&i| &self.config.accounts[i])
            .filter(|a| a.client_secret == secret);
        indexed.or_else(|| {
            self.config
                .accounts
                .iter()
                .find(|a| a.client_id == client_id && a.client_secret == secret)
        })
    }

    fn limit_of(&self, group: Group) -> (u32, Duration) {
        match group {
            Group::Heavy => (self.config.heavy_limit, self.config.heavy_window),
            Group::Auth => (self.config.auth_limit, self.config.auth_window),
        }
    }
}

/// The mutable part of the simulator.
#[derive(Default)]
struct SimState {
    /// Issued access tokens.
    tokens: HashMap<String, AccessToken>,
    /// Issued, unused refresh tokens.
    refresh_tokens: HashMap<String, RefreshToken>,
    /// Records per account, newest first.
    records: HashMap<String, Vec<Stored>>,
    /// Rate-limit state per (account, group).
    limiters: HashMap<(String, Group), Limiter>,
    /// Current faults.
    faults: RcFaults,
    /// Request log.
    requests: Vec<RcRequest>,
    /// Counter for session ids.
    sessions: u64,
}

/// An issued access token.
struct AccessToken {
    account_id: String,
    expires_at: Instant,
    session: u64,
}

/// An issued refresh token (single use).
struct RefreshToken {
    account_id: String,
    expires_at: Instant,
    session: u64,
}

/// A stored record: its JSON kept verbatim, plus what searches filter on.
struct Stored {
    /// `eventTime` in epoch milliseconds, `None` when it does not parse.
    time_ms: Option<i64>,
    /// `actionId`, if any.
    action_id: Option<String>,
    /// The record as serialized JSON.
    raw: Arc<RawValue>,
}

impl Stored {
    fn new(record: &Value) -> Option<Self> {
        let time_ms = record
            .get("eventTime")
            .and_then(Value::as_str)
            .and_then(parse_time)
            .map(|t| t.timestamp_millis());
        let action_id = record
            .get("actionId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let raw = RawValue::from_string(record.to_string()).ok()?;
        Some(Self {
            time_ms,
            action_id,
            raw: Arc::from(raw),
        })
    }
}

/// Parses an RFC 3339 time to UTC.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// RingCentral's rate-limit groups the simulator implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    /// Audit search.
    Heavy,
    /// Token endpoint.
    Auth,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Heavy => "heavy",
            Group::Auth => "auth",
        }
    }
}

/// Fixed-window counter with a penalty that restarts on every request made during it.
#[derive(Default)]
struct Limiter {
    /// Start of the current window; `None` until the first request of a window.
    window_start: Option<Instant>,
    /// Requests counted in the current window.
    count: u32,
    /// End of the current penalty, if any.
    penalty_until: Option<Instant>,
}

impl Limiter {
    /// Counts one request. `Some(remaining)` if allowed, `None` if it must get a 429.
    fn admit(
        &mut self,
        now: Instant,
        limit: u32,
        window: Duration,
        penalty: Duration,
    ) -> Option<u32> {
        if let Some(until) = self.penalty_until {
            if now < until {
                self.penalty_until = Some(now + penalty);
                return None;
            }
            *self = Limiter::default();
        }
        if self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= window)
        {
            self.window_start = Some(now);
            self.count = 0;
        }
        self.count += 1;
        if self.count > limit {
            self.penalty_until = Some(now + penalty);
            return None;
        }
        Some(limit - self.count)
    }

    /// Starts (or restarts) a penalty, as a forced 429 does.
    fn punish(&mut self, now: Instant, penalty: Duration) {
        self.penalty_until = Some(now + penalty);
    }
}

/// A response being built, before rate-limit headers and logging.
struct Reply {
    status: StatusCode,
    /// Boxed to keep `Result<_, Reply>` small.
    headers: Box<HeaderMap>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: StatusCode, body: &Value) -> Self {
        Self::raw_json(status, body.to_string().into_bytes())
    }

    fn raw_json(status: StatusCode, body: Vec<u8>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        Self {
            status,
            headers: Box::new(headers),
            body,
        }
    }

    /// A RingCentral API error: `{"errorCode", "message", "errors": [{...}]}`.
    fn api_error(status: StatusCode, code: &str, message: &str, extra: Value) -> Self {
        let mut item = json!({ "errorCode": code, "message": message });
        if let (Some(item), Value::Object(extra)) = (item.as_object_mut(), extra) {
            item.extend(extra);
        }
        Self::json(
            status,
            &json!({ "errorCode": code, "message": message, "errors": [item] }),
        )
    }

    /// An OAuth error from the token endpoint.
    fn oauth_error(status: StatusCode, error: &str, code: &str, message: &str) -> Self {
        Self::json(
            status,
            &json!({
                "error": error,
                "error_description": message,
                "errors": [{ "errorCode": code, "message": message }],
            }),
        )
    }

    fn rate_limited(penalty: Duration) -> Self {
        let mut reply = Self::api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "CMN-301",
            "Request rate exceeded",
            Value::Null,
        );
        reply.set("retry-after", &format_secs(penalty));
        reply
    }

    fn set(&mut self, name: &'static str, value: &str) {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// What a handler decided, for the log and the response.
struct Outcome {
    reply: Reply,
    account_id: Option<String>,
    body: Option<Value>,
}

/// Request facts every handler logs.
struct Arrival {
    at: Instant,
    at_utc: DateTime<Utc>,
    path: String,
    slow: Duration,
}

impl Arrival {
    fn new(shared: &Shared, uri: &Uri) -> Self {
        Self {
            at: Instant::now(),
            at_utc: Utc::now(),
            path: uri.path().to_owned(),
            slow: shared.lock().faults.slow,
        }
    }

    /// Logs the request, waits out the `slow` fault, and answers.
    async fn finish(self, shared: &Shared, outcome: Outcome) -> Response {
        let status = outcome.reply.status.as_u16();
        let slow = self.slow;
        let reply = self.log(shared, outcome, status);
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        let Reply {
            status,
            headers,
            body,
        } = reply;
        (status, *headers, body).into_response()
    }

    /// Adds the request to the log as answered with `status` (0: never answered); returns the
    /// reply to send.
    fn log(self, shared: &Shared, outcome: Outcome, status: u16) -> Reply {
        tracing::debug!(path = %self.path, status, "RingCentral simulator answered");
        shared.lock().requests.push(RcRequest {
            at: self.at,
            at_utc: self.at_utc,
            path: self.path,
            account_id: outcome.account_id,
            status,
            body: outcome.body,
        });
        outcome.reply
    }
}

/// Applies the rate limit of `group` for `account_id` (if any) and adds the headers.
/// Returns the 429 reply when the request is over the limit or in a penalty.
fn rate_limit(
    shared: &Shared,
    state: &mut SimState,
    group: Group,
    account_id: Option<&str>,
) -> Result<HeaderMap, Reply> {
    let (limit, window) = shared.limit_of(group);
    let penalty = shared.config.penalty;
    let remaining = match account_id {
        Some(account) if shared.config.rate_limits => state
            .limiters
            .entry((account.to_owned(), group))
            .or_default()
            .admit(Instant::now(), limit, window, penalty),
        _ => Some(limit),
    };
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put("x-rate-limit-group", group.name().to_owned());
    put("x-rate-limit-limit", limit.to_string());
    put("x-rate-limit-remaining", remaining.unwrap_or(0).to_string());
    put("x-rate-limit-window", format_secs(window));
    match remaining {
        Some(_) => Ok(headers),
        None => {
            let mut reply = Reply::rate_limited(penalty);
            reply.headers.extend(headers);
            Err(reply)
        }
    }
}

/// Merges rate-limit headers into a reply.
fn with_headers(mut reply: Reply, headers: HeaderMap) -> Reply {
    reply.headers.extend(headers);
    reply
}

/// The client's account from `Authorization: Basic base64(client_id:client_secret)`.
fn basic_client<'a>(shared: &'a Shared, headers: &HeaderMap) -> Option<&'a SimAccount> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    shared.account_by_client(id, secret)
}

/// `POST /restapi/oauth/token`.
async fn token(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::new(&shared, &uri);
    let outcome = token_outcome(&shared, &method, &headers, &body);
    arrival.finish(&shared, outcome).await
}

fn token_outcome(shared: &Shared, method: &Method, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let account = basic_client(shared, headers);
    let account_id = account.map(|a| a.account_id.clone());
    let mut state = shared.lock();
    let limits = rate_limit(shared, &mut state, Group::Auth, account_id.as_deref());
    let reply = match (method == Method::POST, account, limits) {
        (false, _, limits) => with_headers(not_found_reply(), limits.unwrap_or_default()),
        (true, None, Ok(limits)) => with_headers(
            Reply::oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "OAU-123",
                "Invalid client",
            ),
            limits,
        ),
        (true, _, Err(limited)) => limited,
        (true, Some(account), Ok(limits)) => {
            with_headers(grant(shared, &mut state, account, body), limits)
        }
    };
    Outcome {
        reply,
        account_id,
        body: None,
    }
}

/// Checks a grant for an authenticated client and issues tokens.
fn grant(shared: &Shared, state: &mut SimState, account: &SimAccount, body: &[u8]) -> Reply {
    let form = parse_form(body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let locked = state.faults.locked_accounts.contains(&account.account_id);
    let invalid_grant = |code: &str, message: &str| {
        Reply::oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", code, message)
    };
    let locked_reply = || invalid_grant("OAU-147", "User account is locked");
    let now = Instant::now();
    match field("grant_type") {
        Some(JWT_GRANT) => {
            if field("assertion") != Some(account.jwt.as_str()) {
                return invalid_grant("OAU-140", "Invalid JWT");
            }
            if locked {
                return locked_reply();
            }
        }
        Some("refresh_token") => {
            let presented = field("refresh_token").unwrap_or_default();
            let valid = state
                .refresh_tokens
                .get(presented)
                .is_some_and(|r| r.account_id == account.account_id && now < r.expires_at);
            // Single use: a presented token is gone whatever the outcome.
            let old = state.refresh_tokens.remove(presented);
            if !valid {
                return invalid_grant("OAU-211", "Token not found");
            }
            if locked {
                return locked_reply();
            }
            if let Some(old) = old {
                // The old session's access token ends with the refresh.
                state.tokens.retain(|_, t| t.session != old.session);
            }
        }
        _ => {
            return Reply::oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "OAU-250",
                "Unsupported grant type",
            );
        }
    }

    state.sessions += 1;
    let session = state.sessions;
    let access = random_token();
    let refresh = random_token();
    let ttl = shared.config.token_ttl;
    state.tokens.insert(
        access.clone(),
        AccessToken {
            account_id: account.account_id.clone(),
            expires_at: now + ttl,
            session,
        },
    );
    state.refresh_tokens.insert(
        refresh.clone(),
        RefreshToken {
            account_id: account.account_id.clone(),
            expires_at: now + REFRESH_TTL,
            session,
        },
    );
    Reply::json(
        StatusCode::OK,
        &json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": ttl.as_secs().max(1),
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TTL.as_secs(),
            "scope": "ReadAuditTrail ReadAccounts",
            "owner_id": owner_id(&account.account_id),
            "endpoint_id": format!("sim-endpoint-{session}"),
            "session_id": format!("{}", 9_000_000_000u64 + session),
        }),
    )
}

/// A RingCentral-looking opaque token (base64, like `U0pDMDFQMDFQQVMwMHxBQUJ...`).
fn random_token() -> String {
    let mut bytes = [0u8; 48];
    fastrand::fill(&mut bytes);
    STANDARD.encode(bytes)
}

/// `POST /restapi/oauth/revoke`: ends the session of the given access or refresh token.
async fn revoke(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::new(&shared, &uri);
    let account_id = basic_client(&shared, &headers).map(|a| a.account_id.clone());
    let mut presented: Vec<String> = parse_form(&body)
        .into_iter()
        .chain(parse_form(uri.query().unwrap_or_default().as_bytes()))
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .collect();
    presented.dedup();
    let reply = {
        let mut state = shared.lock();
        match rate_limit(&shared, &mut state, Group::Auth, account_id.as_deref()) {
            Err(limited) => limited,
            Ok(limits) => {
                let sessions: HashSet<u64> = presented
                    .iter()
                    .filter_map(|t| {
                        state
                            .tokens
                            .get(t)
                            .map(|a| a.session)
                            .or_else(|| state.refresh_tokens.get(t).map(|r| r.session))
                    })
                    .collect();
                state.tokens.retain(|_, t| !sessions.contains(&t.session));
                state
                    .refresh_tokens
                    .retain(|_, r| !sessions.contains(&r.session));
                let mut reply = Reply::raw_json(StatusCode::OK, Vec::new());
                reply.headers.remove(header::CONTENT_TYPE);
                with_headers(reply, limits)
            }
        }
    };
    let outcome = Outcome {
        reply,
        account_id,
        body: None,
    };
    arrival.finish(&shared, outcome).await
}

/// `POST /restapi/v1.0/account/{accountId}/audit-trail/search`.
async fn search(
    State(shared): State<Arc<Shared>>,
    Path(path_account): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::new(&shared, &uri);
    let outcome = search_outcome(&shared, &path_account, &method, &headers, &body);
    let hang = outcome
        .account_id
        .as_ref()
        .is_some_and(|a| shared.lock().faults.hanging_accounts.contains(a));
    if hang {
        // Logged as never answered (status 0), then silent until the client gives up.
        arrival.log(&shared, outcome, 0);
        return std::future::pending().await;
    }
    arrival.finish(&shared, outcome).await
}

fn search_outcome(
    shared: &Shared,
    path_account: &str,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    let parsed_body: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    let mut outcome = Outcome {
        reply: not_found_reply(),
        account_id: (path_account != "~").then(|| path_account.to_owned()),
        body: parsed_body.clone(),
    };
    let mut state = shared.lock();

    // 1. Bearer token.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let token_account = match bearer {
        None => Err(Reply::api_error(
            StatusCode::UNAUTHORIZED,
            "AGW-401",
            "Authorization header is not specified",
            Value::Null,
        )),
        Some(token) => match state.tokens.get(&token) {
            None => Err(Reply::api_error(
                StatusCode::UNAUTHORIZED,
                "OAU-149",
                "Invalid token",
                Value::Null,
            )),
            Some(t) if Instant::now() >= t.expires_at => Err(Reply::api_error(
                StatusCode::UNAUTHORIZED,
                "OAU-128",
                "Access token expired",
                Value::Null,
            )),
            Some(t) => Ok(t.account_id.clone()),
        },
    };
    let account = match token_account {
        Ok(account) => account,
        Err(reply) => {
            let limits = rate_limit(shared, &mut state, Group::Heavy, None).unwrap_or_default();
            outcome.reply = with_headers(reply, limits);
            return outcome;
        }
    };
    outcome.account_id = Some(account.clone());

    // 2. Rate limit and penalty.
    let limits = match rate_limit(shared, &mut state, Group::Heavy, Some(&account)) {
        Ok(limits) => limits,
        Err(limited) => {
            outcome.reply = limited;
            return outcome;
        }
    };

    // 3. Faults, then permission and account checks.
    let reply = if method != Method::POST {
        not_found_reply()
    } else if state.faults.force_429 > 0 || state.faults.throttled_accounts.contains(&account) {
        if !state.faults.throttled_accounts.contains(&account) {
            state.faults.force_429 -= 1;
        }
        let penalty = shared.config.penalty;
        if shared.config.rate_limits {
            state
                .limiters
                .entry((account.clone(), Group::Heavy))
                .or_default()
                .punish(Instant::now(), penalty);
        }
        let mut reply = Reply::rate_limited(penalty);
        reply.headers.extend(limits);
        reply
            .headers
            .insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        outcome.reply = reply;
        return outcome;
    } else if state.faults.server_errors > 0 || state.faults.unavailable_accounts.contains(&account)
    {
        if !state.faults.unavailable_accounts.contains(&account) {
            state.faults.server_errors -= 1;
        }
        Reply::api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "CMN-201",
            "Service temporary unavailable",
            Value::Null,
        )
    } else if state.faults.forbidden_accounts.contains(&account) {
        let message = "In order to call this API endpoint, application needs to have [ReadAuditTrail] permission";
        Reply::api_error(
            StatusCode::FORBIDDEN,
            "CMN-401",
            message,
            json!({ "permissionName": "ReadAuditTrail" }),
        )
    } else if path_account != "~" && path_account != account {
        Reply::api_error(
            StatusCode::FORBIDDEN,
            "CMN-102",
            "Resource for parameter [accountId] is not found",
            json!({ "parameterName": "accountId", "parameterValue": path_account }),
        )
    } else {
        match SearchQuery::parse(parsed_body.as_ref(), body) {
            Err(reply) => reply,
            Ok(mut query) => {
                if let Some(clamp) = state.faults.clamp_per_page {
                    query.per_page = query.per_page.min(clamp.max(1));
                }
                if let Some((status, bytes)) = state.faults.raw_search_replies.pop_front() {
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    outcome.reply = with_headers(Reply::raw_json(status, bytes), limits);
                    return outcome;
                }
                query.lose_page = query.page >= 2 && state.faults.empty_pages > 0;
                if query.lose_page {
                    state.faults.empty_pages -= 1;
                }
                query.omit_total_found = state.faults.omit_total_found;
                query.total_found_extra = state.faults.total_found_extra;
                query.total_found_cap = state.faults.total_found_cap;
                let matching: Vec<Arc<RawValue>> = state
                    .records
                    .get(&account)
                    .map(|list| {
                        list.iter()
                            .filter(|r| query.matches(r))
                            .map(|r| Arc::clone(&r.raw))
                            .collect()
                    })
                    .unwrap_or_default();
                drop(state);
                query.page_of(&matching)
            }
        }
    };
    outcome.reply = with_headers(reply, limits);
    outcome
}

/// A validated search body.
struct SearchQuery {
    from_ms: i64,
    to_ms: i64,
    page: u64,
    per_page: u64,
    action_ids: Option<HashSet<String>>,
    exclude_action_ids: HashSet<String>,
    /// Fault: serve this page empty (paging unchanged).
    lose_page: bool,
    /// Fault: no `totalFound`.
    omit_total_found: bool,
    /// Fault: `totalFound` this much too high.
    total_found_extra: u64,
    /// Fault: `totalFound` at most this.
    total_found_cap: Option<u64>,
}

/// The search response.
#[derive(Serialize)]
struct SearchPage<'a> {
    records: Vec<&'a RawValue>,
    paging: Paging,
}

/// `paging` of the search response.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Paging {
    page: u64,
    per_page: u64,
    total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_found: Option<u64>,
}

impl SearchQuery {
    fn parse(body: Option<&Value>, raw: &[u8]) -> Result<Self, Reply> {
        let invalid = |name: &str, value: &Value| {
            Reply::api_error(
                StatusCode::BAD_REQUEST,
                "CMN-101",
                &format!("Parameter [{name}] is invalid"),
                json!({ "parameterName": name, "parameterValue": value_text(value) }),
            )
        };
        let empty = serde_json::Map::new();
        let fields = match body {
            Some(Value::Object(fields)) => fields,
            None if raw.iter().all(u8::is_ascii_whitespace) => &empty,
            _ => {
                let text = String::from_utf8_lossy(raw).into_owned();
                return Err(invalid("body", &Value::String(text)));
            }
        };
        let get = |name: &str| fields.get(name).unwrap_or(&Value::Null);
        let time = |name: &str| {
            get(name)
                .as_str()
                .and_then(parse_time)
                .map(|t| t.timestamp_millis())
                .ok_or_else(|| invalid(name, get(name)))
        };
        let number =
            |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| match get(name) {
                Value::Null => Ok(default),
                v => v
                    .as_u64()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| invalid(name, v)),
            };
        let ids = |name: &str| match get(name) {
            Value::Null => Ok(None),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<HashSet<String>>>()
                .map(Some)
                .ok_or_else(|| invalid(name, get(name))),
            v => Err(invalid(name, v)),
        };
        Ok(Self {
            from_ms: time("eventTimeFrom")?,
            to_ms: time("eventTimeTo")?,
            page: number("page", 1, 1..=u64::from(u32::MAX))?,
            per_page: number("perPage", 100, 1..=MAX_PER_PAGE)?,
            action_ids: ids("actionIds")?,
            exclude_action_ids: ids("excludeActionIds")?.unwrap_or_default(),
            lose_page: false,
            omit_total_found: false,
            total_found_extra: 0,
            total_found_cap: None,
        })
    }

    fn matches(&self, record: &Stored) -> bool {
        let in_range = record
            .time_ms
            .is_some_and(|t| t >= self.from_ms && t <= self.to_ms);
        let action = record.action_id.as_deref().unwrap_or_default();
        in_range
            && self
                .action_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(action))
            && !self.exclude_action_ids.contains(action)
    }

    fn page_of(&self, matching: &[Arc<RawValue>]) -> Reply {
        let found = matching.len() as u64;
        let start = (self.page - 1).saturating_mul(self.per_page);
        let records = matching
            .iter()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(usize::try_from(self.per_page).unwrap_or(usize::MAX))
            .take(if self.lose_page { 0 } else { usize::MAX })
            .map(|r| r.as_ref())
            .collect();
        let page = SearchPage {
            records,
            paging: Paging {
                page: self.page,
                per_page: self.per_page,
                total: found.div_ceil(self.per_page),
                total_found: (!self.omit_total_found).then_some(
                    (found + self.total_found_extra).min(self.total_found_cap.unwrap_or(u64::MAX)),
                ),
            },
        };
        match serde_json::to_vec(&page) {
            Ok(bytes) => Reply::raw_json(StatusCode::OK, bytes),
            Err(e) => Reply::api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CMN-201",
                &format!("Service temporary unavailable: {e}"),
                Value::Null,
            ),
        }
    }
}

/// A parameter value as text for error bodies.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn not_found_reply() -> Reply {
    Reply::api_error(
        StatusCode::NOT_FOUND,
        "CMN-102",
        "Resource not found",
        Value::Null,
    )
}

/// Any other path.
async fn not_found(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let arrival = Arrival::new(&shared, &uri);
    let outcome = Outcome {
        reply: not_found_reply(),
        account_id: None,
        body: None,
    };
    arrival.finish(&shared, outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use reqwest::Client;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn acme() -> SimAccount {
        SimAccount::new("403858014008", "Acme Corp")
    }

    fn config() -> RcSimConfig {
        RcSimConfig {
            accounts: vec![acme(), SimAccount::new("1000", "Other Inc")],
            ..RcSimConfig::default()
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap_or_default()
    }

    fn millis(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    async fn token_response(
        client: &Client,
        sim: &RcSim,
        account: &SimAccount,
        form: &[(&str, &str)],
    ) -> Result<reqwest::Response, reqwest::Error> {
        client
            .post(format!("{}/restapi/oauth/token", sim.url()))
            .basic_auth(&account.client_id, Some(&account.client_secret))
            .form(form)
            .send()
            .await
    }

    async fn login(
        client: &Client,
        sim: &RcSim,
        account: &SimAccount,
    ) -> Result<Value, reqwest::Error> {
        token_response(
            client,
            sim,
            account,
            &[("grant_type", JWT_GRANT), ("assertion", &account.jwt)],
        )
        .await?
        .json()
        .await
    }

    async fn access_token(
        client: &Client,
        sim: &RcSim,
        account: &SimAccount,
    ) -> Result<String, reqwest::Error> {
        let body = login(client, sim, account).await?;
        Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
    }

    async fn search_raw(
        client: &Client,
        sim: &RcSim,
        account: &str,
        token: &str,
        body: &Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        client
            .post(format!(
                "{}/restapi/v1.0/account/{account}/audit-trail/search",
                sim.url()
            ))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
    }

    fn window(from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
        json!({ "eventTimeFrom": millis(from), "eventTimeTo": millis(to) })
    }

    fn error_code(body: &Value) -> &str {
        body["errors"][0]["errorCode"].as_str().unwrap_or_default()
    }

    fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn jwt_grant_issues_tokens_and_refresh_tokens_are_single_use() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let account = acme();

        let response = token_response(
            &client,
            &sim,
            &account,
            &[("grant_type", JWT_GRANT), ("assertion", &account.jwt)],
        )
        .await?;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-rate-limit-group"), "auth");
        assert_eq!(header(&response, "x-rate-limit-limit"), "5");
        assert_eq!(header(&response, "x-rate-limit-remaining"), "4");
        assert_eq!(header(&response, "x-rate-limit-window"), "60");
        let body: Value = response.json().await?;
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["refresh_token_expires_in"], 604_800);
        assert_eq!(body["scope"], "ReadAuditTrail ReadAccounts");
        assert!(body["owner_id"].is_string() && body["endpoint_id"].is_string());
        let refresh = body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        let refreshed = token_response(
            &client,
            &sim,
            &account,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .await?;
        assert_eq!(refreshed.status(), 200);
        let refreshed: Value = refreshed.json().await?;
        let token = refreshed["access_token"].as_str().unwrap_or_default();
        let search = search_raw(&client, &sim, "~", token, &window(Utc::now(), Utc::now())).await?;
        assert_eq!(search.status(), 200);

        let reused = token_response(
            &client,
            &sim,
            &account,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .await?;
        assert_eq!(reused.status(), 400);
        let reused: Value = reused.json().await?;
        assert_eq!(reused["error"], "invalid_grant");
        assert_eq!(error_code(&reused), "OAU-211");
        Ok(())
    }

    #[tokio::test]
    async fn token_endpoint_rejects_bad_client_grant_jwt_and_locked_user() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let account = acme();
        let url = format!("{}/restapi/oauth/token", sim.url());
        let jwt_form = [
            ("grant_type", JWT_GRANT),
            ("assertion", account.jwt.as_str()),
        ];

        let bad_secret = client
            .post(&url)
            .basic_auth(&account.client_id, Some("wrong"))
            .form(&jwt_form)
            .send()
            .await?;
        assert_eq!(bad_secret.status(), 401);
        let body: Value = bad_secret.json().await?;
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(error_code(&body), "OAU-123");

        let no_auth = client.post(&url).form(&jwt_form).send().await?;
        assert_eq!(no_auth.status(), 401);

        let password =
            token_response(&client, &sim, &account, &[("grant_type", "password")]).await?;
        assert_eq!(password.status(), 400);
        let body: Value = password.json().await?;
        assert_eq!(body["error"], "unsupported_grant_type");
        assert_eq!(error_code(&body), "OAU-250");

        let other_jwt = SimAccount::new("1000", "Other Inc").jwt;
        let wrong_jwt = token_response(
            &client,
            &sim,
            &account,
            &[("grant_type", JWT_GRANT), ("assertion", &other_jwt)],
        )
        .await?;
        assert_eq!(wrong_jwt.status(), 400);
        let body: Value = wrong_jwt.json().await?;
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(error_code(&body), "OAU-140");

        sim.update_faults(|f| {
            f.locked_accounts.insert(account.account_id.clone());
        });
        let locked = token_response(&client, &sim, &account, &jwt_form).await?;
        assert_eq!(locked.status(), 400);
        let body: Value = locked.json().await?;
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(error_code(&body), "OAU-147");

        let logged: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(logged, [401, 401, 400, 400, 400]);
        Ok(())
    }

    #[tokio::test]
    async fn expired_unknown_and_missing_tokens_answer_401() -> TestResult {
        let sim = RcSim::start(RcSimConfig {
            token_ttl: Duration::from_millis(150),
            ..config()
        })
        .await?;
        let client = Client::new();
        let body = window(Utc::now(), Utc::now());
        let login_body = login(&client, &sim, &acme()).await?;
        assert_eq!(login_body["expires_in"], 1, "at least 1 second");
        let token = login_body["access_token"].as_str().unwrap_or_default();
        assert_eq!(
            search_raw(&client, &sim, "~", token, &body).await?.status(),
            200
        );

        tokio::time::sleep(Duration::from_millis(300)).await;
        let expired = search_raw(&client, &sim, "~", token, &body).await?;
        assert_eq!(expired.status(), 401);
        assert_eq!(header(&expired, "x-rate-limit-group"), "heavy");
        assert_eq!(error_code(&expired.json().await?), "OAU-128");

        let unknown = search_raw(&client, &sim, "~", "not-a-token", &body).await?;
        assert_eq!(unknown.status(), 401);
        assert_eq!(error_code(&unknown.json().await?), "OAU-149");

        let missing = client
            .post(format!(
                "{}/restapi/v1.0/account/~/audit-trail/search",
                sim.url()
            ))
            .json(&body)
            .send()
            .await?;
        assert_eq!(missing.status(), 401);
        assert_eq!(error_code(&missing.json().await?), "AGW-401");
        Ok(())
    }

    #[tokio::test]
    async fn expire_tokens_invalidates_issued_tokens_only() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let body = window(Utc::now(), Utc::now());
        let old = access_token(&client, &sim, &acme()).await?;
        sim.expire_tokens();
        let expired = search_raw(&client, &sim, "~", &old, &body).await?;
        assert_eq!(expired.status(), 401);
        assert_eq!(error_code(&expired.json().await?), "OAU-128");
        let fresh = access_token(&client, &sim, &acme()).await?;
        assert_eq!(
            search_raw(&client, &sim, "~", &fresh, &body)
                .await?
                .status(),
            200
        );
        Ok(())
    }

    #[tokio::test]
    async fn revoke_ends_the_session() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let account = acme();
        let token = access_token(&client, &sim, &account).await?;
        let revoked = client
            .post(format!("{}/restapi/oauth/revoke", sim.url()))
            .basic_auth(&account.client_id, Some(&account.client_secret))
            .form(&[("token", token.as_str())])
            .send()
            .await?;
        assert_eq!(revoked.status(), 200);
        let body = window(Utc::now(), Utc::now());
        let after = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(after.status(), 401);
        Ok(())
    }

    #[tokio::test]
    async fn paging_returns_every_record_exactly_once_newest_first() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let from = at("2024-08-06T00:00:00Z");
        let to = at("2024-08-07T00:00:00Z");
        assert_eq!(sim.generate("403858014008", 250, from, to, 9), 250);
        let token = access_token(&client, &sim, &acme()).await?;

        let mut seen = Vec::new();
        for page in 1..=4 {
            let mut body = window(from, to);
            body["page"] = json!(page);
            body["perPage"] = json!(100);
            body["includeAdmins"] = json!(true);
            body["includeHidden"] = json!(true);
            body["searchParameters"] = json!([]);
            let response = search_raw(&client, &sim, "~", &token, &body).await?;
            assert_eq!(response.status(), 200);
            let response: Value = response.json().await?;
            assert_eq!(
                response["paging"],
                json!({ "page": page, "perPage": 100, "total": 3, "totalFound": 250 })
            );
            let records = response["records"].as_array().cloned().unwrap_or_default();
            let expected = match page {
                1 | 2 => 100,
                3 => 50,
                _ => 0,
            };
            assert_eq!(records.len(), expected, "page {page}");
            seen.extend(records);
        }
        let ids: HashSet<&str> = seen.iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids.len(), 250);
        let times: Vec<&str> = seen
            .iter()
            .filter_map(|r| r["eventTime"].as_str())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
        assert_eq!(seen, sim.records("403858014008"));
        Ok(())
    }

    #[tokio::test]
    async fn time_range_is_inclusive_at_millisecond_precision_and_action_filters_apply()
    -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let t0 = at("2024-08-06T10:50:19.442Z");
        let t1 = t0 + TimeDelta::milliseconds(1);
        let t2 = t0 + TimeDelta::seconds(60);
        let record = |id: &str, t: DateTime<Utc>, action: &str| json!({ "id": id, "eventTime": millis(t), "actionId": action });
        sim.add_records(
            "403858014008",
            vec![
                record(
                    "before",
                    t0 - TimeDelta::milliseconds(1),
                    "LOGIN_SUCCESSFULLY",
                ),
                record("start", t0, "LOGIN_SUCCESSFULLY"),
                record("next", t1, "CHANGE_USER_ROLE"),
                record("end", t2, "LOGIN_FAILED"),
                record(
                    "after",
                    t2 + TimeDelta::milliseconds(1),
                    "LOGIN_SUCCESSFULLY",
                ),
            ],
        );
        let token = access_token(&client, &sim, &acme()).await?;
        let ids = |body: Value| {
            let client = client.clone();
            let token = token.clone();
            let sim = &sim;
            async move {
                let response: Value = search_raw(&client, sim, "~", &token, &body)
                    .await?
                    .json()
                    .await?;
                let ids: Vec<String> = response["records"]
                    .as_array()
                    .map(|rs| {
                        rs.iter()
                            .filter_map(|r| r["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok::<_, reqwest::Error>(ids)
            }
        };
        assert_eq!(ids(window(t0, t2)).await?, ["end", "next", "start"]);
        let mut sub_ms = window(t0, t2);
        sub_ms["eventTimeFrom"] = json!("2024-08-06T10:50:19.442900Z");
        assert_eq!(ids(sub_ms).await?, ["end", "next", "start"]);
        assert_eq!(
            ids(window(t1, t2 - TimeDelta::milliseconds(1))).await?,
            ["next"]
        );
        let mut only = window(t0, t2);
        only["actionIds"] = json!(["LOGIN_SUCCESSFULLY", "LOGIN_FAILED"]);
        assert_eq!(ids(only).await?, ["end", "start"]);
        let mut except = window(t0, t2);
        except["excludeActionIds"] = json!(["LOGIN_FAILED"]);
        assert_eq!(ids(except).await?, ["next", "start"]);
        Ok(())
    }

    #[tokio::test]
    async fn search_rejects_bad_bodies_and_other_accounts() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let client = Client::new();
        let token = access_token(&client, &sim, &acme()).await?;
        let now = Utc::now();

        let missing = search_raw(
            &client,
            &sim,
            "~",
            &token,
            &json!({ "eventTimeTo": millis(now) }),
        )
        .await?;
        assert_eq!(missing.status(), 400);
        let body: Value = missing.json().await?;
        assert_eq!(error_code(&body), "CMN-101");
        assert_eq!(body["errors"][0]["parameterName"], "eventTimeFrom");

        let mut not_rfc3339 = window(now, now);
        not_rfc3339["eventTimeTo"] = json!("yesterday");
        assert_eq!(
            search_raw(&client, &sim, "~", &token, &not_rfc3339)
                .await?
                .status(),
            400
        );

        let mut too_big = window(now, now);
        too_big["perPage"] = json!(1001);
        let too_big = search_raw(&client, &sim, "~", &token, &too_big).await?;
        assert_eq!(too_big.status(), 400);
        assert_eq!(error_code(&too_big.json().await?), "CMN-101");
        let mut max = window(now, now);
        max["perPage"] = json!(1000);
        assert_eq!(
            search_raw(&client, &sim, "~", &token, &max).await?.status(),
            200
        );

        let own = search_raw(&client, &sim, "403858014008", &token, &window(now, now)).await?;
        assert_eq!(own.status(), 200);
        let other = search_raw(&client, &sim, "1000", &token, &window(now, now)).await?;
        assert_eq!(other.status(), 403);
        assert_eq!(error_code(&other.json().await?), "CMN-102");

        let log = sim.requests();
        let last = log.last().ok_or("no requests logged")?;
        assert_eq!(last.account_id.as_deref(), Some("403858014008"));
        assert_eq!(last.status, 403);
        assert!(
            last.body
                .as_ref()
                .is_some_and(|b| b["eventTimeFrom"].is_string())
        );
        Ok(())
    }

    #[tokio::test]
    async fn rate_limit_answers_429_after_the_limit_and_requests_during_the_penalty_restart_it()
    -> TestResult {
        let penalty = Duration::from_millis(400);
        let sim = RcSim::start(RcSimConfig {
            heavy_limit: 3,
            heavy_window: Duration::from_secs(30),
            penalty,
            ..config()
        })
        .await?;
        let client = Client::new();
        let token = access_token(&client, &sim, &acme()).await?;
        let body = window(Utc::now(), Utc::now());

        for remaining in ["2", "1", "0"] {
            let ok = search_raw(&client, &sim, "~", &token, &body).await?;
            assert_eq!(ok.status(), 200);
            assert_eq!(header(&ok, "x-rate-limit-remaining"), remaining);
            assert_eq!(header(&ok, "x-rate-limit-limit"), "3");
            assert_eq!(header(&ok, "x-rate-limit-window"), "30");
        }
        let limited = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(limited.status(), 429);
        assert_eq!(header(&limited, "retry-after"), "0.4");
        assert_eq!(header(&limited, "x-rate-limit-remaining"), "0");
        let limited: Value = limited.json().await?;
        assert_eq!(limited["errorCode"], "CMN-301");
        assert_eq!(error_code(&limited), "CMN-301");
        let first_429 = sim.requests().last().ok_or("no log")?.at;

        // Keep knocking well inside each penalty: every knock must restart it, so even long after
        // the first penalty would have ended, the answer is still 429.
        loop {
            tokio::time::sleep(Duration::from_millis(120)).await;
            let status = search_raw(&client, &sim, "~", &token, &body)
                .await?
                .status();
            let log = sim.requests();
            let (prev, this) = (&log[log.len() - 2], &log[log.len() - 1]);
            if this.at.duration_since(prev.at) >= penalty {
                return Err("machine too slow for this test's pacing".into());
            }
            assert_eq!(status, 429, "a request during the penalty restarts it");
            if this.at.duration_since(first_429) > penalty * 2 {
                break;
            }
        }

        // Stay quiet for the penalty: the window resets.
        tokio::time::sleep(penalty + Duration::from_millis(150)).await;
        let after = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(after.status(), 200);
        assert_eq!(header(&after, "x-rate-limit-remaining"), "2");
        Ok(())
    }

    #[tokio::test]
    async fn token_endpoint_has_its_own_auth_limit() -> TestResult {
        let sim = RcSim::start(RcSimConfig {
            auth_limit: 2,
            auth_window: Duration::from_millis(1500),
            ..config()
        })
        .await?;
        let client = Client::new();
        let account = acme();
        let form = [
            ("grant_type", JWT_GRANT),
            ("assertion", account.jwt.as_str()),
        ];
        assert_eq!(
            token_response(&client, &sim, &account, &form)
                .await?
                .status(),
            200
        );
        assert_eq!(
            token_response(&client, &sim, &account, &form)
                .await?
                .status(),
            200
        );
        let limited = token_response(&client, &sim, &account, &form).await?;
        assert_eq!(limited.status(), 429);
        assert_eq!(header(&limited, "x-rate-limit-group"), "auth");
        assert_eq!(header(&limited, "x-rate-limit-window"), "1.5");
        assert_eq!(header(&limited, "retry-after"), "60");
        // Another account has its own budget.
        let other = SimAccount::new("1000", "Other Inc");
        let other_form = [("grant_type", JWT_GRANT), ("assertion", other.jwt.as_str())];
        assert_eq!(
            token_response(&client, &sim, &other, &other_form)
                .await?
                .status(),
            200
        );
        Ok(())
    }

    #[tokio::test]
    async fn faults_forbid_fail_and_force_429() -> TestResult {
        let sim = RcSim::start(RcSimConfig {
            penalty: Duration::from_millis(200),
            ..config()
        })
        .await?;
        let client = Client::new();
        let token = access_token(&client, &sim, &acme()).await?;
        let body = window(Utc::now(), Utc::now());

        sim.update_faults(|f| {
            f.forbidden_accounts.insert("403858014008".to_owned());
        });
        let forbidden = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(forbidden.status(), 403);
        let forbidden: Value = forbidden.json().await?;
        assert_eq!(error_code(&forbidden), "CMN-401");
        assert_eq!(forbidden["errors"][0]["permissionName"], "ReadAuditTrail");
        sim.update_faults(|f| f.forbidden_accounts.clear());

        sim.update_faults(|f| f.server_errors = 2);
        for expected in [503, 503, 200] {
            let response = search_raw(&client, &sim, "~", &token, &body).await?;
            assert_eq!(response.status(), expected);
            if expected == 503 {
                assert_eq!(error_code(&response.json().await?), "CMN-201");
            }
        }

        sim.update_faults(|f| f.force_429 = 1);
        let forced = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(forced.status(), 429);
        assert_eq!(header(&forced, "retry-after"), "0.2");
        let during = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(during.status(), 429, "a forced 429 starts a real penalty");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            search_raw(&client, &sim, "~", &token, &body)
                .await?
                .status(),
            200
        );
        Ok(())
    }

    #[tokio::test]
    async fn rate_limits_can_be_turned_off() -> TestResult {
        let sim = RcSim::start(RcSimConfig {
            heavy_limit: 1,
            rate_limits: false,
            ..config()
        })
        .await?;
        let client = Client::new();
        let token = access_token(&client, &sim, &acme()).await?;
        let body = window(Utc::now(), Utc::now());
        for _ in 0..3 {
            let response = search_raw(&client, &sim, "~", &token, &body).await?;
            assert_eq!(response.status(), 200);
            assert_eq!(header(&response, "x-rate-limit-remaining"), "1");
        }
        Ok(())
    }

    #[tokio::test]
    async fn down_refuses_connections_and_up_serves_on_the_same_port() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let url = sim.url();
        let client = Client::new();
        let token = access_token(&client, &sim, &acme()).await?;
        let body = window(Utc::now(), Utc::now());

        sim.set_down(true).await;
        // The same client: its pooled keep-alive connection must not reach a "dead" server.
        let refused = search_raw(&client, &sim, "~", &token, &body).await;
        assert!(refused.is_err(), "down server answered: {refused:?}");
        sim.set_down(true).await;

        sim.set_down(false).await;
        assert_eq!(sim.url(), url);
        let back = search_raw(&client, &sim, "~", &token, &body).await?;
        assert_eq!(back.status(), 200, "tokens survive an outage");
        Ok(())
    }

    #[tokio::test]
    async fn keeps_only_the_newest_10000_records() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let from = at("2024-08-06T00:00:00Z");
        let to = at("2024-08-07T00:00:00Z");
        sim.generate("1000", 10_000, from, to, 1);
        let late = json!({ "id": "late", "eventTime": "2024-08-08T00:00:00.000Z" });
        sim.add_records("1000", vec![late.clone()]);
        let stored = sim.records("1000");
        assert_eq!(stored.len(), MAX_RECORDS_PER_ACCOUNT);
        assert_eq!(stored[0], late);
        Ok(())
    }

    #[tokio::test]
    async fn unknown_paths_answer_404_and_are_logged() -> TestResult {
        let sim = RcSim::start(config()).await?;
        let response = Client::new()
            .get(format!("{}/restapi/v1.0/account/~", sim.url()))
            .send()
            .await?;
        assert_eq!(response.status(), 404);
        assert_eq!(sim.requests().len(), 1);
        Ok(())
    }
}
