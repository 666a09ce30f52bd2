//! HTTP to HEC: the event, ack and health endpoints, round-robin over the healthy URLs.
//!
//! Several `hec.urls` (e.g. the HEC endpoints of an indexer cluster) share the load: requests
//! rotate over the endpoints currently healthy. An endpoint that fails a request (connection
//! error, timeout, 5xx, 429, a garbled 200) is taken out of the rotation; once its probe time
//! has come, its health endpoint is asked before real traffic goes back to it. When every
//! endpoint is down the sink backs off and the next request itself is the probe.
//!
//! A passing health check only lets an endpoint back *on probation*: its failure streak is
//! cleared by a real request that HEC answers, never by `/health`. A URL whose health answers
//! at once but whose event endpoint times out (an overloaded indexer behind a healthy front)
//! would otherwise rejoin after every probe interval and cost one duplicate batch each time;
//! on probation, each failed request doubles its time out of the rotation (up to
//! [`MAX_PROBE_INTERVAL`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{info, warn};

use super::response::{Outcome, classify};
use crate::config::{HecConfig, Secret};
use crate::retry::{cap_retry_after, parse_seconds};

/// How long a failed endpoint stays out of the rotation before it is probed, at first; doubles
/// with each failed probe up to [`MAX_PROBE_INTERVAL`].
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// The longest wait between probes of a failed endpoint.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Timeout of a health check (`GET /services/collector/health`).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A command needs HEC, and the config has no `[hec]`.
    #[error("[hec] is not configured: add the section (see examples/config.example.toml)")]
    NotConfigured,
}

/// Why an ack query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The token has no indexer acknowledgement (HEC code 14).
    #[error("indexer acknowledgement is disabled on the HEC token (code 14)")]
    Disabled,
    /// Anything else; try again at the next poll.
    #[error("ack query failed: {0}")]
    Failed(String),
}

/// The result of sending a batch.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Which endpoint (index into the URL list) took the request.
    pub endpoint: usize,
    /// Its URL, for logs.
    pub url: String,
    /// What HEC said, classified.
    pub outcome: Outcome,
}

struct Endpoint {
    url: String,
    healthy: bool,
    /// When a failed endpoint may be probed again.
    probe_at: Instant,
    /// Current wait between probes.
    probe_interval: Duration,
    /// Requests (and probes) failed since a real request last succeeded here; a passing health
    /// check does not clear it (see the module docs).
    failures: u32,
}

/// A HEC endpoint set with its token and data channel.
pub struct HecClient {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    token: Secret,
    /// Sent as `X-Splunk-Request-Channel` on every request: required when the token has
    /// acknowledgement on, harmless otherwise. One per process: ack ids are per channel.
    channel: String,
    gzip: bool,
    next: usize,
    /// What the last `send` got back, for metrics and per-URL health ([`super::observe`]).
    pub(super) observed: super::observe::Observed,
    /// How long the last `send` took, answer read (the request-latency histogram).
    pub(super) elapsed: Duration,
}

/// TLS for `hec.tls_ca_file`: the system's trust store plus the file's certificates as roots
/// (what reqwest does by itself), and one more rule: a server presenting exactly a certificate
/// from the file is trusted. That is how a self-signed Splunk certificate (Splunk's default, or
/// `openssl req -x509`, both marked `CA:TRUE`) works when given as the file: webpki refuses a
/// CA certificate as a server's own (`CaUsedAsEndEntity`), though the operator named this very
/// certificate. Any other certificate goes through the normal checks, names included.
fn pinned_tls(certs: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = rustls_platform_verifier::Verifier::new_with_extra_roots(
        certs.iter().cloned(),
        provider.clone(),
    )
    .map_err(|e| format!("cannot use these certificates as trust roots: {e}"))?;
    let verifier = Arc::new(PinnedOrVerified {
        pinned: certs,
        inner,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// See [`pinned_tls`].
#[derive(Debug)]
struct PinnedOrVerified {
    pinned: Vec<CertificateDer<'static>>,
    inner: rustls_platform_verifier::Verifier,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrVerified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
            use rustls::pki_types::pem::PemObject;
            let der = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("not a PEM certificate: {e:?}")))?;
            if der.is_empty() {
                return Err(err("no PEM certificate in it".into()));
            }
            if cfg.tls_verify {
                builder = builder.tls_backend_preconfigured(pinned_tls(der).map_err(err)?);
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
        let now = Instant::now();
        Ok(HecClient {
            http,
            endpoints: cfg
                .urls
                .iter()
                .map(|url| Endpoint {
                    url: url.clone(),
                    healthy: true,
                    probe_at: now,
                    probe_interval: PROBE_INTERVAL,
                    failures: 0,
                })
                .collect(),
            token: cfg.token.clone(),
            channel: uuid::Uuid::new_v4().to_string(),
            gzip: cfg.gzip,
            next: 0,
            observed: Default::default(),
            elapsed: Duration::ZERO,
        })
    }

    fn auth(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Splunk {}", self.token.expose())).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// True when at least one endpoint is in the rotation.
    pub fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.healthy)
    }

    /// Takes `endpoint` out of the rotation after a failed request; it is not probed before
    /// `retry_after` (the server's own `Retry-After`) has passed. The first failure after a
    /// success keeps it out for [`PROBE_INTERVAL`]; every further one (on probation after a
    /// passing health check included) doubles that, up to [`MAX_PROBE_INTERVAL`].
    pub fn mark_failed(&mut self, endpoint: usize, reason: &str, retry_after: Option<Duration>) {
        let several = self.endpoints.len() > 1;
        let e = &mut self.endpoints[endpoint];
        e.probe_interval = if e.failures == 0 {
            PROBE_INTERVAL
        } else {
            (e.probe_interval * 2).min(MAX_PROBE_INTERVAL)
        };
        e.failures = e.failures.saturating_add(1);
        if e.healthy {
            e.healthy = false;
            if several {
                warn!(url = %e.url, failures = e.failures,
                    retry_in_s = e.probe_interval.max(retry_after.unwrap_or_default()).as_secs(),
                    "HEC endpoint taken out of the rotation: {reason}");
            }
        }
        e.probe_at = Instant::now() + e.probe_interval.max(retry_after.unwrap_or_default());
    }

    /// A passing health check: back in the rotation on probation (the failure streak stays, so
    /// a failing next request keeps it out twice as long).
    fn rejoin(&mut self, endpoint: usize) {
        let several = self.endpoints.len() > 1;
        let e = &mut self.endpoints[endpoint];
        let was_down = !e.healthy;
        e.healthy = true;
        if was_down && several {
            info!(url = %e.url, failures = e.failures,
                "HEC endpoint health check passed: back in the rotation on probation");
        }
    }

    /// A real request was answered: the endpoint works, its failure streak ends.
    fn mark_succeeded(&mut self, endpoint: usize) {
        self.rejoin(endpoint);
        let e = &mut self.endpoints[endpoint];
        e.failures = 0;
        e.probe_interval = PROBE_INTERVAL;
    }

    /// The longest a [`HecClient::send`] with `timeout` can take: the request itself plus a
    /// health check of every other endpoint whose probe is due. The sink promises the watchdog
    /// this much (see [`crate::watchdog::within`]).
    pub fn send_bound(&self, timeout: Duration) -> Duration {
        let probes = u32::try_from(self.endpoints.len().saturating_sub(1)).unwrap_or(u32::MAX);
        timeout.saturating_add(HEALTH_TIMEOUT.saturating_mul(probes))
    }

    /// The longest [`HecClient::health`] can take.
    pub fn health_bound(&self) -> Duration {
        HEALTH_TIMEOUT.saturating_mul(u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX))
    }

    /// `reason` with the token blanked out, in case an answer (a proxy's error page) echoes
    /// the request's headers.
    fn redact(&self, reason: String) -> String {
        let token = self.token.expose();
        if token.len() >= 4 && reason.contains(token) {
            reason.replace(token, "<hec.token>")
        } else {
            reason
        }
    }

    /// Brings failed endpoints whose probe time has come back into the rotation if their
    /// health endpoint answers 200.
    async fn probe_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.endpoints.len() {
            let e = &self.endpoints[i];
            if e.healthy || e.probe_at > now || self.endpoints.len() == 1 {
                continue;
            }
            match self.health_of(&e.url.clone()).await {
                Ok(()) => self.rejoin(i),
                Err(reason) => self.mark_failed(i, &reason, None),
            }
        }
    }

    /// The endpoint for the next request: the next healthy one in turn; when none is healthy,
    /// the one whose probe is due first.
    async fn choose(&mut self) -> usize {
        self.probe_due().await;
        let n = self.endpoints.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.endpoints[i].healthy {
                self.next = i + 1;
                return i;
            }
        }
        (0..n)
            .min_by_key(|&i| self.endpoints[i].probe_at)
            .unwrap_or(0)
    }

    /// Sends one batch body (already gzipped when `gzip` is on) with the given timeout.
    /// Transport errors are `Retry`, a timeout is `TimedOut`; the endpoint's rotation state is
    /// updated from the outcome.
    pub async fn send(&mut self, body: Bytes, timeout: Duration) -> Sent {
        let endpoint = self.choose().await;
        let url = self.endpoints[endpoint].url.clone();
        let Some(auth) = self.auth() else {
            return Sent {
                endpoint,
                url,
                outcome: Outcome::Pause {
                    reason:
                        "hec.token has characters that cannot go in an HTTP header: fix hec.token"
                            .into(),
                },
            };
        };
        let mut req = self
            .http
            .post(format!("{url}/services/collector/event"))
            .timeout(timeout)
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Splunk-Request-Channel", &self.channel)
            .body(body);
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let started = std::time::Instant::now();
        let sent = req.send().await;
        self.observed = super::observe::Observed::of(&sent);
        let outcome = match sent {
            // Never sent (connect failed or timed out): nothing can have been indexed.
            Err(e) if e.is_connect() => Outcome::Retry {
                retry_after: None,
                reason: super::observe::unreachable_reason(e),
            },
            Err(e) if e.is_timeout() => Outcome::TimedOut,
            Err(e) => Outcome::Retry {
                retry_after: None,
                reason: super::observe::unreachable_reason(e),
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_seconds)
                    .map(|d| cap_retry_after(d, "HEC"));
                match resp.bytes().await {
                    Ok(b) => super::observe::classify_observed(
                        &mut self.observed,
                        status,
                        retry_after,
                        &b,
                    ),
                    Err(e) if e.is_timeout() => Outcome::TimedOut,
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
        self.elapsed = started.elapsed();
        let outcome = match outcome {
            Outcome::Retry {
                reason,
                retry_after,
            } => Outcome::Retry {
                reason: self.redact(reason),
                retry_after,
            },
            Outcome::Pause { reason } => Outcome::Pause {
                reason: self.redact(reason),
            },
            Outcome::Garbled { reason } => Outcome::Garbled {
                reason: self.redact(reason),
            },
            Outcome::BadEvent {
                index,
                code,
                reason,
            } => Outcome::BadEvent {
                index,
                code,
                reason: self.redact(reason),
            },
            other => other,
        };
        match &outcome {
            Outcome::Retry {
                reason,
                retry_after,
            } => self.mark_failed(endpoint, reason, *retry_after),
            Outcome::TimedOut => self.mark_failed(endpoint, "no answer within the timeout", None),
            // A URL that refuses the token or does not exist leaves the rotation too: another
            // URL may work, and if none does the sink backs off anyway. So does one whose 200s
            // cannot be read (a proxy answering for Splunk).
            Outcome::Pause { reason } | Outcome::Garbled { reason } => {
                self.mark_failed(endpoint, reason, None)
            }
            Outcome::Accepted { .. } | Outcome::BadEvent { .. } | Outcome::TooLarge => {
                self.mark_succeeded(endpoint)
            }
        }
        Sent {
            endpoint,
            url,
            outcome,
        }
    }

    /// Asks `endpoint` which of `ids` (ack ids of this client's channel) are indexed.
    pub async fn query_acks(
        &self,
        endpoint: usize,
        ids: &[u64],
    ) -> Result<HashMap<u64, bool>, AckError> {
        #[derive(Deserialize)]
        struct Acks {
            acks: HashMap<String, bool>,
        }
        let url = &self.endpoints[endpoint].url;
        let auth = self
            .auth()
            .ok_or_else(|| AckError::Failed("the token cannot go in a header".into()))?;
        let resp = self
            .http
            // The channel is a UUID: safe in a URL as it is.
            .post(format!(
                "{url}/services/collector/ack?channel={}",
                self.channel
            ))
            .header(AUTHORIZATION, auth)
            .header("X-Splunk-Request-Channel", &self.channel)
            .json(&serde_json::json!({ "acks": ids }))
            .send()
            .await
            .map_err(|e| AckError::Failed(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| AckError::Failed(e.without_url().to_string()))?;
        if status == 200 {
            let acks: Acks = serde_json::from_slice(&body)
                .map_err(|e| AckError::Failed(format!("unreadable ack answer: {e}")))?;
            return Ok(acks
                .acks
                .into_iter()
                .filter_map(|(k, v)| k.parse().ok().map(|id| (id, v)))
                .collect());
        }
        match classify(status, None, &body) {
            Outcome::Pause { reason } if reason.contains("code 14") => Err(AckError::Disabled),
            Outcome::Pause { reason } | Outcome::Retry { reason, .. } => {
                Err(AckError::Failed(reason))
            }
            other => Err(AckError::Failed(format!("HTTP {status}: {other:?}"))),
        }
    }

    async fn health_of(&self, url: &str) -> Result<(), String> {
        let mut req = self
            .http
            .get(format!("{url}/services/collector/health"))
            .timeout(HEALTH_TIMEOUT);
        if let Some(auth) = self.auth() {
            req = req.header(AUTHORIZATION, auth);
        }
        match req.send().await {
            Err(e) => Err(super::observe::unreachable_reason(e)),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await.unwrap_or_default();
                match (status, classify(status, None, &body)) {
                    (200, _) => Ok(()),
                    (_, Outcome::Pause { reason }) => Err(reason),
                    (_, Outcome::Retry { reason, .. }) => Err(format!("HEC unhealthy: {reason}")),
                    (_, other) => Err(format!("HTTP {status}: {other:?}")),
                }
            }
        }
    }

    /// Calls `GET /services/collector/health` on every URL with the token; each result says
    /// what is wrong with one URL, if anything.
    pub async fn health(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            out.push((e.url.clone(), self.health_of(&e.url).await));
        }
        out
    }
}
