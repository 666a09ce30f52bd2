//! Many accounts in one process: accounts of one server share one HTTP client and a bounded set
//! of connections but never each other's tokens; a hanging account holds up nobody; the
//! process's threads do not grow with the accounts.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{World, bin, eventually, fast};
use rc_audit_hec::config::{Config, Destination, LoadEnv};
use rc_audit_hec::pipeline::Pipeline;
use rc_audit_hec::ringcentral::http::MAX_IN_FLIGHT_PER_SERVER;
use rc_audit_hec::ringcentral::poller::WindowOutcome;
use rc_audit_hec::runtime::{MAX_BLOCKING_THREADS, MAX_WORKERS};
use rc_audit_hec::sim::ringcentral::RcRequest;
use tokio_util::sync::CancellationToken;

/// The world's config with every account's `account_id` given, so the simulator checks that the
/// bearer token of each search belongs to the account in its path (403 `CMN-102` otherwise):
/// a token used for another account would not go unnoticed.
fn toml_with_ids(w: &World, poll: &str) -> String {
    let mut t = w.toml(poll, "");
    for (i, a) in w.accounts.iter().enumerate() {
        let name = format!("name = \"{}\"\n", World::name(i));
        t = t.replacen(
            &name,
            &format!("{name}account_id = \"{}\"\n", a.account_id),
            1,
        );
    }
    t
}

fn pipeline_with_ids(w: &World, poll: &str) -> Pipeline {
    let config = Config::from_toml_str(&toml_with_ids(w, poll), &LoadEnv::default()).unwrap();
    Pipeline::open(config, fast()).unwrap()
}

fn searches(w: &World, i: usize) -> Vec<RcRequest> {
    w.rc.requests()
        .into_iter()
        .filter(|r| {
            r.path.ends_with("/search")
                && r.account_id.as_deref() == Some(&w.accounts[i].account_id)
        })
        .collect()
}

#[tokio::test]
async fn accounts_of_one_server_share_one_client_and_connection_but_not_tokens() {
    const N: usize = 20;
    let w = World::new(N).await;
    for i in 0..N {
        w.seed(i, 3, 900 + i as u64);
    }
    let p = pipeline_with_ids(&w, "");
    let mut pollers = p.pollers(None);
    assert_eq!(p.rc_clients_built(), 1, "{N} accounts on one server");

    // One after the other: a shared client reuses its one keep-alive connection; a client per
    // account would open one per account.
    for poller in &mut pollers {
        let out = poller.poll_window().await.unwrap();
        assert!(matches!(out, WindowOutcome::Polled { .. }), "{out:?}");
    }
    assert_eq!(w.rc.connections(), 1, "one connection for {N} accounts");

    let requests = w.rc.requests();
    let refused: Vec<_> = requests.iter().filter(|r| r.status != 200).collect();
    assert!(refused.is_empty(), "a request was refused: {refused:?}");
    for i in 0..N {
        assert_eq!(searches(&w, i).len(), 1, "account {i}");
        let path = format!("/restapi/v1.0/account/{}/", w.accounts[i].account_id);
        assert!(searches(&w, i).iter().all(|r| r.path.starts_with(&path)));
    }
    // Each account's records, and only its own, are in the spool under its name.
    let batch = p
        .spool
        .read_batch(Destination::Hec, 10_000, usize::MAX)
        .unwrap();
    for i in 0..N {
        let name = World::name(i);
        let mut mine: Vec<&str> = batch
            .iter()
            .filter(|r| r.account == name)
            .map(|r| r.record_id.as_str())
            .collect();
        let mut expected = w.generated(i);
        mine.sort_unstable();
        expected.sort_unstable();
        assert_eq!(mine, expected, "account {i}");
    }
}

#[tokio::test]
async fn accounts_polled_together_keep_a_bounded_number_of_requests_in_flight() {
    let n = MAX_IN_FLIGHT_PER_SERVER * 2;
    let w = World::with(n, |c| c.rate_limits = false).await;
    // A slow upstream, so requests pile up and the bound is what holds them back. (Counting
    // connections instead is racy: a pooled connection comes back a moment after its slot is
    // freed, so the next request may open a new one meanwhile.)
    w.rc.update_faults(|f| f.slow = Duration::from_millis(300));
    let p = pipeline_with_ids(&w, "");
    let mut polls = tokio::task::JoinSet::new();
    for mut poller in p.pollers(None) {
        polls.spawn(async move { poller.poll_window().await.unwrap() });
    }
    while let Some(out) = polls.join_next().await {
        assert!(matches!(out.unwrap(), WindowOutcome::Polled { .. }));
    }
    let searched = (0..n).filter(|&i| searches(&w, i).len() == 1).count();
    assert_eq!(searched, n, "every account searched once");
    let peak = w.rc.peak_in_flight();
    assert!(
        (2..=MAX_IN_FLIGHT_PER_SERVER).contains(&peak),
        "{n} accounts at once had {peak} requests in flight (at most {MAX_IN_FLIGHT_PER_SERVER})"
    );
}

#[tokio::test]
async fn an_account_whose_searches_hang_delays_no_other_account() {
    const N: usize = 4;
    let w = World::with(N, |c| c.rate_limits = false).await;
    let hung = 0;
    w.rc.update_faults(|f| {
        f.hanging_accounts
            .insert(w.accounts[hung].account_id.clone());
    });
    // The hung search waits out the default 60 s RingCentral timeout: far longer than this test.
    let p = pipeline_with_ids(&w, "");
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));

    // Every other account polls again and again (interval 200 ms) while the hung account's
    // first search is still unanswered. Counting polls, not timing them.
    const POLLS: usize = 5;
    let others_polled = eventually(Duration::from_secs(30), || {
        (1..N).all(|i| searches(&w, i).iter().filter(|r| r.status == 200).count() >= POLLS)
    })
    .await;
    let hung_searches = searches(&w, hung);
    shutdown.cancel();
    service.await.unwrap().unwrap();
    let counts: Vec<usize> = (0..N).map(|i| searches(&w, i).len()).collect();
    assert!(
        others_polled,
        "the other accounts did not poll {POLLS} times each: {counts:?}"
    );
    assert_eq!(hung_searches.len(), 1, "the hung account sent one search");
    assert_eq!(hung_searches[0].status, 0, "and it was never answered");
}

/// Threads of process `pid` (`/proc/PID/status`).
fn threads(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test]
async fn run_keeps_its_threads_bounded_however_many_accounts_poll() {
    const N: usize = 300;
    let w = World::with(N, |c| c.rate_limits = false).await;
    let cfg = w.dir.path().join("config.toml");
    std::fs::write(&cfg, toml_with_ids(&w, "")).unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let all_polled = eventually(Duration::from_secs(60), || {
        peak = peak.max(threads(pid).unwrap_or(0));
        (0..N).all(|i| searches(&w, i).len() >= 2)
    })
    .await;
    // A few samples more: idle blocking threads linger for their keep-alive.
    for _ in 0..10 {
        peak = peak.max(threads(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(all_polled, "every account polled twice");
    // main + workers + blocking pool + a few of the forwarder's own (integrity check, spool).
    let bound = (1 + MAX_WORKERS + MAX_BLOCKING_THREADS + 4) as u64;
    assert!(
        peak <= bound,
        "{N} accounts: {peak} threads at peak (at most {bound})"
    );
}
