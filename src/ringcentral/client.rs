//! One account's RingCentral API client: token lifecycle, rate limiting, retries.
//!
//! Every request goes through [`RcClient::send`], which waits for the rate limiter, sends, feeds
//! the response headers back to the limiter, and classifies the outcome:
//! - 429: wait out the penalty (the limiter blocks the whole account meanwhile), try again;
//! - 5xx, connection errors, unreadable bodies: back off with jitter, try again;
//! - 401 on a search: get a new token once and retry;
//! - token-endpoint refusals, 403 permission errors, 400/404 on a search: [`RcError`] for the
//!   caller, which reports them as configuration problems of that account (never as "no records");
//! - a 200 that is not a page (no `records` array): counted, logged with what was wrong, backed
//!   off and tried again, like a 5xx (never "no records");
//! - a body larger than [`MAX_RESPONSE_BYTES`]: read no further, [`RcError::TooLarge`] for the
//!   pager, which asks again with smaller pages.
//!
//! The rate limiter, the token and the measured clock skew live in a [`Session`] that outlives
//! the client: a config reload builds new clients but hands them the account's session, so a
//! 429 penalty in progress is still honoured (a request during it would restart it).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::TimeDelta;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::auth::{AccessToken, JWT_GRANT, TokenResponse, explain_token_error};
use super::clock::{LocalClock, server_date};
use super::http::ServerHttp;
use super::model::{ApiError, SearchPage, SearchRequest};
use super::rate_limit::{Group, Observed, RateLimiter};
use crate::config::{AccountConfig, Secret};
use crate::retry::{RetryPolicy, cap_retry_after, parse_seconds};
use crate::telemetry::logging::error_chain;
use crate::telemetry::{AccountStats, Component, Health, State, Stats};

/// Why a RingCentral call failed for good. All but `Unavailable` need an operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RcError {
    /// The token endpoint refused the credentials.
    #[error("RingCentral refused the credentials ({detail}): {fix}")]
    Credentials {
        /// Code and message from RingCentral.
        detail: String,
        /// What to do.
        fix: &'static str,
    },
    /// The app or user lacks a permission.
    #[error(
        "RingCentral denied access to the audit trail ({detail}): give the app the {permission} permission and the JWT user an admin role with audit-trail access"
    )]
    Permission {
        /// Code and message.
        detail: String,
        /// The permission named (ReadAuditTrail unless RingCentral said otherwise).
        permission: String,
    },
    /// The search itself was refused (bad account id, bad parameter).
    #[error(
        "RingCentral rejected the audit-trail search (HTTP {status}, {detail}): check account_id and server_url"
    )]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Code and message.
        detail: String,
    },
    /// The answer was larger than [`MAX_RESPONSE_BYTES`]; it was not read further. The pager
    /// asks again with smaller pages.
    #[error(
        "RingCentral sent a response larger than {limit} bytes for a page of {per_page} record(s); it was not read, and the window stays open (its cursor does not move) to be asked again"
    )]
    TooLarge {
        /// The limit.
        limit: usize,
        /// The page size asked for.
        per_page: u32,
    },
    /// The pages contradict their own paging information even after asking again (an empty
    /// page while `paging` says more pages follow). The window stays open: its cursor does
    /// not move, and the next poll asks again.
    #[error(
        "RingCentral's pages contradict its paging information ({detail}); the window stays open and is polled again"
    )]
    Inconsistent {
        /// What disagreed.
        detail: String,
    },
    /// Transient failures persisted past the caller's attempt limit (only `once` sets one).
    #[error(
        "RingCentral unavailable after {attempts} attempts: {detail} (check server_url and the network path to RingCentral; the next poll tries again)"
    )]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        detail: String,
    },
}

impl RcError {
    /// True for problems an operator must fix (as opposed to an outage).
    pub fn is_config(&self) -> bool {
        !matches!(
            self,
            RcError::Unavailable { .. } | RcError::TooLarge { .. } | RcError::Inconsistent { .. }
        )
    }
}

/// The largest RingCentral answer read: 32 MiB, far above a page of 1,000 realistic records
/// (about 2 MiB), so only a broken or hostile answer reaches it. Without a bound one 150 MB
/// page took 314 MiB of memory.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// What an account's RingCentral conversation keeps between clients (config reloads): the rate
/// limiter, the access token and the clock skew. Shared by the account's clients in turn.
#[derive(Debug, Default)]
pub struct Session {
    state: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    limiter: RateLimiter,
    token: Option<AccessToken>,
    /// Local clock minus RingCentral's (`Date`), from the last answer.
    skew: Option<TimeDelta>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A RingCentral client for one account.
pub struct RcClient {
    http: reqwest::Client,
    /// Slots for requests in flight to this account's server, shared with the other accounts
    /// of the server (see [`super::http`]); `None`: unbounded (one-off commands).
    slots: Option<ServerHttp>,
    /// Account name, for logs.
    name: String,
    token_url: String,
    search_url: String,
    client_id: String,
    client_secret: Secret,
    jwt: Secret,
    /// Limiter, token, skew: survive the client (see [`Session`]).
    session: Arc<Session>,
    clock: LocalClock,
    /// Largest answer read (see [`MAX_RESPONSE_BYTES`]).
    max_response_bytes: usize,
    retry: RetryPolicy,
    /// `None`: retry transient failures forever (the service); `Some(n)`: give up after n.
    max_attempts: Option<u32>,
    stats: Arc<Stats>,
    /// This account's counters (responses by status, rate-limit waits).
    acct: Arc<AccountStats>,
    /// Where to say that the account is degraded while requests are retried or rate-limited
    /// (the health component), so `/healthz` shows it before the poll gives up or succeeds.
    health: Option<(Arc<Health>, Component)>,
}

enum Body<'a> {
    Token,
    Search(&'a SearchRequest),
}

impl RcClient {
    /// A client for `account`. `http` should have a request timeout set.
    pub fn new(
        http: reqwest::Client,
        account: &AccountConfig,
        retry: RetryPolicy,
        stats: Arc<Stats>,
    ) -> Self {
        RcClient {
            http,
            slots: None,
            name: account.name.clone(),
            token_url: format!("{}/restapi/oauth/token", account.server_url),
            search_url: format!(
                "{}/restapi/v1.0/account/{}/audit-trail/search",
                account.server_url, account.account_id
            ),
            client_id: account.client_id.clone(),
            client_secret: account.client_secret.clone(),
            jwt: account.jwt.clone(),
            session: Arc::default(),
            clock: LocalClock::default(),
            max_response_bytes: MAX_RESPONSE_BYTES,
            retry,
            max_attempts: None,
            acct: stats.account(&account.name),
            stats,
            health: None,
        }
    }

    /// Sends through `server`'s shared client, within its bound on requests in flight.
    pub fn with_server(mut self, server: ServerHttp) -> Self {
        self.http = server.client.clone();
        self.slots = Some(server);
        self
    }

    /// Gives up on transient failures after `n` attempts (for commands that must end).
    pub fn with_max_attempts(mut self, n: Option<u32>) -> Self {
        self.max_attempts = n;
        self
    }

    /// Continues `session` (another client's limiter, token and skew for the same account).
    pub fn with_session(mut self, session: Arc<Session>) -> Self {
        self.session = session;
        self
    }

    /// Reads time from `clock` (tests shift it).
    pub fn with_clock(mut self, clock: LocalClock) -> Self {
        self.clock = clock;
        self
    }

    /// Reads answers up to `limit` bytes (default [`MAX_RESPONSE_BYTES`]).
    pub fn with_max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Local clock minus RingCentral's, from the last answer's `Date` (`None` before any).
    pub fn skew(&self) -> Option<TimeDelta> {
        self.session.lock().skew
    }

    /// The clock this client measures skew with.
    pub fn clock(&self) -> &LocalClock {
        &self.clock
    }

    /// The backoff policy (the pager re-asks contradicting pages with it).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Reports retries and rate-limit penalties as `Degraded` in `health` under `component`.
    pub fn with_health(mut self, health: Arc<Health>, component: Component) -> Self {
        self.health = Some((health, component));
        self
    }

    fn degraded(&self, reason: String) {
        if let Some((health, component)) = &self.health {
            health.set(component, State::Degraded, Some(reason));
        }
    }

    /// One page of audit-trail search results.
    pub async fn search(&mut self, req: &SearchRequest) -> Result<SearchPage, RcError> {
        self.send(Body::Search(req)).await
    }

    /// Makes sure a token is held, getting one if needed; used by `check`.
    pub async fn authenticate(&mut self) -> Result<(), RcError> {
        self.access_token().await.map(|_| ())
    }

    async fn access_token(&mut self) -> Result<Secret, RcError> {
        let held = self.session.lock().token.clone();
        if let Some(t) = held {
            if t.is_fresh() {
                return Ok(t.value);
            }
            debug!(account = %self.name, "access token due for renewal");
        }
        let token: TokenResponse = self.send(Body::Token).await?;
        let token = token.into_token();
        let value = token.value.clone();
        self.session.lock().token = Some(token);
        Ok(value)
    }

    /// Records the skew between the local clock and RingCentral's `Date`.
    fn observe_date(&self, headers: &reqwest::header::HeaderMap) {
        let Some(date) = server_date(headers) else {
            return;
        };
        let skew = self.clock.now() - date;
        let before = self.session.lock().skew.replace(skew);
        self.acct
            .clock_skew_ms
            .store(skew.num_milliseconds(), Ordering::Relaxed);
        self.acct.clock_skew_seen.store(true, Ordering::Relaxed);
        let big = |s: TimeDelta| s.abs() > super::clock::SKEW_DEGRADED;
        if big(skew) && before.is_none_or(|b| !big(b)) {
            warn!(account = %self.name, skew_s = skew.num_seconds(),
                "this host's clock differs from RingCentral's by {}s; poll windows follow RingCentral's clock, but check the host's time service (chrony, systemd-timesyncd)", skew.num_seconds());
        }
    }

    /// Reads a body up to the size limit, chunk by chunk, so an oversized answer never sits in
    /// memory whole. `Ok(None)`: larger than the limit (not read further).
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
    ) -> Result<Option<Vec<u8>>, reqwest::Error> {
        let limit = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Ok(None);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// Sends one request with rate limiting, retries and classification; returns the parsed 200
    /// body (an unreadable 200 counts as a transient failure).
    async fn send<T: DeserializeOwned>(&mut self, body: Body<'_>) -> Result<T, RcError> {
        let group = match body {
            Body::Token => Group::Auth,
            Body::Search(_) => Group::Heavy,
        };
        let mut backoff = self.retry.backoff();
        let mut refreshed = false;
        let mut limited = 0u32;
        loop {
            let bearer = match body {
                Body::Token => None,
                Body::Search(_) => Some(Box::pin(self.access_token()).await?),
            };
            let waited = self.session.lock().limiter.delay(group);
            crate::watchdog::waiting(waited);
            if !waited.is_zero() {
                tokio::time::sleep(waited).await;
            }
            crate::watchdog::beat();
            if !waited.is_zero() {
                self.acct.rate_limit_wait(waited);
                debug!(account = %self.name, ?group, waited_ms = waited.as_millis() as u64, "paced by RingCentral rate limit");
            }
            // The slot is held from building the request until the body is read, never across
            // a wait of the account's own (token, rate limit, backoff). Taken before the request
            // is built, so thousands of accounts waiting for a slot hold no built requests.
            let slot = match &self.slots {
                Some(server) => Some(server.slot().await),
                None => None,
            };
            let request = match (&body, &bearer) {
                (Body::Token, _) => self
                    .http
                    .request(Method::POST, &self.token_url)
                    .basic_auth(&self.client_id, Some(self.client_secret.expose()))
                    .form(&[("grant_type", JWT_GRANT), ("assertion", self.jwt.expose())]),
                (Body::Search(req), Some(token)) => {
                    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                        .map_err(|_| RcError::Credentials {
                            detail: "the access token has characters not allowed in a header"
                                .into(),
                            fix: "report this as a bug",
                        })?;
                    auth.set_sensitive(true);
                    self.http
                        .request(Method::POST, &self.search_url)
                        .header(AUTHORIZATION, auth)
                        .json(req)
                }
                (Body::Search(_), None) => unreachable!("searches always carry a token"),
            };
            Stats::add(&self.stats.rc_requests, 1);
            let started = std::time::Instant::now();
            let sent = request.send().await;
            self.stats.rc_request_seconds.observe(started.elapsed());
            let failure = match sent {
                Err(e) => {
                    drop(slot);
                    self.acct.rc_response(0);
                    format!("request failed: {}", error_chain(&e.without_url()))
                }
                Ok(resp) => {
                    let status = resp.status();
                    self.acct.rc_response(status.as_u16());
                    let asked = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_seconds);
                    // The rate limiter clamps the penalty to the same cap; this says so once.
                    if status == StatusCode::TOO_MANY_REQUESTS
                        && let Some(asked) = asked
                    {
                        cap_retry_after(asked, &format!("RingCentral (account {})", self.name));
                    }
                    let observed =
                        self.session
                            .lock()
                            .limiter
                            .observe(group, status, resp.headers());
                    self.observe_date(resp.headers());
                    let read = self.read_body(resp).await;
                    drop(slot);
                    let bytes = match read {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            Stats::add(&self.acct.rc_too_large, 1);
                            let limit = self.max_response_bytes;
                            if let Body::Search(req) = &body {
                                warn!(account = %self.name, limit, per_page = req.per_page,
                                    "RingCentral sent more than {limit} bytes for one page; not reading it. Asking again with smaller pages");
                                return Err(RcError::TooLarge {
                                    limit,
                                    per_page: req.per_page,
                                });
                            }
                            let d = format!("the response was larger than {limit} bytes");
                            self.give_up_or_wait(&mut backoff, &d).await?;
                            continue;
                        }
                        Err(e) => {
                            let d = format!("reading the response failed: {}", e.without_url());
                            self.give_up_or_wait(&mut backoff, &d).await?;
                            continue;
                        }
                    };
                    match self.classify(&body, status, &bytes, observed, &mut refreshed)? {
                        Next::Done => match serde_json::from_slice::<T>(&bytes) {
                            Ok(parsed) => return Ok(parsed),
                            Err(e) => {
                                Stats::add(&self.acct.rc_malformed, 1);
                                self.malformed(&body, &bytes, &e)
                            }
                        },
                        Next::Again => continue,
                        Next::RateLimited => {
                            // The service waits out penalties forever; a command with an
                            // attempt limit (once, check) must end.
                            limited += 1;
                            if self.max_attempts.is_some_and(|n| limited >= n) {
                                return Err(RcError::Unavailable {
                                    attempts: limited,
                                    detail: "rate limited by RingCentral (429) on every attempt: another client may be using this app's quota".into(),
                                });
                            }
                            continue;
                        }
                        Next::Transient(d) => d,
                    }
                }
            };
            self.give_up_or_wait(&mut backoff, &failure).await?;
        }
    }

    fn classify(
        &mut self,
        body: &Body<'_>,
        status: StatusCode,
        bytes: &[u8],
        observed: Observed,
        refreshed: &mut bool,
    ) -> Result<Next, RcError> {
        if status == StatusCode::OK {
            return Ok(Next::Done);
        }
        let err = ApiError::parse(bytes);
        if status == StatusCode::TOO_MANY_REQUESTS {
            Stats::add(&self.stats.rc_rate_limited, 1);
            if let Observed::Penalty(d) = observed {
                self.degraded(format!(
                    "rate limited by RingCentral (429 {}): sending nothing for {:.0}s; poll less often if this repeats",
                    err.code().unwrap_or("-"),
                    d.as_secs_f64()
                ));
                warn!(account = %self.name, code = err.code().unwrap_or("-"), penalty_s = d.as_secs_f64(),
                    "RingCentral rate limit exceeded: sending nothing to this account until the penalty is over; poll less often if this repeats");
            }
            return Ok(Next::RateLimited);
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Ok(Next::Transient(format!(
                "HTTP {status}: {}",
                err.describe()
            )));
        }
        match body {
            Body::Token => Err(RcError::Credentials {
                detail: format!("HTTP {}, {}", status.as_u16(), err.describe()),
                fix: explain_token_error(err.code(), err.error.as_deref()),
            }),
            Body::Search(_) if status == StatusCode::UNAUTHORIZED && !*refreshed => {
                debug!(account = %self.name, code = err.code().unwrap_or("-"), "access token refused; getting a new one");
                *refreshed = true;
                self.session.lock().token = None;
                Ok(Next::Again)
            }
            Body::Search(_) if status == StatusCode::UNAUTHORIZED => Err(RcError::Credentials {
                detail: format!("a fresh access token was refused: {}", err.describe()),
                fix: "check that the app and JWT belong to the same RingCentral environment (server_url)",
            }),
            Body::Search(_) if status == StatusCode::FORBIDDEN => Err(RcError::Permission {
                detail: err.describe(),
                permission: err.permission().unwrap_or("ReadAuditTrail").to_string(),
            }),
            Body::Search(_) => Err(RcError::Rejected {
                status: status.as_u16(),
                detail: err.describe(),
            }),
        }
    }

    async fn give_up_or_wait(
        &mut self,
        backoff: &mut crate::retry::Backoff,
        detail: &str,
    ) -> Result<(), RcError> {
        let delay = backoff.next_delay(None);
        if self.max_attempts.is_some_and(|n| backoff.attempts() >= n) {
            return Err(RcError::Unavailable {
                attempts: backoff.attempts(),
                detail: detail.to_string(),
            });
        }
        self.degraded(format!(
            "RingCentral request failed, retrying (attempt {}): {detail}",
            backoff.attempts()
        ));
        warn!(account = %self.name, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64,
            "RingCentral request failed, retrying (if this persists, check server_url and the network path to RingCentral): {detail}");
        crate::watchdog::waiting(delay);
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// What was wrong with a 200 that did not parse, for the log: the parser's complaint, any
    /// error RingCentral put in the body, and (searches only: token answers hold secrets) the
    /// start of the body.
    fn malformed(&self, body: &Body<'_>, bytes: &[u8], e: &serde_json::Error) -> String {
        let mut d = format!("HTTP 200 that is not a usable answer ({e})");
        let err = ApiError::parse(bytes);
        if err.code().is_some() || err.message.is_some() {
            d.push_str(&format!("; RingCentral said: {}", err.describe()));
        }
        if let Body::Search(_) = body {
            let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            d.push_str(&format!("; body starts {start:?}"));
        }
        d
    }

    /// Time until the account's next request of `group` may go out (for `check` and tests).
    pub fn rate_limit_delay(&mut self, group: Group) -> Duration {
        self.session.lock().limiter.delay(group)
    }
}

enum Next {
    Done,
    Again,
    /// 429: the limiter holds the next request back until the penalty is over.
    RateLimited,
    Transient(String),
}
