//! `check` without `--offline`: tries what the service needs, end to end, and prints a table of
//! what works, with the likely cause and the fix for every failure.
//!
//! Per account: a token (the JWT grant), then a one-record search of the last hour (the
//! `ReadAuditTrail` permission and the account id). Per HEC URL: the health endpoint with the
//! token (reachability, TLS trust, the token). The diagnosis maps what failed to what usually
//! causes it: a wrong or expired JWT, a locked user, a missing permission, a wrong HEC token or
//! URL, a certificate this machine does not trust.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{Error, Report, load_config};
use crate::config::{Config, DynamoDbConfig, HecConfig};
use crate::exit::{Code, Outcome};
use crate::hec::client::HecClient;
use crate::pipeline::{AppError, ringcentral_http};
use crate::ringcentral::model::SearchRequest;
use crate::ringcentral::{RcClient, RcError};
use crate::telemetry::Stats;
use crate::time::rfc3339_millis;

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// What was checked, e.g. `account acme: token`.
    pub what: String,
    /// Whether it worked.
    pub ok: bool,
    /// What happened (the error as reported).
    pub detail: String,
    /// For failures: the likely cause and the fix.
    pub diagnosis: Option<Diagnosis>,
    /// A failure an operator must fix in the configuration or on the remote side (exit 78), as
    /// opposed to an outage (exit 1).
    pub config: bool,
}

/// Likely cause and fix of a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// What most likely went wrong.
    pub cause: String,
    /// What to do.
    pub fix: String,
}

fn diag(cause: impl Into<String>, fix: impl Into<String>) -> Option<Diagnosis> {
    Some(Diagnosis {
        cause: cause.into(),
        fix: fix.into(),
    })
}

/// What `check` found: the table, and for `--offline` the config line above it.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// `config: ok (...)` (offline only; online the table's first row says it).
    pub config_line: Option<String>,
    /// The table.
    pub rows: Vec<Row>,
}

/// `check [--offline]` with the config at `path`.
pub async fn command(path: &Path, offline: bool) -> Result<CheckReport, Error> {
    let config = load_config(path)?;
    if offline {
        return Ok(CheckReport {
            config_line: Some(format!("config: ok ({})", destinations_summary(&config))),
            rows: local_rows(&config),
        });
    }
    Ok(CheckReport {
        config_line: None,
        rows: run(&config).await?,
    })
}

impl Code for CheckReport {
    fn exit_code(&self) -> u8 {
        exit_code(&self.rows)
    }
}

impl Report for CheckReport {
    fn print(&self) -> Result<(), Error> {
        if let Some(line) = &self.config_line {
            println!("{line}");
        }
        print!("{}", render(&self.rows));
        Ok(())
    }
}

/// Runs every online check.
pub async fn run(config: &Config) -> Result<Vec<Row>, AppError> {
    let http = ringcentral_http(Duration::from_secs(30))?;
    let stats = Arc::new(Stats::default());
    let mut rows = vec![Row {
        what: "config".into(),
        ok: true,
        detail: destinations_summary(config),
        diagnosis: None,
        config: false,
    }];
    rows.extend(local_rows(config));
    for account in &config.accounts {
        let mut client = RcClient::new(http.clone(), account, Default::default(), stats.clone())
            .with_max_attempts(Some(2));
        let token = format!("account {}: token", account.name);
        let search = format!("account {}: audit-trail search", account.name);
        if let Err(e) = client.authenticate().await {
            rows.push(rc_failure(token, &e));
            rows.push(Row {
                what: search,
                ok: false,
                detail: "not tried (no token)".into(),
                diagnosis: None,
                config: false,
            });
            continue;
        }
        rows.push(Row {
            what: token,
            ok: true,
            detail: "JWT accepted".into(),
            diagnosis: None,
            config: false,
        });
        let now = Utc::now();
        let req = SearchRequest {
            event_time_from: rfc3339_millis(now - chrono::TimeDelta::hours(1)),
            event_time_to: rfc3339_millis(now),
            page: 1,
            per_page: 1,
            include_admins: config.poll.include_admins,
            include_hidden: config.poll.include_hidden,
        };
        rows.push(match client.search(&req).await {
            Ok(page) => Row {
                what: search,
                ok: true,
                detail: format!(
                    "permitted; {} record(s) in the last hour",
                    page.paging
                        .as_ref()
                        .and_then(|p| p.total_found)
                        .map_or_else(|| page.records.len().to_string(), |n| n.to_string())
                ),
                diagnosis: None,
                config: false,
            },
            Err(e) => rc_failure(search, &e),
        });
    }
    if let Some(hec) = &config.hec {
        rows.extend(hec_rows(hec).await);
    }
    if let Some(dynamodb) = &config.dynamodb {
        rows.extend(dynamodb_rows(dynamodb).await);
    }
    Ok(rows)
}

/// `N account(s), HEC <urls>, DynamoDB table <t> in <region>`: what the config delivers to.
fn destinations_summary(config: &Config) -> String {
    let mut parts = vec![format!("{} account(s)", config.accounts.len())];
    if let Some(hec) = &config.hec {
        parts.push(format!("HEC {}", hec.urls.join(", ")));
    }
    if let Some(d) = &config.dynamodb {
        parts.push(format!("DynamoDB table {} in {}", d.table, d.region));
    }
    parts.join(", ")
}

/// DynamoDB: the credentials are found and accepted, and the table is there with the key
/// schema and index the forwarder writes (DescribeTable, DescribeTimeToLive).
async fn dynamodb_rows(cfg: &DynamoDbConfig) -> Vec<Row> {
    let what = format!("dynamodb table {} ({})", cfg.table, cfg.region);
    let dynamo = match crate::dynamodb::client::connect(cfg).await {
        Ok(d) => d,
        Err(e) => {
            return vec![Row {
                what,
                ok: false,
                detail: e.to_string(),
                diagnosis: diag(
                    "the DynamoDB client cannot be set up",
                    "check dynamodb.region and dynamodb.endpoint_url, and that AWS credentials are available (environment, ~/.aws, web identity or instance role)",
                ),
                config: true,
            }];
        }
    };
    vec![match crate::dynamodb::table::verify(&dynamo, cfg).await {
        Ok(report) => Row {
            what,
            ok: true,
            detail: format!(
                "{}, keys and the {} index as expected, TTL {}",
                report.status,
                crate::dynamodb::table::INDEX_NAME,
                report.ttl_attribute.as_deref().unwrap_or("off")
            ),
            diagnosis: None,
            config: false,
        },
        Err(e) => Row {
            what,
            ok: false,
            detail: e.to_string(),
            diagnosis: diag(
                "the table is missing, laid out differently, or these credentials may not read it",
                "run `rc-audit-hec dynamodb create-table`, or grant dynamodb:DescribeTable, PutItem and BatchWriteItem on the table (README, \"DynamoDB\")",
            ),
            config: true,
        },
    }]
}

/// HEC: the client can be built (TLS settings), and each URL is healthy with the token.
async fn hec_rows(hec: &HecConfig) -> Vec<Row> {
    let mut rows = Vec::new();
    match HecClient::new(hec) {
        Err(e) => rows.push(Row {
            what: "hec: client".into(),
            ok: false,
            detail: e.to_string(),
            diagnosis: diag(
                "the TLS settings cannot be used",
                "hec.tls_ca_file must be a readable PEM file with the CA certificate(s)",
            ),
            config: true,
        }),
        Ok(hec) => {
            for (url, result) in hec.health().await {
                let what = format!("hec {url}: health with token");
                rows.push(match result {
                    Ok(()) => Row {
                        what,
                        ok: true,
                        detail: "healthy, token accepted".into(),
                        diagnosis: None,
                        config: false,
                    },
                    Err(reason) => hec_failure(what, reason),
                });
            }
        }
    }
    rows
}

/// The checks that need no network, also run by `check --offline` (systemd's `ExecStartPre=`):
/// the state directory is writable by this user, and a warning for `hec.tls_verify = false`.
pub fn local_rows(config: &Config) -> Vec<Row> {
    let mut rows = vec![state_dir_row(&config.spool.dir)];
    if config.hec.as_ref().is_some_and(|h| !h.tls_verify) {
        rows.push(Row {
            what: "hec: tls_verify".into(),
            ok: true,
            detail: "false: the HEC server's certificate is NOT checked".into(),
            diagnosis: diag(
                "hec.tls_verify = false: anyone on the network path can read and alter the audit data",
                "for a private CA or a self-signed Splunk certificate, set hec.tls_ca_file to that certificate (PEM) and remove tls_verify",
            ),
            config: false,
        });
    }
    rows
}

/// Whether the service could create and write its spool in `dir`: a file is created (and
/// removed) in `dir`, or, when `dir` does not exist yet, in the nearest existing parent.
pub fn state_dir_row(dir: &Path) -> Row {
    let what = "state directory".to_string();
    let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut existing = shown.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let probe = existing.join(format!(".rc-audit-hec-check-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map(|_| {
            let _ = std::fs::remove_file(&probe);
        });
    let db = shown.join("spool.db");
    let db_written = if db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .map(|_| ())
    } else {
        Ok(())
    };
    match written.and(db_written) {
        Ok(()) => Row {
            what,
            ok: true,
            detail: if existing == shown {
                format!("{} is writable", shown.display())
            } else {
                format!(
                    "{} will be created ({} is writable)",
                    shown.display(),
                    existing.display()
                )
            },
            diagnosis: None,
            config: false,
        },
        Err(e) => Row {
            what,
            ok: false,
            detail: format!("{}: {e}", shown.display()),
            diagnosis: diag(
                "this user cannot write the state directory (the spool lives there)",
                "run the command as the service's user (see README, `systemd-run` recipes), or give this user the directory (chown/chmod), or set spool.dir to a writable place",
            ),
            config: true,
        },
    }
}

/// A RingCentral failure with its likely cause.
fn rc_failure(what: String, e: &RcError) -> Row {
    let (diagnosis, config) = match e {
        RcError::Credentials { fix, .. } => {
            let (cause, fix) = fix.split_once(": ").unwrap_or(("", fix));
            let cause = if cause.is_empty() {
                "RingCentral refused the JWT or the app's client id/secret"
            } else {
                cause
            };
            (diag(cause, fix), true)
        }
        RcError::Permission { permission, .. } => (
            diag(
                format!(
                    "the app lacks the {permission} permission, or the JWT user lacks an admin role with audit-trail access"
                ),
                format!(
                    "add {permission} to the app in the RingCentral developer console (then re-authorize), and give the JWT user an admin role that includes the audit trail"
                ),
            ),
            true,
        ),
        RcError::Rejected { .. } => (
            diag(
                "the search was refused: a wrong account_id, or a server_url of another environment",
                "use account_id = \"~\" (the JWT user's own account) and the server_url the app was created for (production: https://platform.ringcentral.com)",
            ),
            true,
        ),
        RcError::Unavailable { detail, .. } => (transport_diagnosis(detail, "server_url"), false),
        RcError::TooLarge { .. } | RcError::Inconsistent { .. } => (
            diag(
                "RingCentral's answer was unusable (too large, or contradicting its own paging)",
                "run the check again; if it persists, report it to RingCentral support with the time",
            ),
            false,
        ),
    };
    Row {
        what,
        ok: false,
        detail: e.to_string(),
        diagnosis,
        config,
    }
}

/// A HEC health failure with its likely cause.
fn hec_failure(what: String, reason: String) -> Row {
    let (diagnosis, config) = if reason.starts_with("cannot reach HEC") {
        let d = transport_diagnosis(&reason, "hec.urls");
        let tls = d.as_ref().is_some_and(|d| d.cause.starts_with("TLS"));
        (d, tls)
    } else if reason.contains("HTTP 401") || reason.contains("HTTP 403") {
        (
            diag(
                "wrong or disabled HEC token",
                "copy the token from Splunk (Settings > Data inputs > HTTP Event Collector) into hec.token or the hec-token credential; check it is enabled",
            ),
            true,
        )
    } else if reason.contains("HTTP 404") {
        (
            diag(
                "wrong HEC URL, or HEC is disabled",
                "hec.urls must be the base URL (https://splunk.example.com:8088, no path); enable HEC in Splunk's global settings",
            ),
            true,
        )
    } else if reason.contains("HTTP 400") {
        (
            diag(
                "HEC refused the request (e.g. acknowledgement settings of the token)",
                "see the detail; for acknowledgement errors disable indexer acknowledgement on the token",
            ),
            true,
        )
    } else if reason.contains("HTTP 503") || reason.contains("unhealthy") {
        (
            diag(
                "HEC is up but unhealthy (indexer queues full, or the server is starting)",
                "usually passes; if it persists, check the indexers' health in Splunk. Records wait in the spool meanwhile",
            ),
            false,
        )
    } else {
        (
            diag(
                "unexpected answer from HEC",
                "check that hec.urls points at Splunk's HEC port (8088 by default), not a proxy or the web UI",
            ),
            true,
        )
    };
    Row {
        what,
        ok: false,
        detail: reason,
        diagnosis,
        config,
    }
}

/// Cause and fix for a request that got no HTTP answer, from the error chain's text.
fn transport_diagnosis(detail: &str, key: &str) -> Option<Diagnosis> {
    let d = detail.to_ascii_lowercase();
    if d.contains("certificate")
        || d.contains("unknownissuer")
        || d.contains("tls")
        || d.contains("handshake")
    {
        let fix = if key == "hec.urls" {
            "if Splunk uses a private CA, set hec.tls_ca_file to that CA's PEM certificate (for a self-signed certificate, such as Splunk's default, to the certificate itself); make sure the certificate's names include the host in hec.urls. (hec.tls_verify = false only for a test)"
        } else {
            "if a TLS-inspecting proxy sits in between, add its CA to the system trust store (update-ca-certificates); check the system clock"
        };
        return diag(
            "TLS trust: the server's certificate is not trusted (unknown CA, wrong name or expired)",
            fix,
        );
    }
    if d.contains("dns") || d.contains("lookup") || d.contains("resolve") {
        return diag(
            format!("the host in {key} cannot be resolved"),
            format!("check the spelling of {key} and this machine's DNS"),
        );
    }
    if d.contains("refused") || d.contains("connect") || d.contains("unreachable") {
        return diag(
            format!("nothing answers at {key} (refused or unreachable)"),
            format!("check {key} (host and port), firewalls, and the proxy settings (HTTPS_PROXY)"),
        );
    }
    if d.contains("timed out") || d.contains("timeout") {
        return diag(
            "no answer in time",
            format!("check the network path to {key} (firewall dropping packets, proxy)"),
        );
    }
    diag(
        "the service is unavailable",
        "try again later; if it persists, check the network path and the service's status page",
    )
}

/// The table, then the problems with their likely cause and fix.
pub fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(10).max(5);
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$}  {:<6}  DETAIL", "CHECK", "RESULT");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {}",
            r.what,
            match (r.ok, &r.diagnosis) {
                (false, _) => "FAILED",
                (true, Some(_)) => "WARN",
                (true, None) => "ok",
            },
            r.detail
        );
    }
    let problems: Vec<&Row> = rows.iter().filter(|r| r.diagnosis.is_some()).collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "\nWhat to do:");
        for r in problems {
            if let Some(d) = &r.diagnosis {
                let _ = writeln!(
                    out,
                    "- {}\n    likely cause: {}\n    fix: {}",
                    r.what, d.cause, d.fix
                );
            }
        }
    }
    out
}

/// 0 when everything works, 78 when something must be fixed in the configuration (or on the
/// remote side), 1 when something was only unavailable.
pub fn exit_code(rows: &[Row]) -> u8 {
    let failed = rows.iter().filter(|r| !r.ok).map(|r| {
        if r.config {
            Outcome::Config
        } else {
            Outcome::Failed
        }
    });
    Outcome::worst(failed).exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_get_a_cause_and_a_fix() {
        let locked = rc_failure(
            "account a: token".into(),
            &RcError::Credentials {
                detail: "HTTP 400".into(),
                fix: "the JWT user is locked out of RingCentral: unlock the user in the admin portal",
            },
        );
        let d = locked.diagnosis.unwrap();
        assert_eq!(d.cause, "the JWT user is locked out of RingCentral");
        assert_eq!(d.fix, "unlock the user in the admin portal");
        assert!(locked.config);

        let perm = rc_failure(
            "s".into(),
            &RcError::Permission {
                detail: "CMN-401".into(),
                permission: "ReadAuditTrail".into(),
            },
        );
        assert!(perm.diagnosis.unwrap().fix.contains("ReadAuditTrail"));

        let tls = hec_failure(
            "h".into(),
            "cannot reach HEC: error sending request: client error (Connect): invalid peer certificate: UnknownIssuer".into(),
        );
        assert!(
            tls.diagnosis
                .as_ref()
                .unwrap()
                .cause
                .starts_with("TLS trust")
        );
        assert!(tls.diagnosis.unwrap().fix.contains("hec.tls_ca_file"));
        assert!(tls.config);

        let token = hec_failure(
            "h".into(),
            "HTTP 403, code 4: Invalid token; fix hec.token".into(),
        );
        assert!(token.diagnosis.unwrap().cause.contains("HEC token"));

        let refused = hec_failure(
            "h".into(),
            "cannot reach HEC: error sending request: tcp connect error: Connection refused (os error 111)".into(),
        );
        assert!(refused.diagnosis.unwrap().cause.contains("nothing answers"));
        assert!(!refused.config, "an outage is not a config error");
    }

    #[test]
    fn the_table_lists_every_check_then_what_to_do() {
        let rows = vec![
            Row {
                what: "config".into(),
                ok: true,
                detail: "1 account(s)".into(),
                diagnosis: None,
                config: false,
            },
            hec_failure(
                "hec https://h:8088: health with token".into(),
                "HTTP 404, code -: x".into(),
            ),
        ];
        let text = render(&rows);
        assert!(text.starts_with("CHECK"), "{text}");
        assert!(text.contains("config  "), "{text}");
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("What to do:\n- hec https://h:8088: health with token\n    likely cause: wrong HEC URL"), "{text}");
        assert_eq!(exit_code(&rows), crate::exit::CONFIG);
        assert_eq!(exit_code(&rows[..1]), crate::exit::OK);
    }
}
