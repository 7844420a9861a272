//! OCSP responder certificates renew themselves before they expire (issue: key rotation and
//! the operator's toolkit). A PKI is created with a 3-day responder certificate (the policy's
//! minimum); the daemon,
//! whose policy renews responders when less than a third of 30 days remains, must replace it
//! at startup, and OCSP answers must verify with the new responder.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration::tools::{self, run, text};
use integration::{Daemon, DaemonOptions, daemon_bin};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

fn responder_not_after(data_dir: &Path) -> OffsetDateTime {
    let keys = data_dir.join("keys");
    let id = std::fs::read_to_string(keys.join("active-issuer")).expect("active issuer id");
    let pem = std::fs::read(keys.join("issuers").join(id.trim()).join("ocsp.crt"))
        .expect("responder cert");
    let der = tools::cert_der_from_pem_file(&keys.join("issuers").join(id.trim()).join("ocsp.crt"))
        .unwrap_or_else(|_| panic!("responder cert is not PEM: {} bytes", pem.len()));
    let (_, cert) = X509Certificate::from_der(&der).expect("parse responder cert");
    cert.validity().not_after.to_datetime()
}

#[test]
fn short_lived_responder_is_renewed_at_startup() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("var");
    // init with a policy that gives the responder three days.
    let init_policy = temp.path().join("init-policy.toml");
    std::fs::write(&init_policy, "[ca]\nocsp_responder_validity_days = 3\n").expect("write policy");
    let out = run(Command::new(daemon_bin().expect("daemon binary"))
        .args(["init", "--dev", "--data-dir"])
        .arg(&data_dir)
        .arg("--policy")
        .arg(&init_policy));
    assert!(out.status.success(), "init failed:\n{}", text(&out));
    let before = responder_not_after(&data_dir);
    let now = OffsetDateTime::now_utc();
    assert!(
        before - now < time::Duration::days(4),
        "init should have made a 3-day responder, got notAfter {before}"
    );

    // serve with the default policy (30-day responders, renewed below 10 days left).
    let mut daemon = Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.clone()),
        ..DaemonOptions::default()
    })
    .expect("daemon starts");
    let mut after = responder_not_after(&data_dir);
    for _ in 0..100 {
        if after > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = responder_not_after(&data_dir);
    }
    assert!(
        after - OffsetDateTime::now_utc() > time::Duration::days(25),
        "responder not renewed: notAfter before {before}, after {after}\nlog:\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("OCSP responder certificate renewed"));

    // OCSP answers are signed by the renewed responder and verify.
    let keys = data_dir.join("keys");
    let id = std::fs::read_to_string(keys.join("active-issuer")).expect("active issuer id");
    let issuer_pem = keys.join("issuers").join(id.trim()).join("issuer.crt");
    let root_pem = keys.join("root-ca.crt");
    let ca_file = temp.path().join("ca.pem");
    let mut ca = std::fs::read(&root_pem).expect("root");
    ca.extend(std::fs::read(&issuer_pem).expect("issuer"));
    std::fs::write(&ca_file, ca).expect("ca file");
    let unknown_serial = "0x7fffffffffffffffffffffffffffffff";
    let out = run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&issuer_pem)
        .args(["-serial", unknown_serial, "-url"])
        .arg(format!("http://{}/ocsp", daemon.http))
        .arg("-CAfile")
        .arg(&ca_file)
        .arg("-resp_text"));
    let t = text(&out);
    assert!(t.contains("Response verify OK"), "openssl ocsp:\n{t}");
    assert!(t.contains(": unknown"), "openssl ocsp:\n{t}");
    assert!(daemon.stop(), "daemon did not stop cleanly");
}
