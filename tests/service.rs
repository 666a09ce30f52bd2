//! The service as systemd and a monitoring system see it: the notify protocol (READY, STATUS,
//! WATCHDOG, STOPPING), the watchdog going quiet when a loop is stuck, `/metrics` and `/healthz`
//! scraped during a run, SIGHUP reloads, and the log formats.

mod common;

use common::{bin, output, text};

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{World, assert_each_once, eventually};
use rc_audit_hec::config::{Config, LoadEnv};
use rc_audit_hec::pipeline::Pipeline;
use rc_audit_hec::service::{Notifier, ServiceOptions};
use rc_audit_hec::telemetry::{State, Stats};
use tokio_util::sync::CancellationToken;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

async fn wait(mut child: Child) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status.code(), err)
    })
    .await
    .unwrap()
}

fn generate(w: &World, i: usize, n: usize, seed: u64) {
    w.seed(i, n, seed);
}

/// `n` records of account `i` from the last few minutes: inside the window of a running
/// service's next poll.
fn generate_recent(w: &World, i: usize, n: usize, seed: u64) {
    w.rc.generate(
        &w.accounts[i].account_id,
        n,
        Utc::now() - TimeDelta::minutes(5),
        Utc::now() - TimeDelta::seconds(1),
        seed,
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Collects the datagrams sent to a notify socket, like systemd's end of `$NOTIFY_SOCKET`.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let mut m = sink.lock().unwrap();
                        m.extend(text.lines().map(str::to_string));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Arc::strong_count(&sink) == 1 {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        if Arc::strong_count(&sink) == 1 {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        NotifySocket { path, messages }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn count(&self, exact: &str) -> usize {
        self.all().iter().filter(|m| *m == exact).count()
    }
}

#[tokio::test]
async fn run_speaks_the_systemd_notify_protocol() {
    let w = World::new(1).await;
    generate(&w, 0, 25, 80);
    let cfg = write(w.dir.path(), "config.toml", &w.toml("", ""));
    let notify = NotifySocket::bind(w.dir.path());
    let child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(15), || w.hec.accepted() >= 25).await);
    assert!(
        eventually(Duration::from_secs(10), || notify.count("WATCHDOG=1") >= 3
            && notify.all().iter().any(
                |m| m.starts_with("STATUS=") && m.contains("delivered 25 (last at")
            ))
        .await,
        "{:?}",
        notify.all()
    );
    signal(&child, "-TERM");
    let (code, err) = wait(child).await;
    assert_eq!(code, Some(0), "{err}");
    let msgs = notify.all();
    let ready = msgs.iter().position(|m| m == "READY=1").expect("READY=1");
    let first_ping = msgs.iter().position(|m| m == "WATCHDOG=1").unwrap();
    assert!(ready < first_ping, "{msgs:?}");
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("STOPPING=1"),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("STATUS=spooled 0, delivered 25 (last at ")),
        "{msgs:?}"
    );
    // Log fields are values, not Rust debug (`watchdog=Some(400ms)`, `watchdog=None`).
    assert!(err.contains("watchdog=400ms"), "{err}");
    assert!(!err.contains("Some(") && !err.contains("=None"), "{err}");
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn a_bad_config_never_reports_ready() {
    let w = World::new(1).await;
    let toml = w.toml("", "").replace(
        &format!("token = \"{}\"", common::HEC_TOKEN),
        "token_file = \"missing-token\"",
    );
    let cfg = write(w.dir.path(), "config.toml", &toml);
    let notify = NotifySocket::bind(w.dir.path());
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify.path);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("hec.token_file"), "{}", text(&out));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!notify.all().contains(&"READY=1".to_string()));
}

/// In-process service with a captured notifier and a short stall limit.
fn watched(toml: &str, stall: Duration) -> (Pipeline, ServiceOptions, Arc<Mutex<Vec<String>>>) {
    let notes = Arc::new(Mutex::new(Vec::new()));
    let options = ServiceOptions {
        stall_limit: Some(stall),
        watchdog_interval: Some(Duration::from_millis(200)),
        notifier: Notifier::Capture(notes.clone()),
        status_interval: Duration::from_millis(100),
        ..ServiceOptions::default()
    };
    let config = Config::from_toml_str(toml, &LoadEnv::default()).unwrap();
    (
        Pipeline::open(config, common::fast()).unwrap(),
        options,
        notes,
    )
}

fn pings(notes: &Mutex<Vec<String>>) -> usize {
    notes
        .lock()
        .unwrap()
        .iter()
        .filter(|m| *m == "WATCHDOG=1")
        .count()
}

/// A loop stuck in an await past its promise. A HEC request cannot be that any more (each
/// promises its own timeout: `a_black_holed_hec_never_stalls_the_delivery_loop`), so the stuck
/// loop here is a poll loop waiting for a RingCentral answer, with a 1 s stall limit set below
/// the RingCentral timeout (in production the stall limit is always above it) so that a 6 s
/// answer counts as stuck.
#[tokio::test]
async fn a_loop_stuck_in_an_await_stops_the_watchdog_and_shows_in_healthz() {
    let w = World::new(1).await;
    let (p, options, notes) = watched(&w.toml("", ""), Duration::from_secs(1));
    let health = p.health.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run_with(options, shutdown.clone()));
    assert!(eventually(Duration::from_secs(5), || pings(&notes) >= 2).await);
    // RingCentral now answers only after 6 s: the poll loop sits in one await.
    w.rc.update_faults(|f| f.slow = Duration::from_secs(6));
    generate_recent(&w, 0, 5, 81);
    assert!(
        eventually(Duration::from_secs(5), || health
            .snapshot()
            .get("loop:poll:acct0")
            .is_some_and(|h| h.state == State::Failing))
        .await,
        "{:?}",
        health.snapshot()
    );
    let reason = health.snapshot()["loop:poll:acct0"].reason.clone().unwrap();
    assert!(reason.contains("watchdog will restart"), "{reason}");
    let quiet = pings(&notes);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        pings(&notes),
        quiet,
        "no WATCHDOG=1 while a loop is stalled"
    );
    assert!(
        notes
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("STALLED: poll:acct0")),
    );
    assert!(
        !health.snapshot().contains_key("loop:delivery"),
        "the delivery loop is fine"
    );
    // The answer arrives: the loop moves again and so do the pings.
    w.rc.update_faults(|f| f.slow = Duration::ZERO);
    assert!(
        eventually(Duration::from_secs(15), || !health
            .snapshot()
            .contains_key("loop:poll:acct0")
            && pings(&notes) > quiet + 2
            && w.hec.accepted() >= 5)
        .await
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn idle_and_backing_off_loops_keep_the_watchdog_fed() {
    let w = World::new(1).await;
    generate(&w, 0, 5, 82);
    w.hec.set_down(true).await;
    // The poll loop waits 3 s between windows and the sink backs off against a dead HEC: both
    // are announced waits, so neither counts as stalled with a 1 s stall limit.
    let toml = w
        .toml("", "")
        .replace("interval = \"200ms\"", "interval = \"3s\"");
    let (p, options, notes) = watched(&toml, Duration::from_secs(1));
    let p_health = p.health.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run_with(options, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let snapshot = p_health.snapshot();
    assert!(
        !snapshot.keys().any(|k| k.starts_with("loop:")),
        "{snapshot:?}"
    );
    assert!(pings(&notes) >= 8, "{:?}", notes.lock().unwrap());
    assert_eq!(
        snapshot["hec"].state,
        State::Degraded,
        "HEC is down, not the loop"
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_and_healthz_scraped_during_a_run_cover_accounts_hec_and_the_spool() {
    let w = World::new(2).await;
    generate(&w, 0, 30, 83);
    generate(&w, 1, 10, 84);
    w.rc.update_faults(|f| {
        f.throttled_accounts
            .insert(w.accounts[0].account_id.clone());
        f.forbidden_accounts
            .insert(w.accounts[1].account_id.clone());
    });
    w.hec.update_faults(|f| f.scripted.push_back((503, 9)));
    let bad = w.generated(0)[7].clone();
    w.hec.update_faults(|f| {
        f.reject_event_ids.insert(bad.clone());
    });
    let port = free_port();
    let toml = w
        .toml("", "")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    let config = Config::from_toml_str(&toml, &LoadEnv::default()).unwrap();
    let p = Pipeline::open(config, common::fast()).unwrap();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run(shutdown.clone()));
    // acct0's first search draws a 429; then the throttle is lifted and the penalty waited out.
    assert!(
        eventually(Duration::from_secs(10), || w
            .rc
            .requests()
            .iter()
            .any(|r| r.status == 429))
        .await
    );
    w.rc.update_faults(|f| f.throttled_accounts.clear());
    assert!(eventually(Duration::from_secs(15), || w.hec.accepted() >= 29).await);
    let base = format!("http://127.0.0.1:{port}");
    // Scrape until the forbidden account has reported and the sink has settled the last batch
    // (HEC counts an event as accepted before its answer reaches the sink).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("status=\"403\"")
            && metrics.contains("rc_audit_hec_events_delivered_total 29\n")
            && metrics.contains("rc_audit_hec_spool_depth 0\n")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for expected in [
        "rc_audit_hec_records_polled_total ",
        "rc_audit_hec_records_spooled_total 30",
        "rc_audit_hec_events_delivered_total 29",
        "rc_audit_hec_events_dead_lettered_total 1",
        "rc_audit_hec_events_duplicate_suspected_total 0",
        "rc_audit_hec_records_duplicate_total ",
        &format!(
            "rc_audit_hec_hec_responses_total{{url=\"{}\",status=\"503\",code=\"9\"}} 1",
            w.hec.url()
        ),
        &format!(
            "rc_audit_hec_hec_responses_total{{url=\"{}\",status=\"400\",code=\"6\"}} 1",
            w.hec.url()
        ),
        "rc_audit_hec_rc_responses_total{account=\"acct0\",status=\"429\"} 1",
        "rc_audit_hec_rc_responses_total{account=\"acct1\",status=\"403\"}",
        "rc_audit_hec_rc_rate_limit_waits_total{account=\"acct0\"} ",
        "rc_audit_hec_spool_depth 0",
        "rc_audit_hec_spool_bytes ",
        "rc_audit_hec_spool_oldest_record_age_seconds 0",
        "rc_audit_hec_dead_letters 1",
        "rc_audit_hec_cursor_lag_seconds{account=\"acct0\"} ",
        "rc_audit_hec_last_poll_timestamp_seconds{account=\"acct0\"} ",
        "rc_audit_hec_last_delivery_timestamp_seconds ",
        "rc_audit_hec_component_up{component=\"account:acct1\"} 0",
        "rc_audit_hec_hec_request_duration_seconds_bucket{le=\"+Inf\"} ",
        "rc_audit_hec_rc_request_duration_seconds_count ",
        "rc_audit_hec_build_info{version=",
        "rc_audit_hec_process_resident_memory_bytes ",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("rc_audit_hec_rc_rate_limit_waits_total{account=\"acct0\"} 0\n"),
        "the 429 penalty was waited out:\n{metrics}"
    );
    assert!(
        !metrics.contains("cursor_lag_seconds{account=\"acct1\"}"),
        "the forbidden account never completed a window"
    );

    let resp = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        503,
        "a failing account fails /healthz"
    );
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "failing", "{health}");
    assert_eq!(health["accounts"]["acct0"]["state"], "ok", "{health}");
    assert_eq!(health["accounts"]["acct1"]["state"], "failing", "{health}");
    assert!(
        health["accounts"]["acct1"]["reason"]
            .as_str()
            .unwrap()
            .contains("ReadAuditTrail"),
        "{health}"
    );
    assert_eq!(health["hec"][w.hec.url()]["state"], "ok", "{health}");
    assert_eq!(health["hec"]["*"]["state"], "ok", "{health}");
    shutdown.cancel();
    service.await.unwrap().unwrap();
}

/// `toml` without the `[[accounts]]` block of account `i`.
fn without_account(toml: &str, i: usize) -> String {
    let start = toml
        .find(&format!("[[accounts]]\nname = \"{}\"", World::name(i)))
        .unwrap();
    let end = toml[start + 1..]
        .find("[[accounts]]")
        .or_else(|| toml[start + 1..].find("[poll]"))
        .unwrap()
        + start
        + 1;
    format!("{}{}", &toml[..start], &toml[end..])
}

#[tokio::test]
async fn sighup_reloads_accounts_and_hec_settings_and_survives_a_bad_config() {
    let w = World::new(2).await;
    generate(&w, 0, 12, 85);
    generate(&w, 1, 8, 86);
    let full = w.toml("", "");
    let cfg = write(w.dir.path(), "config.toml", &without_account(&full, 1));
    let notify = NotifySocket::bind(w.dir.path());
    let child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(15), || w.hec.accepted() >= 12).await);

    // An account is added.
    write(w.dir.path(), "config.toml", &full);
    signal(&child, "-HUP");
    assert!(
        eventually(Duration::from_secs(15), || w.hec.accepted() >= 20).await,
        "the added account is polled after SIGHUP"
    );

    // A broken config is refused and the service keeps running the previous one.
    write(
        w.dir.path(),
        "config.toml",
        &full.replace("[poll]", "[poll]\npage_size = 5000"),
    );
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The HEC token is rotated in Splunk and in the config: delivery follows the reload.
    w.hec.set_token("rotated-token-0000");
    write(
        w.dir.path(),
        "config.toml",
        &full.replace(common::HEC_TOKEN, "rotated-token-0000"),
    );
    signal(&child, "-HUP");
    generate_recent(&w, 1, 4, 87);
    assert!(
        eventually(Duration::from_secs(15), || w.hec.accepted() >= 24).await,
        "delivered with the reloaded token"
    );

    signal(&child, "-TERM");
    let (code, err) = wait(child).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("configuration reloaded"), "{err}");
    assert!(
        err.contains("configuration reload failed, still running the previous configuration")
            && err.contains("poll.page_size"),
        "{err}"
    );
    assert!(
        err.contains("(systemctl reload rc-audit-hec): poll.page_size"),
        "the error last, no stray '.' after it: {err}"
    );
    // systemd's reload protocol (Type=notify-reload): every SIGHUP answers RELOADING=1 with
    // MONOTONIC_USEC, then READY=1, also when the config is refused (with the reason).
    let msgs = notify.all();
    let reloads: Vec<usize> = (0..msgs.len())
        .filter(|&i| msgs[i] == "RELOADING=1")
        .collect();
    assert_eq!(reloads.len(), 3, "{msgs:?}");
    for &i in &reloads {
        assert!(msgs[i + 1].starts_with("MONOTONIC_USEC="), "{msgs:?}");
        assert!(msgs[i + 1..].iter().any(|m| m == "READY=1"), "{msgs:?}");
    }
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("STATUS=reload refused") && m.contains("poll.page_size")),
        "{msgs:?}"
    );
    assert_each_once(&w, &[0, 1]);
}

#[tokio::test]
async fn sighup_does_not_kill_once() {
    let w = World::new(1).await;
    generate(&w, 0, 3, 88);
    w.hec.set_down(true).await;
    let cfg = write(w.dir.path(), "config.toml", &w.toml("", ""));
    let child = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["once", "--max-wait", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&child, "-HUP");
    let (code, err) = wait(child).await;
    assert_eq!(code, Some(75), "not killed by SIGHUP: {err}");
    assert!(err.contains("SIGHUP ignored"), "{err}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let w = World::new(1).await;
    generate(&w, 0, 3, 89);
    w.hec.update_faults(|f| f.scripted.push_back((503, 9)));
    let toml = format!("{}\n[log]\nformat = \"json\"\n", w.toml("", ""));
    let cfg = write(w.dir.path(), "config.toml", &toml);
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut levels = Vec::new();
    for line in stderr.lines().filter(|l| !l.starts_with("once:")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        levels.push(v["level"].as_str().unwrap_or("").to_string());
    }
    assert!(levels.iter().any(|l| l == "WARN"), "{stderr}");
}

#[tokio::test]
async fn under_journald_every_line_carries_its_syslog_priority() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new(1).await;
    generate(&w, 0, 3, 90);
    w.hec.set_down(true).await;
    let cfg = write(w.dir.path(), "config.toml", &w.toml("", ""));
    // systemd points stderr at the journal and names that stream in $JOURNAL_STREAM; a file
    // stands in for the journal's socket here.
    let journal = w.dir.path().join("journal.txt");
    let file = std::fs::File::create(&journal).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["once", "--max-wait", "1s"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(75));
    let logged = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = logged.lines().filter(|l| !l.starts_with("once:")).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.len() > 3 && l.starts_with('<') && l.as_bytes()[2] == b'>',
            "no priority prefix: {l}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("<4>")), "{logged}");
}

/// `spool.db` deleted under the running service (it once went unnoticed, `/healthz` 200):
/// the spool shows failing with what to do, and polling pauses (records written into the
/// unlinked file would vanish at exit) while delivery goes on.
#[tokio::test]
async fn a_deleted_spool_file_fails_healthz_and_pauses_polling() {
    let w = World::new(1).await;
    w.seed(0, 20, 91);
    let (p, options, _notes) = watched(&w.toml("", ""), Duration::from_secs(30));
    let health = p.health.clone();
    let state = p.config.spool.dir.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run_with(options, shutdown.clone()));
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 20).await);
    assert_eq!(rc_audit_hec::telemetry::render_health(&health).0, State::Ok);
    std::fs::remove_file(state.join("spool.db")).unwrap();
    let failing = || {
        health
            .snapshot()
            .get("spool")
            .is_some_and(|h| h.state == State::Failing)
    };
    assert!(
        eventually(Duration::from_secs(5), failing).await,
        "{:?}",
        health.snapshot()
    );
    let reason = health.snapshot()["spool"].reason.clone().unwrap();
    assert!(
        reason.contains("deleted") && reason.contains("restart"),
        "{reason}"
    );
    assert_eq!(
        rc_audit_hec::telemetry::render_health(&health).0,
        State::Failing,
        "/healthz answers 503"
    );
    assert!(
        eventually(Duration::from_secs(5), || health
            .snapshot()
            .get("account:acct0")
            .and_then(|h| h.reason.clone())
            .is_some_and(|r| r.contains("deleted")))
        .await,
        "polling paused: {:?}",
        health.snapshot()
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    assert_each_once(&w, &[0]);
}

/// Idle sockets on the admin endpoint cannot take the descriptors delivery needs: the real
/// binary under `ulimit -n 128`, 150 idle connections to the admin port, then HEC comes up (so
/// delivery needs a new socket) and records arrive: all delivered. (Unbounded, the endpoint
/// accepted sockets until EMFILE, and delivery could no longer connect to HEC.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_sockets_cannot_starve_delivery_of_descriptors() {
    let w = World::new(1).await;
    let port = free_port();
    let cfg = write(
        w.dir.path(),
        "config.toml",
        &w.toml("", "")
            .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\"")),
    );
    w.hec.set_down(true).await;
    let mut cmd = Command::new("sh");
    for (k, _) in std::env::vars() {
        if k.starts_with("RC_AUDIT_HEC_") || k == "RUST_LOG" || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["-c", "ulimit -n 128 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_rc-audit-hec"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut up = false;
    for _ in 0..100 {
        if reqwest::get(&url).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the service answers /healthz");
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // HEC comes up (delivery needs a new socket), and records arrive.
    w.hec.set_down(false).await;
    generate_recent(&w, 0, 30, 93);
    assert!(
        eventually(Duration::from_secs(20), || w.hec.accepted() >= 30).await,
        "delivered {} of 30 with 150 idle admin sockets",
        w.hec.accepted()
    );
    drop(idle);
    signal(&child, "-TERM");
    let (code, _) = wait(child).await;
    assert_eq!(code, Some(0));
    assert_each_once(&w, &[0]);
}

/// Issue 9 item 5: a HEC that accepts the connection and never answers. The first request times
/// out after `hec.timeout` (60 s), the resend waits 10x that (600 s), then again after a backoff.
/// Before, the delivery loop promised the watchdog only its stall limit (120 s) for each request,
/// so the 600 s wait counted as a stall: no more `WATCHDOG=1`, and systemd restarted the service
/// every few minutes. Now every request announces its own bound.
///
/// Why paused time in-process rather than the binary with a scaled-down `hec.timeout`: the
/// defaults run exactly as shipped (60 s timeout, 600 s resend, the default 120 s stall limit,
/// `WatchdogSec=3min`) for 16 minutes of the service's clock in a few seconds, through the real
/// supervisor (`service::run` and its watchdog feeder with a captured notifier). The binary's
/// stall limit is not configurable, so a scaled run of the binary could not reproduce the stall
/// (its 60 s margin dwarfs a scaled resend); `run_speaks_the_systemd_notify_protocol` covers the
/// binary's notify socket and `WATCHDOG_USEC`.
#[tokio::test(start_paused = true)]
async fn a_black_holed_hec_never_stalls_the_delivery_loop() {
    let w = World::new(1).await;
    generate(&w, 0, 5, 83);
    // Accepts connections, keeps them open, never reads or answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = hole.accept().await {
            held.push(sock);
        }
    });
    let toml = w
        .toml("", "")
        .replace(&w.hec.url(), &hole_url)
        .replace("interval = \"200ms\"", "interval = \"60s\"");
    let notes = Arc::new(Mutex::new(Vec::new()));
    let options = ServiceOptions {
        watchdog_interval: Some(Duration::from_secs(180)),
        notifier: Notifier::Capture(notes.clone()),
        status_interval: Duration::from_secs(30),
        ..ServiceOptions::default()
    };
    let config = Config::from_toml_str(&toml, &LoadEnv::default()).unwrap();
    assert_eq!(
        config.hec.as_ref().unwrap().timeout,
        Duration::from_secs(60),
        "the default"
    );
    let p = Pipeline::open(config, common::fast()).unwrap();
    let (health, stats) = (p.health.clone(), p.stats.clone());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(p.run_with(options, shutdown.clone()));
    // Pings come every half WatchdogSec (90 s, from 0 s); checked between them (45 s, 135 s...)
    // for 16 minutes: a ping in every 90 s, no loop stalled.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let mut last = pings(&notes);
    assert!(last >= 1);
    for step in 1..=10 {
        tokio::time::sleep(Duration::from_secs(90)).await;
        let at = 45 + step * 90;
        let now = pings(&notes);
        let snapshot = health.snapshot();
        assert!(
            !snapshot.keys().any(|k| k.starts_with("loop:")),
            "after {at} s: {snapshot:?}"
        );
        assert!(now > last, "no WATCHDOG=1 in the 90 s before {at} s");
        last = now;
    }
    assert!(
        Stats::get(&stats.hec_timeouts) >= 2,
        "the long resend timed out too (the wait this is about)"
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
}
