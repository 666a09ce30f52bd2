//! systemd notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`, `RELOADING=1`): a
//! leaf, so the pipeline's options can name where they go without depending on the service
//! that sends them.

use std::sync::Arc;

use tracing::warn;

/// Where systemd notifications go: the real socket (`$NOTIFY_SOCKET`; nothing outside systemd)
/// or, for tests, a list.
#[derive(Clone, Default)]
pub enum Notifier {
    /// `sd_notify` to `$NOTIFY_SOCKET` when it is set.
    #[default]
    Systemd,
    /// Every notification as `KEY=value` text, in order.
    Capture(Arc<std::sync::Mutex<Vec<String>>>),
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notifier::Systemd => f.write_str("Notifier::Systemd"),
            Notifier::Capture(_) => f.write_str("Notifier::Capture"),
        }
    }
}

impl Notifier {
    /// Sends `states` (one datagram).
    pub fn notify(&self, states: &[sd_notify::NotifyState]) {
        match self {
            Notifier::Systemd => {
                if std::env::var_os("NOTIFY_SOCKET").is_some()
                    && let Err(e) = sd_notify::notify(states)
                {
                    warn!(
                        "cannot notify systemd: {e}; check NotifyAccess= and that the unit's sandbox allows AF_UNIX"
                    );
                }
            }
            Notifier::Capture(list) => {
                let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
                list.extend(states.iter().map(|s| s.to_string()));
            }
        }
    }
}
