//! The process's signals: SIGTERM/SIGINT end a command (through a [`CancellationToken`]),
//! SIGHUP asks `run` to reload and is ignored (logged) by the commands that end by themselves.
//! A leaf: the commands install these handlers; the loops below only ever see the token.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
        token.cancel();
    });
}

/// A channel that receives one message per SIGHUP. Installing the handler also replaces
/// SIGHUP's default action (terminate).
pub fn sighup_requests() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            warn!("cannot listen for SIGHUP; reload by restarting the service");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP received: reloading the configuration");
            // A full channel means a reload is already pending: one is enough.
            let _ = tx.try_send(());
        }
    });
    rx
}

/// For commands that end by themselves (`once`, `backfill`): SIGHUP must not kill them halfway
/// through, and there is nothing to reload, so it is logged and ignored.
pub fn ignore_sighup(command: &'static str) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            warn!(
                "SIGHUP ignored: `{command}` reads its config once at start; only `run` reloads. Stop it with SIGTERM or Ctrl-C if you meant to"
            );
        }
    });
}
