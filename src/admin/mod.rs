//! The admin HTTP endpoint (`admin.listen`, loopback by default).
//!
//! - `GET /metrics`: Prometheus text format ([`metrics`]); O(1) in the
//!   spool's backlog (running counts, see [`crate::spool::Spool::status`]).
//! - `GET /healthz`: JSON, ok / degraded / failing per account, per HEC URL and per stalled
//!   loop, with the reason; answers 503 when anything is failing (a refused credential, a
//!   missing permission, a rejected HEC token, a stalled loop), so a load balancer or monitor
//!   can act on the status code alone.
//! - `GET /livez`: liveness (200 while the process serves), apart from `/healthz` readiness;
//!   names the state directory, which is how shell commands find the service's spool.
//! - `GET /backfill`: the backfills the service still has to do, with what is left of each.
//! - `POST /backfill` (`{"from": RFC 3339, "to": RFC 3339, "accounts": [names]}`, no accounts =
//!   all): hands a backfill to the running service, which polls it between live windows through
//!   each account's own client, so within the same rate limits (this is what
//!   `rc-audit-hec backfill` does while the service runs). The only request that changes
//!   anything, and it is accepted **from this machine only** (the peer must be a loopback
//!   address, and the `Host` header must name this machine, against DNS rebinding), whatever
//!   `admin.listen` binds to, and only as `application/json` (so a web page in a local browser
//!   cannot send it). Its worst effect is extra polling of
//!   RingCentral within the rate limits; the spool's dedup keeps it from duplicating anything.
//!
//! Bounded ([`Limits`]): 64 connections at once (more wait in the kernel's queue), closed after
//! 10 s without a byte, 5 s per request (then 503); so idle sockets cannot take the descriptors
//! delivery needs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::{Listener, ListenerExt};
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub mod metrics;
pub mod wire;

pub use self::metrics::{MetricsInput, render_metrics};
use self::wire::{BackfillJobs, BackfillRequest, ErrorDoc, Livez};
use crate::spool::Spool;
use crate::telemetry::{Health, State, Stats, render_health};
use crate::time::rfc3339_millis;

/// What the endpoint reads and, for `POST /backfill`, writes.
#[derive(Clone)]
pub struct AdminState {
    /// The spool (status for the gauges, backfill jobs).
    pub spool: Spool,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Component health.
    pub health: Arc<Health>,
    /// The configured account names (kept current across reloads), to check backfill requests.
    pub accounts: Arc<RwLock<Vec<String>>>,
    /// The address the endpoint is bound to (a `Host` header may name it).
    pub bound: Option<SocketAddr>,
}

/// Binds the admin address; separate from [`serve`] so the service can fail (or warn) before
/// it tells systemd it is ready.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What the endpoint may hold, so that no client (a scraper that never closes, a port scan, a
/// thousand idle sockets) can take the file descriptors delivery needs: 1,100 idle sockets once
/// exhausted systemd's default soft limit of 1024 and delivery stopped.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's accept queue (they hold
    /// no descriptor of ours) until one closes.
    pub max_connections: usize,
    /// A connection with no bytes in or out for this long is closed (waiting for headers or
    /// idle between keep-alive requests).
    pub idle_timeout: Duration,
    /// A request whose answer takes longer gets 503. Shorter than `idle_timeout`: hyper reads
    /// while a handler runs (to notice the peer leaving), so a handler slower than the idle
    /// timeout would otherwise see its connection cut instead of answering.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown`, within the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, Limits::default()).await
}

/// [`serve`] with explicit limits (tests use short timeouts).
pub async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let request_timeout = limits.request_timeout;
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/backfill", get(list_backfill).post(request_backfill))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                match tokio::time::timeout(request_timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the request took too long (the spool may be busy recovering); try again\n",
                    )
                        .into_response(),
                }
            },
        ))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, max_connections = limits.max_connections,
            "admin endpoint serving /metrics, /healthz, /livez and /backfill");
    }
    let listener = Bounded {
        listener,
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        idle: limits.idle_timeout,
    }
    // `tap_io` makes the peer address available as `ConnectInfo<SocketAddr>`.
    .tap_io(|_| {});
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// A listener that accepts only while fewer than [`Limits::max_connections`] are open.
struct Bounded {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl Listener for Bounded {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed; if it were, serve unbounded rather than stop.
            Err(_) => return std::future::pending().await,
        };
        let (io, addr) = Listener::accept(&mut self.listener).await;
        let guarded = Guarded {
            io,
            idle: self.idle,
            timer: Box::pin(tokio::time::sleep(self.idle)),
            _permit: permit,
        };
        (guarded, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection: holds its permit, and fails its reads and writes once no byte has
/// moved for the idle timeout, which makes hyper close it.
struct Guarded {
    io: tokio::net::TcpStream,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    fn touch(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle;
        self.timer.as_mut().reset(deadline);
    }

    /// Called when the socket is not ready: ready with an error once the idle time is over.
    fn idle_expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "admin connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle_expired(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.touch();
                Poll::Ready(r)
            }
            Poll::Pending => self.idle_expired(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.touch();
                Poll::Ready(r)
            }
            Poll::Pending => self.idle_expired(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

async fn metrics(AxumState(s): AxumState<AdminState>) -> impl axum::response::IntoResponse {
    let (status, jobs) = s
        .spool
        .run(|sp| (sp.status().ok(), sp.backfill_jobs().unwrap_or_default()))
        .await;
    let text = render_metrics(&MetricsInput {
        stats: &s.stats,
        health: &s.health,
        spool: status.as_ref(),
        backfill: &jobs,
        now_ms: crate::time::now_ms(),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn healthz(AxumState(s): AxumState<AdminState>) -> impl axum::response::IntoResponse {
    let (state, doc) = render_health(&s.health);
    let code = if state == State::Failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(doc))
}

/// Liveness, apart from `/healthz` (readiness): 200 whenever the process serves HTTP, even while
/// RingCentral or HEC fail (restarting would not fix those). It names the state directory, so
/// `spool` commands run from a shell without `$STATE_DIRECTORY` find the service's spool.
async fn livez(AxumState(s): AxumState<AdminState>) -> axum::Json<serde_json::Value> {
    let dir = s.spool.path().parent().map(std::path::Path::to_path_buf);
    axum::Json(to_doc(&Livez {
        status: "alive".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        state_dir: dir,
    }))
}

/// Whether a `Host` header names this machine (`localhost`, a loopback address, or the address
/// the endpoint is bound to). A page in a local browser on a DNS-rebound name (evil.example
/// resolving to 127.0.0.1) sends its own name, so it is refused.
fn local_host_header(headers: &axum::http::HeaderMap, bound: Option<SocketAddr>) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || bound.is_some_and(|b| b.ip() == ip))
}

/// The `/backfill` document.
async fn list_backfill(
    AxumState(s): AxumState<AdminState>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    match s.spool.run(|sp| sp.backfill_jobs()).await {
        Ok(jobs) => (
            StatusCode::OK,
            axum::Json(to_doc(&BackfillJobs::from_jobs(&jobs))),
        ),
        Err(e) => error_doc(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error_doc(code: StatusCode, error: String) -> (StatusCode, axum::Json<serde_json::Value>) {
    (code, axum::Json(to_doc(&ErrorDoc { error })))
}

/// A wire document as the JSON the handlers answer with.
fn to_doc(doc: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(doc).unwrap_or_default()
}

async fn request_backfill(
    AxumState(s): AxumState<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    if !peer.ip().is_loopback() {
        return error_doc(
            StatusCode::FORBIDDEN,
            "backfill requests are accepted from this machine only".into(),
        );
    }
    if !local_host_header(&headers, s.bound) {
        return error_doc(
            StatusCode::FORBIDDEN,
            "the Host header must be localhost or a loopback address (send the request to http://127.0.0.1:<port>/backfill)".into(),
        );
    }
    // A web page in a local browser cannot send this content type to another origin without a
    // CORS preflight (which this endpoint never grants), so it cannot trigger a backfill.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return error_doc(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as Content-Type: application/json".into(),
        );
    }
    let req: BackfillRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_doc(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let parse = |arg: &'static str, v: &str| {
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| format!("{arg} {v:?} is not an RFC 3339 time"))
    };
    let range = parse("from", &req.from).and_then(|from| {
        let to = parse("to", &req.to)?;
        crate::backfill::plan_range(from, Some(to), Utc::now(), std::time::Duration::ZERO)
            .map_err(|e| e.to_string())
    });
    let range = match range {
        Ok(r) => r,
        Err(e) => return error_doc(StatusCode::BAD_REQUEST, e),
    };
    let known = s.accounts.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(unknown) = req.accounts.iter().find(|a| !known.contains(a)) {
        return error_doc(
            StatusCode::BAD_REQUEST,
            format!(
                "account {unknown:?} is not in the service's config; configured accounts: {}",
                known.join(", ")
            ),
        );
    }
    let accounts = if req.accounts.is_empty() {
        known
    } else {
        req.accounts
    };
    let (from_ms, to_ms) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let again = req.again;
    let registered = s
        .spool
        .run(move |sp| {
            for a in &accounts {
                if again {
                    sp.backfill_forget(a, from_ms, to_ms)?;
                }
                sp.backfill_request(a, from_ms, to_ms)?;
            }
            sp.backfill_jobs()
        })
        .await;
    match registered {
        Ok(jobs) => {
            info!(from = %rfc3339_millis(range.from), to = %rfc3339_millis(range.to),
                "backfill requested through the admin endpoint");
            (
                StatusCode::ACCEPTED,
                axum::Json(to_doc(&BackfillJobs::from_jobs(&jobs))),
            )
        }
        Err(e) => error_doc(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &std::path::Path) -> AdminState {
        AdminState {
            spool: Spool::open(dir).unwrap(),
            stats: Arc::default(),
            health: Arc::default(),
            accounts: Arc::new(RwLock::new(vec!["acme".into(), "beta".into()])),
            bound: None,
        }
    }

    async fn post_as(
        s: &AdminState,
        peer: &str,
        content_type: &'static str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        post_with_host(s, peer, "127.0.0.1:9464", content_type, body).await
    }

    async fn post_with_host(
        s: &AdminState,
        peer: &str,
        host: &'static str,
        content_type: &'static str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(content_type),
        );
        headers.insert(header::HOST, axum::http::HeaderValue::from_static(host));
        let (code, axum::Json(doc)) = request_backfill(
            AxumState(s.clone()),
            ConnectInfo(peer.parse().unwrap()),
            headers,
            axum::body::Bytes::from(body.to_string()),
        )
        .await;
        (code, doc)
    }

    async fn post(s: &AdminState, peer: &str, body: &str) -> (StatusCode, serde_json::Value) {
        post_as(s, peer, "application/json", body).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_bounded_and_idle_ones_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let limits = Limits {
            max_connections: 8,
            idle_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(serve_with(
            listener,
            state(dir.path()),
            stop.clone(),
            limits,
        ));
        // Sockets the endpoint accepted: established on its port and owning an inode (a
        // connection still in the kernel's accept queue has none). Counted from /proc/net/tcp
        // rather than this process's descriptors, which other tests running beside this one
        // open and close too.
        let accepted = || {
            let port = format!(":{:04X}", addr.port());
            std::fs::read_to_string("/proc/self/net/tcp")
                .unwrap()
                .lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 9 && f[1].ends_with(&port) && f[3] == "01" && f[9] != "0"
                })
                .count()
        };
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // At most 8 accepted (not 40).
        let n = accepted();
        assert!(n <= 8, "{n} connections accepted for 40 idle sockets");
        // Every idle socket is closed by the endpoint (a read sees EOF), 8 at a time.
        for (i, sock) in idle.iter_mut().enumerate() {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(30), sock.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "idle socket {i} still open: {read:?}"
            );
        }
        // And a real request is served once they are gone.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn backfill_requests_are_checked_and_only_local_ones_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let now = Utc::now();
        let body = |accounts: &str| {
            format!(
                r#"{{"from":"{}","to":"{}","accounts":{accounts}}}"#,
                rfc3339_millis(now - chrono::TimeDelta::days(3)),
                rfc3339_millis(now - chrono::TimeDelta::days(1)),
            )
        };
        let (code, doc) = post(&s, "10.1.2.3:5000", &body("[]")).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{doc}");
        // DNS rebinding: a local browser on a name resolving to 127.0.0.1 sends that name.
        for host in ["evil.example:9464", "evil.example", "10.0.0.1:9464"] {
            let (code, doc) =
                post_with_host(&s, "127.0.0.1:5000", host, "application/json", &body("[]")).await;
            assert_eq!(code, StatusCode::FORBIDDEN, "{host}: {doc}");
        }
        for host in ["localhost:9464", "[::1]:9464", "127.0.0.1"] {
            let (code, doc) = post_with_host(
                &s,
                "127.0.0.1:5000",
                host,
                "application/json",
                r#"{"from":"x","to":"y"}"#,
            )
            .await;
            assert_eq!(
                code,
                StatusCode::BAD_REQUEST,
                "{host} passes the Host check: {doc}"
            );
        }
        let (code, doc) = post_as(&s, "127.0.0.1:5000", "text/plain", &body("[]")).await;
        assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{doc}");
        let (code, doc) = post(&s, "127.0.0.1:5000", "{not json").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{doc}");
        let (code, doc) = post(&s, "127.0.0.1:5000", &body(r#"["nope"]"#)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            doc["error"].as_str().unwrap().contains("acme, beta"),
            "{doc}"
        );
        let (code, doc) = post(
            &s,
            "127.0.0.1:5000",
            r#"{"from":"2001-01-01T00:00:00Z","to":"2001-02-01T00:00:00Z"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(doc["error"].as_str().unwrap().contains("180 days"), "{doc}");
        assert!(s.spool.backfill_jobs().unwrap().is_empty());

        let (code, doc) = post(&s, "[::1]:5000", &body(r#"["beta"]"#)).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{doc}");
        assert_eq!(doc["jobs"][0]["account"], "beta");
        assert_eq!(doc["jobs"][0]["remaining_seconds"], 2.0 * 86_400.0);
        let (code, _) = post(&s, "127.0.0.1:5000", &body("[]")).await;
        assert_eq!(code, StatusCode::ACCEPTED);
        let (_, axum::Json(listed)) = list_backfill(AxumState(s.clone())).await;
        let mut accounts: Vec<&str> = listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["account"].as_str().unwrap())
            .collect();
        accounts.sort_unstable();
        assert_eq!(
            accounts,
            ["acme", "beta"],
            "the same range for beta is one job: {listed}"
        );
    }

    #[tokio::test]
    async fn a_backfill_again_polls_a_range_done_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let (from, to) = (Utc::now() - chrono::TimeDelta::days(3), Utc::now());
        let (a, b) = (from.timestamp_millis(), to.timestamp_millis());
        s.spool.backfill_mark("acme", a - 1000, b).unwrap();
        let body = |again: bool| {
            format!(
                r#"{{"from":"{}","to":"{}","accounts":["acme"],"again":{again}}}"#,
                rfc3339_millis(from),
                rfc3339_millis(to),
            )
        };
        let (code, doc) = post(&s, "127.0.0.1:5000", &body(false)).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{doc}");
        assert!(s.spool.backfill_jobs().unwrap().is_empty(), "already done");
        let (code, doc) = post(&s, "127.0.0.1:5000", &body(true)).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{doc}");
        assert_eq!(s.spool.backfill_jobs().unwrap().len(), 1, "{doc}");
        assert_eq!(s.spool.backfill_done("acme").unwrap().len(), 1);
    }
}
