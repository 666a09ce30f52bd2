//! The admin HTTP endpoint (`admin.listen`, loopback by default).
//!
//! - `GET /metrics`: Prometheus text format ([`crate::telemetry::metrics`]).
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

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, State as AxumState};
use axum::http::{StatusCode, header};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::spool::Spool;
use crate::spool::backfill::Job;
use crate::telemetry::{Health, MetricsInput, State, Stats, render_health, render_metrics};
use crate::transform::rfc3339_millis;

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

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/backfill", get(list_backfill).post(request_backfill))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin endpoint serving /metrics, /healthz, /livez and /backfill");
    }
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
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
        now_ms: crate::spool::now_ms(),
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
    axum::Json(serde_json::json!({
        "status": "alive",
        "version": env!("CARGO_PKG_VERSION"),
        "state_dir": dir,
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
fn jobs_doc(jobs: &[Job]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            let t = |ms| DateTime::<Utc>::from_timestamp_millis(ms).map(rfc3339_millis);
            serde_json::json!({
                "account": j.account,
                "from": t(j.from_ms),
                "to": t(j.to_ms),
                "remaining_seconds": j.remaining_ms as f64 / 1000.0,
            })
        })
        .collect();
    serde_json::json!({ "jobs": list })
}

async fn list_backfill(
    AxumState(s): AxumState<AdminState>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    match s.spool.run(|sp| sp.backfill_jobs()).await {
        Ok(jobs) => (StatusCode::OK, axum::Json(jobs_doc(&jobs))),
        Err(e) => error_doc(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The body of `POST /backfill`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Start, RFC 3339.
    pub from: String,
    /// End, RFC 3339.
    pub to: String,
    /// Account names; empty or absent: every account.
    #[serde(default)]
    pub accounts: Vec<String>,
}

fn error_doc(code: StatusCode, error: String) -> (StatusCode, axum::Json<serde_json::Value>) {
    (code, axum::Json(serde_json::json!({ "error": error })))
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
    let registered = s
        .spool
        .run(move |sp| {
            for a in &accounts {
                sp.backfill_request(a, from_ms, to_ms)?;
            }
            sp.backfill_jobs()
        })
        .await;
    match registered {
        Ok(jobs) => {
            info!(from = %rfc3339_millis(range.from), to = %rfc3339_millis(range.to),
                "backfill requested through the admin endpoint");
            (StatusCode::ACCEPTED, axum::Json(jobs_doc(&jobs)))
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
}
