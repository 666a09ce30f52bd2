//! `check` against the simulators: the table names each failure's likely cause and fix.

mod common;

use std::process::Command;

use common::World;

#[tokio::test]
async fn check_explains_a_wrong_jwt_a_missing_permission_and_a_wrong_hec_token() {
    let w = World::new(2).await;
    w.rc.update_faults(|f| {
        f.forbidden_accounts
            .insert(w.accounts[1].account_id.clone());
    });
    w.hec.set_token("rotated-in-splunk");
    let toml = w
        .toml("", "")
        .replacen(&w.accounts[0].jwt, "eyJhbGciOiJSUzI1NiJ9.wrong.jwt", 1);
    let cfg = w.dir.path().join("config.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rc-audit-hec"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("check")
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(78), "{t}");
    let row = |what: &str| t.lines().find(|l| l.starts_with(what)).unwrap_or("");
    assert!(row("account acct0: token").contains("FAILED"), "{t}");
    assert!(row("account acct1: token").contains(" ok "), "{t}");
    assert!(
        row("account acct1: audit-trail search").contains("FAILED"),
        "{t}"
    );
    assert!(
        row(&format!("hec {}", w.hec.url())).contains("FAILED"),
        "{t}"
    );
    for expected in [
        "likely cause: the JWT was rejected (expired, revoked, or issued for another app)",
        "fix: create a new JWT credential for this app and update jwt/jwt_file",
        "likely cause: the app lacks the ReadAuditTrail permission",
        "likely cause: wrong or disabled HEC token",
        "fix: copy the token from Splunk",
    ] {
        assert!(t.contains(expected), "missing {expected:?}:\n{t}");
    }
}

/// A HEC URL with `user:password@` once reached `config`, `check` and the logs verbatim (a
/// secret in output) and replaced the token header; one with a path or without a scheme passed
/// `check --offline`. Each is now refused offline, with what to write instead.
#[tokio::test]
async fn check_offline_refuses_urls_with_credentials_a_path_or_no_scheme() {
    let w = World::new(1).await;
    let cases = [
        ("https://admin:hunter2@splunk.example.com:8088", "hec.token"),
        (
            "https://splunk.example.com:8088/services/collector/event",
            "\"https://splunk.example.com:8088\"",
        ),
        ("splunk.example.com:8088", "https://"),
    ];
    for (url, says) in cases {
        let toml = w.toml("", "").replace(&w.hec.url(), url);
        let cfg = w.dir.path().join("config.toml");
        std::fs::write(&cfg, toml).unwrap();
        for command in [&["check", "--offline"][..], &["config"][..]] {
            let mut cmd = common::bin();
            cmd.arg("--config").arg(&cfg).args(command);
            let out = common::output(cmd).await;
            let t = common::text(&out);
            assert_eq!(out.status.code(), Some(78), "{url} {command:?}: {t}");
            assert!(t.contains("hec.urls") && t.contains(says), "{url}: {t}");
            assert!(!t.contains("hunter2"), "the password leaked: {t}");
        }
    }
}
