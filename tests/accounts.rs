//! Many accounts (an MSP): 50 accounts on one simulator, each with its own pacing, cursor,
//! errors and metrics; one account's rate-limit penalty, outage or missing permission never
//! delays the others.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{World, assert_each_once, eventually};
use rc_audit_hec::admin::{MetricsInput, render_metrics};
use rc_audit_hec::telemetry::State;
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 50;
const PER_ACCOUNT: usize = 20;
/// Account 0 is throttled: every search answers 429 with this penalty.
const PENALTY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn fifty_accounts_flow_while_one_is_rate_limited_one_is_down_and_one_is_forbidden() {
    let w = World::with(ACCOUNTS, |c| c.penalty = PENALTY).await;
    for i in 0..ACCOUNTS {
        w.rc.generate(
            &w.accounts[i].account_id,
            PER_ACCOUNT,
            Utc::now() - TimeDelta::hours(4),
            Utc::now() - TimeDelta::hours(1),
            200 + i as u64,
        );
    }
    let (throttled, down, forbidden) = (0, 1, 2);
    w.rc.update_faults(|f| {
        f.throttled_accounts
            .insert(w.accounts[throttled].account_id.clone());
        f.unavailable_accounts
            .insert(w.accounts[down].account_id.clone());
        f.forbidden_accounts
            .insert(w.accounts[forbidden].account_id.clone());
    });
    let p = w.pipeline("", "");
    let (health, stats, spool) = (p.health.clone(), p.stats.clone(), p.spool.clone());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));

    let healthy: Vec<usize> = (3..ACCOUNTS).collect();
    let expected = healthy.len() * PER_ACCOUNT;
    assert!(
        eventually(Duration::from_secs(20), || w.hec.accepted() >= expected).await,
        "healthy accounts delivered {} of {expected}",
        w.hec.accepted()
    );
    // Everything the healthy accounts hold arrived while account 0 is still inside its first
    // 30 s penalty: it has sent exactly one search, so nobody waited for it.
    let throttled_searches =
        w.rc.requests()
            .iter()
            .filter(|r| {
                r.path.ends_with("/search")
                    && r.account_id.as_deref() == Some(&w.accounts[throttled].account_id)
            })
            .count();
    assert_eq!(throttled_searches, 1, "the penalty was honoured");

    let name = |i: usize| format!("account:{}", World::name(i));
    assert!(
        eventually(Duration::from_secs(5), || {
            let h = health.snapshot();
            h.get(&name(down))
                .is_some_and(|c| c.state == State::Degraded)
                && h.get(&name(forbidden))
                    .is_some_and(|c| c.state == State::Failing)
        })
        .await,
        "{:?}",
        health.snapshot()
    );
    let h = health.snapshot();
    let reason = |i: usize| h[&name(i)].reason.clone().unwrap_or_default();
    assert_eq!(h[&name(throttled)].state, State::Degraded);
    assert!(
        reason(throttled).contains("rate limited"),
        "{}",
        reason(throttled)
    );
    assert!(reason(down).contains("503"), "{}", reason(down));
    assert!(
        reason(forbidden).contains("ReadAuditTrail"),
        "{}",
        reason(forbidden)
    );
    for &i in &healthy {
        assert_eq!(h[&name(i)].state, State::Ok, "{}", World::name(i));
    }

    // Per-account cursors and metrics.
    let status = spool.status().unwrap();
    let with_cursor: Vec<&str> = status.cursors.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(with_cursor.len(), healthy.len(), "{with_cursor:?}");
    assert!(!with_cursor.contains(&World::name(throttled).as_str()));
    let metrics = render_metrics(&MetricsInput {
        stats: &stats,
        health: &health,
        spool: Some(&status),
        backfill: &[],
        now_ms: Utc::now().timestamp_millis(),
    });
    for &i in &healthy {
        let acct = World::name(i);
        assert!(
            metrics.contains(&format!(
                "rc_audit_hec_account_records_spooled_total{{account=\"{acct}\"}} {PER_ACCOUNT}"
            )),
            "{acct}"
        );
        assert!(metrics.contains(&format!(
            "rc_audit_hec_cursor_lag_seconds{{account=\"{acct}\"}}"
        )));
    }
    assert!(metrics.contains(&format!(
        "rc_audit_hec_rc_responses_total{{account=\"{}\",status=\"429\"}} 1",
        World::name(throttled)
    )));
    assert!(metrics.contains(&format!(
        "rc_audit_hec_rc_responses_total{{account=\"{}\",status=\"503\"}}",
        World::name(down)
    )));

    shutdown.cancel();
    service.await.unwrap().unwrap();
    assert_each_once(&w, &healthy);
}
