//! The real binary: exit codes, config errors, secrets, `once`, `run` with signals.

mod common;

use common::{bin, output as run, text};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{World, assert_each_once, eventually};

/// The world's config with the admin endpoint on a free port.
fn config_with_admin(w: &World) -> (PathBuf, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let toml = w
        .toml("", "")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    (write_config(w.dir.path(), &toml), port)
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

#[tokio::test]
async fn once_delivers_everything_and_exits_0() {
    let w = World::new(2).await;
    for i in 0..2 {
        w.seed(i, 40, i as u64);
    }
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("80 delivered, 0 still spooled"),
        "{}",
        text(&out)
    );
    assert_each_once(&w, &[0, 1]);
}

#[tokio::test]
async fn once_with_hec_down_exits_75_within_max_wait_and_keeps_the_records() {
    let w = World::new(1).await;
    w.seed(0, 10, 3);
    w.hec.set_down(true).await;
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["once", "--max-wait", "1s"]);
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "once must not hang"
    );
    assert!(text(&out).contains("10 still spooled"), "{}", text(&out));
    // The next run, with HEC back, delivers them (without polling them twice).
    w.hec.set_down(false).await;
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_each_once(&w, &[0]);
}

/// A HEC token Splunk rejects is a configuration error (78, which systemd's
/// `RestartPreventExitStatus=` and a timer's operator act on), not "try later" (75).
#[tokio::test]
async fn once_with_a_rejected_hec_token_exits_78_and_keeps_the_records() {
    let w = World::new(1).await;
    w.seed(0, 10, 5);
    w.hec.set_token("rotated-in-splunk");
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["once", "--max-wait", "2s"]);
    let out = run(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    assert!(
        t.contains("10 still spooled") && t.contains("hec.token"),
        "{t}"
    );
    w.hec.set_token(common::HEC_TOKEN);
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn once_with_a_permission_problem_exits_78_and_says_so() {
    let w = World::new(1).await;
    w.rc.update_faults(|f| {
        f.forbidden_accounts
            .insert(w.accounts[0].account_id.clone());
    });
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("ReadAuditTrail"), "{}", text(&out));
}

#[tokio::test]
async fn check_reports_what_works_and_what_does_not() {
    let w = World::new(2).await;
    w.rc.update_faults(|f| {
        f.locked_accounts.insert(w.accounts[1].account_id.clone());
    });
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("check");
    let out = run(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    let row = |what: &str| t.lines().find(|l| l.starts_with(what)).unwrap_or("");
    assert!(row("account acct0: token").contains(" ok "), "{t}");
    assert!(row("account acct1: token").contains("FAILED"), "{t}");
    assert!(
        t.contains("likely cause: the JWT user is locked out"),
        "{t}"
    );
    assert!(t.contains("healthy, token accepted"), "{t}");
    // A wrong HEC token is named as such.
    w.hec.set_token("something-else");
    w.rc.update_faults(|f| f.locked_accounts.clear());
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("check");
    let out = run(cmd).await;
    assert!(text(&out).contains("hec.token"), "{}", text(&out));
    assert_ne!(out.status.code(), Some(0));
}

#[tokio::test]
async fn secrets_never_reach_logs_or_config_output() {
    let w = World::new(1).await;
    w.seed(0, 5, 4);
    w.rc.update_faults(|f| f.server_errors = 1);
    w.hec.update_faults(|f| f.scripted.push_back((503, 9)));
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let a = &w.accounts[0];
    let secrets = [a.client_secret.as_str(), a.jwt.as_str(), common::HEC_TOKEN];
    // Trace level: every log line the program and its libraries can produce.
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .arg("once")
        .env("RUST_LOG", "trace");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("config");
    let shown = run(cmd).await;
    assert_eq!(shown.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("[REDACTED]"));
    for s in secrets {
        assert!(!text(&out).contains(s), "a secret leaked into the logs");
        assert!(!text(&shown).contains(s), "a secret leaked into `config`");
    }
    assert!(text(&out).len() > 1000, "trace logging produced output");
}

#[tokio::test]
async fn config_errors_exit_78_and_name_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(1).await;
    let good = w.toml("", "");

    // Every problem at once, not one per attempt.
    let cfg = write_config(
        dir.path(),
        &good.replace(
            "[poll]",
            "[poll]\npage_size = 5000\ninitial_lookback = \"200d\"",
        ),
    );
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["check", "--offline"])
        .env("RC_AUDIT_HEC_HEC__BATCH_MAX_EVENTS", "0");
    let out = run(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    assert!(
        t.contains("3 problems")
            && t.contains("poll.page_size")
            && t.contains("poll.initial_lookback")
            && t.contains("RC_AUDIT_HEC_HEC__BATCH_MAX_EVENTS"),
        "{t}"
    );

    let cfg = write_config(
        dir.path(),
        &good.replace("[poll]", "[poll]\npage_sise = 10"),
    );
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("check").arg("--offline");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out).contains("page_sise") && text(&out).contains("config.toml"),
        "{}",
        text(&out)
    );

    let cfg = write_config(dir.path(), &good);
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .arg("check")
        .arg("--offline")
        .env("RC_AUDIT_HEC_POLL__INTERVAL", "often");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out).contains("RC_AUDIT_HEC_POLL__INTERVAL"),
        "{}",
        text(&out)
    );

    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .arg("check")
        .arg("--offline")
        .env("RC_AUDIT_HEC_POLL__PAGE_SIZE", "5000");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out).contains("poll.page_size")
            && text(&out).contains("RC_AUDIT_HEC_POLL__PAGE_SIZE"),
        "{}",
        text(&out)
    );

    // Env overrides apply (a numeric-looking token is still a string).
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .arg("config")
        .env("RC_AUDIT_HEC_HEC__BATCH_MAX_EVENTS", "77")
        .env("RC_AUDIT_HEC_HEC__TOKEN", "12345");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("batch_max_events = 77"));
    assert!(!text(&out).contains("12345"));

    let mut cmd = bin();
    cmd.arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("run");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));

    let mut cmd = bin();
    cmd.arg("frobnicate");
    assert_eq!(run(cmd).await.status.code(), Some(2));
}

#[tokio::test]
async fn the_example_config_is_valid() {
    let creds = tempfile::tempdir().unwrap();
    for f in ["acme-client-secret", "acme-jwt", "hec-token"] {
        std::fs::write(creds.path().join(f), "value\n").unwrap();
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.example.toml");
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&example)
        .args(["check", "--offline"])
        .env("CREDENTIALS_DIRECTORY", creds.path());
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn run_serves_admin_refuses_a_second_instance_and_stops_on_sigterm() {
    let w = World::new(1).await;
    w.seed(0, 25, 5);
    let (cfg, port) = config_with_admin(&w);
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || w.hec.accepted() >= 25).await,
        "run delivers"
    );

    // HEC has the events a moment before the spool records their delivery: scrape until then.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("rc_audit_hec_events_delivered_total 25") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("rc_audit_hec_events_delivered_total 25"),
        "{metrics}"
    );
    let health: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    // Liveness, apart from readiness: names the state directory for shell commands.
    let live: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/livez"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["status"], "alive", "{live}");
    assert_eq!(
        live["state_dir"].as_str().map(PathBuf::from),
        Some(w.dir.path().join("state")),
        "{live}"
    );

    let mut second = bin();
    second.arg("--config").arg(&cfg).arg("once");
    let out = run(second).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("in use by another rc-audit-hec process"),
        "{}",
        text(&out)
    );
    // Deleting spool.lock does not let a second `run` in (it once did: 1,440 duplicates of
    // 2,000): the state directory itself is locked, and the holder is still named.
    std::fs::remove_file(w.dir.path().join("state").join("spool.lock")).unwrap();
    let mut second = bin();
    second.arg("--config").arg(&cfg).arg("run");
    let out = run(second).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "in use by another rc-audit-hec process (pid {})",
            child.id()
        )),
        "{}",
        text(&out)
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "graceful stop on SIGTERM");
    assert_each_once(&w, &[0]);
}

#[tokio::test]
async fn spool_commands_inspect_and_requeue_while_the_service_runs() {
    let w = World::new(1).await;
    w.seed(0, 20, 6);
    let bad = w.generated(0)[5].clone();
    w.hec.update_faults(|f| {
        f.reject_event_ids.insert(bad.clone());
    });
    let (cfg, _admin_port) = config_with_admin(&w);
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 19).await);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let spool = |args: &[&str]| {
        let mut c = bin();
        c.arg("--config").arg(&cfg).arg("spool").args(args);
        c
    };
    let out = run(spool(&["status"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("waiting events: 0") && t.contains("dead letters: 1"),
        "{t}"
    );
    assert!(
        t.contains("service: running, ok") && t.contains("acct0"),
        "{t}"
    );

    let out = run(spool(&["status", "--json"])).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["dead_letters"], 1);
    assert_eq!(doc["cursors"][0]["account"], "acct0");

    let out = run(spool(&["dead-letters", "--json"])).await;
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dead[0]["record_id"], bad.as_str());
    assert_eq!(
        dead[0]["event"]["event"]["id"],
        bad.as_str(),
        "the event itself, as JSON"
    );
    assert!(dead[0]["reason"].as_str().unwrap().contains("code 6"));

    // The cause is fixed on the Splunk side; requeue, and the running service delivers it.
    w.hec.update_faults(|f| f.reject_event_ids.clear());
    let out = run(spool(&["requeue", "--all"])).await;
    assert!(text(&out).contains("requeued 1"), "{}", text(&out));
    assert!(eventually(Duration::from_secs(5), || w.received().contains_key(&bad)).await);
    assert_eq!(
        run(spool(&["requeue"])).await.status.code(),
        Some(2),
        "--all or --id is required"
    );

    signal_term(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_each_once(&w, &[0]);
}

fn signal_term(child: &std::process::Child) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn once_ends_when_an_account_is_stuck_in_rate_limiting() {
    let w = World::new(1).await;
    w.rc.update_faults(|f| {
        f.throttled_accounts
            .insert(w.accounts[0].account_id.clone());
    });
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("rate limited"), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "once must not wait out penalties forever"
    );
}

#[tokio::test]
async fn once_exits_1_and_says_so_when_events_were_dead_lettered() {
    let w = World::new(1).await;
    w.seed(0, 10, 8);
    let bad = w.generated(0)[4].clone();
    w.hec.update_faults(|f| {
        f.reject_event_ids.insert(bad.clone());
    });
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut cmd = bin();
    cmd.arg("--config").arg(&cfg).arg("once");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("1 event(s) refused by HEC"),
        "{}",
        text(&out)
    );
    assert_eq!(w.received().len(), 9);
}

/// Audit records carry names and IP addresses: a spool created outside systemd (umask 022, so
/// 0755 directories and 0644 files by default) must still be private to its user.
#[tokio::test]
async fn the_spool_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(1).await;
    w.seed(0, 10, 31);
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let mut child = Command::new("sh")
        .env_clear()
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rc-audit-hec"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || w.hec.accepted() >= 10).await);
    let state = w.dir.path().join("state");
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    let mut seen = Vec::new();
    for name in ["spool.db", "spool.db-wal", "spool.db-shm", "spool.lock"] {
        let m = mode(&state.join(name));
        seen.push((name, m.as_ref().ok().copied()));
    }
    let dir_mode = mode(&state).unwrap();
    signal_term(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    assert_eq!(dir_mode, 0o700, "the state directory");
    for (name, m) in seen {
        assert_eq!(
            m,
            Some(0o600),
            "{name} (all four exist while the service runs)"
        );
    }
}

/// After an index route HEC refused is fixed, `spool requeue` must send the events under the
/// current config: it once resent the stored envelopes, old index included, and every event was
/// dead-lettered again. An id that is no dead letter is an error, not "requeued 0".
#[tokio::test]
async fn requeue_renders_dead_letters_again_with_the_current_config() {
    let mut w = World::new(1).await;
    let mut hec = rc_audit_hec::sim::hec::HecSimConfig::new(common::HEC_TOKEN);
    hec.allowed_indexes = Some(vec!["main".into()]);
    w.hec = rc_audit_hec::sim::hec::HecSim::start(hec).await.unwrap();
    w.seed(0, 10, 41);
    let cfg = write_config(w.dir.path(), &w.toml("", "index = \"mian\""));
    let once = || {
        let mut c = bin();
        c.arg("--config").arg(&cfg).arg("once");
        c
    };
    let out = run(once()).await;
    assert_eq!(out.status.code(), Some(1), "dead-lettered: {}", text(&out));
    assert_eq!(w.hec.accepted(), 0);

    write_config(w.dir.path(), &w.toml("", "index = \"main\""));
    let requeue = |args: &[&str]| {
        let mut c = bin();
        c.arg("--config")
            .arg(&cfg)
            .args(["spool", "requeue"])
            .args(args);
        c
    };
    let out = run(requeue(&["--id", "999"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no dead letter with id 999"),
        "{}",
        text(&out)
    );

    let out = run(requeue(&["--all"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("requeued 10"), "{}", text(&out));
    let out = run(once()).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "delivered this time: {}",
        text(&out)
    );
    assert_each_once(&w, &[0]);
    assert!(w.hec.events().iter().all(|e| e["index"] == "main"));
}

/// `demo --dir D` run twice once reported records LOST (it reused the old spool and cursors
/// against a new simulator); `--records` beyond RingCentral's 10,000 per account was announced
/// as if all were there; and without `--dir` a directory stayed behind in /tmp.
#[tokio::test]
async fn the_demo_runs_twice_in_one_directory_tells_the_truth_about_the_cap_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let demo = |args: &[&str]| {
        let mut c = bin();
        c.arg("demo")
            .args(["--outage", "1s"])
            .args(args)
            .env("TMPDIR", tmp.path());
        c
    };
    let d = dir.path().to_str().unwrap();
    let out = run(demo(&["--dir", d, "--records", "20010"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("asked for 20010, but RingCentral keeps at most the newest 10000"),
        "{t}"
    );
    assert!(t.contains("2 accounts, 20000 audit records"), "{t}");
    let out = run(demo(&["--dir", d, "--records", "300"])).await;
    let t = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the second run in the same directory: {t}"
    );
    assert!(t.contains("removed the previous demo's spool"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.trim_start().starts_with("lost ") && l.trim_end().ends_with(" 0")),
        "{t}"
    );

    let out = run(demo(&["--records", "300"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?} in TMPDIR");
}

/// A state directory the service cannot write is a setup error: `check` (and `--offline`, run
/// by systemd's `ExecStartPre=`) says so, and `run` exits 78, not 1, so systemd's
/// `RestartPreventExitStatus=78` stops the restart loop. (The tests may run as root, which
/// writes anywhere: sysfs refuses even root, and a path under a file refuses everyone.)
#[tokio::test]
async fn an_unwritable_state_directory_fails_check_and_makes_run_exit_78() {
    let w = World::new(1).await;
    let file = w.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for dir in [
        PathBuf::from("/sys/rc-audit-hec-test-state"),
        file.join("state"),
    ] {
        let toml = w.toml("", "").replace(
            &format!("dir = {:?}", w.dir.path().join("state")),
            &format!("dir = {dir:?}"),
        );
        let cfg = write_config(w.dir.path(), &toml);
        let mut cmd = bin();
        cmd.arg("--config").arg(&cfg).args(["check", "--offline"]);
        let out = run(cmd).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(78), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("state directory") && l.contains("FAILED")),
            "{t}"
        );
        assert!(t.contains("as the service's user"), "{t}");
        let mut cmd = bin();
        cmd.arg("--config").arg(&cfg).arg("run");
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    }
}

/// `demo --serve`: a ready config against the simulators, every command works with it from
/// another shell, and faults are switched there too.
#[tokio::test]
async fn demo_serve_gives_a_config_for_every_command_and_switchable_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = bin()
        .args(["demo", "--serve", "--records", "300", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cfg = dir.path().join("config.toml");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(&cfg)
            .is_ok_and(|t| t.contains("[admin]")))
        .await
    );
    let toml = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        toml.contains("token_file") && !toml.contains("token ="),
        "{toml}"
    );
    let control = toml
        .lines()
        .next()
        .and_then(|l| l.split("Fault control: ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    let cmd = |args: &[&str]| {
        let mut c = bin();
        c.arg("--config").arg(&cfg).args(args);
        c
    };
    let out = run(cmd(&["check"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(cmd(&["once"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let fault = |name: &str| {
        let url = format!("{control}/{name}");
        async move {
            reqwest::Client::new()
                .post(url)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(fault("hec-down").await.as_u16(), 200);
    let out = run(cmd(&["backfill", "--from", "3d", "--max-wait", "1s"])).await;
    assert_eq!(out.status.code(), Some(75), "HEC is down: {}", text(&out));
    assert_eq!(fault("hec-up").await.as_u16(), 200);
    assert_eq!(fault("no-such-fault").await.as_u16(), 404);
    let out = run(cmd(&["once"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(cmd(&["spool", "status"])).await;
    assert!(text(&out).contains("waiting events: 0"), "{}", text(&out));

    signal_term(&serve);
    let status = tokio::task::spawn_blocking(move || serve.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `config` says where each value came from: the file, the exact environment variable, the
/// default, and for a secret the file it was read from (never the secret itself).
#[tokio::test]
async fn config_shows_where_each_value_came_from() {
    let w = World::new(1).await;
    let token = w.dir.path().join("hec-token");
    std::fs::write(&token, common::HEC_TOKEN).unwrap();
    let toml = w.toml("", "").replace(
        &format!("token = \"{}\"", common::HEC_TOKEN),
        &format!("token_file = {token:?}"),
    );
    let cfg = write_config(w.dir.path(), &toml);
    let mut cmd = bin();
    // From the config's parent directory: a file is named by its full path whatever the
    // working directory (figment's display shortened it to `.tmpX/config.toml` here).
    cmd.arg("--config")
        .arg(&cfg)
        .arg("config")
        .current_dir(w.dir.path().parent().unwrap())
        .env("RC_AUDIT_HEC_HEC__BATCH_MAX_EVENTS", "77");
    let out = run(cmd).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let line = |key: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_default()
    };
    assert!(
        line("batch_max_events")
            .ends_with("# from environment variable RC_AUDIT_HEC_HEC__BATCH_MAX_EVENTS"),
        "{t}"
    );
    assert!(line("page_size").ends_with("# default"), "{t}");
    assert!(
        line("interval").contains(&format!("# from file {}", cfg.display())),
        "{t}"
    );
    assert!(
        line("token").contains(&format!("read from {}", token.display()))
            && line("token").contains("[REDACTED]"),
        "{t}"
    );
    assert!(!t.contains(common::HEC_TOKEN), "{t}");
}

/// `spool status`, `dead-letters` and `requeue` per destination: a line (and a JSON entry) for
/// each destination the config names and for any other still holding rows; dead letters name
/// their destination and filter by it; requeue moves one destination's only; an unknown
/// destination name is a usage error that names the valid ones.
#[tokio::test]
async fn spool_commands_show_and_requeue_per_destination() {
    use rc_audit_hec::config::Destination;
    use rc_audit_hec::spool::{DeadLetter, NewRecord, Spool};
    let w = World::new(1).await;
    let cfg = write_config(w.dir.path(), &w.toml("", ""));
    let state = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(state.path()).unwrap();
        s.set_destinations(&[Destination::Hec, Destination::DynamoDb]);
        let recs: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| NewRecord::new(*id, b"{\"event\":{}}".to_vec()))
            .collect();
        s.enqueue_page("acct0", &recs, None).unwrap();
        for (d, n) in [(Destination::Hec, 0), (Destination::DynamoDb, 1)] {
            let batch = s.read_batch(d, 3, usize::MAX).unwrap();
            let dead = DeadLetter {
                seq: batch[n].seq,
                reason: format!("{d} refused it"),
                hec_code: None,
            };
            s.settle(d, None, &[dead]).unwrap();
        }
    }
    let spool = |args: &[&str]| {
        let mut c = bin();
        c.arg("--config")
            .arg(&cfg)
            .arg("spool")
            .arg("--dir")
            .arg(state.path())
            .args(args);
        c
    };
    let out = run(spool(&["status"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("waiting events: 4"), "{t}");
    assert!(t.contains("hec") && t.contains("waiting 2"), "{t}");
    assert!(
        t.contains("dynamodb") && t.contains("not configured"),
        "the config names HEC only, yet DynamoDB's rows are shown: {t}"
    );
    let out = run(spool(&["status", "--json"])).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dests = doc["destinations"].as_array().expect("destinations");
    assert_eq!(dests.len(), 2, "{doc}");
    assert_eq!(dests[0]["destination"], "hec");
    assert_eq!(dests[0]["configured"], true);
    assert_eq!(
        (dests[0]["depth"].clone(), dests[0]["dead_letters"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(dests[1]["destination"], "dynamodb");
    assert_eq!(dests[1]["configured"], false);
    assert_eq!(
        (dests[1]["depth"].clone(), dests[1]["dead_letters"].clone()),
        (2.into(), 1.into())
    );

    let out = run(spool(&["dead-letters"])).await;
    let t = text(&out);
    assert!(t.contains(" hec acct0 a: hec refused it"), "{t}");
    assert!(t.contains(" dynamodb acct0 b: dynamodb refused it"), "{t}");
    let out = run(spool(&[
        "dead-letters",
        "--json",
        "--destination",
        "dynamodb",
    ]))
    .await;
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["destination"], "dynamodb");
    assert_eq!(dead[0]["record_id"], "b");

    for args in [
        &["dead-letters", "--destination", "splunk"][..],
        &["requeue", "--all", "--destination", "splunk"][..],
    ] {
        let out = run(spool(args)).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains("no destination called \"splunk\": use one of hec, dynamodb"),
            "{t}"
        );
    }

    // HEC's dead letter is "a" (id 1): not DynamoDB's, so nothing moves.
    let out = run(spool(&[
        "requeue",
        "--id",
        "1",
        "--destination",
        "dynamodb",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no dead letter of destination dynamodb with id 1"),
        "{}",
        text(&out)
    );
    let out = run(spool(&["requeue", "--all", "--destination", "dynamodb"])).await;
    assert!(text(&out).contains("requeued 1"), "{}", text(&out));
    let out = run(spool(&["dead-letters", "--json"])).await;
    let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "HEC's stays: {dead}");
    assert_eq!(dead[0]["destination"], "hec");
    let s = Spool::open(state.path()).unwrap();
    let ddb: Vec<String> = s
        .read_batch(Destination::DynamoDb, 10, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    assert_eq!(ddb, ["a", "c", "b"], "back into DynamoDB's own outbox");
}
