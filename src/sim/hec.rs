//! A Splunk HTTP Event Collector simulator: the event and health endpoints with HEC's auth,
//! validation and error codes, real HTTP on loopback, and faults on demand.
//!
//! What it mimics (facts from `reference/splunk-hec.md`):
//! - `POST /services/collector/event` (also `/services/collector` and
//!   `/services/collector/event/1.0`): `Authorization: Splunk <token>` (codes 2, 3, 4), optional
//!   `Content-Encoding: gzip`, a body of concatenated JSON events (whitespace allowed).
//! - Each event is checked in order; at the first bad event k the answer is a 400 naming
//!   `invalid-event-number: k`, and **events 0..k-1 are indexed anyway**, as real Splunk does.
//!   Events after k are not.
//! - `GET /services/collector/health`: code 17, or 503 code 18 when busy; with an
//!   `Authorization` header the token is checked too (so a client can verify its token).
//! - `X-Splunk-Request-Channel`, when sent, must be a UUID (code 11).
//!
//! Decisions where the reference is silent:
//! - Indexer acknowledgement ([`HecSimConfig::ack`]): every event request then needs a channel
//!   (code 10 without one), a success carries an `ackId` (counted per channel from 0), and
//!   `POST /services/collector/ack?channel=<uuid>` with `{"acks":[ids]}` answers
//!   `{"acks":{"<id>":bool}}`. An id reads `true` once, then is forgotten (Splunk's read-once
//!   semantics); faults delay acks or lose them. Without ack on the token, the ack endpoint
//!   answers 400 code 14 "ACK is disabled" (after the auth checks), as real Splunk does.
//! - Health also reports 503 code 18 under `queue_full_429`.
//! - Order of checks for an event request: `scripted`, auth, channel, `busy`, `server_error`,
//!   `queue_full_429`, gzip, empty body, then the events one by one.
//! - Any other path or method: 404 `{"text":"The requested URL was not found on this server.","code":404}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use crate::sim::server::{DownableServer, format_secs};

/// Paths that accept events, as Splunk does.
const EVENT_PATHS: &[&str] = &[
    "/services/collector/event",
    "/services/collector",
    "/services/collector/event/1.0",
];

/// How the HEC simulator is set up.
#[derive(Debug, Clone)]
pub struct HecSimConfig {
    /// The HEC token clients must send (`Authorization: Splunk <token>`); see
    /// [`HecSim::set_token`] for rotation.
    pub token: String,
    /// Indexes the token may write to; `None` allows any index (code 7 otherwise).
    pub allowed_indexes: Option<Vec<String>>,
    /// A file that receives every accepted event as one JSON line (appended, flushed per
    /// request), so the demo can point users at what "Splunk" received.
    pub output: Option<PathBuf>,
    /// The token has indexer acknowledgement on.
    pub ack: bool,
    /// Benchmark mode: check the token, gunzip, count the events and answer success; no
    /// per-event validation, nothing stored, no faults, no log (with `ack`, every id reads true
    /// at the first query). It measures what a receiver
    /// costs at the least, so the forwarder's throughput can be compared with it. Never use it
    /// to test behaviour: that is what the strict (default) mode is for.
    pub fast: bool,
    /// Benchmark mode only: how long each request of events takes before its answer, as a
    /// receiver that parses and indexes would (requests still overlap as the client sends them).
    pub fast_latency: Option<std::time::Duration>,
    /// Serve HTTPS with this certificate (the URL then starts with `https://`).
    pub tls: Option<crate::sim::tls::SimTls>,
}

impl HecSimConfig {
    /// A simulator for `token` that accepts any index and writes no file.
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
            allowed_indexes: None,
            output: None,
            ack: false,
            fast: false,
            fast_latency: None,
            tls: None,
        }
    }
}

/// Misbehaviour on demand; change it with [`HecSim::update_faults`].
#[derive(Debug, Clone, Default)]
pub struct HecFaults {
    /// Every event request answers 503 code 9 "Server is busy"; health answers 503 code 18.
    pub busy: bool,
    /// With `busy`: send this `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Every event request answers 500 code 8 "Internal server error".
    pub server_error: bool,
    /// Every event request answers 429 code 26 (queue at capacity).
    pub queue_full_429: bool,
    /// The next event requests' answers, `(http status, hec code)`, one per request, before any
    /// other check. A non-200 entry is answered as is and indexes nothing; a 200 entry lets the
    /// request be processed normally and, if it succeeds, answers with that code (e.g. 24,
    /// "approaching capacity"), so failures can be interleaved with successes.
    pub scripted: VecDeque<(u16, u16)>,
    /// Events whose `event.id` is listed fail with 400 code 6 and `invalid-event-number`, in the
    /// same pass as the other per-event checks (earlier events of the request are indexed).
    pub reject_event_ids: HashSet<String>,
    /// Delay before answering, after indexing: a client that times out has in fact been
    /// accepted (the duplicate-on-timeout case).
    pub slow: Duration,
    /// With ack on: an `ackId` reads `true` only this long after its request was indexed.
    pub ack_delay: Duration,
    /// With ack on: new `ackId`s never read `true` (the events were indexed, the ack was lost).
    pub lose_acks: bool,
    /// A successful event request (indexed as usual) is answered 200 with exactly this body
    /// instead of HEC's JSON: an empty body, a proxy's HTML, truncated JSON, odd field types
    /// (`{"text":0,"code":0}`), a string `ackId` (`{ack}` in it is replaced by the real id).
    pub success_body: Option<String>,
    /// Like `slow`, but for event requests only: `/health` answers at once (an overloaded
    /// indexer behind a healthy front end).
    pub slow_events: Duration,
}

/// One request the simulator received.
#[derive(Debug, Clone)]
pub struct HecRequest {
    /// When it arrived.
    pub at: Instant,
    /// The request path.
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The HEC `code` answered.
    pub code: u16,
    /// JSON values found in the (decompressed) body, up to the first that does not parse.
    pub events_in_body: usize,
    /// How many of them were indexed (all on success, 0..k on a failure at event k).
    pub indexed: usize,
    /// Whether the body was sent with `Content-Encoding: gzip`.
    pub gzip: bool,
    /// Bytes of body as sent (compressed if gzip), to check batch size limits.
    pub body_bytes: usize,
    /// The `X-Splunk-Request-Channel` header, if sent.
    pub channel: Option<String>,
}

/// A running HEC simulator on `127.0.0.1`. Dropping it stops the server.
pub struct HecSim {
    /// The HTTP server, which can go down and up on the same port.
    server: DownableServer,
    /// State shared with the handlers.
    shared: Arc<Shared>,
}

impl HecSim {
    /// Starts the simulator on a free loopback port (and creates or opens `output`).
    pub async fn start(config: HecSimConfig) -> std::io::Result<HecSim> {
        let output = match &config.output {
            Some(path) => Some(BufWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            allowed_indexes: config.allowed_indexes,
            fast: config.fast,
            fast_latency: config.fast_latency,
            fast_token: format!("Splunk {}", config.token),
            accepted: std::sync::atomic::AtomicUsize::new(0),
            ack: std::sync::atomic::AtomicBool::new(config.ack),
            state: Mutex::new(HecState {
                token: config.token,
                faults: HecFaults::default(),
                events: Vec::new(),
                requests: Vec::new(),
                output,
                channels: HashMap::new(),
            }),
        });
        let mut router = Router::new()
            .route("/services/collector/health", any(health))
            .route("/services/collector/health/1.0", any(health))
            .route("/services/collector/ack", any(ack));
        for path in EVENT_PATHS {
            router = router.route(path, any(event));
        }
        let router = router.fallback(not_found).with_state(Arc::clone(&shared));
        let tls = config.tls.as_ref().map(|t| t.acceptor()).transpose()?;
        let server = DownableServer::start_with_tls(router, tls).await?;
        tracing::debug!(url = %server.url(), "HEC simulator started");
        Ok(HecSim { server, shared })
    }

    /// The base URL (`http://127.0.0.1:PORT`), the forwarder's `hec.urls` entry.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops listening (connections refused, open ones closed) or starts again, same port.
    pub async fn set_down(&self, down: bool) {
        self.server.set_down(down).await;
    }

    /// Rotates the token: from now on only `token` is valid; the old one gets 403 code 4.
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// Switches indexer acknowledgement on the token on or off (ids already pending are kept).
    pub fn set_ack(&self, on: bool) {
        self.shared
            .ack
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes the faults; they apply to the next request.
    pub fn update_faults(&self, f: impl FnOnce(&mut HecFaults)) {
        f(&mut self.shared.lock().faults);
    }

    /// Every event accepted (the whole envelope), in the order they were indexed.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// How many events were accepted.
    pub fn accepted(&self) -> usize {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<HecRequest> {
        self.shared.lock().requests.clone()
    }
}

/// State shared by the handle and the handlers.
struct Shared {
    /// Fixed: indexes the token may use.
    allowed_indexes: Option<Vec<String>>,
    /// Fixed: benchmark mode ([`HecSimConfig::fast`]).
    fast: bool,
    /// Fixed: [`HecSimConfig::fast_latency`].
    fast_latency: Option<std::time::Duration>,
    /// The token, for the fast path (which takes no lock).
    fast_token: String,
    /// Events accepted so far (both modes).
    accepted: std::sync::atomic::AtomicUsize,
    /// The token has indexer acknowledgement (an operator may switch it off: [`HecSim::set_ack`]).
    ack: std::sync::atomic::AtomicBool,
    /// Everything that changes.
    state: Mutex<HecState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HecState> {
        self.state.lock().expect("HEC simulator state poisoned")
    }
}

/// The mutable part of the simulator.
struct HecState {
    token: String,
    faults: HecFaults,
    events: Vec<Value>,
    requests: Vec<HecRequest>,
    output: Option<BufWriter<File>>,
    /// Per channel: the next ack id and the ids not yet read true (with when they turn true;
    /// `None` = lost, never true).
    channels: HashMap<String, AckChannel>,
}

/// One data channel's acknowledgements.
#[derive(Default)]
struct AckChannel {
    next_id: u64,
    pending: HashMap<u64, Option<Instant>>,
}

/// A HEC answer: status, code, text and optionally the failing event's number.
struct Answer {
    status: StatusCode,
    code: u16,
    invalid_event: Option<usize>,
    retry_after: Option<Duration>,
    ack_id: Option<u64>,
    /// Sent as the body instead of HEC's JSON ([`HecFaults::success_body`]).
    raw_body: Option<String>,
}

impl Answer {
    fn new(status: u16, code: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            invalid_event: None,
            retry_after: None,
            ack_id: None,
            raw_body: None,
        }
    }

    fn at_event(mut self, k: usize) -> Self {
        self.invalid_event = Some(k);
        self
    }

    fn into_response(self) -> Response {
        let mut body = json!({ "text": text_of(self.code), "code": self.code });
        if let (Some(k), Some(fields)) = (self.invalid_event, body.as_object_mut()) {
            fields.insert("invalid-event-number".into(), json!(k));
        }
        if let (Some(id), Some(fields)) = (self.ack_id, body.as_object_mut()) {
            fields.insert("ackId".into(), json!(id));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        if let Some(after) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&format_secs(after))
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if let Some(raw) = self.raw_body {
            let id = self.ack_id.map(|i| i.to_string()).unwrap_or_default();
            return (self.status, headers, raw.replace("{ack}", &id)).into_response();
        }
        (self.status, headers, body.to_string()).into_response()
    }
}

/// HEC's text for a code (clients must branch on the code, never the text).
fn text_of(code: u16) -> &'static str {
    match code {
        0 => "Success",
        1 => "Token disabled",
        2 => "Token is required",
        3 => "Invalid authorization",
        4 => "Invalid token",
        5 => "No data",
        6 => "Invalid data format",
        7 => "Incorrect index",
        8 => "Internal server error",
        9 => "Server is busy",
        10 => "Data channel is missing",
        11 => "Invalid data channel",
        12 => "Event field is required",
        13 => "Event field cannot be blank",
        14 => "ACK is disabled",
        15 => "Error in handling indexed fields",
        16 => "Query string authorization is not enabled",
        17 => "HEC is healthy",
        18 => "HEC is unhealthy, queues are full",
        19 => "HEC is unhealthy, ack service unavailable",
        20 => "HEC is unhealthy, queues are full, ack service unavailable",
        23 => "Server is shutting down",
        24 => "Queue size is approaching capacity",
        25 => "Ack channel is approaching capacity",
        26 => "Queue at capacity",
        27 => "Ack channel at capacity",
        404 => "The requested URL was not found on this server.",
        _ => "Unknown error",
    }
}

/// Checks `Authorization: Splunk <token>` (codes 2, 3, 4).
fn check_auth(headers: &HeaderMap, token: &str) -> Result<(), Answer> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Answer::new(401, 2));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, rest)| scheme.eq_ignore_ascii_case("splunk") && !rest.trim().is_empty())
        .map(|(_, rest)| rest.trim());
    match presented {
        None => Err(Answer::new(401, 3)),
        Some(t) if t != token => Err(Answer::new(403, 4)),
        Some(_) => Ok(()),
    }
}

/// The channel header, and code 11 if it is not a UUID.
fn channel_of(headers: &HeaderMap) -> (Option<String>, Result<(), Answer>) {
    match headers.get("x-splunk-request-channel") {
        None => (None, Ok(())),
        Some(value) => {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let valid = uuid::Uuid::parse_str(&text).is_ok();
            (
                Some(text),
                if valid {
                    Ok(())
                } else {
                    Err(Answer::new(400, 11))
                },
            )
        }
    }
}

/// What one request did, for the log.
struct Record {
    at: Instant,
    path: String,
    gzip: bool,
    body_bytes: usize,
    channel: Option<String>,
    events_in_body: usize,
    indexed: usize,
}

impl Record {
    fn new(uri: &Uri, headers: &HeaderMap, body_bytes: usize) -> Self {
        let gzip = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        Self {
            at: Instant::now(),
            path: uri.path().to_owned(),
            gzip,
            body_bytes,
            channel: None,
            events_in_body: 0,
            indexed: 0,
        }
    }

    fn log(self, state: &mut HecState, answer: &Answer) {
        tracing::debug!(
            path = %self.path,
            status = answer.status.as_u16(),
            code = answer.code,
            indexed = self.indexed,
            "HEC simulator answered"
        );
        state.requests.push(HecRequest {
            at: self.at,
            path: self.path,
            status: answer.status.as_u16(),
            code: answer.code,
            events_in_body: self.events_in_body,
            indexed: self.indexed,
            gzip: self.gzip,
            body_bytes: self.body_bytes,
            channel: self.channel,
        });
    }
}

/// The event endpoints.
async fn event(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.fast {
        if let Some(latency) = shared.fast_latency {
            tokio::time::sleep(latency).await;
        }
        return fast_events(&shared, &headers, &body);
    }
    let mut record = Record::new(&uri, &headers, body.len());
    let (answer, slow) = {
        let mut state = shared.lock();
        let answer = if method == Method::POST {
            handle_events(&shared, &mut state, &mut record, &headers, &body)
        } else {
            Answer::new(404, 404)
        };
        let slow = state.faults.slow + state.faults.slow_events;
        record.log(&mut state, &answer);
        (answer, slow)
    };
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    answer.into_response()
}

/// The benchmark fast path: token, gunzip, count.
fn fast_events(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    if headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())
        != Some(shared.fast_token.as_bytes())
    {
        return Answer::new(403, 4).into_response();
    }
    let decoded;
    let data: &[u8] = if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip")
    {
        let mut out = Vec::with_capacity(body.len() * 8);
        if flate2::read::MultiGzDecoder::new(body)
            .read_to_end(&mut out)
            .is_err()
        {
            return Answer::new(400, 6).into_response();
        }
        decoded = out;
        &decoded
    } else {
        body
    };
    let mut n = 0;
    for item in serde_json::Deserializer::from_slice(data).into_iter::<serde::de::IgnoredAny>() {
        if item.is_err() {
            return Answer::new(400, 6).at_event(n).into_response();
        }
        n += 1;
    }
    shared
        .accepted
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    let mut answer = Answer::new(200, 0);
    if shared.ack.load(std::sync::atomic::Ordering::Relaxed) {
        // Acknowledged at once: the ack-mode benchmark measures the forwarder's polling.
        let Some(channel) = channel_of(headers).0 else {
            return Answer::new(400, 10).into_response();
        };
        let mut state = shared.lock();
        let ch = state.channels.entry(channel).or_default();
        let id = ch.next_id;
        ch.next_id += 1;
        ch.pending.insert(id, Some(Instant::now()));
        answer.ack_id = Some(id);
    }
    answer.into_response()
}

/// Auth, faults, decoding and per-event indexing for one event request.
fn handle_events(
    shared: &Shared,
    state: &mut HecState,
    record: &mut Record,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let (channel, channel_ok) = channel_of(headers);
    record.channel = channel;
    let mut success_code = 0;
    if let Some((status, code)) = state.faults.scripted.pop_front() {
        if status != 200 {
            return Answer::new(status, code);
        }
        success_code = code;
    }
    if let Err(answer) = check_auth(headers, &state.token).and(channel_ok) {
        return answer;
    }
    if shared.ack.load(std::sync::atomic::Ordering::SeqCst) && record.channel.is_none() {
        return Answer::new(400, 10);
    }
    if state.faults.busy {
        let mut answer = Answer::new(503, 9);
        answer.retry_after = state.faults.retry_after;
        return answer;
    }
    if state.faults.server_error {
        return Answer::new(500, 8);
    }
    if state.faults.queue_full_429 {
        return Answer::new(429, 26);
    }

    let decoded;
    let data: &[u8] = if record.gzip {
        let mut out = Vec::new();
        match flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out) {
            Ok(_) => {
                decoded = out;
                &decoded
            }
            Err(_) => return Answer::new(400, 6),
        }
    } else {
        body
    };

    let mut events = Vec::new();
    let mut parse_failed = false;
    for item in serde_json::Deserializer::from_slice(data).into_iter::<Value>() {
        match item {
            Ok(v) => events.push(v),
            Err(_) => {
                parse_failed = true;
                break;
            }
        }
    }
    record.events_in_body = events.len();
    if events.is_empty() && !parse_failed {
        return Answer::new(400, 5);
    }

    let mut failure = None;
    let mut accepted = Vec::with_capacity(events.len());
    for (k, envelope) in events.into_iter().enumerate() {
        if let Err(code) = validate(shared, &state.faults, &envelope) {
            failure = Some(Answer::new(400, code).at_event(k));
            break;
        }
        accepted.push(envelope);
    }
    let failure =
        failure.or_else(|| parse_failed.then(|| Answer::new(400, 6).at_event(accepted.len())));
    record.indexed = accepted.len();
    count_accepted(shared, accepted.len());
    index(state, accepted);
    failure.unwrap_or_else(|| {
        let mut answer = Answer::new(200, success_code);
        if shared.ack.load(std::sync::atomic::Ordering::SeqCst)
            && let Some(channel) = record.channel.clone()
        {
            let ready = (!state.faults.lose_acks).then(|| Instant::now() + state.faults.ack_delay);
            let ch = state.channels.entry(channel).or_default();
            let id = ch.next_id;
            ch.next_id += 1;
            ch.pending.insert(id, ready);
            answer.ack_id = Some(id);
        }
        answer.raw_body = state.faults.success_body.clone();
        answer
    })
}

/// Checks one event envelope; `Err(code)` names the HEC code it fails with.
fn validate(shared: &Shared, faults: &HecFaults, envelope: &Value) -> Result<(), u16> {
    let Value::Object(fields) = envelope else {
        return Err(6);
    };
    let event = fields.get("event").ok_or(12u16)?;
    if event.is_null() || event.as_str() == Some("") {
        return Err(13);
    }
    if event
        .get("id")
        .and_then(Value::as_str)
        .is_some_and(|id| faults.reject_event_ids.contains(id))
    {
        return Err(6);
    }
    match fields.get("time") {
        None | Some(Value::Number(_)) => {}
        Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {}
        Some(_) => return Err(6),
    }
    if let Some(indexed) = fields.get("fields") {
        let flat = indexed.as_object().is_some_and(|map| {
            map.values().all(|v| match v {
                Value::String(_) => true,
                Value::Array(items) => items.iter().all(Value::is_string),
                _ => false,
            })
        });
        if !flat {
            return Err(15);
        }
    }
    if let Some(index) = fields.get("index") {
        let allowed = match (index.as_str(), &shared.allowed_indexes) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(name), Some(list)) => list.iter().any(|a| a == name),
        };
        if !allowed {
            return Err(7);
        }
    }
    Ok(())
}

/// Records accepted events and appends them to the output file.
fn index(state: &mut HecState, accepted: Vec<Value>) {
    if accepted.is_empty() {
        return;
    }
    if let Some(out) = state.output.as_mut() {
        let written = accepted
            .iter()
            .try_for_each(|e| writeln!(out, "{e}"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, "HEC simulator could not write its output file");
        }
    }
    state.events.extend(accepted);
}

/// Counts what [`index`] is about to record.
fn count_accepted(shared: &Shared, n: usize) {
    shared
        .accepted
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// `GET /services/collector/health`.
async fn health(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut record = Record::new(&uri, &headers, 0);
    let (answer, slow) = {
        let mut state = shared.lock();
        let (channel, _) = channel_of(&headers);
        record.channel = channel;
        let answer = if method != Method::GET {
            Answer::new(404, 404)
        } else if let Some(Err(answer)) = headers
            .contains_key(header::AUTHORIZATION)
            .then(|| check_auth(&headers, &state.token))
        {
            answer
        } else if state.faults.busy || state.faults.queue_full_429 {
            Answer::new(503, 18)
        } else {
            Answer::new(200, 17)
        };
        let slow = state.faults.slow;
        record.log(&mut state, &answer);
        (answer, slow)
    };
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    answer.into_response()
}

/// `POST /services/collector/ack`: the simulated token has no indexer acknowledgement.
async fn ack(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut record = Record::new(&uri, &headers, body.len());
    let mut state = shared.lock();
    let (channel, channel_ok) = channel_of(&headers);
    record.channel = channel;
    let answer = if method != Method::POST {
        Answer::new(404, 404)
    } else {
        match check_auth(&headers, &state.token).and(channel_ok) {
            Err(answer) => answer,
            Ok(()) if !shared.ack.load(std::sync::atomic::Ordering::SeqCst) => Answer::new(400, 14),
            Ok(()) => match (
                query_channel(&uri).or(record.channel.clone()),
                serde_json::from_slice::<Value>(&body),
            ) {
                (None, _) => Answer::new(400, 10),
                (Some(_), Err(_)) => Answer::new(400, 6),
                (Some(channel), Ok(req)) => {
                    let ids: Vec<u64> = req["acks"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default();
                    let now = Instant::now();
                    let ch = state.channels.entry(channel).or_default();
                    let mut acks = serde_json::Map::new();
                    for id in ids {
                        let ready = matches!(ch.pending.get(&id), Some(Some(at)) if *at <= now);
                        if ready {
                            ch.pending.remove(&id);
                        }
                        acks.insert(id.to_string(), json!(ready));
                    }
                    record.log(&mut state, &Answer::new(200, 0));
                    return (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        json!({ "acks": acks }).to_string(),
                    )
                        .into_response();
                }
            },
        }
    };
    record.log(&mut state, &answer);
    answer.into_response()
}

/// The `channel` query parameter of an ack request.
fn query_channel(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("channel="))
        .map(str::to_owned)
}

/// Anything else.
async fn not_found(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let record = Record::new(&uri, &headers, 0);
    let answer = Answer::new(404, 404);
    record.log(&mut shared.lock(), &answer);
    answer.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use reqwest::Client;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const TOKEN: &str = "11111111-2222-3333-4444-555555555555";

    fn envelope(id: &str) -> Value {
        json!({
            "time": 1_722_941_419.442,
            "host": "rc-audit-hec",
            "source": "ringcentral:audit-trail:Acme Corp",
            "sourcetype": "ringcentral:audit",
            "event": { "id": id, "actionId": "LOGIN_SUCCESSFULLY" },
            "fields": { "rc_account": "Acme Corp", "rc_action_id": "LOGIN_SUCCESSFULLY" },
        })
    }

    fn batch(events: &[Value]) -> String {
        events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn post(
        sim: &HecSim,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let response = Client::new()
            .post(format!("{}/services/collector/event", sim.url()))
            .header("Authorization", format!("Splunk {TOKEN}"))
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    fn ids(sim: &HecSim) -> Vec<String> {
        sim.events()
            .iter()
            .filter_map(|e| e["event"]["id"].as_str().map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn auth_codes_2_3_4_and_token_rotation() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        let client = Client::new();
        let url = format!("{}/services/collector/event", sim.url());
        let body = envelope("a").to_string();
        let send = |auth: Option<String>| {
            let mut request = client.post(&url).body(body.clone());
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            async move {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let json: Value = response.json().await?;
                Ok::<_, reqwest::Error>((status, json["code"].as_u64().unwrap_or(999)))
            }
        };
        assert_eq!(send(None).await?, (401, 2));
        assert_eq!(send(Some(format!("Bearer {TOKEN}"))).await?, (401, 3));
        assert_eq!(send(Some("Splunk".to_owned())).await?, (401, 3));
        assert_eq!(send(Some("Splunk wrong".to_owned())).await?, (403, 4));
        assert_eq!(send(Some(format!("Splunk {TOKEN}"))).await?, (200, 0));
        sim.set_token("rotated");
        assert_eq!(send(Some(format!("Splunk {TOKEN}"))).await?, (403, 4));
        assert_eq!(send(Some("Splunk rotated".to_owned())).await?, (200, 0));
        assert_eq!(sim.accepted(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn gzip_batches_of_concatenated_events_are_indexed_in_order() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        let events = [envelope("a"), envelope("b"), envelope("c")];
        // Concatenated with and without whitespace between events.
        let body = format!("{}{}\n  {}", events[0], events[1], events[2]);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(body.as_bytes())?;
        let compressed = gz.finish()?;
        let channel = uuid::Uuid::new_v4().to_string();
        let response = Client::new()
            .post(format!("{}/services/collector/event", sim.url()))
            .header("Authorization", format!("Splunk {TOKEN}"))
            .header("Content-Encoding", "gzip")
            .header("X-Splunk-Request-Channel", &channel)
            .body(compressed.clone())
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.json::<Value>().await?,
            json!({ "text": "Success", "code": 0 })
        );
        assert_eq!(sim.events(), events);

        let log = sim.requests();
        assert_eq!(log.len(), 1);
        assert!(log[0].gzip);
        assert_eq!(log[0].events_in_body, 3);
        assert_eq!(log[0].indexed, 3);
        assert_eq!(log[0].body_bytes, compressed.len());
        assert_eq!(log[0].channel.as_deref(), Some(channel.as_str()));

        // The other event paths work too.
        for path in ["/services/collector", "/services/collector/event/1.0"] {
            let status = Client::new()
                .post(format!("{}{path}", sim.url()))
                .header("Authorization", format!("Splunk {TOKEN}"))
                .body(envelope("d").to_string())
                .send()
                .await?
                .status();
            assert_eq!(status, 200, "{path}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn bad_gzip_empty_body_and_bad_channel_are_rejected() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        let client = Client::new();
        let url = format!("{}/services/collector/event", sim.url());
        let bad_gzip = client
            .post(&url)
            .header("Authorization", format!("Splunk {TOKEN}"))
            .header("Content-Encoding", "gzip")
            .body("not gzip")
            .send()
            .await?;
        assert_eq!(bad_gzip.status(), 400);
        assert_eq!(bad_gzip.json::<Value>().await?["code"], 6);

        assert_eq!(
            post(&sim, "").await?,
            (400, json!({ "text": "No data", "code": 5 }))
        );
        assert_eq!(post(&sim, " \n ").await?.1["code"], 5);

        let bad_channel = client
            .post(&url)
            .header("Authorization", format!("Splunk {TOKEN}"))
            .header("X-Splunk-Request-Channel", "not-a-uuid")
            .body(envelope("a").to_string())
            .send()
            .await?;
        assert_eq!(bad_channel.status(), 400);
        assert_eq!(bad_channel.json::<Value>().await?["code"], 11);
        assert_eq!(sim.accepted(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_event_k_fails_the_request_but_events_before_k_are_indexed() -> TestResult {
        let sim = HecSim::start(HecSimConfig {
            allowed_indexes: Some(vec!["main".to_owned(), "security".to_owned()]),
            ..HecSimConfig::new(TOKEN)
        })
        .await?;
        let mut no_event = envelope("x");
        no_event.as_object_mut().ok_or("object")?.remove("event");
        let mut blank = envelope("x");
        blank["event"] = json!("");
        let mut null = envelope("x");
        null["event"] = Value::Null;
        let mut nested = envelope("x");
        nested["fields"] = json!({ "rc": { "nested": "no" } });
        let mut numeric_field = envelope("x");
        numeric_field["fields"] = json!({ "count": 3 });
        let mut bad_index = envelope("x");
        bad_index["index"] = json!("finance");
        let mut bad_time = envelope("x");
        bad_time["time"] = json!("yesterday");

        let cases = [
            (no_event, 12, "Event field is required"),
            (blank, 13, "Event field cannot be blank"),
            (null, 13, "Event field cannot be blank"),
            (nested, 15, "Error in handling indexed fields"),
            (numeric_field, 15, "Error in handling indexed fields"),
            (bad_index, 7, "Incorrect index"),
            (bad_time, 6, "Invalid data format"),
            (json!([1, 2]), 6, "Invalid data format"),
        ];
        let mut expected_ids = Vec::new();
        for (n, (bad, code, text)) in cases.into_iter().enumerate() {
            let good = [envelope(&format!("{n}-0")), envelope(&format!("{n}-1"))];
            let body = batch(&[good[0].clone(), good[1].clone(), bad, envelope("after")]);
            let (status, answer) = post(&sim, body).await?;
            assert_eq!(status, 400, "case {n}");
            assert_eq!(
                answer,
                json!({ "text": text, "code": code, "invalid-event-number": 2 }),
                "case {n}"
            );
            expected_ids.extend([format!("{n}-0"), format!("{n}-1")]);
        }
        assert_eq!(ids(&sim), expected_ids, "0..k-1 indexed, nothing after k");

        // A parse error at event 1: event 0 is indexed.
        let (status, answer) = post(&sim, format!("{}{{\"event\": oops}}", envelope("p"))).await?;
        assert_eq!(status, 400);
        assert_eq!(answer["code"], 6);
        assert_eq!(answer["invalid-event-number"], 1);
        assert_eq!(ids(&sim).last().map(String::as_str), Some("p"));

        // Allowed index, numeric-string time and array fields are fine.
        let mut fine = envelope("fine");
        fine["index"] = json!("security");
        fine["time"] = json!("1722941419.442");
        fine["fields"] = json!({ "tags": ["a", "b"], "rc_account": "Acme Corp" });
        assert_eq!(post(&sim, fine.to_string()).await?.0, 200);

        let log = sim.requests();
        assert_eq!((log[0].events_in_body, log[0].indexed), (4, 2));
        Ok(())
    }

    #[tokio::test]
    async fn rejected_event_ids_fail_at_their_position() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        sim.update_faults(|f| {
            f.reject_event_ids.insert("poison".to_owned());
        });
        let body = batch(&[envelope("a"), envelope("poison"), envelope("b")]);
        let (status, answer) = post(&sim, body).await?;
        assert_eq!(
            (status, &answer["code"], &answer["invalid-event-number"]),
            (400, &json!(6), &json!(1))
        );
        assert_eq!(ids(&sim), ["a"]);
        Ok(())
    }

    #[tokio::test]
    async fn faults_busy_error_queue_full_and_scripted_answers() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        let body = envelope("a").to_string();

        sim.update_faults(|f| {
            f.busy = true;
            f.retry_after = Some(Duration::from_millis(300));
        });
        let busy = Client::new()
            .post(format!("{}/services/collector/event", sim.url()))
            .header("Authorization", format!("Splunk {TOKEN}"))
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(busy.status(), 503);
        assert_eq!(
            busy.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("0.3")
        );
        assert_eq!(
            busy.json::<Value>().await?,
            json!({ "text": "Server is busy", "code": 9 })
        );

        sim.update_faults(|f| {
            *f = HecFaults {
                server_error: true,
                ..HecFaults::default()
            }
        });
        assert_eq!(
            post(&sim, body.clone()).await?,
            (500, json!({ "text": "Internal server error", "code": 8 }))
        );
        sim.update_faults(|f| {
            *f = HecFaults {
                queue_full_429: true,
                ..HecFaults::default()
            }
        });
        assert_eq!(post(&sim, body.clone()).await?.0, 429);
        assert_eq!(post(&sim, body.clone()).await?.1["code"], 26);
        assert_eq!(sim.accepted(), 0);

        sim.update_faults(|f| {
            *f = HecFaults::default();
            f.scripted = [(503, 9), (200, 24), (500, 8)].into();
        });
        assert_eq!(post(&sim, body.clone()).await?.0, 503);
        assert_eq!(
            post(&sim, body.clone()).await?,
            (
                200,
                json!({ "text": "Queue size is approaching capacity", "code": 24 })
            )
        );
        assert_eq!(post(&sim, body.clone()).await?.0, 500);
        assert_eq!(post(&sim, body.clone()).await?.0, 200);
        assert_eq!(sim.accepted(), 2, "scripted failures index nothing");
        Ok(())
    }

    #[tokio::test]
    async fn slow_answers_after_indexing() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        sim.update_faults(|f| f.slow = Duration::from_secs(5));
        let result = Client::new()
            .post(format!("{}/services/collector/event", sim.url()))
            .header("Authorization", format!("Splunk {TOKEN}"))
            .timeout(Duration::from_millis(200))
            .body(envelope("a").to_string())
            .send()
            .await;
        assert!(result.is_err(), "client timed out");
        assert_eq!(sim.accepted(), 1, "but the events were indexed");
        Ok(())
    }

    #[tokio::test]
    async fn health_reports_17_18_and_checks_a_token_when_given() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        let client = Client::new();
        let url = format!("{}/services/collector/health", sim.url());
        let check = |auth: Option<&str>| {
            let mut request = client.get(&url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth.to_owned());
            }
            async move {
                let response = request.send().await?;
                let status = response.status().as_u16();
                Ok::<_, reqwest::Error>((status, response.json::<Value>().await?))
            }
        };
        assert_eq!(
            check(None).await?,
            (200, json!({ "text": "HEC is healthy", "code": 17 }))
        );
        assert_eq!(check(Some(&format!("Splunk {TOKEN}"))).await?.0, 200);
        assert_eq!(
            check(Some("Splunk wrong")).await?,
            (403, json!({ "text": "Invalid token", "code": 4 }))
        );
        sim.update_faults(|f| f.busy = true);
        assert_eq!(
            check(None).await?,
            (
                503,
                json!({ "text": "HEC is unhealthy, queues are full", "code": 18 })
            )
        );

        let ack = client
            .post(format!("{}/services/collector/ack", sim.url()))
            .header("Authorization", format!("Splunk {TOKEN}"))
            .body(r#"{"acks":[0]}"#)
            .send()
            .await?;
        assert_eq!(ack.status(), 400);
        assert_eq!(ack.json::<Value>().await?["code"], 14);

        let missing = client
            .get(format!("{}/services/other", sim.url()))
            .send()
            .await?;
        assert_eq!(missing.status(), 404);
        assert_eq!(
            missing.json::<Value>().await?,
            json!({ "text": "The requested URL was not found on this server.", "code": 404 })
        );
        let codes: Vec<u16> = sim.requests().iter().map(|r| r.code).collect();
        assert_eq!(codes, [17, 17, 4, 18, 14, 404]);
        Ok(())
    }

    #[tokio::test]
    async fn accepted_events_are_appended_to_the_output_file_as_json_lines() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hec.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n")?;
        let sim = HecSim::start(HecSimConfig {
            output: Some(path.clone()),
            ..HecSimConfig::new(TOKEN)
        })
        .await?;
        post(&sim, batch(&[envelope("a"), envelope("b")])).await?;
        post(&sim, batch(&[envelope("c"), json!({ "no": "event" })])).await?;
        let lines: Vec<Value> = std::fs::read_to_string(&path)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], json!({ "earlier": true }));
        assert_eq!(lines[1..], [envelope("a"), envelope("b"), envelope("c")]);
        Ok(())
    }

    #[tokio::test]
    async fn down_refuses_connections_and_up_serves_on_the_same_port() -> TestResult {
        let sim = HecSim::start(HecSimConfig::new(TOKEN)).await?;
        let url = sim.url();
        assert_eq!(post(&sim, envelope("a").to_string()).await?.0, 200);
        sim.set_down(true).await;
        assert!(post(&sim, envelope("b").to_string()).await.is_err());
        sim.set_down(false).await;
        assert_eq!(sim.url(), url);
        assert_eq!(post(&sim, envelope("c").to_string()).await?.0, 200);
        assert_eq!(ids(&sim), ["a", "c"]);
        Ok(())
    }

    #[tokio::test]
    async fn fast_mode_counts_gzipped_events_and_still_checks_the_token() -> TestResult {
        let mut cfg = HecSimConfig::new("tok");
        cfg.fast = true;
        let sim = HecSim::start(cfg).await?;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(b"{\"event\":1}\n{\"event\":2}{\"event\":3}")?;
        let body = gz.finish()?;
        let client = Client::new();
        let url = format!("{}/services/collector/event", sim.url());
        let ok = client
            .post(&url)
            .header("Authorization", "Splunk tok")
            .header("Content-Encoding", "gzip")
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(ok.status(), 200);
        let bad = client
            .post(&url)
            .header("Authorization", "Splunk nope")
            .header("Content-Encoding", "gzip")
            .body(body)
            .send()
            .await?;
        assert_eq!(bad.status(), 403);
        assert_eq!(sim.accepted(), 3);
        assert!(sim.events().is_empty(), "fast mode stores nothing");
        Ok(())
    }
}
