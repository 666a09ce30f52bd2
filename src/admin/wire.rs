//! The JSON documents of the admin endpoint, defined once: the server writes them and the
//! commands that talk to a running service (`backfill`, `spool status`) read them with the same
//! types. (`/healthz` is [`crate::telemetry::HealthDoc`], next to the health it renders.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spool::backfill::Job;

/// The body of `POST /backfill`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Start, RFC 3339.
    pub from: String,
    /// End, RFC 3339.
    pub to: String,
    /// Account names; empty or absent: every account.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Poll the range again even where an earlier backfill did (`backfill --again`).
    #[serde(default)]
    pub again: bool,
}

/// The answer of `GET /backfill` and of an accepted `POST /backfill`: what the service still
/// has to backfill.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackfillJobs {
    /// One per account and range not done yet.
    pub jobs: Vec<BackfillJob>,
}

/// One backfill the service still has to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillJob {
    /// Account name.
    pub account: String,
    /// Range start, RFC 3339.
    pub from: Option<String>,
    /// Range end, RFC 3339.
    pub to: Option<String>,
    /// Seconds of the range not done yet.
    pub remaining_seconds: f64,
}

impl BackfillJobs {
    /// The document of the spool's jobs.
    pub fn from_jobs(jobs: &[Job]) -> BackfillJobs {
        let t = crate::time::ms_rfc3339;
        BackfillJobs {
            jobs: jobs
                .iter()
                .map(|j| BackfillJob {
                    account: j.account.clone(),
                    from: t(j.from_ms),
                    to: t(j.to_ms),
                    remaining_seconds: j.remaining_ms as f64 / 1000.0,
                })
                .collect(),
        }
    }

    /// Milliseconds left for the accounts in `accounts`.
    pub fn remaining_ms(&self, accounts: &[String]) -> u64 {
        self.jobs
            .iter()
            .filter(|j| accounts.contains(&j.account))
            .map(|j| (j.remaining_seconds * 1000.0) as u64)
            .sum()
    }
}

/// The answer of a refused request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDoc {
    /// Why, for the operator.
    pub error: String,
}

/// The answer of `GET /livez`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Livez {
    /// Always `alive`.
    pub status: String,
    /// The service's version.
    pub version: String,
    /// Its state directory (where its spool is).
    pub state_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_documents_round_trip_and_count_only_the_asked_accounts() {
        let jobs = BackfillJobs::from_jobs(&[
            Job {
                account: "acme".into(),
                from_ms: 0,
                to_ms: 86_400_000,
                remaining_ms: 43_200_000,
            },
            Job {
                account: "other".into(),
                from_ms: 0,
                to_ms: 1000,
                remaining_ms: 1000,
            },
        ]);
        let text = serde_json::to_string(&jobs).unwrap();
        assert!(
            text.starts_with(r#"{"jobs":[{"account":"acme","from":"1970-01-01T00:00:00.000Z","#),
            "{text}"
        );
        let back: BackfillJobs = serde_json::from_str(&text).unwrap();
        assert_eq!(back, jobs);
        assert_eq!(back.remaining_ms(&["acme".into()]), 43_200_000);
        let req: Result<BackfillRequest, _> =
            serde_json::from_str(r#"{"from":"a","to":"b","extra":1}"#);
        assert!(req.is_err(), "unknown fields are refused");
    }
}
