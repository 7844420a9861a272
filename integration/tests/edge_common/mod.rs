//! Helpers shared by the edge tests (`edge_rotation.rs`, `gateway.rs` (revoke only),
//! `gateway_profile.rs`, `gateway_servers.rs`): enroll a device and take its certificate and key out of the PKCS#12
//! bundle with openssl, revoke, rotate.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use integration::tools::{self, run};
use integration::{Daemon, sample_ticket_request};
use pki_proto::v1;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

/// A redeemed device.
pub struct Device {
    pub serial: String,
    pub leaf_der: Vec<u8>,
    /// The issuer certificate from the bundle's chain.
    pub issuer_der: Vec<u8>,
    /// The root from the bundle's chain.
    pub root_der: Vec<u8>,
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// PEM: leaf then issuer (what curl presents).
    pub cert_pem: PathBuf,
    /// PEM: the private key (mode 0600).
    pub key_pem: PathBuf,
}

/// Whether openssl can run; panics unless missing tools are allowed.
pub fn have_openssl() -> bool {
    if tools::require_openssl() {
        return true;
    }
    eprintln!("SKIPPED: openssl not found (PKI_ALLOW_MISSING_TOOLS=1)");
    false
}

fn private_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Creates and redeems ticket `n` (Android bundle); the key and certificates come out of the
/// PKCS#12 with `openssl pkcs12` (password in a file, never on the command line).
pub async fn enroll(d: &Daemon, dir: &Path, n: u32) -> Device {
    let mut e = d.enrollment("portal").await.expect("enrollment client");
    let t = e
        .create_ticket(sample_ticket_request(n, v1::TargetOs::Android))
        .await
        .expect("CreateTicket")
        .into_inner();
    let password = Zeroizing::new(t.password);
    let b = e
        .redeem_ticket(v1::RedeemTicketRequest {
            number: t.number,
            password: password.to_string(),
            os: v1::TargetOs::Unspecified as i32,
            keystore_profile: String::new(),
        })
        .await
        .expect("RedeemTicket")
        .into_inner();
    let p12 = dir.join(format!("device{n}.p12"));
    std::fs::write(&p12, &b.pkcs12).expect("write p12");
    let pw = dir.join(format!("device{n}.pw"));
    private_file(&pw, password.as_bytes());
    let passin = format!("file:{}", pw.display());
    let out = run(Command::new("openssl")
        .arg("pkcs12")
        .arg("-in")
        .arg(&p12)
        .args(["-passin", &passin, "-nodes", "-nocerts"]));
    let key_out = Zeroizing::new(out.stdout);
    assert!(
        out.status.success(),
        "openssl pkcs12 -nocerts failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_pkcs8 = match PrivateKeyDer::from_pem_slice(&key_out) {
        Ok(PrivateKeyDer::Pkcs8(k)) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        Ok(_) => panic!("openssl printed a key that is not PKCS#8"),
        Err(e) => panic!("no key in the output of openssl pkcs12: {e}"),
    };
    let key_pem = dir.join(format!("device{n}.key"));
    private_file(
        &key_pem,
        &tools::pem("PRIVATE KEY", &key_pkcs8).into_bytes(),
    );
    // The certificates from the bundle (openssl -clcerts, then -cacerts: leaf first, then the
    // issuer; no root since issue #12 item 7; text outside the PEM blocks is skipped by every
    // PEM reader).
    let mut cert_text = Vec::new();
    for which in ["-clcerts", "-cacerts"] {
        let o = run(Command::new("openssl")
            .arg("pkcs12")
            .arg("-in")
            .arg(&p12)
            .args(["-passin", &passin, "-nokeys", which]));
        assert!(o.status.success(), "openssl pkcs12 -nokeys {which}");
        cert_text.extend_from_slice(&o.stdout);
    }
    let cert_pem = dir.join(format!("device{n}.crt"));
    std::fs::write(&cert_pem, &cert_text).expect("write device cert");
    let leaf_der = b.certificate_der.clone();
    let issuer_der = b.chain_der.first().cloned().expect("chain: issuer first");
    let root_der = b.chain_der.last().cloned().expect("chain: root last");
    Device {
        serial: b.serial,
        leaf_der,
        issuer_der,
        root_der,
        key_pkcs8,
        cert_pem,
        key_pem,
    }
}

/// Revokes one serial (key compromise); returns when the daemon acknowledged it.
pub async fn revoke(d: &Daemon, serial: &str) -> Instant {
    let revoked: BTreeSet<String> = d
        .certificates("portal")
        .await
        .expect("certificates client")
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Serial(serial.to_owned())),
            reason: v1::RevocationReason::KeyCompromise as i32,
            invalidity_date: None,
        })
        .await
        .unwrap_or_else(|e| panic!("Revoke {serial}: {e}"))
        .into_inner()
        .revoked_serials
        .into_iter()
        .collect();
    assert_eq!(revoked, BTreeSet::from([serial.to_owned()]));
    Instant::now()
}

/// `ca-daemon issuer rotate` against the running daemon; returns the new active issuer id.
pub fn rotate(d: &Daemon) -> String {
    let dd = d.data_dir.display().to_string();
    let (code, out, err) = d
        .cli(&["issuer", "rotate", "--data-dir", &dd, "--json"])
        .expect("run the CLI");
    assert_eq!(code, 0, "issuer rotate: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("issuer rotate --json");
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter()
        .find(|i| i.get("state").and_then(|s| s.as_str()) == Some("active"))
        .and_then(|i| i.get("id").and_then(|s| s.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no active issuer in the rotate report: {out}"))
}

/// Writes DER as PEM.
pub fn write_pem(path: &Path, label: &str, ders: &[&[u8]]) {
    let text: String = ders.iter().map(|d| tools::pem(label, d)).collect();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
