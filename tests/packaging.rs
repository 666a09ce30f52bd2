//! What the packages and the image rely on, run on the real binary: `--version` names the git
//! commit, completions and man pages come from the clap definitions, `healthcheck` exits 0 only
//! on a 2xx answer.

mod common;

use common::{bin, output, text};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn version_names_the_git_commit() {
    let mut cmd = bin();
    cmd.arg("--version");
    let out = output(cmd).await;
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let prefix = format!("rc-audit-hec {} (", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&prefix) && line.ends_with(')'), "{line}");
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        // The commit the test binary was built from is HEAD unless a commit landed since.
        Some(head) => {
            let inner = &line[prefix.len()..line.len() - 1];
            let commit = inner.trim_end_matches(", dirty");
            assert_eq!(commit.len(), 12, "{line}");
            assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
            assert!(
                git(&["merge-base", "--is-ancestor", commit, &head]).is_some(),
                "{commit} is not HEAD ({head}) or one of its ancestors: {line}"
            );
        }
        None => assert!(line.contains("git commit unknown"), "{line}"),
    }
}

#[tokio::test]
async fn completions_cover_every_command_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = bin();
        cmd.args(["completions", shell]);
        let out = output(cmd).await;
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in [
            "backfill",
            "dead-letters",
            "requeue",
            "--max-wait",
            "healthcheck",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let mut cmd = bin();
    cmd.args(["completions", "tcsh"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn man_pages_are_generated_for_every_command() {
    let mut cmd = bin();
    cmd.arg("man");
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH rc-audit-hec 1"), "{page}");
    assert!(page.contains("Exit codes"), "the after-help is in the page");

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.arg("man").arg("--dir").arg(dir.path());
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "rc-audit-hec.1",
        "rc-audit-hec-run.1",
        "rc-audit-hec-backfill.1",
        "rc-audit-hec-spool-status.1",
        "rc-audit-hec-spool-requeue.1",
    ] {
        let body = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
        assert!(body.contains(".TH "), "{page} missing or empty");
    }
    // `man` itself is a packaging tool: hidden from --help.
    let mut cmd = bin();
    cmd.arg("--help");
    let help = String::from_utf8_lossy(&output(cmd).await.stdout).to_string();
    assert!(!help.contains("\n  man "), "{help}");
    assert!(help.contains("completions") && help.contains("healthcheck"));
}

/// A stand-in admin endpoint: `/livez` answers 200, `/healthz` 503 with a reason.
async fn admin() -> String {
    let app = Router::new().route("/livez", get(|| async { "ok" })).route(
        "/healthz",
        get(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"status\":\"failing\",\"reason\":\"delivery stalled\"}",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn healthcheck_exits_0_on_2xx_and_1_with_the_reason_otherwise() {
    let base = admin().await;

    let mut cmd = bin();
    cmd.args(["healthcheck", "--url", &format!("{base}/livez")]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let mut cmd = bin();
    cmd.args(["healthcheck", "--url", &format!("{base}/healthz")]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("503"), "{}", text(&out));
    assert!(text(&out).contains("delivery stalled"), "{}", text(&out));

    let mut cmd = bin();
    cmd.args(["healthcheck", "--url", &format!("{base}/nowhere")]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("404"), "{}", text(&out));

    // Nothing listening: exit 1, and the message says what to check.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = bin();
    cmd.args([
        "healthcheck",
        "--url",
        &format!("http://127.0.0.1:{port}/livez"),
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin.listen"), "{}", text(&out));
}
