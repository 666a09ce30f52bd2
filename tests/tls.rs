//! TLS to HEC: a private CA via `hec.tls_ca_file`, an untrusted certificate diagnosed by `check`,
//! and `tls_verify = false` with its warning, against the HEC simulator serving HTTPS with a
//! certificate generated here (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{HEC_TOKEN, World, drain};
use rc_audit_hec::config::{Config, LoadEnv};
use rc_audit_hec::pipeline::Pipeline;
use rc_audit_hec::sim::hec::{HecSim, HecSimConfig};
use rc_audit_hec::sim::tls::SimTls;
use rc_audit_hec::telemetry::State;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

/// A private CA and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    server: SimTls,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rc-audit-hec test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "splunk-hec");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: SimTls {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    }
}

/// A HEC simulator on HTTPS.
async fn tls_hec(pki: &Pki) -> HecSim {
    let mut cfg = HecSimConfig::new(HEC_TOKEN);
    cfg.tls = Some(pki.server.clone());
    HecSim::start(cfg).await.unwrap()
}

/// The world's config, delivering to `hec` with `extra` hec keys.
fn toml_for(w: &World, hec: &HecSim, extra: &str) -> String {
    w.toml("", extra).replace(&w.hec.url(), &hec.url())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn run_bin(args: &[&str], config: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rc-audit-hec"));
    cmd.arg("--config").arg(config).args(args);
    for k in ["RUST_LOG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"] {
        cmd.env_remove(k);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn world_with_records(n: usize) -> World {
    let w = World::new(1).await;
    w.seed(0, n, 70);
    w
}

#[tokio::test]
async fn hec_over_tls_with_a_private_ca_in_tls_ca_file_delivers() {
    let pki = pki();
    let w = world_with_records(20).await;
    let hec = tls_hec(&pki).await;
    assert!(hec.url().starts_with("https://127.0.0.1:"));
    let ca = write(w.dir.path(), "ca.pem", &pki.ca_pem);
    let toml = toml_for(&w, &hec, &format!("tls_ca_file = {ca:?}"));
    let config = Config::from_toml_str(&toml, &LoadEnv::default()).unwrap();
    let p = Pipeline::open(config, common::fast()).unwrap();
    p.pollers(None).remove(0).poll_window().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), drain(&p))
        .await
        .expect("delivery over TLS");
    assert_eq!(hec.accepted(), 20);
    assert_eq!(p.spool.depth().unwrap(), 0);
    assert!(
        hec.requests().iter().all(|r| r.status == 200),
        "{:?}",
        hec.requests()
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_diagnosed_as_tls_trust_and_nothing_is_lost() {
    let pki = pki();
    let w = world_with_records(10).await;
    let hec = tls_hec(&pki).await;
    let toml = toml_for(&w, &hec, "");
    let cfg = write(w.dir.path(), "config.toml", &toml);
    let out = run_bin(&["check"], &cfg).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    assert!(t.contains("likely cause: TLS trust"), "{t}");
    assert!(t.contains("hec.tls_ca_file"), "{t}");

    // Delivery keeps the records and says why it cannot send them.
    let config = Config::from_toml_str(&toml, &LoadEnv::default()).unwrap();
    let p = Pipeline::open(config, common::fast()).unwrap();
    p.pollers(None).remove(0).poll_window().await.unwrap();
    let mut sink = p.sink().unwrap();
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { sink.drain(&stop).await })
    };
    let health = p.health.clone();
    let url_component = format!("hec:{}", hec.url());
    assert!(
        common::eventually(Duration::from_secs(10), || health
            .snapshot()
            .get(&url_component)
            .is_some_and(|h| h.state == State::Degraded))
        .await
    );
    let reason = health.snapshot()[&url_component].reason.clone().unwrap();
    assert!(reason.contains("hec.tls_ca_file"), "{reason}");
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(hec.accepted(), 0);
    assert_eq!(p.spool.depth().unwrap(), 10, "records wait in the spool");
}

#[tokio::test]
async fn tls_verify_false_delivers_and_warns_at_every_start() {
    let pki = pki();
    let w = world_with_records(5).await;
    let hec = tls_hec(&pki).await;
    let cfg = write(
        w.dir.path(),
        "config.toml",
        &toml_for(&w, &hec, "tls_verify = false"),
    );
    for _ in 0..2 {
        let out = run_bin(&["once"], &cfg).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{t}");
        assert!(
            t.contains("hec.tls_verify = false: the HEC server's certificate is NOT checked"),
            "{t}"
        );
    }
    assert_eq!(hec.accepted(), 5);
    // `check --offline` (systemd's ExecStartPre) flags it too, without failing the start.
    let out = run_bin(&["check", "--offline"], &cfg).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("hec: tls_verify") && l.contains("WARN")),
        "{t}"
    );
    assert!(t.contains("set hec.tls_ca_file"), "{t}");
}

/// Splunk's own default certificate, and most made with `openssl req -x509`, is self-signed with
/// `CA:TRUE`. Given as `tls_ca_file`, it once failed every handshake with `CaUsedAsEndEntity`
/// (webpki will not accept a CA certificate as the server's own). The exact certificate given
/// is now trusted for what it is: the server's pinned certificate.
#[tokio::test]
async fn a_self_signed_hec_certificate_given_as_tls_ca_file_is_trusted() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "SplunkServerDefaultCert");
    let cert = params.self_signed(&key).unwrap();
    let mut cfg = HecSimConfig::new(HEC_TOKEN);
    cfg.tls = Some(SimTls {
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    });
    let hec = HecSim::start(cfg).await.unwrap();
    let w = world_with_records(10).await;
    let pem = write(w.dir.path(), "splunk-self-signed.pem", &cert.pem());
    let cfg = write(
        w.dir.path(),
        "config.toml",
        &toml_for(&w, &hec, &format!("tls_ca_file = {pem:?}")),
    );
    let out = run_bin(&["once"], &cfg).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(hec.accepted(), 10);
    let out = run_bin(&["check"], &cfg).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Another self-signed certificate (e.g. Splunk's, regenerated) is still refused.
    let other = KeyPair::generate().unwrap();
    let other_cert = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&other)
        .unwrap();
    std::fs::write(&pem, other_cert.pem()).unwrap();
    let out = run_bin(&["check"], &cfg).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
}
