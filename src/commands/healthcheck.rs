//! `healthcheck`: GET a URL of the admin endpoint and exit 0 when it answers 2xx.
//!
//! The container image is built `FROM scratch`: it has no curl or shell, so its `HEALTHCHECK`
//! runs the binary itself. Exits 1 with the reason on stderr otherwise (no answer, a non-2xx
//! status), which is what container engines expect of a health command.

use std::time::Duration;

/// The liveness route of the admin endpoint on its default port.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9464/livez";

/// Why the endpoint is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// No HTTP answer at all.
    #[error(
        "no answer from {url} (is the service running, and does admin.listen match the URL? pass --url)"
    )]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// An answer that is not 2xx.
    #[error("{url} answered {status}: {body}")]
    Unhealthy {
        /// The URL asked.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
        /// The start of the body (the reason, for `/healthz`).
        body: String,
    },
}

/// The status line of a healthy answer (printed on stdout).
#[derive(Debug, Clone)]
pub struct Healthy(pub String);

/// `healthcheck`: exit 0 on a 2xx answer, else the error (exit 1).
pub async fn command(url: &str, timeout: Duration) -> Result<Healthy, super::Error> {
    check(url, timeout)
        .await
        .map(Healthy)
        .map_err(|e| super::Error::Other(e.into()))
}

impl crate::exit::Code for Healthy {
    fn exit_code(&self) -> u8 {
        crate::exit::OK
    }
}

impl super::Report for Healthy {
    fn print(&self) -> Result<(), super::Error> {
        println!("{}", self.0);
        Ok(())
    }
}

/// GETs `url` within `timeout`; `Ok` with the status line on a 2xx answer.
pub async fn check(url: &str, timeout: Duration) -> Result<String, HealthcheckError> {
    let unreachable = |source| HealthcheckError::Unreachable {
        url: url.to_string(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(unreachable)?;
    let resp = client.get(url).send().await.map_err(unreachable)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(format!("{url}: {status}"));
    }
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(HealthcheckError::Unhealthy {
        url: url.to_string(),
        status,
        body: body.trim().to_string(),
    })
}
