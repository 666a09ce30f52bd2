//! HTTP to HEC: the event endpoint and the health endpoint, round-robin over the configured URLs.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use tracing::warn;

use super::response::{Outcome, classify};
use crate::config::{HecConfig, Secret};
use crate::retry::parse_seconds;

/// Problems building the HEC client.
#[derive(Debug, thiserror::Error)]
pub enum HecError {
    /// The CA file cannot be read or parsed.
    #[error("hec.tls_ca_file {path}: {detail}")]
    TlsCa {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// reqwest could not build a client.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// A HEC endpoint set with its token and data channel.
pub struct HecClient {
    http: reqwest::Client,
    urls: Vec<String>,
    token: Secret,
    /// Sent as `X-Splunk-Request-Channel` on every request: required when the token has
    /// acknowledgement on, harmless otherwise.
    channel: String,
    gzip: bool,
    next: usize,
    /// What the last `send` got back, for metrics and per-URL health ([`super::observe`]).
    pub(super) observed: super::observe::Observed,
}

impl HecClient {
    /// Builds the client: timeout, TLS trust as configured.
    pub fn new(cfg: &HecConfig) -> Result<HecClient, HecError> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("rc-audit-hec/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.tls_ca_file {
            let err = |detail: String| HecError::TlsCa {
                path: path.display().to_string(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| err(format!("not a PEM certificate: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if !cfg.tls_verify {
            warn!(
                "hec.tls_verify = false: the HEC server's certificate is NOT checked; anyone on the path can read and alter audit data. Use tls_ca_file for a private CA instead"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| HecError::Build(e.to_string()))?;
        Ok(HecClient {
            http,
            urls: cfg.urls.clone(),
            token: cfg.token.clone(),
            channel: uuid::Uuid::new_v4().to_string(),
            gzip: cfg.gzip,
            next: 0,
            observed: Default::default(),
        })
    }

    fn auth(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Splunk {}", self.token.expose())).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Sends one batch body (already gzipped when `gzip` is on) to the next URL in turn.
    /// Returns the URL used and the classified outcome; transport errors are `Retry`.
    pub async fn send(&mut self, body: Bytes) -> (String, Outcome) {
        let url = self.urls[self.next % self.urls.len()].clone();
        self.next = self.next.wrapping_add(1);
        let Some(auth) = self.auth() else {
            return (
                url,
                Outcome::Pause {
                    reason:
                        "hec.token has characters that cannot go in an HTTP header: fix hec.token"
                            .into(),
                },
            );
        };
        let mut req = self
            .http
            .post(format!("{url}/services/collector/event"))
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Splunk-Request-Channel", &self.channel)
            .body(body);
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let sent = req.send().await;
        self.observed = super::observe::Observed::of(&sent);
        let outcome = match sent {
            Err(e) => Outcome::Retry {
                retry_after: None,
                reason: if e.is_timeout() {
                    "no answer within hec.timeout (HEC may still index the batch: a resend can duplicate it)".to_string()
                } else {
                    super::observe::unreachable_reason(e)
                },
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_seconds);
                match resp.bytes().await {
                    Ok(b) => super::observe::classify_observed(
                        &mut self.observed,
                        status,
                        retry_after,
                        &b,
                    ),
                    Err(e) => Outcome::Retry {
                        retry_after,
                        reason: format!(
                            "HTTP {status}, reading the answer failed: {}",
                            e.without_url()
                        ),
                    },
                }
            }
        };
        (url, outcome)
    }

    /// Calls `GET /services/collector/health` on every URL with the token; `Ok` lists healthy
    /// URLs, each `Err` says what is wrong with one.
    pub async fn health(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let mut req = self.http.get(format!("{url}/services/collector/health"));
            if let Some(auth) = self.auth() {
                req = req.header(AUTHORIZATION, auth);
            }
            let result = match req.send().await {
                Err(e) => Err(format!(
                    "cannot reach HEC: {}",
                    crate::telemetry::logging::error_chain(&e.without_url())
                )),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.bytes().await.unwrap_or_default();
                    match (status, classify(status, None, &body)) {
                        (200, _) => Ok(()),
                        (_, Outcome::Pause { reason }) => Err(reason),
                        (_, Outcome::Retry { reason, .. }) => {
                            Err(format!("HEC unhealthy: {reason}"))
                        }
                        (_, other) => Err(format!("HTTP {status}: {other:?}")),
                    }
                }
            };
            out.push((url.clone(), result));
        }
        out
    }
}
