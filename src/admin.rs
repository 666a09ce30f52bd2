//! The admin HTTP endpoint (`admin.listen`, loopback by default): `/metrics` in the Prometheus
//! text format and `/healthz` as JSON.
//!
//! `/healthz` answers 503 when any component is failing (a refused credential, a missing
//! permission, a rejected HEC token, a stalled loop), so a load balancer or monitor can act on
//! the status code alone; the body says which component and why. The endpoint is read-only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::spool::Spool;
use crate::telemetry::{Health, MetricsInput, State, Stats, render_health, render_metrics};

/// Binds the admin address; separate from [`serve`] so the service can fail (or warn) before
/// it tells systemd it is ready.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    spool: Spool,
    stats: Arc<Stats>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = {
        let (spool, stats, health) = (spool.clone(), stats.clone(), health.clone());
        move || async move {
            let status = spool.run(|s| s.status()).await.ok();
            let text = render_metrics(&MetricsInput {
                stats: &stats,
                health: &health,
                spool: status.as_ref(),
                now_ms: crate::spool::now_ms(),
            });
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }
    };
    let healthz = move || async move {
        let (state, doc) = render_health(&health);
        let code = if state == State::Failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (code, axum::Json(doc))
    };
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin endpoint serving /metrics and /healthz");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr` and serves until `shutdown` (see [`serve`]).
pub async fn serve_admin(
    addr: SocketAddr,
    spool: Spool,
    stats: Arc<Stats>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve(bind(addr).await?, spool, stats, health, shutdown).await
}
